"""Payments of many distinct customers, for tests that send a crowd of them."""

from __future__ import annotations

from typing import Any

from tests.conftest import payment_payload


def customer_payment(n: int, prefix: str) -> dict[str, Any]:
    """Payment `{prefix}{n}` of customer n, known by a phone number alone: every n is a
    customer (a contact, a deal) of its own."""
    return payment_payload(
        f"{prefix}{n}", phone=f"8999222{n:04d}", email=None, telegram_id=None, telegram_tag=None
    )
