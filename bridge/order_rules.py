"""The order flow's rules (SPEC §8), pure and CRM-neutral like `bridge.rules` for payments."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from bridge import rules
from bridge.domain import (
    Company,
    CompanyRecord,
    Deal,
    FieldKind,
    FieldUpdate,
    Order,
    OrderEventKind,
    OrderItem,
)
from bridge.rules import format_amount, recency
from bridge.settings import CrmConfig, OrderStage


def company_matches(record: CompanyRecord, wanted: Company, key: str) -> bool:
    """Whether a company search hit really is `wanted`: by INN, the same digits; by name,
    the same name ignoring case and runs of spaces (CRM searches match substrings)."""
    if key == "inn":
        digits = "".join(ch for ch in record.inn if ch.isdigit())
        return bool(wanted.inn) and digits == wanted.inn
    return bool(wanted.name) and _name_key(record.name) == _name_key(wanted.name)


def deal_for_order(deals: Sequence[Deal], crm: CrmConfig, order_id: str) -> Deal | None:
    """The deal whose order-id field holds `order_id` (a lost order → deal link found
    again); None when the section has no order-id field."""
    field_id = crm.order_fields.order_id
    if not field_id:
        return None
    carrying = [
        deal
        for deal in deals
        if not deal.is_deleted and deal.fields.get(field_id, "").strip() == order_id
    ]
    return max(carrying, key=recency, default=None)


def _name_key(name: str) -> str:
    return " ".join(name.casefold().split())


# ---- what an order writes ----------------------------------------------------------

ORDER_DEAL_NAME_PLACEHOLDERS = frozenset(
    {"order_id", "client_name", "company_name", "status", "total", "currency", "source"}
)
ORDER_NOTE_PLACEHOLDERS = ORDER_DEAL_NAME_PLACEHOLDERS | {
    "event",
    "event_label",
    "changes",
    "items",
    "installation_date",
    "dismantle_date",
    "delivery",
    "delivery_method",
    "delivery_address",
    "comment",
    "phone",
    "email",
    "order_event",
}
_ORDER_EVENT_LABEL = "Order event: "
_EVENT_LABELS = {
    OrderEventKind.CREATED: "создан",
    OrderEventKind.UPDATED: "обновлён",
    OrderEventKind.CANCELLED: "отменён",
}

ItemRow = tuple[str, str, str, str]  # product id, name, quantity, unit price (as text)


@dataclass(frozen=True)
class AppliedOrder:
    """What the previous applied event of the order left in one CRM (the note's "from")."""

    status: str
    total: Decimal
    items: tuple[ItemRow, ...]


def item_rows(order: Order) -> tuple[ItemRow, ...]:
    """The order's items as the bridge remembers them, to tell whether they changed."""
    return tuple(
        (item.product_id, item.name, format_amount(item.quantity), format_amount(item.price))
        for item in order.items
    )


def order_stage(order: Order, crm: CrmConfig) -> OrderStage:
    """The stage the order's (effective) status maps to in this CRM."""
    return crm.order_stages[order.effective_status.value]


def order_deal_fields(order: Order, crm: CrmConfig) -> tuple[FieldUpdate, ...]:
    """The configured order fields of the deal. An empty value leaves the CRM's field
    alone (a manager's entry is not wiped by a body that omits it). The order id comes
    last: it is how a lost order → deal link is found again."""
    ids = crm.order_fields
    updates: list[FieldUpdate] = []
    texts = (
        (ids.order_status, order.effective_status.value),
        (ids.delivery_method, order.delivery_method),
        (ids.delivery_address, order.delivery_address),
        (ids.comment, order.comment),
    )
    updates += [FieldUpdate(fid, FieldKind.TEXT, text) for fid, text in texts if fid and text]
    for field_id, day in (
        (ids.installation_date, order.installation_date),
        (ids.dismantle_date, order.dismantle_date),
    ):
        if field_id and day is not None:
            updates.append(FieldUpdate(field_id, FieldKind.DATE, day))
    if ids.order_id:
        updates.append(FieldUpdate(ids.order_id, FieldKind.TEXT, order.order_id))
    return tuple(updates)


def order_client_name(order: Order) -> str:
    """Who the order is for: the company, else the person, else how to reach them."""
    customer = order.customer
    if order.company is not None and order.company.name:
        return order.company.name
    return customer.full_name or customer.phone or customer.email or ""


def order_deal_name(order: Order, template: str) -> str:
    return rules.render(template, _values(order)).strip() or order.order_id


def order_note_text(order: Order, key: str, before: AppliedOrder | None, template: str) -> str:
    """The note of one applied order event: what changed since `before` (None: the first
    event this CRM got for the order). It always holds the line "Order event: <key>"."""
    values = {
        **_values(order),
        "event": order.event.value,
        "event_label": _EVENT_LABELS[order.event],
        "changes": "\n".join(_changes(order, before)),
        "items": "\n".join(_item_line(item) for item in order.items),
        "installation_date": _day(order.installation_date),
        "dismantle_date": _day(order.dismantle_date),
        "delivery": ", ".join(p for p in (order.delivery_method, order.delivery_address) if p),
        "delivery_method": order.delivery_method,
        "delivery_address": order.delivery_address,
        "comment": order.comment,
        "phone": order.customer.phone or "",
        "email": order.customer.email or "",
        "order_event": key,
    }
    text = rules.render_note(template, values)
    if not note_mentions_order_event(text, key):
        text = f"{text}\n{_ORDER_EVENT_LABEL}{key}".lstrip("\n")
    return text


def note_mentions_order_event(text: str, key: str) -> bool:
    """Whether `text` has the line "Order event: <key>" (the crash-window check)."""
    wanted = _ORDER_EVENT_LABEL + key
    return any(line.strip() == wanted for line in text.splitlines())


def _values(order: Order) -> dict[str, str]:
    return {
        "order_id": order.order_id,
        "client_name": order_client_name(order),
        "company_name": order.company.name if order.company is not None else "",
        "status": order.effective_status.value,
        "total": format_amount(order.total),
        "currency": order.currency,
        "source": order.source,
    }


def _changes(order: Order, before: AppliedOrder | None) -> list[str]:
    status = order.effective_status.value
    money = f"{format_amount(order.total)} {order.currency}".rstrip()
    if before is None:
        return [f"Статус: {status}", f"Сумма: {money}"]
    lines = [
        f"Статус: {before.status} → {status}" if before.status != status else f"Статус: {status}",
        f"Сумма: {format_amount(before.total)} → {money}"
        if before.total != order.total
        else f"Сумма: {money}",
    ]
    if before.items != item_rows(order):
        lines.append("Позиции изменены")
    return lines


def _item_line(item: OrderItem) -> str:
    quantity, price = format_amount(item.quantity), format_amount(item.price)
    return (
        f"  {item.name} ({item.product_id}) × {quantity} по {price} = {format_amount(item.total)}"
    )


def _day(value: date | None) -> str:
    return value.isoformat() if value is not None else ""
