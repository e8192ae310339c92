"""The only module with SQL: schema, migrations, and every read and write of the bridge.

Durability contract (SPEC §7): WAL with `synchronous=FULL`, so an event acknowledged
with a 2xx survives a power cut. Intake writes go through a group-commit writer: one
task collects whatever requests are waiting, writes them in one transaction, commits
once, then wakes every request — each still waits for its own commit, but concurrent
requests share the fsync. Request-log rows ride along in the next batch and are not
awaited. Worker writes use the same connection, one short transaction each.

Times are stored as UTC text `YYYY-MM-DD HH:MM:SS.fff` (sortable, understood by
SQLite's date functions); schedule times as unix seconds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import stat
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from bridge.crypto import TokenCipher
from bridge.domain import KnownRefs
from bridge.errors import StoreUnavailable
from bridge.tokens import TokenPair

log = logging.getLogger("bridge.store")

Clock = Callable[[], float]
T = TypeVar("T")

# Live webhooks go before a historic import's backlog in the delivery queue.
PRIORITY_LIVE = 0
PRIORITY_BACKFILL = 1

# Events a repeated webhook does not touch: done, or excluded by the rules.
_SETTLED = ("success", "skipped")


def utc_text(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


@dataclass(frozen=True)
class RequestRecord:
    route: str
    remote_addr: str
    verdict: str
    http_status: int
    event_key: str | None = None
    detail: str = ""


@dataclass(frozen=True)
class NewEvent:
    kind: str
    key: str
    status: str  # "pending" or "skipped"
    amount: str
    customer_keys: tuple[str, ...]
    payload: str
    crms: tuple[str, ...]
    note: str = ""  # skip reason


@dataclass(frozen=True)
class IntakeResult:
    event_id: int
    created: bool  # False: the key was already known
    status: str  # the event's status before this request (or "pending"/"skipped" if new)


@dataclass(frozen=True)
class DeliveryJob:
    delivery_id: int
    event_id: int
    crm: str
    attempts: int  # including the one just claimed
    kind: str
    key: str
    payload: str
    customer_keys: tuple[str, ...]
    received_at: str


@dataclass(frozen=True)
class DeliveryOutcome:
    crm: str
    status: str
    contact_id: str | None
    deal_id: str | None
    deal_created: bool | None
    pipeline_id: str | None
    last_error: str | None
    crm_calls: int
    attempts: int
    next_attempt_at: float


@dataclass(frozen=True)
class EventView:
    id: int
    kind: str
    key: str
    status: str
    amount: str | None
    payload: str
    received_at: str
    processed_at: str | None
    error_message: str | None
    deliveries: tuple[DeliveryOutcome, ...] = ()


@dataclass(frozen=True)
class CrmState:
    crm: str
    paused_reason: str | None
    last_success_at: str | None
    last_error: str | None
    last_error_at: str | None


@dataclass(frozen=True)
class QueueStats:
    depth: int
    oldest_pending_at: float | None  # unix seconds of the oldest due-or-waiting delivery


@dataclass(frozen=True)
class CrmStats:
    """One CRM's deliveries for `bridge stats`."""

    crm: str
    deliveries: Mapping[str, int]  # delivery status → count
    calls: int  # CRM calls made, all deliveries and attempts
    success_calls: int  # CRM calls made by deliveries that succeeded
    last_success_at: str | None


@dataclass(frozen=True)
class OperatorStats:
    events: Mapping[str, int]  # event status → count
    crms: tuple[CrmStats, ...]
    last_success_at: str | None


@dataclass(frozen=True)
class EventSummary:
    """One line of `bridge events`."""

    key: str
    status: str
    amount: str | None
    received_at: str
    processed_at: str | None
    error_message: str | None
    deliveries: tuple[tuple[str, str], ...]  # (crm, delivery status)


@dataclass(frozen=True)
class JournalEntry:
    crm: str
    step: str
    value: str  # JSON text
    at: str


@dataclass(frozen=True)
class RequestRow:
    received_at: str
    route: str
    remote_addr: str
    verdict: str
    http_status: int
    detail: str


@dataclass
class _Intake:
    record: RequestRecord | None
    event: NewEvent | None
    future: asyncio.Future[IntakeResult] | None = None


_STOP = object()


class Store:
    def __init__(
        self,
        path: Path,
        writer: aiosqlite.Connection,
        reader: aiosqlite.Connection,
        clock: Clock,
        cipher: TokenCipher | None,
    ) -> None:
        self.path = path
        self._writer = writer
        self._reader = reader
        self._clock = clock
        self._cipher = cipher
        self._write_lock = asyncio.Lock()
        self._queue: asyncio.Queue[_Intake | object] = asyncio.Queue()
        self._writer_task: asyncio.Task[None] | None = None
        self._inode = _inode(path)

    # ---- lifecycle -------------------------------------------------------------------

    @classmethod
    async def open(cls, path: Path, *, clock: Clock, cipher: TokenCipher | None = None) -> Store:
        try:
            _create_private_file(path)
            writer = await aiosqlite.connect(path, isolation_level=None)
            reader = await aiosqlite.connect(path, isolation_level=None)
            for conn in (writer, reader):
                await conn.execute("PRAGMA journal_mode=WAL")
                await conn.execute("PRAGMA synchronous=FULL")
                await conn.execute("PRAGMA foreign_keys=ON")
                await conn.execute("PRAGMA busy_timeout=5000")
            await _migrate(writer)
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailable(f"cannot open database {path}: {exc}") from exc
        store = cls(path, writer, reader, clock, cipher)
        store._writer_task = asyncio.get_running_loop().create_task(store._writer_loop())
        return store

    async def close(self) -> None:
        if self._writer_task is not None:
            await self._queue.put(_STOP)
            await self._writer_task
            self._writer_task = None
        await self._writer.close()
        await self._reader.close()

    async def schema_version(self) -> int:
        rows = await self._read("PRAGMA user_version")
        return int(rows[0][0])

    # ---- intake (group commit) ---------------------------------------------------------

    async def intake(self, event: NewEvent) -> IntakeResult:
        """Store the event durably; returns once it is committed (or raises)."""
        future: asyncio.Future[IntakeResult] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Intake(None, event, future))
        return await future

    def log_request(self, record: RequestRecord) -> None:
        """Queue a request-log row for the next batch; not awaited by the caller."""
        self._queue.put_nowait(_Intake(record, None))

    async def _writer_loop(self) -> None:
        while True:
            first = await self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            while not self._queue.empty() and len(batch) < 512:
                item = self._queue.get_nowait()
                if item is _STOP:
                    await self._write_batch([i for i in batch if isinstance(i, _Intake)])
                    return
                batch.append(item)
            await self._write_batch([i for i in batch if isinstance(i, _Intake)])

    async def _write_batch(self, batch: list[_Intake]) -> None:
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

    async def _apply_batch(self, batch: list[_Intake]) -> list[IntakeResult | None]:
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
            if (e.kind, e.key) not in fresh and known[(e.kind, e.key)][1] not in _SETTLED
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
        batch: list[_Intake],
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
        await self._writer.executemany(_REFRESH_EVENT_SQL, [(now_text, i) for i in event_ids])

    # ---- worker ------------------------------------------------------------------------

    async def reset_interrupted(self) -> int:
        """At start: deliveries left `processing` by a crash go back to the queue."""
        now = self._clock()

        async def apply(db: aiosqlite.Connection) -> int:
            cursor = await db.execute(
                "UPDATE deliveries SET status = 'pending', next_attempt_at = ?"
                " WHERE status = 'processing'",
                (now,),
            )
            count: int = cursor.rowcount
            await db.execute("UPDATE events SET status = 'pending' WHERE status = 'processing'")
            return count

        return await self._write(apply)

    async def due_deliveries(
        self, now: float, crms: Iterable[str], limit: int
    ) -> list[DeliveryJob]:
        names = list(crms)
        if not names:
            return []
        marks = ",".join("?" * len(names))
        rows = await self._read(
            "SELECT d.id, d.event_id, d.crm, d.attempts, e.kind, e.key, e.payload,"
            " e.customer_keys, e.received_at FROM deliveries d JOIN events e ON e.id = d.event_id"
            f" WHERE d.status IN ('pending', 'retrying') AND d.next_attempt_at <= ?"
            f" AND d.crm IN ({marks}) ORDER BY e.priority, d.event_id LIMIT ?",
            (now, *names, limit),
        )
        return [
            DeliveryJob(
                int(r[0]),
                int(r[1]),
                str(r[2]),
                int(r[3]) + 1,
                str(r[4]),
                str(r[5]),
                str(r[6]),
                tuple(json.loads(r[7])),
                str(r[8]),
            )
            for r in rows
        ]

    async def next_due_at(self, crms: Iterable[str]) -> float | None:
        names = list(crms)
        if not names:
            return None
        marks = ",".join("?" * len(names))
        rows = await self._read(
            "SELECT MIN(next_attempt_at) FROM deliveries WHERE status IN"
            f" ('pending', 'retrying') AND crm IN ({marks})",
            tuple(names),
        )
        return float(rows[0][0]) if rows and rows[0][0] is not None else None

    async def mark_processing(self, delivery_id: int) -> None:
        now_text = utc_text(self._clock())

        async def apply(db: aiosqlite.Connection) -> None:
            await db.execute(
                "UPDATE deliveries SET status = 'processing', attempts = attempts + 1,"
                " updated_at = ? WHERE id = ?",
                (now_text, delivery_id),
            )
            await db.execute(_REFRESH_EVENT_SQL_BY_DELIVERY, (now_text, delivery_id))

        await self._write(apply)

    async def journal(self, delivery_id: int) -> dict[str, Any]:
        rows = await self._read(
            "SELECT step, value FROM journal WHERE delivery_id = ?", (delivery_id,)
        )
        return {str(step): json.loads(value) for step, value in rows}

    async def record_steps(self, delivery_id: int, steps: Mapping[str, Any]) -> None:
        """Journal completed steps of a delivery, all in one commit."""
        now_text = utc_text(self._clock())

        async def apply(db: aiosqlite.Connection) -> None:
            await db.executemany(
                "INSERT INTO journal (delivery_id, step, value, at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (delivery_id, step) DO UPDATE SET value = excluded.value,"
                " at = excluded.at",
                [(delivery_id, step, json.dumps(value), now_text) for step, value in steps.items()],
            )

        await self._write(apply)

    async def finish_delivery(
        self,
        delivery_id: int,
        *,
        status: str,
        contact_id: str | None = None,
        deal_id: str | None = None,
        deal_created: bool | None = None,
        pipeline_id: str | None = None,
        error: str | None = None,
        crm_calls: int = 0,
        next_attempt_at: float | None = None,
        count_attempt: bool = True,
        remember: KnownRefs | None = None,
    ) -> None:
        """Record an attempt's outcome; the event's status follows its deliveries.

        `remember` (on success) files the contact and deal under the customer's keys, so
        the next payment can verify them with one call instead of searching.
        """
        now = self._clock()
        now_text = utc_text(now)

        async def apply(db: aiosqlite.Connection) -> None:
            await db.execute(
                "UPDATE deliveries SET status = ?, contact_id = COALESCE(?, contact_id),"
                " deal_id = COALESCE(?, deal_id), deal_created = COALESCE(?, deal_created),"
                " pipeline_id = COALESCE(?, pipeline_id), last_error = ?,"
                " crm_calls = crm_calls + ?, next_attempt_at = COALESCE(?, next_attempt_at),"
                " attempts = attempts - ?, updated_at = ? WHERE id = ?",
                (
                    status,
                    contact_id,
                    deal_id,
                    None if deal_created is None else int(deal_created),
                    pipeline_id,
                    error,
                    crm_calls,
                    next_attempt_at,
                    0 if count_attempt else 1,
                    now_text,
                    delivery_id,
                ),
            )
            await db.execute(_REFRESH_EVENT_SQL_BY_DELIVERY, (now_text, delivery_id))
            if remember is not None and contact_id and deal_id:
                await db.executemany(
                    "INSERT INTO customer_refs (crm, customer_key, contact_id, deal_id,"
                    " identity, updated_at) SELECT crm, ?, ?, ?, ?, ? FROM deliveries"
                    " WHERE id = ? ON CONFLICT (crm, customer_key) DO UPDATE SET"
                    " contact_id = excluded.contact_id, deal_id = excluded.deal_id,"
                    " identity = excluded.identity, updated_at = excluded.updated_at",
                    [
                        (key, contact_id, deal_id, remember.identity, now_text, delivery_id)
                        for key in remember.customer_keys
                    ],
                )

        await self._write(apply)

    async def known_refs(self, crm: str, customer_keys: Sequence[str]) -> KnownRefs | None:
        """The contact and deal of this customer's last success in `crm`, if any."""
        for key in customer_keys:  # priority order: Telegram id, phone, e-mail
            rows = await self._read(
                "SELECT contact_id, deal_id, identity FROM customer_refs"
                " WHERE crm = ? AND customer_key = ?",
                (crm, key),
            )
            if rows:
                contact_id, deal_id, identity = rows[0]
                return KnownRefs(str(contact_id), str(deal_id), str(identity))
        return None

    async def retry_now(self, event_id: int | None = None, *, failed_only: bool = False) -> int:
        """Put unfinished (or, with `failed_only`, failed/dead) deliveries back in the queue."""
        now = self._clock()
        now_text = utc_text(now)
        states = (
            "('failed', 'dead')"
            if failed_only
            else "('failed', 'dead', 'not_found', 'retrying', 'pending')"
        )
        where = f"status IN {states}" + (" AND event_id = ?" if event_id is not None else "")
        params: tuple[Any, ...] = (now, now_text) + ((event_id,) if event_id is not None else ())

        async def apply(db: aiosqlite.Connection) -> int:
            cursor = await db.execute(
                f"UPDATE deliveries SET status = 'pending', next_attempt_at = ?,"
                f" updated_at = ? WHERE {where} RETURNING event_id",
                params,
            )
            touched = {int(row[0]) for row in await cursor.fetchall()}
            await db.executemany(_REFRESH_EVENT_SQL, [(now_text, i) for i in touched])
            return len(touched)

        return await self._write(apply)

    # ---- reads for the API, health and the CLI ----------------------------------------

    async def event(self, kind: str, key: str) -> EventView | None:
        rows = await self._read(
            "SELECT id, kind, key, status, amount, payload, received_at, processed_at,"
            " error_message FROM events WHERE kind = ? AND key = ?",
            (kind, key),
        )
        if not rows:
            return None
        return await self._event_view(rows[0])

    async def event_by_id(self, event_id: int) -> EventView | None:
        rows = await self._read(
            "SELECT id, kind, key, status, amount, payload, received_at, processed_at,"
            " error_message FROM events WHERE id = ?",
            (event_id,),
        )
        return await self._event_view(rows[0]) if rows else None

    async def _event_view(self, row: Sequence[Any]) -> EventView:
        deliveries = await self._read(
            "SELECT crm, status, contact_id, deal_id, deal_created, pipeline_id, last_error,"
            " crm_calls, attempts, next_attempt_at FROM deliveries WHERE event_id = ?"
            " ORDER BY crm",
            (row[0],),
        )
        return EventView(
            int(row[0]),
            str(row[1]),
            str(row[2]),
            str(row[3]),
            None if row[4] is None else str(row[4]),
            str(row[5]),
            str(row[6]),
            row[7],
            row[8],
            tuple(
                DeliveryOutcome(
                    str(d[0]),
                    str(d[1]),
                    d[2],
                    d[3],
                    None if d[4] is None else bool(d[4]),
                    d[5],
                    d[6],
                    int(d[7]),
                    int(d[8]),
                    float(d[9]),
                )
                for d in deliveries
            ),
        )

    async def queue_stats(self) -> QueueStats:
        rows = await self._read(
            "SELECT COUNT(*), MIN(e.received_at) FROM deliveries d JOIN events e"
            " ON e.id = d.event_id WHERE d.status IN ('pending', 'retrying', 'processing')"
        )
        depth, oldest = rows[0]
        oldest_ts = (
            datetime.strptime(str(oldest), "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC).timestamp()
            if oldest
            else None
        )
        return QueueStats(int(depth), oldest_ts)

    async def crm_states(self) -> dict[str, CrmState]:
        rows = await self._read(
            "SELECT crm, paused_reason, last_success_at, last_error, last_error_at FROM crm_state"
        )
        return {str(r[0]): CrmState(str(r[0]), r[1], r[2], r[3], r[4]) for r in rows}

    async def set_crm_state(
        self,
        crm: str,
        *,
        paused_reason: str | None = None,
        success: bool = False,
        error: str | None = None,
    ) -> None:
        now_text = utc_text(self._clock())

        async def apply(db: aiosqlite.Connection) -> None:
            await db.execute(
                "INSERT INTO crm_state (crm, paused_reason, last_success_at, last_error,"
                " last_error_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (crm) DO UPDATE SET"
                " paused_reason = excluded.paused_reason,"
                " last_success_at = COALESCE(excluded.last_success_at, last_success_at),"
                " last_error = COALESCE(excluded.last_error, last_error),"
                " last_error_at = COALESCE(excluded.last_error_at, last_error_at)",
                (
                    crm,
                    paused_reason,
                    now_text if success else None,
                    error,
                    now_text if error else None,
                ),
            )

        await self._write(apply)

    async def check_writable(self) -> None:
        async def apply(db: aiosqlite.Connection) -> None:
            await db.execute("CREATE TEMP TABLE IF NOT EXISTS _probe (x)")

        await self._write(apply)

    # ---- tokens (bridge.tokens.TokenRepository) ------------------------------------------

    async def load_tokens(self, crm: str) -> TokenPair | None:
        rows = await self._read("SELECT ciphertext FROM crm_tokens WHERE crm = ?", (crm,))
        if not rows:
            return None
        raw = json.loads(self._require_cipher().decrypt(str(rows[0][0])))
        return TokenPair(raw["access_token"], raw["refresh_token"], float(raw["expires_at"]))

    async def save_tokens(self, crm: str, pair: TokenPair) -> None:
        plaintext = json.dumps(
            {
                "access_token": pair.access_token,
                "refresh_token": pair.refresh_token,
                "expires_at": pair.expires_at,
            }
        )
        ciphertext = self._require_cipher().encrypt(plaintext)
        now_text = utc_text(self._clock())

        async def apply(db: aiosqlite.Connection) -> None:
            await db.execute(
                "INSERT INTO crm_tokens (crm, ciphertext, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT (crm) DO UPDATE SET ciphertext = excluded.ciphertext,"
                " updated_at = excluded.updated_at",
                (crm, ciphertext, now_text),
            )

        await self._write(apply)

    def _require_cipher(self) -> TokenCipher:
        if self._cipher is None:
            raise StoreUnavailable("BRIDGE_SECRET_KEY is not set: tokens cannot be stored")
        return self._cipher

    # ---- operator queries (CLI) --------------------------------------------------------

    async def operator_stats(self) -> OperatorStats:
        """Counts behind `bridge stats`."""
        events = await self._read("SELECT status, COUNT(*) FROM events GROUP BY status")
        rows = await self._read(
            "SELECT crm, status, COUNT(*), SUM(crm_calls), MAX(updated_at) FROM deliveries"
            " GROUP BY crm, status ORDER BY crm, status"
        )
        crms: dict[str, dict[str, Any]] = {}
        for crm, status, count, calls, last in rows:
            entry = crms.setdefault(
                str(crm), {"deliveries": {}, "calls": 0, "success_calls": 0, "last": None}
            )
            entry["deliveries"][str(status)] = int(count)
            entry["calls"] += int(calls or 0)
            if status == "success":
                entry["success_calls"] = int(calls or 0)
                entry["last"] = last
        last_success = await self._read(
            "SELECT MAX(processed_at) FROM events WHERE status = 'success'"
        )
        return OperatorStats(
            events={str(status): int(count) for status, count in events},
            crms=tuple(
                CrmStats(name, e["deliveries"], e["calls"], e["success_calls"], e["last"])
                for name, e in crms.items()
            ),
            last_success_at=last_success[0][0],
        )

    async def list_events(
        self,
        *,
        status: str | None = None,
        crm: str | None = None,
        since: float | None = None,
        limit: int = 50,
    ) -> list[EventSummary]:
        """Payment events, newest first. With `crm`, `status` is that CRM's delivery status
        (`pending` includes `retrying`, `failed` includes `dead`); else the event's status."""
        where = ["e.kind = 'payment'"]
        params: list[Any] = []
        if since is not None:
            where.append("e.received_at >= ?")
            params.append(utc_text(since))
        if crm is not None:
            states = _DELIVERY_STATES.get(status, (status,)) if status else ()
            marks = f" AND d.status IN ({','.join('?' * len(states))})" if states else ""
            where.append(
                f"EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id AND d.crm = ?{marks})"
            )
            params += [crm, *states]
        elif status is not None:
            where.append("e.status = ?")
            params.append(status)
        rows = await self._read(
            "SELECT e.key, e.status, e.amount, e.received_at, e.processed_at, e.error_message,"
            " (SELECT group_concat(d.crm || char(31) || d.status, char(30)) FROM deliveries d"
            "  WHERE d.event_id = e.id)"
            f" FROM events e WHERE {' AND '.join(where)}"
            " ORDER BY e.received_at DESC, e.id DESC LIMIT ?",
            (*params, limit),
        )
        return [
            EventSummary(
                key=str(r[0]),
                status=str(r[1]),
                amount=None if r[2] is None else str(r[2]),
                received_at=str(r[3]),
                processed_at=r[4],
                error_message=r[5],
                deliveries=_split_deliveries(r[6]),
            )
            for r in rows
        ]

    async def event_journal(self, event_id: int) -> list[JournalEntry]:
        rows = await self._read(
            "SELECT d.crm, j.step, j.value, j.at FROM journal j JOIN deliveries d"
            " ON d.id = j.delivery_id WHERE d.event_id = ? ORDER BY d.crm, j.at, j.step",
            (event_id,),
        )
        return [JournalEntry(str(r[0]), str(r[1]), str(r[2]), str(r[3])) for r in rows]

    async def requests_for(self, key: str) -> list[RequestRow]:
        """Every logged request that carried this event key (first delivery and repeats)."""
        rows = await self._read(
            "SELECT received_at, route, remote_addr, verdict, http_status, detail"
            " FROM requests WHERE event_key = ? ORDER BY id",
            (key,),
        )
        return [
            RequestRow(str(r[0]), str(r[1]), str(r[2]), str(r[3]), int(r[4]), str(r[5]))
            for r in rows
        ]

    async def known_keys(self, kind: str, keys: Sequence[str]) -> set[str]:
        """Which of `keys` are stored already (`bridge import --dry-run`)."""
        found: set[str] = set()
        for start in range(0, len(keys), 1000):
            chunk = keys[start : start + 1000]
            rows = await self._read(
                f"SELECT key FROM events WHERE kind = ? AND key IN ({','.join('?' * len(chunk))})",
                (kind, *chunk),
            )
            found.update(str(row[0]) for row in rows)
        return found

    async def import_events(self, events: Sequence[NewEvent]) -> int:
        """Store a chunk of events in one transaction, as intake does; returns how many
        were new. Known keys are left alone: unlike a repeated webhook, no retry nudge."""
        now = self._clock()
        now_text = utc_text(now)

        async def apply(db: aiosqlite.Connection) -> int:
            known = await self._known_events(events)
            fresh: dict[tuple[str, str], NewEvent] = {}
            for event in events:
                if (event.kind, event.key) not in known:
                    fresh.setdefault((event.kind, event.key), event)
            if fresh:
                await self._insert_events(fresh, now, now_text, PRIORITY_BACKFILL)
            return len(fresh)

        return await self._write(apply)

    async def count_prunable(self, before: float) -> tuple[int, int]:
        """(events, requests) that `prune(before)` would delete."""
        cutoff = utc_text(before)
        events = await self._read(
            f"SELECT COUNT(*) FROM events WHERE {_PRUNABLE_EVENT}", (cutoff, cutoff)
        )
        requests = await self._read(
            "SELECT COUNT(*) FROM requests WHERE received_at < ?", (cutoff,)
        )
        return int(events[0][0]), int(requests[0][0])

    async def prune(self, before: float, chunk: int = 5000) -> tuple[int, int]:
        """Delete finished events (with their deliveries and journal) and request-log rows
        older than `before`; returns (events, requests). Short transactions, so a running
        bridge's intake is not held up. An event with a delivery still to run is kept."""
        cutoff = utc_text(before)
        events = await self._delete_in_chunks(
            f"DELETE FROM events WHERE id IN (SELECT id FROM events WHERE {_PRUNABLE_EVENT}"
            " LIMIT ?)",
            (cutoff, cutoff, chunk),
            chunk,
        )
        requests = await self._delete_in_chunks(
            "DELETE FROM requests WHERE id IN (SELECT id FROM requests WHERE received_at < ?"
            " LIMIT ?)",
            (cutoff, chunk),
            chunk,
        )
        return events, requests

    async def _delete_in_chunks(self, sql: str, params: tuple[Any, ...], chunk: int) -> int:
        """Run a `DELETE … LIMIT chunk` until it deletes fewer rows than `chunk`."""

        async def apply(db: aiosqlite.Connection) -> int:
            cursor = await db.execute(sql, params)
            return int(cursor.rowcount)

        total = 0
        while True:
            count = await self._write(apply)
            total += count
            if count < chunk:
                return total

    async def token_ciphertexts(self) -> dict[str, str]:
        """Stored token ciphertexts by CRM (`bridge rotate-key` re-encrypts them)."""
        rows = await self._read("SELECT crm, ciphertext FROM crm_tokens ORDER BY crm")
        return {str(crm): str(ciphertext) for crm, ciphertext in rows}

    async def replace_token_ciphertexts(self, changes: Mapping[str, tuple[str, str]]) -> int:
        """Swap ciphertexts `crm → (old, new)` in one transaction; a row whose ciphertext is
        no longer `old` (the running bridge refreshed that token meanwhile) is left as is.
        Returns how many were replaced."""
        now_text = utc_text(self._clock())

        async def apply(db: aiosqlite.Connection) -> int:
            replaced = 0
            for crm, (old, new) in changes.items():
                cursor = await db.execute(
                    "UPDATE crm_tokens SET ciphertext = ?, updated_at = ?"
                    " WHERE crm = ? AND ciphertext = ?",
                    (new, now_text, crm, old),
                )
                replaced += cursor.rowcount
            return replaced

        return await self._write(apply)

    # ---- plumbing ---------------------------------------------------------------------

    async def _write(self, apply: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        async with self._write_lock:
            try:
                self._check_file()
                await self._writer.execute("BEGIN IMMEDIATE")
                result = await apply(self._writer)
                await self._writer.execute("COMMIT")
                return result
            except (sqlite3.Error, OSError) as exc:
                await self._rollback_quietly()
                raise StoreUnavailable(f"database write failed: {exc}") from exc
            except BaseException:
                # Cancellation at shutdown included: never leave the transaction open.
                await asyncio.shield(self._rollback_quietly())
                raise

    async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            async with self._reader.execute(sql, params) as cursor:
                return list(await cursor.fetchall())
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"database read failed: {exc}") from exc

    async def _rollback_quietly(self) -> None:
        try:
            if self._writer.in_transaction:
                await self._writer.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    def _check_file(self) -> None:
        # SQLite keeps writing through its open descriptor to a file that was deleted,
        # replaced or made read-only; such a write must not be acknowledged.
        try:
            info = os.stat(self.path)
        except OSError as exc:
            raise StoreUnavailable(f"database file {self.path} is gone: {exc}") from exc
        if info.st_ino != self._inode:
            raise StoreUnavailable(f"database file {self.path} was replaced")
        if not info.st_mode & stat.S_IWUSR:
            raise StoreUnavailable(f"database file {self.path} was made read-only")


def _create_private_file(path: Path) -> None:
    # Created 0600 before SQLite opens it: the payloads hold personal data.
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


_EVENT_STATUS_CASE = """
CASE
  WHEN EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.id
               AND d.status IN ('failed', 'dead')) THEN 'failed'
  WHEN EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.id
               AND d.status = 'processing') THEN 'processing'
  WHEN EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.id
               AND d.status IN ('pending', 'retrying')) THEN 'pending'
  WHEN EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.id
               AND d.status = 'not_found') THEN 'not_found'
  ELSE 'success'
END"""

_REFRESH_EVENT_SQL = f"""
UPDATE events SET
  status = {_EVENT_STATUS_CASE},
  processed_at = CASE WHEN ({_EVENT_STATUS_CASE}) IN ('success', 'failed', 'not_found') THEN ?
                 ELSE NULL END,
  error_message = (SELECT group_concat(d.crm || ': ' || d.last_error, '; ') FROM deliveries d
                   WHERE d.event_id = events.id AND d.last_error IS NOT NULL
                   AND d.status != 'success')
WHERE id = ? AND status != 'skipped'
"""

_REFRESH_EVENT_SQL_BY_DELIVERY = _REFRESH_EVENT_SQL.replace(
    "WHERE id = ? AND", "WHERE id = (SELECT event_id FROM deliveries WHERE id = ?) AND"
)


# Finished, older than the cutoff (received and processed), and nothing left to run.
_PRUNABLE_EVENT = """
status IN ('success', 'skipped', 'failed', 'not_found') AND received_at < ?
AND COALESCE(processed_at, received_at) < ?
AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.id
                AND d.status IN ('pending', 'retrying', 'processing'))"""

# `bridge events --crm X --status S`: the delivery statuses an event status stands for.
_DELIVERY_STATES: dict[str, tuple[str, ...]] = {
    "pending": ("pending", "retrying"),
    "failed": ("failed", "dead"),
}


def _split_deliveries(packed: str | None) -> tuple[tuple[str, str], ...]:
    if not packed:
        return ()
    pairs = (item.split("\x1f", 1) for item in packed.split("\x1e"))
    return tuple(sorted((crm, status) for crm, status in pairs))


async def _migrate(db: aiosqlite.Connection) -> None:
    async with db.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    version = int(row[0]) if row else 0
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        await db.execute("BEGIN IMMEDIATE")
        for statement in _statements(script):
            await db.execute(statement)
        await db.execute(f"PRAGMA user_version = {number}")
        await db.execute("COMMIT")


def _statements(script: str) -> list[str]:
    return [part.strip() for part in script.split(";\n") if part.strip()]


MIGRATIONS: tuple[str, ...] = (
    # 1: the event log, deliveries, step journal, tokens and the audit view of SPEC §7.
    """
CREATE TABLE requests (
    id INTEGER PRIMARY KEY,
    received_at TEXT NOT NULL,
    route TEXT NOT NULL,
    remote_addr TEXT NOT NULL,
    verdict TEXT NOT NULL,
    http_status INTEGER NOT NULL,
    event_key TEXT,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX requests_received ON requests (received_at);
CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    status TEXT NOT NULL,
    amount NUMERIC,
    customer_keys TEXT NOT NULL DEFAULT '[]',
    payload TEXT NOT NULL,
    received_at TEXT NOT NULL,
    processed_at TEXT,
    error_message TEXT,
    UNIQUE (kind, key)
);
CREATE INDEX events_status ON events (status);
CREATE INDEX events_received ON events (received_at);
CREATE TABLE deliveries (
    id INTEGER PRIMARY KEY,
    event_id INTEGER NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    crm TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    contact_id TEXT,
    deal_id TEXT,
    deal_created INTEGER,
    pipeline_id TEXT,
    last_error TEXT,
    crm_calls INTEGER NOT NULL DEFAULT 0,
    updated_at TEXT NOT NULL,
    UNIQUE (event_id, crm)
);
CREATE INDEX deliveries_due ON deliveries (status, next_attempt_at);
CREATE TABLE journal (
    delivery_id INTEGER NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    step TEXT NOT NULL,
    value TEXT NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (delivery_id, step)
);
CREATE TABLE crm_tokens (
    crm TEXT PRIMARY KEY,
    ciphertext TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE crm_state (
    crm TEXT PRIMARY KEY,
    paused_reason TEXT,
    last_success_at TEXT,
    last_error TEXT,
    last_error_at TEXT
);
CREATE VIEW payment_events AS
SELECT
    e.id AS id,
    e.key AS payment_id,
    e.received_at AS created_at,
    e.processed_at AS processed_at,
    e.status AS status,
    e.amount AS amount,
    d.contact_id AS contact_id,
    d.deal_id AS lead_id,
    d.pipeline_id AS pipeline_id,
    d.deal_created AS lead_created,
    e.payload AS payload,
    e.error_message AS error_message,
    MAX(COALESCE((SELECT MAX(x.attempts) FROM deliveries x WHERE x.event_id = e.id), 0) - 1, 0)
        AS retry_count
FROM events e
LEFT JOIN deliveries d ON d.id = (SELECT MIN(y.id) FROM deliveries y WHERE y.event_id = e.id)
WHERE e.kind = 'payment'
""",
    # 2: live webhooks before imported backlog; the request log searchable by payment.
    """
ALTER TABLE events ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
CREATE INDEX requests_event_key ON requests (event_key);
CREATE INDEX deliveries_event ON deliveries (event_id)
""",
    # 3: the contact and deal each customer's last payment went to, per CRM.
    """
CREATE TABLE customer_refs (
    crm TEXT NOT NULL,
    customer_key TEXT NOT NULL,
    contact_id TEXT NOT NULL,
    deal_id TEXT NOT NULL,
    identity TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (crm, customer_key)
)
""",
)
