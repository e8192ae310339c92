"""The bench's configuration of the servers it starts: TOML file, environment, commands.

The TOML file is the reference one (`etc/bridge.example.toml`: the fake's account, its
pipeline rules, statuses, field and enum ids) with only `base_url` pointed at a fake on
loopback. Servers run in their own temporary directory, so a `.env` in the working copy
is never read, and with no proxy variables, so nothing can leave the machine.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path

from bridge.settings import load_file_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_CONFIG = ROOT / "etc" / "bridge.example.toml"
HOST = "127.0.0.1"
SECRET = "bench-hmac-secret"

_BASE_URL = re.compile(r'^base_url\s*=\s*"[^"]*"', re.MULTILINE)
_KEPT_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "SYSTEMROOT")


def write_config(directory: Path, base_url: str) -> Path:
    """The reference config with amoCRM at `base_url`; checked by the bridge's own loader."""
    text, replaced = _BASE_URL.subn(f'base_url = "{base_url}"', EXAMPLE_CONFIG.read_text())
    if replaced != 1:
        raise RuntimeError(f"{EXAMPLE_CONFIG}: expected exactly one base_url line")
    path = directory / "bench.toml"
    path.write_text(text, encoding="utf-8")
    loaded = load_file_config(path).crm["amocrm"]
    if loaded.base_url != base_url or not loaded.enabled:
        raise RuntimeError(f"{path}: amoCRM is not enabled at {base_url}")
    return path


def base_env() -> dict[str, str]:
    """A minimal environment for every subprocess: no proxies, the repository importable."""
    env = {key: value for key, value in os.environ.items() if key in _KEPT_ENV}
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def bridge_env(
    directory: Path, config: Path, token: str, *, wait_seconds: float = 0
) -> dict[str, str]:
    return {
        **base_env(),
        "CONFIG_FILE": str(config),
        "DATABASE_PATH": str(directory / "bridge.sqlite"),
        "WEBHOOK_SECRETS": SECRET,
        "AMOCRM_ACCESS_TOKEN": token,
        "WAIT_SECONDS": str(wait_seconds),
        "LOG_LEVEL": "WARNING",
    }


def bridge_command(port: int) -> list[str]:
    script = Path(sys.executable).parent / "crm-bridge"
    if script.exists():
        return [str(script), "serve", "--host", HOST, "--port", str(port)]
    runner = "from bridge.cli import main; main()"
    return [sys.executable, "-c", runner, "serve", "--host", HOST, "--port", str(port)]


def empty_command(port: int) -> list[str]:
    return [sys.executable, "-m", "tests.bench.empty_app", "--host", HOST, "--port", str(port)]


def python_command(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def describe(env: Mapping[str, str]) -> dict[str, str]:
    """The settings a run used, for the JSON results (the secret and token left out)."""
    hidden = {"WEBHOOK_SECRETS", "AMOCRM_ACCESS_TOKEN", "PATH", "PYTHONPATH"}
    return {key: value for key, value in env.items() if key not in hidden}
