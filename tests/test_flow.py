"""The payment flow's policy (SPEC §3), once, over the in-memory CRM: no HTTP, no store.

Every CRM runs this same flow; what differs per CRM (how a search is made, how many
calls a step costs) is the contract suite's and the scenarios' business.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from bridge import rules
from bridge.domain import DealResult, Journal, KnownRefs, Payment
from bridge.errors import CrmError, NotFound
from bridge.flow import FlowContext, FlowOutcome, deliver_payment
from tests.fakes.memory import MemoryCrm
from tests.test_rules import CUSTOMER, EXAMPLE, MOSCOW, PAYMENT

CONFIG = EXAMPLE.crm["amocrm"]
OPEN, CLOSED, EXCLUDED = "1", CONFIG.closed_status_ids[0], CONFIG.excluded_status_ids[0]


class Journalled:
    """The store's journal of one delivery, in memory."""

    def __init__(self) -> None:
        self.rows: dict[str, object] = {}

    async def record(self, done: Journal) -> None:
        self.rows.update(done.steps())

    @property
    def journal(self) -> Journal:
        return Journal.from_steps(self.rows)


async def deliver(
    crm: MemoryCrm,
    store: Journalled | None = None,
    payment: Payment = PAYMENT,
    *,
    first_attempt: bool = True,
    known: KnownRefs | None = None,
    create: bool = True,
) -> FlowOutcome:
    store = store or Journalled()
    ctx = FlowContext(crm, CONFIG, EXAMPLE.payment, create, MOSCOW)
    return await deliver_payment(
        payment, ctx, store.journal, store.record, first_attempt=first_attempt, known=known
    )


def only_deal(crm: MemoryCrm) -> str:
    [deal_id] = crm.deals
    return deal_id


# ---- finding the contact ------------------------------------------------------------


async def test_a_new_customer_costs_one_composite_write_and_the_note() -> None:
    crm = MemoryCrm(CONFIG)
    outcome = await deliver(crm)
    assert crm.calls == ["find_contact", "create_contact_and_deal", "add_note"]
    deal = only_deal(crm)
    [contact] = crm.contacts
    assert outcome.result == DealResult(contact, deal, True, CONFIG.default_pipeline.pipeline_id)
    assert crm.deal_field(deal, "payment_id") == PAYMENT.payment_id
    assert crm.deal_field(deal, "total_paid") == "10000"
    assert crm.deal_field(deal, "purchase_count") == "1"
    assert crm.notes[deal] == [rules.note_text(PAYMENT, EXAMPLE.payment.note_template, MOSCOW)]


async def test_keys_are_tried_in_priority_order() -> None:
    crm = MemoryCrm(CONFIG)
    crm.add_contact(phones=["+79991234567"], emails=["ivan@example.com"])
    by_telegram = crm.add_contact(telegram_id=CUSTOMER.telegram_id or "")
    outcome = await deliver(crm)
    assert outcome.result.contact_id == by_telegram


async def test_a_search_hit_that_does_not_really_carry_the_key_is_not_used() -> None:
    crm = MemoryCrm(CONFIG)
    # Full-text search finds these; neither really has the customer's phone or e-mail.
    crm.add_contact(phones=["+7 (999) 123-45-678"])
    crm.add_contact(emails=["not-ivan@example.com.evil"])
    outcome = await deliver(
        crm, payment=replace(PAYMENT, customer=replace(CUSTOMER, telegram_id=None))
    )
    assert outcome.result.deal_created
    assert len(crm.contacts) == 3


async def test_among_several_confirmed_hits_the_oldest_contact_wins() -> None:
    crm = MemoryCrm(CONFIG)
    older = crm.add_contact(phones=["+79991234567"])
    crm.add_contact(phones=["89991234567"])
    outcome = await deliver(crm)
    assert outcome.result.contact_id == older


async def test_only_empty_contact_fields_are_filled() -> None:
    crm = MemoryCrm(CONFIG)
    contact = crm.add_contact(phones=["+79991234567"], telegram_username="someone_else")
    await deliver(crm)
    assert crm.contact_field(contact, "telegram_id") == CUSTOMER.telegram_id
    assert crm.contact_field(contact, "telegram_username") == "someone_else"


async def test_nothing_to_fill_costs_no_call() -> None:
    crm = MemoryCrm(CONFIG)
    crm.add_contact(
        phones=["+79991234567"],
        telegram_id=CUSTOMER.telegram_id or "",
        telegram_username=CUSTOMER.telegram_username or "",
    )
    await deliver(crm)
    assert "update_contact" not in crm.calls


async def test_creation_disabled_is_not_found_and_writes_nothing() -> None:
    crm = MemoryCrm(CONFIG)
    with pytest.raises(NotFound):
        await deliver(crm, create=False)
    assert crm.writes() == []


# ---- choosing the deal --------------------------------------------------------------


async def test_the_most_recent_open_deal_is_updated_closed_and_excluded_are_not() -> None:
    crm = MemoryCrm(CONFIG)
    contact = crm.add_contact(phones=["+79991234567"])
    crm.add_deal(contact, OPEN, total_paid="100", purchase_count="1")
    newest_open = crm.add_deal(contact, OPEN, total_paid="500", purchase_count="2")
    crm.add_deal(contact, CLOSED)
    crm.add_deal(contact, EXCLUDED)
    outcome = await deliver(crm)
    assert outcome.result == DealResult(contact, newest_open, False, "1")
    assert crm.deal_field(newest_open, "total_paid") == "10500"
    assert crm.deal_field(newest_open, "purchase_count") == "3"
    assert "create_deal" not in crm.calls


async def test_only_closed_or_excluded_deals_get_a_new_deal() -> None:
    crm = MemoryCrm(CONFIG)
    contact = crm.add_contact(phones=["+79991234567"])
    crm.add_deal(contact, CLOSED)
    crm.add_deal(contact, EXCLUDED)
    outcome = await deliver(crm)
    assert outcome.result.deal_created
    assert crm.deals[outcome.result.deal_id].contact_ids == (contact,)


async def test_a_deal_already_carrying_this_payment_is_not_written_again() -> None:
    crm = MemoryCrm(CONFIG)
    contact = crm.add_contact(phones=["+79991234567"])
    carrying = crm.add_deal(contact, EXCLUDED, payment_id=PAYMENT.payment_id, total_paid="10000")
    crm.add_deal(contact, OPEN)
    outcome = await deliver(crm, first_attempt=False)
    assert outcome.result.deal_id == carrying
    assert "update_deal" not in crm.calls and "create_deal" not in crm.calls
    assert crm.deal_field(carrying, "total_paid") == "10000"


# ---- a known customer ---------------------------------------------------------------


def known_refs(contact: str, deal: str) -> KnownRefs:
    return KnownRefs(contact, deal, "identity")


async def test_a_known_open_deal_costs_a_read_the_update_and_the_note() -> None:
    crm = MemoryCrm(CONFIG)
    contact = crm.add_contact(phones=["+79991234567"])
    deal = crm.add_deal(contact, OPEN)
    outcome = await deliver(crm, known=known_refs(contact, deal))
    assert crm.calls == ["get_deal", "update_deal", "add_note"]
    assert outcome.result == DealResult(contact, deal, False, "1")


async def test_a_known_deal_closed_since_reads_the_other_deals_and_makes_a_new_one() -> None:
    crm = MemoryCrm(CONFIG)
    contact = crm.add_contact(phones=["+79991234567"])
    deal = crm.add_deal(contact, CLOSED)
    outcome = await deliver(crm, known=known_refs(contact, deal))
    assert crm.calls == ["get_deal", "list_deals", "create_deal", "add_note"]
    assert outcome.result.deal_created


@pytest.mark.parametrize("gone", ["deleted", "moved"])
async def test_a_known_deal_gone_or_moved_means_searching_again(gone: str) -> None:
    crm = MemoryCrm(CONFIG)
    contact = crm.add_contact(phones=["+79991234567"])
    deal = crm.add_deal(contact, OPEN)
    if gone == "deleted":
        del crm.deals[deal]
    else:
        crm.deals[deal] = replace(crm.deals[deal], contact_ids=("999",))
    await deliver(crm, known=known_refs(contact, deal))
    assert crm.calls[:2] == ["get_deal", "find_contact"]


# ---- resuming and exactly-once ------------------------------------------------------


async def test_the_note_is_added_once_across_retries() -> None:
    crm = MemoryCrm(CONFIG)
    await deliver(crm)
    # The journal was lost with the note step (a crash): the retry looks before writing.
    await deliver(crm, first_attempt=False)
    assert len(crm.notes[only_deal(crm)]) == 1
    assert crm.calls.count("deal_notes") == 1


JOURNAL_STATES = {
    "nothing": {},
    "contact": {"contact": True},
    "deal": {"contact": True, "deal": True},
    "fields": {"contact": True, "deal": True, "fields": True},
    "note": {"contact": True, "deal": True, "fields": True, "note": True},
}


@pytest.mark.parametrize("state", list(JOURNAL_STATES))
async def test_a_retry_resumes_from_every_journal_state(state: str) -> None:
    # The first attempt ran completely; the journal kept only the steps of `state`.
    crm = MemoryCrm(CONFIG)
    contact = crm.add_contact(phones=["+79991234567"])
    crm.add_deal(contact, OPEN, total_paid="500", purchase_count="1")
    first = Journalled()
    await deliver(crm, first)
    kept = Journalled()
    kept.rows = {step: first.rows[step] for step in JOURNAL_STATES[state] if step in first.rows}
    calls_before = len(crm.calls)
    await deliver(crm, kept, first_attempt=False)
    deal = only_deal(crm)
    assert crm.deal_field(deal, "total_paid") == "10500"  # applied once
    assert len(crm.notes[deal]) == 1
    assert len(crm.contacts) == 1
    if state == "note":
        assert len(crm.calls) == calls_before  # nothing left to do


# Every call of a full delivery is a crash point: find, fill, list, update, note for a
# returning customer; find, the composite create, note for a new one.
CRASH_POINTS = [
    pytest.param(step, existing, after, id=f"{who}-call{step}-{'after' if after else 'before'}")
    for existing, who, calls in ((False, "new", 3), (True, "returning", 5))
    for step in range(1, calls + 1)
    for after in (False, True)
]


@pytest.mark.parametrize(("step", "existing", "after"), CRASH_POINTS)
async def test_a_crash_at_any_call_lands_everything_exactly_once(
    step: int, existing: bool, after: bool
) -> None:
    crm = MemoryCrm(CONFIG)
    if existing:
        contact = crm.add_contact(phones=["+79991234567"])
        crm.add_deal(contact, OPEN, total_paid="500", purchase_count="1")
    store = Journalled()
    crm.fail_at(step, after=after)
    with pytest.raises(CrmError):
        await deliver(crm, store)
    await deliver(crm, store, first_attempt=False)
    deal = only_deal(crm)
    assert len(crm.contacts) == 1
    assert crm.deal_field(deal, "total_paid") == ("10500" if existing else "10000")
    assert crm.deal_field(deal, "payment_id") == PAYMENT.payment_id
    assert len(crm.notes[deal]) == 1
    assert store.journal.note and store.journal.fields
