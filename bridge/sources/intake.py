"""A source's request → the event the store keeps, and the stored event → its payment."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from bridge.domain import Payment
from bridge.intake import customer_keys
from bridge.settings import Settings
from bridge.sources.body import BodyError, decode_body
from bridge.sources.config import SourceConfig
from bridge.sources.mapping import Failure, MappingFailed, is_paid, map_payment
from bridge.store import NewEvent

__all__ = [
    "BodyError",
    "Failure",
    "MappingFailed",
    "SourceIntake",
    "UnknownSource",
    "decode_body",
    "payment_from_source",
    "source_intake",
]


class UnknownSource(Exception):
    """A stored event's source is no longer configured."""


@dataclass(frozen=True)
class SourceIntake:
    event: NewEvent
    payment: Payment
    warnings: tuple[str, ...]


def source_intake(
    name: str,
    source: SourceConfig,
    document: object,
    body_text: str,
    settings: Settings,
    received_at: datetime,
) -> SourceIntake:
    """The event to store for a decoded body; MappingFailed when the mapping cannot read it."""
    payment, warnings = map_payment(
        name,
        source,
        document,
        platform_tz=ZoneInfo(settings.platform_timezone),
        received_at=received_at,
    )
    paid = is_paid(source, payment.status)
    note = "" if paid else f"status {payment.status} is not paid for source {name}"
    event = NewEvent(
        kind="payment",
        key=payment.payment_id,
        status="pending" if paid else "skipped",
        amount=str(payment.amount),
        customer_keys=customer_keys(payment.customer),
        payload=body_text,
        crms=settings.enabled_crms,
        note=note,
        source=name,
    )
    return SourceIntake(event, payment, tuple(warnings))


def payment_from_source(
    name: str, payload: str, received_at: str, settings: Settings
) -> tuple[Payment, list[str]]:
    """A stored source event's payment, mapped again with the mapping in force now."""
    source = settings.file.source.get(name)
    if source is None:
        raise UnknownSource(f"source {name!r} is no longer configured ([source.{name}])")
    received = datetime.strptime(received_at, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)
    document = decode_body(source.format, payload)
    return map_payment(
        name,
        source,
        document,
        platform_tz=ZoneInfo(settings.platform_timezone),
        received_at=received,
    )
