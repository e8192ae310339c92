"""Salesforce's pure translation (`bridge.crm.salesforce_json`, `salesforce_limits`), checked
against the stateful fake org: every request shape the adapter builds is sent to the fake,
which answers (and refuses) as Salesforce does, and the answers are parsed back."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from bridge.crm import salesforce_json as sf
from bridge.crm.salesforce_limits import ApiUsage, parse_limit_info, usage_hooks
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
from bridge.rules import contact_matches
from tests.clock import ManualClock
from tests.fakes.salesforce import PARTNERS, SITE, YANDEX, FakeSalesforce
from tests.test_salesforce_adapter import CONFIG, CUSTOMER

V = "68.0"
DATA = sf.data_path(V)
NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC).timestamp()
KEYS = CUSTOMER.lookup_keys()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOW)


@pytest.fixture
def fake(clock: ManualClock) -> FakeSalesforce:
    return FakeSalesforce(clock=clock)


def org_client(fake: FakeSalesforce, **options: Any) -> httpx.AsyncClient:
    """A client of the org's REST API, holding a session the fake minted."""
    headers = {"Authorization": f"Bearer {fake.issue_session()}"}
    return httpx.AsyncClient(
        base_url="https://example.my.salesforce.com",
        transport=fake.transport(),
        headers=headers,
        **options,
    )


@pytest.fixture
async def client(fake: FakeSalesforce) -> AsyncIterator[httpx.AsyncClient]:
    async with org_client(fake) as http:
        yield http


async def call(http: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> Any:
    response = await http.request(method, path, **kwargs)
    body = sf.answer_json(response.text)
    if response.status_code >= 400:
        raise sf.error_from_answer("salesforce", response.status_code, body, f"{method} {path}")
    return body


async def query(http: httpx.AsyncClient, soql: str) -> Any:
    return await call(http, "GET", f"{DATA}/query", params={"q": soql})


async def lookup(http: httpx.AsyncClient, keys: tuple[LookupKey, ...]) -> list[Any]:
    """What the adapter's find_contact sends for keys with a phone: a batch of query and search."""
    soql, sosl = sf.contact_soql(keys, CONFIG), sf.contact_sosl(keys, CONFIG)
    assert soql is not None and sosl is not None
    batch = sf.lookup_batch_json(V, soql, sosl)
    queried, searched = sf.batch_results(
        "salesforce", await call(http, "POST", f"{DATA}/composite/batch", json=batch)
    )
    rows = [*sf.query_rows(queried)[0], *sf.search_rows(searched)]
    return [sf.contact_from_json(row, CONFIG) for row in rows]


# ---- lookups ------------------------------------------------------------------------


def test_soql_literals_cannot_break_out_of_the_string() -> None:
    assert sf.soql_literal("o'brien@example.com") == "'o\\'brien@example.com'"
    assert sf.soql_literal("a\\' OR Id != null") == "'a\\\\\\' OR Id != null'"
    key = LookupKey(KeyKind.EMAIL, "x' OR LastName != 'y")
    soql = sf.contact_soql((key,), CONFIG)
    assert soql is not None and "Email = 'x\\' OR LastName != \\'y'" in soql


def test_a_configured_field_that_is_no_api_name_is_refused() -> None:
    bad = CONFIG.model_copy(
        update={
            "contact_fields": CONFIG.contact_fields.model_copy(update={"telegram_id": "X__c OR Id"})
        }
    )
    with pytest.raises(ValueError, match="not a Salesforce field API name"):
        sf.contact_soql(KEYS, bad)


def test_phone_is_searched_in_every_digit_form() -> None:
    assert sf.phone_digit_forms("+79991234567") == ["79991234567", "9991234567", "89991234567"]
    assert sf.phone_digit_forms("+14155551212") == ["14155551212", "4155551212"]
    sosl = sf.contact_sosl(KEYS, CONFIG)
    assert sosl is not None
    assert sosl.startswith(
        "FIND {79991234567 OR 9991234567 OR 89991234567} IN PHONE FIELDS RETURNING Contact("
    )
    assert sf.contact_sosl((LookupKey(KeyKind.EMAIL, "a@b.c"),), CONFIG) is None


async def test_a_manager_typed_phone_is_found_by_search_and_confirmed(
    fake: FakeSalesforce, client: httpx.AsyncClient
) -> None:
    typed = fake.add_contact(LastName="Петров", Phone="8 (999) 123-45-67")
    other = fake.add_contact(LastName="Другой", MobilePhone="+7 999 123-45-60")
    hits = await lookup(client, KEYS)
    assert [hit.id for hit in hits] == [typed]
    phone = LookupKey(KeyKind.PHONE, "+79991234567")
    assert contact_matches(hits[0], phone)
    assert other not in {hit.id for hit in hits}


async def test_one_request_covers_every_key_and_the_flow_picks_by_priority(
    fake: FakeSalesforce, client: httpx.AsyncClient
) -> None:
    by_email = fake.add_contact(LastName="A", Email="IVAN@example.com")
    by_telegram = fake.add_contact(LastName="B", Telegram_Id__c="123456789")
    by_phone = fake.add_contact(LastName="C", MobilePhone="+79991234567")
    hits = await lookup(client, KEYS)
    assert fake.count() == 1
    assert {hit.id for hit in hits} >= {by_email, by_telegram, by_phone}
    telegram = LookupKey(KeyKind.TELEGRAM_ID, "123456789")
    assert [hit.id for hit in hits if contact_matches(hit, telegram)] == [by_telegram]
    assert [
        hit.id for hit in hits if contact_matches(hit, LookupKey(KeyKind.EMAIL, "ivan@example.com"))
    ] == [by_email]


async def test_a_contact_just_written_is_found_before_the_search_index_has_it(
    clock: ManualClock,
) -> None:
    fake = FakeSalesforce(clock=clock, index_lag=30)
    created = fake.add_contact(LastName="Петров", MobilePhone="+79991234567")
    typed = fake.add_contact(LastName="Петров", Phone="8 999 123 45 67")
    async with org_client(fake) as http:
        assert [hit.id for hit in await lookup(http, KEYS)] == [created]  # SOQL, exact E.164
        clock.advance(31)
        assert {hit.id for hit in await lookup(http, KEYS)} == {created, typed}


# ---- writes -------------------------------------------------------------------------

FIELDS = (
    FieldUpdate("Subjects__c", FieldKind.MULTISELECT, ("Math", "Physics")),
    FieldUpdate("Exam_Direction__c", FieldKind.SELECT, "EGE"),
    FieldUpdate("Last_Payment_Amount__c", FieldKind.NUMBER, Decimal("11500.50")),
    FieldUpdate("Total_Paid__c", FieldKind.NUMBER, Decimal("23000")),
    FieldUpdate("Purchase_Count__c", FieldKind.NUMBER, Decimal(2)),
    FieldUpdate(
        "Last_Payment_At__c",
        FieldKind.DATETIME,
        datetime(2026, 12, 2, 15, 30, tzinfo=timezone(timedelta(hours=3))),
    ),
    FieldUpdate("Payment_Id__c", FieldKind.TEXT, "pay-1"),
    FieldUpdate("UTM_Source__c", FieldKind.TEXT, "yandex"),
)


def test_values_have_the_json_types_salesforce_takes() -> None:
    body = sf.fields_json(FIELDS)
    assert body["Subjects__c"] == "Math;Physics"
    assert body["Exam_Direction__c"] == "EGE"
    assert body["Last_Payment_Amount__c"] == 11500.5 and isinstance(body["Total_Paid__c"], int)
    assert body["Last_Payment_At__c"] == "2026-12-02T12:30:00.000Z"
    with pytest.raises(ValueError, match="wrong type"):
        sf.field_value(FieldUpdate("X__c", FieldKind.NUMBER, "12"))
    with pytest.raises(ValueError, match="cannot hold ';'"):
        sf.field_value(FieldUpdate("X__c", FieldKind.MULTISELECT, ("a;b",)))
    with pytest.raises(ValueError, match="not a number"):
        sf.json_number(Decimal("NaN"))


def new_contact(customer: Customer = CUSTOMER) -> NewContact:
    fields = (
        FieldUpdate("Telegram_Id__c", FieldKind.TEXT, "123456789"),
        FieldUpdate("Telegram_Username__c", FieldKind.TEXT, "ivan"),
    )
    return NewContact(customer, Utm(), fields)


def new_deal(pipeline: str = SITE, stage: str = "Autopay") -> NewDeal:
    return NewDeal("Оплата Математика - Иван Петров", Decimal("11500.50"), pipeline, stage, FIELDS)


async def test_contact_deal_and_role_are_one_composite_call(
    fake: FakeSalesforce, client: httpx.AsyncClient
) -> None:
    steps = sf.create_contact_and_deal_steps(
        sf.contact_create_json(new_contact()),
        sf.deal_create_json(new_deal(YANDEX), date(2026, 12, 2)),
    )
    answer = await call(client, "POST", f"{DATA}/composite", json=sf.composite_json(V, steps))
    created = sf.composite_results("salesforce", answer)
    contact_id, deal_id = created["contact"]["id"], created["deal"]["id"]
    assert fake.count() == 1 and fake.api_used == 1
    assert fake.deal_contacts(deal_id) == [contact_id]
    deal = fake.deal(deal_id)
    assert (
        deal["RecordTypeId"] == YANDEX
        and deal["StageName"] == "Autopay"
        and deal["IsClosed"] is False
    )
    assert (
        deal["Subjects__c"] == "Math;Physics"
        and deal["Last_Payment_At__c"] == "2026-12-02T12:30:00.000+0000"
    )
    contact = fake.contact(contact_id)
    assert (contact["FirstName"], contact["LastName"], contact["MobilePhone"]) == (
        "Иван",
        "Петров",
        "+79991234567",
    )


async def test_all_or_none_leaves_nothing_and_names_the_real_cause(
    fake: FakeSalesforce, client: httpx.AsyncClient
) -> None:
    steps = sf.create_contact_and_deal_steps(
        sf.contact_create_json(new_contact()),
        sf.deal_create_json(new_deal(YANDEX, "Partner Review"), date(2026, 12, 2)),  # not in Yandex
    )
    answer = await call(client, "POST", f"{DATA}/composite", json=sf.composite_json(V, steps))
    codes = [r["body"][0]["errorCode"] for r in answer["compositeResponse"]]
    assert codes == [
        "PROCESSING_HALTED",
        "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
        "PROCESSING_HALTED",
    ]
    with pytest.raises(
        PermanentCrmError, match="composite deal: HTTP 400 INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
    ):
        sf.composite_results("salesforce", answer)
    assert fake.contacts() == [] and fake.deals() == []


async def test_a_deal_for_a_known_contact_is_one_composite_call(
    fake: FakeSalesforce, client: httpx.AsyncClient
) -> None:
    contact = fake.add_contact(LastName="Петров")
    steps = sf.create_deal_steps(
        contact, sf.deal_create_json(new_deal(PARTNERS, "Partner Review"), date(2026, 12, 2))
    )
    answer = await call(client, "POST", f"{DATA}/composite", json=sf.composite_json(V, steps))
    deal_id = sf.composite_results("salesforce", answer)["deal"]["id"]
    assert fake.deal_contacts(deal_id) == [contact]


def test_a_contact_always_has_a_last_name() -> None:
    phone_only = NewContact(Customer(phone="+79991234567"), Utm())
    assert sf.contact_create_json(phone_only) == {
        "LastName": "+79991234567",
        "MobilePhone": "+79991234567",
    }
    first_only = sf.contact_create_json(NewContact(Customer("Иван", email="i@x.io"), Utm()))
    assert first_only == {"LastName": "Иван", "Email": "i@x.io"}
    telegram = sf.contact_create_json(NewContact(Customer(telegram_id="42"), Utm()))
    assert telegram == {"LastName": "Telegram 42"}


def test_the_master_record_type_is_never_sent() -> None:
    body = sf.deal_create_json(new_deal(sf.MASTER_RECORD_TYPE, "Autopay"), date(2026, 12, 2))
    assert "RecordTypeId" not in body and body["CloseDate"] == "2026-12-02"


async def test_every_configured_field_is_accepted_by_the_orgs_describe(
    client: httpx.AsyncClient,
) -> None:
    described = await call(client, "GET", f"{DATA}/sobjects/Opportunity/describe")
    by_name = {f["name"]: f for f in described["fields"]}
    for name, value in sf.fields_json(FIELDS).items():
        definition = by_name[name]
        assert definition["updateable"] and definition["createable"]
        if definition["type"] in ("picklist", "multipicklist"):
            options = {v["value"] for v in definition["picklistValues"] if v["active"]}
            assert set(str(value).split(";")) <= options
    # The org taking every kind in a PATCH: test_contract's update_deal test.


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"Bogus__c": "x"}, "INVALID_FIELD"),
        ({"IsClosed": True}, "INVALID_FIELD_FOR_INSERT_UPDATE"),
        ({"Total_Paid__c": "12"}, "JSON_PARSER_ERROR"),
        ({"Subjects__c": "Math;Astrology"}, "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"),
        ({"Payment_Id__c": "x" * 256}, "STRING_TOO_LONG"),
        ({"RecordTypeId": "012Qy000001RtZzIAS"}, "INVALID_CROSS_REFERENCE_KEY"),
    ],
)
async def test_refused_writes_are_permanent_and_name_the_field(
    fake: FakeSalesforce, client: httpx.AsyncClient, body: dict[str, Any], code: str
) -> None:
    deal = fake.add_deal(None)
    with pytest.raises(PermanentCrmError, match=code):
        await call(client, "PATCH", f"{DATA}/sobjects/Opportunity/{deal}", json=body)


# ---- reads --------------------------------------------------------------------------


async def test_open_deals_of_a_contact_newest_first_with_their_contacts(
    fake: FakeSalesforce, client: httpx.AsyncClient
) -> None:
    me, partner = fake.add_contact(LastName="Я"), fake.add_contact(LastName="Партнёр")
    old = fake.add_deal(
        me, stage="In Progress", updated_at=NOW - 100, Payment_Id__c="p0", Total_Paid__c=100
    )
    new = fake.add_deal(me, record_type=YANDEX, updated_at=NOW - 10)
    fake.add_deal(me, stage="Closed Won")
    fake.add_deal(me, deleted=True)
    fake.add_deal(partner)
    await call(
        client, "POST", f"{DATA}/sobjects/OpportunityContactRole", json=sf.role_json(old, partner)
    )
    rows, following = sf.query_rows(await query(client, sf.deals_soql(me, CONFIG)))
    deals = [sf.deal_from_json(row, CONFIG) for row in rows]
    assert following is None
    assert [deal.id for deal in deals] == [new, old]  # the role write touched no deal
    assert deals[0].pipeline_id == YANDEX and deals[0].status_id == "Autopay"
    assert set(deals[1].contact_ids) == {me, partner}
    assert deals[1].fields == {"Payment_Id__c": "p0", "Total_Paid__c": "100"}
    assert not deals[1].is_closed and deals[1].updated_at == int(NOW - 100)


async def test_one_deal_open_or_closed(fake: FakeSalesforce, client: httpx.AsyncClient) -> None:
    me = fake.add_contact(LastName="Я")
    deal = fake.add_deal(me, stage="Closed Lost", Amount=10.5)
    rows, _ = sf.query_rows(await query(client, sf.deal_soql(deal, CONFIG)))
    parsed = sf.deal_from_json(rows[0], CONFIG)
    assert parsed.is_closed and parsed.contact_ids == (me,) and parsed.price == Decimal("10.5")
    fake.move_deal(deal, "Closed Lost", deleted=True)
    rows, _ = sf.query_rows(await query(client, sf.deal_soql(deal, CONFIG)))
    assert rows == []
    with pytest.raises(ValueError, match="not a Salesforce record id"):
        sf.deal_soql("006' OR Name != '", CONFIG)


async def test_notes_round_trip_in_full(fake: FakeSalesforce, client: httpx.AsyncClient) -> None:
    deal = fake.add_deal(None)
    text = "Оплата проведена\n\nСумма: 11500.50 RUB\nPayment ID: pay-1 <b>&</b>"
    await call(client, "POST", f"{DATA}/sobjects/Note", json=sf.note_create_json(deal, text))
    fake.add_note(deal, "от менеджера")
    rows, _ = sf.query_rows(await query(client, sf.notes_soql(deal)))
    assert [sf.note_text(row) for row in rows] == [text, "от менеджера"]
    assert sf.note_create_json(deal, text)["Title"] == "Оплата проведена"
    with pytest.raises(ValueError, match="32000"):
        sf.note_create_json(deal, "x" * 32001)


async def test_soql_mixing_and_with_or_needs_parentheses(
    fake: FakeSalesforce, client: httpx.AsyncClient
) -> None:
    with pytest.raises(PermanentCrmError, match="MALFORMED_QUERY"):
        await query(client, "SELECT Id FROM Contact WHERE Email = 'a' AND Phone = 'b' OR Id = 'c'")


# ---- schema -------------------------------------------------------------------------


async def test_pipelines_are_record_types_with_their_sales_process(
    fake: FakeSalesforce, client: httpx.AsyncClient
) -> None:
    described = await call(client, "GET", f"{DATA}/sobjects/Opportunity/describe")
    infos = sf.record_types(described)
    pipelines = [
        sf.pipeline_from_json(
            info, await call(client, "GET", sf.stage_values_path(V, str(info["recordTypeId"])))
        )
        for info in infos
    ]
    by_id = {p.id: p for p in pipelines}
    assert set(by_id) == {SITE, YANDEX, PARTNERS}
    assert by_id[YANDEX].statuses == {
        "Autopay": "Автооплаты ООО",
        "In Progress": "В работе",
        "Closed Won": "Успешно реализовано",
        "Closed Lost": "Закрыто и не реализовано",
    }
    for target in (CONFIG.default_pipeline, *CONFIG.pipeline_rules):
        assert target.status_id in by_id[target.pipeline_id].statuses
    fields = {f.id: f for f in sf.custom_fields(described, "leads")}
    assert (
        fields["Subjects__c"].type == "multiselect"
        and fields["Subjects__c"].enums["Math"] == "Математика"
    )
    assert (
        fields["Total_Paid__c"].type == "numeric"
        and fields["Last_Payment_At__c"].type == "date_time"
    )
    contact = sf.custom_fields(
        await call(client, "GET", f"{DATA}/sobjects/Contact/describe"), "contacts"
    )
    assert {f.id for f in contact} == {"Telegram_Id__c", "Telegram_Username__c"}


async def test_an_org_without_record_types_has_the_master_pipeline(clock: ManualClock) -> None:
    fake = FakeSalesforce(clock=clock, record_types=False)
    async with org_client(fake) as http:
        described = await call(http, "GET", f"{DATA}/sobjects/Opportunity/describe")
        assert sf.record_types(described) == []
        pipeline = sf.master_pipeline(described)
        assert pipeline.id == sf.MASTER_RECORD_TYPE and "Partner Review" in pipeline.statuses


# ---- errors, sessions, limits -------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (401, "INVALID_SESSION_ID", AuthError),
        (403, "REQUEST_LIMIT_EXCEEDED", RateLimited),
        (403, "INSUFFICIENT_ACCESS", PermanentCrmError),
        (400, "UNABLE_TO_LOCK_ROW", TransientCrmError),
        (503, "SERVER_UNAVAILABLE", TransientCrmError),
        (404, "NOT_FOUND", PermanentCrmError),
        (400, "DUPLICATE_VALUE", PermanentCrmError),
    ],
)
def test_error_arrays_map_to_what_the_bridge_should_do(
    status: int, code: str, kind: type[Exception]
) -> None:
    body = [{"message": "m", "errorCode": code, "fields": ["Email"]}]
    error = sf.error_from_answer("salesforce", status, body, "GET /x")
    assert type(error) is kind
    assert f"HTTP {status} {code}: m (fields: Email)" in str(error)


def test_a_non_json_error_still_maps_by_status() -> None:
    error = sf.error_from_answer(
        "salesforce", 502, sf.answer_json("<html>bad gateway</html>"), "GET /x"
    )
    assert isinstance(error, TransientCrmError) and "HTTP 502" in str(error)


async def test_an_expired_session_answers_401_invalid_session_id(
    fake: FakeSalesforce, client: httpx.AsyncClient, clock: ManualClock
) -> None:
    await query(client, "SELECT Id FROM Contact")
    clock.advance(7199)  # used: the session lives on
    await query(client, "SELECT Id FROM Contact")
    clock.advance(7200)
    with pytest.raises(AuthError, match="INVALID_SESSION_ID"):
        await query(client, "SELECT Id FROM Contact")


async def token(fake: FakeSalesforce, form: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient(transport=fake.transport()) as http:
        return await http.post("https://login.salesforce.com/services/oauth2/token", data=form)


async def test_the_jwt_bearer_grant_mints_a_session_without_refresh_token(
    fake: FakeSalesforce, clock: ManualClock
) -> None:
    key = sf.load_private_key(fake.private_key_pem)
    assertion = sf.jwt_assertion(
        key, fake.consumer_key, fake.usernames[0], "https://login.salesforce.com/", clock()
    )
    response = await token(fake, sf.jwt_grant_form(assertion))
    assert response.status_code == 200
    body = response.json()
    assert "refresh_token" not in body and "expires_in" not in body
    session = sf.session_from_json(body, clock())
    assert (
        session.issued_at == pytest.approx(clock())
        and session.instance_url == "https://example.my.salesforce.com"
    )
    payload = assertion.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims == {
        "iss": fake.consumer_key,
        "sub": fake.usernames[0],
        "aud": "https://login.salesforce.com",
        "exp": int(clock()) + 180,
    }  # the session serving requests: test_salesforce_auth


async def test_jwt_refusals_are_oauth_errors(fake: FakeSalesforce, clock: ManualClock) -> None:
    key = sf.load_private_key(fake.private_key_pem)
    # A key the app does not know and a user who has not approved it: test_salesforce_auth.
    cases = {
        "invalid_client_id: client identifier invalid": sf.jwt_assertion(
            key, "nope", fake.usernames[0], fake.audience, clock()
        ),
        "invalid_grant: audience is invalid": sf.jwt_assertion(
            key, fake.consumer_key, fake.usernames[0], "https://test.salesforce.com", clock()
        ),
        "invalid_grant: expired authorization code": sf.jwt_assertion(
            key, fake.consumer_key, fake.usernames[0], fake.audience, clock() - 600
        ),
    }
    for expected, assertion in cases.items():
        response = await token(fake, sf.jwt_grant_form(assertion))
        assert response.status_code == 400
        assert sf.token_error(response.json()) == expected
    assert fake.tokens_minted == 0


def test_only_an_unencrypted_rsa_key_signs() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ValueError, match="not an RSA key"):
        sf.load_private_key(pem)


async def test_client_credentials_need_the_my_domain_host(fake: FakeSalesforce) -> None:
    form = sf.client_credentials_form(fake.consumer_key, fake.client_secret)
    refused = await token(fake, form)  # minting there: test_salesforce_auth
    assert sf.token_error(refused.json()).startswith("invalid_grant")


def test_limit_info_is_parsed() -> None:
    assert parse_limit_info("api-usage=18/15000") == (18, 15000)
    assert parse_limit_info("api-usage=110018/100000; api-bursts=1/750") == (110018, 100000)
    assert parse_limit_info("per-app-api-usage=17/250(appName=x)") is None
    assert parse_limit_info(None) is None


def test_the_bridge_stops_short_of_the_allocation_and_probes_again(clock: ManualClock) -> None:
    usage = ApiUsage("salesforce", stop_percent=90, recheck_seconds=300, clock=clock)
    usage.require()  # nothing known yet
    usage.observe("api-usage=899/1000")
    usage.require()
    usage.observe("api-usage=900/1000")
    with pytest.raises(RateLimited) as waited:
        usage.require()
    assert waited.value.retry_after == pytest.approx(300)
    assert usage.details()["daily_api_holding_back"] is True
    clock.advance(300)
    usage.require()  # the probe
    with pytest.raises(RateLimited):
        usage.require()  # the others wait for its figure
    usage.observe("api-usage=700/1000")
    usage.require()
    assert usage.details() == {
        "daily_api_usage": 700,
        "daily_api_limit": 1000,
        "daily_api_stop_at": 900,
        "daily_api_holding_back": False,
        "daily_api_usage_read_at": "2026-12-02T12:05:00Z",
    }


async def test_usage_is_read_from_every_answer_and_a_spent_allocation_waits(
    clock: ManualClock,
) -> None:
    fake = FakeSalesforce(clock=clock, daily_limit=3)
    usage = ApiUsage("salesforce", stop_percent=100, clock=clock)
    async with org_client(fake, event_hooks=usage_hooks(usage)) as http:
        soql = sf.contact_soql(KEYS, CONFIG)
        sosl = sf.contact_sosl(KEYS, CONFIG)
        assert soql is not None and sosl is not None
        await call(
            http, "POST", f"{DATA}/composite/batch", json=sf.lookup_batch_json(V, soql, sosl)
        )
        assert (usage.used, usage.limit) == (2, 3)  # a batch counts per sub-request
        await query(http, soql)
        assert usage.holding_back()
        fake.api_used = 3
        with pytest.raises(RateLimited, match="REQUEST_LIMIT_EXCEEDED"):
            await query(http, soql)
        assert fake.contacts() == []
    with pytest.raises(RateLimited):
        usage.require()


def test_requests_stay_inside_the_composite_limits() -> None:
    with pytest.raises(ValueError, match="1 to 25"):
        sf.composite_json(V, [])
    body = sf.composite_json(V, sf.create_deal_steps("003Qy0000000001AAA", {"Name": "x"}))
    assert body["allOrNone"] is True and body["collateSubrequests"] is False
    assert [step["url"] for step in body["compositeRequest"]] == [
        f"{DATA}/sobjects/Opportunity",
        f"{DATA}/sobjects/OpportunityContactRole",
    ]
    batch = sf.lookup_batch_json(
        V, "SELECT Id FROM Contact", "FIND {1234567} IN PHONE FIELDS RETURNING Contact(Id)"
    )
    assert [dict(parse_qsl(r["url"].split("?")[1]))["q"] for r in batch["batchRequests"]] == [
        "SELECT Id FROM Contact",
        "FIND {1234567} IN PHONE FIELDS RETURNING Contact(Id)",
    ]
    assert batch["batchRequests"][0]["url"].startswith("v68.0/query?q=")


def test_timestamps_in_salesforce_format() -> None:
    assert sf.timestamp("2026-12-02T10:00:00.000+0000") == int(
        datetime(2026, 12, 2, 10, tzinfo=UTC).timestamp()
    )
    assert sf.timestamp("2026-12-02T10:00:00Z") == int(
        datetime(2026, 12, 2, 10, tzinfo=UTC).timestamp()
    )
    assert sf.timestamp(None) == 0


async def test_composite_bodies_hold_only_fields_salesforce_knows(
    fake: FakeSalesforce, client: httpx.AsyncClient
) -> None:
    body = sf.composite_json(V, sf.create_deal_steps(fake.add_contact(), {"Name": "x"}))
    with pytest.raises(PermanentCrmError, match='JSON_PARSER_ERROR: Unrecognized field "extra"'):
        await call(client, "POST", f"{DATA}/composite", json={**body, "extra": 1})
    batch = sf.lookup_batch_json(V, "SELECT Id FROM Contact", "FIND {12345} RETURNING Contact(Id)")
    batch["batchRequests"][0]["referenceId"] = "q"
    with pytest.raises(PermanentCrmError, match='Unrecognized field "referenceId"'):
        await call(client, "POST", f"{DATA}/composite/batch", json=batch)
    assert fake.deals() == []
