"""HubSpot webhooks: a JSON array of events, signed with `X-HubSpot-Signature-v3`.

Verification (https://developers.hubspot.com/docs/apps/developer-platform/build-apps/
authentication/request-validation, and the changelog https://developers.hubspot.com/
changelog/introducing-version-3-of-webhook-signatures): reject a request whose
`X-HubSpot-Request-Timestamp` (milliseconds) is more than 5 minutes old; the signature is
base64(HMAC-SHA256(app secret, method + URI + body + timestamp)), the URI being the full
URL called with the characters of HubSpot's table (`%3A` → `:`, `%2F` → `/`, …) decoded.
Several app secrets may be active (rotation); each is compared in constant time.

Events (a batch of up to 100 per request): `deal.propertyChange` subscribed on
`dealstage` carries `objectId` (the deal), `propertyName`, `propertyValue` (the new
stage id), `occurredAt` (milliseconds), `portalId`, `eventId`, `attemptNumber`, …; other
subscription types are ignored. Stage ids are unique in a portal, so no pipeline is
needed to map them. `deal.deletion` says the deal is gone.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Sequence

from bridge.backsync.events import (
    DealMoved,
    InboundRequest,
    Malformed,
    Unauthorized,
    utc_from_seconds,
    whole_number,
)
from bridge.backsync.match import matches_any

SIGNATURE_HEADER = "X-HubSpot-Signature-v3"
TIMESTAMP_HEADER = "X-HubSpot-Request-Timestamp"
TOLERANCE_MS = 5 * 60 * 1000
STAGE_PROPERTY = "dealstage"

# The percent-escapes HubSpot's v3 instructions decode before signing; others stay.
_DECODED = {
    "%3A": ":",
    "%2F": "/",
    "%3F": "?",
    "%40": "@",
    "%21": "!",
    "%24": "$",
    "%27": "'",
    "%28": "(",
    "%29": ")",
    "%2A": "*",
    "%2C": ",",
    "%3B": ";",
}


def signed_uri(url: str) -> str:
    for escape, char in _DECODED.items():
        url = url.replace(escape, char).replace(escape.lower(), char)
    return url


def signature(method: str, url: str, body: bytes, timestamp: str, secret: str) -> str:
    """What HubSpot puts in `X-HubSpot-Signature-v3` for this request."""
    source = method.upper().encode() + signed_uri(url).encode() + body + timestamp.encode()
    digest = hmac.new(secret.encode(), source, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def verify(request: InboundRequest, secrets: Sequence[str], now: float) -> None:
    given = (request.header(SIGNATURE_HEADER) or "").strip()
    raw_ts = (request.header(TIMESTAMP_HEADER) or "").strip()
    if not given or not raw_ts:
        raise Unauthorized("missing signature")
    if not (raw_ts.isascii() and raw_ts.isdigit()) or len(raw_ts) > 16:
        raise Unauthorized("timestamp malformed")
    # Checked before the signature: a replayed old request is refused whatever it carries.
    age_ms = now * 1000 - int(raw_ts)
    if age_ms > TOLERANCE_MS:
        raise Unauthorized("timestamp too old")
    if age_ms < -TOLERANCE_MS:
        raise Unauthorized("timestamp too new")
    keys = [secret for secret in secrets if secret]
    if not keys:
        raise Unauthorized("no app secret configured")
    expected = [signature(request.method, request.url, request.body, raw_ts, key) for key in keys]
    if not matches_any(given, expected):
        raise Unauthorized("signature mismatch")


def parse(crm: str, request: InboundRequest, secrets: Sequence[str], now: float) -> list[DealMoved]:
    verify(request, secrets, now)
    try:
        events = json.loads(request.body)
    except (ValueError, RecursionError) as exc:
        raise Malformed("body is not JSON") from exc
    if not isinstance(events, list):
        raise Malformed("body is not a JSON array of events")
    found: dict[str, DealMoved] = {}
    for index, event in enumerate(events):
        if not isinstance(event, dict):
            raise Malformed(f"event {index} is not an object")
        moved = _event(crm, index, event)
        if moved is not None:
            found.setdefault(moved.dedup_key, moved)
    return list(found.values())


def _event(crm: str, index: int, event: dict[str, object]) -> DealMoved | None:
    kind = event.get("subscriptionType")
    stage_change = kind == "deal.propertyChange" and event.get("propertyName") == STAGE_PROPERTY
    if not stage_change and kind != "deal.deletion":
        return None
    deal_id = whole_number(event.get("objectId"))
    occurred_ms = whole_number(event.get("occurredAt"))
    if deal_id is None or occurred_ms is None:
        raise Malformed(f"event {index}: objectId and occurredAt must be whole numbers")
    occurred = utc_from_seconds(int(occurred_ms) / 1000)
    if kind == "deal.deletion":
        return DealMoved(crm, deal_id, None, None, f"{deal_id}:deleted", occurred, True)
    stage = event.get("propertyValue")
    if not isinstance(stage, str) or not stage:
        raise Malformed(f"event {index}: propertyValue (the stage id) is missing")
    # Not eventId: HubSpot does not promise it unique. A resend repeats the change's own
    # deal, stage and time, so those are the key.
    return DealMoved(crm, deal_id, None, stage, f"{deal_id}:{stage}:{occurred_ms}", occurred)
