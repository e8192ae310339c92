"""SIGKILL the real `crm-bridge serve` while it delivers a back-sync callback (issue 19).

The bridge runs as systemd runs it (tests/process.py: a subprocess, an environment,
etc/bridge.example.toml with the order stages of tests/order_support.py); the stateful
fake amoCRM and the platform stand-in (tests/fakes/platform.py) each serve on a loopback
socket from the test process. An order makes the linked deal; a manager moves it, and
amoCRM's own `move_leads_event` request goes to `POST /webhook/crm/amocrm`. The
platform's `KillSwitch` hook SIGKILLs the bridge, in the thread serving the callback:
- "received": the platform holds the callback (nothing recorded, no answer) while the
  bridge dies: the delivery was in flight;
- "applied": the platform verified and recorded it, and its answer has not left: the
  bridge dies before it could record the 2xx (the window Standard Webhooks' `webhook-id`
  exists for).
`serve` then restarts on the same database. The platform must end with exactly one event
for the move, every attempt it saw carrying the one `webhook-id` the bridge journalled,
and the order's last known status must be the forwarded one.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridge.backsync.callback import message_id
from bridge.settings import load_file_config
from tests.conftest import EXAMPLE_CONFIG, signed
from tests.fakes.amocrm import FakeAmoCrm
from tests.fakes.platform import PATH, FakePlatform
from tests.fakes.service import FakeRequest
from tests.order_support import PIPELINE, STAGES, order_body, order_config_toml, with_orders
from tests.process import BridgeProcess, KillSwitch, ServedAmoCrm, serving

WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
URL_TOKEN = "amo-url-token"  # the test's own amoCRM webhook token (`?token=`)
TIMEOUT = 60.0  # generous: two cores shared by several sessions


@pytest.fixture
def amo() -> Iterator[ServedAmoCrm]:
    # The account the config below describes: the example's, plus the rental pipeline.
    fake = FakeAmoCrm(with_orders(load_file_config(EXAMPLE_CONFIG).crm["amocrm"]), rate_limit=60)
    with serving(fake) as base_url:
        yield ServedAmoCrm(fake, base_url)


@pytest.fixture
def platform() -> Iterator[tuple[FakePlatform, str]]:
    fake = FakePlatform(WHSEC)
    with serving(fake) as base_url:
        yield fake, f"{base_url}{PATH}"


def _post_order(bridge: BridgeProcess, body: dict[str, Any]) -> None:
    raw = json.dumps(body).encode()
    answer = httpx.post(
        f"{bridge.url}/webhook/order", content=raw, headers=signed(raw), timeout=TIMEOUT
    )
    assert answer.status_code in (200, 202), answer.text
    bridge.settle(TIMEOUT)


@pytest.mark.parametrize(
    "phase",
    ["received", "applied"],
    ids=["while-the-platform-holds-it", "after-the-platform-took-it"],
)
def test_sigkill_during_the_callback_delivers_it_after_a_restart_under_one_webhook_id(
    phase: str,
    amo: ServedAmoCrm,
    platform: tuple[FakePlatform, str],
    tmp_path: Path,
) -> None:
    crm = amo.fake
    stand_in, callback_url = platform
    env = {
        "PLATFORM_CALLBACK_URL": callback_url,
        "PLATFORM_CALLBACK_SECRET": WHSEC,
        "AMOCRM_EVENT_SECRETS": URL_TOKEN,
    }
    bridge = amo.bridge(tmp_path, env=env, rate_limit_per_second=40)
    config = Path(bridge.env["CONFIG_FILE"])
    config.write_text(config.read_text(encoding="utf-8") + order_config_toml(), encoding="utf-8")
    switch = KillSwitch(stand_in, bridge)
    # Every attempt's `webhook-id` as it arrives, before the switch acts on it (a held
    # attempt is never recorded by the stand-in itself).
    attempts: list[str] = []
    kill_check = stand_in.on_received

    def seen(request: FakeRequest) -> None:
        attempts.append(request.headers.get("webhook-id", ""))
        if kill_check is not None:
            kill_check(request)

    stand_in.on_received = seen
    try:
        bridge.start(timeout=TIMEOUT)
        _post_order(bridge, order_body(event="created", status="new"))
        _post_order(bridge, order_body(status="reserved", updated_at="2026-11-21T09:00:00+03:00"))
        [lead] = crm.leads()
        assert (str(lead["pipeline_id"]), str(lead["status_id"])) == (PIPELINE, STAGES["reserved"])

        switch.arm(phase, "POST", PATH)
        event = crm.move_leads_event(
            [(lead["id"], int(STAGES["in_rent"]), int(PIPELINE))],
            url=f"{bridge.url}/webhook/crm/amocrm?token={URL_TOKEN}",
        )
        answer = httpx.request(
            event.method, event.url, content=event.body, headers=event.headers, timeout=TIMEOUT
        )
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"status": "accepted", "events": 1, "new": 1}
        switch.wait(TIMEOUT)
        assert bridge.proc is not None and bridge.proc.returncode == -signal.SIGKILL
        # The kill landed mid-delivery: the journal still has the callback running.
        [(left, journalled_id)] = bridge.query("SELECT delivery_status, webhook_id FROM crm_events")
        assert left == "processing", left

        bridge.start(timeout=TIMEOUT)
        bridge.settle(TIMEOUT)
        [(key, status, forwarded, webhook_id)] = bridge.query(
            "SELECT event_key, status, forwarded_status, webhook_id FROM crm_events"
        )
        [(order_status,)] = bridge.query("SELECT status FROM order_links")
    finally:
        bridge.stop()

    assert (status, forwarded) == ("success", "in_rent"), bridge.log_text()[-3000:]
    assert webhook_id == journalled_id == message_id("amocrm", key.split(":", 1)[1])
    assert order_status == "in_rent"  # the order's last known status, for the next move
    [body] = stand_in.events()  # one event for the move, as a platform deduplicating acts
    assert body["order_id"] == "ord_1042" and body["deal_id"] == str(lead["id"])
    assert (body["status"], body["previous_status"]) == ("in_rent", "reserved")
    # The killed attempt and the restart's: both seen, both under the one id.
    assert len(attempts) >= 2 and set(attempts) == {webhook_id}, attempts
    assert stand_in.refused == []
    # "applied": the platform recorded the killed attempt too; a platform slower than the
    # callback timeout on a loaded machine may see one retry more, never another id.
    assert stand_in.deliveries(webhook_id) >= (2 if phase == "applied" else 1)
