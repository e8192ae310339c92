"""Bitrix24 REST shapes, both ways, as pure functions (no I/O).

Domain values → method parameters (`crm.contact.add`, `crm.deal.add/update`, the list
filters) and PHP-style query strings for `batch` commands; records → `Contact`, `Deal`,
pipelines and fields. Value formats of user fields (UF) [b24-rest-docs crm-item-add.md,
data-types.md]: string as text, double as a number, datetime as ISO 8601 with offset,
enumeration as the item ID, multiple enumeration as an array of item IDs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

from bridge.crm.base import CustomField, Pipeline
from bridge.crm.fieldvalues import FieldEncoding, number_json
from bridge.domain import (
    Company,
    CompanyRecord,
    Contact,
    Deal,
    DealChange,
    FieldKind,
    FieldUpdate,
    NewContact,
    NewDeal,
    OrderItem,
)
from bridge.errors import ConfigError
from bridge.settings import CrmConfig

JSON = Any
CONTACT_SELECT = ("ID", "NAME", "LAST_NAME", "PHONE", "EMAIL", "UF_*")
DEAL_SELECT = (
    "ID",
    "TITLE",
    "CATEGORY_ID",
    "STAGE_ID",
    "STAGE_SEMANTIC_ID",
    "CLOSED",
    "OPPORTUNITY",
    "CONTACT_ID",
    "DATE_MODIFY",
    "UF_*",
)
DEAL_TYPE = 2  # entityTypeId of deals in crm.item.*
NO_CONTACT = "0"  # an id no contact has (see open_deals_params)
# crm.item.list's camelCase deal fields, and their crm.deal.* names.
ITEM_FIELDS = {
    "id": "ID",
    "title": "TITLE",
    "categoryId": "CATEGORY_ID",
    "stageId": "STAGE_ID",
    "stageSemanticId": "STAGE_SEMANTIC_ID",
    "closed": "CLOSED",
    "opportunity": "OPPORTUNITY",
    "contactId": "CONTACT_ID",
    "updatedTime": "DATE_MODIFY",
}
ITEM_SELECT = (*ITEM_FIELDS, "contactIds")
CLOSED_SEMANTICS = frozenset({"S", "F"})  # won, lost; "P" is in progress
QUIET = {"REGISTER_SONET_EVENT": "N"}  # no live-feed post per write
# Bitrix field types in the vocabulary `crm-bridge check` compares against (amoCRM's names).
FIELD_TYPES = {
    "string": "text",
    "url": "url",
    "double": "numeric",
    "integer": "numeric",
    "money": "monetary",
    "datetime": "date_time",
    "date": "date",
    "boolean": "checkbox",
}


@dataclass(frozen=True)
class BitrixOptions:
    """`[crm.NAME.options]` of a bitrix24 section."""

    burst: int = 10  # requests the limiter lets out at once (Bitrix's bucket holds 50)
    currency_id: str | None = None  # CURRENCY_ID of new deals; else the portal's own
    oauth_server: str = "https://oauth.bitrix24.tech"
    # The requisite preset a new company's INN is written with: 1 is "Организация" on a
    # Russian portal (crm.requisite.preset.list names them).
    requisite_preset_id: int = 1

    @classmethod
    def from_config(cls, name: str, options: Mapping[str, object]) -> BitrixOptions:
        where = f"crm.{name}.options"
        known_keys = {"burst", "currency_id", "oauth_server", "requisite_preset_id"}
        unknown = sorted(set(options) - known_keys)
        if unknown:
            known = ", ".join(sorted(known_keys))
            raise ConfigError(f"{where}: unknown {unknown}; bitrix24 knows {known}")
        burst = options.get("burst", cls.burst)
        if not isinstance(burst, int) or isinstance(burst, bool) or not 1 <= burst <= 50:
            raise ConfigError(f"{where}.burst: a whole number from 1 to 50")
        currency = options.get("currency_id")
        if currency is not None and not (isinstance(currency, str) and currency.isalpha()):
            raise ConfigError(f'{where}.currency_id: a currency code such as "RUB"')
        server = options.get("oauth_server", cls.oauth_server)
        if not (isinstance(server, str) and server.startswith("https://")):
            raise ConfigError(f"{where}.oauth_server: an https:// URL")
        preset = options.get("requisite_preset_id", cls.requisite_preset_id)
        if not isinstance(preset, int) or isinstance(preset, bool) or preset < 1:
            raise ConfigError(f"{where}.requisite_preset_id: a preset id (a whole number)")
        return cls(burst, currency, server, preset)


# ---- requests -----------------------------------------------------------------------


def php_query(params: Mapping[str, JSON]) -> list[tuple[str, str]]:
    """`params` as PHP's http_build_query writes them: `filter[UF_X]=1`, `select[0]=ID`."""
    pairs: list[tuple[str, str]] = []
    for key, value in params.items():
        pairs.extend(_php_pairs(str(key), value))
    return pairs


def _php_pairs(name: str, value: JSON) -> Iterator[tuple[str, str]]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _php_pairs(f"{name}[{key}]", item)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _php_pairs(f"{name}[{index}]", item)
    elif value is None:
        yield name, ""
    elif isinstance(value, bool):
        yield name, "Y" if value else "N"
    else:
        yield name, str(value)


def command(method: str, params: Mapping[str, JSON]) -> str:
    """One `batch` command: `method?query`. References such as `$result[c]` survive the
    encoding: Bitrix decodes the query (parse_str) before it substitutes them."""
    query = urlencode(php_query(params))
    return f"{method}?{query}" if query else method


def field_values(updates: Iterable[FieldUpdate]) -> dict[str, JSON]:
    """`fields` entries for the updates (ValueError on a value that does not fit). A
    "date" user field takes the day as "YYYY-MM-DD" [b24-rest-docs data-types.md]."""
    values: dict[str, JSON] = {}
    for update in updates:
        if update.kind is FieldKind.DATE:
            day = update.value
            if not isinstance(day, date) or isinstance(day, datetime):
                raise ValueError(f"field {update.field_id}: date value {day!r} is not a day")
            values[update.field_id] = day.isoformat()
        else:
            values[update.field_id] = ENCODING.value(update)
    return values


def _item_id(field_id: str, value: int | str) -> int:
    # Enumeration values are written by item ID; a label would be stored as nothing.
    if isinstance(value, int) or value.isdigit():
        return int(value)
    raise ValueError(f"field {field_id}: {value!r} is not an enumeration item ID")


ENCODING = FieldEncoding(
    when=lambda moment: moment.isoformat(timespec="seconds"),
    option=_item_id,
    options=lambda field_id, values: [_item_id(field_id, item) for item in values],
)


def contact_fields(new: NewContact) -> dict[str, JSON]:
    who, utm = new.customer, new.utm
    fields: dict[str, JSON] = {}
    if who.first_name or who.last_name:
        fields.update(NAME=who.first_name, LAST_NAME=who.last_name)
    else:
        fields["NAME"] = who.phone or who.email or ""
    if who.phone:
        fields["PHONE"] = [{"VALUE": who.phone, "VALUE_TYPE": "MOBILE"}]
    if who.email:
        fields["EMAIL"] = [{"VALUE": who.email, "VALUE_TYPE": "WORK"}]
    for name, value in (
        ("UTM_SOURCE", utm.source),
        ("UTM_MEDIUM", utm.medium),
        ("UTM_CAMPAIGN", utm.campaign),
        ("UTM_TERM", utm.term),
        ("UTM_CONTENT", utm.content),
    ):
        if value:
            fields[name] = value
    fields.update(field_values(new.fields))
    return fields


def deal_fields(new: NewDeal, contact_id: str, currency_id: str | None) -> dict[str, JSON]:
    """`crm.deal.add` fields; `contact_id` may be a batch reference (`$result[contact]`)."""
    if not new.pipeline_id.isdigit():
        raise ValueError(f"pipeline id {new.pipeline_id!r} is not a category id")
    fields: dict[str, JSON] = {
        "TITLE": new.name,
        "CATEGORY_ID": int(new.pipeline_id),
        "STAGE_ID": new.status_id,
        "OPPORTUNITY": number_json(new.price),
        "CONTACT_IDS": [contact_id],
    }
    if currency_id:
        fields["CURRENCY_ID"] = currency_id
    if new.company_id is not None:
        fields["COMPANY_ID"] = _numeric_id(new.company_id)
    fields.update(field_values(new.fields))
    return fields


def deal_update_params(deal_id: str, updates: Iterable[FieldUpdate]) -> dict[str, JSON]:
    """`crm.deal.update` of the fields, without a live-feed post."""
    return {"id": int(deal_id), "fields": field_values(updates), "params": QUIET}


def add_params(fields: Mapping[str, JSON]) -> dict[str, JSON]:
    """`crm.contact.add` / `crm.deal.add` of the fields, without a live-feed post."""
    return {"fields": fields, "params": QUIET}


def note_params(deal_id: str, text: str) -> dict[str, JSON]:
    """`crm.timeline.comment.add` of a comment on the deal."""
    return {"fields": {"ENTITY_ID": int(deal_id), "ENTITY_TYPE": "deal", "COMMENT": text}}


def deal_get_commands(deal_id: str, prefix: str = "") -> dict[str, tuple[str, dict[str, JSON]]]:
    """The deal and every contact bound to it (`prefix` keeps several deals apart)."""
    return {
        f"{prefix}deal": ("crm.deal.get", {"id": deal_id}),
        f"{prefix}contacts": ("crm.deal.contact.items.get", {"id": deal_id}),
    }


# The contact's fields, the deal's fields, the two commands (the contact's first).
ContactAndDeal = tuple[dict[str, JSON], dict[str, JSON], dict[str, tuple[str, dict[str, JSON]]]]


def contact_and_deal_commands(
    contact: NewContact, deal: NewDeal, currency_id: str | None, prefix: str = ""
) -> ContactAndDeal:
    """`crm.contact.add`, then `crm.deal.add` bound to it by `$result[{prefix}contact]`
    (and to the deal's company): both fields and the two commands. Sent with halt only:
    a contact that failed resolves to an array, which Bitrix does not refuse (see
    `bitrix24_calls`)."""
    person = contact_fields(contact)
    if deal.company_id is not None:
        person["COMPANY_IDS"] = [int(deal.company_id)]
    bound = deal_fields(deal, f"$result[{prefix}contact]", currency_id)
    commands = {
        f"{prefix}contact": ("crm.contact.add", add_params(person)),
        f"{prefix}deal": ("crm.deal.add", add_params(bound)),
    }
    return person, bound, commands


def _numeric_id(value: str) -> int:
    if not value.isdigit():
        raise ValueError(f"id {value!r} is not a number")
    return int(value)


COMPANY_ENTITY = 4  # ENTITY_TYPE_ID of a company (crm.enum.ownertype)


def company_fields(company: Company) -> dict[str, JSON]:
    """`crm.company.add`: the name, phone and e-mail; the INN goes in a requisite."""
    fields: dict[str, JSON] = {"TITLE": company.name, "COMPANY_TYPE": "CUSTOMER"}
    if company.phone:
        fields["PHONE"] = [{"VALUE": company.phone, "VALUE_TYPE": "WORK"}]
    if company.email:
        fields["EMAIL"] = [{"VALUE": company.email, "VALUE_TYPE": "WORK"}]
    return fields


def requisite_fields(company: Company, company_ref: str, preset_id: int) -> dict[str, JSON]:
    """`crm.requisite.add` of the company's INN: a Russian portal keeps the INN in the
    company's requisites (RQ_INN of a preset such as "Организация"), not on the company
    [b24-rest-docs crm/requisites; dev.1c-bitrix.ru forum "Как вытаскивать ИНН"].
    `company_ref` may be a batch reference (`$result[company]`)."""
    return {
        "ENTITY_TYPE_ID": COMPANY_ENTITY,
        "ENTITY_ID": company_ref,
        "PRESET_ID": preset_id,
        "NAME": company.name,
        "RQ_COMPANY_NAME": company.name,
        "RQ_INN": company.inn,
    }


def requisites_by_inn(inn: str) -> dict[str, JSON]:
    return {
        "filter": {"RQ_INN": inn, "ENTITY_TYPE_ID": COMPANY_ENTITY},
        "select": ["ID", "ENTITY_ID", "RQ_INN", "RQ_COMPANY_NAME"],
        "order": {"ENTITY_ID": "ASC"},
    }


def companies_by_name(word: str) -> dict[str, JSON]:
    """`%TITLE`: a substring (LIKE, case-insensitive) of one word, the flow's rule then
    keeps the exact name: "ооо  ромашка" is found for "ООО Ромашка"."""
    return {"filter": {"%TITLE": word}, "select": ["ID", "TITLE"], "order": {"ID": "ASC"}}


def name_search_word(name: str) -> str:
    return max(re.findall(r"\w+", name), key=len, default="")


def companies_from(requisites: JSON, companies: JSON) -> tuple[list[CompanyRecord], ...]:
    """Hits by INN (from requisites) and by name."""
    by_inn = [
        CompanyRecord(
            text(r.get("ENTITY_ID")), text(r.get("RQ_COMPANY_NAME")), text(r.get("RQ_INN"))
        )
        for r in as_list(requisites)
        if isinstance(r, dict) and text(r.get("ENTITY_ID"))
    ]
    by_name = [
        CompanyRecord(text(r.get("ID")), text(r.get("TITLE")))
        for r in as_list(companies)
        if isinstance(r, dict)
    ]
    return by_inn, by_name


def change_params(deal_id: str, change: DealChange) -> dict[str, JSON]:
    """`crm.item.update` of a deal: its pipeline and stage, amount, title and fields.
    Not crm.deal.update: that cannot move a deal to another pipeline (CATEGORY_ID is not
    writable there), while crm.item.update takes `categoryId` with `stageId`; with
    `useOriginalUfNames` user fields keep their UF_CRM_ names in the request too
    [b24-rest-docs universal/crm-item-update.md]. An amount written here is made manual
    (`isManualOpportunity`), so product rows set afterwards do not recompute it."""
    fields: dict[str, JSON] = {}
    if change.pipeline_id is not None and change.status_id is not None:
        fields.update(categoryId=_numeric_id(change.pipeline_id), stageId=change.status_id)
    if change.price is not None:
        fields.update(opportunity=number_json(change.price), isManualOpportunity="Y")
    if change.name is not None:
        fields["title"] = change.name
    fields.update(field_values(change.fields))
    if not fields:
        return {}
    return {
        "entityTypeId": DEAL_TYPE,
        "id": _numeric_id(deal_id),
        "useOriginalUfNames": "Y",
        "fields": fields,
    }


def product_rows(items: Iterable[OrderItem]) -> list[dict[str, JSON]]:
    """`crm.deal.productrows.set` rows: free rows named as the order names the product
    (no catalog product is needed), unit price and quantity."""
    return [
        {
            "PRODUCT_NAME": item.name,
            "PRICE": number_json(item.price),
            "QUANTITY": number_json(item.quantity),
        }
        for item in items
    ]


def open_deals_params(contact_id: str, config: CrmConfig, start: int = 0) -> dict[str, JSON]:
    """`crm.item.list` (deals, entityTypeId 2) of the deals the contact is bound to, as
    the primary contact or not, still open (semantic P: excluded stages are open too and
    come back), most recently modified first. Not `crm.deal.list`: its CONTACT_ID is the
    primary contact only and it cannot filter CONTACT_IDS, for which its page sends to
    crm.item.list [b24-rest-docs crm-deal-list.md]; `contactIds` works in crm.item.list's
    filter [b24-rest-docs universal/object-fields.md, "Поля в select, filter и order"].
    `useOriginalUfNames` keeps user fields named as configured (UF_CRM_…).

    The contact goes in an IN list beside NO_CONTACT so that the filter fails closed: in
    a batch `contact_id` may be `$result[tg][0][ID]`, which a Telegram miss resolves to
    an empty array, and an empty condition is dropped (50 deals of the whole portal);
    the list is never empty, and no contact has id 0."""
    configured = list(config.deal_field_ids())
    bound = {"@contactIds": [contact_id, NO_CONTACT]}
    return {
        "entityTypeId": DEAL_TYPE,
        "useOriginalUfNames": "Y",
        "filter": {**bound, "stageSemanticId": "P", "isRecurring": "N"},
        "order": {"updatedTime": "DESC", "id": "DESC"},
        "select": list(dict.fromkeys([*ITEM_SELECT, *configured])),
        "start": start,
    }


def deal_records(result: JSON, config: CrmConfig) -> list[dict[str, JSON]]:
    """`crm.item.list`'s `{"items": [...]}` as crm.deal.* records (UPPER_CASE names, user
    fields as stored), each with CONTACT_IDS: every bound contact, the primary first."""
    configured = set(config.deal_field_ids())
    records: list[dict[str, JSON]] = []
    for item in as_list(as_map(result).get("items")):
        if not isinstance(item, dict):
            continue
        record = {upper: item.get(camel) for camel, upper in ITEM_FIELDS.items()}
        record.update({k: v for k, v in item.items() if k.startswith("UF_") or k in configured})
        primary = text(item.get("contactId"))
        bound = [text(cid) for cid in as_list(item.get("contactIds"))]
        record["CONTACT_IDS"] = list(dict.fromkeys(_present(primary, *bound)))
        records.append(record)
    return records


def contact_select(config: CrmConfig) -> list[str]:
    configured = [field for field in config.contact_fields.model_dump().values() if field]
    return list(dict.fromkeys([*CONTACT_SELECT, *configured]))


def phone_variants(e164: str) -> list[str]:
    """findbycomm strips non-digits but does not unify 8… with +7… [research §2.2]: ask
    for both forms of a Russian number."""
    values = [e164]
    digits = "".join(char for char in e164 if char.isdigit())
    if e164.startswith("+7") and len(digits) == 11:
        values.append("8" + digits[1:])
    return values


# ---- answers ------------------------------------------------------------------------


def as_list(value: JSON) -> list[JSON]:
    """A PHP array that may come as a JSON list, or as an object when keys are not 0..n."""
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        return list(value.values())
    return []


def as_map(value: JSON) -> dict[str, JSON]:
    """A PHP array meant as a map: an empty one comes as `[]`."""
    return value if isinstance(value, dict) else {}


def text(value: JSON) -> str:
    """A field value as the text the rules read: first item of a multiple field, numbers
    without a trailing ".0"."""
    if isinstance(value, list):
        return text(value[0]) if value else ""
    if value is None or value is False:
        return ""
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


def contact_from_record(record: Mapping[str, JSON], config: CrmConfig) -> Contact:
    ids = config.contact_fields
    names = (text(record.get("NAME")), text(record.get("LAST_NAME")))
    return Contact(
        id=str(record["ID"]),
        name=" ".join(name for name in names if name),
        phones=_multifield(record.get("PHONE")),
        emails=_multifield(record.get("EMAIL")),
        telegram_id=text(record.get(ids.telegram_id)) if ids.telegram_id else "",
        telegram_username=text(record.get(ids.telegram_username)) if ids.telegram_username else "",
        deal_ids=(),
    )


def _multifield(value: JSON) -> tuple[str, ...]:
    entries = (entry for entry in as_list(value) if isinstance(entry, dict))
    return tuple(str(entry["VALUE"]) for entry in entries if entry.get("VALUE"))


def deal_from_record(
    record: Mapping[str, JSON], config: CrmConfig, contact_ids: Sequence[str] | None = None
) -> Deal:
    """`contact_ids`: every linked contact when known (crm.deal.contact.items.get), else
    the record's CONTACT_IDS (`deal_records`), else its primary CONTACT_ID."""
    stage = str(record["STAGE_ID"])
    semantic = text(record.get("STAGE_SEMANTIC_ID"))
    primary = text(record.get("CONTACT_ID"))
    if contact_ids is None and isinstance(record.get("CONTACT_IDS"), list):
        contact_ids = [text(cid) for cid in record["CONTACT_IDS"]]
    configured = set(config.deal_field_ids())
    return Deal(
        id=str(record["ID"]),
        pipeline_id=text(record.get("CATEGORY_ID")) or "0",
        status_id=stage,
        updated_at=unix_seconds(record.get("DATE_MODIFY")),
        price=Decimal(text(record.get("OPPORTUNITY")) or 0),
        is_closed=semantic in CLOSED_SEMANTICS
        or record.get("CLOSED") == "Y"
        or stage in config.closed_status_ids,
        contact_ids=tuple(contact_ids) if contact_ids is not None else _present(primary),
        fields={
            key: text(value)
            for key, value in record.items()
            if key.startswith("UF_") or key in configured
        },
    )


def _present(*values: str) -> tuple[str, ...]:
    return tuple(value for value in values if value)


def unix_seconds(value: JSON) -> int:
    """DATE_MODIFY ("2024-08-30T14:29:00+02:00") as unix seconds; 0 when absent."""
    raw = text(value)
    return int(datetime.fromisoformat(raw).timestamp()) if raw else 0


def linked_contact_ids(items: JSON) -> list[str]:
    """`crm.deal.contact.items.get`: primary first."""
    entries = [item for item in as_list(items) if isinstance(item, dict)]
    entries.sort(key=lambda item: item.get("IS_PRIMARY") != "Y")
    return [str(item["CONTACT_ID"]) for item in entries]


def findbycomm_ids(result: JSON) -> list[str]:
    """`{"CONTACT": [275, 2297]}`, or `[]` when nothing matched."""
    return [str(contact_id) for contact_id in as_list(as_map(result).get("CONTACT"))]


def categories_from(result: JSON) -> list[dict[str, JSON]]:
    """`crm.category.list` (entityTypeId 2): the deal pipelines, the default one (0) too."""
    return [c for c in as_list(as_map(result).get("categories")) if isinstance(c, dict)]


def stages_key(category: Mapping[str, JSON]) -> str:
    return f"stages_{category['id']}"


def stages_command(category: Mapping[str, JSON]) -> tuple[str, dict[str, JSON]]:
    """`crm.status.list` of one pipeline's stages: DEAL_STAGE for 0, else DEAL_STAGE_{id}."""
    category_id = str(category["id"])
    entity = "DEAL_STAGE" if category_id == "0" else f"DEAL_STAGE_{category_id}"
    return "crm.status.list", {"filter": {"ENTITY_ID": entity}, "order": {"SORT": "ASC"}}


def pipeline_from(category: Mapping[str, JSON], stages: JSON) -> Pipeline:
    statuses = {
        str(stage["STATUS_ID"]): str(stage.get("NAME", ""))
        for stage in as_list(stages)
        if isinstance(stage, dict)
    }
    return Pipeline(id=str(category["id"]), name=str(category.get("name", "")), statuses=statuses)


def custom_fields_from(described: JSON, entity: str) -> list[CustomField]:
    """`crm.deal.fields` / `crm.contact.fields`: user fields, and a deal's native UTM
    fields (text fields `deal_fields` may name, e.g. `utm_source = "UTM_SOURCE"`)."""
    found: list[CustomField] = []
    prefixes = ("UF_", "UTM_") if entity == "leads" else ("UF_",)
    for field_id, meta in as_map(described).items():
        if not (field_id.startswith(prefixes) and isinstance(meta, dict)):
            continue
        raw_type = str(meta.get("type", ""))
        if raw_type == "enumeration":
            kind = "multiselect" if meta.get("isMultiple") else "select"
        else:
            kind = FIELD_TYPES.get(raw_type, raw_type)
        label = meta.get("listLabel") or meta.get("formLabel") or meta.get("title") or field_id
        enums = {
            str(item["ID"]): str(item.get("VALUE", ""))
            for item in as_list(meta.get("items"))
            if isinstance(item, dict)
        }
        found.append(CustomField(field_id, str(label), kind, entity, enums))
    return found
