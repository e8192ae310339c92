"""Sections 4 and 5: drain a burst against a rate-limited CRM; resident memory.

`crm-bridge serve` (WAIT_SECONDS=0, the reference config and its 6.5 requests/s) delivers to
the fake amoCRM on loopback, which admits 7 requests in any sliding second, answers 429
above that and adds 100 ms to every answer. All payments are posted at once by the
open-loop generator (a separate process, 64 connections); the drain time runs from the
first post to the last delivery's `updated_at`. The theoretical drain time is the calls
the bridge made (each delivery's `crm_calls`, cross-checked with the fake's call log) at
exactly 7 per second: the best any client of that CRM could do with those calls.
"""

from __future__ import annotations

import secrets
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.bench.bodies import customer_key, payment_body
from tests.bench.loadgen import run_loadgen
from tests.bench.procs import BridgeRun, start_bridge

CRM_RATE = 7  # requests/s the fake admits
CRM_LATENCY = 0.1  # seconds the fake adds to every answer
FULL = (1000, 300)  # payments, customers
QUICK = (100, 30)
UNFINISHED = ("pending", "retrying", "processing")


def burst(payments: int, customers: int) -> dict[str, Any]:
    with ExitStack() as stack:
        run = start_bridge(stack, "burst", rate_limit=CRM_RATE, latency=CRM_LATENCY)
        time.sleep(1.0)  # let start-up garbage settle before reading "idle"
        idle_kib = run.server.memory_kib()
        run_id = secrets.token_hex(4)
        bodies = [
            payment_body(f"b{run_id}-{i}", customer_key(6, i % customers), variant=i % customers)
            for i in range(payments)
        ]
        with tempfile.TemporaryDirectory(prefix="bench-burst-load-") as workdir:
            posted = run_loadgen(
                f"{run.server.url}/webhook/payment", bodies, Path(workdir), rate=0, connections=64
            )
        statuses = _wait_drained(run, payments, posted["wall_start"])
        result = _drain_figures(run, posted, statuses)
        result.update(
            payments=payments,
            customers=customers,
            memory={
                "idle_mib": round(idle_kib / 1024, 1),
                "after_burst_mib": round(run.server.memory_kib() / 1024, 1),
                "peak_mib": round(run.server.memory_kib("VmHWM") / 1024, 1),
            },
        )
        return result


def _wait_drained(run: BridgeRun, payments: int, started: float) -> dict[str, int]:
    """Poll the database until no delivery is left to run (or give up: 4x the ideal)."""
    deadline = time.monotonic() + 60 + 4 * payments * 5 / CRM_RATE
    reported = time.monotonic()
    while True:
        statuses = {
            str(status): int(str(n))
            for status, n in run.query("SELECT status, COUNT(*) FROM deliveries GROUP BY 1")
        }
        left = sum(statuses.get(s, 0) for s in UNFINISHED)
        if sum(statuses.values()) >= payments and left == 0:
            return statuses
        if run.server.process.poll() is not None:
            raise RuntimeError(f"the bridge exited during the burst:\n{run.server.log_tail()}")
        if time.monotonic() > deadline:
            return {**statuses, "timed_out": 1}
        if time.monotonic() - reported >= 30:
            reported = time.monotonic()
            done = statuses.get("success", 0)
            print(
                f"  burst: {done}/{payments} delivered after {time.time() - started:.0f}s,"
                f" {run.fake.throttled} 429s",
                file=sys.stderr,
            )
        time.sleep(0.5)


def _drain_figures(
    run: BridgeRun, posted: dict[str, Any], statuses: dict[str, int]
) -> dict[str, Any]:
    [(calls, last_update, created)] = run.query(
        "SELECT SUM(crm_calls), MAX(updated_at), SUM(deal_created) FROM deliveries"
    )
    calls_db = int(str(calls or 0))
    calls_fake = len(run.fake.calls)
    finished = datetime.strptime(str(last_update), "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)
    drain = finished.timestamp() - posted["wall_start"]
    theoretical = calls_fake / CRM_RATE
    successes = statuses.get("success", 0)
    return {
        "deliveries": statuses,
        "all_success": "timed_out" not in statuses and successes == sum(statuses.values()),
        "intake_seconds": round(posted["elapsed_seconds"], 3),
        "intake_statuses": posted["statuses"],
        "drain_seconds": round(drain, 1),
        "crm_calls_db": calls_db,
        "crm_calls_fake": calls_fake,
        "calls_per_payment": round(calls_db / successes, 2) if successes else None,
        "deals_created": int(str(created or 0)),
        "theoretical_seconds": round(theoretical, 1),
        "achieved_over_theoretical": round(drain / theoretical, 3) if theoretical else None,
        "throttled_429": run.fake.throttled,
    }
