"""Order scenarios through HTTP (SPEC §8, issue 15), written once and run against every
CRM that takes orders (tests/order_cases.py: each CRM case with an `OrderProbe`, and the
in-memory CRM).

A person's order makes contact and deal in the mapped stage with its items; a business
order finds its company by INN or creates it and links contact and deal to it; an update
moves the same deal, replaces its items and amount; an older update after a newer one
changes nothing; cancelled closes the deal in the lost stage; a repeat is 409 with no
CRM call; each applied event leaves exactly one note.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.order_cases import ORDER_CASES, Fake, OrderCase, Run, post_order
from tests.order_support import order_body

TENT = [("tent-02", "Шатёр 6×12", 1, "25000.00")]
UPDATED = "2026-11-21T09:00:00+03:00"


@pytest.fixture(params=ORDER_CASES, ids=str)
def case(request: pytest.FixtureRequest) -> OrderCase:
    chosen: OrderCase = request.param
    return chosen


@pytest.fixture
def run(tmp_path: Path, case: OrderCase, fake: Fake) -> Run:
    return case.running(fake, tmp_path)


def stage_of(case: OrderCase, status: str) -> tuple[str, str]:
    stage = case.config().order_stages[status]
    return stage.pipeline_id, stage.status_id


def sorted_items(rows: list[tuple[str, str, int, str]]) -> list[tuple[str, Decimal, Decimal]]:
    return sorted((name, Decimal(qty), Decimal(price)) for _, name, qty, price in rows)


EXAMPLE_ITEMS = [
    ("chair-01", "Стул Венский", 40, "350.00"),
    ("table-07", "Стол банкетный", 5, "6900.00"),
]


def only(values: list[str]) -> str:
    assert len(values) == 1, values
    return values[0]


def marked(notes: list[str], key: str) -> int:
    return sum(f"Order event: {key}" in note for note in notes)


async def test_a_persons_order_makes_contact_and_deal_in_the_mapped_stage_with_items(
    run: Run, case: OrderCase, fake: Fake
) -> None:
    async with run() as bridge:
        answer = await post_order(bridge, order_body(event="created", status="new", business=False))
        assert answer.status_code == 200, answer.text
    deal = only(case.deals(fake))
    assert len(case.contacts(fake)) == 1
    assert case.stage(fake, deal) == stage_of(case, "new")
    assert case.price(fake, deal) == Decimal("48500.00")
    if case.items is not None:
        assert sorted(case.items(fake, deal)) == sorted_items(EXAMPLE_ITEMS)
    notes = case.notes(fake, deal)
    assert marked(notes, "ord_1042@2026-11-20T07:15:00Z") == 1
    assert any("Стул Венский" in note for note in notes)  # the note always lists items
    assert case.companies(fake) == []


async def test_a_business_order_creates_its_company_and_links_contact_and_deal(
    run: Run, case: OrderCase, fake: Fake
) -> None:
    async with run() as bridge:
        assert (await post_order(bridge, order_body(event="created"))).status_code == 200
    company = only(case.companies(fake))
    deal, contact = only(case.deals(fake)), only(case.contacts(fake))
    assert case.deal_company(fake, deal) == company
    assert case.contact_companies(fake, contact) == {company}


async def test_a_business_order_finds_its_company_by_inn(
    run: Run, case: OrderCase, fake: Fake
) -> None:
    existing = case.add_company(fake, "Ромашка (старое название)", "7701234567")
    async with run() as bridge:
        assert (await post_order(bridge, order_body(event="created"))).status_code == 200
    assert case.companies(fake) == [existing]
    assert case.deal_company(fake, only(case.deals(fake))) == existing


async def test_an_update_moves_the_same_deal_and_replaces_items_and_amount(
    run: Run, case: OrderCase, fake: Fake
) -> None:
    async with run() as bridge:
        assert (
            await post_order(bridge, order_body(event="created", status="new"))
        ).status_code == 200
        update = order_body(status="in_rent", updated_at=UPDATED, total="25000.00", items=TENT)
        answer = await post_order(bridge, update)
        assert answer.status_code == 200, answer.text
        assert answer.json()["results"][bridge.settings.enabled_crms[0]]["lead_created"] is False
    deal = only(case.deals(fake))
    assert case.stage(fake, deal) == stage_of(case, "in_rent")
    assert case.price(fake, deal) == Decimal("25000.00")
    if case.items is not None:
        assert case.items(fake, deal) == sorted_items(TENT)
    notes = case.notes(fake, deal)
    assert marked(notes, "ord_1042@2026-11-21T06:00:00Z") == 1
    assert any("new → in_rent" in note for note in notes)
    assert len(case.contacts(fake)) == 1 and len(case.companies(fake)) == 1


async def test_an_older_update_after_a_newer_one_changes_nothing(
    run: Run, case: OrderCase, fake: Fake
) -> None:
    async with run() as bridge:
        newer = order_body(status="in_rent", updated_at=UPDATED, items=TENT)
        assert (await post_order(bridge, newer)).status_code == 200
        calls = case.api_calls(fake)
        older = await post_order(bridge, order_body(status="reserved"))
        assert (older.status_code, older.json()) == (202, {"status": "stale"})
        await bridge.settle()
        assert case.api_calls(fake) == calls
    deal = only(case.deals(fake))
    assert case.stage(fake, deal) == stage_of(case, "in_rent")


async def test_cancelled_moves_the_deal_to_the_lost_stage(
    run: Run, case: OrderCase, fake: Fake
) -> None:
    async with run() as bridge:
        assert (await post_order(bridge, order_body(status="reserved"))).status_code == 200
        cancel = order_body(event="cancelled", status="reserved", updated_at=UPDATED)
        assert (await post_order(bridge, cancel)).status_code == 200
    deal = only(case.deals(fake))
    assert case.stage(fake, deal) == stage_of(case, "cancelled")


async def test_a_repeat_is_409_with_no_crm_call(run: Run, case: OrderCase, fake: Fake) -> None:
    async with run() as bridge:
        body: dict[str, Any] = order_body()
        assert (await post_order(bridge, body)).status_code == 200
        calls = case.api_calls(fake)
        again = await post_order(bridge, body)
        assert (again.status_code, again.json()) == (409, {"status": "duplicate"})
        await bridge.settle()
        assert case.api_calls(fake) == calls
    assert len(case.notes(fake, only(case.deals(fake)))) == 1
