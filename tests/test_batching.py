"""Batched drain (issue 20), at unit speed: many payments' flows on one `BatchGroup`.

Each payment runs the unchanged flow on its own `GroupMember` over an in-memory CRM with
every batch form (`BatchingMemoryCrm`: one batch is one call). What is checked: each
step of the whole group is one call; a payment alone makes exactly its per-call calls;
an item refused alone fails only its payment; a batch refused as a whole is tried item
by item; a lost batch answer and a crash mid-batch land everything exactly once on the
retry, as the flow's remote checks promise for single calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from decimal import Decimal

import pytest

from bridge.batching import REFUSALS_BEFORE_PER_CALL, BatchGroup
from bridge.crm.base import CrmAdapter
from bridge.domain import Customer, KnownRefs, Payment
from bridge.errors import PermanentCrmError, TransientCrmError
from bridge.flow import FlowContext, FlowOutcome, deliver_payment
from tests.fakes.memory import BatchingMemoryCrm, Killed, MemoryCrm
from tests.test_flow import CONFIG, EXAMPLE, MOSCOW, Journalled
from tests.test_rules import PAYMENT

TOTAL, COUNT = CONFIG.deal_fields.total_paid, CONFIG.deal_fields.purchase_count
Outcome = FlowOutcome | BaseException


def payment(n: int, payment_id: str = "") -> Payment:
    customer = Customer(
        telegram_id=str(9000 + n), phone=f"+7999000{n:04d}", email=f"c{n}@example.com"
    )
    return replace(
        PAYMENT,
        payment_id=payment_id or f"pay_{n}",
        customer=replace(PAYMENT.customer, **customer.__dict__),
    )


def known(crm: MemoryCrm, n: int) -> KnownRefs:
    """Customer n known to the bridge: a contact with an open deal the bridge remembers."""
    contact = crm.add_contact(phones=(f"+7999000{n:04d}",))
    deal = crm.add_deal(contact, "1")
    return KnownRefs(contact, deal, "", ())


def known_customers(count: int) -> tuple[BatchingMemoryCrm, list[KnownRefs]]:
    """A CRM where customers 0 … count - 1 are known (`known`), its call log cleared."""
    crm = BatchingMemoryCrm(CONFIG)
    refs = [known(crm, n) for n in range(count)]
    crm.calls.clear()
    return crm, refs


async def run_group(
    crm: BatchingMemoryCrm,
    payments: Sequence[Payment],
    refs: Sequence[KnownRefs | None] = (),
    journals: Sequence[Journalled] = (),
    *,
    first_attempt: bool = True,
    refusals: dict[str, int] | None = None,
) -> list[Outcome]:
    """The payments' flows as one group, as the worker runs a due batch."""
    group = BatchGroup(crm, crm.batch_forms, {} if refusals is None else refusals)
    stores = list(journals) or [Journalled() for _ in payments]
    refs = list(refs) or [None] * len(payments)

    members = [group.join() for _ in payments]  # all joined before any runs, as the worker does

    async def one(index: int) -> FlowOutcome:
        member = members[index]
        try:
            return await _deliver(
                member, payments[index], stores[index], refs[index], first_attempt
            )
        finally:
            member.leave()

    tasks = [asyncio.ensure_future(one(i)) for i in range(len(payments))]
    return list(await asyncio.gather(*tasks, return_exceptions=True))


async def _deliver(
    adapter: CrmAdapter,
    pay: Payment,
    store: Journalled,
    ref: KnownRefs | None,
    first_attempt: bool,
) -> FlowOutcome:
    ctx = FlowContext(adapter, CONFIG, EXAMPLE.payment, True, MOSCOW)
    return await deliver_payment(
        pay,
        ctx,
        store.journal,
        store.record,
        first_attempt=first_attempt and store.journal.is_empty,
        known=ref,
    )


def total(crm: MemoryCrm, deal_id: str) -> Decimal:
    return Decimal(crm.deals[deal_id].fields.get(TOTAL, "0"))


async def test_new_customers_cost_one_search_one_create_and_one_note_call() -> None:
    crm = BatchingMemoryCrm(CONFIG)
    outcomes = await run_group(crm, [payment(n) for n in range(10)])
    assert all(isinstance(o, FlowOutcome) for o in outcomes)
    assert crm.calls == [
        "batch:find_contacts×10",
        "batch:create_contacts_and_deals×10",
        "batch:add_notes×10",
    ]
    assert len(crm.contacts) == 10 and len(crm.deals) == 10
    assert all(len(notes) == 1 for notes in crm.notes.values())


async def test_known_customers_cost_one_read_one_update_and_one_note_call() -> None:
    crm, refs = known_customers(10)
    outcomes = await run_group(crm, [payment(n) for n in range(10)], refs)
    assert crm.calls == ["batch:get_deals×10", "batch:update_deals×10", "batch:add_notes×10"]
    for ref, outcome in zip(refs, outcomes, strict=True):
        assert isinstance(outcome, FlowOutcome)
        assert outcome.result.deal_id == ref.deal_id
        assert total(crm, ref.deal_id) == PAYMENT.amount
        assert crm.deals[ref.deal_id].fields[COUNT] == "1"
        assert len(crm.notes[ref.deal_id]) == 1


async def test_a_payment_alone_makes_exactly_its_per_call_calls() -> None:
    plain = MemoryCrm(CONFIG)
    ref = known(plain, 1)
    plain.calls.clear()
    await _deliver(plain, payment(1), Journalled(), ref, True)
    crm = BatchingMemoryCrm(CONFIG)
    ref = known(crm, 1)
    crm.calls.clear()
    [outcome] = await run_group(crm, [payment(1)], [ref])
    assert isinstance(outcome, FlowOutcome)
    assert crm.calls == plain.calls == ["get_deal", "update_deal", "add_note"]


async def test_a_member_busy_with_its_own_calls_is_waited_for() -> None:
    # Customer 0's remembered deal was closed: it reads its contact's deals per call,
    # then creates a deal; the others' notes still go in one call with its note.
    crm, refs = known_customers(4)
    closed = CONFIG.closed_status_ids[0]
    crm.deals[refs[0].deal_id] = replace(crm.deals[refs[0].deal_id], status_id=closed)
    await run_group(crm, [payment(n) for n in range(4)], refs)
    assert crm.calls == [
        "batch:get_deals×4",
        "list_deals",
        "batch:update_deals×3",
        "create_deal",
        "batch:add_notes×4",
    ]


async def test_an_item_refused_alone_fails_only_its_payment() -> None:
    crm, refs = known_customers(5)
    crm.refuse(refs[2].deal_id)
    outcomes = await run_group(crm, [payment(n) for n in range(5)], refs)
    assert isinstance(outcomes[2], PermanentCrmError)
    for n in (0, 1, 3, 4):
        assert isinstance(outcomes[n], FlowOutcome)
        assert total(crm, refs[n].deal_id) == PAYMENT.amount
        assert len(crm.notes[refs[n].deal_id]) == 1
    assert refs[2].deal_id not in crm.notes


async def test_a_batch_refused_as_a_whole_is_tried_item_by_item() -> None:
    crm, refs = known_customers(3)
    crm.refuse_whole()
    outcomes = await run_group(crm, [payment(n) for n in range(3)], refs)
    assert all(isinstance(o, FlowOutcome) for o in outcomes)
    assert crm.calls[:4] == ["batch:get_deals×3", "get_deal", "get_deal", "get_deal"]
    assert crm.calls[4:] == ["batch:update_deals×3", "batch:add_notes×3"]


async def test_a_form_refused_as_a_whole_again_and_again_goes_per_call() -> None:
    crm = BatchingMemoryCrm(CONFIG)
    refusals: dict[str, int] = {}  # the worker keeps one per CRM across its groups
    for round_ in range(REFUSALS_BEFORE_PER_CALL + 1):
        refs = [known(crm, 10 * round_ + n) for n in range(2)]
        if round_ < REFUSALS_BEFORE_PER_CALL:
            crm.refuse_whole()  # the round's first batch: its deal read
        crm.calls.clear()
        pays = [payment(n, f"pay_{round_}_{n}") for n in range(2)]
        await run_group(crm, pays, refs, refusals=refusals)
    assert refusals["get_deals"] == REFUSALS_BEFORE_PER_CALL
    assert crm.calls[:2] == ["get_deal", "get_deal"]  # no batch read is tried any more
    assert "batch:update_deals×2" in crm.calls  # the other forms still batch


async def test_a_lost_batch_answer_lands_everything_exactly_once_on_the_retry() -> None:
    crm, refs = known_customers(4)
    crm.fail_at(2, after=True)  # the update batch applied, its answer lost
    stores = [Journalled() for _ in refs]
    payments = [payment(n) for n in range(4)]
    first = await run_group(crm, payments, refs, stores)
    assert all(isinstance(o, TransientCrmError) and o.maybe_applied for o in first)
    again = await run_group(crm, payments, refs, stores, first_attempt=False)
    assert all(isinstance(o, FlowOutcome) for o in again)
    for ref in refs:
        assert total(crm, ref.deal_id) == PAYMENT.amount
        assert crm.deals[ref.deal_id].fields[COUNT] == "1"
        assert len(crm.notes[ref.deal_id]) == 1


@pytest.mark.parametrize("call", [1, 2, 3])
@pytest.mark.parametrize("after", [False, True])
async def test_a_crash_at_any_batch_call_lands_everything_exactly_once(
    call: int, after: bool
) -> None:
    # New customers: search, create, note. A crash before or after the CRM applied a
    # batch; the next start runs the same deliveries with what their journals hold.
    crm = BatchingMemoryCrm(CONFIG)
    crm.kill_at(call, after=after)
    stores = [Journalled() for _ in range(5)]
    payments = [payment(n) for n in range(5)]
    with pytest.raises(Killed):
        await _crashing(crm, payments, stores)
    again = await run_group(crm, payments, (), stores, first_attempt=False)
    assert all(isinstance(o, FlowOutcome) for o in again), again
    assert len(crm.contacts) == 5 and len(crm.deals) == 5
    assert sorted(len(notes) for notes in crm.notes.values()) == [1] * 5


async def _crashing(
    crm: BatchingMemoryCrm, payments: Sequence[Payment], stores: Sequence[Journalled]
) -> None:
    """The group until the process dies: `Killed` ends the batch call and every member."""
    outcomes = await run_group(crm, payments, (), stores)
    if crm.killed:
        raise Killed("the bridge died mid-batch")
    raise AssertionError(f"no crash: {outcomes}")


async def test_a_member_cancelled_while_waiting_does_not_hold_the_others() -> None:
    crm, refs = known_customers(3)
    group = BatchGroup(crm, crm.batch_forms)
    gate = asyncio.Event()

    members = [group.join() for _ in range(3)]

    async def one(n: int) -> FlowOutcome:
        member = members[n]
        try:
            if n == 0:
                await gate.wait()  # busy: the others wait for it at their first step
            return await _deliver(member, payment(n), Journalled(), refs[n], True)
        finally:
            member.leave()

    tasks = [asyncio.ensure_future(one(n)) for n in range(3)]
    await asyncio.sleep(0.01)
    assert crm.batches() == []
    tasks[0].cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[0], asyncio.CancelledError)
    assert all(isinstance(o, FlowOutcome) for o in done[1:])
    assert crm.batches()[0] == "batch:get_deals×2"
