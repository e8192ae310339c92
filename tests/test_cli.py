"""The `bridge` commands over the event log and the tools, through click's CliRunner against
a real SQLite file in tmp_path. (`check`, `discover`, `auth`: tests/test_cli_crm.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from bridge.crypto import TokenCipher
from bridge.signing import verify
from bridge.tokens import TokenPair
from tests.cli_support import T0, Cli, make_cli, seed
from tests.conftest import SECRET, payment_payload

OUTCOMES = {
    "pay_ok1": "success",
    "pay_ok2": "success",
    "pay_bad": "failed",
    "pay_wait": "retrying",
    "pay_new": "pending",
    "pay_skip": "skipped",
    "pay_dead": "dead",
}


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.chdir(tmp_path)  # no stray .env
    return make_cli(tmp_path)


@pytest.fixture
def seeded(cli: Cli) -> Cli:
    cli.with_store(lambda store: seed(store, OUTCOMES))
    return cli


def test_commands_need_an_existing_database(cli: Cli) -> None:
    for args in (["stats"], ["events"], ["show", "x"], ["retry", "--failed"]):
        result = cli(*args)
        assert result.exit_code == 1
        assert "does not exist (DATABASE_PATH)" in result.stderr
    assert not cli.db_path.exists()


def test_a_broken_config_is_one_clear_line(cli: Cli) -> None:
    Path(cli.env["CONFIG_FILE"]).write_text("[crm.amocrm]\nbase_url = 1\n", encoding="utf-8")
    result = cli("stats")
    assert result.exit_code == 1
    assert "bridge.toml: crm.amocrm.base_url" in result.stderr


def test_stats(seeded: Cli) -> None:
    report = seeded.json("stats")
    assert report["events"] == {
        "failed": 2,
        "pending": 2,
        "skipped": 1,
        "success": 2,
    }
    assert report["events_total"] == 7
    assert report["success_rate"] == 0.5  # 2 of 4 finished (failed includes dead)
    assert report["queue_depth"] == 2
    assert report["oldest_pending_age_seconds"] == 3600.0
    assert report["crm_calls"] == 5 + 5 + 2 + 2 + 1
    assert report["avg_calls_per_success"] == 5.0
    assert report["last_success_at"].startswith("2025-06-15T15:06:40")
    amo = report["crms"]["amocrm"]
    assert amo["deliveries"] == {
        "dead": 1,
        "failed": 1,
        "pending": 1,
        "retrying": 1,
        "success": 2,
    }
    human = seeded("stats")
    assert human.exit_code == 0
    assert "success rate (of finished events)  50.0%" in human.stdout
    assert "oldest pending" in human.stdout and "1h" in human.stdout


def test_events_filters(seeded: Cli) -> None:
    everything = seeded.json("events")
    assert len(everything) == 7
    assert everything[0]["payment_id"] == "pay_dead"  # newest first
    assert {e["payment_id"] for e in seeded.json("events", "--status", "failed")} == {
        "pay_bad",
        "pay_dead",
    }
    # With --crm, the status is that CRM's delivery status (pending includes retrying).
    waiting = seeded.json("events", "--crm", "amocrm", "--status", "pending")
    assert {e["payment_id"] for e in waiting} == {"pay_wait", "pay_new"}
    assert len(seeded.json("events", "--crm", "amocrm")) == 6  # skipped has no delivery
    assert len(seeded.json("events", "--limit", "2")) == 2
    assert seeded.json("events", "--since", "30m") == []  # the clock is T0 + 1 h
    assert len(seeded.json("events", "--since", "2h")) == 7
    assert len(seeded.json("events", "--since", "2025-06-15")) == 7
    assert seeded.json("events", "--since", "2025-06-16T00:00:00+03:00") == []
    row = seeded.json("events", "--status", "success")[0]
    assert row["deliveries"] == {"amocrm": "success"}
    assert row["amount"] == "10000"


def test_events_human_and_errors(seeded: Cli) -> None:
    table = seeded("events", "--status", "failed")
    assert table.exit_code == 0
    assert "pay_bad" in table.stdout and "amocrm: failed" in table.stdout
    assert "no events match" in seeded("events", "--since", "1m").stdout
    bad_since = seeded("events", "--since", "yesterday")
    assert bad_since.exit_code == 2
    assert "neither a duration" in bad_since.stderr
    assert seeded("events", "--status", "weird").exit_code == 2
    unknown_crm = seeded("events", "--crm", "hubspot")
    assert "no CRM named 'hubspot'" in unknown_crm.stderr


def test_show(seeded: Cli) -> None:
    report = seeded.json("show", "pay_ok1")
    assert report["status"] == "success"
    assert report["payload"]["course_order"]["payment_id"] == "pay_ok1"
    (delivery,) = report["deliveries"]
    assert delivery == {
        "crm": "amocrm",
        "status": "success",
        "attempts": 1,
        "contact_id": "111",
        "deal_id": "222",
        "deal_created": True,
        "pipeline_id": "4423755",
        "crm_calls": 5,
        "next_attempt_at": None,
        "last_error": None,
        "links": {
            "contact": "https://reference.amocrm.test/contacts/detail/111",
            "deal": "https://reference.amocrm.test/leads/detail/222",
        },
        "waiting_because": None,
    }
    assert [(j["step"], j["value"]) for j in report["journal"]] == [
        ("contact", "111"),
        ("deal", {"id": "222"}),
    ]
    assert [(r["http_status"], r["verdict"]) for r in report["requests"]] == [(202, "hmac: ok")]
    waiting = seeded.json("show", "pay_wait")["deliveries"][0]
    assert waiting["next_attempt_at"] == "2025-06-15T15:07:40Z"
    assert waiting["last_error"] == "HTTP 503"
    human = seeded("show", "pay_bad")
    assert human.exit_code == 0
    for text in ("pay_bad", "HTTP 400 bad field", "step journal", '"payment_id": "pay_bad"'):
        assert text in human.stdout
    assert "none (the event was not processed)" in seeded("show", "pay_skip").stdout
    missing = seeded("show", "pay_nope")
    assert missing.exit_code == 1
    assert "no payment with id 'pay_nope'" in missing.stderr


def test_retry_one_payment_and_all_failed(seeded: Cli) -> None:
    one = seeded("retry", "pay_bad")
    assert one.exit_code == 0
    assert "1 event(s) queued again" in one.stdout and "within about 1 s" in one.stdout
    assert seeded.json("show", "pay_bad")["deliveries"][0]["status"] == "pending"
    done = seeded("retry", "pay_ok1")
    assert "nothing to retry: payment pay_ok1 is success" in done.stdout
    failed = seeded("retry", "--failed")
    assert "1 event(s) queued again" in failed.stdout  # pay_dead; pay_bad is pending now
    assert "nothing to retry: no failed deliveries" in seeded("retry", "--failed").stdout
    assert seeded("retry", "pay_nope").exit_code == 1
    assert seeded("retry").exit_code == 2
    assert seeded("retry", "pay_bad", "--failed").exit_code == 2


def test_retry_mentions_a_paused_crm(seeded: Cli) -> None:
    seeded.with_store(lambda s: s.set_crm_state("amocrm", paused_reason="401 unauthorised"))
    result = seeded("retry", "pay_bad")
    assert "paused, waiting for credentials: amocrm (401 unauthorised)" in result.stderr


def test_prune_keeps_what_is_unfinished_or_recent(cli: Cli) -> None:
    old = {"old_ok": "success", "old_bad": "failed", "old_skip": "skipped", "old_wait": "retrying"}
    cli.with_store(lambda store: seed(store, old), now=T0 - 40 * 86400)
    cli.with_store(lambda store: seed(store, {"new_ok": "success"}))
    cli.clock = lambda: T0
    asked = cli("prune", "--older-than", "30", input="n\n")
    assert asked.exit_code == 1
    assert "Delete 3 finished event(s)" in asked.stdout and "4 request-log row(s)" in asked.stdout
    assert cli.query("SELECT COUNT(*) FROM events") == [(5,)]
    result = cli("prune", "--older-than", "30", "--yes")
    assert result.exit_code == 0
    assert "deleted 3 event(s) and 4 request-log row(s)" in result.stdout
    assert sorted(k for (k,) in cli.query("SELECT key FROM events")) == ["new_ok", "old_wait"]
    assert cli.query("SELECT COUNT(*) FROM journal") == [(2,)]  # only new_ok's steps
    assert cli.query("SELECT COUNT(*) FROM deliveries") == [(2,)]
    assert "nothing older than 30 days" in cli("prune", "--older-than", "30").stdout
    assert cli("prune", "--older-than", "0").exit_code == 2


def test_sign_prints_headers_the_bridge_accepts_and_a_curl_line(cli: Cli, tmp_path: Path) -> None:
    body = json.dumps(payment_payload("pay_sig")).encode()
    (tmp_path / "p.json").write_bytes(body)
    result = cli("sign", str(tmp_path / "p.json"))
    assert result.exit_code == 0, result.output
    header_lines = result.stdout.split("\n\n")[0].splitlines()
    headers = dict(line.split(": ", 1) for line in header_lines)
    verdict = verify(
        headers, body, hmac_secrets=[SECRET], standard_secrets=[], legacy_enabled=False, now=T0
    )
    assert verdict.ok
    curl = result.stdout.strip().splitlines()[-1]
    assert curl.startswith("curl -sS -X POST http://127.0.0.1:8080/webhook/payment")
    assert f"--data-binary @{tmp_path / 'p.json'}" in curl


def test_sign_with_a_standard_webhooks_secret(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "p.json").write_bytes(b'{"course_order": {}}')
    result = cli(
        "sign", str(tmp_path / "p.json"), "--secret", "whsec_c2VjcmV0", "--scheme", "standard"
    )
    assert result.exit_code == 0
    assert "webhook-signature: v1," in result.stdout and "X-Signature" not in result.stdout
    assert "not a valid payment (the bridge would answer 422)" in result.stderr
    bad = cli("sign", str(tmp_path / "p.json"), "--secret", "whsec_!!", "--scheme", "standard")
    assert bad.exit_code == 1 and "not base64" in bad.stderr


def test_sign_without_any_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cli = make_cli(tmp_path, WEBHOOK_SECRETS="")
    (tmp_path / "p.json").write_bytes(b"not json")
    result = cli("sign", str(tmp_path / "p.json"))
    assert result.exit_code == 1
    assert "no secret: pass --secret or set WEBHOOK_SECRETS" in result.stderr


def test_rotate_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    old_key, new_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    cli = make_cli(tmp_path, BRIDGE_SECRET_KEY=old_key)
    generated = cli("rotate-key", "--generate")
    assert generated.exit_code == 0
    Fernet(generated.stdout.strip().encode())  # a valid key
    assert "put this key FIRST" in generated.stderr
    pair = TokenPair("access", "refresh", T0 + 60)
    cli.with_store(lambda s: s.save_tokens("amocrm", pair), cipher=TokenCipher([old_key]))

    cli.env["BRIDGE_SECRET_KEY"] = f"{new_key},{old_key}"
    result = cli("rotate-key")
    assert result.exit_code == 0, result.output
    assert "re-encrypted 1 of 1 stored token(s)" in result.stdout
    assert "can now be removed" in result.stdout
    only_new = TokenCipher([new_key])
    assert cli.with_store(lambda s: s.load_tokens("amocrm"), cipher=only_new) == pair

    cli.env["BRIDGE_SECRET_KEY"] = ""
    missing = cli("rotate-key")
    assert missing.exit_code == 1 and "BRIDGE_SECRET_KEY is not set" in missing.stderr
    cli.env["BRIDGE_SECRET_KEY"] = Fernet.generate_key().decode()  # the old keys are gone
    lost = cli("rotate-key")
    assert lost.exit_code == 1 and "cannot be decrypted" in lost.stderr


def test_env_file_option(seeded: Cli, tmp_path: Path) -> None:
    env_file = tmp_path / "service.env"
    env_file.write_text(f"DATABASE_PATH={seeded.db_path}\n", encoding="utf-8")
    seeded.env["DATABASE_PATH"] = str(tmp_path / "elsewhere.sqlite")
    assert seeded("stats").exit_code == 1
    del seeded.env["DATABASE_PATH"]
    result = seeded("--env-file", str(env_file), "stats", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["events_total"] == 7
