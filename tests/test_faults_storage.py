"""The event database fails under a running bridge (SPEC §2 503, §7).

The database file is deleted, or made read-only (chmod 0400), while the bridge runs:
webhooks get 503 (not 500, not 2xx) so the platform retries, health says the database
is not ok, nothing is acknowledged that was not stored, and once the file is writable
again the bridge carries on without a restart. The worker must ride the outage out
quietly: no busy loop, no delivery left hanging in `processing`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import reference_file_config, wait_until
from tests.customers import customer_payment
from tests.fakes.amocrm import FakeAmoCrm
from tests.fakes.service import FakeRequest, FakeResponse


@pytest.mark.parametrize("which", ["main-file", "with-wal-and-shm"])
async def test_deleted_database_answers_503_never_2xx(
    run_bridge: Any, fake_amo: FakeAmoCrm, which: str
) -> None:
    async with run_bridge(wait_seconds=0) as bridge:
        path: Path = bridge.settings.database_path
        before = await bridge.post_payment(customer_payment(0, "pay_s"))
        assert before.status_code == 202
        await bridge.settle()
        for suffix in ("", "-wal", "-shm") if which == "with-wal-and-shm" else ("",):
            os.unlink(f"{path}{suffix}")
        answers = await asyncio.gather(
            *(bridge.post_payment(customer_payment(n, "pay_s")) for n in range(1, 21))
        )
        repeat = await bridge.post_payment(
            customer_payment(0, "pay_s")
        )  # was stored, file now gone
        health = await bridge.client.get("/webhook/health")
    assert {a.status_code for a in answers} == {503}
    assert answers[0].json() == {"error": "storage_unavailable"}
    assert repeat.status_code == 503
    assert health.status_code == 503
    assert health.json()["database"]["ok"] is False
    assert len(fake_amo.contacts()) == 1  # nothing unstored was delivered either


async def test_read_only_database_answers_503_and_nothing_unstored_is_acknowledged(
    run_bridge: Any, fake_amo: FakeAmoCrm
) -> None:
    fake_amo.rate_limit = 1000
    fast = reference_file_config(rate_limit_per_second=300)
    async with run_bridge(file=fast, wait_seconds=0) as bridge:
        path: Path = bridge.settings.database_path

        async def flip_read_only() -> None:
            await asyncio.sleep(0.05)
            os.chmod(path, 0o400)

        async def post_later(n: int) -> Any:
            await asyncio.sleep(n * 0.003)
            return await bridge.post_payment(customer_payment(n, "pay_s"))

        # Posts racing with the chmod: each either stored (2xx) or refused (503).
        *answers, _ = await asyncio.gather(*(post_later(n) for n in range(40)), flip_read_only())
        read_only = await bridge.post_payment(customer_payment(100, "pay_s"))
        health = await bridge.client.get("/webhook/health")
        os.chmod(path, 0o600)
        after = await bridge.post_payment(customer_payment(101, "pay_s"))
        # Delivery after the outage is the business of the xfail test below: a delivery
        # cut short by the chmod may stay `processing` until a restart.
        stored = {row[0] for row in bridge.query("SELECT payment_id FROM payment_events")}

    codes = {a.status_code for a in answers}
    assert codes <= {202, 503}, codes
    acknowledged = {f"pay_s{n}" for n, a in enumerate(answers) if a.status_code == 202}
    refused = {f"pay_s{n}" for n, a in enumerate(answers) if a.status_code == 503}

    assert acknowledged <= stored, f"acknowledged but not stored: {acknowledged - stored}"
    assert read_only.status_code == 503
    assert read_only.json() == {"error": "storage_unavailable"}
    assert "pay_s100" not in stored
    assert health.status_code == 503 and health.json()["database"]["ok"] is False
    # Health is unauthenticated: the cause is in the journal, not in the answer.
    assert health.json()["database"]["error"] == "unavailable"
    assert after.status_code == 202
    assert "pay_s101" in stored
    assert refused.isdisjoint(stored), "answered 503 although stored"


async def test_worker_does_not_spin_while_the_database_is_read_only(
    run_bridge: Any, fake_amo: FakeAmoCrm, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="bridge")
    fake_amo.down()
    async with run_bridge(wait_seconds=0) as bridge:
        path: Path = bridge.settings.database_path
        assert (await bridge.post_payment(customer_payment(1, "pay_s"))).status_code == 202
        await wait_until(lambda: bridge.query("SELECT status FROM deliveries") == [("retrying",)])
        os.chmod(path, 0o400)
        caplog.clear()
        # A webhook in the outage is refused, and logged: proof the capture sees the log.
        assert (await bridge.post_payment(customer_payment(2, "pay_s"))).status_code == 503
        await asyncio.sleep(1.0)
        errors = sum(1 for record in caplog.records if record.levelno >= logging.ERROR)
        os.chmod(path, 0o600)
        fake_amo.up()
        await bridge.settle(timeout=20)
    assert 1 <= errors <= 10, f"{errors} ERROR lines in one second of database outage"


async def test_delivery_cut_short_by_a_storage_outage_resumes_when_it_is_back(
    run_bridge: Any, fake_amo: FakeAmoCrm
) -> None:
    async with run_bridge(wait_seconds=0) as bridge:
        path: Path = bridge.settings.database_path

        def read_only_after_create(request: FakeRequest, _response: FakeResponse) -> None:
            if request.path.endswith("/leads/complex"):
                os.chmod(path, 0o400)  # the CRM write is done, its journal write will fail

        fake_amo.on_applied = read_only_after_create
        assert (await bridge.post_payment(customer_payment(1, "pay_s"))).status_code == 202
        await wait_until(lambda: fake_amo.count(method="POST") == 1)
        await asyncio.sleep(0.3)
        fake_amo.on_applied = None
        os.chmod(path, 0o600)
        await bridge.settle(timeout=3)
        statuses = bridge.query("SELECT status FROM payment_events")
    assert statuses == [("success",)]
    [lead] = fake_amo.leads()
    assert len(fake_amo.contacts()) == 1
    assert len(fake_amo.notes(lead["id"])) == 1
