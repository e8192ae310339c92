"""What the fake HubSpot portal is configured with, and how it checks property values.

The pipelines are those of `etc/crm-hubspot.example.toml`: the default pipeline "Site"
(custom stage 1023405001 "Автооплаты ООО", then "appointmentscheduled", "closedwon",
"closedlost") and the custom pipelines Yandex 1023405100 and Partners 1023405200 (stages
<pipeline>+1 auto-payment, +2 working, +3 won, +4 lost), and the rental shop's pipeline
"Аренда" 1023405300 (1023405301…306: new, reserved, in rent, in progress, archived = won,
cancelled = lost) that the example config's `order_stages` name. Custom properties follow the
config: deal fields with the types their keys need (subjects a multiple checkbox, direction
a dropdown, numbers, a datetime, texts) with the options of `subjects`/`directions`, and
the Telegram contact properties. Values are checked like HubSpot does: every value a
string; an unknown property, an option a property does not have, a malformed number or
date → HTTP 400 VALIDATION_ERROR "Property values were not valid: [...]".
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bridge.settings import CrmConfig
from tests.fakes.service import ApiError, JSONDict

PORTAL_ID = 24681357


def hs_error(status: int, category: str, message: str, **extra: Any) -> ApiError:
    """HubSpot's error body (`status`, `message`, `correlationId`, `category`)."""
    body = {
        "status": "error",
        "message": message,
        "correlationId": str(uuid.uuid4()),
        "category": category,
        **extra,
    }
    return ApiError(status, body)


def invalid(message: str, **extra: Any) -> ApiError:
    """The 400 VALIDATION_ERROR HubSpot answers a malformed or refused write with."""
    return hs_error(400, "VALIDATION_ERROR", message, **extra)


@dataclass
class Stage:
    id: str
    label: str
    order: int
    closed: bool = False
    probability: str = "0.2"


@dataclass
class PipelineDef:
    id: str
    label: str
    order: int
    stages: list[Stage]

    def stage(self, stage_id: str) -> Stage | None:
        return next((s for s in self.stages if s.id == stage_id), None)


def _custom_pipeline(pipeline_id: int, label: str, order: int) -> PipelineDef:
    stages = [
        Stage(str(pipeline_id + 1), "Автооплаты ООО", 0),
        Stage(str(pipeline_id + 2), "В работе", 1),
        Stage(str(pipeline_id + 3), "Успешно реализовано", 2, True, "1.0"),
        Stage(str(pipeline_id + 4), "Закрыто и не реализовано", 3, True, "0.0"),
    ]
    return PipelineDef(str(pipeline_id), label, order, stages)


PIPELINES = [
    PipelineDef(
        "default",
        "Site",
        0,
        [
            Stage("1023405001", "Автооплаты ООО", 0),
            Stage("appointmentscheduled", "В работе", 1),
            Stage("closedwon", "Closed won", 2, True, "1.0"),
            Stage("closedlost", "Closed lost", 3, True, "0.0"),
        ],
    ),
    _custom_pipeline(1023405100, "Yandex", 1),
    _custom_pipeline(1023405200, "Partners", 2),
    PipelineDef(
        "1023405300",
        "Аренда",
        3,
        [
            Stage("1023405301", "Новый заказ", 0),
            Stage("1023405302", "Забронирован", 1),
            Stage("1023405303", "В аренде", 2),
            Stage("1023405304", "В работе", 3),
            Stage("1023405305", "Архив", 4, True, "1.0"),
            Stage("1023405306", "Отменён", 5, True, "0.0"),
        ],
    ),
]


@dataclass
class PropDef:
    name: str
    label: str
    type: str  # string | number | enumeration | datetime | date | bool | phone_number
    field_type: str  # text | textarea | html | number | select | checkbox | date | ...
    options: dict[str, str] = field(default_factory=dict)  # internal value → label
    hubspot_defined: bool = True
    read_only: bool = False

    def json(self) -> JSONDict:
        return {
            "name": self.name,
            "label": self.label,
            "type": self.type,
            "fieldType": self.field_type,
            "description": "",
            "groupName": "dealinformation" if self.hubspot_defined else "bridge",
            "options": [
                {"label": label, "value": value, "displayOrder": n, "hidden": False}
                for n, (value, label) in enumerate(self.options.items())
            ],
            "displayOrder": -1,
            "calculated": self.name == "hs_is_closed",
            "externalOptions": False,
            "hasUniqueValue": False,
            "hidden": False,
            "hubspotDefined": self.hubspot_defined,
            "modificationMetadata": {
                "archivable": not self.hubspot_defined,
                "readOnlyDefinition": self.hubspot_defined,
                "readOnlyValue": self.read_only,
            },
            "formField": not self.read_only,
            "archived": False,
        }


def _std(name: str, kind: str, widget: str, *, read_only: bool = False) -> PropDef:
    return PropDef(name, name.replace("_", " ").title(), kind, widget, read_only=read_only)


_COMMON = [
    _std("hs_object_id", "number", "number", read_only=True),
    _std("createdate", "datetime", "date", read_only=True),
]
# deal_fields key → (type, fieldType, label)
DEAL_FIELD_TYPES: dict[str, tuple[str, str, str]] = {
    "subjects": ("enumeration", "checkbox", "Предметы"),
    "direction": ("enumeration", "select", "Направление"),
    "last_payment_amount": ("number", "number", "Сумма последней оплаты"),
    "last_payment_at": ("datetime", "date", "Дата последней оплаты"),
    "payment_id": ("string", "text", "ID платежа"),
    "invoice_id": ("string", "text", "ID счёта"),
    "total_paid": ("number", "number", "Всего оплачено"),
    "purchase_count": ("number", "number", "Количество покупок"),
}
# order_fields key → (type, fieldType, label): dates are `date` properties (a day, no time).
ORDER_FIELD_TYPES: dict[str, tuple[str, str, str]] = {
    "order_id": ("string", "text", "ID заказа"),
    "order_status": ("string", "text", "Статус заказа"),
    "installation_date": ("date", "date", "Дата монтажа"),
    "dismantle_date": ("date", "date", "Дата демонтажа"),
    "delivery_method": ("string", "text", "Способ доставки"),
    "delivery_address": ("string", "text", "Адрес доставки"),
    "comment": ("string", "textarea", "Комментарий к заказу"),
}


def seed_properties(config: CrmConfig) -> dict[str, dict[str, PropDef]]:
    stages = {s.id: s.label for p in PIPELINES for s in p.stages}
    deals = [
        *_COMMON,
        _std("dealname", "string", "text"),
        _std("amount", "number", "number"),
        PropDef(
            "pipeline", "Pipeline", "enumeration", "select", {p.id: p.label for p in PIPELINES}
        ),
        PropDef("dealstage", "Deal stage", "enumeration", "radio", stages),
        _std("closedate", "datetime", "date"),
        _std("hs_is_closed", "bool", "booleancheckbox", read_only=True),
        _std("hs_lastmodifieddate", "datetime", "date", read_only=True),
    ]
    options = {"subjects": config.subjects, "direction": config.directions}
    for key, name in config.deal_fields.model_dump().items():
        if name:
            kind, widget, label = DEAL_FIELD_TYPES.get(key, ("string", "text", key))
            values = {str(value): text for text, value in options.get(key, {}).items()}
            deals.append(PropDef(name, label, kind, widget, values, hubspot_defined=False))
    for key, name in config.order_fields.model_dump(exclude={"company_inn"}).items():
        if name:
            kind, widget, label = ORDER_FIELD_TYPES[key]
            deals.append(PropDef(name, label, kind, widget, hubspot_defined=False))
    contacts = [
        *_COMMON,
        _std("firstname", "string", "text"),
        _std("lastname", "string", "text"),
        _std("email", "string", "text"),
        _std("phone", "string", "phonenumber"),
        _std("mobilephone", "string", "phonenumber"),
        _std("lastmodifieddate", "datetime", "date", read_only=True),
    ]
    for name in config.contact_fields.model_dump().values():
        if name:
            contacts.append(PropDef(name, name, "string", "text", hubspot_defined=False))
    notes = [
        *_COMMON,
        _std("hs_timestamp", "datetime", "date"),
        _std("hs_note_body", "string", "html"),
        _std("hs_lastmodifieddate", "datetime", "date", read_only=True),
    ]
    # Companies: HubSpot's own name, domain and phone; the INN a custom text property
    # (HubSpot has none) named by `order_fields.company_inn`.
    companies = [
        *_COMMON,
        _std("name", "string", "text"),
        _std("domain", "string", "text"),
        _std("phone", "string", "phonenumber"),
        _std("hs_lastmodifieddate", "datetime", "date", read_only=True),
    ]
    if config.order_fields.company_inn:
        name = config.order_fields.company_inn
        companies.append(PropDef(name, "ИНН", "string", "text", hubspot_defined=False))
    # Line items: name, quantity, unit price, SKU; `amount` is calculated (quantity × price)
    # [developers.hubspot.com/docs/api-reference/latest/crm/objects/line-items/guide].
    line_items = [
        *_COMMON,
        _std("name", "string", "text"),
        _std("quantity", "number", "number"),
        _std("price", "number", "number"),
        _std("hs_sku", "string", "text"),
        _std("amount", "number", "number", read_only=True),
        _std("hs_lastmodifieddate", "datetime", "date", read_only=True),
    ]
    kinds = (
        ("contacts", contacts),
        ("deals", deals),
        ("notes", notes),
        ("companies", companies),
        ("line_items", line_items),
    )
    return {kind: {p.name: p for p in props} for kind, props in kinds}


# ---- values -------------------------------------------------------------------------

_NUMBER = re.compile(r"-?\d+(\.\d+)?")


def iso_ms(ms: int) -> str:
    stamp = datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def parse_instant(raw: str) -> int | None:
    """Milliseconds of an ISO 8601 date-time with a zone, or of a millisecond epoch."""
    if raw.isdigit():
        return int(raw)
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return None
    return None if parsed.tzinfo is None else int(parsed.timestamp() * 1000)


class Problems:
    """The invalid values of one write, answered together like HubSpot does."""

    def __init__(self) -> None:
        self.items: list[JSONDict] = []

    def add(self, name: str, error: str, message: str) -> None:
        self.items.append(
            {
                "isValid": False,
                "message": message,
                "error": error,
                "name": name,
                "localizedErrorMessage": message,
                "portalId": PORTAL_ID,
            }
        )

    def check(self) -> None:
        if self.items:
            text = json.dumps(self.items, ensure_ascii=False)
            errors = [
                {
                    "message": i["message"],
                    "code": i["error"],
                    "context": {"propertyName": [i["name"]]},
                }
                for i in self.items
            ]
            raise invalid(f"Property values were not valid: {text}", errors=errors)


def parse_properties(
    defs: dict[str, PropDef], raw: Any, problems: Problems
) -> dict[str, str | None]:
    """`properties` of a write as stored (None clears a value)."""
    if not isinstance(raw, dict):
        raise invalid("Invalid input JSON: properties must be an object")
    parsed: dict[str, str | None] = {}
    for name, value in raw.items():
        definition = defs.get(name)
        if definition is None:
            problems.add(name, "PROPERTY_DOESNT_EXIST", f'Property "{name}" does not exist')
        elif definition.read_only:
            problems.add(name, "READ_ONLY_VALUE", f'"{name}" is a read only property')
        elif not isinstance(value, str):
            # The OpenAPI schema types every property value as a string.
            problems.add(name, "INVALID_TYPE", f"{value!r} is not a string")
        elif value == "":
            parsed[name] = None
        else:
            checked = _check_value(definition, value, problems)
            if checked is not None:
                parsed[name] = checked
    return parsed


def _check_value(definition: PropDef, value: str, problems: Problems) -> str | None:
    name, kind = definition.name, definition.type
    if kind == "number":
        if _NUMBER.fullmatch(value):
            return value
        problems.add(name, "INVALID_DECIMAL", f"{value} was not a valid number.")
    elif kind == "enumeration":
        chosen = value.split(";") if definition.field_type == "checkbox" else [value]
        chosen = [option for option in chosen if option]
        unknown = [option for option in chosen if option not in definition.options]
        if not unknown:
            return ";".join(chosen)
        allowed = ", ".join(definition.options)
        problems.add(
            name, "INVALID_OPTION", f"{unknown[0]} was not one of the allowed options: [{allowed}]"
        )
    elif kind == "datetime":
        ms = parse_instant(value)
        if ms is not None:
            return iso_ms(ms)
        problems.add(name, "INVALID_DATETIME", f"{value} is not a valid date-time")
    elif kind == "date":
        # "Date properties ... must be set to midnight UTC for the date you want. If you
        # try to set a value that is not midnight UTC, you will receive an error"
        # [developers.hubspot.com/docs/faq/how-should-timestamps-be-formatted-for-hubspots-apis];
        # YYYY-MM-DD is the ISO form [developers.hubspot.com/docs/api/faq].
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            return value
        ms = parse_instant(value)
        if ms is not None and ms % 86_400_000 == 0:
            return iso_ms(ms)[:10]
        problems.add(name, "INVALID_DATE", f"{value} is not at midnight UTC")
    elif name == "email" and "@" not in value:
        problems.add(name, "INVALID_EMAIL", f"Email address {value} is invalid")
    else:
        return value
    return None
