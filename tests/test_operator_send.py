"""A first webhook without a signing script: `crm-bridge send` and `sign --example`."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from bridge.signing import hmac_signature
from tests.cli_support import make_cli, operator_cli
from tests.conftest import ROOT, SECRET
from tests.process import ServedAmoCrm, running

EXAMPLE = ROOT / "etc" / "examples" / "payment.json"


def test_example_payment_is_in_etc_examples_and_valid() -> None:
    from bridge.payloads import parse_payment

    payment = parse_payment(json.loads(EXAMPLE.read_bytes()))
    assert payment.course_order.payment_id == "pay_example_0001"


def test_send_signs_the_example_and_prints_the_answer(tmp_path: Path) -> None:
    cli = make_cli(tmp_path)
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"status": "success", "results": {}})

    cli.http_transport = httpx.MockTransport(answer)
    result = cli("send", "--example")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("200 success")
    assert "crm-bridge show pay_example_0001" in result.stderr
    (request,) = seen
    assert str(request.url) == "http://127.0.0.1:8080/webhook/payment"
    assert request.headers["X-Signature"] == "sha256=" + hmac_signature(request.content, SECRET)
    assert request.content == EXAMPLE.read_bytes()


def test_send_new_id_replaces_payment_id_and_refusal_exits_1(tmp_path: Path) -> None:
    cli = make_cli(tmp_path)
    bodies: list[dict[str, object]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(401, json={"error": "invalid_signature"})

    cli.http_transport = httpx.MockTransport(answer)
    result = cli("send", str(EXAMPLE), "--new-id")
    assert result.exit_code == 1
    assert result.stdout.startswith("401 invalid_signature")
    key = bodies[0]["course_order"]["payment_id"]  # type: ignore[index]
    assert key != "pay_example_0001"
    assert str(key).startswith("pay_")


def test_send_without_a_secret_or_a_bridge_is_one_line(tmp_path: Path) -> None:
    cli = make_cli(tmp_path, WEBHOOK_SECRETS="")
    result = cli("send", "--example")
    assert result.exit_code == 1
    assert "no webhook secret" in result.stderr
    cli = make_cli(tmp_path, PORT="9")  # discard: nothing listens
    result = cli("send", "--example", "--connect-wait", "0")
    assert result.exit_code == 1
    assert "cannot connect to http://127.0.0.1:9/webhook/payment" in result.stderr
    assert "Traceback" not in result.output


def test_sign_example_prints_headers_and_curl(tmp_path: Path) -> None:
    cli = make_cli(tmp_path)
    result = cli("sign", "--example")
    assert result.exit_code == 0, result.output
    body = EXAMPLE.read_bytes()
    assert f"X-Signature: sha256={hmac_signature(body, SECRET)}" in result.stdout
    assert "curl" in result.stdout
    assert cli("sign").exit_code == 2  # neither FILE nor --example


def test_first_webhook_walk_send_then_show(amo_server: ServedAmoCrm, tmp_path: Path) -> None:
    """The README's walk: a running bridge, `send --example`, then `show` lists it."""
    bridge = amo_server.bridge(tmp_path, env={"WAIT_SECONDS": "5"})
    with running(bridge):
        bridge.start()
        cli = operator_cli(bridge)
        sent = cli("send", "--example")
        assert sent.exit_code == 0, sent.output
        assert sent.stdout.startswith("200 success"), sent.output
        shown = cli("show", "pay_example_0001")
        assert shown.exit_code == 0, shown.output
        assert "success" in shown.stdout
        again = cli("send", "--example")
        assert again.stdout.startswith("409 duplicate")
        assert again.exit_code == 0
