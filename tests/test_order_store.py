"""Orders in the store (migration 9's tables; the migration: test_store_migrations.py): the
stale check at intake, in one group commit too, and the worker's per CRM for an old event
retried after a newer one."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from bridge.errors import PermanentCrmError
from bridge.intake import order_intake
from bridge.store import Store
from tests.conftest import make_settings, wait_until
from tests.order_cases import MEMORY, post_order
from tests.order_support import order_body
from tests.test_order_route import order_file

LATER = "2026-11-21T09:00:00+03:00"


def _event(tmp_path: Path, **changes: str) -> object:
    settings = make_settings(tmp_path, order_file())
    body = order_body(**changes)
    import json

    from bridge.order_payloads import parse_order

    return order_intake(parse_order(body), json.dumps(body), settings).event


async def test_an_older_event_is_stale_whether_it_comes_later_or_in_the_same_batch(
    tmp_path: Path,
) -> None:
    store = await Store.open(tmp_path / "b.sqlite", clock=time.time)
    try:
        newer = _event(tmp_path, updated_at=LATER)
        older = _event(tmp_path)
        first = await store.intake(newer)  # type: ignore[arg-type]
        second = await store.intake(older)  # type: ignore[arg-type]
        assert (first.created, first.stale) == (True, False)
        assert (second.created, second.stale, second.status) == (True, True, "skipped")
        again = await store.intake(older)  # type: ignore[arg-type]
        assert (again.created, again.stale) == (False, True)
        # Two other orders' events arriving together, the newer first: one group commit.
        pair = await asyncio.gather(
            store.intake(_event(tmp_path, order_id="ord_9", updated_at=LATER)),  # type: ignore[arg-type]
            store.intake(_event(tmp_path, order_id="ord_9")),  # type: ignore[arg-type]
        )
        assert [result.stale for result in pair] == [False, True]
    finally:
        await store.close()
    with sqlite3.connect(tmp_path / "b.sqlite") as db:
        deliveries = db.execute(
            "SELECT e.key, COUNT(d.id) FROM events e LEFT JOIN deliveries d ON d.event_id = e.id"
            " GROUP BY e.key ORDER BY e.key"
        ).fetchall()
    assert deliveries == [
        ("ord_1042@2026-11-20T07:15:00Z", 0),
        ("ord_1042@2026-11-21T06:00:00Z", 1),
        ("ord_9@2026-11-20T07:15:00Z", 0),
        ("ord_9@2026-11-21T06:00:00Z", 1),
    ]


async def test_an_old_failed_event_retried_after_a_newer_one_was_applied_changes_nothing(
    tmp_path: Path,
) -> None:
    crm = MEMORY.make_fake()
    async with MEMORY.running(crm, tmp_path)() as bridge:
        crm.fail_at(1, error=PermanentCrmError("amocrm", "HTTP 400 refused"))
        old = await post_order(bridge, order_body(status="reserved"))
        assert old.json()["status"] == "failed"
        newer = order_body(status="in_rent", updated_at=LATER)
        assert (await post_order(bridge, newer)).status_code == 200
        calls = len(crm.calls)
        # The platform sends the old event again: a repeat of a failed event is retried.
        again = await post_order(bridge, order_body(status="reserved"))
        assert again.status_code in (200, 202), again.text
        await wait_until(
            lambda: (
                bridge.query(
                    "SELECT status FROM events WHERE key = 'ord_1042@2026-11-20T07:15:00Z'"
                )
                == [("success",)]
            )
        )
        assert len(crm.calls) == calls
        assert bridge.query("SELECT status FROM order_links") == [("in_rent",)]
