"""What every `crm-bridge` command shares: the settings, the store, error handling, output.

Errors of the bridge's own tree (`BridgeError`) end as one line on stderr and exit 1
(`click.ClickException`); no command prints a traceback.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click
import httpx
from rich.console import Console

from bridge.crypto import TokenCipher
from bridge.errors import BridgeError, ConfigError
from bridge.settings import Settings, load_settings
from bridge.store import Store

T = TypeVar("T")


@dataclass
class CliEnv:
    """What the commands share besides the settings; tests pass their own."""

    transports: Mapping[str, httpx.AsyncBaseTransport] | None = None
    clock: Callable[[], float] = time.time
    env_file: Path | None = None
    # `send`'s own HTTP client (tests answer it in process).
    http_transport: httpx.BaseTransport | None = None
    # `events --follow` polls until interrupted; tests stop it after this many polls.
    follow_polls: int | None = None

    def settings(self) -> Settings:
        try:
            return self.load()
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from exc

    def load(self) -> Settings:
        """The settings, or ConfigError (what a reload of `serve` calls)."""
        if self.env_file is not None:
            return load_settings(_env_file=self.env_file)
        return load_settings()


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one command's async work; the bridge's own errors become a clean exit 1."""
    try:
        return asyncio.run(coro)
    except BridgeError as exc:
        raise click.ClickException(str(exc)) from exc


@asynccontextmanager
async def open_store(
    settings: Settings,
    env: CliEnv,
    *,
    create: bool = False,
    cipher: TokenCipher | None = None,
) -> AsyncIterator[Store]:
    """The bridge's database; only `create` makes one where there is none."""
    path = settings.database_path
    if not create and not path.exists():
        raise click.ClickException(
            f"database {path} does not exist (DATABASE_PATH); the bridge creates it when it"
            " first starts"
        )
    store = await Store.open(path, clock=env.clock, cipher=cipher)
    try:
        yield store
    finally:
        await store.close()


def token_cipher(settings: Settings) -> TokenCipher:
    """The Fernet keys of BRIDGE_SECRET_KEY; a clean error (with a hint) when unset or bad."""
    try:
        return TokenCipher([key.get_secret_value() for key in settings.bridge_secret_key])
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


def console() -> Console:
    # Piped output keeps long ids on one line; a terminal gets its own width.
    return Console(highlight=False, width=None if sys.stdout.isatty() else 200)


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, ensure_ascii=False, indent=2))
