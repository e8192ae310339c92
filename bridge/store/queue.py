"""The delivery queue for the worker, event reads for the API and health, tokens."""

from __future__ import annotations

import asyncio
import functools
import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from bridge.crypto import TokenCipher
from bridge.domain import Journal, KnownRefs
from bridge.errors import StoreUnavailable
from bridge.store.backsync import ForwardedStatus, save_forwarded_status
from bridge.store.base import (
    StoreBase,
)
from bridge.store.orders import save_order_link
from bridge.store.records import (
    CrmState,
    DeliveryJob,
    DeliveryOutcome,
    DueSlice,
    EventView,
    OrderLink,
    QueueStats,
    utc_text,
)
from bridge.store.schema import (
    REFRESH_EVENT_SQL,
    REFRESH_EVENT_SQL_BY_DELIVERY,
)
from bridge.tokens import TokenPair


class QueueMixin(StoreBase):
    # ---- worker ------------------------------------------------------------------------

    async def reset_interrupted(self, delay: float = 0.0) -> int:
        """At start: deliveries left `processing` by a crash go back to the queue, due
        after `delay` (a write abandoned mid-request may still land at the CRM)."""
        now = self._clock()

        def apply(db: sqlite3.Connection) -> int:
            cursor = db.execute(
                "UPDATE deliveries SET status = 'pending', next_attempt_at = ?"
                " WHERE status = 'processing'",
                (now + delay,),
            )
            count: int = cursor.rowcount
            db.execute("UPDATE events SET status = 'pending' WHERE status = 'processing'")
            return count

        return await self._write(apply)

    async def requeue(self, delivery_ids: Sequence[int], delay: float = 0.0) -> None:
        """After a database outage: deliveries cut short go back to the queue. With no ids
        it still opens a write transaction, whose file check proves the database is
        writable again."""
        now = self._clock()
        now_text = utc_text(now)

        def apply(db: sqlite3.Connection) -> None:
            db.executemany(
                "UPDATE deliveries SET status = 'pending', next_attempt_at = ?, updated_at = ?"
                " WHERE id = ? AND status = 'processing'",
                [(now + delay, now_text, delivery_id) for delivery_id in delivery_ids],
            )
            db.executemany(REFRESH_EVENT_SQL_BY_DELIVERY, [(now_text, i) for i in delivery_ids])

        await self._write(apply)

    async def due_deliveries(
        self, now: float, crms: Iterable[str], limit: int, window: int = 1000
    ) -> DueSlice:
        """Deliveries to start now, in queue order, and when the next one comes due.

        Per-customer order holds across retries: a delivery waits while an earlier
        unfinished delivery of the same customer in the same CRM exists (pending,
        retrying or running), even if it is itself due. Otherwise a later payment could
        overwrite the deal's payment-id marker while an earlier one waits to retry, and
        that retry would no longer recognise its own write. Only the first `window`
        unfinished deliveries are considered; what lies beyond waits its turn.
        """
        names = list(crms)
        if not names:
            return DueSlice((), None)
        marks = ",".join("?" * len(names))
        rows = await self._read(
            "SELECT d.id, d.event_id, d.crm, d.attempts, d.status, d.next_attempt_at, e.kind,"
            " e.key, e.customer_keys, e.received_at FROM deliveries d JOIN events e"
            " ON e.id = d.event_id WHERE d.status IN ('pending', 'retrying', 'processing')"
            f" AND d.crm IN ({marks}) ORDER BY e.priority, d.event_id LIMIT ?",
            (*names, window),
        )
        blocked: set[tuple[str, str]] = set()
        picked: list[tuple[Any, ...]] = []
        next_due: float | None = None
        for index, row in enumerate(rows):
            if index and not index % 500:
                await asyncio.sleep(0)  # a long queue must not hold webhooks up
            crm, status, due_at = str(row[2]), str(row[4]), float(row[5])
            mine = {(crm, key) for key in _customer_keys(str(row[8]))}
            waits = bool(mine & blocked)
            blocked |= mine
            if waits or status == "processing":
                continue
            if due_at <= now and len(picked) < limit:
                picked.append(row)
            elif due_at > now:
                next_due = due_at if next_due is None else min(next_due, due_at)
        payloads = await self._payloads([int(row[1]) for row in picked])
        jobs = tuple(
            DeliveryJob(
                int(r[0]),
                int(r[1]),
                str(r[2]),
                int(r[3]) + 1,
                str(r[6]),
                str(r[7]),
                payloads[int(r[1])][0],
                _customer_keys(str(r[8])),
                str(r[9]),
                payloads[int(r[1])][1],
            )
            for r in picked
        )
        return DueSlice(jobs, next_due)

    async def _payloads(self, event_ids: Sequence[int]) -> dict[int, tuple[str, str | None]]:
        """Each event's stored body and the source whose mapping reads it."""
        if not event_ids:
            return {}
        marks = ",".join("?" * len(event_ids))
        rows = await self._read(
            f"SELECT id, payload, source FROM events WHERE id IN ({marks})", tuple(event_ids)
        )
        return {int(event_id): (str(payload), source) for event_id, payload, source in rows}

    async def mark_processing(self, delivery_id: int) -> None:
        now_text = utc_text(self._clock())

        def apply(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE deliveries SET status = 'processing', attempts = attempts + 1,"
                " updated_at = ? WHERE id = ?",
                (now_text, delivery_id),
            )
            db.execute(REFRESH_EVENT_SQL_BY_DELIVERY, (now_text, delivery_id))

        await self._write_grouped(apply)

    async def journal(self, delivery_id: int) -> Journal:
        rows = await self._read(
            "SELECT step, value FROM journal WHERE delivery_id = ?", (delivery_id,)
        )
        return Journal.from_steps({str(step): json.loads(value) for step, value in rows})

    async def record_steps(self, delivery_id: int, done: Journal | Mapping[str, Any]) -> None:
        """Journal completed steps of a delivery (one row each), all in one commit."""
        now_text = utc_text(self._clock())
        steps = done.steps() if isinstance(done, Journal) else done

        def apply(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT INTO journal (delivery_id, step, value, at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (delivery_id, step) DO UPDATE SET value = excluded.value,"
                " at = excluded.at",
                [(delivery_id, step, json.dumps(value), now_text) for step, value in steps.items()],
            )

        await self._write_grouped(apply)

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
        order_link: OrderLink | None = None,
        forwarded: ForwardedStatus | None = None,
    ) -> None:
        """Record an attempt's outcome; the event's status follows its deliveries.

        `remember` (on success) files the contact and deal under the customer's keys, so
        the next payment can verify them with one call instead of searching.
        `order_link` (an order's success) is written in the same transaction: a link
        never says an event was applied whose delivery is not recorded as done.
        `forwarded` (a back-sync callback's success): the order's new last known status.
        """
        now = self._clock()
        now_text = utc_text(now)

        def apply(db: sqlite3.Connection) -> None:
            db.execute(
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
            db.execute(REFRESH_EVENT_SQL_BY_DELIVERY, (now_text, delivery_id))
            if order_link is not None:
                save_order_link(db, order_link, now_text)
            if forwarded is not None:
                save_forwarded_status(db, forwarded, now_text)
            if remember is not None and remember.contact_id:
                db.executemany(
                    "INSERT INTO customer_refs (crm, customer_key, contact_id, deal_id,"
                    " identity, updated_at) SELECT crm, ?, ?, ?, ?, ? FROM deliveries"
                    " WHERE id = ? ON CONFLICT (crm, customer_key) DO UPDATE SET"
                    " contact_id = excluded.contact_id, deal_id = excluded.deal_id,"
                    " identity = excluded.identity, updated_at = excluded.updated_at",
                    [
                        (
                            key,
                            remember.contact_id,
                            remember.deal_id,
                            remember.identity,
                            now_text,
                            delivery_id,
                        )
                        for key in remember.customer_keys
                    ],
                )

        await self._write_grouped(apply)

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

        def apply(db: sqlite3.Connection) -> int:
            cursor = db.execute(
                f"UPDATE deliveries SET status = 'pending', next_attempt_at = ?,"
                f" updated_at = ? WHERE {where} RETURNING event_id",
                params,
            )
            touched = {int(row[0]) for row in cursor.fetchall()}
            db.executemany(REFRESH_EVENT_SQL, [(now_text, i) for i in touched])
            return len(touched)

        return await self._write(apply)

    # ---- reads for the API, health and the CLI ----------------------------------------

    async def event(self, kind: str, key: str) -> EventView | None:
        rows = await self._read(
            "SELECT id, kind, key, status, amount, payload, received_at, processed_at,"
            " error_message, source FROM events WHERE kind = ? AND key = ?",
            (kind, key),
        )
        if not rows:
            return None
        return await self._event_view(rows[0])

    async def event_by_id(self, event_id: int) -> EventView | None:
        rows = await self._read(
            "SELECT id, kind, key, status, amount, payload, received_at, processed_at,"
            " error_message, source FROM events WHERE id = ?",
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
            row[9],
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

        def apply(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO crm_state (crm, paused_reason, last_success_at, last_error,"
                " last_error_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (crm) DO UPDATE SET"
                " paused_reason = excluded.paused_reason,"
                " last_success_at = COALESCE(excluded.last_success_at, last_success_at),"
                # A later success clears a resolved error (health then stops showing it).
                " last_error = CASE WHEN excluded.last_success_at IS NOT NULL THEN NULL"
                "  ELSE COALESCE(excluded.last_error, last_error) END,"
                " last_error_at = CASE WHEN excluded.last_success_at IS NOT NULL THEN NULL"
                "  ELSE COALESCE(excluded.last_error_at, last_error_at) END",
                (
                    crm,
                    paused_reason,
                    now_text if success else None,
                    error,
                    now_text if error else None,
                ),
            )

        await self._write_grouped(apply)

    async def check_writable(self) -> None:
        """Raises StoreUnavailable unless a webhook could be stored now: a row of the
        database rewritten and committed the way intake commits (in the group commit,
        through the WAL, with its fsync). A TEMP table said yes on a full disk."""
        now_text = utc_text(self._clock())

        def apply(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO write_probe (id, at) VALUES (1, ?)"
                " ON CONFLICT (id) DO UPDATE SET at = excluded.at",
                (now_text,),
            )

        await self._write_grouped(apply)

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

        def apply(db: sqlite3.Connection) -> None:
            db.execute(
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


@functools.lru_cache(maxsize=16384)
def _customer_keys(packed: str) -> tuple[str, ...]:
    # The queue is scanned on every dispatch; most rows were parsed the time before.
    return tuple(json.loads(packed))
