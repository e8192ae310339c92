"""Payments through HTTP with Salesforce as the only CRM (the stateful fake org): what
only Salesforce does (its call counts, Composite, sessions, the daily allocation); the
scenarios every CRM shares are in test_scenarios.py."""

from __future__ import annotations

import pytest

from tests.conftest import crm_calls, payment_payload
from tests.crm_cases import BY_NAME, CrmCase
from tests.fakes.salesforce import YANDEX

CASE = BY_NAME["salesforce"]


@pytest.fixture
def case() -> CrmCase:
    return CASE


async def test_a_managers_contact_is_found_by_a_typed_phone_and_filled(run, fake) -> None:
    contact = fake.add_contact(FirstName="Иван", LastName="Петров", Phone="8 (999) 123-45-67")
    deal = fake.add_deal(contact, record_type=YANDEX, stage="In Progress")
    async with run() as bridge:
        response = await bridge.post_payment(payment_payload("pay_m"))
        calls = crm_calls(bridge, "pay_m")
    assert response.status_code == 200, response.text
    assert response.json()["results"]["salesforce"]["lead_id"] == deal
    assert fake.contact_field(contact, "Telegram_Id__c") == "123456789"
    assert fake.contact_field(contact, "Phone") == "8 (999) 123-45-67"  # never overwritten
    # lookup (query and search in one batch), fill, deals, update, note
    assert calls == 5 and fake.searches() == 1
    assert fake.refusals == []


async def test_an_ended_session_is_minted_again_without_failing_the_payment(run, fake) -> None:
    async with run() as bridge:
        await bridge.post_payment(payment_payload("pay_1"))
        fake.expire_sessions()
        response = await bridge.post_payment(payment_payload("pay_2"))
    assert response.status_code == 200, response.text
    assert fake.tokens_minted == 2


async def test_a_refused_session_pauses_salesforce_and_health_says_why(run, fake) -> None:
    file = CASE.file_config(options={"flow": "jwt_bearer", "username": "nobody@example.com"})
    async with run(file) as bridge:
        response = await bridge.post_payment(payment_payload("pay_paused"))
        health = (await bridge.client.get("/webhook/health")).json()
    assert response.status_code == 202
    assert fake.contacts() == [] and CASE.api_calls(fake) == 0
    text = str(health)
    assert "user hasn't approved this consumer" in text


async def test_near_the_daily_allocation_deliveries_wait_and_nothing_fails(run, fake) -> None:
    fake.daily_limit, fake.api_used = 1000, 899
    async with run() as bridge:
        response = await bridge.post_payment(payment_payload("pay_1"))
        health = (await bridge.client.get("/webhook/health")).json()
        [(status,)] = bridge.query("SELECT status FROM deliveries")
    # The lookup's batch (two sub-requests) reads 901/1000: past the 90 % mark, the
    # bridge stops before creating anything and the delivery waits for the usage to fall.
    assert response.status_code == 202
    assert status in ("pending", "retrying")
    assert fake.contacts() == []
    assert "daily_api_holding_back" in str(health)
