"""What `check` and `serve` tell about each `[source.NAME]`: its secrets, and whether its
mapping reads the example body shipped with its preset (or named by `example`)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

from bridge.settings import Settings
from bridge.signing import standard_secret_key
from bridge.sources.auth import secrets_variable, source_secrets
from bridge.sources.body import BodyError, decode_body
from bridge.sources.config import SourceConfig, preset_example
from bridge.sources.mapping import MappingFailed, is_paid, map_payment

Level = Literal["ok", "warning", "problem"]


def example_path(source: SourceConfig, config_file: Path) -> Path | None:
    """The section's `example` (relative to the config file), else its preset's."""
    if source.example:
        path = Path(source.example)
        return path if path.is_absolute() else config_file.parent / path
    return preset_example(source.preset) if source.preset else None


def source_findings(settings: Settings, *, require_secret: bool) -> list[tuple[Level, str]]:
    found: list[tuple[Level, str]] = []
    for name, source in settings.file.source.items():
        where = f"[source.{name}]"
        secrets = source_secrets(settings, name)
        if not secrets:
            level: Level = "problem" if require_secret else "warning"
            found.append(
                (level, f"{where}: no {secrets_variable(name)}: every request would be 401")
            )
        if source.auth.scheme == "standard":
            for index, secret in enumerate(secrets, start=1):
                try:
                    standard_secret_key(secret)
                except ValueError as exc:
                    found.append(("problem", f"{secrets_variable(name)} #{index}: {exc}"))
        found.append(_example_finding(name, source, settings))
    return found


def _example_finding(name: str, source: SourceConfig, settings: Settings) -> tuple[Level, str]:
    where = f"[source.{name}]"
    path = example_path(source, settings.config_file)
    if path is None:
        return ("warning", f"{where}: no example body to try the mapping on (set `example`)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return ("problem", f"{where}: example {path}: cannot read: {exc}")
    try:
        payment, _ = map_payment(
            name,
            source,
            decode_body(source.format, text),
            platform_tz=ZoneInfo(settings.platform_timezone),
            received_at=datetime.now(UTC),
        )
    except BodyError as exc:
        return ("problem", f"{where}: example {path.name}: {exc}")
    except MappingFailed as exc:
        return ("problem", f"{where}: example {path.name}: {exc}")
    outcome = "delivered" if is_paid(source, payment.status) else "skipped"
    return (
        "ok",
        f"{where}: POST /webhook/source/{name}; example {path.name} maps to payment"
        f" {payment.payment_id}, {payment.amount} {payment.currency}, status"
        f" {payment.status} ({outcome})",
    )
