"""Set-up the intake tests share: a served bridge for a module, bodies carrying a raw JSON
literal, a webhook refused with nothing stored, and the request log once written."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from tests.conftest import EXAMPLE_CONFIG, Bridge, payment_payload, wait_until
from tests.process import BridgeProcess, running

ITEM = ("course_order", "course_order_items", 0)  # the path of the payload's first item
_RAW = "__RAW_LITERAL__"


@contextmanager
def serving_bridge(
    factory: pytest.TempPathFactory, name: str, **env: str
) -> Iterator[BridgeProcess]:
    """`crm-bridge serve` on the example config with no CRM token (amoCRM is paused:
    webhooks are stored and queued), in a directory of its own; stopped on the way out."""
    process = BridgeProcess.create(factory.mktemp(name), EXAMPLE_CONFIG, access_token=None, **env)
    process.start()
    with running(process):
        yield process


def payload_with(
    path: tuple[str | int, ...], value: Any, payment_id: str = "pay_v"
) -> dict[str, Any]:
    """`payment_payload(payment_id)` with `value` at `path`."""
    payload = payment_payload(payment_id)
    target: Any = payload
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return payload


def raw_body(path: tuple[str | int, ...], literal: str, payment_id: str = "pay_v") -> bytes:
    """The payload's JSON with `literal` written as it is at `path`: what json.dumps cannot
    write (NaN, 1e400, a number of thousands of digits)."""
    text = json.dumps(payload_with(path, _RAW, payment_id))
    return text.replace(json.dumps(_RAW), literal).encode()


async def refused(
    run_bridge: Any, body: dict[str, Any] | bytes, status: int = 422
) -> httpx.Response:
    """`body` posted to a fresh bridge: answered `status`, and no event stored."""
    async with run_bridge(wait_seconds=0) as bridge:
        answer: httpx.Response = await bridge.post_payment(body)
        assert answer.status_code == status, answer.text
        assert bridge.query("SELECT COUNT(*) FROM events") == [(0,)]
    return answer


async def request_log(bridge: Bridge, rows: int) -> list[tuple[Any, ...]]:
    """(route, http_status, detail) of the request log once it has `rows` rows. Rows go
    with the next write batch: a health check makes one, and on a busy machine it may be
    committed a moment later."""
    await bridge.client.get("/webhook/health")
    await wait_until(lambda: bridge.query("SELECT COUNT(*) FROM requests") == [(rows,)])
    return bridge.query("SELECT route, http_status, detail FROM requests ORDER BY id")
