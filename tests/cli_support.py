"""Running `bridge` commands in tests: CliRunner, a real SQLite file and config in tmp_path."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from click.testing import CliRunner, Result

from bridge.cli import CliEnv, main
from bridge.crypto import TokenCipher
from bridge.store import NewEvent, RequestRecord, Store
from tests.conftest import AMO_URL, EXAMPLE_CONFIG, SECRET, payment_payload
from tests.process import BridgeProcess

T = TypeVar("T")
T0 = 1_750_000_000.0  # a fixed "now" for the store's clock: 2025-06-15 15:06:40 UTC
# The OAuth client the fake amoCRM knows by default (tests/fakes/amocrm.py).
AMOCRM_OAUTH_ENV = {
    "AMOCRM_CLIENT_ID": "fake-client-id",
    "AMOCRM_CLIENT_SECRET": "fake-client-secret",
    "AMOCRM_REDIRECT_URI": "https://bridge.example/oauth",
}


def write_config(directory: Path, *, replace: Mapping[str, str] | None = None) -> Path:
    """The example config pointed at the fake amoCRM, with optional text replacements."""
    text = EXAMPLE_CONFIG.read_text(encoding="utf-8")
    text = text.replace('base_url = "https://example.amocrm.ru"', f'base_url = "{AMO_URL}"')
    for old, new in (replace or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    path = directory / "bridge.toml"
    path.write_text(text, encoding="utf-8")
    return path


@dataclass
class Cli:
    tmp_path: Path
    env: dict[str, str]
    transports: dict[str, httpx.AsyncBaseTransport] = field(default_factory=dict)
    clock: Callable[[], float] = lambda: T0 + 3600
    http_transport: httpx.BaseTransport | None = None  # what `send` posts to
    follow_polls: int | None = None  # `events --follow` stops after this many polls

    @property
    def db_path(self) -> Path:
        return Path(self.env["DATABASE_PATH"])

    def __call__(self, *args: str, input: str | None = None) -> Result:
        runner = CliRunner(env=self.env)
        obj = CliEnv(
            transports=self.transports,
            clock=self.clock,
            http_transport=self.http_transport,
            follow_polls=self.follow_polls,
        )
        result = runner.invoke(main, list(args), obj=obj, input=input)
        # A problem ends as a message and an exit code, never as a traceback.
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        assert "Traceback" not in result.output
        return result

    def json(self, *args: str) -> Any:
        result = self(*args, "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.db_path) as conn:
            return list(conn.execute(sql, params).fetchall())

    def with_store(
        self,
        work: Callable[[Store], Awaitable[T]],
        now: float = T0,
        cipher: TokenCipher | None = None,
    ) -> T:
        async def run() -> T:
            store = await Store.open(self.db_path, clock=lambda: now, cipher=cipher)
            try:
                return await work(store)
            finally:
                await store.close()

        return asyncio.run(run())


def make_cli(tmp_path: Path, **env: str) -> Cli:
    values = {
        "CONFIG_FILE": str(write_config(tmp_path)),
        "DATABASE_PATH": str(tmp_path / "bridge.sqlite"),
        "WEBHOOK_SECRETS": SECRET,
        "STANDARD_WEBHOOK_SECRETS": "",
        "BRIDGE_SECRET_KEY": "",
        "AMOCRM_ACCESS_TOKEN": "",
        "COLUMNS": "200",
    }
    values.update(env)
    return Cli(tmp_path, values)


def operator_cli(bridge: BridgeProcess) -> Cli:
    """The `bridge` command beside a `crm-bridge serve` process: its config, database and
    port, on the wall clock."""
    # make_cli writes a config of its own into its directory: not the bridge's.
    directory = bridge.home / "cli"
    directory.mkdir(exist_ok=True)
    cli = make_cli(
        directory,
        CONFIG_FILE=bridge.env["CONFIG_FILE"],
        DATABASE_PATH=str(bridge.database),
        PORT=str(bridge.port),
    )
    cli.clock = time.time
    return cli


async def hold_crm(database: Path, held: bool = True) -> None:
    """What `crm-bridge pause amocrm` / `resume amocrm` do; a running bridge sees it within
    a second."""
    store = await Store.open(database, clock=time.time)
    try:
        if held:
            await store.hold_crm("amocrm", "queue a batch", "test")
        else:
            await store.release_crm("amocrm")
    finally:
        await store.close()


def new_event(key: str, *, status: str = "pending", **payload: Any) -> NewEvent:
    body = json.dumps(payment_payload(key, **payload), ensure_ascii=False)
    return NewEvent(
        kind="payment",
        key=key,
        status=status,
        amount="10000",
        customer_keys=(f"phone:+7999{key[-4:].rjust(7, '0')}",),
        payload=body,
        crms=("amocrm",) if status == "pending" else (),
        note="status NEW is not processed" if status == "skipped" else "",
    )


async def seed(store: Store, outcomes: Mapping[str, str]) -> dict[str, int]:
    """Store one payment per key and bring its amoCRM delivery to the given outcome:
    success, failed, retrying, pending, not_found, dead or skipped."""
    ids: dict[str, int] = {}
    for key, outcome in outcomes.items():
        status = "skipped" if outcome == "skipped" else "pending"
        ids[key] = (await store.intake(new_event(key, status=status))).event_id
        store.log_request(RequestRecord("/webhook/payment", "10.0.0.1", "hmac: ok", 202, key))
    jobs = (await store.due_deliveries(T0 + 1, ["amocrm"], len(outcomes) + 1)).jobs
    for job in jobs:
        outcome = outcomes[job.key]
        if outcome == "pending":
            continue
        await store.mark_processing(job.delivery_id)
        if outcome == "success":
            await store.record_steps(job.delivery_id, {"contact": "111", "deal": {"id": "222"}})
            await store.finish_delivery(
                job.delivery_id,
                status="success",
                contact_id="111",
                deal_id="222",
                deal_created=True,
                pipeline_id="4423755",
                crm_calls=5,
            )
        elif outcome == "retrying":
            await store.finish_delivery(
                job.delivery_id,
                status="retrying",
                error="HTTP 503",
                crm_calls=1,
                next_attempt_at=T0 + 60,
            )
        else:
            await store.finish_delivery(
                job.delivery_id, status=outcome, error="HTTP 400 bad field", crm_calls=2
            )
    return ids
