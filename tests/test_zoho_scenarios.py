"""Payments through HTTP with Zoho CRM as the only CRM (the stateful fake).

The bridge runs with `etc/crm-zoho.example.toml` (data centre "eu"). Every request it
sends is recorded and, after each test, checked against Zoho's v8 OpenAPI files (the
check fails when they are missing). Calls per payment come from the delivery's count.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from bridge.app import create_app
from bridge.settings import FileConfig, load_file_config
from tests.conftest import Bridge, make_settings, payment_payload
from tests.fakes.openapi_check import RecordingTransport
from tests.fakes.zoho import FakeZoho
from tests.fakes.zoho_openapi import ZohoOpenApi

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = load_file_config(ROOT / "etc" / "crm-zoho.example.toml").crm["zoho"]
SENT: list[RecordingTransport] = []


def zoho_file_config(**changes: Any) -> FileConfig:
    return FileConfig(crm={"zoho": EXAMPLE.model_copy(update={"enabled": True, **changes})})


@pytest.fixture(autouse=True)
def requests_conform_to_openapi() -> Iterator[None]:
    SENT.clear()
    yield
    spec = ZohoOpenApi.load()
    problems = [p for rec in SENT for request in rec.requests for p in spec.problems(request)]
    assert problems == []


@pytest.fixture
def fake() -> FakeZoho:
    return FakeZoho(EXAMPLE)


@pytest.fixture
def run_bridge(tmp_path: Path, fake: FakeZoho) -> Callable[..., Any]:
    @asynccontextmanager
    async def factory(file: FileConfig | None = None, **overrides: Any) -> AsyncIterator[Bridge]:
        if "zoho_refresh_token" not in overrides:
            overrides["zoho_refresh_token"] = fake.issue_oauth_pair()[1]
        overrides.setdefault("zoho_client_id", fake.client_id)
        overrides.setdefault("zoho_client_secret", fake.client_secret)
        overrides.setdefault("bridge_secret_key", "p6Jq0mVYzFJ6w8nTqSWb1t9w6kHfYc2cF9oT6ZxwV3k=")
        settings = make_settings(tmp_path, file or zoho_file_config(), **overrides)
        recorder = RecordingTransport(fake.transport())
        SENT.append(recorder)
        app = create_app(settings, transports={"zoho": recorder})
        async with AsyncTestClient(app=app) as client:
            yield Bridge(client, settings, fake)  # type: ignore[arg-type]

    return factory


def calls_of(bridge: Bridge, payment_id: str) -> int:
    [(calls,)] = bridge.query(
        "SELECT d.crm_calls FROM deliveries d JOIN events e ON e.id = d.event_id WHERE e.key = ?",
        (payment_id,),
    )
    return int(calls)


def api_calls(fake: FakeZoho) -> list[str]:
    return [f"{c.method} {c.path}" for c in fake.calls if not c.path.startswith("/oauth")]


async def test_new_customer_is_three_calls(run_bridge, fake) -> None:
    async with run_bridge() as bridge:
        response = await bridge.post_payment(payment_payload("pay_new", utm_source="advcake"))
        calls = calls_of(bridge, "pay_new")
    assert response.status_code == 200, response.text
    [contact] = fake.contacts()
    [deal] = fake.deals()
    assert response.json()["results"]["zoho"] == {
        "contact_id": contact["id"],
        "lead_id": deal["id"],
        "lead_created": True,
    }
    assert (contact["Last_Name"], contact["First_Name"], contact["Telegram_ID"]) == (
        "Петров",
        "Иван",
        "123456789",
    )
    assert (deal["Pipeline"], deal["Stage"], deal["Contact_Name"]) == (
        "Partners",
        "Автооплата",
        {"id": contact["id"]},
    )
    assert deal["Subjects"] == ["Русский", "Обществознание"] and deal["Exam_Direction"] == "ЕГЭ"
    assert (deal["Total_Paid"], deal["Purchase_Count"], deal["Payment_ID"]) == (10000, 1, "pay_new")
    [note] = fake.notes(deal["id"])
    assert "Payment ID: pay_new" in note
    # The search (a composite call that would read the hit's deals too), the composite
    # contact + deal, the note; the token refresh aside.
    assert api_calls(fake) == [
        "POST /crm/v8/__composite_requests",
        "POST /crm/v8/__composite_requests",
        "POST /crm/v8/Notes",
    ]
    assert calls == 3 and fake.credits_used == 3


async def test_returning_customer_is_three_calls_and_closed_deals_are_left(
    run_bridge, fake
) -> None:
    person = fake.add_contact(
        "Петров", "Иван", phone="8 (999) 123-45-67", telegram_id="123", telegram_username="ivan"
    )
    open_deal = fake.add_deal(
        person,
        pipeline="Yandex",
        stage="В работе",
        modified=1000,
        fields={"Total_Paid": 1500, "Purchase_Count": 2},
    )
    won = fake.add_deal(person, stage="Closed Won", modified=3000)
    autopay = fake.add_deal(person, stage="Автооплата", modified=4000)
    async with run_bridge() as bridge:
        response = await bridge.post_payment(payment_payload("pay_ret"))
    assert response.status_code == 200, response.text
    assert response.json()["results"]["zoho"]["lead_id"] == open_deal
    stored = fake.deal(open_deal)
    assert (stored["Total_Paid"], stored["Purchase_Count"]) == (11500, 3)
    assert fake.notes(won) == fake.notes(autopay) == []
    # The search with the contact's deals (one composite call), the update, the note.
    assert api_calls(fake) == [
        "POST /crm/v8/__composite_requests",
        f"PUT /crm/v8/Deals/{open_deal}",
        "POST /crm/v8/Notes",
    ]


async def test_contact_fields_are_filled_only_where_empty(run_bridge, fake) -> None:
    person = fake.add_contact("Петров", phone="+79991234567", telegram_username="typed")
    async with run_bridge() as bridge:
        response = await bridge.post_payment(payment_payload("pay_fill"))
    assert response.status_code == 200
    stored = fake.contact(person)
    assert (stored["Telegram_ID"], stored["Telegram_Username"]) == ("123456789", "typed")


async def test_known_customer_costs_three_calls_and_health_shows_credits(run_bridge, fake) -> None:
    gathering = zoho_file_config(excluded_status_ids=())
    async with run_bridge(file=gathering) as bridge:
        await bridge.post_payment(payment_payload("pay_k1", costs=(1000,)))
        before = len(api_calls(fake))
        second = await bridge.post_payment(payment_payload("pay_k2", costs=(700,)))
        health = (await bridge.client.get("/webhook/health")).json()["crms"]["zoho"]
    assert second.status_code == 200
    assert len(api_calls(fake)) - before == 3  # the deal, its update, the note
    [deal] = fake.deals()
    assert (deal["Total_Paid"], deal["Purchase_Count"]) == (1700, 2)
    assert health["credits_used_24h"] == fake.credits_used == 6
    assert health["credits_remaining"] == 50_000 - 6


async def test_a_composite_whose_answer_was_lost_is_not_repeated(run_bridge, fake) -> None:
    fake.fail_after_apply(kind="timeout", path_prefix="/crm/v8/__composite_requests")
    async with run_bridge(request_timeout_seconds=0.1) as bridge:
        await bridge.post_payment(payment_payload("pay_lost"))
        await bridge.settle(timeout=30)
    assert len(fake.contacts()) == 1 and len(fake.deals()) == 1
    [deal] = fake.deals()
    assert len(fake.notes(deal["id"])) == 1


async def test_repeat_after_success_is_409_and_crm_untouched(run_bridge, fake) -> None:
    async with run_bridge() as bridge:
        await bridge.post_payment(payment_payload("pay_dup"))
        before = fake.count()
        again = await bridge.post_payment(payment_payload("pay_dup"))
    assert again.status_code == 409 and fake.count() == before
