"""Back-sync's own listing (issue 19): `crm-event` and `crm-events`.

CRM events sit in the event log beside payments and orders (kind `crm_event`, one
delivery to `platform`), so `crm-bridge stats`, `retry --failed`, health and metrics
count them already; these two commands show them the way an operator asks about them:
by CRM section, deal, order and what was decided.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import click
from rich.table import Table

from bridge.cli._env import CliEnv, console, open_store, print_json, run
from bridge.cli.log import parse_since
from bridge.store import CrmEventRow
from bridge.store.backsync import PLATFORM


def _report(row: CrmEventRow) -> dict[str, Any]:
    report = asdict(row)
    report["received_at"] = row.received_at.replace(" ", "T") + "Z"
    return report


@click.command("crm-events")
@click.option(
    "--status",
    type=click.Choice(["pending", "processing", "success", "failed"]),
    help="Only events in this status (failed: the callback failed or went dead).",
)
@click.option("--crm", default=None, help="Only events of this CRM section.")
@click.option("--order", "order_id", default=None, help="Only events of this order.")
@click.option("--since", default=None, help="Received since: 30m, 2h, 3d, 1w or an ISO date.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def crm_events(
    env: CliEnv,
    status: str | None,
    crm: str | None,
    order_id: str | None,
    since: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Deal moves the CRMs reported (back-sync), newest first, with what the bridge did."""
    settings = env.settings()
    since_ts = parse_since(since, env.clock()) if since is not None else None

    async def work() -> list[CrmEventRow]:
        async with open_store(settings, env) as store:
            return await store.list_crm_events(
                status=status, crm=crm, order_id=order_id, since=since_ts, limit=limit
            )

    found = run(work())
    if as_json:
        print_json([_report(row) for row in found])
        return
    if not found:
        console().print("no CRM events match")
        return
    table = Table()
    for column in ("received (UTC)", "crm", "deal", "stage", "order", "status", "decision"):
        table.add_column(column, overflow="fold")
    for row in found:
        decision = row.decision or "-"
        if row.forwarded_status:
            decision = f"→ {row.forwarded_status}"
        if row.error and row.status != "success":
            decision += f" ({row.error})"
        table.add_row(
            row.received_at[:19],
            row.crm,
            row.deal_id,
            row.stage or "-",
            row.order_id or "-",
            row.status,
            decision,
        )
    console().print(table)


@click.command("crm-event")
@click.argument("key")
@click.option("--retry", "retry_now", is_flag=True, help="Send its callback again now.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def crm_event(env: CliEnv, key: str, retry_now: bool, as_json: bool) -> None:
    """One CRM event by its key (`<section>:<dedup key>`, see crm-events) or id: the
    event, the decision, the callback's delivery and the requests that carried it."""
    settings = env.settings()

    async def work() -> dict[str, Any]:
        async with open_store(settings, env) as store:
            row = await store.crm_event(key)
            if row is None:
                raise click.ClickException(f"no CRM event {key!r}")
            queued = await store.retry_now(row.id) if retry_now else 0
            view = await store.event_by_id(row.id)
            journal = await store.event_journal(row.id)
            requests = await store.requests_for(row.key)
        report = _report(row)
        report["payload"] = json.loads(view.payload) if view is not None else None
        report["deliveries"] = [
            {
                "to": d.crm,
                "status": d.status,
                "attempts": d.attempts,
                "last_error": d.last_error,
                "next_attempt_at": d.next_attempt_at
                if d.status in ("pending", "retrying")
                else None,
            }
            for d in (view.deliveries if view is not None else ())
        ]
        report["journal"] = [{"step": j.step, "value": json.loads(j.value)} for j in journal]
        report["requests"] = [
            {"received_at": r.received_at, "http_status": r.http_status, "detail": r.detail}
            for r in requests
        ]
        report["queued_again"] = bool(queued)
        return report

    report = run(work())
    if as_json:
        print_json(report)
        return
    out = console()
    head = Table.grid(padding=(0, 2))
    for label in ("key", "crm", "deal_id", "stage", "received_at", "status", "order_id"):
        head.add_row(label.replace("_", " "), str(report[label] or "-"))
    head.add_row("decision", str(report["decision"] or "-"))
    if report["forwarded_status"]:
        head.add_row(
            "forwarded", f"{report['forwarded_status']} (webhook-id {report['webhook_id']})"
        )
    for delivery in report["deliveries"]:
        line = f"{delivery['status']}, {delivery['attempts']} attempt(s)"
        if delivery["last_error"]:
            line += f", last error: {delivery['last_error']}"
        head.add_row(f"to {delivery['to']}", line)
    for request in report["requests"]:
        head.add_row("request", f"{request['received_at'][:19]} HTTP {request['http_status']}")
    out.print(head)
    if report["queued_again"]:
        out.print(f"queued again: the running bridge sends it to the {PLATFORM} within about 1 s")
    elif retry_now:
        out.print(f"nothing to retry: the event is {report['status']}")
