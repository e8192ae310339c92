"""The checks every CRM's field encoding shares (bridge.crm.fieldvalues); each CRM's own
encodings are tested with its adapter."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from bridge.crm.fieldvalues import FieldEncoding
from bridge.domain import FieldKind, FieldUpdate

TAGGED = FieldEncoding(
    when=lambda moment: f"when {moment:%Y-%m-%d}",
    option=lambda field_id, value: f"{field_id}={value}",
    options=lambda field_id, values: [f"{field_id}={value}" for value in values],
)


def test_each_kind_goes_to_its_encoding_and_numbers_are_json_numbers() -> None:
    updates = [
        FieldUpdate("t", FieldKind.TEXT, "text"),
        FieldUpdate("n", FieldKind.NUMBER, Decimal("10000.00")),
        FieldUpdate("f", FieldKind.NUMBER, Decimal("0.5")),
        FieldUpdate("d", FieldKind.DATETIME, datetime(2025, 1, 20, tzinfo=UTC)),
        FieldUpdate("s", FieldKind.SELECT, "ege"),
        FieldUpdate("m", FieldKind.MULTISELECT, (1, 2)),
    ]
    assert TAGGED.values(updates) == {
        "t": "text",
        "n": 10000,
        "f": 0.5,
        "d": "when 2025-01-20",
        "s": "s=ege",
        "m": ["m=1", "m=2"],
    }
    assert isinstance(TAGGED.value(updates[1]), int)


@pytest.mark.parametrize(
    "update",
    [
        FieldUpdate("d", FieldKind.DATETIME, datetime(2025, 1, 20)),  # no zone
        FieldUpdate("t", FieldKind.TEXT, 5),
        FieldUpdate("n", FieldKind.NUMBER, "5"),
        FieldUpdate("m", FieldKind.MULTISELECT, [1]),
    ],
)
def test_a_value_of_the_wrong_type_is_a_value_error_naming_the_field(update: FieldUpdate) -> None:
    with pytest.raises(ValueError, match=f"field {update.field_id}: .* has the wrong type"):
        TAGGED.value(update)
