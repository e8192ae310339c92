"""Commands over the event log: `stats`, `events`, `show`, `retry`, `prune`."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import click

from bridge import reports
from bridge.cli._env import CliEnv, console, open_store, print_json, run
from bridge.cli.follow import customer_lookup_keys, follow_events
from bridge.crm.links import record_links
from bridge.staleness import stale_config
from bridge.store import EventView, Store
from bridge.store.backsync import PLATFORM
from bridge.store.oversight import RETRY_STATES

EVENT_STATUSES = ("pending", "processing", "success", "failed", "skipped", "not_found")
# How often the running bridge's worker looks for due deliveries.
WORKER_POLL_SECONDS = 1
_DURATION = re.compile(r"(\d+)\s*([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def stats(env: CliEnv, as_json: bool) -> None:
    """Events per status, deliveries per CRM, success rate, queue age, CRM calls."""
    settings = env.settings()

    async def work() -> dict[str, Any]:
        async with open_store(settings, env) as store:
            numbers = await store.operator_stats()
            queue = await store.queue_stats()
        return reports.stats_report(numbers, queue, env.clock())

    report = run(work())
    if as_json:
        print_json(report)
    else:
        reports.render_stats(console(), report)


@click.command()
@click.option("--status", type=click.Choice(EVENT_STATUSES), help="Only events in this status.")
@click.option(
    "--crm",
    default=None,
    help="Only events delivered to this CRM; --status then means its delivery.",
)
@click.option("--since", default=None, help="Received since: 30m, 2h, 3d, 1w or an ISO date.")
@click.option(
    "--customer",
    default=None,
    help="Only this customer's: a phone, e-mail or Telegram id (normalised as intake does).",
)
@click.option("--deal", "deal_id", default=None, help="Only events that went to this deal id.")
@click.option(
    "--orders",
    is_flag=True,
    help="Order events (POST /webhook/order) instead of payments; key: ORDER_ID@UPDATED_AT.",
)
@click.option(
    "--source",
    type=click.Choice(["live", "import"]),
    default=None,
    help="Only webhooks (live) or only `crm-bridge import` rows.",
)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1))
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events as they arrive.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def events(
    env: CliEnv,
    status: str | None,
    crm: str | None,
    since: str | None,
    customer: str | None,
    deal_id: str | None,
    source: str | None,
    orders: bool,
    limit: int,
    follow: bool,
    as_json: bool,
) -> None:
    """Payment (or --orders: order) events, newest first (times in UTC); --follow tails."""
    settings = env.settings()
    since_ts = parse_since(since, env.clock()) if since is not None else None
    if crm is not None and crm not in settings.file.crm:
        click.echo(f"warning: no CRM named {crm!r} in {settings.config_file}", err=True)
    filters: dict[str, Any] = {
        "status": status,
        "crm": crm,
        "customer_keys": customer_lookup_keys(customer) if customer else (),
        "deal_id": deal_id,
        "source": source,
        "kind": "order" if orders else "payment",
    }
    if follow:
        follow_events(env, settings, filters, since_ts, as_json)
        return

    async def work() -> list[Any]:
        async with open_store(settings, env) as store:
            return await store.list_events(since=since_ts, limit=limit, **filters)

    report = reports.events_report(run(work()))
    if as_json:
        print_json(report)
    else:
        reports.render_events(console(), report)


@click.command()
@click.argument("event_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def show(env: CliEnv, event_id: str, as_json: bool) -> None:
    """Everything known about one event: payload, deliveries, CRM calls, steps, requests.

    EVENT_ID is a payment id, an order event (ORDER_ID@UPDATED_AT, as `events --orders`
    lists them) or an order id (its newest event, its deal per CRM and all its events)."""
    settings = env.settings()

    async def work() -> dict[str, Any]:
        async with open_store(settings, env) as store:
            view, order_id = await find_event(store, event_id)
            if view is None:
                raise click.ClickException(
                    f"no payment with id {event_id!r} (nor an order or order event)"
                )
            journal = await store.event_journal(view.id)
            requests = await store.requests_for(view.key)
            calls = await store.event_calls(view.id)
            states = await store.crm_states()
            holds = await store.holds()
            order_links = await store.order_links(order_id) if order_id else []
            order_events = await store.order_events_of(order_id) if order_id else []
        # Why an unfinished delivery waits, when its CRM is paused.
        waiting: dict[str, str] = {}
        for d in view.deliveries:
            if d.status not in ("pending", "retrying"):
                continue
            hold, state = holds.get(d.crm), states.get(d.crm)
            if hold is not None:
                waiting[d.crm] = f"{d.crm} paused by {hold.by}: {hold.reason}"
            elif state is not None and state.paused_reason:
                waiting[d.crm] = f"{d.crm} paused: {state.paused_reason}"
        links = {
            d.crm: record_links(settings.file.crm[d.crm], d.contact_id, d.deal_id)
            for d in view.deliveries
            if d.crm in settings.file.crm
        }
        report = reports.show_report(view, journal, requests, calls, links, waiting)
        if order_id is None:
            return report
        return reports.order_show_report(report, order_links, order_events, settings.order_crms)

    report = run(work())
    if as_json:
        print_json(report)
    else:
        reports.render_show(console(), report)


async def find_event(store: Store, ident: str) -> tuple[EventView | None, str | None]:
    """The event `ident` names, and its order id when it is an order's: a payment id, an
    order event key, or an order id (its newest event)."""
    view = await store.event("payment", ident)
    if view is not None:
        return view, None
    view = await store.event("order", ident)
    if view is None:
        head = await store.order_head_key(ident)
        view = await store.event("order", head) if head is not None else None
    if view is None:
        return None, None
    return view, order_id_of(view.payload)


def order_id_of(payload: str) -> str | None:
    try:
        order = json.loads(payload).get("order")
    except (ValueError, AttributeError):
        return None
    return str(order["id"]) if isinstance(order, dict) and "id" in order else None


@click.command()
@click.argument("payment_id", required=False)
@click.option("--failed", is_flag=True, help="Every failed (or dead) delivery instead.")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(sorted(RETRY_STATES)),
    help="Deliveries in this status (repeatable); with --since/--crm.",
)
@click.option("--crm", default=None, help="Only this CRM's deliveries.")
@click.option("--since", default=None, help="Only events received since: 2h, 3d or a date.")
@click.pass_obj
def retry(
    env: CliEnv,
    payment_id: str | None,
    failed: bool,
    statuses: tuple[str, ...],
    crm: str | None,
    since: str | None,
) -> None:
    """Put deliveries back in the queue: one payment's (or an order's, or one order
    event's: ORDER_ID[@UPDATED_AT]), all failed ones, or by filter."""
    by_filter = bool(statuses or crm or since)
    if sum((payment_id is not None, failed or by_filter)) != 1:
        raise click.UsageError("give either PAYMENT_ID, or --failed and/or --status/--crm/--since")
    settings = env.settings()
    if crm is not None and crm not in settings.file.crm and crm != PLATFORM:
        raise click.BadParameter(
            f"no CRM named {crm!r} in {settings.config_file}", param_hint="--crm"
        )
    since_ts = parse_since(since, env.clock()) if since is not None else None
    chosen = statuses or ("failed", "dead")

    async def work() -> tuple[int, str | None, list[str], list[str], str | None]:
        async with open_store(settings, env) as store:
            if payment_id is not None:
                view, order_id = await find_event(store, payment_id)
                if view is None:
                    raise click.ClickException(
                        f"no payment with id {payment_id!r} (nor an order or order event)"
                    )
                count, status = await store.retry_now(view.id), view.status
                if order_id is not None and "@" not in payment_id:
                    # An order id: every unfinished event of the order, not only the newest
                    # (they run oldest first: one order's events never overtake each other).
                    for row in await store.order_events_of(order_id):
                        other = await store.event("order", row.key)
                        if other is not None and other.id != view.id:
                            count += await store.retry_now(other.id)
            else:
                states = [s for choice in chosen for s in RETRY_STATES[choice]]
                count = await store.retry_matching(statuses=states, crm=crm, since=since_ts)
                status = None
            states_now = await store.crm_states()
            holds = await store.holds()
            stale = await stale_config(store, settings)
        waiting = [f"{s.crm} ({s.paused_reason})" for s in states_now.values() if s.paused_reason]
        held = [f"{h.crm} (by {h.by}: {h.reason})" for h in holds.values()]
        return count, status, waiting, held, stale

    count, status, paused, held, stale = run(work())
    if stale:
        click.echo(f"warning: {stale}", err=True)
    if count == 0:
        what = (
            f"payment {payment_id} is {status}"
            if payment_id
            else ("no failed deliveries" if not by_filter else "no delivery matches")
        )
        click.echo(f"nothing to retry: {what}")
        return
    click.echo(
        f"{count} event(s) queued again. A running bridge picks them up within about"
        f" {WORKER_POLL_SECONDS} s; a stopped one when it starts."
    )
    if paused:
        click.echo(f"note: paused, waiting for credentials: {', '.join(paused)}", err=True)
    if held:
        click.echo(f"note: paused by the operator (crm-bridge resume): {', '.join(held)}", err=True)


@click.command()
@click.option(
    "--older-than",
    "days",
    type=click.IntRange(min=1),
    required=True,
    metavar="DAYS",
    help="Delete what is older than this many days.",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def prune(env: CliEnv, days: int, yes: bool) -> None:
    """Delete finished events and request-log rows older than DAYS (never pending ones)."""
    settings = env.settings()
    before = env.clock() - days * 86400

    async def count() -> tuple[int, int]:
        async with open_store(settings, env) as store:
            return await store.count_prunable(before)

    async def delete() -> tuple[int, int]:
        async with open_store(settings, env) as store:
            await store.prune_alerts(before)  # the alerts' own log, on the same cutoff
            return await store.prune(before)

    events_n, requests_n = run(count())
    if events_n == requests_n == 0:
        click.echo(f"nothing older than {days} days to prune")
        return
    if not yes:
        click.confirm(
            f"Delete {events_n} finished event(s) (with their deliveries and journal) and"
            f" {requests_n} request-log row(s) older than {days} days?",
            abort=True,
        )
    events_n, requests_n = run(delete())
    click.echo(f"deleted {events_n} event(s) and {requests_n} request-log row(s)")


def parse_since(text: str, now: float) -> float:
    """`2h`, `3d`, `1w 2d` (before now) or an ISO date/time (UTC unless it has an offset)."""
    compact = text.strip().lower()
    if compact and _DURATION.sub("", compact).strip() == "":
        seconds = sum(int(n) * _UNIT_SECONDS[u] for n, u in _DURATION.findall(compact))
        return now - seconds
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is neither a duration (30m, 2h, 3d, 1w) nor an ISO date/time",
            param_hint="--since",
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
