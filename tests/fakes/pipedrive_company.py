"""The fake Pipedrive company: pipelines, stages and custom fields seeded from a
`CrmConfig` (`etc/crm-pipedrive.example.toml` by default), and the checks Pipedrive's
API v2 makes on `custom_fields` values.

Seeded: one pipeline per configured target (Site 1, Yandex 2, Partners 3 in the example)
with its "Автооплата" stage and a working stage with that id + 1 (2, 4, 6); deal fields of
the config with Pipedrive types (subjects `set`, direction `enum` with the configured
option ids, amounts and counts `double`, the date `date`, texts `varchar`); person fields
for the Telegram id and username (`varchar`); the order fields (`order_fields`: texts
`varchar`, the comment `text`, dates `date`) and the organization's INN field (`varchar`,
so searchable); the rental pipeline and stages the config's `order_stages` name. Field
keys are the config's 40-character hashes. Values are checked the v2 way: numbers must
be JSON numbers, options are option ids of that field, a `set` takes a non-empty list,
`null` clears; anything else, or a key the company does not have, is a 400 for the whole
request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from bridge.settings import CrmConfig
from tests.fakes.service import ApiError, JSONDict

# deal_fields key → (Pipedrive field type, name)
DEAL_FIELDS: dict[str, tuple[str, str]] = {
    "subjects": ("set", "Предметы"),
    "direction": ("enum", "Направление"),
    "last_payment_amount": ("double", "Сумма последней оплаты"),
    "last_payment_at": ("date", "Дата последней оплаты"),
    "payment_id": ("varchar", "ID платежа"),
    "invoice_id": ("varchar", "ID счёта"),
    "total_paid": ("double", "Всего оплачено"),
    "purchase_count": ("double", "Количество покупок"),
    "utm_source": ("varchar", "utm_source"),
    "utm_medium": ("varchar", "utm_medium"),
    "utm_campaign": ("varchar", "utm_campaign"),
    "utm_term": ("varchar", "utm_term"),
    "utm_content": ("varchar", "utm_content"),
}
# order_fields key → (Pipedrive field type, name)
ORDER_FIELDS: dict[str, tuple[str, str]] = {
    "order_id": ("varchar", "ID заказа"),
    "order_status": ("varchar", "Статус заказа"),
    "installation_date": ("date", "Дата монтажа"),
    "dismantle_date": ("date", "Дата демонтажа"),
    "delivery_method": ("varchar", "Способ доставки"),
    "delivery_address": ("varchar", "Адрес доставки"),
    "comment": ("text", "Комментарий к заказу"),
}
ORDER_STAGE_NAMES = {
    "new": "Новый заказ",
    "reserved": "Забронирован",
    "in_rent": "В аренде",
    "in_progress": "В работе",
    "archived": "Архив",
    "cancelled": "Отменён",
}
PERSON_FIELDS = {
    "telegram_id": ("varchar", "Telegram ID"),
    "telegram_username": ("varchar", "Telegram"),
}
TEXT_TYPES = {"varchar", "varchar_auto", "text", "phone", "address"}
SEARCHABLE = {"address", "varchar", "text", "varchar_auto", "double", "monetary", "phone"}
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass
class FieldDef:
    key: str
    name: str
    type: str
    options: dict[int, str] = field(default_factory=dict)


@dataclass
class StageDef:
    id: int
    name: str
    pipeline_id: int
    order_nr: int


@dataclass
class PipelineDef:
    id: int
    name: str
    order_nr: int


def validation_error(message: str) -> ApiError:
    return ApiError(
        400,
        {
            "success": False,
            "error": f"Validation failed: {message}",
            "code": "ERR_SCHEMA_VALIDATION_FAILED",
            "error_info": "Please check developers.pipedrive.com for more information.",
        },
    )


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class Company:
    def __init__(
        self,
        pipelines: dict[int, PipelineDef],
        stages: dict[int, StageDef],
        fields: dict[str, dict[str, FieldDef]],
    ) -> None:
        self.pipelines = pipelines
        self.stages = stages
        self.fields = fields  # "deal" | "person" | "organization" → key → definition

    @classmethod
    def from_config(cls, config: CrmConfig) -> Company:
        pipelines: dict[int, PipelineDef] = {}
        stages: dict[int, StageDef] = {}
        targets = [*config.pipeline_rules, config.default_pipeline]
        for target in sorted(targets, key=lambda t: int(t.pipeline_id)):
            pipeline_id, stage_id = int(target.pipeline_id), int(target.status_id)
            pipelines[pipeline_id] = PipelineDef(pipeline_id, target.name, len(pipelines) + 1)
            stages[stage_id] = StageDef(stage_id, "Автооплата", pipeline_id, 1)
            stages[stage_id + 1] = StageDef(stage_id + 1, "В работе", pipeline_id, 2)
        for status, target in config.order_stages.items():
            pipeline_id, stage_id = int(target.pipeline_id), int(target.status_id)
            if pipeline_id not in pipelines:
                pipelines[pipeline_id] = PipelineDef(pipeline_id, "Аренда", len(pipelines) + 1)
            order_nr = sum(1 for stage in stages.values() if stage.pipeline_id == pipeline_id)
            name = ORDER_STAGE_NAMES[status]
            stages.setdefault(stage_id, StageDef(stage_id, name, pipeline_id, order_nr + 1))
        deal: dict[str, FieldDef] = {}
        for name, key in config.deal_fields.model_dump().items():
            if key:
                kind, label = DEAL_FIELDS[name]
                deal[key] = FieldDef(key, label, kind)
        for name, key in config.order_fields.model_dump(exclude={"company_inn"}).items():
            if key:
                kind, label = ORDER_FIELDS[name]
                deal[key] = FieldDef(key, label, kind)
        organization: dict[str, FieldDef] = {}
        if config.order_fields.company_inn:
            key = config.order_fields.company_inn
            organization[key] = FieldDef(key, "ИНН", "varchar")
        options = (("subjects", config.subjects), ("directions", config.directions))
        for name, mapping in options:
            key = getattr(config.deal_fields, "subjects" if name == "subjects" else "direction")
            if key:
                deal[key].options = {int(v): label for label, v in mapping.items()}
        person = {
            key: FieldDef(key, PERSON_FIELDS[name][1], PERSON_FIELDS[name][0])
            for name, key in config.contact_fields.model_dump().items()
            if key
        }
        fields = {"deal": deal, "person": person, "organization": organization}
        return cls(pipelines, stages, fields)

    def add_field(self, entity: str, key: str, name: str, kind: str) -> None:
        """Another custom field, as a manager would create it."""
        self.fields[entity][key] = FieldDef(key, name, kind)

    def first_stage(self, pipeline_id: int) -> StageDef:
        return min(
            (s for s in self.stages.values() if s.pipeline_id == pipeline_id),
            key=lambda s: s.order_nr,
        )

    def parse_custom_fields(self, entity: str, raw: Any) -> dict[str, Any]:
        """Validated `custom_fields` of a write (key → value, None clears); raises 400."""
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise validation_error("custom_fields must be an object")
        known = self.fields[entity]
        parsed: dict[str, Any] = {}
        for key, value in raw.items():
            definition = known.get(key)
            if definition is None:
                raise validation_error(f"custom field '{key}' does not exist")
            parsed[key] = None if value is None else self._check(definition, value)
        return parsed

    def _check(self, definition: FieldDef, value: Any) -> Any:
        kind, where = definition.type, f"custom_fields.{definition.key}"
        if kind in TEXT_TYPES:
            if not isinstance(value, str):
                raise validation_error(f"{where} must be a string")
            if kind != "text" and len(value) > 255:
                raise validation_error(f"{where} is longer than 255 characters")
            return value
        if kind == "double":
            if not is_number(value):
                raise validation_error(f"{where} must be a number")
            return value
        if kind == "date":
            if not isinstance(value, str) or not _DATE.fullmatch(value):
                raise validation_error(f"{where} must be a date YYYY-MM-DD")
            date.fromisoformat(value)
            return value
        if kind == "enum":
            if not isinstance(value, int) or isinstance(value, bool):
                raise validation_error(f"{where} must be an option id")
            if value not in definition.options:
                raise validation_error(f"{where}: option with id {value} does not exist")
            return value
        if kind == "set":
            if not isinstance(value, list) or not value:
                raise validation_error(f"{where} must be a non-empty array of option ids")
            for option in value:
                if not isinstance(option, int) or option not in definition.options:
                    raise validation_error(f"{where}: option with id {option!r} does not exist")
            return list(dict.fromkeys(value))
        raise validation_error(f"{where}: type {kind} is not supported by this fake")

    def searchable_values(self, entity: str, values: dict[str, Any]) -> list[str]:
        known = self.fields[entity]
        return [
            str(value)
            for key, value in values.items()
            if value is not None and key in known and known[key].type in SEARCHABLE
        ]

    def fields_json(self, entity: str) -> list[JSONDict]:
        """What GET /api/v2/dealFields and /personFields list: a few system fields, then
        the custom ones."""
        system = {
            "deal": [("title", "Title", "varchar"), ("value", "Value", "monetary")],
            "person": [("name", "Name", "varchar"), ("phones", "Phone", "phone")],
            "organization": [("name", "Name", "varchar"), ("address", "Address", "address")],
        }[entity]
        items = [_field_json(code, name, kind, None, custom=False) for code, name, kind in system]
        for definition in self.fields[entity].values():
            options = [{"id": i, "label": label} for i, label in definition.options.items()]
            items.append(
                _field_json(
                    definition.key,
                    definition.name,
                    definition.type,
                    options if definition.type in ("enum", "set") else None,
                    custom=True,
                )
            )
        return items


def _field_json(
    code: str, name: str, kind: str, options: list[JSONDict] | None, *, custom: bool
) -> JSONDict:
    return {
        "field_name": name,
        "field_code": code,
        "field_type": kind,
        "options": options,
        "subfields": None,
        "is_custom_field": custom,
        "is_optional_response_field": False,
    }
