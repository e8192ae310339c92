"""Replay and search by filter: `retry --status/--crm/--since`, `events --customer/--deal/
--source/--follow`; health degraded while deliveries fail; retries logged at WARNING."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from bridge.store import NewEvent, Store
from bridge.store.records import PRIORITY_BACKFILL
from tests.cli_support import T0, Cli, make_cli, seed
from tests.conftest import payment_payload


@pytest.fixture
def seeded(tmp_path: Path) -> Cli:
    cli = make_cli(tmp_path)
    cli.clock = lambda: T0 + 3600
    cli.with_store(
        lambda store: seed(
            store,
            {"pay_ok1": "success", "pay_bad": "failed", "pay_dead": "dead", "pay_wait": "retrying"},
        )
    )
    return cli


def test_retry_by_status_and_crm(seeded: Cli) -> None:
    result = seeded("retry", "--status", "dead", "--crm", "amocrm")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("1 event(s) queued again")
    statuses = dict(
        seeded.query("SELECT e.key, d.status FROM deliveries d JOIN events e ON e.id = d.event_id")
    )
    assert statuses["pay_dead"] == "pending" and statuses["pay_bad"] == "failed"
    assert "no delivery matches" in seeded("retry", "--status", "dead").stdout
    assert seeded("retry", "--crm", "nosuch").exit_code == 2
    assert seeded("retry", "pay_bad", "--status", "failed").exit_code == 2


def test_retry_since_leaves_older_events(seeded: Cli) -> None:
    # Every seeded event was received at T0; "since 10 minutes ago" (T0+50 min) is none.
    assert "no delivery matches" in seeded("retry", "--since", "10m").stdout
    assert seeded("retry", "--since", "2h").stdout.startswith("2 event(s) queued again")


def test_events_by_customer_deal_and_source(tmp_path: Path) -> None:
    cli = make_cli(tmp_path)

    async def fill(store: Store) -> None:
        await seed(store, {"pay_0001": "success", "pay_0002": "failed"})
        body = json.dumps(payment_payload("imp_1", phone="89990000042"))
        await store.import_events(
            [
                NewEvent(
                    "payment",
                    "imp_1",
                    "pending",
                    "100",
                    ("phone:+79990000042",),
                    body,
                    ("amocrm",),
                )
            ]
        )

    cli.with_store(fill)
    # new_event keys customers as phone:+7999<key digits>: pay_0001 → +79990000001.
    assert [e["payment_id"] for e in cli.json("events", "--customer", "8 999 000-00-01")] == [
        "pay_0001"
    ]
    assert [e["payment_id"] for e in cli.json("events", "--deal", "222")] == ["pay_0001"]
    assert [e["payment_id"] for e in cli.json("events", "--source", "import")] == ["imp_1"]
    live = {e["payment_id"] for e in cli.json("events", "--source", "live")}
    assert live == {"pay_0001", "pay_0002"}
    assert cli("events", "--customer", "not a person").exit_code == 2
    assert PRIORITY_BACKFILL == 1


def test_events_follow_prints_arrivals_and_changes(tmp_path: Path) -> None:
    cli = make_cli(tmp_path)
    cli.with_store(lambda store: seed(store, {"pay_0001": "pending"}))
    cli.clock = lambda: T0 - 60
    cli.follow_polls = 2
    result = cli("events", "--follow", "--json")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["payment_id"] for line in lines] == ["pay_0001"]  # printed once, unchanged
    cli.follow_polls = 1
    assert "pay_0001  pending" in cli("events", "-f").stdout


async def test_health_degraded_with_counts_and_last_error_cleared(run_bridge: Any) -> None:
    async with run_bridge() as bridge:
        bridge.fake.fail_next(1, 400, method="GET")
        response = await bridge.post_payment(payment_payload("pay_refused"))
        assert response.json()["status"] == "failed"
        health = (await bridge.client.get("/webhook/health")).json()
        assert health["status"] == "degraded"
        assert health["deliveries"] == {"failed": 1, "dead": 0}
        assert health["crms"]["amocrm"]["failed"] == 1
        assert health["crms"]["amocrm"]["last_error"]
        assert health["crms"]["amocrm"]["last_error_at"].endswith("Z")
        assert "1 failed and 0 dead deliveries" in health["reasons"][0]
        ok = await bridge.post_payment(payment_payload("pay_fine", telegram_id="555"))
        assert ok.status_code == 200
        health = (await bridge.client.get("/webhook/health")).json()
        assert health["crms"]["amocrm"]["last_error"] is None
        assert health["crms"]["amocrm"]["last_error_at"] is None
        assert health["status"] == "degraded"  # the failed delivery still needs the operator


async def test_a_transient_retry_is_a_warning_not_an_error(
    run_bridge: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.worker")
    async with run_bridge() as bridge:
        bridge.fake.fail_next(3, 503, method="GET")  # beats the quick retries once
        await bridge.post_payment(payment_payload("pay_blip"))
        await bridge.settle()
    outcomes = [r for r in caplog.records if "event=payment:pay_blip" in r.getMessage()]
    retry = [r for r in outcomes if "outcome=retry" in r.getMessage()]
    assert retry and all(r.levelno == logging.WARNING for r in retry)
    assert outcomes[-1].levelno == logging.INFO and "outcome=success" in outcomes[-1].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
