"""Section 3, second part: CRM calls per payment in every CRM the bridge supports.

Each CRM's case of the scenario suites (`tests/crm_cases.py`: its example section, its
stateful fake, its credentials) runs the real app in process, and three payments are
counted the way the README's table means them:
- returning: a contact with an open deal a manager entered, found by phone, unknown to
  the bridge;
- known: that customer's next payment (the bridge remembers contact and open deal);
- new: a customer no CRM record has (Telegram id, phone and e-mail searched).
A first payment of another customer pays what a CRM costs once per process (Odoo's
session) and is not counted. Calls are read from `deliveries.crm_calls` and cross-checked
with the fake's API requests (a session minted on a token endpoint is not one of them).
Targets are the README's.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from tests.conftest import crm_calls, payment_payload
from tests.crm_cases import CASES, CrmCase, running

# The README table's "returning / known / new", per case (returning found by phone).
README = {
    "amocrm": (4, 3, 5),
    "hubspot": (4, 3, 4),
    "pipedrive": (5, 3, 8),
    "bitrix24": (5, 3, 3),
    "salesforce": (4, 3, 3),
    "odoo": (4, 3, 4),
    "odoo-19": (4, 3, 4),
    "zoho": (3, 3, 3),
    "megaplan": (4, 3, 6),
}


async def _count(case: CrmCase, directory: Path) -> dict[str, Any]:
    fake = case.make_fake()
    run = running(case, fake, directory)
    measured: dict[str, Any] = {}
    async with run() as bridge:
        for name, payment_id, body in _payments(case, fake):
            before = case.api_calls(fake)
            answer = await bridge.post_payment(body)
            if answer.status_code != 200:
                raise RuntimeError(f"{case}: {payment_id}: HTTP {answer.status_code}")
            if name == "warm-up":
                continue
            measured[name] = {
                "crm_calls": crm_calls(bridge, payment_id),
                "fake_calls": case.api_calls(fake) - before,
            }
    return measured


def _payments(case: CrmCase, fake: Any) -> list[tuple[str, str, dict[str, Any]]]:
    contact = case.add_contact(fake, "Пётр Сидоров", "+7 999 555-00-01", None)
    case.seed_deal(fake, contact, "yandex_working", 1_700_000_000)
    by_phone = {"phone": "89995550001", "email": None, "telegram_id": None, "telegram_tag": None}
    warm = {"phone": "89995550009", "email": "warm@example.com", "telegram_id": "555000999"}
    return [
        ("warm-up", "calls-warm", payment_payload("calls-warm", **warm)),
        ("returning", "calls-returning", payment_payload("calls-returning", **by_phone)),
        ("known", "calls-known", payment_payload("calls-known", **by_phone)),
        ("new", "calls-new", payment_payload("calls-new")),
    ]


async def _measure_all() -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for case in CASES:
        with tempfile.TemporaryDirectory(prefix=f"bench-calls-{case}-") as directory:
            measured = await _count(case, Path(directory))
        returning, known, new = README[str(case)]
        targets = {"returning": returning, "known": known, "new": new}
        rows[str(case)] = {
            name: {**values, "target": targets[name]} for name, values in measured.items()
        }
    return rows


def every_crm() -> dict[str, Any]:
    return asyncio.run(_measure_all())


if __name__ == "__main__":
    import json

    print(json.dumps(every_crm(), indent=2, ensure_ascii=False))
