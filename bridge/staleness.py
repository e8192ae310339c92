"""Is the running bridge's config older than the files? (`retry` and `check` warn.)

`serve` records, at start and at each reload, the modification times of the TOML file
and the environment file it loaded (store table `runtime`). A file changed since then
is not in force until `systemctl reload crm-bridge` (or a restart)."""

from __future__ import annotations

import os
from pathlib import Path

from bridge.servelock import running_pid
from bridge.settings import Settings
from bridge.store import Store


def file_mtime(path: Path | str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def runtime_record(settings: Settings, env_file: Path | None, loaded_at: float) -> dict[str, str]:
    """What `serve` stores about the config it runs with."""
    record = {
        "pid": str(os.getpid()),
        "loaded_at": repr(loaded_at),
        "config_file": str(Path(settings.config_file).resolve()),
        "config_mtime": repr(file_mtime(settings.config_file) or 0.0),
    }
    env = env_file if env_file is not None else Path(".env")
    if env.exists():
        record["env_file"] = str(env.resolve())
        record["env_mtime"] = repr(file_mtime(env) or 0.0)
    return record


async def stale_config(store: Store, settings: Settings) -> str | None:
    """A warning when a running bridge loaded a config file that changed since."""
    if running_pid(settings.database_path) is None:
        return None  # nothing runs: the next start reads the files as they are
    record = await store.runtime()
    changed = []
    for name_key, mtime_key in (("config_file", "config_mtime"), ("env_file", "env_mtime")):
        name = record.get(name_key)
        if not name or mtime_key not in record:
            continue
        now = file_mtime(name)
        if now is not None and now > float(record[mtime_key]) + 1e-6:
            changed.append(name)
    if not changed:
        return None
    return (
        f"the running bridge's config is older than {', '.join(changed)}:"
        " run `systemctl reload crm-bridge` (or send it SIGHUP) to put the change in force"
    )
