"""`crm-bridge map test NAME FILE`: what a `[source.NAME]` mapping makes of a sample body."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import click

from bridge.cli._env import CliEnv
from bridge.domain import Payment
from bridge.sources.body import BodyError, decode_body
from bridge.sources.mapping import MappingFailed, is_paid, map_payment


@click.group("map")
def map_() -> None:
    """Try the mappings of [source.NAME] sections."""


@map_.command("test")
@click.argument("name")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_obj
def test(env: CliEnv, name: str, file: Path) -> None:
    """Print the canonical payment FILE (a body as the platform sends it) maps to, or
    each expression that failed and why."""
    settings = env.settings()
    source = settings.file.source.get(name)
    if source is None:
        known = ", ".join(settings.file.source) or "none"
        raise click.ClickException(
            f"{settings.config_file}: no [source.{name}] section (configured: {known})"
        )
    try:
        document = decode_body(source.format, file.read_bytes().decode("utf-8"))
        payment, warnings = map_payment(
            name,
            source,
            document,
            platform_tz=ZoneInfo(settings.platform_timezone),
            received_at=datetime.fromtimestamp(env.clock(), UTC),
        )
    except UnicodeDecodeError as exc:
        raise click.ClickException(f"{file}: not UTF-8 text: {exc.reason}") from exc
    except BodyError as exc:
        raise click.ClickException(f"{file}: {exc}") from exc
    except MappingFailed as exc:
        for failure in exc.failures:
            click.echo(f"FAILED  {failure.text()}", err=True)
        raise click.ClickException(
            f"[source.{name}]: {len(exc.failures)} expression(s) cannot read {file.name}"
        ) from exc
    outcome = "delivered to the CRMs" if is_paid(source, payment.status) else "stored as skipped"
    click.echo(json.dumps(payment_json(payment), ensure_ascii=False, indent=2))
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"status {payment.status!r}: {outcome}", err=True)


def payment_json(payment: Payment) -> dict[str, Any]:
    """The payment as JSON values: amounts as text (exact), times in ISO 8601."""

    def plain(value: object) -> object:
        if isinstance(value, Decimal):
            return str(value)
        if isinstance(value, datetime):
            return value.isoformat()
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [plain(item) for item in value]
        return value

    return {key: plain(value) for key, value in dataclasses.asdict(payment).items()}
