"""What the store returns and takes: plain frozen records, no SQL."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

# Live webhooks go before a historic import's backlog in the delivery queue.
PRIORITY_LIVE = 0
PRIORITY_BACKFILL = 1

# Events a repeated webhook does not touch: done, or excluded by the rules.
SETTLED_STATUSES = ("success", "skipped")


def utc_text(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


@dataclass(frozen=True)
class RequestRecord:
    route: str
    remote_addr: str
    verdict: str
    http_status: int
    event_key: str | None = None
    detail: str = ""


# The skip reason of an order event older than one already received (SPEC §8): stored,
# answered 202 {"status": "stale"}, delivered nowhere.
STALE_PREFIX = "stale: "


@dataclass(frozen=True)
class OrderStamp:
    """Which order an order event is of, and its `updated_at` as fixed-width UTC text
    (`order_normalize.order_stamp`): intake compares it with the newest received."""

    order_id: str
    updated_at: str


@dataclass(frozen=True)
class NewEvent:
    kind: str
    key: str
    status: str  # "pending" or "skipped"
    amount: str
    customer_keys: tuple[str, ...]
    payload: str
    crms: tuple[str, ...]
    note: str = ""  # skip reason
    order: OrderStamp | None = None  # order events only


@dataclass(frozen=True)
class IntakeResult:
    event_id: int
    created: bool  # False: the key was already known
    status: str  # the event's status before this request (or "pending"/"skipped" if new)
    # A known, skipped event that this request moved to a new state (its status changed,
    # e.g. PENDING then CONFIRMED): stored and processed like a new event (`created`).
    state_changed: bool = False
    # An order event older than the newest received for its order: stored as skipped.
    stale: bool = False


@dataclass(frozen=True)
class DeliveryJob:
    delivery_id: int
    event_id: int
    crm: str
    attempts: int  # including the one just claimed
    kind: str
    key: str
    payload: str
    customer_keys: tuple[str, ...]
    received_at: str


@dataclass(frozen=True)
class DueSlice:
    jobs: tuple[DeliveryJob, ...]
    next_due_at: float | None  # earliest future attempt among deliveries free to run


@dataclass(frozen=True)
class DeliveryOutcome:
    crm: str
    status: str
    contact_id: str | None
    deal_id: str | None
    deal_created: bool | None
    pipeline_id: str | None
    last_error: str | None
    crm_calls: int
    attempts: int
    next_attempt_at: float


@dataclass(frozen=True)
class EventView:
    id: int
    kind: str
    key: str
    status: str
    amount: str | None
    payload: str
    received_at: str
    processed_at: str | None
    error_message: str | None
    deliveries: tuple[DeliveryOutcome, ...] = ()


@dataclass(frozen=True)
class CrmState:
    crm: str
    paused_reason: str | None
    last_success_at: str | None
    last_error: str | None
    last_error_at: str | None


@dataclass(frozen=True)
class QueueStats:
    depth: int
    oldest_pending_at: float | None  # unix seconds of the oldest due-or-waiting delivery


@dataclass(frozen=True)
class CrmStats:
    """One CRM's deliveries for `crm-bridge stats`."""

    crm: str
    deliveries: Mapping[str, int]  # delivery status → count
    calls: int  # CRM calls made, all deliveries and attempts
    success_calls: int  # CRM calls made by deliveries that succeeded
    last_success_at: str | None


@dataclass(frozen=True)
class OperatorStats:
    events: Mapping[str, int]  # event status → count
    crms: tuple[CrmStats, ...]
    last_success_at: str | None


@dataclass(frozen=True)
class EventSummary:
    """One line of `crm-bridge events`."""

    key: str
    status: str
    amount: str | None
    received_at: str
    processed_at: str | None
    error_message: str | None
    deliveries: tuple[tuple[str, str], ...]  # (crm, delivery status)
    paid_at: str | None = None  # the payment's own time (platform zone), from its body


@dataclass(frozen=True)
class JournalEntry:
    crm: str
    step: str
    value: str  # JSON text
    at: str


@dataclass(frozen=True)
class RequestRow:
    received_at: str
    route: str
    remote_addr: str
    verdict: str
    http_status: int
    detail: str


@dataclass(frozen=True)
class OrderLink:
    """Order → deal in one CRM, kept by the bridge, and what was last applied there: the
    next event's note says what changed since (status from → to, amount, items)."""

    crm: str
    order_id: str
    contact_id: str
    company_id: str | None
    deal_id: str
    pipeline_id: str
    status: str  # the order status last applied
    total: str
    items: tuple[tuple[str, str, str, str], ...]  # (product id, name, quantity, price)
    applied: str  # `OrderStamp.updated_at` of the event last applied
    event_key: str
