"""Sections 1 and 2: how fast the bridge takes webhooks, next to an endpoint doing nothing.

Each measurement gets a fresh server (and, for the bridge, a fresh database and fake), so
runs do not inherit each other's backlog. The bridge runs as `crm-bridge serve` with
WAIT_SECONDS=0: a 202 means the event is committed (WAL, synchronous=FULL, group commit).
Its amoCRM is the stateful fake on loopback with the reference rate limit, so the worker
delivers in the background at ~6.5 calls/s while the intake is measured, as in
production; it adds a delivery row per event and a little CPU, nothing more.
"""

from __future__ import annotations

import os
import secrets
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

from tests.bench.bodies import customer_key, payment_body
from tests.bench.loadgen import run_loadgen
from tests.bench.procs import (
    BridgeRun,
    CpuMeter,
    Server,
    start_bridge,
    start_empty,
    wait_for_quiet,
)
from tests.bench.wrk import WrkResult, run_wrk

CONNECTIONS = (16, 64)
OPEN_LOOP_RATE = 500
OPEN_LOOP_CONNECTIONS = 32


@dataclass(frozen=True)
class Durations:
    closed_seconds: float  # one measured wrk run
    closed_warmup: float  # wrk run before it, same server, not counted
    closed_rounds: int  # bridge and empty endpoint measured in turn, this many times
    open_seconds: float
    open_warmup: float


FULL = Durations(
    closed_seconds=10, closed_warmup=2, closed_rounds=3, open_seconds=30, open_warmup=3
)
QUICK = Durations(closed_seconds=3, closed_warmup=1, closed_rounds=1, open_seconds=5, open_warmup=1)


def closed_loop(workdir: Path, durations: Durations) -> dict[str, Any]:
    """Webhooks/s at 16 and 64 connections, the bridge and the empty endpoint in turn.

    Each round measures the bridge and then the empty endpoint, so the two see the same
    machine; the figures are the medians over the rounds, the ratio the median of the
    rounds' ratios. CPU per request (server CPU time / answers) is the steadier figure
    when other work shares the machine.
    """
    result: dict[str, Any] = {}
    for connections in CONNECTIONS:
        rounds = []
        for _ in range(durations.closed_rounds):
            bridge = _closed_run(workdir, connections, durations, bridge=True)
            empty = _closed_run(workdir, connections, durations, bridge=False)
            rounds.append({"bridge": bridge, "empty": empty})
        result[str(connections)] = _summarise(rounds)
    return result


def _summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for target in ("bridge", "empty"):
        rates = [r[target]["per_second"] for r in rounds]
        cpu = [r[target]["cpu"]["server_cpu_us_per_request"] for r in rounds]
        summary[target] = {
            "per_second": round(median(rates), 1),
            "per_second_min": min(rates),
            "per_second_max": max(rates),
            "cpu_us_per_request": round(median(cpu), 1),
        }
    ratios = [
        r["bridge"]["per_second"] / r["empty"]["per_second"]
        for r in rounds
        if r["empty"]["per_second"]
    ]
    bridge_runs = [r["bridge"] for r in rounds]
    summary["ratio"] = round(median(ratios), 3) if ratios else 0.0
    summary["accepted"] = sum(run["statuses"].get("202", 0) for run in bridge_runs)
    summary["non_2xx"] = sum(run["non_2xx"] for run in bridge_runs)
    summary["every_202_stored"] = all(run["database"]["every_202_stored"] for run in bridge_runs)
    summary["stored_unanswered"] = sum(run["database"]["stored_unanswered"] for run in bridge_runs)
    summary["other_cores_max"] = max(
        run[target]["cpu"]["other_cores"] for run in rounds for target in ("bridge", "empty")
    )
    summary["rounds"] = rounds
    return summary


def _closed_run(
    workdir: Path, connections: int, durations: Durations, *, bridge: bool
) -> dict[str, Any]:
    """One measured wrk run (after a warm-up run) against a fresh bridge or empty endpoint."""
    other_before = wait_for_quiet()
    with ExitStack() as stack:
        run = start_bridge(stack, f"intake-{connections}") if bridge else None
        server = run.server if run is not None else start_empty(stack)
        run_wrk(server.url, connections, durations.closed_warmup, workdir)
        with CpuMeter(server.pid) as cpu:
            measured = run_wrk(server.url, connections, durations.closed_seconds, workdir)
        result = {
            **measured.as_json(),
            "cpu": {**cpu.as_json(measured.requests), "other_cores_before": other_before},
            "rss_mib_after": round(server.memory_kib() / 1024, 1),
        }
        if run is not None:
            # stopping flushes the request log before the checks of the database
            result["server_exit_code"] = server.stop()
            result["database"] = _stored(run, measured)
        return result


def _stored(run: BridgeRun, measured: WrkResult) -> dict[str, Any]:
    """What the database holds for the measured run: every 202 must be an event."""
    pattern = f"w{measured.run_id}-%"
    [(events,)] = run.query("SELECT COUNT(*) FROM events WHERE key LIKE ?", (pattern,))
    [(deliveries,)] = run.query(
        "SELECT COUNT(*) FROM deliveries d JOIN events e ON e.id = d.event_id WHERE e.key LIKE ?",
        (pattern,),
    )
    logged = run.query(
        "SELECT http_status, COUNT(*) FROM requests WHERE event_key LIKE ? GROUP BY 1",
        (pattern,),
    )
    [(journal_mode,)] = run.query("PRAGMA journal_mode")
    events_count = int(str(events))
    return {
        "events": events_count,
        "deliveries": int(str(deliveries)),
        "request_log": {str(code): count for code, count in logged},
        # wrk stops counting with requests still in flight; those may be stored too
        "every_202_stored": events_count >= measured.accepted,
        "stored_unanswered": events_count - measured.accepted,
        "journal_mode": journal_mode,
    }


def open_loop(workdir: Path, durations: Durations) -> dict[str, Any]:
    """p50/p99 time to answer at a fixed offered rate, the bridge and the empty endpoint."""
    warmup = int(OPEN_LOOP_RATE * durations.open_warmup)
    total = warmup + int(OPEN_LOOP_RATE * durations.open_seconds)
    run_id = secrets.token_hex(4)
    bodies = [payment_body(f"o{run_id}-{i}", customer_key(5, i)) for i in range(total)]
    result: dict[str, Any] = {"rate": OPEN_LOOP_RATE, "seconds": durations.open_seconds}
    result["disk_flush_seconds"] = _flush_disk()
    with ExitStack() as stack:
        run = start_bridge(stack, "openloop")
        result["bridge"] = _open_run(run.server, bodies, warmup, workdir)
    with ExitStack() as stack:
        server = start_empty(stack)
        result["empty"] = _open_run(server, bodies, warmup, workdir)
    return result


def _flush_disk() -> float:
    """Write out what earlier sections left in the page cache (the closed-loop runs leave
    hundreds of MB): fsyncs timed while the kernel flushes that belong to those runs."""
    started = time.monotonic()
    os.sync()
    return round(time.monotonic() - started, 2)


def _open_run(server: Server, bodies: list[str], warmup: int, workdir: Path) -> dict[str, Any]:
    other_before = wait_for_quiet()
    with CpuMeter(server.pid) as cpu:
        measured = run_loadgen(
            f"{server.url}/webhook/payment",
            bodies,
            workdir,
            rate=OPEN_LOOP_RATE,
            connections=OPEN_LOOP_CONNECTIONS,
            warmup=warmup,
        )
    return {**measured, "cpu": {**cpu.as_json(len(bodies)), "other_cores_before": other_before}}
