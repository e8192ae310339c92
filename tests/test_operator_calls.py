"""Every CRM call of a delivery is recorded and shown by `crm-bridge show`; a CRM's
refusal of a configured id names the config key."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from bridge.crm.calllog import mask_error, safe_path
from tests.cli_support import make_cli
from tests.conftest import payment_payload, reference_file_config


async def _show(tmp_path: Path, db: Path, key: str, *extra: str) -> Any:
    # The command runs its own event loop: in a thread, next to the test's.
    cli = make_cli(tmp_path, DATABASE_PATH=str(db))
    result = await asyncio.to_thread(cli, "show", key, *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout) if "--json" in extra else result.stdout


async def test_show_lists_each_crm_call_of_a_delivery(run_bridge: Any, tmp_path: Path) -> None:
    async with run_bridge() as bridge:
        response = await bridge.post_payment(payment_payload("pay_calls"))
        assert response.status_code == 200, response.text
        sent = len(bridge.fake.calls)
    report = await _show(tmp_path, bridge.settings.database_path, "pay_calls", "--json")
    calls = report["crm_calls"]
    assert len(calls) == sent == report["deliveries"][0]["crm_calls"]
    first = calls[0]
    assert first["crm"] == "amocrm" and first["attempt"] == 1
    assert first["method"] == "GET" and first["path"].startswith("/api/v4/")
    assert "?" not in first["path"]  # the query carries the searched phone or e-mail
    assert first["status"] in (200, 204) and first["ms"] >= 0 and first["at"].endswith("Z")
    assert {c["method"] for c in calls} >= {"GET", "POST"}
    text = await _show(tmp_path, bridge.settings.database_path, "pay_calls")
    assert "CRM calls" in text and "POST /api/v4/leads/complex" in text
    assert "https://reference.amocrm.test/leads/detail/" in text


async def test_a_refused_call_keeps_its_masked_error_body(run_bridge: Any, tmp_path: Path) -> None:
    async with run_bridge() as bridge:
        bridge.fake.fail_next(1, 503, method="GET")
        response = await bridge.post_payment(payment_payload("pay_blip"))
        assert response.status_code == 200, response.text
    report = await _show(tmp_path, bridge.settings.database_path, "pay_blip", "--json")
    calls = report["crm_calls"]
    assert calls[0]["status"] == 503 and calls[0]["error"]
    assert calls[1]["status"] in (200, 204)  # the quick retry, recorded as its own call


async def test_an_unknown_field_id_is_named_by_its_config_key(
    run_bridge: Any, tmp_path: Path
) -> None:
    amo = reference_file_config().crm["amocrm"]
    fields = amo.deal_fields.model_copy(update={"payment_id": "900099"})
    file = reference_file_config(deal_fields=fields)
    async with run_bridge(file) as bridge:
        response = await bridge.post_payment(payment_payload("pay_badfield"))
        assert response.status_code == 202, response.text
        assert response.json()["results"]["amocrm"]["status"] == "failed"
    # The caller gets a generic reason (issue 13); the explanation is the operator's.
    report = await _show(tmp_path, bridge.settings.database_path, "pay_badfield", "--json")
    error = report["deliveries"][0]["last_error"]
    assert "crm.amocrm.deal_fields.payment_id = 900099" in error
    assert "crm-bridge check" in error
    refused = [c for c in report["crm_calls"] if c["status"] == 400]
    assert refused and refused[0]["error"]


def test_recorded_paths_and_errors_carry_no_secrets_or_personal_data() -> None:
    assert safe_path("/api/v4/contacts?query=%2B79991234567") == "/api/v4/contacts"
    assert safe_path("https://portal.example/rest/1/secret/crm.deal.add") == (
        "/rest/1/secret/crm.deal.add"
    )
    masked = mask_error(
        '{"error": "bad", "access_token": "abc.def", "email": "ivan@example.com",'
        ' "phone": "+79991234567"}'
    )
    assert "abc.def" not in masked and "ivan@example.com" not in masked
    assert "+79991234567" not in masked
    assert len(mask_error("x" * 5000)) == 500


async def test_a_refused_connection_names_host_and_port(tmp_path: Path) -> None:
    import httpx
    from litestar.testing import AsyncTestClient

    from bridge.app import create_app
    from tests.conftest import make_settings, signed

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused")

    app = create_app(make_settings(tmp_path), transports={"amocrm": httpx.MockTransport(refuse)})
    body = json.dumps(payment_payload("pay_down")).encode()
    async with AsyncTestClient(app=app) as client:
        response = await client.post("/webhook/payment", content=body, headers=signed(body))
    assert response.status_code == 202
    report = await _show(tmp_path, tmp_path / "bridge.sqlite", "pay_down", "--json")
    error = report["deliveries"][0]["last_error"]
    assert "cannot connect to reference.amocrm.test:443" in error
    assert report["crm_calls"][0]["status"] == 0
