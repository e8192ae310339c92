"""One payment id, several bodies over time (issue 13.10 and 13.11): a status change is a
new state of the same event, stored and processed; a succeeded payment stays a duplicate
after `crm-bridge prune` deleted its event."""

from __future__ import annotations

import contextlib
import logging
import resource
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from bridge.store import Store
from tests.conftest import payment_payload
from tests.fakes.amocrm import FakeAmoCrm


async def test_a_pending_payment_later_confirmed_is_stored_and_delivered(
    run_bridge: Any, fake_amo: FakeAmoCrm, caplog: pytest.LogCaptureFixture
) -> None:
    async with run_bridge() as bridge:
        pending = await bridge.post_payment(payment_payload("pay_st", status="PENDING"))
        assert pending.status_code == 202 and pending.json()["status"] == "skipped"
        assert fake_amo.count() == 0
        with caplog.at_level(logging.INFO, logger="bridge.app"):
            confirmed = await bridge.post_payment(payment_payload("pay_st", costs=(7000,)))
        assert confirmed.status_code == 200, confirmed.text
        assert confirmed.json()["status"] == "success"
        assert bridge.query(
            "SELECT status, amount, json_extract(payload, '$.course_order.status'),"
            " error_message FROM payment_events WHERE payment_id = 'pay_st'"
        ) == [("success", 7000, "CONFIRMED", None)]
        # Sent once more, the confirmed payment is a duplicate like any other.
        again = await bridge.post_payment(payment_payload("pay_st", costs=(7000,)))
        assert again.status_code == 409
    [lead] = fake_amo.leads()
    assert len(fake_amo.notes(lead["id"])) == 1
    assert "event=payment:pay_st status changed to 'CONFIRMED'" in caplog.text


async def test_a_skipped_payment_changing_to_another_skipped_status_keeps_the_new_body(
    run_bridge: Any, fake_amo: FakeAmoCrm
) -> None:
    async with run_bridge() as bridge:
        await bridge.post_payment(payment_payload("pay_sk", status="PENDING"))
        same = await bridge.post_payment(payment_payload("pay_sk", status="PENDING"))
        assert same.json() == {"status": "skipped", "reason": "already skipped"}
        cancelled = await bridge.post_payment(payment_payload("pay_sk", status="CANCELLED"))
        assert cancelled.status_code == 202
        assert cancelled.json() == {
            "status": "skipped",
            "reason": "status CANCELLED is not processed",
        }
        assert bridge.query(
            "SELECT status, json_extract(payload, '$.course_order.status'), error_message"
            " FROM payment_events"
        ) == [("skipped", "CANCELLED", "status CANCELLED is not processed")]
    assert fake_amo.count() == 0


async def test_a_succeeded_payment_resent_after_prune_is_still_a_duplicate(
    run_bridge: Any, fake_amo: FakeAmoCrm
) -> None:
    async with run_bridge() as bridge:
        first = await bridge.post_payment(payment_payload("pay_pr"))
        assert first.status_code == 200
        failed_before = await bridge.post_payment(payment_payload("pay_skipped", status="X"))
        assert failed_before.status_code == 202
        operator = await Store.open(bridge.settings.database_path, clock=time.time)
        try:
            assert (await operator.prune(before=time.time() + 1))[0] == 2
        finally:
            await operator.close()
        assert bridge.query("SELECT COUNT(*) FROM events") == [(0,)]
        resent = await bridge.post_payment(payment_payload("pay_pr"))
        assert resent.status_code == 409
        assert resent.json() == {"status": "duplicate"}
        assert bridge.query("SELECT COUNT(*) FROM events") == [(0,)]
        # Only successes are remembered: a pruned skipped payment is taken as new.
        skipped = await bridge.post_payment(payment_payload("pay_skipped", status="X"))
        assert skipped.json()["status"] == "skipped"
    [lead] = fake_amo.leads()
    assert len(fake_amo.notes(lead["id"])) == 1


@contextlib.contextmanager
def _disk_full() -> Iterator[None]:
    """No file of this process may grow past its first byte: every write SQLite makes to
    the database or its WAL fails as on a full disk (EFBIG, reported as SQLITE_FULL)."""
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous_handler)


async def test_health_says_the_database_is_not_ok_on_a_full_disk(run_bridge: Any) -> None:
    """Issue 13.7: health wrote only a TEMP table and said ok while webhooks got 503."""
    async with run_bridge(wait_seconds=0) as bridge:
        assert (await bridge.client.get("/webhook/health")).status_code == 200
        with _disk_full():
            webhook = await bridge.post_payment(payment_payload("pay_full"))
            health = await bridge.client.get("/webhook/health")
        assert webhook.status_code == 503
        assert health.status_code == 503, health.text
        assert health.json()["database"]["ok"] is False
        assert (await bridge.client.get("/webhook/health")).status_code == 200
        assert (await bridge.post_payment(payment_payload("pay_full"))).status_code == 202
