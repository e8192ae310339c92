"""What the operator sees and steers beyond the event log: every CRM call of a delivery,
CRMs held by the operator, the alerts sent, what the running bridge loaded, and the
filtered retries. New SQL of the operator's day lives here (schema: migration 5)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bridge.crm.calllog import CrmCall
from bridge.store.base import StoreBase
from bridge.store.records import PRIORITY_BACKFILL, utc_text
from bridge.store.schema import REFRESH_EVENT_SQL


@dataclass(frozen=True)
class CallRow:
    crm: str
    attempt: int
    at: str
    method: str
    path: str
    status: int
    ms: float
    error: str | None
    batch: int = 1  # deliveries the call served


@dataclass(frozen=True)
class Hold:
    """A CRM the operator paused (`crm-bridge pause`): its deliveries wait until resumed."""

    crm: str
    reason: str
    by: str
    at: str


@dataclass(frozen=True)
class AlertRow:
    at: str
    kind: str
    subject: str
    text: str
    channel: str
    outcome: str
    detail: str


@dataclass(frozen=True)
class DeliveryCounts:
    """Deliveries per CRM and status: what health reports as degraded."""

    by_crm: dict[str, dict[str, int]]

    def count(self, *statuses: str) -> int:
        return sum(n for per in self.by_crm.values() for s, n in per.items() if s in statuses)


# `retry --status`: which delivery states each choice puts back in the queue.
RETRY_STATES: dict[str, tuple[str, ...]] = {
    "failed": ("failed",),
    "dead": ("dead",),
    "not_found": ("not_found",),
    "retrying": ("retrying",),
    "pending": ("pending",),
}


class OversightMixin(StoreBase):
    # ---- CRM calls -----------------------------------------------------------------

    async def record_crm_calls(
        self, delivery_id: int, attempt: int, calls: Sequence[CrmCall]
    ) -> None:
        """The calls of one delivery attempt, committed with the next group commit."""
        if not calls:
            return
        rows = [
            (
                delivery_id,
                attempt,
                utc_text(c.at),
                c.method,
                c.path,
                c.status,
                c.ms,
                c.error,
                c.batch,
            )
            for c in calls
        ]

        def apply(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT INTO crm_calls (delivery_id, attempt, at, method, path, status, ms,"
                " error, batch) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

        await self._write_grouped(apply)

    async def event_calls(self, event_id: int) -> list[CallRow]:
        rows = await self._read(
            "SELECT d.crm, c.attempt, c.at, c.method, c.path, c.status, c.ms, c.error, c.batch"
            " FROM crm_calls c JOIN deliveries d ON d.id = c.delivery_id"
            " WHERE d.event_id = ? ORDER BY d.crm, c.id",
            (event_id,),
        )
        return [
            CallRow(
                str(r[0]),
                int(r[1]),
                str(r[2]),
                str(r[3]),
                str(r[4]),
                int(r[5]),
                float(r[6]),
                r[7],
                int(r[8]),
            )
            for r in rows
        ]

    # ---- operator holds ------------------------------------------------------------

    async def hold_crm(self, crm: str, reason: str, by: str) -> bool:
        """Pause `crm` for the operator; False when it was held already (kept as it was)."""
        now_text = utc_text(self._clock())

        def apply(db: sqlite3.Connection) -> bool:
            db.execute(
                "INSERT INTO crm_state (crm) VALUES (?) ON CONFLICT (crm) DO NOTHING", (crm,)
            )
            cursor = db.execute(
                "UPDATE crm_state SET held_reason = ?, held_by = ?, held_at = ?"
                " WHERE crm = ? AND held_reason IS NULL",
                (reason, by, now_text, crm),
            )
            return cursor.rowcount > 0

        return await self._write(apply)

    async def release_crm(self, crm: str) -> Hold | None:
        """Resume `crm`; returns the hold that was lifted (None: it was not held)."""

        def apply(db: sqlite3.Connection) -> Hold | None:
            row = db.execute(
                "SELECT held_reason, held_by, held_at FROM crm_state"
                " WHERE crm = ? AND held_reason IS NOT NULL",
                (crm,),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE crm_state SET held_reason = NULL, held_by = NULL, held_at = NULL"
                " WHERE crm = ?",
                (crm,),
            )
            return Hold(crm, str(row[0]), str(row[1]), str(row[2]))

        return await self._write(apply)

    async def holds(self) -> dict[str, Hold]:
        rows = await self._read(
            "SELECT crm, held_reason, held_by, held_at FROM crm_state WHERE held_reason IS NOT NULL"
        )
        return {str(r[0]): Hold(str(r[0]), str(r[1]), str(r[2]), str(r[3])) for r in rows}

    # ---- health counts -------------------------------------------------------------

    async def delivery_counts(self) -> DeliveryCounts:
        rows = await self._read(
            "SELECT crm, status, COUNT(*) FROM deliveries"
            " WHERE status IN ('failed', 'dead', 'pending', 'retrying', 'processing')"
            " GROUP BY crm, status"
        )
        by_crm: dict[str, dict[str, int]] = {}
        for crm, status, count in rows:
            by_crm.setdefault(str(crm), {})[str(status)] = int(count)
        return DeliveryCounts(by_crm)

    # ---- import progress -----------------------------------------------------------

    async def import_progress(self, since: float) -> dict[str, int]:
        """Deliveries of events imported since `since`, by status (`import --wait`)."""
        rows = await self._read(
            "SELECT d.status, COUNT(*) FROM deliveries d JOIN events e ON e.id = d.event_id"
            " WHERE e.priority = ? AND e.received_at >= ? GROUP BY d.status",
            (PRIORITY_BACKFILL, utc_text(since)),
        )
        return {str(status): int(count) for status, count in rows}

    # ---- retry by filter -----------------------------------------------------------

    async def retry_matching(
        self,
        *,
        statuses: Sequence[str],
        crm: str | None = None,
        since: float | None = None,
    ) -> int:
        """Put deliveries in `statuses` (of `crm`, of events received since `since`) back
        in the queue; returns how many events were touched."""
        now = self._clock()
        now_text = utc_text(now)
        where = [f"status IN ({','.join('?' * len(statuses))})"]
        params: list[Any] = [*statuses]
        if crm is not None:
            where.append("crm = ?")
            params.append(crm)
        if since is not None:
            where.append("event_id IN (SELECT id FROM events WHERE received_at >= ?)")
            params.append(utc_text(since))

        def apply(db: sqlite3.Connection) -> int:
            cursor = db.execute(
                "UPDATE deliveries SET status = 'pending', next_attempt_at = ?, updated_at = ?"
                f" WHERE {' AND '.join(where)} RETURNING event_id",
                (now, now_text, *params),
            )
            touched = {int(row[0]) for row in cursor.fetchall()}
            db.executemany(REFRESH_EVENT_SQL, [(now_text, i) for i in touched])
            return len(touched)

        return await self._write(apply)

    # ---- alerts --------------------------------------------------------------------

    async def record_alert(
        self, kind: str, subject: str, text: str, channel: str, outcome: str, detail: str = ""
    ) -> None:
        now_text = utc_text(self._clock())

        def apply(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO alerts (at, kind, subject, text, channel, outcome, detail)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (now_text, kind, subject, text, channel, outcome, detail),
            )

        await self._write_grouped(apply)

    async def recent_alerts(self, limit: int = 50) -> list[AlertRow]:
        rows = await self._read(
            "SELECT at, kind, subject, text, channel, outcome, detail FROM alerts"
            " ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        return [AlertRow(*(str(v) for v in r)) for r in rows]

    async def prune_alerts(self, before: float) -> int:
        cutoff = utc_text(before)

        def apply(db: sqlite3.Connection) -> int:
            return int(db.execute("DELETE FROM alerts WHERE at < ?", (cutoff,)).rowcount)

        return await self._write(apply)

    # ---- what the running bridge loaded ----------------------------------------------

    async def set_runtime(self, values: dict[str, str]) -> None:
        now_text = utc_text(self._clock())

        def apply(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT INTO runtime (key, value, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value,"
                " updated_at = excluded.updated_at",
                [(key, value, now_text) for key, value in values.items()],
            )

        await self._write(apply)

    async def runtime(self) -> dict[str, str]:
        rows = await self._read("SELECT key, value FROM runtime")
        return {str(k): str(v) for k, v in rows}
