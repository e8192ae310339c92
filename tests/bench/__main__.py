"""`python -m bench [--quick] [--only SECTION,...]` (`SECTIONS` below; all by default).

Runs the selected sections in order, prints the table, writes tests/bench/results/latest.json.
A failing section is reported as FAILED (exit status 1) and the others still run; every
server, fake and temporary directory is removed on the way out, also on Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from types import FrameType
from typing import Any

from tests.bench import burst, calls, calls_every_crm, intake, lone, order_calls
from tests.bench.config import ROOT
from tests.bench.loadgen import percentiles
from tests.bench.report import render, write_json
from tests.bench.wrk import require_wrk

SECTIONS = (
    "intake",
    "openloop",
    "calls",
    "orders",
    "lone",
    "burst",
    "burst-bitrix24",
    "memory",
)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    if {"intake"} & set(args.only):
        require_wrk()
    results: dict[str, Any] = {"meta": _meta(args.quick, args.only)}
    failed = False
    with tempfile.TemporaryDirectory(prefix="bench-") as workdir:
        for name, run in _plan(args.only, args.quick, Path(workdir)):
            print(f"bench: {name} ...", file=sys.stderr, flush=True)
            started = time.monotonic()
            try:
                results.update(run())
            except Exception as exc:
                traceback.print_exc()
                failed = True
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"bench: {name} done in {time.monotonic() - started:.0f}s", file=sys.stderr)
    results["meta"]["finished_at"] = _now()
    path = write_json(results)
    print(render(results))
    print(f"\n(raw figures: {path.relative_to(ROOT)})")
    return 1 if failed else 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs: a smoke test")
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated sections out of {','.join(SECTIONS)}"
        " (memory is read around the amoCRM burst with batching on, so it runs that)",
    )
    args = parser.parse_args(argv)
    args.only = [part.strip() for part in args.only.split(",") if part.strip()]
    unknown = set(args.only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    return args


Step = tuple[str, Callable[[], dict[str, Any]]]


def _plan(only: list[str], quick: bool, workdir: Path) -> list[Step]:
    durations = intake.QUICK if quick else intake.FULL
    payments, customers = burst.QUICK if quick else burst.FULL
    bitrix_payments, bitrix_customers = burst.BITRIX_QUICK if quick else burst.BITRIX_FULL
    rounds = lone.QUICK if quick else lone.FULL

    def burst_and_memory() -> dict[str, Any]:
        # memory alone needs only the default config's run (batching on)
        drained = burst.amocrm_burst(payments, customers, off="burst" in only)
        picked: dict[str, Any] = {}
        if "burst" in only:
            picked["burst"] = drained
        if "memory" in only:
            picked["memory"] = {"memory": drained["memory"], "payments": payments}
        return picked

    # Each section's figures, under its name; memory is read around the amoCRM burst.
    sections: dict[str, Callable[[], Any]] = {
        "intake": lambda: intake.closed_loop(workdir, durations),
        "openloop": lambda: intake.open_loop(workdir, durations),
        "calls": lambda: {**calls.crm_calls(), "every_crm": calls_every_crm.every_crm()},
        "orders": order_calls.order_calls,
        "lone": lambda: lone.lone_payments(rounds),
        "burst-bitrix24": lambda: burst.bitrix24_burst(bitrix_payments, bitrix_customers),
    }
    steps: list[Step] = []
    for name in SECTIONS:
        if name == "burst" and ("burst" in only or "memory" in only):
            steps.append(("burst" if "burst" in only else "memory", burst_and_memory))
        elif name in sections and name in only:
            steps.append(_step(name, sections[name]))
    return steps


def _step(name: str, run: Callable[[], Any]) -> Step:
    return name, lambda: {name: run()}


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds the `with` blocks that stop the servers


def _meta(quick: bool, only: list[str]) -> dict[str, Any]:
    return {
        "started_at": _now(),
        "quick": quick,
        "sections": only,
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "commit": _commit(),
        "versions": {name: version(name) for name in ("litestar", "uvicorn", "aiosqlite")},
        "durable_commit_ms": _durable_commit_ms(),
    }


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _commit() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(  # noqa: S603 - fixed git command lines
            ["git", *args],  # noqa: S607
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        return done.stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + (" + local changes" if git("status", "--porcelain", "--", "bridge") else "")


def _durable_commit_ms(commits: int = 200) -> dict[str, float]:
    """What one durable commit costs on the disk the servers' databases live on."""
    with tempfile.TemporaryDirectory(prefix="bench-disk-") as directory:
        conn = sqlite3.connect(Path(directory) / "probe.sqlite", isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("CREATE TABLE t (payload TEXT)")
            times = []
            for _ in range(commits):
                started = time.perf_counter()
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("INSERT INTO t VALUES (?)", ("x" * 1200,))
                conn.execute("COMMIT")
                times.append(time.perf_counter() - started)
        finally:
            conn.close()
    figures = percentiles(times)
    return {"p50": figures["p50"], "p99": figures["p99"]}


if __name__ == "__main__":
    sys.exit(main())
