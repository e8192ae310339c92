"""`crm-bridge events --customer/--follow`: find a customer's payments the way intake
keys them, and tail the event log as it changes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import click

from bridge import reports
from bridge.cli._env import CliEnv, open_store, run
from bridge.normalize import normalize_email, normalize_phone, normalize_telegram_id
from bridge.settings import Settings

FOLLOW_POLL_SECONDS = 1.0


def customer_lookup_keys(value: str) -> tuple[str, ...]:
    """The `kind:value` keys intake would have stored for this phone, e-mail or Telegram
    id. Digits alone may be either a phone or a Telegram id: both are looked for."""
    text = value.strip()
    if "@" in text and not text.startswith("@"):
        email = normalize_email(text)
        return (f"email:{email}",) if email else ()
    keys: list[str] = []
    telegram = normalize_telegram_id(text)
    if telegram:
        keys.append(f"telegram_id:{telegram}")
    phone = normalize_phone(text)
    if phone:
        keys.append(f"phone:{phone}")
    if not keys:
        raise click.BadParameter(
            f"{value!r} is not a phone, an e-mail or a Telegram id", param_hint="--customer"
        )
    return tuple(keys)


def follow_events(
    env: CliEnv,
    settings: Settings,
    filters: dict[str, Any],
    since: float | None,
    as_json: bool,
) -> None:
    """Print each matching event when it arrives and again whenever its status changes,
    until interrupted (Ctrl-C ends it quietly)."""
    start = since if since is not None else env.clock()

    async def tail() -> None:
        seen: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {}
        polls = 0
        async with open_store(settings, env) as store:
            while env.follow_polls is None or polls < env.follow_polls:
                polls += 1
                rows = await store.list_events(since=start, limit=500, **filters)
                for row in reversed(rows):  # oldest first, as a log reads
                    state = (row.status, row.deliveries)
                    if seen.get(row.key) == state:
                        continue
                    seen[row.key] = state
                    (line,) = reports.events_report([row])
                    if as_json:
                        click.echo(json.dumps(line, ensure_ascii=False))
                    else:
                        click.echo(_line(line))
                if env.follow_polls is None or polls < env.follow_polls:
                    await asyncio.sleep(FOLLOW_POLL_SECONDS)

    try:
        run(tail())
    except KeyboardInterrupt:
        return


def _line(row: dict[str, Any]) -> str:
    deliveries = ", ".join(f"{crm}: {status}" for crm, status in row["deliveries"].items())
    parts = [
        (row["received_at"] or "-")[:19].replace("T", " "),
        row["payment_id"] if "payment_id" in row else row["order_event"],
        row["status"],
        row["amount"] or "-",
        deliveries or "-",
    ]
    if row["error"]:
        parts.append(row["error"])
    return "  ".join(parts)
