"""Issue scenarios 1–9, through HTTP, against the stateful fake amoCRM."""

from __future__ import annotations

import asyncio
import json

from tests.conftest import SECRET, payment_payload, reference_file_config, signed
from tests.crm_cases import BY_NAME

AMO = BY_NAME["amocrm"]
SITE_WORKING = 63242023


async def test_repeat_after_success_is_409_and_crm_untouched(run_bridge, fake_amo) -> None:
    async with run_bridge() as bridge:
        first = await bridge.post_payment(payment_payload("pay_dup"))
        calls = fake_amo.count()
        again = await bridge.post_payment(payment_payload("pay_dup"))
        statuses = bridge.query("SELECT http_status FROM requests ORDER BY id")
    assert first.status_code == 200
    assert again.status_code == 409
    assert again.json() == {"status": "duplicate"}
    assert fake_amo.count() == calls
    assert [row[0] for row in statuses][-2:] == [200, 409] or (200,) in statuses


async def test_repeat_while_pending_is_202_without_second_delivery(run_bridge, fake_amo) -> None:
    fake_amo.latency = 0.3
    async with run_bridge(wait_seconds=0) as bridge:
        first = await bridge.post_payment(payment_payload("pay_pend"))
        again = await bridge.post_payment(payment_payload("pay_pend"))
        await bridge.settle()
        deliveries = bridge.query("SELECT status FROM deliveries")
    assert first.status_code == 202
    assert first.json()["status"] == "queued"
    assert again.status_code == 202
    assert again.json() == {"status": "queued"}
    assert deliveries == [("success",)]
    assert len(fake_amo.contacts()) == 1
    [lead] = fake_amo.leads()
    assert len(fake_amo.notes(lead["id"])) == 1


async def test_unknown_customer_with_creation_disabled_is_404(run_bridge, fake_amo) -> None:
    async with run_bridge(create_if_not_found=False) as bridge:
        response = await bridge.post_payment(payment_payload("pay_404"))
        [(status,)] = bridge.query("SELECT status FROM payment_events WHERE payment_id = 'pay_404'")
    assert response.status_code == 404
    assert response.json()["status"] == "not_found"
    assert status == "not_found"
    assert fake_amo.contacts() == [] and fake_amo.leads() == []
    assert fake_amo.count(method="POST") == 0


async def test_status_other_than_confirmed_is_skipped_without_crm_call(
    run_bridge, fake_amo
) -> None:
    async with run_bridge() as bridge:
        response = await bridge.post_payment(payment_payload("pay_skip", status="PENDING"))
        rows = bridge.query("SELECT status FROM payment_events WHERE payment_id = 'pay_skip'")
    assert response.status_code == 202
    assert response.json()["status"] == "skipped"
    assert "PENDING" in response.json()["reason"]
    assert rows == [("skipped",)]
    assert fake_amo.count() == 0


async def test_rejected_requests_get_their_codes_and_are_recorded(run_bridge, fake_amo) -> None:
    good = json.dumps(payment_payload("pay_bad")).encode()
    async with run_bridge() as bridge:
        c = bridge.client
        wrong = await c.post("/webhook/payment", content=good, headers=signed(good, "other"))
        missing = await c.post("/webhook/payment", content=good)
        stale = await c.post(
            "/webhook/payment",
            content=good,
            headers={
                "webhook-id": "msg_1",
                "webhook-timestamp": "1000000000",
                "webhook-signature": "v1,AAAA",
            },
        )
        not_json = await c.post("/webhook/payment", content=b"{nope", headers=signed(b"{nope"))
        no_id = payment_payload("x")
        del no_id["course_order"]["payment_id"]
        body = json.dumps(no_id).encode()
        missing_id = await c.post("/webhook/payment", content=body, headers=signed(body))
        typed = payment_payload("pay_typed")
        typed["course_order"]["course_order_items"][0]["cost"] = "a lot"
        body = json.dumps(typed).encode()
        wrong_type = await c.post("/webhook/payment", content=body, headers=signed(body))
        huge = b'{"x": "' + b"a" * (2 * 1024 * 1024) + b'"}'
        too_big = await c.post("/webhook/payment", content=huge, headers=signed(huge))
        await asyncio.sleep(0.2)
        recorded = [row[0] for row in bridge.query("SELECT http_status FROM requests")]
        events = bridge.query("SELECT COUNT(*) FROM events")
    assert [wrong.status_code, missing.status_code, stale.status_code] == [401, 401, 401]
    assert wrong.json() == {"error": "invalid_signature"}
    assert not_json.status_code == 400
    assert missing_id.status_code == 422
    assert "course_order.payment_id" in json.dumps(missing_id.json()["details"])
    assert wrong_type.status_code == 422
    assert "cost" in json.dumps(wrong_type.json()["details"])
    assert too_big.status_code == 413
    assert sorted(recorded) == [400, 401, 401, 401, 413, 422, 422]
    assert events == [(0,)]
    assert fake_amo.count() == 0
    assert SECRET not in json.dumps([r.text for r in (wrong, missing, stale)])


async def test_restart_with_pending_deliveries_delivers_them(run_bridge, fake_amo) -> None:
    fake_amo.down()
    async with run_bridge(wait_seconds=0) as bridge:
        for n in range(3):
            response = await bridge.post_payment(
                payment_payload(f"pay_rs{n}", phone=f"8999000002{n}", telegram_id=None, email=None)
            )
            assert response.status_code == 202
    assert fake_amo.contacts() == []
    fake_amo.up()
    async with run_bridge(wait_seconds=0) as bridge:
        await bridge.settle(timeout=20)
        statuses = bridge.query("SELECT status FROM payment_events")
    assert statuses == [("success",)] * 3
    assert len(fake_amo.contacts()) == 3
    assert all(len(fake_amo.notes(lead["id"])) == 1 for lead in fake_amo.leads())


async def test_audit_queries_run_verbatim(run_bridge, fake_amo) -> None:
    async with run_bridge() as bridge:
        await bridge.post_payment(payment_payload("pay_a1"))
        await bridge.post_payment(payment_payload("pay_a2", status="PENDING"))
        by_status = dict(
            bridge.query("SELECT status, COUNT(*) FROM payment_events GROUP BY status;")
        )
        latest = bridge.query(
            "SELECT payment_id, status, amount, created_at FROM payment_events"
            " ORDER BY created_at DESC LIMIT 10;"
        )
        failed = bridge.query(
            "SELECT payment_id, error_message, created_at FROM payment_events"
            " WHERE status = 'failed';"
        )
    assert by_status == {"success": 1, "skipped": 1}
    assert {(row[0], row[1], row[2]) for row in latest} == {
        ("pay_a1", "success", 10000),
        ("pay_a2", "skipped", 10000),
    }
    assert failed == []


async def test_known_lead_moved_to_another_contact_is_not_used(run_bridge, fake_amo) -> None:
    gathering = reference_file_config(excluded_status_ids=())
    async with run_bridge(file=gathering) as bridge:
        await bridge.post_payment(payment_payload("pay_m1", costs=(1000,)))
        [old] = fake_amo.leads()
        fake_amo.move_lead(old["id"], old["status_id"], is_deleted=True)
        response = await bridge.post_payment(payment_payload("pay_m2", costs=(700,)))
    assert response.status_code == 200
    body = response.json()["results"]["amocrm"]
    assert body["lead_created"] is True
    assert AMO.deal_number(fake_amo, body["lead_id"], "purchase_count") == 1


async def test_remembered_autopay_deal_moved_on_by_a_manager_costs_three_calls(
    run_bridge, fake_amo
) -> None:
    async with run_bridge() as bridge:
        first = await bridge.post_payment(payment_payload("pay_x1", costs=(1000,)))
        lead_id = first.json()["results"]["amocrm"]["lead_id"]
        fake_amo.move_lead(lead_id, SITE_WORKING)  # a manager picked it up
        before = len(fake_amo.calls)
        second = await bridge.post_payment(payment_payload("pay_x2", costs=(700,)))
    assert second.json()["results"]["amocrm"] == {
        "contact_id": first.json()["results"]["amocrm"]["contact_id"],
        "lead_id": lead_id,
        "lead_created": False,
    }
    assert len(fake_amo.calls) - before == 3
    assert AMO.deal_number(fake_amo, lead_id, "total_paid") == 1700
