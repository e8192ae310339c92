"""The bare ASGI side of the webhook route: read a body under a size limit, send JSON.

The payment route is the one every webhook takes, so the app hands it straight to a plain
ASGI handler (`bridge.app.BridgeApp`), in front of Litestar, which keeps every other
route and the lifespan: Litestar's routing, `Request` and `Response` cost more per
webhook than the route's own work on one the platform has signed. Its answers are byte
for byte what Litestar's JSON responses were (msgspec's encoder, `application/json`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, cast

import msgspec
from litestar.types import HTTPResponseBodyEvent, HTTPResponseStartEvent, Receive, Scope, Send

_JSON = msgspec.json.Encoder()
_CLOSE: dict[bool, tuple[tuple[bytes, bytes], ...]] = {
    True: ((b"connection", b"close"),),
    False: (),
}


class BodyTooLarge(Exception):
    """The declared or received body is over the limit."""


class BadContentLength(Exception):
    """The Content-Length header is not a number."""


class ClientGone(Exception):
    """The client disconnected before the whole body arrived: nobody to answer."""


class BodyTimeout(Exception):
    """The body did not arrive within the time allowed for it."""


# The whole body must arrive within this many seconds of the request's headers. A real
# platform sends a webhook (a few KB, at most MAX_BODY_BYTES) in milliseconds; a client
# dripping a byte a second would otherwise hold a connection and its buffer for good.
BODY_TIMEOUT_SECONDS = 30.0
# A body over the limit is read on and thrown away, up to this much and this long, before
# the 413 goes out: a client that sends its whole body before reading (most do) would
# otherwise be reset by the kernel (unread data on close) and never see the 413.
DRAIN_MAX_BYTES = 8 * 1024 * 1024
DRAIN_SECONDS = 10.0


async def read_body(
    scope: Scope, receive: Receive, limit: int, *, seconds: float = BODY_TIMEOUT_SECONDS
) -> bytes:
    """The whole request body; raises BodyTooLarge (after a bounded drain), BodyTimeout,
    BadContentLength or ClientGone."""
    declared = _content_length(scope)
    if declared is not None and declared > limit:
        await _drain(scope, receive, declared)
        raise BodyTooLarge
    # The usual webhook is all in its first message: that one is taken without a timer
    # (arming one cost more than the rest of this function). The server's own body
    # timer (`bridge.server`) bounds that first wait; from the second message on, the
    # body has what is left of `seconds` to arrive, and a 408 is answered past it.
    deadline = asyncio.get_running_loop().time() + seconds
    message = await receive()
    chunks: list[bytes] = []
    size = 0
    try:
        while True:
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = cast(bytes, message.get("body", b""))
            size += len(chunk)
            if size > limit:
                if message.get("more_body", False):
                    await _drain(scope, receive, None, already=size)
                raise BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
            async with asyncio.timeout_at(deadline):
                message = await receive()
    except TimeoutError:
        raise BodyTimeout from None


async def _drain(scope: Scope, receive: Receive, declared: int | None, already: int = 0) -> None:
    """Read and drop the rest of a body over the limit, within DRAIN_MAX_BYTES/SECONDS.

    Not when the client waits for `100 Continue` (it has sent nothing and, told 413,
    sends nothing), nor when it declared more than the drain would read anyway."""
    if _expects_continue(scope) or (declared is not None and declared > DRAIN_MAX_BYTES):
        return
    size = already
    try:
        async with asyncio.timeout(DRAIN_SECONDS):
            while size <= DRAIN_MAX_BYTES:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                size += len(cast(bytes, message.get("body", b"")))
                if not message.get("more_body", False):
                    return
    except TimeoutError:
        return


def _expects_continue(scope: Scope) -> bool:
    return any(
        name == b"expect" and value.lower() == b"100-continue" for name, value in scope["headers"]
    )


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            if not value.isdigit():
                raise BadContentLength
            if len(value) > 18:  # over an exabyte, and int() refuses past 4 300 digits
                raise BodyTooLarge
            return int(value)
    return None


def header_map(scope: Scope) -> dict[str, str]:
    """The request headers by (lower-case, as ASGI gives them) name."""
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}


async def send_json(
    send: Send,
    status: int,
    payload: Mapping[str, Any],
    headers: tuple[tuple[bytes, bytes], ...] = (),
    *,
    close: bool = False,
) -> None:
    """The JSON answer; with `close`, `Connection: close` (the request was not read to
    its end, so the connection cannot carry another)."""
    body = _JSON.encode(payload)
    start: HTTPResponseStartEvent = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *headers,
            *_CLOSE[close],
        ],
    }
    await send(start)
    end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body, "more_body": False}
    await send(end)
