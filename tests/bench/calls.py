"""Section 3: CRM calls per payment, by what the CRM and the bridge already know.

In process: the real app (lifespan, worker, SQLite in a temporary directory) through
Litestar's test client, amoCRM as the stateful fake behind an `httpx.MockTransport`, the
reference config and rate limits unchanged. Each payment waits for its outcome
(WAIT_SECONDS=30); its calls are read from `deliveries.crm_calls` and cross-checked with
the requests the fake received meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from litestar.testing import AsyncTestClient

from bridge.app import create_app
from bridge.settings import Settings
from tests.bench.bodies import customer_key, manager_phone, payment_body
from tests.bench.config import SECRET
from tests.conftest import reference_file_config, signed
from tests.fakes.amocrm import FakeAmoCrm
from tests.fakes.amocrm_account import WON

# what each scenario should cost at most (the issue's targets)
TARGETS = {"new": 5, "returning_known_open": 3}
RETURNING_TARGET = 4


@dataclass
class _Bridge:
    client: AsyncTestClient[Any]
    fake: FakeAmoCrm
    database: Path
    paid: int = 0

    async def pay(self, key: str) -> dict[str, Any]:
        """Post one payment of customer `key`; its outcome in the CRM and what it cost."""
        self.paid += 1
        payment_id = f"calls-{key}-{self.paid}"
        body = payment_body(payment_id, key).encode()
        before = len(self.fake.calls)
        answer = await self.client.post(
            "/webhook/payment", content=body, headers=signed(body, SECRET)
        )
        if answer.status_code != 200:
            raise RuntimeError(f"payment {payment_id}: HTTP {answer.status_code} {answer.text}")
        made = self.fake.calls[before:]
        result = answer.json()["results"]["amocrm"]
        with sqlite3.connect(self.database) as conn:
            [(crm_calls, attempts)] = conn.execute(
                "SELECT d.crm_calls, d.attempts FROM deliveries d JOIN events e"
                " ON e.id = d.event_id WHERE e.key = ?",
                (payment_id,),
            ).fetchall()
        return {
            "crm_calls": int(crm_calls),
            "fake_calls": len(made),
            "attempts": int(attempts),
            "lead_id": str(result["lead_id"]),
            "lead_created": bool(result["lead_created"]),
            "operations": [_operation(call.method, call.path) for call in made],
        }


_ID = re.compile(r"/\d+")


def _operation(method: str, path: str) -> str:
    return f"{method} {_ID.sub('/{id}', path)}"


Scenario = Callable[[_Bridge, str], Awaitable[dict[str, Any]]]


async def _new(bridge: _Bridge, key: str) -> dict[str, Any]:
    return await bridge.pay(key)


async def _returning_open(bridge: _Bridge, key: str) -> dict[str, Any]:
    first = await bridge.pay(key)
    bridge.fake.move_lead(first["lead_id"], _working_status())  # a manager took it on
    return await bridge.pay(key)


async def _returning_closed(bridge: _Bridge, key: str) -> dict[str, Any]:
    first = await bridge.pay(key)
    bridge.fake.move_lead(first["lead_id"], _working_status())
    await bridge.pay(key)  # paid into that open deal
    bridge.fake.move_lead(first["lead_id"], WON)
    return await bridge.pay(key)


async def _returning_autopay(bridge: _Bridge, key: str) -> dict[str, Any]:
    await bridge.pay(key)  # its deal stays in the excluded auto-payment status
    return await bridge.pay(key)


async def _returning_unknown(bridge: _Bridge, key: str) -> dict[str, Any]:
    fake = bridge.fake
    emails = [f"c{key}@bench.example"]
    contact = fake.add_contact("Иван Петров", phones=[manager_phone(key)], emails=emails)
    fake.add_lead(contact, pipeline_id=_site_pipeline(), status_id=_working_status())
    return await bridge.pay(key)


SCENARIOS: tuple[tuple[str, str, Scenario, int], ...] = (
    ("new", "new customer", _new, TARGETS["new"]),
    (
        "returning_known_open",
        "returning, its deal moved on to a working stage",
        _returning_open,
        TARGETS["returning_known_open"],
    ),
    (
        "returning_closed_since",
        "returning, that open deal closed since",
        _returning_closed,
        RETURNING_TARGET,
    ),
    (
        "returning_autopay",
        "returning, last deal still in auto-payment status",
        _returning_autopay,
        RETURNING_TARGET,
    ),
    (
        "returning_unknown",
        "returning, contact + open deal entered by a manager",
        _returning_unknown,
        RETURNING_TARGET,
    ),
)


def _site_pipeline() -> int:
    return int(reference_file_config().crm["amocrm"].default_pipeline.pipeline_id)


def _working_status() -> int:
    # the fake seeds "В работе" right after each pipeline's auto-payment status
    return int(reference_file_config().crm["amocrm"].default_pipeline.status_id) + 1


async def _measure(directory: Path) -> dict[str, Any]:
    fake = FakeAmoCrm()
    settings = Settings(
        database_path=directory / "bridge.sqlite",
        webhook_secrets=SECRET,
        amocrm_access_token=fake.issue_token(ttl=86400),
        wait_seconds=30,
        log_level="WARNING",
        file=reference_file_config(),
    )
    app = create_app(settings, transports={"amocrm": fake.transport()})
    rows: dict[str, Any] = {}
    async with AsyncTestClient(app=app, timeout=60) as client:
        bridge = _Bridge(client, fake, settings.database_path)
        for number, (name, label, scenario, target) in enumerate(SCENARIOS, start=1):
            measured = await scenario(bridge, customer_key(8, number))
            rows[name] = {"label": label, "target": target, **measured}
    return {"scenarios": rows, "throttled": fake.throttled}


def crm_calls() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-calls-") as directory:
        return asyncio.run(_measure(Path(directory)))


if __name__ == "__main__":
    print(json.dumps(crm_calls(), indent=2, ensure_ascii=False))
