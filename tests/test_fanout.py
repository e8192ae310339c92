"""One payment, several CRMs: each delivered independently (SPEC §3), every CRM at once."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from litestar.testing import AsyncTestClient
from pydantic import SecretStr

from bridge.app import create_app
from bridge.settings import crm_secrets, load_settings
from tests.clock import ManualClock
from tests.conftest import (
    Bridge,
    make_settings,
    payment_payload,
    reference_file_config,
    wait_until,
)
from tests.crm_cases import CASES
from tests.fakes.amocrm import FakeAmoCrm
from tests.fakes.hubspot import FakeHubSpot
from tests.test_hubspot_scenarios import hubspot_file_config

AMO_TOTAL = "700207"


async def test_hubspot_down_for_an_hour_does_not_hold_amocrm_back(tmp_path: Path) -> None:
    amo, hub, clock = FakeAmoCrm(), FakeHubSpot(), ManualClock(time.time())
    both = reference_file_config().model_copy(
        update={"crm": {**reference_file_config().crm, **hubspot_file_config().crm}}
    )
    settings = make_settings(
        tmp_path,
        both,
        amocrm_access_token=amo.issue_token(ttl=86400),
        hubspot_access_token=hub.issue_token(),
        retry_schedule_seconds="60,300,1800,7200",  # the production start of the schedule
        wait_seconds=2,
    )
    hub.down()
    app = create_app(
        settings, transports={"amocrm": amo.transport(), "hubspot": hub.transport()}, clock=clock
    )
    async with AsyncTestClient(app=app) as client:
        bridge = Bridge(client, settings, amo)
        answer = await bridge.post_payment(payment_payload("pay_split"))
        body: dict[str, Any] = answer.json()
        split = bridge.query("SELECT d.crm, d.status FROM deliveries d ORDER BY d.crm")
        audit_during = bridge.query("SELECT status FROM payment_events")
        # An hour later HubSpot is back; its retries have come due meanwhile.
        hub.up()
        clock.advance(3600)
        await wait_until(
            lambda: bridge.query("SELECT status FROM payment_events") == [("success",)],
            timeout=15,
        )
        again = await bridge.post_payment(payment_payload("pay_split"))
    assert answer.status_code == 202
    assert body["status"] == "queued"
    assert body["results"]["amocrm"]["lead_created"] is True
    assert body["results"]["hubspot"]["status"] == "retrying"
    assert split == [("amocrm", "success"), ("hubspot", "retrying")]
    assert audit_during == [("pending",)]
    assert again.status_code == 409
    [lead] = amo.leads()
    assert Decimal(str(amo.lead_field(lead["id"], AMO_TOTAL))) == 10000
    assert len(amo.notes(lead["id"])) == 1
    assert len(hub.contacts()) == 1
    [deal] = hub.deals()
    assert len(hub.notes(deal["id"])) == 1


async def test_two_sections_of_one_kind_deliver_side_by_side_each_with_its_secret(
    tmp_path: Path,
) -> None:
    # Production keeps today's variable (a section named like its kind); the sandbox
    # account reads the variables derived from its own section name.
    production, sandbox = FakeAmoCrm(), FakeAmoCrm()
    reference = reference_file_config()
    amo = reference.crm["amocrm"]
    two = reference.model_copy(
        update={"crm": {"amocrm": amo, "amo-sandbox": amo}}  # both of kind amocrm
    )
    settings = make_settings(
        tmp_path,
        two,
        amocrm_access_token=production.issue_token(ttl=86400),
        crm_env={"AMO_SANDBOX_ACCESS_TOKEN": SecretStr(sandbox.issue_token(ttl=86400))},
    )
    transports = {"amocrm": production.transport(), "amo-sandbox": sandbox.transport()}
    async with AsyncTestClient(app=create_app(settings, transports=transports)) as client:
        answer = await Bridge(client, settings, production).post_payment(payment_payload("pay_2"))
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "success"
    for fake in (production, sandbox):
        [lead] = fake.leads()
        assert Decimal(str(fake.lead_field(lead["id"], AMO_TOTAL))) == 10000
        assert len(fake.notes(lead["id"])) == 1


def test_secrets_are_read_per_section_name(monkeypatch: Any, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no .env here
    monkeypatch.setenv("AMO_SANDBOX_ACCESS_TOKEN", "sandbox-token")
    monkeypatch.setenv("AMO_SANDBOX_CLIENT_ID", "sandbox-client")
    monkeypatch.setenv("AMOCRM_ACCESS_TOKEN", "production-token")
    reference = reference_file_config()
    amo = reference.crm["amocrm"]
    file = reference.model_copy(update={"crm": {"amocrm": amo, "amo-sandbox": amo}})
    settings = load_settings(file=file)
    sandbox = crm_secrets(settings, "amo-sandbox", "ACCESS_TOKEN")
    production = crm_secrets(settings, "amocrm", "ACCESS_TOKEN")
    assert (sandbox.token, sandbox.client_id) == ("sandbox-token", "sandbox-client")
    assert sandbox.var("CLIENT_SECRET") == "AMO_SANDBOX_CLIENT_SECRET"
    assert (production.token, production.client_id) == ("production-token", "")
    # A section not named like its kind never falls back to the vendor-named variables.
    other = reference.model_copy(update={"crm": {"main": amo}})
    assert crm_secrets(load_settings(file=other), "main", "ACCESS_TOKEN").token is None


async def test_every_crm_configured_at_once_gets_the_payment(tmp_path: Path) -> None:
    """Every CRM the bridge supports (each CrmCase's section, Odoo twice: 18 and 19) in
    one configuration: one payment becomes one delivery, deal and note in each."""
    fakes = {case.name: case.make_fake() for case in CASES}
    sections: dict[str, Any] = {}
    credentials: dict[str, Any] = {"crm_env": {}}
    for case in CASES:
        sections |= case.file_config().crm
        given = case.credentials(fakes[case.name])
        credentials["crm_env"] |= given.pop("crm_env", {})
        credentials |= given
    file = reference_file_config().model_copy(update={"crm": sections})
    settings = make_settings(tmp_path, file, **credentials)
    transports = {name: fake.transport() for name, fake in fakes.items()}
    async with AsyncTestClient(app=create_app(settings, transports=transports)) as client:
        bridge = Bridge(client, settings, fakes["amocrm"])
        answer = await bridge.post_payment(payment_payload("pay_all"))
        await bridge.settle()
        deliveries = bridge.query("SELECT crm, status FROM deliveries ORDER BY crm")
    assert answer.status_code in (200, 202), answer.text
    assert set(answer.json()["results"]) == {case.name for case in CASES}
    assert deliveries == sorted((case.name, "success") for case in CASES)
    for case in CASES:
        fake = fakes[case.name]
        assert len(case.contacts(fake)) == 1, case.name
        [deal] = case.deals(fake)
        assert case.deal_number(fake, deal, "total_paid") == 10000, case.name
        assert len(case.notes(fake, deal)) == 1, case.name
