"""SIGKILL the real `crm-bridge serve` in the middle of a batch (issue 20).

Payments of several customers are stored while the operator holds amoCRM, so they are
due at once when it is resumed and go out as batches: one `leads/complex` for the new
customers, one `PATCH /api/v4/leads` for known ones, one `POST /api/v4/leads/notes` for
all notes. The fake SIGKILLs the bridge when a batch write was applied but not answered
(the crash window of every delivery in it at once), or when it arrived and nothing was
applied; the restarted bridge resumes every delivery of the batch from its journal.
At the end each payment has landed exactly once: one contact per customer, the deals
expected, one note per payment, totals and counts exact.
"""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from pathlib import Path

import pytest

from tests.cli_support import hold_crm
from tests.customers import payment_of
from tests.process import (
    BridgeProcess,
    KillSwitch,
    ServedAmoCrm,
    assert_each_payment_once,
)

CUSTOMERS = 4
COMPLEX_BATCH = ("POST", r"/api/v4/leads/complex")
PATCH_BATCH = ("PATCH", r"/api/v4/leads")
NOTES_BATCH = ("POST", r"/api/v4/leads/notes")


def amount(n: int) -> Decimal:
    return Decimal(1000 * (n + 1))


def hold(bridge: BridgeProcess, held: bool) -> None:
    asyncio.run(hold_crm(bridge.database, held))


def deliver_round(
    bridge: BridgeProcess, switch: KillSwitch, n: int, kills: list[tuple[str, tuple[str, str]]]
) -> None:
    """Round n: every customer's payment n stored while held, released into the kills."""
    hold(bridge, True)
    time.sleep(1.2)  # the running bridge reads holds at most once a second
    for customer in range(CUSTOMERS):
        response = bridge.post_payment(payment_of(customer, n, "pay_b"))
        assert response.status_code == 202, response.text
    if not kills:
        hold(bridge, False)
    for index, (phase, (method, path)) in enumerate(kills):
        switch.arm(phase, method, path)
        if index == 0:
            hold(bridge, False)
        else:
            bridge.start(wait_ready=False)  # resumes the batch, into the next kill
        switch.wait()
        assert bridge.proc is not None and bridge.proc.returncode == -9
    if kills:
        bridge.start()
    bridge.settle()


CASES = {
    "new-complex-applied": (
        "reference",
        [("applied", COMPLEX_BATCH), ("applied", NOTES_BATCH)],
        [],
    ),
    "new-complex-received": ("reference", [("received", COMPLEX_BATCH)], []),
    "known-patch-applied": (
        "gathering",
        [],
        [("applied", PATCH_BATCH), ("answered", NOTES_BATCH)],
    ),
    "known-notes-applied": ("gathering", [], [("applied", NOTES_BATCH)]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_sigkill_mid_batch_leaves_exactly_one_of_everything(
    name: str, amo_server: ServedAmoCrm, tmp_path: Path
) -> None:
    config_kind, first_kills, second_kills = CASES[name]
    amo = amo_server.fake
    excluded = [] if config_kind == "gathering" else None
    bridge = amo_server.bridge(tmp_path, excluded_status_ids=excluded, rate_limit_per_second=40)
    switch = KillSwitch(amo, bridge)
    try:
        bridge.start()
        deliver_round(bridge, switch, 0, first_kills)
        deliver_round(bridge, switch, 1, second_kills)
        statuses = bridge.statuses()
        batch_sizes = [int(size) for (size,) in bridge.query("SELECT batch FROM crm_calls")]
    finally:
        bridge.stop()
    payments = {f"pay_b{c}_{n}": amount(n) for c in range(CUSTOMERS) for n in range(2)}
    assert statuses == dict.fromkeys(payments, "success"), bridge.log_text()[-3000:]
    assert max(batch_sizes) == CUSTOMERS, "the payments did not go out as one batch"
    assert len(amo.contacts()) == CUSTOMERS, "a second contact was created"
    expected_leads = CUSTOMERS if config_kind == "gathering" else 2 * CUSTOMERS
    assert len(amo.leads()) == expected_leads, "a duplicate deal was created"
    assert_each_payment_once(amo, payments)
