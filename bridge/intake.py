"""From a verified request body to the event the store keeps, and back again.

The stored payload is the raw body exactly as received; the worker normalises it again
on every attempt, so a fix to normalisation applies to events already queued. Intake
normalises only what storing needs: the customer's keys (per-customer order) and the
amount and status (the audit view, the exclusion rules).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol
from zoneinfo import ZoneInfo

from bridge import rules
from bridge.domain import Customer, Order, Payment
from bridge.normalize import (
    CostedItem,
    UserFields,
    customer_from_user,
    payment_amount,
    payment_from_webhook,
)
from bridge.order_normalize import order_event_key, order_from_webhook, order_stamp
from bridge.order_payloads import OrderWebhook, parse_order
from bridge.payloads import parse_payment
from bridge.settings import Settings
from bridge.store import NewEvent, OrderStamp


@dataclass(frozen=True)
class PaymentIntake:
    event: NewEvent
    warnings: tuple[str, ...]  # about the customer's identifiers


class OrderFields(Protocol):
    """A payment body's order, as `payloads` or `canonical` read it."""

    @property
    def payment_id(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def course_order_items(self) -> Sequence[CostedItem]: ...
    @property
    def user(self) -> UserFields: ...


def payment_intake(order: OrderFields, body_text: str, settings: Settings) -> PaymentIntake:
    """What the store needs to take the event: key, status, amount, customer keys.

    The rest of normalisation (times, items, UTM) is the worker's, on every attempt."""
    warnings: list[str] = []
    customer = customer_from_user(order.user, warnings)
    skip_reason = rules.should_process(order.status, settings.file.payment)
    event = NewEvent(
        kind="payment",
        key=order.payment_id,
        status="skipped" if skip_reason else "pending",
        amount=str(payment_amount(order.course_order_items)),
        customer_keys=customer_keys(customer),
        payload=body_text,
        crms=settings.enabled_crms,
        note=skip_reason or "",
    )
    return PaymentIntake(event, tuple(warnings))


@dataclass(frozen=True)
class OrderIntake:
    event: NewEvent
    order: Order
    warnings: tuple[str, ...]


# Why an order event gets no delivery anywhere (`crm-bridge show` and the 202 say so).
NO_ORDER_CRM = "no enabled CRM section has order_stages: orders are delivered nowhere"


def order_intake(webhook: OrderWebhook, body_text: str, settings: Settings) -> OrderIntake:
    """What the store needs to take an order event: key, amount, ordering keys.

    One delivery per CRM that takes orders (a section with `order_stages`); the others
    get none. Its events wait for the order's earlier ones (`order:<id>`), and for the
    company's (`inn:…`), so two orders of one new company do not both create it."""
    order, warnings = order_from_webhook(webhook, ZoneInfo(settings.platform_timezone))
    crms = settings.order_crms
    keys = [*customer_keys(order.customer), f"order:{order.order_id}"]
    if order.company is not None:
        keys.append(f"company:{order.company.inn or order.company.name.casefold()}")
    event = NewEvent(
        kind="order",
        key=order_event_key(order.order_id, order.updated_at),
        status="pending" if crms else "skipped",
        amount=str(order.total),
        customer_keys=tuple(keys),
        payload=body_text,
        crms=crms,
        note="" if crms else NO_ORDER_CRM,
        order=OrderStamp(order.order_id, order_stamp(order.updated_at)),
    )
    return OrderIntake(event, order, tuple(warnings))


def order_from_stored(payload: str, settings: Settings) -> tuple[Order, list[str]]:
    """The stored order event, normalised again (as payments are, on every attempt)."""
    return order_from_webhook(
        parse_order(json.loads(payload)), ZoneInfo(settings.platform_timezone)
    )


def payment_from_stored(
    payload: str, received_at: str, settings: Settings
) -> tuple[Payment, list[str]]:
    """The stored event's payment, normalised, and what normalisation had to drop."""
    received = datetime.strptime(received_at, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)
    webhook = parse_payment(json.loads(payload))
    return payment_from_webhook(
        webhook, platform_tz=ZoneInfo(settings.platform_timezone), received_at=received
    )


def customer_keys(customer: Customer) -> tuple[str, ...]:
    """Keys that serialise a customer's events in one CRM (SPEC §3 per-customer order)."""
    return tuple(f"{key.kind.value}:{key.value}" for key in customer.lookup_keys())


def customer_identity(customer: Customer) -> str:
    """Everything the contact lookup and fill depend on; equal identities find the
    same contact, so a remembered contact may be reused instead of searched."""
    parts = (*customer_keys(customer), f"telegram_username:{customer.telegram_username or ''}")
    return "|".join(parts)
