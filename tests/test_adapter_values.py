"""How each adapter writes a field value in its CRM's shape, and which values it refuses
before anything is sent (one table of (kind, value, what is sent) rows per CRM); how each
searches a lookup key; how a note's HTML reads as text."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from bridge.crm.amocrm_json import field_values_json, search_query
from bridge.crm.bitrix24_json import field_values, phone_variants
from bridge.crm.hubspot_json import national_number, property_value
from bridge.crm.pipedrive_json import custom_fields_json, search_params
from bridge.crm.richtext import note_html, note_text
from bridge.crm.salesforce_json import field_value
from bridge.crm.zoho_json import value_json
from bridge.domain import FieldKind, FieldUpdate, LookupKey
from tests.adapter_support import email_key, phone_key, tg_key

PAID_AT = datetime(2025, 1, 20, 11, 49, 20, tzinfo=UTC)
MSK = timezone(timedelta(hours=3))
LATE = datetime(2025, 1, 20, 21, 49, 20, tzinfo=UTC)  # 00:49 on the 21st in Moscow
NAIVE = datetime(2025, 1, 20, 11, 49)
MOMENT = datetime(2026, 12, 1, tzinfo=UTC)  # not a day: a DATE field refuses it
Encode = Callable[[FieldUpdate], Any]


def amocrm(update: FieldUpdate) -> Any:
    [written] = field_values_json([update])
    assert written["field_id"] == int(update.field_id)  # amoCRM numbers its fields
    return written["values"]


def keyed(encode: Callable[[list[FieldUpdate]], dict[str, Any]]) -> Encode:
    """One value of a `{field id: value}` body (Pipedrive's, Bitrix24's)."""

    def value(update: FieldUpdate) -> Any:
        [(field_id, written)] = encode([update]).items()
        assert field_id == update.field_id
        return written

    return value


# CRM → (its encoder, a field id, rows of (kind, value, what is sent)).
SHAPES: dict[str, tuple[Encode, str, list[tuple[FieldKind, Any, Any]]]] = {
    "amocrm": (
        amocrm,
        "1",
        [
            (FieldKind.TEXT, "pay_1", [{"value": "pay_1"}]),
            (FieldKind.NUMBER, Decimal("10000.00"), [{"value": 10000}]),
            (FieldKind.NUMBER, Decimal("12.50"), [{"value": 12.5}]),
            (FieldKind.NUMBER, 3, [{"value": 3}]),
            (FieldKind.DATETIME, PAID_AT, [{"value": "2025-01-20T11:49:20+00:00"}]),
            (FieldKind.DATETIME, PAID_AT.astimezone(MSK), [{"value": "2025-01-20T14:49:20+03:00"}]),
            (FieldKind.SELECT, 800101, [{"enum_id": 800101}]),
            (FieldKind.MULTISELECT, (800001, 800003), [{"enum_id": 800001}, {"enum_id": 800003}]),
        ],
    ),
    "hubspot": (
        property_value,
        "p",
        [
            (FieldKind.TEXT, "pay_1", "pay_1"),
            (FieldKind.NUMBER, Decimal("10000.00"), "10000"),
            (FieldKind.NUMBER, Decimal("12.50"), "12.5"),
            (FieldKind.NUMBER, Decimal("1E+3"), "1000"),
            (FieldKind.NUMBER, 3, "3"),
            (FieldKind.DATETIME, PAID_AT, "2025-01-20T11:49:20.000Z"),
            (FieldKind.DATETIME, PAID_AT.astimezone(MSK), "2025-01-20T11:49:20.000Z"),
            (FieldKind.SELECT, "ege", "ege"),
            (FieldKind.SELECT, 800101, "800101"),
            (FieldKind.MULTISELECT, ("russian", "math"), "russian;math"),
            (FieldKind.DATE, date(2026, 12, 1), "2026-12-01"),
        ],
    ),
    "pipedrive": (
        keyed(custom_fields_json),
        "k",
        [
            (FieldKind.TEXT, "pay_1", "pay_1"),
            (FieldKind.NUMBER, Decimal("10000.00"), 10000),
            (FieldKind.NUMBER, Decimal("12.50"), 12.5),
            (FieldKind.NUMBER, 3, 3),
            (FieldKind.DATETIME, LATE, "2025-01-20"),
            (FieldKind.DATETIME, LATE.astimezone(MSK), "2025-01-21"),
            (FieldKind.SELECT, 21, 21),
            (FieldKind.SELECT, "21", 21),
            (FieldKind.MULTISELECT, (11, "13"), [11, 13]),
        ],
    ),
    "bitrix24": (
        keyed(field_values),
        "UF_A",
        [
            (FieldKind.TEXT, "pay_1", "pay_1"),
            (FieldKind.NUMBER, Decimal("10000.00"), 10000),
            (FieldKind.NUMBER, Decimal("12.50"), 12.5),
            (FieldKind.NUMBER, 3, 3),
            (FieldKind.DATETIME, PAID_AT, "2025-01-20T11:49:20+00:00"),
            (FieldKind.DATETIME, PAID_AT.astimezone(MSK), "2025-01-20T14:49:20+03:00"),
            (FieldKind.SELECT, 61, 61),
            (FieldKind.SELECT, "61", 61),
            (FieldKind.MULTISELECT, (45, "47"), [45, 47]),
        ],
    ),
    "salesforce": (
        field_value,
        "Installation_Date__c",
        [(FieldKind.DATE, date(2026, 12, 1), "2026-12-01")],
    ),
    "zoho": (value_json, "Installation_Date", [(FieldKind.DATE, date(2026, 12, 1), "2026-12-01")]),
}

# CRM → (its encoder, the refusal's words, rows of (field id, kind, value) it refuses).
REFUSED: dict[str, tuple[Encode, str, list[tuple[str, FieldKind, Any]]]] = {
    "amocrm": (
        amocrm,
        r"1|field",
        [
            ("1", FieldKind.DATETIME, NAIVE),
            ("1", FieldKind.SELECT, (1, 2)),
            ("1", FieldKind.NUMBER, "12"),
            ("field", FieldKind.TEXT, "x"),  # amoCRM's field ids are numbers
        ],
    ),
    "hubspot": (
        property_value,
        r"wrong type|not a number",
        [
            ("p", FieldKind.DATETIME, NAIVE),
            ("p", FieldKind.SELECT, ("a", "b")),
            ("p", FieldKind.NUMBER, "12"),
            ("p", FieldKind.NUMBER, Decimal("NaN")),
            ("p", FieldKind.MULTISELECT, "a;b"),
        ],
    ),
    "hubspot-date": (property_value, "date value", [("d", FieldKind.DATE, MOMENT)]),
    "pipedrive": (
        keyed(custom_fields_json),
        r"k|option",
        [
            ("k", FieldKind.DATETIME, NAIVE),
            ("k", FieldKind.SELECT, (1, 2)),
            ("k", FieldKind.SELECT, "ЕГЭ"),
            ("k", FieldKind.NUMBER, "12"),
            ("k", FieldKind.MULTISELECT, ()),  # Pipedrive refuses []: clear with null
        ],
    ),
    "bitrix24": (
        keyed(field_values),
        "UF_A",
        [
            ("UF_A", FieldKind.DATETIME, NAIVE),
            ("UF_A", FieldKind.SELECT, "ЕГЭ"),  # a label, not an item ID
            ("UF_A", FieldKind.SELECT, (1, 2)),
            ("UF_A", FieldKind.NUMBER, "12"),
        ],
    ),
    "salesforce": (field_value, "not a day", [("Installation_Date__c", FieldKind.DATE, MOMENT)]),
    "zoho": (value_json, "wrong type", [("Installation_Date", FieldKind.DATE, MOMENT)]),
}


@pytest.mark.parametrize(
    ("encode", "update", "sent"),
    [
        pytest.param(encode, FieldUpdate(field_id, kind, value), sent, id=f"{crm}-{kind}-{n}")
        for crm, (encode, field_id, rows) in SHAPES.items()
        for n, (kind, value, sent) in enumerate(rows)
    ],
)
def test_values_are_sent_in_the_crms_shape(encode: Encode, update: FieldUpdate, sent: Any) -> None:
    assert encode(update) == sent


@pytest.mark.parametrize(
    ("encode", "update", "words"),
    [
        pytest.param(encode, FieldUpdate(*row), words, id=f"{crm}-{row[1]}-{n}")
        for crm, (encode, words, rows) in REFUSED.items()
        for n, row in enumerate(rows)
    ],
)
def test_values_that_do_not_fit_are_refused(
    encode: Encode, update: FieldUpdate, words: str
) -> None:
    with pytest.raises(ValueError, match=words):
        encode(update)


@pytest.mark.parametrize(
    ("search", "key", "asked"),
    [
        # amoCRM's query: a phone's national number, anything else as it is.
        (search_query, phone_key(), "9991234567"),
        (search_query, phone_key("+442079460958"), "2079460958"),
        (search_query, email_key(), "ivan@example.com"),
        (search_query, tg_key(), "123456789"),
        # HubSpot searches a phone by its national number too.
        (national_number, "+79991234567", "9991234567"),
        (national_number, "+442079460958", "2079460958"),
        (national_number, "12-34 (no country)", "1234"),
        # Pipedrive: one field per key, exact but for a phone.
        (search_params, phone_key(), {"term": "79991234567", "fields": "phone", "limit": 100}),
        (
            search_params,
            email_key(),
            {"term": "ivan@example.com", "fields": "email", "exact_match": "true", "limit": 100},
        ),
        (
            search_params,
            tg_key(),
            {"term": "123456789", "fields": "custom_fields", "exact_match": "true", "limit": 100},
        ),
        # Bitrix24 adds the 8 form of a +7 number.
        (phone_variants, "+79991234567", ["+79991234567", "89991234567"]),
        (phone_variants, "+442079460958", ["+442079460958"]),
        (phone_variants, "+77012345678", ["+77012345678", "87012345678"]),  # Kazakhstan too
    ],
)
def test_lookup_keys_are_searched_as_each_crm_asks(
    search: Callable[[Any], Any], key: LookupKey | str, asked: Any
) -> None:
    assert search(key) == asked


def test_note_text_survives_html_both_ways() -> None:
    text = "Оплата проведена\n\nКурсы:\n  A & B <C>\nPayment ID: pay_1"
    assert note_html(text) == (
        "Оплата проведена<br><br>Курсы:<br>&nbsp;&nbsp;A &amp; B &lt;C&gt;<br>Payment ID: pay_1"
    )
    assert note_text(note_html(text)) == text


@pytest.mark.parametrize(
    ("html", "text"),
    [
        # What HubSpot's editor makes of a note typed or edited in the UI.
        (
            '<div style="" dir="auto"><p>Оплата&nbsp;проведена</p><p>Payment ID: pay_1</p></div>',
            "Оплата проведена\nPayment ID: pay_1",
        ),
        # What Pipedrive's app makes of one.
        (
            "<p>Звонил клиенту</p><div>Payment ID: pay_9</div><p>a&nbsp;b<br/>c</p>",
            "Звонил клиенту\nPayment ID: pay_9\na b\nc",
        ),
    ],
)
def test_notes_typed_in_a_crms_editor_read_as_lines(html: str, text: str) -> None:
    assert note_text(html) == text
