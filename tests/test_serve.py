"""`crm-bridge serve` as systemd (and `make run`) starts it: a real process on a real port."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from click.testing import CliRunner

from bridge.cli import main
from tests.conftest import EXAMPLE_CONFIG, SECRET, payment_payload, signed

BRIDGE = Path(sys.executable).with_name("crm-bridge")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_on_example_config_stores_webhooks_while_crm_has_no_token(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "CONFIG_FILE": str(EXAMPLE_CONFIG),
        "DATABASE_PATH": str(tmp_path / "db" / "bridge.sqlite"),
        "PORT": str(port),
        "WEBHOOK_SECRETS": SECRET,
        "WAIT_SECONDS": "1",
    }
    env.pop("AMOCRM_ACCESS_TOKEN", None)
    process = subprocess.Popen(  # noqa: S603 - our own console script
        [str(BRIDGE), "serve"], env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                health = httpx.get(f"{base}/webhook/health").json()
                break
            except httpx.TransportError:
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                assert time.monotonic() < deadline, "bridge did not start"
                time.sleep(0.1)
        body = json.dumps(payment_payload("pay_serve")).encode()
        answer = httpx.post(f"{base}/webhook/payment", content=body, headers=signed(body))
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=20)
    assert health["crms"]["amocrm"]["paused"] is True
    assert answer.status_code == 202
    # uvicorn re-raises SIGTERM after its graceful shutdown; systemd counts that as clean.
    assert process.returncode in (0, -15)
    assert "bridge stopped" in stderr
    assert "paused" in stderr
    assert (tmp_path / "db" / "bridge.sqlite").stat().st_mode & 0o777 == 0o600


def test_serve_refuses_a_broken_configuration(tmp_path: Path) -> None:
    broken = tmp_path / "bridge.toml"
    broken.write_text("[crm.amocrm]\nbase_url = 'https://x.amocrm.ru'\n")
    result = CliRunner().invoke(
        main, ["serve"], env={"CONFIG_FILE": str(broken), "DATABASE_PATH": str(tmp_path / "d")}
    )
    assert result.exit_code != 0
    assert "default_pipeline" in result.output


def test_serve_refuses_unknown_time_zone(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        ["serve"],
        env={
            "CONFIG_FILE": str(EXAMPLE_CONFIG),
            "DISPLAY_TIMEZONE": "Mars/Olympus",
            "DATABASE_PATH": str(tmp_path / "d"),
        },
    )
    assert result.exit_code != 0
    assert "DISPLAY_TIMEZONE" in result.output
