"""Pure business rules of the payment flow (SPEC §3–§6), over domain types and config.

Which payments are processed, which pipeline a new deal goes to, whether a search hit
really is the customer, which open deal is reused, which deal and contact fields change,
and the text of the deal name and of the note. No I/O, no clock.

Templates use ``{name}`` placeholders only (no format specs). An unknown placeholder is
left in the text as it is, so a typo shows in the CRM instead of failing the delivery;
`template_problems` lets `crm-bridge check` catch it earlier. In the note, a line whose
placeholders are all empty is left out, and so is a static header line ending in ":"
whose following line was left out ("Курсы:" without courses). `{client_name}` is the
full name in the note (the phone has its own line there) but falls back to the phone or
email in the deal name, which must name someone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC
from decimal import Decimal, InvalidOperation
from string import Formatter
from zoneinfo import ZoneInfo

from bridge.domain import (
    Contact,
    Customer,
    Deal,
    EnumId,
    FieldKind,
    FieldUpdate,
    KeyKind,
    LookupKey,
    Payment,
    Utm,
)
from bridge.normalize import normalize_email, normalize_phone, normalize_telegram_id
from bridge.settings import CrmConfig, PaymentRules, PipelineTarget

DEAL_NAME_PLACEHOLDERS = frozenset(
    {
        "subject",
        "client_name",
        "payment_id",
        "amount",
        "currency",
        "status",
        "payment_method",
        "promo_code",
        "invoice_id",
        "utm_source",
        "utm_medium",
        "utm_campaign",
        "phone",
        "email",
        "domain",
    }
)
NOTE_PLACEHOLDERS = DEAL_NAME_PLACEHOLDERS | {
    "paid_at_local",
    "display_timezone_label",
    "paid_at_utc",
    "courses",
    "contacts_line",
}
_PAYMENT_ID_LABEL = "Payment ID: "


def should_process(status: str, rules: PaymentRules) -> str | None:
    """None when a payment in `status` is processed, else why it is skipped."""
    # Platforms are not consistent about case; "confirmed" means CONFIRMED.
    processed = {known.strip().casefold() for known in rules.processed_statuses}
    if status.strip().casefold() in processed:
        return None
    return f"status {status.strip() or '(empty)'} is not processed"


def choose_pipeline(utm: Utm, crm: CrmConfig) -> PipelineTarget:
    """Pipeline and status of a new deal: the first rule whose UTM field matches wins."""
    fields = {
        "source": utm.source,
        "medium": utm.medium,
        "campaign": utm.campaign,
        "term": utm.term,
        "content": utm.content,
    }
    for rule in crm.pipeline_rules:
        value = fields[rule.utm_field].casefold()
        if value and any(needle and needle.casefold() in value for needle in rule.contains):
            return PipelineTarget(
                pipeline_id=rule.pipeline_id, status_id=rule.status_id, name=rule.name
            )
    return crm.default_pipeline


def contact_matches(contact: Contact, key: LookupKey, telegram_field_present: bool = True) -> bool:
    """Whether a full-text search hit really carries `key` (CRM searches match substrings).

    Without a Telegram id field in the CRM a hit can never be confirmed by Telegram id.
    """
    if key.kind is KeyKind.PHONE:
        wanted = normalize_phone(key.value)
        return wanted is not None and any(normalize_phone(p) == wanted for p in contact.phones)
    if key.kind is KeyKind.EMAIL:
        wanted = normalize_email(key.value)
        return wanted is not None and any(normalize_email(e) == wanted for e in contact.emails)
    if not telegram_field_present:
        return False
    wanted = normalize_telegram_id(key.value)
    return wanted is not None and normalize_telegram_id(contact.telegram_id) == wanted


def choose_open_deal(deals: Sequence[Deal], crm: CrmConfig) -> Deal | None:
    """The most recently updated deal that is not deleted, closed or in an excluded status."""
    skipped = set(crm.closed_status_ids) | set(crm.excluded_status_ids)
    candidates = [
        deal
        for deal in deals
        if not deal.is_deleted and not deal.is_closed and deal.status_id not in skipped
    ]
    return max(candidates, key=recency, default=None)


def deal_carrying_payment(deals: Sequence[Deal], crm: CrmConfig, payment_id: str) -> Deal | None:
    """The deal whose payment-id field already holds `payment_id`, in any status.

    A retry after a crash between a CRM write and the journal finds its own deal this way.
    None when the CRM has no payment-id field configured.
    """
    field_id = crm.deal_fields.payment_id
    if not field_id:
        return None
    carrying = [
        deal
        for deal in deals
        if not deal.is_deleted and deal.fields.get(field_id, "").strip() == payment_id
    ]
    return max(carrying, key=recency, default=None)


def deal_field_updates(
    payment: Payment, current: Mapping[str, str], crm: CrmConfig, display_tz: ZoneInfo
) -> tuple[tuple[FieldUpdate, ...], list[str]]:
    """Every configured deal field's new value, and warnings for what was skipped.

    `current` holds the deal's present values (field id → text) for the increments. The
    date/time is given in `display_tz` (the same instant) for CRMs that store local time.
    """
    ids = crm.deal_fields
    updates: list[FieldUpdate] = []
    warnings: list[str] = []
    if ids.subjects:
        enum_ids: list[EnumId] = []
        for subject in payment.subjects:
            enum_id = _enum_id(crm.subjects, subject)
            if enum_id is None:
                warnings.append(f"subject {subject!r} is not in the subject mapping: skipped")
            else:
                enum_ids.append(enum_id)
        if enum_ids:
            distinct = tuple(dict.fromkeys(enum_ids))
            updates.append(FieldUpdate(ids.subjects, FieldKind.MULTISELECT, distinct))
    if ids.direction:
        mapped = [_enum_id(crm.directions, direction) for direction in payment.directions]
        direction_id = next((enum_id for enum_id in mapped if enum_id is not None), None)
        if direction_id is not None:
            updates.append(FieldUpdate(ids.direction, FieldKind.SELECT, direction_id))
        elif payment.directions:
            names = ", ".join(repr(name) for name in payment.directions)
            warnings.append(f"direction {names} is not in the direction mapping: skipped")
    if ids.last_payment_amount:
        updates.append(FieldUpdate(ids.last_payment_amount, FieldKind.NUMBER, payment.amount))
    if ids.last_payment_at:
        paid_at = payment.paid_at.astimezone(display_tz)
        updates.append(FieldUpdate(ids.last_payment_at, FieldKind.DATETIME, paid_at))
    if ids.invoice_id and payment.invoice_id:
        updates.append(FieldUpdate(ids.invoice_id, FieldKind.TEXT, payment.invoice_id))
    if ids.total_paid:
        total = _current_number(current, ids.total_paid, "total_paid", warnings)
        updates.append(FieldUpdate(ids.total_paid, FieldKind.NUMBER, total + payment.amount))
    if ids.purchase_count:
        count = _current_number(current, ids.purchase_count, "purchase_count", warnings)
        updates.append(FieldUpdate(ids.purchase_count, FieldKind.NUMBER, count + 1))
    utm = payment.utm
    for field_id, text in (
        (ids.utm_source, utm.source),
        (ids.utm_medium, utm.medium),
        (ids.utm_campaign, utm.campaign),
        (ids.utm_term, utm.term),
        (ids.utm_content, utm.content),
    ):
        if field_id and text:
            updates.append(FieldUpdate(field_id, FieldKind.TEXT, text))
    # Last: it is the marker that the rest was applied, should an adapter split the write.
    if ids.payment_id:
        updates.append(FieldUpdate(ids.payment_id, FieldKind.TEXT, payment.payment_id))
    return tuple(updates), warnings


def new_contact_fields(customer: Customer, crm: CrmConfig) -> tuple[FieldUpdate, ...]:
    """Custom fields of a contact the bridge creates: the Telegram id and username."""
    ids = crm.contact_fields
    return tuple(
        FieldUpdate(field_id, FieldKind.TEXT, value)
        for field_id, value in (
            (ids.telegram_id, customer.telegram_id),
            (ids.telegram_username, customer.telegram_username),
        )
        if field_id and value
    )


def contact_fill_updates(
    contact: Contact, customer: Customer, crm: CrmConfig
) -> tuple[FieldUpdate, ...]:
    """Fields empty on the contact and known on the customer; never overwrites a value."""
    ids = crm.contact_fields
    filled = {
        field_id
        for field_id, value in (
            (ids.telegram_id, contact.telegram_id),
            (ids.telegram_username, contact.telegram_username),
        )
        if value.strip()
    }
    return tuple(
        update for update in new_contact_fields(customer, crm) if update.field_id not in filled
    )


def deal_name(payment: Payment, template: str) -> str:
    customer = payment.customer
    client_name = customer.full_name or customer.phone or customer.email or ""
    values = {**_common_values(payment), "client_name": client_name}
    return _render(template, values).strip()


def note_text(payment: Payment, template: str, display_tz: ZoneInfo) -> str:
    """The deal note (SPEC §6); it always contains the line "Payment ID: <id>"."""
    customer = payment.customer
    contacts = (
        ("TGID: ", customer.telegram_id),
        ("TG Username: @", customer.telegram_username),
        ("Телефон: ", customer.phone),
    )
    courses = (_course_line(item.course_name, item.subject) for item in payment.items)
    values = {
        **_common_values(payment),
        "client_name": customer.full_name,
        "paid_at_local": payment.paid_at.astimezone(display_tz).strftime("%Y-%m-%d %H:%M:%S"),
        "display_timezone_label": _zone_label(display_tz),
        "paid_at_utc": payment.paid_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "courses": "\n".join(line for line in courses if line),
        "contacts_line": " | ".join(label + value for label, value in contacts if value),
    }
    text = render_note(template, values)
    if not note_mentions_payment(text, payment.payment_id):
        # The crash-window check looks for this line, whatever the configured template.
        text = f"{text}\n{_PAYMENT_ID_LABEL}{payment.payment_id}".lstrip("\n")
    return text


def render_note(template: str, values: Mapping[str, str]) -> str:
    """`template` with `values`, line by line: a line whose placeholders are all empty is
    left out, and so is a static header line ending in ":" whose next line was."""
    lines: list[str | None] = []  # None: left out
    static: set[int] = set()
    for index, line in enumerate(template.splitlines()):
        names = _placeholder_names(line)
        if not names:
            static.add(index)
            lines.append(line)
        elif all(values.get(name) == "" for name in names):
            lines.append(None)
        else:
            lines.append(_render(line, values).rstrip())
    kept = [
        line
        for index, line in enumerate(lines)
        if line is not None
        and not (
            index in static
            and line.rstrip().endswith(":")
            and (index + 1 == len(lines) or lines[index + 1] is None)
        )
    ]
    return "\n".join(kept)


def render(template: str, values: Mapping[str, str]) -> str:
    """`template` with `values`; an unknown placeholder stays in the text as it is."""
    return _render(template, values)


def note_mentions_payment(text: str, payment_id: str) -> bool:
    """Whether `text` has the line "Payment ID: <payment_id>" (not a longer id)."""
    wanted = _PAYMENT_ID_LABEL + payment_id
    return any(line.strip() == wanted for line in text.splitlines())


def format_amount(value: Decimal) -> str:
    """Plain decimal notation without trailing zeros or exponent: 10000, 10000.5."""
    if value == 0:
        return "0"  # also for -0 and 0E+3
    return format(value.normalize(), "f")


def template_problems(template: str, placeholders: frozenset[str]) -> list[str]:
    """What is wrong with a configured template: unbalanced braces, unknown placeholders."""
    try:
        names = _placeholder_names(template)
    except ValueError as exc:
        return [f"malformed template: {exc}"]
    return [f"unknown placeholder {{{name}}}" for name in names if name not in placeholders]


def _common_values(payment: Payment) -> dict[str, str]:
    first_course = next((item.course_name for item in payment.items if item.course_name), "")
    return {
        "subject": ", ".join(payment.subjects) or first_course or "курс",
        "payment_id": payment.payment_id,
        "amount": format_amount(payment.amount),
        "currency": payment.currency,
        "status": payment.status,
        "payment_method": payment.payment_method,
        "promo_code": payment.promo_code,
        "invoice_id": payment.invoice_id,
        "utm_source": payment.utm.source,
        "utm_medium": payment.utm.medium,
        "utm_campaign": payment.utm.campaign,
        "phone": payment.customer.phone or "",
        "email": payment.customer.email or "",
        "domain": payment.domain,
    }


def _course_line(name: str, subject: str) -> str:
    if name and subject:
        return f"  {name} ({subject})"
    return f"  {name or subject}" if name or subject else ""


def _zone_label(zone: ZoneInfo) -> str:
    return str(zone.key).rsplit("/", 1)[-1].replace("_", " ")


def _placeholder_names(text: str) -> list[str]:
    return [name for _, name, _, _ in Formatter().parse(text) if name is not None]


def _render(text: str, values: Mapping[str, str]) -> str:
    parts: list[str] = []
    for literal, name, _, _ in Formatter().parse(text):
        parts.append(literal)
        if name is not None:
            parts.append(values.get(name, "{" + name + "}"))
    return "".join(parts)


def _enum_id(mapping: Mapping[str, EnumId], name: str) -> EnumId | None:
    if name in mapping:
        return mapping[name]
    # Config keys are typed by hand; "русский " should still find "Русский".
    folded = name.strip().casefold()
    return next((v for k, v in mapping.items() if k.strip().casefold() == folded), None)


def _current_number(
    current: Mapping[str, str], field_id: str, label: str, warnings: list[str]
) -> Decimal:
    raw = current.get(field_id, "")
    # CRMs and managers write "1 000", "1 000" (no-break space) or "1000,50".
    text = "".join(raw.split())
    if not text:
        return Decimal(0)
    text = text.replace(",", "") if "." in text else text.replace(",", ".")
    try:
        value = Decimal(text)
    except InvalidOperation:
        value = Decimal("NaN")
    if not value.is_finite():
        warnings.append(f"{label}: current value {raw[:40]!r} is not a number: counted as 0")
        return Decimal(0)
    return value


def recency(deal: Deal) -> tuple[int, int, str]:
    """Sort key of "most recently updated": update time, then the newest numeric id."""
    numeric_id = int(deal.id) if deal.id.isascii() and deal.id.isdigit() else -1
    return (deal.updated_at, numeric_id, deal.id)
