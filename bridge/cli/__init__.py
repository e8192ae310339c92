"""The `crm-bridge` command: a thin shell over the library (SPEC §10).

Every command loads the settings once, opens the store, calls the library and prints:
`log` holds the commands over the event log, `tools` the integration and maintenance
ones, `crm` those that talk to a CRM. Tests pass a `CliEnv` (CRM transports, a clock)
through `CliRunner.invoke(main, args, obj=CliEnv(...))`, click's own way of handing a
context object to the commands.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import click

from bridge import servelock
from bridge.checks import env_file_findings, settings_findings
from bridge.cli import backsync, crm, log, operate, send, sources, tools
from bridge.cli._env import CliEnv
from bridge.errors import ConfigError
from bridge.logs import configure_logging
from bridge.settings import Settings
from bridge.staleness import runtime_record
from bridge.store import Store

__all__ = ["CliEnv", "main"]


@click.group()
@click.option(
    "--env-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Read settings from this file too (e.g. /etc/crm-bridge/env); default: ./.env.",
)
@click.pass_context
def main(ctx: click.Context, env_file: Path | None) -> None:
    """CRM Bridge: platform webhooks into your CRMs, exactly once."""
    env = ctx.ensure_object(CliEnv)
    if env_file is not None:
        env.env_file = env_file


@main.command()
@click.option("--host", default=None, help="Listen address (default: HOST or 127.0.0.1).")
@click.option("--port", default=None, type=int, help="Listen port (default: PORT or 8080).")
@click.pass_obj
def serve(env: CliEnv, host: str | None, port: int | None) -> None:
    """Run the bridge (what systemd starts)."""
    from bridge.app import create_app
    from bridge.server import Limits, run

    settings = env.settings()
    configure_logging(settings.log_level)
    # Refuse to start on a broken configuration; an unreachable CRM does not stop it.
    findings = settings_findings(settings) + env_file_findings(env.env_file, settings.file.crm)
    for finding in findings:
        if finding.level != "ok":
            click.echo(f"{finding.level.upper()}: {finding.text}", err=True)
    if any(finding.level == "problem" for finding in findings):
        raise click.ClickException("configuration problems above: fix them, then start again")
    try:
        lock = servelock.acquire(settings.database_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc

    async def loaded(store: Store, current: Settings) -> None:
        # What `retry` and `check` compare the files against (bridge.staleness).
        await store.set_runtime(runtime_record(current, env.env_file, env.clock()))

    app = create_app(settings, reloader=env.load, on_loaded=loaded)
    limits = Limits(
        header_timeout=settings.header_timeout_seconds,
        # The payment route answers 408 at BODY_TIMEOUT_SECONDS; the server's own limit,
        # for every route, closes a little later so that answer can go out first.
        body_timeout=settings.body_timeout_seconds + 5,
        keep_alive=settings.keep_alive_seconds,
        max_connections=settings.max_connections,
    )
    run(
        app,
        host=host or settings.host,
        port=port or settings.port,
        limits=limits,
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        log_config=None,
        access_log=False,
        # Requests inside their wait window get their answer (202 at worst) before the
        # server closes; then the worker has its own grace for the running CRM call.
        timeout_graceful_shutdown=math.ceil(
            max(settings.shutdown_grace_seconds, settings.wait_seconds) + 1
        ),
        lifespan="on",
    )
    lock.close()


for command in (
    log.stats,
    log.events,
    log.show,
    log.retry,
    log.prune,
    tools.sign,
    send.send,
    operate.pause,
    operate.resume,
    operate.alerts,
    tools.import_,
    tools.rotate_key,
    crm.check,
    crm.discover,
    crm.auth,
    sources.map_,
    backsync.crm_events,
    backsync.crm_event,
):
    main.add_command(command)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
