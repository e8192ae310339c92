"""The WAL and shared-memory files are deleted under a running `crm-bridge serve` (issue 13.6).

SQLite goes on writing into a deleted WAL through its open descriptor: every webhook
was answered 202 and a SIGKILL then lost them all. The bridge must notice (the files'
inodes, looked at with each batch and every second), answer 503 meanwhile, copy what the
deleted WAL holds into the database file and reopen on fresh files; nothing it
acknowledged may be lost to a SIGKILL afterwards.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from tests.customers import customer_payment
from tests.process import BridgeProcess, write_config


def test_a_deleted_wal_is_noticed_recovered_from_and_nothing_acknowledged_is_lost(
    tmp_path: Path,
) -> None:
    # No CRM credentials: deliveries wait, only intake writes.
    config = write_config(tmp_path / "bridge.toml", "http://127.0.0.1:9")
    bridge = BridgeProcess.create(tmp_path, config, access_token=None)
    bridge.start()
    acknowledged: set[str] = set()
    answers: list[int] = []
    try:
        for n in range(5):
            assert bridge.post_payment(customer_payment(n, "pay_w")).status_code == 202
            acknowledged.add(f"pay_w{n}")
        for suffix in ("-wal", "-shm"):
            os.unlink(f"{bridge.database}{suffix}")
        for n in range(5, 25):
            code = bridge.post_payment(customer_payment(n, "pay_w")).status_code
            assert code in (202, 503), code
            answers.append(code)
            if code == 202:
                acknowledged.add(f"pay_w{n}")
        bridge.wait_for(
            lambda: "the database was reopened" in bridge.log_text(), 10, "the store reopened"
        )
        health = httpx.get(f"{bridge.url}/webhook/health", timeout=5.0)
        assert health.status_code == 200 and health.json()["database"] == {"ok": True}
        for n in range(25, 30):
            assert bridge.post_payment(customer_payment(n, "pay_w")).status_code == 202
            acknowledged.add(f"pay_w{n}")
        assert "WAL or shared-memory file" in bridge.log_text()
    finally:
        bridge.kill()  # SIGKILL: what was acknowledged must be in the files already
    stored = {key for (key,) in bridge.query("SELECT key FROM events")}
    assert acknowledged <= stored
    assert 503 in answers or len(acknowledged) == 30  # refused until reopened
