"""The payment route's own HTTP handling (a bare ASGI handler): methods, body limits,
byte-exact JSON answers, what a refused body leaves behind."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridge.app import create_app
from bridge.asgi_io import (
    DRAIN_MAX_BYTES,
    BadContentLength,
    BodyTooLarge,
    ClientGone,
    read_body,
)
from tests.conftest import make_settings, payment_payload, signed
from tests.intake_support import request_log


async def test_other_methods_get_405_with_allow(run_bridge: Any) -> None:
    async with run_bridge() as bridge:
        for method in ("GET", "PUT", "DELETE"):
            response = await bridge.client.request(method, "/webhook/payment")
            assert response.status_code == 405, method
            assert response.headers["allow"] == "POST"
            assert response.json() == {"error": "method_not_allowed"}
        # Rejected requests are in the request log too (SPEC §7).
        assert await request_log(bridge, 3) == [
            ("/webhook/payment", 405, f"method {method}") for method in ("GET", "PUT", "DELETE")
        ]


async def test_a_declared_length_over_the_limit_is_413_and_stores_nothing(
    run_bridge: Any,
) -> None:
    async with run_bridge(max_body_bytes=1000) as bridge:
        response = await bridge.post_payment(payment_payload("pay_big", first_name="x" * 2000))
        assert response.status_code == 413
        assert response.json() == {"error": "payload_too_large"}
        assert await request_log(bridge, 1) == [("/webhook/payment", 413, "body over limit")]
        assert bridge.query("SELECT COUNT(*) FROM events") == [(0,)]


def _receiver(chunks: list[bytes], *, disconnect: bool = False) -> Any:
    """An ASGI `receive` handing out `chunks` as the server would, body in parts."""
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]
    if disconnect:
        messages[-1]["more_body"] = True
        messages.append({"type": "http.disconnect"})

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    return receive


def _scope(headers: list[tuple[bytes, bytes]] | None = None) -> Any:
    return {"type": "http", "method": "POST", "headers": headers or []}


async def test_a_chunked_body_is_read_whole() -> None:
    body = await read_body(_scope(), _receiver([b"ab", b"cd", b"e"]), limit=5)
    assert body == b"abcde"


async def test_a_chunked_body_over_the_limit_is_drained_then_refused() -> None:
    # Drained (bounded) so that a client sending its whole body can read the 413 instead
    # of a connection reset (unread data on close).
    receive = _receiver([b"abc", b"def", b"rest"])
    with pytest.raises(BodyTooLarge):
        await read_body(_scope(), receive, limit=5)
    with pytest.raises(IndexError):  # every message was taken
        await receive()


async def test_a_declared_length_over_the_limit_is_drained_then_refused() -> None:
    receive = _receiver([b"abc", b"def"])
    with pytest.raises(BodyTooLarge):
        await read_body(_scope([(b"content-length", b"6")]), receive, limit=5)
    with pytest.raises(IndexError):
        await receive()
    with pytest.raises(BadContentLength):
        await read_body(_scope([(b"content-length", b"five")]), _receiver([b"x"]), limit=5)


async def test_a_body_not_worth_draining_is_refused_before_reading() -> None:
    # A client waiting for 100 Continue has sent nothing; one declaring more than the
    # drain reads is not waited for.
    waiting = _scope([(b"content-length", b"6"), (b"expect", b"100-continue")])
    with pytest.raises(BodyTooLarge):
        await read_body(waiting, _receiver([]), limit=5)
    huge = _scope([(b"content-length", str(DRAIN_MAX_BYTES + 1).encode())])
    with pytest.raises(BodyTooLarge):
        await read_body(huge, _receiver([]), limit=5)
    with pytest.raises(BodyTooLarge):  # past int()'s 4 300 digits: not a 500
        await read_body(_scope([(b"content-length", b"9" * 5000)]), _receiver([]), limit=5)


async def test_a_client_gone_mid_body_is_noticed() -> None:
    with pytest.raises(ClientGone):
        await read_body(_scope(), _receiver([b"ab"], disconnect=True), limit=5)


async def test_answers_are_compact_json(run_bridge: Any) -> None:
    async with run_bridge(wait_seconds=0) as bridge:
        response = await bridge.post_payment(payment_payload("pay_bytes"))
        assert response.status_code == 202
        assert response.headers["content-type"] == "application/json"
        assert response.content == b'{"status":"queued"}'
        assert int(response.headers["content-length"]) == len(response.content)


async def test_the_path_with_a_trailing_slash_is_the_same_route(run_bridge: Any) -> None:
    async with run_bridge(wait_seconds=0) as bridge:
        body = json.dumps(payment_payload("pay_slash")).encode()
        response = await bridge.client.post("/webhook/payment/", content=body, headers=signed(body))
        assert response.status_code == 202
        assert bridge.query("SELECT key FROM events") == [("pay_slash",)]


async def test_an_unexpected_error_is_a_plain_500_with_the_trace_only_in_the_log(
    run_bridge: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("secret-looking internals")

    monkeypatch.setattr("bridge.webhooks.payment_intake", broken)
    caplog.set_level(logging.ERROR, logger="bridge")
    async with run_bridge(wait_seconds=0) as bridge:
        response = await bridge.post_payment(payment_payload("pay_broken"))
        assert response.status_code == 500
        assert response.json() == {"error": "internal_error"}
        assert "secret-looking" not in response.text
        assert bridge.query("SELECT COUNT(*) FROM events") == [(0,)]
        # The server goes on: the route still answers.
        assert (await bridge.client.get("/webhook/payment")).status_code == 405
        # Both answers are in the request log, the 500 without the error's words.
        assert await request_log(bridge, 2) == [
            ("/webhook/payment", 500, "internal error"),
            ("/webhook/payment", 405, "method GET"),
        ]
    (record,) = [r for r in caplog.records if r.exc_info]
    assert "unhandled error on POST /webhook/payment" in record.getMessage()
    assert "RuntimeError: secret-looking internals" in caplog.text


async def test_other_routes_still_go_through_litestar(run_bridge: Any) -> None:
    async with run_bridge() as bridge:
        assert (await bridge.client.get("/webhook/health")).status_code == 200
        missing = await bridge.client.get("/webhook/nothing-here")
        assert missing.status_code == 404


async def test_a_webhook_before_startup_finished_is_503_not_stored(tmp_path: Path) -> None:
    # No lifespan has run (httpx's ASGI transport does not run one): the store is not open.
    app = create_app(make_settings(tmp_path, wait_seconds=0))
    body = json.dumps(payment_payload("pay_early")).encode()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bridge") as client:
        response = await client.post("/webhook/payment", content=body, headers=signed(body))
    assert response.status_code == 503
    assert response.json() == {"error": "storage_unavailable"}
    assert not (tmp_path / "bridge.sqlite").exists()
