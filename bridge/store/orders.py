"""Orders in the store (SPEC §8): the stale check at intake, the order → deal links.

Order events live in the event log like payments (kind `order`, key
`<order id>@<updated_at>`), with the same deliveries, journal and retries. Beside them:
- `order_heads`: the newest `updated_at` received per order. Intake (inside the group
  commit, so two webhooks of one order cannot both pass) stores an event older than that
  as skipped with a `stale:` reason, delivered nowhere;
- `order_links`: per CRM, the deal an order went to and what was last applied there,
  written in the same transaction as the delivery's success.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from bridge.store.base import StoreBase
from bridge.store.records import STALE_PREFIX, NewEvent, OrderLink

EventKey = tuple[str, str]  # (kind, key)


def mark_stale_orders(
    db: sqlite3.Connection, fresh: Mapping[EventKey, NewEvent]
) -> dict[EventKey, NewEvent]:
    """`fresh` with each order event older than its order's newest received (stored, or
    earlier in this batch) turned into a skipped, stale one."""
    stamps = [e.order for e in fresh.values() if e.order is not None]
    if not stamps:
        return dict(fresh)
    heads = _heads(db, sorted({stamp.order_id for stamp in stamps}))
    marked: dict[EventKey, NewEvent] = {}
    for key, event in fresh.items():
        stamp = event.order
        if stamp is None:
            marked[key] = event
            continue
        newest = heads.get(stamp.order_id)
        if newest is not None and stamp.updated_at < newest:
            note = f"{STALE_PREFIX}order {stamp.order_id} has a newer update ({newest})"
            marked[key] = replace(event, status="skipped", note=note, crms=())
            continue
        heads[stamp.order_id] = stamp.updated_at
        marked[key] = event
    return marked


def record_order_heads(
    db: sqlite3.Connection, fresh: Mapping[EventKey, NewEvent], ids: Mapping[EventKey, int]
) -> None:
    """The newest `updated_at` per order, after `fresh` was inserted with `ids`."""
    rows = [
        (e.order.order_id, e.order.updated_at, ids[key])
        for key, e in fresh.items()
        if e.order is not None and not e.note.startswith(STALE_PREFIX)
    ]
    db.executemany(
        "INSERT INTO order_heads (order_id, updated_at, event_id) VALUES (?, ?, ?)"
        " ON CONFLICT (order_id) DO UPDATE SET updated_at = excluded.updated_at,"
        " event_id = excluded.event_id WHERE excluded.updated_at > order_heads.updated_at",
        rows,
    )


def save_order_link(db: sqlite3.Connection, link: OrderLink, now_text: str) -> None:
    """Inside the transaction that records the delivery's success."""
    db.execute(
        "INSERT INTO order_links (crm, order_id, contact_id, company_id, deal_id, pipeline_id,"
        " status, total, items, applied, event_key, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (crm, order_id) DO UPDATE SET"
        " contact_id = excluded.contact_id, company_id = excluded.company_id,"
        " deal_id = excluded.deal_id, pipeline_id = excluded.pipeline_id,"
        " status = excluded.status, total = excluded.total, items = excluded.items,"
        " applied = excluded.applied, event_key = excluded.event_key,"
        " updated_at = excluded.updated_at",
        (
            link.crm,
            link.order_id,
            link.contact_id,
            link.company_id,
            link.deal_id,
            link.pipeline_id,
            link.status,
            link.total,
            json.dumps([list(item) for item in link.items], ensure_ascii=False),
            link.applied,
            link.event_key,
            now_text,
        ),
    )


def _heads(db: sqlite3.Connection, order_ids: Sequence[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for start in range(0, len(order_ids), 500):
        chunk = order_ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        rows = db.execute(
            f"SELECT order_id, updated_at FROM order_heads WHERE order_id IN ({marks})", chunk
        )
        found.update({str(order_id): str(stamp) for order_id, stamp in rows})
    return found


_LINK_COLUMNS = (
    "crm, order_id, contact_id, company_id, deal_id, pipeline_id, status, total, items,"
    " applied, event_key"
)


class OrdersMixin(StoreBase):
    async def journal_steps(self, delivery_id: int) -> dict[str, Any]:
        """A delivery's journalled steps as stored (the order flow reads its own shape)."""
        rows = await self._read(
            "SELECT step, value FROM journal WHERE delivery_id = ?", (delivery_id,)
        )
        return {str(step): json.loads(value) for step, value in rows}

    async def order_link(self, crm: str, order_id: str) -> OrderLink | None:
        rows = await self._read(
            f"SELECT {_LINK_COLUMNS} FROM order_links WHERE crm = ? AND order_id = ?",
            (crm, order_id),
        )
        return _link(rows[0]) if rows else None

    async def order_links(self, order_id: str) -> list[OrderLink]:
        """The order's deal in each CRM it went to (`crm-bridge show`)."""
        rows = await self._read(
            f"SELECT {_LINK_COLUMNS} FROM order_links WHERE order_id = ? ORDER BY crm",
            (order_id,),
        )
        return [_link(row) for row in rows]

    async def order_event_keys(self, order_id: str) -> list[str]:
        """The stored events of one order, oldest `updated_at` first."""
        rows = await self._read(
            "SELECT key FROM events WHERE kind = 'order'"
            " AND json_extract(payload, '$.order.id') = ? ORDER BY key",
            (order_id,),
        )
        return [str(row[0]) for row in rows]


def _link(row: Sequence[object]) -> OrderLink:
    items = json.loads(str(row[8]))
    return OrderLink(
        crm=str(row[0]),
        order_id=str(row[1]),
        contact_id=str(row[2]),
        company_id=None if row[3] is None else str(row[3]),
        deal_id=str(row[4]),
        pipeline_id=str(row[5]),
        status=str(row[6]),
        total=str(row[7]),
        items=tuple((str(a), str(b), str(c), str(d)) for a, b, c, d in items),
        applied=str(row[9]),
        event_key=str(row[10]),
    )
