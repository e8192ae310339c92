"""The HubSpot adapter through its `CrmAdapter` interface, against the stateful fake."""

from __future__ import annotations

import asyncio
import functools
from datetime import date
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest

from bridge.crm.hubspot import HubSpot, build_hubspot
from bridge.crm.hubspot_json import contact_search_json, field_type
from bridge.domain import (
    Company,
    Contact,
    Customer,
    DealChange,
    FieldKind,
    FieldUpdate,
    NewContact,
    OrderItem,
    Utm,
)
from bridge.errors import PermanentCrmError, RateLimited
from bridge.order_rules import company_matches
from bridge.rules import contact_matches
from bridge.settings import CrmConfig
from bridge.tokens import TokenPair
from tests.adapter_support import email_key, example_section, fake_and_adapter, phone_key, tg_key
from tests.clock import ManualClock as Clock  # test_hubspot_batch imports it as Clock
from tests.crm_cases import BY_NAME
from tests.fakes.hubspot import FakeHubSpot
from tests.fakes.memory import MemoryTokens, adapter_on

CONFIG = example_section(
    "crm-hubspot.example.toml", "hubspot", base_url="https://api.hubapi.test", enabled=True
)
SITE, SITE_AUTOPAY, SITE_WORKING = "default", "1023405001", "appointmentscheduled"
YANDEX, YANDEX_WORKING = "1023405100", "1023405102"
PARTNERS, PARTNERS_AUTOPAY = "1023405200", "1023405201"
RENT, RENT_NEW, RENT_CANCELLED = "1023405300", "1023405301", "1023405306"
CASE = BY_NAME["hubspot"]
new_deal, new_contact = CASE.new_deal, CASE.new_contact
SEARCH = "/crm/objects/2026-09/contacts/search"


def make_adapter(fake: FakeHubSpot, *, config: CrmConfig = CONFIG, **options: Any) -> HubSpot:
    static = {"hubspot_access_token": fake.issue_token()}
    return adapter_on(build_hubspot, fake, config, static=static, **options)


fake, hub = fake_and_adapter(functools.partial(FakeHubSpot, CONFIG), make_adapter)
# The portal's search index a minute behind its writes.
lagging = pytest.mark.parametrize("fake", [{"index_lag": 60}], indirect=True, ids=["lagging"])


# ---- pure mappers -------------------------------------------------------------------


def test_one_search_body_covers_every_key() -> None:
    keys = (tg_key(), phone_key(), email_key())
    body = contact_search_json(keys, CONFIG, 100)
    assert body is not None
    groups = [group["filters"] for group in body["filterGroups"]]
    assert groups == [
        [{"propertyName": "telegram_id", "operator": "EQ", "value": "123456789"}],
        [{"propertyName": "phone", "operator": "EQ", "value": "9991234567"}],
        [{"propertyName": "mobilephone", "operator": "EQ", "value": "9991234567"}],
        [{"propertyName": "email", "operator": "EQ", "value": "ivan@example.com"}],
    ]
    assert "telegram_username" in body["properties"]


@pytest.mark.parametrize(
    ("kind", "widget", "expected"),
    [
        ("enumeration", "checkbox", "multiselect"),
        ("enumeration", "select", "select"),
        ("enumeration", "radio", "select"),
        ("enumeration", "booleancheckbox", "booleancheckbox"),
        ("number", "number", "numeric"),
        ("datetime", "date", "date_time"),
        ("date", "date", "date"),
        ("string", "text", "text"),
        ("string", "textarea", "textarea"),
        ("bool", "booleancheckbox", "bool"),
    ],
)
def test_property_types_map_to_the_names_bridge_check_knows(
    kind: str, widget: str, expected: str
) -> None:
    assert field_type({"type": kind, "fieldType": widget}) == expected


# ---- contacts -----------------------------------------------------------------------


async def test_one_search_finds_by_priority_and_confirms(fake: FakeHubSpot, hub: HubSpot) -> None:
    by_email = fake.add_contact(firstname="E", email="Ivan@Example.com")
    by_phone = fake.add_contact(firstname="P", phone="8 (999) 123-45-67")
    by_telegram = fake.add_contact(firstname="T", telegram_id="123456789")
    keys = (tg_key(), phone_key(), email_key())

    found = await hub.find_contact(keys, contact_matches)

    assert found is not None and found.id == by_telegram
    assert fake.count() == 1
    [call] = fake.calls
    assert (call.method, call.path) == ("POST", SEARCH)
    assert len(call.json["filterGroups"]) == 4
    assert (await hub.find_contact(keys[1:], contact_matches)).id == by_phone  # type: ignore[union-attr]
    assert (await hub.find_contact(keys[2:], contact_matches)).id == by_email  # type: ignore[union-attr]
    assert fake.count() == 3


async def test_phone_search_uses_hubspots_national_form(fake: FakeHubSpot, hub: HubSpot) -> None:
    ivan = fake.add_contact(
        firstname="Иван",
        lastname="Петров",
        mobilephone="+7 999 123-45-67",
        email="ivan@example.com",
        telegram_id="42",
        telegram_username="ivan_petrov",
    )
    abroad = fake.add_contact(firstname="Same digits", phone="+1 999 123 4567")
    longer = fake.add_contact(firstname="Longer", phone="+7 999 123-45-678")

    hits = await hub.find_contacts([phone_key()])

    assert {hit.id for hit in hits} == {ivan, abroad}  # HubSpot ignores the country code
    assert longer not in {hit.id for hit in hits}
    [found] = [hit for hit in hits if hit.id == ivan]
    assert found == Contact(
        id=ivan,
        name="Иван Петров",
        phones=("+7 999 123-45-67",),
        emails=("ivan@example.com",),
        telegram_id="42",
        telegram_username="ivan_petrov",
        deal_ids=(),
    )
    assert (await hub.find_contact([phone_key()], contact_matches)).id == ivan  # type: ignore[union-attr]


async def test_create_contact_stores_names_phone_email_and_telegram(
    fake: FakeHubSpot, hub: HubSpot
) -> None:
    contact = await hub.create_contact(new_contact())
    assert fake.count() == 1
    assert contact.deal_ids == () and contact.name == "Иван Петров"
    assert contact.phones == ("+79991234567",)
    for name, value in (
        ("firstname", "Иван"),
        ("lastname", "Петров"),
        ("email", "ivan@example.com"),
        ("phone", "+79991234567"),
        ("telegram_id", "123456789"),
        ("telegram_username", "ivan"),
    ):
        assert fake.contact_field(contact.id, name) == value

    phone_only = Customer(phone="+79990000001", telegram_username="anon")
    nameless = await hub.create_contact(NewContact(phone_only, Utm()))
    assert fake.contact_field(nameless.id, "firstname") == "+79990000001"


@lagging
async def test_an_email_the_search_did_not_show_yet_is_that_contact(
    fake: FakeHubSpot, hub: HubSpot
) -> None:
    first = await hub.create_contact(new_contact())
    assert await hub.find_contact([email_key()], contact_matches) is None  # not indexed yet

    again = await hub.create_contact(new_contact())

    assert again.id == first.id
    assert len(fake.contacts()) == 1
    assert fake.calls[-1].status == 409


# ---- deals --------------------------------------------------------------------------


async def test_list_deals_is_one_search_of_open_deals_excluded_stages_included(
    fake: FakeHubSpot, hub: HubSpot
) -> None:
    ivan = fake.add_contact(firstname="Иван", phone="+79991234567")
    other = fake.add_contact(firstname="Other")
    working = fake.add_deal(
        ivan,
        pipeline=YANDEX,
        stage=YANDEX_WORKING,
        updated_at=1000,
        total_paid="1500",
        purchase_count="2",
        subjects="math",
        exam_direction="oge",
    )
    autopay = fake.add_deal(ivan, stage=SITE_AUTOPAY, updated_at=4000, payment_id="pay_1")
    fake.add_deal(ivan, stage="closedwon", updated_at=3000)
    fake.add_deal(ivan, stage=SITE_WORKING, archived=True)
    fake.add_deal(other, stage=SITE_WORKING)
    contact = Contact(id=ivan, deal_ids=())

    deals = await hub.list_deals(contact)

    assert [deal.id for deal in deals] == [autopay, working]  # newest first
    assert fake.searches() == fake.count() == 1
    filters = fake.calls[0].json["filterGroups"][0]["filters"]
    assert {f["propertyName"] for f in filters} == {"associations.contact", "hs_is_closed"}
    first = deals[1]
    assert (first.pipeline_id, first.status_id, first.updated_at) == (YANDEX, YANDEX_WORKING, 1000)
    assert not first.is_closed and not first.is_deleted and first.contact_ids == (ivan,)
    assert first.fields == {
        "total_paid": "1500",
        "purchase_count": "2",
        "subjects": "math",
        "exam_direction": "oge",
    }
    assert deals[0].fields == {"payment_id": "pay_1"}

    fake.move_deal(working, "1023405104")  # a manager marks it lost
    assert [deal.id for deal in await hub.list_deals(contact)] == [autopay]


async def test_list_deals_keeps_a_known_deal_the_search_leaves_out(
    fake: FakeHubSpot, hub: HubSpot
) -> None:
    ivan = fake.add_contact(firstname="Иван")
    won = fake.add_deal(ivan, stage="closedwon")
    known = await hub.get_deal(won)
    assert known is not None and known.is_closed
    deals = await hub.list_deals(Contact(id=ivan), known=[known])
    assert deals == [known]


async def test_get_deal_reads_contacts_and_closed_state(fake: FakeHubSpot, hub: HubSpot) -> None:
    ivan, maria = fake.add_contact(firstname="Иван"), fake.add_contact(firstname="Мария")
    deal_id = fake.add_deal(ivan, stage=SITE_WORKING, total_paid="700")
    fake.portal.link(fake.portal.records["deals"][deal_id], fake.portal.records["contacts"][maria])

    deal = await hub.get_deal(deal_id)

    assert deal is not None
    assert set(deal.contact_ids) == {ivan, maria}
    assert (deal.pipeline_id, deal.status_id, deal.fields["total_paid"]) == (
        SITE,
        SITE_WORKING,
        "700",
    )
    assert not deal.is_closed
    assert fake.calls[0].params["associations"] == ["contacts"]
    fake.move_deal(deal_id, "closedlost")
    assert (await hub.get_deal(deal_id)).is_closed  # type: ignore[union-attr]
    fake.move_deal(deal_id, SITE_WORKING, archived=True)
    assert await hub.get_deal(deal_id) is None


async def test_create_contact_and_deal_is_two_calls_with_everything_set(
    fake: FakeHubSpot, hub: HubSpot
) -> None:
    contact, deal = await hub.create_contact_and_deal(new_contact(), new_deal())

    assert [call.path for call in fake.calls] == [
        "/crm/objects/2026-09/contacts",
        "/crm/objects/2026-09/deals",
    ]
    assert fake.deal_contacts(deal.id) == [contact.id]
    assert fake.calls[1].json["associations"] == [
        {
            "to": {"id": contact.id},
            "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 3}],
        }
    ]
    expected = {
        "dealname": "Оплата Русский - Иван Петров",
        "pipeline": PARTNERS,
        "dealstage": PARTNERS_AUTOPAY,
        "amount": "10000",
        "hs_is_closed": "false",
    }
    assert {name: fake.deal_field(deal.id, name) for name in expected} == expected
    assert deal.price == 10000  # placement and fields: test_contract
    assert deal.updated_at > 0

    [found] = await hub.find_contacts([tg_key()])
    assert found.id == contact.id
    assert [d.id for d in await hub.list_deals(found)] == [deal.id]


# ---- notes --------------------------------------------------------------------------


async def test_notes_are_added_as_html_and_read_back_as_text(
    fake: FakeHubSpot, hub: HubSpot
) -> None:
    deal_id = fake.add_deal(stage=SITE_WORKING)
    quiet = fake.add_deal(stage=SITE_WORKING)
    text = "Оплата проведена\n\nСумма: 10000 RUB\nPayment ID: pay_1"
    await hub.add_note(deal_id, text)
    sent = fake.calls[-1].json
    assert sent["associations"][0]["types"][0]["associationTypeId"] == 214
    assert sent["properties"]["hs_timestamp"].endswith("Z")
    assert fake.note_bodies(deal_id) == [
        "Оплата проведена<br><br>Сумма: 10000 RUB<br>Payment ID: pay_1"
    ]
    fake.add_note(deal_id, "<div><p>Typed by a manager</p><p>second line</p></div>")

    assert await hub.deal_notes(deal_id) == [text, "Typed by a manager\nsecond line"]
    assert [call.path for call in fake.calls[-2:]] == [
        f"/crm/objects/2026-09/deals/{deal_id}",
        "/crm/objects/2026-09/notes/batch/read",
    ]
    before = fake.count()
    assert await hub.deal_notes(quiet) == []
    assert fake.count() == before + 1  # no batch read without notes


@lagging
async def test_notes_are_read_without_waiting_for_the_search_index(
    fake: FakeHubSpot, hub: HubSpot
) -> None:
    deal_id = fake.add_deal(stage=SITE_WORKING)
    await hub.add_note(deal_id, "Payment ID: pay_1")
    assert await hub.deal_notes(deal_id) == ["Payment ID: pay_1"]


# ---- rate limits, faults ------------------------------------------------------------


async def test_searches_beyond_five_a_second_get_hubspots_429(
    fake: FakeHubSpot, hub: HubSpot
) -> None:
    hub.search_http.quick_tries = 1
    results = await asyncio.gather(
        *(hub.find_contacts([phone_key()]) for _ in range(8)), return_exceptions=True
    )
    limited = [result for result in results if isinstance(result, RateLimited)]
    assert len(limited) == 3 and fake.throttled == 3
    response = await hub.connection.http.client.post(SEARCH, json={"filterGroups": []})
    assert response.status_code == 429
    assert response.json()["policyName"] == "SECONDLY"
    assert response.json()["message"] == "You have reached your secondly limit."
    # Searches do not spend the ten-second budget of everything else.
    deal_id = fake.add_deal(stage=SITE_WORKING)
    assert await hub.get_deal(deal_id) is not None


@pytest.mark.parametrize("fake", [{"ten_second_limit": 4}], indirect=True)
async def test_other_calls_share_a_ten_second_window(fake: FakeHubSpot, hub: HubSpot) -> None:
    hub.connection.http.quick_tries = 1
    deal_id = fake.add_deal(stage=SITE_WORKING)
    for _ in range(4):
        await hub.get_deal(deal_id)
    with pytest.raises(RateLimited):
        await hub.get_deal(deal_id)
    assert await hub.find_contacts([phone_key()]) == []  # search has its own limit
    response = await hub.connection.http.client.get(f"/crm/objects/2026-09/deals/{deal_id}")
    assert response.status_code == 429
    assert response.json()["policyName"] == "TEN_SECONDLY_ROLLING"
    assert response.json()["errorType"] == "RATE_LIMIT"


async def test_the_adapter_keeps_searches_under_the_search_limit(fake: FakeHubSpot) -> None:
    adapter = make_adapter(fake, real_limiter=True)
    assert adapter.connection.health_details() == {
        "rate_limit_per_second": 9,
        "search_rate_limit_per_second": 4,
    }
    await asyncio.gather(*(adapter.find_contacts([phone_key()]) for _ in range(7)))
    await adapter.connection.aclose()
    assert fake.throttled == 0 and fake.searches() == 7


# ---- credentials --------------------------------------------------------------------


OAUTH = CONFIG.model_copy(update={"auth": "oauth"})


async def test_a_30_minute_token_is_refreshed_before_it_expires() -> None:
    clock = Clock()
    fake = FakeHubSpot(CONFIG, clock=clock)
    access, refresh = fake.issue_oauth_pair(ttl=1800)
    tokens = MemoryTokens(TokenPair(access, refresh, clock.now + 1800))
    adapter = make_adapter(fake, config=OAUTH, tokens=tokens)

    await adapter.find_contacts([phone_key()])
    clock.now += 1400  # 400 s left: still used as it is
    await adapter.find_contacts([phone_key()])
    assert fake.count(path_prefix="/oauth/") == 0
    clock.now += 200  # 200 s left, inside the margin: refreshed first, no 401 needed
    await adapter.find_contacts([phone_key()])

    assert [call.path for call in fake.calls[-2:]] == ["/oauth/v3/token", SEARCH]
    assert fake.count(status=401) == 0
    token_call = fake.calls[-2]
    assert token_call.json is None  # a form body, not JSON
    [saved] = tokens.saved
    assert saved.refresh_token == refresh  # HubSpot's refresh token does not rotate
    assert saved.access_token != access
    assert adapter.connection.token_expires_at() == clock.now + 1800
    await adapter.connection.aclose()


async def test_the_token_request_is_form_encoded_and_carries_no_secret_in_the_url() -> None:
    fake = FakeHubSpot(CONFIG, clock=Clock())
    seen: list[httpx.Request] = []
    inner = fake.transport()

    async def spy(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return await inner.handle_async_request(request)

    _, refresh = fake.issue_oauth_pair()
    tokens = MemoryTokens(TokenPair("stale", refresh, 0.0))
    adapter = make_adapter(fake, config=OAUTH, tokens=tokens, transport=httpx.MockTransport(spy))
    await adapter.find_contacts([phone_key()])
    token_request = seen[0]
    assert token_request.url.path == "/oauth/v3/token" and not token_request.url.query
    assert token_request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert "authorization" not in token_request.headers
    form = dict(parse_qsl(token_request.content.decode()))
    assert form == {
        "client_id": fake.client_id,
        "client_secret": fake.client_secret,
        "grant_type": "refresh_token",
        "refresh_token": refresh,
    }
    await adapter.connection.aclose()


# ---- schema, options, plumbing ------------------------------------------------------


async def test_a_read_only_property_is_refused_for_good(fake: FakeHubSpot, hub: HubSpot) -> None:
    deal_id = fake.add_deal(stage=SITE_WORKING)
    with pytest.raises(PermanentCrmError, match="400") as raised:
        await hub.update_deal(deal_id, [FieldUpdate("hs_is_closed", FieldKind.TEXT, "true")])
    assert "READ_ONLY_VALUE" in raised.value.message
    assert fake.count() == 1


async def test_only_date_versioned_paths_exist_in_the_fake(fake: FakeHubSpot, hub: HubSpot) -> None:
    response = await hub.connection.http.client.post("/crm/v3/objects/contacts/search", json={})
    assert response.status_code == 404


# ---- orders: companies, stage moves, line items ---------------------------------------

ROMASHKA = Company("ООО Ромашка", inn="7701234567", phone="+74950001122", email="a@b.ru")
CHAIRS = OrderItem("chair-01", "Стул Венский", Decimal(40), Decimal("350.00"))
TABLES = OrderItem("table-07", "Стол банкетный", Decimal(5), Decimal("6900.00"))
OBJECTS = "/crm/objects/2026-09"


def romashka(record: Any, key: str) -> bool:
    return company_matches(record, ROMASHKA, key)


async def test_one_company_search_asks_by_inn_or_every_word_of_the_name(
    fake: FakeHubSpot, hub: HubSpot
) -> None:
    by_name = fake.add_company("ооо  ромашка")
    fake.add_company("ООО Ромашка и партнёры")
    assert (await hub.find_company(ROMASHKA, romashka)).id == by_name  # type: ignore[union-attr]
    by_inn = fake.add_company("Ромашка (старое название)", "7701234567")
    assert (await hub.find_company(ROMASHKA, romashka)).id == by_inn  # type: ignore[union-attr]
    assert [call.path for call in fake.calls] == [f"{OBJECTS}/companies/search"] * 2
    assert fake.calls[0].json["filterGroups"] == [
        {"filters": [{"propertyName": "inn", "operator": "EQ", "value": "7701234567"}]},
        {
            "filters": [
                {"propertyName": "name", "operator": "CONTAINS_TOKEN", "value": "ООО"},
                {"propertyName": "name", "operator": "CONTAINS_TOKEN", "value": "Ромашка"},
            ]
        },
    ]


async def test_a_company_is_created_with_name_phone_and_inn_and_linked_once(
    fake: FakeHubSpot, hub: HubSpot
) -> None:
    company = await hub.create_company(ROMASHKA)
    assert (company.name, company.inn) == ("ООО Ромашка", "7701234567")
    assert fake.calls[0].json == {
        "properties": {"name": "ООО Ромашка", "phone": "+74950001122", "inn": "7701234567"}
    }
    contact = await hub.create_contact(new_contact())
    fake.calls.clear()
    await hub.link_contact_to_company(contact.id, company.id)
    await hub.link_contact_to_company(contact.id, company.id)
    path = f"{OBJECTS}/contacts/{contact.id}/associations/default/companies/{company.id}"
    assert [(call.method, call.path) for call in fake.calls] == [("PUT", path)] * 2
    assert fake.contact_companies(contact.id) == [company.id]


async def test_a_contact_and_deal_for_a_company_are_linked_in_their_creates(
    fake: FakeHubSpot, hub: HubSpot
) -> None:
    company = await hub.create_company(ROMASHKA)
    fake.calls.clear()
    contact, deal = await hub.create_contact_and_deal(
        new_contact(), new_deal(company_id=company.id)
    )
    assert len(fake.calls) == 2
    company_type = {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 1}
    assert fake.calls[0].json["associations"] == [
        {"to": {"id": company.id}, "types": [company_type]}
    ]
    assert fake.contact_companies(contact.id) == [company.id]
    assert fake.deal_companies(deal.id) == [company.id]


@lagging
async def test_a_contact_the_search_missed_is_linked_to_the_company_by_a_put(
    fake: FakeHubSpot, hub: HubSpot
) -> None:
    company = await hub.create_company(ROMASHKA)
    first = await hub.create_contact(new_contact())
    again = await hub.create_contact(new_contact(), company.id)  # 409: that contact
    assert again.id == first.id
    assert fake.contact_companies(first.id) == [company.id]


async def test_a_change_is_one_patch_and_the_lost_stage_closes_the_deal(
    fake: FakeHubSpot, hub: HubSpot
) -> None:
    _, deal = await hub.create_contact_and_deal(new_contact(), new_deal())
    fake.calls.clear()
    change = DealChange(
        pipeline_id=RENT,
        status_id=RENT_CANCELLED,
        price=Decimal("48500.00"),
        name="Заказ ord_1042",
        fields=(
            FieldUpdate("order_id", FieldKind.TEXT, "ord_1042"),
            FieldUpdate("installation_date", FieldKind.DATE, date(2026, 12, 1)),
        ),
    )
    await hub.change_deal(deal.id, change)
    [call] = fake.calls
    assert call.method == "PATCH" and call.json == {
        "properties": {
            "pipeline": RENT,
            "dealstage": RENT_CANCELLED,
            "amount": "48500",
            "dealname": "Заказ ord_1042",
            "order_id": "ord_1042",
            "installation_date": "2026-12-01",
        }
    }
    closed = await hub.get_deal(deal.id)
    assert closed is not None and closed.is_closed and closed.fields["order_id"] == "ord_1042"
    fake.calls.clear()
    await hub.change_deal(deal.id, DealChange())
    assert fake.calls == []  # nothing to change: no call


async def test_line_items_are_replaced_by_one_archive_and_one_create(
    fake: FakeHubSpot, hub: HubSpot
) -> None:
    _, deal = await hub.create_contact_and_deal(new_contact(), new_deal())
    fake.calls.clear()
    await hub.set_deal_items(deal.id, (CHAIRS, TABLES), "RUB")
    assert [(c.method, c.path) for c in fake.calls] == [
        ("GET", f"{OBJECTS}/deals/{deal.id}"),
        ("POST", f"{OBJECTS}/line_items/batch/create"),
    ]
    line_item = {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 20}
    assert fake.calls[1].json["inputs"][0] == {
        "properties": {
            "name": "Стул Венский",
            "quantity": "40",
            "price": "350",
            "hs_sku": "chair-01",
        },
        "associations": [{"to": {"id": deal.id}, "types": [line_item]}],
    }
    assert sorted(fake.line_items(deal.id)) == [
        ("Стол банкетный", "5", "6900", "table-07"),
        ("Стул Венский", "40", "350", "chair-01"),
    ]
    fake.calls.clear()
    await hub.set_deal_items(deal.id, (TABLES,), "RUB")
    assert [(c.method, c.path) for c in fake.calls] == [
        ("GET", f"{OBJECTS}/deals/{deal.id}"),
        ("POST", f"{OBJECTS}/line_items/batch/archive"),
        ("POST", f"{OBJECTS}/line_items/batch/create"),
    ]
    assert fake.line_items(deal.id) == [("Стол банкетный", "5", "6900", "table-07")]
    fake.calls.clear()
    await hub.set_deal_items(deal.id, (), "RUB")
    assert len(fake.calls) == 2 and fake.line_items(deal.id) == []


async def test_a_quoted_company_name_is_searched_by_its_words(
    fake: FakeHubSpot, hub: HubSpot
) -> None:
    quoted = Company("ООО «Ромашка»", inn="")
    wanted = fake.add_company("ООО «Ромашка»")
    found = await hub.find_company(quoted, lambda r, k: company_matches(r, quoted, k))
    assert found is not None and found.id == wanted
    words = [f["value"] for f in fake.calls[0].json["filterGroups"][0]["filters"]]
    assert words == ["ООО", "Ромашка"]  # no INN: the name is the only group
