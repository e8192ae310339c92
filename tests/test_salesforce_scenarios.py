"""Payments through HTTP with Salesforce as the only CRM (the stateful fake org): what
only Salesforce does (its call counts, Composite, sessions, the daily allocation); the
scenarios every CRM shares are in test_scenarios.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import crm_calls, payment_payload
from tests.crm_cases import BY_NAME, Run, running
from tests.fakes.salesforce import YANDEX, FakeSalesforce

COMPOSITE = "/services/data/v68.0/composite"
CASE = BY_NAME["salesforce"]
salesforce_file_config = CASE.file_config


@pytest.fixture
def fake_sf() -> FakeSalesforce:
    return FakeSalesforce()


@pytest.fixture
def run_sf(tmp_path: Path, fake_sf: FakeSalesforce) -> Run:
    return running(CASE, fake_sf, tmp_path)


def api_calls(fake: FakeSalesforce) -> int:
    """Calls to the REST API (the token endpoint is not one)."""
    return CASE.api_calls(fake)


async def test_a_managers_contact_is_found_by_a_typed_phone_and_filled(run_sf, fake_sf) -> None:
    contact = fake_sf.add_contact(FirstName="Иван", LastName="Петров", Phone="8 (999) 123-45-67")
    deal = fake_sf.add_deal(contact, record_type=YANDEX, stage="In Progress")
    async with run_sf() as bridge:
        response = await bridge.post_payment(payment_payload("pay_m"))
        calls = crm_calls(bridge, "pay_m")
    assert response.status_code == 200, response.text
    assert response.json()["results"]["salesforce"]["lead_id"] == deal
    assert fake_sf.contact_field(contact, "Telegram_Id__c") == "123456789"
    assert fake_sf.contact_field(contact, "Phone") == "8 (999) 123-45-67"  # never overwritten
    # lookup (query and search in one batch), fill, deals, update, note
    assert calls == 5 and fake_sf.searches() == 1
    assert fake_sf.refusals == []


async def test_an_ended_session_is_minted_again_without_failing_the_payment(
    run_sf, fake_sf
) -> None:
    async with run_sf() as bridge:
        await bridge.post_payment(payment_payload("pay_1"))
        fake_sf.expire_sessions()
        response = await bridge.post_payment(payment_payload("pay_2"))
    assert response.status_code == 200, response.text
    assert fake_sf.tokens_minted == 2


async def test_a_refused_session_pauses_salesforce_and_health_says_why(run_sf, fake_sf) -> None:
    file = salesforce_file_config(options={"flow": "jwt_bearer", "username": "nobody@example.com"})
    async with run_sf(file) as bridge:
        response = await bridge.post_payment(payment_payload("pay_paused"))
        health = (await bridge.client.get("/webhook/health")).json()
    assert response.status_code == 202
    assert fake_sf.contacts() == [] and api_calls(fake_sf) == 0
    text = str(health)
    assert "user hasn't approved this consumer" in text


async def test_near_the_daily_allocation_deliveries_wait_and_nothing_fails(run_sf, fake_sf) -> None:
    fake_sf.daily_limit, fake_sf.api_used = 1000, 899
    async with run_sf() as bridge:
        response = await bridge.post_payment(payment_payload("pay_1"))
        health = (await bridge.client.get("/webhook/health")).json()
        [(status,)] = bridge.query("SELECT status FROM deliveries")
    # The lookup's batch (two sub-requests) reads 901/1000: past the 90 % mark, the
    # bridge stops before creating anything and the delivery waits for the usage to fall.
    assert response.status_code == 202
    assert status in ("pending", "retrying")
    assert fake_sf.contacts() == []
    assert "daily_api_holding_back" in str(health)
