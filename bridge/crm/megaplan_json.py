"""Megaplan API v3 shapes, both ways, as pure functions (no I/O).

Sources (crm-notes/amocrm-bitrix24-megaplan-odoo.md §3, from dev.megaplan.ru/apiv3, the
official SDK megaplan/megaplansdk and the in-account docs dump borzov/megaplan-sdk
docs/megaplan.md):
- every answer is an envelope `{"meta": {"status", "errors": [{"fieldName", "message"}],
  "pagination"}, "data"}`; 422 is a request error, 403 access, 404 a missing entity; a
  401 may come inside an HTTP 200 envelope (§3.1), so `meta.status` is checked too;
- GET parameters travel as one URL-encoded JSON object in the query string (§3.2);
- every reference is a link entity `{"contentType": "Program", "id": "5"}`;
- clients are `ContractorHuman` (created and updated through `/contractorHuman`, listed
  and searched through `/contractor` with `q`, §3.3, §3.5); deals live in programs
  (schemes: the bridge's pipelines) and have a `state` (ProgramState: its statuses);
  extra fields are top-level keys `Category{N}CustomField{Name}` (§3.6);
- a note is a `Comment` on the deal, HTML `content` (§3.7).

Orders [the account's RAML, a copy in borzov/megaplan-sdk docs/megaplan.raml]: a
`ContractorCompany` (`/contractorCompany`, listed with `q` and a CrmFilter) has no INN of
its own (that lives in its requisites, `payers[].inn`, a separate Payer), so the INN is an
extra field the section names (`order_fields.company_inn`); a person belongs to it by
`ContractorHuman.company`. A deal moves only by a `ProgramTransition` of its program
(`POST /deal/{id}/applyTransition`, one of the deal's `possibleTransitions`); its
`result` is active / positive / negative, as its state's `type`. Its items are
`positions`, OfferRows of catalog `Offer`s (found again by `article`, the platform's SKU);
a `DateField` takes `{"contentType": "DateOnly", "year", "month", "day"}` with the month
counted from 0.

Which ProgramState is final is not in the API's link entity (§3.4): the section's
`closed_status_ids` says so, as for amoCRM.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote

# How Megaplan normalises phones in `q` is not documented (§3.3): searched as amoCRM's
# are, by the national significant number, which "8 999 …" and "+7 999 …" both contain.
from bridge.crm.amocrm_json import search_query
from bridge.crm.base import CustomField, Pipeline
from bridge.crm.fieldvalues import FieldEncoding, Option
from bridge.crm.richtext import note_html, note_text
from bridge.domain import (
    Company,
    CompanyRecord,
    Contact,
    Deal,
    DealChange,
    FieldKind,
    FieldUpdate,
    KeyKind,
    LookupKey,
    NewContact,
    NewDeal,
    OrderItem,
)
from bridge.errors import AuthError, CrmError, PermanentCrmError, TransientCrmError
from bridge.settings import CrmConfig

JSON = Any
API = "/api/v3"
SEARCH_LIMIT = 50
PAGE_LIMIT = 100  # Megaplan's default and maximum page (§3.11)
HUMAN = "ContractorHuman"
COMPANY = "ContractorCompany"
CONTRACTORS = ("ContractorHuman", "ContractorCompany")
COMPANY_FIELDS = ("id", "name")
CONTACT_FIELDS = ("id", "name", "firstName", "lastName", "contactInfo")
DEAL_FIELDS = (
    "id",
    "program",
    "state",
    "result",
    "price",
    "timeUpdated",
    "contractor",
    "isDeleted",
)


def query_path(path: str, params: Mapping[str, JSON]) -> str:
    """`path?{json}`: Megaplan reads GET parameters as one JSON object (§3.2). Every
    character that means something in a query is escaped, so nothing is split on `&`."""
    text = json.dumps(params, ensure_ascii=False, separators=(",", ":"))
    return f"{path}?{quote(text, safe='')}"


def link(content_type: str, entity_id: str | int) -> dict[str, JSON]:
    return {"contentType": content_type, "id": str(entity_id)}


# ---- the envelope and errors ------------------------------------------------------------


def envelope_error(crm: str, status: int, body: JSON, where: str) -> CrmError | None:
    """The error an envelope carries (None: none). Messages are Megaplan's own, which
    never repeat a token."""
    meta = body.get("meta") if isinstance(body, dict) else None
    if not isinstance(meta, dict):
        return None
    inner = meta.get("status")
    code = inner if isinstance(inner, int) and inner >= 400 else status
    if code < 400:
        return None
    reasons = [
        f"{e.get('fieldName')}: {e.get('message')}" if e.get("fieldName") else str(e.get("message"))
        for e in meta.get("errors") or ()
        if isinstance(e, dict)
    ]
    message = f"{where}: HTTP {code}" + (f": {'; '.join(reasons)[:300]}" if reasons else "")
    if code == 401:
        return AuthError(crm, message)
    if code == 408 or code >= 500:
        return TransientCrmError(crm, message)
    return PermanentCrmError(crm, message)


def data(crm: str, body: JSON, operation: str) -> JSON:
    """The `data` of a successful envelope; an error carried in an HTTP 200 is raised."""
    error = envelope_error(crm, 200, body, operation)
    if error is not None:
        raise error
    if not isinstance(body, dict) or "data" not in body:
        raise PermanentCrmError(crm, f"{operation}: the answer is not a Megaplan envelope")
    return body["data"]


def records(crm: str, body: JSON, operation: str) -> list[dict[str, JSON]]:
    found = data(crm, body, operation)
    return [item for item in found or () if isinstance(item, dict)]


def has_more(body: JSON) -> bool:
    pagination = body.get("meta", {}).get("pagination") if isinstance(body, dict) else None
    return isinstance(pagination, dict) and bool(pagination.get("hasMoreNext"))


# ---- values -----------------------------------------------------------------------------


def _when(value: datetime) -> JSON:
    # A DateTime entity in ISO 8601 (§3.6: both DateOnly and DateTime shapes appear).
    return {"contentType": "DateTime", "value": value.astimezone(UTC).isoformat()}


def _option(field_id: str, value: Option) -> JSON:
    return str(value)  # an EnumField takes the option's value


def _options(field_id: str, values: tuple[Option, ...]) -> JSON:
    return [str(value) for value in values]


ENCODING = FieldEncoding(when=_when, option=_option, options=_options)


def field_values(updates: Iterable[FieldUpdate]) -> dict[str, JSON]:
    """Extra field values; a DATE as a DateOnly entity (its month counted from 0)."""
    values: dict[str, JSON] = {}
    for update in updates:
        value = update.value
        if update.kind is not FieldKind.DATE:
            values[update.field_id] = ENCODING.value(update)
        elif isinstance(value, date) and not isinstance(value, datetime):
            values[update.field_id] = {
                "contentType": "DateOnly",
                "year": value.year,
                "month": value.month - 1,
                "day": value.day,
            }
        else:
            raise ValueError(f"field {update.field_id}: date value {value!r} has the wrong type")
    return values


def value_text(value: JSON) -> str:
    """An extra field's value as the flow reads it: text, a number, a date-time, a list."""
    if value is None:
        return ""
    if isinstance(value, dict) and value.get("contentType") == "DateOnly":
        try:
            day = date(int(value["year"]), int(value["month"]) + 1, int(value["day"]))
        except (KeyError, TypeError, ValueError):
            return ""
        return day.isoformat()
    if isinstance(value, dict):
        return value_text(value.get("value"))
    if isinstance(value, list):
        return ",".join(value_text(item) for item in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format(Decimal(str(value)).normalize(), "f")
    return str(value)


def _checked_id(value: str) -> str:
    if not (value.isascii() and value.isdigit()):
        raise ValueError(f"id {value!r} is not a Megaplan id")
    return value


# ---- contractors --------------------------------------------------------------------------


def search_params(key: LookupKey, config: CrmConfig) -> dict[str, JSON] | None:
    """The list query for one key: `q` for a phone or an e-mail (matched loosely; the flow
    confirms, §3.3), an equality on the Telegram id extra field (a CrmFilter) when the
    section names one; None when there is nothing to search by."""
    fields = [*CONTACT_FIELDS, *contact_extra_fields(config)]
    base: dict[str, JSON] = {"limit": SEARCH_LIMIT, "fields": fields}
    if key.kind is KeyKind.TELEGRAM_ID:
        field = config.contact_fields.telegram_id
        if not field:
            return None
        term = {
            "contentType": "FilterTermString",
            "field": field,
            "comparison": "equals",
            "value": key.value,
        }
        group = {"contentType": "FilterTermGroup", "join": "and", "terms": [term]}
        config_json = {"contentType": "FilterConfig", "termGroup": group}
        return {**base, "filter": {"contentType": "CrmFilter", "id": None, "config": config_json}}
    return {**base, "q": search_query(key)}


def contact_extra_fields(config: CrmConfig) -> list[str]:
    ids = config.contact_fields
    return [field for field in (ids.telegram_id, ids.telegram_username) if field]


def contact_from_json(record: Mapping[str, JSON], config: CrmConfig) -> Contact:
    phones: list[str] = []
    emails: list[str] = []
    for info in record.get("contactInfo") or ():
        if not isinstance(info, dict) or not info.get("value"):
            continue
        if info.get("type") == "phone":
            phones.append(str(info["value"]))
        elif info.get("type") == "email":
            emails.append(str(info["value"]))
    ids = config.contact_fields
    names = (record.get("firstName"), record.get("lastName"))
    name = record.get("name") or " ".join(str(part) for part in names if part)
    return Contact(
        id=str(record["id"]),
        name=str(name or ""),
        phones=tuple(phones),
        emails=tuple(emails),
        telegram_id=value_text(record.get(ids.telegram_id or "")) if ids.telegram_id else "",
        telegram_username=(
            value_text(record.get(ids.telegram_username or "")) if ids.telegram_username else ""
        ),
        # Found or created here, not resumed from a journal; the deals are read apart
        # (`/contractor/{id}/deals`), so none are listed with it.
        deal_ids=(),
    )


def contact_json(new: NewContact) -> dict[str, JSON]:
    who = new.customer
    body: dict[str, JSON] = {"contentType": HUMAN}
    if who.first_name or not who.last_name:
        body["firstName"] = who.first_name or who.full_name or who.phone or who.email or ""
    if who.last_name:
        body["lastName"] = who.last_name
    info = [
        {"contentType": "ContactInfo", "type": kind, "value": value, "isMain": True}
        for kind, value in (("phone", who.phone), ("email", who.email))
        if value
    ]
    if info:
        body["contactInfo"] = info
    return body | field_values(new.fields)


def contact_patch_json(updates: Iterable[FieldUpdate]) -> dict[str, JSON]:
    return {"contentType": HUMAN} | field_values(updates)


# ---- deals ------------------------------------------------------------------------------


def deal_fields(config: CrmConfig) -> list[str]:
    return [*DEAL_FIELDS, *config.deal_field_ids()]


def deal_json(new: NewDeal, contractor_id: str) -> dict[str, JSON]:
    return {
        "contentType": "Deal",
        "name": new.name,
        "program": link("Program", _checked_id(new.pipeline_id)),
        "state": link("ProgramState", _checked_id(new.status_id)),
        "contractor": link(HUMAN, _checked_id(contractor_id)),
        "price": {"contentType": "Money", "value": float(new.price), "currency": "RUB"},
    } | field_values(new.fields)


def deal_patch_json(updates: Iterable[FieldUpdate]) -> dict[str, JSON]:
    return {"contentType": "Deal"} | field_values(updates)


def _link_id(value: JSON) -> str:
    return str(value["id"]) if isinstance(value, dict) and value.get("id") is not None else ""


def unix_seconds(value: JSON) -> int:
    """`timeUpdated` is a DateTime entity (or its ISO text)."""
    text = value.get("value") if isinstance(value, dict) else value
    if not isinstance(text, str) or not text:
        return 0
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())


def deal_from_json(record: Mapping[str, JSON], config: CrmConfig) -> Deal:
    state = _link_id(record.get("state"))
    price = record.get("price")
    amount = price.get("value") if isinstance(price, dict) else price
    configured = set(deal_fields(config)) - set(DEAL_FIELDS)
    contractor = _link_id(record.get("contractor"))
    return Deal(
        id=str(record["id"]),
        pipeline_id=_link_id(record.get("program")),
        status_id=state,
        updated_at=unix_seconds(record.get("timeUpdated")),
        price=Decimal(str(amount or 0)),
        is_deleted=bool(record.get("isDeleted")),
        # The deal's own result (positive / negative once in a final state) where the
        # answer has it; the section's closed states otherwise.
        is_closed=record.get("result") in ("positive", "negative")
        or state in set(config.closed_status_ids),
        contact_ids=(contractor,) if contractor else (),
        fields={key: value_text(value) for key, value in record.items() if key in configured},
    )


def deal_from_sent(sent: Mapping[str, JSON], deal_id: str, now: float, config: CrmConfig) -> Deal:
    """The deal just created, from what was sent (no read-back)."""
    stamp = datetime.fromtimestamp(now, UTC).isoformat()
    return deal_from_json({**sent, "id": deal_id, "timeUpdated": stamp}, config)


# ---- orders: companies ----------------------------------------------------------------


def _equals_filter(field: str, values: Sequence[str]) -> dict[str, JSON]:
    """A CrmFilter / OfferFilter term group: `field` equal to any of `values` (§3.3)."""
    terms = [
        {"contentType": "FilterTermString", "field": field, "comparison": "equals", "value": v}
        for v in values
    ]
    group = {"contentType": "FilterTermGroup", "join": "or", "terms": terms}
    return {"contentType": "FilterConfig", "termGroup": group}


def company_fields(config: CrmConfig) -> list[str]:
    inn = config.order_fields.company_inn
    return [*COMPANY_FIELDS, *([inn] if inn else [])]


def company_inn_params(company: Company, config: CrmConfig) -> dict[str, JSON] | None:
    """The companies whose INN field equals the INN (None: no INN, or no field for it)."""
    field = config.order_fields.company_inn
    if not (company.inn and field):
        return None
    crm_filter = {
        "contentType": "CrmFilter",
        "id": None,
        "config": _equals_filter(field, [company.inn]),
    }
    return {"limit": SEARCH_LIMIT, "fields": company_fields(config), "filter": crm_filter}


def company_name_params(company: Company, config: CrmConfig) -> dict[str, JSON] | None:
    """`q` by the name: loose (a substring, any case), the flow's rule confirms."""
    if not company.name.strip():
        return None
    return {"limit": SEARCH_LIMIT, "fields": company_fields(config), "q": company.name.strip()}


def company_from_json(record: Mapping[str, JSON], config: CrmConfig) -> CompanyRecord:
    inn = config.order_fields.company_inn
    return CompanyRecord(
        str(record["id"]),
        str(record.get("name") or ""),
        value_text(record.get(inn)) if inn else "",
    )


def oldest_first(records: Iterable[Mapping[str, JSON]]) -> list[Mapping[str, JSON]]:
    def key(record: Mapping[str, JSON]) -> tuple[int, str]:
        text = str(record.get("id"))
        return (int(text) if text.isdigit() else 2**63, text)

    return sorted(records, key=key)


def company_json(company: Company, config: CrmConfig) -> dict[str, JSON]:
    body: dict[str, JSON] = {"contentType": COMPANY, "name": company.name}
    info = [
        {"contentType": "ContactInfo", "type": kind, "value": value, "isMain": True}
        for kind, value in (("phone", company.phone), ("email", company.email))
        if value
    ]
    if info:
        body["contactInfo"] = info
    if company.inn and config.order_fields.company_inn:
        body[config.order_fields.company_inn] = company.inn
    return body


def human_company_json(company_id: str) -> dict[str, JSON]:
    """A person made one of the company's (its contact persons)."""
    return {"contentType": HUMAN, "company": link(COMPANY, _checked_id(company_id))}


# ---- orders: stage moves ----------------------------------------------------------------

TRANSITION_FIELDS = ("id", "program", "state", "possibleTransitions")


def transition_to(record: Mapping[str, JSON], status_id: str) -> str | None:
    """The id of a transition the deal may take now into `status_id`."""
    for transition in record.get("possibleTransitions") or ():
        if not isinstance(transition, dict) or transition.get("enabled") is False:
            continue
        if _link_id(transition.get("to")) == status_id:
            return str(transition["id"])
    return None


def current_state(record: Mapping[str, JSON]) -> tuple[str, str]:
    return _link_id(record.get("program")), _link_id(record.get("state"))


def transition_json(transition_id: str) -> dict[str, JSON]:
    return {"contentType": "ProgramTransition", "id": transition_id}


def change_json(change: DealChange) -> dict[str, JSON] | None:
    """What a deal update writes besides its state (None: nothing)."""
    body: dict[str, JSON] = {}
    if change.price is not None:
        body["price"] = {"contentType": "Money", "value": float(change.price), "currency": "RUB"}
    if change.name is not None:
        body["name"] = change.name
    body |= field_values(change.fields)
    return {"contentType": "Deal"} | body if body else None


# ---- orders: positions ----------------------------------------------------------------

OFFER_FIELDS = ("id", "name", "article", "price")


def offer_params(articles: Sequence[str]) -> dict[str, JSON]:
    """The catalog's offers with these articles (SKUs), one request for all."""
    offer_filter = {
        "contentType": "OfferFilter",
        "id": None,
        "config": _equals_filter("article", articles),
    }
    return {"limit": PAGE_LIMIT, "fields": list(OFFER_FIELDS), "filter": offer_filter}


def offer_json(item: OrderItem, currency: str) -> dict[str, JSON]:
    return {
        "contentType": "Offer",
        "name": item.name,
        "article": item.product_id,
        "price": _money(item.price, currency),
    }


def _money(value: Decimal, currency: str) -> dict[str, JSON]:
    return {"contentType": "Money", "value": float(value), "currency": currency or "RUB"}


def positions_json(
    items: Sequence[OrderItem], offers: Mapping[str, str], currency: str
) -> dict[str, JSON]:
    """The deal's whole list of positions: an update replaces it (what an order's items
    are). Each row names its offer; the order's own name, quantity and unit price win."""
    rows = [
        {
            "contentType": "OfferRow",
            "offer": link("Offer", offers[item.product_id]),
            "name": item.name,
            "quantity": float(item.quantity),
            "price": _money(item.price, currency),
        }
        for item in items
    ]
    return {"contentType": "Deal", "positions": rows}


# ---- comments ---------------------------------------------------------------------------


def comment_json(text: str) -> dict[str, JSON]:
    return {"contentType": "Comment", "content": note_html(text)}


def comment_text(record: Mapping[str, JSON]) -> str:
    return note_text(str(record.get("content") or ""))


# ---- schema -----------------------------------------------------------------------------


def pipeline_from(program: Mapping[str, JSON], states: Sequence[Mapping[str, JSON]]) -> Pipeline:
    return Pipeline(
        id=str(program["id"]),
        name=str(program.get("name") or ""),
        statuses={str(s["id"]): str(s.get("name") or "") for s in states},
    )


# Megaplan's extra field types (§3.6) in the vocabulary `crm-bridge check` compares against.
FIELD_TYPES = {
    "StringField": "text",
    "TextField": "textarea",
    "IntegerField": "numeric",
    "FloatField": "numeric",
    "MoneyField": "monetary",
    "DateTimeField": "date_time",
    "DateField": "date",
    "BoolField": "checkbox",
    "EnumField": "select",
    "MultiEnumField": "multiselect",
}


def custom_field_from(record: Mapping[str, JSON], entity: str) -> CustomField:
    kind = str(record.get("contentType") or record.get("type") or "")
    enums = {str(v): str(v) for v in record.get("enumValues") or ()}
    multiple = kind == "EnumField" and bool(record.get("multiple"))
    mapped = "multiselect" if multiple else FIELD_TYPES.get(kind, kind)
    name = str(record.get("hrName") or record.get("name") or "")
    return CustomField(str(record["name"]), name, mapped, entity, enums)
