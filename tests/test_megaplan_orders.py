"""Megaplan's order operations beyond the shared contract (tests/test_order_contract.py):
transitions, offers and positions, the INN extra field, DateOnly, and what each costs."""

from __future__ import annotations

import json
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from bridge import order_rules
from bridge.crm import megaplan_json as mj
from bridge.crm.megaplan import Megaplan
from bridge.crmconfig import config_snippet, schema_problems
from bridge.domain import Company, CompanyRecord, DealChange, FieldKind, FieldUpdate
from bridge.errors import PermanentCrmError
from bridge.settings import OrderFieldIds
from tests.fakes.megaplan import COMPANY_CATEGORY, DEAL_CATEGORY, EXAMPLE_CONFIG, FakeMegaplan
from tests.order_probes import megaplan_orders
from tests.test_megaplan_adapter import CONFIG, make_adapter, new_contact, new_deal
from tests.test_odoo_orders import uncommented
from tests.test_order_contract import ITEMS, confirm
from tests.test_order_contract import WANTED as ROMASHKA

ORDERS = megaplan_orders(CONFIG)
INSTALL = f"{DEAL_CATEGORY}InstallationDate"
CHAIRS, TABLES = ITEMS


def setup() -> tuple[FakeMegaplan, Megaplan]:
    fake = FakeMegaplan(rate_limit=1000)
    return fake, make_adapter(fake, config=ORDERS)


def paths(fake: FakeMegaplan) -> list[str]:
    return [f"{call.method} {call.path}" for call in fake.calls]


async def a_deal(fake: FakeMegaplan, adapter: Megaplan) -> str:
    contact = await adapter.create_contact(new_contact())
    deal = await adapter.create_deal(contact, new_deal())  # program 1, state 12
    fake.calls.clear()
    return deal.id


async def test_a_move_reads_the_transitions_writes_then_applies_one() -> None:
    fake, adapter = setup()
    deal_id = await a_deal(fake, adapter)
    await adapter.change_deal(deal_id, DealChange("1", "13", price=Decimal("48500")))
    assert paths(fake) == [
        f"GET /api/v3/deal/{deal_id}",
        f"POST /api/v3/deal/{deal_id}",
        f"POST /api/v3/deal/{deal_id}/applyTransition",
    ]
    assert fake.calls[-1].json == {"contentType": "ProgramTransition", "id": "1213"}
    assert fake.deal(deal_id)["state"]["id"] == "13"


async def test_a_deal_already_in_its_state_is_only_written() -> None:
    fake, adapter = setup()
    deal_id = await a_deal(fake, adapter)
    await adapter.change_deal(deal_id, DealChange("1", "12", price=Decimal("1")))
    assert paths(fake) == [f"GET /api/v3/deal/{deal_id}", f"POST /api/v3/deal/{deal_id}"]
    fake.calls.clear()
    await adapter.change_deal(deal_id, DealChange(price=Decimal("2")))  # no stage: no read
    assert paths(fake) == [f"POST /api/v3/deal/{deal_id}"]


async def test_a_move_the_scheme_does_not_allow_fails_for_good_writing_nothing() -> None:
    fake, adapter = setup()
    deal_id = await a_deal(fake, adapter)
    await adapter.change_deal(deal_id, DealChange("1", "15"))  # Отказ: final
    with pytest.raises(PermanentCrmError, match="no transition from state 15 to 12"):
        await adapter.change_deal(deal_id, DealChange("1", "12", price=Decimal("7")))
    assert fake.deal(deal_id)["price"]["value"] == 10000.5  # nothing was written
    with pytest.raises(PermanentCrmError, match="cannot move it to program 2"):
        await adapter.change_deal(deal_id, DealChange("2", "21"))


async def test_a_cancelled_deal_is_closed_by_its_result_whatever_the_section_lists() -> None:
    fake, adapter = setup()
    bare = ORDERS.model_copy(update={"closed_status_ids": []})
    adapter = make_adapter(fake, config=bare)
    deal_id = await a_deal(fake, adapter)
    await adapter.change_deal(deal_id, DealChange("1", "15"))
    read = await adapter.get_deal(deal_id)
    assert read is not None and read.is_closed and read.status_id == "15"
    await adapter.change_deal(deal_id, DealChange("1", "13"))  # re-opened
    read = await adapter.get_deal(deal_id)
    assert read is not None and not read.is_closed


async def test_items_become_offers_once_and_positions_replaced_whole() -> None:
    fake, adapter = setup()
    deal_id = await a_deal(fake, adapter)
    await adapter.set_deal_items(deal_id, (CHAIRS, TABLES), "RUB")
    assert paths(fake) == [
        "GET /api/v3/offer",
        "POST /api/v3/offer",
        "POST /api/v3/offer",
        f"POST /api/v3/deal/{deal_id}",
    ]
    assert sorted(o["article"] for o in fake.offers()) == ["chair-01", "table-07"]
    fake.calls.clear()
    await adapter.set_deal_items(deal_id, (TABLES,), "RUB")  # offers known: one request
    assert paths(fake) == [f"POST /api/v3/deal/{deal_id}"]
    rows = fake.deal(deal_id)["positions"]
    assert [(r["name"], r["quantity"], r["price"]["value"]) for r in rows] == [
        ("Стол банкетный", 5, 6900)
    ]
    # Another process finds the offers by article and creates none.
    other = make_adapter(fake, config=ORDERS)
    fake.calls.clear()
    await other.set_deal_items(deal_id, (CHAIRS, TABLES), "RUB")
    assert paths(fake) == ["GET /api/v3/offer", f"POST /api/v3/deal/{deal_id}"]
    query = json.loads(next(iter(fake.calls[0].params)))
    terms = query["filter"]["config"]["termGroup"]["terms"]
    assert [t["value"] for t in terms] == ["chair-01", "table-07"] and len(fake.offers()) == 2


async def test_no_items_empties_the_positions_in_one_request() -> None:
    fake, adapter = setup()
    deal_id = await a_deal(fake, adapter)
    await adapter.set_deal_items(deal_id, (CHAIRS,), "RUB")
    fake.calls.clear()
    await adapter.set_deal_items(deal_id, (), "RUB")
    assert paths(fake) == [f"POST /api/v3/deal/{deal_id}"]
    assert fake.deal(deal_id)["positions"] == []


async def test_a_date_is_a_date_only_with_its_month_from_zero() -> None:
    fake, adapter = setup()
    deal_id = await a_deal(fake, adapter)
    day = FieldUpdate(INSTALL, FieldKind.DATE, date(2026, 12, 1))
    await adapter.change_deal(deal_id, DealChange(fields=(day,)))
    assert fake.deal(deal_id)[INSTALL] == {
        "contentType": "DateOnly",
        "year": 2026,
        "month": 11,
        "day": 1,
    }
    read = await adapter.get_deal(deal_id)
    assert read is not None and read.fields[INSTALL] == "2026-12-01"
    moment = FieldUpdate(INSTALL, FieldKind.DATE, datetime(2026, 12, 1, 9))
    with pytest.raises(ValueError, match="date value"):
        mj.field_values([moment])


async def test_a_company_by_inn_is_one_request_and_by_name_a_second() -> None:
    fake, adapter = setup()
    by_inn = fake.add_company("Ромашка", inn=ROMASHKA.inn)
    found = await adapter.find_company(ROMASHKA, confirm)
    assert found is not None and found.id == str(by_inn)
    assert paths(fake) == ["GET /api/v3/contractorCompany"]
    fake.calls.clear()
    other = Company("ООО Ромашка", inn="7700000001")
    named = fake.add_company("ООО Ромашка")
    found = await adapter.find_company(other, lambda r, k: order_rules.company_matches(r, other, k))
    assert found is not None and found.id == str(named)
    assert paths(fake) == ["GET /api/v3/contractorCompany"] * 2


async def test_without_an_inn_field_a_company_is_found_by_name_alone() -> None:
    fake = FakeMegaplan(rate_limit=1000)
    no_inn = ORDERS.model_copy(
        update={"order_fields": OrderFieldIds(order_id=f"{DEAL_CATEGORY}OrderId")}
    )
    adapter = make_adapter(fake, config=no_inn)
    created = await adapter.create_company(ROMASHKA)
    assert f"{COMPANY_CATEGORY}Inn" not in fake.companies()[0]
    fake.calls.clear()
    found = await adapter.find_company(ROMASHKA, confirm)
    assert found is not None and found.id == created.id
    assert paths(fake) == ["GET /api/v3/contractorCompany"]


async def test_a_created_company_keeps_its_inn_phone_and_email() -> None:
    fake, adapter = setup()
    created = await adapter.create_company(ROMASHKA)
    (company,) = fake.companies()
    assert company[f"{COMPANY_CATEGORY}Inn"] == "7701234567"
    assert [i["value"] for i in company["contactInfo"]] == ["+74950001122", "info@romashka.ru"]
    assert created == CompanyRecord(company["id"], "ООО Ромашка", "7701234567")


async def test_a_contact_created_with_its_deal_belongs_to_the_company_at_once() -> None:
    fake, adapter = setup()
    company = await adapter.create_company(ROMASHKA)
    fake.calls.clear()
    new = new_deal()
    new = type(new)(**{**new.__dict__, "company_id": company.id})
    contact, _ = await adapter.create_contact_and_deal(new_contact(), new)
    assert paths(fake) == ["POST /api/v3/contractorHuman", "POST /api/v3/deal"]
    assert fake.human_company(contact.id) == company.id
    await adapter.link_contact_to_company(contact.id, company.id)  # known: no request
    assert len(fake.calls) == 2


async def test_check_and_discover_cover_the_order_fields_and_the_company_inn() -> None:
    _fake, adapter = setup()
    schema = await adapter.schema()
    assert schema_problems("megaplan", ORDERS, schema) == []
    snippet = config_snippet("megaplan", ORDERS, schema)
    assert f'company_inn = "{COMPANY_CATEGORY}Inn"' in snippet
    assert f'installation_date = "{DEAL_CATEGORY}InstallationDate"' in snippet
    wrong = ORDERS.model_copy(
        update={"order_fields": OrderFieldIds(company_inn=f"{DEAL_CATEGORY}OrderId")}
    )
    assert [str(p) for p in schema_problems("megaplan", wrong, schema)] == [
        f"crm.megaplan.order_fields.company_inn = {DEAL_CATEGORY}OrderId: no such company field"
    ]


def test_the_examples_order_settings_are_the_ones_tested(tmp_path: Path) -> None:
    config = uncommented(EXAMPLE_CONFIG, tmp_path)
    assert config.takes_orders and config.order_stages == ORDERS.order_stages
    assert config.order_fields == ORDERS.order_fields
