"""The contract every adapter keeps, written once and run against every CRM's fake.

Credentials and the OAuth token endpoint are the `Connection`'s, so they behave alike in
every CRM: bootstrap from the environment, one refresh for concurrent requests, a refused
refresh naming no secret, client credentials checked before anything is sent, and
`bridge auth`'s code exchange. Each CRM's own adapter file keeps its vendor quirks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from bridge import rules
from bridge.domain import KeyKind, LookupKey
from bridge.errors import AuthError
from bridge.settings import CrmConfig
from bridge.tokens import TokenPair
from tests import test_amocrm_adapter as amo
from tests import test_bitrix24_adapter as bx
from tests import test_hubspot_adapter as hs
from tests import test_pipedrive_adapter as pd
from tests.fakes.memory import MemoryTokens

Fake = Any
Adapter = Any


@dataclass(frozen=True)
class AdapterCase:
    """How to put one CRM's adapter on its fake; `refused` is the vendor's word for a
    refresh token it no longer takes (echoed in the error), `token_path` its endpoint,
    `rotates` whether a refresh spends the refresh token."""

    kind: str
    make_fake: Callable[[], Fake]
    make_adapter: Callable[..., Adapter]
    config: CrmConfig
    token_path: str
    refused: str
    rotates: bool

    @property
    def oauth(self) -> CrmConfig:
        return self.config.model_copy(update={"auth": "oauth"})

    def __str__(self) -> str:
        return self.kind


ADAPTER_CASES = [
    AdapterCase(
        "amocrm",
        lambda: amo.FakeAmoCrm(amo.CONFIG),
        amo.make_adapter,
        amo.CONFIG,
        "/oauth2/",
        "Token has been revoked",
        rotates=True,
    ),
    AdapterCase(
        "hubspot",
        lambda: hs.FakeHubSpot(hs.CONFIG),
        hs.make_adapter,
        hs.CONFIG,
        "/oauth/",
        "BAD_REFRESH_TOKEN",
        rotates=False,
    ),
    AdapterCase(
        "pipedrive",
        lambda: pd.FakePipedrive(pd.CONFIG, rate_limit=1000, search_limit=1000),
        pd.make_adapter,
        pd.CONFIG,
        "/oauth/",
        "Invalid refresh token",
        rotates=False,
    ),
    AdapterCase(
        "bitrix24",
        lambda: bx.FakeBitrix24(),
        bx.make_adapter,
        bx.CONFIG,
        "/oauth/token",
        "invalid_grant",
        rotates=True,
    ),
]


@pytest.fixture(params=ADAPTER_CASES, ids=str)
def case(request: pytest.FixtureRequest) -> AdapterCase:
    chosen: AdapterCase = request.param
    return chosen


@pytest.fixture
def fake(case: AdapterCase) -> Fake:
    return case.make_fake()


async def probe(adapter: Adapter, phone: str = "+79991234567") -> object:
    """One lookup through the flow's interface: a request that needs credentials."""
    return await adapter.find_contact([LookupKey(KeyKind.PHONE, phone)], rules.contact_matches)


async def test_oauth_bootstraps_from_a_refresh_token_in_the_environment(
    case: AdapterCase, fake: Fake
) -> None:
    _, refresh = fake.issue_oauth_pair()
    tokens = MemoryTokens()
    env = {f"{case.kind}_refresh_token": refresh}
    adapter = case.make_adapter(fake, config=case.oauth, tokens=tokens, **env)
    assert await adapter.connection.credentials_problem() is None
    assert await probe(adapter) is None
    assert len(tokens.saved) == 1
    assert fake.count(path_prefix=case.token_path) == 1
    await adapter.connection.aclose()


async def test_one_refresh_serves_concurrent_requests_after_a_401(
    case: AdapterCase, fake: Fake
) -> None:
    access, refresh = fake.issue_oauth_pair(ttl=3600)
    tokens = MemoryTokens(TokenPair(access, refresh, fake.clock() + 3600))
    adapter = case.make_adapter(fake, config=case.oauth, tokens=tokens)
    fake.expire_all_access_tokens()  # the CRM says 401 although we thought it valid
    results = await asyncio.gather(*(probe(adapter, f"+7999000000{n}") for n in range(3)))
    assert results == [None, None, None]
    assert fake.count(path_prefix=case.token_path) == 1
    [saved] = tokens.saved
    assert saved.access_token != access
    assert (adapter.connection.token_expires_at() or 0) > fake.clock()
    await adapter.connection.aclose()


async def test_a_refused_refresh_token_is_an_auth_error_naming_no_secret(
    case: AdapterCase, fake: Fake
) -> None:
    access, refresh = fake.issue_oauth_pair()
    first = case.make_adapter(
        fake, config=case.oauth, tokens=MemoryTokens(TokenPair(access, refresh, 0.0))
    )
    await probe(first)  # refreshes: a rotating CRM has spent `refresh` now
    unknown = refresh if case.rotates else f"{refresh}-unknown"
    tokens = MemoryTokens(TokenPair(access, unknown, 0.0))
    stale = case.make_adapter(fake, config=case.oauth, tokens=tokens)
    with pytest.raises(AuthError, match="refresh token rejected") as error:
        await probe(stale)
    message = str(error.value)
    assert case.refused in message and f"bridge auth {case.kind}" in message
    assert unknown not in message and fake.client_secret not in message
    assert tokens.saved == []
    for adapter in (first, stale):
        await adapter.connection.aclose()


async def test_oauth_without_client_credentials_says_so_and_sends_nothing(
    case: AdapterCase, fake: Fake
) -> None:
    tokens = MemoryTokens(TokenPair("a", "r", 0.0))
    env = {f"{case.kind}_client_id": ""}
    adapter = case.make_adapter(fake, config=case.oauth, tokens=tokens, **env)
    wanted = f"{case.kind.upper()}_CLIENT_ID"
    assert wanted in (await adapter.connection.credentials_problem() or "")
    with pytest.raises(AuthError, match=wanted):
        await probe(adapter)
    assert fake.count() == 0
    await adapter.connection.aclose()
    unauthorised = case.make_adapter(fake, config=case.oauth)
    problem = await unauthorised.connection.credentials_problem()
    assert problem == f"not authorised: run `bridge auth {case.kind}`"
    await unauthorised.connection.aclose()


async def test_exchange_code_stores_the_pair_and_uses_it(case: AdapterCase, fake: Fake) -> None:
    fake.register_code("code-1")
    tokens = MemoryTokens()
    adapter = case.make_adapter(fake, config=case.oauth, tokens=tokens)
    pair = await adapter.connection.exchange_code("code-1")
    assert tokens.saved == [pair]
    assert await adapter.connection.credentials_problem() is None
    assert await probe(adapter) is None
    assert fake.count(path_prefix=case.token_path) == 1
    with pytest.raises(AuthError, match="authorization code rejected"):
        await adapter.connection.exchange_code("code-1")  # single use
    await adapter.connection.aclose()

    static = case.make_adapter(fake)
    with pytest.raises(AuthError, match='needs auth = "oauth"'):
        await static.connection.exchange_code("code-2")
    assert tokens.saved == [pair]
    await static.connection.aclose()
