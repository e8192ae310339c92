"""The order operations every CRM adapter keeps (SPEC §8), run against every CRM's fake.

Companies found by INN then by name (loose searches confirmed by the flow's rule), created
and linked; deals created with their company, moved between stages in one write, their
items replaced (never appended) and a repeated replacement harmless. Each CRM gives one
`OrderProbe` (`tests/order_probes.py`): its section with the order settings and how its
fake is read back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from bridge import order_rules
from bridge.crm.base import order_adapter
from bridge.domain import (
    Company,
    CompanyRecord,
    DealChange,
    FieldKind,
    FieldUpdate,
    OrderItem,
    OrderStatus,
)
from bridge.rules import contact_matches
from bridge.settings import CrmConfig
from tests.order_probes import PROBES, Item, OrderProbe
from tests.test_contract import ADAPTER_CASES, AdapterCase, warmed

Fake = Any
Adapter = Any


def _pairs() -> list[tuple[AdapterCase, OrderProbe]]:
    cases = {str(case): case for case in ADAPTER_CASES}
    return [(cases[probe.kind], probe) for probe in PROBES]


@pytest.fixture(params=_pairs(), ids=lambda pair: str(pair[0]))
def pair(request: pytest.FixtureRequest) -> tuple[AdapterCase, OrderProbe]:
    chosen: tuple[AdapterCase, OrderProbe] = request.param
    return chosen


@pytest.fixture
def case(pair: tuple[AdapterCase, OrderProbe]) -> AdapterCase:
    return pair[0]


@pytest.fixture
def probe(pair: tuple[AdapterCase, OrderProbe]) -> OrderProbe:
    return pair[1]


@pytest.fixture
def config(case: AdapterCase, probe: OrderProbe) -> CrmConfig:
    return probe.order_config(case.config)


@pytest.fixture
def fake(case: AdapterCase, probe: OrderProbe) -> Fake:
    return (probe.make_fake or case.make_fake)()


@pytest.fixture
async def adapter(
    case: AdapterCase, fake: Fake, config: CrmConfig, probe: OrderProbe
) -> AsyncIterator[Adapter]:
    if probe.sent_problems is not None:
        probe.sent_problems()  # requests of earlier tests are theirs to judge
    made = await warmed(case, fake, case.make_adapter(fake, config=config))
    orders = order_adapter(made)
    assert orders is not None, f"{case.kind} has no order operations"
    yield orders
    await made.connection.aclose()
    if probe.sent_problems is not None:
        assert probe.sent_problems() == []


def confirm(record: CompanyRecord, key: str) -> bool:
    return order_rules.company_matches(record, WANTED, key)


WANTED = Company("ООО Ромашка", inn="7701234567", phone="+74950001122", email="info@romashka.ru")
ITEMS = (
    OrderItem("chair-01", "Стул Венский", Decimal(40), Decimal("350.00")),
    OrderItem("table-07", "Стол банкетный", Decimal(5), Decimal("6900.00")),
)


def stage_of(config: CrmConfig, status: OrderStatus) -> tuple[str, str]:
    target = config.order_stages[status.value]
    return target.pipeline_id, target.status_id


async def new_deal(case: AdapterCase, adapter: Adapter, company_id: str | None = None) -> str:
    new = replace(case.new_deal(), company_id=company_id)
    contact = await adapter.create_contact(case.new_contact())
    deal = await adapter.create_deal(contact, new)
    return str(deal.id)


# ---- companies ----------------------------------------------------------------------


async def test_no_company_is_found_where_there_is_none(fake: Fake, adapter: Adapter) -> None:
    assert await adapter.find_company(WANTED, confirm) is None


async def test_a_company_is_found_by_inn_before_its_name(
    fake: Fake, adapter: Adapter, probe: OrderProbe
) -> None:
    probe.add_company(fake, "ООО Ромашка", "7700000000")  # the name, another INN
    by_inn = probe.add_company(fake, "Ромашка (старое название)", WANTED.inn)
    found = await adapter.find_company(WANTED, confirm)
    assert found is not None and found.id == by_inn


async def test_a_company_without_its_inn_is_found_by_exact_name(
    fake: Fake, adapter: Adapter, probe: OrderProbe
) -> None:
    probe.add_company(fake, "ООО Ромашка и партнёры", "")  # a loose hit, not confirmed
    exact = probe.add_company(fake, "ооо  ромашка", "")
    found = await adapter.find_company(WANTED, confirm)
    assert found is not None and found.id == exact


async def test_a_created_company_is_found_again_by_its_inn(
    fake: Fake, adapter: Adapter, probe: OrderProbe
) -> None:
    created = await adapter.create_company(WANTED)
    assert probe.company_ids(fake) == [created.id]
    found = await adapter.find_company(WANTED, confirm)
    assert found is not None and found.id == created.id


async def test_linking_a_contact_to_its_company_twice_links_it_once(
    case: AdapterCase, fake: Fake, adapter: Adapter, probe: OrderProbe
) -> None:
    company = await adapter.create_company(WANTED)
    contact = await adapter.create_contact(case.new_contact())
    await adapter.link_contact_to_company(contact.id, company.id)
    await adapter.link_contact_to_company(contact.id, company.id)
    assert probe.contact_companies(fake, contact.id) == {company.id}


async def test_a_deal_created_for_a_company_is_linked_to_it(
    case: AdapterCase, fake: Fake, adapter: Adapter, probe: OrderProbe
) -> None:
    company = await adapter.create_company(WANTED)
    deal_id = await new_deal(case, adapter, company.id)
    assert probe.deal_company(fake, deal_id) == company.id


async def test_a_contact_and_deal_created_together_are_both_linked_to_the_company(
    case: AdapterCase, fake: Fake, adapter: Adapter, probe: OrderProbe
) -> None:
    company = await adapter.create_company(WANTED)
    new = replace(case.new_deal(), company_id=company.id)
    contact, deal = await adapter.create_contact_and_deal(case.new_contact(), new)
    assert probe.deal_company(fake, str(deal.id)) == company.id
    assert probe.contact_companies(fake, contact.id) == {company.id}


async def test_a_company_sharing_the_persons_phone_is_not_the_contact(
    case: AdapterCase, adapter: Adapter
) -> None:
    """The customer's lookup finds people only, even where the company has their phone."""
    contact = case.new_contact()
    company = await adapter.create_company(Company("ООО Ромашка", phone=contact.customer.phone))
    keys = contact.customer.lookup_keys()
    assert await adapter.find_contact(keys, contact_matches) is None
    person = await adapter.create_contact(contact)
    await adapter.link_contact_to_company(person.id, company.id)
    found = await adapter.find_contact(keys, contact_matches)
    assert found is not None and found.id == person.id


# ---- deals --------------------------------------------------------------------------


async def test_a_change_moves_the_deal_and_writes_price_and_fields_in_one_call(
    case: AdapterCase, fake: Fake, adapter: Adapter, probe: OrderProbe, config: CrmConfig
) -> None:
    deal_id = await new_deal(case, adapter)
    pipeline_id, status_id = stage_of(config, OrderStatus.IN_RENT)
    fields = config.order_fields
    assert fields.order_id and fields.installation_date and fields.comment
    change = DealChange(
        pipeline_id=pipeline_id,
        status_id=status_id,
        price=Decimal("48500.00"),
        fields=(
            FieldUpdate(fields.order_id, FieldKind.TEXT, "ord_1042"),
            FieldUpdate(fields.installation_date, FieldKind.DATE, date(2026, 12, 1)),
            FieldUpdate(fields.comment, FieldKind.TEXT, "этаж 3"),
        ),
    )
    fake.calls.clear()
    await adapter.change_deal(deal_id, change)
    assert len(fake.calls) == probe.change_calls
    assert probe.stage(fake, deal_id) == (pipeline_id, status_id)
    assert probe.price(fake, deal_id) == Decimal("48500.00")
    deal = await adapter.get_deal(deal_id)
    assert deal is not None and deal.fields[fields.order_id] == "ord_1042"
    assert deal.fields[fields.installation_date].startswith("2026-12-01")


async def test_a_deal_moved_to_the_cancelled_stage_is_closed(
    case: AdapterCase, fake: Fake, adapter: Adapter, config: CrmConfig
) -> None:
    deal_id = await new_deal(case, adapter)
    pipeline_id, status_id = stage_of(config, OrderStatus.CANCELLED)
    await adapter.change_deal(deal_id, DealChange(pipeline_id=pipeline_id, status_id=status_id))
    deal = await adapter.get_deal(deal_id)
    assert deal is not None and deal.is_closed


async def test_a_deals_order_id_is_read_back_with_the_contacts_deals(
    case: AdapterCase, fake: Fake, adapter: Adapter, config: CrmConfig
) -> None:
    order_field = config.order_fields.order_id or ""
    new = case.new_deal()
    marked = (*new.fields, FieldUpdate(order_field, FieldKind.TEXT, "ord_7"))
    contact = await adapter.create_contact(case.new_contact())
    await adapter.create_deal(contact, replace(new, fields=marked))
    deals = await adapter.list_deals(contact)
    assert [deal.fields.get(order_field) for deal in deals] == ["ord_7"]


# ---- items --------------------------------------------------------------------------


def _expected(items: tuple[OrderItem, ...]) -> list[Item]:
    return sorted((item.name, item.quantity, item.price) for item in items)


LATER = (OrderItem("tent-02", "Шатёр 6×12", Decimal(1), Decimal("25000.00")),)


# Items set again replace the deal's items, never append: a later list, the same list (a
# retry after a lost answer) adding nothing, or none leaving the deal with none.
@pytest.mark.parametrize("again", [LATER, ITEMS, ()], ids=["later", "same", "none"])
async def test_items_set_again_replace_the_deals_items(
    case: AdapterCase, fake: Fake, adapter: Adapter, probe: OrderProbe, again: tuple[OrderItem, ...]
) -> None:
    deal_id = await new_deal(case, adapter)
    await adapter.set_deal_items(deal_id, ITEMS, "RUB")
    await adapter.set_deal_items(deal_id, again, "RUB")
    assert adapter.keeps_items is (probe.items is not None)
    if probe.items is not None:
        assert sorted(probe.items(fake, deal_id)) == _expected(again)


def test_every_crm_takes_orders() -> None:
    """Each CRM adapter has an `OrderProbe` here (a CRM without one cannot take orders)."""
    kinds = {case.kind for case in ADAPTER_CASES}
    assert kinds <= {probe.kind.split("-")[0] for probe in PROBES}
