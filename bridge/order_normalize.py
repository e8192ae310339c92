"""Pure translation of a validated order body into the domain `Order` (SPEC §8).

The customer is normalised exactly as a payment's (`normalize.customer_from_user`): E.164
phones, lower-case e-mails. `updated_at` without a zone is in the platform's zone; it
becomes aware UTC, and with the order id it makes the event's dedup key.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from bridge.domain import (
    Company,
    CustomerType,
    Order,
    OrderEventKind,
    OrderItem,
    OrderStatus,
)
from bridge.normalize import customer_from_user, normalize_email, normalize_phone
from bridge.order_payloads import OrderCompanyPayload, OrderWebhook


def order_updated_at(raw: str, platform_tz: ZoneInfo) -> datetime:
    """`updated_at` (validated ISO 8601 by the payload model) as aware UTC."""
    parsed = datetime.fromisoformat(raw.strip())
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=platform_tz)
    return parsed.astimezone(UTC)


def order_stamp(updated_at: datetime) -> str:
    """`updated_at` as fixed-width UTC text: two stamps compare as their texts do."""
    return updated_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def order_event_key(order_id: str, updated_at: datetime) -> str:
    """The dedup key of an order event (SPEC §8: order id + updated_at), also the
    note's marker: `ord_1042@2026-11-20T07:15:00Z` (microseconds only when given)."""
    moment = updated_at.astimezone(UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}"
    return f"{order_id}@{text}Z"


def order_from_webhook(webhook: OrderWebhook, platform_tz: ZoneInfo) -> tuple[Order, list[str]]:
    """The domain order, and warnings about values that were dropped."""
    body = webhook.order
    warnings: list[str] = []
    customer = customer_from_user(body.customer, warnings)
    business = body.customer.type == "business"
    company = _company(body.customer.company, warnings) if business else None
    items = tuple(
        OrderItem(
            product_id=item.product_id,
            name=item.name.strip() or item.product_id,
            quantity=item.quantity,
            price=item.price,
        )
        for item in body.items
    )
    order = Order(
        order_id=body.id,
        event=OrderEventKind(webhook.event),
        status=OrderStatus(body.status),
        updated_at=order_updated_at(body.updated_at, platform_tz),
        total=body.total_amount,
        customer=customer,
        customer_type=CustomerType.BUSINESS if business else CustomerType.PERSON,
        company=company,
        items=items,
        currency=body.currency.strip().upper(),
        installation_date=body.installation_date,
        dismantle_date=body.dismantle_date,
        delivery_method=body.delivery_method.strip(),
        delivery_address=body.delivery_address.strip(),
        comment=body.comment.strip(),
        source=body.source.strip(),
    )
    return order, warnings


def _company(payload: OrderCompanyPayload | None, warnings: list[str]) -> Company | None:
    if payload is None:  # the payload model refuses a business customer without one
        return None
    phone = normalize_phone(payload.phone)
    if phone is None and (payload.phone or "").strip():
        warnings.append("company phone dropped: unparseable")
    email = normalize_email(payload.email)
    if email is None and (payload.email or "").strip():
        warnings.append("company email dropped: no '@'")
    return Company(name=" ".join(payload.name.split()), inn=payload.inn, phone=phone, email=email)
