"""Intake: the group-commit batch that makes every acknowledged event durable.

Runs on the event loop inside the writer's transaction (`store.writer`), one batch for
everything waiting: the events (new ones inserted, repeats nudged) and the request-log
rows. The writer commits it on its thread.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence, Set
from typing import cast

import msgspec

from bridge.store.base import IntakeItem, StoreBase
from bridge.store.orders import mark_stale_orders, record_order_heads
from bridge.store.records import (
    PRIORITY_LIVE,
    SETTLED_STATUSES,
    STALE_PREFIX,
    IntakeResult,
    NewEvent,
    RequestRecord,
    utc_text,
)
from bridge.store.schema import REFRESH_EVENT_SQL

EventKey = tuple[str, str]  # (kind, key)
# Bound parameters per statement stay far below SQLite's limit (32 766): 11 columns × 64.
ROWS_PER_STATEMENT = 64
_JSON = msgspec.json.Encoder()


class IntakeMixin(StoreBase):
    async def intake(self, event: NewEvent) -> IntakeResult:
        """Store the event durably; returns once it is committed (or raises)."""
        # An event's place in the batch always gets its IntakeResult; rows of the
        # request log are the ones without.
        return cast(IntakeResult, await self._writer.submit(event))

    def log_request(self, record: RequestRecord) -> None:
        """Queue a request-log row for the next batch; not awaited by the caller."""
        self._writer.post(record)

    def _apply_intake_batch(
        self, db: sqlite3.Connection, batch: list[IntakeItem]
    ) -> list[IntakeResult | None]:
        now = self._clock()
        now_text = utc_text(now)
        events = [item for item in batch if isinstance(item, NewEvent)]
        known = known_events(db, events)
        fresh = mark_stale_orders(db, unknown_events(events, known))
        changed = state_changes(events, known)
        if fresh:
            ids = insert_events(db, fresh, now, now_text)
            record_order_heads(db, fresh, ids)
            known.update({k: (ids[k], "new:" + e.status, e.note) for k, e in fresh.items()})
        if changed:
            change_states(db, {known[k][0]: e for k, e in changed.items()}, now, now_text)
            known.update({k: (known[k][0], "new:" + e.status, e.note) for k, e in changed.items()})
        renewed = fresh.keys() | changed.keys()
        repeats = [
            known[(e.kind, e.key)][0]
            for e in events
            if (e.kind, e.key) not in renewed and known[(e.kind, e.key)][1] not in SETTLED_STATUSES
        ]
        _nudge(db, repeats, now, now_text)
        insert_rows(
            db,
            "INSERT INTO requests (received_at, route, remote_addr, verdict, http_status,"
            " event_key, detail)",
            [
                (now_text, r.route, r.remote_addr, r.verdict, r.http_status, r.event_key, r.detail)
                for r in batch
                if isinstance(r, RequestRecord)
            ],
        )
        return _results(batch, known, renewed, changed)


# (id, status, skip reason) of a stored event; id 0 for one `crm-bridge prune` deleted after
# it succeeded (only its key is left, in `succeeded_keys`).
Known = tuple[int, str, str | None]


def known_events(db: sqlite3.Connection, events: Sequence[NewEvent]) -> dict[EventKey, Known]:
    """What is stored already of the events among `events`."""
    found: dict[EventKey, Known] = {}
    for kind in {e.kind for e in events}:
        keys = [e.key for e in events if e.kind == kind]
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = db.execute(
                f"SELECT id, key, status, error_message FROM events WHERE kind = ?"
                f" AND key IN ({marks}) UNION ALL SELECT 0, key, 'success', NULL"
                f" FROM succeeded_keys WHERE kind = ? AND key IN ({marks})",
                (kind, *chunk, kind, *chunk),
            )
            for event_id, key, status, note in rows:
                found.setdefault((kind, str(key)), (int(event_id), str(status), note))
    return found


def state_changes(
    events: Sequence[NewEvent], known: Mapping[EventKey, Known]
) -> dict[EventKey, NewEvent]:
    """Known events that were skipped and arrive in another state: the platform sent the
    same payment again with another status (PENDING, then CONFIRMED). The first such
    body of a key in the batch wins, as for new events."""
    changed: dict[EventKey, NewEvent] = {}
    for event in events:
        key = (event.kind, event.key)
        stored = known.get(key)
        # An order event's key is its content (order id + updated_at): never a new state.
        if stored is None or stored[1] != "skipped" or key in changed or event.kind == "order":
            continue
        if event.status != "skipped" or event.note != stored[2]:
            changed[key] = event
    return changed


def change_states(
    db: sqlite3.Connection, changed: Mapping[int, NewEvent], now: float, now_text: str
) -> None:
    """The skipped events `changed` (by id) take their new body and state; those now to
    be processed get their deliveries. Received "now": the new state arrived now."""
    db.executemany(
        "UPDATE events SET status = ?, amount = ?, customer_keys = ?, payload = ?,"
        " received_at = ?, processed_at = ?, error_message = ? WHERE id = ?",
        [
            (
                e.status,
                e.amount,
                _JSON.encode(e.customer_keys).decode(),
                e.payload,
                now_text,
                now_text if e.status == "skipped" else None,
                e.note or None,
                event_id,
            )
            for event_id, e in changed.items()
        ],
    )
    insert_rows(
        db,
        "INSERT INTO deliveries (event_id, crm, status, next_attempt_at, updated_at)",
        [
            (event_id, crm, "pending", now, now_text)
            for event_id, e in changed.items()
            if e.status == "pending"
            for crm in e.crms
        ],
    )


def unknown_events(
    events: Sequence[NewEvent], known: Mapping[EventKey, object]
) -> dict[EventKey, NewEvent]:
    """The events not in `known`, by key; the first of a key repeated in `events` wins."""
    fresh: dict[EventKey, NewEvent] = {}
    for event in events:
        if (event.kind, event.key) not in known:
            fresh.setdefault((event.kind, event.key), event)
    return fresh


def insert_events(
    db: sqlite3.Connection,
    fresh: Mapping[EventKey, NewEvent],
    now: float,
    now_text: str,
    priority: int = PRIORITY_LIVE,
) -> dict[EventKey, int]:
    """Insert new events and one pending delivery per CRM; inside a write transaction.

    The ids are given, not left to SQLite: inside the write transaction nobody else
    inserts, and knowing them saves reading them back."""
    (last,) = db.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()
    ids = {key: int(last) + number for number, key in enumerate(fresh, start=1)}
    insert_rows(
        db,
        "INSERT INTO events (id, kind, key, status, amount, customer_keys, payload,"
        " received_at, processed_at, error_message, priority)",
        [
            (
                ids[k],
                e.kind,
                e.key,
                e.status,
                e.amount,
                _JSON.encode(e.customer_keys).decode(),
                e.payload,
                now_text,
                now_text if e.status == "skipped" else None,
                e.note or None,
                priority,
            )
            for k, e in fresh.items()
        ],
    )
    insert_rows(
        db,
        "INSERT INTO deliveries (event_id, crm, status, next_attempt_at, updated_at)",
        [
            (ids[k], crm, "pending", now, now_text)
            for k, e in fresh.items()
            if e.status == "pending"
            for crm in e.crms
        ],
    )
    return ids


def insert_rows(db: sqlite3.Connection, head: str, rows: Sequence[tuple[object, ...]]) -> None:
    """`head` ("INSERT INTO t (a, b)") for every row, many rows to a statement.

    executemany steps its statement once a row, and each step costs a trip through
    sqlite3 (and lets the GIL go); this steps once a chunk."""
    if not rows:
        return
    marks = "(" + ",".join("?" * len(rows[0])) + ")"
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        chunk = rows[start : start + ROWS_PER_STATEMENT]
        db.execute(f"{head} VALUES {','.join([marks] * len(chunk))}", _flat(chunk))


def _flat(rows: Sequence[tuple[object, ...]]) -> list[object]:
    return [value for row in rows for value in row]


def _results(
    batch: list[IntakeItem],
    known: dict[EventKey, Known],
    renewed: Set[EventKey],
    changed: Mapping[EventKey, NewEvent],
) -> list[IntakeResult | None]:
    results: list[IntakeResult | None] = []
    first_seen: set[EventKey] = set()
    for item in batch:
        if not isinstance(item, NewEvent):
            results.append(None)
            continue
        key = (item.kind, item.key)
        event_id, status, note = known[key]
        created = key in renewed and key not in first_seen
        first_seen.add(key)
        status = status.removeprefix("new:")
        results.append(
            IntakeResult(
                event_id,
                created,
                status,
                state_changed=created and key in changed,
                stale=status == "skipped" and (note or "").startswith(STALE_PREFIX),
            )
        )
    return results


def _nudge(db: sqlite3.Connection, event_ids: Sequence[int], now: float, now_text: str) -> None:
    """A repeated webhook for an unfinished event asks for an immediate retry."""
    if not event_ids:
        return
    db.executemany(
        "UPDATE deliveries SET next_attempt_at = ?, updated_at = ?,"
        " status = CASE WHEN status IN ('failed', 'dead', 'not_found') THEN 'pending'"
        " ELSE status END"
        " WHERE event_id = ? AND status NOT IN ('success', 'processing')",
        [(now, now_text, event_id) for event_id in event_ids],
    )
    db.executemany(REFRESH_EVENT_SQL, [(now_text, i) for i in event_ids])
