"""The Pipedrive adapter through its `CrmAdapter` interface, against the stateful fake.

Every request an adapter built here sends is recorded and, after each test, checked
against Pipedrive's published OpenAPI files (`tests.fakes.pipedrive_openapi`).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest

from bridge.crm.base import RateLimiter, error_for_status
from bridge.crm.pipedrive import Pipedrive, build_pipedrive
from bridge.crm.pipedrive_budget import TOKEN_COSTS, TokenBudget, budget_hooks
from bridge.crm.pipedrive_json import field_text
from bridge.crm.richtext import note_html
from bridge.crmconfig import schema_problems
from bridge.domain import (
    Company,
    Contact,
    ContactPatch,
    DealChange,
    FieldKind,
    FieldUpdate,
    KeyKind,
    LookupKey,
    OrderItem,
)
from bridge.errors import (
    AuthError,
    PermanentCrmError,
    RateLimited,
)
from bridge.order_rules import company_matches
from bridge.rules import contact_matches
from bridge.settings import CrmConfig
from bridge.tokens import TokenPair
from tests.adapter_support import example_section, fake_and_adapter, paths, phone_key
from tests.clock import ManualClock
from tests.crm_cases import BY_NAME, CUSTOMER, NOTE
from tests.fakes.memory import MemoryTokens, adapter_on, no_wait
from tests.fakes.openapi_check import SentRequests
from tests.fakes.pipedrive import FakePipedrive
from tests.fakes.pipedrive_openapi import PipedriveOpenApi, RecordingTransport

BASE_URL = "https://example.pipedrive.test"
CONFIG = example_section("crm-pipedrive.example.toml", "pipedrive", base_url=BASE_URL, enabled=True)
OAUTH = CONFIG.model_copy(update={"auth": "oauth"})
TG_ID, TG_USERNAME = (
    CONFIG.contact_fields.telegram_id or "",
    CONFIG.contact_fields.telegram_username,
)
DF = CONFIG.deal_fields
SUBJECTS, DIRECTION, LAST_AT = DF.subjects, DF.direction, DF.last_payment_at
PAYMENT_ID, TOTAL, COUNT = DF.payment_id, DF.total_paid, DF.purchase_count
assert SUBJECTS and DIRECTION and LAST_AT and PAYMENT_ID and TOTAL and COUNT and TG_USERNAME
SITE, SITE_AUTOPAY, SITE_WORKING = 1, 1, 2
YANDEX, YANDEX_WORKING = 2, 4
PARTNERS, PARTNERS_AUTOPAY = 3, 5
MATHS, OGE = 12, 22
CASE = BY_NAME["pipedrive"]
new_deal, new_contact, every_kind_of_field = CASE.new_deal, CASE.new_contact, CASE.every_kind
SENT = SentRequests()


@pytest.fixture(autouse=True)
def requests_conform_to_openapi() -> Iterator[None]:
    """After each test: every request sent was an operation the OpenAPI files allow."""
    yield from SENT.checked(PipedriveOpenApi.load)


def make_adapter(
    fake: FakePipedrive,
    *,
    config: CrmConfig = CONFIG,
    transport: httpx.AsyncBaseTransport | None = None,
    real_limiter: bool = False,
    **options: Any,
) -> Pipedrive:
    # Every request is recorded and checked against the OpenAPI files after the test.
    recorder = SENT.recording(transport or fake.transport())
    static = {"pipedrive_api_token": fake.issue_api_token()}
    adapter = adapter_on(
        build_pipedrive,
        fake,
        config,
        static=static,
        transport=recorder,
        real_limiter=real_limiter,
        **options,
    )
    if not real_limiter:
        adapter.search_limiter = RateLimiter(1000, sleep=no_wait)
    return adapter


fake, pd = fake_and_adapter(
    functools.partial(FakePipedrive, CONFIG, rate_limit=1000, search_limit=1000), make_adapter
)


# ---- pure mappers -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, ""),
        ("pay_1", "pay_1"),
        (1500, "1500"),
        (1500.0, "1500"),
        (11500.5, "11500.5"),
        ([11, 13], "11,13"),
        ({"value": 2300, "currency": "EUR"}, "2300"),
        ({"id": 21, "label": "ЕГЭ"}, "21"),
    ],
)
def test_field_text(value: Any, text: str) -> None:
    assert field_text(value) == text


def test_token_cost_table_matches_the_openapi_files() -> None:
    spec = PipedriveOpenApi.load()
    if spec is None:
        pytest.skip("../shared/specs/pipedrive is not here")
    for (method, template), cost in TOKEN_COSTS.items():
        url = "https://oauth.pipedrive.com" if template.startswith("/oauth") else BASE_URL
        operation = spec.operation(method, url + template.replace("{id}", "7"))
        assert operation is not None, (method, template)
        assert operation.token_cost == cost, (method, template)


def test_budget_counts_per_utc_day_and_refuses_beyond_it() -> None:
    clock = ManualClock(datetime(2025, 1, 20, 23, 59, 0, tzinfo=UTC).timestamp())
    budget = TokenBudget("pipedrive", 30, clock)
    budget.charge(20)
    budget.require(10)
    with pytest.raises(RateLimited, match="20 of 30") as error:
        budget.require(11)
    assert error.value.retry_after == pytest.approx(60)
    assert budget.details() == {
        "daily_token_budget": 30,
        "daily_tokens_used": 20,
        "daily_tokens_remaining": 10,
        "daily_budget_resets_at": "2025-01-21T00:00:00Z",
    }
    clock.advance(61)  # past midnight UTC
    budget.require(30)
    assert budget.used == 0


async def test_a_burst_429_becomes_retry_after_for_the_limiter() -> None:
    hooks = budget_hooks(TokenBudget("pipedrive", 100))
    request = httpx.Request("GET", f"{BASE_URL}/api/v2/deals/1")
    response = httpx.Response(429, headers={"x-ratelimit-reset": "2"}, request=request)
    for hook in hooks["response"]:
        await hook(response)
    error = error_for_status("pipedrive", response)
    assert isinstance(error, RateLimited)
    assert error.retry_after == 2.0


# ---- contacts -----------------------------------------------------------------------


async def test_phone_search_confirms_and_reads_the_whole_person(
    fake: FakePipedrive, pd: Pipedrive
) -> None:
    ivan = fake.add_person(
        "Иван Петров",
        phones=["8 (999) 123-45-67"],
        emails=["Ivan@Example.com"],
        telegram_username="ivan_petrov",
    )
    lookalike = fake.add_person("Someone", phones=["8 999 123-45-678"])

    hits = await pd.search_persons(phone_key(), "89991234567")
    assert {hit.id for hit in hits} == {str(ivan), str(lookalike)}  # the flow confirms
    found = await pd.find_contact([phone_key()], contact_matches)

    assert found == Contact(
        id=str(ivan),
        name="Иван Петров",
        phones=("8 (999) 123-45-67",),
        emails=("Ivan@Example.com",),
        telegram_id="",
        telegram_username="ivan_petrov",
        deal_ids=(),
    )
    # "+7…" first, then "8…", which finds him
    search = ["GET /api/v2/persons/search"] * 2
    assert paths(fake)[1:] == [*search, f"GET /api/v2/persons/{ivan}"]
    assert fake.calls[2].params == {"term": ["89991234567"], "fields": ["phone"], "limit": ["100"]}
    assert fake.calls[3].params == {"custom_fields": [f"{TG_ID},{TG_USERNAME}"]}


async def test_keys_are_searched_in_priority_order_until_a_confirmed_hit(
    fake: FakePipedrive, pd: Pipedrive
) -> None:
    by_email = fake.add_person("Иван", emails=["ivan@example.com"])
    keys = CUSTOMER.lookup_keys()
    found = await pd.find_contact(keys, contact_matches)
    assert found is not None and found.id == str(by_email)
    searched = [call.params["fields"][0] for call in fake.calls if call.path.endswith("search")]
    assert searched == ["custom_fields", "phone", "phone", "phone", "email"]  # 3 phone forms

    fake.calls.clear()
    by_telegram = fake.add_person("Иван Т", telegram_id="123456789")
    found = await pd.find_contact(keys, contact_matches)
    assert found is not None and found.id == str(by_telegram)
    assert paths(fake) == ["GET /api/v2/persons/search", f"GET /api/v2/persons/{by_telegram}"]


async def test_a_telegram_hit_in_another_custom_field_is_not_confirmed(
    fake: FakePipedrive, pd: Pipedrive
) -> None:
    passport = "9" * 40
    fake.company.add_field("person", passport, "Паспорт", "varchar")
    other = fake.add_person("Другой", fields={passport: "123456789"})
    key = LookupKey(KeyKind.TELEGRAM_ID, "123456789")
    [hit] = await pd.search_persons(key)
    assert hit.id == str(other) and hit.telegram_id == "123456789"  # unkeyed, provisional
    assert await pd.find_contact([key], contact_matches) is None
    assert fake.calls[-1].path == f"/api/v2/persons/{other}"  # read, and not the Telegram id


async def test_without_a_telegram_field_its_search_is_not_made(fake: FakePipedrive) -> None:
    config = CONFIG.model_copy(
        update={
            "contact_fields": CONFIG.contact_fields.model_copy(
                update={"telegram_id": None, "telegram_username": None}
            )
        }
    )
    adapter = make_adapter(fake, config=config)
    ivan = fake.add_person("Иван", phones=["+79991234567"])
    found = await adapter.find_contact(CUSTOMER.lookup_keys(), contact_matches)
    assert found is not None and found.id == str(ivan) and found.deal_ids == ()
    assert paths(fake) == ["GET /api/v2/persons/search"]  # phone only; nothing to read
    await adapter.connection.aclose()


async def test_email_is_matched_exactly_and_case_insensitively(
    fake: FakePipedrive, pd: Pipedrive
) -> None:
    fake.add_person("Not him", emails=["ivan@example.com.au"])
    ivan = fake.add_person("Иван", emails=["Ivan@Example.COM"])
    found = await pd.find_contact([LookupKey(KeyKind.EMAIL, "ivan@example.com")], contact_matches)
    assert found is not None and found.id == str(ivan)


async def test_create_contact_and_fill_its_fields(fake: FakePipedrive, pd: Pipedrive) -> None:
    contact = await pd.create_contact(new_contact())
    person = fake.person(contact.id)
    assert person["name"] == "Иван Петров"
    assert person["phones"] == [{"value": "+79991234567", "primary": True, "label": "mobile"}]
    assert person["emails"] == [{"value": "ivan@example.com", "primary": True, "label": "work"}]
    assert contact.deal_ids == ()
    # What the contact reads back, the update's effect and an empty patch: test_contract.
    bare = fake.add_person("Иван", phones=["+79991234567"])
    await pd.update_contact(str(bare), ContactPatch((FieldUpdate(TG_ID, FieldKind.TEXT, "42"),)))
    assert fake.calls[-1].json == {"custom_fields": {TG_ID: "42"}}
    assert fake.person(bare)["phones"][0]["value"] == "+79991234567"  # untouched


async def test_a_person_deleted_after_the_search_is_skipped(
    fake: FakePipedrive, pd: Pipedrive
) -> None:
    gone = fake.add_person("Gone", phones=["+79991234567"])
    fake.on_answered = lambda request, _: (
        fake.delete_person(gone) if request.path.endswith("search") else None
    )
    assert await pd.find_contact([phone_key()], contact_matches) is None
    assert [call.status for call in fake.calls][:2] == [200, 404]


# ---- deals --------------------------------------------------------------------------


async def test_list_deals_is_one_call_for_open_deals_in_every_pipeline(
    fake: FakePipedrive, pd: Pipedrive
) -> None:
    ivan = fake.add_person("Иван", phones=["+79991234567"])
    older = fake.add_deal(
        ivan,
        pipeline_id=YANDEX,
        stage_id=YANDEX_WORKING,
        update_time=1000,
        fields={TOTAL: 1500, COUNT: 2, SUBJECTS: [MATHS], DIRECTION: OGE},
    )
    newer = fake.add_deal(ivan, pipeline_id=SITE, stage_id=SITE_AUTOPAY, update_time=2000)
    won = fake.add_deal(ivan, stage_id=SITE_WORKING, status="won", update_time=3000)
    fake.add_deal(ivan, stage_id=SITE_WORKING, status="lost")
    fake.add_deal(ivan, stage_id=SITE_WORKING, is_deleted=True)
    fake.add_deal(fake.add_person("Other"), stage_id=SITE_WORKING)
    known_won = await pd.get_deal(str(won))
    assert known_won is not None and known_won.is_closed
    fake.calls.clear()

    deals = await pd.list_deals(Contact(id=str(ivan)), known=[known_won])

    assert [deal.id for deal in deals] == [str(newer), str(older), str(won)]
    [call] = fake.calls
    assert call.params["status"] == ["open"] and call.params["sort_by"] == ["update_time"]
    # The configured deal fields only (payments' and orders'), when there are at most 15 of
    # them to ask for; else every field comes back.
    keys = CONFIG.deal_field_ids()
    assert call.params.get("custom_fields") == ([",".join(keys)] if len(keys) <= 15 else None)
    first = deals[1]
    assert (first.pipeline_id, first.status_id, first.updated_at) == (str(YANDEX), "4", 1000)
    assert not first.is_closed and not first.is_deleted
    assert first.contact_ids == (str(ivan),)
    assert first.fields == {TOTAL: "1500", COUNT: "2", SUBJECTS: str(MATHS), DIRECTION: str(OGE)}


async def test_get_deal_open_closed_deleted_and_gone(fake: FakePipedrive, pd: Pipedrive) -> None:
    ivan = fake.add_person("Иван")
    deal_id = fake.add_deal(ivan, stage_id=SITE_WORKING, value=700, fields={PAYMENT_ID: "pay_0"})
    deal = await pd.get_deal(str(deal_id))
    assert deal is not None
    assert (deal.contact_ids, deal.price, deal.fields) == ((str(ivan),), 700, {PAYMENT_ID: "pay_0"})
    assert not deal.is_closed and not deal.is_deleted
    fake.move_deal(deal_id, status="lost")
    lost = await pd.get_deal(str(deal_id))
    assert lost is not None and lost.is_closed
    fake.move_deal(deal_id, is_deleted=True)
    deleted = await pd.get_deal(str(deal_id))
    assert deleted is not None and deleted.is_deleted
    assert await pd.get_deal("999999") is None
    assert await pd.get_deal("not-a-number") is None
    assert fake.calls[-1].status == 404  # the last call was 999999: no call for the other


async def test_create_contact_and_deal_is_two_calls(fake: FakePipedrive, pd: Pipedrive) -> None:
    contact, deal = await pd.create_contact_and_deal(new_contact(), new_deal())

    assert paths(fake) == ["POST /api/v2/persons", "POST /api/v2/deals"]
    stored = fake.deal(deal.id)
    assert (stored["person_id"], stored["pipeline_id"], stored["stage_id"]) == (
        int(contact.id),
        PARTNERS,
        PARTNERS_AUTOPAY,
    )
    assert (stored["title"], stored["value"], stored["status"]) == (
        "Оплата Русский - Иван Петров",
        10000,
        "open",
    )

    fake.calls.clear()
    found = await pd.find_contact(CUSTOMER.lookup_keys(), contact_matches)
    assert found is not None and found.id == contact.id
    assert len(fake.calls) == 2  # found by its Telegram id at once


async def test_a_deal_id_that_is_not_a_number_fails_before_any_call(
    fake: FakePipedrive, pd: Pipedrive
) -> None:
    with pytest.raises(PermanentCrmError, match=r"deals\.update"):
        await pd.update_deal("x1", [FieldUpdate(PAYMENT_ID, FieldKind.TEXT, "p")])
    assert fake.calls == []


# ---- notes --------------------------------------------------------------------------


async def test_notes_are_sent_as_html_to_v1_and_read_by_deal(
    fake: FakePipedrive, pd: Pipedrive
) -> None:
    deal = fake.add_deal()
    await pd.add_note(str(deal), NOTE)
    assert fake.calls[-1].json == {"content": note_html(NOTE), "deal_id": deal}
    await pd.deal_notes(str(deal))
    assert fake.calls[-1].params == {"deal_id": [str(deal)], "limit": ["500"]}


async def test_deal_notes_page_through_start(fake: FakePipedrive, pd: Pipedrive) -> None:
    deal = fake.add_deal()
    for n in range(501):
        fake.add_note(deal, f"<p>note {n}</p>")
    notes = await pd.deal_notes(str(deal))
    assert len(notes) == 501 and notes[-1] == "note 500"
    assert fake.calls[-1].params["start"] == ["500"]


# ---- rate limits, the daily budget, faults ------------------------------------------


async def test_bursts_beyond_the_2_second_windows_get_429s() -> None:
    fake = FakePipedrive(CONFIG)  # 20 requests and 10 searches per 2 s
    adapter = make_adapter(fake)
    adapter.connection.http.quick_tries = 1
    reads = await asyncio.gather(
        *(adapter.get_deal("1") for _ in range(25)), return_exceptions=True
    )
    assert sum(isinstance(result, RateLimited) for result in reads) == 5
    await adapter.connection.aclose()

    fake = FakePipedrive(CONFIG, rate_limit=1000)
    adapter = make_adapter(fake)
    adapter.connection.http.quick_tries = 1
    searches = await asyncio.gather(
        *(adapter.search_persons(phone_key()) for _ in range(12)), return_exceptions=True
    )
    assert sum(isinstance(result, RateLimited) for result in searches) == 2
    assert fake.calls[-1].status == 429
    await adapter.connection.aclose()


async def test_the_adapters_search_pace_stays_under_10_per_2_seconds() -> None:
    fake = FakePipedrive(CONFIG)
    adapter = make_adapter(fake, real_limiter=True)
    for _ in range(11):
        await adapter.search_persons(phone_key())
    await adapter.connection.aclose()
    assert fake.throttled == 0


async def test_the_budget_counts_what_pipedrive_counts(fake: FakePipedrive, pd: Pipedrive) -> None:
    fake.add_person("Иван", phones=["+79991234567"], telegram_id="123456789")
    fake.fail_next(1, status=429)  # refused before any work: not charged
    fake.fail_next(1, status=503)
    contact = await pd.find_contact(CUSTOMER.lookup_keys(), contact_matches)
    assert contact is not None
    deal = await pd.create_deal(contact, new_deal())
    await pd.get_deal("999999")  # a 404 is charged
    await pd.update_deal(deal.id, every_kind_of_field())
    await pd.add_note(deal.id, "Payment ID: pay_1")
    await pd.deal_notes(deal.id)
    await pd.list_deals(contact)
    await pd.schema()
    assert pd.budget.used == fake.tokens_used == 20 + 1 + 5 + 1 + 5 + 10 + 20 + 10 + 40
    health = pd.connection.health_details()
    assert health["daily_tokens_used"] == 112
    assert health["daily_tokens_remaining"] == 30_000 - 112
    assert health["daily_token_budget"] == 30_000


async def test_a_spent_budget_refuses_without_calling_until_midnight_utc() -> None:
    clock = ManualClock(datetime(2025, 1, 20, 22, 0, 0, tzinfo=UTC).timestamp())
    fake = FakePipedrive(CONFIG, rate_limit=1000, search_limit=1000, clock=clock)
    config = CONFIG.model_copy(update={"options": {"daily_token_budget": 30}})
    adapter = make_adapter(fake, config=config)
    await adapter.search_persons(phone_key())  # 20
    await adapter.update_deal(str(fake.add_deal()), [FieldUpdate(PAYMENT_ID, FieldKind.TEXT, "p")])
    with pytest.raises(RateLimited, match="daily token budget") as error:
        await adapter.search_persons(phone_key())
    assert error.value.retry_after == pytest.approx(2 * 3600)
    assert len(fake.calls) == 2
    assert adapter.connection.health_details()["daily_tokens_remaining"] == 5
    clock.advance(2 * 3600)  # midnight UTC
    await adapter.search_persons(phone_key())
    assert adapter.budget.used == 20
    await adapter.connection.aclose()


async def test_pipedrives_own_budget_answers_429(fake: FakePipedrive, pd: Pipedrive) -> None:
    fake.daily_budget = 25  # other integrations of the company spent the rest
    await pd.search_persons(phone_key())
    with pytest.raises(RateLimited):
        await pd.search_persons(phone_key())


# ---- credentials --------------------------------------------------------------------


async def test_the_api_token_goes_in_a_header_never_in_the_url(fake: FakePipedrive) -> None:
    recorder = RecordingTransport(fake.transport())
    adapter = make_adapter(fake, transport=recorder, pipedrive_api_token="t0ken-secret")
    fake._api_tokens.add("t0ken-secret")
    await adapter.search_persons(phone_key())
    [request] = recorder.requests
    assert request.headers["x-api-token"] == "t0ken-secret"
    assert "authorization" not in request.headers
    assert "t0ken" not in str(request.url)
    fake.revoke_api_tokens()
    with pytest.raises(AuthError, match="401") as error:
        await adapter.search_persons(phone_key())
    assert "t0ken" not in str(error.value)
    assert len(recorder.requests) == 2  # a 401 with an API token is final
    await adapter.connection.aclose()


async def test_no_api_token_says_what_to_set(fake: FakePipedrive) -> None:
    # That nothing is sent without it, and no code exchanged: test_contract.
    adapter = make_adapter(fake, pipedrive_api_token=None)
    assert await adapter.connection.credentials_problem() == (
        'no credentials: set PIPEDRIVE_API_TOKEN or use auth = "oauth" and run'
        " `crm-bridge auth pipedrive`"
    )
    await adapter.connection.aclose()


async def test_oauth_stores_a_rotated_refresh_token(fake: FakePipedrive) -> None:
    fake.rotate_refresh_tokens = True
    access, refresh = fake.issue_oauth_pair(ttl=60)
    tokens = MemoryTokens(TokenPair(access, refresh, fake.clock() + 60))  # inside the margin
    adapter = make_adapter(fake, config=OAUTH, tokens=tokens)
    await adapter.search_persons(phone_key())
    assert fake.count(status=401) == 0
    assert paths(fake) == ["POST /oauth/token", "GET /api/v2/persons/search"]
    [saved] = tokens.saved
    assert saved.refresh_token != refresh
    await adapter.connection.aclose()


# ---- schema, options, on_call, the ASGI fake ----------------------------------------


async def test_bridge_check_flags_a_monetary_field(fake: FakePipedrive, pd: Pipedrive) -> None:
    money = "m" * 40
    fake.company.add_field("deal", money, "Всего (деньги)", "monetary")
    config = CONFIG.model_copy(update={"deal_fields": DF.model_copy(update={"total_paid": money})})
    [problem] = schema_problems("pipedrive", config, await pd.schema())
    assert "pipedrive:monetary" in str(problem) and "total_paid" in str(problem)


# ---- orders: organizations, stage moves, deal products --------------------------------
# Every request below is checked against the OpenAPI files too (the autouse fixture).

OF = CONFIG.order_fields
INN_FIELD = OF.company_inn or ""
ROMASHKA = Company("ООО Ромашка", inn="7701234567", phone="+74950001122", email="a@b.ru")
RENT, RENT_NEW, RENT_IN_RENT, RENT_CANCELLED = 4, 7, 9, 12
CHAIRS = OrderItem("chair-01", "Стул Венский", Decimal(40), Decimal("350.00"))
TABLES = OrderItem("table-07", "Стол банкетный", Decimal(5), Decimal("6900.00"))


def romashka(record: Any, key: str) -> bool:
    return company_matches(record, ROMASHKA, key)


async def test_an_organization_is_searched_by_its_inn_exactly_then_by_a_word_of_its_name(
    fake: FakePipedrive, pd: Pipedrive
) -> None:
    # Which record is found is the order contract's (test_order_contract); here, the searches.
    fake.add_organization("Ромашка и партнёры", "")  # a loose hit by name, not confirmed
    assert await pd.find_company(ROMASHKA, romashka) is None
    by_inn, by_name = fake.calls
    assert by_inn.path == "/api/v2/organizations/search"
    assert by_inn.params["term"] == ["7701234567"] and by_inn.params["exact_match"] == ["true"]
    assert by_inn.params["fields"] == ["custom_fields"]
    assert by_name.params["term"] == ["Ромашка"] and "exact_match" not in by_name.params
    assert pd.budget.used == 40
    wanted = fake.add_organization("Ромашка (старое название)", "7701234567")
    found = await pd.find_company(ROMASHKA, romashka)
    assert found is not None and found.id == str(wanted)
    assert len(fake.calls) == 3  # found by its INN: no search by name


async def test_a_new_organization_carries_its_inn_and_links_person_and_deal(
    fake: FakePipedrive, pd: Pipedrive
) -> None:
    org = await pd.create_company(ROMASHKA)
    assert (org.name, org.inn) == ("ООО Ромашка", "7701234567")
    stored = fake.organizations()[0]
    assert stored["custom_fields"][INN_FIELD] == "7701234567"
    fake.calls.clear()
    contact, deal = await pd.create_contact_and_deal(new_contact(), new_deal(company_id=org.id))
    assert paths(fake) == ["POST /api/v2/persons", "POST /api/v2/deals"]  # org_id in both
    assert fake.person_orgs(contact.id) == {org.id} and fake.deal_org(deal.id) == org.id
    fake.calls.clear()
    await pd.link_contact_to_company(contact.id, org.id)
    assert paths(fake) == [f"PATCH /api/v2/persons/{contact.id}"]
    assert fake.person_orgs(contact.id) == {org.id}


async def test_a_change_is_one_patch_and_the_cancelled_stage_marks_the_deal_lost(
    fake: FakePipedrive, pd: Pipedrive
) -> None:
    _, deal = await pd.create_contact_and_deal(
        new_contact(), new_deal(pipeline_id=str(RENT), status_id=str(RENT_NEW))
    )
    assert OF.order_id and OF.installation_date
    fake.calls.clear()
    change = DealChange(
        pipeline_id=str(RENT),
        status_id=str(RENT_CANCELLED),
        price=Decimal("48500.00"),
        fields=(
            FieldUpdate(OF.order_id, FieldKind.TEXT, "ord_1042"),
            FieldUpdate(OF.installation_date, FieldKind.DATE, date(2026, 12, 1)),
        ),
    )
    await pd.change_deal(deal.id, change)
    [call] = fake.calls
    assert call.method == "PATCH" and call.json["status"] == "lost"
    stored = fake.deal(deal.id)
    assert (stored["stage_id"], stored["status"], stored["value"]) == (
        RENT_CANCELLED,
        "lost",
        48500,
    )
    assert fake.deal_field(deal.id, OF.installation_date) == "2026-12-01"
    gone = await pd.get_deal(deal.id)
    assert gone is not None and gone.is_closed and gone.fields[OF.order_id] == "ord_1042"
    # The order lives again: another stage reopens the deal.
    await pd.change_deal(deal.id, DealChange(pipeline_id=str(RENT), status_id=str(RENT_IN_RENT)))
    assert fake.deal(deal.id)["status"] == "open"


async def test_deal_products_are_catalog_products_found_by_code_or_created(
    fake: FakePipedrive, pd: Pipedrive
) -> None:
    chair = fake.add_product("Стул венский (каталог)", "CHAIR-01")
    _, deal = await pd.create_contact_and_deal(new_contact(), new_deal())
    fake.calls.clear()
    await pd.set_deal_items(deal.id, (CHAIRS, TABLES), "RUB")
    assert paths(fake) == [
        f"DELETE /api/v2/deals/{deal.id}/products",
        "GET /api/v2/products/search",  # chair-01: the catalog's CHAIR-01
        "GET /api/v2/products/search",  # table-07: none
        "POST /api/v2/products",
        f"POST /api/v2/deals/{deal.id}/products/bulk",
    ]
    table = next(p for p in fake.products() if p["code"] == "table-07")
    assert table["prices"] == [{"currency": "RUB", "price": 6900}]
    assert sorted(fake.deal_products(deal.id)) == [
        ("Стол банкетный", Decimal(5), Decimal(6900)),
        ("Стул Венский", Decimal(40), Decimal(350)),
    ]
    assert {a["product_id"] for a in fake._deal_products_json(deal.id)} == {chair, table["id"]}
    assert fake.deal(deal.id)["value"] == 40 * 350 + 5 * 6900  # Pipedrive sums the products
    # The next event knows both SKUs: a detach and an attach, whatever the items.
    fake.calls.clear()
    await pd.set_deal_items(deal.id, (TABLES,), "RUB")
    assert paths(fake) == [
        f"DELETE /api/v2/deals/{deal.id}/products",
        f"POST /api/v2/deals/{deal.id}/products/bulk",
    ]
    assert fake.deal_products(deal.id) == [("Стол банкетный", Decimal(5), Decimal(6900))]
    fake.calls.clear()
    await pd.set_deal_items(deal.id, (), "RUB")
    assert paths(fake) == [f"DELETE /api/v2/deals/{deal.id}/products"]
    assert fake.deal_products(deal.id) == []


async def test_a_product_deleted_from_the_catalog_is_found_again(
    fake: FakePipedrive, pd: Pipedrive
) -> None:
    _, deal = await pd.create_contact_and_deal(new_contact(), new_deal())
    await pd.set_deal_items(deal.id, (CHAIRS,), "RUB")
    [old] = fake.products()
    fake.delete_product(old["id"])
    await pd.set_deal_items(deal.id, (CHAIRS,), "RUB")
    [new] = fake.products()
    assert new["id"] != old["id"]
    assert fake.deal_products(deal.id) == [("Стул Венский", Decimal(40), Decimal(350))]


async def test_more_than_a_hundred_attached_products_are_all_detached(
    fake: FakePipedrive, pd: Pipedrive
) -> None:
    _, deal = await pd.create_contact_and_deal(new_contact(), new_deal())
    items = tuple(OrderItem(f"sku-{n}", f"Вещь {n}", Decimal(1), Decimal(10)) for n in range(130))
    await pd.set_deal_items(deal.id, items, "RUB")
    assert len(fake.deal_products(deal.id)) == 130
    fake.calls.clear()
    await pd.set_deal_items(deal.id, items[:1], "RUB")
    assert paths(fake) == [
        f"DELETE /api/v2/deals/{deal.id}/products",
        f"DELETE /api/v2/deals/{deal.id}/products",
        f"POST /api/v2/deals/{deal.id}/products/bulk",
    ]
    assert len(fake.deal_products(deal.id)) == 1
