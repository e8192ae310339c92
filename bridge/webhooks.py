"""The webhook routes served in front of Litestar (see `bridge.app.BridgeApp`):
`POST /webhook/payment`, `POST /webhook/order` and `POST /webhook/source/NAME`, on the
bare ASGI interface. Each request is answered with one of the codes of SPEC §2 and logged
to the `requests` table; the event is committed before the answer says it is taken.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from litestar.enums import ScopeType
from litestar.types import HTTPScope, Receive, Scope, Send
from pydantic import ValidationError

from bridge.asgi_io import (
    BadContentLength,
    BodyTimeout,
    BodyTooLarge,
    ClientGone,
    header_map,
    read_body,
    send_json,
)
from bridge.canonical import MAX_INT_DIGITS, decode_canonical
from bridge.errors import StoreUnavailable
from bridge.intake import OrderFields, order_intake, payment_intake
from bridge.logs import clip
from bridge.order_payloads import parse_order
from bridge.payloads import CourseOrder, parse_payment, unstorable_values, validation_details
from bridge.signing import verify
from bridge.sources.auth import source_secrets, verify_source
from bridge.sources.config import SourceAnswer, SourceConfig
from bridge.sources.intake import BodyError, MappingFailed, decode_body, source_intake
from bridge.store import DeliveryOutcome, EventView, NewEvent, RequestRecord

if TYPE_CHECKING:
    from bridge.app import Runtime

log = logging.getLogger("bridge.app")  # the HTTP side logs under one name

PAYMENT_ROUTE = "/webhook/payment"
ORDER_ROUTE = "/webhook/order"
SOURCE_ROUTE = "/webhook/source/"  # + NAME of a `[source.NAME]` section (bridge.sources)


def route_for(rt: Runtime | None, scope: Scope) -> _Webhook | None:
    """The webhook route a request is for; None: Litestar serves it."""
    if scope["type"] != ScopeType.HTTP:
        return None
    path = scope["path"]
    if path in _WEBHOOKS:
        return _WEBHOOKS[path]
    if path.startswith(SOURCE_ROUTE):
        return _source_webhook(rt, scope)
    return None


async def serve(
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
    # `_webhook_answer` answers an unknown source before reading its body; this is the
    # same 404 should that order ever change, never a 500.
    return reply(404, {"error": "unknown_source"}, "not checked", "no such source")


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
