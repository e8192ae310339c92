"""The Salesforce adapter's own quirks through its `CrmAdapter` interface, against the
stateful fake org: the lookup in one request, composite creates, a duplicate Telegram id,
the daily allocation, sessions, schema for `bridge check` / `discover`, options."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridge import checks
from bridge.crm.salesforce import Salesforce, build_salesforce
from bridge.crm.salesforce_json import MASTER_RECORD_TYPE
from bridge.crmconfig import config_snippet, schema_problems
from bridge.domain import (
    Contact,
    Customer,
    FieldKind,
    FieldUpdate,
    KeyKind,
    LookupKey,
    NewContact,
    NewDeal,
    Utm,
)
from bridge.errors import AuthError, ConfigError, RateLimited
from bridge.rules import contact_matches
from bridge.settings import CrmConfig, FileConfig, Settings, load_file_config
from tests.fakes.memory import adapter_on
from tests.fakes.salesforce import PARTNERS, SITE, YANDEX, FakeSalesforce
from tests.fakes.server import serve_in_thread

ROOT = Path(__file__).resolve().parent.parent
CONFIG = (
    load_file_config(ROOT / "etc" / "crm-salesforce.example.toml")
    .crm["salesforce"]
    .model_copy(update={"base_url": "https://example.my.salesforce.com", "enabled": True})
)
CUSTOMER = Customer("Иван", "Петров", "+79991234567", "ivan@example.com", "123456789", "ivan")
NOW = 1_796_300_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


class NoTokens:
    async def load_tokens(self, crm: str) -> None:
        return None

    async def save_tokens(self, crm: str, pair: Any) -> None:
        raise AssertionError("Salesforce stores no tokens")


async def no_wait(seconds: float) -> None:
    await asyncio.sleep(0)


def make_adapter(fake: FakeSalesforce, *, config: CrmConfig = CONFIG, **env: Any) -> Salesforce:
    """The adapter on `fake`, signing with the key in the fake's key file."""
    key = {"salesforce_private_key_file": fake.private_key_file}
    return adapter_on(build_salesforce, fake, config, static={}, **{**key, **env})


@pytest.fixture
def fake() -> FakeSalesforce:
    return FakeSalesforce(clock=Clock())


@pytest.fixture
async def sf(fake: FakeSalesforce, tmp_path: Path) -> AsyncIterator[Salesforce]:
    adapter = make_adapter(fake)
    yield adapter
    await adapter.connection.aclose()


def rest_calls(fake: FakeSalesforce) -> list[str]:
    return [f"{c.method} {c.path}" for c in fake.calls if c.path.startswith("/services/data/")]


FIELDS = (
    FieldUpdate("Subjects__c", FieldKind.MULTISELECT, ("Russian", "Math")),
    FieldUpdate("Exam_Direction__c", FieldKind.SELECT, "OGE"),
    FieldUpdate("Total_Paid__c", FieldKind.NUMBER, Decimal("10000")),
    FieldUpdate("Payment_Id__c", FieldKind.TEXT, "pay_1"),
)


def new_contact() -> NewContact:
    telegram = (FieldUpdate("Telegram_Id__c", FieldKind.TEXT, "123456789"),)
    return NewContact(CUSTOMER, Utm(), telegram)


def new_deal(pipeline: str = SITE, stage: str = "Autopay") -> NewDeal:
    return NewDeal("Оплата Русский - Иван Петров", Decimal("10000"), pipeline, stage, FIELDS)


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


async def test_many_open_deals_page_through(fake: FakeSalesforce, tmp_path: Path) -> None:
    paged = FakeSalesforce(clock=Clock(), query_batch_size=3)
    contact = paged.add_contact(LastName="Петров")
    made = {paged.add_deal(contact) for _ in range(7)}
    adapter = make_adapter(paged)
    deals = await adapter.list_deals(Contact(id=contact))
    await adapter.connection.aclose()
    assert {d.id for d in deals} == made and len(rest_calls(paged)) == 3


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


async def test_schema_check_and_discover(
    fake: FakeSalesforce, sf: Salesforce, tmp_path: Path
) -> None:
    schema = await sf.schema()
    assert {p.id for p in schema.pipelines} == {SITE, YANDEX, PARTNERS}
    assert schema_problems("salesforce", CONFIG, schema) == []
    snippet = config_snippet("salesforce", CONFIG, schema)
    assert 'subjects = "Subjects__c"' in snippet and '"Русский" = "Russian"' in snippet
    settings = Settings(
        _env_file=None,
        file=FileConfig(crm={"salesforce": CONFIG}),
        salesforce_client_id=fake.consumer_key,
        salesforce_private_key_file=fake.private_key_file,
    )
    transports = {"salesforce": fake.transport()}
    findings = await checks.crm_findings("salesforce", settings, NoTokens(), transports, fake.clock)
    assert [f.level for f in findings] == ["ok", "ok"], findings
    wrong = CONFIG.model_copy(
        update={
            "excluded_status_ids": ("Autopay",),
            "default_pipeline": CONFIG.default_pipeline.model_copy(
                update={"status_id": "Partner Review"}
            ),
        }
    )
    assert [p.key for p in schema_problems("salesforce", wrong, schema)] != []


async def test_an_org_without_record_types(tmp_path: Path) -> None:
    flat = FakeSalesforce(clock=Clock(), record_types=False)
    adapter = make_adapter(flat)
    schema = await adapter.schema()
    assert [p.id for p in schema.pipelines] == [MASTER_RECORD_TYPE]
    contact = flat.add_contact(LastName="Петров")
    deal = await adapter.create_deal(
        Contact(id=contact), new_deal(MASTER_RECORD_TYPE, "Prospecting")
    )
    read = await adapter.get_deal(deal.id)
    await adapter.connection.aclose()
    assert read is not None and read.pipeline_id == MASTER_RECORD_TYPE


async def test_there_is_no_code_to_exchange(sf: Salesforce) -> None:
    with pytest.raises(AuthError, match="no code to exchange"):
        await sf.connection.exchange_code("abc")


async def test_credentials_are_checked_without_a_call(fake: FakeSalesforce, tmp_path: Path) -> None:
    adapter = make_adapter(fake, salesforce_client_id="")
    assert "SALESFORCE_CLIENT_ID" in (await adapter.connection.credentials_problem() or "")
    await adapter.connection.aclose()
    assert fake.calls == []


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"flow": "password"}, "jwt_bearer"),
        ({"api_version": "latest"}, "68.0"),
        ({"login_url": "login.salesforce.com"}, "https://login"),
        ({"api_stop_percent": 0}, "from 1 to 100"),
        ({"session_timeout_seconds": "2h"}, "from 60"),
        ({"search_rate": 1}, "not known to Salesforce"),
    ],
)
def test_options_are_validated(
    fake: FakeSalesforce, tmp_path: Path, options: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        make_adapter(fake, config=CONFIG.model_copy(update={"options": options}))


async def test_the_fake_serves_over_a_real_socket(tmp_path: Path) -> None:
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
