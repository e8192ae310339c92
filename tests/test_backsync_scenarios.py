"""Back-sync end to end through HTTP (issue 19), for every CRM that sends events.

The order goes in through `POST /webhook/order` (the bridge makes the deal and links it);
a manager moves the deal in the CRM's stateful fake, which returns the very request the
CRM then sends (`move_*_event`); that request goes to `POST /webhook/crm/{name}`; the
platform stand-in (tests/fakes/platform.py) verifies and records the signed callback.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient
from pydantic import SecretStr

from bridge.app import create_app
from bridge.backsync.callback import message_id
from bridge.backsync.config import event_secrets_var
from tests.conftest import Bridge, make_settings, signed, wait_until
from tests.crm_cases import CASES, CrmCase
from tests.fakes.crm_events import CrmRequest
from tests.fakes.platform import PATH, FakePlatform
from tests.order_cases import ORDER_CASES, OrderCase
from tests.order_support import order_body

WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
PLATFORM_URL = f"http://platform.test{PATH}"
BASE = "http://testserver.local"
UPDATED = "2026-11-21T09:00:00+03:00"

Fake = Any
Mover = Callable[[Fake, str, tuple[str, str], str], CrmRequest]


@dataclass(frozen=True)
class EventCrm:
    """How one CRM's fake reports a manager's move, and the secret it is registered with."""

    name: str
    secret: str  # `<PREFIX>_EVENT_SECRETS`
    url: Callable[[str], str]  # the registered URL, from the bridge's route URL
    move: Mover  # fake, deal id, (pipeline, stage), registered URL → the CRM's request


def _amo(fake: Fake, deal: str, stage: tuple[str, str], url: str) -> CrmRequest:
    request: CrmRequest = fake.move_leads_event([(deal, int(stage[1]), int(stage[0]))], url=url)
    return request


def _bitrix(fake: Fake, deal: str, stage: tuple[str, str], url: str) -> CrmRequest:
    request: CrmRequest = fake.move_deal_event(
        deal, stage[1], url=url, application_token="bx-app-token"
    )
    return request


def _hubspot(fake: Fake, deal: str, stage: tuple[str, str], url: str) -> CrmRequest:
    request: CrmRequest = fake.move_deals_event([(deal, stage[1])], url=url, app_secret="hs-secret")
    return request


def _pipedrive(fake: Fake, deal: str, stage: tuple[str, str], url: str) -> CrmRequest:
    request: CrmRequest = fake.move_deal_event(
        deal, int(stage[1]), url=url, user="bridge", password="pd-secret"
    )
    return request


EVENT_CRMS = [
    EventCrm("amocrm", "amo-url-token", lambda url: f"{url}?token=amo-url-token", _amo),
    EventCrm("bitrix24", "bx-app-token", lambda url: url, _bitrix),
    EventCrm("hubspot", "hs-secret", lambda url: url, _hubspot),
    EventCrm("pipedrive", "bridge:pd-secret", lambda url: url, _pipedrive),
]


@dataclass
class Sync:
    crm: EventCrm
    case: OrderCase
    fake: Fake
    platform: FakePlatform
    run: Callable[..., AbstractAsyncContextManager[Bridge]]

    def stage(self, status: str) -> tuple[str, str]:
        stage = self.case.config().order_stages[status]
        return stage.pipeline_id, stage.status_id

    def move(self, deal: str, status: str) -> CrmRequest:
        url = self.crm.url(f"{BASE}/webhook/crm/{self.crm.name}")
        return self.crm.move(self.fake, deal, self.stage(status), url)


def _crm_case(name: str) -> CrmCase:
    return next(case for case in CASES if case.name == name)


@pytest.fixture(params=EVENT_CRMS, ids=lambda crm: crm.name)
def sync(request: pytest.FixtureRequest, tmp_path: Path) -> Sync:
    return sync_for(request.param, tmp_path)


def sync_for(crm: EventCrm, tmp_path: Path) -> Sync:
    """The CRM's fake and the platform stand-in, and `run(secret=None, **settings)` the
    bridge over them with back-sync on."""
    order_case = next(case for case in ORDER_CASES if case.name == crm.name)
    crm_case = _crm_case(crm.name)
    fake = order_case.make_fake()
    platform = FakePlatform(WHSEC)

    @asynccontextmanager
    async def run(
        secret: str | None = None,
        platform_transport: httpx.AsyncBaseTransport | None = None,
        **overrides: Any,
    ) -> AsyncIterator[Bridge]:
        credentials = dict(crm_case.credentials(fake))
        crm_env = {
            **credentials.pop("crm_env", {}),
            event_secrets_var(crm.name): SecretStr(secret or crm.secret),
        }
        base = crm_case.file_config()
        file = base.model_copy(update={"crm": {crm.name: order_case.config()}})
        callback = {"platform_callback_url": PLATFORM_URL, "platform_callback_secret": WHSEC}
        settings = make_settings(
            tmp_path, file, **{**credentials, **callback, **overrides, "crm_env": crm_env}
        )
        transports = {
            crm.name: fake.transport(),
            "platform": platform_transport or platform.transport(),
        }
        app = create_app(settings, transports=transports)
        async with AsyncTestClient(app=app, base_url=BASE) as client:
            yield Bridge(client, settings, fake)

    return Sync(crm, order_case, fake, platform, run)


async def post_order(bridge: Bridge, body: dict[str, Any]) -> httpx.Response:
    raw = json.dumps(body).encode()
    return await bridge.client.post("/webhook/order", content=raw, headers=signed(raw))


async def send(bridge: Bridge, request: CrmRequest) -> httpx.Response:
    return await bridge.client.post(request.path, content=request.body, headers=request.headers)


def crm_events(bridge: Bridge) -> list[tuple[Any, ...]]:
    return bridge.query(
        "SELECT event_key, status, order_id, forwarded_status, decision, webhook_id"
        " FROM crm_events ORDER BY id"
    )


async def ordered(bridge: Bridge, sync: Sync) -> str:
    """An order created in `new`, then updated to `reserved`: its deal's id."""
    created = await post_order(bridge, order_body(event="created", status="new"))
    assert created.status_code == 200, created.text
    updated = await post_order(bridge, order_body(status="reserved", updated_at=UPDATED))
    assert updated.status_code == 200, updated.text
    [deal] = sync.case.deals(sync.fake)
    return str(deal)


async def test_a_managers_move_reaches_the_platform_once_signed_with_the_mapped_status(
    sync: Sync,
) -> None:
    async with sync.run() as bridge:
        deal = await ordered(bridge, sync)
        event = sync.move(deal, "in_rent")
        answer = await send(bridge, event)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"status": "accepted", "events": 1, "new": 1}
        await wait_until(lambda: len(sync.platform.events()) == 1)
        again = await send(bridge, event)  # the CRM resends: a repeat, nothing new
        assert again.json() == {"status": "accepted", "events": 1, "new": 0}
        await bridge.settle(timeout=20)
        [(key, status, order_id, forwarded, decision, webhook_id)] = crm_events(bridge)
        [link_status] = bridge.query("SELECT status FROM order_links")[0]
    [body] = sync.platform.events()
    assert body == {
        "type": "order.status_changed",
        "order_id": "ord_1042",
        "status": "in_rent",
        "previous_status": "reserved",
        "crm": sync.crm.name,
        "deal_id": deal,
        "changed_at": body["changed_at"],
    }
    assert (status, order_id, forwarded, decision) == (
        "success",
        "ord_1042",
        "in_rent",
        "forwarded",
    )
    assert webhook_id == message_id(sync.crm.name, key.split(":", 1)[1])
    assert sync.platform.deliveries(webhook_id) == 1
    assert link_status == "in_rent"  # the order's last known status


async def test_the_bridges_own_move_reported_late_is_not_sent_back(sync: Sync) -> None:
    async with sync.run() as bridge:
        deal = await ordered(bridge, sync)
        newer = order_body(status="in_rent", updated_at="2026-11-22T09:00:00+03:00")
        assert (await post_order(bridge, newer)).status_code == 200
        # The CRM's report of the bridge's earlier move to `reserved` comes only now.
        answer = await send(bridge, sync.move(deal, "reserved"))
        assert answer.status_code == 200, answer.text
        await bridge.settle(timeout=20)
        [(_, status, order_id, forwarded, decision, webhook_id)] = crm_events(bridge)
    assert sync.platform.received == []
    assert (status, order_id, forwarded, webhook_id) == ("success", "ord_1042", None, None)
    assert decision == f"deal {deal}: the bridge's own move"


async def test_a_wrong_secret_is_401_and_stores_nothing(sync: Sync) -> None:
    wrong = {
        "amocrm": "other-token",
        "bitrix24": "other-app-token",
        "hubspot": "other-secret",
        "pipedrive": "bridge:other",
    }[sync.crm.name]
    async with sync.run(secret=wrong) as bridge:
        deal = await ordered(bridge, sync)
        answer = await send(bridge, sync.move(deal, "in_rent"))
        assert (answer.status_code, answer.json()) == (401, {"error": "unauthorized"})
        assert bridge.query("SELECT COUNT(*) FROM events WHERE kind = 'crm_event'") == [(0,)]
        logged = "SELECT http_status FROM requests WHERE route LIKE '/webhook/crm/%'"
        await wait_until(lambda: bridge.query(logged) == [(401,)])
        [(detail,)] = bridge.query("SELECT verdict FROM requests WHERE http_status = 401")
    assert wrong not in detail and sync.crm.secret not in detail
    assert sync.platform.received == []


async def test_a_platform_down_for_a_while_gets_the_callback_exactly_once(sync: Sync) -> None:
    sync.platform.fail_next(2, status=503)
    sync.platform.fail_next(1, kind="timeout")
    sync.platform.fail_after_apply(1, status=502)  # took it, but the answer was lost
    async with sync.run() as bridge:
        deal = await ordered(bridge, sync)
        assert (await send(bridge, sync.move(deal, "cancelled"))).status_code == 200
        await bridge.settle(timeout=20)
        [(_, status, _, forwarded, _, webhook_id)] = crm_events(bridge)
        [(attempts,)] = bridge.query("SELECT attempts FROM deliveries WHERE crm = 'platform'")
    assert (status, forwarded) == ("success", "cancelled")
    assert attempts == 5
    [body] = sync.platform.events()  # deduplicated by webhook-id, as the platform does
    assert body["status"] == "cancelled" and body["previous_status"] == "reserved"
    assert sync.platform.deliveries(webhook_id) == 2  # the lost answer's and the last


async def test_a_callback_waiting_for_the_platform_is_sent_after_a_restart(sync: Sync) -> None:
    sync.platform.down()
    async with sync.run() as bridge:
        deal = await ordered(bridge, sync)
        assert (await send(bridge, sync.move(deal, "in_rent"))).status_code == 200
        tried = "SELECT COUNT(*) FROM deliveries WHERE crm = 'platform' AND attempts >= 2"
        await wait_until(lambda: bridge.query(tried) == [(1,)])
        [(first_id,)] = bridge.query("SELECT webhook_id FROM crm_events")
    assert sync.platform.received == []
    sync.platform.up()
    async with sync.run() as bridge:
        await bridge.settle(timeout=20)
        [(status, webhook_id)] = bridge.query("SELECT status, webhook_id FROM crm_events")
    assert status == "success" and webhook_id == first_id
    [body] = sync.platform.events()
    assert body["status"] == "in_rent"
    assert sync.platform.deliveries(first_id) == 1


class Killed(BaseException):
    """The process dies here: nothing in the bridge catches it, nothing after is written."""


class DyingOnce(httpx.AsyncBaseTransport):
    """The first callback kills the bridge: before it reaches the platform, or after the
    platform took it and before its answer came back."""

    def __init__(self, inner: httpx.AsyncBaseTransport, *, after: bool) -> None:
        self.inner, self.after, self.armed = inner, after, True

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.armed:
            self.armed = False
            if self.after:
                await self.inner.handle_async_request(request)
            raise Killed
        return await self.inner.handle_async_request(request)


@pytest.mark.parametrize(
    "after", [False, True], ids=["before-sending", "after-the-platform-took-it"]
)
async def test_killed_during_the_callback_it_is_sent_after_a_restart_under_the_same_id(
    tmp_path: Path, after: bool
) -> None:
    amo = sync_for(EVENT_CRMS[0], tmp_path)
    dying = DyingOnce(amo.platform.transport(), after=after)
    async with amo.run(platform_transport=dying) as bridge:
        deal = await ordered(bridge, amo)
        assert (await send(bridge, amo.move(deal, "in_rent"))).status_code == 200
        await wait_until(lambda: not dying.armed)
        stuck = "SELECT status FROM deliveries WHERE crm = 'platform'"
        await wait_until(lambda: bridge.query(stuck) == [("processing",)])
        [(webhook_id,)] = bridge.query("SELECT webhook_id FROM crm_events")
    async with amo.run() as bridge:
        await bridge.settle(timeout=20)
        [(status, forwarded)] = bridge.query("SELECT status, forwarded_status FROM crm_events")
    assert (status, forwarded) == ("success", "in_rent")
    [body] = amo.platform.events()
    assert body["status"] == "in_rent" and body["previous_status"] == "reserved"
    assert amo.platform.deliveries(webhook_id) == (2 if after else 1)
