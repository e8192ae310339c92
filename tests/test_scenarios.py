"""End-to-end scenarios through HTTP, written once and run against every CRM's fake.

Each CRM's own scenario file keeps what only that CRM does (its call counts, its field
encodings, its quirks); scenarios decided before any CRM is called (duplicates, skipped
statuses, refused requests) run once, in `test_payment_scenarios.py`.
"""

from __future__ import annotations

import asyncio
import re

import pytest

from tests.conftest import EXPECTED_NOTE, crm_calls, payment_payload
from tests.crm_cases import CASES, CrmCase, Fake, Run, secret_values


@pytest.fixture(params=CASES, ids=str)
def case(request: pytest.FixtureRequest) -> CrmCase:
    chosen: CrmCase = request.param
    return chosen


async def test_new_customer_gets_contact_deal_fields_and_note(
    run: Run, case: CrmCase, fake: Fake
) -> None:
    async with run() as bridge:
        response = await bridge.post_payment(
            payment_payload("pay_new", utm_source="advcake", utm_medium="cpa")
        )
        calls = crm_calls(bridge, "pay_new")
    assert response.status_code == 200, response.text
    [contact] = case.contacts(fake)
    [deal] = case.deals(fake)
    created = {"contact_id": contact, "lead_id": deal, "lead_created": True}
    assert response.json() == {"status": "success", "results": {case.name: created}}
    assert case.place(fake, deal) == case.partners
    for name, value in (
        ("total_paid", 10000),
        ("purchase_count", 1),
        ("last_payment_amount", 10000),
    ):
        assert case.deal_number(fake, deal, name) == value
    for name, text in (
        ("payment_id", "pay_new"),
        ("invoice_id", "inv_pay_new"),
        ("utm_source", "advcake"),
    ):
        assert case.deal_field(fake, deal, name) == text
    assert case.stored_as(fake, deal, case.new_customer) == dict(case.new_customer)
    assert case.contact_field(fake, contact, "telegram_id") == "123456789"
    assert case.contact_field(fake, contact, "telegram_username") == "ivan_petrov"
    assert case.notes(fake, deal) == [case.read_note(EXPECTED_NOTE)]
    assert calls == case.api_calls(fake) == case.new_customer_calls
    case.new_customer_wire(fake, contact, deal)


async def test_a_deal_created_but_its_answer_lost_is_found_on_retry(
    run: Run, case: CrmCase, fake: Fake
) -> None:
    # With the reference rules the deal lands in the auto-payment status, which the
    # bridge never picks as an open deal: the retry must still see it carries the payment.
    fake.fail_after_apply(
        1, kind="timeout", method="POST", path_prefix=case.deal_write, skip=case.deal_write_skip
    )
    async with run(wait_seconds=0) as bridge:
        await bridge.post_payment(payment_payload("pay_cw"))
        await bridge.settle(timeout=20)
        [(status,)] = bridge.query("SELECT status FROM payment_events")
    assert status == "success"
    assert len(case.contacts(fake)) == 1
    [deal] = case.deals(fake)
    autopay = case.config.default_pipeline
    assert case.place(fake, deal) == (autopay.pipeline_id, autopay.status_id)
    assert case.deal_number(fake, deal, "purchase_count") == 1
    assert len(case.notes(fake, deal)) == 1


async def test_crm_trouble_answers_within_window_and_lands_exactly_once(
    run: Run, case: CrmCase, fake: Fake
) -> None:
    check_trouble = case.trouble(fake)
    async with run(wait_seconds=1) as bridge:
        loop = asyncio.get_running_loop()
        started = loop.time()
        first = await bridge.post_payment(
            payment_payload("pay_t1", phone="89990000011", telegram_id=None, email=None)
        )
        assert loop.time() - started < 4
        fake.down()
        started = loop.time()
        second = await bridge.post_payment(
            payment_payload("pay_t2", phone="89990000012", telegram_id=None, email=None)
        )
        assert loop.time() - started < 4
        assert second.status_code == 202
        fake.up()
        await bridge.settle(timeout=30)
        statuses = bridge.query("SELECT payment_id, status FROM payment_events ORDER BY 1")
    assert first.status_code in (200, 202)
    assert statuses == [("pay_t1", "success"), ("pay_t2", "success")]
    check_trouble()
    assert len(case.contacts(fake)) == 2
    for deal in case.deals(fake):
        assert case.deal_number(fake, deal, "purchase_count") == 1
        assert len(case.notes(fake, deal)) == 1


@pytest.mark.parametrize(
    ("changes", "stored"),
    [
        # No excluded status: the second payment finds the first's deal and joins it.
        ({"excluded_status_ids": ()}, [(3500, 2, 2)]),
        # The reference config: the new deal sits in an excluded "auto-payment" status,
        # so the second payment cannot use it and makes a deal of its own.
        ({}, [(1000, 1, 1), (2500, 1, 1)]),
    ],
    ids=["gather-on-one-deal", "reference-config-makes-two-deals"],
)
async def test_concurrent_payments_of_a_new_customer(
    run: Run, case: CrmCase, fake: Fake, changes: dict[str, object], stored: list[object]
) -> None:
    async with run(file=case.file_config(**changes)) as bridge:
        a, b = await asyncio.gather(
            bridge.post_payment(payment_payload("pay_c1", costs=(1000,), subjects=("Русский",))),
            bridge.post_payment(payment_payload("pay_c2", costs=(2500,), subjects=("Русский",))),
        )
    assert {a.status_code, b.status_code} == {200}
    assert len(case.contacts(fake)) == 1
    # Each deal's total, purchase count and notes.
    deals = [
        (
            case.deal_number(fake, deal, "total_paid"),
            case.deal_number(fake, deal, "purchase_count"),
            len(case.notes(fake, deal)),
        )
        for deal in case.deals(fake)
    ]
    assert sorted(deals) == stored


async def test_a_known_customer_with_an_open_deal_costs_three_calls(
    run: Run, case: CrmCase, fake: Fake
) -> None:
    async with run(file=case.file_config(excluded_status_ids=())) as bridge:
        first = await bridge.post_payment(payment_payload("pay_k1", costs=(1000,)))
        before = case.api_calls(fake)
        second = await bridge.post_payment(payment_payload("pay_k2", costs=(700,)))
        calls = crm_calls(bridge, "pay_k2")
    assert first.status_code == second.status_code == 200
    # the remembered deal read by id (with its contacts), its update, the note
    assert case.api_calls(fake) - before == calls == 3
    [deal] = case.deals(fake)
    assert case.deal_number(fake, deal, "total_paid") == 1700
    assert case.deal_number(fake, deal, "purchase_count") == 2
    assert len(case.notes(fake, deal)) == 2


async def test_a_remembered_deal_still_in_autopay_gets_a_new_deal_in_four_calls(
    run: Run, case: CrmCase, fake: Fake
) -> None:
    # Reference config: the deal made by the first payment sits in an excluded stage, so
    # the second payment reads it (still auto-payment), then the contact's deals, and
    # makes a deal of its own and its note.
    async with run() as bridge:
        await bridge.post_payment(payment_payload("pay_a1", costs=(1000,)))
        before, received = case.api_calls(fake), len(fake.calls)
        response = await bridge.post_payment(payment_payload("pay_a2", costs=(700,)))
        calls = crm_calls(bridge, "pay_a2")
    assert response.status_code == 200, response.text
    assert response.json()["results"][case.name]["lead_created"] is True
    assert len(case.contacts(fake)) == 1 and len(case.deals(fake)) == 2
    assert case.api_calls(fake) - before == calls == 4
    case.autopay_again_wire(fake.calls[received:])


async def test_a_known_deal_closed_since_gets_a_new_deal(
    run: Run, case: CrmCase, fake: Fake
) -> None:
    async with run(file=case.file_config(excluded_status_ids=())) as bridge:
        await bridge.post_payment(payment_payload("pay_w1", costs=(1000,)))
        [old] = case.deals(fake)
        case.close_deal(fake, old)
        before = case.api_calls(fake)
        response = await bridge.post_payment(payment_payload("pay_w2", costs=(700,)))
    assert response.status_code == 200
    body = response.json()["results"][case.name]
    assert body["lead_created"] is True and body["lead_id"] != old
    # the deal, the contact's others, the new deal, the note
    assert case.api_calls(fake) - before <= 4
    assert case.deal_number(fake, body["lead_id"], "total_paid") == 700
    assert case.deal_number(fake, old, "total_paid") == 1000


async def test_contact_fields_are_filled_only_where_empty(
    run: Run, case: CrmCase, fake: Fake
) -> None:
    contact = str(case.add_contact(fake, "Иван", "+79991234567", "typed_by_manager"))
    async with run() as bridge:
        response = await bridge.post_payment(payment_payload("pay_fill"))
    assert response.status_code == 200, response.text
    assert response.json()["results"][case.name]["contact_id"] == contact
    assert case.contact_field(fake, contact, "telegram_id") == "123456789"
    assert case.contact_field(fake, contact, "telegram_username") == "typed_by_manager"


async def test_a_search_hit_with_another_number_is_not_used(
    run: Run, case: CrmCase, fake: Fake
) -> None:
    # Searches match loosely: a longer number containing the customer's, and the same
    # digits in another country, are hits the flow must not confirm.
    longer = str(case.add_contact(fake, "Someone else", "+7 999 123-45-678", None))
    abroad = str(case.add_contact(fake, "Someone abroad", "+1 999 123 4567", None))
    async with run() as bridge:
        response = await bridge.post_payment(
            payment_payload("pay_sub", telegram_id=None, email=None)
        )
    assert response.status_code == 200, response.text
    assert response.json()["results"][case.name]["contact_id"] not in (longer, abroad)
    assert len(case.contacts(fake)) == 3


async def test_pipeline_rules_place_new_deals(run: Run, case: CrmCase, fake: Fake) -> None:
    section = case.file_config().crm[case.name]
    [yandex] = [rule for rule in section.pipeline_rules if "cpc" in rule.contains]
    site = section.default_pipeline
    async with run() as bridge:
        first = await bridge.post_payment(
            payment_payload(
                "pay_y", utm_medium="cpc", phone="89990000001", email=None, telegram_id=None
            )
        )
        second = await bridge.post_payment(
            payment_payload("pay_s", phone="89990000002", email=None, telegram_id=None)
        )
    assert first.status_code == second.status_code == 200
    placed = {case.place(fake, deal) for deal in case.deals(fake)}
    assert placed == {(yandex.pipeline_id, yandex.status_id), (site.pipeline_id, site.status_id)}


async def test_a_returning_customers_open_deal_in_another_pipeline_is_updated(
    run: Run, case: CrmCase, fake: Fake
) -> None:
    contact = str(case.add_contact(fake, "Иван Петров", "+7 (999) 123-45-67", None))
    open_deal = case.seed_deal(
        fake, contact, "yandex_working", 1000, total_paid=1500, purchase_count=2
    )
    closed = case.seed_deal(fake, contact, "closed", 3000)
    excluded = case.seed_deal(fake, contact, "site_autopay", 4000)
    place = case.place(fake, open_deal)
    async with run() as bridge:
        response = await bridge.post_payment(
            payment_payload("pay_ret", telegram_id=None, telegram_tag=None)
        )
        calls = crm_calls(bridge, "pay_ret")
    assert response.status_code == 200, response.text
    assert response.json()["results"][case.name] == {
        "contact_id": contact,
        "lead_id": open_deal,
        "lead_created": False,
    }
    assert len(case.deals(fake)) == 3 and len(case.contacts(fake)) == 1
    assert case.deal_number(fake, open_deal, "total_paid") == 11500
    assert case.deal_number(fake, open_deal, "purchase_count") == 3
    assert case.deal_field(fake, open_deal, "payment_id") == "pay_ret"
    assert case.place(fake, open_deal) == place  # it stays where it is
    for untouched in (closed, excluded):
        assert case.deal_field(fake, untouched, "total_paid") is None
        assert case.notes(fake, untouched) == []
    assert len(case.notes(fake, open_deal)) == 1
    assert case.api_calls(fake) == calls == case.returning_calls
    case.returning_wire(fake, open_deal)


async def test_a_field_the_crm_lacks_fails_the_payment_for_good_echoing_no_secret(
    run: Run, case: CrmCase, fake: Fake
) -> None:
    unknown, _, _, refusal = case.refused["unknown_field"]
    fields = case.config.deal_fields.model_copy(update={"payment_id": unknown})
    credentials = case.credentials(fake)
    async with run(case.file_config(deal_fields=fields), **credentials) as bridge:
        response = await bridge.post_payment(payment_payload("pay_f"))
        [(status, error)] = bridge.query("SELECT status, last_error FROM deliveries")
    assert (response.status_code, response.json()["status"]) == (202, "failed")
    assert status == "failed"
    assert unknown in error and re.search(refusal, error), error
    for secret in secret_values(credentials):
        assert secret not in error and secret not in response.text
