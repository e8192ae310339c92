"""Back-sync for the operator (issue 19): a callback the platform refuses is failed and
visible (health, `crm-bridge stats`, `crm-events`, `crm-event`), and sent again after the
fix with the same `webhook-id`."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.cli_support import Cli, write_config
from tests.conftest import wait_until
from tests.test_backsync_scenarios import (
    EVENT_CRMS,
    WHSEC,
    crm_events,
    ordered,
    send,
    sync_for,
)


@pytest.mark.parametrize("again", ["crm-event", "retry"])
async def test_a_refused_callback_is_failed_visible_and_sent_again_after_the_fix(
    tmp_path: Path, again: str
) -> None:
    amo = sync_for(EVENT_CRMS[0], tmp_path)
    amo.platform.secret = "whsec_" + "QUJD" * 8  # the platform has another secret
    async with amo.run() as bridge:
        cli = Cli(
            tmp_path,
            {
                "DATABASE_PATH": str(bridge.settings.database_path),
                "CONFIG_FILE": str(write_config(tmp_path)),
            },
        )
        deal = await ordered(bridge, amo)
        assert (await send(bridge, amo.move(deal, "in_rent"))).status_code == 200
        await wait_until(lambda: crm_events(bridge)[0][1] == "failed")
        health = (await bridge.client.get("/webhook/health")).json()
        assert health["status"] == "degraded"
        assert health["platform"]["failed"] == 1
        assert "platform answered 401" in health["platform"]["last_error"]
        stats = await asyncio.to_thread(cli.json, "stats")
        assert stats["crms"]["platform"]["deliveries"] == {"failed": 1}
        [listed] = await asyncio.to_thread(cli.json, "crm-events", "--status", "failed")
        assert (listed["crm"], listed["deal_id"], listed["order_id"]) == (
            "amocrm",
            deal,
            "ord_1042",
        )
        assert listed["forwarded_status"] == "in_rent"
        assert "platform answered 401" in listed["error"]
        webhook_id = listed["webhook_id"]

        amo.platform.secret = WHSEC  # fixed
        if again == "crm-event":
            shown = await asyncio.to_thread(cli.json, "crm-event", listed["key"], "--retry")
            assert shown["queued_again"] is True
            assert [step["step"] for step in shown["journal"]] == ["decision"]
        else:  # the callbacks are deliveries to "platform", retried like any CRM's
            retried = await asyncio.to_thread(cli, "retry", "--crm", "platform")
            assert retried.exit_code == 0, retried.output
        await wait_until(lambda: crm_events(bridge)[0][1] == "success")
        health = (await bridge.client.get("/webhook/health")).json()
    assert health["status"] == "ok" and health["platform"]["failed"] == 0
    [body] = amo.platform.events()
    assert body["status"] == "in_rent"
    assert amo.platform.deliveries(webhook_id) == 1
    assert len(amo.platform.refused) == 1
    text = await asyncio.to_thread(cli, "crm-events")
    assert "→ in_rent" in text.output
