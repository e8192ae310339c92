"""The Bitrix24 adapter through its `CrmAdapter` interface, against the stateful fake."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest

from bridge import rules
from bridge.crm import BUILDERS
from bridge.crm.base import RateLimiter
from bridge.crm.bitrix24 import PREFETCH_TTL, Bitrix24, build_bitrix24
from bridge.crm.bitrix24_json import (
    command,
    deal_from_record,
    php_query,
)
from bridge.crm.bitrix24_rest import webhook_problem
from bridge.crm.connection import Wiring
from bridge.domain import Contact, FieldKind, FieldUpdate, KeyKind, LookupKey, NewContact, Utm
from bridge.errors import AuthError, PermanentCrmError, RateLimited, TransientCrmError
from bridge.settings import CrmConfig, FileConfig, Settings
from bridge.tokens import TokenPair
from tests.adapter_support import fake_and_adapter
from tests.clock import ManualClock
from tests.crm_cases import BY_NAME, CUSTOMER
from tests.fakes.bitrix24 import FakeBitrix24, example_config
from tests.fakes.bitrix24_portal import parse_php, substitute
from tests.fakes.memory import MemoryTokens, adapter_on

CONFIG = example_config(enabled=True)
SUBJECTS = "UF_CRM_SUBJECTS"
PAYMENT_ID, TOTAL = "UF_CRM_PAYMENT_ID", "UF_CRM_TOTAL_PAID"
CASE = BY_NAME["bitrix24"]
new_deal, new_contact = CASE.new_deal, CASE.new_contact
KEYS = CUSTOMER.lookup_keys()


def sleeping(clock: ManualClock) -> Callable[[float], Awaitable[None]]:
    """A sleep that moves `clock` (monotonic time, here) instead of waiting."""

    async def sleep(seconds: float) -> None:
        clock.advance(seconds)
        await asyncio.sleep(0)

    return sleep


def make_adapter(fake: FakeBitrix24, *, config: CrmConfig = CONFIG, **options: Any) -> Bitrix24:
    static = {"bitrix24_webhook_url": fake.webhook_url()}
    return adapter_on(build_bitrix24, fake, config, static=static, **options)


fake, bx = fake_and_adapter(functools.partial(FakeBitrix24, CONFIG), make_adapter)


def batch_commands(fake: FakeBitrix24, index: int = -1) -> dict[str, str]:
    """The commands of a logged batch request, decoded, method name first."""
    call = fake.calls[index]
    raw = (
        call.json["cmd"]
        if call.method == "POST"
        else parse_php([(k, v) for k, values in call.params.items() for v in values])["cmd"]
    )
    return {key: value.split("?")[0] for key, value in raw.items()}


# ---- pure mappers -------------------------------------------------------------------


def test_php_query_writes_nested_parameters_as_http_build_query_does() -> None:
    params = {
        "filter": {"CONTACT_ID": 5, "@ID": ["1", "2"]},
        "select": ["ID", "UF_*"],
        "fields": {"PHONE": [{"VALUE": "+7999", "VALUE_TYPE": "MOBILE"}], "X": None},
    }
    assert php_query(params) == [
        ("filter[CONTACT_ID]", "5"),
        ("filter[@ID][0]", "1"),
        ("filter[@ID][1]", "2"),
        ("select[0]", "ID"),
        ("select[1]", "UF_*"),
        ("fields[PHONE][0][VALUE]", "+7999"),
        ("fields[PHONE][0][VALUE_TYPE]", "MOBILE"),
        ("fields[X]", ""),
    ]


def test_batch_references_survive_encoding_and_resolve_as_php_does() -> None:
    text = command("crm.deal.add", {"fields": {"CONTACT_IDS": ["$result[c]"], "T": "№ $result[c]"}})
    method, _, query = text.partition("?")
    parsed = parse_php(parse_qsl(query))
    store: dict[str, Any] = {"result": {"c": 42}, "next": {}, "total": {}, "time": {}, "error": {}}
    assert method == "crm.deal.add"
    assert substitute(parsed, store) == {"fields": {"CONTACT_IDS": {"0": 42}, "T": "№ 42"}}
    # An empty lookup leaves the nearest array, not an id: never chain a write off one.
    store["result"]["tg"] = []
    assert substitute("$result[tg][0][ID]", store) == []


@pytest.mark.parametrize(
    ("semantic", "closed", "stage"),
    [("P", "N", "C1:EXECUTING"), ("S", "Y", "C1:WON"), ("F", "Y", "C1:LOSE")],
)
def test_a_deal_is_closed_by_its_stage_semantics(semantic: str, closed: str, stage: str) -> None:
    config = CONFIG.model_copy(update={"closed_status_ids": ()})
    record = {"ID": "7", "CATEGORY_ID": "1", "STAGE_ID": stage, "STAGE_SEMANTIC_ID": semantic,
              "CLOSED": closed, "CONTACT_ID": "5", "DATE_MODIFY": "2025-01-20T14:49:20+03:00",
              "UF_CRM_TOTAL_PAID": 1500.0, "UF_CRM_SUBJECTS": [45, 47]}  # fmt: skip
    deal = deal_from_record(record, config)
    assert deal.is_closed is (semantic != "P")
    assert (deal.pipeline_id, deal.contact_ids, deal.updated_at) == ("1", ("5",), 1737373760)
    assert deal.fields[TOTAL] == "1500" and deal.fields[SUBJECTS] == "45"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://example.bitrix24.ru/rest/1/abc123def/", None),
        ("https://example.bitrix24.ru/rest/1/abc123def", None),
        (None, "set BITRIX24_WEBHOOK_URL"),
        ("https://example.bitrix24.ru/rest/abc123def/", "must look like"),
        ("https://example.bitrix24.ru/", "must look like"),
    ],
)
def test_webhook_problem_never_quotes_the_url(url: str | None, problem: str | None) -> None:
    found = webhook_problem(url)
    assert (found is None) if problem is None else (problem in (found or ""))
    assert "abc123def" not in (found or "")


def test_the_registry_finds_the_builder() -> None:
    assert BUILDERS["bitrix24"] is build_bitrix24


# ---- finding contacts ---------------------------------------------------------------


async def test_telegram_hit_costs_one_batch_and_its_deals_come_with_it(
    fake: FakeBitrix24, bx: Bitrix24
) -> None:
    ivan = fake.add_contact("Иван", "Петров", phones=["+79991234567"], telegram_id="123456789")
    working = fake.add_deal(ivan, stage_id="C1:EXECUTING", fields={TOTAL: 1500}, modified=1000)
    autopay = fake.add_deal(ivan, stage_id="UC_AUTOPAY", modified=2000)  # excluded, yet open
    fake.add_deal(ivan, stage_id="WON", modified=3000)
    fake.add_deal(ivan, stage_id="C2:LOSE", modified=4000)
    fake.add_deal(fake.add_contact("Другой"), stage_id="NEW")

    found = await bx.find_contact(KEYS, rules.contact_matches)
    deals = await bx.list_deals(found) if found else []

    assert found is not None and found.id == str(ivan)
    assert (found.name, found.telegram_id, found.phones) == (
        "Иван Петров",
        "123456789",
        ("+79991234567",),
    )
    assert [deal.id for deal in deals] == [str(autopay), str(working)]  # newest first
    assert deals[1].fields[TOTAL] == "1500"
    assert not any(deal.is_closed for deal in deals)
    assert fake.count() == 1
    assert fake.calls[0].method == "GET" and fake.calls[0].path.endswith("/batch.json")
    assert batch_commands(fake) == {
        "tg": "crm.contact.list",
        "tg_deals": "crm.item.list",
        "comm0": "crm.duplicate.findbycomm",
        "comm1": "crm.duplicate.findbycomm",
    }


@pytest.mark.parametrize("typed", ["8 (999) 123-45-67", "+7 999 123 45 67", "79991234567"])
async def test_phone_typed_any_way_is_found_by_findbycomm_and_confirmed(
    fake: FakeBitrix24, bx: Bitrix24, typed: str
) -> None:
    ivan = fake.add_contact("Иван", phones=[typed])
    deal = fake.add_deal(ivan, stage_id="EXECUTING")
    fake.add_contact("Похожий", phones=["+7 999 123-45-678"])
    keys = (LookupKey(KeyKind.PHONE, "+79991234567"),)

    found = await bx.find_contact(keys, rules.contact_matches)
    deals = await bx.list_deals(found) if found else []

    assert found is not None and found.id == str(ivan) and found.phones == (typed,)
    assert [d.id for d in deals] == [str(deal)]
    assert fake.count() == 2  # lookup batch, then the hits' records and deals
    assert batch_commands(fake) == {
        "contacts": "crm.contact.list",
        f"deals_{ivan}": "crm.item.list",
    }


async def test_priority_is_telegram_then_phone_then_email(fake: FakeBitrix24, bx: Bitrix24) -> None:
    by_email = fake.add_contact("E", emails=["IVAN@example.com"])
    by_phone = fake.add_contact("P", phones=["+79991234567"])
    assert (await bx.find_contact(KEYS, rules.contact_matches)) == Contact(
        id=str(by_phone), name="P", phones=("+79991234567",), deal_ids=()
    )
    by_tg = fake.add_contact("T", telegram_id="123456789")
    found = await bx.find_contact(KEYS, rules.contact_matches)
    assert found is not None and found.id == str(by_tg)
    email_only = (LookupKey(KeyKind.EMAIL, "ivan@example.com"),)
    found = await bx.find_contact(email_only, rules.contact_matches)
    assert found is not None and found.id == str(by_email)


async def test_unconfirmed_hits_are_not_used(fake: FakeBitrix24, bx: Bitrix24) -> None:
    fake.add_contact("Ivan", phones=["+79991234567"], telegram_id="123456789")
    assert await bx.find_contact(KEYS, lambda contact, key: False) is None


async def test_telegram_hit_refused_by_confirm_falls_back_to_phone(
    fake: FakeBitrix24, bx: Bitrix24
) -> None:
    fake.add_contact("Телеграм", telegram_id="123456789")
    ivan = fake.add_contact("Иван", phones=["+79991234567"])

    def not_by_telegram(contact: Contact, key: LookupKey) -> bool:
        return key.kind is not KeyKind.TELEGRAM_ID and rules.contact_matches(contact, key)

    found = await bx.find_contact(KEYS, not_by_telegram)
    assert found is not None and found.id == str(ivan)


async def test_a_chained_lookup_that_found_no_one_lends_no_deals(
    fake: FakeBitrix24, bx: Bitrix24
) -> None:
    # No Telegram hit: `$result[tg][0][ID]` resolves to [] and the chained list reads
    # any deals at all. They must not become the phone hit's deals.
    other = fake.add_contact("Другой")
    fake.add_deal(other, stage_id="EXECUTING")
    ivan = fake.add_contact("Иван", phones=["+79991234567"])
    found = await bx.find_contact(KEYS, rules.contact_matches)
    assert found is not None and found.id == str(ivan)
    assert await bx.list_deals(found) == []


async def test_prefetched_deals_are_not_handed_out_late_or_to_another_contact_object(
    fake: FakeBitrix24,
) -> None:
    clock = ManualClock(5000.0)
    adapter = make_adapter(fake, clock=clock)
    ivan = fake.add_contact("Иван", telegram_id="123456789")
    found = await adapter.find_contact(KEYS, rules.contact_matches)
    assert found is not None
    before = fake.count()
    await adapter.list_deals(Contact(id=found.id))  # resumed from the journal: reads
    assert fake.count() == before + 1
    found = await adapter.find_contact(KEYS, rules.contact_matches)
    clock.advance(PREFETCH_TTL + 1)
    assert found is not None
    deal = fake.add_deal(ivan, stage_id="NEW")
    before = fake.count()
    assert [d.id for d in await adapter.list_deals(found)] == [str(deal)]
    assert fake.count() == before + 1
    await adapter.connection.aclose()


# ---- deals --------------------------------------------------------------------------


async def test_get_deal_has_every_linked_contact_and_none_when_gone(
    fake: FakeBitrix24, bx: Bitrix24
) -> None:
    ivan, anna = fake.add_contact("Иван"), fake.add_contact("Анна")
    deal_id = fake.add_deal(ivan, stage_id="C2:WON", other_contacts=[anna], fields={TOTAL: 10})
    deal = await bx.get_deal(str(deal_id))
    assert deal is not None
    assert (deal.contact_ids, deal.is_closed, deal.fields[TOTAL]) == (
        (str(ivan), str(anna)),
        True,
        "10",
    )
    assert fake.count() == 1
    fake.delete_deal(deal_id)
    assert await bx.get_deal(str(deal_id)) is None
    assert await bx.get_deal("not-a-number") is None


async def test_create_contact_and_deal_is_one_chained_batch(
    fake: FakeBitrix24, bx: Bitrix24
) -> None:
    contact, deal = await bx.create_contact_and_deal(new_contact(), new_deal())

    assert fake.count() == 1 and fake.calls[0].method == "POST"
    assert fake.calls[0].json["halt"] == 1
    assert batch_commands(fake) == {"contact": "crm.contact.add", "deal": "crm.deal.add"}
    [stored] = fake.deals()
    assert stored["ID"] == deal.id and stored["CONTACT_IDS"] == [int(contact.id)]
    assert (stored["CATEGORY_ID"], stored["STAGE_ID"], stored["OPPORTUNITY"]) == (
        "2",
        "C2:UC_AUTOPAY",
        "10000.00",
    )
    assert [c["ID"] for c in fake.contacts()] == [contact.id]
    assert deal.contact_ids == (contact.id,)


async def test_a_refused_contact_halts_the_batch_before_the_deal(
    fake: FakeBitrix24, bx: Bitrix24
) -> None:
    bad = NewContact(CUSTOMER, Utm(), (FieldUpdate("UF_CRM_NO_SUCH", FieldKind.TEXT, "x"),))
    with pytest.raises(PermanentCrmError, match=r"\[contact\].*UF_CRM_NO_SUCH"):
        await bx.create_contact_and_deal(bad, new_deal())
    assert fake.contacts() == [] and fake.deals() == []
    assert fake.methods == ["crm.contact.add"]


async def test_update_deal_is_a_post_without_a_feed_event(fake: FakeBitrix24, bx: Bitrix24) -> None:
    deal_id = fake.add_deal(fake.add_contact("Иван"), stage_id="EXECUTING")
    await bx.update_deal(str(deal_id), (FieldUpdate(PAYMENT_ID, FieldKind.TEXT, "pay_1"),))
    call = fake.calls[-1]
    assert (call.method, call.path.rsplit("/", 1)[-1]) == ("POST", "crm.deal.update.json")
    assert call.json["params"] == {"REGISTER_SONET_EVENT": "N"}


async def test_a_note_on_a_deal_that_is_not_there_is_refused(bx: Bitrix24) -> None:
    # Notes round trip verbatim: test_contract's test_notes_round_trip_verbatim.
    with pytest.raises(PermanentCrmError, match="Entity not found"):
        await bx.add_note("999999", "Payment ID: pay_1")


# ---- limits and faults --------------------------------------------------------------


async def test_query_limit_exceeded_is_rate_limited_and_retried_after_the_bucket_drains() -> None:
    clock = ManualClock(1000.0)
    fake = FakeBitrix24(CONFIG, monotonic=clock)
    adapter = make_adapter(fake, limiter=RateLimiter(1000, clock=clock, sleep=sleeping(clock)))
    fake.fill_bucket()
    assert await adapter.find_contact(KEYS, rules.contact_matches) is None
    assert [call.status for call in fake.calls] == [503, 200]
    assert fake.throttled == 1
    assert clock.now >= 1001.0  # waited the second Retry-After asked for
    await adapter.connection.aclose()


async def test_a_bucket_that_stays_full_surfaces_rate_limited(
    fake: FakeBitrix24, bx: Bitrix24
) -> None:
    fake.drain_per_second = 0
    fake.fill_bucket()
    with pytest.raises(RateLimited, match="429"):
        await bx.update_deal("1", (FieldUpdate(PAYMENT_ID, FieldKind.TEXT, "x"),))
    assert fake.count() == 3  # not applied, so retried even as a POST


async def test_operation_time_limit_alone_or_in_a_batch_is_rate_limited(
    fake: FakeBitrix24, bx: Bitrix24
) -> None:
    deal_id = fake.add_deal(fake.add_contact("Иван"), stage_id="NEW")
    fake.block_method("crm.deal.update")
    with pytest.raises(RateLimited):
        await bx.update_deal(str(deal_id), (FieldUpdate(PAYMENT_ID, FieldKind.TEXT, "x"),))
    fake.block_method("crm.duplicate.findbycomm")
    with pytest.raises(RateLimited, match=r"\[comm0\].*OPERATION_TIME_LIMIT"):
        await bx.find_contact(KEYS, rules.contact_matches)


async def test_the_adapters_own_limiter_keeps_the_bucket_from_overflowing() -> None:
    clock = ManualClock(1000.0)
    fake = FakeBitrix24(CONFIG, bucket_size=50, drain_per_second=2, monotonic=clock)
    limiter = RateLimiter(
        CONFIG.rate_limit_per_second, burst=10, clock=clock, sleep=sleeping(clock)
    )
    adapter = make_adapter(fake, limiter=limiter)
    for _ in range(150):
        await adapter.get_deal("1")
    assert fake.throttled == 0
    assert clock.now - 1000.0 >= (150 - 10) / 2 - 1
    await adapter.connection.aclose()


async def test_server_errors_are_retried_for_reads_only(fake: FakeBitrix24, bx: Bitrix24) -> None:
    fake.fail_next(2, status=500)
    assert await bx.find_contact(KEYS, rules.contact_matches) is None
    assert fake.count() == 3
    deal_id = fake.add_deal(fake.add_contact("Иван"), stage_id="NEW")
    fake.fail_next(1, status=500, method="POST")
    before = fake.count()
    with pytest.raises(TransientCrmError):
        await bx.add_note(str(deal_id), "Payment ID: x")
    assert fake.count() == before + 1


async def test_a_create_applied_then_lost_is_found_again(fake: FakeBitrix24, bx: Bitrix24) -> None:
    fake.fail_after_apply(1, kind="timeout", method="POST")
    with pytest.raises(TransientCrmError, match="timeout"):
        await bx.create_contact_and_deal(new_contact(), new_deal())
    found = await bx.find_contact(KEYS, rules.contact_matches)
    assert found is not None
    [deal] = await bx.list_deals(found)
    assert rules.deal_carrying_payment([deal], CONFIG, "pay_1") == deal
    assert fake.count() == 2  # the lookup read the deals too


# ---- credentials --------------------------------------------------------------------


async def test_the_webhook_secret_never_shows_in_errors_or_call_names(fake: FakeBitrix24) -> None:
    seen: list[str] = []
    secret = fake.webhook_url().split("/rest/1/")[1].strip("/")
    adapter = make_adapter(
        fake,
        on_call=lambda crm, op, elapsed, status: seen.append(op),
        bitrix24_webhook_url=f"https://example.bitrix24.ru/rest/1/{secret}/",
    )
    errors: list[Exception] = []
    for action in (
        lambda: adapter.update_deal("1", (FieldUpdate("UF_CRM_NO_SUCH", FieldKind.TEXT, "x"),)),
        lambda: adapter.get_deal("1"),
    ):
        try:
            await action()
        except (PermanentCrmError, TransientCrmError) as exc:
            errors.append(exc)
    fake.fail_next(3, status=502)
    with pytest.raises(TransientCrmError) as failed:
        await adapter.find_contact(KEYS, rules.contact_matches)
    errors.append(failed.value)
    fake.down()
    with pytest.raises(TransientCrmError) as refused:
        await adapter.get_deal("1")
    errors.append(refused.value)
    assert errors and all(secret not in str(error) for error in errors)
    assert "/rest/crm.deal.update.json" in str(errors[0])
    assert all(secret not in op for op in seen)
    assert all(call.path.startswith(f"/rest/1/{secret}/") for call in fake.calls)
    await adapter.connection.aclose()


async def test_a_wrong_or_malformed_webhook_is_an_auth_error(fake: FakeBitrix24) -> None:
    wrong = make_adapter(fake, bitrix24_webhook_url="https://example.bitrix24.ru/rest/1/nope/")
    with pytest.raises(AuthError, match="401"):
        await wrong.get_deal("1")
    assert await wrong.connection.credentials_problem() is None
    malformed = make_adapter(fake, bitrix24_webhook_url="https://example.bitrix24.ru/hook")
    assert "must look like" in (await malformed.connection.credentials_problem() or "")
    for adapter in (wrong, malformed):
        await adapter.connection.aclose()


async def test_a_webhook_without_the_crm_scope_pauses_instead_of_failing(
    fake: FakeBitrix24, bx: Bitrix24
) -> None:
    fake.drop_scope()
    with pytest.raises(AuthError, match="insufficient_scope"):
        await bx.get_deal("1")


def oauth_config() -> CrmConfig:
    return CONFIG.model_copy(update={"auth": "oauth"})


async def test_oauth_sends_the_token_as_auth_and_refreshes_once_on_expired_token(
    fake: FakeBitrix24,
) -> None:
    access, refresh = fake.issue_oauth_pair(ttl=3600)
    tokens = MemoryTokens(TokenPair(access, refresh, fake.clock() + 3600))
    adapter = make_adapter(fake, config=oauth_config(), tokens=tokens)
    await adapter.get_deal("1")
    assert fake.calls[-1].params["auth"] == [access]
    assert fake.calls[-1].path == "/rest/batch.json"
    fake.expire_all_access_tokens()
    await asyncio.gather(*(adapter.get_deal("1") for _ in range(4)))
    assert len(tokens.saved) == 1  # one refresh for all of them
    assert fake.count(path_prefix="/oauth/token") == 1
    assert fake.calls[-1].params["auth"] == [tokens.saved[0].access_token]
    assert adapter.connection.token_expires_at() == pytest.approx(fake.clock() + 3600, abs=5)
    await adapter.connection.aclose()


# ---- schema -------------------------------------------------------------------------


async def test_health_shows_the_rate_and_no_token_expiry(bx: Bitrix24) -> None:
    assert bx.connection.health_details() == {"rate_limit_per_second": 1000.0}
    assert bx.connection.token_expires_at() is None


async def test_a_real_transport_is_built_when_none_is_given() -> None:
    config = CONFIG.model_copy(update={"request_timeout_seconds": 0.5})
    settings = Settings(_env_file=None, file=FileConfig(crm={"bitrix24": config}),
                        bitrix24_webhook_url="http://127.0.0.1:9/rest/1/abc/")  # fmt: skip
    adapter = build_bitrix24(Wiring("bitrix24", config, settings, MemoryTokens()))
    adapter.connection.http.backoff_initial, adapter.connection.http.backoff_max = 0.001, 0.01
    with pytest.raises(TransientCrmError, match="cannot connect") as failed:
        await adapter.get_deal("1")
    assert "abc" not in str(failed.value)
    assert isinstance(adapter.connection.http.client, httpx.AsyncClient)
    await adapter.connection.aclose()
