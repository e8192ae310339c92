from __future__ import annotations

import copy
import random
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import phonenumbers
import pytest

from bridge.domain import Payment, PurchaseItem, Utm
from bridge.normalize import (
    normalize_email,
    normalize_phone,
    normalize_telegram_id,
    normalize_telegram_username,
    parse_platform_time,
    payment_from_webhook,
)
from bridge.payloads import parse_payment
from tests.test_rules import PAYMENT

MOSCOW = ZoneInfo("Europe/Moscow")
RECEIVED_AT = datetime(2025, 1, 21, 8, 0, tzinfo=UTC)

PAYLOAD: dict[str, Any] = {
    "course_order": {
        "status": "CONFIRMED",
        "amount": 100,
        "created_at": "2025-01-20 14:49:20",
        "updated_at": "2025-01-20 15:00:00",
        "code": "PROMO2025",
        "payment_id": "pay_67890",
        "invoice_id": "inv_12345",
        "payment_method": "SBP",
        "currency": "RUB",
        "course_order_items": [
            {
                "cost": 5000,
                "number_lessons": 10,
                "course": {
                    "name": "Годовой 2к25 стандарт",
                    "subject": {"name": "Русский", "project": "ЕГЭ"},
                },
            },
            {
                "cost": "5000.50",
                "course": {
                    "name": "Годовой 2к25 стандарт",
                    "subject": {"name": "Обществознание", "project": "ЕГЭ"},
                },
            },
        ],
        "user": {
            "first_name": " Иван ",
            "last_name": "Петров",
            "phone": "8 999 123-45-67",
            "email": " Ivan@Example.COM ",
            "telegram_id": "123456789",
            "telegram_tag": "@ivan",
        },
        "utm": {"source": "platform", "medium": "direct", "compaign": "summer2025", "ym": 42},
        "domain": "pl.el-ed.ru",
    }
}


def _payment(**changes: Any) -> tuple[Payment, list[str]]:
    raw = copy.deepcopy(PAYLOAD)
    for key, value in changes.items():
        section, _, name = key.partition("__")
        target = raw["course_order"] if not name else raw["course_order"][section]
        field = name or section
        if value is ...:
            target.pop(field, None)
        else:
            target[field] = value
    return payment_from_webhook(parse_payment(raw), platform_tz=MOSCOW, received_at=RECEIVED_AT)


# What each normalizer makes of what the platform sends; every one also makes nothing of
# nothing (empty, blank, None).
NORMALIZED: dict[Callable[[str | None], str | None], list[tuple[str, str | None]]] = {
    normalize_phone: [
        ("89991234567", "+79991234567"),
        ("8 999 123-45-67", "+79991234567"),
        ("+7 (999) 123 45 67", "+79991234567"),
        ("79991234567", "+79991234567"),
        ("9991234567", "+79991234567"),
        ("+7-999-123-45-67", "+79991234567"),
        (" +44 20 7946 0958 ", "+442079460958"),
        ("garbage", None),
        ("123", None),
        ("+7 999", None),
        ("8999123456789012345", None),
    ],
    normalize_email: [
        (" Ivan@Example.COM ", "ivan@example.com"),
        ("ivan@example.com", "ivan@example.com"),
        ("not-an-email", None),
    ],
    normalize_telegram_id: [
        ("123456789", "123456789"),
        (" 123456789\n", "123456789"),
        ("12a", None),
        ("-100123", None),
        ("١٢٣", None),  # Arabic-Indic digits are digits to str.isdigit, not to Telegram
        ("²", None),
    ],
    normalize_telegram_username: [
        ("ivan", "ivan"),
        ("@ivan", "ivan"),
        (" @ivan_petrov ", "ivan_petrov"),
        ("@", None),
    ],
}


@pytest.mark.parametrize(
    ("normalize", "raw", "expected"),
    [
        pytest.param(normalize, raw, expected, id=f"{normalize.__name__}-{raw!r}")
        for normalize, rows in NORMALIZED.items()
        for raw, expected in [*rows, ("", None), ("  ", None), ("   ", None), (None, None)]
    ],
)
def test_normalizers(
    normalize: Callable[[str | None], str | None], raw: str | None, expected: str | None
) -> None:
    assert normalize(raw) == expected


def test_normalize_phone_other_region() -> None:
    assert normalize_phone("020 7946 0958", region="GB") == "+442079460958"


def _phonenumbers_answer(raw: str) -> str | None:
    """What phonenumbers alone makes of `raw` (default region RU)."""
    try:
        number = phonenumbers.parse(raw, "RU")
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


_PHONE_PREFIXES = ("8", "7", "+7", "+8", "810", "007", "+", "")
_PHONE_LAYOUTS = ("{p}{n}", "{p} {a} {b}-{c}-{d}", "{p} ({a}) {b} {c} {d}", "{p}-{a}-{b}-{c}{d}")


@pytest.mark.parametrize("first_digit", "0123456789")
def test_the_quick_path_for_usual_russian_numbers_agrees_with_phonenumbers(
    first_digit: str,
) -> None:
    """Every layout and prefix, every national number's first three digits: the answer
    (number, or None) is phonenumbers' own, so the quick path changes nothing."""
    rnd = random.Random(first_digit)
    for rest in range(100):
        national = f"{first_digit}{rest:02d}{rnd.randrange(10**7):07d}"
        a, b, c, d = national[:3], national[3:6], national[6:8], national[8:]
        for prefix in _PHONE_PREFIXES:
            layout = rnd.choice(_PHONE_LAYOUTS)
            raw = layout.format(p=prefix, n=national, a=a, b=b, c=c, d=d)
            for written in (raw, f"  {raw}\t"):
                assert normalize_phone(written) == _phonenumbers_answer(written), written


FALLBACK = datetime(2025, 2, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("raw", "zone", "expected"),
    [
        ("2025-01-20 14:49:20", MOSCOW, datetime(2025, 1, 20, 11, 49, 20, tzinfo=UTC)),
        ("2025-01-20T14:49:20", MOSCOW, datetime(2025, 1, 20, 11, 49, 20, tzinfo=UTC)),
        (" 2025-01-20 14:49:20 ", MOSCOW, datetime(2025, 1, 20, 11, 49, 20, tzinfo=UTC)),
        ("2025-01-20T14:49:20Z", MOSCOW, datetime(2025, 1, 20, 14, 49, 20, tzinfo=UTC)),
        ("2025-01-20T14:49:20+05:00", MOSCOW, datetime(2025, 1, 20, 9, 49, 20, tzinfo=UTC)),
        ("2025-01-20 14:49:20.5", MOSCOW, datetime(2025, 1, 20, 11, 49, 20, 500000, tzinfo=UTC)),
        ("2025-07-01 12:00:00", ZoneInfo("Europe/Berlin"), datetime(2025, 7, 1, 10, tzinfo=UTC)),
        ("2025-01-01 12:00:00", ZoneInfo("Europe/Berlin"), datetime(2025, 1, 1, 11, tzinfo=UTC)),
        ("2025-01-20", MOSCOW, datetime(2025, 1, 19, 21, tzinfo=UTC)),
        ("0001-01-01 00:00:00", MOSCOW, FALLBACK),
        ("20.01.2025 14:49", MOSCOW, FALLBACK),
        ("yesterday", MOSCOW, FALLBACK),
        ("", MOSCOW, FALLBACK),
        (None, MOSCOW, FALLBACK),
    ],
)
def test_parse_platform_time(raw: str | None, zone: ZoneInfo, expected: datetime) -> None:
    parsed = parse_platform_time(raw, zone, FALLBACK)
    assert parsed == expected
    assert parsed.tzinfo is UTC


def test_parse_platform_time_converts_the_fallback_to_utc() -> None:
    fallback = datetime(2025, 2, 1, 15, 0, tzinfo=timezone(timedelta(hours=3)))
    assert parse_platform_time(None, MOSCOW, fallback) == datetime(2025, 2, 1, 12, tzinfo=UTC)
    assert parse_platform_time(None, MOSCOW, fallback).tzinfo is UTC


def test_parse_platform_time_refuses_a_naive_fallback() -> None:
    with pytest.raises(ValueError, match="aware"):
        parse_platform_time(None, MOSCOW, datetime(2025, 2, 1))


def test_payment_from_webhook() -> None:
    payment, warnings = _payment()
    assert warnings == []
    # The reference payment, but for what this payload says otherwise: a second item
    # with cents and no lessons, a Yandex Metrica id, the domain.
    assert payment == replace(
        PAYMENT,
        amount=Decimal("10000.50"),
        items=(
            PAYMENT.items[0],
            PurchaseItem("Годовой 2к25 стандарт", "Обществознание", "ЕГЭ", Decimal("5000.50")),
        ),
        utm=replace(PAYMENT.utm, ym="42"),
        domain="pl.el-ed.ru",
    )


@pytest.mark.parametrize(
    ("changes", "read", "expected"),
    [
        ({"amount": 1}, lambda p: p.amount, Decimal("10000.50")),
        ({"course_order_items": []}, lambda p: p.amount, Decimal(0)),
        (
            {"course_order_items": [{"cost": 0.1}, {"cost": 0.2}]},
            lambda p: p.amount,
            Decimal("0.3"),
        ),
        ({"created_at": ...}, lambda p: p.paid_at, datetime(2025, 1, 20, 12, tzinfo=UTC)),
        ({"created_at": "bad"}, lambda p: p.paid_at, datetime(2025, 1, 20, 12, tzinfo=UTC)),
        ({"created_at": None, "updated_at": None}, lambda p: p.paid_at, RECEIVED_AT),
        ({"utm__campaign": "winter"}, lambda p: p.utm.campaign, "winter"),
        ({"utm__campaign": ""}, lambda p: p.utm.campaign, "summer2025"),
        ({"utm__compaign": ...}, lambda p: p.utm.campaign, ""),
        ({"utm": None}, lambda p: p.utm, Utm()),
        ({"user__phone": "89991234567"}, lambda p: p.customer.phone, "+79991234567"),
        ({"user__phone": "call me"}, lambda p: p.customer.phone, None),
        ({"user__telegram_tag": "ivan"}, lambda p: p.customer.telegram_username, "ivan"),
        ({"user__telegram_id": 5}, lambda p: p.customer.telegram_id, "5"),
        ({"user__last_name": None}, lambda p: p.customer.full_name, "Иван"),
        ({"invoice_id": None}, lambda p: p.invoice_id, ""),
        ({"course_order_items": [{"cost": 1}]}, lambda p: p.items[0].subject, ""),
        ({"course_order_items": [{"cost": 1}]}, lambda p: p.subjects, ()),
    ],
)
def test_payment_from_webhook_rules(changes: dict[str, Any], read: Any, expected: object) -> None:
    payment, _ = _payment(**changes)
    assert read(payment) == expected


@pytest.mark.parametrize(
    ("changes", "warning"),
    [
        ({"user__phone": "8 999 12"}, "phone dropped: unparseable"),
        ({"user__email": "ivan(at)example.com"}, "email dropped: no '@'"),
        ({"user__telegram_id": "@ivan"}, "telegram_id dropped: not all digits"),
        ({"created_at": "bad"}, "created_at unparseable: ignored"),
        (
            {"created_at": None, "updated_at": None},
            "no usable created_at/updated_at: paid_at is the time received",
        ),
        ({"course_order_items": []}, "no course_order_items: amount is 0"),
    ],
)
def test_payment_from_webhook_warnings(changes: dict[str, Any], warning: str) -> None:
    _, warnings = _payment(**changes)
    assert warning in warnings


def test_warnings_never_quote_personal_data() -> None:
    _, warnings = _payment(
        user__phone="8 999 12", user__email="ivan(at)example.com", user__telegram_id="@ivan"
    )
    assert len(warnings) == 3
    text = " ".join(warnings)
    for value in ("999", "ivan", "example"):
        assert value not in text


def test_empty_optional_values_do_not_warn() -> None:
    _, warnings = _payment(user__phone="", user__email=None, user__telegram_id=" ")
    assert warnings == []
