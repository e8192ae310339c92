"""The results as a table on stdout and as JSON in tests/bench/results/latest.json."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"


@dataclass(frozen=True)
class Row:
    section: str
    measure: str
    value: str
    target: str = ""
    met: bool | None = None


def write_json(results: Mapping[str, Any], path: Path = RESULTS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def render(results: Mapping[str, Any]) -> str:
    meta = results["meta"]
    lines = [
        f"CRM Bridge benchmark ({'quick' if meta['quick'] else 'full'} run) {meta['started_at']}",
        f"{meta['cpus']} CPUs ({meta['cpu_model']}), Python {meta['python']},"
        f" commit {meta['commit']}",
        f"durable SQLite commit on this disk (WAL, synchronous=FULL): p50"
        f" {meta['durable_commit_ms']['p50']} ms, p99 {meta['durable_commit_ms']['p99']} ms",
        "",
    ]
    rows = list(_rows(results))
    headers = Row("section", "measure", "value", "target", None)
    widths = [
        max(len(getattr(row, name)) for row in [headers, *rows])
        for name in ("section", "measure", "value", "target")
    ]
    previous = ""
    for row in [headers, *rows]:
        section = row.section if row.section != previous else ""
        previous = row.section
        met = {True: "met", False: "MISSED", None: ""}[row.met] if row is not headers else ""
        cells = (section, row.measure, row.value, row.target)
        text = "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True))
        lines.append(f"{text}  {met}".rstrip())
    return "\n".join(lines)


def _rows(results: Mapping[str, Any]) -> Iterator[Row]:
    for name, rows in (
        ("intake", _intake_rows),
        ("openloop", _openloop_rows),
        ("calls", _calls_rows),
        ("orders", _orders_rows),
        ("lone", _lone_rows),
        ("burst", _burst_rows),
        ("burst-bitrix24", _bitrix_burst_rows),
        ("memory", _memory_rows),
    ):
        if name not in results:
            continue
        section = results[name]
        if "error" in section:
            yield Row(_TITLES[name], "FAILED", section["error"][:120])
            continue
        yield from rows(section)


_TITLES = {
    "intake": "1 intake, closed loop",
    "openloop": "2 intake, open loop",
    "calls": "3 CRM calls/payment",
    "orders": "6 CRM calls/order event",
    "lone": "3b lone payment, amoCRM",
    "burst": "4 burst drain, amoCRM",
    "burst-bitrix24": "4b burst drain, Bitrix24",
    "memory": "5 memory (VmRSS)",
}


def _intake_rows(section: Mapping[str, Any]) -> Iterator[Row]:
    title = _TITLES["intake"]
    for connections, run in section.items():
        bridge, empty = run["bridge"], run["empty"]
        rounds = len(run["rounds"])
        for label, figures in (("bridge", bridge), ("empty endpoint", empty)):
            spread = (
                f" ({figures['per_second_min']:.0f}-{figures['per_second_max']:.0f})"
                if rounds > 1
                else ""
            )
            yield Row(
                title,
                f"{label}, {connections} connections: req/s{' median' if rounds > 1 else ''}",
                f"{figures['per_second']:.0f}{spread}",
            )
        yield Row(
            title,
            f"bridge / empty, {connections} connections",
            f"{run['ratio']:.1%}",
            ">= 60%" if connections == "64" else "",
            run["ratio"] >= 0.6 if connections == "64" else None,
        )
        yield Row(
            title,
            "  server CPU per request: bridge / empty",
            f"{bridge['cpu_us_per_request']:.0f} / {empty['cpu_us_per_request']:.0f} us",
        )
        yield Row(title, "  bridge 202 / non-2xx", f"{run['accepted']} / {run['non_2xx']}")
        ok = bool(run["every_202_stored"])
        check = ("yes" if ok else "NO") + f" (+{run['stored_unanswered']} in flight at the end)"
        yield Row(title, "  every 202 is a stored event", check, "yes", ok)
        yield Row(title, "  other load on the machine (max)", f"{run['other_cores_max']:.2f} cores")


def _openloop_rows(section: Mapping[str, Any]) -> Iterator[Row]:
    title = _TITLES["openloop"]
    rate, seconds = section["rate"], section["seconds"]
    for target_name in ("bridge", "empty"):
        run = section[target_name]
        latency = run["latency_ms"]
        label = "bridge" if target_name == "bridge" else "empty endpoint"
        value = f"{latency['p50']:.2f} / {latency['p99']:.2f} ms (max {latency['max']:.1f})"
        is_bridge = target_name == "bridge"
        yield Row(
            title,
            f"{label}: p50 / p99 at {rate:g}/s for {seconds:g} s",
            value,
            "p99 <= 10 ms" if is_bridge else "",
            latency["p99"] <= 10 if is_bridge else None,
        )
        answers = ", ".join(f"{code}: {n}" for code, n in run["statuses"].items())
        yield Row(title, f"  {label}: answers", answers)
    lag = section["bridge"]["lag_ms"]
    yield Row(title, "  generator lateness p99 (included above)", f"{lag['p99']:.2f} ms")
    other = max(section[name]["cpu"]["other_cores"] for name in ("bridge", "empty"))
    yield Row(title, "  other load on the machine (max)", f"{other:.2f} cores")
    if "disk_flush_seconds" in section:
        flush = section["disk_flush_seconds"]
        yield Row(title, "  earlier sections' writes flushed first", f"{flush:.2f} s")


def _calls_rows(section: Mapping[str, Any]) -> Iterator[Row]:
    title = _TITLES["calls"]
    for row in section["scenarios"].values():
        calls, fake = row["crm_calls"], row["fake_calls"]
        value = f"{calls}" + ("" if calls == fake else f" (fake saw {fake}!)")
        yield Row(title, row["label"], value, f"<= {row['target']}", calls <= row["target"])
    yield Row(title, "  429s during these payments", str(section["throttled"]))
    for crm, rows in section.get("every_crm", {}).items():
        for name, row in rows.items():
            calls, fake = row["crm_calls"], row["fake_calls"]
            value = f"{calls}" + ("" if calls == fake else f" (fake saw {fake}!)")
            target = row["target"]
            yield Row(title, f"{crm}: {name}", value, f"<= {target}", calls <= target)


def _orders_rows(section: Mapping[str, Any]) -> Iterator[Row]:
    title = _TITLES["orders"]
    for crm, counts in section.items():
        value = " / ".join(str(counts[event]) for event in ("created", "updated", "cancelled"))
        yield Row(title, f"{crm}: created (new company) / updated / cancelled", value)


def _lone_rows(section: Mapping[str, Any]) -> Iterator[Row]:
    from tests.bench.lone import within_tolerance  # the section's own rule for "unchanged"

    title = _TITLES["lone"]
    off, on = section["runs"]["off"], section["runs"]["on"]
    sizes = section["batch_sizes"]
    yield Row(
        title,
        f"batch_size {sizes['off']} / {sizes['on']}; {section['rounds']} rounds,"
        f" fake {section['fake_latency_ms']:g} ms a call",
        "off / on",
    )
    for name, target in section["targets"].items():
        calls = (off[name]["crm_calls"], on[name]["crm_calls"])
        seen = (off[name]["fake_calls"], on[name]["fake_calls"])
        steady = all(run[name]["crm_calls"] == run[name]["crm_calls_min"] for run in (off, on))
        value = f"{calls[0]:g} / {calls[1]:g}" + ("" if calls == seen else f" (fake saw {seen}!)")
        value += "" if steady else " (varied between rounds)"
        met = calls[1] == calls[0] and calls[1] <= target
        yield Row(title, f"{name}: CRM calls", value, f"<= {target}, on = off", met)
        answer = (off[name]["answer_ms"], on[name]["answer_ms"])
        yield Row(
            title,
            f"  {name}: answer to the POST (median)",
            f"{answer[0]:.0f} / {answer[1]:.0f} ms",
            "on ~ off",
            within_tolerance(answer[0] / 1000, answer[1] / 1000),
        )
        delivered = (off[name]["delivered_ms"], on[name]["delivered_ms"])
        yield Row(
            title,
            f"  {name}: POST to delivered (median)",
            f"{delivered[0]:.0f} / {delivered[1]:.0f} ms",
        )
    throttled = off["throttled"] + on["throttled"]
    yield Row(title, "  429s during these payments", str(throttled), "0", throttled == 0)


def _burst_rows(section: Mapping[str, Any]) -> Iterator[Row]:
    title = _TITLES["burst"]
    yield Row(title, _burst_sizes(section), "")
    targets = section["targets"]
    for name, run in section["runs"].items():
        yield from _drain_rows(
            title,
            name,
            run,
            calls_target=targets["calls_per_payment_on"] if name == "on" else None,
            limiter_target=targets["achieved_over_theoretical_off"] if name == "off" else None,
        )
    ratio = section.get("drain_ratio")
    if ratio is not None:
        target = targets["drain_ratio"]
        yield Row(title, "drain time on / off", f"{ratio:.3f}", f"<= {target:g}", ratio <= target)


def _bitrix_burst_rows(section: Mapping[str, Any]) -> Iterator[Row]:
    title = _TITLES["burst-bitrix24"]
    yield Row(title, _burst_sizes(section), "")
    target = section["targets"]["calls_per_payment"]
    yield from _drain_rows(title, "on", section["run"], calls_target=target, limiter_target=None)


def _burst_sizes(section: Mapping[str, Any]) -> str:
    return (
        f"{section['payments']} payments from {section['customers']} customers"
        f" ({section['new_customers']} new, {section['known_customers']} known)"
    )


def _drain_rows(
    title: str,
    name: str,
    run: Mapping[str, Any],
    *,
    calls_target: float | None,
    limiter_target: float | None,
) -> Iterator[Row]:
    label = f"batching {name} (batch_size {run['batch_size']})"
    done = "all success" if run["all_success"] else f"NOT DRAINED {run['deliveries']}"
    yield Row(title, label, done, "all success", bool(run["all_success"]))
    yield Row(title, "  drain time (first post to last delivery)", f"{run['drain_seconds']:.1f} s")
    per_db, per_fake = run["calls_per_payment"], run["calls_per_payment_fake"]
    value = (
        f"{per_db} / {per_fake} ({run['crm_calls_db']:g} / {run['crm_calls_fake']} calls)"
        if per_db is not None
        else "no payment delivered"
    )
    yield Row(
        title,
        "  CRM calls per payment (deliveries / fake's log)",
        value,
        f"<= {calls_target:g}" if calls_target is not None else "",
        None if calls_target is None or per_fake is None else per_fake <= calls_target,
    )
    ratio = run["achieved_over_theoretical"]
    # a target only where the rate limiter alone sets the drain (batching off)
    yield Row(
        title,
        f"  theoretical (fake's calls / {run['fake_rate']:g} per s); achieved / theoretical",
        f"{run['theoretical_seconds']:.1f} s; {ratio:.3f}" if ratio else "-",
        f"<= {limiter_target:g}" if limiter_target is not None else "",
        None if limiter_target is None else ratio is not None and ratio <= limiter_target,
    )
    throttled = run["throttled"]
    yield Row(title, f"  {run['throttled_as']} received", str(throttled), "0", throttled == 0)
    once = run["exactly_once"]
    if once["ok"]:
        check = f"yes ({once['customers']} customers, {once['deals']} deals)"
    else:
        problems = once.get("problem_count", len(once["problems"]))
        check = f"NO ({problems}): " + "; ".join(once["problems"][:2])
    yield Row(title, "  exactly once in the CRM", check[:120], "yes", bool(once["ok"]))
    warm = run["warm_up"]
    yield Row(
        title,
        "  warm-up, not counted",
        f"{warm['payments']} payments, {warm['crm_calls_fake']} calls, {warm['seconds']:.0f} s",
    )


def _memory_rows(section: Mapping[str, Any]) -> Iterator[Row]:
    title = _TITLES["memory"]
    memory = section["memory"]
    yield Row(title, "crm-bridge serve, idle", f"{memory['idle_mib']:.1f} MiB")
    after = memory["after_burst_mib"]
    met = after * 1.048576 <= 100  # MiB to MB
    yield Row(
        title,
        "crm-bridge serve, after the amoCRM burst (batching on)",
        f"{after:.1f} MiB",
        "<= 100 MB",
        met,
    )
    yield Row(title, "  peak during the burst (VmHWM)", f"{memory['peak_mib']:.1f} MiB")
