"""Operator queries behind the `bridge` command: stats, listings, prune, import."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from bridge.store.intake import IntakeMixin, insert_events, known_events, unknown_events
from bridge.store.records import (
    PRIORITY_BACKFILL,
    PRIORITY_LIVE,
    CrmStats,
    EventSummary,
    JournalEntry,
    NewEvent,
    OperatorStats,
    RequestRow,
    utc_text,
)

_PRUNABLE_EVENT = """
status IN ('success', 'skipped', 'failed', 'not_found') AND received_at < ?
AND COALESCE(processed_at, received_at) < ?
AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.id
                AND d.status IN ('pending', 'retrying', 'processing'))"""

# `crm-bridge events --crm X --status S`: the delivery statuses an event status stands for.
_DELIVERY_STATES: dict[str, tuple[str, ...]] = {
    "pending": ("pending", "retrying"),
    "failed": ("failed", "dead"),
}


# The platform's own time of an event, in its body: when paid; when the order changed.
_EVENT_TIME = {"payment": "$.course_order.created_at", "order": "$.order.updated_at"}


def _split_deliveries(packed: str | None) -> tuple[tuple[str, str], ...]:
    if not packed:
        return ()
    pairs = (item.split("\x1f", 1) for item in packed.split("\x1e"))
    return tuple(sorted((crm, status) for crm, status in pairs))


class OperatorMixin(IntakeMixin):
    # ---- operator queries (CLI) --------------------------------------------------------

    async def operator_stats(self) -> OperatorStats:
        """Counts behind `crm-bridge stats`."""
        kinds = await self._read(
            "SELECT kind, status, COUNT(*) FROM events GROUP BY kind, status ORDER BY 1, 2"
        )
        by_kind: dict[str, dict[str, int]] = {}
        for kind, status, count in kinds:
            by_kind.setdefault(str(kind), {})[str(status)] = int(count)
        events = [
            (status, sum(counts.get(status, 0) for counts in by_kind.values()))
            for status in sorted({status for counts in by_kind.values() for status in counts})
        ]
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
            by_kind=by_kind,
        )

    async def list_events(
        self,
        *,
        status: str | None = None,
        crm: str | None = None,
        since: float | None = None,
        limit: int = 50,
        customer_keys: Sequence[str] = (),
        deal_id: str | None = None,
        source: str | None = None,
        kind: str = "payment",
    ) -> list[EventSummary]:
        """Payment (or, with `kind`, order) events, newest first. With `crm`, `status` is
        that CRM's delivery status (`pending` includes `retrying`, `failed` includes
        `dead`); else the event's status. `customer_keys`: any of these `kind:value` keys;
        `source`: "live" or "import"."""
        where = ["e.kind = ?"]
        params: list[Any] = [kind]
        if customer_keys:
            marks = ",".join("?" * len(customer_keys))
            where.append(
                f"EXISTS (SELECT 1 FROM json_each(e.customer_keys) k WHERE k.value IN ({marks}))"
            )
            params += list(customer_keys)
        if deal_id is not None:
            where.append(
                "EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id AND d.deal_id = ?)"
            )
            params.append(deal_id)
        if source is not None:
            where.append("e.priority = ?")
            params.append(PRIORITY_BACKFILL if source == "import" else PRIORITY_LIVE)
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
            "  WHERE d.event_id = e.id),"
            " CASE WHEN json_valid(e.payload)"
            f"  THEN json_extract(e.payload, '{_EVENT_TIME[kind]}') END"
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
                paid_at=None if r[7] is None else str(r[7]),
                kind=kind,
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
        """Which of `keys` are stored already (`crm-bridge import --dry-run`)."""
        found: set[str] = set()
        for start in range(0, len(keys), 1000):
            chunk = keys[start : start + 1000]
            marks = ",".join("?" * len(chunk))
            rows = await self._read(
                f"SELECT key FROM events WHERE kind = ? AND key IN ({marks}) UNION"
                f" SELECT key FROM succeeded_keys WHERE kind = ? AND key IN ({marks})",
                (kind, *chunk, kind, *chunk),
            )
            found.update(str(row[0]) for row in rows)
        return found

    async def import_events(self, events: Sequence[NewEvent]) -> int:
        """Store a chunk of events in one transaction, as intake does; returns how many
        were new. Known keys are left alone: unlike a repeated webhook, no retry nudge."""
        now = self._clock()
        now_text = utc_text(now)

        def apply(db: sqlite3.Connection) -> int:
            fresh = unknown_events(events, known_events(db, events))
            if fresh:
                insert_events(db, fresh, now, now_text, PRIORITY_BACKFILL)
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
        # The keys of succeeded events stay (`succeeded_keys`, a few dozen bytes each): a
        # pruned payment the platform sends again is still a duplicate, not a second note.
        events = await self._delete_in_chunks(
            "INSERT OR IGNORE INTO succeeded_keys (kind, key) SELECT kind, key FROM events"
            f" WHERE id IN (SELECT id FROM events WHERE {_PRUNABLE_EVENT} ORDER BY id LIMIT ?)"
            " AND status = 'success'",
            (cutoff, cutoff, chunk),
            chunk,
            f"DELETE FROM events WHERE id IN (SELECT id FROM events WHERE {_PRUNABLE_EVENT}"
            " ORDER BY id LIMIT ?)",
        )
        requests = await self._delete_in_chunks(
            "DELETE FROM requests WHERE id IN (SELECT id FROM requests WHERE received_at < ?"
            " LIMIT ?)",
            (cutoff, chunk),
            chunk,
        )
        return events, requests

    async def _delete_in_chunks(
        self, sql: str, params: tuple[Any, ...], chunk: int, then: str | None = None
    ) -> int:
        """Run a `DELETE … LIMIT chunk` until it deletes fewer rows than `chunk`; with
        `then`, `sql` is what to do first in each chunk's transaction and `then` the
        DELETE (same parameters, same rows)."""

        def apply(db: sqlite3.Connection) -> int:
            cursor = db.execute(sql, params)
            if then is not None:
                cursor = db.execute(then, params)
            return int(cursor.rowcount)

        total = 0
        while True:
            count = await self._write(apply)
            total += count
            if count < chunk:
                return total

    async def token_ciphertexts(self) -> dict[str, str]:
        """Stored token ciphertexts by CRM (`crm-bridge rotate-key` re-encrypts them)."""
        rows = await self._read("SELECT crm, ciphertext FROM crm_tokens ORDER BY crm")
        return {str(crm): str(ciphertext) for crm, ciphertext in rows}

    async def replace_token_ciphertexts(self, changes: Mapping[str, tuple[str, str]]) -> int:
        """Swap ciphertexts `crm → (old, new)` in one transaction; a row whose ciphertext is
        no longer `old` (the running bridge refreshed that token meanwhile) is left as is.
        Returns how many were replaced."""
        now_text = utc_text(self._clock())

        def apply(db: sqlite3.Connection) -> int:
            replaced = 0
            for crm, (old, new) in changes.items():
                cursor = db.execute(
                    "UPDATE crm_tokens SET ciphertext = ?, updated_at = ?"
                    " WHERE crm = ? AND ciphertext = ?",
                    (new, now_text, crm, old),
                )
                replaced += cursor.rowcount
            return replaced

        return await self._write(apply)
