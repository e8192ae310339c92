"""Pure translation between the domain types and amoCRM's (and Kommo's) API v4 JSON.

Domain values to v4 JSON (`custom_fields_values` by field id, phone and e-mail by field
code; a date-time as RFC 3339, a "date" as its day's UTC midnight; a lead's `price` in
whole roubles) and back (ids as strings, a "date" field's unix seconds as the day they
name). A deal's items are catalog elements found by their SKU field and linked with
`metadata.quantity`. Used by the adapter (`amocrm`) and its batch forms (`amocrm_batch`).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal

import phonenumbers

from bridge.crm.base import JSON, CustomField, Pipeline
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

PAGE_LIMIT = 250
COMPLEX_LIMIT = 50  # leads per `POST /leads/complex` [developers.kommo.com/reference/complex-leads]


# ---- domain → v4 JSON ---------------------------------------------------------------


def search_query(key: LookupKey) -> str:
    """What to put in `query=`: amoCRM matches substrings, so a phone is searched by its
    national significant number ("+79991234567" → "9991234567") to find "8 999…" too."""
    if key.kind is not KeyKind.PHONE:
        return key.value
    try:
        parsed = phonenumbers.parse(key.value, None)
    except phonenumbers.NumberParseException:
        return "".join(char for char in key.value if char.isdigit())
    return str(phonenumbers.national_significant_number(parsed))


def field_values_json(updates: Iterable[FieldUpdate]) -> list[dict[str, JSON]]:
    """`custom_fields_values` for v4 (ValueError on a value that does not fit its kind).

    DATETIME is sent as an RFC 3339 string, as the official PHP SDK does
    (`DateCustomFieldValueModel::toApi`); amoCRM answers with unix seconds.
    """
    return [{"field_id": int_id(u.field_id), "values": _values_json(u)} for u in updates]


def _values_json(update: FieldUpdate) -> list[dict[str, JSON]]:
    kind, value = update.kind, update.value
    if kind is FieldKind.TEXT and isinstance(value, str):
        return [{"value": value}]
    if kind is FieldKind.NUMBER and isinstance(value, Decimal | int):
        number = Decimal(value)
        return [{"value": int(number) if number == number.to_integral_value() else float(number)}]
    if kind is FieldKind.DATETIME and isinstance(value, datetime) and value.utcoffset() is not None:
        return [{"value": value.isoformat(timespec="seconds")}]
    if kind is FieldKind.DATE and isinstance(value, date) and not isinstance(value, datetime):
        # A "date" field holds a day as unix seconds; midnight UTC is that day wherever
        # the account's zone is east of Greenwich (Russia), and `date_text` reads it back.
        return [{"value": f"{value.isoformat()}T00:00:00+00:00"}]
    if kind is FieldKind.SELECT and isinstance(value, int | str):
        return [{"enum_id": int(value)}]
    if kind is FieldKind.MULTISELECT and isinstance(value, tuple):
        return [{"enum_id": int(enum_id)} for enum_id in value]
    raise ValueError(f"field {update.field_id}: {kind.value} value {value!r} has the wrong type")


def int_id(value: str) -> int:
    if not value.isdigit():
        raise ValueError(f"id {value!r} is not a number")
    return int(value)


def contact_json(new: NewContact) -> dict[str, JSON]:
    who = new.customer
    names = {"name": who.full_name, "first_name": who.first_name, "last_name": who.last_name}
    body: dict[str, JSON] = {key: value for key, value in names.items() if value}
    values: list[dict[str, JSON]] = [
        {"field_code": code, "values": [{"value": value, "enum_code": "WORK"}]}
        for code, value in (("PHONE", who.phone), ("EMAIL", who.email))
        if value
    ]
    values += field_values_json(new.fields)
    if values:
        body["custom_fields_values"] = values
    return body


def update_json(updates: Iterable[FieldUpdate]) -> dict[str, JSON]:
    """A lead's fields to set: the body of `PATCH /leads/{id}`, an item of `PATCH /leads`."""
    return {"custom_fields_values": field_values_json(updates)}


def note_json(text: str) -> dict[str, JSON]:
    """A text note: an item of `POST /leads/{id}/notes` and (with `entity_id`) /leads/notes."""
    return {"note_type": "common", "params": {"text": text}}


def linked_deal_json(contact: Contact, new: NewDeal) -> dict[str, JSON]:
    """`POST /leads`: a deal linked to an existing contact."""
    return deal_json(new, {"id": int_id(contact.id)})


def deal_json(new: NewDeal, contact: dict[str, JSON]) -> dict[str, JSON]:
    embedded: dict[str, JSON] = {"contacts": [contact]}
    if new.company_id is not None:
        # Linked in the same call: POST /leads and /leads/complex take `_embedded.companies`
        # (at most one company per lead in complex).
        embedded["companies"] = [{"id": int_id(new.company_id)}]
    body: dict[str, JSON] = {
        "name": new.name,
        "price": _whole(new.price),
        "pipeline_id": int_id(new.pipeline_id),
        "status_id": int_id(new.status_id),
        "_embedded": embedded,
    }
    if new.fields:
        body["custom_fields_values"] = field_values_json(new.fields)
    return body


def _whole(amount: Decimal) -> int:
    # A lead's `price` is an int (whole roubles).
    return int(amount.to_integral_value(ROUND_HALF_UP))


def change_json(change: DealChange) -> dict[str, JSON]:
    """`PATCH /leads/{id}`: the stage (status 143 is lost, 142 won, in every pipeline),
    price, name and fields, whatever of them the change sets."""
    body: dict[str, JSON] = {}
    if change.pipeline_id is not None and change.status_id is not None:
        body.update(pipeline_id=int_id(change.pipeline_id), status_id=int_id(change.status_id))
    if change.price is not None:
        body["price"] = _whole(change.price)
    if change.name is not None:
        body["name"] = change.name
    if change.fields:
        body["custom_fields_values"] = field_values_json(change.fields)
    return body


def company_json(company: Company, inn_field: str | None) -> dict[str, JSON]:
    """`POST /companies`: the name, phone and e-mail (by field code, as a contact's) and
    the INN in the account's own INN field (amoCRM has none built in)."""
    values: list[dict[str, JSON]] = [
        {"field_code": code, "values": [{"value": value, "enum_code": "WORK"}]}
        for code, value in (("PHONE", company.phone), ("EMAIL", company.email))
        if value
    ]
    if company.inn and inn_field:
        values.append({"field_id": int_id(inn_field), "values": [{"value": company.inn}]})
    body: dict[str, JSON] = {"name": company.name}
    if values:
        body["custom_fields_values"] = values
    return body


def name_search_word(name: str) -> str:
    """What to search a company's name by: its longest word. amoCRM's `query` matches a
    substring, so the whole name would miss "ооо  ромашка" for "ООО Ромашка"; the flow's
    rule then keeps the exact name only."""
    words = re.findall(r"\w+", name)
    return max(words, key=len, default="")


def quantity_json(quantity: Decimal) -> int | float:
    return int(quantity) if quantity == quantity.to_integral_value() else float(quantity)


def element_json(item: OrderItem, element_id: int | None = None) -> dict[str, JSON]:
    """A products-catalog element: name, SKU (the platform's product id) and unit price."""
    values = [
        {"field_code": "SKU", "values": [{"value": item.product_id}]},
        {"field_code": "PRICE", "values": [{"value": quantity_json(item.price)}]},
    ]
    body: dict[str, JSON] = {"name": item.name, "custom_fields_values": values}
    if element_id is not None:
        body["id"] = element_id
    return body


# ---- v4 JSON → domain ---------------------------------------------------------------


def embedded(body: JSON, key: str) -> list[dict[str, JSON]]:
    """`body._embedded[key]`, tolerating a 204 (None) and missing keys."""
    inner = body.get("_embedded") if isinstance(body, dict) else None
    items = inner.get(key) if isinstance(inner, dict) else None
    return [item for item in items or () if isinstance(item, dict)]


def _field_values(record: Mapping[str, JSON]) -> Iterator[dict[str, JSON]]:
    for entry in record.get("custom_fields_values") or ():
        if isinstance(entry, dict) and entry.get("values"):
            yield entry


def _value_text(value: Mapping[str, JSON]) -> str:
    if value.get("value") is not None:
        return str(value["value"])
    return str(value.get("enum_id", ""))


def contact_from_json(
    record: Mapping[str, JSON], config: CrmConfig, *, with_leads: bool
) -> Contact:
    phones: list[str] = []
    emails: list[str] = []
    texts: dict[str, str] = {}
    for entry in _field_values(record):
        values = [_value_text(value) for value in entry["values"] if isinstance(value, dict)]
        if entry.get("field_code") == "PHONE":
            phones.extend(value for value in values if value)
        elif entry.get("field_code") == "EMAIL":
            emails.extend(value for value in values if value)
        elif values:
            texts[str(entry.get("field_id"))] = values[0]
    ids = config.contact_fields
    deal_ids = None
    if with_leads:
        deal_ids = tuple(str(lead["id"]) for lead in embedded(record, "leads"))
    return Contact(
        id=str(record["id"]),
        name=str(record.get("name") or ""),
        phones=tuple(phones),
        emails=tuple(emails),
        telegram_id=texts.get(ids.telegram_id or "", ""),
        telegram_username=texts.get(ids.telegram_username or "", ""),
        deal_ids=deal_ids,
    )


def deal_from_json(
    record: Mapping[str, JSON],
    closed_status_ids: Iterable[str],
    date_fields: Iterable[str] = (),
) -> Deal:
    """`date_fields`: ids of "date" fields, read back as ISO days (amoCRM answers seconds)."""
    status_id = str(record["status_id"])
    days = set(date_fields)
    return Deal(
        id=str(record["id"]),
        pipeline_id=str(record["pipeline_id"]),
        status_id=status_id,
        updated_at=int(record.get("updated_at") or 0),
        price=Decimal(str(record.get("price") or 0)),
        is_deleted=bool(record.get("is_deleted")),
        is_closed=status_id in set(closed_status_ids),
        contact_ids=tuple(str(c["id"]) for c in embedded(record, "contacts")),
        fields={
            str(entry["field_id"]): (
                date_text(entry["values"][0])
                if str(entry["field_id"]) in days
                else _value_text(entry["values"][0])
            )
            for entry in _field_values(record)
        },
    )


def date_text(value: Mapping[str, JSON]) -> str:
    """A "date" field's seconds as the day they name. Read with half a day added: the day
    may come back as its start in the account's zone (e.g. 21:00 UTC the day before, for
    Moscow), which is within 12 hours of that day's UTC midnight either way."""
    raw = value.get("value")
    if isinstance(raw, int) and not isinstance(raw, bool):
        return datetime.fromtimestamp(raw + 43200, UTC).date().isoformat()
    return _value_text(value)


def company_from_json(record: Mapping[str, JSON], inn_field: str | None) -> CompanyRecord:
    inn = ""
    for entry in _field_values(record):
        if inn_field and str(entry.get("field_id")) == inn_field:
            inn = _value_text(entry["values"][0])
    return CompanyRecord(id=str(record["id"]), name=str(record.get("name") or ""), inn=inn)


def element_matches(record: Mapping[str, JSON], sku: str) -> bool:
    """Whether a catalog search hit carries exactly this SKU (`query` matches substrings)."""
    for entry in _field_values(record):
        if entry.get("field_code") == "SKU":
            return any(
                isinstance(value, dict) and str(value.get("value", "")).strip() == sku
                for value in entry["values"]
            )
    return False


def element_state(record: Mapping[str, JSON]) -> tuple[str, Decimal | None]:
    """An element's name and unit price (None when it has none)."""
    price: Decimal | None = None
    for entry in _field_values(record):
        if entry.get("field_code") == "PRICE" and isinstance(entry["values"][0], dict):
            with contextlib.suppress(ArithmeticError, ValueError):
                price = Decimal(_value_text(entry["values"][0]))
    return str(record.get("name") or ""), price


def catalog_links(body: JSON, catalog_id: int) -> dict[int, Decimal]:
    """`GET /leads/{id}/links`: the linked elements of one catalog → quantity."""
    linked: dict[int, Decimal] = {}
    for link in embedded(body, "links"):
        meta = link.get("metadata") if isinstance(link.get("metadata"), dict) else {}
        if link.get("to_entity_type") != "catalog_elements" or not isinstance(meta, dict):
            continue
        if str(meta.get("catalog_id")) != str(catalog_id):
            continue
        linked[int(link["to_entity_id"])] = Decimal(str(meta.get("quantity") or 0))
    return linked


def pipeline_from_json(record: Mapping[str, JSON]) -> Pipeline:
    statuses = {str(s["id"]): str(s.get("name", "")) for s in embedded(record, "statuses")}
    return Pipeline(id=str(record["id"]), name=str(record.get("name", "")), statuses=statuses)


def custom_field_from_json(record: Mapping[str, JSON], entity: str) -> CustomField:
    enums = {str(e["id"]): str(e.get("value", "")) for e in record.get("enums") or ()}
    name, kind = str(record.get("name", "")), str(record.get("type", ""))
    return CustomField(str(record["id"]), name, kind, entity, enums)
