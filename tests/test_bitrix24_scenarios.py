"""What only Bitrix24 does, through HTTP against its stateful fake (webhook auth) with
`etc/crm-bitrix24.example.toml` as the only CRM: a customer found by Telegram id in the
lookup batch that reads the open deals too. The shared scenarios (tests/test_scenarios.py)
run Bitrix24 too."""

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
