"""The bridge dies at every step of the order flow (SPEC §3's exactly-once, for §8).

Over the in-memory CRM (no CRM's HTTP fake takes orders on this branch yet), twice:
- in process, at every CRM call: the delivery ends there with `Killed`, which nothing in
  the bridge catches, so nothing after that point is written to the database — before
  the call, or after the CRM applied it and before its answer came back (the window
  between a CRM write and its journal write). The app is then stopped and a new one
  started on the same database and the same CRM, which resumes the delivery;
- as tests/test_faults_kill.py does for payments, by a real SIGKILL of a real process
  (`tests.order_kill_app`: the app over a CRM whose state is a file) at the steps whose
  crash window matters most, then a restart.
After the last event: one contact, one company, one deal, the last event's items once,
the stage of the last status, and one note per event.
"""

from __future__ import annotations

import functools
import json
import signal
import sys
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from bridge.settings import FileConfig
from tests.conftest import ROOT, reference_file_config, signed, unfinished, wait_until
from tests.order_cases import MEMORY, post_order
from tests.order_kill_app import load_state
from tests.order_support import PIPELINE, STAGES, order_body, order_config_toml, with_orders
from tests.process import BridgeProcess, write_config

TENT = [("tent-02", "Шатёр 6×12", 1, "25000.00")]
CREATED = order_body(event="created", status="new")
UPDATE = order_body(status="in_rent", updated_at="2026-11-21T09:00:00+03:00", items=TENT)
PERSON = order_body(event="created", status="new", business=False)
PERSON_UPDATE = order_body(
    status="in_rent", updated_at="2026-11-21T09:00:00+03:00", items=TENT, business=False
)


@dataclass(frozen=True)
class Case:
    script: str  # "business-new": a new customer and company; "person-known": a manager's contact
    event: int  # the event killed in: 0 created, 1 updated
    call: int  # its n-th CRM call
    after: bool  # the CRM applied the call before the bridge died

    @property
    def id(self) -> str:
        return (
            f"{self.script}-event{self.event}-call{self.call}-{'after' if self.after else 'before'}"
        )


CASES = [
    # created: find_contact, find_company, create_company, create_contact_and_deal,
    # set_deal_items, add_note
    *(Case("business-new", 0, n, after) for n in range(1, 7) for after in (False, True)),
    # updated, over the bridge's link: change_deal, set_deal_items, add_note
    *(Case("business-new", 1, n, True) for n in range(1, 4)),
    # created for a manager's contact: find_contact, list_deals, create_deal,
    # set_deal_items, add_note
    *(Case("person-known", 0, n, True) for n in range(1, 6)),
    Case("person-known", 1, 1, True),
]


def _file() -> FileConfig:
    file = reference_file_config(request_timeout_seconds=0.05, late_write_seconds=0.05)
    return file.model_copy(update={"crm": {"amocrm": with_orders(file.crm["amocrm"])}})


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
async def test_a_kill_at_each_step_leaves_exactly_one_of_everything(
    case: Case, tmp_path: Path
) -> None:
    crm = MEMORY.make_fake()
    run = functools.partial(
        MEMORY.running(crm, tmp_path), _file(), wait_seconds=0, shutdown_grace_seconds=0.1
    )
    business = case.script == "business-new"
    if not business:
        crm.add_contact(phones=["+79160001122"])
    events = [CREATED, UPDATE] if business else [PERSON, PERSON_UPDATE]
    for index, body in enumerate(events):
        if index == case.event:
            crm.kill_at(case.call, after=case.after)
        async with run() as bridge:
            answer = await post_order(bridge, body)
            assert answer.status_code == 202, answer.text
            await wait_until(lambda: crm.killed or unfinished(bridge.settings.database_path) == 0)
        if crm.killed:
            crm.killed = False
            async with run() as bridge:  # the restart resumes the delivery
                await bridge.settle()
    statuses = bridge.query("SELECT status FROM order_events")
    assert crm.kills == 1, "the kill point was never reached: the case proves nothing"
    assert statuses == [("success",), ("success",)]
    assert len(crm.contacts) == 1
    assert len(crm.companies) == (1 if business else 0)
    [deal] = crm.deals
    assert crm.stage(deal) == (PIPELINE, STAGES["in_rent"])
    assert crm.items[deal] == [("Шатёр 6×12", Decimal(1), Decimal("25000.00"))]
    notes = crm.notes[deal]
    assert len(notes) == 2, notes
    assert "Order event: ord_1042@2026-11-20T07:15:00Z" in notes[0]
    assert "Order event: ord_1042@2026-11-21T06:00:00Z" in notes[1]
    if business:
        [company] = crm.companies
        assert crm.deal_company[deal] == company
        assert crm.contact_companies[next(iter(crm.contacts))] == {company}


# ---- the same, by a real SIGKILL of a real process ------------------------------------


def _process(home: Path) -> BridgeProcess:
    """`tests.order_kill_app` (the app over a CRM whose state is a file) as a process."""
    # The CRM is in memory: its base_url is never called.
    config = write_config(home / "bridge.toml", "http://127.0.0.1:9", request_timeout_seconds=0.05)
    config.write_text(config.read_text(encoding="utf-8") + order_config_toml(), encoding="utf-8")
    return BridgeProcess.create(
        home,
        config,
        access_token=None,
        command=(sys.executable, "-m", "tests.order_kill_app"),
        PYTHONPATH=str(ROOT),
        RETRY_SCHEDULE_SECONDS="0.1,0.1,0.1,0.1,0.1",
        STATE_FILE=str(home / "crm.pickle"),
    )


PROCESS_CASES = [
    # created, a new business customer: find_contact, find_company, create_company,
    # create_contact_and_deal, set_deal_items, add_note — each applied, then SIGKILL
    *((1, n, True) for n in (3, 4, 5, 6)),
    (1, 4, False),
    # the update over the link: change_deal, set_deal_items, add_note
    (2, 3, True),
]


@pytest.mark.parametrize(
    ("event", "call", "after"),
    PROCESS_CASES,
    ids=[f"event{e}-call{c}-{'after' if a else 'before'}" for e, c, a in PROCESS_CASES],
)
def test_a_sigkill_at_a_step_leaves_exactly_one_of_everything(
    event: int, call: int, after: bool, tmp_path: Path
) -> None:
    bridge = _process(tmp_path)
    try:
        for index, body in enumerate([CREATED, UPDATE], start=1):
            kill = {"KILL_AT": str(call), "KILL_AFTER": "1" if after else "0"}
            bridge.start(**(kill if index == event else {}))
            raw = json.dumps(body).encode()
            answer = httpx.post(f"{bridge.url}/webhook/order", content=raw, headers=signed(raw))
            assert answer.status_code == 202, answer.text
            if index == event:
                assert bridge.wait_exit(timeout=30) == -signal.SIGKILL, bridge.log_text()[-3000:]
                bridge.start()  # the restart resumes the delivery
            bridge.settle()
            bridge.stop()
    finally:
        bridge.stop()
    statuses = bridge.query("SELECT status FROM order_events")
    assert statuses == [("success",), ("success",)], bridge.log_text()[-3000:]
    crm = load_state(Path(bridge.env["STATE_FILE"]))
    assert len(crm["contacts"]) == 1
    assert len(crm["companies"]) == 1
    [deal] = crm["deals"]
    assert (crm["deals"][deal].pipeline_id, crm["deals"][deal].status_id) == (
        PIPELINE,
        STAGES["in_rent"],
    )
    assert crm["items"][deal] == [("Шатёр 6×12", Decimal(1), Decimal("25000.00"))]
    notes = crm["notes"][deal]
    assert len(notes) == 2, notes
    [company] = crm["companies"]
    assert crm["deal_company"][deal] == company
