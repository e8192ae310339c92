"""What the order tests share: a section that takes orders, and order bodies.

`with_orders(config)` gives any CRM section the order settings the in-memory CRM knows:
one pipeline whose `archived` and `cancelled` stages are the section's closed statuses
(won and lost), and deal fields for the order id, status, dates, delivery and comment.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from bridge.domain import Order
from bridge.order_normalize import order_event_key, order_from_webhook
from bridge.order_payloads import parse_order
from bridge.settings import CrmConfig, OrderFieldIds, OrderStage

EXAMPLE_ORDER = Path(__file__).resolve().parents[1] / "bridge" / "examples" / "order.json"
MOSCOW = ZoneInfo("Europe/Moscow")
PIPELINE = "900"
STAGES = {
    "new": "901",
    "reserved": "902",
    "in_rent": "903",
    "in_progress": "904",
    "archived": "142",  # won
    "cancelled": "143",  # lost
}
FIELDS = OrderFieldIds(
    order_id="800001",
    order_status="800002",
    installation_date="800003",
    dismantle_date="800004",
    delivery_method="800005",
    delivery_address="800006",
    comment="800007",
)


def order_settings(
    config: CrmConfig, pipeline: str, stages: dict[str, str], fields: OrderFieldIds, **more: Any
) -> CrmConfig:
    """`config` with orders walking `stages` (order status → status id) of `pipeline`,
    writing `fields`; `more` other settings."""
    order_stages = {k: OrderStage(pipeline_id=pipeline, status_id=v) for k, v in stages.items()}
    return config.model_copy(update={"order_stages": order_stages, "order_fields": fields, **more})


def with_orders(config: CrmConfig) -> CrmConfig:
    closed = tuple(dict.fromkeys((*config.closed_status_ids, "142", "143")))
    return order_settings(config, PIPELINE, STAGES, FIELDS, closed_status_ids=closed)


def order_body(
    order_id: str = "ord_1042",
    *,
    event: str = "updated",
    status: str = "reserved",
    updated_at: str = "2026-11-20T10:15:00+03:00",
    total: str = "48500.00",
    business: bool = True,
    items: list[tuple[str, str, int, str]] | None = None,
    phone: str = "+7 916 000-11-22",
    email: str = "anna@example.com",
) -> dict[str, Any]:
    """The README's example body with these values; `items` as (id, name, qty, price)."""
    body: dict[str, Any] = json.loads(EXAMPLE_ORDER.read_text(encoding="utf-8"))
    body = copy.deepcopy(body)
    order = body["order"]
    body["event"] = event
    order.update(id=order_id, status=status, updated_at=updated_at, total_amount=total)
    order["customer"].update(phone=phone, email=email)
    if not business:
        order["customer"]["type"] = "person"
        del order["customer"]["company"]
    if items is not None:
        order["items"] = [
            {"product_id": pid, "name": name, "quantity": qty, "price": price}
            for pid, name, qty, price in items
        ]
    return body


def order_of(body: dict[str, Any]) -> tuple[Order, str]:
    """The domain order of `body` and its event key."""
    order, _ = order_from_webhook(parse_order(body), MOSCOW)
    return order, order_event_key(order.order_id, order.updated_at)


def order_config_toml() -> str:
    """`with_orders` as TOML, to append to a config file's `[crm.amocrm]` section."""
    stages = "\n".join(
        f"{status} = {{ pipeline_id = {PIPELINE}, status_id = {status_id} }}"
        for status, status_id in STAGES.items()
    )
    fields = "\n".join(
        f"{name} = {value}" for name, value in FIELDS.model_dump().items() if value is not None
    )
    return f"\n[crm.amocrm.order_stages]\n{stages}\n\n[crm.amocrm.order_fields]\n{fields}\n"
