"""The platform stand-in receives the bridge's signed callbacks as the platform would."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from bridge.backsync.callback import OutboundRequest, StatusChanged, callback_request, message_id
from bridge.domain import OrderStatus
from tests.fakes.platform import PATH, FakePlatform

WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
NOW = 1_764_753_300
CHANGE = StatusChanged(
    "R-1042",
    OrderStatus.IN_RENT,
    OrderStatus.RESERVED,
    "amocrm",
    "31525141",
    datetime.fromtimestamp(NOW, UTC),
)


def attempt(now: int = NOW, key: str = "31525141:1:2:3", secret: str = WHSEC) -> OutboundRequest:
    msg_id = message_id("amocrm", key)
    return callback_request(
        CHANGE, url=f"http://platform.test{PATH}", secret=secret, msg_id=msg_id, now=now
    )


async def send(platform: FakePlatform, request: OutboundRequest) -> httpx.Response:
    async with httpx.AsyncClient(transport=platform.transport()) as client:
        return await client.request(
            request.method, request.url, headers=request.headers, content=request.body
        )


async def test_retries_of_one_change_are_one_event_for_the_platform() -> None:
    clock = [float(NOW)]
    platform = FakePlatform(WHSEC, clock=lambda: clock[0])
    platform.fail_next(status=500)
    assert (await send(platform, attempt())).status_code == 500
    clock[0] = NOW + 3600.0  # retried an hour later: re-signed, same id
    assert (await send(platform, attempt(now=NOW + 3600))).status_code == 204
    assert (await send(platform, attempt(now=NOW + 3600))).status_code == 204
    [event] = platform.events()
    assert event["order_id"] == "R-1042" and event["status"] == "in_rent"
    assert platform.deliveries(message_id("amocrm", "31525141:1:2:3")) == 2
    other = attempt(now=NOW + 3600, key="31525141:1:3:4")
    assert (await send(platform, other)).status_code == 204
    assert len(platform.events()) == 2


@pytest.mark.parametrize(
    ("request_at", "secret", "reason"),
    [
        (NOW - 301, WHSEC, "timestamp too old"),
        (NOW, "whsec_" + "QUJD" * 8, "signature mismatch"),
    ],
)
async def test_the_platform_refuses_what_it_cannot_verify(
    request_at: int, secret: str, reason: str
) -> None:
    platform = FakePlatform(WHSEC, clock=lambda: float(NOW))
    answer = await send(platform, attempt(now=request_at, secret=secret))
    assert answer.status_code == 401
    assert platform.refused == [reason] and platform.events() == []


async def test_a_platform_down_is_a_connection_error_until_it_is_up() -> None:
    platform = FakePlatform(WHSEC, clock=lambda: float(NOW))
    platform.down()
    with pytest.raises(httpx.ConnectError):
        await send(platform, attempt())
    platform.up()
    assert (await send(platform, attempt())).status_code == 204
    assert len(platform.events()) == 1
