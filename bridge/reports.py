"""What `crm-bridge stats`, `events` and `show` print: one report dict per command, rendered
either as JSON (`--json`, for scripts) or as rich tables for a person. Times are UTC."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from bridge.store import (
    EventSummary,
    EventView,
    JournalEntry,
    OperatorStats,
    OrderEventRow,
    OrderLink,
    QueueStats,
    RequestRow,
)
from bridge.store.oversight import CallRow

_FINISHED = ("success", "failed", "not_found")


def iso(stored: str | None) -> str | None:
    """A stored UTC time (`YYYY-MM-DD HH:MM:SS.fff`) in ISO 8601 with `Z`."""
    return None if stored is None else stored.replace(" ", "T") + "Z"


def iso_ts(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")[:-6] + "Z"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    shown = [f"{value}{unit}" for value, unit in parts if value][:2]
    return " ".join(shown) or "0s"


def _ratio(numerator: int, denominator: int) -> float | None:
    return round(numerator / denominator, 4) if denominator else None


def stats_report(stats: OperatorStats, queue: QueueStats, now: float) -> dict[str, Any]:
    events = dict(sorted(stats.events.items()))
    finished = sum(events.get(status, 0) for status in _FINISHED)
    successes = sum(crm.deliveries.get("success", 0) for crm in stats.crms)
    success_calls = sum(crm.success_calls for crm in stats.crms)
    oldest = now - queue.oldest_pending_at if queue.oldest_pending_at is not None else None
    return {
        "events": events,
        "events_total": sum(events.values()),
        # Payments and orders apart (SPEC §8): a kind with no events is left out.
        "events_by_kind": {kind: dict(counts) for kind, counts in sorted(stats.by_kind.items())},
        "success_rate": _ratio(events.get("success", 0), finished),
        "last_success_at": iso(stats.last_success_at),
        "queue_depth": queue.depth,
        "oldest_pending_age_seconds": None if oldest is None else round(oldest, 1),
        "crm_calls": sum(crm.calls for crm in stats.crms),
        "avg_calls_per_success": _ratio(success_calls, successes),
        "crms": {
            crm.crm: {
                "deliveries": dict(sorted(crm.deliveries.items())),
                "crm_calls": crm.calls,
                "avg_calls_per_success": _ratio(
                    crm.success_calls, crm.deliveries.get("success", 0)
                ),
                "last_success_at": iso(crm.last_success_at),
            }
            for crm in stats.crms
        },
    }


def render_stats(console: Console, report: Mapping[str, Any]) -> None:
    events = Table(title="Events", title_justify="left")
    events.add_column("status")
    events.add_column("count", justify="right")
    for status, count in report["events"].items():
        events.add_row(status, str(count))
    events.add_row("total", str(report["events_total"]), style="bold")
    console.print(events)
    kinds = report.get("events_by_kind", {})
    if len(kinds) > 1 or "order" in kinds:
        for kind, counts in kinds.items():
            parts = ", ".join(f"{status} {count}" for status, count in counts.items())
            console.print(f"{kind}s: {parts}")
    rate = report["success_rate"]
    average = report["avg_calls_per_success"]
    summary = Table.grid(padding=(0, 2))
    summary.add_row("success rate (of finished events)", "-" if rate is None else f"{rate:.1%}")
    last = report["last_success_at"]
    summary.add_row("last success (UTC)", _short_time(last) if last else "never")
    summary.add_row("queue depth", str(report["queue_depth"]))
    summary.add_row("oldest pending", duration(report["oldest_pending_age_seconds"]))
    summary.add_row("CRM calls", str(report["crm_calls"]))
    summary.add_row("calls per successful delivery", "-" if average is None else f"{average:.2f}")
    console.print(summary)
    if not report["crms"]:
        return
    crms = Table(title="Deliveries per CRM", title_justify="left")
    for column in ("crm", "deliveries", "calls", "calls/success", "last success (UTC)"):
        crms.add_column(column)
    for name, crm in report["crms"].items():
        counts = ", ".join(f"{status} {count}" for status, count in crm["deliveries"].items())
        per = crm["avg_calls_per_success"]
        crms.add_row(
            name,
            counts,
            str(crm["crm_calls"]),
            "-" if per is None else f"{per:.2f}",
            _short_time(crm["last_success_at"]) if crm["last_success_at"] else "never",
        )
    console.print(crms)


def events_report(rows: Sequence[EventSummary]) -> list[dict[str, Any]]:
    return [_event_line(row) for row in rows]


def _event_line(row: EventSummary) -> dict[str, Any]:
    if row.kind == "order":
        head = {"order_event": row.key, "updated_at": row.paid_at}
    else:
        head = {"payment_id": row.key}
    return {
        **head,
        "status": row.status,
        "amount": row.amount,
        **({"paid_at": row.paid_at} if row.kind != "order" else {}),
        "received_at": iso(row.received_at),
        "processed_at": iso(row.processed_at),
        "deliveries": dict(row.deliveries),
        "error": row.error_message,
    }


def render_events(console: Console, report: Sequence[Mapping[str, Any]]) -> None:
    if not report:
        console.print("no events match")
        return
    orders = "order_event" in report[0]
    table = Table()
    first = "order event" if orders else "payment id"
    for column in (first, "status", "amount", "received (UTC)", "deliveries", "error"):
        table.add_column(column, overflow="fold")
    for row in report:
        table.add_row(
            row["order_event" if orders else "payment_id"],
            row["status"],
            row["amount"] or "-",
            _short_time(row["received_at"]),
            ", ".join(f"{crm}: {status}" for crm, status in row["deliveries"].items()) or "-",
            row["error"] or "",
        )
    console.print(table)


def show_report(
    view: EventView,
    journal: Sequence[JournalEntry],
    requests: Sequence[RequestRow],
    calls: Sequence[CallRow] = (),
    links: Mapping[str, Mapping[str, str]] | None = None,
    waiting: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    try:
        payload: Any = json.loads(view.payload)
    except json.JSONDecodeError:
        payload = view.payload
    order = payload.get("course_order") if isinstance(payload, dict) else None
    return {
        "payment_id": view.key,
        # The `[source.NAME]` the body came from; None: the platform's own payment route.
        "source": view.source,
        "status": view.status,
        "amount": view.amount,
        # When it was paid, as the platform (or the imported row) says, in its own zone;
        # `received_at` is when the bridge got it (the import's time for imported rows).
        "paid_at": order.get("created_at") if isinstance(order, dict) else None,
        "received_at": iso(view.received_at),
        "processed_at": iso(view.processed_at),
        "error": view.error_message,
        "payload": payload,
        "deliveries": [
            {
                "crm": d.crm,
                "status": d.status,
                "attempts": d.attempts,
                "contact_id": d.contact_id,
                "deal_id": d.deal_id,
                "deal_created": d.deal_created,
                "pipeline_id": d.pipeline_id,
                "crm_calls": d.crm_calls,
                "next_attempt_at": (
                    iso_ts(d.next_attempt_at) if d.status in ("pending", "retrying") else None
                ),
                "last_error": d.last_error,
                "links": dict((links or {}).get(d.crm, {})),
                "waiting_because": (waiting or {}).get(d.crm),
            }
            for d in view.deliveries
        ],
        "crm_calls": [
            {
                "crm": c.crm,
                "attempt": c.attempt,
                "at": iso(c.at),
                "method": c.method,
                "path": c.path,
                "status": c.status,
                "ms": c.ms,
                "error": c.error,
                "batch": c.batch,
            }
            for c in calls
        ],
        "journal": [
            {"crm": j.crm, "step": j.step, "value": json.loads(j.value), "at": iso(j.at)}
            for j in journal
        ],
        "requests": [
            {
                "received_at": iso(r.received_at),
                "route": r.route,
                "remote_addr": r.remote_addr,
                "verdict": r.verdict,
                "http_status": r.http_status,
                "detail": r.detail,
            }
            for r in requests
        ],
    }


def order_show_report(
    report: Mapping[str, Any],
    links: Sequence[OrderLink],
    events: Sequence[OrderEventRow],
    order_crms: Sequence[str],
) -> dict[str, Any]:
    """`show_report` of an order event, with the order's deal per CRM and its events."""
    shown = {key: value for key, value in report.items() if key not in ("payment_id", "paid_at")}
    payload = report["payload"]
    order = payload.get("order") if isinstance(payload, dict) else None
    order = order if isinstance(order, dict) else {}
    return {
        "order_id": order.get("id"),
        "order_event": report["payment_id"],
        "event": payload.get("event") if isinstance(payload, dict) else None,
        "order_status": order.get("status"),
        "updated_at": order.get("updated_at"),
        **shown,
        # Sections without order_stages take no orders: such a CRM has no delivery here.
        "order_crms": list(order_crms),
        "order_links": [
            {
                "crm": link.crm,
                "deal_id": link.deal_id,
                "contact_id": link.contact_id,
                "company_id": link.company_id,
                "status": link.status,
                "total": link.total,
                "applied_event": link.event_key,
            }
            for link in links
        ],
        "order_events": [
            {
                "order_event": row.key,
                "status": row.status,
                "event": row.event,
                "order_status": row.order_status,
                "updated_at": row.updated_at,
            }
            for row in events
        ],
    }


def render_show(console: Console, report: Mapping[str, Any]) -> None:
    head = Table.grid(padding=(0, 2))
    if "order_event" in report:
        head.add_row("order id", str(report["order_id"]))
        head.add_row("order event", report["order_event"])
        head.add_row("event", f"{report['event']} (order status {report['order_status']})")
        head.add_row("updated (platform time)", str(report["updated_at"]))
        head.add_row("CRMs taking orders", ", ".join(report["order_crms"]) or "none")
    else:
        head.add_row("payment id", report["payment_id"])
        head.add_row("source", report.get("source") or "/webhook/payment")
    head.add_row("status", report["status"])
    head.add_row("amount", report["amount"] or "-")
    if "order_event" not in report:
        head.add_row("paid (platform time)", report.get("paid_at") or "-")
    head.add_row("received", _short_time(report["received_at"]))
    head.add_row("processed", _short_time(report["processed_at"]))
    if report["error"]:
        head.add_row("error", report["error"])
    console.print(head)
    console.rule("payload")
    console.print_json(json.dumps(report["payload"], ensure_ascii=False))
    console.rule("deliveries")
    for delivery in report["deliveries"]:
        table = Table.grid(padding=(0, 2))
        created = delivery["deal_created"]
        rows = {
            "crm": delivery["crm"],
            "status": delivery["status"],
            "attempts": str(delivery["attempts"]),
            "contact id": delivery["contact_id"] or "-",
            "deal id": delivery["deal_id"] or "-",
            "deal created": "-" if created is None else ("yes" if created else "no"),
            "pipeline": delivery["pipeline_id"] or "-",
            "CRM calls": str(delivery["crm_calls"]),
            "next attempt": _short_time(delivery["next_attempt_at"]),
            "last error": delivery["last_error"] or "-",
        }
        if delivery.get("waiting_because"):
            rows["waiting because"] = delivery["waiting_because"]
        for name, url in delivery.get("links", {}).items():
            rows[f"{name} in CRM"] = url
        for label, value in rows.items():
            table.add_row(label, value)
        console.print(table)
    if not report["deliveries"]:
        console.print("none (the event was not processed)")
    console.rule("CRM calls")
    _print_rows(
        console,
        ("crm", "try", "at (UTC)", "call", "status", "ms", "error"),
        [
            (
                c["crm"],
                str(c["attempt"]),
                _short_time(c["at"]),
                f"{c['method']} {c['path']}" + _batch_label(c.get("batch", 1)),
                str(c["status"]) if c["status"] else "no answer",
                f"{c['ms']:.0f}",
                c["error"] or "",
            )
            for c in report.get("crm_calls", [])
        ],
    )
    console.rule("step journal")
    _print_rows(
        console,
        ("crm", "step", "value", "at (UTC)"),
        [
            (j["crm"], j["step"], json.dumps(j["value"], ensure_ascii=False), _short_time(j["at"]))
            for j in report["journal"]
        ],
    )
    if "order_event" in report:
        _render_order(console, report)
    console.rule("requests")
    _print_rows(
        console,
        ("received (UTC)", "route", "from", "verdict", "HTTP", "detail"),
        [
            (
                _short_time(r["received_at"]),
                r["route"],
                r["remote_addr"],
                r["verdict"],
                str(r["http_status"]),
                r["detail"],
            )
            for r in report["requests"]
        ],
    )


def _render_order(console: Console, report: Mapping[str, Any]) -> None:
    console.rule("the order's deal per CRM")
    _print_rows(
        console,
        ("crm", "deal id", "contact id", "company id", "status", "total", "last applied"),
        [
            (
                link["crm"],
                link["deal_id"],
                link["contact_id"],
                link["company_id"] or "-",
                link["status"],
                link["total"],
                link["applied_event"],
            )
            for link in report["order_links"]
        ],
    )
    console.rule("the order's events")
    _print_rows(
        console,
        ("order event", "status", "event", "order status", "updated at"),
        [
            (
                row["order_event"],
                row["status"],
                row["event"],
                row["order_status"],
                row["updated_at"],
            )
            for row in report["order_events"]
        ],
    )


def _print_rows(console: Console, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    if not rows:
        console.print("none")
        return
    table = Table()
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row)
    console.print(table)


def _short_time(value: str | None) -> str:
    """ISO `...Z` as `YYYY-MM-DD HH:MM:SS` for tables."""
    return "-" if value is None else value.replace("T", " ").removesuffix("Z")[:19]


def _batch_label(batch: int) -> str:
    """A batch call served other deliveries too (issue 20)."""
    return f" (batch of {batch})" if batch > 1 else ""
