"""Section 6: CRM calls per order event (created / updated / cancelled), per CRM.

In process, like section 3: the real app through Litestar's test client, each CRM that
takes orders (tests/order_cases.py: every CRM case with an `OrderProbe`, and the
in-memory CRM, whose count is the order flow's own) on its stateful fake. A business
customer's order is created (new contact and company), updated with a new status and new
items, then cancelled; each event's calls are what the CRM's API received. A warm-up order
of another business customer with the same products comes first, so that what a process
pays once (Odoo's session, a catalog product met for the first time) is not counted.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from tests.order_cases import ORDER_CASES, OrderCase, post_order
from tests.order_support import order_body

TENT = [("tent-02", "Шатёр 6×12", 1, "25000.00")]


def _warm_up() -> dict[str, Any]:
    chairs = ("chair-01", "Стул Венский", 40, "350.00")
    tables = ("table-07", "Стол банкетный", 5, "6900.00")
    body = order_body(
        "ord_warm",
        event="created",
        status="new",
        items=[chairs, tables, *TENT],
        phone="+7 916 000-99-99",
        email="warm@example.com",
    )
    body["order"]["customer"]["company"].update(name="ООО Прогрев", inn="7709999999")
    return body


EVENTS = {
    "created": order_body(event="created", status="new"),
    "updated": order_body(status="in_rent", updated_at="2026-11-21T09:00:00+03:00", items=TENT),
    "cancelled": order_body(
        event="cancelled", status="in_rent", updated_at="2026-11-22T09:00:00+03:00", items=TENT
    ),
}


def order_calls() -> dict[str, Any]:
    return {case.name: asyncio.run(_case(case)) for case in ORDER_CASES}


async def _case(case: OrderCase) -> dict[str, int]:
    with tempfile.TemporaryDirectory(prefix="bench-orders-") as workdir:
        fake = case.make_fake()
        counts: dict[str, int] = {}
        async with case.running(fake, Path(workdir))(wait_seconds=30) as bridge:
            warm = await post_order(bridge, _warm_up())
            if warm.status_code != 200:
                raise RuntimeError(f"{case.name} warm-up: {warm.status_code} {warm.text}")
            for name, body in EVENTS.items():
                before = case.api_calls(fake)
                answer = await post_order(bridge, body)
                if answer.status_code != 200:
                    raise RuntimeError(f"{case.name} {name}: {answer.status_code} {answer.text}")
                counts[name] = case.api_calls(fake) - before
        return counts
