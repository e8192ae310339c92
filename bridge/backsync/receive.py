"""`POST /webhook/crm/{name}`: take one CRM's request, store its events, answer fast.

Answers (the route is the CRM's, not the platform's: a CRM retries what is not 2xx and
amoCRM turns a webhook off after repeated failures or slow answers, so the answer never
waits for the worker):
- 404: no enabled section `name`, or one whose kind sends no events (`inbound.sends_events`),
  takes no orders, or back-sync is off (no `PLATFORM_CALLBACK_URL`);
- 401: the request is not the CRM's (token, signature or credentials; the reason is
  logged, never a secret), nothing stored;
- 400: authentic, or not checkable, but not the CRM's format;
- 503: the database did not take the events (the CRM resends);
- 200 `{"status": "accepted", "events": N, "new": M}`: every event durably stored (a
  resend's events are repeats, `new` counts the rest), the worker woken.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from bridge.backsync.config import callback_target, event_secrets
from bridge.backsync.delivery import event_payload
from bridge.backsync.events import DealMoved, InboundRequest, Refused
from bridge.backsync.inbound import parse_event, sends_events
from bridge.errors import ConfigError, StoreUnavailable
from bridge.logs import clip
from bridge.settings import Settings
from bridge.store import NewEvent, Store
from bridge.store.backsync import CRM_EVENT_KIND, PLATFORM

log = logging.getLogger("bridge.backsync")

ROUTE = "/webhook/crm"


@dataclass(frozen=True)
class Taken:
    code: int
    payload: dict[str, Any]
    verdict: str  # for the request log
    detail: str = ""
    key: str | None = None  # the first event's key, so `requests_for` finds the request
    new: int = 0  # events stored for the first time (the worker is woken when > 0)


def section_receives(settings: Settings, name: str) -> str | None:
    """Why `[crm.NAME]` takes no events (None: it does); for the request log only."""
    config = settings.file.crm.get(name)
    if config is None or not config.enabled:
        return "no enabled section of this name"
    if not sends_events(config.kind):
        return f"{config.kind} sends no events the bridge follows"
    if not config.takes_orders:
        return "the section takes no orders (no order_stages)"
    try:
        if callback_target(settings) is None:
            return "back-sync is off (PLATFORM_CALLBACK_URL)"
    except ConfigError as exc:
        return str(exc)
    return None


def event_key(moved: DealMoved) -> str:
    """The event log's key: unique per section (`dedup_key` is unique within one)."""
    return f"{moved.crm}:{moved.dedup_key}"


async def take(
    store: Store, settings: Settings, name: str, request: InboundRequest, now: float, remote: str
) -> Taken:
    unavailable = section_receives(settings, name)
    if unavailable is not None:
        return Taken(404, {"error": "not_found"}, "not checked", unavailable)
    kind = settings.file.crm[name].kind
    try:
        moves = parse_event(kind, name, request, event_secrets(settings, name), now)
    except Refused as exc:
        if exc.status_code == 401:
            log.warning("rejected %s/%s from %s: %s", ROUTE, clip(name, 64), remote, exc.reason)
            return Taken(401, {"error": "unauthorized"}, f"{kind}: {exc.reason}")
        return Taken(400, {"error": exc.reason}, f"{kind}: ok", exc.reason)
    verdict = f"{kind}: ok"
    if not moves:
        return Taken(200, {"status": "accepted", "events": 0, "new": 0}, verdict, "no deal moved")
    try:
        events = [await _event(store, moved) for moved in moves]
        stored = await asyncio.gather(*(store.intake(event) for event in events))
    except StoreUnavailable as exc:
        log.warning("cannot store %s events: %s", clip(name, 64), exc)
        return Taken(503, {"error": "storage_unavailable"}, verdict)
    new = sum(1 for result in stored if result.created)
    for event, result in zip(events, stored, strict=True):
        if result.created:
            log.info("event=%s:%s stored", CRM_EVENT_KIND, clip(event.key, 200))
    payload = {"status": "accepted", "events": len(events), "new": new}
    detail = f"{len(events)} event(s), {len(events) - new} repeat(s)"
    return Taken(200, payload, verdict, detail, events[0].key, new)


async def _event(store: Store, moved: DealMoved) -> NewEvent:
    # Ordering: events of one deal go to the platform in the order received, and so do
    # those of one order when the deal is already linked (the worker's per-customer rule).
    keys = [f"deal:{moved.crm}:{moved.deal_id}"]
    linked = await store.order_for_deal(moved.crm, moved.deal_id)
    if linked is not None:
        keys.append(f"order:{linked[0]}")
    return NewEvent(
        kind=CRM_EVENT_KIND,
        key=event_key(moved),
        status="pending",
        amount="",
        customer_keys=tuple(keys),
        payload=event_payload(moved),
        crms=(PLATFORM,),
    )
