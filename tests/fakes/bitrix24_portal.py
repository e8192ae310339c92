"""The data side of the fake Bitrix24: one portal's pipelines and user fields, its
contacts, deals and timeline comments, and PHP's way with query strings.

- `parse_php` builds nested parameters from `filter[UF_X]=1&select[]=ID` pairs as PHP's
  parse_str does (arrays are dicts keyed "0", "1", …); `substitute` resolves `$result[…]`
  references in a batch command the way Bitrix's CRestUtil::processBatchElement does:
  the path is walked while keys exist (a missing key stops the walk where it is, so an
  unresolvable reference yields the nearest array, not an error); a value that is
  exactly one reference becomes whatever it points to, a reference inside longer text
  is replaced only by a scalar.
- `Portal` holds the pipelines ("Сайт" 0, "Яндекс" 1, "Партнёры" 2; stage semantics P /
  S / F; and a pipeline per other `order_stages` pipeline, its stages as configured, a
  stage ending in WON won, in LOSE or APOLOGY lost) and the user fields named in a
  `[crm.bitrix24]` config section (deal and order fields), with their types ("date"
  stores a day as "YYYY-MM-DD");
  `Portal.user_value` validates a value for a field as the API does (assumed here: an
  unknown UF_ field or enumeration item, or a non-numeric double, is refused with HTTP 400
  `{"error": "", "error_description": …}`, the shape crm.deal.get documents for its own
  errors; Bitrix itself ignores unknown *native* fields, and so does the fake).
- `matches` evaluates a list filter: `=`, `!`, `@`, `!@`, `%`, `>`, `<`, `>=`, `<=`
  prefixes; PHONE / EMAIL match a whole stored value exactly (Bitrix filters
  multifields only on exact values); an array given where a scalar belongs is an IN list,
  and an empty one drops the condition (what an unresolved batch reference produces).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any

from bridge.settings import CrmConfig

PORTAL_TZ = timezone(timedelta(hours=3))
PAGE = 50
REFERENCE = re.compile(r"\$(result|next|total|time|error)(\S*)", re.IGNORECASE)
FILTER_KEY = re.compile(r"^(!@|@|!=|!|>=|<=|>|<|=|%)?(.+)$")


class BitrixError(Exception):
    """A method's refusal: HTTP `status`, body `{"error": code, "error_description": …}`."""

    def __init__(self, description: str, code: str = "", status: int = 400) -> None:
        super().__init__(description)
        self.description = description
        self.code = code
        self.status = status

    def body(self) -> dict[str, str]:
        return {"error": self.code, "error_description": self.description}


# ---- PHP parameters -----------------------------------------------------------------


def parse_php(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for key, value in pairs:
        match = re.fullmatch(r"([^\[]+)((?:\[[^\]]*\])*)", key)
        if match is None:
            continue
        path = [match.group(1), *re.findall(r"\[([^\]]*)\]", match.group(2))]
        node = root
        for index, part in enumerate(path):
            name = part if part != "" else str(_next_index(node))
            if index == len(path) - 1:
                node[name] = value
            else:
                child = node.get(name)
                node[name] = child if isinstance(child, dict) else {}
                node = node[name]
    return root


def _next_index(node: Mapping[str, Any]) -> int:
    numbers = [int(key) for key in node if key.isdigit()]
    return max(numbers) + 1 if numbers else 0


def substitute(value: Any, store: Mapping[str, Any]) -> Any:
    if isinstance(value, dict):
        return {key: substitute(item, store) for key, item in value.items()}
    if not isinstance(value, str):
        return value
    resolved: Any = value
    for match in REFERENCE.finditer(value):
        target: Any = store[match.group(1).lower()]
        for key in re.findall(r"\[([^\]]+)\]", match.group(2)):
            if isinstance(target, dict) and target.get(key) is not None:
                target = target[key]
            elif isinstance(target, list) and key.isdigit() and int(key) < len(target):
                target = target[int(key)]
            else:
                break
        if match.group(0) == value:
            return target
        if isinstance(target, int | float) and not isinstance(target, bool):
            target = str(target)
        if isinstance(target, str) and isinstance(resolved, str):
            resolved = resolved.replace(match.group(0), target)
    return resolved


def items(value: Any) -> list[Any]:
    """A PHP array (dict keyed 0..n from a query, or a JSON list) as a list; a scalar as
    a list of one; nothing as nothing."""
    if isinstance(value, dict):
        return list(value.values())
    if isinstance(value, list):
        return value
    return [] if value is None or value == "" else [value]


def param(params: Mapping[str, Any], name: str, default: Any = None) -> Any:
    """Parameter names are case-insensitive (`id` / `ID`, `fields` / `FIELDS`)."""
    for key, value in params.items():
        if key.lower() == name.lower():
            return value
    return default


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, PORTAL_TZ).isoformat(timespec="seconds")


# ---- the portal ---------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    id: str
    name: str
    semantic: str  # P in progress, S won, F lost


@dataclass(frozen=True)
class Category:
    id: int
    name: str
    stages: tuple[Stage, ...]

    def stage(self, stage_id: str) -> Stage | None:
        return next((stage for stage in self.stages if stage.id == stage_id), None)


def _order_category(category_id: int, stage_ids: Iterable[str]) -> Category:
    def semantic(stage_id: str) -> str:
        code = stage_id.rsplit(":", 1)[-1]
        return "S" if code == "WON" else "F" if code in ("LOSE", "APOLOGY") else "P"

    stages = [Stage(stage_id, stage_id, semantic(stage_id)) for stage_id in stage_ids]
    # Closed stages sort last, as Bitrix keeps them.
    stages.sort(key=lambda stage: stage.semantic != "P")
    return Category(category_id, f"Аренда {category_id}", tuple(stages))


def _category(category_id: int, name: str) -> Category:
    prefix = f"C{category_id}:" if category_id else ""
    stages = (
        Stage("NEW", "Новая", "P"),
        Stage("UC_AUTOPAY", "Автооплаты", "P"),
        Stage("EXECUTING", "В работе", "P"),
        Stage("WON", "Сделка успешна", "S"),
        Stage("LOSE", "Сделка провалена", "F"),
    )
    return Category(
        category_id, name, tuple(Stage(prefix + s.id, s.name, s.semantic) for s in stages)
    )


CATEGORIES = (_category(0, "Сайт"), _category(1, "Яндекс"), _category(2, "Партнёры"))
DEAL_NATIVE = ("UTM_SOURCE", "UTM_MEDIUM", "UTM_CAMPAIGN", "UTM_TERM", "UTM_CONTENT")
# deal_fields key → (UF type, multiple)
DEAL_FIELD_TYPES = {
    "subjects": ("enumeration", True),
    "direction": ("enumeration", False),
    "last_payment_amount": ("double", False),
    "last_payment_at": ("datetime", False),
    "payment_id": ("string", False),
    "invoice_id": ("string", False),
    "total_paid": ("double", False),
    "purchase_count": ("double", False),
}
ORDER_FIELD_TYPES = {"installation_date": "date", "dismantle_date": "date"}  # else string


@dataclass(frozen=True)
class UserField:
    name: str
    type: str  # string | double | datetime | enumeration
    label: str
    multiple: bool = False
    items: Mapping[int, str] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {
            "type": self.type,
            "isRequired": False,
            "isReadOnly": False,
            "isImmutable": False,
            "isMultiple": self.multiple,
            "isDynamic": True,
            "title": self.name,
            "listLabel": self.label,
            "formLabel": self.label,
            "filterLabel": self.label,
        }
        if self.type == "enumeration":
            described["items"] = [{"ID": str(i), "VALUE": v} for i, v in self.items.items()]
        return described


@dataclass
class Portal:
    categories: dict[int, Category]
    deal_fields: dict[str, UserField]
    contact_fields: dict[str, UserField]

    @classmethod
    def from_config(cls, config: CrmConfig) -> Portal:
        deal: dict[str, UserField] = {}
        ids = config.deal_fields.model_dump()
        for key, field_id in ids.items():
            if not field_id or not field_id.startswith("UF_"):
                continue  # native fields (UTM_*) need no definition
            kind, multiple = DEAL_FIELD_TYPES.get(key, ("string", False))
            options = config.subjects if key == "subjects" else config.directions
            values = {int(v): name for name, v in options.items()} if kind == "enumeration" else {}
            deal[field_id] = UserField(field_id, kind, key, multiple, values)
        orders = config.order_fields.model_dump(exclude={"company_inn"})
        for key, field_id in orders.items():
            if field_id and field_id.startswith("UF_") and field_id not in deal:
                deal[field_id] = UserField(field_id, ORDER_FIELD_TYPES.get(key, "string"), key)
        contact = {
            field_id: UserField(field_id, "string", key)
            for key, field_id in config.contact_fields.model_dump().items()
            if field_id
        }
        categories = {c.id: c for c in CATEGORIES}
        wanted: dict[int, list[str]] = {}
        for stage in config.order_stages.values():
            stage_ids = wanted.setdefault(int(stage.pipeline_id), [])
            if stage.status_id not in stage_ids:
                stage_ids.append(stage.status_id)
        for category_id, stage_ids in wanted.items():
            if category_id not in categories:
                categories[category_id] = _order_category(category_id, stage_ids)
        return cls(categories, deal, contact)

    def stage(self, stage_id: str) -> tuple[Category, Stage] | None:
        for category in self.categories.values():
            stage = category.stage(stage_id)
            if stage is not None:
                return category, stage
        return None

    def user_values(
        self, fields: Mapping[str, UserField], values: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The `UF_*` entries of an add or update, each checked by `user_value`."""
        return {k: self.user_value(fields, k, v) for k, v in values.items() if k.startswith("UF_")}

    def user_value(self, fields: Mapping[str, UserField], name: str, value: Any) -> Any:
        """The value to store for user field `name` (None: empty), or `BitrixError`."""
        definition = fields.get(name)
        if definition is None:
            raise BitrixError(f"Unknown user field {name}")
        if definition.multiple:
            if not isinstance(value, dict | list):
                raise BitrixError(f"Field {name} is multiple: an array of values is expected")
            stored = [self._one(definition, item) for item in items(value)]
            return [item for item in stored if item is not None] or None
        if isinstance(value, dict | list):
            raise BitrixError(f"Field {name} takes one value")
        return self._one(definition, value)

    def _one(self, definition: UserField, value: Any) -> Any:
        if value is None or value == "" or value is False:
            return None
        name = definition.name
        if definition.type == "double":
            try:
                return float(str(value).strip())
            except ValueError:
                raise BitrixError(f"Field {name}: {value!r} is not a number") from None
        if definition.type == "datetime":
            try:
                moment = datetime.fromisoformat(str(value))
            except ValueError:
                raise BitrixError(f"Field {name}: {value!r} is not a date and time") from None
            if moment.utcoffset() is None:
                raise BitrixError(f"Field {name}: {value!r} has no time zone")
            return moment.astimezone(PORTAL_TZ).isoformat(timespec="seconds")
        if definition.type == "date":
            try:
                return date.fromisoformat(str(value)[:10]).isoformat()
            except ValueError:
                raise BitrixError(f"Field {name}: {value!r} is not a date") from None
        if definition.type == "enumeration":
            item = int(value) if str(value).isdigit() else None
            if item is None or item not in definition.items:
                raise BitrixError(f"Field {name}: no list item with ID {value!r}")
            return item
        return str(value)


# ---- records ------------------------------------------------------------------------


@dataclass
class ContactRec:
    id: int
    name: str = ""
    last_name: str = ""
    phones: list[dict[str, Any]] = field(default_factory=list)  # {ID, VALUE, VALUE_TYPE}
    emails: list[dict[str, Any]] = field(default_factory=list)
    native: dict[str, Any] = field(default_factory=dict)
    user: dict[str, Any] = field(default_factory=dict)
    created: float = 0.0
    modified: float = 0.0
    company_ids: list[int] = field(default_factory=list)  # the first is the primary one

    def record(self) -> dict[str, Any]:
        multi = {
            kind: [{**entry, "TYPE_ID": kind} for entry in entries]
            for kind, entries in (("PHONE", self.phones), ("EMAIL", self.emails))
        }
        return {
            "ID": str(self.id),
            "NAME": self.name,
            "LAST_NAME": self.last_name,
            "TYPE_ID": "CLIENT",
            "HAS_PHONE": "Y" if self.phones else "N",
            "HAS_EMAIL": "Y" if self.emails else "N",
            "COMPANY_ID": str(self.company_ids[0]) if self.company_ids else None,
            "DATE_CREATE": iso(self.created),
            "DATE_MODIFY": iso(self.modified),
            **{key: self.native.get(key) for key in DEAL_NATIVE},
            **multi,
            **self.user,
        }


@dataclass
class DealRec:
    id: int
    title: str
    category_id: int
    stage_id: str
    semantic: str
    opportunity: float = 0.0
    currency: str = "RUB"
    contact_ids: list[int] = field(default_factory=list)  # the first is the primary one
    native: dict[str, Any] = field(default_factory=dict)
    user: dict[str, Any] = field(default_factory=dict)
    recurring: bool = False
    created: float = 0.0
    modified: float = 0.0
    company_id: int | None = None
    manual_opportunity: bool = False
    rows: list[dict[str, Any]] = field(default_factory=list)  # crm.deal.productrows

    def record(self) -> dict[str, Any]:
        return {
            "ID": str(self.id),
            "TITLE": self.title,
            "CATEGORY_ID": str(self.category_id),
            "STAGE_ID": self.stage_id,
            "STAGE_SEMANTIC_ID": self.semantic,
            "CLOSED": "N" if self.semantic == "P" else "Y",
            "OPPORTUNITY": f"{self.opportunity:.2f}",
            "CURRENCY_ID": self.currency,
            "CONTACT_ID": str(self.contact_ids[0]) if self.contact_ids else None,
            "COMPANY_ID": str(self.company_id) if self.company_id else None,
            "IS_MANUAL_OPPORTUNITY": "Y" if self.manual_opportunity else "N",
            "IS_RECURRING": "Y" if self.recurring else "N",
            "DATE_CREATE": iso(self.created),
            "DATE_MODIFY": iso(self.modified),
            **{key: self.native.get(key) for key in DEAL_NATIVE},
            **self.user,
        }


@dataclass
class CompanyRec:
    id: int
    title: str
    phones: list[dict[str, Any]] = field(default_factory=list)
    emails: list[dict[str, Any]] = field(default_factory=list)
    created: float = 0.0

    def record(self) -> dict[str, Any]:
        return {
            "ID": str(self.id),
            "TITLE": self.title,
            "COMPANY_TYPE": "CUSTOMER",
            "HAS_PHONE": "Y" if self.phones else "N",
            "HAS_EMAIL": "Y" if self.emails else "N",
            "DATE_CREATE": iso(self.created),
            "PHONE": [{**entry, "TYPE_ID": "PHONE"} for entry in self.phones],
            "EMAIL": [{**entry, "TYPE_ID": "EMAIL"} for entry in self.emails],
        }


@dataclass
class RequisiteRec:
    """A requisite (реквизит) of a company: where a Russian portal keeps the INN."""

    id: int
    entity_type_id: int
    entity_id: int
    preset_id: int
    name: str
    values: dict[str, str] = field(default_factory=dict)  # RQ_INN, RQ_COMPANY_NAME, …

    def record(self) -> dict[str, Any]:
        return {
            "ID": str(self.id),
            "ENTITY_TYPE_ID": str(self.entity_type_id),
            "ENTITY_ID": str(self.entity_id),
            "PRESET_ID": str(self.preset_id),
            "NAME": self.name,
            **self.values,
        }


@dataclass
class CommentRec:
    id: int
    entity_id: int
    entity_type: str
    comment: str
    created: float

    def record(self) -> dict[str, Any]:
        return {
            "ID": str(self.id),
            "ENTITY_ID": str(self.entity_id),
            "ENTITY_TYPE": self.entity_type,
            "CREATED": iso(self.created),
            "COMMENT": self.comment,
            "AUTHOR_ID": "1",
            "FILES": [],
        }


def selected(
    record: Mapping[str, Any],
    select: Any,
    user_fields: Iterable[str],
    multi: Iterable[str] = (),
) -> dict[str, Any]:
    """The keys a list returns: `*` = native fields, `UF_*` = user fields; multifields
    (PHONE, EMAIL) only when named [b24-rest-docs crm-contact-list.md]."""
    wanted = [str(name) for name in items(select)] or ["*"]
    user = set(user_fields)
    multi_names = set(multi)
    out: dict[str, Any] = {"ID": record["ID"]}
    for key, value in record.items():
        is_user = key.startswith("UF_")
        if (
            key in wanted
            or ("*" in wanted and not is_user and key not in multi_names)
            or ("UF_*" in wanted and is_user)
        ):
            out[key] = value
    for name in wanted:
        if name in user and name not in out:
            out[name] = None  # an empty user field is null, not absent
    return out


def matches(record: Mapping[str, Any], conditions: Mapping[str, Any], user: set[str]) -> bool:
    for raw_key, expected in conditions.items():
        parsed = FILTER_KEY.fullmatch(raw_key)
        if parsed is None:
            continue
        op, name = parsed.group(1) or "=", parsed.group(2)
        if name.startswith("UF_") and name not in user:
            raise BitrixError(f"Unknown field {name} in the filter")
        if name not in record and not name.startswith("UF_"):
            continue  # Bitrix ignores what it does not know
        actual = [_text(v) for v in _values(record.get(name))]
        wanted = [_text(v) for v in items(expected)] if isinstance(expected, dict | list) else None
        if wanted is not None and not wanted and op in ("=", "@", "!@"):
            continue  # an empty IN list drops the condition
        if op in ("=", "@"):
            ok = any(a in (wanted or [_text(expected)]) for a in actual)
        elif op in ("!", "!=", "!@"):
            ok = not any(a in (wanted or [_text(expected)]) for a in actual)
        elif op == "%":
            ok = any(_text(expected).lower() in a.lower() for a in actual)
        else:
            ok = any(_compare(a, op, _text(expected)) for a in actual)
        if not ok:
            return False
    return True


def _values(value: Any) -> list[Any]:
    if isinstance(value, list):
        return [v["VALUE"] if isinstance(v, dict) else v for v in value] or [None]
    return [value]


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _compare(actual: str, op: str, expected: str) -> bool:
    try:
        left, right = float(actual), float(expected)
    except ValueError:
        return False
    return {">": left > right, "<": left < right, ">=": left >= right, "<=": left <= right}[op]


def page(rows: list[dict[str, Any]], start: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """50 rows from `start`, with `total` and `next`; start = -1: no count, no `next`."""
    offset = int(str(start or 0))
    if offset == -1:
        return rows[:PAGE], {}
    extra: dict[str, Any] = {"total": len(rows)}
    if offset + PAGE < len(rows):
        extra["next"] = offset + PAGE
    return rows[offset : offset + PAGE], extra


def ordered(rows: list[dict[str, Any]], order: Any) -> list[dict[str, Any]]:
    keys = list(order.items()) if isinstance(order, dict) else []
    for name, direction in reversed(keys):
        descending = str(direction).upper() == "DESC"
        rows = sorted(rows, key=lambda row, n=name: _sort_key(row.get(n)), reverse=descending)
    return rows


def _sort_key(value: Any) -> tuple[int, float, str]:
    text = _text(value)
    try:
        return (0, float(text), "")
    except ValueError:
        return (1, 0.0, text)
