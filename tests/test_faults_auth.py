"""Authorisation faults (SPEC §3 "on 401", §9 refresh-token rotation).

- A long-lived token the CRM rejects pauses the CRM: deliveries stay pending without
  burning an attempt, health says paused and why, the log says so once, and a restart
  with a valid token delivers everything.
- An OAuth refresh token that was already rotated away (someone else used it): the CRM
  is paused, nothing is lost; after `crm-bridge auth amocrm --code …` (run as the operator
  would, beside the running service) the running bridge's next probe (30 s) finds the
  new pair and everything lands, without a restart.
- Concurrent deliveries share one refresh: one token request per expiry, never two.
- The rotated pair is committed (encrypted) before it is used: SIGKILL on the first
  request made with the new access token, restart, and no second refresh is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet

from bridge.crypto import TokenCipher
from tests.cli_support import AMOCRM_OAUTH_ENV as OAUTH_ENV
from tests.conftest import reference_file_config, wait_until
from tests.customers import customer_payment
from tests.fakes.amocrm import FakeAmoCrm
from tests.process import (
    BridgeProcess,
    KillSwitch,
    ServedAmoCrm,
)


def assert_one_of_everything(fake: FakeAmoCrm, payments: int) -> None:
    assert len(fake.contacts()) == payments
    leads = fake.leads()
    assert len(leads) == payments
    assert all(len(fake.notes(lead["id"])) == 1 for lead in leads)


# ---- long-lived token ------------------------------------------------------------------


async def test_rejected_long_lived_token_pauses_without_burning_attempts(
    run_bridge: Any, fake_amo: FakeAmoCrm, caplog: pytest.LogCaptureFixture
) -> None:
    async with run_bridge(amocrm_access_token="revoked-long-lived-token", wait_seconds=2) as b:
        answers = [await b.post_payment(customer_payment(n, "pay_a")) for n in range(3)]
        await wait_until(lambda: fake_amo.count(status=401) >= 1)
        await asyncio.sleep(0.5)  # time enough to burn attempts, were it to burn any
        health = (await b.client.get("/webhook/health")).json()
        rows = b.query("SELECT status, attempts FROM deliveries")
        rejected = fake_amo.count(status=401)
    assert [a.status_code for a in answers] == [202] * 3
    assert all(a.json()["status"] == "queued" for a in answers)
    amo = health["crms"]["amocrm"]
    assert health["status"] == "degraded"
    assert amo["paused"] is True
    assert "401" in amo["paused_reason"]
    assert health["queue_depth"] == 3
    assert rows == [("pending", 0)] * 3
    assert rejected == 1, "a paused CRM is probed, not hammered"
    assert fake_amo.contacts() == []
    paused_lines = [r for r in caplog.records if "paused" in r.getMessage()]
    assert paused_lines and all(r.levelname in ("ERROR", "WARNING") for r in paused_lines)

    async with run_bridge(amocrm_access_token=fake_amo.issue_token(ttl=3600), wait_seconds=0) as b:
        await b.settle()
        rows = b.query("SELECT status, attempts FROM deliveries")
        health = (await b.client.get("/webhook/health")).json()
    assert rows == [("success", 1)] * 3
    assert health["crms"]["amocrm"]["paused"] is False
    assert_one_of_everything(fake_amo, 3)


# ---- OAuth ------------------------------------------------------------------------------


def oauth_bridge(home: Path, served: ServedAmoCrm, **env: str) -> BridgeProcess:
    return served.bridge(
        home,
        token=False,
        env={"BRIDGE_SECRET_KEY": Fernet.generate_key().decode(), **OAUTH_ENV, **env},
        auth="oauth",
        rate_limit_per_second=40,
    )


def stored_pair(bridge: BridgeProcess) -> dict[str, Any]:
    [(ciphertext,)] = bridge.query("SELECT ciphertext FROM crm_tokens WHERE crm = 'amocrm'")
    data: dict[str, Any] = json.loads(
        TokenCipher([bridge.env["BRIDGE_SECRET_KEY"]]).decrypt(ciphertext)
    )
    return data


def test_refresh_token_rotated_away_pauses_until_bridge_auth_then_resumes(
    amo_server: ServedAmoCrm, tmp_path: Path
) -> None:
    amo, base_url = amo_server.fake, amo_server.base_url
    bridge = oauth_bridge(tmp_path, amo_server)
    access, refresh = amo.issue_oauth_pair(ttl=3600)
    entered = bridge.run("auth", "amocrm", "--access-token", access, "--refresh-token", refresh)
    assert entered.returncode == 0, entered.stderr
    # Someone else (a second copy of the bridge, a script) uses the refresh token: the
    # fake rotates it away, and the access token the bridge holds expires.
    used = httpx.post(
        f"{base_url}/oauth2/access_token",
        json={**_oauth_body(), "grant_type": "refresh_token", "refresh_token": refresh},
    )
    assert used.status_code == 200
    amo.expire_all_access_tokens()
    try:
        bridge.start()
        for n in range(3):
            assert bridge.post_payment(customer_payment(n, "pay_a")).status_code == 202
        bridge.wait_for(lambda: bridge.health()["crms"]["amocrm"]["paused"], what="amocrm paused")
        bridge.wait_for(
            lambda: bridge.query("SELECT DISTINCT status FROM deliveries") == [("pending",)],
            what="every delivery back to pending",
        )
        health = bridge.health()
        rows = bridge.query("SELECT status, attempts FROM deliveries")
        amo.register_code("code-from-the-amocrm-ui")
        authorised = bridge.run("auth", "amocrm", "--code", "code-from-the-amocrm-ui")
        assert authorised.returncode == 0, authorised.stderr
        # No restart: the paused CRM is probed every 30 s and picks the stored pair up.
        bridge.settle(timeout=45)
        statuses = set(bridge.statuses().values())
        health_after = bridge.health()
    finally:
        bridge.stop()
    reason = health["crms"]["amocrm"]["paused_reason"]
    assert "crm-bridge auth amocrm" in reason, reason
    assert refresh not in reason and refresh not in bridge.log_text()
    assert rows == [("pending", 0)] * 3
    assert statuses == {"success"}
    assert health_after["crms"]["amocrm"]["paused"] is False
    assert_one_of_everything(amo, 3)


def _oauth_body() -> dict[str, str]:
    return {
        "client_id": OAUTH_ENV["AMOCRM_CLIENT_ID"],
        "client_secret": OAUTH_ENV["AMOCRM_CLIENT_SECRET"],
        "redirect_uri": OAUTH_ENV["AMOCRM_REDIRECT_URI"],
    }


async def test_concurrent_deliveries_share_one_refresh(
    run_bridge: Any, fake_amo: FakeAmoCrm
) -> None:
    _, refresh = fake_amo.issue_oauth_pair(ttl=3600)
    key = Fernet.generate_key().decode()
    file = reference_file_config(auth="oauth", rate_limit_per_second=200)
    fake_amo.rate_limit = 1000
    async with run_bridge(
        file=file,
        wait_seconds=0,
        amocrm_access_token=None,
        amocrm_refresh_token=refresh,  # first start: refreshed once, then stored
        amocrm_client_id=OAUTH_ENV["AMOCRM_CLIENT_ID"],
        amocrm_client_secret=OAUTH_ENV["AMOCRM_CLIENT_SECRET"],
        amocrm_redirect_uri=OAUTH_ENV["AMOCRM_REDIRECT_URI"],
        bridge_secret_key=key,
    ) as bridge:
        first = await asyncio.gather(
            *(bridge.post_payment(customer_payment(n, "pay_a")) for n in range(8))
        )
        await bridge.settle()
        after_first = fake_amo.count(path_prefix="/oauth2/")
        fake_amo.expire_all_access_tokens()  # every delivery in flight now meets a 401
        second = await asyncio.gather(
            *(bridge.post_payment(customer_payment(n, "pay_a")) for n in range(100, 108))
        )
        await bridge.settle()
        after_second = fake_amo.count(path_prefix="/oauth2/")
        statuses = set(dict(bridge.query("SELECT payment_id, status FROM payment_events")).values())
        with contextlib.closing(sqlite3.connect(bridge.settings.database_path)) as conn:
            [(ciphertext,)] = conn.execute("SELECT ciphertext FROM crm_tokens").fetchall()
    assert {a.status_code for a in first + second} == {202}
    assert after_first == 1, f"{after_first} token requests for one expiry"
    assert after_second == 2, f"{after_second - 1} token requests for the second expiry"
    assert statuses == {"success"}
    assert_one_of_everything(fake_amo, 16)
    # What is stored is the pair now valid, encrypted.
    pair = json.loads(TokenCipher([key]).decrypt(ciphertext))
    assert pair["refresh_token"] not in ciphertext and pair["access_token"] not in ciphertext
    grant = {**_oauth_body(), "grant_type": "refresh_token", "refresh_token": pair["refresh_token"]}
    async with httpx.AsyncClient(transport=fake_amo.transport(), base_url="http://fake") as c:
        still_valid = await c.post("/oauth2/access_token", json=grant)
    assert still_valid.status_code == 200, "the stored refresh token is not the live one"


def test_rotated_pair_is_committed_before_it_is_used(
    amo_server: ServedAmoCrm, tmp_path: Path
) -> None:
    amo = amo_server.fake
    _, refresh = amo.issue_oauth_pair(ttl=3600)
    bridge = oauth_bridge(tmp_path, amo_server, AMOCRM_REFRESH_TOKEN=refresh)
    switch = KillSwitch(amo, bridge)
    try:
        bridge.start()
        # The bootstrap refresh token is traded on the first request; the first API
        # request with the new access token is where the bridge dies.
        switch.arm("received", "GET", r"/api/v4/contacts")
        assert bridge.post_payment(customer_payment(1, "pay_a")).status_code == 202
        switch.wait()
        pair_at_kill = stored_pair(bridge)
        bridge.start()
        bridge.settle()
        statuses = set(bridge.statuses().values())
    finally:
        bridge.stop()
    assert pair_at_kill["refresh_token"] != refresh
    assert statuses == {"success"}
    assert amo.count(path_prefix="/oauth2/") == 1, "the restart had to refresh again"
    assert_one_of_everything(amo, 1)
