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


def payment_of(customer: int, n: int, prefix: str = "pay_") -> dict[str, Any]:
    """Payment `{prefix}{customer}_{n}` of 1000 × (n + 1): each customer's payments carry
    one phone, e-mail and Telegram id, so they all meet on that customer's contact."""
    return payment_payload(
        f"{prefix}{customer}_{n}",
        phone=f"8999100{customer:04d}",
        email=f"c{customer}@example.com",
        telegram_id=str(700000 + customer),
        costs=(1000 * (n + 1),),
        subjects=("Русский",),
    )
