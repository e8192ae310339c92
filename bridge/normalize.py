"""Pure translation of a validated payment payload into the domain `Payment` (SPEC §4).

- phones become E.164 (default region RU); one that cannot be a phone number is dropped;
- emails are trimmed and lower-cased; Telegram ids are digits; usernames lose the "@";
- platform timestamps without a zone are in the platform's zone; results are aware UTC;
- the amount is the sum of the item costs, never the platform's top-level `amount`.

Dropped values come back as warnings for the log. A warning never quotes a phone, an
email or another identifier: it says what was dropped and why.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Protocol
from zoneinfo import ZoneInfo

import phonenumbers

from bridge.domain import Customer, Payment, PurchaseItem, Utm
from bridge.payloads import Course as CoursePayload
from bridge.payloads import Item as ItemPayload
from bridge.payloads import PaymentWebhook
from bridge.payloads import Subject as SubjectPayload
from bridge.payloads import Utm as UtmPayload

# Russian numbers written the usual ways (8…, 7…, +7…, with spaces, dashes or brackets)
# whose national number starts with 3, 4, 8 or 9 (landlines, toll-free, mobiles) come out
# of phonenumbers as +7 and the ten digits. Written that way they are taken at once:
# phonenumbers costs ~20 µs a number, on every webhook. Any other shape goes through it;
# the tests hold the shortcut to phonenumbers' answer.
_RU_USUAL = re.compile(r"(?:\+7|8|7)([3489]\d{9})")
_SEPARATORS = str.maketrans("", "", " -()\t")


def normalize_phone(raw: str | None, region: str = "RU") -> str | None:
    """E.164 form of `raw`, or None when it cannot be a phone number."""
    if raw is None or not raw.strip():
        return None
    if region == "RU":
        usual = _RU_USUAL.fullmatch(raw.translate(_SEPARATORS))
        if usual is not None:
            return "+7" + usual.group(1)
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalize_email(raw: str | None) -> str | None:
    if raw is None:
        return None
    email = raw.strip().lower()
    return email if "@" in email else None


def normalize_telegram_id(raw: str | None) -> str | None:
    if raw is None:
        return None
    value = raw.strip()
    # isdigit() alone accepts superscripts and other scripts' digits.
    return value if value.isascii() and value.isdigit() else None


def normalize_telegram_username(raw: str | None) -> str | None:
    if raw is None:
        return None
    return raw.strip().lstrip("@").strip() or None


def parse_platform_time(raw: str | None, platform_tz: ZoneInfo, fallback: datetime) -> datetime:
    """`raw` as aware UTC; a naive `raw` is in `platform_tz`; None or unparseable → `fallback`.

    `fallback` (the injected "received at" time) must be aware.
    """
    parsed = _parse_time(raw, platform_tz)
    if parsed is not None:
        return parsed
    if fallback.tzinfo is None:
        raise ValueError("parse_platform_time: fallback must be timezone-aware")
    return fallback.astimezone(UTC)


def payment_from_webhook(
    payload: PaymentWebhook, *, platform_tz: ZoneInfo, received_at: datetime
) -> tuple[Payment, list[str]]:
    """The domain payment and warnings about values that were dropped or substituted."""
    order = payload.course_order
    warnings: list[str] = []
    customer = customer_from_user(order.user, warnings)
    items = tuple(_item(item) for item in order.course_order_items)
    if not items:
        warnings.append("no course_order_items: amount is 0")
    payment = Payment(
        payment_id=order.payment_id,
        status=_text(order.status),
        amount=payment_amount(order.course_order_items),
        paid_at=_paid_at(order.created_at, order.updated_at, platform_tz, received_at, warnings),
        customer=customer,
        items=items,
        utm=_utm(order.utm),
        invoice_id=_text(order.invoice_id),
        currency=_text(order.currency),
        payment_method=_text(order.payment_method),
        promo_code=_text(order.code),
        domain=_text(order.domain),
    )
    return payment, warnings


class UserFields(Protocol):
    """A payment body's user, as `payloads` or `canonical` read it."""

    @property
    def first_name(self) -> str | None: ...
    @property
    def last_name(self) -> str | None: ...
    @property
    def phone(self) -> str | None: ...
    @property
    def email(self) -> str | None: ...
    @property
    def telegram_id(self) -> str | None: ...
    @property
    def telegram_tag(self) -> str | None: ...


class CostedItem(Protocol):
    @property
    def cost(self) -> Decimal | int: ...


def payment_amount(items: Sequence[CostedItem]) -> Decimal:
    """The sum of the item costs: what was paid (the top-level `amount` is not)."""
    total = Decimal(0)
    for item in items:
        total += item.cost
    return total


def customer_from_user(user: UserFields, warnings: list[str]) -> Customer:
    """The customer, normalised; what had to be dropped is added to `warnings`."""
    phone = normalize_phone(user.phone)
    if phone is None and _text(user.phone):
        warnings.append("phone dropped: unparseable")
    email = normalize_email(user.email)
    if email is None and _text(user.email):
        warnings.append("email dropped: no '@'")
    telegram_id = normalize_telegram_id(user.telegram_id)
    if telegram_id is None and _text(user.telegram_id):
        warnings.append("telegram_id dropped: not all digits")
    return Customer(
        first_name=_text(user.first_name),
        last_name=_text(user.last_name),
        phone=phone,
        email=email,
        telegram_id=telegram_id,
        telegram_username=normalize_telegram_username(user.telegram_tag),
    )


def _item(item: ItemPayload) -> PurchaseItem:
    course = item.course or CoursePayload()
    subject = course.subject or SubjectPayload()
    return PurchaseItem(
        course_name=_text(course.name),
        subject=_text(subject.name),
        direction=_text(subject.project),
        cost=item.cost,
        number_lessons=item.number_lessons,
    )


def _paid_at(
    created_at: str | None,
    updated_at: str | None,
    platform_tz: ZoneInfo,
    received_at: datetime,
    warnings: list[str],
) -> datetime:
    for name, raw in (("created_at", created_at), ("updated_at", updated_at)):
        parsed = _parse_time(raw, platform_tz)
        if parsed is not None:
            return parsed
        if _text(raw):
            warnings.append(f"{name} unparseable: ignored")
    warnings.append("no usable created_at/updated_at: paid_at is the time received")
    return parse_platform_time(None, platform_tz, received_at)


def _parse_time(raw: str | None, platform_tz: ZoneInfo) -> datetime | None:
    if raw is None or not raw.strip():
        return None
    try:
        parsed = datetime.fromisoformat(raw.strip())
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=platform_tz)
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):  # overflow: year 1 or 9999 shifted past the range
        return None


def _utm(utm: UtmPayload | None) -> Utm:
    if utm is None:
        return Utm()
    return Utm(
        source=_text(utm.source),
        medium=_text(utm.medium),
        # The platform spells it "compaign"; a fixed platform may send "campaign".
        campaign=_text(utm.campaign) or _text(utm.compaign),
        term=_text(utm.term),
        content=_text(utm.content),
        ym=_text(utm.ym),
    )


def _text(value: str | None) -> str:
    return value.strip() if value else ""
