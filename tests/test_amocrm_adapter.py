"""The amoCRM adapter through its `CrmAdapter` interface, against the stateful fake."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bridge.crm.amocrm import AmoCrm, build_amocrm, field_values_json, search_query
from bridge.domain import (
    Contact,
    ContactPatch,
    Customer,
    FieldKind,
    FieldUpdate,
    KeyKind,
    LookupKey,
    NewContact,
    NewDeal,
    Utm,
)
from bridge.errors import AuthError, PermanentCrmError, RateLimited
from bridge.settings import CrmConfig, load_file_config
from bridge.tokens import TokenPair
from tests.fakes.amocrm import FakeAmoCrm
from tests.fakes.amocrm_account import PHONE_FIELD
from tests.fakes.memory import MemoryTokens, adapter_on

ROOT = Path(__file__).resolve().parent.parent
BASE_URL = "https://reference.amocrm.test"
CONFIG = (
    load_file_config(ROOT / "etc" / "bridge.example.toml")
    .crm["amocrm"]
    .model_copy(update={"base_url": BASE_URL})
)
TG_ID, TG_USERNAME = "700101", "700102"
SUBJECTS, DIRECTION, LAST_AMOUNT, LAST_AT = "700201", "700202", "700203", "700204"
PAYMENT_ID, TOTAL, COUNT, UTM_SOURCE = "700205", "700207", "700208", "700209"
SITE, SITE_AUTOPAY, SITE_WORKING = 4423755, 63242022, 63242023
PARTNERS, PARTNERS_AUTOPAY = 8598230, 80517738
PAID_AT = datetime(2025, 1, 20, 11, 49, 20, tzinfo=UTC)
CUSTOMER = Customer("Иван", "Петров", "+79991234567", "ivan@example.com", "123456789", "ivan")


def make_adapter(fake: FakeAmoCrm, *, config: CrmConfig = CONFIG, **options: Any) -> AmoCrm:
    static = {"amocrm_access_token": fake.issue_token(ttl=3600)}
    return adapter_on(build_amocrm, fake, config, static=static, **options)


@pytest.fixture
def fake() -> FakeAmoCrm:
    return FakeAmoCrm(CONFIG)


@pytest.fixture
async def amo(fake: FakeAmoCrm) -> AsyncIterator[AmoCrm]:
    adapter = make_adapter(fake)
    yield adapter
    await adapter.connection.aclose()


def phone_key(value: str = "+79991234567") -> LookupKey:
    return LookupKey(KeyKind.PHONE, value)


def every_kind_of_field() -> tuple[FieldUpdate, ...]:
    return (
        FieldUpdate(SUBJECTS, FieldKind.MULTISELECT, (800001, 800003)),
        FieldUpdate(DIRECTION, FieldKind.SELECT, 800101),
        FieldUpdate(LAST_AMOUNT, FieldKind.NUMBER, Decimal("10000.00")),
        FieldUpdate(LAST_AT, FieldKind.DATETIME, PAID_AT),
        FieldUpdate(PAYMENT_ID, FieldKind.TEXT, "pay_1"),
        FieldUpdate(TOTAL, FieldKind.NUMBER, Decimal("11500.5")),
        FieldUpdate(COUNT, FieldKind.NUMBER, 3),
        FieldUpdate(UTM_SOURCE, FieldKind.TEXT, "advcake"),
    )


def new_deal(**changes: Any) -> NewDeal:
    values: dict[str, Any] = {
        "name": "Оплата Русский - Иван Петров",
        "price": Decimal("10000"),
        "pipeline_id": str(PARTNERS),
        "status_id": str(PARTNERS_AUTOPAY),
        "fields": every_kind_of_field(),
    }
    values.update(changes)
    return NewDeal(**values)


def new_contact() -> NewContact:
    telegram = (
        FieldUpdate(TG_ID, FieldKind.TEXT, "123456789"),
        FieldUpdate(TG_USERNAME, FieldKind.TEXT, "ivan"),
    )
    return NewContact(CUSTOMER, Utm(source="advcake"), telegram)


# ---- pure mappers -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "query"),
    [
        (LookupKey(KeyKind.PHONE, "+79991234567"), "9991234567"),
        (LookupKey(KeyKind.PHONE, "+442079460958"), "2079460958"),
        (LookupKey(KeyKind.EMAIL, "ivan@example.com"), "ivan@example.com"),
        (LookupKey(KeyKind.TELEGRAM_ID, "123456789"), "123456789"),
    ],
)
def test_search_query_uses_national_number_for_phones(key: LookupKey, query: str) -> None:
    assert search_query(key) == query


@pytest.mark.parametrize(
    ("update", "values"),
    [
        (FieldUpdate("1", FieldKind.TEXT, "pay_1"), [{"value": "pay_1"}]),
        (FieldUpdate("1", FieldKind.NUMBER, Decimal("10000.00")), [{"value": 10000}]),
        (FieldUpdate("1", FieldKind.NUMBER, Decimal("12.50")), [{"value": 12.5}]),
        (FieldUpdate("1", FieldKind.NUMBER, 3), [{"value": 3}]),
        (FieldUpdate("1", FieldKind.DATETIME, PAID_AT), [{"value": "2025-01-20T11:49:20+00:00"}]),
        (
            FieldUpdate("1", FieldKind.DATETIME, PAID_AT.astimezone(timezone(timedelta(hours=3)))),
            [{"value": "2025-01-20T14:49:20+03:00"}],
        ),
        (FieldUpdate("1", FieldKind.SELECT, 800101), [{"enum_id": 800101}]),
        (
            FieldUpdate("1", FieldKind.MULTISELECT, (800001, 800003)),
            [{"enum_id": 800001}, {"enum_id": 800003}],
        ),
    ],
)
def test_field_values_json_shapes(update: FieldUpdate, values: list[dict[str, Any]]) -> None:
    assert field_values_json([update]) == [{"field_id": 1, "values": values}]


@pytest.mark.parametrize(
    "update",
    [
        FieldUpdate("1", FieldKind.DATETIME, datetime(2025, 1, 20, 11, 49)),  # naive
        FieldUpdate("1", FieldKind.SELECT, (1, 2)),
        FieldUpdate("1", FieldKind.NUMBER, "12"),
        FieldUpdate("field", FieldKind.TEXT, "x"),
    ],
)
def test_field_values_json_refuses_what_does_not_fit(update: FieldUpdate) -> None:
    with pytest.raises(ValueError, match=r"1|field"):
        field_values_json([update])


# ---- contacts -----------------------------------------------------------------------


async def test_phone_search_returns_raw_hits_with_exact_field_values(
    fake: FakeAmoCrm, amo: AmoCrm
) -> None:
    ivan = fake.add_contact(
        "Иван Петров",
        phones=["8 (999) 123-45-67"],
        emails=["Ivan@Example.com"],
        telegram_id="123456789",
        telegram_username="ivan_petrov",
    )
    first = fake.add_lead(ivan, pipeline_id=SITE, status_id=SITE_WORKING)
    second = fake.add_lead(ivan, pipeline_id=SITE, status_id=142)
    lookalike = fake.add_contact("Someone", phones=["+7 999 123-45-678"])

    hits = await amo.find_contacts(phone_key())

    assert {hit.id for hit in hits} == {str(ivan), str(lookalike)}  # the flow confirms
    [found] = [hit for hit in hits if hit.id == str(ivan)]
    assert found == Contact(
        id=str(ivan),
        name="Иван Петров",
        phones=("8 (999) 123-45-67",),
        emails=("Ivan@Example.com",),
        telegram_id="123456789",
        telegram_username="ivan_petrov",
        deal_ids=(str(first), str(second)),
    )
    [call] = fake.calls
    assert (call.method, call.path) == ("GET", "/api/v4/contacts")
    assert call.params == {"query": ["9991234567"], "with": ["leads"], "limit": ["50"]}


@pytest.mark.parametrize(
    ("key", "query"),
    [
        (LookupKey(KeyKind.EMAIL, "ivan@example.com"), "ivan@example.com"),
        (LookupKey(KeyKind.TELEGRAM_ID, "123456789"), "123456789"),
    ],
)
async def test_email_and_telegram_are_searched_as_themselves(
    fake: FakeAmoCrm, amo: AmoCrm, key: LookupKey, query: str
) -> None:
    contact_id = fake.add_contact("Иван", emails=["ivan@example.com"], telegram_id="123456789")
    [hit] = await amo.find_contacts(key)
    assert hit.id == str(contact_id)
    assert hit.deal_ids == ()
    assert fake.calls[-1].params["query"] == [query]


async def test_no_hits_is_204_and_an_empty_list(fake: FakeAmoCrm, amo: AmoCrm) -> None:
    fake.add_contact("Someone", phones=["+79990000000"])
    assert await amo.find_contacts(phone_key()) == []
    assert fake.calls[-1].status == 204


async def test_create_contact_then_deal_links_them(fake: FakeAmoCrm, amo: AmoCrm) -> None:
    contact = await amo.create_contact(new_contact())
    deal = await amo.create_deal(contact, new_deal())

    assert contact.phones == ("+79991234567",)
    assert (contact.telegram_id, contact.telegram_username) == ("123456789", "ivan")
    assert contact.deal_ids is None  # unknown once a deal may follow: list_deals reads
    stored = fake.contact(contact.id)
    assert stored["name"] == "Иван Петров"
    assert [lead["id"] for lead in stored["_embedded"]["leads"]] == [int(deal.id)]
    assert fake.contact_field(contact.id, PHONE_FIELD) == "+79991234567"
    assert fake.contact_field(contact.id, TG_ID) == "123456789"
    assert (deal.pipeline_id, deal.status_id, deal.contact_ids) == (
        str(PARTNERS),
        str(PARTNERS_AUTOPAY),
        (contact.id,),
    )
    assert deal.fields[PAYMENT_ID] == "pay_1"
    assert fake.count() == 2


async def test_update_contact_fills_fields_and_skips_empty_patch(
    fake: FakeAmoCrm, amo: AmoCrm
) -> None:
    contact_id = fake.add_contact("Иван", phones=["+79991234567"])
    await amo.update_contact(str(contact_id), ContactPatch(()))
    assert fake.count() == 0
    patch = ContactPatch((FieldUpdate(TG_ID, FieldKind.TEXT, "42"),))
    await amo.update_contact(str(contact_id), patch)
    assert fake.contact_field(contact_id, TG_ID) == "42"
    assert fake.contact_field(contact_id, PHONE_FIELD) == "+79991234567"  # untouched
    assert fake.calls[-1].json == {
        "custom_fields_values": [{"field_id": 700101, "values": [{"value": "42"}]}]
    }


# ---- deals --------------------------------------------------------------------------


async def test_list_deals_is_one_leads_call_when_ids_are_known(
    fake: FakeAmoCrm, amo: AmoCrm
) -> None:
    contact_id = fake.add_contact("Иван", phones=["+79991234567"])
    open_lead = fake.add_lead(
        contact_id,
        pipeline_id=SITE,
        status_id=SITE_WORKING,
        updated_at=1000,
        fields={TOTAL: 1500, COUNT: 2, SUBJECTS: [800002], DIRECTION: 800102},
    )
    won = fake.add_lead(contact_id, pipeline_id=SITE, status_id=142, updated_at=3000)
    gone = fake.add_lead(contact_id, pipeline_id=SITE, status_id=SITE_WORKING, is_deleted=True)
    [contact] = await amo.find_contacts(phone_key())
    before = fake.count()

    deals = {deal.id: deal for deal in await amo.list_deals(contact)}

    assert fake.count() == before + 1
    call = fake.calls[-1]
    assert call.path == "/api/v4/leads"
    assert call.params["filter[id][]"] == [str(open_lead), str(won), str(gone)]
    first = deals[str(open_lead)]
    assert (first.pipeline_id, first.status_id, first.updated_at) == (
        str(SITE),
        str(SITE_WORKING),
        1000,
    )
    assert not first.is_closed and not first.is_deleted
    assert first.fields == {TOTAL: "1500", COUNT: "2", SUBJECTS: "Математика", DIRECTION: "ОГЭ"}
    assert deals[str(won)].is_closed
    assert deals[str(gone)].is_deleted

    fake.move_lead(open_lead, 143)  # a manager closes it
    [moved] = [deal for deal in await amo.list_deals(contact) if deal.id == str(open_lead)]
    assert moved.is_closed and moved.updated_at > 1000


async def test_list_deals_reads_the_contact_when_ids_are_unknown(
    fake: FakeAmoCrm, amo: AmoCrm
) -> None:
    with_lead = fake.add_contact("A")
    lead = fake.add_lead(with_lead)
    without = fake.add_contact("B")

    deals = await amo.list_deals(Contact(id=str(with_lead)))
    assert [deal.id for deal in deals] == [str(lead)]
    assert [call.path for call in fake.calls] == [f"/api/v4/contacts/{with_lead}", "/api/v4/leads"]

    assert await amo.list_deals(Contact(id=str(without))) == []
    assert fake.count() == 3  # no leads call without ids
    assert await amo.list_deals(Contact(id=str(without), deal_ids=())) == []
    assert fake.count() == 3


async def test_list_deals_pages_through_next(fake: FakeAmoCrm, amo: AmoCrm) -> None:
    contact_id = fake.add_contact("Busy")
    ids = tuple(str(fake.add_lead(contact_id)) for _ in range(260))
    deals = await amo.list_deals(Contact(id=str(contact_id), deal_ids=ids))
    assert len(deals) == 260
    assert fake.count(path_prefix="/api/v4/leads") == 2


async def test_create_contact_and_deal_is_one_call(fake: FakeAmoCrm, amo: AmoCrm) -> None:
    contact, deal = await amo.create_contact_and_deal(new_contact(), new_deal())

    assert fake.count() == 1
    assert fake.calls[0].path == "/api/v4/leads/complex"
    [lead] = fake.leads()
    assert str(lead["id"]) == deal.id
    assert [c["id"] for c in lead["_embedded"]["contacts"]] == [int(contact.id)]
    assert (lead["pipeline_id"], lead["status_id"], lead["price"]) == (
        PARTNERS,
        PARTNERS_AUTOPAY,
        10000,
    )
    assert fake.lead_field(deal.id, SUBJECTS) == [800001, 800003]
    assert fake.lead_field(deal.id, DIRECTION) == 800101
    assert fake.lead_field(deal.id, LAST_AMOUNT) == "10000"
    assert fake.lead_field(deal.id, LAST_AT) == int(PAID_AT.timestamp())
    assert fake.lead_field(deal.id, TOTAL) == "11500.5"
    assert fake.lead_field(deal.id, PAYMENT_ID) == "pay_1"
    assert fake.lead_field(deal.id, UTM_SOURCE) == "advcake"
    assert contact.id == str(fake.contacts()[0]["id"])
    assert contact.emails == ("ivan@example.com",)
    assert deal.contact_ids == (contact.id,)

    fake.calls.clear()
    [found] = await amo.find_contacts(LookupKey(KeyKind.TELEGRAM_ID, "123456789"))
    assert found.id == contact.id
    assert found.deal_ids == (deal.id,)


async def test_update_deal_sends_every_kind_in_a_shape_amocrm_accepts(
    fake: FakeAmoCrm, amo: AmoCrm
) -> None:
    lead = fake.add_lead(fields={TOTAL: 100, SUBJECTS: [800002]})
    await amo.update_deal(str(lead), every_kind_of_field())
    assert fake.calls[-1].status == 200
    assert fake.lead_field(lead, SUBJECTS) == [800001, 800003]  # the set is replaced
    assert fake.lead_field(lead, TOTAL) == "11500.5"
    assert fake.lead_field(lead, COUNT) == "3"
    assert fake.lead_field(lead, LAST_AT) == int(PAID_AT.timestamp())
    await amo.update_deal(str(lead), [])
    assert fake.count() == 1


@pytest.mark.parametrize(
    "bad",
    [
        FieldUpdate("999999", FieldKind.TEXT, "unknown field"),
        FieldUpdate(DIRECTION, FieldKind.SELECT, 800001),  # a subject's enum, not a direction
        FieldUpdate(SUBJECTS, FieldKind.MULTISELECT, (800001, 123)),
        FieldUpdate(TOTAL, FieldKind.TEXT, "a lot"),
    ],
)
async def test_rejected_field_updates_are_permanent_and_apply_nothing(
    fake: FakeAmoCrm, amo: AmoCrm, bad: FieldUpdate
) -> None:
    lead = fake.add_lead(fields={TOTAL: 100})
    good = FieldUpdate(PAYMENT_ID, FieldKind.TEXT, "pay_1")
    with pytest.raises(PermanentCrmError, match="400"):
        await amo.update_deal(str(lead), [good, bad])
    assert fake.lead_field(lead, PAYMENT_ID) is None
    assert fake.lead_field(lead, TOTAL) == "100"
    assert fake.count() == 1  # a 400 is not retried


async def test_unknown_pipeline_or_status_is_permanent(fake: FakeAmoCrm, amo: AmoCrm) -> None:
    for deal in (new_deal(pipeline_id="1"), new_deal(status_id=str(SITE_AUTOPAY))):
        with pytest.raises(PermanentCrmError, match="validation"):
            await amo.create_contact_and_deal(new_contact(), deal)
    assert fake.contacts() == [] and fake.leads() == []


# ---- notes --------------------------------------------------------------------------


async def test_notes_are_added_and_read_back(fake: FakeAmoCrm, amo: AmoCrm) -> None:
    lead = fake.add_lead()
    quiet = fake.add_lead()
    await amo.add_note(str(lead), "Оплата проведена\nPayment ID: pay_1")
    await amo.add_note(str(lead), "second")
    assert fake.calls[-1].json == [{"note_type": "common", "params": {"text": "second"}}]

    assert await amo.deal_notes(str(lead)) == ["Оплата проведена\nPayment ID: pay_1", "second"]
    assert fake.calls[-1].params["filter[note_type][]"] == ["common"]
    assert await amo.deal_notes(str(quiet)) == []
    assert fake.calls[-1].status == 204


# ---- rate limits, faults, auth ------------------------------------------------------


async def test_a_burst_beyond_the_fakes_window_gets_429s(fake: FakeAmoCrm) -> None:
    adapter = make_adapter(fake)
    adapter.connection.http.quick_tries = 1
    results = await asyncio.gather(
        *(adapter.find_contacts(phone_key()) for _ in range(10)), return_exceptions=True
    )
    await adapter.connection.aclose()
    assert sum(isinstance(result, RateLimited) for result in results) == 3
    assert fake.throttled == 3


async def test_the_adapters_own_limiter_stays_under_7_per_second(fake: FakeAmoCrm) -> None:
    adapter = make_adapter(fake, real_limiter=True)
    for _ in range(9):
        await adapter.find_contacts(phone_key())
    await adapter.connection.aclose()
    assert fake.throttled == 0


async def test_401_with_a_long_lived_token_is_an_auth_error(fake: FakeAmoCrm) -> None:
    adapter = make_adapter(fake)
    fake.expire_all_access_tokens()
    with pytest.raises(AuthError, match="401"):
        await adapter.find_contacts(phone_key())
    assert fake.count() == 1
    await adapter.connection.aclose()

    missing = make_adapter(fake, amocrm_access_token=None)
    with pytest.raises(AuthError, match="AMOCRM_ACCESS_TOKEN"):
        await missing.find_contacts(phone_key())
    assert fake.count() == 1  # nothing sent without a token
    assert missing.connection.token_expires_at() is None
    await missing.connection.aclose()


OAUTH = CONFIG.model_copy(update={"auth": "oauth"})


async def test_oauth_refreshes_ahead_of_expiry_without_a_401(fake: FakeAmoCrm) -> None:
    access, refresh = fake.issue_oauth_pair(ttl=60)
    tokens = MemoryTokens(TokenPair(access, refresh, fake.clock() + 60))  # inside the margin
    adapter = make_adapter(fake, config=OAUTH, tokens=tokens)
    await adapter.find_contacts(phone_key())
    assert fake.count(status=401) == 0
    assert [call.path for call in fake.calls] == ["/oauth2/access_token", "/api/v4/contacts"]
    assert len(tokens.saved) == 1
    await adapter.connection.aclose()


async def test_schema_lists_pipelines_statuses_and_fields(fake: FakeAmoCrm, amo: AmoCrm) -> None:
    schema = await amo.schema()
    pipelines = {p.id: p for p in schema.pipelines}
    assert set(pipelines) == {str(SITE), "10089806", str(PARTNERS)}
    assert pipelines[str(SITE)].name == "Site"
    assert set(pipelines[str(SITE)].statuses) == {"63242022", "63242023", "142", "143"}
    fields = {(f.entity, f.id): f for f in schema.fields}
    assert fields[("leads", SUBJECTS)].type == "multiselect"
    assert fields[("leads", SUBJECTS)].enums["800001"] == "Русский"
    assert fields[("leads", DIRECTION)].enums == {"800101": "ЕГЭ", "800102": "ОГЭ"}
    assert fields[("contacts", TG_ID)].type == "text"
    assert ("contacts", str(PHONE_FIELD)) in fields
    assert fake.count() == 3


async def test_on_call_sees_each_operation(fake: FakeAmoCrm) -> None:
    seen: list[tuple[str, str, int]] = []
    adapter = make_adapter(fake, on_call=lambda crm, op, _s, status: seen.append((crm, op, status)))
    await adapter.find_contacts(phone_key())
    await adapter.create_contact_and_deal(new_contact(), new_deal())
    assert seen == [("amocrm", "contacts.search", 204), ("amocrm", "leads.complex", 200)]
    await adapter.connection.aclose()


async def test_a_restarted_adapter_respects_the_calls_its_previous_run_made(
    fake: FakeAmoCrm,
) -> None:
    """Issue 13.14: after a SIGKILL the new run's limiter must not add a burst on top of
    the last second of the old run's calls (the CRM counts both)."""
    before_kill = make_adapter(fake, real_limiter=True)
    for _ in range(7):
        await before_kill.find_contacts(phone_key())
    # No aclose: the process died. The next run starts at once.
    after_restart = make_adapter(fake, real_limiter=True)
    for _ in range(3):
        await after_restart.find_contacts(phone_key())
    await after_restart.connection.aclose()
    assert fake.throttled == 0
