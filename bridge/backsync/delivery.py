"""One stored CRM event as the worker runs it: the decision, then the signed callback.

1. Decide once: the stage (read from the CRM for Bitrix24, `stage_read`), the order the
   deal is linked to and its last known status (`order_links`), the bridge's own recent
   moves of the deal (`own_moves`), then `decide.decide`. The decision (the callback's
   content or why none) is journalled before anything is sent, so every later attempt,
   after a restart too, sends the very same body under the same `webhook-id`.
2. Send: `POST PLATFORM_CALLBACK_URL`, signed afresh for each attempt
   (`callback.callback_request`). A 2xx ends the delivery; the worker then records the
   forwarded status as the order's last known one in the same transaction.

Exactly once, as Standard Webhooks means it: the platform may see an attempt twice (the
bridge died after the platform answered, before recording it) but always with one
`webhook-id`, by which it deduplicates.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from bridge.backsync.callback import StatusChanged, callback_request, message_id
from bridge.backsync.config import CallbackTarget
from bridge.backsync.decide import LinkedOrder, decide
from bridge.backsync.events import DealMoved
from bridge.backsync.stage_read import read_stage
from bridge.backsync.statuses import StageMap
from bridge.crm.base import CrmAdapter
from bridge.domain import OrderStatus
from bridge.logs import clip
from bridge.settings import Settings
from bridge.store import DeliveryJob, ForwardedStatus, Store

DECISION_STEP = "decision"
# The platform's answers worth trying again: it is down, overloaded or says "later".
_RETRIED_STATUSES = frozenset({408, 425, 429})


class PlatformUnavailable(Exception):
    """No 2xx yet (5xx, 408/429, a timeout, no connection): retried on the schedule."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message, self.retry_after = message, retry_after


class PlatformRefused(Exception):
    """A 4xx that another attempt will not change (a wrong secret, a body it refuses):
    failed at once, so the operator hears of it; `crm-bridge retry` after the fix."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class CallbackDone:
    deal_id: str
    order_id: str | None
    reason: str  # "forwarded", or why nothing was sent (safe to log)
    webhook_id: str | None  # set when a callback went out
    forwarded: ForwardedStatus | None


def event_payload(moved: DealMoved) -> str:
    """What the event log keeps of one `DealMoved` (the `crm_events` view reads it)."""
    document = {
        "crm": moved.crm,
        "deal_id": moved.deal_id,
        "pipeline_id": moved.pipeline_id,
        "status_id": moved.status_id,
        "dedup_key": moved.dedup_key,
        "occurred_at": moved.occurred_at.astimezone(UTC).isoformat(),
        "deleted": moved.deleted,
    }
    return json.dumps(document, ensure_ascii=False)


def moved_from_payload(payload: str) -> DealMoved:
    raw = json.loads(payload)
    return DealMoved(
        crm=str(raw["crm"]),
        deal_id=str(raw["deal_id"]),
        pipeline_id=None if raw.get("pipeline_id") is None else str(raw["pipeline_id"]),
        status_id=None if raw.get("status_id") is None else str(raw["status_id"]),
        dedup_key=str(raw["dedup_key"]),
        occurred_at=datetime.fromisoformat(str(raw["occurred_at"])),
        deleted=bool(raw.get("deleted")),
    )


async def deliver_crm_event(
    store: Store,
    job: DeliveryJob,
    settings: Settings,
    adapters: Mapping[str, CrmAdapter],
    target: CallbackTarget,
    client: httpx.AsyncClient,
    clock: Callable[[], float],
) -> CallbackDone:
    """Raises the `CrmError` family (the Bitrix24 stage read), `PlatformUnavailable`,
    `PlatformRefused` or `StoreUnavailable`."""
    moved = moved_from_payload(job.payload)
    steps = await store.journal_steps(job.delivery_id)
    decision = steps.get(DECISION_STEP)
    if not isinstance(decision, dict):
        decision = await _decide(store, moved, settings, adapters)
        await store.record_steps(job.delivery_id, {DECISION_STEP: decision})
    callback = decision.get("callback")
    order_id = decision.get("order_id")
    if not isinstance(callback, dict):
        reason = str(decision.get("reason", ""))
        return CallbackDone(moved.deal_id, order_id, reason, None, None)
    change = _status_changed(callback)
    msg_id = str(decision["webhook_id"])
    request = callback_request(
        change, url=target.url, secret=target.secret, msg_id=msg_id, now=int(clock())
    )
    await _send(client, request.url, request.headers, request.body)
    previous = change.previous_status.value if change.previous_status else None
    forwarded = ForwardedStatus(moved.crm, change.order_id, previous, change.status.value)
    return CallbackDone(moved.deal_id, change.order_id, "forwarded", msg_id, forwarded)


async def _decide(
    store: Store, moved: DealMoved, settings: Settings, adapters: Mapping[str, CrmAdapter]
) -> dict[str, Any]:
    config = settings.file.crm.get(moved.crm)
    if config is None or not config.takes_orders:
        return {"reason": f"section {moved.crm} no longer takes orders", "callback": None}
    if not moved.deleted and moved.status_id is None:
        adapter = adapters.get(moved.crm)
        if adapter is None:
            return {"reason": f"section {moved.crm} is not running", "callback": None}
        read = await read_stage(adapter, moved)
        if read is None:
            return {"reason": f"deal {moved.deal_id} is gone from the CRM", "callback": None}
        moved = read
    linked = await store.order_for_deal(moved.crm, moved.deal_id)
    order = None
    if linked is not None:
        order_id, status = linked
        known = status if status in OrderStatus._value2member_map_ else None
        order = LinkedOrder(order_id, OrderStatus(known) if known else None)
    own = await store.own_moves(moved.crm, moved.deal_id)
    result = decide(moved, order, StageMap.from_config(config), own)
    decision: dict[str, Any] = {
        "reason": result.reason,
        "order_id": order.order_id if order else None,
        "pipeline_id": moved.pipeline_id,
        "status_id": moved.status_id,
        "callback": None,
    }
    if result.callback is not None:
        change = result.callback
        decision["webhook_id"] = message_id(moved.crm, moved.dedup_key)
        decision["callback"] = {
            "order_id": change.order_id,
            "status": change.status.value,
            "previous_status": change.previous_status.value if change.previous_status else None,
            "crm": change.crm,
            "deal_id": change.deal_id,
            "changed_at": change.changed_at.astimezone(UTC).isoformat(),
        }
    return decision


def _status_changed(callback: Mapping[str, Any]) -> StatusChanged:
    previous = callback.get("previous_status")
    return StatusChanged(
        order_id=str(callback["order_id"]),
        status=OrderStatus(callback["status"]),
        previous_status=OrderStatus(previous) if previous else None,
        crm=str(callback["crm"]),
        deal_id=str(callback["deal_id"]),
        changed_at=datetime.fromisoformat(str(callback["changed_at"])),
    )


async def _send(
    client: httpx.AsyncClient, url: str, headers: Mapping[str, str], body: bytes
) -> None:
    try:
        response = await client.post(url, headers=dict(headers), content=body)
    except httpx.TimeoutException:
        raise PlatformUnavailable("platform: no answer in time") from None
    except httpx.HTTPError as exc:
        # The exception's text names the host at most, never the secret (headers only).
        raise PlatformUnavailable(
            f"platform: {type(exc).__name__}: {clip(str(exc), 200)}"
        ) from None
    code = response.status_code
    if 200 <= code < 300:
        return
    detail = f"platform answered {code}: {clip(response.text, 200)}"
    if code >= 500 or code in _RETRIED_STATUSES:
        raise PlatformUnavailable(detail, _retry_after(response))
    raise PlatformRefused(detail)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    return float(value) if value.isdigit() and len(value) < 9 else None
