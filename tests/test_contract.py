"""The contract every adapter keeps, written once and run against every CRM's fake.

Credentials and the OAuth token endpoint are the `Connection`'s, so they behave alike in
every CRM: bootstrap from the environment, one refresh for concurrent requests, a refused
refresh naming no secret, client credentials checked before anything is sent, and
`crm-bridge auth`'s code exchange. Each CRM's own adapter file keeps its vendor quirks.
"""

from __future__ import annotations

import asyncio
import functools
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from types import ModuleType
from typing import Any

import httpx
import pytest

from bridge import rules
from bridge.crmconfig import schema_problems
from bridge.domain import (
    Contact,
    ContactPatch,
    FieldKind,
    FieldUpdate,
    KeyKind,
    LookupKey,
    NewContact,
    NewDeal,
)
from bridge.errors import (
    AuthError,
    ConfigError,
    PermanentCrmError,
    RateLimited,
    TransientCrmError,
)
from bridge.settings import CrmConfig
from bridge.tokens import TokenPair
from tests import test_amocrm_adapter as amo
from tests import test_bitrix24_adapter as bx
from tests import test_hubspot_adapter as hs
from tests import test_megaplan_adapter as mp
from tests import test_odoo_adapter as odoo
from tests import test_pipedrive_adapter as pd
from tests import test_salesforce_adapter as sf
from tests import test_zoho_adapter as zo
from tests.crm_cases import BY_NAME, CUSTOMER, NOTE, REFUSALS, CrmCase
from tests.fakes.memory import MemoryTokens
from tests.fakes.odoo import example_config as odoo_config
from tests.fakes.odoo import example_odoo
from tests.fakes.server import serve_in_thread

Fake = Any
Adapter = Any
Make = Callable[..., Adapter]  # the `make` fixture


@dataclass(frozen=True)
class AdapterCase:
    """How to put one CRM's adapter on its fake; `refused` is the vendor's word for a
    refresh token it no longer takes (echoed in the error), `token_path` its endpoint,
    `rotates` whether a refresh spends the refresh token; a CRM without OAuth (`has_oauth`
    False: an API key only) leaves the OAuth part out. `warm_up` is what the adapter pays
    once per process before its first operation (Odoo's session): paid before each test
    here, so the fake's call counts are the test's own."""

    kind: str
    make_fake: Callable[[], Fake]
    make_adapter: Callable[..., Adapter]
    config: CrmConfig
    new_contact: Callable[[], NewContact]
    new_deal: Callable[[], NewDeal]
    token_path: str = ""
    refused: str = ""
    rotates: bool = False
    served: Callable[[Fake, str], dict[str, Any]] | None = None  # make_adapter's options
    # when the fake is served on `base_url` (default: the section's base_url is it)
    absent_deal: str = "999"  # a deal id of the CRM's shape that no deal has

    has_oauth: bool = True
    client_app: bool = True  # False: a token endpoint without client credentials or codes
    warm_up: Callable[[Adapter], Awaitable[object]] | None = None
    variant: str = ""  # told apart in test ids: "odoo-19"
    crm_case: str = ""  # its CrmCase's name, where that is not `kind` (the Odoo 19 section)

    static_auth: bool = True  # a long-lived token besides OAuth (Zoho CRM has none)

    @property
    def minted(self) -> bool:
        """Sessions minted from credentials (auth = "minted"): no refresh token, nothing
        stored, no code to exchange; the refresh-token tests do not apply."""
        return self.config.auth == "minted"

    def over_socket(self, fake: Fake, base_url: str) -> dict[str, Any]:
        if self.served is not None:
            return self.served(fake, base_url)
        update = {"base_url": base_url, "request_timeout_seconds": 0.5}
        return {"config": self.config.model_copy(update=update)}

    @property
    def crm(self) -> CrmCase:
        """The CRM's case: its view of the fake's state and its wire shapes."""
        return BY_NAME[self.crm_case or self.kind]

    @property
    def oauth(self) -> CrmConfig:
        return self.config.model_copy(update={"auth": "oauth"})

    def __str__(self) -> str:
        return f"{self.kind}-{self.variant}" if self.variant else self.kind


def _from(
    module: ModuleType,
    make_fake: Callable[[], Fake],
    token_path: str = "",
    refused: str = "",
    **more: Any,
) -> AdapterCase:
    """The case of the CRM whose adapter tests are `module`: its `make_adapter`, `CONFIG`
    (unless `more` gives a config), `new_contact` and `new_deal`."""
    config = more.pop("config", None) or module.CONFIG
    new = module.new_contact, module.new_deal
    return AdapterCase(
        config.kind, make_fake, module.make_adapter, config, *new, token_path, refused, **more
    )


ADAPTER_CASES = [
    _from(
        amo, lambda: amo.FakeAmoCrm(amo.CONFIG), "/oauth2/", "Token has been revoked", rotates=True
    ),
    _from(hs, lambda: hs.FakeHubSpot(hs.CONFIG), "/oauth/", "BAD_REFRESH_TOKEN"),
    _from(
        pd,
        lambda: pd.FakePipedrive(pd.CONFIG, rate_limit=1000, search_limit=1000),
        "/oauth/",
        "Invalid refresh token",
    ),
    _from(
        bx,
        bx.FakeBitrix24,
        "/oauth/token",
        "invalid_grant",
        served=lambda fake, base_url: {
            "config": bx.CONFIG.model_copy(update={"request_timeout_seconds": 0.5}),
            "bitrix24_webhook_url": fake.webhook_url(base_url),
        },
        rotates=True,
    ),
    _from(
        sf,
        lambda: sf.FakeSalesforce(sf.CONFIG),
        "/services/oauth2/token",
        "invalid_grant",
        # Over a socket the fake is the My Domain, where client credentials are minted
        # (the JWT's audience would be a login host).
        served=lambda fake, base_url: {
            "config": sf.CONFIG.model_copy(
                update={
                    "base_url": base_url,
                    "request_timeout_seconds": 0.5,
                    "options": {**sf.CONFIG.options, "flow": "client_credentials"},
                }
            ),
        },
        absent_deal="006000000000999AAA",
    ),
    *(
        _from(
            odoo,
            functools.partial(example_odoo, version=version),
            config=odoo_config(),
            has_oauth=False,
            warm_up=odoo.warm_up,
            variant=str(version),  # 18: JSON-RPC, 19: JSON-2
            crm_case="odoo" if version == 18 else "odoo-19",
        )
        for version in (18, 19)
    ),
    _from(
        zo,
        lambda: zo.FakeZoho(zo.CONFIG),
        "/oauth/v2/token",
        "invalid_code",
        served=lambda fake, base_url: zo.served_on(fake, base_url),
        static_auth=False,
    ),
    _from(
        mp,
        lambda: mp.FakeMegaplan(rate_limit=1000),
        "/api/v3/auth/",
        "Invalid refresh token",
        rotates=True,
        client_app=False,  # its pair comes from a password grant (test_megaplan_adapter)
    ),
]
# The refresh-token OAuth tests: only over the CRMs that have it (not minted sessions).
OAUTH_CASES = [case for case in ADAPTER_CASES if case.has_oauth and not case.minted]
over_oauth = pytest.mark.parametrize("case", OAUTH_CASES, ids=str, indirect=True)
# Client credentials and authorization codes: only where the endpoint has a client app.
CLIENT_APP_CASES = [case for case in OAUTH_CASES if case.client_app]
over_client_apps = pytest.mark.parametrize("case", CLIENT_APP_CASES, ids=str, indirect=True)


@pytest.fixture(params=ADAPTER_CASES, ids=str)
def case(request: pytest.FixtureRequest) -> AdapterCase:
    chosen: AdapterCase = request.param
    return chosen


PHONE = "+79991234567"  # the phone of `case.new_contact()`


async def probe(adapter: Adapter, value: str = "probe@example.com") -> object:
    """One lookup through the flow's interface, which needs credentials: by e-mail one
    request (a phone may be searched in several forms, e.g. Pipedrive's), or by phone."""
    kind = KeyKind.EMAIL if "@" in value else KeyKind.PHONE
    return await adapter.find_contact([LookupKey(kind, value)], rules.contact_matches)


async def read(case: AdapterCase, adapter: Adapter) -> object:
    """One GET (a search may be a POST, never repeated blindly): a deal that is not there."""
    return await adapter.get_deal(case.absent_deal)


@pytest.fixture
async def make(case: AdapterCase, fake: Fake) -> AsyncIterator[Make]:
    """`make(tokens=None, **options)`: the case's adapter on the test's fake, in OAuth mode
    keeping its pair in `tokens` where they are given; each one is closed after the test."""
    made: list[Adapter] = []

    def make_adapter(tokens: MemoryTokens | None = None, **options: Any) -> Adapter:
        if tokens is not None:
            options |= {"config": case.oauth, "tokens": tokens}
        made.append(case.make_adapter(fake, **options))
        return made[-1]

    yield make_adapter
    for adapter in made:
        await adapter.connection.aclose()


@pytest.fixture
async def adapter(case: AdapterCase, fake: Fake, make: Make) -> Adapter:
    return await warmed(case, fake, make())


async def warmed(case: AdapterCase, fake: Fake, made: Adapter) -> Adapter:
    """The adapter with what it pays once per process paid (a minted session, Odoo's),
    and the fake's calls cleared: the counts in a test are the API's calls alone."""
    if case.minted:
        await made.connection.source.current()
    if case.warm_up is not None:
        await case.warm_up(made)
    fake.calls.clear()
    return made


# ---- rate limits and network trouble ------------------------------------------------


async def test_a_429_is_retried_quickly(fake: Fake, adapter: Adapter) -> None:
    fake.fail_next(1, status=429)
    assert await probe(adapter) is None
    assert fake.count(status=429) == 1
    assert fake.count() == 2


async def test_a_persistent_429_surfaces_rate_limited(fake: Fake, adapter: Adapter) -> None:
    fake.fail_next(10, status=429)
    with pytest.raises(RateLimited):
        await probe(adapter)
    assert fake.count() == adapter.connection.http.quick_tries


async def test_network_trouble_on_reads_is_retried_then_transient(
    case: AdapterCase, fake: Fake, adapter: Adapter
) -> None:
    fake.fail_next(1, kind="timeout")
    fake.fail_next(1, kind="drop")
    assert await read(case, adapter) is None
    assert fake.count() == 3
    fake.down()
    with pytest.raises(TransientCrmError, match="cannot connect"):
        await read(case, adapter)
    fake.up()


async def test_random_faults_are_reproducible_and_survivable(
    case: AdapterCase, fake: Fake, adapter: Adapter
) -> None:
    fake.fail_randomly(random.Random(7), p=0.5, kinds=("500", "timeout", "drop"))
    outcomes = []
    for _ in range(10):
        try:
            await read(case, adapter)
            outcomes.append("ok")
        except TransientCrmError:
            outcomes.append("failed")
    fake.fail_randomly(None)
    assert "ok" in outcomes
    assert fake.count() > 10
    faults = {call.fault for call in fake.calls} - {None}
    assert len(faults) >= 2 and faults <= {"500", "timeout", "drop"}


async def test_a_write_applied_then_timed_out_is_not_repeated(
    case: AdapterCase, fake: Fake, adapter: Adapter
) -> None:
    fake.fail_after_apply(1, kind="timeout")
    with pytest.raises(TransientCrmError, match="timeout"):
        await adapter.create_contact_and_deal(case.new_contact(), case.new_deal())
    assert fake.count(method="POST") == 1  # left to the flow's remote-state checks
    assert await probe(adapter, PHONE) is not None  # the crash window: what landed is found


async def test_a_value_that_cannot_be_sent_fails_before_any_call(
    case: AdapterCase, fake: Fake, adapter: Adapter
) -> None:
    field_id = case.config.deal_fields.last_payment_at or ""
    naive = FieldUpdate(field_id, FieldKind.DATETIME, datetime(2025, 1, 20))  # no zone
    with pytest.raises(PermanentCrmError, match=r"(deals|leads)\.update|crm\.lead\.write"):
        await adapter.update_deal("1", [naive])
    assert fake.count() == 0


# ---- OAuth --------------------------------------------------------------------------


@over_oauth
async def test_oauth_bootstraps_from_a_refresh_token_in_the_environment(
    case: AdapterCase, fake: Fake, make: Make
) -> None:
    _, refresh = fake.issue_oauth_pair()
    tokens = MemoryTokens()
    adapter = make(tokens, **{f"{case.kind}_refresh_token": refresh})
    assert await adapter.connection.credentials_problem() is None
    assert await probe(adapter) is None
    assert len(tokens.saved) == 1
    assert fake.count(path_prefix=case.token_path) == 1


@over_oauth
async def test_one_refresh_serves_concurrent_requests_after_a_401(
    case: AdapterCase, fake: Fake, make: Make
) -> None:
    access, refresh = fake.issue_oauth_pair(ttl=3600)
    tokens = MemoryTokens(TokenPair(access, refresh, fake.clock() + 3600))
    adapter = make(tokens)
    fake.expire_all_access_tokens()  # the CRM says 401 although we thought it valid
    results = await asyncio.gather(*(probe(adapter, f"+7999000000{n}") for n in range(2)))
    assert results == [None, None]
    assert fake.count(path_prefix=case.token_path) == 1
    [saved] = tokens.saved
    assert saved.access_token != access
    assert (adapter.connection.token_expires_at() or 0) > fake.clock()


@over_oauth
async def test_a_refused_refresh_token_is_an_auth_error_naming_no_secret(
    case: AdapterCase, fake: Fake, make: Make
) -> None:
    access, refresh = fake.issue_oauth_pair()
    await probe(make(MemoryTokens(TokenPair(access, refresh, 0.0))))
    # The refresh: a rotating CRM has spent `refresh` now.
    unknown = refresh if case.rotates else f"{refresh}-unknown"
    tokens = MemoryTokens(TokenPair(access, unknown, 0.0))
    with pytest.raises(AuthError, match="refresh token rejected") as error:
        await probe(make(tokens))
    message = str(error.value)
    assert case.refused in message and f"crm-bridge auth {case.kind}" in message
    assert unknown not in message and fake.client_secret not in message
    assert tokens.saved == []


@over_client_apps
async def test_oauth_without_client_credentials_says_so_and_sends_nothing(
    case: AdapterCase, fake: Fake, make: Make
) -> None:
    adapter = make(MemoryTokens(TokenPair("a", "r", 0.0)), **{f"{case.kind}_client_id": ""})
    wanted = f"{case.kind.upper()}_CLIENT_ID"
    assert wanted in (await adapter.connection.credentials_problem() or "")
    with pytest.raises(AuthError, match=wanted):
        await probe(adapter)
    assert fake.count() == 0
    problem = await make(MemoryTokens()).connection.credentials_problem()
    assert problem == f"not authorised: run `crm-bridge auth {case.kind}`"


@over_client_apps
async def test_exchange_code_stores_the_pair_and_uses_it(
    case: AdapterCase, fake: Fake, make: Make
) -> None:
    fake.register_code("code-1")
    tokens = MemoryTokens()
    adapter = make(tokens)
    pair = await adapter.connection.exchange_code("code-1")
    assert tokens.saved == [pair]
    assert await adapter.connection.credentials_problem() is None
    assert await probe(adapter) is None
    assert fake.count(path_prefix=case.token_path) == 1
    with pytest.raises(AuthError, match="authorization code rejected"):
        await adapter.connection.exchange_code("code-1")  # single use

    if not case.static_auth:
        return
    with pytest.raises(AuthError, match='needs auth = "oauth"'):
        await make().connection.exchange_code("code-2")
    assert tokens.saved == [pair]


@over_oauth
async def test_a_token_endpoint_in_trouble_is_transient_and_echoes_nothing(
    case: AdapterCase, fake: Fake, make: Make
) -> None:
    access, refresh = fake.issue_oauth_pair()
    tokens = MemoryTokens(TokenPair(access, refresh, 0.0))  # expired: must refresh
    adapter = make(tokens)
    # As many as a request's quick retries: a GET is retried, refresh and all.
    fake.fail_next(adapter.connection.http.quick_tries, status=503, path_prefix=case.token_path)
    with pytest.raises(TransientCrmError, match="HTTP 503") as error:
        await probe(adapter)
    assert fake.client_secret not in str(error.value) and refresh not in str(error.value)
    assert tokens.saved == []
    fake.stop_failing()
    assert await probe(adapter) is None  # the next attempt refreshes
    assert len(tokens.saved) == 1


async def test_the_fake_served_over_a_real_socket_is_the_same_api_with_the_same_faults(
    case: AdapterCase, fake: Fake, make: Make
) -> None:
    base_url, stop = serve_in_thread(fake)
    try:
        options = case.over_socket(fake, base_url)
        adapter = make(transport=httpx.AsyncHTTPTransport(), **options)
        contact, deal = await adapter.create_contact_and_deal(case.new_contact(), case.new_deal())
        found = await probe(adapter, PHONE)
        assert isinstance(found, Contact) and found.id == contact.id
        fake.asgi_hang_seconds = 5
        fake.fail_next(1, kind="timeout")
        fake.fail_next(1, kind="drop")
        assert await adapter.get_deal(deal.id) is not None  # retried past both
        await adapter.add_note(deal.id, "Оплата проведена\n  Payment ID: pay_1")
        assert await adapter.deal_notes(deal.id) == ["Оплата проведена\n  Payment ID: pay_1"]
        fake.down()
        with pytest.raises(TransientCrmError, match="503"):
            await read(case, adapter)
        fake.up()
    finally:
        stop()


# ---- deals, fields and notes, in each CRM's own shapes ------------------------------


def seed(case: AdapterCase, fake: Fake, **fields: Any) -> str:
    """An open deal of a contact a manager made, with fields by logical name."""
    contact = str(case.crm.add_contact(fake, "Иван", "+79990000000", None))
    return case.crm.seed_deal(fake, contact, "yandex_working", 1000, **fields)


async def test_create_contact_and_deal_writes_every_field_kind(
    case: AdapterCase, fake: Fake, adapter: Adapter
) -> None:
    crm = case.crm
    contact, deal = await adapter.create_contact_and_deal(crm.new_contact(), crm.new_deal())
    assert crm.stored_as(fake, deal.id, crm.stored) == dict(crm.stored)
    assert (deal.pipeline_id, deal.status_id, deal.contact_ids) == (*crm.partners, (contact.id,))
    assert crm.place(fake, deal.id) == crm.partners
    assert deal.fields[crm.field_id("payment_id")] == "pay_1"
    assert crm.contact_field(fake, contact.id, "telegram_id") == "123456789"
    assert crm.contact_field(fake, contact.id, "telegram_username") == "ivan"
    assert contact.phones == ("+79991234567",)
    # The deals the adapter says the contact has: none known (the flow reads them), none,
    # or the one just made with it.
    assert contact.deal_ids in (None, (), (deal.id,))


async def test_update_deal_sends_every_kind_in_a_shape_the_crm_accepts(
    case: AdapterCase, fake: Fake, adapter: Adapter
) -> None:
    deal = seed(case, fake, total_paid=100)
    await adapter.update_deal(deal, case.crm.every_kind())
    assert 200 <= fake.calls[-1].status < 300  # Salesforce says 204
    assert case.crm.stored_as(fake, deal, case.crm.stored) == dict(case.crm.stored)
    await adapter.update_deal(deal, [])
    assert fake.count() == 1


@pytest.mark.parametrize("refusal", REFUSALS)
async def test_refused_field_updates_are_permanent_and_apply_nothing(
    case: AdapterCase, fake: Fake, adapter: Adapter, refusal: str
) -> None:
    field, kind, value, error = case.crm.refused[refusal]
    deal = seed(case, fake, total_paid=100)
    good = FieldUpdate(case.crm.field_id("payment_id"), FieldKind.TEXT, "pay_1")
    bad = FieldUpdate(case.crm.field_id(field), kind, value)
    with pytest.raises(PermanentCrmError) as refused:
        await adapter.update_deal(deal, [good, bad])
    assert re.search(error, str(refused.value)), str(refused.value)
    assert not case.crm.deal_field(fake, deal, "payment_id")
    assert case.crm.deal_number(fake, deal, "total_paid") == 100
    assert fake.count() == 1  # a refusal is not retried


async def test_an_unknown_pipeline_or_status_is_permanent(
    case: AdapterCase, fake: Fake, adapter: Adapter
) -> None:
    crm = case.crm
    assert crm.bad_placements
    for changes in crm.bad_placements:
        with pytest.raises(PermanentCrmError, match=crm.bad_placement_error):
            await adapter.create_contact_and_deal(crm.new_contact(), crm.new_deal(**changes))
    assert crm.deals(fake) == []
    assert len(crm.contacts(fake)) <= (0 if crm.atomic_create else len(crm.bad_placements))


async def test_notes_round_trip_verbatim(case: AdapterCase, fake: Fake, adapter: Adapter) -> None:
    deal, quiet = seed(case, fake), seed(case, fake)
    await adapter.add_note(deal, NOTE)
    await adapter.add_note(deal, "second")
    written = [case.crm.read_note(NOTE), "second"]
    assert await adapter.deal_notes(deal) == written
    assert case.crm.notes(fake, deal) == written  # as a manager reads them
    assert await adapter.deal_notes(quiet) == []


async def test_list_deals_pages_through_every_deal(
    case: AdapterCase, fake: Fake, adapter: Adapter
) -> None:
    count, calls = case.crm.paging
    contact = str(case.crm.add_contact(fake, "Busy", "+79990000000", None))
    ids = [case.crm.seed_deal(fake, contact, "yandex_working", 1000 + n) for n in range(count)]
    deals = await adapter.list_deals(Contact(id=contact, deal_ids=tuple(ids)))
    assert sorted(deal.id for deal in deals) == sorted(ids)
    assert fake.count() == calls


async def test_401_with_a_long_lived_secret_is_an_auth_error(
    case: AdapterCase, fake: Fake, adapter: Adapter, make: Make
) -> None:
    case.crm.not_applicable("static_401")
    case.crm.revoke(fake)
    with pytest.raises(AuthError, match=case.crm.revoked_error):
        await probe(adapter)
    assert fake.count() == 1  # final: nothing to refresh
    assert adapter.connection.token_expires_at() is None
    missing = make(**{case.crm.static_secret: None})
    wanted = case.crm.static_secret.upper()
    assert wanted in (await missing.connection.credentials_problem() or "")
    with pytest.raises(AuthError, match=wanted):
        await probe(missing)
    assert fake.count() == 1  # nothing sent without it
    assert missing.connection.token_expires_at() is None


async def test_schema_lists_pipelines_and_the_configured_fields(
    case: AdapterCase, fake: Fake, adapter: Adapter
) -> None:
    schema = await adapter.schema()
    assert {pipeline.id for pipeline in schema.pipelines} == case.crm.pipelines
    fields = {(f.entity, f.id): f for f in schema.fields}
    ids = case.config.deal_fields
    subjects = fields[("leads", ids.subjects)]
    assert subjects.type == "multiselect"
    assert subjects.enums[str(case.crm.subjects[0])] == "Русский"
    assert fields[("leads", ids.direction)].enums[str(case.crm.direction)] == "ЕГЭ"
    assert fields[("leads", ids.total_paid)].type == case.crm.amount_type
    assert fields[("contacts", case.config.contact_fields.telegram_id)].type == "text"
    assert schema_problems(case.kind, case.config, schema) == []
    assert fake.count() == case.crm.schema_calls


async def test_on_call_names_each_operation(case: AdapterCase, fake: Fake, make: Make) -> None:
    seen: list[tuple[str, str, int]] = []
    made = make(on_call=lambda crm, op, _seconds, status: seen.append((crm, op, status)))
    adapter = await warmed(case, fake, made)
    seen.clear()
    await probe(adapter, PHONE)
    await adapter.create_contact_and_deal(case.crm.new_contact(), case.crm.new_deal())
    assert seen == [(case.kind, op, status) for op, status in case.crm.on_call]


# ---- contacts and deals through the flow's interface --------------------------------


async def test_nobody_found_is_none_after_the_lookups(
    case: AdapterCase, fake: Fake, adapter: Adapter
) -> None:
    case.crm.add_contact(fake, "Someone", "+79990000000", None)
    assert await adapter.find_contact(CUSTOMER.lookup_keys(), rules.contact_matches) is None
    assert fake.count() == case.crm.lookup_calls
    assert await adapter.find_contact((), rules.contact_matches) is None
    assert fake.count() == case.crm.lookup_calls  # no keys, no request


async def test_create_contact_then_deal_links_them(
    case: AdapterCase, fake: Fake, adapter: Adapter
) -> None:
    crm = case.crm
    contact = await adapter.create_contact(crm.new_contact())
    deal = await adapter.create_deal(contact, crm.new_deal())
    assert (contact.phones, contact.telegram_id, contact.telegram_username) == (
        ("+79991234567",),
        "123456789",
        "ivan",
    )
    assert contact.deal_ids in (None, ())  # a new contact: no deals, or not yet known
    assert crm.contacts(fake) == [contact.id]
    assert crm.contact_field(fake, contact.id, "telegram_id") == "123456789"
    assert (deal.pipeline_id, deal.status_id, deal.contact_ids) == (*crm.partners, (contact.id,))
    assert deal.fields[crm.field_id("payment_id")] == "pay_1"
    assert fake.count() == 2
    found = await adapter.find_contact(CUSTOMER.lookup_keys(), rules.contact_matches)
    assert found is not None and found.id == contact.id
    assert [listed.id for listed in await adapter.list_deals(found)] == [deal.id]


async def test_update_contact_fills_fields_and_skips_an_empty_patch(
    case: AdapterCase, fake: Fake, adapter: Adapter
) -> None:
    contact = str(case.crm.add_contact(fake, "Иван", PHONE, None))
    await adapter.update_contact(contact, ContactPatch(()))
    assert fake.count() == 0
    telegram_id = case.config.contact_fields.telegram_id or ""
    await adapter.update_contact(
        contact, ContactPatch((FieldUpdate(telegram_id, FieldKind.TEXT, "42"),))
    )
    assert fake.count() == 1
    assert case.crm.contact_field(fake, contact, "telegram_id") == "42"
    found = await probe(adapter, PHONE)  # the phone is untouched
    assert isinstance(found, Contact) and found.id == contact


async def test_get_deal_sees_a_manager_close_it_and_none_when_gone(
    case: AdapterCase, fake: Fake, adapter: Adapter
) -> None:
    contact = str(case.crm.add_contact(fake, "Иван", PHONE, None))
    deal_id = case.crm.seed_deal(fake, contact, "site_autopay", 1000, total_paid=700)
    deal = await adapter.get_deal(deal_id)
    assert deal is not None and not deal.is_closed and not deal.is_deleted
    assert deal.contact_ids == (contact,)
    assert Decimal(deal.fields[case.crm.field_id("total_paid")]) == 700
    case.crm.close_deal(fake, deal_id)
    closed = await adapter.get_deal(deal_id)
    assert closed is not None and closed.is_closed
    assert await adapter.get_deal("999999") is None


# Not Salesforce, which mints, nor Zoho, which refuses every auth but "oauth" first.
NOT_MINTING = [case for case in ADAPTER_CASES if not case.minted and case.kind != "zoho"]


@pytest.mark.parametrize("case", NOT_MINTING, ids=str, indirect=True)
def test_minted_sessions_need_an_adapter_that_mints_them(case: AdapterCase, fake: Fake) -> None:
    # auth = "minted" is the adapter's own session source (Salesforce's); a kind without
    # one is a configuration error, not a connection with no credentials.
    minted = case.config.model_copy(update={"auth": "minted"})
    with pytest.raises(ConfigError, match=f'auth = "minted": {case.kind} mints no sessions'):
        case.make_adapter(fake, config=minted)


@pytest.mark.parametrize(
    "case",
    [case for case in ADAPTER_CASES if case.kind not in ("bitrix24", "zoho")],
    ids=str,
    indirect=True,
)
def test_an_empty_base_url_is_refused_where_the_crm_does_not_derive_one(
    case: AdapterCase, fake: Fake
) -> None:
    # Settings let an empty base_url through for Zoho, whose data centre names the host
    # (and Bitrix24's webhook URL names it); any other CRM would send every request to a
    # relative URL and fail each one.
    empty = case.config.model_copy(update={"base_url": ""})
    with pytest.raises(ConfigError, match=rf"crm\.{case.kind}\.base_url is empty"):
        case.make_adapter(fake, config=empty)
