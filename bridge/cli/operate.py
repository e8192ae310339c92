"""`crm-bridge pause CRM` / `resume CRM`: the operator holds a CRM's deliveries.

Durable (store table `crm_state`): a hold survives restarts until `resume`. Webhooks are
still verified and stored while a CRM is held; its deliveries wait, and a running bridge
notices within about a second. Health shows who paused it, when and why."""

from __future__ import annotations

import getpass
import os
from dataclasses import asdict

import click

from bridge.cli._env import CliEnv, open_store, print_json, run
from bridge.store.oversight import AlertRow


def _operator() -> str:
    # `sudo crm-bridge pause` should name the person, not root.
    for name in ("SUDO_USER", "USER", "LOGNAME"):
        if os.environ.get(name):
            return os.environ[name]
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "operator"


@click.command()
@click.argument("crm")
@click.option("--reason", default="paused by the operator", show_default=True, help="Why.")
@click.pass_obj
def pause(env: CliEnv, crm: str, reason: str) -> None:
    """Hold CRM's deliveries (webhooks are still stored) until `crm-bridge resume CRM`."""
    settings = env.settings()
    if crm not in settings.file.crm:
        raise click.ClickException(f"no CRM named {crm!r} in {settings.config_file}")
    by = _operator()

    async def work() -> bool:
        async with open_store(settings, env) as store:
            return await store.hold_crm(crm, reason, by)

    if run(work()):
        click.echo(
            f"{crm} paused by {by}: {reason}. Its deliveries wait; `crm-bridge resume {crm}`."
        )
    else:
        click.echo(f"{crm} was paused already (health says by whom and why)")


@click.command()
@click.argument("crm")
@click.pass_obj
def resume(env: CliEnv, crm: str) -> None:
    """Let CRM's deliveries run again after `crm-bridge pause CRM`."""
    settings = env.settings()

    async def work() -> str | None:
        async with open_store(settings, env) as store:
            hold = await store.release_crm(crm)
        return None if hold is None else f"{hold.by} at {hold.at} UTC: {hold.reason}"

    lifted = run(work())
    if lifted is None:
        click.echo(f"{crm} was not paused by the operator")
        return
    click.echo(f"{crm} resumed (was paused by {lifted}); a running bridge goes on within ~1 s")


@click.command()
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def alerts(env: CliEnv, limit: int, as_json: bool) -> None:
    """The alerts the bridge sent (or failed to send), newest first (times in UTC)."""
    settings = env.settings()

    async def work() -> list[AlertRow]:
        async with open_store(settings, env) as store:
            return await store.recent_alerts(limit)

    rows = run(work())
    if as_json:
        print_json([asdict(row) for row in rows])
        return
    if not rows:
        click.echo("no alerts sent (configure ALERT_* in the environment: see env.example)")
    for row in rows:
        click.echo(f"{row.at[:19]}  {row.kind:<9} {row.channel:<8} {row.outcome:<6} {row.text}")
        if row.outcome != "sent":
            click.echo(f"{'':<21}{row.detail}")
