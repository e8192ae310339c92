"""Issue scenarios 1–8 through HTTP against the stateful fake Bitrix24 (webhook auth),
with `etc/crm-bitrix24.example.toml` as the only CRM; and what each payment costs."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import crm_calls, payment_payload
from tests.crm_cases import BY_NAME, CrmCase
from tests.fakes.bitrix24 import FakeBitrix24

CASE = BY_NAME["bitrix24"]


@pytest.fixture
def case() -> CrmCase:
    return CASE


async def test_returning_customer_found_by_telegram_costs_three_requests(
    run: Any, fake: FakeBitrix24
) -> None:
    contact_id = fake.add_contact(
        "Иван", telegram_id="123456789", telegram_username="typed_by_manager"
    )
    total_paid = CASE.config.deal_fields.total_paid
    deal = fake.add_deal(contact_id, stage_id="EXECUTING", fields={total_paid: 100})
    async with run() as bridge:
        response = await bridge.post_payment(payment_payload("pay_tg", costs=(700,)))
        calls = crm_calls(bridge, "pay_tg")
    assert response.status_code == 200
    assert response.json()["results"]["bitrix24"]["lead_id"] == str(deal)
    assert CASE.deal_number(fake, str(deal), "total_paid") == 800
    assert CASE.contact_field(fake, contact_id, "telegram_username") == "typed_by_manager"
    # lookup batch (with the contact's open deals), deal update, comment
    assert fake.count() == calls == 3


async def test_next_payment_after_an_autopay_deal_costs_three_requests(
    run: Any, fake: FakeBitrix24
) -> None:
    # Reference config: the deal made by the first payment sits in an excluded stage,
    # so the second one searches (Telegram id), finds no open deal and makes a new one.
    async with run() as bridge:
        await bridge.post_payment(payment_payload("pay_a1", costs=(1000,)))
        before = fake.count()
        response = await bridge.post_payment(payment_payload("pay_a2", costs=(700,)))
        calls = crm_calls(bridge, "pay_a2")
    assert response.json()["results"]["bitrix24"]["lead_created"] is True
    assert len(fake.contacts()) == 1 and len(fake.deals()) == 2
    # lookup batch (with the open deals), deal add, comment: 3. While the store files
    # the autopay deal as the customer's known deal, reading it first costs one more.
    assert fake.count() - before == calls in (3, 4)
