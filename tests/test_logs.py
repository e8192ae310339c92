"""What reaches journald: one line per outcome, errors at ERROR, nothing secret or personal."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.conftest import SECRET, payment_payload
from tests.fakes.amocrm import FakeAmoCrm
from tests.fakes.server import serve_in_thread
from tests.process import BridgeProcess, write_config


def test_log_lines_mask_personal_data_and_never_carry_secrets(tmp_path: Path) -> None:
    fake = FakeAmoCrm()
    token = fake.issue_token(ttl=3600)
    base_url, stop_fake = serve_in_thread(fake)
    bridge = BridgeProcess.create(
        tmp_path, write_config(tmp_path / "bridge.toml", base_url), access_token=token
    )
    try:
        bridge.start()
        assert bridge.post_payment(payment_payload("pay_log1")).status_code == 202
        bridge.wait_for(lambda: "outcome=success" in bridge.log_text(), what="the success line")
        forged = httpx.post(
            f"{bridge.url}/webhook/payment",
            content=b"{}",
            headers={"X-Signature": "sha256=" + "0" * 64},
        )
        assert forged.status_code == 401
        fake.expire_all_access_tokens()
        other = payment_payload("pay_log2", phone="+7 912 345-67-89", email="Maria@Example.org")
        assert bridge.post_payment(other).status_code == 202
        bridge.wait_for(lambda: "paused" in bridge.log_text(), what="the paused line")
    finally:
        bridge.stop()
        stop_fake()
    log = bridge.log_text()
    for secret in (SECRET, token):
        assert secret not in log
    for personal in (
        "+79991234567",
        "89991234567",
        "9991234567",
        "ivan@example.com",
        "+79123456789",
        "9123456789",
        "maria@example.org",
    ):
        assert personal not in log
    [success] = [line for line in log.splitlines() if "outcome=success" in line]
    assert success.startswith("INFO bridge.worker: event=payment:pay_log1 crm=amocrm")
    for part in ("contact=", "deal=", "created=yes", "calls=", "ms=", "phone:+7***67"):
        assert part in success
    assert any(line.startswith("WARNING") and "rejected" in line for line in log.splitlines())
    assert any(line.startswith("ERROR") and "paused" in line for line in log.splitlines())
