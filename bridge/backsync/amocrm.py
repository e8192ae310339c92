"""amoCRM (and Kommo) webhooks: a form-encoded body, authenticated by a token in the URL.

amoCRM posts `application/x-www-form-urlencoded` (https://www.amocrm.ru/developers/
content/crm_platform/webhooks-format): `leads[status][0][id]`, `[status_id]`,
`[pipeline_id]`, `[old_status_id]`, `[last_modified]`/`[updated_at]`, … for a stage
change, the same under `leads[update]` for any edit and `leads[delete]` for a deletion;
one request may carry several leads (`leads[status][1][…]`) and several actions, plus
`account[subdomain]` and `account[id]`. It does not sign its requests, so the URL
registered in amoCRM carries a secret: `…/webhook/crm/NAME?token=SECRET` (the approach
amoCRM integrations take, e.g. https://docs.modx.pro/en/components/amoconnector/webhook),
compared in constant time against every active token.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import parse_qs, urlsplit

from bridge.backsync.events import (
    DealMoved,
    InboundRequest,
    Malformed,
    Unauthorized,
    utc_from_seconds,
    whole_number,
)
from bridge.backsync.form import Form, decode_form, table, text
from bridge.backsync.match import matches_any

TOKEN_PARAMETER = "token"  # noqa: S105 - the name of the query parameter
# `status` first: when one request carries both the stage change and the edit of the
# same lead, they share a dedup key and the first one seen is kept.
ACTIONS = ("status", "update", "delete")


def url_token(url: str) -> str | None:
    values = parse_qs(urlsplit(url).query, keep_blank_values=True).get(TOKEN_PARAMETER)
    return values[0] if values else None


def verify(request: InboundRequest, tokens: Sequence[str]) -> None:
    given = url_token(request.url)
    if not given:
        raise Unauthorized(f"missing ?{TOKEN_PARAMETER}= in the URL")
    if not any(tokens):
        raise Unauthorized("no event token configured")
    if not matches_any(given, tokens):
        raise Unauthorized("token mismatch")


def parse(crm: str, request: InboundRequest, tokens: Sequence[str], now: float) -> list[DealMoved]:
    """Every lead of the request, in the order sent; a request without leads is empty."""
    verify(request, tokens)
    leads = table(decode_form(request.body).get("leads"))
    found: dict[str, DealMoved] = {}
    for action in ACTIONS:
        for index, raw in table(leads.get(action)).items():
            moved = _lead(crm, action, index, table(raw), now)
            found.setdefault(moved.dedup_key, moved)
    return list(found.values())


def _lead(crm: str, action: str, index: str, entry: Form, now: float) -> DealMoved:
    where = f"leads[{action}][{index}]"
    lead_id = _number(entry, "id", where)
    changed = _optional_number(entry, "updated_at") or _optional_number(entry, "last_modified")
    # Without a time a resend cannot be told from a new move; a repeat is still harmless,
    # since a stage equal to the order's last forwarded status forwards nothing.
    occurred = float(changed) if changed else now
    if action == "delete":
        return DealMoved(
            crm, lead_id, None, None, f"{lead_id}:deleted", utc_from_seconds(occurred), True
        )
    pipeline_id = _number(entry, "pipeline_id", where)
    status_id = _number(entry, "status_id", where)
    stamp = changed or f"t{now:.0f}"
    return DealMoved(
        crm,
        lead_id,
        pipeline_id,
        status_id,
        f"{lead_id}:{pipeline_id}:{status_id}:{stamp}",
        utc_from_seconds(occurred),
    )


def _number(entry: Form, key: str, where: str) -> str:
    value = _optional_number(entry, key)
    if value is None:
        raise Malformed(f"{where}[{key}] is missing or not a whole number")
    return value


def _optional_number(entry: Form, key: str) -> str | None:
    return whole_number(text(entry.get(key)))
