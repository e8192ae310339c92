"""While one of a CRM's groups runs, another starts only when it can be full (issue 20).

A group's members end milliseconds apart; if each end started a group of whatever was due
by then, batches would shrink to one or two payments. The first group here is held inside
its first batch call, so the test can see what the worker starts meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from litestar.testing import AsyncTestClient

from bridge.app import create_app
from bridge.crm.base import Confirm
from bridge.domain import Contact, LookupKey
from bridge.store import Store
from tests.conftest import (
    Bridge,
    make_settings,
    payment_payload,
    reference_file_config,
    signed,
    wait_until,
)
from tests.fakes.memory import BatchingMemoryCrm

BATCH = 4


class FirstBatchHeld(BatchingMemoryCrm):
    """The first batched search waits until `released`.

    Plain flags, polled: the app runs on the test client's own event loop, where an
    `asyncio.Event` of the test's loop would not wake anyone."""

    def __init__(self) -> None:
        super().__init__(reference_file_config().crm["amocrm"], name="amocrm")
        self.holding = False
        self.released = False

    async def find_contacts(
        self, keys: Sequence[Sequence[LookupKey]], confirm: Confirm
    ) -> list[Contact | None]:
        if not self.holding:
            self.holding = True
            while not self.released:  # noqa: ASYNC110 - another loop sets it (docstring)
                await asyncio.sleep(0.01)
        return await super().find_contacts(keys, confirm)


async def post(bridge: Bridge, customers: range) -> None:
    for customer in customers:
        payload = payment_payload(
            f"pay_{customer}",
            phone=f"8999100{customer:04d}",
            email=f"c{customer}@example.com",
            telegram_id=str(700000 + customer),
        )
        body = json.dumps(payload).encode()
        answer = await bridge.client.post("/webhook/payment", content=body, headers=signed(body))
        assert answer.status_code == 202, answer.text


def statuses(bridge: Bridge) -> dict[str, str]:
    rows = bridge.query(
        "SELECT e.key, d.status FROM deliveries d JOIN events e ON e.id = d.event_id"
    )
    return {str(key): str(status) for key, status in rows}


async def test_a_smaller_group_waits_for_the_running_one_and_a_full_one_does_not(
    tmp_path: Path,
) -> None:
    crm = FirstBatchHeld()
    file = reference_file_config()
    config = file.crm["amocrm"].model_copy(update={"batch_size": BATCH})
    file = file.model_copy(update={"crm": {"amocrm": config}})
    settings = make_settings(tmp_path, file, wait_seconds=0, worker_concurrency=8)
    crm.config = config
    store = await Store.open(settings.database_path, clock=time.time)
    await store.hold_crm("amocrm", "load the queue", "test")
    await store.close()
    app = create_app(settings, adapters=lambda _settings, _store: {"amocrm": crm})
    async with AsyncTestClient(app=app) as client:
        bridge = Bridge(client, settings, crm)  # type: ignore[arg-type]
        await post(bridge, range(BATCH))
        store = await Store.open(settings.database_path, clock=time.time)
        await store.release_crm("amocrm")
        await store.close()
        await wait_until(lambda: crm.holding)
        calls_while_held = list(crm.calls)

        # Two more customers: fewer than a group holds, so they wait for the running one.
        await post(bridge, range(BATCH, BATCH + 2))
        await asyncio.sleep(0.5)  # time for the worker to start them, were it to
        assert crm.calls == calls_while_held
        assert statuses(bridge)[f"pay_{BATCH}"] == "pending"

        # Two more make a full group: it starts although the first is still held.
        await post(bridge, range(BATCH + 2, 2 * BATCH))
        await wait_until(
            lambda: all(statuses(bridge)[f"pay_{c}"] == "success" for c in range(BATCH, 2 * BATCH))
        )
        assert not crm.released

        crm.released = True
        await bridge.settle()
        assert set(statuses(bridge).values()) == {"success"}

    assert Counter(crm.batches()) == {
        f"batch:find_contacts×{BATCH}": 2,
        f"batch:create_contacts_and_deals×{BATCH}": 2,
        f"batch:add_notes×{BATCH}": 2,
    }
