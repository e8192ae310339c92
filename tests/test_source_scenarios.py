"""Issue 21 through HTTP: other platforms' webhooks (`[source.NAME]`) into the fake amoCRM.

YCLIENTS and CloudPayments come in through their shipped presets with the example bodies
recorded from their documentation (bridge/sources/presets/, cited there); a third,
made-up platform is connected by nothing but a config section.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from bridge.settings import FileConfig, load_file_config
from bridge.sources.config import PRESETS, SourceConfig
from tests.cli_support import write_config
from tests.conftest import Bridge, reference_file_config

YC_TOKEN = "yc-url-token-5d1f"
CP_SECRET = "cp-api-secret-9a7c"
SECRETS = {
    "YCLIENTS_SOURCE_SECRETS": YC_TOKEN,
    # Two while rotating: the old one and the API secret in force.
    "CLOUDPAYMENTS_SOURCE_SECRETS": f"cp-old-secret, {CP_SECRET}",
    "SHOP_SOURCE_SECRETS": "shop:first-pass,shop:second-pass",
}
DEAL_TOTAL, DEAL_COUNT, DEAL_LAST_AMOUNT, DEAL_PAYMENT_ID = "700207", "700208", "700203", "700205"

YCLIENTS_EXAMPLE = json.loads((PRESETS / "yclients.example.json").read_text(encoding="utf-8"))
CLOUDPAYMENTS_EXAMPLE = (PRESETS / "cloudpayments.example.form").read_bytes()


def with_sources(base: FileConfig, **sections: dict[str, Any]) -> FileConfig:
    sources = {name: SourceConfig.model_validate(raw) for name, raw in sections.items()}
    return base.model_copy(update={"source": sources})


@pytest.fixture
def sources(run_bridge: Any) -> Callable[[], Any]:
    """`async with sources() as bridge:` both presets' sections, every source's secrets."""
    presets = {"yclients": {"preset": "yclients"}, "cloudpayments": {"preset": "cloudpayments"}}
    return lambda: run_bridge(with_sources(reference_file_config(), **presets), crm_env=SECRETS)


def yclients_record(record_id: int = 17381911, *, paid_full: int = 1) -> bytes:
    body = json.loads(json.dumps(YCLIENTS_EXAMPLE))
    body["resource_id"] = body["data"]["id"] = record_id
    body["data"]["paid_full"] = paid_full
    return json.dumps(body, ensure_ascii=False).encode()


def cloudpayments_pay(**changes: str) -> bytes:
    text = "&" + CLOUDPAYMENTS_EXAMPLE.decode()
    for key, value in changes.items():
        start = text.index(f"&{key}=") + len(key) + 2
        end = text.find("&", start)
        text = text[:start] + quote(value) + (text[end:] if end != -1 else "")
    return text[1:].encode()


def cp_signature(body: bytes, secret: str = CP_SECRET) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    return {
        "X-Content-HMAC": base64.b64encode(digest).decode(),
        "Content-Type": "application/x-www-form-urlencoded",
    }


async def post_yclients(bridge: Bridge, body: bytes, token: str = YC_TOKEN) -> Any:
    return await bridge.client.post(
        f"/webhook/source/yclients?token={token}",
        content=body,
        headers={"Content-Type": "application/json"},
    )


async def post_cloudpayments(bridge: Bridge, body: bytes, secret: str = CP_SECRET) -> Any:
    return await bridge.client.post(
        "/webhook/source/cloudpayments", content=body, headers=cp_signature(body, secret)
    )


def events(bridge: Bridge) -> list[tuple[Any, ...]]:
    return bridge.query("SELECT key, status, source, error_message FROM events ORDER BY id")


async def test_a_paid_yclients_record_lands_as_a_payment(sources, fake_amo) -> None:
    async with sources() as bridge:
        response = await post_yclients(bridge, yclients_record())
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "success"
        stored = events(bridge)
    assert stored == [("yclients:record-17381911", "success", "yclients", None)]
    [contact] = fake_amo.contacts()
    assert contact["name"] == "Анна Смирнова"
    [lead] = fake_amo.leads()
    # 2 500 + 1 200: the services' costs after YCLIENTS' discount.
    assert Decimal(str(fake_amo.lead_field(lead["id"], DEAL_TOTAL))) == 3700
    assert Decimal(str(fake_amo.lead_field(lead["id"], DEAL_COUNT))) == 1
    assert Decimal(str(fake_amo.lead_field(lead["id"], DEAL_LAST_AMOUNT))) == 3700
    assert fake_amo.lead_field(lead["id"], DEAL_PAYMENT_ID) == "yclients:record-17381911"
    [note] = fake_amo.notes(lead["id"])
    assert "Стрижка женская" in note and "Укладка" in note
    assert "Payment ID: yclients:record-17381911" in note
    assert "+79161234567" in note


async def test_a_cloudpayments_payment_lands_and_is_answered_code_0(sources, fake_amo) -> None:
    async with sources() as bridge:
        response = await post_cloudpayments(bridge, CLOUDPAYMENTS_EXAMPLE)
        assert (response.status_code, response.json()) == (200, {"code": 0})
        await bridge.settle()
        stored = events(bridge)
    assert stored == [("cloudpayments:1211506522", "success", "cloudpayments", None)]
    [contact] = fake_amo.contacts()
    [lead] = fake_amo.leads()
    assert Decimal(str(fake_amo.lead_field(lead["id"], DEAL_TOTAL))) == 1500
    assert Decimal(str(fake_amo.lead_field(lead["id"], DEAL_COUNT))) == 1
    [note] = fake_amo.notes(lead["id"])
    assert "Курс «Математика»" in note and "Invoice ID: ORDER-4451" in note
    # The phone came from `Data`, the JSON the site gave the payment widget.
    assert "+79161234567" in note
    assert contact["name"] == "IVAN PETROV"


async def test_wrong_signatures_are_401_and_store_nothing(sources, fake_amo) -> None:
    async with sources() as bridge:
        wrong_token = await post_yclients(bridge, yclients_record(), token="guess")
        no_token = await bridge.client.post("/webhook/source/yclients", content=b"{}")
        wrong_hmac = await post_cloudpayments(bridge, CLOUDPAYMENTS_EXAMPLE, secret="guess")
        tampered = await bridge.client.post(
            "/webhook/source/cloudpayments",
            content=cloudpayments_pay(Amount="1.00"),
            headers=cp_signature(CLOUDPAYMENTS_EXAMPLE),
        )
        stored = events(bridge)
    # Request-log rows go with the next write batch: all are written by the time it stops.
    logged = bridge.query("SELECT route, verdict, http_status FROM requests ORDER BY id")
    assert [r.status_code for r in (wrong_token, no_token, wrong_hmac, tampered)] == [401] * 4
    assert wrong_token.json() == {"error": "invalid_signature"}
    assert stored == [] and fake_amo.contacts() == []
    # The request log has the path, never the query that carries the token.
    assert ("/webhook/source/yclients", "token: secret mismatch", 401) in logged
    assert ("/webhook/source/cloudpayments", "hmac: signature mismatch", 401) in logged
    assert all("guess" not in str(row) for row in logged)


async def test_an_unpaid_record_is_skipped_then_delivered_once_paid(sources, fake_amo) -> None:
    async with sources() as bridge:
        booked = await post_yclients(bridge, yclients_record(paid_full=0))
        assert booked.status_code == 202
        assert booked.json()["status"] == "skipped"
        assert events(bridge) == [
            (
                "yclients:record-17381911",
                "skipped",
                "yclients",
                "status unpaid is not paid for source yclients",
            )
        ]
        assert fake_amo.contacts() == []
        # The same record, paid: the stored body is replaced and mapped again by the worker.
        paid = await post_yclients(bridge, yclients_record(paid_full=1))
        assert paid.status_code == 200, paid.text
        assert events(bridge)[0][:2] == ("yclients:record-17381911", "success")
    assert len(fake_amo.leads()) == 1


async def test_a_test_or_authorized_payment_is_skipped_with_the_sources_answer(
    sources, fake_amo
) -> None:
    authorized = cloudpayments_pay(TransactionId="1211506600", Status="Authorized")
    test_mode = cloudpayments_pay(TransactionId="1211506601", TestMode="1")
    async with sources() as bridge:
        first = await post_cloudpayments(bridge, authorized)
        second = await post_cloudpayments(bridge, test_mode)
        stored = events(bridge)
    assert [(r.status_code, r.json()) for r in (first, second)] == [(200, {"code": 0})] * 2
    assert [(key, status) for key, status, _, _ in stored] == [
        ("cloudpayments:1211506600", "skipped"),
        ("cloudpayments:1211506601", "skipped"),
    ]
    assert fake_amo.count() == 0


async def test_a_repeat_gets_the_sources_duplicate_answer_and_no_crm_call(
    sources, fake_amo
) -> None:
    async with sources() as bridge:
        assert (await post_yclients(bridge, yclients_record())).status_code == 200
        await post_cloudpayments(bridge, CLOUDPAYMENTS_EXAMPLE)
        await bridge.settle()
        calls = fake_amo.count()
        yc_again = await post_yclients(bridge, yclients_record())
        cp_again = await post_cloudpayments(bridge, CLOUDPAYMENTS_EXAMPLE)
        await bridge.settle()
        assert fake_amo.count() == calls
        assert len(events(bridge)) == 2
    assert (yc_again.status_code, yc_again.json()) == (409, {"status": "duplicate"})
    assert (cp_again.status_code, cp_again.json()) == (200, {"code": 0})
    assert len(fake_amo.leads()) == 2


async def test_a_body_the_mapping_cannot_read_is_422_naming_the_expression(
    sources, fake_amo
) -> None:
    no_amount = cloudpayments_pay(Amount="a lot")
    record = json.loads(yclients_record())
    del record["resource_id"]
    async with sources() as bridge:
        cp = await post_cloudpayments(bridge, no_amount)
        yc = await post_yclients(bridge, json.dumps(record).encode())
        not_json = await post_yclients(bridge, b"{not json")
        stored = events(bridge)
    assert cp.status_code == 422
    assert cp.json()["error"] == "mapping_failed"
    assert {
        "field": "map.amount",
        "expression": "Amount",
        "error": "gives text, not an amount",
    } in (cp.json()["details"])
    assert yc.status_code == 422
    [failure] = yc.json()["details"]
    assert failure["field"] == "map.id"
    assert failure["expression"] == "resource_id && join('-', [resource, to_string(resource_id)])"
    assert failure["error"] == "gives nothing"
    assert not_json.status_code == 400
    assert stored == [] and fake_amo.count() == 0


async def test_unknown_source_is_404(sources) -> None:
    async with sources() as bridge:
        response = await bridge.client.post("/webhook/source/nosuch", content=b"{}")
        also = await bridge.client.post("/webhook/source/", content=b"{}")
    assert response.status_code == 404 and also.status_code == 404
    assert response.json() == {"error": "unknown_source"}


SHOP_SECTION = """
[source.shop]
title = "The shop's own backend"
format = "form"
paid_statuses = ["succeeded"]
timezone = "Asia/Yekaterinburg"

[source.shop.auth]
scheme = "basic"

[source.shop.map]
id = "order.number"
status = "order.state"
paid_at = "order.paid"
first_name = "buyer.first"
last_name = "buyer.last"
phone = "buyer.phone"
telegram_id = "buyer.tg"
currency = "'RUB'"
utm_source = "utm.source"
items = "order.lines"

[source.shop.item]
name = "title"
subject = "topic"
cost = "price"
lessons = "qty"

[source.shop.answer]
code = 200
body = { ok = true }
duplicate_body = { ok = true, duplicate = true }
"""


async def test_a_made_up_platform_is_connected_by_a_config_section_alone(
    tmp_path: Path, run_bridge, fake_amo
) -> None:
    path = write_config(tmp_path)  # the example config pointed at the fake
    path.write_text(path.read_text(encoding="utf-8") + SHOP_SECTION, encoding="utf-8")
    # PHP-style nested keys, as such backends post their forms.
    body = (
        "order[number]=A-1001&order[state]=succeeded&order[paid]=2026-11-20 16:30"
        "&buyer[first]=Пётр&buyer[last]=Иванов&buyer[phone]=8 (912) 000-11-22"
        "&buyer[tg]=555000111&utm[source]=vk"
        "&order[lines][0][title]=Английский&order[lines][0][topic]=Английский язык"
        "&order[lines][0][price]=4990.50&order[lines][0][qty]=8"
        "&order[lines][1][title]=Разговорный клуб&order[lines][1][price]=1000"
    ).encode()
    async with run_bridge(load_file_config(path), crm_env=SECRETS) as bridge:

        async def post(pair: bytes) -> Any:
            auth = {"Authorization": "Basic " + base64.b64encode(pair).decode()}
            return await bridge.client.post("/webhook/source/shop", content=body, headers=auth)

        first = await post(b"shop:second-pass")
        again = await post(b"shop:second-pass")
        refused = await post(b"shop:nope")
        await bridge.settle()
        stored = events(bridge)
    assert (first.status_code, first.json()) == (200, {"ok": True})
    assert (again.status_code, again.json()) == (200, {"ok": True, "duplicate": True})
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == 'Basic realm="crm-bridge"'
    assert stored == [("shop:A-1001", "success", "shop", None)]
    [lead] = fake_amo.leads()
    assert Decimal(str(fake_amo.lead_field(lead["id"], DEAL_TOTAL))) == Decimal("5990.50")
    [note] = fake_amo.notes(lead["id"])
    assert "Английский" in note and "Разговорный клуб" in note
    assert "+79120001122" in note
    # 16:30 in Yekaterinburg (UTC+5) is 11:30 UTC, 14:30 in Moscow (the display zone).
    assert "Дата/время: 2026-11-20 14:30:00" in note
    assert "Дата/время UTC: 2026-11-20T11:30" in note


async def test_unknown_sources_share_one_route_in_the_log_and_metrics(sources) -> None:
    async with sources() as bridge:
        for name in ("a", "b", "c%1b%5B31m"):
            response = await bridge.client.post(f"/webhook/source/{name}", content=b"{}")
            assert response.status_code == 404
        await post_yclients(bridge, yclients_record(paid_full=0))
        metrics = (await bridge.client.get("/metrics")).text
    routes = {route for (route,) in bridge.query("SELECT route FROM requests")}
    assert routes == {"/webhook/source/*", "/webhook/source/yclients"}
    assert 'route="/webhook/source/*",status="404"} 3.0' in metrics
    assert 'route="/webhook/source/yclients",status="202"} 1.0' in metrics
