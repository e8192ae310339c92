"""Pipedrive webhooks v2: JSON `{meta, data, previous}`, with HTTP Basic credentials.

Pipedrive does not sign webhooks; a webhook is registered with `http_auth_user` and
`http_auth_password` and every delivery carries them as `Authorization: Basic …`
(https://pipedrive.readme.io/docs/guide-for-webhooks-v2, and the `AddWebhookRequest`
fields of the API). Configured as `user:password` entries, several for rotation, each
compared in constant time.

A v2 body (https://pipedrive.readme.io/docs/webhooks-v2-migration-guide): `meta` has
`action` (`create`, `change`, `delete`), `entity` (`deal`), `entity_id`, `timestamp`,
`attempt`, `version` "2.0", …; `data` is the deal now (`id`, `stage_id`,
`pipeline_id`, `status`, `update_time`, …); `previous` holds the previous values of the
fields that changed only (null on create). A deal change is a stage move when `previous`
names `stage_id` or `pipeline_id`; other changes are ignored. v2 sends one webhook per
change; resends (`meta.attempt` > 1) repeat the deal's `update_time`.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from datetime import UTC, datetime

from bridge.backsync.events import (
    DealMoved,
    InboundRequest,
    Malformed,
    Unauthorized,
    utc_from_seconds,
    whole_number,
)
from bridge.backsync.match import matches_any


def verify(request: InboundRequest, credentials: Sequence[str]) -> None:
    header = (request.header("Authorization") or "").strip()
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded.strip():
        raise Unauthorized("missing Basic credentials")
    try:
        given = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Unauthorized("Basic credentials malformed") from exc
    if not any(credentials):
        raise Unauthorized("no webhook credentials configured")
    if not matches_any(given, credentials):
        raise Unauthorized("credentials mismatch")


def parse(
    crm: str, request: InboundRequest, credentials: Sequence[str], now: float
) -> list[DealMoved]:
    verify(request, credentials)
    try:
        body = json.loads(request.body)
    except (ValueError, RecursionError) as exc:
        raise Malformed("body is not JSON") from exc
    if not isinstance(body, dict) or not isinstance(body.get("meta"), dict):
        raise Malformed("not a webhooks v2 body: no meta object")
    meta: dict[str, object] = body["meta"]
    if meta.get("entity") != "deal":
        return []  # a webhook registered for more than deals (`*.*`)
    action = meta.get("action")
    deal_id = whole_number(meta.get("entity_id"))
    if deal_id is None:
        raise Malformed("meta.entity_id is missing or not a whole number")
    data = body.get("data")
    updated = data.get("update_time") if isinstance(data, dict) else None
    occurred = _occurred(meta.get("timestamp"), updated, now)
    if action == "delete":
        return [DealMoved(crm, deal_id, None, None, f"{deal_id}:deleted", occurred, True)]
    if action != "change":
        return []
    previous = body.get("previous")
    if not isinstance(previous, dict) or not {"stage_id", "pipeline_id"} & set(previous):
        return []  # a change of other fields
    if not isinstance(data, dict):
        raise Malformed("data is not an object")
    stage_id = whole_number(data.get("stage_id"))
    pipeline_id = whole_number(data.get("pipeline_id"))
    if stage_id is None or pipeline_id is None:
        raise Malformed("data.stage_id and data.pipeline_id must be whole numbers")
    # Resends repeat the deal's update_time (and the event's timestamp).
    when = updated if isinstance(updated, str) and updated else f"{occurred.timestamp():.0f}"
    key = f"{deal_id}:{pipeline_id}:{stage_id}:{when}"
    return [DealMoved(crm, deal_id, pipeline_id, stage_id, key, occurred)]


def _occurred(timestamp: object, update_time: object, now: float) -> datetime:
    """When the change happened: `meta.timestamp` (unix seconds in Pipedrive's samples; an
    ISO 8601 text is taken too), else the deal's `update_time`, else `now`."""
    seconds = whole_number(timestamp)
    if seconds is not None:
        return utc_from_seconds(float(seconds))
    for value in (timestamp, update_time):
        if isinstance(value, str) and value:
            try:
                parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return utc_from_seconds(now)
