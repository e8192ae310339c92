"""`crm-bridge serve` as systemd (and `make run`) starts it: a real process on a real port."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from bridge.cli import main
from tests.conftest import EXAMPLE_CONFIG, payment_payload
from tests.process import BridgeProcess, running


def test_serve_on_example_config_stores_webhooks_while_crm_has_no_token(tmp_path: Path) -> None:
    bridge = BridgeProcess.create(tmp_path, EXAMPLE_CONFIG, access_token=None, WAIT_SECONDS="1")
    with running(bridge):
        bridge.start()
        health = bridge.health()
        answer = bridge.post_payment(payment_payload("pay_serve"))
        bridge.terminate()
    assert health["crms"]["amocrm"]["paused"] is True
    assert answer.status_code == 202
    # uvicorn re-raises SIGTERM after its graceful shutdown; systemd counts that as clean.
    assert bridge.wait_exit() in (0, -15)
    output = bridge.log_text()
    assert "bridge stopped" in output
    assert "paused" in output
    assert bridge.database.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("config", "env", "message"),
    [
        ("[crm.amocrm]\nbase_url = 'https://x.amocrm.ru'\n", {}, "default_pipeline"),
        (None, {"DISPLAY_TIMEZONE": "Mars/Olympus"}, "DISPLAY_TIMEZONE"),
    ],
    ids=["broken-configuration", "unknown-time-zone"],
)
def test_serve_refuses_a_bad_setting(
    tmp_path: Path, config: str | None, env: dict[str, str], message: str
) -> None:
    path = EXAMPLE_CONFIG
    if config is not None:
        path = tmp_path / "bridge.toml"
        path.write_text(config)
    env = {"CONFIG_FILE": str(path), "DATABASE_PATH": str(tmp_path / "d"), **env}
    result = CliRunner().invoke(main, ["serve"], env=env)
    assert result.exit_code != 0
    assert message in result.output
