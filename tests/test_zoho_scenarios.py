"""What only Zoho CRM does, through HTTP with Zoho as the only CRM (the stateful fake).

The shared scenarios (`tests/test_scenarios.py`) run Zoho too, the new customer's three
calls and a lost composite answer among them; here: a returning customer's search and
deals in one composite call, and the credits in health.
Every request the bridge sends is checked against Zoho's v8 OpenAPI files (the check
fails when they are missing).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import payment_payload
from tests.crm_cases import BY_NAME, Run, running
from tests.fakes.openapi_check import SentRequests
from tests.fakes.zoho import FakeZoho
from tests.fakes.zoho_openapi import ZohoOpenApi

CASE = BY_NAME["zoho"]
SENT = SentRequests()


@pytest.fixture
def fake() -> FakeZoho:
    return FakeZoho(CASE.file_config().crm["zoho"])


@pytest.fixture
def run_bridge(tmp_path: Path, fake: FakeZoho) -> Run:
    """The app on the fake; every request it sends is checked against the OpenAPI files."""
    return running(CASE, fake, tmp_path, SENT.recording)


@pytest.fixture(autouse=True)
def requests_conform_to_openapi() -> Iterator[None]:
    yield from SENT.checked(ZohoOpenApi.beside_shared)  # raises when ../shared lacks them


def api_calls(fake: FakeZoho) -> list[str]:
    return [f"{c.method} {c.path}" for c in fake.calls if not c.path.startswith("/oauth")]


async def test_returning_customer_is_three_calls_and_closed_deals_are_left(
    run_bridge, fake
) -> None:
    person = fake.add_contact(
        "Петров", "Иван", phone="8 (999) 123-45-67", telegram_id="123", telegram_username="ivan"
    )
    open_deal = fake.add_deal(
        person,
        pipeline="Yandex",
        stage="В работе",
        modified=1000,
        fields={"Total_Paid": 1500, "Purchase_Count": 2},
    )
    won = fake.add_deal(person, stage="Closed Won", modified=3000)
    autopay = fake.add_deal(person, stage="Автооплата", modified=4000)
    async with run_bridge() as bridge:
        response = await bridge.post_payment(payment_payload("pay_ret"))
    assert response.status_code == 200, response.text
    assert response.json()["results"]["zoho"]["lead_id"] == open_deal
    stored = fake.deal(open_deal)
    assert (stored["Total_Paid"], stored["Purchase_Count"]) == (11500, 3)
    assert fake.notes(won) == fake.notes(autopay) == []
    # The search with the contact's deals (one composite call), the update, the note.
    assert api_calls(fake) == [
        "POST /crm/v8/__composite_requests",
        f"PUT /crm/v8/Deals/{open_deal}",
        "POST /crm/v8/Notes",
    ]


async def test_health_shows_the_credits_the_payments_spent(run_bridge, fake) -> None:
    gathering = CASE.file_config(excluded_status_ids=())
    async with run_bridge(file=gathering) as bridge:
        await bridge.post_payment(payment_payload("pay_k1", costs=(1000,)))
        before = len(api_calls(fake))
        second = await bridge.post_payment(payment_payload("pay_k2", costs=(700,)))
        health = (await bridge.client.get("/webhook/health")).json()["crms"]["zoho"]
    assert second.status_code == 200
    assert len(api_calls(fake)) - before == 3  # the deal, its update, the note
    [deal] = fake.deals()
    assert (deal["Total_Paid"], deal["Purchase_Count"]) == (1700, 2)
    assert health["credits_used_24h"] == fake.credits_used == 6
    assert health["credits_remaining"] == 50_000 - 6
