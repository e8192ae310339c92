"""The running bridge as an operator drives it: one serve per database, pause that
survives a restart, reload under load (kept answering; a broken config refused)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.cli_support import operator_cli
from tests.conftest import payment_payload
from tests.process import (
    BridgeProcess,
    ServedAmoCrm,
    running,
)


@pytest.fixture
def bridge(amo_server: ServedAmoCrm, tmp_path: Path) -> Iterator[BridgeProcess]:
    """`crm-bridge serve` running over the fake amoCRM, stopped after the test."""
    with running(amo_server.bridge(tmp_path)) as started:
        started.start()
        yield started


def test_a_second_serve_on_the_same_database_is_refused(bridge: BridgeProcess) -> None:
    second = bridge.run("serve", PORT=str(bridge.port + 1))
    assert second.returncode == 1
    assert f"another crm-bridge serve (pid {bridge.pid}) already uses" in second.stderr
    assert "Traceback" not in second.stderr
    assert bridge.health()["status"] == "ok"  # the first one is untouched


def test_pause_survives_a_restart_and_resume_delivers(
    bridge: BridgeProcess, amo_server: ServedAmoCrm
) -> None:
    cli = operator_cli(bridge)
    paused = cli("pause", "amocrm", "--reason", "CRM maintenance")
    assert paused.exit_code == 0, paused.output
    # The running bridge reads holds once a second: the log says when it has.
    bridge.wait_for(lambda: "paused by the operator" in bridge.log_text(), what="paused")
    crm = bridge.health()["crms"]["amocrm"]
    assert crm["paused_reason"] == "CRM maintenance" and crm["paused_by"]
    assert bridge.health()["status"] == "degraded"
    calls = len(amo_server.fake.calls)
    assert bridge.post_payment(payment_payload("pay_held")).status_code == 202
    bridge.terminate()
    bridge.start()
    time.sleep(1.5)  # a worker poll or two: nothing may go out while held
    assert len(amo_server.fake.calls) == calls, bridge.log_text()
    assert bridge.statuses()["pay_held"] == "pending"
    assert bridge.log_text().count("paused by the operator") == 2
    resumed = cli("resume", "amocrm")
    assert "amocrm resumed" in resumed.stdout
    bridge.settle()
    assert bridge.statuses()["pay_held"] == "success", bridge.log_text()
    assert bridge.health()["status"] == "ok"
    assert "amocrm resumed by the operator" in bridge.log_text()


def test_reload_under_load_keeps_answering_and_refuses_a_broken_config(
    bridge: BridgeProcess,
) -> None:
    config = Path(bridge.env["CONFIG_FILE"])
    good = config.read_text(encoding="utf-8")
    codes: list[int] = []
    stop = threading.Event()

    def load() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            response = bridge.post_payment(payment_payload(f"pay_load_{n}", telegram_id=str(n)))
            codes.append(response.status_code)
            # Paced: every payment is one customer's, delivered one after another at the
            # CRM's rate, and all of them must be delivered before the test ends.
            stop.wait(0.1)

    sender = threading.Thread(target=load)
    sender.start()
    try:
        for _ in range(3):
            time.sleep(0.3)
            os.kill(bridge.pid, signal.SIGHUP)
        bridge.wait_for(
            lambda: bridge.log_text().count("config reloaded from") == 3, what="3 reloads"
        )
        config.write_text(good + "\n[crm.amocrm\n", encoding="utf-8")  # broken TOML
        os.kill(bridge.pid, signal.SIGHUP)
        bridge.wait_for(lambda: "reload refused" in bridge.log_text(), what="refusal")
        time.sleep(0.3)
    finally:
        stop.set()
        sender.join()
    assert codes and set(codes) <= {200, 202}, sorted(set(codes))
    assert bridge.health()["database"]["ok"]
    refusal = [line for line in bridge.log_text().splitlines() if "reload refused" in line]
    assert str(config) in refusal[0] and "not valid TOML" in refusal[0]
    # check and retry say the running config is older than the file.
    cli = operator_cli(bridge)
    config.write_text(good + "\n# a valid change, not yet reloaded\n", encoding="utf-8")
    retried = cli("retry", "--failed")
    assert "the running bridge's config is older than" in retried.stderr
    os.kill(bridge.pid, signal.SIGHUP)
    bridge.wait_for(lambda: bridge.log_text().count("config reloaded from") == 4, what="4th reload")
    assert "older than" not in cli("retry", "--failed").stderr
    bridge.settle()
    assert set(bridge.statuses().values()) == {"success"}


def test_health_shows_config_loaded_at_and_one_time_format(bridge: BridgeProcess) -> None:
    assert bridge.post_payment(payment_payload("pay_t")).status_code in (200, 202)
    bridge.settle()
    health = bridge.health()
    crm = health["crms"]["amocrm"]
    for value in (health["time"], health["config_loaded_at"], crm["last_success_at"]):
        assert len(value) == 24 and value[10] == "T" and value.endswith("Z"), value
    raw = httpx.get(f"{bridge.url}/webhook/health", timeout=5).text
    assert "+00:00" not in raw
    assert json.loads(raw)["status"] == "ok"
