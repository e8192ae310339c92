"""Zoho CRM's pure parts: the v8 mappers, the credit pool, and the fake's own semantics
(search, COQL, composite, OAuth) that the adapter tests rely on."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridge.crm.zoho_credits import Concurrency, CreditPool, credit_cost
from bridge.crm.zoho_json import (
    DATA_CENTRES,
    SubRequest,
    closed_stages,
    composite_body,
    contact_from_record,
    contact_json,
    criteria_value,
    custom_fields_from_json,
    deal_from_record,
    deal_json,
    deals_query,
    error_from_body,
    field_text,
    note_json,
    pipelines_from_json,
    reference,
    search_criteria,
    sub_responses,
    timestamp,
    value_json,
    write_details,
)
from bridge.domain import (
    Customer,
    FieldKind,
    FieldUpdate,
    KeyKind,
    LookupKey,
    NewContact,
    NewDeal,
    Utm,
)
from bridge.errors import AuthError, PermanentCrmError, RateLimited, TransientCrmError
from tests.fakes import zoho_openapi
from tests.fakes.zoho import FakeZoho
from tests.fakes.zoho_openapi import SpecsMissing, ZohoOpenApi
from tests.fakes.zoho_query import QueryError, parse_coql
from tests.test_zoho_adapter import CONFIG

TG = LookupKey(KeyKind.TELEGRAM_ID, "123456789")
PHONE = LookupKey(KeyKind.PHONE, "+79991234567")
EMAIL = LookupKey(KeyKind.EMAIL, "ivan@example.com")
API = "https://www.zohoapis.eu"
MSK = timezone(timedelta(hours=3))


# ---- mappers ---------------------------------------------------------------------------


def test_every_data_centre_names_its_accounts_server_and_api_domain() -> None:
    assert set(DATA_CENTRES) == {"us", "eu", "in", "au", "jp", "ca", "cn", "sa"}
    assert DATA_CENTRES["ca"].accounts == "https://accounts.zohocloud.ca"
    assert DATA_CENTRES["au"].api_domain == "https://www.zohoapis.com.au"
    assert DATA_CENTRES["cn"].accounts == "https://accounts.zoho.com.cn"
    assert all(dc.accounts.startswith("https://accounts.") for dc in DATA_CENTRES.values())


def test_one_criteria_expression_asks_for_every_key() -> None:
    criteria = search_criteria([TG, PHONE, EMAIL], "Telegram_ID")
    assert criteria == (
        "((Telegram_ID:equals:123456789)or(Phone:equals:9991234567)"
        "or(Mobile:equals:9991234567)or(Email:equals:ivan@example.com))"
    )
    assert search_criteria([EMAIL], None) == "(Email:equals:ivan@example.com)"
    assert search_criteria([TG], None) is None  # nothing could confirm a Telegram hit


def test_criteria_values_escape_parentheses_and_commas() -> None:
    assert criteria_value("Patricia(Boyle), Jr\\") == "Patricia\\(Boyle\\)\\, Jr\\\\"


@pytest.mark.parametrize(
    ("update", "value"),
    [
        (FieldUpdate("T", FieldKind.TEXT, "pay_1"), "pay_1"),
        (FieldUpdate("N", FieldKind.NUMBER, Decimal("10000.00")), 10000),
        (FieldUpdate("N", FieldKind.NUMBER, Decimal("11500.5")), 11500.5),
        (FieldUpdate("N", FieldKind.NUMBER, 3), 3),
        (
            FieldUpdate("D", FieldKind.DATETIME, datetime(2025, 1, 21, 0, 49, 20, 123, MSK)),
            "2025-01-21T00:49:20+03:00",
        ),
        (FieldUpdate("S", FieldKind.SELECT, "ЕГЭ"), "ЕГЭ"),
        (FieldUpdate("M", FieldKind.MULTISELECT, ("Русский", "История")), ["Русский", "История"]),
    ],
)
def test_values_in_the_shape_zoho_takes(update: FieldUpdate, value: Any) -> None:
    assert value_json(update) == value


@pytest.mark.parametrize(
    "update",
    [
        FieldUpdate("N", FieldKind.NUMBER, "12"),
        FieldUpdate("D", FieldKind.DATETIME, datetime(2025, 1, 21)),  # naive
        FieldUpdate("S", FieldKind.SELECT, " "),
        FieldUpdate("M", FieldKind.MULTISELECT, ()),
        FieldUpdate("T", FieldKind.TEXT, 5),
    ],
)
def test_values_that_do_not_fit_are_refused(update: FieldUpdate) -> None:
    with pytest.raises(ValueError, match=update.field_id):
        value_json(update)


def test_contact_and_deal_bodies() -> None:
    who = Customer("Иван", "Петров", "+79991234567", "ivan@example.com", "123", "ivan")
    tg = (FieldUpdate("Telegram_ID", FieldKind.TEXT, "123"),)
    assert contact_json(NewContact(who, Utm(), tg)) == {
        "Last_Name": "Петров",
        "First_Name": "Иван",
        "Phone": "+79991234567",
        "Email": "ivan@example.com",
        "Telegram_ID": "123",
    }
    nameless = Customer(phone="+79991234567")
    assert contact_json(NewContact(nameless, Utm()))["Last_Name"] == "+79991234567"
    assert contact_json(NewContact(Customer("Иван"), Utm()))["Last_Name"] == "Иван"
    deal = NewDeal("Оплата", Decimal("10000"), "Partners", "Автооплата", tg)
    assert deal_json(deal, "57001", date(2025, 1, 21)) == {
        "Deal_Name": "Оплата",
        "Pipeline": "Partners",
        "Stage": "Автооплата",
        "Amount": 10000,
        "Closing_Date": "2025-01-21",
        "Contact_Name": {"id": "57001"},
        "Telegram_ID": "123",
    }


def test_deals_query_takes_only_a_record_id() -> None:
    query = deals_query("5725767000001000001", CONFIG)
    assert query.startswith("select id, Deal_Name, Stage, Pipeline, Amount, Modified_Time, ")
    assert (
        "where Contact_Name = '5725767000001000001' order by Modified_Time desc limit 200" in query
    )
    with pytest.raises(ValueError, match="not a Zoho record id"):
        deals_query("1' or id != '0", CONFIG)


def test_note_names_its_parent_both_ways() -> None:
    assert note_json("57", "text", "Оплата") == {
        "Note_Title": "Оплата",
        "Note_Content": "text",
        "Parent_Id": {"module": {"api_name": "Deals"}, "id": "57"},
        "$se_module": "Deals",
    }


def test_records_read_back_into_domain_types() -> None:
    contact = contact_from_record(
        {
            "id": "1",
            "First_Name": "Иван",
            "Last_Name": "Петров",
            "Phone": "8 (999) 123-45-67",
            "Mobile": None,
            "Email": "IVAN@example.com",
            "Telegram_ID": "123",
        },
        CONFIG,
    )
    assert (contact.name, contact.phones, contact.emails) == (
        "Иван Петров",
        ("8 (999) 123-45-67",),
        ("IVAN@example.com",),
    )
    assert contact.telegram_id == "123" and contact.deal_ids == ()
    deal = deal_from_record(
        {
            "id": "2",
            "Stage": "Closed Won",
            "Pipeline": {"name": "Site", "id": "9"},
            "Amount": 10000.0,
            "Modified_Time": "2025-01-21T00:49:20+03:00",
            "Contact_Name": {"id": "1"},
            "Subjects": ["Русский", "История"],
            "Total_Paid": 11500.5,
            "Purchase_Count": 3,
        },
        CONFIG,
    )
    assert (deal.pipeline_id, deal.status_id, deal.is_closed, deal.contact_ids) == (
        "Site",
        "Closed Won",
        True,
        ("1",),
    )
    assert deal.updated_at == int(datetime(2025, 1, 20, 21, 49, 20, tzinfo=UTC).timestamp())
    assert deal.fields == {
        "Subjects": "Русский,История",
        "Total_Paid": "11500.5",
        "Purchase_Count": "3",
    }
    assert field_text(12.0) == "12" and timestamp(None) == 0


def test_errors_map_to_what_the_bridge_does() -> None:
    body = {"code": "INVALID_DATA", "details": {"api_name": "Stage"}, "message": "invalid data"}
    error = error_from_body("zoho", "deals.create", 400, body)
    assert isinstance(error, PermanentCrmError) and "(Stage)" in error.message
    assert isinstance(error_from_body("zoho", "x", 401, {"code": "INVALID_TOKEN"}), AuthError)
    assert isinstance(
        error_from_body("zoho", "x", 403, {"code": "OAUTH_SCOPE_MISMATCH"}), AuthError
    )
    assert isinstance(error_from_body("zoho", "x", 429, {"code": "TOO_MANY_REQUESTS"}), RateLimited)
    assert isinstance(
        error_from_body("zoho", "x", 500, {"code": "INTERNAL_ERROR"}), TransientCrmError
    )
    with pytest.raises(PermanentCrmError, match="MANDATORY_NOT_FOUND"):
        write_details("zoho", {"data": [{"code": "MANDATORY_NOT_FOUND", "status": "error"}]}, "x")
    assert write_details(
        "zoho", {"data": [{"status": "success", "details": {"id": "7"}}]}, "x"
    ) == {"id": "7"}


def test_composite_wrapper_and_answers() -> None:
    body = composite_body(
        [
            SubRequest("c", "POST", "/crm/v8/Contacts", {"data": [{"Last_Name": "X"}]}),
            SubRequest(
                "d", "POST", "/crm/v8/Deals", {"data": [{"Contact_Name": {"id": reference("c")}}]}
            ),
        ]
    )
    assert body["rollback_on_fail"] is False
    assert body["__composite_requests"][1]["body"]["data"][0]["Contact_Name"] == {
        "id": "@{c:$.data[0].details.id}"
    }
    with pytest.raises(ValueError, match="1 to 5"):
        composite_body([SubRequest(str(n), "GET", "/crm/v8/Deals/1") for n in range(6)])
    answer = {
        "__composite_requests": [
            {"status": "success", "details": {"response": {"status_code": 201, "body": {"a": 1}}}},
            {"code": "INVALID_REFERENCE", "status": "error", "message": "invalid reference"},
        ]
    }
    with pytest.raises(PermanentCrmError, match="sub-request 2"):
        sub_responses("zoho", answer, 2)
    assert sub_responses(
        "zoho", {"__composite_requests": answer["__composite_requests"][:1]}, 1
    ) == [(201, {"a": 1})]


def test_pipelines_and_fields_from_settings_answers() -> None:
    fake = FakeZoho(CONFIG)
    layouts = [("Standard", {"pipeline": fake.org.pipelines_json()})]
    pipelines = pipelines_from_json(layouts)
    assert [p.id for p in pipelines] == ["Site", "Partners", "Yandex"]
    assert pipelines[0].statuses["Closed Won"] == "Closed Won (Closed Won)"
    assert pipelines[0].statuses["Автооплата"] == "Автооплата"
    assert closed_stages(layouts) == {"Closed Won", "Closed Lost"}
    fields = custom_fields_from_json({"fields": fake.org.fields_json("Deals")}, "leads")
    by_id = {f.id: f for f in fields}
    assert (
        by_id["Subjects"].type == "multiselect" and by_id["Subjects"].enums["Русский"] == "Русский"
    )
    assert (
        by_id["Last_Payment_At"].type == "date_time" and by_id["Purchase_Count"].type == "numeric"
    )
    assert "Stage" not in by_id  # standard fields are not candidates


# ---- credits ---------------------------------------------------------------------------


def test_credit_costs() -> None:
    coql = json.dumps({"select_query": "select id from Deals where id = '1' limit 1500"}).encode()
    assert credit_cost("POST", "/crm/v8/coql", coql) == 3
    assert (
        credit_cost(
            "POST", "/crm/v8/coql", b'{"select_query": "select id from Deals where id = 1"}'
        )
        == 1
    )
    assert credit_cost("POST", "/crm/v8/__composite_requests", b'{"rollback_on_fail": false}') == 1
    assert credit_cost("POST", "/crm/v8/__composite_requests", b'{"rollback_on_fail": true}') == 2
    many = json.dumps({"data": [{}] * 11}).encode()
    assert credit_cost("POST", "/crm/v8/Contacts", many) == 2
    assert credit_cost("GET", "/crm/v8/Contacts/search", None) == 1
    assert credit_cost("POST", "/oauth/v2/token", b"grant_type=refresh_token") == 0


def test_the_pool_is_a_rolling_24_hours() -> None:
    now = [1_000_000.0]
    pool = CreditPool("zoho", 10, lambda: now[0])
    pool.charge(6)
    now[0] += 3600
    pool.charge(4)
    with pytest.raises(RateLimited) as raised:
        pool.require(1)
    assert raised.value.retry_after == pytest.approx(86400 - 3600)
    assert pool.details()["credits_remaining"] == 0
    now[0] += 86400 - 3600  # the first 6 leave the window
    pool.require(6)
    assert pool.used == 4
    with pytest.raises(RateLimited) as raised:
        pool.require(7)
    assert raised.value.retry_after == pytest.approx(3600)


async def test_concurrency_waits_for_units() -> None:
    gate = Concurrency(5)
    await gate.acquire(5)
    waiter = asyncio.create_task(gate.acquire(1))
    await asyncio.sleep(0)
    assert not waiter.done()
    await gate.release(5)
    await waiter
    assert gate.in_flight == 1


# ---- the fake's semantics the adapter relies on ------------------------------------------


def client(fake: FakeZoho) -> httpx.AsyncClient:
    access, _ = fake.issue_oauth_pair()
    headers = {"Authorization": f"Zoho-oauthtoken {access}"}
    return httpx.AsyncClient(base_url=API, transport=fake.transport(), headers=headers)


async def test_fake_search_equals_contains_and_phones_by_digits() -> None:
    fake = FakeZoho(CONFIG)
    typed = fake.add_contact("Петров", "Иван", phone="8 (999) 123-45-67", email="ivan@example.com")
    fake.add_contact("Сидоров", phone="+7 999 123-45-68")
    async with client(fake) as http:
        criteria = search_criteria([PHONE], "Telegram_ID")
        answer = await http.get("/crm/v8/Contacts/search", params={"criteria": criteria})
        assert [r["id"] for r in answer.json()["data"]] == [typed]
        answer = await http.get(
            "/crm/v8/Contacts/search", params={"criteria": "(Email:equals:IVAN@example)"}
        )
        assert answer.status_code == 200  # "equals behaves like contains"
        answer = await http.get(
            "/crm/v8/Contacts/search", params={"criteria": "(Email:equals:nobody@x.y)"}
        )
        assert (answer.status_code, answer.content) == (204, b"")
        answer = await http.get("/crm/v8/Contacts/search", params={"criteria": "(Nope:equals:1)"})
        assert answer.json()["code"] == "INVALID_QUERY"


def test_fake_coql_needs_parentheses_beyond_two_conditions() -> None:
    parse_coql("select id from Deals where (Stage = 'a' and Amount > 1) and Pipeline = 'b'")
    with pytest.raises(QueryError, match="parentheses"):
        parse_coql("select id from Deals where Stage = 'a' and Amount > 1 and Pipeline = 'b'")
    with pytest.raises(QueryError, match="WHERE"):
        parse_coql("select id from Deals limit 5")


async def test_fake_composite_resolves_references_and_charges_one_credit() -> None:
    fake = FakeZoho(CONFIG)
    contact = SubRequest("c", "POST", "/crm/v8/Contacts", {"data": [{"Last_Name": "Петров"}]})
    deal = deal_json(
        NewDeal("Оплата", Decimal(1), "Site", "Автооплата"), reference("c"), date(2025, 1, 1)
    )
    body = composite_body([contact, SubRequest("d", "POST", "/crm/v8/Deals", {"data": [deal]})])
    before = fake.credits_used
    async with client(fake) as http:
        answer = await http.post("/crm/v8/__composite_requests", json=body)
        assert answer.status_code == 200 and fake.credits_used == before + 1
        (status_c, body_c), (status_d, body_d) = sub_responses("zoho", answer.json(), 2)
        assert (status_c, status_d) == (201, 201)
        [stored] = fake.deals()
        assert stored["Contact_Name"] == {"id": body_c["data"][0]["details"]["id"]}
        # A failing deal leaves the contact (no rollback asked for), and says why.
        bad = {**deal, "Stage": "Нет такой"}
        body = composite_body([contact, SubRequest("d", "POST", "/crm/v8/Deals", {"data": [bad]})])
        answer = await http.post("/crm/v8/__composite_requests", json=body)
        assert answer.status_code == 207 and len(fake.contacts()) == 2
        (_, _), (status_d, body_d) = sub_responses("zoho", answer.json(), 2)
        assert status_d == 400 and body_d["data"][0]["details"]["api_name"] == "Stage"


async def test_fake_oauth_refuses_with_200_and_names_the_api_domain() -> None:
    fake = FakeZoho(
        CONFIG,
        api_domain="https://www.zohoapis.com.au",
        accounts_url="https://accounts.zoho.com.au",
    )
    fake.register_code("1000.code")
    async with httpx.AsyncClient(transport=fake.transport()) as http:
        form = {
            "grant_type": "authorization_code",
            "client_id": fake.client_id,
            "client_secret": fake.client_secret,
            "code": "1000.code",
        }
        first = await http.post("https://accounts.zoho.com.au/oauth/v2/token", data=form)
        assert (
            first.json()["api_domain"] == "https://www.zohoapis.com.au"
            and first.json()["refresh_token"]
        )
        again = await http.post("https://accounts.zoho.com.au/oauth/v2/token", data=form)
        assert (again.status_code, again.json()) == (200, {"error": "invalid_code"})
        elsewhere = await http.post("https://accounts.zoho.com/oauth/v2/token", data=form)
        assert elsewhere.json() == {"error": "invalid_client"}


def test_the_conformance_check_fails_without_the_specs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(zoho_openapi, "SPECS", tmp_path / "missing")
    with pytest.raises(SpecsMissing):
        ZohoOpenApi.load()


def test_the_checker_catches_what_the_specs_forbid() -> None:
    spec = ZohoOpenApi.beside_shared()
    if spec is None:
        pytest.skip("no ../shared folder beside this clone: the Zoho specs are not here")
    auth = {"Authorization": "Zoho-oauthtoken x"}
    unknown = httpx.Request(
        "GET", f"{API}/crm/v8/Contacts/search", params={"nope": "1"}, headers=auth
    )
    assert any("'nope' is not declared" in p for p in spec.problems(unknown))
    bearer = httpx.Request("GET", f"{API}/crm/v8/settings/layouts", params={"module": "Deals"})
    assert any("Zoho-oauthtoken" in p for p in spec.problems(bearer))
    wrapper = {"rollback_on_fail": False, "parallel_execution": False, "__composite_requests": []}
    composite = httpx.Request(
        "POST", f"{API}/crm/v8/__composite_requests", json=wrapper, headers=auth
    )
    assert any("'parallel_execution' is not declared" in p for p in spec.problems(composite))
    token = httpx.Request("POST", "https://accounts.zoho.eu/oauth/v2/token?client_secret=s")
    assert any("parameters in the URL" in p for p in spec.problems(token))
