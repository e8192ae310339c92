"""Intake: the group-commit writer that makes every acknowledged event durable."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence

from bridge.errors import StoreUnavailable
from bridge.store.base import (
    STOP,
    PendingIntake,
    StoreBase,
    log,
)
from bridge.store.records import (
    PRIORITY_LIVE,
    SETTLED_STATUSES,
    IntakeResult,
    NewEvent,
    RequestRecord,
    utc_text,
)
from bridge.store.schema import (
    REFRESH_EVENT_SQL,
)


class IntakeMixin(StoreBase):
    # ---- intake (group commit) ---------------------------------------------------------

    async def intake(self, event: NewEvent) -> IntakeResult:
        """Store the event durably; returns once it is committed (or raises)."""
        future: asyncio.Future[IntakeResult] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(PendingIntake(None, event, future))
        return await future

    def log_request(self, record: RequestRecord) -> None:
        """Queue a request-log row for the next batch; not awaited by the caller."""
        self._queue.put_nowait(PendingIntake(record, None))

    async def _writer_loop(self) -> None:
        while True:
            first = await self._queue.get()
            if first is STOP:
                return
            batch = [first]
            while not self._queue.empty() and len(batch) < 512:
                item = self._queue.get_nowait()
                if item is STOP:
                    await self._write_batch([i for i in batch if isinstance(i, PendingIntake)])
                    return
                batch.append(item)
            await self._write_batch([i for i in batch if isinstance(i, PendingIntake)])

    async def _write_batch(self, batch: list[PendingIntake]) -> None:
        async with self._write_lock:
            try:
                self._check_file()
                results = await self._apply_batch(batch)
                error = None
            except StoreUnavailable as exc:
                error = exc
            except Exception as exc:  # noqa: BLE001 - the writer task must outlive any batch
                error = StoreUnavailable(f"database write failed: {exc}")
            if error is not None:
                await self._rollback_quietly()
        if error is not None:
            log.error("intake batch of %d not stored: %s", len(batch), error)
            for item in batch:
                if item.future is not None and not item.future.done():
                    item.future.set_exception(error)
            return
        for item, result in zip(batch, results, strict=True):
            if item.future is not None and result is not None and not item.future.done():
                item.future.set_result(result)

    async def _apply_batch(self, batch: list[PendingIntake]) -> list[IntakeResult | None]:
        now = self._clock()
        now_text = utc_text(now)
        db = self._writer
        events = [item.event for item in batch if item.event is not None]
        await db.execute("BEGIN IMMEDIATE")
        known = await self._known_events(events)
        fresh: dict[tuple[str, str], NewEvent] = {}
        for event in events:
            if (event.kind, event.key) not in known:
                fresh.setdefault((event.kind, event.key), event)
        if fresh:
            ids = await self._insert_events(fresh, now, now_text)
            known.update({k: (ids[k], "new:" + e.status) for k, e in fresh.items()})
        repeats = [
            known[(e.kind, e.key)][0]
            for e in events
            if (e.kind, e.key) not in fresh and known[(e.kind, e.key)][1] not in SETTLED_STATUSES
        ]
        await self._nudge(repeats, now, now_text)
        records = [item.record for item in batch if item.record is not None]
        await db.executemany(
            "INSERT INTO requests (received_at, route, remote_addr, verdict, http_status,"
            " event_key, detail) VALUES (?,?,?,?,?,?,?)",
            [
                (now_text, r.route, r.remote_addr, r.verdict, r.http_status, r.event_key, r.detail)
                for r in records
            ],
        )
        await db.execute("COMMIT")
        return self._results(batch, known, fresh)

    async def _insert_events(
        self,
        fresh: Mapping[tuple[str, str], NewEvent],
        now: float,
        now_text: str,
        priority: int = PRIORITY_LIVE,
    ) -> dict[tuple[str, str], int]:
        """Insert new events and one pending delivery per CRM; inside a write transaction."""
        db = self._writer
        await db.executemany(
            "INSERT INTO events (kind, key, status, amount, customer_keys, payload,"
            " received_at, processed_at, error_message, priority)"
            " VALUES (?,?,?,?,?,?,?,?,?,?)",
            [
                (
                    e.kind,
                    e.key,
                    e.status,
                    e.amount,
                    json.dumps(e.customer_keys),
                    e.payload,
                    now_text,
                    now_text if e.status == "skipped" else None,
                    e.note or None,
                    priority,
                )
                for e in fresh.values()
            ],
        )
        ids = await self._event_ids(list(fresh))
        await db.executemany(
            "INSERT INTO deliveries (event_id, crm, status, next_attempt_at, updated_at)"
            " VALUES (?, ?, 'pending', ?, ?)",
            [
                (ids[k], crm, now, now_text)
                for k, e in fresh.items()
                if e.status == "pending"
                for crm in e.crms
            ],
        )
        return ids

    @staticmethod
    def _results(
        batch: list[PendingIntake],
        known: dict[tuple[str, str], tuple[int, str]],
        fresh: dict[tuple[str, str], NewEvent],
    ) -> list[IntakeResult | None]:
        results: list[IntakeResult | None] = []
        first_seen: set[tuple[str, str]] = set()
        for item in batch:
            if item.event is None:
                results.append(None)
                continue
            key = (item.event.kind, item.event.key)
            event_id, status = known[key]
            created = key in fresh and key not in first_seen
            first_seen.add(key)
            results.append(IntakeResult(event_id, created, status.removeprefix("new:")))
        return results

    async def _known_events(
        self, events: Sequence[NewEvent]
    ) -> dict[tuple[str, str], tuple[int, str]]:
        found: dict[tuple[str, str], tuple[int, str]] = {}
        for kind in {e.kind for e in events}:
            keys = [e.key for e in events if e.kind == kind]
            marks = ",".join("?" * len(keys))
            async with self._writer.execute(
                f"SELECT id, key, status FROM events WHERE kind = ? AND key IN ({marks})",
                (kind, *keys),
            ) as cursor:
                for event_id, key, status in await cursor.fetchall():
                    found[(kind, key)] = (int(event_id), str(status))
        return found

    async def _event_ids(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
        ids: dict[tuple[str, str], int] = {}
        for kind in {k for k, _ in keys}:
            names = [key for k, key in keys if k == kind]
            marks = ",".join("?" * len(names))
            async with self._writer.execute(
                f"SELECT id, key FROM events WHERE kind = ? AND key IN ({marks})",
                (kind, *names),
            ) as cursor:
                for event_id, key in await cursor.fetchall():
                    ids[(kind, str(key))] = int(event_id)
        return ids

    async def _nudge(self, event_ids: Sequence[int], now: float, now_text: str) -> None:
        """A repeated webhook for an unfinished event asks for an immediate retry."""
        if not event_ids:
            return
        await self._writer.executemany(
            "UPDATE deliveries SET next_attempt_at = ?, updated_at = ?,"
            " status = CASE WHEN status IN ('failed', 'dead', 'not_found') THEN 'pending'"
            " ELSE status END"
            " WHERE event_id = ? AND status NOT IN ('success', 'processing')",
            [(now, now_text, event_id) for event_id in event_ids],
        )
        await self._writer.executemany(REFRESH_EVENT_SQL, [(now_text, i) for i in event_ids])
