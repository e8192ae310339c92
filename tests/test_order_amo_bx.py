"""amoCRM's and Bitrix24's order operations beyond the shared contract: how items are
kept (amoCRM catalog elements found by SKU and linked with a quantity; Bitrix24 product
rows), which calls each operation makes, and what an order event costs in calls."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from bridge import rules
from bridge.crm.amocrm import AmoCrm
from bridge.crm.bitrix24 import Bitrix24
from bridge.domain import (
    CompanyRecord,
    Customer,
    DealChange,
    FieldKind,
    FieldUpdate,
    OrderItem,
)
from bridge.errors import PermanentCrmError
from tests import test_amocrm_adapter as amo
from tests import test_bitrix24_adapter as bx
from tests.order_probes import AMOCRM, BITRIX24
from tests.test_order_contract import ITEMS, confirm
from tests.test_order_contract import WANTED as ROMASHKA
from tests.vendor_support import closing

AMO_CONFIG = AMOCRM.order_config(amo.CONFIG)
BX_CONFIG = BITRIX24.order_config(bx.CONFIG)
CHAIRS, TABLES = ITEMS


@pytest.fixture
def amo_fake() -> Any:
    assert AMOCRM.make_fake is not None
    return AMOCRM.make_fake()


@pytest.fixture
async def amo_adapter(amo_fake: Any) -> AsyncIterator[AmoCrm]:
    async with closing(amo.make_adapter(amo_fake, config=AMO_CONFIG)) as (adapter,):
        yield adapter


@pytest.fixture
def bx_fake() -> Any:
    assert BITRIX24.make_fake is not None
    return BITRIX24.make_fake()


@pytest.fixture
async def bx_adapter(bx_fake: Any) -> AsyncIterator[Bitrix24]:
    async with closing(bx.make_adapter(bx_fake, config=BX_CONFIG)) as (adapter,):
        yield adapter


async def _deal(adapter: AmoCrm | Bitrix24) -> str:
    """A new customer's deal, made with the adapter's own CRM's test data."""
    crm = amo if isinstance(adapter, AmoCrm) else bx
    contact = await adapter.create_contact(crm.new_contact())
    return (await adapter.create_deal(contact, crm.new_deal())).id


# ---- amoCRM -------------------------------------------------------------------------


async def test_amo_items_are_catalog_elements_found_by_their_exact_sku(
    amo_fake: Any, amo_adapter: AmoCrm
) -> None:
    decoy = amo_fake.add_element("chair-011", "Стул детский", 150)  # a substring hit
    chair = amo_fake.add_element("chair-01", "Стул Венский", Decimal("350.00"))
    deal_id = await _deal(amo_adapter)
    amo_fake.calls.clear()
    await amo_adapter.set_deal_items(deal_id, (CHAIRS, TABLES), "RUB")
    # search chair-01, search table-07, create table-07, read links, link both
    assert [(c.method, c.path) for c in amo_fake.calls] == [
        ("GET", "/api/v4/catalogs/7001/elements"),
        ("GET", "/api/v4/catalogs/7001/elements"),
        ("POST", "/api/v4/catalogs/7001/elements"),
        ("GET", f"/api/v4/leads/{deal_id}/links"),
        ("POST", f"/api/v4/leads/{deal_id}/link"),
    ]
    elements = {e["name"]: e["id"] for e in amo_fake.elements()}
    assert elements["Стул Венский"] == chair and elements["Стул детский"] == decoy
    assert sorted(amo_fake.lead_items(deal_id)) == [
        ("Стол банкетный", Decimal(5), Decimal(6900)),
        ("Стул Венский", Decimal(40), Decimal(350)),
    ]


async def test_amo_known_products_cost_no_search_and_same_items_no_write(
    amo_fake: Any, amo_adapter: AmoCrm
) -> None:
    deal_id = await _deal(amo_adapter)
    await amo_adapter.set_deal_items(deal_id, (CHAIRS, TABLES), "RUB")
    amo_fake.calls.clear()
    await amo_adapter.set_deal_items(deal_id, (CHAIRS, TABLES), "RUB")
    assert amo_fake.count() == 1  # the links read: nothing differs
    other = await _deal(amo_adapter)
    amo_fake.calls.clear()
    await amo_adapter.set_deal_items(other, (CHAIRS,), "RUB")
    assert [c.method for c in amo_fake.calls] == ["GET", "POST"]  # links, link


async def test_amo_a_new_quantity_is_unlinked_and_linked_again(
    amo_fake: Any, amo_adapter: AmoCrm
) -> None:
    deal_id = await _deal(amo_adapter)
    await amo_adapter.set_deal_items(deal_id, (CHAIRS, TABLES), "RUB")
    amo_fake.calls.clear()
    fewer = OrderItem(CHAIRS.product_id, CHAIRS.name, Decimal(30), CHAIRS.price)
    await amo_adapter.set_deal_items(deal_id, (fewer, TABLES), "RUB")
    assert [c.path.rsplit("/", 1)[-1] for c in amo_fake.calls] == ["links", "unlink", "link"]
    unlinked = amo_fake.calls[1].json
    assert [link["to_entity_id"] for link in unlinked] == [amo_fake.elements()[0]["id"]]
    assert sorted(amo_fake.lead_items(deal_id))[1] == ("Стул Венский", Decimal(30), Decimal(350))


async def test_amo_a_changed_price_updates_the_catalog_element(
    amo_fake: Any, amo_adapter: AmoCrm
) -> None:
    amo_fake.add_element("chair-01", "Стул Венский", 300)
    deal_id = await _deal(amo_adapter)
    amo_fake.calls.clear()
    await amo_adapter.set_deal_items(deal_id, (CHAIRS,), "RUB")
    assert ("PATCH", "/api/v4/catalogs/7001/elements") in [
        (c.method, c.path) for c in amo_fake.calls
    ]
    assert amo_fake.lead_items(deal_id) == [("Стул Венский", Decimal(40), Decimal(350))]


async def test_amo_a_deleted_element_is_searched_again_after_the_refusal(
    amo_fake: Any, amo_adapter: AmoCrm
) -> None:
    deal_id = await _deal(amo_adapter)
    await amo_adapter.set_deal_items(deal_id, (CHAIRS,), "RUB")
    other = await _deal(amo_adapter)
    amo_fake.delete_element(amo_fake.elements()[0]["id"])  # a manager deleted the product
    with pytest.raises(PermanentCrmError):
        await amo_adapter.set_deal_items(other, (CHAIRS,), "RUB")
    await amo_adapter.set_deal_items(other, (CHAIRS,), "RUB")  # the retry
    assert amo_fake.lead_items(other) == [("Стул Венский", Decimal(40), Decimal(350))]


async def test_amo_without_a_catalog_items_make_no_call(amo_fake: Any) -> None:
    config = AMO_CONFIG.model_copy(update={"order_catalog_id": None})
    async with closing(amo.make_adapter(amo_fake, config=config)) as (adapter,):
        assert adapter.keeps_items is False
        await adapter.set_deal_items("1", (CHAIRS,), "RUB")
    assert amo_fake.count() == 0


async def test_amo_a_date_field_is_a_day_and_reads_back_as_one(
    amo_fake: Any, amo_adapter: AmoCrm
) -> None:
    field = AMO_CONFIG.order_fields.installation_date or ""
    deal_id = await _deal(amo_adapter)
    change = DealChange(fields=(FieldUpdate(field, FieldKind.DATE, date(2026, 12, 1)),))
    await amo_adapter.change_deal(deal_id, change)
    assert amo_fake.calls[-1].json["custom_fields_values"][0]["values"] == [
        {"value": "2026-12-01T00:00:00+00:00"}
    ]
    deal = await amo_adapter.get_deal(deal_id)
    assert deal is not None and deal.fields[field] == "2026-12-01"


async def test_amo_a_company_is_searched_by_inn_then_by_the_names_longest_word(
    amo_fake: Any, amo_adapter: AmoCrm
) -> None:
    exact = amo_fake.add_company("ооо  ромашка")
    assert (await amo_adapter.find_company(ROMASHKA, confirm)) == CompanyRecord(
        str(exact), "ооо  ромашка", ""
    )
    assert [c.params["query"] for c in amo_fake.calls] == [["7701234567"], ["Ромашка"]]


# ---- Bitrix24 -----------------------------------------------------------------------


async def test_bx_product_rows_replace_and_recompute_an_automatic_amount(
    bx_fake: Any, bx_adapter: Bitrix24
) -> None:
    deal_id = await _deal(bx_adapter)
    bx_fake.calls.clear()
    await bx_adapter.set_deal_items(deal_id, (CHAIRS, TABLES), "RUB")
    assert bx_fake.methods[-1] == "crm.deal.productrows.set" and bx_fake.count() == 1
    assert bx_fake.deal(deal_id)["OPPORTUNITY"] == "48500.00"  # 40×350 + 5×6900
    await bx_adapter.change_deal(deal_id, DealChange(price=Decimal("50000")))
    await bx_adapter.set_deal_items(deal_id, (TABLES,), "RUB")
    assert [row["PRODUCT_NAME"] for row in bx_fake.deal_rows(deal_id)] == ["Стол банкетный"]
    assert bx_fake.deal(deal_id)["OPPORTUNITY"] == "50000.00"  # manual once written


async def test_bx_a_company_is_created_with_its_inn_requisite_in_one_batch(
    bx_fake: Any, bx_adapter: Bitrix24
) -> None:
    created = await bx_adapter.create_company(ROMASHKA)
    assert bx_fake.count() == 1 and bx_fake.methods == ["crm.company.add", "crm.requisite.add"]
    [requisite] = bx_fake.requisites()
    assert (requisite["ENTITY_ID"], requisite["RQ_INN"], requisite["PRESET_ID"]) == (
        created.id,
        "7701234567",
        "1",
    )
    bx_fake.calls.clear()
    found = await bx_adapter.find_company(ROMASHKA, confirm)
    assert found is not None and found.id == created.id and bx_fake.count() == 1


async def test_bx_a_change_moves_the_deal_to_another_pipeline(
    bx_fake: Any, bx_adapter: Bitrix24
) -> None:
    deal_id = await _deal(bx_adapter)  # pipeline 2
    stage = BX_CONFIG.order_stages["cancelled"]
    await bx_adapter.change_deal(deal_id, DealChange(stage.pipeline_id, stage.status_id))
    assert bx_fake.methods[-1] == "crm.item.update"
    deal = await bx_adapter.get_deal(deal_id)
    assert (
        deal is not None
        and deal.is_closed
        and (deal.pipeline_id, deal.status_id)
        == (
            "3",
            "C3:LOSE",
        )
    )


# ---- calls per order event ----------------------------------------------------------


async def test_calls_per_order_event_amocrm(amo_fake: Any, amo_adapter: AmoCrm) -> None:
    """What an order event costs in the adapter's operations, as the README counts it:
    created (a new customer with a Telegram id, phone and e-mail, a new company,
    products this process has linked before), updated (stage, amount and fields in one
    write, items changed, a note), cancelled (the lost stage, a note)."""
    warm = await _deal(amo_adapter)
    await amo_adapter.set_deal_items(warm, (CHAIRS, TABLES), "RUB")  # products known
    amo_fake.calls.clear()
    petr = Customer("Пётр", "Иванов", "+79990000000", "p@example.com", "42", "petr")
    keys = petr.lookup_keys()
    assert await amo_adapter.find_contact(keys, rules.contact_matches) is None
    assert await amo_adapter.find_company(ROMASHKA, confirm) is None
    company = await amo_adapter.create_company(ROMASHKA)
    new = amo.new_deal(company_id=company.id)
    _, deal = await amo_adapter.create_contact_and_deal(amo.new_contact(), new)
    await amo_adapter.set_deal_items(deal.id, (CHAIRS, TABLES), "RUB")
    await amo_adapter.add_note(deal.id, "Заказ ord_1042 создан")
    created = amo_fake.count()
    amo_fake.calls.clear()
    stage = AMO_CONFIG.order_stages["in_rent"]
    change = DealChange(stage.pipeline_id, stage.status_id, Decimal(48500))
    await amo_adapter.change_deal(deal.id, change)
    await amo_adapter.set_deal_items(deal.id, (TABLES,), "RUB")
    await amo_adapter.add_note(deal.id, "Заказ ord_1042: в аренде")
    updated = amo_fake.count()
    amo_fake.calls.clear()
    lost = AMO_CONFIG.order_stages["cancelled"]
    await amo_adapter.change_deal(deal.id, DealChange(lost.pipeline_id, lost.status_id))
    await amo_adapter.add_note(deal.id, "Заказ ord_1042 отменён")
    # created: 3 contact searches + 2 company searches + company + complex + contact
    # link + links read + link + note; updated: PATCH + links read + unlink + note;
    # cancelled: PATCH + note
    assert (created, updated, amo_fake.count()) == (11, 4, 2)
    assert amo_fake.lead_company(deal.id) == int(company.id)


async def test_calls_per_order_event_bitrix24(bx_fake: Any, bx_adapter: Bitrix24) -> None:
    keys = bx.new_contact().customer.lookup_keys()
    assert await bx_adapter.find_contact(keys, rules.contact_matches) is None
    assert await bx_adapter.find_company(ROMASHKA, confirm) is None
    company = await bx_adapter.create_company(ROMASHKA)
    _, deal = await bx_adapter.create_contact_and_deal(
        bx.new_contact(), bx.new_deal(company_id=company.id)
    )
    await bx_adapter.set_deal_items(deal.id, (CHAIRS, TABLES), "RUB")
    await bx_adapter.add_note(deal.id, "Заказ ord_1042 создан")
    created = bx_fake.count()
    bx_fake.calls.clear()
    stage = BX_CONFIG.order_stages["in_rent"]
    await bx_adapter.change_deal(deal.id, DealChange(stage.pipeline_id, stage.status_id))
    await bx_adapter.set_deal_items(deal.id, (TABLES,), "RUB")
    await bx_adapter.add_note(deal.id, "Заказ ord_1042: в аренде")
    updated = bx_fake.count()
    bx_fake.calls.clear()
    lost = BX_CONFIG.order_stages["cancelled"]
    await bx_adapter.change_deal(deal.id, DealChange(lost.pipeline_id, lost.status_id))
    await bx_adapter.add_note(deal.id, "Заказ ord_1042 отменён")
    assert (created, updated, bx_fake.count()) == (6, 3, 2)
    assert bx_fake.deal(deal.id)["COMPANY_ID"] == company.id


def test_amo_a_day_reads_back_whether_stored_at_utc_or_moscow_midnight() -> None:
    from bridge.crm.amocrm_json import date_text

    utc_midnight, moscow_midnight = 1_796_083_200, 1_796_083_200 - 3 * 3600
    assert date_text({"value": utc_midnight}) == "2026-12-01"
    assert date_text({"value": moscow_midnight}) == "2026-12-01"


async def test_amo_fake_complex_links_contact_and_company_only_when_it_creates_both(
    amo_fake: Any,
) -> None:
    import httpx

    existing = amo_fake.add_company("ООО Лютик")
    headers = {"Authorization": f"Bearer {amo_fake.issue_token()}"}
    async with httpx.AsyncClient(
        transport=amo_fake.transport(), base_url="https://x.amocrm.test", headers=headers
    ) as client:
        answer = await client.post(
            "/api/v4/leads/complex",
            json=[
                {"_embedded": {"contacts": [{"name": "А"}], "companies": [{"name": "ООО Новая"}]}},
                {"_embedded": {"contacts": [{"name": "Б"}], "companies": [{"id": existing}]}},
            ],
        )
    both, by_id = answer.json()
    assert amo_fake.contact_companies(both["contact_id"]) == {both["company_id"]}
    assert amo_fake.lead_company(both["id"]) == both["company_id"] != existing
    assert amo_fake.contact_companies(by_id["contact_id"]) == set()
    assert amo_fake.lead_company(by_id["id"]) == existing
