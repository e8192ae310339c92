"""Integration and maintenance commands: `sign`, `import`, `rotate-key`."""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from bridge import importer, servelock
from bridge.cli._env import CliEnv, console, open_store, run, token_cipher
from bridge.cli.send import local_url, read_body
from bridge.crypto import TokenCipher
from bridge.errors import BridgeError
from bridge.payloads import parse_payment, validation_details
from bridge.settings import Settings
from bridge.signing import sign_headers
from bridge.store import Store

# How often `import --wait` looks at the delivery of the imported payments.
WAIT_POLL_SECONDS = 1.0


@click.command()
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--example", is_flag=True, help="Sign the shipped example payment instead.")
@click.option("--secret", default=None, help="Sign with this secret, not the configured one.")
@click.option(
    "--scheme",
    type=click.Choice(["hmac", "standard"]),
    default="hmac",
    show_default=True,
    help="The scheme --secret is for (X-Signature or Standard Webhooks).",
)
@click.pass_obj
def sign(env: CliEnv, file: Path | None, example: bool, secret: str | None, scheme: str) -> None:
    """Print the headers the platform must send with FILE's body, and a curl command."""
    settings = env.settings()
    body, file = read_body(file, example)
    if secret is not None:
        hmac_secret = secret if scheme == "hmac" else None
        standard_secret = secret if scheme == "standard" else None
    else:
        hmac_secret = _first(settings.webhook_secrets)
        standard_secret = _first(settings.standard_webhook_secrets)
    if not (hmac_secret or standard_secret):
        raise click.ClickException(
            "no secret: pass --secret or set WEBHOOK_SECRETS / STANDARD_WEBHOOK_SECRETS"
        )
    try:
        headers = sign_headers(
            body,
            hmac_secret=hmac_secret,
            standard_secret=standard_secret,
            msg_id=f"msg_{uuid.uuid4().hex}",
            now=int(env.clock()),
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    _warn_unless_payment(body)
    for name, value in headers.items():
        click.echo(f"{name}: {value}")
    url = local_url(settings.host, settings.port)
    parts = ["curl", "-sS", "-X", "POST", url, "-H", "Content-Type: application/json"]
    for name, value in headers.items():
        parts += ["-H", f"{name}: {value}"]
    parts += ["--data-binary", f"@{file}"]
    click.echo()
    click.echo(" ".join(shlex.quote(part) for part in parts))
    if standard_secret:
        click.echo("note: Standard Webhooks signatures are accepted for 5 minutes", err=True)


def _first(secrets: tuple[Any, ...]) -> str | None:
    return str(secrets[0].get_secret_value()) if secrets else None


def _warn_unless_payment(body: bytes) -> None:
    try:
        parse_payment(json.loads(body))
    except (UnicodeDecodeError, json.JSONDecodeError):
        click.echo("warning: the body is not JSON: the bridge would answer 400", err=True)
    except ValidationError as exc:
        problems = "; ".join(f"{d['field']}: {d['error']}" for d in validation_details(exc))
        click.echo(
            f"warning: not a valid payment (the bridge would answer 422): {problems}", err=True
        )


@click.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Validate and count; store nothing.")
@click.option(
    "--wait",
    is_flag=True,
    help="Then follow the running bridge delivering them, until every one is finished.",
)
@click.pass_obj
def import_(env: CliEnv, file: Path, dry_run: bool, wait: bool) -> None:
    """Historic payments from a CSV file (date, phone, email, name, amount, description
    [, id, currency]; dates YYYY-MM-DD or DD.MM.YYYY)."""
    settings = env.settings()
    started = env.clock()
    try:
        rows = importer.read_csv(file)
    except BridgeError as exc:
        raise click.ClickException(str(exc)) from exc

    async def work(on_progress: Callable[[int], None] | None) -> importer.ImportReport:
        def with_store(store: Store | None) -> Awaitable[importer.ImportReport]:
            return importer.import_rows(
                store,
                settings,
                rows,
                dry_run=dry_run,
                on_progress=on_progress,
            )

        if dry_run and not settings.database_path.exists():
            return await with_store(None)  # a dry run creates no database
        async with open_store(settings, env, create=True) as store:
            return await with_store(store)

    if sys.stdout.isatty():
        from rich.progress import Progress

        with Progress(console=console(), transient=True) as progress:
            task = progress.add_task("importing" if not dry_run else "checking", total=len(rows))
            report = run(work(lambda done: progress.update(task, completed=done)))
    else:
        report = run(work(None))
    notes = report.bad + [
        (row, f"same payment as row {first}: skipped") for row, first in report.repeated
    ]
    for number, note in sorted(notes):
        click.echo(f"row {number}: {note}", err=True)
    verb = "would import" if dry_run else "imported"
    click.echo(
        f"{report.rows} rows: {verb} {report.imported}, already present"
        f" {report.already_present}, bad {len(report.bad)}"
    )
    if report.imported and not dry_run:
        click.echo(
            "A running bridge delivers them to "
            + (", ".join(name for name, c in settings.file.crm.items() if c.enabled) or "no CRM")
            + " at the CRM rate limit; `crm-bridge import --wait` or `crm-bridge events"
            " --source import` show the progress."
        )
        if wait:
            wait_for_delivery(env, settings, started)
    if report.bad:
        raise click.ClickException(
            f"{len(report.bad)} bad row(s) not imported: fix them and import the file again"
            " (rows already stored are skipped)"
        )


@click.command("rotate-key")
@click.option("--generate", is_flag=True, help="Print a new key and how to roll it out.")
@click.pass_obj
def rotate_key(env: CliEnv, generate: bool) -> None:
    """Re-encrypt every stored token with the first key of BRIDGE_SECRET_KEY."""
    if generate:
        click.echo(TokenCipher.generate_key())
        click.echo(
            "To rotate: 1. put this key FIRST in BRIDGE_SECRET_KEY, keeping the old key after"
            " it (comma-separated); 2. restart the bridge; 3. run `crm-bridge rotate-key`;"
            " 4. remove the old key and restart again.",
            err=True,
        )
        return
    settings = env.settings()
    cipher = token_cipher(settings)

    async def work() -> tuple[int, int]:
        async with open_store(settings, env) as store:
            stored = await store.token_ciphertexts()
            changes = {
                crm: (old, cipher.encrypt(cipher.decrypt(old))) for crm, old in stored.items()
            }
            return len(changes), await store.replace_token_ciphertexts(changes)

    total, replaced = run(work())
    click.echo(f"re-encrypted {replaced} of {total} stored token(s) with the first key")
    if replaced < total:
        raise click.ClickException(
            f"{total - replaced} token(s) were refreshed by the running bridge meanwhile:"
            " run `crm-bridge rotate-key` again"
        )
    if len(settings.bridge_secret_key) > 1:
        click.echo("The other keys in BRIDGE_SECRET_KEY can now be removed (then restart).")


def wait_for_delivery(env: CliEnv, settings: Settings, since: float) -> None:
    """Show the delivery of what was just imported until none is left waiting."""
    if servelock.running_pid(settings.database_path) is None:
        raise click.ClickException(
            "no running bridge delivers them: start it (`crm-bridge serve`, or"
            " `systemctl start crm-bridge`) and they go out at the CRM rate limit"
        )
    tty = sys.stdout.isatty()

    async def follow() -> dict[str, int]:
        async with open_store(settings, env) as store:
            last = ""
            while True:
                counts = await store.import_progress(since)
                total = sum(counts.values())
                waiting = sum(counts.get(s, 0) for s in ("pending", "retrying", "processing"))
                line = (
                    f"delivered {counts.get('success', 0)} of {total}, waiting {waiting},"
                    f" failed {counts.get('failed', 0) + counts.get('dead', 0)},"
                    f" not found {counts.get('not_found', 0)}"
                )
                if line != last:
                    click.echo(("\r" + line) if tty else line, nl=not tty)
                    last = line
                if waiting == 0:
                    if tty:
                        click.echo()
                    return counts
                await asyncio.sleep(WAIT_POLL_SECONDS)

    counts = run(follow())
    if counts.get("failed", 0) + counts.get("dead", 0):
        raise click.ClickException(
            "some imported payments failed: `crm-bridge events --source import --status failed`"
        )
