"""Servers as subprocesses: start in their own session, wait until they answer, read their
resident memory, and stop them (SIGTERM, then SIGKILL of the whole group) — also when the
bench fails, through the `ExitStack` they are registered with."""

from __future__ import annotations

import http.client
import os
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from tests.bench.config import (
    HOST,
    base_env,
    bridge_command,
    bridge_env,
    empty_command,
    write_config,
)
from tests.fakes.amocrm import FakeAmoCrm
from tests.fakes.server import serve_in_thread
from tests.process import free_port  # on 127.0.0.1, the bench's HOST

STOP_SECONDS = 15.0


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def memory_kib(self, field: str = "VmRSS") -> int:
        """A `/proc/PID/status` field in KiB (VmRSS: resident now; VmHWM: its peak)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
        raise RuntimeError(f"{self.name}: no {field} in /proc/{self.pid}/status")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL of the process group after STOP_SECONDS; the exit code."""
        if self.process.poll() is not None:
            return self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)  # its own session: only what it started
            return self.process.wait()


def start_server(
    stack: ExitStack,
    name: str,
    command: Sequence[str],
    env: Mapping[str, str],
    cwd: Path,
    port: int,
    *,
    ready_path: str | None = None,
    timeout: float = 30.0,
) -> Server:
    """Start `command`, registered with `stack` for stopping; returns once it answers."""
    log_path = cwd / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - our own commands
            list(command),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(name, process, port, log_path)
    stack.callback(server.stop)
    deadline = time.monotonic() + timeout
    while not _answers(port, ready_path):
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{server.log_tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not answer within {timeout:.0f}s:\n{server.log_tail()}")
        time.sleep(0.05)
    return server


def _answers(port: int, path: str | None) -> bool:
    try:
        if path is None:
            with socket.create_connection((HOST, port), timeout=1):
                return True
        conn = http.client.HTTPConnection(HOST, port, timeout=2)
        try:
            conn.request("GET", path)
            return conn.getresponse().status == 200
        finally:
            conn.close()
    except OSError:
        return False


def start_fake(
    stack: ExitStack, *, rate_limit: int = 7, latency: float = 0.0
) -> tuple[FakeAmoCrm, str]:
    """The stateful fake amoCRM served on loopback from a thread of this process."""
    fake = FakeAmoCrm(rate_limit=rate_limit)
    fake.latency = latency
    url, stop = serve_in_thread(fake, HOST)
    stack.callback(stop)
    return fake, url


@dataclass
class BridgeRun:
    """A `crm-bridge serve` subprocess, its fake amoCRM on loopback, and its own directory."""

    server: Server
    fake: FakeAmoCrm
    directory: Path
    env: dict[str, str]

    @property
    def database(self) -> Path:
        return self.directory / "bridge.sqlite"

    def query(self, sql: str, params: Sequence[object] = ()) -> list[tuple[object, ...]]:
        return query_database(self.database, sql, params)


def query_database(
    database: Path, sql: str, params: Sequence[object] = ()
) -> list[tuple[object, ...]]:
    """Read a bridge's database from outside (safe while it runs: WAL)."""
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)
    try:
        return list(conn.execute(sql, tuple(params)).fetchall())
    finally:
        conn.close()


def start_bridge(
    stack: ExitStack,
    name: str,
    *,
    rate_limit: int = 7,
    latency: float = 0.0,
    wait_seconds: float = 0,
) -> BridgeRun:
    """Everything registered with `stack`: closing it stops the server, then the fake,
    then removes the directory with the database."""
    directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"bench-{name}-")))
    fake, fake_url = start_fake(stack, rate_limit=rate_limit, latency=latency)
    config = write_config(directory, fake_url)
    token = fake.issue_token(ttl=30 * 86400)  # a long-lived token the fake issued
    env = bridge_env(directory, config, {"AMOCRM_ACCESS_TOKEN": token}, wait_seconds=wait_seconds)
    return BridgeRun(serve_bridge(stack, name, directory, env), fake, directory, env)


def serve_bridge(stack: ExitStack, name: str, directory: Path, env: Mapping[str, str]) -> Server:
    """`crm-bridge serve` in `directory` with `env`, registered with `stack` for stopping;
    returns once it answers. Two in turn may share a directory (and so a database)."""
    port = free_port()
    return start_server(
        stack, name, bridge_command(port), env, directory, port, ready_path="/webhook/health"
    )


def start_empty(stack: ExitStack, name: str = "empty") -> Server:
    directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"bench-{name}-")))
    port = free_port()
    return start_server(stack, name, empty_command(port), base_env(), directory, port)


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU time spent by the whole machine (all cores, not idle or waiting on I/O)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuMeter:
    """CPU used while the block runs: by the server; by the harness (this process with
    its fakes, and the load generators it ran to completion); and by everything else on
    the machine — other work competing for the cores, which explains noisy figures."""

    pid: int
    server_seconds: float = 0.0
    harness_seconds: float = 0.0
    other_seconds: float = 0.0
    wall_seconds: float = 0.0

    def __enter__(self) -> CpuMeter:
        self._start = (
            time.monotonic(),
            process_cpu_seconds(self.pid),
            _harness_cpu_seconds(),
            machine_busy_seconds(),
        )
        return self

    def __exit__(self, *exc: object) -> None:
        wall, server, children, machine = self._start
        self.wall_seconds = time.monotonic() - wall
        self.server_seconds = process_cpu_seconds(self.pid) - server
        self.harness_seconds = _harness_cpu_seconds() - children
        busy = machine_busy_seconds() - machine
        self.other_seconds = max(0.0, busy - self.server_seconds - self.harness_seconds)

    def as_json(self, requests: int) -> dict[str, float]:
        wall = self.wall_seconds or 1.0
        return {
            "server_cores": round(self.server_seconds / wall, 3),
            "server_cpu_us_per_request": round(self.server_seconds / max(requests, 1) * 1e6, 1),
            "harness_cores": round(self.harness_seconds / wall, 3),
            "other_cores": round(self.other_seconds / wall, 3),
        }


def _harness_cpu_seconds() -> float:
    return sum(
        usage.ru_utime + usage.ru_stime
        for usage in (
            resource.getrusage(resource.RUSAGE_SELF),
            resource.getrusage(resource.RUSAGE_CHILDREN),
        )
    )


def wait_for_quiet(threshold: float = 0.25, max_wait: float = 45.0) -> float:
    """Wait (up to `max_wait` s) until other processes use under `threshold` cores; the
    last reading. On a shared machine this keeps others' bursts out of the timings."""
    deadline = time.monotonic() + max_wait
    told = False
    while True:
        busy, own = machine_busy_seconds(), _harness_cpu_seconds()
        time.sleep(1.0)
        other = max(0.0, machine_busy_seconds() - busy - (_harness_cpu_seconds() - own))
        if other <= threshold or time.monotonic() >= deadline:
            return round(other, 2)
        if not told:
            print(f"  waiting for other load ({other:.2f} cores) to pass", file=sys.stderr)
            told = True
