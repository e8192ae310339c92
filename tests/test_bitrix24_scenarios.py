"""Issue scenarios 1–8 through HTTP against the stateful fake Bitrix24 (webhook auth),
with `etc/crm-bitrix24.example.toml` as the only CRM; and what each payment costs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import crm_calls, number, payment_payload
from tests.crm_cases import BY_NAME, Run, running
from tests.fakes.bitrix24 import FakeBitrix24

DEAL = {
    "subjects": "UF_CRM_SUBJECTS",
    "direction": "UF_CRM_DIRECTION",
    "last_amount": "UF_CRM_LAST_PAYMENT",
    "last_at": "UF_CRM_LAST_PAYMENT_AT",
    "payment_id": "UF_CRM_PAYMENT_ID",
    "invoice_id": "UF_CRM_INVOICE_ID",
    "total": "UF_CRM_TOTAL_PAID",
    "count": "UF_CRM_PURCHASES",
}
TG_ID, TG_USERNAME = "UF_CRM_TG_ID", "UF_CRM_TG_USERNAME"
CASE = BY_NAME["bitrix24"]
bitrix_file = CASE.file_config


@pytest.fixture
def fake_bx() -> FakeBitrix24:
    return FakeBitrix24()


@pytest.fixture
def run_bx(tmp_path: Path, fake_bx: FakeBitrix24) -> Run:
    return running(CASE, fake_bx, tmp_path)


# ---- 1: a new customer ----------------------------------------------------------------


# ---- 2: a returning customer ----------------------------------------------------------


async def test_returning_customer_found_by_telegram_costs_three_requests(
    run_bx: Any, fake_bx: FakeBitrix24
) -> None:
    contact_id = fake_bx.add_contact(
        "Иван", telegram_id="123456789", telegram_username="typed_by_manager"
    )
    deal = fake_bx.add_deal(contact_id, stage_id="EXECUTING", fields={DEAL["total"]: 100})
    async with run_bx() as bridge:
        response = await bridge.post_payment(payment_payload("pay_tg", costs=(700,)))
        calls = crm_calls(bridge, "pay_tg")
    assert response.status_code == 200
    assert response.json()["results"]["bitrix24"]["lead_id"] == str(deal)
    assert number(fake_bx.deal_field(deal, DEAL["total"])) == 800
    assert fake_bx.contact_field(contact_id, TG_USERNAME) == "typed_by_manager"
    # lookup batch (with the contact's open deals), deal update, comment
    assert fake_bx.count() == calls == 3


async def test_next_payment_after_an_autopay_deal_costs_three_requests(
    run_bx: Any, fake_bx: FakeBitrix24
) -> None:
    # Reference config: the deal made by the first payment sits in an excluded stage,
    # so the second one searches (Telegram id), finds no open deal and makes a new one.
    async with run_bx() as bridge:
        await bridge.post_payment(payment_payload("pay_a1", costs=(1000,)))
        before = fake_bx.count()
        response = await bridge.post_payment(payment_payload("pay_a2", costs=(700,)))
        calls = crm_calls(bridge, "pay_a2")
    assert response.json()["results"]["bitrix24"]["lead_created"] is True
    assert len(fake_bx.contacts()) == 1 and len(fake_bx.deals()) == 2
    # lookup batch (with the open deals), deal add, comment: 3. While the store files
    # the autopay deal as the customer's known deal, reading it first costs one more.
    assert fake_bx.count() - before == calls in (3, 4)


# ---- 7: rate limits and outages -------------------------------------------------------


async def test_a_field_bitrix_refuses_fails_the_payment_without_echoing_the_webhook(
    run_bx: Any, fake_bx: FakeBitrix24
) -> None:
    webhook = fake_bx.webhook_url()
    fields = bitrix_file().crm["bitrix24"].deal_fields
    broken = bitrix_file(deal_fields=fields.model_copy(update={"payment_id": "UF_CRM_NO_SUCH"}))
    async with run_bx(file=broken, bitrix24_webhook_url=webhook) as bridge:
        response = await bridge.post_payment(payment_payload("pay_broken"))
        [(error,)] = bridge.query("SELECT last_error FROM deliveries")
    assert response.status_code == 202
    assert response.json()["status"] == "failed"
    assert "UF_CRM_NO_SUCH" in error
    secret = webhook.rstrip("/").rsplit("/", 1)[1]
    assert secret not in error and secret not in response.text
