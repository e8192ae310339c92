"""Salesforce sessions (`bridge.crm.salesforce_auth`) against the fake org's token endpoint:
minted on first use, after the session timeout and on a 401, one mint at a time; refusals
pause the CRM with Salesforce's reason and never a secret."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridge.crm.base import CrmHttp, RateLimiter
from bridge.crm.salesforce_auth import Flow, SessionMinter, SessionSource
from bridge.crm.salesforce_json import data_path
from bridge.errors import AuthError, TransientCrmError
from bridge.settings import CrmSecrets
from bridge.tokens import BearerAuth
from tests.clock import ManualClock
from tests.fakes.salesforce import FakeSalesforce

MY_DOMAIN = "https://example.my.salesforce.com"
LOGIN = "https://login.salesforce.com"
QUERY = f"{data_path('68.0')}/query"
NOW = 1_796_300_000.0


@dataclass
class Rig:
    fake: FakeSalesforce
    source: SessionSource
    minter: SessionMinter
    http: CrmHttp
    clock: ManualClock

    async def query(self) -> httpx.Response:
        return await self.http.request("GET", QUERY, params={"q": "SELECT Id FROM Contact"})


def session_minter(http: CrmHttp, flow: Flow, secrets: CrmSecrets, **options: Any) -> SessionMinter:
    return SessionMinter("salesforce", http, flow, login_url=LOGIN, secrets=secrets, **options)


def rig(
    tmp_path: Path,
    *,
    flow: Flow = "jwt_bearer",
    key: bytes | None = None,
    secret: str | None = None,
    username: str = "bridge-integration@example.com",
    **fake_kw: Any,
) -> tuple[Rig, httpx.AsyncClient]:
    clock = ManualClock(NOW)
    fake = FakeSalesforce(clock=clock, **fake_kw)
    key_file = tmp_path / "salesforce.key"
    key_file.write_bytes(fake.private_key_pem if key is None else key)
    client = httpx.AsyncClient(base_url=MY_DOMAIN, transport=fake.transport())
    http = CrmHttp("salesforce", client, RateLimiter(1000), backoff_initial=0, backoff_max=0)
    secrets = CrmSecrets(
        "SALESFORCE",
        "PRIVATE_KEY_FILE",
        str(key_file),
        fake.consumer_key,
        fake.client_secret if secret is None else secret,
    )
    minter = session_minter(http, flow, secrets, username=username, clock=clock)
    source = SessionSource(
        "salesforce", minter.mint, minter.missing, session_timeout=7200, clock=clock
    )
    client.auth = BearerAuth(source)
    return Rig(fake, source, minter, http, clock), client


@pytest.fixture
async def jwt(tmp_path: Path) -> AsyncIterator[Rig]:
    made, client = rig(tmp_path)
    async with client:
        yield made


async def test_the_first_request_mints_a_session_and_later_ones_reuse_it(jwt: Rig) -> None:
    await jwt.query()
    await jwt.query()
    assert jwt.fake.tokens_minted == 1 and jwt.source.minted == 1
    token_calls = [c for c in jwt.fake.calls if c.path.endswith("/oauth2/token")]
    assert len(token_calls) == 1
    assert jwt.source.instance_url == MY_DOMAIN
    assert jwt.source.expires_at() == NOW + 6900


async def test_a_session_that_ended_is_minted_again_on_the_401(jwt: Rig) -> None:
    await jwt.query()
    jwt.fake.expire_sessions()
    response = await jwt.query()
    assert response.status_code == 200
    assert jwt.fake.tokens_minted == 2
    assert jwt.fake.count(status=401) == 1


async def test_a_session_is_minted_before_the_timeout_ends_it(jwt: Rig) -> None:
    await jwt.query()
    jwt.clock.advance(6900)
    await jwt.query()
    assert jwt.fake.tokens_minted == 2 and jwt.fake.count(status=401) == 0


async def test_concurrent_requests_share_one_mint(jwt: Rig) -> None:
    await jwt.query()
    jwt.fake.expire_sessions()
    answers = await asyncio.gather(*(jwt.query() for _ in range(8)))
    assert {a.status_code for a in answers} == {200}
    assert jwt.fake.tokens_minted == 2


async def test_an_unapproved_user_pauses_with_salesforces_reason(tmp_path: Path) -> None:
    made, client = rig(tmp_path, username="someone@example.com")
    async with client:
        with pytest.raises(AuthError) as refused:
            await made.query()
    message = str(refused.value)
    assert "invalid_grant: user hasn't approved this consumer" in message
    assert "pre-authorised" in message
    assert made.fake.count(path_prefix="/services/data") == 0


async def test_a_key_the_app_does_not_know_is_refused(tmp_path: Path) -> None:
    other = FakeSalesforce().private_key_pem
    made, client = rig(tmp_path, key=other)
    async with client:
        with pytest.raises(AuthError, match="invalid_grant: invalid assertion"):
            await made.query()
        assert other.decode() not in str(made.fake.calls)


async def test_an_unreadable_key_is_a_credentials_problem_without_a_call(tmp_path: Path) -> None:
    made, client = rig(tmp_path, key=b"-----BEGIN CERTIFICATE-----\nnot a key\n")
    async with client:
        problem = await made.source.problem()
        assert problem is not None and problem.startswith(
            "jwt_bearer needs a readable RSA private key"
        )
        (tmp_path / "salesforce.key").unlink()
        gone = CrmSecrets("SALESFORCE", "PRIVATE_KEY_FILE", str(tmp_path / "salesforce.key"), "c")
        fresh = session_minter(made.http, "jwt_bearer", gone, username="u")
        assert "No such file or directory" in (fresh.missing() or "")
        with pytest.raises(AuthError, match="readable RSA private key"):
            await made.query()
    assert made.fake.calls == []


async def test_client_credentials_mint_on_the_my_domain(tmp_path: Path) -> None:
    made, client = rig(tmp_path, flow="client_credentials")
    async with client:
        assert (await made.query()).status_code == 200
    token_call = next(c for c in made.fake.calls if c.path.endswith("/oauth2/token"))
    assert token_call.method == "POST" and made.source.instance_url == MY_DOMAIN


async def test_client_credentials_refusals_name_the_cause(tmp_path: Path) -> None:
    made, client = rig(tmp_path, flow="client_credentials", secret="wrong")
    async with client:
        with pytest.raises(AuthError, match="invalid_client: invalid client credentials"):
            await made.query()
    assert "wrong" not in str(made.fake.calls[-1].json)
    disabled, client = rig(tmp_path, flow="client_credentials", client_credentials=False)
    async with client:
        with pytest.raises(AuthError, match="no client credentials user enabled"):
            await disabled.query()
    secretless = CrmSecrets("SALESFORCE", "PRIVATE_KEY_FILE", None, "c")
    no_secret = session_minter(disabled.http, "client_credentials", secretless, username="")
    assert no_secret.missing() == "client_credentials needs SALESFORCE_CLIENT_SECRET"


async def test_a_token_endpoint_outage_is_transient_and_the_next_request_mints(jwt: Rig) -> None:
    jwt.fake.fail_next(status=503, path_prefix="/services/oauth2/token")
    assert (await jwt.query()).status_code == 200  # the quick retry mints
    jwt.fake.expire_sessions()
    jwt.fake.fail_next(3, status=503, path_prefix="/services/oauth2/token")
    with pytest.raises(TransientCrmError):
        await jwt.query()
    assert (await jwt.query()).status_code == 200
    assert jwt.fake.tokens_minted == 2
