"""The platform callback: `order.status_changed`, signed with Standard Webhooks headers.

Body (UTF-8 JSON, keys in this order):

    {"type": "order.status_changed", "order_id": "R-1042", "status": "in_rent",
     "previous_status": "reserved", "crm": "amocrm", "deal_id": "31525141",
     "changed_at": "2026-12-03T09:15:00Z"}

`previous_status` is the status the bridge last knew for the order (null when none).
Headers: `webhook-id` (stable for one change: derived from the CRM event's dedup key,
so every retry, and a retry after a restart, carries the same id and the platform can
dedup), `webhook-timestamp` (the attempt's time: re-signed on each attempt, so a
platform rejecting old timestamps still accepts a late retry) and `webhook-signature`
(`v1,` base64 HMAC-SHA256 of `id.timestamp.body` with the `whsec_` secret), made by
`bridge.signing`, which verifies the same scheme on inbound payments.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime

from bridge.domain import OrderStatus
from bridge.signing import sign_headers

EVENT_TYPE = "order.status_changed"


@dataclass(frozen=True)
class StatusChanged:
    order_id: str
    status: OrderStatus
    previous_status: OrderStatus | None
    crm: str
    deal_id: str
    changed_at: datetime


@dataclass(frozen=True)
class OutboundRequest:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes


def message_id(crm: str, dedup_key: str) -> str:
    """The `webhook-id` of the callback one CRM event causes: the same for every attempt."""
    digest = hashlib.sha256(f"{crm}\n{dedup_key}".encode()).hexdigest()
    return f"msg_{digest[:32]}"


def callback_body(event: StatusChanged) -> bytes:
    changed = event.changed_at.astimezone(UTC).replace(microsecond=0)
    document = {
        "type": EVENT_TYPE,
        "order_id": event.order_id,
        "status": event.status.value,
        "previous_status": event.previous_status.value if event.previous_status else None,
        "crm": event.crm,
        "deal_id": event.deal_id,
        "changed_at": changed.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


def callback_request(
    event: StatusChanged, *, url: str, secret: str, msg_id: str, now: int
) -> OutboundRequest:
    """One delivery attempt at `now` (unix seconds). ValueError when a `whsec_` secret is
    not base64 (settings refuse such a secret at start, see `config.callback_target`)."""
    body = callback_body(event)
    headers = {
        "Content-Type": "application/json",
        **sign_headers(body, hmac_secret=None, standard_secret=secret, msg_id=msg_id, now=now),
    }
    return OutboundRequest("POST", url, headers, body)
