"""The order flow's policy (SPEC §8), once, over the in-memory CRM: no HTTP, no store.

A delivery's journal and the bridge's order → deal link are kept here in memory the way
the worker keeps them in SQLite (`bridge.order_delivery`).
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bridge import order_rules
from bridge.domain import DealResult, Order
from bridge.errors import CrmError, NotFound, TransientCrmError
from bridge.order_flow import (
    KnownOrder,
    OrderContext,
    OrderJournal,
    OrderOutcome,
    deliver_order,
)
from bridge.order_rules import AppliedOrder
from bridge.settings import OrderRules, load_file_config
from tests.fakes.memory import MemoryCrm
from tests.order_support import FIELDS, PIPELINE, STAGES, order_body, order_of, with_orders

EXAMPLE = load_file_config(Path(__file__).resolve().parents[1] / "etc" / "bridge.example.toml")
CONFIG = with_orders(EXAMPLE.crm["amocrm"])
RULES = OrderRules()
TENT = [("tent-02", "Шатёр 6×12", 1, "25000.00")]


class Delivery:
    """One CRM's order deliveries: the journal of the running one, and the link."""

    def __init__(self, crm: MemoryCrm) -> None:
        self.crm = crm
        self.rows: dict[str, object] = {}
        self.known: KnownOrder | None = None
        self.attempts = 0

    async def record(self, done: OrderJournal) -> None:
        self.rows.update(done.steps())

    async def run(self, body: dict[str, Any], *, create: bool = True) -> OrderOutcome:
        """Deliver (or resume) the event; on success the link moves on, as the worker's."""
        order, key = order_of(body)
        journal = OrderJournal.from_steps(self.rows)
        self.attempts += 1
        ctx = OrderContext(self.crm, CONFIG, RULES, create)
        outcome = await deliver_order(
            order,
            key,
            ctx,
            journal,
            self.record,
            first_attempt=self.attempts == 1 and journal.is_empty,
            known=self.known,
        )
        self.known = _link(order, outcome)
        self.rows, self.attempts = {}, 0
        return outcome

    async def run_through(self, body: dict[str, Any]) -> OrderOutcome:
        """Retry until it goes through (a failure armed with `fail_at` happens once)."""
        for _ in range(10):
            try:
                return await self.run(body)
            except CrmError:
                continue
        raise AssertionError("never went through")


def _link(order: Order, outcome: OrderOutcome) -> KnownOrder:
    applied = AppliedOrder(order.effective_status.value, order.total, order_rules.item_rows(order))
    result = outcome.result
    return KnownOrder(
        result.contact_id, outcome.company_id, result.deal_id, result.pipeline_id, applied
    )


def only(values: dict[str, Any]) -> str:
    [key] = values
    return str(key)


def stage(status: str) -> tuple[str, str]:
    return PIPELINE, STAGES[status]


# ---- created --------------------------------------------------------------------------


async def test_a_person_order_makes_contact_and_deal_in_one_call_then_items_and_note() -> None:
    crm = MemoryCrm(CONFIG)
    outcome = await Delivery(crm).run(order_body(event="created", status="new", business=False))
    assert crm.calls == ["find_contact", "create_contact_and_deal", "set_deal_items", "add_note"]
    deal = only(crm.deals)
    assert outcome.result == DealResult(only(crm.contacts), deal, True, PIPELINE)
    assert crm.stage(deal) == stage("new")
    assert crm.deals[deal].price == Decimal("48500.00")
    fields = crm.deals[deal].fields
    assert fields[FIELDS.order_id or ""] == "ord_1042"
    assert fields[FIELDS.installation_date or ""] == "2026-12-01"
    assert fields[FIELDS.comment or ""] == "этаж 3"
    assert crm.deal_names[deal] == "Заказ ord_1042 - Анна Смирнова"
    assert sorted(crm.items[deal]) == [
        ("Стол банкетный", Decimal(5), Decimal("6900.00")),
        ("Стул Венский", Decimal(40), Decimal("350.00")),
    ]
    assert crm.companies == {} and crm.deal_company == {}
    [note] = crm.notes[deal]
    assert "Order event: ord_1042@2026-11-20T07:15:00Z" in note.splitlines()
    assert "Стул Венский (chair-01) × 40 по 350 = 14000" in note


async def test_a_business_order_creates_the_company_and_links_contact_and_deal() -> None:
    crm = MemoryCrm(CONFIG)
    await Delivery(crm).run(order_body(event="created", status="new"))
    company = only(crm.companies)
    assert crm.companies[company].inn == "7701234567"
    deal, contact = only(crm.deals), only(crm.contacts)
    assert crm.deal_company[deal] == company
    assert crm.contact_companies[contact] == {company}
    assert crm.deal_names[deal] == "Заказ ord_1042 - ООО Ромашка"
    assert crm.calls[:3] == ["find_contact", "find_company", "create_company"]


async def test_the_company_is_found_by_inn_before_a_namesake_and_the_contact_linked() -> None:
    crm = MemoryCrm(CONFIG)
    crm.add_company("ООО Ромашка", "7700000000")  # same name, another INN
    by_inn = crm.add_company("Ромашка (старое)", "7701234567")
    contact = crm.add_contact(phones=["+79160001122"])
    await Delivery(crm).run(order_body(event="created"))
    assert len(crm.companies) == 2
    assert crm.contact_companies[contact] == {by_inn}
    assert crm.deal_company[only(crm.deals)] == by_inn
    assert "link_contact_to_company" in crm.calls and "create_deal" in crm.calls


async def test_a_company_without_inn_match_is_found_by_its_exact_name_only() -> None:
    crm = MemoryCrm(CONFIG)
    crm.add_company("ООО Ромашка и партнёры")  # a loose hit, not the company
    exact = crm.add_company("ооо  ромашка")
    await Delivery(crm).run(order_body(event="created"))
    assert crm.deal_company[only(crm.deals)] == exact


async def test_without_creation_allowed_an_unknown_customer_is_not_found() -> None:
    crm = MemoryCrm(CONFIG)
    with pytest.raises(NotFound):
        await Delivery(crm).run(order_body(business=False), create=False)
    assert crm.writes() == []


# ---- updated and cancelled ----------------------------------------------------------


async def test_an_update_moves_the_stage_replaces_items_and_notes_what_changed() -> None:
    crm = MemoryCrm(CONFIG)
    delivery = Delivery(crm)
    await delivery.run(order_body(event="created", status="new"))
    crm.calls.clear()
    later = order_body(
        status="in_rent", updated_at="2026-11-21T09:00:00+03:00", total="25000.00", items=TENT
    )
    await delivery.run(later)
    deal = only(crm.deals)
    assert crm.calls == ["change_deal", "set_deal_items", "add_note"]
    assert crm.stage(deal) == stage("in_rent")
    assert crm.deals[deal].price == Decimal("25000.00")
    assert crm.items[deal] == [("Шатёр 6×12", Decimal(1), Decimal("25000.00"))]
    note = crm.notes[deal][-1]
    assert "Статус: new → in_rent" in note
    assert "Сумма: 48500 → 25000 RUB" in note
    assert "Позиции изменены" in note
    assert len(crm.companies) == 1 and len(crm.contacts) == 1


async def test_an_update_with_the_same_status_and_items_leaves_stage_and_items_alone() -> None:
    crm = MemoryCrm(CONFIG)
    delivery = Delivery(crm)
    await delivery.run(order_body(status="reserved"))
    deal = only(crm.deals)
    crm.deals[deal] = crm.deals[deal].__class__(
        **{**crm.deals[deal].__dict__, "status_id": "999"}  # a manager moved it on by hand
    )
    crm.calls.clear()
    await delivery.run(order_body(status="reserved", updated_at="2026-11-20T11:00:00+03:00"))
    assert crm.calls == ["change_deal", "add_note"]
    assert crm.stage(deal) == (PIPELINE, "999")
    assert "Статус: reserved" in crm.notes[deal][-1]


async def test_cancelled_moves_the_deal_to_the_lost_stage_whatever_status_it_carries() -> None:
    crm = MemoryCrm(CONFIG)
    delivery = Delivery(crm)
    await delivery.run(order_body(status="reserved"))
    await delivery.run(
        order_body(event="cancelled", status="reserved", updated_at="2026-11-22T10:00:00+03:00")
    )
    deal = only(crm.deals)
    assert crm.stage(deal) == stage("cancelled")
    assert crm.deals[deal].is_closed
    assert "Статус: reserved → cancelled" in crm.notes[deal][-1]


async def test_a_lost_link_finds_the_deal_again_by_its_order_id() -> None:
    crm = MemoryCrm(CONFIG)
    delivery = Delivery(crm)
    await delivery.run(order_body(status="new"))
    delivery.known = None  # the bridge's link is gone (a restored database)
    crm.calls.clear()
    await delivery.run(
        order_body(status="in_rent", updated_at="2026-11-21T09:00:00+03:00", items=TENT)
    )
    assert len(crm.deals) == 1
    assert "create_deal" not in crm.calls and "list_deals" in crm.calls
    assert crm.items[only(crm.deals)] == [("Шатёр 6×12", Decimal(1), Decimal("25000.00"))]


async def test_a_crm_without_deal_items_gets_no_items_call_and_the_note_lists_them() -> None:
    crm = MemoryCrm(CONFIG, keeps_items=False)
    await Delivery(crm).run(order_body(business=False))
    assert "set_deal_items" not in crm.calls
    assert "Стол банкетный (table-07) × 5 по 6900 = 34500" in crm.notes[only(crm.deals)][0]


async def test_a_note_already_on_the_deal_is_not_added_again_on_a_retry() -> None:
    crm = MemoryCrm(CONFIG)
    delivery = Delivery(crm)
    crm.fail_at(4, after=True)  # the note is written, its answer lost
    with pytest.raises(TransientCrmError):
        await delivery.run(order_body(business=False))
    await delivery.run(order_body(business=False))
    assert len(crm.notes[only(crm.deals)]) == 1


# ---- a failure at every call, before and after it takes effect -------------------------


def _scripted(body: dict[str, Any], prepare: bool) -> tuple[MemoryCrm, Delivery]:
    crm = MemoryCrm(CONFIG)
    delivery = Delivery(crm)
    if prepare:  # a manager's contact: the path with a separate link and deal creation
        crm.add_contact(phones=["+79160001122"])
    return crm, delivery


SCRIPTS = {
    "business-new": order_body(event="created"),
    "business-known-contact": order_body(event="created"),
    "person-new": order_body(event="created", business=False),
}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
@pytest.mark.parametrize("after", [False, True], ids=["before", "after"])
@pytest.mark.parametrize("call", range(1, 8))
async def test_a_failure_at_any_call_leaves_exactly_one_of_everything(
    name: str, after: bool, call: int
) -> None:
    body = SCRIPTS[name]
    crm, delivery = _scripted(body, prepare=name == "business-known-contact")
    crm.fail_at(call, after=after)
    await delivery.run_through(body)
    update = order_body(status="in_rent", updated_at="2026-11-21T09:00:00+03:00", items=TENT)
    crm.fail_at(len(crm.calls) + 1 + call % 3, after=after)
    await delivery.run_through(
        {**update, "order": {**update["order"], "customer": body["order"]["customer"]}}
    )
    assert len(crm.contacts) == 1
    assert len(crm.deals) == 1
    assert len(crm.companies) == (0 if name == "person-new" else 1)
    deal = only(crm.deals)
    assert crm.items[deal] == [("Шатёр 6×12", Decimal(1), Decimal("25000.00"))]
    notes = crm.notes[deal]
    assert len(notes) == 2, notes
    assert crm.stage(deal) == stage("in_rent")


async def test_a_customer_without_phone_or_email_is_created_without_a_search() -> None:
    crm = MemoryCrm(CONFIG)
    body = order_body(business=False, phone="", email="")
    await Delivery(crm).run(body)
    assert crm.calls[0] == "create_contact_and_deal"
    assert len(crm.contacts) == 1 and len(crm.deals) == 1


def test_the_journal_reads_back_what_it_wrote_and_ignores_odd_shapes() -> None:
    done = OrderJournal("1", "2", DealResult("1", "3", True, "900"), True, True, True)
    assert OrderJournal.from_steps(done.steps()) == done
    assert OrderJournal.from_steps({"deal": "3", "contact": 1, "note": "yes"}) == OrderJournal()
