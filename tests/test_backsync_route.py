"""`POST /webhook/crm/{name}`: what it answers and what it stores (issue 19).

The whole app runs over amoCRM's fake and the platform stand-in; the per-CRM scenarios
are in tests/test_backsync_scenarios.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from bridge.app import _public_url
from bridge.backsync.receive import section_receives
from bridge.checks import backsync_findings
from bridge.settings import FileConfig
from tests.conftest import make_settings, wait_until
from tests.crm_cases import CASES
from tests.fakes.crm_events import FORM, CrmRequest
from tests.order_cases import ORDER_CASES
from tests.test_backsync_scenarios import (
    BASE,
    EVENT_CRMS,
    Sync,
    crm_events,
    ordered,
    send,
    sync_for,
)

AMO_URL = f"{BASE}/webhook/crm/amocrm?token=amo-url-token"


@pytest.fixture
def amo(tmp_path: Path) -> Sync:
    return sync_for(EVENT_CRMS[0], tmp_path)


def form(pairs: list[tuple[str, str]], url: str = AMO_URL) -> CrmRequest:
    return CrmRequest("POST", url, {"Content-Type": FORM}, urlencode(pairs).encode())


async def test_a_deal_no_order_is_linked_to_is_recorded_and_not_forwarded(amo: Sync) -> None:
    async with amo.run() as bridge:
        await ordered(bridge, amo)  # some order exists; this deal is not its
        pipeline, stage = amo.stage("new")
        contact = amo.fake.add_contact("Менеджер", phones=["+79160001111"])
        lead = amo.fake.add_lead(contact, pipeline_id=int(pipeline), status_id=int(stage))
        answer = await send(bridge, amo.move(str(lead), "in_rent"))
        assert answer.json() == {"status": "accepted", "events": 1, "new": 1}
        await bridge.settle(timeout=20)
        [(_, status, order_id, forwarded, decision, webhook_id)] = crm_events(bridge)
    assert (status, order_id, forwarded, webhook_id) == ("success", None, None, None)
    assert decision == f"deal {lead} is linked to no order"
    assert amo.platform.received == []


async def test_a_batch_of_moves_is_one_callback_each_in_order(amo: Sync) -> None:
    async with amo.run() as bridge:
        deal = await ordered(bridge, amo)
        first = amo.move(deal, "in_rent")
        second = amo.move(deal, "in_progress")
        # amoCRM batches what happened since its last request: both leads[status] entries
        both = first.body + b"&" + second.body.replace(b"%5B0%5D", b"%5B1%5D")
        answer = await send(bridge, CrmRequest("POST", AMO_URL, first.headers, both))
        assert answer.json() == {"status": "accepted", "events": 2, "new": 2}, answer.text
        await bridge.settle(timeout=20)
    assert [(e["previous_status"], e["status"]) for e in amo.platform.events()] == [
        ("reserved", "in_rent"),
        ("in_rent", "in_progress"),
    ]


async def test_a_deleted_deal_is_recorded_and_not_forwarded(amo: Sync) -> None:
    async with amo.run() as bridge:
        deal = await ordered(bridge, amo)
        answer = await send(bridge, form([("leads[delete][0][id]", deal)]))
        assert answer.status_code == 200, answer.text
        await bridge.settle(timeout=20)
        [(_, status, _, forwarded, decision, _)] = crm_events(bridge)
    assert (status, forwarded) == ("success", None)
    assert decision == f"deal {deal} was deleted in the CRM"
    assert amo.platform.received == []


@pytest.mark.parametrize(
    ("path", "overrides", "why"),
    [
        ("/webhook/crm/nosuch", {}, "no enabled section of this name"),
        ("/webhook/crm/amocrm", {"platform_callback_url": ""}, "back-sync is off"),
    ],
)
async def test_sections_that_send_no_events_are_404(
    amo: Sync, path: str, overrides: dict[str, Any], why: str
) -> None:
    if not overrides.get("platform_callback_url", True):
        overrides["platform_callback_secret"] = None
    async with amo.run(**overrides) as bridge:
        answer = await bridge.client.post(path + "?token=amo-url-token", content=b"x=1")
        assert (answer.status_code, answer.json()) == (404, {"error": "not_found"})
        logged = "SELECT http_status, detail FROM requests WHERE route LIKE '/webhook/crm/%'"
        await wait_until(lambda: len(bridge.query(logged)) == 1)
        [(code, detail)] = bridge.query(logged)
        assert code == 404 and why in detail
        assert bridge.query("SELECT COUNT(*) FROM events") == [(0,)]


def test_a_crm_whose_kind_sends_no_events_has_no_route(tmp_path: Path) -> None:
    zoho = next(case for case in CASES if case.name == "zoho")
    settings = make_settings(
        tmp_path, zoho.file_config(), platform_callback_url="http://platform.test/hooks"
    )
    assert section_receives(settings, "zoho") == "zoho sends no events the bridge follows"


@pytest.mark.parametrize(
    "pairs",
    [
        [("leads[status][0][id]", "abc"), ("leads[status][0][status_id]", "1")],
        [("leads[status][0][id]", "1" * 40)],
    ],
)
async def test_a_malformed_event_is_400_and_stores_nothing(
    amo: Sync, pairs: list[tuple[str, str]]
) -> None:
    async with amo.run() as bridge:
        answer = await send(bridge, form(pairs))
        assert answer.status_code == 400, answer.text
        assert "error" in answer.json()
        assert bridge.query("SELECT COUNT(*) FROM events") == [(0,)]


async def test_an_event_without_a_moved_deal_is_200_and_stores_nothing(amo: Sync) -> None:
    async with amo.run() as bridge:
        answer = await send(bridge, form([("account[subdomain]", "example")]))
        assert answer.json() == {"status": "accepted", "events": 0, "new": 0}
        assert bridge.query("SELECT COUNT(*) FROM events") == [(0,)]


async def test_other_methods_are_405(amo: Sync) -> None:
    async with amo.run() as bridge:
        answer = await bridge.client.get("/webhook/crm/amocrm?token=amo-url-token")
        assert answer.status_code == 405


def test_the_public_url_is_the_one_the_crm_called_behind_the_proxy() -> None:
    # uvicorn has already put the trusted proxy's X-Forwarded-Proto into `scheme`.
    scope = {
        "scheme": "https",
        "server": ("127.0.0.1", 8080),
        "headers": [(b"host", b"bridge.example.ru")],
        "path": "/webhook/crm/hubspot",
        "raw_path": b"/webhook/crm/hub%73pot",
        "query_string": b"a=1&b=%20",
    }
    assert _public_url(scope) == "https://bridge.example.ru/webhook/crm/hub%73pot?a=1&b=%20"
    no_host = {**scope, "headers": [], "raw_path": None, "query_string": b""}
    assert _public_url(no_host) == "https://127.0.0.1:8080/webhook/crm/hubspot"


def test_check_reports_the_callback_and_sections_without_an_event_secret(
    tmp_path: Path,
) -> None:
    half = make_settings(tmp_path, platform_callback_url="http://platform.test/hooks")
    [finding] = backsync_findings(half)
    assert finding.level == "problem" and "PLATFORM_CALLBACK_SECRET" in finding.text
    amo = next(case for case in ORDER_CASES if case.name == "amocrm")
    file = FileConfig(crm={"amocrm": amo.config()})
    full = make_settings(
        tmp_path,
        file,
        platform_callback_url="http://platform.test/hooks",
        platform_callback_secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    )
    found = [(f.level, f.text) for f in backsync_findings(full)]
    assert found == [
        ("ok", "back-sync: callbacks to platform.test; CRM events from amocrm"),
        (
            "warning",
            "AMOCRM_EVENT_SECRETS is not set: every event of amocrm would be answered 401"
            " (README, Back-sync)",
        ),
    ]
