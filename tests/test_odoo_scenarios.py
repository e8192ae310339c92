"""Payments through HTTP into the stateful fake Odoo, once over JSON-RPC (an Odoo 18
server) and once over JSON-2 (Odoo 19), through the two Odoo `CrmCase`s (the example
section as the only CRM): a customer a manager typed, a lost deal, and an expired key the
error tree must pause on. The shared scenarios (tests/test_scenarios.py) run both cases
too, a field Odoo lacks among them."""

from __future__ import annotations

import pytest

from tests.conftest import crm_calls, payment_payload
from tests.crm_cases import BY_NAME, CrmCase, Run
from tests.fakes.odoo import FakeOdoo


@pytest.fixture(params=["odoo", "odoo-19"], ids=["jsonrpc-18", "json2-19"])
def case(request: pytest.FixtureRequest) -> CrmCase:
    return BY_NAME[request.param]


async def test_returning_customer_typed_by_a_manager_is_found(
    run: Run, case: CrmCase, fake: FakeOdoo
) -> None:
    partner = fake.add_partner("Иван П.", phone="8 (999) 123-45-67", email="Ivan@Example.com")
    lead = fake.add_lead(partner, name="Курс", stage_id=3, team_id=2, expected_revenue=500)
    won = fake.add_lead(partner, name="Старая", stage_id=1)
    fake.set_won(won)
    async with run() as bridge:
        answer = await bridge.post_payment(payment_payload("pay_r", telegram_id=None))
        calls = crm_calls(bridge, "pay_r")
    assert answer.status_code == 200, answer.text
    assert answer.json()["results"][case.name] == {
        "contact_id": str(partner),
        "lead_id": str(lead),
        "lead_created": False,
    }
    assert fake.lead(lead)["x_payment_id"] == "pay_r"
    assert fake.lead(won)["x_payment_id"] is False
    # A returning customer's calls (the session's, lookup, open deals, write, note), and
    # the fill of the empty Telegram username.
    assert case.returning_calls + 1 == calls
    assert fake.partner(partner)["x_telegram_username"] == "ivan_petrov"


async def test_a_lost_deal_is_not_reused(run: Run, case: CrmCase, fake: FakeOdoo) -> None:
    partner = fake.add_partner("Иван", phone="+79991234567")
    lost = fake.add_lead(partner, stage_id=3)
    fake.set_lost(lost)
    async with run() as bridge:
        answer = await bridge.post_payment(payment_payload("pay_l"))
    assert answer.status_code == 200, answer.text
    assert answer.json()["results"][case.name]["lead_created"] is True
    assert fake.lead(lost)["x_payment_id"] is False


async def test_an_expired_key_pauses_the_crm(run: Run, case: CrmCase, fake: FakeOdoo) -> None:
    credentials = case.credentials(fake)
    fake.expire_api_keys()
    async with run(**credentials) as bridge:
        answer = await bridge.post_payment(payment_payload("pay_k"))
        [(reason,)] = bridge.query(
            "SELECT paused_reason FROM crm_state WHERE crm = ?", (case.name,)
        )
    assert answer.status_code == 202, answer.text
    assert reason
    assert fake.api_keys[0].key not in reason
    assert fake.partners() == []
