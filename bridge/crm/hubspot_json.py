"""Pure translation between the domain types and HubSpot's 2026-09 CRM JSON.

Every property value HubSpot takes or returns is a string: numbers in plain notation
("11500.5"), date-times as ISO 8601 in UTC with milliseconds, a select option by its
internal value, a multiple-checkbox as the option values joined by ";" (the whole set is
replaced). Custom fields are properties named by the config (`deal_fields`,
`contact_fields`); select and multi-select ids in the config are option values.

Phones are searched by their national significant number: HubSpot matches phone filters
against calculated `hs_searchable_calculated_*` properties that keep only the area code and
local number, so the country code must be left out (two countries can collide; the flow's
confirm rule compares full E.164 numbers afterwards).

A note body is rich text (HTML): the text is sent HTML-escaped with a `<br>` per line break
so managers see its lines, and read back by turning block ends and breaks into newlines,
which also undoes what HubSpot's editor makes of a note (`<div><p>…</p></div>`).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import date, datetime
from decimal import Decimal, InvalidOperation

import phonenumbers

from bridge.crm.base import JSON, CustomField, Pipeline
from bridge.crm.richtext import note_html
from bridge.crm.values import iso_utc, typed_value
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

API = "2026-09"
OBJECTS = f"/crm/objects/{API}"
PIPELINES = f"/crm/pipelines/{API}"
PROPERTIES = f"/crm/properties/{API}"
# The associations API (v4's successor): `…/{from}/{to}/batch/read` answers every id's links.
ASSOCIATIONS = f"/crm/associations/{API}"
# HubSpot-defined association types (category HUBSPOT_DEFINED).
DEAL_TO_CONTACT = 3
NOTE_TO_DEAL = 214
# The primary company of a contact and of a deal, and a line item's deal
# [developers.hubspot.com/docs/api/crm/associations "HubSpot defined association types";
# linuxbeast.com/blog/how-to-use-hubspot-v4-associations-api-in-python, the type table].
CONTACT_TO_COMPANY = 1
DEAL_TO_COMPANY = 5
LINE_ITEM_TO_DEAL = 20
COMPANY_BASE = ("name", "phone")
LINE_ITEM_BASE = ("name", "quantity", "price", "hs_sku")
MAX_NAME_TOKENS = 9  # a filter group holds 10 filters; HubSpot allows 25 in a search
PHONE_PROPERTIES = ("phone", "mobilephone")
CONTACT_BASE = ("firstname", "lastname", "email", *PHONE_PROPERTIES)
DEAL_BASE = ("dealname", "amount", "pipeline", "dealstage", "hs_is_closed", "hs_lastmodifieddate")
MAX_PAGES = 20  # of a search, or of an associations read per 100 records
BATCH_READ = 100  # inputs per batch request (read, create, archive)
# A create refused because the contact exists (409 CONFLICT): that contact's id.
EXISTING_ID = re.compile(r"Existing ID: (\d+)")


# ---- domain → JSON ------------------------------------------------------------------


def national_number(e164: str) -> str:
    """ "+79991234567" → "9991234567": what HubSpot's phone search compares."""
    try:
        return str(phonenumbers.national_significant_number(phonenumbers.parse(e164, None)))
    except phonenumbers.NumberParseException:
        return "".join(char for char in e164 if char.isdigit())


def contact_search_json(
    keys: Sequence[LookupKey], config: CrmConfig, limit: int
) -> dict[str, JSON] | None:
    """One search whose filter groups (OR-ed) cover every key; None when none can be
    searched (a Telegram id without a configured property)."""
    groups: list[dict[str, JSON]] = []
    for key in keys:
        if key.kind is KeyKind.TELEGRAM_ID and config.contact_fields.telegram_id:
            groups.append(_eq_group(config.contact_fields.telegram_id, key.value))
        elif key.kind is KeyKind.PHONE:
            number = national_number(key.value)
            groups += [_eq_group(name, number) for name in PHONE_PROPERTIES]
        elif key.kind is KeyKind.EMAIL:
            groups.append(_eq_group("email", key.value))
    if not groups:
        return None
    return {"filterGroups": groups, "properties": contact_properties(config), "limit": limit}


def deal_search_json(contact_id: str, config: CrmConfig, limit: int) -> dict[str, JSON]:
    """The contact's open deals, newest first. "Open" is HubSpot's `hs_is_closed`, so
    deals in configured excluded stages come back too (the flow drops them itself)."""
    filters = [
        {"propertyName": "associations.contact", "operator": "EQ", "value": contact_id},
        {"propertyName": "hs_is_closed", "operator": "EQ", "value": "false"},
    ]
    return {
        "filterGroups": [{"filters": filters}],
        "sorts": [{"propertyName": "hs_lastmodifieddate", "direction": "DESCENDING"}],
        "properties": deal_properties(config),
        "limit": limit,
    }


def _eq_group(name: str, value: str) -> dict[str, JSON]:
    return {"filters": [{"propertyName": name, "operator": "EQ", "value": value}]}


def contact_properties(config: CrmConfig) -> list[str]:
    ids = config.contact_fields
    return _distinct([*CONTACT_BASE, ids.telegram_id, ids.telegram_username])


def deal_properties(config: CrmConfig) -> list[str]:
    return _distinct([*DEAL_BASE, *config.deal_field_ids()])


def _distinct(names: Iterable[str | None]) -> list[str]:
    return list(dict.fromkeys(name for name in names if name))


def property_value(update: FieldUpdate, date_only: bool = False) -> str:
    """The string HubSpot takes for one value (ValueError when it does not fit its kind).

    `date_only`: the property is of type `date` (what a date picker made in HubSpot's UI
    is), which refuses any time of day; it takes YYYY-MM-DD, here the calendar date of
    the value in the zone it carries (the display zone) [developers.hubspot.com/docs/api/faq
    "How should I format timestamps"; .../docs/faq/how-should-timestamps-be-formatted-for-
    hubspots-apis: "If you try to set a value that is not midnight UTC, you will receive
    an error"]."""
    if update.kind is FieldKind.DATETIME and date_only and isinstance(update.value, datetime):
        return update.value.date().isoformat()
    if update.kind is FieldKind.DATE:
        # A calendar day (an order's installation date): YYYY-MM-DD, what a `date`
        # property takes (midnight UTC of that day) [same pages as above]. `datetime` is a
        # `date` too: one with a time of day does not fit the kind.
        value = update.value
        if isinstance(value, date) and not isinstance(value, datetime):
            return value.isoformat()
        raise ValueError(f"field {update.field_id}: date value {value!r} has the wrong type")
    return str(typed_value(update, plain_number, ";".join))


def properties_json(
    updates: Iterable[FieldUpdate], date_only: Collection[str] = ()
) -> dict[str, str]:
    """`date_only`: the names of properties of type `date` (see `property_value`)."""
    return {u.field_id: property_value(u, u.field_id in date_only) for u in updates}


def date_properties(records: Iterable[Mapping[str, JSON]]) -> frozenset[str]:
    """The names of the `date` properties among a properties list answer's records."""
    return frozenset(str(r["name"]) for r in records if r.get("type") == "date")


def plain_number(value: Decimal) -> str:
    """No exponent, no trailing zeros, no grouping: what HubSpot number properties take."""
    if not value.is_finite():
        raise ValueError(f"{value} is not a number HubSpot can store")
    return "0" if value == 0 else format(value.normalize(), "f")


def contact_create_json(new: NewContact, company_id: str | None = None) -> dict[str, JSON]:
    """`company_id`: the contact is created as that company's (its primary company)."""
    who = new.customer
    names = {
        "firstname": who.first_name,
        "lastname": who.last_name,
        "email": who.email or "",
        "phone": who.phone or "",
    }
    properties = {name: value for name, value in names.items() if value}
    if not any(name in properties for name in ("firstname", "lastname", "email")):
        # HubSpot wants a name or an e-mail on a contact; a phone-only customer gets one.
        username = f"@{who.telegram_username}" if who.telegram_username else ""
        properties["firstname"] = who.phone or username or f"Telegram {who.telegram_id or ''}"
    properties.update(properties_json(new.fields))
    if company_id is None:
        return {"properties": properties}
    associations = [_association(company_id, CONTACT_TO_COMPANY)]
    return {"properties": properties, "associations": associations}


def deal_create_json(
    new: NewDeal, contact_id: str, date_only: Collection[str] = ()
) -> dict[str, JSON]:
    properties = {
        "dealname": new.name,
        "pipeline": new.pipeline_id,
        "dealstage": new.status_id,
        "amount": plain_number(new.price),
        **properties_json(new.fields, date_only),
    }
    associations = [_association(contact_id, DEAL_TO_CONTACT)]
    if new.company_id is not None:
        associations.append(_association(new.company_id, DEAL_TO_COMPANY))
    return {"properties": properties, "associations": associations}


def deal_update_json(
    updates: Iterable[FieldUpdate], date_only: Collection[str] = ()
) -> dict[str, JSON]:
    """One deal's new field values: a PATCH body, or (with its `id`) a batch update input."""
    return {"properties": properties_json(updates, date_only)}


def deal_change_json(change: DealChange, date_only: Collection[str] = ()) -> dict[str, JSON]:
    """One PATCH: the stage (and its pipeline), the amount, the name and the fields. A lost
    stage is a stage like any other in HubSpot (`closedlost` in the default pipeline):
    `hs_is_closed` follows from it."""
    properties: dict[str, str] = {}
    if change.pipeline_id is not None and change.status_id is not None:
        properties["pipeline"] = change.pipeline_id
        properties["dealstage"] = change.status_id
    if change.price is not None:
        properties["amount"] = plain_number(change.price)
    if change.name is not None:
        properties["dealname"] = change.name
    properties.update(properties_json(change.fields, date_only))
    return {"properties": properties}


# ---- companies and line items --------------------------------------------------------


def company_properties(inn_property: str | None) -> list[str]:
    return _distinct([*COMPANY_BASE, inn_property])


def company_search_json(
    company: Company, inn_property: str | None, limit: int
) -> dict[str, JSON] | None:
    """One search, its filter groups OR-ed: the INN property equal to the INN, or a name
    holding every word of the company's name (CONTAINS_TOKEN, so "ооо  ромашка" is found
    for "ООО Ромашка"; the flow's confirm rule keeps only the exact name)
    [developers.hubspot.com/docs/api-reference/latest/crm/search-the-crm]. None when there
    is nothing to search by."""
    groups: list[dict[str, JSON]] = []
    if inn_property and company.inn:
        groups.append(_eq_group(inn_property, company.inn))
    # Words without their punctuation ("«Ромашка»" → Ромашка): a token is a run of
    # letters, digits and @.+-, quotes and commas are not part of one.
    words = re.findall(r"[\w@.+-]+", company.name)[:MAX_NAME_TOKENS]
    if words:
        tokens = [
            {"propertyName": "name", "operator": "CONTAINS_TOKEN", "value": word} for word in words
        ]
        groups.append({"filters": tokens})
    if not groups:
        return None
    return {
        "filterGroups": groups,
        "properties": company_properties(inn_property),
        "sorts": [{"propertyName": "hs_object_id", "direction": "ASCENDING"}],
        "limit": limit,
    }


def company_create_json(company: Company, inn_property: str | None) -> dict[str, JSON]:
    """A company with its name, phone and INN (HubSpot companies have no e-mail of their
    own: the contacts carry it)."""
    values = {"name": company.name, "phone": company.phone or ""}
    if inn_property:
        values[inn_property] = company.inn
    return {"properties": {name: value for name, value in values.items() if value}}


def company_from_json(record: Mapping[str, JSON], inn_property: str | None) -> CompanyRecord:
    props = _props(record)
    return CompanyRecord(
        id=str(record["id"]), name=_text(props, "name"), inn=_text(props, inn_property)
    )


def line_items_create_json(deal_id: str, items: Sequence[OrderItem]) -> dict[str, JSON]:
    """One batch create: each item a line item of the deal (name, quantity, unit price and
    the platform's SKU), associated to it in the same request
    [developers.hubspot.com/docs/api-reference/latest/crm/objects/line-items/guide]. The
    currency is the deal's own (`deal_currency_code`)."""
    return {
        "inputs": [
            {
                "properties": {
                    "name": item.name,
                    "quantity": plain_number(item.quantity),
                    "price": plain_number(item.price),
                    "hs_sku": item.product_id,
                },
                "associations": [_association(deal_id, LINE_ITEM_TO_DEAL)],
            }
            for item in items
        ]
    }


def ids_json(ids: Iterable[str]) -> dict[str, JSON]:
    """The body of a batch archive (or read): `{"inputs": [{"id": …}, …]}`."""
    return {"inputs": [{"id": record_id} for record_id in ids]}


def batch_read_json(ids: Iterable[str], properties: Sequence[str]) -> dict[str, JSON]:
    """A batch read of records by id with these properties (no history)."""
    return {**ids_json(ids), "properties": list(properties), "propertiesWithHistory": []}


def traced_json(inputs: Iterable[Mapping[str, JSON]]) -> dict[str, JSON]:
    """A batch write whose inputs carry their index as `objectWriteTraceId`: HubSpot then
    answers a batch create with a 207 that names the inputs it refused (the others are
    created) instead of refusing the whole batch, and names each created record's input
    [developers.hubspot.com/docs/api-reference/error-handling "Multi-status errors";
    .../docs/api-reference/latest/crm/activities/notes/batch/create-notes, the answer's
    `results[].objectWriteTraceId`]."""
    return {"inputs": [{**entry, "objectWriteTraceId": str(n)} for n, entry in enumerate(inputs)]}


def note_create_json(deal_id: str, text: str, now: datetime) -> dict[str, JSON]:
    return {
        "properties": {"hs_timestamp": iso_utc(now), "hs_note_body": note_html(text)},
        "associations": [_association(deal_id, NOTE_TO_DEAL)],
    }


def _association(to_id: str, type_id: int) -> dict[str, JSON]:
    return {
        "to": {"id": to_id},
        "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": type_id}],
    }


# ---- JSON → domain ------------------------------------------------------------------


def _props(record: Mapping[str, JSON]) -> Mapping[str, JSON]:
    props = record.get("properties")
    return props if isinstance(props, dict) else {}


def _text(props: Mapping[str, JSON], name: str | None) -> str:
    value = props.get(name) if name else None
    return "" if value is None else str(value)


def contact_from_json(record: Mapping[str, JSON], config: CrmConfig) -> Contact:
    """A search or create answer as a `Contact`. `deal_ids` is () rather than None: the
    search does not return associations, and `list_deals` searches the deals itself."""
    props = _props(record)
    ids = config.contact_fields
    name = " ".join(part for part in (_text(props, "firstname"), _text(props, "lastname")) if part)
    return Contact(
        id=str(record["id"]),
        name=name,
        phones=tuple(_text(props, p) for p in PHONE_PROPERTIES if _text(props, p)),
        emails=(_text(props, "email"),) if _text(props, "email") else (),
        telegram_id=_text(props, ids.telegram_id),
        telegram_username=_text(props, ids.telegram_username),
        deal_ids=(),
    )


def deal_from_json(
    record: Mapping[str, JSON], config: CrmConfig, contact_ids: Sequence[str] | None = None
) -> Deal:
    """A deal as the flow sees it; closed is HubSpot's own `hs_is_closed` (or a stage the
    config lists as closed). Linked contacts come from `associations` unless given."""
    props = _props(record)
    stage = _text(props, "dealstage")
    closed = _text(props, "hs_is_closed").lower() == "true" or stage in config.closed_status_ids
    wanted = config.deal_field_ids()
    return Deal(
        id=str(record["id"]),
        pipeline_id=_text(props, "pipeline"),
        status_id=stage,
        updated_at=timestamp(props.get("hs_lastmodifieddate") or record.get("updatedAt")),
        price=_decimal(props.get("amount")),
        is_deleted=bool(record.get("archived")),
        is_closed=closed,
        contact_ids=tuple(contact_ids)
        if contact_ids is not None
        else associated(record, "contacts"),
        fields={name: _text(props, name) for name in wanted if _text(props, name)},
    )


def created_contact(
    payload: Mapping[str, JSON], answer: Mapping[str, JSON], config: CrmConfig
) -> Contact:
    """The contact a create made: what was sent, overlaid with what the answer shows."""
    props = {**payload["properties"], **(answer.get("properties") or {})}
    return contact_from_json({"id": answer["id"], "properties": props}, config)


def created_deal(
    payload: Mapping[str, JSON], answer: Mapping[str, JSON], config: CrmConfig, contact_id: str
) -> Deal:
    """The deal a create made (linked to `contact_id`), as `created_contact`."""
    props = {**payload["properties"], **(answer.get("properties") or {})}
    return deal_from_json({**answer, "properties": props}, config, (contact_id,))


def associated(record: Mapping[str, JSON], kind: str) -> tuple[str, ...]:
    """Ids under `associations.<kind>.results` (once each: labels repeat them)."""
    groups = record.get("associations")
    group = groups.get(kind) if isinstance(groups, dict) else None
    results = group.get("results") if isinstance(group, dict) else None
    ids = (str(item["id"]) for item in results or () if isinstance(item, dict) and "id" in item)
    return tuple(dict.fromkeys(ids))


def traced_results(answer: Mapping[str, JSON], count: int) -> dict[int, Mapping[str, JSON]]:
    """A traced batch write's records by input index (see `traced_json`). Records without
    a trace id (an answer that leaves it out) are taken in input order over the inputs the
    answer neither refused nor traced, only when they match them one to one."""
    results = [r for r in answer.get("results") or () if isinstance(r, dict)]
    refused = set(refused_inputs(answer))
    found: dict[int, Mapping[str, JSON]] = {}
    untraced = []
    for record in results:
        trace = str(record.get("objectWriteTraceId") or "")
        if trace.isdigit() and int(trace) < count:
            found[int(trace)] = record
        else:
            untraced.append(record)
    rest = [n for n in range(count) if n not in found and n not in refused]
    if untraced and len(untraced) == len(rest):
        found.update(zip(rest, untraced, strict=True))
    return found


def refused_inputs(answer: Mapping[str, JSON]) -> dict[int, Mapping[str, JSON]]:
    """The errors of a 207 answer by the index of the input each names (its
    `context.objectWriteTraceId`, see `traced_json`); errors naming none are left out."""
    refused: dict[int, Mapping[str, JSON]] = {}
    for error in answer.get("errors") or ():
        context = error.get("context") if isinstance(error, dict) else None
        traces = context.get("objectWriteTraceId") if isinstance(context, dict) else None
        for trace in traces or ():
            if str(trace).isdigit():
                refused[int(str(trace))] = error
    return refused


def error_ids(error: Mapping[str, JSON]) -> tuple[str, ...]:
    """The record ids an error of a batch answer names (`context.ids` or `context.id`; in
    an associations batch read, `context.fromObjectId`)."""
    context = error.get("context")
    if not isinstance(context, dict):
        return ()
    keys = ("ids", "id", "fromObjectId")
    return tuple(str(i) for key in keys for i in context.get(key) or ())


def associations_from_json(answer: Mapping[str, JSON]) -> dict[str, list[str]]:
    """An associations batch read's answer: each source id's linked ids, in order, once
    each (a labelled link repeats the id). Ids with no links are not among the results (a
    207 lists them among `errors`)."""
    linked: dict[str, list[str]] = {}
    for result in answer.get("results") or ():
        ids = linked.setdefault(str(result["from"]["id"]), [])
        for to in result.get("to") or ():
            if str(to["toObjectId"]) not in ids:
                ids.append(str(to["toObjectId"]))
    return linked


def associations_next(answer: Mapping[str, JSON]) -> list[dict[str, JSON]]:
    """The inputs of the next page of an associations batch read: each source whose links
    did not fit, with its `paging.next.after`."""
    return [
        {"id": str(result["from"]["id"]), "after": str(result["paging"]["next"]["after"])}
        for result in answer.get("results") or ()
        if ((result.get("paging") or {}).get("next") or {}).get("after")
    ]


def contact_deals(
    contact_id: str,
    linked: Sequence[str],
    records: Mapping[str, Mapping[str, JSON]],
    known: Sequence[Deal],
    config: CrmConfig,
) -> list[Deal]:
    """What `list_deals` answers for a contact, from its linked deal ids (an associations
    read) and the records of those not `known` (a batch read): the deals its search would
    find (linked, not archived, `hs_is_closed` false), newest first as it sorts them (by
    `hs_lastmodifieddate`, the older id first on a tie), then the known deals it would
    leave out. A known deal is taken as it was read; one the search would find is given
    the contact as its only link, as the search answers it. A known deal closed in a
    stage the config lists as closed may be open to HubSpot: it goes last either way."""
    linked_ids = set(linked)
    known_ids = {deal.id for deal in known}
    found = [
        deal_from_json(records[deal_id], config, (contact_id,))
        for deal_id in linked
        if deal_id not in known_ids
        and deal_id in records
        and not records[deal_id].get("archived")
        and _text(_props(records[deal_id]), "hs_is_closed").lower() != "true"
    ]
    found.extend(
        replace(deal, contact_ids=(contact_id,))
        for deal in known
        if deal.id in linked_ids and not deal.is_closed and not deal.is_deleted
    )
    found.sort(key=lambda deal: (-deal.updated_at, int(deal.id) if deal.id.isdigit() else 0))
    shown = {deal.id for deal in found}
    return [*found, *(deal for deal in known if deal.id not in shown)]


def timestamp(value: JSON) -> int:
    """Unix seconds of an ISO 8601 string or a millisecond epoch; 0 when absent."""
    if value is None or value == "":
        return 0
    text = str(value)
    if text.isdigit():
        return int(text) // 1000
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())


def _decimal(value: JSON) -> Decimal:
    try:
        return Decimal(str(value)) if value not in (None, "") else Decimal(0)
    except InvalidOperation:
        return Decimal(0)


def pipeline_from_json(record: Mapping[str, JSON]) -> Pipeline:
    stages = sorted(
        (stage for stage in record.get("stages") or () if not stage.get("archived")),
        key=lambda stage: int(stage.get("displayOrder") or 0),
    )
    statuses = {str(stage["id"]): str(stage.get("label", "")) for stage in stages}
    return Pipeline(id=str(record["id"]), name=str(record.get("label", "")), statuses=statuses)


def field_type(record: Mapping[str, JSON]) -> str:
    """A HubSpot property's type in the names `crm-bridge check` compares against."""
    kind, widget = str(record.get("type", "")), str(record.get("fieldType", ""))
    if kind == "enumeration":
        return {"checkbox": "multiselect", "select": "select", "radio": "select"}.get(
            widget, widget or kind
        )
    if kind in ("string", "phone_number"):
        return "textarea" if widget in ("textarea", "html") else "text"
    return {"number": "numeric", "datetime": "date_time", "date": "date"}.get(kind, kind)


def field_from_json(record: Mapping[str, JSON], entity: str) -> CustomField:
    enums = {
        str(option["value"]): str(option.get("label", ""))
        for option in record.get("options") or ()
        if isinstance(option, dict) and not option.get("hidden")
    }
    label = str(record.get("label", ""))
    return CustomField(str(record["name"]), label, field_type(record), entity, enums)


def is_custom(record: Mapping[str, JSON]) -> bool:
    """Only the account's own properties are candidates for the config's fields."""
    return not record.get("hubspotDefined") and not record.get("calculated")
