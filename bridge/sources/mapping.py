"""A source's decoded body → the canonical `Payment`, by its section's expressions.

Pure and total: every expression is evaluated, and every one that cannot give what its
field needs is reported (field, expression, why), so one 422 or one `map test` run shows
all that is wrong. Values are normalised as the payment route normalises its own
(`bridge.normalize`): phones to E.164, e-mails lower-cased, naive times in the source's
zone; the payment id is `NAME:ID`, so two platforms' ids never collide.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import TypeVar
from zoneinfo import ZoneInfo

from jmespath.exceptions import JMESPathError

from bridge.domain import Payment, PurchaseItem, Utm
from bridge.normalize import customer_from_user, parse_platform_time
from bridge.payloads import MAX_MONEY, PAYMENT_ID_PATTERN, PAYMENT_ID_RULE
from bridge.sources.config import SourceConfig, search

T = TypeVar("T")


@dataclass(frozen=True)
class Failure:
    field: str  # "map.amount", "item.cost (items[2])"
    expression: str
    error: str

    def text(self) -> str:
        return f"{self.field} = {self.expression!r}: {self.error}"


class MappingFailed(Exception):
    def __init__(self, failures: Sequence[Failure]) -> None:
        super().__init__("; ".join(failure.text() for failure in failures))
        self.failures = tuple(failures)


class _Invalid(Exception):
    pass


@dataclass(frozen=True)
class _User:
    first_name: str | None
    last_name: str | None
    phone: str | None
    email: str | None
    telegram_id: str | None
    telegram_tag: str | None


class _Reader:
    """Evaluates expressions and collects what failed."""

    def __init__(self) -> None:
        self.failures: list[Failure] = []

    def read(
        self,
        field: str,
        expression: str | None,
        document: object,
        convert: Callable[[object], T],
        default: T,
    ) -> T:
        if expression is None:
            return default
        try:
            value = search(expression, document)
        except JMESPathError as exc:  # e.g. a function given the wrong type
            self.failures.append(Failure(field, expression, " ".join(str(exc).split())))
            return default
        except (TypeError, ValueError, ArithmeticError, RecursionError) as exc:
            # What a built-in function may raise on values its type check let through
            # (`sum` over huge numbers, `sort` of a deep list): a 422, never a 500.
            self.failures.append(
                Failure(field, expression, f"cannot be evaluated: {type(exc).__name__}")
            )
            return default
        try:
            return convert(value)
        except _Invalid as exc:
            self.failures.append(Failure(field, expression, str(exc)))
            return default


def map_payment(
    name: str,
    source: SourceConfig,
    document: object,
    *,
    platform_tz: ZoneInfo,
    received_at: datetime,
) -> tuple[Payment, list[str]]:
    """The payment and warnings about dropped values; MappingFailed if any field failed."""
    rules, reader, warnings = source.map, _Reader(), []
    zone = ZoneInfo(source.timezone) if source.timezone else platform_tz

    def text(field: str) -> str:
        return reader.read(f"map.{field}", getattr(rules, field), document, _text, "")

    raw_id = reader.read("map.id", rules.id, document, _required_text, "")
    key = f"{name}:{raw_id}"
    if raw_id and not PAYMENT_ID_PATTERN.fullmatch(key):
        reason = f"gives {len(raw_id)} characters; {name}:ID must be {PAYMENT_ID_RULE}"
        reader.failures.append(Failure("map.id", rules.id, reason))
    status = reader.read("map.status", rules.status, document, _required_text, "")
    items = _items(reader, source, document)
    # Configured, it must give the amount: a silent fallback would hide a broken mapping.
    amount = reader.read("map.amount", rules.amount, document, _required_money, None)
    if amount is None:
        amount = sum((item.cost for item in items), Decimal(0))
    raw_time = reader.read("map.paid_at", rules.paid_at, document, _time_text, "")
    paid_at = parse_platform_time(raw_time or None, zone, received_at)
    if raw_time and paid_at == received_at.astimezone(UTC):
        warnings.append("paid_at unparseable: the time received is used")
    user = _User(
        text("first_name") or None,
        text("last_name") or None,
        text("phone") or None,
        text("email") or None,
        text("telegram_id") or None,
        text("telegram_username") or None,
    )
    utm = Utm(
        source=text("utm_source"),
        medium=text("utm_medium"),
        campaign=text("utm_campaign"),
        term=text("utm_term"),
        content=text("utm_content"),
    )
    payment = Payment(
        payment_id=key,
        status=status,
        amount=amount,
        paid_at=paid_at,
        customer=customer_from_user(user, warnings),
        items=items,
        utm=utm,
        invoice_id=text("invoice_id"),
        currency=text("currency"),
        payment_method=text("payment_method"),
        promo_code=text("promo_code"),
        domain=text("domain"),
    )
    if reader.failures:
        raise MappingFailed(reader.failures)
    return payment, warnings


def is_paid(source: SourceConfig, status: str) -> bool:
    # Platforms are not consistent about case, as for the payment route's statuses.
    return status.strip().casefold() in {paid.strip().casefold() for paid in source.paid_statuses}


def _items(reader: _Reader, source: SourceConfig, document: object) -> tuple[PurchaseItem, ...]:
    no_items: list[object] = []
    elements = reader.read("map.items", source.map.items, document, _list, no_items)
    return tuple(_item(reader, source, index, element) for index, element in enumerate(elements))


def _item(reader: _Reader, source: SourceConfig, index: int, element: object) -> PurchaseItem:
    rules = source.item

    def read(field: str, convert: Callable[[object], T], default: T) -> T:
        label = f"item.{field} (items[{index}])"
        return reader.read(label, getattr(rules, field), element, convert, default)

    return PurchaseItem(
        course_name=read("name", _text, ""),
        subject=read("subject", _text, ""),
        direction=read("direction", _text, ""),
        cost=read("cost", _money, None) or Decimal(0),
        number_lessons=read("lessons", _count, None),
    )


# ---- conversions: what a field takes, and why a value is refused ---------------------


def _describe(value: object) -> str:
    # The kind of value, never the value: it may be a customer's phone or e-mail, and
    # failures go into answers, the request log and `crm-bridge show`.
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    return "text"


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Invalid("gives a number that is not finite")
        return str(int(value)) if value.is_integer() else str(value)
    if isinstance(value, str):
        return value.strip()
    raise _Invalid(f"gives {_describe(value)}, not text")


def _required_text(value: object) -> str:
    result = _text(value)
    if not result:
        raise _Invalid("gives nothing" if value is None else "gives empty text")
    return result


def _time_text(value: object) -> str:
    # A number is a Unix time, as some platforms send it.
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, UTC).isoformat()
        except (OverflowError, OSError, ValueError) as exc:
            raise _Invalid(f"gives {_describe(value)}, not a time") from exc
    return _text(value)


def _money(value: object) -> Decimal | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _Invalid(f"gives {_describe(value)}, not an amount")
    try:
        amount = Decimal(str(value).strip().replace(",", "."))
    except InvalidOperation as exc:
        raise _Invalid(f"gives {_describe(value)}, not an amount") from exc
    if not amount.is_finite() or amount < 0 or amount > MAX_MONEY:
        raise _Invalid(f"gives {_describe(value)}: an amount is 0 to {MAX_MONEY}")
    exponent = amount.normalize().as_tuple().exponent
    if isinstance(exponent, int) and exponent < -2:
        raise _Invalid(f"gives {_describe(value)}: at most two decimals")
    return amount


def _required_money(value: object) -> Decimal | None:
    amount = _money(value)
    if amount is None:
        raise _Invalid("gives nothing" if value is None else "gives empty text")
    return amount


def _count(value: object) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit() and len(value.strip()) <= 9:
        return int(value.strip())
    raise _Invalid(f"gives {_describe(value)}, not a whole number")


def _list(value: object) -> list[object]:
    if value is None:
        return []
    if isinstance(value, list):
        return value
    raise _Invalid(f"gives {_describe(value)}, not a list")
