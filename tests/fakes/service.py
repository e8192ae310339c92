"""What every stateful CRM fake shares: requests in, answers or faults out, two ways in.

A fake subclasses `FakeService`, keeps its own state and lists its `routes`; this module
gives it, for free:
- `transport()`: an `httpx.MockTransport`, and `asgi_app`: the same routes as an ASGI3
  app (see `tests.fakes.server.serve_in_thread`);
- a call log (`calls`, `count(...)`) and a sliding one-second rate window (`rate_limit`,
  429s counted in `throttled`, optional `retry_after` header);
- programmable faults: `fail_next`, `fail_after_apply` (the write is applied, the answer
  is lost: the crash window), `fail_randomly`, `down()`/`up()`, `latency`;
- hooks a test may set to act at a precise moment of a request (e.g. SIGKILL the bridge):
  `on_received(request)` before anything is applied (it may raise `Abort`),
  `on_applied(request, response)` once a write succeeded and before its answer goes out,
  `on_answered(request, response)` once the answer was handed to the client. They run in
  the thread serving the request.

A "timeout" is `httpx.ReadTimeout` through the transport and a long sleep over ASGI; a
"drop" is `httpx.RemoteProtocolError` / a connection closed in the middle of the answer;
while down the transport refuses connections and the ASGI app answers 503.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import httpx

from bridge.settings import CrmConfig

JSONDict = dict[str, Any]
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

# kind name → (how it fails, HTTP status, applied first)
FAULT_KINDS: dict[str, tuple[str, int, bool]] = {
    "429": ("status", 429, False),
    "500": ("status", 500, False),
    "502": ("status", 502, False),
    "503": ("status", 503, False),
    "timeout": ("timeout", 0, False),
    "drop": ("drop", 0, False),
    "apply-500": ("status", 500, True),
    "apply-timeout": ("timeout", 0, True),
    "apply-drop": ("drop", 0, True),
}


@dataclass
class FakeRequest:
    method: str
    path: str
    query: list[tuple[str, str]]
    headers: Mapping[str, str]  # lower-case names
    body: bytes
    origin: str  # scheme://host, for links in answers
    # Whether the rate window admitted it: decided on arrival (see `handle`), None before.
    admitted: bool | None = None

    def all(self, name: str) -> list[str]:
        """Values of `name` and of `name[]` (PHP-style arrays)."""
        return [value for key, value in self.query if key in (name, f"{name}[]")]

    def one(self, name: str, default: str = "") -> str:
        values = self.all(name)
        return values[0] if values else default

    def params(self) -> dict[str, list[str]]:
        grouped: dict[str, list[str]] = {}
        for key, value in self.query:
            grouped.setdefault(key, []).append(value)
        return grouped

    def json(self) -> Any:
        try:
            return json.loads(self.body) if self.body else None
        except ValueError as exc:
            raise ApiError(400, problem(400, "Bad Request", "body is not JSON")) from exc


@dataclass
class FakeResponse:
    status: int
    body: Any = None  # JSON; None: no body
    headers: dict[str, str] = field(default_factory=dict)

    def content(self) -> bytes:
        return b"" if self.body is None else json.dumps(self.body, ensure_ascii=False).encode()


class ApiError(Exception):
    """Raised by a route: answer with this status and body."""

    def __init__(self, status: int, body: JSONDict) -> None:
        super().__init__(f"HTTP {status}")
        self.response = FakeResponse(status, body)


class Abort(Exception):
    """The request gets no HTTP answer: "timeout", "drop" or "refuse"."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


def problem(status: int, title: str, detail: str) -> JSONDict:
    """An RFC 7807 body, as amoCRM sends with `application/problem+json`."""
    return {
        "title": title,
        "type": f"https://httpstatus.es/{status}",
        "status": status,
        "detail": detail,
    }


def telegram_fields(
    config: CrmConfig, telegram_id: str | None, telegram_username: str | None
) -> dict[str, str]:
    """A test contact's Telegram id and username under the fields `config` names for them
    (a value not given, or a field not configured, left out)."""
    ids = config.contact_fields
    pairs = ((ids.telegram_id, telegram_id), (ids.telegram_username, telegram_username))
    return {name: value for name, value in pairs if name and value is not None}


def only_digits(text: str) -> str:
    """A phone number as the CRMs compare it: its digits alone."""
    return re.sub(r"\D", "", text)


class TokenIssuer:
    """What every fake CRM's credentials share: access tokens that expire by the fake's
    clock (or never), refresh tokens, and single-use authorization codes. A rotating
    issuer spends a refresh token on use and answers a new one; otherwise the same one
    comes back, dead after `idle_expiry` seconds unused (Pipedrive: 60 days). Each fake
    words its answers (token shapes, error bodies) the way its vendor does."""

    def __init__(
        self,
        clock: Callable[[], float],
        ttl: Callable[[], float],
        *,
        prefixes: tuple[str, str] = ("access-", "refresh-"),
        rotates: bool = True,
        idle_expiry: float | None = None,
    ) -> None:
        self.clock = clock
        self.ttl = ttl
        self.prefixes = prefixes
        self.rotates = rotates
        self.idle_expiry = idle_expiry
        self.access: dict[str, float | None] = {}  # token → expires at (None: never)
        self.refresh: dict[str, float] = {}  # live refresh token → last used
        self.spent: set[str] = set()
        self.codes: set[str] = set()

    def issue_token(self, ttl: float | None = None, *, never: bool = False) -> str:
        token = f"{self.prefixes[0]}{secrets.token_hex(8)}"
        self.access[token] = None if never else self.clock() + (self.ttl() if ttl is None else ttl)
        return token

    def issue_pair(self, ttl: float | None = None) -> tuple[str, str]:
        refresh = f"{self.prefixes[1]}{secrets.token_hex(8)}"
        self.refresh[refresh] = self.clock()
        return self.issue_token(ttl), refresh

    def expire_all(self) -> None:
        self.access = dict.fromkeys(self.access, float("-inf"))

    def access_problem(self, token: str) -> str | None:
        """None for a valid token, else "unknown" or "expired"."""
        if token not in self.access:
            return "unknown"
        expires = self.access[token]
        return "expired" if expires is not None and expires <= self.clock() else None

    def refreshed(self, token: str) -> tuple[str, str] | str:
        """A new (access, refresh) pair, or why not: "unknown", "spent" or "idle"."""
        if token in self.spent:
            return "spent"
        last_used = self.refresh.get(token)
        if last_used is None:
            return "unknown"
        if self.idle_expiry is not None and self.clock() - last_used > self.idle_expiry:
            return "idle"
        if not self.rotates:
            self.refresh[token] = self.clock()
            return self.issue_token(), token
        del self.refresh[token]
        self.spent.add(token)
        return self.issue_pair()

    def exchanged(self, code: str) -> tuple[str, str] | None:
        """A new pair for a registered code, which is then used up (None: unknown)."""
        if code not in self.codes:
            return None
        self.codes.discard(code)
        return self.issue_pair()


class OAuthFake:
    """The credential calls tests make on a fake, answered by its `TokenIssuer`."""

    tokens: TokenIssuer
    _lock: threading.RLock

    def oauth_client(
        self,
        clock: Callable[[], float],
        client_id: str,
        client_secret: str,
        oauth_ttl: int,
        redirect_uri: str = "",
        **issuer: Any,
    ) -> None:
        """The app the fake's token endpoint knows, and a `TokenIssuer` whose access
        tokens live `oauth_ttl` seconds by `clock` (`issuer`: how the vendor's tokens
        look, rotate and expire unused)."""
        self.clock = clock
        self.client_id, self.client_secret = client_id, client_secret
        self.redirect_uri, self.oauth_ttl = redirect_uri, oauth_ttl
        self.tokens = TokenIssuer(lambda: self.clock(), lambda: self.oauth_ttl, **issuer)

    def issue_oauth_pair(self, ttl: float | None = None) -> tuple[str, str]:
        with self._lock:
            return self.tokens.issue_pair(ttl)

    def register_code(self, code: str) -> None:
        """An authorization code `grant_type=authorization_code` accepts once."""
        with self._lock:
            self.tokens.codes.add(code)

    def expire_all_access_tokens(self) -> None:
        with self._lock:
            self.tokens.expire_all()


@dataclass
class Call:
    """One request as the fake received it; `status` is None when it got no answer."""

    method: str
    path: str
    params: dict[str, list[str]]
    json: Any
    status: int | None = None
    fault: str | None = None
    at: float = 0.0  # `monotonic()` when the request arrived


@dataclass
class Fault:
    kind: str  # "status" | "timeout" | "drop"
    status: int = 503
    after_apply: bool = False
    method: str | None = None
    path_prefix: str | None = None
    skip: int = 0  # matching requests let through first (a read sharing a write's path)

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method != method:
            return False
        if self.method is None and self.after_apply and method not in ("POST", "PATCH", "PUT"):
            return False  # apply-then-fail is about writes unless told otherwise
        return self.path_prefix is None or path.startswith(self.path_prefix)


Route = tuple[str, "re.Pattern[str]", Callable[..., FakeResponse]]
RequestHook = Callable[[FakeRequest], None]
ResponseHook = Callable[[FakeRequest, "FakeResponse"], None]
WRITE_METHODS = ("POST", "PATCH", "PUT", "DELETE")


class FakeService:
    name = "fake"
    success_content_type = "application/json"

    def __init__(self, *, rate_limit: int, monotonic: Callable[[], float] = time.monotonic):
        self.rate_limit = rate_limit
        self.monotonic = monotonic
        self.latency = 0.0  # seconds of (async) sleep before each answer
        self.retry_after: float | None = None  # Retry-After on 429s, when set
        self.asgi_hang_seconds = 60.0  # how long an ASGI "timeout" keeps a client waiting
        self.calls: list[Call] = []
        self.throttled = 0  # 429 answers: from the rate window and injected
        self.routes: list[Route] = []
        self.origin = "http://fake.invalid"  # scheme://host of the latest request, for links
        self.on_received: RequestHook | None = None
        self.on_applied: ResponseHook | None = None  # writes only, status < 400
        self.on_answered: ResponseHook | None = None
        self._faults: deque[Fault] = deque()
        self._random: tuple[random.Random, float, tuple[str, ...]] | None = None
        self._down = False
        self._window: deque[float] = deque()
        self._released = threading.Event()
        self._lock = threading.RLock()  # the ASGI app may run in another thread

    # ---- what a subclass provides ---------------------------------------------------

    def authorise(self, request: FakeRequest) -> FakeResponse | None:
        """An error answer when the request may not proceed (checked after the rate)."""
        return None

    # ---- faults ---------------------------------------------------------------------

    def fail_next(
        self,
        n: int = 1,
        status: int = 503,
        *,
        kind: str = "status",
        method: str | None = None,
        path_prefix: str | None = None,
    ) -> None:
        """The next `n` matching requests fail before anything is applied."""
        with self._lock:
            self._faults.extend(Fault(kind, status, False, method, path_prefix) for _ in range(n))

    def fail_after_apply(
        self,
        n: int = 1,
        status: int = 500,
        *,
        kind: str = "status",
        method: str | None = None,
        path_prefix: str | None = None,
        skip: int = 0,
    ) -> None:
        """The next `n` matching writes, after `skip` more, are applied, then answered with
        `status` (or get `kind` "timeout"/"drop"): the window between a CRM write and the
        journal."""
        with self._lock:
            self._faults.extend(
                Fault(kind, status, True, method, path_prefix, skip) for _ in range(n)
            )

    def fail_randomly(
        self,
        rng: random.Random | None,
        p: float = 0.1,
        kinds: Sequence[str] = ("429", "500", "503", "timeout", "drop"),
    ) -> None:
        """Each request fails with probability `p`, of a kind drawn from `kinds` (see
        `FAULT_KINDS`, e.g. "apply-500"). `rng=None` turns it off."""
        unknown = set(kinds) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds: {sorted(unknown)}")
        with self._lock:
            self._random = (rng, p, tuple(kinds)) if rng is not None else None

    def stop_failing(self) -> None:
        with self._lock:
            self._faults.clear()
            self._random = None

    def down(self) -> None:
        self._down = True

    def up(self) -> None:
        self._down = False

    def release_hangs(self) -> None:
        """End every ASGI "timeout" sleep now (the server is stopping)."""
        self._released.set()

    def count(
        self, method: str | None = None, path_prefix: str | None = None, status: int | None = None
    ) -> int:
        """Requests received (answered or not), optionally only matching ones."""
        with self._lock:
            return sum(
                1
                for call in self.calls
                if (method is None or call.method == method)
                and (path_prefix is None or call.path.startswith(path_prefix))
                and (status is None or call.status == status)
            )

    # ---- the two ways in ------------------------------------------------------------

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self._mock_handler)

    async def _mock_handler(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        fake_request = FakeRequest(
            request.method,
            request.url.path,
            parse_qsl(request.url.query.decode("latin-1"), keep_blank_values=True),
            {key.lower(): value for key, value in request.headers.items()},
            body,
            f"{request.url.scheme}://{request.url.netloc.decode('latin-1')}",
        )
        try:
            response = await self.handle(fake_request)
        except Abort as abort:
            message = f"{self.name}: {abort.kind}"
            if abort.kind == "timeout":
                raise httpx.ReadTimeout(message, request=request) from None
            if abort.kind == "drop":
                raise httpx.RemoteProtocolError(message, request=request) from None
            raise httpx.ConnectError(message, request=request) from None
        headers = self._headers(response)
        answer = httpx.Response(response.status, headers=headers, content=response.content())
        if self.on_answered is not None:
            self.on_answered(fake_request, response)
        return answer

    async def asgi_app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                phase = str(message["type"]).removeprefix("lifespan.")
                await send({"type": f"lifespan.{phase}.complete"})
                if phase == "shutdown":
                    return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        origin = f"{scope.get('scheme', 'http')}://{headers.get('host', 'localhost')}"
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        fake_request = FakeRequest(scope["method"], scope["path"], query, headers, body, origin)
        try:
            response = await self.handle(fake_request)
        except Abort as abort:
            if abort.kind == "timeout":
                await self._hang()
                return  # the client gave up long ago
            if abort.kind == "drop":
                start = {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-length", b"64")],
                }
                await send(start)
                raise ConnectionAbortedError(f"{self.name} dropped the connection") from None
            response = FakeResponse(503, problem(503, "Service Unavailable", "down"))
        content = response.content()
        raw_headers = [(k.encode(), v.encode()) for k, v in self._headers(response).items()]
        raw_headers.append((b"content-length", str(len(content)).encode()))
        await send(
            {"type": "http.response.start", "status": response.status, "headers": raw_headers}
        )
        await send({"type": "http.response.body", "body": content})
        if self.on_answered is not None:
            self.on_answered(fake_request, response)

    async def _hang(self) -> None:
        deadline = time.monotonic() + self.asgi_hang_seconds
        while time.monotonic() < deadline and not self._released.is_set():  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    def _headers(self, response: FakeResponse) -> dict[str, str]:
        headers = dict(response.headers)
        if response.body is not None:
            kind = "application/problem+json" if response.status >= 400 else None
            headers.setdefault("content-type", kind or self.success_content_type)
        return headers

    # ---- dispatch -------------------------------------------------------------------

    async def handle(self, request: FakeRequest) -> FakeResponse:
        """Answer one request, or raise `Abort` when it gets no answer."""
        try:
            payload = json.loads(request.body) if request.body else None
        except ValueError:
            payload = None
        call = Call(request.method, request.path, request.params(), payload, at=self.monotonic())
        with self._lock:
            self.calls.append(call)
            # A refused connection never reaches the fault queue: queued faults wait.
            fault = None if self._down else self._take_fault(request)
            # A CRM counts requests as they arrive (amoCRM: 7 a second per integration,
            # developers.kommo.com/docs/limitations), not when the fake has slept its
            # latency and won the lock: the fake's own slow answers must not bunch up
            # requests that arrived evenly spaced. A fault answered before anything is
            # applied stands for trouble on the way, and takes no place in the window.
            if not self._down and (fault is None or fault.after_apply):
                request.admitted = self._admit()
        try:
            if self.on_received is not None:
                self.on_received(request)  # may raise `Abort` to keep the request unapplied
            if self._down:
                raise Abort("refuse")
            if self.latency:
                await asyncio.sleep(self.latency)
            if fault is not None and not fault.after_apply:
                response = self._fault_answer(fault)
            else:
                with self._lock:
                    response = self._serve(request)
                applied = request.method in WRITE_METHODS and response.status < 400
                if applied and self.on_applied is not None:
                    self.on_applied(request, response)
                if fault is not None and response.status < 400:
                    response = self._fault_answer(fault)
        except Abort as abort:
            applied_first = fault is not None and fault.after_apply and abort.kind == fault.kind
            call.fault = f"{'apply-' if applied_first else ''}{abort.kind}"
            raise
        call.status = response.status
        if fault is not None:
            call.fault = f"{'apply-' if fault.after_apply else ''}{fault.status}"
        return response

    def _take_fault(self, request: FakeRequest) -> Fault | None:
        for fault in self._faults:
            if fault.matches(request.method, request.path):
                if fault.skip:
                    fault.skip -= 1
                    return None
                self._faults.remove(fault)
                return fault
        if self._random is not None:
            rng, p, kinds = self._random
            if rng.random() < p:
                kind, status, after_apply = FAULT_KINDS[rng.choice(kinds)]
                return Fault(kind, status, after_apply)
        return None

    def _fault_answer(self, fault: Fault) -> FakeResponse:
        if fault.kind in ("timeout", "drop"):
            raise Abort(fault.kind)
        if fault.status == 429:
            return self._too_many()
        return FakeResponse(fault.status, problem(fault.status, "Injected fault", "fault"))

    def _too_many(self) -> FakeResponse:
        self.throttled += 1
        headers = {} if self.retry_after is None else {"retry-after": str(self.retry_after)}
        return FakeResponse(429, problem(429, "Too Many Requests", "rate limit"), headers)

    def _serve(self, request: FakeRequest) -> FakeResponse:
        self.origin = request.origin
        admitted = request.admitted if request.admitted is not None else self._admit()
        if not admitted:
            return self._too_many()
        refused = self.authorise(request)
        if refused is not None:
            return refused
        known_path = False
        for method, pattern, handler in self.routes:
            match = pattern.fullmatch(request.path)
            if match is None:
                continue
            known_path = True
            if method == request.method:
                try:
                    return handler(request, *match.groups())
                except ApiError as error:
                    return error.response
        status, title = (405, "Method Not Allowed") if known_path else (404, "Not Found")
        return FakeResponse(status, problem(status, title, request.path))

    def _admit(self) -> bool:
        """A sliding one-second window over admitted requests."""
        return self._admit_in(self._window, self.rate_limit)

    def _admit_in(self, window: deque[float], limit: int, period: float = 1.0) -> bool:
        """Whether a request fits `window` (the times of the ones admitted), at most
        `limit` in any `period` seconds; an admitted one is added to it."""
        now = self.monotonic()
        while window and window[0] <= now - period:
            window.popleft()
        if len(window) >= limit:
            return False
        window.append(now)
        return True
