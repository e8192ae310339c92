"""Pure mappers between the domain types and Pipedrive's JSON (API v2; v1 for notes).

Custom fields are keyed by their 40-character hash, single and multiple options by
numeric option id; v2 does not coerce strings to numbers. Note `content` is HTML.
No I/O here: `bridge.crm.pipedrive` sends what these build and reads what they parse.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import phonenumbers

from bridge.crm.base import JSON, CustomField, Pipeline
from bridge.crm.fieldvalues import FieldEncoding, Option, number_json
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
from bridge.settings import CrmConfig

SEARCH_LIMIT = 100
# Pipedrive field types → the vocabulary `crm-bridge check` compares the config with; others
# keep their Pipedrive name ("pipedrive:monetary") and are reported as unsuitable.
FIELD_TYPES = {
    "varchar": "text",
    "varchar_auto": "text",
    "phone": "text",
    "address": "text",
    "text": "textarea",
    "double": "numeric",
    "date": "date",
    "enum": "select",
    "set": "multiselect",
}


# ---- domain → Pipedrive JSON --------------------------------------------------------


def search_params(key: LookupKey, term: str | None = None) -> dict[str, str | int]:
    """One `persons/search`. A phone is searched without `exact_match` by one of
    `phone_terms` (`term`; the first by default); emails and the Telegram id (a text
    custom field) exactly. The flow confirms every hit."""
    if key.kind is KeyKind.PHONE:
        term = term if term is not None else phone_terms(key.value)[0]
        return {"term": term, "fields": "phone", "limit": SEARCH_LIMIT}
    field = "email" if key.kind is KeyKind.EMAIL else "custom_fields"
    return {"term": key.value, "fields": field, "exact_match": "true", "limit": SEARCH_LIMIT}


def phone_terms(phone: str) -> list[str]:
    """The searches that find a number stored the ways people type it, most likely first.

    Pipedrive documents `exact_match` only (the whole value, case-insensitively); how its
    partial search matches a phone is not documented, so the bridge assumes no more than
    the beginning of what is stored, digits compared without the punctuation, rather than
    digits anywhere [SPEC persons/search `term`, `exact_match`; crm-notes §2.2 "Phone
    caveat"]. So "+79991234567" goes out as the forms a stored number can start with:
    the international digits ("+7 999 123-45-67", and what the bridge itself stores),
    the national prefix and number ("8 (999) 123-45-67"), the national number alone
    ("999 123 45 67"). The next is searched only when the one before found no confirmed
    hit."""
    try:
        parsed = phonenumbers.parse(phone, None)
    except phonenumbers.NumberParseException:
        return ["".join(char for char in phone if char.isdigit())]
    national = str(phonenumbers.national_significant_number(parsed))
    region = phonenumbers.region_code_for_number(parsed)
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(region) if region else None
    trunk = (metadata.national_prefix or "") if metadata is not None else ""
    terms = [f"{parsed.country_code}{national}", f"{trunk}{national}", national]
    return list(dict.fromkeys(term for term in terms if len(term) >= 2))


def national_number(phone: str) -> str:
    """The national significant number ("+79991234567" → "9991234567"): what every
    stored format of the number contains."""
    try:
        parsed = phonenumbers.parse(phone, None)
    except phonenumbers.NumberParseException:
        return "".join(char for char in phone if char.isdigit())
    return str(phonenumbers.national_significant_number(parsed))


def custom_fields_json(updates: Iterable[FieldUpdate]) -> dict[str, JSON]:
    """v2 `custom_fields` (ValueError on a value that does not fit its kind).

    Text as a string, numbers as JSON numbers (v2 does not coerce strings), a date/time
    as the "YYYY-MM-DD" a Pipedrive date field takes (Pipedrive has no date-time custom
    field; the date is the one in the zone the flow chose), a single option as its
    numeric id, multiple options as a list of ids (the whole set is replaced), a calendar
    day (DATE) as its "YYYY-MM-DD".
    """
    return {update.field_id: _field_json(update) for update in updates}


def _field_json(update: FieldUpdate) -> JSON:
    if update.kind is FieldKind.DATE:
        # `datetime` is a `date` too: one with a time of day does not fit the kind.
        value = update.value
        if isinstance(value, date) and not isinstance(value, datetime):
            return value.isoformat()
        raise ValueError(f"field {update.field_id}: date value {value!r} has the wrong type")
    return ENCODING.value(update)


def _option_id(value: int | str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    raise ValueError(f"option id {value!r} is not a number")


def _options(field_id: str, values: tuple[Option, ...]) -> list[int]:
    if not values:
        raise ValueError(f"field {field_id}: an empty set of options")
    return [_option_id(option) for option in values]


ENCODING = FieldEncoding(
    when=lambda moment: moment.date().isoformat(),
    option=lambda field_id, value: _option_id(value),
    options=_options,
)


def int_id(value: str) -> int:
    if not (value.isascii() and value.isdigit()):
        raise ValueError(f"id {value!r} is not a number")
    return int(value)


def person_json(new: NewContact, org_id: str | None = None) -> dict[str, JSON]:
    """`org_id`: the person is the organization's (a person has one organization)."""
    who = new.customer
    body: dict[str, JSON] = {"name": who.full_name or who.phone or who.email or "—"}
    if who.phone:
        body["phones"] = [{"value": who.phone, "primary": True, "label": "mobile"}]
    if who.email:
        body["emails"] = [{"value": who.email, "primary": True, "label": "work"}]
    if new.fields:
        body["custom_fields"] = custom_fields_json(new.fields)
    if org_id is not None:
        body["org_id"] = int_id(org_id)
    return body


def deal_json(new: NewDeal, person_id: str) -> dict[str, JSON]:
    body: dict[str, JSON] = {
        "title": new.name,
        "person_id": int_id(person_id),
        "pipeline_id": int_id(new.pipeline_id),
        "stage_id": int_id(new.status_id),
        "value": number_json(new.price),
    }
    if new.company_id is not None:
        body["org_id"] = int_id(new.company_id)
    if new.fields:
        body["custom_fields"] = custom_fields_json(new.fields)
    return body


def deal_change_json(change: DealChange, lost: tuple[str, str] | None) -> dict[str, JSON]:
    """One PATCH: stage, value, title and fields. Pipedrive's "lost" is a status, not a
    stage: a move to `lost` (the (pipeline, stage) the `cancelled` order status maps to)
    also sets status "lost", and a move to any other stage sets "open" (an order that
    lives again reopens its deal) [SPEC v2 PATCH /deals/{id}: `status` open | won | lost,
    independent of `stage_id`]."""
    body: dict[str, JSON] = {}
    if change.pipeline_id is not None and change.status_id is not None:
        body["pipeline_id"] = int_id(change.pipeline_id)
        body["stage_id"] = int_id(change.status_id)
        body["status"] = "lost" if (change.pipeline_id, change.status_id) == lost else "open"
    if change.price is not None:
        body["value"] = number_json(change.price)
    if change.name is not None:
        body["title"] = change.name
    if change.fields:
        body["custom_fields"] = custom_fields_json(change.fields)
    return body


# ---- organizations and products ------------------------------------------------------


def org_search_params(company: Company, key: str, inn_field: str | None) -> dict[str, str | int]:
    """One `organizations/search`: the INN exactly in the custom fields (an INN field is
    a text field, so searchable), or the name. The name goes out as its longest word, not
    exactly: Pipedrive documents only `exact_match` (the whole value), so a stored name
    with other spacing or case is found by a word of it, and the flow's rule keeps only
    the same name [SPEC organizations/search `term`, `exact_match`]."""
    if key == "inn" and inn_field:
        return {"term": company.inn, "fields": "custom_fields", "exact_match": "true"}
    word = max(company.name.split(), key=len, default="")
    if len(word) < 2:  # a loose search takes 2 characters at least
        return {"term": company.name.strip(), "fields": "name", "exact_match": "true"}
    return {"term": word, "fields": "name", "limit": ORG_SEARCH_LIMIT}


ORG_SEARCH_LIMIT = 500  # the most one page may hold: loose name hits are confirmed here


def org_from_search(item: Mapping[str, JSON], inn: str) -> CompanyRecord:
    """A search hit: its custom-field values come unkeyed, so the INN is the wanted one
    when it is among them (an INN of 10 or 12 digits in another text field of the same
    organization is not a case worth a second call per hit)."""
    values = {str(value).strip() for value in item.get("custom_fields") or ()}
    return CompanyRecord(
        id=str(item["id"]),
        name=str(item.get("name") or ""),
        inn=inn if inn and inn in values else "",
    )


def org_json(company: Company, inn_field: str | None) -> dict[str, JSON]:
    """A new organization: its name and the INN field. Pipedrive organizations have no
    phone or e-mail of their own (the persons carry them) [SPEC v2 POST /organizations]."""
    body: dict[str, JSON] = {"name": company.name}
    if inn_field and company.inn:
        body["custom_fields"] = {inn_field: company.inn}
    return body


def org_record(record: Mapping[str, JSON], inn_field: str | None) -> CompanyRecord:
    custom = record.get("custom_fields") or {}
    inn = field_text(custom.get(inn_field)) if inn_field else ""
    return CompanyRecord(id=str(record["id"]), name=str(record.get("name") or ""), inn=inn)


def product_search_params(sku: str) -> dict[str, str | int]:
    """The catalog product whose `code` is the platform's SKU (whole value, any case)."""
    return {"term": sku, "fields": "code", "exact_match": "true", "limit": SEARCH_LIMIT}


def product_of(items: Iterable[Mapping[str, JSON]], sku: str) -> int | None:
    """The oldest product whose code is exactly `sku` among search hits."""
    ids = [
        int(item["id"])
        for item in items
        if str(item.get("code") or "").strip().casefold() == sku.strip().casefold()
    ]
    return min(ids, default=None)


def product_json(item: OrderItem, currency: str) -> dict[str, JSON]:
    """A catalog product for an SKU the catalog lacks: its name, the SKU as `code`, the
    order's unit price in the order's currency."""
    body: dict[str, JSON] = {"name": item.name, "code": item.product_id}
    if currency:
        body["prices"] = [{"currency": currency, "price": number_json(item.price)}]
    return body


def deal_products_json(items: Sequence[OrderItem], product_ids: Mapping[str, int]) -> JSON:
    """One bulk attach: each item its product, unit price and quantity, named as the order
    names it (`comments` keeps the order's own name when the catalog's differs)."""
    return {
        "data": [
            {
                "product_id": product_ids[item.product_id],
                "item_price": number_json(item.price),
                "quantity": number_json(item.quantity),
                "comments": item.name,
            }
            for item in items
        ]
    }


# ---- Pipedrive JSON → domain --------------------------------------------------------


def data_of(body: JSON) -> Any:
    return body.get("data") if isinstance(body, dict) else None


def field_text(value: JSON) -> str:
    """A custom-field value as text: numbers without a trailing ".0", option ids
    comma-separated, a monetary field's amount."""
    if value is None or isinstance(value, bool):
        return "" if value is None else str(value).lower()
    if isinstance(value, int | float):
        return str(number_json(Decimal(str(value))))
    if isinstance(value, list):
        return ",".join(field_text(item) for item in value)
    if isinstance(value, dict):
        return field_text(value.get("value", value.get("id")))
    return str(value)


def _values(entries: JSON) -> tuple[str, ...]:
    # v2 records: [{"value": …, "primary": …}]; search results: plain strings.
    out = (entry.get("value") if isinstance(entry, dict) else entry for entry in entries or ())
    return tuple(str(value) for value in out if value)


def contact_from_person(record: Mapping[str, JSON], config: CrmConfig) -> Contact:
    custom = record.get("custom_fields") or {}
    ids = config.contact_fields
    return Contact(
        id=str(record["id"]),
        name=str(record.get("name") or ""),
        phones=_values(record.get("phones")),
        emails=_values(record.get("emails")),
        telegram_id=field_text(custom.get(ids.telegram_id)) if ids.telegram_id else "",
        telegram_username=field_text(custom.get(ids.telegram_username))
        if ids.telegram_username
        else "",
        deal_ids=(),  # read whole: the flow may fill its empty fields
    )


def contact_from_search(item: Mapping[str, JSON], key: LookupKey) -> Contact:
    """A search hit as far as it shows: phones and emails, and (unkeyed) the custom-field
    values that matched, which stand in for the Telegram id until the person is read."""
    matched = key.kind is KeyKind.TELEGRAM_ID and key.value in {
        str(value).strip() for value in item.get("custom_fields") or ()
    }
    return Contact(
        id=str(item["id"]),
        name=str(item.get("name") or ""),
        phones=_values(item.get("phones")),
        emails=_values(item.get("emails")),
        telegram_id=key.value if matched else "",
    )


def timestamp(value: JSON) -> int:
    """RFC 3339 (v2) or "YYYY-MM-DD HH:MM:SS" in UTC (v1) → unix seconds."""
    if not value:
        return 0
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return int((parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp())


def deal_from_json(record: Mapping[str, JSON]) -> Deal:
    status = str(record.get("status") or "open")
    person_id = record.get("person_id")
    custom = record.get("custom_fields") or {}
    return Deal(
        id=str(record["id"]),
        pipeline_id=str(record["pipeline_id"]),
        status_id=str(record["stage_id"]),
        updated_at=timestamp(record.get("update_time")),
        price=Decimal(str(record.get("value") or 0)),
        is_deleted=bool(record.get("is_deleted")) or status == "deleted",
        is_closed=status in ("won", "lost"),
        contact_ids=(str(person_id),) if person_id else (),
        fields={key: text for key, value in custom.items() if (text := field_text(value))},
    )


def pipelines_from_json(
    pipelines: Iterable[Mapping[str, JSON]], stages: Iterable[Mapping[str, JSON]]
) -> tuple[Pipeline, ...]:
    live = [stage for stage in stages if not stage.get("is_deleted")]
    return tuple(
        Pipeline(
            id=str(pipeline["id"]),
            name=str(pipeline.get("name", "")),
            statuses={
                str(stage["id"]): str(stage.get("name", ""))
                for stage in live
                if stage.get("pipeline_id") == pipeline["id"]
            },
        )
        for pipeline in pipelines
        if not pipeline.get("is_deleted")
    )


def custom_field_from_json(record: Mapping[str, JSON], entity: str) -> CustomField:
    kind = str(record.get("field_type", ""))
    options = {str(o["id"]): str(o.get("label", "")) for o in record.get("options") or ()}
    return CustomField(
        id=str(record["field_code"]),
        name=str(record.get("field_name", "")),
        type=FIELD_TYPES.get(kind, f"pipedrive:{kind}"),
        entity=entity,
        enums=options,
    )
