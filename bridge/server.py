"""The HTTP server `crm-bridge serve` runs: uvicorn with its httptools protocol, bounded.

uvicorn itself bounds nothing before a request reaches the app: headers may grow without
limit (httptools buffers a header until it ends: 64 MiB each on 8 unfinished connections
took 600 MB), a connection that sends nothing or a byte now and then is kept for good, and
every connection is accepted until the process runs out of file descriptors (then every
real webhook fails to connect). `BoundedHttpProtocol` adds, per connection:

- at most `MAX_HEADER_BYTES` of request line and headers, and `MAX_HEADERS` headers
  (431 and close past either);
- the headers must be complete `header_timeout` seconds after the first byte of the
  request (or after connecting); the body within `body_timeout` of the headers (the
  payment route answers 408 itself a little earlier; this also covers every other route);
- at most `max_connections` open at once: one more gets 503 and is closed at once, so
  descriptors and memory stay bounded whatever the clients do.

An idle keep-alive connection is closed after `keep_alive` seconds (uvicorn's own timer).
Every limit that bites is logged (WARNING, at most once a minute per limit, with the
count since the last line), so an attack shows in the journal without flooding it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.config import Config

# uvicorn's protocol class is not a public API: the hooks used here (data_received and
# the parser callbacks, `connections`, `cycle`, `transport`) have been stable for years,
# and tests/test_http_limits.py drives every limit over a real socket, so an upgrade that
# moved them fails there, not in production.
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

log = logging.getLogger("bridge.server")

# Request line and headers together. A signed webhook's are well under 2 KB (the longest
# is a Standard Webhooks signature list); a proxy adds a few hundred bytes. nginx's
# default buffers hold 8 KB per line; 16 KB leaves room and bounds each connection.
MAX_HEADER_BYTES = 16 * 1024
# Python's http.client refuses more than 100 headers in an answer; so does the bridge.
MAX_HEADERS = 100


@dataclass(frozen=True)
class Limits:
    header_timeout: float
    body_timeout: float
    keep_alive: int
    max_connections: int
    max_header_bytes: int = MAX_HEADER_BYTES
    max_headers: int = MAX_HEADERS


class _LimitLog:
    """One WARNING per limit per `interval` seconds, counting what it did meanwhile."""

    def __init__(self, interval: float = 60.0) -> None:
        self._interval = interval
        self._last: dict[str, float] = {}
        self._count: dict[str, int] = {}

    def bit(self, limit: str, text: str, client: tuple[str, int] | None) -> None:
        now = time.monotonic()
        self._count[limit] = self._count.get(limit, 0) + 1
        last = self._last.get(limit)
        if last is not None and now - last < self._interval:
            return
        count = self._count.pop(limit)
        self._last[limit] = now
        peer = client[0] if client else "unknown"
        log.warning(
            "limit %s: %s (last from %s; %d time(s) since last report)",
            limit,
            text,
            peer[:64],
            count,
        )


_LIMIT_LOG = _LimitLog()


def _plain_answer(status: bytes, error: bytes) -> bytes:
    body = b'{"error":"' + error + b'"}'
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\ncontent-type: application/json\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\nconnection: close\r\n\r\n"
        + body
    )


_HEADERS_TOO_LARGE = _plain_answer(b"431 Request Header Fields Too Large", b"headers_too_large")
_TOO_MANY_CONNECTIONS = _plain_answer(b"503 Service Unavailable", b"too_many_connections")
_REQUEST_TIMEOUT = _plain_answer(b"408 Request Timeout", b"request_timeout")


class BoundedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits above (see the module docstring)."""

    limits: Limits  # set on the subclass `protocol_class` makes

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        # "idle" (between requests), "headers" (a request begun), "body" (headers done).
        self._phase = "idle"
        self._header_bytes = 0
        self._header_count = 0
        self._refused = False
        self._boundary = False  # headers or a message ended in the chunk being parsed
        self._timer: asyncio.TimerHandle | None = None
        self._timer_limit = ""

    # -- connection -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # Counted before this one joins: `connections` holds every open connection.
        over = len(self.connections) >= self.limits.max_connections
        super().connection_made(transport)
        if over:
            self._refused = True
            _LIMIT_LOG.bit(
                "max_connections",
                f"{self.limits.max_connections} connections open: a new one got 503",
                self.client,
            )
            transport.write(_TOO_MANY_CONNECTIONS)
            transport.close()
            return
        # A connection that never sends a byte is held to the header time too.
        self._arm("header_timeout", self.limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused or self.parser is None:
            return
        self._boundary = False
        super().data_received(data)
        if self._refused or self.transport.is_closing():
            return
        if self._phase != "body" and not self._boundary:
            # Neither headers nor a message ended in this chunk: all of it was header bytes.
            self._header_bytes += len(data)
            if self._header_bytes > self.limits.max_header_bytes:
                self._refuse_headers(
                    f"request line and headers over {self.limits.max_header_bytes} bytes"
                )
                return
        # Timers only for a request left unfinished by this chunk: the usual request comes
        # whole in one chunk and costs none. A timer runs on across chunks (a byte now and
        # then does not restart it).
        if self._phase == "headers":
            if self._timer_limit != "header_timeout":
                self._arm("header_timeout", self.limits.header_timeout)
        elif self._phase == "body":
            if self._timer_limit != "body_timeout":
                self._arm("body_timeout", self.limits.body_timeout)
        else:
            self._disarm()  # between requests: uvicorn's keep-alive timer takes over

    # -- parser callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._phase = "headers"
        self._header_count = 0
        super().on_message_begin()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            return  # not kept; refused when the headers end (on_headers_complete)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._boundary = True
        self._phase = "body"
        self._header_bytes = 0
        if self._header_count > self.limits.max_headers:
            self._refuse_headers(f"over {self.limits.max_headers} headers")
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:  # a refused request has no cycle to take its body
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._boundary = True
        self._phase = "idle"
        if not self._refused:
            super().on_message_complete()

    # -- limits ---------------------------------------------------------------------------

    def _refuse_headers(self, text: str) -> None:
        _LIMIT_LOG.bit("headers", text, self.client)
        self._close_with(_HEADERS_TOO_LARGE)

    def _close_with(self, answer: bytes) -> None:
        self._disarm()
        self._refused = True
        if not self.transport.is_closing():
            if self.cycle is None or not self.cycle.response_started:
                self.transport.write(answer)
            self.transport.close()

    def _arm(self, limit: str, seconds: float) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._expired, limit)
        self._timer_limit = limit

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_limit = ""

    def _expired(self, limit: str) -> None:
        self._timer = None
        self._timer_limit = ""
        if self.transport.is_closing():
            return
        what = "headers" if limit == "header_timeout" else "body"
        seconds = self.limits.header_timeout if what == "headers" else self.limits.body_timeout
        _LIMIT_LOG.bit(limit, f"{what} not received within {seconds:g} s", self.client)
        self._close_with(_REQUEST_TIMEOUT)


def protocol_class(limits: Limits) -> type[BoundedHttpProtocol]:
    """The protocol uvicorn is given, with `limits` bound to it."""
    return type("BridgeHttpProtocol", (BoundedHttpProtocol,), {"limits": limits})


def run(app: Any, *, host: str, port: int, limits: Limits, **options: Any) -> None:
    """Serve `app` with uvicorn under `limits` (`options`: other uvicorn settings)."""
    uvicorn.run(
        app,
        host=host,
        port=port,
        http=protocol_class(limits),
        timeout_keep_alive=limits.keep_alive,
        **options,
    )
