"""A `FieldUpdate`'s value as a CRM's JSON.

What every CRM checks alike is here: text is a string, a number a `Decimal` or an int
(sent as a JSON integer when whole, else a float: a string would not be coerced), a
date-time carries its zone, a single option is an id or a key, several options a tuple.
What differs, how a date-time and options are written, is each CRM's `FieldEncoding`.
A value that does not fit is a ValueError, which the adapter's `reading` turns into a
permanent failure before anything is sent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from bridge.domain import FieldKind, FieldUpdate

JSON = Any
Option = int | str


def number_json(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)


@dataclass(frozen=True)
class FieldEncoding:
    """One CRM's encodings: `when` a zone-aware date-time, `option` the value of a
    single-choice field and `options` the whole set of a multiple-choice one (each given
    the field id, for its error message)."""

    when: Callable[[datetime], JSON]
    option: Callable[[str, Option], JSON]
    options: Callable[[str, tuple[Option, ...]], JSON]

    def values(self, updates: Iterable[FieldUpdate]) -> dict[str, JSON]:
        """The field id → value map of a create or update."""
        return {update.field_id: self.value(update) for update in updates}

    def value(self, update: FieldUpdate) -> JSON:
        kind, value, field_id = update.kind, update.value, update.field_id
        if kind is FieldKind.TEXT and isinstance(value, str):
            return value
        if kind is FieldKind.NUMBER and isinstance(value, Decimal | int):
            return number_json(Decimal(value))
        if (
            kind is FieldKind.DATETIME
            and isinstance(value, datetime)
            and value.utcoffset() is not None
        ):
            return self.when(value)
        if kind is FieldKind.SELECT and isinstance(value, int | str):
            return self.option(field_id, value)
        if kind is FieldKind.MULTISELECT and isinstance(value, tuple):
            return self.options(field_id, value)
        raise ValueError(f"field {field_id}: {kind.value} value {value!r} has the wrong type")
