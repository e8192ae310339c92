"""The ASGI app: `create_app(settings)` wires store, adapters and worker in a lifespan;
`POST /webhook/payment`, `POST /webhook/order` and other platforms'
`POST /webhook/source/NAME` (bridge.sources) are served in front of Litestar (`BridgeApp`),
the rest by it.

Every inbound request is answered with one of the codes of SPEC §2 and logged to the
`requests` table; the event itself is committed before any CRM is called.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
from litestar import Litestar, Request, Response, get, post
from litestar.datastructures import State
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException
from litestar.types import HTTPScope, Receive, Scope, Send
from pydantic import ValidationError

from bridge.alerts import Alerter, alert_transport
from bridge.asgi_io import (
    BadContentLength,
    BodyTimeout,
    BodyTooLarge,
    ClientGone,
    header_map,
    read_body,
    send_json,
)
from bridge.backsync import receive as crm_events
from bridge.backsync.config import callback_target
from bridge.backsync.events import InboundRequest
from bridge.canonical import MAX_INT_DIGITS, decode_canonical
from bridge.crm import build_adapters, check_order_sections
from bridge.crm.base import CrmAdapter
from bridge.crypto import TokenCipher
from bridge.errors import ConfigError, StoreUnavailable
from bridge.health_view import health_content
from bridge.intake import OrderFields, order_intake, payment_intake
from bridge.logs import clip
from bridge.metrics import CONTENT_TYPE, Metrics
from bridge.order_payloads import parse_order
from bridge.payloads import CourseOrder, parse_payment, unstorable_values, validation_details
from bridge.reload import Loader, reload_runtime
from bridge.settings import Settings
from bridge.signing import verify
from bridge.sources.auth import source_secrets, verify_source
from bridge.sources.config import SourceAnswer, SourceConfig
from bridge.sources.intake import BodyError, MappingFailed, decode_body, source_intake
from bridge.store import DeliveryOutcome, EventView, NewEvent, RequestRecord, Store
from bridge.store.backsync import PLATFORM
from bridge.worker import Worker

log = logging.getLogger("bridge.app")

Clock = Callable[[], float]
# Builds the CRM adapters at start (default `bridge.crm.build_adapters`); tests run the
# whole app over in-memory CRMs with it.
AdapterBuilder = Callable[[Settings, Store], Mapping[str, CrmAdapter]]
PAYMENT_ROUTE = "/webhook/payment"
ORDER_ROUTE = "/webhook/order"
SOURCE_ROUTE = "/webhook/source/"  # + NAME of a `[source.NAME]` section (bridge.sources)


@dataclass
class Runtime:
    settings: Settings
    store: Store
    worker: Worker
    adapters: Mapping[str, CrmAdapter]
    metrics: Metrics
    clock: Clock
    hmac_secrets: tuple[str, ...]
    standard_secrets: tuple[str, ...]
    worker_task: asyncio.Task[None] | None = None
    config_loaded_at: float | None = None
    alerter: Alerter | None = None
    transports: Mapping[str, httpx.AsyncBaseTransport] | None = None
    # `serve` records what it loaded (bridge.staleness) at start and each reload.
    on_reloaded: Callable[[Store, Settings], Awaitable[None]] | None = None


def create_app(
    settings: Settings,
    *,
    transports: Mapping[str, httpx.AsyncBaseTransport] | None = None,
    clock: Clock = time.time,
    reloader: Loader | None = None,
    on_loaded: Callable[[Store, Settings], Awaitable[None]] | None = None,
    adapters: AdapterBuilder | None = None,
) -> BridgeApp:
    """`reloader`: how SIGHUP re-reads the settings (`serve` gives it; tests need none);
    `on_loaded`: called with the settings in force, at start and after each reload."""
    app = BridgeApp(settings, transports, clock)
    app.reloader, app.on_loaded, app.adapters = reloader, on_loaded, adapters
    return app


class BridgeApp:
    """What the server runs. `/webhook/payment`, the route every webhook takes, goes
    straight to its handler; everything else, the lifespan included, to Litestar.

    Litestar's routing, exception middleware, `Request` and `Response` cost more per
    webhook than the bridge's own work on it, so the payment route does without them
    (see `bridge.asgi_io`); its answers are the same bytes Litestar's would be."""

    def __init__(
        self,
        settings: Settings,
        transports: Mapping[str, httpx.AsyncBaseTransport] | None,
        clock: Clock,
    ) -> None:
        self._settings = settings
        self._transports = transports
        self._clock = clock
        self.runtime: Runtime | None = None  # while the lifespan runs
        self.reloader: Loader | None = None
        self.on_loaded: Callable[[Store, Settings], Awaitable[None]] | None = None
        self.adapters: AdapterBuilder | None = None
        self.litestar = Litestar(
            route_handlers=[health, metrics, crm_event],
            lifespan=[self._lifespan],
            request_max_body_size=settings.max_body_bytes,
            exception_handlers={Exception: _internal_error},
            openapi_config=None,
            logging_config=None,  # `crm-bridge serve` configures logging for journald itself
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP and scope["path"] in _WEBHOOKS:
            await _webhook(self.runtime, _WEBHOOKS[scope["path"]], scope, receive, send)
        elif scope["type"] == ScopeType.HTTP and scope["path"].startswith(SOURCE_ROUTE):
            source = _source_webhook(self.runtime, scope)
            await _webhook(self.runtime, source, scope, receive, send)
        else:
            await self.litestar(scope, receive, send)

    @asynccontextmanager
    async def _lifespan(self, app: Litestar) -> AsyncIterator[None]:
        runtime = await _start(self._settings, self._transports, self._clock, self.adapters)
        runtime.transports = self._transports
        runtime.on_reloaded = self.on_loaded
        app.state.runtime = runtime
        self.runtime = runtime
        if self.on_loaded is not None:
            await self.on_loaded(runtime.store, runtime.settings)
        loop = asyncio.get_running_loop()
        if self.reloader is not None:
            reloader = self.reloader
            loop.add_signal_handler(
                signal.SIGHUP, lambda: loop.create_task(reload_runtime(runtime, reloader))
            )
        try:
            yield
        finally:
            if self.reloader is not None:
                loop.remove_signal_handler(signal.SIGHUP)
            self.runtime = None
            await _stop(runtime)


async def _start(
    settings: Settings,
    transports: Mapping[str, httpx.AsyncBaseTransport] | None,
    clock: Clock,
    build: AdapterBuilder | None = None,
) -> Runtime:
    cipher = (
        TokenCipher([key.get_secret_value() for key in settings.bridge_secret_key])
        if settings.bridge_secret_key
        else None
    )
    store = await Store.open(settings.database_path, clock=clock, cipher=cipher)
    metrics = Metrics()
    adapters: Mapping[str, CrmAdapter]
    try:
        if build is None:
            adapters = build_adapters(
                settings, store, transports=transports, on_call=metrics.observe_call
            )
        else:
            adapters = build(settings, store)
            check_order_sections(settings, adapters)
    except ConfigError:
        await store.close()
        raise
    try:
        callback_target(settings)  # back-sync's URL and secret: refused at start if unusable
    except ConfigError:
        await store.close()
        raise
    alerter = Alerter(settings, store, clock=clock, transport=alert_transport(transports))
    worker = Worker(
        store,
        adapters,
        settings,
        clock=clock,
        pause_probe_seconds=settings.pause_probe_seconds,
        on_outcome=metrics.observe_outcome,
        on_alert=alerter.notify,
        # Tests hand the platform stand-in in under the name "platform".
        platform_transport=(transports or {}).get(PLATFORM),
    )
    runtime = Runtime(
        settings,
        store,
        worker,
        adapters,
        metrics,
        clock,
        config_loaded_at=clock(),
        alerter=alerter,
        hmac_secrets=tuple(s.get_secret_value() for s in settings.webhook_secrets),
        standard_secrets=tuple(s.get_secret_value() for s in settings.standard_webhook_secrets),
    )
    runtime.worker_task = asyncio.get_running_loop().create_task(worker.run())
    alerter.start()
    # Everything built so far lives as long as the process: keep the cyclic collector's
    # full passes (tens of ms with the whole framework on the heap) off the request path.
    gc.collect()
    gc.freeze()
    log.info(
        "bridge started: database %s, CRMs %s, wait window %ss",
        settings.database_path,
        ", ".join(adapters) or "none",
        settings.wait_seconds,
    )
    return runtime


async def _stop(runtime: Runtime) -> None:
    await runtime.worker.stop(runtime.settings.shutdown_grace_seconds)
    if runtime.worker_task is not None:
        await asyncio.gather(runtime.worker_task, return_exceptions=True)
    for adapter in runtime.adapters.values():
        await adapter.connection.aclose()
    if runtime.alerter is not None:
        await runtime.alerter.stop()
    await runtime.store.close()
    log.info("bridge stopped")


def _runtime(state: State) -> Runtime:
    runtime: Runtime = state.runtime
    return runtime


async def _webhook(
    rt: Runtime | None, webhook: _Webhook, scope: HTTPScope, receive: Receive, send: Send
) -> None:
    """POST /webhook/payment, /webhook/order or /webhook/source/NAME, on the bare ASGI
    interface (see `BridgeApp`)."""
    client = scope.get("client")
    # The remote address goes into log lines and the request log: a proxy's
    # X-Forwarded-For can make it anything, so it is clipped (an IPv6 address is <= 45).
    remote = clip(client[0], 64) if client else ""
    reply = _Replier(rt, webhook.route, remote) if rt is not None else None
    try:
        answer = await _webhook_answer(rt, reply, webhook, scope, receive)
    except Exception:
        # What Litestar's exception handler did for this route: a clean 500, the trace
        # in the journal only, and a row in the request log like every other answer.
        log.exception("unhandled error on %s %s", clip(scope["method"], 16), webhook.route)
        answer = _Answer(500, {"error": "internal_error"}, close=True)
        if reply is not None:
            reply.record(500, "not known", "internal error")
    if answer is not None:
        await send_json(send, answer.code, answer.payload, answer.headers, close=answer.close)


async def _webhook_answer(
    rt: Runtime | None,
    reply: _Replier | None,
    webhook: _Webhook,
    scope: HTTPScope,
    receive: Receive,
) -> _Answer | None:
    """The answer to send, or None when the client left before its body arrived."""
    if rt is None or reply is None:  # the store is not open: before startup ends or after
        if scope["method"] != "POST":  # shutdown began; nothing can be logged either
            return _Answer(405, {"error": "method_not_allowed"}, _ALLOW_POST)
        return _Answer(503, {"error": "storage_unavailable"})
    if scope["method"] != "POST":
        detail = f"method {clip(scope['method'], 16)}"
        answer = reply(405, {"error": "method_not_allowed"}, "not checked", detail)
        return _Answer(answer.code, answer.payload, _ALLOW_POST)
    if not webhook.known:
        # Before the body is read: nothing is configured to take it.
        answer = reply(404, {"error": "unknown_source"}, "not checked", "no such source")
        return _Answer(answer.code, answer.payload, close=True)
    try:
        settings = rt.settings
        body = await read_body(
            scope, receive, settings.max_body_bytes, seconds=settings.body_timeout_seconds
        )
    except BodyTooLarge:
        # Closed after the answer: whatever of the body the bounded drain did not read is
        # not worth reading (see `read_body`).
        answer = reply(413, {"error": "payload_too_large"}, "not checked", "body over limit")
        return _Answer(answer.code, answer.payload, close=True)
    except BadContentLength:
        answer = reply(400, {"error": "invalid Content-Length"}, "not checked", "bad body")
        return _Answer(answer.code, answer.payload, close=True)
    except BodyTimeout:
        answer = reply(408, {"error": "request_timeout"}, "not checked", "body too slow")
        return _Answer(answer.code, answer.payload, close=True)
    except ClientGone:
        return None
    return await webhook.take(rt, reply, header_map(scope), body)


_ALLOW_POST = ((b"allow", b"POST"),)


def _verified(
    rt: Runtime, reply: _Replier, route: str, headers: Mapping[str, str], body: bytes
) -> str | _Answer:
    """The verdict's text for the request log, or the 401 answer."""
    verdict = verify(
        headers,
        body,
        hmac_secrets=rt.hmac_secrets,
        standard_secrets=rt.standard_secrets,
        legacy_enabled=rt.settings.legacy_secret_header_enabled,
        now=rt.clock(),
    )
    if not verdict.ok:
        log.warning(
            "rejected %s from %s: %s (%s)",  # remote is clipped; reason and scheme are ours
            route,
            reply.remote,
            verdict.reason,
            verdict.scheme,
        )
        return reply(401, {"error": "invalid_signature"}, f"{verdict.scheme}: {verdict.reason}")
    return f"{verdict.scheme}: ok"


async def _take_payment(
    rt: Runtime, reply: _Replier, headers: Mapping[str, str], body: bytes
) -> _Answer:
    settings = rt.settings
    verdict_text = _verified(rt, reply, PAYMENT_ROUTE, headers, body)
    if isinstance(verdict_text, _Answer):
        return verdict_text
    try:
        body_text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return reply(400, {"error": f"body is not JSON: {exc}"}, verdict_text)
    order: OrderFields | _Refusal | None = decode_canonical(body)
    if order is None:
        order = _parse_lenient(body_text)
    if isinstance(order, _Refusal):
        return reply(order.code, order.payload, verdict_text, order.detail)
    intake = payment_intake(order, body_text, settings)
    return await _store_event(rt, reply, intake.event, intake.warnings, order.status, verdict_text)


async def take_source(
    rt: Runtime,
    reply: _Replier,
    name: str,
    source: SourceConfig,
    headers: Mapping[str, str],
    query: str,
    body: bytes,
) -> _Answer:
    """POST /webhook/source/NAME once its body is read: check, decode, map, store."""
    secrets = source_secrets(rt.settings, name)
    verdict = verify_source(source.auth, secrets, headers, query, body, now=rt.clock())
    if not verdict.ok:
        log.warning(
            "rejected source %s from %s: %s (%s)",
            name,
            reply.remote,
            verdict.reason,
            verdict.scheme,
        )
        answer = reply(401, {"error": "invalid_signature"}, f"{verdict.scheme}: {verdict.reason}")
        challenge = _BASIC_CHALLENGE if source.auth.scheme == "basic" else ()
        return _Answer(answer.code, answer.payload, challenge)
    verdict_text = f"{verdict.scheme}: ok"
    try:
        body_text = body.decode("utf-8")
        document = decode_body(source.format, body_text)
    except UnicodeDecodeError as exc:
        return reply(400, {"error": f"body is not UTF-8: {exc.reason}"}, verdict_text)
    except BodyError as exc:
        return reply(400, {"error": str(exc)}, verdict_text)
    problems = unstorable_values(document)
    if problems:
        details = validation_details(ValidationError.from_exception_data("Body", problems))
        fields = ", ".join(detail["field"] for detail in details)
        return reply(422, {"error": "invalid_payload", "details": details}, verdict_text, fields)
    received = datetime.fromtimestamp(rt.clock(), UTC)
    try:
        intake = source_intake(name, source, document, body_text, rt.settings, received)
    except MappingFailed as exc:
        details = [
            {"field": f.field, "expression": f.expression, "error": f.error} for f in exc.failures
        ]
        detail = clip("; ".join(f"{f.field} {f.expression!r}" for f in exc.failures), 200)
        return reply(422, {"error": "mapping_failed", "details": details}, verdict_text, detail)
    return await _store_event(
        rt,
        reply,
        intake.event,
        intake.warnings,
        intake.payment.status,
        verdict_text,
        fixed=source.answer,
    )


_BASIC_CHALLENGE = ((b"www-authenticate", b'Basic realm="crm-bridge"'),)


async def _store_event(
    rt: Runtime,
    reply: _Replier,
    event: NewEvent,
    warnings: Sequence[str],
    status: str,
    verdict_text: str,
    *,
    fixed: SourceAnswer | None = None,
) -> _Answer:
    """Store the event and answer: the bridge's own answers, or the source's `fixed` one
    (given at once, whatever the outcome: such a platform does not read it)."""
    key = event.key
    try:
        stored = await rt.store.intake(event)
    except StoreUnavailable as exc:
        # A WARNING: the writer logs the outage itself at ERROR, once per failed batch,
        # so `journalctl -p err` shows one line per outage, not two per webhook.
        log.warning("cannot store payment %s: %s", key, exc)
        return reply(503, {"error": "storage_unavailable"}, verdict_text, key=key)
    for warning in warnings:
        log.warning("payment %s: %s", key, clip(warning, 200))
    if stored.state_changed:  # e.g. PENDING, then CONFIRMED: the new state is stored
        log.info("event=payment:%s status changed to %r", key, clip(status, 64))
    if not stored.created:
        if fixed is not None:
            if stored.status != "success":
                rt.worker.wake()  # as `_answer_repeat`: an unfinished event is retried now
            code = fixed.duplicate_code or fixed.code
            body = fixed.body if fixed.duplicate_body is None else fixed.duplicate_body
            return reply(code, body, verdict_text, f"repeat of {stored.status} event", key=key)
        return _answer_repeat(rt, reply, stored.status, key, verdict_text)
    if event.status == "skipped":
        log.info("event=payment:%s outcome=skipped reason=%r", key, clip(event.note, 120))
        if fixed is not None:
            return reply(fixed.code, fixed.body, verdict_text, "skipped", key=key)
        body_json = {"status": "skipped", "reason": event.note}
        return reply(202, body_json, verdict_text, key=key)
    rt.worker.wake()
    if fixed is not None:
        return reply(fixed.code, fixed.body, verdict_text, "queued", key=key)
    if rt.settings.wait_seconds == 0:
        return reply(202, {"status": "queued"}, verdict_text, key=key)
    view = await _wait_for_outcome(rt, stored.event_id)
    code, payload = _response_for(view)
    return reply(code, payload, verdict_text, key=key)


@dataclass(frozen=True)
class _Answer:
    code: int
    payload: Mapping[str, Any]
    headers: tuple[tuple[bytes, bytes], ...] = ()
    close: bool = False  # `Connection: close`: the request was not read to its end


@dataclass(frozen=True)
class _Refusal:
    code: int
    payload: dict[str, Any]
    detail: str = ""


class _NumberTooLong(Exception):
    pass


def _bounded_int(text: str) -> int:
    # Checked on the digits' text, before conversion: past MAX_INT_DIGITS Python's int()
    # raises ValueError (a 500 before, and a stored body that failed the worker forever).
    if len(text) - text.startswith("-") > MAX_INT_DIGITS:
        raise _NumberTooLong
    return int(text)


def _parse_lenient(body_text: str) -> CourseOrder | _Refusal:
    """Any body the platform's own shape did not fit: the pydantic models decide."""
    return _parsed(body_text, lambda raw: parse_payment(raw).course_order)


T = TypeVar("T")


def _parsed(body_text: str, parse: Callable[[object], T]) -> T | _Refusal:
    """The body's JSON through `parse` (a pydantic model), or the 400/422 refusal."""
    try:
        raw = json.loads(body_text, parse_int=_bounded_int)
    except json.JSONDecodeError as exc:
        return _Refusal(400, {"error": f"body is not JSON: {exc}"})
    except RecursionError:
        return _Refusal(400, {"error": "body is not JSON we accept: nested too deep"})
    except _NumberTooLong:
        error = f"body is not JSON we accept: a whole number over {MAX_INT_DIGITS} digits"
        return _Refusal(400, {"error": error})
    try:
        return parse(raw)
    except ValidationError as exc:
        details = validation_details(exc)
        fields = ", ".join(detail["field"] for detail in details)
        return _Refusal(422, {"error": "invalid_payload", "details": details}, fields)


async def _take_order(
    rt: Runtime, reply: _Replier, headers: Mapping[str, str], body: bytes
) -> _Answer:
    """POST /webhook/order (SPEC §8): the payment route's answers, plus 202 stale."""
    verdict_text = _verified(rt, reply, ORDER_ROUTE, headers, body)
    if isinstance(verdict_text, _Answer):
        return verdict_text
    try:
        body_text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return reply(400, {"error": f"body is not JSON: {exc}"}, verdict_text)
    webhook = _parsed(body_text, parse_order)
    if isinstance(webhook, _Refusal):
        return reply(webhook.code, webhook.payload, verdict_text, webhook.detail)
    intake = order_intake(webhook, body_text, rt.settings)
    key = intake.event.key
    try:
        stored = await rt.store.intake(intake.event)
    except StoreUnavailable as exc:
        log.warning("cannot store order event %s: %s", key, exc)
        return reply(503, {"error": "storage_unavailable"}, verdict_text, key=key)
    for warning in intake.warnings:
        log.warning("order %s: %s", key, clip(warning, 200))
    if stored.stale:
        # Stored (the audit keeps it), delivered nowhere: a newer update came first.
        log.info("event=order:%s outcome=stale", key)
        return reply(202, {"status": "stale"}, verdict_text, "stale", key=key)
    if not stored.created:
        return _answer_repeat(rt, reply, stored.status, key, verdict_text)
    if intake.event.status == "skipped":
        log.info("event=order:%s outcome=skipped reason=%r", key, intake.event.note)
        return reply(202, {"status": "skipped", "reason": intake.event.note}, verdict_text, key=key)
    rt.worker.wake()
    if rt.settings.wait_seconds == 0:
        return reply(202, {"status": "queued"}, verdict_text, key=key)
    code, payload = _response_for(await _wait_for_outcome(rt, stored.event_id))
    return reply(code, payload, verdict_text, key=key)


@dataclass(frozen=True)
class _Webhook:
    route: str
    take: Callable[[Runtime, _Replier, Mapping[str, str], bytes], Awaitable[_Answer]]
    known: bool = True  # False: a source name no section has (404 before the body)


_PAYMENT = _Webhook(PAYMENT_ROUTE, _take_payment)
_ORDER = _Webhook(ORDER_ROUTE, _take_order)
# Litestar would take the path with a trailing slash for the same route.
_WEBHOOKS = {
    PAYMENT_ROUTE: _PAYMENT,
    PAYMENT_ROUTE + "/": _PAYMENT,
    ORDER_ROUTE: _ORDER,
    ORDER_ROUTE + "/": _ORDER,
}


def _source_webhook(rt: Runtime | None, scope: HTTPScope) -> _Webhook:
    """POST /webhook/source/NAME as a webhook: logged and counted under the path without
    its query (which may carry the source's token), one label for every unknown name so
    that what a scanner tries cannot grow the metrics without end."""
    name = scope["path"].removeprefix(SOURCE_ROUTE).rstrip("/")
    found = rt.settings.file.source.get(name) if rt is not None else None
    if found is None:
        return _Webhook(SOURCE_ROUTE + "*", _no_source, known=False)
    source, query = found, scope["query_string"].decode("latin-1")

    async def take(
        rt: Runtime, reply: _Replier, headers: Mapping[str, str], body: bytes
    ) -> _Answer:
        return await take_source(rt, reply, name, source, headers, query, body)

    return _Webhook(SOURCE_ROUTE + name, take)


async def _no_source(
    rt: Runtime, reply: _Replier, headers: Mapping[str, str], body: bytes
) -> _Answer:
    raise AssertionError("unreachable: an unknown source is answered 404 before its body")


def _answer_repeat(rt: Runtime, reply: _Replier, status: str, key: str, verdict: str) -> _Answer:
    if status == "success":
        return reply(409, {"status": "duplicate"}, verdict, "already processed", key=key)
    if status == "skipped":
        return reply(202, {"status": "skipped", "reason": "already skipped"}, verdict, key=key)
    rt.worker.wake()  # the store already moved its deliveries to "due now"
    return reply(202, {"status": "queued"}, verdict, f"repeat of {status} event", key=key)


async def _wait_for_outcome(rt: Runtime, event_id: int) -> EventView | None:
    """Wait up to WAIT_SECONDS for the event to settle; None when the window closed."""
    deadline = rt.clock() + rt.settings.wait_seconds
    signal = rt.worker.settled_signal(event_id)
    try:
        while True:
            signal.clear()
            try:
                view = await rt.store.event_by_id(event_id)
            except StoreUnavailable:
                return None
            if view is None or view.status in ("success", "failed", "not_found"):
                return view
            if not _progress_possible(view, deadline, rt.worker.paused()):
                return view
            remaining = deadline - rt.clock()
            if remaining <= 0:
                return view
            try:
                await asyncio.wait_for(signal.wait(), timeout=remaining)
            except TimeoutError:
                return await rt.store.event_by_id(event_id)
    finally:
        rt.worker.forget_signal(event_id)


def _progress_possible(view: EventView, deadline: float, paused: Mapping[str, str]) -> bool:
    for delivery in view.deliveries:
        if delivery.status == "processing":
            return True
        if (
            delivery.status in ("pending", "retrying")
            and delivery.crm not in paused
            and delivery.next_attempt_at <= deadline
        ):
            return True
    return False


def _response_for(view: EventView | None) -> tuple[int, dict[str, Any]]:
    if view is None:
        return 202, {"status": "queued"}
    results = {d.crm: _delivery_result(d) for d in view.deliveries}
    if view.status == "success":
        return 200, {"status": "success", "results": results}
    if view.status == "not_found":
        return 404, {"status": "not_found", "results": results}
    # Stored and owned by the bridge from here: it retries, or waits for an operator.
    status = "failed" if view.status == "failed" else "queued"
    return 202, {"status": status, "results": results}


def _delivery_result(delivery: DeliveryOutcome) -> dict[str, Any]:
    if delivery.status == "success":
        return {
            "contact_id": delivery.contact_id,
            "lead_id": delivery.deal_id,
            "lead_created": bool(delivery.deal_created),
        }
    result: dict[str, Any] = {"status": delivery.status}
    if delivery.last_error:
        # The CRM's own error text (which may quote its answer, field names, data of other
        # customers) stays with the operator: `crm-bridge show` and the deliveries table.
        result["error"] = _CALLER_REASONS.get(delivery.status, "not delivered yet")
    return result


# What the platform is told about a delivery that did not succeed.
_CALLER_REASONS = {
    "failed": "the CRM refused the delivery; the operator has the details",
    "dead": "delivery gave up after its retries; the operator has the details",
    "not_found": "nothing to update in the CRM; the operator has the details",
}


class _Replier:
    """Makes the answer and queues the request-log row and metrics for it."""

    def __init__(self, rt: Runtime, route: str, remote: str) -> None:
        self._rt = rt
        self._route = route
        self.remote = remote

    def __call__(
        self,
        code: int,
        payload: Mapping[str, Any],
        verdict: str,
        detail: str = "",
        *,
        key: str | None = None,
    ) -> _Answer:
        self.record(code, verdict, detail, key=key)
        return _Answer(code, payload)

    def record(self, code: int, verdict: str, detail: str = "", *, key: str | None = None) -> None:
        """Queue the request-log row and count the answer."""
        record = RequestRecord(self._route, self.remote, verdict, code, key, detail)
        self._rt.store.log_request(record)
        self._rt.metrics.count_request(self._route, code)


@post(crm_events.ROUTE + "/{name:str}", status_code=200)
async def crm_event(request: Request[Any, Any, State]) -> Response[Any]:
    """POST /webhook/crm/{name}: a CRM telling of deals moved (bridge.backsync.receive).
    Not the hot path, so Litestar serves it; stored before the 2xx, answered without
    waiting for the worker."""
    rt = _runtime(request.app.state)
    name = str(request.path_params["name"])
    body = await request.body()
    client = request.client
    remote = clip(client.host, 64) if client else ""
    inbound = InboundRequest(request.method, _public_url(request.scope), request.headers, body)
    taken = await crm_events.take(rt.store, rt.settings, name, inbound, rt.clock(), remote)
    route = f"{crm_events.ROUTE}/{clip(name, 64)}"
    rt.store.log_request(
        RequestRecord(route, remote, taken.verdict, taken.code, taken.key, taken.detail)
    )
    rt.metrics.count_request(crm_events.ROUTE, taken.code)  # one label for every section
    if taken.new:
        rt.worker.wake()
    return Response(content=taken.payload, status_code=taken.code)


def _public_url(scope: Any) -> str:
    """The URL the CRM called, as HubSpot signs it: the scheme as the server saw it (the
    server believes `X-Forwarded-Proto` from `FORWARDED_ALLOW_IPS` only, so behind the
    proxy it is the public `https`), the `Host` the proxy passes on (`proxy_set_header
    Host $host`), the path and query as sent, undecoded."""
    headers = dict(scope.get("headers") or ())
    host = headers.get(b"host", b"").decode("latin-1")
    if not host:
        server = scope.get("server")
        host = f"{server[0]}:{server[1]}" if server else "localhost"
    # Some servers' `raw_path` carries the query too (ASGI says it should not).
    raw_path = scope.get("raw_path") or scope["path"].encode()
    path = raw_path.split(b"?", 1)[0].decode("latin-1")
    query = (scope.get("query_string") or b"").decode("latin-1")
    return f"{scope.get('scheme', 'http')}://{host}{path}" + (f"?{query}" if query else "")


@get("/webhook/health")
async def health(request: Request[Any, Any, State]) -> Response[Any]:
    rt = _runtime(request.app.state)
    now = rt.clock()
    try:
        await rt.store.check_writable()
        queue = await rt.store.queue_stats()
        states = await rt.store.crm_states()
        holds = await rt.store.holds()
        counts = await rt.store.delivery_counts()
    except StoreUnavailable as exc:
        # Health is unauthenticated: the cause (file path, OS error) goes to the journal,
        # the answer only says that the storage is down.
        log.warning("health: storage unavailable: %s", exc)
        return Response(
            content={"status": "error", "database": {"ok": False, "error": "unavailable"}},
            status_code=503,
        )
    content = health_content(
        now=now,
        queue=queue,
        states=states,
        paused=rt.worker.paused(),
        holds=holds,
        counts=counts,
        adapters=rt.adapters,
        config_loaded_at=rt.config_loaded_at,
        backsync=rt.worker.callback() is not None,
    )
    rt.metrics.queue_depth.set(queue.depth)
    rt.metrics.oldest_pending_age.set(content["oldest_pending_age_seconds"] or 0)
    return Response(content=content, status_code=200)


@get("/metrics")
async def metrics(request: Request[Any, Any, State]) -> Response[bytes]:
    rt = _runtime(request.app.state)
    try:
        queue = await rt.store.queue_stats()
        stats = await rt.store.operator_stats()
    except StoreUnavailable:
        pass  # the counters still render; the database gauges keep their last values
    else:
        rt.metrics.queue_depth.set(queue.depth)
        oldest = rt.clock() - queue.oldest_pending_at if queue.oldest_pending_at else 0
        rt.metrics.oldest_pending_age.set(oldest)
        for status, count in stats.events.items():
            rt.metrics.events.labels(status).set(count)
        for crm in stats.crms:
            for status, count in crm.deliveries.items():
                rt.metrics.deliveries_stored.labels(crm.crm, status).set(count)
    paused = {**rt.worker.paused(), **rt.worker.held()}  # the bridge's pauses and the operator's
    for name in rt.adapters:
        rt.metrics.crm_paused.labels(name).set(1 if name in paused else 0)
    return Response(content=rt.metrics.render(), media_type=CONTENT_TYPE)


def _internal_error(request: Request[Any, Any, State], exc: Exception) -> Response[Any]:
    """Every error answer of the Litestar routes (404, 405, 500...), with its row in the
    request log: rejected requests are logged too (SPEC §7)."""
    path = clip(request.url.path, 200)
    if isinstance(exc, HTTPException):
        code, content = exc.status_code, {"error": exc.detail}
        detail = f"method {clip(request.method, 16)}" if code == 405 else ""
    else:
        log.exception("unhandled error on %s %s", clip(request.method, 16), path)
        code, content, detail = 500, {"error": "internal_error"}, "internal error"
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    if runtime is not None:
        client = request.client
        remote = clip(client.host, 64) if client else ""
        # The row only: a metrics label per path a scanner tries would grow without end.
        runtime.store.log_request(RequestRecord(path, remote, "not checked", code, None, detail))
    return Response(content=content, status_code=code)
