"""The worker's side of batched drain (issue 20), in process over the in-memory CRM.

Payments are stored while the operator holds the CRM, so that many are due at once when
it is resumed: the worker must take payments of different customers as one group (one
slot of `worker_concurrency`), keep each customer's payments in order (one per group),
never batch with `batch_size = 1`, and deliver every payment exactly once.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from litestar.testing import AsyncTestClient

from bridge.app import create_app
from tests.cli_support import hold_crm, make_cli
from tests.conftest import (
    Bridge,
    make_settings,
    reference_file_config,
    signed,
)
from tests.customers import payment_of
from tests.fakes.memory import BatchingMemoryCrm

CUSTOMERS = 6


@asynccontextmanager
async def held_bridge(
    tmp_path: Path, crm: BatchingMemoryCrm, *, batch_size: int = 50, **overrides: Any
) -> AsyncIterator[Bridge]:
    """The app over `crm`, with the CRM held by the operator until `release`."""
    file = reference_file_config()
    config = file.crm["amocrm"].model_copy(update={"batch_size": batch_size})
    file = file.model_copy(update={"crm": {"amocrm": config}})
    settings = make_settings(tmp_path, file, wait_seconds=0, **overrides)
    crm.config = config
    await hold_crm(settings.database_path)
    app = create_app(settings, adapters=lambda _settings, _store: {"amocrm": crm})
    async with AsyncTestClient(app=app) as client:
        yield Bridge(client, settings, crm)  # type: ignore[arg-type]


async def post_and_release(bridge: Bridge, payments: list[dict[str, Any]]) -> None:
    for payload in payments:
        body = json.dumps(payload).encode()
        answer = await bridge.client.post("/webhook/payment", content=body, headers=signed(body))
        assert answer.status_code == 202, answer.text
    await hold_crm(bridge.settings.database_path, held=False)
    await bridge.settle(timeout=30)


def delivered(bridge: Bridge) -> Counter[str]:
    return Counter(str(status) for (status,) in bridge.query("SELECT status FROM deliveries"))


async def test_due_payments_of_different_customers_go_as_one_group(tmp_path: Path) -> None:
    crm = BatchingMemoryCrm(reference_file_config().crm["amocrm"], name="amocrm")
    payments = [payment_of(c, n) for n in range(2) for c in range(CUSTOMERS)]
    async with held_bridge(tmp_path, crm, worker_concurrency=1) as bridge:
        await post_and_release(bridge, payments)
        assert delivered(bridge) == {"success": 2 * CUSTOMERS}
    # Each customer's second payment waits for its first: two rounds, and a group takes
    # a single slot, so one worker slot carries all six customers in each round.
    assert crm.batches() == [
        f"batch:find_contacts×{CUSTOMERS}",
        f"batch:create_contacts_and_deals×{CUSTOMERS}",
        f"batch:add_notes×{CUSTOMERS}",
        f"batch:get_deals×{CUSTOMERS}",
        f"batch:create_deals×{CUSTOMERS}",  # the reference config: a deal per payment
        f"batch:add_notes×{CUSTOMERS}",
    ]
    assert len(crm.contacts) == CUSTOMERS
    assert len(crm.deals) == 2 * CUSTOMERS
    assert_one_note_each(crm, [f"pay_{c}_{n}" for n in range(2) for c in range(CUSTOMERS)])


def assert_one_note_each(crm: BatchingMemoryCrm, payment_ids: list[str]) -> None:
    notes = [text for texts in crm.notes.values() for text in texts]
    for payment_id in payment_ids:
        assert sum(f"Payment ID: {payment_id}" in text for text in notes) == 1, payment_id


async def test_batch_size_one_turns_batching_off(tmp_path: Path) -> None:
    crm = BatchingMemoryCrm(reference_file_config().crm["amocrm"], name="amocrm")
    payments = [payment_of(c, 0) for c in range(CUSTOMERS)]
    async with held_bridge(tmp_path, crm, batch_size=1) as bridge:
        await post_and_release(bridge, payments)
        assert delivered(bridge) == {"success": CUSTOMERS}
    assert crm.batches() == []
    assert len(crm.contacts) == CUSTOMERS


async def test_a_group_is_capped_by_the_configured_batch_size(tmp_path: Path) -> None:
    crm = BatchingMemoryCrm(reference_file_config().crm["amocrm"], name="amocrm")
    payments = [payment_of(c, 0) for c in range(5)]
    async with held_bridge(tmp_path, crm, batch_size=2, worker_concurrency=8) as bridge:
        await post_and_release(bridge, payments)
        assert delivered(bridge) == {"success": 5}
    sizes = sorted(int(call.rsplit("×", 1)[1]) for call in crm.batches())
    assert sizes and max(sizes) == 2
    assert len(crm.contacts) == 5


async def test_an_item_refused_in_a_batch_fails_only_its_delivery(tmp_path: Path) -> None:
    crm = BatchingMemoryCrm(reference_file_config().crm["amocrm"], name="amocrm")
    crm.refuse("Payment ID: pay_1_0")  # this payment's note is refused, alone
    async with held_bridge(tmp_path, crm) as bridge:
        await post_and_release(bridge, [payment_of(c, 0) for c in range(3)])
        statuses = dict(
            bridge.query(
                "SELECT e.key, d.status FROM deliveries d JOIN events e ON e.id = d.event_id"
            )
        )
        [error] = bridge.query("SELECT last_error FROM deliveries WHERE status = 'failed'")
    assert statuses == {"pay_0_0": "success", "pay_1_0": "failed", "pay_2_0": "success"}
    assert "refused" in str(error[0])
    assert "batch:add_notes×3" in crm.batches()
    assert_one_note_each(crm, ["pay_0_0", "pay_2_0"])


async def test_a_batch_call_is_listed_under_each_delivery_and_counted_once(
    run_bridge: Any, tmp_path: Path
) -> None:
    # Through HTTP into the fake amoCRM: the new customers' contacts and deals in one
    # `leads/complex`, their notes in one `POST /api/v4/leads/notes`.
    payments = [payment_of(c, 0) for c in range(4)]
    await hold_crm(make_settings(tmp_path).database_path)
    async with run_bridge(wait_seconds=0) as bridge:
        await post_and_release(bridge, payments)
        assert delivered(bridge) == {"success": 4}
        sent = [(call.method, call.path) for call in bridge.fake.calls]
        [(counted,)] = bridge.query("SELECT SUM(crm_calls) FROM deliveries")
    assert sent.count(("POST", "/api/v4/leads/complex")) == 1
    assert sent.count(("POST", "/api/v4/leads/notes")) == 1
    assert counted == len(sent)  # each batch call counted once
    cli = make_cli(tmp_path, DATABASE_PATH=str(bridge.settings.database_path))
    shown = await asyncio.to_thread(cli, "show", "pay_2_0")
    assert shown.exit_code == 0, shown.output
    assert "POST /api/v4/leads/complex (batch of 4)" in shown.stdout
    assert "POST /api/v4/leads/notes (batch of 4)" in shown.stdout
    report = await asyncio.to_thread(cli, "show", "pay_2_0", "--json")
    batches = {c["path"]: c["batch"] for c in json.loads(report.stdout)["crm_calls"]}
    assert batches["/api/v4/leads/complex"] == batches["/api/v4/leads/notes"] == 4
