"""The bench's configuration of the servers it starts: TOML file, environment, commands.

The TOML file is the reference one (`etc/bridge.example.toml`: the fake's account, its
pipeline rules, statuses, field and enum ids), or another CRM's example file, with
`base_url` pointed at a fake on loopback and, where a run asks, `batch_size` or
`rate_limit_per_second` set. Servers run in their own temporary directory, so a `.env`
in the working copy is never read, and with no proxy variables, so nothing can leave the
machine.
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


def write_config(
    directory: Path,
    base_url: str,
    *,
    source: Path = EXAMPLE_CONFIG,
    section: str = "amocrm",
    batch_size: int | None = None,
    rate_limit: float | None = None,
    file_name: str = "bench.toml",
) -> Path:
    """The example file `source` with section `section` at `base_url` and enabled;
    `batch_size` and `rate_limit` (`rate_limit_per_second`) set when given, else as the
    file has them. Checked by the bridge's own loader."""
    text, replaced = _BASE_URL.subn(f'base_url = "{base_url}"', source.read_text())
    if replaced != 1:
        raise RuntimeError(f"{source}: expected exactly one base_url line")
    text = _set_key(text, section, "enabled", "true")
    if batch_size is not None:
        text = _set_key(text, section, "batch_size", str(batch_size))
    if rate_limit is not None:
        text = _set_key(text, section, "rate_limit_per_second", repr(float(rate_limit)))
    path = directory / file_name
    path.write_text(text, encoding="utf-8")
    loaded = load_file_config(path).crm[section]
    if loaded.base_url != base_url or not loaded.enabled:
        raise RuntimeError(f"{path}: {section} is not enabled at {base_url}")
    if batch_size is not None and loaded.batch_size != batch_size:
        raise RuntimeError(f"{path}: batch_size is {loaded.batch_size}, not {batch_size}")
    return path


def _set_key(text: str, section: str, key: str, value: str) -> str:
    """`key = value` in `[crm.SECTION]`: the file's own line replaced, else one added
    right under the header (the example files have one CRM section each, so a key's
    first line is that section's)."""
    line = re.compile(rf"^{key}\s*=.*$", re.MULTILINE)
    if line.search(text):
        return line.sub(f"{key} = {value}", text, count=1)
    header = f"[crm.{section}]\n"
    if header not in text:
        raise RuntimeError(f"no [crm.{section}] section to set {key} in")
    return text.replace(header, f"{header}{key} = {value}\n", 1)


def base_env() -> dict[str, str]:
    """A minimal environment for every subprocess: no proxies, the repository importable."""
    env = {key: value for key, value in os.environ.items() if key in _KEPT_ENV}
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def bridge_env(
    directory: Path, config: Path, secrets: Mapping[str, str], *, wait_seconds: float = 0
) -> dict[str, str]:
    """`secrets`: the CRM's credentials as environment variables (e.g. AMOCRM_ACCESS_TOKEN)."""
    return {
        **base_env(),
        "CONFIG_FILE": str(config),
        "DATABASE_PATH": str(directory / "bridge.sqlite"),
        "WEBHOOK_SECRETS": SECRET,
        **secrets,
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
    hidden = {
        "WEBHOOK_SECRETS",
        "AMOCRM_ACCESS_TOKEN",
        "BITRIX24_WEBHOOK_URL",
        "PATH",
        "PYTHONPATH",
    }
    return {key: value for key, value in env.items() if key not in hidden}
