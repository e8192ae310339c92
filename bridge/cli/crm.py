"""Commands that talk to a CRM: `check`, `discover`, `auth`."""

from __future__ import annotations

import click

from bridge import checks
from bridge.cli._env import CliEnv, open_store, run, token_cipher
from bridge.crmconfig import config_snippet
from bridge.reports import iso_ts
from bridge.tokens import TokenPair

_LABELS = {"ok": "OK", "warning": "WARNING", "problem": "PROBLEM"}
_COLOURS = {"ok": "green", "warning": "yellow", "problem": "red"}


@click.command()
@click.pass_obj
def check(env: CliEnv) -> None:
    """Config, database, secrets, and every CRM's ids against the CRM itself."""
    settings = env.settings()
    findings = run(
        checks.run_checks(
            settings, transports=env.transports, clock=env.clock, env_file=env.env_file
        )
    )
    for finding in findings:
        label = click.style(f"{_LABELS[finding.level]:<8}", fg=_COLOURS[finding.level])
        click.echo(f"{label} {finding.text}", err=finding.level != "ok")
    problems = sum(finding.level == "problem" for finding in findings)
    if problems:
        raise click.ClickException(f"{problems} problem(s) found")


@click.command()
@click.argument("crm")
@click.pass_obj
def discover(env: CliEnv, crm: str) -> None:
    """Print CRM's pipelines, statuses, custom fields and enums as a config snippet."""
    settings = env.settings()
    cipher = token_cipher(settings) if settings.bridge_secret_key else None

    async def work() -> str:
        async with open_store(settings, env, create=True, cipher=cipher) as store:
            adapter = checks.build_adapter(crm, settings, store, env.transports, env.clock)
            try:
                schema = await adapter.schema()
            finally:
                await adapter.connection.aclose()
        return config_snippet(crm, settings.file.crm[crm], schema)

    click.echo(run(work()), nl=False)


@click.command()
@click.argument("crm")
@click.option("--code", default=None, help="OAuth authorization code to exchange for tokens.")
@click.option("--access-token", default=None, help="Enter an access token directly ...")
@click.option("--refresh-token", default=None, help="... with its refresh token ...")
@click.option(
    "--expires-in",
    default=86400,
    show_default=True,
    type=click.IntRange(min=1),
    help="... and its lifetime in seconds.",
)
@click.pass_obj
def auth(
    env: CliEnv,
    crm: str,
    code: str | None,
    access_token: str | None,
    refresh_token: str | None,
    expires_in: int,
) -> None:
    """Obtain (--code) or enter OAuth tokens for CRM and store them encrypted."""
    direct = access_token is not None or refresh_token is not None
    if (code is None) == (not direct):
        raise click.UsageError("give either --code or --access-token with --refresh-token")
    if direct and not (access_token and refresh_token):
        raise click.UsageError("--access-token and --refresh-token go together")
    settings = env.settings()
    config = settings.file.crm.get(crm)
    if config is None:
        raise click.ClickException(f"no [crm.{crm}] section in {settings.config_file}")
    if config.auth != "oauth":
        where = (
            f"sessions are minted from the environment's credentials; `crm-bridge check {crm}`"
            " mints one"
            if config.auth == "minted"
            else "a long-lived token goes in the environment"
        )
        raise click.ClickException(
            f'crm.{crm}.auth is "{config.auth}": stored tokens are used only with'
            f' auth = "oauth" ({where})'
        )
    cipher = token_cipher(settings)
    entered = (
        TokenPair(access_token, refresh_token, env.clock() + expires_in)
        if access_token and refresh_token
        else None
    )

    async def work() -> TokenPair:
        async with open_store(settings, env, create=True, cipher=cipher) as store:
            if entered is not None:
                await store.save_tokens(crm, entered)
                return entered
            adapter = checks.build_adapter(crm, settings, store, env.transports, env.clock)
            try:
                # The connection stores the pair itself.
                return await adapter.connection.exchange_code(code or "")
            finally:
                await adapter.connection.aclose()

    pair = run(work())
    click.echo(
        f"{crm}: tokens stored encrypted; the access token expires {iso_ts(pair.expires_at)}"
    )
    click.echo(
        f"A running bridge with {crm} paused resumes within {checks.PAUSE_PROBE_SECONDS} s;"
        f" `crm-bridge check` confirms access."
    )
