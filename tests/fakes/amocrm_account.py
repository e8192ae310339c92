"""The fake amoCRM account: pipelines, statuses and custom fields seeded from a `CrmConfig`
(the reference account of `etc/bridge.example.toml` by default), and the validation of
`custom_fields_values` against them the way amoCRM does it.

Seeded: one pipeline per configured target (Site 4423755, Yandex 10089806, Partners
8598230 in the example) with its auto-payment status, then "В работе" with that id + 1
(63242023, 80579131, 80517739), then won 142 and lost 143; the pipelines and statuses of
`order_stages` (142 / 143 are in every pipeline); the deal fields of the config with their
types (subjects multiselect, direction select, numerics, a date_time, texts, UTM tracking
fields; the order fields: texts, "date" days, textareas); contact and company fields PHONE
and EMAIL (multitext, by `field_code`), the Telegram text fields and the company INN text
field; the products catalog's SKU (text) and PRICE (price) fields, by code as amoCRM
names them [amocrm.ru/developers/content/crm_platform/catalogs-api].
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bridge.settings import CrmConfig
from tests.fakes.service import ApiError, JSONDict, problem

ACCOUNT_ID = 31000001
WON, LOST = 142, 143
PHONE_FIELD, EMAIL_FIELD = 600001, 600002
PHONE_ENUMS = {
    600011: "WORK",
    600012: "WORKDD",
    600013: "MOB",
    600014: "FAX",
    600015: "HOME",
    600016: "OTHER",
}
EMAIL_ENUMS = {600021: "WORK", 600022: "PRIV", 600023: "OTHER"}
# deal_fields key of the config → (amoCRM field type, name, field code)
LEAD_FIELDS: dict[str, tuple[str, str, str | None]] = {
    "subjects": ("multiselect", "Предметы", None),
    "direction": ("select", "Направление", None),
    "last_payment_amount": ("numeric", "Сумма последней оплаты", None),
    "last_payment_at": ("date_time", "Дата последней оплаты", None),
    "payment_id": ("text", "ID платежа", None),
    "invoice_id": ("text", "ID счёта", None),
    "total_paid": ("numeric", "Всего оплачено", None),
    "purchase_count": ("numeric", "Количество покупок", None),
    "utm_source": ("tracking_data", "utm_source", "UTM_SOURCE"),
    "utm_medium": ("tracking_data", "utm_medium", "UTM_MEDIUM"),
    "utm_campaign": ("tracking_data", "utm_campaign", "UTM_CAMPAIGN"),
    "utm_term": ("tracking_data", "utm_term", "UTM_TERM"),
    "utm_content": ("tracking_data", "utm_content", "UTM_CONTENT"),
}
# order_fields key of the config → (amoCRM field type, name)
ORDER_FIELDS: dict[str, tuple[str, str]] = {
    "order_id": ("text", "ID заказа"),
    "order_status": ("text", "Статус заказа"),
    "installation_date": ("date", "Дата монтажа"),
    "dismantle_date": ("date", "Дата демонтажа"),
    "delivery_method": ("text", "Способ доставки"),
    "delivery_address": ("textarea", "Адрес доставки"),
    "comment": ("textarea", "Комментарий к заказу"),
}
COMPANY_PHONE_FIELD, COMPANY_EMAIL_FIELD = 600003, 600004
SKU_FIELD, PRICE_FIELD = 600101, 600102
TEXT_TYPES = {"text", "textarea", "url", "tracking_data"}


@dataclass
class FieldDef:
    id: int
    name: str
    type: str
    entity: str
    code: str | None = None
    enums: dict[int, str] = field(default_factory=dict)


@dataclass
class Status:
    id: int
    name: str
    sort: int


@dataclass
class PipelineDef:
    id: int
    name: str
    sort: int
    is_main: bool
    statuses: list[Status]

    def has_status(self, status_id: int) -> bool:
        return status_id in (WON, LOST) or any(s.id == status_id for s in self.statuses)


class Problems:
    """Validation errors of one request, grouped per entity like amoCRM's answer."""

    def __init__(self) -> None:
        self.errors: dict[str, list[JSONDict]] = {}

    def add(self, request_id: str, path: str, code: str, detail: str) -> None:
        error = {"code": code, "path": path, "detail": detail}
        self.errors.setdefault(request_id, []).append(error)

    def check(self) -> None:
        if self.errors:
            grouped = [{"request_id": rid, "errors": errs} for rid, errs in self.errors.items()]
            body = problem(400, "Bad Request", "Request validation failed")
            raise ApiError(400, {**body, "validation-errors": grouped})


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class Account:
    """What an amoCRM account is configured with, and how it checks values against it."""

    def __init__(
        self, pipelines: dict[int, PipelineDef], fields: dict[str, dict[int, FieldDef]]
    ) -> None:
        self.pipelines = pipelines
        self.fields = fields  # entity ("leads" | "contacts") → field id → definition

    @classmethod
    def from_config(cls, config: CrmConfig) -> Account:
        return cls(_seed_pipelines(config), _seed_fields(config))

    def parse_values(
        self, entity: str, raw: Any, rid: str, prefix: str, problems: Problems
    ) -> dict[int, list[JSONDict] | None]:
        """`custom_fields_values` as stored (field id → values; None clears), or
        problems recorded for each entry amoCRM would refuse."""
        where = f"{prefix}custom_fields_values"
        if raw is None:
            return {}
        if not isinstance(raw, list):
            problems.add(rid, where, "InvalidType", "This value should be of type array.")
            return {}
        parsed: dict[int, list[JSONDict] | None] = {}
        for i, entry in enumerate(raw):
            path = f"{where}.{i}"
            definition = self._field_for(entity, entry, path, rid, problems)
            if definition is None:
                continue
            values = entry.get("values")
            if values is None:
                parsed[definition.id] = None  # clears the field
                continue
            if (
                not isinstance(values, list)
                or not values
                or (definition.type == "select" and len(values) > 1)
            ):
                problems.add(rid, f"{path}.values", "InvalidType", "wrong number of values")
                continue
            converted = [
                self._parse_value(definition, value, f"{path}.values.{j}", rid, problems)
                for j, value in enumerate(values)
            ]
            if all(value is not None for value in converted):
                parsed[definition.id] = [value for value in converted if value is not None]
        return parsed

    def _field_for(
        self, entity: str, entry: Any, path: str, rid: str, problems: Problems
    ) -> FieldDef | None:
        if not isinstance(entry, dict):
            problems.add(rid, path, "InvalidType", "must be an object")
            return None
        if "field_id" in entry:
            field_id = entry["field_id"]
            if not is_int(field_id) or field_id not in self.fields[entity]:
                problems.add(
                    rid, f"{path}.field_id", "NotSupportedChoice", f"field {field_id!r} not found"
                )
                return None
            return self.fields[entity][field_id]
        for definition in self.fields[entity].values():
            if definition.code is not None and definition.code == entry.get("field_code"):
                return definition
        problems.add(rid, f"{path}.field_code", "NotSupportedChoice", "field not found")
        return None

    def _parse_value(
        self, definition: FieldDef, value: Any, path: str, rid: str, problems: Problems
    ) -> JSONDict | None:
        def bad(detail: str) -> JSONDict | None:
            problems.add(rid, path, "InvalidType", f"field {definition.id}: {detail}")
            return None

        if not isinstance(value, dict):
            return bad("value must be an object")
        raw, kind = value.get("value"), definition.type
        if kind in TEXT_TYPES:
            if isinstance(raw, str) or is_int(raw) or isinstance(raw, float):
                return {"value": str(raw)}
            return bad("This value should be of type string.")
        if kind in ("numeric", "price"):
            text = str(raw).strip() if raw is not None and not isinstance(raw, bool) else ""
            if not re.fullmatch(r"-?\d+(\.\d+)?", text):
                return bad(f"{raw!r} is not a number")
            number = float(text)
            return {"value": str(int(number)) if number.is_integer() else text}
        if kind in ("date", "date_time", "birthday"):
            return self._parse_date(raw, bad)
        if kind in ("select", "multiselect"):
            enum_id = value.get("enum_id")
            if is_int(enum_id) and enum_id in definition.enums:
                return {"value": definition.enums[enum_id], "enum_id": enum_id, "enum_code": None}
            return bad(f"enum_id {enum_id!r} is not an enum of this field")
        if kind == "multitext":
            code = value.get("enum_code", "WORK")
            enum_id = next((i for i, c in definition.enums.items() if c == code), None)
            if not isinstance(raw, str) or not raw or enum_id is None:
                return bad("needs a string value and a known enum_code")
            return {"value": raw, "enum_id": enum_id, "enum_code": code}
        return bad(f"type {kind} is not supported by the fake")

    @staticmethod
    def _parse_date(raw: Any, bad: Callable[[str], JSONDict | None]) -> JSONDict | None:
        if is_int(raw):
            return {"value": raw}
        if isinstance(raw, str):
            try:
                parsed = datetime.fromisoformat(raw)
            except ValueError:
                return bad(f"{raw!r} is not a date")
            if parsed.tzinfo is not None:
                return {"value": int(parsed.timestamp())}
        return bad("a date is unix seconds or RFC 3339 with an offset")

    def seed_values(self, entity: str, raw: Mapping[int | str, Any]) -> dict[int, list[JSONDict]]:
        """Plain test values (text, number, enum id or ids, phones) as stored values."""
        entries = []
        for field_id, value in raw.items():
            definition = self.fields[entity].get(int(field_id))
            if definition is None:
                raise ValueError(f"{entity} field {field_id} does not exist in the fake")
            many = value if isinstance(value, list | tuple) else [value]
            if definition.type in ("select", "multiselect"):
                values = [{"enum_id": item} for item in many]
            elif definition.type == "multitext":
                values = [{"value": item, "enum_code": "WORK"} for item in many]
            else:
                values = [{"value": value}]
            if values:
                entries.append({"field_id": int(field_id), "values": values})
        problems = Problems()
        parsed = self.parse_values(entity, entries, "0", "", problems)
        if problems.errors:
            raise ValueError(f"invalid seed values: {problems.errors}")
        return {key: values for key, values in parsed.items() if values}

    def values_json(self, entity: str, values: Mapping[int, list[JSONDict]]) -> Any:
        rendered = []
        for field_id, items in values.items():
            definition = self.fields[entity][field_id]
            rendered.append(
                {
                    "field_id": field_id,
                    "field_name": definition.name,
                    "field_code": definition.code,
                    "field_type": definition.type,
                    "values": [dict(item) for item in items],
                }
            )
        return rendered or None

    def pipeline_json(self, pipeline: PipelineDef) -> JSONDict:
        closed = [
            Status(WON, "Успешно реализовано", 10000),
            Status(LOST, "Закрыто и не реализовано", 11000),
        ]
        statuses = [*pipeline.statuses, *closed]
        return {
            "id": pipeline.id,
            "name": pipeline.name,
            "sort": pipeline.sort,
            "is_main": pipeline.is_main,
            "is_unsorted_on": False,
            "is_archive": False,
            "account_id": ACCOUNT_ID,
            "_embedded": {
                "statuses": [
                    {
                        "id": s.id,
                        "name": s.name,
                        "sort": s.sort,
                        "is_editable": s.id not in (WON, LOST),
                        "pipeline_id": pipeline.id,
                        "color": "#99ccff",
                        "type": 0,
                        "account_id": ACCOUNT_ID,
                    }
                    for s in statuses
                ]
            },
        }

    def field_json(self, definition: FieldDef) -> JSONDict:
        enums = [
            {"id": i, "value": v, "sort": n} for n, (i, v) in enumerate(definition.enums.items())
        ]
        return {
            "id": definition.id,
            "name": definition.name,
            "type": definition.type,
            "code": definition.code,
            "sort": 500,
            "is_api_only": False,
            "entity_type": definition.entity,
            "enums": enums or None,
        }

    def value_of(self, entity: str, values: Mapping[int, list[JSONDict]], field_id: int) -> Any:
        items = values.get(field_id)
        if not items:
            return None
        kind = self.fields[entity][field_id].type
        if kind == "select":
            return items[0]["enum_id"]
        if kind == "multiselect":
            return [item["enum_id"] for item in items]
        return items[0]["value"]

    def main_pipeline(self) -> PipelineDef:
        return next(p for p in self.pipelines.values() if p.is_main)


# ---- the seeded account -------------------------------------------------------------


def _seed_pipelines(config: CrmConfig) -> dict[int, PipelineDef]:
    """One pipeline per configured target: its auto-payment status, then "В работе"
    (auto-payment id + 1: 63242023, 80579131, 80517739 for the reference account)."""
    targets = [
        (
            config.default_pipeline.pipeline_id,
            config.default_pipeline.status_id,
            config.default_pipeline.name or "Site",
        )
    ]
    targets += [(r.pipeline_id, r.status_id, r.name) for r in config.pipeline_rules]
    pipelines: dict[int, PipelineDef] = {}
    for stage in config.order_stages.values():
        pipeline = pipelines.setdefault(
            int(stage.pipeline_id),
            PipelineDef(
                int(stage.pipeline_id),
                f"Аренда {stage.pipeline_id}",
                len(pipelines) + 1,
                is_main=False,
                statuses=[],
            ),
        )
        status = int(stage.status_id)
        if not pipeline.has_status(status):
            pipeline.statuses.append(Status(status, f"Этап {status}", 10 * len(pipeline.statuses)))
    for pipeline_id, status_id, name in targets:
        pipeline = pipelines.setdefault(
            int(pipeline_id),
            PipelineDef(
                int(pipeline_id),
                name or f"Pipeline {pipeline_id}",
                len(pipelines) + 1,
                is_main=not any(p.is_main for p in pipelines.values()),
                statuses=[],
            ),
        )
        if not pipeline.has_status(int(status_id)):
            pipeline.statuses.append(Status(int(status_id), "Автооплаты ООО", 10))
            pipeline.statuses.append(Status(int(status_id) + 1, "В работе", 20))
    return pipelines


def _seed_fields(config: CrmConfig) -> dict[str, dict[int, FieldDef]]:
    contacts = [
        FieldDef(PHONE_FIELD, "Телефон", "multitext", "contacts", "PHONE", dict(PHONE_ENUMS)),
        FieldDef(EMAIL_FIELD, "Email", "multitext", "contacts", "EMAIL", dict(EMAIL_ENUMS)),
    ]
    ids = config.contact_fields
    for field_id, name in (
        (ids.telegram_id, "Telegram ID"),
        (ids.telegram_username, "Telegram username"),
    ):
        if field_id:
            contacts.append(FieldDef(int(field_id), name, "text", "contacts"))
    enums = {
        "subjects": {enum_id: name for name, enum_id in config.subjects.items()},
        "direction": {enum_id: name for name, enum_id in config.directions.items()},
    }
    leads = []
    for key, field_id in config.deal_fields.model_dump().items():
        if field_id and key in LEAD_FIELDS:
            kind, name, code = LEAD_FIELDS[key]
            leads.append(FieldDef(int(field_id), name, kind, "leads", code, enums.get(key, {})))
    for key, field_id in config.order_fields.model_dump(exclude={"company_inn"}).items():
        if field_id and int(field_id) not in {d.id for d in leads}:
            kind, name = ORDER_FIELDS[key]
            leads.append(FieldDef(int(field_id), name, kind, "leads"))
    companies = [
        FieldDef(
            COMPANY_PHONE_FIELD,
            "Телефон",
            "multitext",
            "companies",
            "PHONE",
            {enum_id + 10: code for enum_id, code in PHONE_ENUMS.items()},
        ),
        FieldDef(
            COMPANY_EMAIL_FIELD,
            "Email",
            "multitext",
            "companies",
            "EMAIL",
            {enum_id + 10: code for enum_id, code in EMAIL_ENUMS.items()},
        ),
    ]
    if config.order_fields.company_inn:
        companies.append(FieldDef(int(config.order_fields.company_inn), "ИНН", "text", "companies"))
    catalog = [
        FieldDef(SKU_FIELD, "Артикул", "text", "catalog", "SKU"),
        FieldDef(PRICE_FIELD, "Цена", "price", "catalog", "PRICE"),
    ]
    return {
        "contacts": {d.id: d for d in contacts},
        "leads": {d.id: d for d in leads},
        "companies": {d.id: d for d in companies},
        "catalog": {d.id: d for d in catalog},
    }
