"""One `crm-bridge serve` per database: a second would double the CRM rate (every
delivery claimed by either) and contend for the writer.

`serve` holds an exclusive `flock` on `DATABASE_PATH.lock` for its lifetime; the kernel
drops it when the process ends, however it ends, so a crash leaves no stale lock. The
file holds the holder's pid, for the refusal's message; other commands only look.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from bridge.errors import ConfigError


def lock_path(database: Path) -> Path:
    return database.with_name(database.name + ".lock")


def acquire(database: Path) -> IO[str]:
    """Take the lock (keep the returned file open while serving), or refuse."""
    path = lock_path(database)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        handle = open(path, "a+", encoding="ascii")  # noqa: SIM115 - held for the lifetime
    except OSError as exc:
        raise ConfigError(f"{path}: cannot open the serve lock: {exc.strerror or exc}") from exc
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _pid_in(handle)
        handle.close()
        holder = f" (pid {pid})" if pid else ""
        raise ConfigError(
            f"another crm-bridge serve{holder} already uses {database}; stop it first"
            " (a second one would double the CRM rate)"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def running_pid(database: Path) -> int | None:
    """The pid of the `serve` holding the lock on this database, None when none does."""
    path = lock_path(database)
    try:
        handle = open(path, encoding="ascii")  # noqa: SIM115 - closed below
    except OSError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _pid_in(handle) or -1
        fcntl.flock(handle, fcntl.LOCK_UN)
        return None


def _pid_in(handle: IO[str]) -> int | None:
    try:
        handle.seek(0)
        return int(handle.read().strip() or 0) or None
    except (OSError, ValueError):
        return None
