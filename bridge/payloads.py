"""Pydantic models of the inbound payment body (SPEC §4): the boundary, nothing else.

Only shape is checked here; meaning (phones, zones, sums) is `normalize`'s job. The models
are lenient where platforms are sloppy — unknown fields are ignored, whole numbers are
accepted where text is expected, a null item list is an empty one — and strict only where
the bridge cannot work without a value: `payment_id` (the dedup key), `status`, `user`
and each item's `cost`.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

# Money (an item's cost, the order's amount): at most two decimals and at most a billion
# in the account's currency — far above any course, far below where a CRM's float-based
# number fields start losing kopecks (2^53). 1e308, 4 000 digits or 0.001 is no price.
MAX_MONEY = 10**9
Money = Annotated[Decimal, Field(ge=0, le=MAX_MONEY, decimal_places=2, allow_inf_nan=False)]


def _whole_number_as_text(value: object) -> object:
    # bool is an int subclass, but `true` is no identifier.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


# What a payment id may hold: it is the dedup key, goes into every log line of its event
# and into CRM searches and notes, so a newline, an ANSI escape or a megabyte of it must
# never get in. Platform ids are short ASCII tokens (`pay_123456`, numbers, UUIDs).
PAYMENT_ID_PATTERN = re.compile(r"[A-Za-z0-9_.:/+=@-]{1,128}")
PAYMENT_ID_RULE = "1 to 128 characters, each a letter A-Z or a-z, a digit or one of _ . : / + = @ -"


def _payment_id_charset(value: str) -> str:
    if not PAYMENT_ID_PATTERN.fullmatch(value):
        raise PydanticCustomError("payment_id_charset", "payment_id must be " + PAYMENT_ID_RULE)
    return value


Text = Annotated[str, BeforeValidator(_whole_number_as_text)]
RequiredId = Annotated[
    str,
    # Constraints before the validator: pydantic skips min_length when they come after.
    StringConstraints(strip_whitespace=True, min_length=1),
    BeforeValidator(_whole_number_as_text),
    AfterValidator(_payment_id_charset),
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Subject(_Model):
    name: Text | None = None
    project: Text | None = None  # the direction: ЕГЭ / ОГЭ


class Course(_Model):
    name: Text | None = None
    subject: Subject | None = None


class Item(_Model):
    cost: Money
    number_lessons: int | None = None
    package_id: Any = None
    course: Course | None = None


class User(_Model):
    first_name: Text | None = None
    last_name: Text | None = None
    phone: Text | None = None
    email: Text | None = None
    telegram_id: Text | None = None
    telegram_tag: Text | None = None


class Utm(_Model):
    source: Text | None = None
    medium: Text | None = None
    compaign: Text | None = None  # sic: the platform's spelling
    campaign: Text | None = None
    term: Text | None = None
    content: Text | None = None
    ym: Text | None = None


class CourseOrder(_Model):
    status: Text
    amount: Money | None = None  # not used: the amount is the sum of item costs
    created_at: Text | None = None
    updated_at: Text | None = None
    code: Text | None = None  # promo code
    payment_id: RequiredId
    invoice_id: Text | None = None
    payment_method: Text | None = None
    currency: Text | None = None
    course_order_items: list[Item] = Field(default_factory=list)
    user: User
    utm: Utm | None = None
    domain: Text | None = None

    @field_validator("course_order_items", mode="before")
    @classmethod
    def _null_is_empty(cls, value: object) -> object:
        return [] if value is None else value


class PaymentWebhook(_Model):
    course_order: CourseOrder


def parse_payment(raw: object) -> PaymentWebhook:
    """Validate a decoded JSON body; raises pydantic's ValidationError only."""
    problems = unstorable_values(raw)
    if problems:
        raise ValidationError.from_exception_data("PaymentWebhook", problems)
    return PaymentWebhook.model_validate(raw)


def unstorable_values(raw: object) -> list[InitErrorDetails]:
    """Values no field may hold, wherever they are (the whole body is stored, known
    fields or not): text with a lone UTF-16 surrogate (`"\\ud83d"`, what a JavaScript
    platform sends when it cuts an emoji in half: not Unicode, so neither SQLite nor a
    CRM's JSON takes it), and numbers that are not finite (`NaN`, `Infinity`, `1e999`:
    not JSON, and they would make every `json_extract` over the stored body fail)."""
    problems: list[InitErrorDetails] = []
    stack: list[tuple[tuple[str | int, ...], object]] = [((), raw)]
    while stack:
        loc, value = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, str) and not _is_unicode(key):
                    problems.append(_problem(loc, _BAD_TEXT, "a field name"))
                stack.append(((*loc, key), item))
        elif isinstance(value, list):
            stack.extend(((*loc, index), item) for index, item in enumerate(value))
        elif isinstance(value, str):
            if not _is_unicode(value):
                problems.append(_problem(loc, _BAD_TEXT, "text"))
        elif isinstance(value, float) and not math.isfinite(value):
            problems.append(_problem(loc, _NOT_FINITE, "number"))
    return sorted(problems, key=lambda problem: [str(part) for part in problem["loc"]])


_BAD_TEXT = "{what} is not valid Unicode (a lone UTF-16 surrogate)"
_NOT_FINITE = "{what} is not finite (NaN or Infinity)"


def _is_unicode(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _problem(loc: tuple[str | int, ...], template: str, what: str) -> InitErrorDetails:
    return {
        "type": PydanticCustomError("unstorable_value", template, {"what": what}),
        "loc": loc,
        "input": None,
    }


def validation_details(exc: ValidationError) -> list[dict[str, str]]:
    """The errors of `exc` for a 422 body: dotted field path and message, never the input."""
    return [
        {
            "field": ".".join(str(part) for part in error["loc"]) or "body",
            "error": error["msg"],
        }
        for error in exc.errors(include_url=False, include_input=False)
    ]
