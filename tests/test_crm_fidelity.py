"""Issue 13, items 18–21: the CRMs as their vendors document them, through HTTP.

- HubSpot: a `date` property (what a date picker made in HubSpot's UI is) refuses a time
  of day; the bridge writes it a date.
- Pipedrive: person search by phone finds numbers stored the way people type them.
- Bitrix24: a customer's deals are every deal the contact is bound to, not only those
  where it is the primary contact; a Telegram-id miss reads no one else's deals.
- amoCRM 403 and Bitrix24 `user_access_error` pause the CRM like a 401.
"""

from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import crm_calls, payment_payload, wait_until
from tests.crm_cases import BY_NAME, Run, running
from tests.fakes.amocrm import FakeAmoCrm
from tests.fakes.bitrix24 import FakeBitrix24
from tests.fakes.hubspot import FakeHubSpot
from tests.fakes.pipedrive import FakePipedrive


def customer(payment_id: str, n: int) -> dict[str, Any]:
    return payment_payload(
        payment_id, phone=f"8999333{n:04d}", email=None, telegram_id=None, telegram_tag=None
    )


# ---- HubSpot: date properties (item 18) ----------------------------------------------


@pytest.fixture
def fake_hub() -> FakeHubSpot:
    return FakeHubSpot()


@pytest.fixture
def run_hub(tmp_path: Path, fake_hub: FakeHubSpot) -> Run:
    case = BY_NAME["hubspot"]
    # No excluded stage: the second payment goes to the first one's deal.
    return partial(running(case, fake_hub, tmp_path), case.file_config(excluded_status_ids=()))


async def test_hubspot_date_property_gets_the_payment_date(run_hub, fake_hub) -> None:
    fake_hub.set_property_type("deals", "last_payment_at", "date", "date")
    async with run_hub() as bridge:
        first = await bridge.post_payment(payment_payload("pay_d1"))
        again = await bridge.post_payment(payment_payload("pay_d2", costs=(700,)))
        second_calls = crm_calls(bridge, "pay_d2")
    assert first.status_code == 200, first.text
    assert first.json()["status"] == "success", first.text
    assert again.json()["status"] == "success", again.text
    [deal] = fake_hub.deals()
    # Paid 2025-01-20 11:49:20Z = 14:49 in Moscow (the display zone): that calendar date.
    assert fake_hub.deal_field(deal["id"], "last_payment_at") == "2025-01-20"
    # The property types were learnt once; the second payment pays nothing for them.
    property_reads = [c for c in fake_hub.calls if c.path.startswith("/crm/properties/")]
    assert len(property_reads) == 1
    assert second_calls == 3  # deal read by id, deal update, note: as with date-times


# ---- amoCRM 403, Bitrix24 user_access_error (item 21) ---------------------------------


async def test_amocrm_403_pauses_the_crm_instead_of_failing_deliveries(
    run_bridge: Any, fake_amo: FakeAmoCrm
) -> None:
    fake_amo.forbid("Account is blocked")
    async with run_bridge(wait_seconds=2) as bridge:
        answers = [await bridge.post_payment(customer(f"pay_f{n}", n)) for n in range(3)]
        await wait_until(lambda: fake_amo.count(status=403) >= 1)
        await asyncio.sleep(0.3)  # time enough to fail the others, were they to fail
        health = (await bridge.client.get("/webhook/health")).json()
        rows = bridge.query("SELECT status, attempts FROM deliveries")
        forbidden = fake_amo.count(status=403)
    assert [a.json()["status"] for a in answers] == ["queued"] * 3
    amo = health["crms"]["amocrm"]
    assert amo["paused"] is True
    assert "403" in amo["paused_reason"]
    assert rows == [("pending", 0)] * 3
    assert forbidden == 1, "a paused CRM is probed, not hammered"

    fake_amo.forbid(None)
    async with run_bridge(wait_seconds=0) as bridge:
        await bridge.settle()
        rows = bridge.query("SELECT status FROM deliveries")
    assert rows == [("success",)] * 3


@pytest.fixture
def fake_bx() -> FakeBitrix24:
    return FakeBitrix24()


@pytest.fixture
def run_bx(tmp_path: Path, fake_bx: FakeBitrix24) -> Run:
    return running(BY_NAME["bitrix24"], fake_bx, tmp_path)


async def test_bitrix24_user_access_error_pauses_the_crm(run_bx, fake_bx) -> None:
    fake_bx.deny_user_access()
    async with run_bx(wait_seconds=2) as bridge:
        answers = [await bridge.post_payment(customer(f"pay_u{n}", n)) for n in range(3)]
        await wait_until(lambda: fake_bx.count(status=403) >= 1)
        await asyncio.sleep(0.3)
        health = (await bridge.client.get("/webhook/health")).json()
        rows = bridge.query("SELECT status, attempts FROM deliveries")
        denied = fake_bx.count(status=403)
    assert [a.json()["status"] for a in answers] == ["queued"] * 3
    bx = health["crms"]["bitrix24"]
    assert bx["paused"] is True
    assert "user_access_error" in bx["paused_reason"]
    assert rows == [("pending", 0)] * 3
    assert denied == 1


# ---- Bitrix24: every deal the contact is bound to; no portal-wide read (item 20) -------


def spy_deal_reads(fake: FakeBitrix24) -> list[set[str]]:
    """The contact ids of every deal any deal list answered (crm.deal.list or
    crm.item.list, alone or inside a batch)."""
    seen: list[set[str]] = []
    for method in ("crm.deal.list", "crm.item.list"):
        original = fake._handlers[method]

        def spy(params: Any, original: Any = original) -> Any:
            result, extra = original(params)
            rows = result["items"] if isinstance(result, dict) else result
            for row in rows:
                ids = row.get("contactIds") or [row.get("CONTACT_ID")]
                seen.append({str(cid) for cid in ids})
            return result, extra

        fake._handlers[method] = spy
    return seen


async def test_bitrix24_deal_where_the_customer_is_not_the_primary_contact_is_updated(
    run_bx, fake_bx
) -> None:
    ivan = fake_bx.add_contact("Иван", telegram_id="123456789")
    wife = fake_bx.add_contact("Мария")
    shared = fake_bx.add_deal(wife, stage_id="EXECUTING", other_contacts=[ivan])
    async with run_bx() as bridge:
        response = await bridge.post_payment(payment_payload("pay_b1", costs=(700,)))
        calls = crm_calls(bridge, "pay_b1")
    assert response.status_code == 200, response.text
    assert response.json()["results"]["bitrix24"] == {
        "contact_id": str(ivan),
        "lead_id": str(shared),
        "lead_created": False,
    }
    assert len(fake_bx.deals()) == 1
    assert len(fake_bx.notes(shared)) == 1
    # lookup batch (with the contact's deals), contact fill, deal update, comment: as many
    # as for a primary contact
    assert fake_bx.count() == calls == 4


async def test_bitrix24_telegram_miss_reads_no_one_elses_deals(run_bx, fake_bx) -> None:
    ivan = fake_bx.add_contact("Иван", phones=["+79991234567"])
    mine = fake_bx.add_deal(ivan, stage_id="EXECUTING")
    for n in range(3):  # other customers' open deals
        fake_bx.add_deal(fake_bx.add_contact(f"Другой {n}"), stage_id="EXECUTING")
    seen = spy_deal_reads(fake_bx)
    async with run_bx() as bridge:
        response = await bridge.post_payment(payment_payload("pay_b2", costs=(700,)))
        calls = crm_calls(bridge, "pay_b2")
    assert response.json()["results"]["bitrix24"]["lead_id"] == str(mine), response.text
    assert seen and all(str(ivan) in contacts for contacts in seen)
    # lookup batch, the phone hit's record and deals, contact fill, deal update, comment
    assert calls == 5


# ---- Pipedrive: a phone stored the way it was typed (item 19) ---------------------------


@pytest.fixture
def fake_pd() -> FakePipedrive:
    return FakePipedrive()


@pytest.fixture
def run_pd(tmp_path: Path, fake_pd: FakePipedrive) -> Run:
    return running(BY_NAME["pipedrive"], fake_pd, tmp_path)


@pytest.mark.parametrize(
    ("typed", "searches"),
    [("+7 999 123-45-67", 1), ("8 (999) 123-45-67", 2), ("999 123 45 67", 3)],
)
async def test_pipedrive_finds_a_phone_stored_as_typed(
    run_pd: Any, fake_pd: FakePipedrive, typed: str, searches: int
) -> None:
    ivan = fake_pd.add_person("Иван Петров", phones=[typed])
    payload = payment_payload("pay_p1", email=None, telegram_id=None, telegram_tag=None)
    async with run_pd() as bridge:
        response = await bridge.post_payment(payload)
    assert response.status_code == 200, response.text
    assert response.json()["results"]["pipedrive"]["contact_id"] == str(ivan)
    assert len(fake_pd.persons()) == 1
    phone_searches = [c for c in fake_pd.calls if c.path.endswith("/persons/search")]
    assert len(phone_searches) == searches  # stops at the first form that finds him
