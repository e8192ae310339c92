"""The vocabulary the rest of the bridge speaks: frozen, validated-once values.

Inbound payloads are turned into these by `normalize`; CRM adapters turn their API
records into `Contact` and `Deal`; the flow and the rules only ever see these types.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum


class KeyKind(StrEnum):
    """Identifiers a customer is looked up by, in priority order."""

    TELEGRAM_ID = "telegram_id"
    PHONE = "phone"
    EMAIL = "email"


@dataclass(frozen=True)
class LookupKey:
    kind: KeyKind
    value: str  # normalised: digits for Telegram id, E.164 for phone, lower-case email


@dataclass(frozen=True)
class Customer:
    first_name: str = ""
    last_name: str = ""
    phone: str | None = None  # E.164
    email: str | None = None
    telegram_id: str | None = None
    telegram_username: str | None = None  # without the leading "@"

    @property
    def full_name(self) -> str:
        return " ".join(part for part in (self.first_name, self.last_name) if part)

    def lookup_keys(self) -> tuple[LookupKey, ...]:
        """The customer's identifiers in the priority order of SPEC §3."""
        candidates = (
            (KeyKind.TELEGRAM_ID, self.telegram_id),
            (KeyKind.PHONE, self.phone),
            (KeyKind.EMAIL, self.email),
        )
        return tuple(LookupKey(kind, value) for kind, value in candidates if value)


@dataclass(frozen=True)
class Utm:
    source: str = ""
    medium: str = ""
    campaign: str = ""
    term: str = ""
    content: str = ""
    ym: str = ""


@dataclass(frozen=True)
class PurchaseItem:
    course_name: str
    subject: str
    direction: str  # the platform's "project": ЕГЭ / ОГЭ
    cost: Decimal
    number_lessons: int | None = None


@dataclass(frozen=True)
class Payment:
    payment_id: str
    status: str
    amount: Decimal  # sum of item costs, never the platform's top-level `amount`
    paid_at: datetime  # timezone-aware, UTC
    customer: Customer
    items: tuple[PurchaseItem, ...] = ()
    utm: Utm = field(default_factory=Utm)
    invoice_id: str = ""
    currency: str = ""
    payment_method: str = ""
    promo_code: str = ""
    domain: str = ""

    @property
    def subjects(self) -> tuple[str, ...]:
        """Distinct subject names in item order."""
        return tuple(dict.fromkeys(item.subject for item in self.items if item.subject))

    @property
    def directions(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(item.direction for item in self.items if item.direction))


class FieldKind(StrEnum):
    TEXT = "text"
    NUMBER = "number"
    DATETIME = "datetime"
    DATE = "date"  # a calendar day (an order's installation date), no time, no zone
    SELECT = "select"
    MULTISELECT = "multiselect"


# amoCRM, Pipedrive and Bitrix24 number their enum values; HubSpot names them.
EnumId = int | str
# `datetime` is a subclass of `date`: encoders test for datetime first, or go by `kind`.
FieldValue = str | Decimal | datetime | date | EnumId | tuple[EnumId, ...]


@dataclass(frozen=True)
class FieldUpdate:
    """One custom-field value to write; `value` matches `kind`.

    TEXT → str, NUMBER → Decimal, DATETIME → aware datetime, DATE → date, SELECT → enum id (int),
    MULTISELECT → tuple of enum ids (the whole set is replaced). Enum ids are the CRM's own:
    numbers in amoCRM, Pipedrive and Bitrix24, option names in HubSpot.
    """

    field_id: str
    kind: FieldKind
    value: FieldValue


@dataclass(frozen=True)
class Contact:
    """A contact as a CRM returned it. Values are raw; the flow normalises to compare."""

    id: str
    name: str = ""
    phones: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()
    telegram_id: str = ""
    telegram_username: str = ""
    deal_ids: tuple[str, ...] | None = None  # linked deals when the lookup returned them


@dataclass(frozen=True)
class Deal:
    id: str
    pipeline_id: str
    status_id: str
    updated_at: int  # unix seconds, for "most recently updated"
    price: Decimal = Decimal(0)
    is_deleted: bool = False
    is_closed: bool = False  # won or lost, in the CRM's own terms
    contact_ids: tuple[str, ...] = ()
    fields: Mapping[str, str] = field(default_factory=dict)  # field id → first value as text


@dataclass(frozen=True)
class NewContact:
    customer: Customer
    utm: Utm
    fields: tuple[FieldUpdate, ...] = ()


@dataclass(frozen=True)
class NewDeal:
    name: str
    price: Decimal
    pipeline_id: str
    status_id: str
    fields: tuple[FieldUpdate, ...] = ()
    # Orders of a business customer: the deal, and a contact created with it
    # (`create_contact_and_deal`), are linked to this company. Payments leave it None.
    company_id: str | None = None


@dataclass(frozen=True)
class ContactPatch:
    """Custom fields to fill on an existing contact (only ones that were empty)."""

    fields: tuple[FieldUpdate, ...]


@dataclass(frozen=True)
class DealResult:
    """What one delivery achieved in one CRM; becomes the 200 body and the audit row."""

    contact_id: str
    deal_id: str
    deal_created: bool
    pipeline_id: str


@dataclass(frozen=True)
class Journal:
    """What one delivery has done in its CRM so far (SPEC §3), so a retry resumes there.

    The store keeps one row per step (`steps` / `from_steps`): `contact`, `deal` (with
    whether it was created), `fields` (the payment's deal fields are written) and `note`.
    A journal passed to the store's `record_steps` holds only the steps just completed.
    """

    contact_id: str | None = None
    deal: DealResult | None = None
    fields: bool = False
    note: bool = False

    @property
    def is_empty(self) -> bool:
        return self == Journal()

    def steps(self) -> dict[str, object]:
        rows: dict[str, object] = {}
        if self.contact_id is not None:
            rows["contact"] = {"id": self.contact_id}
        if self.deal is not None:
            rows["contact"] = {"id": self.deal.contact_id}
            rows["deal"] = {
                "id": self.deal.deal_id,
                "created": self.deal.deal_created,
                "pipeline_id": self.deal.pipeline_id,
            }
        if self.fields:
            rows["fields"] = True
        if self.note:
            rows["note"] = True
        return rows

    @classmethod
    def from_steps(cls, rows: Mapping[str, object]) -> Journal:
        """Read what the store kept; a step of an unexpected shape counts as not done."""
        contact, deal = rows.get("contact"), rows.get("deal")
        contact_id = str(contact["id"]) if isinstance(contact, dict) and contact.get("id") else None
        result = None
        if isinstance(deal, dict) and deal.get("id"):
            result = DealResult(
                contact_id=contact_id or "",
                deal_id=str(deal["id"]),
                deal_created=bool(deal.get("created")),
                pipeline_id=str(deal.get("pipeline_id") or ""),
            )
        return cls(contact_id, result, rows.get("fields") is True, rows.get("note") is True)


@dataclass(frozen=True)
class KnownRefs:
    """Where a customer's last successful payment went in one CRM."""

    contact_id: str
    deal_id: str
    identity: str  # the customer's identifiers then; if they changed, search again
    customer_keys: tuple[str, ...] = ()


class OrderEventKind(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    CANCELLED = "cancelled"


class OrderStatus(StrEnum):
    """The rental platform's order statuses; each maps to a CRM stage per section."""

    NEW = "new"
    RESERVED = "reserved"
    IN_RENT = "in_rent"
    IN_PROGRESS = "in_progress"
    ARCHIVED = "archived"
    CANCELLED = "cancelled"


class CustomerType(StrEnum):
    PERSON = "person"
    BUSINESS = "business"


@dataclass(frozen=True)
class Company:
    """A business customer's company (found by INN, then by exact name)."""

    name: str
    inn: str = ""  # digits only: 10 for a company, 12 for a sole trader
    phone: str | None = None  # E.164
    email: str | None = None  # lower-case


@dataclass(frozen=True)
class CompanyRecord:
    """A company as a CRM returned it; values raw, the flow normalises to compare."""

    id: str
    name: str = ""
    inn: str = ""


@dataclass(frozen=True)
class OrderItem:
    product_id: str  # the platform's product id (SKU): how a CRM product is found again
    name: str
    quantity: Decimal
    price: Decimal  # per unit

    @property
    def total(self) -> Decimal:
        return self.quantity * self.price


@dataclass(frozen=True)
class Order:
    """One order event of the rental platform (SPEC §8), validated once at intake."""

    order_id: str
    event: OrderEventKind
    status: OrderStatus
    updated_at: datetime  # timezone-aware, UTC; orders the events of one order
    total: Decimal
    customer: Customer
    customer_type: CustomerType = CustomerType.PERSON
    company: Company | None = None
    items: tuple[OrderItem, ...] = ()
    currency: str = ""
    installation_date: date | None = None
    dismantle_date: date | None = None
    delivery_method: str = ""
    delivery_address: str = ""
    comment: str = ""
    source: str = ""

    @property
    def effective_status(self) -> OrderStatus:
        """A `cancelled` event cancels whatever status the body carries."""
        if self.event is OrderEventKind.CANCELLED:
            return OrderStatus.CANCELLED
        return self.status


@dataclass(frozen=True)
class DealChange:
    """What an order event changes on its existing deal, in one write where the CRM allows.

    `pipeline_id`/`status_id` (both or neither) move the deal to the stage its order status
    maps to; a status the CRM models as an outcome rather than a stage (Pipedrive's lost,
    Odoo's archived-with-reason) is the adapter's to translate. None leaves a value alone.
    """

    pipeline_id: str | None = None
    status_id: str | None = None
    price: Decimal | None = None
    name: str | None = None
    fields: tuple[FieldUpdate, ...] = ()
