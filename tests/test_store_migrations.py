"""Schema migrations: a database of an earlier version is brought up to date in place."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from bridge.store import Store
from bridge.store.schema import MIGRATIONS, migrate


def _indexes(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
        return {name for (name,) in rows}


def _at_version(path: Path, version: int) -> None:
    """A database as a bridge of schema `version` left it, with one event in it."""
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, upto=version)
    assert conn.execute("PRAGMA user_version").fetchone() == (version,)
    conn.execute(
        "INSERT INTO events (kind, key, status, payload, received_at)"
        " VALUES ('payment', 'pay_old', 'pending', '{}', '2026-01-01 00:00:00.000')"
    )
    conn.execute(
        "INSERT INTO deliveries (event_id, crm, status, next_attempt_at, updated_at)"
        " VALUES (1, 'amocrm', 'pending', 0, '2026-01-01 00:00:00.000')"
    )
    conn.close()


async def test_a_new_database_is_at_the_latest_version(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "b.sqlite", clock=time.time)
    assert await store.schema_version() == len(MIGRATIONS)
    await store.close()
    # Opening again applies nothing twice.
    store = await Store.open(tmp_path / "b.sqlite", clock=time.time)
    assert await store.schema_version() == len(MIGRATIONS)
    await store.close()


async def test_version_3_drops_the_redundant_deliveries_index_and_keeps_the_data(
    tmp_path: Path,
) -> None:
    path = tmp_path / "b.sqlite"
    _at_version(path, 3)
    assert "deliveries_event" in _indexes(path)
    store = await Store.open(path, clock=time.time)
    assert await store.schema_version() == len(MIGRATIONS)
    await store.close()
    assert "deliveries_event" not in _indexes(path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT key, status FROM events").fetchall() == [("pay_old", "pending")]
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM deliveries WHERE event_id = 1"
        ).fetchall()
    assert "USING COVERING INDEX sqlite_autoindex_deliveries" in str(plan)


async def test_bodies_stored_with_nan_become_json_again(tmp_path: Path) -> None:
    """Issue 13.8: a NaN stored in a body made every json_extract over payment_events fail."""
    path = tmp_path / "b.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, upto=5)
    bodies = {
        "pay_nan": '{"course_order": {"payment_id": "pay_nan", "items": [{"package_id": NaN}]}}',
        "pay_inf": '{"course_order": {"payment_id": "pay_inf", "x": -Infinity, "n": "Имя",'
        ' "cut": "\\ud83d"}}',
        "pay_ok": '{"course_order": {"payment_id": "pay_ok", "n": 1e308}}',
    }
    for key, body in bodies.items():
        conn.execute(
            "INSERT INTO events (kind, key, status, payload, received_at)"
            " VALUES ('payment', ?, 'success', ?, '2026-01-01 00:00:00.000')",
            (key, body),
        )
    conn.close()
    store = await Store.open(path, clock=time.time)
    await store.close()
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT payment_id, json_extract(payload, '$.course_order.payment_id'),"
            " json_type(payload, '$.course_order.items[0].package_id'),"
            " json_type(payload, '$.course_order.x') FROM payment_events ORDER BY 1"
        ).fetchall()
        ok = conn.execute("SELECT payload FROM events WHERE key = 'pay_ok'").fetchone()
    assert rows == [
        ("pay_inf", "pay_inf", None, "null"),
        ("pay_nan", "pay_nan", "null", None),
        ("pay_ok", "pay_ok", None, None),
    ]
    assert ok == (bodies["pay_ok"],)  # valid bodies are left exactly as received


async def test_version_7_adds_the_operators_tables_to_a_version_6_database(
    tmp_path: Path,
) -> None:
    # Issue 16's migration came after issue 13's 5 and 6: a database those left (with a
    # CRM's state row) gains the call log, the operator's holds, alerts and runtime.
    path = tmp_path / "b.sqlite"
    _at_version(path, 6)
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO crm_state (crm, paused_reason) VALUES ('amocrm', NULL)")
    store = await Store.open(path, clock=time.time)
    assert await store.schema_version() == len(MIGRATIONS) >= 7
    assert await store.hold_crm("amocrm", "migration", "ops")
    assert (await store.holds())["amocrm"].reason == "migration"
    await store.close()
    with sqlite3.connect(path) as conn:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
        assert {"crm_calls", "alerts", "runtime", "succeeded_keys"} <= tables
        assert conn.execute("SELECT key FROM events").fetchall() == [("pay_old",)]


async def test_migration_9_adds_the_order_tables_to_a_version_8_database(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite"
    _at_version(path, 8)
    store = await Store.open(path, clock=time.time)
    assert await store.schema_version() == len(MIGRATIONS) >= 9
    await store.close()
    with sqlite3.connect(path) as db:
        names = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
        assert {"order_heads", "order_links", "order_events"} <= names
        assert db.execute("SELECT COUNT(*) FROM order_events").fetchone() == (0,)
        assert db.execute("SELECT payment_id FROM payment_events").fetchall() == [("pay_old",)]


# Issue 21's migration, found by what it does: another branch may number its own first.
SOURCE_MIGRATION = next(
    number
    for number, script in enumerate(MIGRATIONS, start=1)
    if isinstance(script, str) and "ADD COLUMN source" in script
)


async def test_the_source_migration_keeps_earlier_events_on_the_payment_route(
    tmp_path: Path,
) -> None:
    # Events stored before `[source.NAME]` existed came from /webhook/payment: their source
    # is NULL, so the worker reads them as it always did.
    path = tmp_path / "b.sqlite"
    _at_version(path, SOURCE_MIGRATION - 1)
    store = await Store.open(path, clock=time.time)
    assert await store.schema_version() == len(MIGRATIONS)
    [job] = (await store.due_deliveries(time.time(), ("amocrm",), 5)).jobs
    assert (job.key, job.source) == ("pay_old", None)
    view = await store.event("payment", "pay_old")
    assert view is not None and view.source is None
    await store.close()
