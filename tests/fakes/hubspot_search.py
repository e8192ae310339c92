"""The fake HubSpot's search semantics (`POST /crm/objects/2026-09/{type}/search`).

- filter groups are OR-ed, filters inside a group AND-ed; at most 5 groups, 10 filters in a
  group and 25 in all (HubSpot's 2024 limits), `limit` at most 200 → else 400;
- strings compare case-insensitively, enumeration values exactly, numbers and dates by
  value; `associations.{type}` matches records associated with that id;
- phone properties match through HubSpot's calculated searchable form: the national
  significant number of the stored value (parsed in the portal's region), digits only, so
  "9991234567" finds "+7 (999) 123-45-67" and "8 999 123 45 67" but "+79991234567" finds
  nothing, and the same national number of another country is found as well;
- `sorts` (the first one counts) as `{"propertyName", "direction"}` or "name"/"-name";
  `after` is the offset the previous page returned in `paging.next.after`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import phonenumbers

from tests.fakes.hubspot_account import PropDef, invalid, parse_instant

MAX_GROUPS, MAX_GROUP_FILTERS, MAX_FILTERS = 5, 10, 25
MAX_LIMIT, MAX_TOTAL = 200, 10_000
PLURAL = {"contact": "contacts", "deal": "deals", "note": "notes", "company": "companies"}


@dataclass
class Item:
    id: str
    values: Mapping[str, str | None]  # properties as read, calculated ones included
    linked: Mapping[str, set[str]]  # associated ids by object type ("contacts", ...)


def run_search(
    body: Any, items: list[Item], defs: Mapping[str, PropDef], region: str
) -> tuple[list[Item], int, int | None]:
    """(this page, total, offset of the next page or None)."""
    if not isinstance(body, dict):
        raise invalid("Invalid input JSON: a search request is an object")
    groups = body.get("filterGroups") or []
    filters = [f for group in groups for f in (group.get("filters") or [])]
    if len(groups) > MAX_GROUPS or len(filters) > MAX_FILTERS:
        raise invalid(f"Search allows {MAX_GROUPS} filterGroups and {MAX_FILTERS} filters in all")
    if any(len(group.get("filters") or []) > MAX_GROUP_FILTERS for group in groups):
        raise invalid(f"Search allows {MAX_GROUP_FILTERS} filters in a filterGroup")
    limit = body.get("limit", 10)
    if not isinstance(limit, int) or not 0 < limit <= MAX_LIMIT:
        raise invalid(f"limit must be between 1 and {MAX_LIMIT}")
    try:
        offset = int(body.get("after") or 0)
    except ValueError:
        raise invalid("after is not a paging cursor") from None
    if offset + limit > MAX_TOTAL:
        raise invalid(f"Search results are limited to {MAX_TOTAL} records")
    matched = [
        item
        for item in items
        if not groups
        or any(all(_matches(f, item, defs, region) for f in g["filters"]) for g in groups)
    ]
    matched = _sorted(matched, body.get("sorts") or [], defs)
    page = matched[offset : offset + limit]
    more = offset + limit if offset + limit < len(matched) else None
    return page, len(matched), more


def _matches(flt: Any, item: Item, defs: Mapping[str, PropDef], region: str) -> bool:
    name, op = str(flt.get("propertyName", "")), str(flt.get("operator", "EQ"))
    wanted = [str(v) for v in flt.get("values") or []] or [str(flt.get("value", ""))]
    if name.startswith("associations."):
        kind = PLURAL.get(name.removeprefix("associations."))
        if kind is None or op not in ("EQ", "IN", "NEQ", "NOT_IN"):
            raise invalid(f"Unsupported association filter {name} {op}")
        hit = any(value in item.linked.get(kind, set()) for value in wanted)
        return hit if op in ("EQ", "IN") else not hit
    definition = defs.get(name)
    if definition is None:
        raise invalid(f"Invalid search: property {name} does not exist")
    stored = item.values.get(name)
    has = stored not in (None, "")
    if op in ("HAS_PROPERTY", "NOT_HAS_PROPERTY"):
        return has if op == "HAS_PROPERTY" else not has
    if op in ("EQ", "NEQ", "IN", "NOT_IN"):
        hit = has and any(_equal(definition, str(stored), value, region) for value in wanted)
        return hit if op in ("EQ", "IN") else not hit
    if op in ("CONTAINS_TOKEN", "NOT_CONTAINS_TOKEN"):
        tokens = set(re.split(r"[^\w@.+-]+", str(stored or "").casefold()))
        hit = wanted[0].strip("*").casefold() in tokens
        return hit if op == "CONTAINS_TOKEN" else not hit
    if op in ("GT", "GTE", "LT", "LTE", "BETWEEN"):
        if not has:
            return False
        value, low = _key(definition, str(stored)), _key(definition, wanted[0])
        if op == "BETWEEN":
            return bool(low <= value <= _key(definition, str(flt.get("highValue", ""))))
        return {"GT": value > low, "GTE": value >= low, "LT": value < low, "LTE": value <= low}[op]
    raise invalid(f"Unknown operator {op}")


def _equal(definition: PropDef, stored: str, wanted: str, region: str) -> bool:
    if definition.field_type == "phonenumber":
        return searchable_phone(stored, region) == re.sub(r"\D", "", wanted)
    if definition.type == "enumeration":
        return wanted in stored.split(";")
    if definition.type in ("number", "datetime", "date"):
        return _key(definition, stored) == _key(definition, wanted)
    return stored.casefold() == wanted.casefold()


def searchable_phone(stored: str, region: str) -> str:
    """HubSpot's `hs_searchable_calculated_*` form: area code and local number only."""
    try:
        number = phonenumbers.parse(stored, region)
    except phonenumbers.NumberParseException:
        return re.sub(r"\D", "", stored)
    return str(phonenumbers.national_significant_number(number))


def _key(definition: PropDef, raw: str) -> Any:
    if definition.type == "number":
        try:
            return Decimal(raw)
        except InvalidOperation:
            raise invalid(f"{raw} is not a number") from None
    if definition.type in ("datetime", "date"):
        ms = parse_instant(raw if len(raw) != 10 else f"{raw}T00:00:00Z")
        if ms is None:
            raise invalid(f"{raw} is not a date")
        return ms
    return raw.casefold()


def _sorted(items: list[Item], sorts: list[Any], defs: Mapping[str, PropDef]) -> list[Item]:
    def by_id(item: Item) -> tuple[int, str]:
        return (int(item.id), item.id) if item.id.isdigit() else (0, item.id)

    items = sorted(items, key=by_id)
    if not sorts:
        return items
    first = sorts[0]
    if isinstance(first, str):
        name, descending = first.lstrip("-"), first.startswith("-")
    else:
        name = str(first.get("propertyName", ""))
        descending = first.get("direction", "ASCENDING") == "DESCENDING"
    definition = defs.get(name)
    if definition is None:
        raise invalid(f"Invalid sort: property {name} does not exist")
    present = [item for item in items if item.values.get(name) not in (None, "")]
    absent = [item for item in items if item.values.get(name) in (None, "")]
    present.sort(key=lambda item: _key(definition, str(item.values[name])), reverse=descending)
    return present + absent
