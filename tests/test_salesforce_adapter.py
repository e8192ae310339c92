"""The Salesforce adapter's own quirks through its `CrmAdapter` interface, against the
stateful fake org: the lookup in one request, composite creates, a duplicate Telegram id,
the daily allocation, sessions, schema for `bridge check` / `discover`, options."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date
from decimal import Decimal
from typing import Any

import httpx
import pytest

from bridge import order_rules
from bridge.crm.salesforce import Salesforce, build_salesforce
from bridge.crm.salesforce_json import MASTER_RECORD_TYPE
from bridge.crmconfig import schema_problems
from bridge.domain import (
    Company,
    CompanyRecord,
    Contact,
    DealChange,
    FieldKind,
    FieldUpdate,
    KeyKind,
    LookupKey,
    NewDeal,
    OrderItem,
)
from bridge.errors import AuthError, PermanentCrmError, RateLimited
from bridge.rules import contact_matches
from bridge.settings import CrmConfig
from tests.adapter_support import example_section, fake_and_adapter
from tests.clock import ManualClock
from tests.crm_cases import BY_NAME, CUSTOMER
from tests.fakes import salesforce_org as org
from tests.fakes.memory import adapter_on
from tests.fakes.salesforce import SITE, FakeSalesforce
from tests.fakes.server import serve_in_thread

CONFIG = example_section(
    "crm-salesforce.example.toml",
    "salesforce",
    base_url="https://example.my.salesforce.com",
    enabled=True,
)
CASE = BY_NAME["salesforce"]
new_deal, new_contact = CASE.new_deal, CASE.new_contact


def make_adapter(fake: FakeSalesforce, *, config: CrmConfig = CONFIG, **env: Any) -> Salesforce:
    """The adapter on `fake`, signing with the key in the fake's key file."""
    key = {"salesforce_private_key_file": fake.private_key_file}
    return adapter_on(build_salesforce, fake, config, static={}, **{**key, **env})


fake, sf = fake_and_adapter(lambda **org: FakeSalesforce(clock=ManualClock(), **org), make_adapter)


def rest_calls(fake: FakeSalesforce) -> list[str]:
    return [f"{c.method} {c.path}" for c in fake.calls if c.path.startswith("/services/data/")]


async def test_one_lookup_request_for_every_key(fake: FakeSalesforce, sf: Salesforce) -> None:
    typed = fake.add_contact(LastName="Петров", Phone="+7 (999) 123-45-67")
    found = await sf.find_contact(CUSTOMER.lookup_keys(), contact_matches)
    assert found is not None and found.id == typed and found.deal_ids == ()
    assert rest_calls(fake) == ["POST /services/data/v68.0/composite/batch"]
    nobody = await sf.find_contact((LookupKey(KeyKind.EMAIL, "x@y.io"),), contact_matches)
    assert nobody is None and rest_calls(fake)[-1] == "GET /services/data/v68.0/query"


async def test_the_lookup_batch_is_a_read_and_retried_after_a_timeout(
    fake: FakeSalesforce, sf: Salesforce
) -> None:
    # A POST, but queries only: a timeout or a dropped connection cannot have written
    # anything, so it is retried quickly like a GET instead of failing the attempt.
    typed = fake.add_contact(LastName="Петров", Phone="+7 (999) 123-45-67")
    batch = "/services/data/v68.0/composite/batch"
    fake.fail_next(1, kind="timeout", path_prefix=batch)
    fake.fail_next(1, kind="drop", path_prefix=batch)
    found = await sf.find_contact(CUSTOMER.lookup_keys(), contact_matches)
    assert found is not None and found.id == typed
    assert rest_calls(fake) == [f"POST {batch}"] * 3


async def test_a_duplicate_telegram_id_is_that_contact(
    fake: FakeSalesforce, sf: Salesforce
) -> None:
    hidden = fake.add_contact(LastName="Петров", Telegram_Id__c="123456789")
    contact, deal = await sf.create_contact_and_deal(new_contact(), new_deal())
    assert contact.id == hidden and fake.deal_contacts(deal.id) == [hidden]
    assert len(fake.contacts()) == 1
    again = await sf.create_contact(new_contact())
    assert again.id == hidden


async def test_a_deleted_deal_is_none(fake: FakeSalesforce, sf: Salesforce) -> None:
    deal = fake.add_deal(None, deleted=True)
    assert await sf.get_deal(deal) is None
    assert await sf.get_deal("999") is None  # no record has such an id: nothing asked
    assert len(rest_calls(fake)) == 1


@pytest.mark.parametrize("fake", [{"query_batch_size": 3}], indirect=True)
async def test_many_open_deals_page_through(fake: FakeSalesforce, sf: Salesforce) -> None:
    contact = fake.add_contact(LastName="Петров")
    made = {fake.add_deal(contact) for _ in range(7)}
    deals = await sf.list_deals(Contact(id=contact))
    assert {d.id for d in deals} == made and len(rest_calls(fake)) == 3


async def test_a_spent_allocation_waits_and_health_shows_the_usage(
    fake: FakeSalesforce, sf: Salesforce
) -> None:
    fake.daily_limit, fake.api_used = 100, 100
    with pytest.raises(RateLimited) as spent:
        await sf.get_deal("006Qy0000000001AAA")
    assert spent.value.retry_after == sf.usage.recheck_seconds
    assert "REQUEST_LIMIT_EXCEEDED" in str(spent.value)
    with pytest.raises(RateLimited, match="daily API allocation at 100 of 100"):
        await sf.get_deal("006Qy0000000001AAA")
    assert len(rest_calls(fake)) == 1  # the second one was not sent
    health = sf.connection.health_details()
    assert health["daily_api_limit"] == 100 and health["daily_api_holding_back"] is True
    assert (health["api_version"], health["flow"]) == ("68.0", "jwt_bearer")


async def test_check_flags_the_settings_the_org_contradicts(sf: Salesforce) -> None:
    # The example's schema checks clean and `discover` reads it: test_adapter_config.
    schema = await sf.schema()
    wrong = CONFIG.model_copy(
        update={
            "excluded_status_ids": ("Autopay",),
            "default_pipeline": CONFIG.default_pipeline.model_copy(
                update={"status_id": "Partner Review"}
            ),
        }
    )
    assert [p.key for p in schema_problems("salesforce", wrong, schema)] != []


@pytest.mark.parametrize("fake", [{"record_types": False}], indirect=True)
async def test_an_org_without_record_types(fake: FakeSalesforce, sf: Salesforce) -> None:
    schema = await sf.schema()
    assert [p.id for p in schema.pipelines] == [MASTER_RECORD_TYPE]
    contact = fake.add_contact(LastName="Петров")
    deal = await sf.create_deal(
        Contact(id=contact), new_deal(pipeline_id=MASTER_RECORD_TYPE, status_id="Prospecting")
    )
    read = await sf.get_deal(deal.id)
    assert read is not None and read.pipeline_id == MASTER_RECORD_TYPE


async def test_there_is_no_code_to_exchange(sf: Salesforce) -> None:
    with pytest.raises(AuthError, match="no code to exchange"):
        await sf.connection.exchange_code("abc")


async def test_credentials_are_checked_without_a_call(fake: FakeSalesforce) -> None:
    adapter = make_adapter(fake, salesforce_client_id="")
    assert "SALESFORCE_CLIENT_ID" in (await adapter.connection.credentials_problem() or "")
    await adapter.connection.aclose()
    assert fake.calls == []


async def test_the_fake_serves_over_a_real_socket() -> None:
    """What the process-level tests (SIGKILL, fan-out) use: the fake on a loopback port,
    which is both the org's My Domain and the login host the JWT names."""
    served = FakeSalesforce()
    url, stop = serve_in_thread(served)
    served.audience = url
    try:
        options = {**CONFIG.options, "login_url": url}
        config = CONFIG.model_copy(update={"base_url": url, "options": options})
        adapter = make_adapter(served, config=config, transport=httpx.AsyncHTTPTransport())
        contact, deal = await adapter.create_contact_and_deal(new_contact(), new_deal())
        await adapter.connection.aclose()
    finally:
        stop()
    assert served.deal_contacts(deal.id) == [contact.id] and served.tokens_minted == 1


# ---- orders (SPEC §8): the section's order settings and reads for the order contract ----

RENT = {  # the example's commented order settings: every status in the Site record type
    "new": "Prospecting",
    "reserved": "In Progress",
    "in_rent": "In Progress",
    "in_progress": "In Progress",
    "archived": "Closed Won",
    "cancelled": "Closed Lost",
}
# The fields the org has for orders, and where an account keeps its INN.
ORDER_FIELDS = {**org.ORDER_FIELDS, "company_inn": org.ACCOUNT_INN}
PRODUCTS = (  # the rental shop's catalog, in the standard price book
    ("chair-01", "Стул Венский", 350.0),
    ("table-07", "Стол банкетный", 6900.0),
    ("tent-02", "Шатёр 6×12", 25000.0),
)


def order_config(config: CrmConfig, *, pricebook: bool = True) -> CrmConfig:
    """`config` taking orders: stages, fields and (unless told) the standard price book."""
    stages = {status: {"pipeline_id": SITE, "status_id": stage} for status, stage in RENT.items()}
    raw = {
        **config.model_dump(),
        "order_stages": stages,
        "order_fields": ORDER_FIELDS,
        "order_catalog_id": org.STANDARD_PRICEBOOK if pricebook else None,
    }
    return CrmConfig.model_validate(raw)


def order_fake(config: CrmConfig = CONFIG) -> FakeSalesforce:
    fake = FakeSalesforce(order_config(config))
    for code, name, price in PRODUCTS:
        fake.add_product(code, name, price)
    return fake


def line_items_of(fake: FakeSalesforce, deal_id: str) -> list[tuple[str, Decimal, Decimal]]:
    products = {row["Id"]: row["Name"] for row in fake.org.rows("Product2")}
    return [
        (products[row["Product2Id"]], Decimal(str(row["Quantity"])), Decimal(str(row["UnitPrice"])))
        for row in fake.line_items(deal_id)
    ]


def deal_stage(fake: FakeSalesforce, deal_id: str) -> tuple[str, str]:
    deal = fake.deal(deal_id)
    return str(deal["RecordTypeId"]), str(deal["StageName"])


ROMASHKA = Company("ООО Ромашка", inn="7701234567", phone="+74950001122", email="info@romashka.ru")
CHAIRS = OrderItem("chair-01", "Стул Венский", Decimal(40), Decimal("350.00"))
TABLES = OrderItem("table-07", "Стол банкетный", Decimal(5), Decimal("6900.00"))


def company_rule(record: CompanyRecord, key: str) -> bool:
    return order_rules.company_matches(record, ROMASHKA, key)


@pytest.fixture
async def orders() -> AsyncIterator[tuple[FakeSalesforce, Salesforce]]:
    fake = order_fake()
    adapter = make_adapter(fake, config=order_config(CONFIG))
    await adapter.connection.source.current()  # the session, before the counts
    fake.calls.clear()
    yield fake, adapter
    await adapter.connection.aclose()


async def test_an_order_of_a_company_takes_one_request_a_step(
    orders: tuple[FakeSalesforce, Salesforce],
) -> None:
    fake, sf = orders
    assert await sf.find_company(ROMASHKA, company_rule) is None
    company = await sf.create_company(ROMASHKA)
    account = fake.companies()[0]
    assert (account["Name"], account["INN__c"], account["Phone"]) == (
        "ООО Ромашка",
        "7701234567",
        "+74950001122",
    )
    new = NewDeal("Заказ ord_1042", Decimal("48500"), SITE, "Prospecting", (), company.id)
    contact, deal = await sf.create_contact_and_deal(new_contact(), new)
    await sf.link_contact_to_company(contact.id, company.id)
    change = DealChange(
        pipeline_id=SITE,
        status_id="In Progress",
        price=Decimal("48500.00"),
        fields=(FieldUpdate("Installation_Date__c", FieldKind.DATE, date(2026, 12, 1)),),
    )
    await sf.change_deal(deal.id, change)
    await sf.set_deal_items(deal.id, (CHAIRS, TABLES), "RUB")
    data = "/services/data/v68.0"
    assert rest_calls(fake) == [
        f"GET {data}/query",
        f"POST {data}/sobjects/Account",
        f"POST {data}/composite",
        f"PATCH {data}/sobjects/Contact/{contact.id}",
        f"PATCH {data}/sobjects/Opportunity/{deal.id}",
        f"POST {data}/composite",  # the price book's entries and the lines held
        f"POST {data}/composite",  # the lines replaced
    ]
    assert fake.contact(contact.id)["AccountId"] == company.id
    stored = fake.deal(deal.id)
    assert (stored["AccountId"], stored["StageName"]) == (company.id, "In Progress")
    assert stored["Installation_Date__c"] == "2026-12-01"
    assert stored["Amount"] == 48500  # the lines' sum
    assert fake.refusals == []


async def test_items_are_replaced_and_the_same_items_again_cost_one_read(
    orders: tuple[FakeSalesforce, Salesforce],
) -> None:
    fake, sf = orders
    contact = await sf.create_contact(new_contact())
    deal = await sf.create_deal(contact, new_deal())
    await sf.set_deal_items(deal.id, (CHAIRS, TABLES), "RUB")
    first = {row["Id"] for row in fake.line_items(deal.id)}
    fake.calls.clear()
    await sf.set_deal_items(deal.id, (TABLES, CHAIRS), "RUB")  # a retry: nothing to write
    assert len(fake.calls) == 1 and {row["Id"] for row in fake.line_items(deal.id)} == first
    more = OrderItem("table-07", "Стол банкетный", Decimal(6), Decimal("6900.00"))
    await sf.set_deal_items(deal.id, (more,), "RUB")
    assert line_items_of(fake, deal.id) == [("Стол банкетный", Decimal(6), Decimal(6900))]
    assert fake.deal(deal.id)["Amount"] == 41400


async def test_a_product_the_price_book_lacks_changes_nothing_and_says_which(
    orders: tuple[FakeSalesforce, Salesforce],
) -> None:
    fake, sf = orders
    contact = await sf.create_contact(new_contact())
    deal = await sf.create_deal(contact, new_deal())
    await sf.set_deal_items(deal.id, (CHAIRS,), "RUB")
    unknown = OrderItem("sofa-99", "Диван", Decimal(1), Decimal("1000"))
    with pytest.raises(PermanentCrmError, match="sofa-99"):
        await sf.set_deal_items(deal.id, (TABLES, unknown), "RUB")
    assert line_items_of(fake, deal.id) == [("Стул Венский", Decimal(40), Decimal(350))]


async def test_without_a_price_book_items_make_no_call() -> None:
    fake = order_fake()
    adapter = make_adapter(fake, config=order_config(CONFIG, pricebook=False))
    try:
        contact = await adapter.create_contact(new_contact())
        deal = await adapter.create_deal(contact, new_deal())
        fake.calls.clear()
        await adapter.set_deal_items(deal.id, (CHAIRS,), "RUB")
        assert adapter.keeps_items is False and fake.calls == []
    finally:
        await adapter.connection.aclose()


async def test_a_company_name_with_quotes_and_wildcards_is_searched_safely(
    orders: tuple[FakeSalesforce, Salesforce],
) -> None:
    fake, sf = orders
    odd = Company("ООО 'Ромашка_1' 100%")
    made = fake.add_company("ООО 'Ромашка_1' 100%")
    found = await sf.find_company(
        odd, lambda record, key: order_rules.company_matches(record, odd, key)
    )
    assert found is not None and found.id == made and fake.refusals == []


async def test_an_amount_over_products_is_their_sum(
    orders: tuple[FakeSalesforce, Salesforce],
) -> None:
    """Salesforce answers 204 to an Amount written over products and keeps their sum: the
    stage move with its fields still goes through in the one PATCH."""
    fake, sf = orders
    contact = await sf.create_contact(new_contact())
    deal = await sf.create_deal(contact, new_deal())
    await sf.set_deal_items(deal.id, (CHAIRS,), "RUB")
    await sf.change_deal(
        deal.id, DealChange(pipeline_id=SITE, status_id="Closed Lost", price=Decimal(1))
    )
    stored = fake.deal(deal.id)
    assert (stored["StageName"], stored["IsClosed"], stored["Amount"]) == (
        "Closed Lost",
        True,
        14000,
    )


async def test_without_an_inn_field_companies_are_found_by_name() -> None:
    fake = order_fake()
    config = order_config(CONFIG)
    config = config.model_copy(
        update={"order_fields": config.order_fields.model_copy(update={"company_inn": None})}
    )
    adapter = make_adapter(fake, config=config)
    try:
        named = fake.add_company("ООО  РОМАШКА")
        found = await adapter.find_company(ROMASHKA, company_rule)
        assert found == CompanyRecord(named, "ООО  РОМАШКА", "")
        made = await adapter.create_company(Company("ООО Лютик", inn="7700000001"))
        assert fake.org.records["Account"][made.id]["INN__c"] is None  # nowhere to put it
    finally:
        await adapter.connection.aclose()
