"""The HTTP requests CRMs send when a manager moves a deal: pure functions.

Each returns the exact request (method, URL, headers, raw body) the real CRM would post to
the bridge's `POST /webhook/crm/{name}`, so tests can feed it to the back-sync parsers now
and to the route later. Sample bodies are the vendors' own, as documented:

- amoCRM: https://www.amocrm.ru/developers/content/crm_platform/webhooks-format —
  `application/x-www-form-urlencoded` as PHP's `http_build_query` writes it (brackets
  percent-encoded), `leads[status][N][…]` for each lead moved (several leads in one
  request), then `account[subdomain]`, `account[id]`, `account[_links][self]`; no
  signature, so the registered URL carries `?token=`;
- Bitrix24: https://apidocs.bitrix24.com/api-reference/crm/deals/events/
  on-crm-deal-update.html — `event=ONCRMDEALUPDATE`, `event_handler_id`,
  `data[FIELDS][ID]`, `ts`, `auth[…]` with `application_token`, form-encoded;
- HubSpot: https://developers.hubspot.com/docs/apps/developer-platform/build-apps/
  authentication/request-validation — a JSON array of events (the v1 `X-HubSpot-Signature`
  as well as `X-HubSpot-Signature-v3` + `X-HubSpot-Request-Timestamp` in milliseconds);
- Pipedrive: https://pipedrive.readme.io/docs/guide-for-webhooks-v2 — JSON `{meta, data,
  previous}` (the v2 sample at https://prismatic.io/docs/example-payloads/pipedrive/
  triggers/pipedriveTrigger.json), `Authorization: Basic` with the webhook's
  `http_auth_user`/`http_auth_password`.

The fakes' `*_event` methods move the deal in their state (what the manager does) and
call these with the deal's values.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

FORM = "application/x-www-form-urlencoded"


@dataclass(frozen=True)
class CrmRequest:
    method: str
    url: str  # absolute: what the CRM was told to call
    headers: dict[str, str]
    body: bytes

    @property
    def path(self) -> str:
        """Path and query, as a test client takes them."""
        parts = urlsplit(self.url)
        return parts.path + (f"?{parts.query}" if parts.query else "")


# ---- amoCRM ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AmoLead:
    """One lead as amoCRM's webhook lists it (old-API field names)."""

    id: int
    name: str
    status_id: int
    pipeline_id: int
    old_status_id: int | None
    old_pipeline_id: int | None
    price: int
    created_at: int
    updated_at: int
    responsible_user_id: int = 504141
    account_id: int = 0


def amocrm_webhook(
    url: str,
    leads: Sequence[tuple[str, AmoLead]],
    *,
    subdomain: str,
    account_id: int,
) -> CrmRequest:
    """`leads`: (action, lead) pairs, action `status`, `update` or `delete`, numbered per
    action in the order given (amoCRM batches what happened since its last request)."""
    pairs: list[tuple[str, str]] = []
    numbers: dict[str, int] = {}
    for action, lead in leads:
        index = numbers.get(action, 0)
        numbers[action] = index + 1
        prefix = f"leads[{action}][{index}]"
        fields: dict[str, object] = {"id": lead.id}
        if action != "delete":
            fields.update(
                name=lead.name,
                status_id=lead.status_id,
                price=lead.price,
                responsible_user_id=lead.responsible_user_id,
                last_modified=lead.updated_at,
                modified_user_id=lead.responsible_user_id,
                created_user_id=lead.responsible_user_id,
                date_create=lead.created_at,
                pipeline_id=lead.pipeline_id,
                account_id=lead.account_id or account_id,
                created_at=lead.created_at,
                updated_at=lead.updated_at,
            )
            if action == "status":
                fields["old_status_id"] = lead.old_status_id or lead.status_id
                if lead.old_pipeline_id and lead.old_pipeline_id != lead.pipeline_id:
                    fields["old_pipeline_id"] = lead.old_pipeline_id
        else:
            fields.update(status_id=lead.status_id, pipeline_id=lead.pipeline_id)
        pairs += [(f"{prefix}[{key}]", str(value)) for key, value in fields.items()]
    pairs += [
        ("account[subdomain]", subdomain),
        ("account[id]", str(account_id)),
        ("account[_links][self]", f"https://{subdomain}.amocrm.ru"),
    ]
    headers = {"Content-Type": FORM, "User-Agent": "amoCRM-Webhooks/3.0"}
    return CrmRequest("POST", url, headers, urlencode(pairs).encode())


# ---- Bitrix24 -------------------------------------------------------------------------


def bitrix24_deal_event(
    url: str,
    deal_id: int,
    *,
    application_token: str,
    ts: int,
    domain: str = "example.bitrix24.ru",
    event: str = "ONCRMDEALUPDATE",
    event_handler_id: int = 201,
    member_id: str = "a223c6b3710f85df22e9377d6c4f7553",
) -> CrmRequest:
    """An outbound-webhook event: `auth` holds no OAuth tokens, only the portal and the
    application token (an application's handler also gets access/refresh tokens)."""
    pairs = [
        ("event", event),
        ("event_handler_id", str(event_handler_id)),
        ("data[FIELDS][ID]", str(deal_id)),
        ("ts", str(ts)),
        ("auth[domain]", domain),
        ("auth[client_endpoint]", f"https://{domain}/rest/"),
        ("auth[server_endpoint]", "https://oauth.bitrix.info/rest/"),
        ("auth[member_id]", member_id),
        ("auth[application_token]", application_token),
    ]
    return CrmRequest("POST", url, {"Content-Type": FORM}, urlencode(pairs).encode())


# ---- HubSpot --------------------------------------------------------------------------


@dataclass(frozen=True)
class HubSpotStageChange:
    deal_id: str
    stage: str
    occurred_ms: int
    event_id: int
    attempt: int = 0


def hubspot_stage_events(
    url: str,
    changes: Sequence[HubSpotStageChange],
    *,
    app_secret: str,
    now_ms: int,
    portal_id: int = 62515,
    app_id: int = 54321,
    subscription_id: int = 12345,
) -> CrmRequest:
    events: list[dict[str, Any]] = [
        {
            "eventId": change.event_id,
            "subscriptionId": subscription_id,
            "portalId": portal_id,
            "appId": app_id,
            "occurredAt": change.occurred_ms,
            "subscriptionType": "deal.propertyChange",
            "attemptNumber": change.attempt,
            "objectId": int(change.deal_id),
            "propertyName": "dealstage",
            "propertyValue": change.stage,
            "changeSource": "CRM_UI",
            "sourceId": "userId:45678",
        }
        for change in changes
    ]
    body = json.dumps(events, separators=(",", ":")).encode()
    timestamp = str(now_ms)
    # v3: base64 HMAC-SHA256 over method + URI + body + timestamp (the URI as called;
    # the URLs tests use have none of the escapes HubSpot decodes first).
    source = b"POST" + url.encode() + body + timestamp.encode()
    v3 = base64.b64encode(hmac.new(app_secret.encode(), source, hashlib.sha256).digest())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "HubSpot Connect 2.0 (http://dev.hubspot.com/) - WebhooksExecutorDaemon",
        # v1, still sent for webhooks: hex SHA-256 of secret + body
        "X-HubSpot-Signature": hashlib.sha256(app_secret.encode() + body).hexdigest(),
        "X-HubSpot-Signature-Version": "v1",
        "X-HubSpot-Signature-v3": v3.decode("ascii"),
        "X-HubSpot-Request-Timestamp": timestamp,
    }
    return CrmRequest("POST", url, headers, body)


# ---- Pipedrive ------------------------------------------------------------------------


# The deal fields a v2 `data` object carries (custom fields aside).
PIPEDRIVE_V2_DEAL = (
    "id",
    "title",
    "value",
    "currency",
    "status",
    "stage_id",
    "pipeline_id",
    "owner_id",
    "person_id",
    "org_id",
    "add_time",
    "update_time",
)


def pipedrive_deal_change(
    url: str,
    deal: dict[str, Any],
    previous: dict[str, Any],
    *,
    user: str,
    password: str,
    timestamp: int,
    attempt: int = 1,
    company_id: int = 12882925,
    user_id: int = 18487521,
    webhook_id: int = 99,
) -> CrmRequest:
    """`deal`: the v2 `data` object (id, title, value, currency, status, stage_id,
    pipeline_id, owner_id, person_id, org_id, add_time, update_time); `previous`: the
    changed fields' old values only."""
    body = {
        "meta": {
            "action": "change",
            "entity": "deal",
            "version": "2.0",
            "company_id": company_id,
            "user_id": user_id,
            "id": deal["id"],
            "entity_id": deal["id"],
            "webhook_id": webhook_id,
            "webhook_owner_id": user_id,
            "permitted_user_ids": [user_id],
            "attempt": attempt,
            "host": "company.pipedrive.com",
            "timestamp": timestamp,
            "change_source": "app",
        },
        "data": deal,
        "previous": previous,
    }
    credentials = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Pipedrive-Webhook",
        "Authorization": f"Basic {credentials}",
    }
    return CrmRequest("POST", url, headers, json.dumps(body).encode())
