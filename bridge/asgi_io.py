"""The bare ASGI side of the webhook route: read a body under a size limit, send JSON.

The payment route is the one every webhook takes, so the app hands it straight to a plain
ASGI handler (`bridge.app.BridgeApp`), in front of Litestar, which keeps every other
route and the lifespan: Litestar's routing, `Request` and `Response` cost more per
webhook than the route's own work on one the platform has signed. Its answers are byte
for byte what Litestar's JSON responses were (msgspec's encoder, `application/json`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import msgspec
from litestar.types import HTTPResponseBodyEvent, HTTPResponseStartEvent, Receive, Scope, Send

_JSON = msgspec.json.Encoder()


class BodyTooLarge(Exception):
    """The declared or received body is over the limit."""


class BadContentLength(Exception):
    """The Content-Length header is not a number."""


class ClientGone(Exception):
    """The client disconnected before the whole body arrived: nobody to answer."""


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body; raises BodyTooLarge, BadContentLength or ClientGone."""
    declared = _content_length(scope)
    if declared is not None and declared > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = cast(bytes, message.get("body", b""))
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            if not value.isdigit():
                raise BadContentLength
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
) -> None:
    body = _JSON.encode(payload)
    start: HTTPResponseStartEvent = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *headers,
        ],
    }
    await send(start)
    end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body, "more_body": False}
    await send(end)
