"""Values intake refuses whatever field holds them (issue 13.5 and 13.8): text that is not
Unicode (a lone UTF-16 surrogate), numbers that are not finite, absurd money; and that a
refused webhook never fails the webhooks that share its group commit."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from bridge.store import NewEvent, Store
from tests.conftest import payment_payload
from tests.fakes.amocrm import FakeAmoCrm
from tests.intake_support import ITEM, payload_with, raw_body, refused

CUT_EMOJI = "\ud83d"  # what a JavaScript platform sends when it cuts "😀" in half
SECOND_COST = ("course_order", "course_order_items", 1, "cost")


@pytest.mark.parametrize(
    "path",
    [
        ("course_order", "user", "phone"),
        ("course_order", "user", "email"),
        ("course_order", "user", "telegram_id"),
        ("course_order", "user", "first_name"),
        ("course_order", "utm", "source"),
        ("course_order", "course_order_items", 0, "course", "name"),
        ("course_order", "platform_extra"),  # a field the bridge does not know
    ],
    ids=lambda path: ".".join(map(str, path)),
)
async def test_a_lone_surrogate_in_any_field_is_422_naming_it(
    run_bridge: Any, path: tuple[str | int, ...]
) -> None:
    response = await refused(run_bridge, payload_with(path, "Иван" + CUT_EMOJI))
    assert response.json()["details"] == [
        {
            "field": ".".join(map(str, path)),
            "error": "text is not valid Unicode (a lone UTF-16 surrogate)",
        }
    ]


async def test_a_whole_emoji_is_taken(run_bridge: Any) -> None:
    async with run_bridge(wait_seconds=0) as bridge:
        payload = payload_with(("course_order", "user", "first_name"), "Иван \ud83d\ude00")
        assert (await bridge.post_payment(payload)).status_code == 202


async def test_a_refused_webhook_does_not_fail_the_webhooks_beside_it(run_bridge: Any) -> None:
    """Issue 13.5: 10.7 % of innocent concurrent webhooks got 503 because one in their
    group commit carried a cut emoji in a phone."""
    async with run_bridge(wait_seconds=0) as bridge:
        bodies = [payment_payload(f"pay_ok{n}", phone=f"8999111{n:04d}") for n in range(24)]
        for n in (3, 11, 19):
            bodies[n] = payload_with(
                ("course_order", "user", "phone"), "8999" + CUT_EMOJI, f"pay_b{n}"
            )
        answers = await asyncio.gather(*(bridge.post_payment(body) for body in bodies))
        codes = [answer.status_code for answer in answers]
        assert codes == [422 if n in (3, 11, 19) else 202 for n in range(24)]
        assert bridge.query("SELECT COUNT(*) FROM events") == [(21,)]


@pytest.mark.parametrize(
    ("cost", "error"),
    [
        ("1e308", "less than or equal to 1000000000"),
        ("1e999", "finite"),  # json reads it as infinity
        ("9" * 4000, "less than or equal to 1000000000"),
        ("1000000000.01", "less than or equal to 1000000000"),
        ("0.001", "no more than 2 decimal places"),
        ("-1", "greater than or equal to 0"),
        ("NaN", "finite"),
        ("Infinity", "finite"),
    ],
)
async def test_absurd_costs_are_422_naming_the_item(run_bridge: Any, cost: str, error: str) -> None:
    response = await refused(run_bridge, raw_body(SECOND_COST, cost, "pay_c"))
    [detail] = response.json()["details"]
    assert detail["field"] == "course_order.course_order_items.1.cost"
    assert error in detail["error"]


async def test_money_within_the_bounds_is_taken(run_bridge: Any) -> None:
    async with run_bridge(wait_seconds=0) as bridge:
        for payment_id, cost in (("pay_m", "1000000000"), ("pay_n", "0.5")):
            response = await bridge.post_payment(raw_body(SECOND_COST, cost, payment_id))
            assert response.status_code == 202
        assert bridge.query("SELECT payment_id, amount FROM payment_events ORDER BY 1") == [
            ("pay_m", 1000005000),
            ("pay_n", 5000.5),
        ]


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
async def test_a_non_finite_number_anywhere_is_422_and_every_stored_body_stays_json(
    run_bridge: Any, literal: str
) -> None:
    """Issue 13.8: a NaN in `package_id` was stored, and every `json_extract` over
    `payment_events` then failed with "malformed JSON"."""
    async with run_bridge(wait_seconds=0) as bridge:
        assert (await bridge.post_payment(payment_payload("pay_fine"))).status_code == 202
        response = await bridge.post_payment(raw_body((*ITEM, "package_id"), literal))
        assert response.status_code == 422, response.text
        assert response.json()["details"] == [
            {
                "field": "course_order.course_order_items.0.package_id",
                "error": "number is not finite (NaN or Infinity)",
            }
        ]
        # A big but finite number elsewhere is JSON, and stays queryable.
        response = await bridge.post_payment(raw_body((*ITEM, "package_id"), "1e308"))
        assert response.status_code == 202
        assert bridge.query(
            "SELECT payment_id, json_extract(payload, '$.course_order.payment_id')"
            " FROM payment_events ORDER BY 1"
        ) == [("pay_fine", "pay_fine"), ("pay_v", "pay_v")]


async def test_a_body_stored_before_intake_refused_it_fails_at_once_not_in_three_days(
    run_bridge: Any, fake_amo: FakeAmoCrm, tmp_path: Path
) -> None:
    """Issue 13.5: outside the customer's keys a lone surrogate was stored, and the
    delivery retried for three days before it died."""
    body = json.dumps(payload_with(("course_order", "user", "first_name"), "Иван" + CUT_EMOJI))
    store = await Store.open(tmp_path / "bridge.sqlite", clock=time.time)
    try:
        event = NewEvent(
            "payment", "pay_v", "pending", "10000", ("phone:+79991234567",), body, ("amocrm",)
        )
        await store.intake(event)
    finally:
        await store.close()
    async with run_bridge(wait_seconds=0) as bridge:
        await bridge.settle()
        assert bridge.query("SELECT status, attempts, last_error FROM deliveries") == [
            ("failed", 1, "the stored body is not valid: course_order.user.first_name")
        ]
    assert fake_amo.count(method="POST") == 0
