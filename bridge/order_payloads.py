"""Pydantic models of the inbound order body (SPEC §8): the boundary, nothing else.

Lenient like `payloads` where platforms are sloppy (unknown fields ignored, whole numbers
taken as text, a null item list is empty), strict where the bridge cannot work without a
value: the order id and `updated_at` (together the dedup key, and `updated_at` orders an
order's events), `event`, `status`, each item's product id, quantity and price, and a
business customer's company. Meaning (phones, INN digits, zones) is `order_normalize`'s.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from bridge.payloads import Money, RequiredId, Text, unstorable_values

# A rental order's line: at most a million units, to three decimals (metres of fabric).
Quantity = Annotated[Decimal, Field(gt=0, le=10**6, decimal_places=3, allow_inf_nan=False)]


def _aware_or_naive_time(value: str) -> str:
    text = value.strip()
    try:
        datetime.fromisoformat(text)
    except ValueError:
        raise PydanticCustomError(
            "order_time", "updated_at must be an ISO 8601 date and time"
        ) from None
    return text


def _inn_digits(value: str) -> str:
    digits = "".join(value.split())
    if digits and not (digits.isascii() and digits.isdigit() and len(digits) in (10, 12)):
        raise PydanticCustomError("inn", "inn must be 10 (a company) or 12 (a sole trader) digits")
    return digits


OrderTime = Annotated[str, AfterValidator(_aware_or_naive_time)]
Inn = Annotated[Text, AfterValidator(_inn_digits)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class OrderCompanyPayload(_Model):
    name: Annotated[Text, Field(min_length=1)]
    inn: Inn = ""
    phone: Text | None = None
    email: Text | None = None


class OrderCustomerPayload(_Model):
    type: Literal["person", "business"] = "person"
    first_name: Text | None = None
    last_name: Text | None = None
    phone: Text | None = None
    email: Text | None = None
    telegram_id: Text | None = None
    telegram_tag: Text | None = None
    tags: list[Text] = Field(default_factory=list)
    company: OrderCompanyPayload | None = None

    @field_validator("tags", mode="before")
    @classmethod
    def _null_tags(cls, value: object) -> object:
        return [] if value is None else value

    @model_validator(mode="after")
    def _business_has_company(self) -> OrderCustomerPayload:
        if self.type == "business" and self.company is None:
            raise PydanticCustomError("company", "company is required for a business customer")
        return self


class OrderItemPayload(_Model):
    product_id: RequiredId
    name: Text = ""
    quantity: Quantity
    price: Money


class OrderPayload(_Model):
    id: RequiredId
    status: Literal["new", "reserved", "in_rent", "in_progress", "archived", "cancelled"]
    updated_at: OrderTime
    total_amount: Money
    currency: Text = ""
    installation_date: date | None = None
    dismantle_date: date | None = None
    delivery_method: Text = ""
    delivery_address: Text = ""
    comment: Text = ""
    source: Text = ""
    customer: OrderCustomerPayload
    items: list[OrderItemPayload] = Field(default_factory=list)

    @field_validator("items", mode="before")
    @classmethod
    def _null_is_empty(cls, value: object) -> object:
        return [] if value is None else value

    @field_validator(
        "currency", "delivery_method", "delivery_address", "comment", "source", mode="before"
    )
    @classmethod
    def _null_is_blank(cls, value: object) -> object:
        return "" if value is None else value


class OrderWebhook(_Model):
    event: Literal["created", "updated", "cancelled"]
    order: OrderPayload


def parse_order(raw: object) -> OrderWebhook:
    """Validate a decoded JSON body; raises pydantic's ValidationError only."""
    problems = unstorable_values(raw)
    if problems:
        raise ValidationError.from_exception_data("OrderWebhook", problems)
    return OrderWebhook.model_validate(raw)
