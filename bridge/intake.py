"""From a verified request body to the event the store keeps, and back again.

The stored payload is the raw body exactly as received; the worker normalises it again
on every attempt, so a fix to normalisation applies to events already queued.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from bridge import rules
from bridge.domain import Customer, Payment
from bridge.normalize import payment_from_webhook
from bridge.payloads import PaymentWebhook, parse_payment
from bridge.settings import Settings
from bridge.store import NewEvent


@dataclass(frozen=True)
class PaymentIntake:
    event: NewEvent
    payment: Payment
    warnings: tuple[str, ...]


def payment_intake(
    webhook: PaymentWebhook, body_text: str, settings: Settings, received_at: datetime
) -> PaymentIntake:
    payment, warnings = payment_from_webhook(
        webhook, platform_tz=ZoneInfo(settings.platform_timezone), received_at=received_at
    )
    skip_reason = rules.should_process(payment, settings.file.payment)
    crms = tuple(name for name, crm in settings.file.crm.items() if crm.enabled)
    event = NewEvent(
        kind="payment",
        key=payment.payment_id,
        status="skipped" if skip_reason else "pending",
        amount=str(payment.amount),
        customer_keys=customer_keys(payment.customer),
        payload=body_text,
        crms=crms,
        note=skip_reason or "",
    )
    return PaymentIntake(event, payment, tuple(warnings))


def payment_from_stored(payload: str, received_at: str, settings: Settings) -> Payment:
    received = datetime.strptime(received_at, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)
    webhook = parse_payment(json.loads(payload))
    payment, _ = payment_from_webhook(
        webhook, platform_tz=ZoneInfo(settings.platform_timezone), received_at=received
    )
    return payment


def customer_keys(customer: Customer) -> tuple[str, ...]:
    """Keys that serialise a customer's events in one CRM (SPEC §3 per-customer order)."""
    return tuple(f"{key.kind.value}:{key.value}" for key in customer.lookup_keys())


def customer_identity(customer: Customer) -> str:
    """Everything the contact lookup and fill depend on; equal identities find the
    same contact, so a remembered contact may be reused instead of searched."""
    parts = (*customer_keys(customer), f"telegram_username:{customer.telegram_username or ''}")
    return "|".join(parts)
