"""GET /webhook/health and /metrics through HTTP."""

from __future__ import annotations

from tests.conftest import payment_payload


async def test_crm_without_credentials_is_paused_and_webhooks_are_kept(
    run_bridge, fake_amo
) -> None:
    async with run_bridge(amocrm_access_token=None, wait_seconds=3) as bridge:
        health = (await bridge.client.get("/webhook/health")).json()
        response = await bridge.post_payment(payment_payload("pay_nocred"))
        rows = bridge.query("SELECT status, attempts FROM deliveries")
    crm = health["crms"]["amocrm"]
    assert crm["paused"] is True
    assert "AMOCRM_ACCESS_TOKEN" in crm["paused_reason"]
    assert health["status"] == "degraded"
    # Nothing can progress, so the webhook is answered at once instead of waiting.
    assert response.status_code == 202
    assert response.json()["status"] == "queued"
    assert rows == [("pending", 0)]
    assert fake_amo.count() == 0


async def test_health_and_metrics_after_a_delivered_payment(run_bridge) -> None:
    async with run_bridge() as bridge:
        await bridge.post_payment(payment_payload("pay_h1"))
        health = (await bridge.client.get("/webhook/health")).json()
        text = (await bridge.client.get("/metrics")).text
    # Health: the queue and the last success.
    assert health["status"] == "ok"
    assert health["database"] == {"ok": True}
    assert health["queue_depth"] == 0
    assert health["oldest_pending_age_seconds"] is None
    crm = health["crms"]["amocrm"]
    assert crm["paused"] is False
    assert crm["last_success_at"] is not None
    # Metrics: requests, deliveries and calls.
    assert 'bridge_webhook_requests_total{route="/webhook/payment",status="200"} 1.0' in text
    assert 'bridge_delivery_attempts_total{crm="amocrm",outcome="success"} 1.0' in text
    assert "bridge_crm_call_seconds_bucket" in text
    assert "bridge_queue_depth 0.0" in text
    assert 'bridge_events{status="success"} 1.0' in text
    assert 'bridge_deliveries{crm="amocrm",status="success"} 1.0' in text
    assert "bridge_oldest_pending_age_seconds 0.0" in text
    assert 'bridge_crm_paused{crm="amocrm"} 0.0' in text
