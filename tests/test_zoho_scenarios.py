"""What only Zoho CRM does, through HTTP with Zoho as the only CRM (the stateful fake).

The shared scenarios (`tests/test_scenarios.py`) run Zoho too, the new customer's three
calls, a returning customer's search and deals in one composite call and a lost composite
answer among them; here: the credits in health. Every request the bridge sends, here and
there, is checked against Zoho's v8 OpenAPI files (the check fails when they are missing;
the case's `openapi`).
"""

from __future__ import annotations

import pytest

from tests.conftest import payment_payload
from tests.crm_cases import BY_NAME, CrmCase

CASE = BY_NAME["zoho"]


@pytest.fixture
def case() -> CrmCase:
    return CASE


async def test_health_shows_the_credits_the_payments_spent(run, fake) -> None:
    # The shared known-customer scenario's two payments (test_scenarios checks their calls
    # and the deal): three credits each.
    gathering = CASE.file_config(excluded_status_ids=())
    async with run(file=gathering) as bridge:
        await bridge.post_payment(payment_payload("pay_k1", costs=(1000,)))
        second = await bridge.post_payment(payment_payload("pay_k2", costs=(700,)))
        health = (await bridge.client.get("/webhook/health")).json()["crms"]["zoho"]
    assert second.status_code == 200
    assert health["credits_used_24h"] == fake.credits_used == 6
    assert health["credits_remaining"] == 50_000 - 6
