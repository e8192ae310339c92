"""Odoo's order operations beyond the shared contract (tests/test_order_contract.py): the
lost pseudo-stage, INN in `vat`, the person-as-customer link and what each costs."""

from __future__ import annotations

import re
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from bridge.crm import odoo_json as oj
from bridge.crm.odoo import Odoo
from bridge.crmconfig import config_snippet, schema_problems
from bridge.domain import (
    Company,
    CompanyRecord,
    DealChange,
    FieldKind,
    FieldUpdate,
    NewDeal,
    OrderItem,
)
from bridge.errors import PermanentCrmError
from bridge.rules import contact_matches
from bridge.settings import CrmConfig, OrderFieldIds, OrderStage, load_file_config
from tests.fakes.odoo import EXAMPLE_CONFIG, FakeOdoo, example_config, example_odoo
from tests.order_probes import odoo_orders
from tests.test_odoo_adapter import make_adapter, new_contact, new_deal
from tests.test_order_contract import WANTED as ROMASHKA
from tests.test_order_contract import confirm


def setup(version: int = 18, **options: object) -> tuple[FakeOdoo, Odoo]:
    config = odoo_orders(example_config())
    if options:
        config = config.model_copy(update={"options": {**config.options, **options}})
    fake = example_odoo(config, version=version)
    return fake, make_adapter(fake, config=config)


async def warm(adapter: Odoo, fake: FakeOdoo) -> None:
    await adapter.find_contact([], contact_matches)
    fake.calls.clear()
    fake.executed.clear()


@pytest.mark.parametrize("version", [18, 19])
async def test_cancelled_is_one_action_set_lost_with_the_reason_price_and_fields(
    version: int,
) -> None:
    fake, adapter = setup(version, lost_reason_id=2)
    await warm(adapter, fake)
    contact = await adapter.create_contact(new_contact())
    deal = await adapter.create_deal(contact, new_deal())
    fake.executed.clear()
    change = DealChange(
        pipeline_id="1",
        status_id=oj.LOST,
        price=Decimal("100"),
        fields=(FieldUpdate("x_order_status", FieldKind.TEXT, "cancelled"),),
    )
    await adapter.change_deal(deal.id, change)
    assert fake.executed == ["crm.lead.action_set_lost"]
    lead = fake.lead(deal.id)
    assert lead["active"] is False and lead["probability"] == 0
    assert lead["lost_reason_id"] == 2 and lead["expected_revenue"] == 100
    assert lead["x_order_status"] == "cancelled"
    assert lead["stage_id"] == 2  # a lost opportunity keeps its stage (transcript §6.11)
    read = await adapter.get_deal(deal.id)
    assert read is not None and read.is_closed


async def test_a_lost_deal_moved_to_a_live_stage_is_open_again() -> None:
    fake, adapter = setup(lost_reason_id=1)
    contact = await adapter.create_contact(new_contact())
    deal = await adapter.create_deal(contact, new_deal())
    await adapter.change_deal(deal.id, DealChange(pipeline_id="1", status_id=oj.LOST))
    await adapter.change_deal(deal.id, DealChange(pipeline_id="1", status_id="3"))
    lead = fake.lead(deal.id)
    assert lead["active"] is True and lead["stage_id"] == 3 and lead["lost_reason_id"] is False
    read = await adapter.get_deal(deal.id)
    assert read is not None and not read.is_closed


async def test_an_order_first_seen_cancelled_is_created_lost_in_one_call() -> None:
    fake, adapter = setup(lost_reason_id=1)
    contact = await adapter.create_contact(new_contact())
    await warm(adapter, fake)
    lost = NewDeal("Заказ ord_9", Decimal("500"), "1", oj.LOST)
    deal = await adapter.create_deal(contact, lost)
    assert fake.executed == ["crm.lead.create"] and deal.is_closed
    lead = fake.lead(deal.id)
    assert lead["active"] is False and lead["lost_reason_id"] == 1
    read = await adapter.get_deal(deal.id)
    assert read is not None and read.is_closed


async def test_items_make_no_call() -> None:
    fake, adapter = setup()
    contact = await adapter.create_contact(new_contact())
    deal = await adapter.create_deal(contact, new_deal())
    fake.calls.clear()
    item = OrderItem("chair-01", "Стул", Decimal(2), Decimal("350"))
    await adapter.set_deal_items(deal.id, (item,), "RUB")
    assert adapter.keeps_items is False and fake.calls == []


async def test_the_inn_is_found_with_a_country_prefix_and_never_on_a_person() -> None:
    fake, adapter = setup()
    company = fake.add_partner("Ромашка", is_company=True, fields={"vat": "RU7701234567"})
    # A person of the company carries its vat (a commercial field): not a company hit.
    fake.add_partner("Анна Смирнова", parent_id=company)
    assert [p["vat"] for p in fake.partners()] == ["RU7701234567", "RU7701234567"]
    found = await adapter.find_company(ROMASHKA, confirm)
    assert found is not None and found.id == str(company)


async def test_a_company_search_is_one_call_and_nothing_to_search_is_none() -> None:
    fake, adapter = setup()
    await warm(adapter, fake)
    assert await adapter.find_company(ROMASHKA, confirm) is None
    assert fake.executed == ["res.partner.search_read"]
    assert await adapter.find_company(Company(""), confirm) is None
    assert len(fake.executed) == 1


async def test_a_created_company_has_its_inn_phone_and_email() -> None:
    fake, adapter = setup()
    created = await adapter.create_company(ROMASHKA)
    row = fake.partner(created.id)
    assert row["is_company"] is True and row["vat"] == "7701234567"
    assert (row["phone"], row["email"]) == ("+74950001122", "info@romashka.ru")
    assert created == CompanyRecord(created.id, "ООО Ромашка", "7701234567")


async def test_a_deal_for_a_company_the_process_linked_costs_no_second_write() -> None:
    fake, adapter = setup()
    company = await adapter.create_company(ROMASHKA)
    contact = await adapter.create_contact(new_contact())
    await adapter.link_contact_to_company(contact.id, company.id)
    fake.executed.clear()
    with_company = NewDeal("Заказ", Decimal(1), "1", "1", company_id=company.id)
    await adapter.create_deal(contact, with_company)
    assert fake.executed == ["crm.lead.create"]
    # Another process (a restart) does not know: it writes the link again, harmlessly.
    other = make_adapter(fake, config=adapter.config)
    await warm(other, fake)
    await other.create_deal(contact, with_company)
    assert fake.executed == ["res.partner.write", "crm.lead.create"]
    assert fake.partner(contact.id)["parent_id"] == int(company.id)


async def test_a_contact_created_with_its_deal_is_the_companys_from_the_start() -> None:
    fake, adapter = setup()
    company = await adapter.create_company(ROMASHKA)
    fake.executed.clear()
    with_company = NewDeal("Заказ", Decimal(1), "1", "1", company_id=company.id)
    contact, deal = await adapter.create_contact_and_deal(new_contact(), with_company)
    assert fake.executed == ["res.partner.create", "crm.lead.create"]
    assert fake.partner(contact.id)["parent_id"] == int(company.id)
    assert fake.partner(contact.id)["vat"] == "7701234567"  # synced from the company
    assert fake.lead(deal.id)["partner_id"] == int(contact.id)


async def test_a_date_field_takes_a_day_and_refuses_a_moment() -> None:
    fake, adapter = setup()
    contact = await adapter.create_contact(new_contact())
    deal = await adapter.create_deal(contact, new_deal())
    day = FieldUpdate("x_installation_date", FieldKind.DATE, date(2026, 12, 1))
    await adapter.change_deal(deal.id, DealChange(fields=(day,)))
    assert fake.lead(deal.id)["x_installation_date"] == "2026-12-01"
    moment = FieldUpdate("x_installation_date", FieldKind.DATE, datetime(2026, 12, 1, 10))
    with pytest.raises(PermanentCrmError, match="date value"):
        await adapter.change_deal(deal.id, DealChange(fields=(moment,)))


async def test_nothing_to_change_sends_nothing() -> None:
    fake, adapter = setup()
    await warm(adapter, fake)
    await adapter.change_deal("1", DealChange())
    assert fake.calls == []


async def test_check_and_discover_cover_the_order_stages_and_fields() -> None:
    _fake, adapter = setup(19)
    schema = await adapter.schema()
    assert schema_problems("odoo", adapter.config, schema) == []
    snippet = config_snippet("odoo", adapter.config, schema)
    assert 'order_id = "x_order_id"' in snippet
    assert 'installation_date = "x_installation_date"' in snippet
    wrong = adapter.config.model_copy(
        update={
            "order_stages": {
                **adapter.config.order_stages,
                "archived": OrderStage(pipeline_id="1", status_id="99"),
            },
            "order_fields": OrderFieldIds(order_id="x_order_id", comment="x_nope"),
        }
    )
    assert [str(p) for p in schema_problems("odoo", wrong, schema)] == [
        "crm.odoo.order_stages.archived.status_id = 99: no such status in pipeline 1",
        "crm.odoo.order_fields.comment = x_nope: no such lead field",
    ]


def uncommented(path: Path, tmp_path: Path) -> CrmConfig:
    """The example with its commented settings (`#key = …`, `#[table]`) switched on."""
    lines = path.read_text(encoding="utf-8").splitlines()
    on = [line[1:] if re.match(r"#[^\s#-]", line) else line for line in lines]
    copy = tmp_path / path.name
    copy.write_text("\n".join(on) + "\n", encoding="utf-8")
    (name,) = load_file_config(copy).crm
    return load_file_config(copy).crm[name]


def test_the_examples_order_settings_are_the_ones_tested(tmp_path: Path) -> None:
    config = uncommented(EXAMPLE_CONFIG, tmp_path)
    tested = odoo_orders(example_config())
    assert config.takes_orders and config.order_stages == tested.order_stages
    assert config.order_fields == tested.order_fields
    assert oj.OdooOptions.from_config("odoo", config.options).lost_reason_id == 1
