"""Alerts: sent once per incident, never blocking a delivery, their delivery recorded."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import sqlite3
from pathlib import Path
from typing import Any

import httpx
from litestar.testing import AsyncTestClient

from bridge.app import create_app
from tests.cli_support import make_cli
from tests.conftest import make_settings, payment_payload, signed
from tests.fakes.amocrm import FakeAmoCrm


async def _post(client: AsyncTestClient[Any], payload: dict[str, Any]) -> httpx.Response:
    body = json.dumps(payload).encode()
    return await client.post("/webhook/payment", content=body, headers=signed(body))


async def test_failed_deliveries_alert_once_per_incident_on_both_channels(
    tmp_path: Path,
) -> None:
    fake = FakeAmoCrm()
    seen: list[httpx.Request] = []

    def channel(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"ok": True})

    settings = make_settings(
        tmp_path,
        amocrm_access_token=fake.issue_token(ttl=3600),
        alert_telegram_bot_token="123:bot-secret",
        alert_telegram_chat_id="-100777",
        alert_webhook_url="https://hooks.example/alerts",
        alert_webhook_secret="alert-secret",
    )
    transports = {"amocrm": fake.transport(), "alerts": httpx.MockTransport(channel)}
    app = create_app(settings, transports=transports)
    async with AsyncTestClient(app=app) as client:
        for n in range(3):
            fake.fail_next(1, 400, method="GET")
            response = await _post(client, payment_payload(f"pay_f{n}", telegram_id=str(n)))
            assert response.json()["status"] == "failed"
        for _ in range(100):
            if len(seen) >= 2:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
    # One incident (failed in amocrm): one alert per channel, the repeats folded.
    assert len(seen) == 2, [r.url for r in seen]
    telegram = next(r for r in seen if r.url.host == "api.telegram.org")
    assert telegram.url.path == "/bot123:bot-secret/sendMessage"
    sent = json.loads(telegram.content)
    assert sent["chat_id"] == "-100777" and "pay_f0 in amocrm failed" in sent["text"]
    hook = next(r for r in seen if r.url.host == "hooks.example")
    digest = hmac.new(b"alert-secret", hook.content, hashlib.sha256).hexdigest()
    assert hook.headers["X-Signature"] == f"sha256={digest}"
    assert json.loads(hook.content)["kind"] == "failed"
    # Recorded, and listed by the command; the bot token is nowhere in the record.
    (tmp_path / "cli").mkdir()
    cli = make_cli(tmp_path / "cli", DATABASE_PATH=str(settings.database_path))
    listed = json.loads((await asyncio.to_thread(cli, "alerts", "--json")).stdout)
    assert sorted(a["channel"] for a in listed) == ["telegram", "webhook"]
    assert all(a["outcome"] == "sent" for a in listed)
    assert "bot-secret" not in json.dumps(listed)


async def test_a_dead_channel_never_holds_a_delivery_and_its_failure_is_recorded(
    tmp_path: Path,
) -> None:
    fake = FakeAmoCrm()

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    settings = make_settings(
        tmp_path,
        amocrm_access_token=fake.issue_token(ttl=3600),
        alert_webhook_url="https://hooks.example/alerts",
    )
    transports = {"amocrm": fake.transport(), "alerts": httpx.MockTransport(refuse)}
    app = create_app(settings, transports=transports)
    async with AsyncTestClient(app=app) as client:
        fake.fail_next(1, 400, method="GET")
        assert (await _post(client, payment_payload("pay_x"))).json()["status"] == "failed"
        ok = await _post(client, payment_payload("pay_y", telegram_id="9"))
        assert ok.status_code == 200
        rows: list[Any] = []
        for _ in range(250):  # the alert goes out in the background: wait for its record
            with sqlite3.connect(settings.database_path) as db:
                rows = db.execute("SELECT kind, channel, outcome, detail FROM alerts").fetchall()
            if rows:
                break
            await asyncio.sleep(0.02)
    assert rows == [("failed", "webhook", "failed", "ConnectError: connection refused")]


async def test_queue_age_alerts_once_until_the_queue_is_young_again(tmp_path: Path) -> None:
    from bridge.alerts import Alerter
    from bridge.store import QueueStats

    sent: list[str] = []

    class Queue:
        oldest: float | None = 0.0

        async def queue_stats(self) -> QueueStats:
            return QueueStats(3, self.oldest)

        async def record_alert(self, *args: Any) -> None:
            sent.append(args[2])

    store = Queue()
    settings = make_settings(
        tmp_path, alert_webhook_url="https://hooks.example/a", alert_queue_age_seconds=600
    )
    now = [10_000.0]
    alerter = Alerter(
        settings,
        store,  # type: ignore[arg-type]
        clock=lambda: now[0],
        transport=httpx.MockTransport(lambda request: httpx.Response(204)),
    )
    # Old twice (one alert), young (re-armed), old again after the interval (a new one).
    for at, oldest in ((10_000.0, 9_000.0), (10_030.0, 9_000.0), (10_060, 10_050.0)):
        now[0], store.oldest = at, oldest
        await alerter._check_queue_age()
        await alerter.drain()
    assert len(sent) == 1 and "17 min old (3 waiting)" in sent[0]
    now[0], store.oldest = 20_000.0, 10_050.0
    await alerter._check_queue_age()
    await alerter.drain()
    assert len(sent) == 2
    await alerter.stop()
