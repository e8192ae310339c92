"""`crm-bridge serve` as a real subprocess, started the way systemd starts it.

systemd runs `crm-bridge serve` with an EnvironmentFile; `BridgeProcess` does the same with
an explicit environment (nothing inherited but PATH/HOME/locale), a TOML config written
to `tmp_path` (the example config pointed at a fake on loopback) and the working
directory in `tmp_path` so no stray `.env` is read. Output goes to a log file that
`log_text()` returns, for assertions and for failure messages.

`KillSwitch` arms a fake's hooks so that the bridge is SIGKILLed at an exact moment of a
CRM request — when it arrives, once the write is applied (before the answer leaves), or
once the answer was sent — which is how the crash windows of SPEC §3 are reproduced.

`ServedAmoCrm` (conftest's `amo_server` fixture) serves the stateful fake amoCRM on
loopback for such a process, and makes bridge installations pointed at it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import EXAMPLE_CONFIG, SECRET, signed, unfinished
from tests.fakes.amocrm import FakeAmoCrm
from tests.fakes.server import Servable, serve_in_thread
from tests.fakes.service import Abort, FakeRequest, FakeService

BRIDGE_BIN = Path(sys.executable).parent / "crm-bridge"
TOTAL, COUNT, PAYMENT_ID = "700207", "700208", "700205"  # deal fields of the example config
FAST_RETRIES = "0.1,0.2,0.3,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5"


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    """Poll `predicate` from a synchronous test (the bridge process may be down)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what or 'condition'} not reached in time")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(
    path: Path,
    base_url: str,
    *,
    excluded_status_ids: list[int] | None = None,
    auth: str | None = None,
    rate_limit_per_second: float | None = None,
    request_timeout_seconds: float = 2,
) -> Path:
    """The example config (etc/bridge.example.toml) with a few lines replaced.

    The request timeout (and the late-write wait, set equal to it) is short because a
    restarted bridge waits that long before looking again at a write it abandoned (it
    may still land at the CRM)."""
    text = EXAMPLE_CONFIG.read_text(encoding="utf-8")
    changes = {
        "base_url": json.dumps(base_url),
        "request_timeout_seconds": str(request_timeout_seconds),
        "late_write_seconds": str(request_timeout_seconds),
    }
    if excluded_status_ids is not None:
        changes["excluded_status_ids"] = json.dumps(excluded_status_ids)
    if auth is not None:
        changes["auth"] = json.dumps(auth)
    if rate_limit_per_second is not None:
        changes["rate_limit_per_second"] = str(rate_limit_per_second)
    for key, value in changes.items():
        text, count = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", text)
        assert count == 1, f"{key} not found once in {EXAMPLE_CONFIG}"
    path.write_text(text, encoding="utf-8")
    return path


@dataclass
class BridgeProcess:
    """One bridge installation in `home`: config, database, environment; start/stop it."""

    home: Path
    env: dict[str, str]
    command: tuple[str, ...] = (str(BRIDGE_BIN), "serve")
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @classmethod
    def create(
        cls,
        home: Path,
        config: Path,
        *,
        access_token: str | None,
        command: tuple[str, ...] | None = None,
        **env: str,
    ) -> BridgeProcess:
        """`command` (`crm-bridge serve` unless given) with systemd's kind of environment."""
        base = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "CONFIG_FILE": str(config),
            "DATABASE_PATH": str(home / "state" / "bridge.sqlite"),
            "WEBHOOK_SECRETS": SECRET,
            "HOST": "127.0.0.1",
            "WAIT_SECONDS": "0",
            "RETRY_SCHEDULE_SECONDS": FAST_RETRIES,
            "SHUTDOWN_GRACE_SECONDS": "2",
            "LOG_LEVEL": "INFO",
        }
        if "PYTHONPATH" in os.environ:  # a test run against another checkout of the code
            base["PYTHONPATH"] = os.environ["PYTHONPATH"]
        if access_token is not None:
            base["AMOCRM_ACCESS_TOKEN"] = access_token
        base.update(env)
        return cls(home, base, command or cls.command)

    @property
    def database(self) -> Path:
        return Path(self.env["DATABASE_PATH"])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.home / "bridge.log"

    # ---- lifecycle ------------------------------------------------------------------

    def start(self, timeout: float = 20.0, *, wait_ready: bool = True, **env: str) -> None:
        """Start it, with `env` added for this start only; with `wait_ready`, return once
        /webhook/health answers."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        env = {**self.env, **env, "PORT": str(self.port)}
        with self.log_path.open("ab") as log:
            log.write(f"\n==== start {self.starts} ====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(  # noqa: S603 - our own entry point
                self.command,
                cwd=self.home,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if not wait_ready:
            return
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"bridge exited at start:\n{self.log_text()[-3000:]}")
            try:
                httpx.get(f"{self.url}/webhook/health", timeout=1.0)
                return
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    message = f"bridge did not start:\n{self.log_text()[-3000:]}"
                    raise AssertionError(message) from None
                time.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL, as a power cut or the OOM killer would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 20.0) -> float:
        """SIGTERM, as `systemctl stop` sends; returns seconds until the process exited."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=timeout)
        return time.monotonic() - started

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """The `crm-bridge` command with this installation's environment (plus `env`), as
        an operator runs it beside the service."""
        return subprocess.run(  # noqa: S603 - our own entry point
            [str(BRIDGE_BIN), *args],
            cwd=self.home,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def wait_exit(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        """Whatever state it is in: make sure it is gone (test teardown)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    # ---- HTTP -----------------------------------------------------------------------

    def post_payment(self, payload: dict[str, Any], timeout: float = 10.0) -> httpx.Response:
        body = json.dumps(payload).encode()
        return httpx.post(
            f"{self.url}/webhook/payment", content=body, headers=signed(body), timeout=timeout
        )

    def health(self) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/webhook/health", timeout=5.0)
        data: dict[str, Any] = response.json()
        return data

    # ---- the database ---------------------------------------------------------------

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with contextlib.closing(sqlite3.connect(self.database, timeout=10)) as conn:
            return list(conn.execute(sql, params).fetchall())

    def unfinished(self) -> int:
        return unfinished(self.database)

    def wait_for(self, predicate: Any, timeout: float = 30.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"bridge died waiting for {what}:\n{self.log_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not reached in time:\n{self.log_text()[-3000:]}")
            time.sleep(0.05)

    def settle(self, timeout: float = 30.0) -> None:
        """Wait until no delivery is pending, retrying or processing."""
        self.wait_for(lambda: self.unfinished() == 0, timeout, "all deliveries finished")

    def statuses(self) -> dict[str, str]:
        return dict(self.query("SELECT payment_id, status FROM payment_events"))


@contextlib.contextmanager
def running(bridge: BridgeProcess) -> Iterator[BridgeProcess]:
    try:
        yield bridge
    finally:
        bridge.stop()


@contextlib.contextmanager
def serving(fake: Servable) -> Iterator[str]:
    """`fake` on a loopback port, served from a thread of the test process: its base URL."""
    base_url, stop = serve_in_thread(fake)
    try:
        yield base_url
    finally:
        stop()


@dataclass
class ServedAmoCrm:
    """A fake amoCRM served on loopback, and bridge installations that use it."""

    fake: FakeAmoCrm
    base_url: str

    def bridge(
        self,
        home: Path,
        *,
        token: bool = True,
        env: Mapping[str, str] | None = None,
        **config: Any,
    ) -> BridgeProcess:
        """An installation in `home` whose config (`write_config` with `config`'s changes)
        points at this fake; with `token`, it has a valid long-lived access token."""
        path = write_config(home / "bridge.toml", self.base_url, **config)
        access_token = self.fake.issue_token(ttl=3600) if token else None
        return BridgeProcess.create(home, path, access_token=access_token, **(env or {}))


def assert_each_payment_once(
    amo: FakeAmoCrm, amounts: Mapping[str, Decimal], base: tuple[Decimal, int] = (Decimal(0), 0)
) -> None:
    """Every payment (its id → its amount, in the order they were paid) has exactly one
    note, on one deal; that deal's total and count are exactly the sum of the payments
    noted on it (plus `base`, what a manager had there), its payment id the last one."""
    seen: dict[str, int] = {}
    for lead in amo.leads():
        notes = amo.notes(lead["id"])
        noted = [pid for pid in amounts for text in notes if f"Payment ID: {pid}" in text]
        assert len(noted) == len(notes), f"lead {lead['id']}: a note for no payment: {notes}"
        for pid in noted:
            seen[pid] = seen.get(pid, 0) + 1
        total = amo.lead_field(lead["id"], TOTAL)
        count = amo.lead_field(lead["id"], COUNT)
        start_total, start_count = base  # given only where a manager's one deal had them
        assert Decimal(str(total)) == start_total + sum(amounts[pid] for pid in noted), lead
        assert int(Decimal(str(count))) == start_count + len(noted), lead
        assert amo.lead_field(lead["id"], PAYMENT_ID) == noted[-1]
    assert seen == dict.fromkeys(amounts, 1), f"notes per payment: {seen}"


@dataclass
class KillSwitch:
    """SIGKILL the bridge the first time a matching CRM request reaches `phase`.

    phase: "received" (the request dies with the process, nothing is applied),
    "applied" (the write is done in the fake, its answer not sent: the crash window
    between a CRM write and the journal write), "answered" (the answer was sent; the
    bridge may or may not have journalled it).
    """

    fake: FakeService
    bridge: BridgeProcess
    fired: threading.Event = field(default_factory=threading.Event)
    _armed: tuple[str, str, re.Pattern[str]] | None = None
    fired_on: str = ""

    def __post_init__(self) -> None:
        self.fake.on_received = lambda request: self._check("received", request)
        self.fake.on_applied = lambda request, _response: self._check("applied", request)
        self.fake.on_answered = lambda request, _response: self._check("answered", request)

    def arm(self, phase: str, method: str, path_pattern: str) -> None:
        assert phase in ("received", "applied", "answered")
        self.fired.clear()
        self._armed = (phase, method, re.compile(path_pattern))

    def _check(self, phase: str, request: FakeRequest) -> None:
        armed = self._armed
        if armed is None or armed[0] != phase or armed[1] != request.method:
            return
        if not armed[2].fullmatch(request.path):
            return
        self._armed = None
        self.fired_on = f"{phase} {request.method} {request.path}"
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.bridge.pid, signal.SIGKILL)
        # Do not let the answer leave before the process is really gone.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.kill(self.bridge.pid, 0)
            except ProcessLookupError:
                break
            if self.bridge.proc is not None and self.bridge.proc.poll() is not None:
                break
            time.sleep(0.002)
        self.fired.set()
        if phase == "received":
            raise Abort("drop")  # the request dies with the process: nothing is applied

    def wait(self, timeout: float = 30.0) -> None:
        if not self.fired.wait(timeout):
            raise AssertionError(
                f"the kill point was never reached:\n{self.bridge.log_text()[-3000:]}"
            )
        self.bridge.wait_exit()
