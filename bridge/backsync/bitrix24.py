"""Bitrix24 outbound events: `ONCRMDEALUPDATE`, form-encoded, carrying only the deal id.

Bitrix24 posts (https://apidocs.bitrix24.com/api-reference/crm/deals/events/
on-crm-deal-update.html) `event=ONCRMDEALUPDATE`, `event_handler_id`,
`data[FIELDS][ID]`, `ts` and `auth[…]`, among which `auth[application_token]`: the token
Bitrix24 gave the application (or the outbound webhook) the handler belongs to, the one
thing in the request that proves where it came from. It is compared in constant time
against every configured one. The event fires on any edit of the deal and does not say
the stage: `stage_read.read_stage` reads it with the adapter's `get_deal` when the event
is processed (which also means a burst of edits reads the stage they ended on).
"""

from __future__ import annotations

from collections.abc import Sequence

from bridge.backsync.events import (
    DealMoved,
    InboundRequest,
    Malformed,
    Unauthorized,
    utc_from_seconds,
    whole_number,
)
from bridge.backsync.form import decode_form, table, text
from bridge.backsync.match import matches_any

DEAL_UPDATE = "ONCRMDEALUPDATE"
DEAL_DELETE = "ONCRMDEALDELETE"


def parse(crm: str, request: InboundRequest, tokens: Sequence[str], now: float) -> list[DealMoved]:
    form = decode_form(request.body)
    given = text(table(form.get("auth")).get("application_token"))
    if not given:
        raise Unauthorized("missing auth[application_token]")
    if not any(tokens):
        raise Unauthorized("no application token configured")
    if not matches_any(given, tokens):
        raise Unauthorized("application token mismatch")
    event = (text(form.get("event")) or "").upper()
    if event not in (DEAL_UPDATE, DEAL_DELETE):
        return []  # another event bound to the same URL: nothing about a deal's stage
    deal_id = whole_number(text(table(table(form.get("data")).get("FIELDS")).get("ID")))
    if deal_id is None:
        raise Malformed("data[FIELDS][ID] is missing or not a whole number")
    ts = whole_number(text(form.get("ts")))
    occurred = float(ts) if ts else now
    deleted = event == DEAL_DELETE
    # `ts` is the second of the change: resends of one event share it. Two edits within
    # one second share it too; the stage is read later, so both are the same read.
    stamp = ts or f"t{now:.0f}"
    key = f"{deal_id}:deleted" if deleted else f"{deal_id}:{stamp}"
    return [DealMoved(crm, deal_id, None, None, key, utc_from_seconds(occurred), deleted)]
