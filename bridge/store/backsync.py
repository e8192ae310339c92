"""Back-sync in the store (issue 19): CRM events in the event log, the bridge's own stage
moves, deal → order, and the status forwarded to the platform.

A CRM event (`POST /webhook/crm/{name}`) is an event of kind `crm_event` in the same log
as payments and orders, keyed `<section>:<dedup key>` (UNIQUE (kind, key): a CRM's resend
is a repeat, and `succeeded_keys` keeps it one after `crm-bridge prune`), with one delivery
to the pseudo-CRM `platform`: the signed callback. So retries, `dead`, `crm-bridge retry`,
`stats`, health and metrics treat it like any delivery. Beside it (migration 10):
- `own_moves`: each stage the order flow moved a deal to (recorded just before the CRM
  call), so the CRM's report of that move is recognised as the bridge's own (no echo);
- `order_links_deal`: deal → order, the lookup every CRM event needs;
- `crm_events`: the audit view, with the decision journalled for the event.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bridge.backsync.echo import OwnMove
from bridge.store.base import StoreBase
from bridge.store.records import utc_text

CRM_EVENT_KIND = "crm_event"  # `events.kind` of an event a CRM sent
PLATFORM = "platform"  # `deliveries.crm` of the callback to the platform
# How long the bridge's own moves are kept: the echo window is minutes; a day covers a
# CRM that reports late and a queue that waited.
OWN_MOVES_KEPT_SECONDS = 86400.0

MIGRATION_9 = """
CREATE TABLE own_moves (
    id INTEGER PRIMARY KEY,
    crm TEXT NOT NULL,
    deal_id TEXT NOT NULL,
    pipeline_id TEXT NOT NULL,
    status_id TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX own_moves_deal ON own_moves (crm, deal_id, at);
CREATE INDEX order_links_deal ON order_links (crm, deal_id);
CREATE VIEW crm_events AS
SELECT
    e.id AS id,
    json_extract(e.payload, '$.crm') AS crm,
    json_extract(e.payload, '$.deal_id') AS deal_id,
    json_extract(e.payload, '$.pipeline_id') AS pipeline_id,
    json_extract(e.payload, '$.status_id') AS status_id,
    json_extract(e.payload, '$.deleted') AS deleted,
    json_extract(e.payload, '$.occurred_at') AS occurred_at,
    e.key AS event_key,
    e.received_at AS received_at,
    e.processed_at AS processed_at,
    e.status AS status,
    d.status AS delivery_status,
    COALESCE(d.attempts, 0) AS attempts,
    MAX(COALESCE(d.attempts, 0) - 1, 0) AS retry_count,
    json_extract(j.value, '$.order_id') AS order_id,
    json_extract(j.value, '$.callback.status') AS forwarded_status,
    json_extract(j.value, '$.callback.previous_status') AS previous_status,
    json_extract(j.value, '$.webhook_id') AS webhook_id,
    json_extract(j.value, '$.reason') AS decision,
    COALESCE(d.last_error, e.error_message) AS error_message,
    e.payload AS payload
FROM events e
LEFT JOIN deliveries d ON d.event_id = e.id
LEFT JOIN journal j ON j.delivery_id = d.id AND j.step = 'decision'
WHERE e.kind = 'crm_event'
"""


@dataclass(frozen=True)
class ForwardedStatus:
    """The platform acknowledged `status` for the order: it becomes the order's last
    known status in `crm`'s link, unless that changed meanwhile (the order flow applied
    a newer update from the platform, which wins)."""

    crm: str
    order_id: str
    previous: str | None
    status: str


def save_forwarded_status(db: sqlite3.Connection, forwarded: ForwardedStatus, now: str) -> None:
    """Inside the transaction that records the callback's success."""
    db.execute(
        "UPDATE order_links SET status = ?, updated_at = ? WHERE crm = ? AND order_id = ?"
        " AND status IS ?",
        (forwarded.status, now, forwarded.crm, forwarded.order_id, forwarded.previous),
    )


@dataclass(frozen=True)
class CrmEventRow:
    """One line of `crm-bridge crm-events` (the `crm_events` view)."""

    id: int
    key: str
    crm: str
    deal_id: str
    stage: str | None
    received_at: str
    status: str
    delivery_status: str | None
    attempts: int
    order_id: str | None
    forwarded_status: str | None
    decision: str | None
    webhook_id: str | None
    error: str | None


_ROW_COLUMNS = (
    "v.id, v.event_key, v.crm, v.deal_id, v.status_id, v.received_at, v.status,"
    " v.delivery_status, v.attempts, v.order_id, v.forwarded_status, v.decision,"
    " v.webhook_id, v.error_message"
)


def _row(r: Sequence[Any]) -> CrmEventRow:
    def text(value: object) -> str | None:
        return None if value is None else str(value)

    return CrmEventRow(
        int(r[0]),
        str(r[1]),
        str(r[2]),
        str(r[3]),
        text(r[4]),
        str(r[5]),
        str(r[6]),
        text(r[7]),
        int(r[8] or 0),
        text(r[9]),
        text(r[10]),
        text(r[11]),
        text(r[12]),
        text(r[13]),
    )


class BacksyncMixin(StoreBase):
    async def record_own_move(
        self, crm: str, deal_id: str, pipeline_id: str, status_id: str
    ) -> None:
        """The bridge is moving `deal_id` to this stage now (the order flow, just before the
        CRM call: the CRM may report the move before the call returns)."""
        now = self._clock()

        def apply(db: sqlite3.Connection) -> None:
            db.execute(
                "DELETE FROM own_moves WHERE crm = ? AND deal_id = ? AND at < ?",
                (crm, deal_id, now - OWN_MOVES_KEPT_SECONDS),
            )
            db.execute(
                "INSERT INTO own_moves (crm, deal_id, pipeline_id, status_id, at)"
                " VALUES (?, ?, ?, ?, ?)",
                (crm, deal_id, pipeline_id, status_id, now),
            )

        await self._write_grouped(apply)

    async def own_moves(self, crm: str, deal_id: str) -> list[OwnMove]:
        rows = await self._read(
            "SELECT pipeline_id, status_id, at FROM own_moves WHERE crm = ? AND deal_id = ?"
            " AND at >= ? ORDER BY at",
            (crm, deal_id, self._clock() - OWN_MOVES_KEPT_SECONDS),
        )
        return [
            OwnMove(deal_id, str(p) or None, str(s), datetime.fromtimestamp(float(at), UTC))
            for p, s, at in rows
        ]

    async def order_for_deal(self, crm: str, deal_id: str) -> tuple[str, str] | None:
        """(order id, last known status) of the order linked to this deal in `crm`; the
        most recently linked when (against the flow's rules) several share it."""
        rows = await self._read(
            "SELECT order_id, status FROM order_links WHERE crm = ? AND deal_id = ?"
            " ORDER BY updated_at DESC LIMIT 1",
            (crm, deal_id),
        )
        return (str(rows[0][0]), str(rows[0][1])) if rows else None

    async def list_crm_events(
        self,
        *,
        status: str | None = None,
        crm: str | None = None,
        order_id: str | None = None,
        since: float | None = None,
        limit: int = 50,
    ) -> list[CrmEventRow]:
        """CRM events, newest first; `status` the event's (pending, success, failed…)."""
        where, params = ["1"], []
        for column, value in (("v.status", status), ("v.crm", crm), ("v.order_id", order_id)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if since is not None:
            where.append("v.received_at >= ?")
            params.append(utc_text(since))
        rows = await self._read(
            f"SELECT {_ROW_COLUMNS} FROM crm_events v WHERE {' AND '.join(where)}"
            " ORDER BY v.received_at DESC, v.id DESC LIMIT ?",
            (*params, limit),
        )
        return [_row(r) for r in rows]

    async def crm_event(self, key: str) -> CrmEventRow | None:
        """By its key (`<section>:<dedup key>`) or its id."""
        rows = await self._read(
            f"SELECT {_ROW_COLUMNS} FROM crm_events v WHERE v.event_key = ?"
            " OR (v.id = ? AND ? GLOB '[0-9]*') LIMIT 1",
            (key, int(key) if key.isdigit() and len(key) < 19 else -1, key),
        )
        return _row(rows[0]) if rows else None
