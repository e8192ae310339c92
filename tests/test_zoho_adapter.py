"""The Zoho CRM adapter through its `CrmAdapter` interface, against the stateful fake.

Every request an adapter built here sends is recorded and, after each test, checked
against Zoho's published v8 OpenAPI files (`tests.fakes.zoho_openapi`); when the files
are missing that check fails (it never passes by checking nothing). What every CRM
keeps alike (OAuth, 429s and network trouble, every field kind, refusals, notes, get and
create, the fake over a socket) is `tests/test_contract.py`'s, which runs Zoho too; here
is what only Zoho does.
"""

from __future__ import annotations

import asyncio
import functools
import tomllib
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr

from bridge import order_rules
from bridge.crm.base import RateLimiter
from bridge.crm.connection import OnCall, Wiring
from bridge.crm.zoho import Zoho, build_zoho
from bridge.crmconfig import config_snippet, schema_problems
from bridge.crypto import TokenCipher
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
)
from bridge.errors import PermanentCrmError, RateLimited
from bridge.rules import contact_matches
from bridge.settings import CrmConfig, FileConfig, Settings
from bridge.tokens import TokenPair
from tests.adapter_support import ROOT, example_section, fake_and_adapter, paths
from tests.cli_support import make_cli, write_config
from tests.clock import ManualClock
from tests.crm_cases import BY_NAME, CUSTOMER
from tests.fakes import zoho_org as org
from tests.fakes.memory import MemoryTokens, no_wait
from tests.fakes.openapi_check import SentRequests
from tests.fakes.zoho import FakeZoho
from tests.fakes.zoho_openapi import ZohoOpenApi

CONFIG = example_section("crm-zoho.example.toml", "zoho", enabled=True)
CASE = BY_NAME["zoho"]
new_deal, new_contact, every_kind_of_field = CASE.new_deal, CASE.new_contact, CASE.every_kind
SENT = SentRequests()


@pytest.fixture(autouse=True)
def requests_conform_to_openapi() -> Iterator[None]:
    """After each test: every request sent was one Zoho's v8 OpenAPI files allow."""
    yield from SENT.checked(ZohoOpenApi.beside_shared)  # raises when ../shared lacks them


def make_adapter(
    fake: FakeZoho,
    *,
    config: CrmConfig = CONFIG,
    tokens: MemoryTokens | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    real_limiter: bool = False,
    on_call: OnCall | None = None,
    **env: str,
) -> Zoho:
    """The adapter on the fake. `env` names ZOHO_* secrets in lower case
    (`zoho_refresh_token=…`; "" leaves one out); without `tokens` the store holds a live pair."""
    secrets = {"zoho_client_id": fake.client_id, "zoho_client_secret": fake.client_secret}
    secrets.update(env)
    if tokens is None:
        access, refresh = fake.issue_oauth_pair()
        tokens = MemoryTokens(TokenPair(access, refresh, fake.clock() + 3600))
    crm_env = {key.upper(): SecretStr(value) for key, value in secrets.items() if value}
    settings = Settings(_env_file=None, file=FileConfig(crm={"zoho": config}), crm_env=crm_env)
    recorder = SENT.recording(transport or fake.transport())
    adapter = build_zoho(
        Wiring("zoho", config, settings, tokens, recorder, on_call=on_call, clock=fake.clock)
    )
    if not real_limiter:
        http = adapter.connection.http
        http.limiter = RateLimiter(1000, sleep=no_wait)
        http.backoff_initial, http.backoff_max = 0.001, 0.01
    return adapter


def served_on(fake: FakeZoho, base_url: str) -> dict[str, Any]:
    """`make_adapter`'s options for the fake served on `base_url`: the API and the
    accounts server both there, which the fake then does not tell apart by host."""
    fake.check_hosts = False
    options = {**CONFIG.options, "accounts_url": base_url}
    update = {"base_url": base_url, "request_timeout_seconds": 0.5, "options": options}
    return {"config": CONFIG.model_copy(update=update)}


fake, zoho = fake_and_adapter(functools.partial(FakeZoho, CONFIG), make_adapter)


# ---- contacts ---------------------------------------------------------------------------


async def test_one_search_asks_for_every_key_and_the_flow_confirms(
    fake: FakeZoho, zoho: Zoho
) -> None:
    typed = fake.add_contact("Петров", "Иван", phone="8 (999) 123-45-67", telegram_id="")
    fake.add_contact("Петрова", phone="+7 999 123-45-670")  # contains the digits: not her
    found = await zoho.find_contact(CUSTOMER.lookup_keys(), contact_matches)
    assert found is not None and found.id == typed and found.deal_ids == ()
    assert paths(fake) == ["POST /crm/v8/__composite_requests"]
    search, deals = fake.calls[0].json["__composite_requests"]
    criteria = search["params"]["criteria"]
    assert "(Telegram_ID:equals:123456789)" in criteria
    assert "(Email:equals:ivan@example.com)" in criteria
    assert "Contact_Name = '@{s:$.data[0].id}'" in deals["body"]["select_query"]


async def test_the_deals_read_with_the_contact_serve_list_deals(fake: FakeZoho, zoho: Zoho) -> None:
    person = fake.add_contact("Петров", phone="+79991234567")
    deal_id = fake.add_deal(person, stage="В работе")
    found = await zoho.find_contact(CUSTOMER.lookup_keys(), contact_matches)
    assert found is not None
    assert [d.id for d in await zoho.list_deals(found)] == [deal_id]
    assert fake.count() == 1  # the one composite call read both
    # Only once: a later list reads again.
    await zoho.list_deals(found)
    assert paths(fake)[-1] == "POST /crm/v8/coql"


async def test_a_confirmed_hit_after_the_first_has_its_deals_read_apart(
    fake: FakeZoho, zoho: Zoho
) -> None:
    fake.add_contact("Петрова", phone="+7 999 123-45-670")  # first hit, not confirmed
    person = fake.add_contact("Петров", phone="+79991234567")
    deal_id = fake.add_deal(person)
    found = await zoho.find_contact(CUSTOMER.lookup_keys(), contact_matches)
    assert found is not None and found.id == person
    assert [d.id for d in await zoho.list_deals(found)] == [deal_id]
    assert paths(fake) == ["POST /crm/v8/__composite_requests", "POST /crm/v8/coql"]


async def test_a_refused_lookup_composite_falls_back_to_the_search_alone(
    fake: FakeZoho, zoho: Zoho
) -> None:
    person = fake.add_contact("Петров", phone="+79991234567")
    fake.fail_next(status=400, path_prefix="/crm/v8/__composite_requests")
    found = await zoho.find_contact(CUSTOMER.lookup_keys(), contact_matches)
    assert found is not None and found.id == person
    assert paths(fake) == ["POST /crm/v8/__composite_requests", "GET /crm/v8/Contacts/search"]
    fake.fail_next(status=400, path_prefix="/crm/v8/")  # a refusal of the search too is final
    fake.fail_next(status=400, path_prefix="/crm/v8/")
    with pytest.raises(PermanentCrmError):
        await zoho.find_contact(CUSTOMER.lookup_keys(), contact_matches)


async def test_more_than_25_hits_are_searched_page_by_page(fake: FakeZoho, zoho: Zoho) -> None:
    for n in range(30):
        fake.add_contact(f"Однофамилец {n}", email=f"x{n}.ivan@example.com")
    person = fake.add_contact("Петров", email="ivan@example.com")
    keys = (LookupKey(KeyKind.EMAIL, "ivan@example.com"),)
    found = await zoho.find_contact(keys, contact_matches)
    assert found is not None and found.id == person
    assert paths(fake) == ["POST /crm/v8/__composite_requests", "GET /crm/v8/Contacts/search"]


async def test_keys_keep_their_priority_among_the_hits(fake: FakeZoho, zoho: Zoho) -> None:
    by_email = fake.add_contact("Почта", email="ivan@example.com")
    by_telegram = fake.add_contact("Телеграм", telegram_id="123456789")
    found = await zoho.find_contact(CUSTOMER.lookup_keys(), contact_matches)
    assert found is not None and found.id == by_telegram != by_email


# ---- deals --------------------------------------------------------------------------------


async def test_a_refused_deal_in_the_composite_is_permanent_and_keeps_the_contact(
    fake: FakeZoho, zoho: Zoho
) -> None:
    bad = new_deal(fields=(FieldUpdate("Exam_Direction", FieldKind.SELECT, "ЕГЭ-2"),))
    with pytest.raises(PermanentCrmError, match="Exam_Direction"):
        await zoho.create_contact_and_deal(new_contact(), bad)
    assert len(fake.contacts()) == 1 and fake.deals() == []
    # The retry finds the contact by the normal search and creates only the deal.
    found = await zoho.find_contact(CUSTOMER.lookup_keys(), contact_matches)
    assert found is not None
    deal = await zoho.create_deal(found, new_deal())
    assert fake.deal(deal.id)["Contact_Name"] == {"id": found.id}


async def test_list_deals_is_one_coql_call_in_every_pipeline_and_stage(
    fake: FakeZoho, zoho: Zoho
) -> None:
    person = fake.add_contact("Петров")
    old = fake.add_deal(person, pipeline="Site", stage="В работе", modified=1_000)
    won = fake.add_deal(person, pipeline="Yandex", stage="Closed Won", modified=2_000)
    newest = fake.add_deal(person, pipeline="Partners", stage="Автооплата", modified=3_000)
    fake.add_deal(fake.add_contact("Другой"), stage="В работе")
    deals = await zoho.list_deals(Contact(id=person))
    assert [d.id for d in deals] == [newest, won, old]
    assert [d.is_closed for d in deals] == [False, True, False]
    assert paths(fake) == ["POST /crm/v8/coql"]
    assert await zoho.list_deals(Contact(id=fake.add_contact("Пусто"))) == []  # 204


# ---- notes ----------------------------------------------------------------------------------


# ---- credentials ---------------------------------------------------------------------------


async def test_bootstrap_from_a_refresh_token_and_the_answers_api_domain_wins() -> None:
    fake = FakeZoho(CONFIG, api_domain="https://eu-proxy.zohoapis.eu")
    _, refresh = fake.issue_oauth_pair()
    tokens = MemoryTokens()
    adapter = make_adapter(fake, tokens=tokens, zoho_refresh_token=refresh)
    assert await adapter.find_contact(CUSTOMER.lookup_keys(), contact_matches) is None
    assert fake.hosts == ["https://accounts.zoho.eu", "https://eu-proxy.zohoapis.eu"]
    assert tokens.saved and tokens.saved[0].refresh_token == refresh
    assert adapter.connection.health_details()["api_domain"] == "https://eu-proxy.zohoapis.eu"
    await adapter.connection.aclose()


async def test_a_request_sent_to_the_wrong_domain_is_resent_to_the_token_s(fake: FakeZoho) -> None:
    # After a restart the stored token is used with the data centre's default domain;
    # the org answers elsewhere: the 401 refreshes, and the resend goes there.
    fake.api_domain = "https://other.zohoapis.eu"
    adapter = make_adapter(fake)
    assert await adapter.find_contact(CUSTOMER.lookup_keys(), contact_matches) is None
    assert fake.hosts[-1] == "https://other.zohoapis.eu"
    await adapter.connection.aclose()


async def test_a_burst_of_token_requests_waits_instead_of_reauthorising(fake: FakeZoho) -> None:
    fake.token_requests_per_minute = 0
    adapter = make_adapter(fake)
    fake.expire_all_access_tokens()
    with pytest.raises(RateLimited) as raised:
        await adapter.find_contact(CUSTOMER.lookup_keys(), contact_matches)
    assert raised.value.retry_after == 60
    await adapter.connection.aclose()


# ---- credits and concurrency ------------------------------------------------------------------


async def test_the_pool_counts_what_zoho_counts(fake: FakeZoho, zoho: Zoho) -> None:
    contact, deal = await zoho.create_contact_and_deal(new_contact(), new_deal())
    await zoho.find_contact(CUSTOMER.lookup_keys(), contact_matches)
    await zoho.list_deals(contact)
    await zoho.update_deal(deal.id, every_kind_of_field())
    await zoho.add_note(deal.id, "Payment ID: pay_1")
    # Two composite calls (the new customer; the search with its deals), update, note.
    assert zoho.pool.used == fake.credits_used == 4
    details = zoho.connection.health_details()
    assert details["credits_used_24h"] == 4 and details["daily_credits"] == 50000


async def test_a_spent_pool_refuses_without_calling_until_credits_return(fake: FakeZoho) -> None:
    fake.clock = clock = ManualClock(1_700_000_000.0)
    config = CONFIG.model_copy(update={"options": {**CONFIG.options, "daily_credits": 2}})
    adapter = make_adapter(fake, config=config)
    await adapter.find_contact(CUSTOMER.lookup_keys(), contact_matches)
    clock.advance(3600)
    await adapter.find_contact(CUSTOMER.lookup_keys(), contact_matches)
    calls = fake.count()
    with pytest.raises(RateLimited) as raised:
        await adapter.find_contact(CUSTOMER.lookup_keys(), contact_matches)
    assert fake.count() == calls
    assert raised.value.retry_after == pytest.approx(86400 - 3600)
    clock.advance(86400 - 3600)
    await adapter.find_contact(CUSTOMER.lookup_keys(), contact_matches)
    await adapter.connection.aclose()


async def test_zohos_own_429_is_rate_limited(fake: FakeZoho, zoho: Zoho) -> None:
    fake.daily_credits = 0
    with pytest.raises(RateLimited):
        await zoho.find_contact(CUSTOMER.lookup_keys(), contact_matches)


async def test_calls_stay_under_the_concurrency_limit(fake: FakeZoho) -> None:
    fake.concurrency, fake.latency = 5, 0.02
    config = CONFIG.model_copy(update={"options": {**CONFIG.options, "concurrency": 5}})
    adapter = make_adapter(fake, config=config)
    person = fake.add_contact("Петров")
    await asyncio.gather(
        adapter.create_contact_and_deal(new_contact(), new_deal()),
        *(adapter.list_deals(Contact(id=person)) for _ in range(6)),
    )
    assert fake.throttled == 0
    await adapter.connection.aclose()


# ---- schema, options ---------------------------------------------------------------------------


async def test_check_compares_closed_stages_with_their_forecast_types(zoho: Zoho) -> None:
    schema = await zoho.schema()
    assert schema.closed_statuses == {"Closed Won", "Closed Lost"}
    wrong = CONFIG.model_copy(update={"closed_status_ids": ("Closed Won", "В работе")})
    assert [str(p) for p in schema_problems("zoho", wrong, schema)] == [
        'crm.zoho.closed_status_ids: "Closed Lost" is won or lost in the CRM',
        "crm.zoho.closed_status_ids: В работе: not a won or lost status in the CRM",
    ]
    snippet = config_snippet("zoho", CONFIG, schema)
    assert '#   closed_status_ids = ["Closed Lost", "Closed Won"]' in snippet
    assert '#     status Автооплата = "Автооплата"' in snippet


def test_every_data_centre_decides_both_hosts(fake: FakeZoho) -> None:
    for centre, api in (("us", "https://www.zohoapis.com"), ("ca", "https://www.zohoapis.ca")):
        config = CONFIG.model_copy(update={"options": {"data_centre": centre}})
        adapter = make_adapter(fake, config=config)
        assert str(adapter.connection.client.base_url).rstrip("/") == api
        assert adapter.connection.health_details()["api_domain"] == api


async def test_client_requests_carry_the_zoho_oauthtoken_header(fake: FakeZoho, zoho: Zoho) -> None:
    await zoho.find_contact(CUSTOMER.lookup_keys(), contact_matches)
    [request] = SENT[-1].requests
    assert request.headers["authorization"].startswith("Zoho-oauthtoken 1000.")
    assert isinstance(request, httpx.Request) and request.url.host == "www.zohoapis.eu"


# ---- the commands: auth, discover, check ---------------------------------------------------


def test_auth_discover_and_check_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake: FakeZoho
) -> None:
    """A Self Client's code through `crm-bridge auth zoho`, then `discover` and `check`, with
    only the section's ZOHO_* secrets in the environment (no refresh token yet)."""
    monkeypatch.chdir(tmp_path)  # no stray .env
    key = Fernet.generate_key().decode()
    cli = make_cli(tmp_path, ZOHO_CLIENT_ID=fake.client_id, BRIDGE_SECRET_KEY=key)
    cli.env["ZOHO_CLIENT_SECRET"] = fake.client_secret
    amo_off = write_config(tmp_path, replace={"enabled = true": "enabled = false"})
    zoho = (ROOT / "etc" / "crm-zoho.example.toml").read_text(encoding="utf-8")
    text = (
        amo_off.read_text(encoding="utf-8")
        + "\n"
        + zoho.replace("enabled = false", "enabled = true")
    )
    amo_off.write_text(text, encoding="utf-8")
    cli.transports = {"zoho": SENT.recording(fake.transport())}

    unauthorised = cli("check")
    assert unauthorised.exit_code == 1
    assert "crm.zoho: not authorised: run `crm-bridge auth zoho`" in unauthorised.stderr

    fake.register_code("1000.code")
    result = cli("auth", "zoho", "--code", "1000.code")
    assert result.exit_code == 0, result.output
    assert "zoho: tokens stored encrypted" in result.stdout
    assert fake.client_secret not in result.output
    pair = cli.with_store(lambda s: s.load_tokens("zoho"), cipher=TokenCipher([key]))
    assert pair is not None and pair.refresh_token
    assert pair.access_token not in result.output and pair.refresh_token not in result.output
    again = cli("auth", "zoho", "--code", "1000.code")  # a code works once
    assert again.exit_code == 1 and "authorization code rejected" in again.stderr

    discovered = cli("discover", "zoho")
    assert discovered.exit_code == 0, discovered.output
    assert '#   closed_status_ids = ["Closed Lost", "Closed Won"]' in discovered.stdout
    parsed = tomllib.loads(discovered.stdout)["crm"]["zoho"]
    assert parsed["deal_fields"]["payment_id"] == "Payment_ID"

    checked = cli("check")
    assert checked.exit_code == 0, checked.output
    assert "OK       crm.zoho: reachable and authorised (3 pipelines" in checked.stdout


# ---- orders (SPEC §8): the section's order settings and reads for the order contract ----

RENT = {  # the example's commented order settings: every status in the Site pipeline
    "new": "Новый заказ",
    "reserved": "Забронирован",
    "in_rent": "В аренде",
    "in_progress": "В работе",
    "archived": "Closed Won",
    "cancelled": "Closed Lost",
}
# The fields the org has for orders, and where an account keeps its INN.
ORDER_FIELDS = {**org.ORDER_FIELDS, "company_inn": org.ACCOUNT_INN}


def order_config(config: CrmConfig) -> CrmConfig:
    """`config` taking orders: every status in a stage of the Site pipeline, the fields."""
    stages = {status: {"pipeline_id": "Site", "status_id": stage} for status, stage in RENT.items()}
    raw = {**config.model_dump(), "order_stages": stages, "order_fields": ORDER_FIELDS}
    return CrmConfig.model_validate(raw)


def lookup(values: dict[str, Any], name: str) -> str | None:
    value = values.get(name)
    return str(value["id"]) if isinstance(value, dict) else None


def deal_stage(fake: FakeZoho, deal_id: str) -> tuple[str, str]:
    deal = fake.deal(deal_id)
    return str(deal["Pipeline"]), str(deal["Stage"])


ROMASHKA = Company("ООО Ромашка", inn="7701234567", phone="+74950001122", email="info@romashka.ru")


def company_rule(record: CompanyRecord, key: str) -> bool:
    return order_rules.company_matches(record, ROMASHKA, key)


with_orders = pytest.mark.parametrize(
    "zoho", [{"config": order_config(CONFIG)}], indirect=True, ids=["orders"]
)


@with_orders
async def test_an_order_of_a_company_costs_one_credit_a_step_and_stays_in_the_openapi(
    fake: FakeZoho, zoho: Zoho
) -> None:
    """Each order step is one call (the conformance fixture checks every request against
    the v8 OpenAPI files): the COQL company search, the account, the contact and deal
    linked in the composite create, the link, the stage move with its fields; items none."""
    assert await zoho.find_company(ROMASHKA, company_rule) is None
    company = await zoho.create_company(ROMASHKA)
    assert fake.companies()[0]["INN"] == "7701234567"
    assert fake.companies()[0]["Phone"] == "+74950001122"
    new = NewDeal("Заказ ord_1042", Decimal("48500"), "Site", "Новый заказ", (), company.id)
    contact, deal = await zoho.create_contact_and_deal(new_contact(), new)
    await zoho.link_contact_to_company(contact.id, company.id)
    change = DealChange(
        pipeline_id="Site",
        status_id="Забронирован",
        price=Decimal("52000.50"),
        fields=(FieldUpdate("Dismantle_Date", FieldKind.DATE, date(2026, 12, 5)),),
    )
    await zoho.change_deal(deal.id, change)
    before = len(fake.calls)
    await zoho.set_deal_items(deal.id, (), "RUB")
    assert len(fake.calls) == before and zoho.keeps_items is False
    assert paths(fake) == [
        "POST /crm/v8/coql",
        "POST /crm/v8/Accounts",
        "POST /crm/v8/__composite_requests",
        "PUT /crm/v8/Contacts/" + contact.id,
        "PUT /crm/v8/Deals/" + deal.id,
    ]
    stored = fake.deal(deal.id)
    assert stored["Account_Name"] == {"id": company.id}
    assert fake.contact(contact.id)["Account_Name"] == {"id": company.id}
    assert (stored["Stage"], stored["Amount"]) == ("Забронирован", 52000.5)
    assert stored["Dismantle_Date"] == "2026-12-05"
    found = await zoho.find_company(ROMASHKA, company_rule)
    assert found == CompanyRecord(company.id, "ООО Ромашка", "7701234567")


@with_orders
async def test_a_company_name_with_quotes_is_searched_safely(fake: FakeZoho, zoho: Zoho) -> None:
    quoted = Company("ООО 'Ромашка' 100%", inn="")
    made = fake.add_company("ООО 'Ромашка' 100%")
    found = await zoho.find_company(
        quoted, lambda record, key: order_rules.company_matches(record, quoted, key)
    )
    assert found is not None and found.id == made
