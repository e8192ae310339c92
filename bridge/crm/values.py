"""Field values as JSON, for the CRMs whose APIs take them typed alike (HubSpot,
Salesforce): only how a number and a multi-select value are written differs."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal

from bridge.crm.base import JSON
from bridge.domain import FieldKind, FieldUpdate


def iso_utc(value: datetime) -> str:
    """ISO 8601 in UTC with milliseconds and `Z`."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def typed_value(
    update: FieldUpdate,
    number: Callable[[Decimal], JSON],
    options: Callable[[list[str]], JSON],
) -> JSON:
    """One value by its kind: text as is, a number by `number`, a date-time that carries
    its zone in UTC, a select option as text, multi-select options by `options`.
    ValueError when the value does not fit its kind (a naive date-time included)."""
    kind, value = update.kind, update.value
    if kind is FieldKind.TEXT and isinstance(value, str):
        return value
    if (
        kind is FieldKind.NUMBER
        and isinstance(value, Decimal | int)
        and not isinstance(value, bool)
    ):
        return number(Decimal(value))
    if kind is FieldKind.DATETIME and isinstance(value, datetime) and value.utcoffset() is not None:
        return iso_utc(value)
    if kind is FieldKind.SELECT and isinstance(value, int | str) and not isinstance(value, bool):
        return str(value)
    if kind is FieldKind.MULTISELECT and isinstance(value, tuple):
        return options([str(option) for option in value])
    raise ValueError(f"field {update.field_id}: {kind.value} value {value!r} has the wrong type")
