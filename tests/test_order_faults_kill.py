"""The bridge dies at every step of the order flow (SPEC §3's exactly-once, for §8).

Like tests/test_faults_kill.py for payments, but in-process over the in-memory CRM (no
CRM's HTTP fake takes orders on this branch yet): at the chosen CRM call the delivery
ends with `Killed`, which nothing in the bridge catches, so nothing after that point is
written to the database — before the call, or after the CRM applied it and before its
answer came back (the window between a CRM write and its journal write). The app is
then stopped and a new one started on the same database and the same CRM, which resumes
the interrupted delivery. After the last event: one contact, one company, one deal, the
last event's items once, the stage of the last status, and one note per event.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from bridge.app import create_app
from bridge.settings import Settings
from tests.conftest import make_settings, reference_file_config, signed, wait_until
from tests.fakes.memory import MemoryCrm
from tests.order_support import PIPELINE, STAGES, order_body, with_orders

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


def _settings(tmp_path: Path) -> Settings:
    file = reference_file_config(request_timeout_seconds=0.05, late_write_seconds=0.05)
    file = file.model_copy(update={"crm": {"amocrm": with_orders(file.crm["amocrm"])}})
    return make_settings(tmp_path, file, wait_seconds=0, shutdown_grace_seconds=0.1)


def _busy(settings: Settings) -> int:
    with sqlite3.connect(settings.database_path) as conn:
        (count,) = conn.execute(
            "SELECT COUNT(*) FROM deliveries WHERE status IN ('pending', 'retrying', 'processing')"
        ).fetchone()
    return int(count)


@asynccontextmanager
async def running(settings: Settings, crm: MemoryCrm) -> AsyncIterator[AsyncTestClient[Any]]:
    app = create_app(settings, adapters=lambda _settings, _store: {"amocrm": crm})
    async with AsyncTestClient(app=app) as client:
        yield client


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
async def test_a_kill_at_each_step_leaves_exactly_one_of_everything(
    case: Case, tmp_path: Path
) -> None:
    settings = _settings(tmp_path)
    crm = MemoryCrm(settings.file.crm["amocrm"], name="amocrm")
    business = case.script == "business-new"
    if not business:
        crm.add_contact(phones=["+79160001122"])
    events = [CREATED, UPDATE] if business else [PERSON, PERSON_UPDATE]
    for index, body in enumerate(events):
        if index == case.event:
            crm.kill_at(case.call, after=case.after)
        async with running(settings, crm) as client:
            raw = json.dumps(body).encode()
            answer = await client.post("/webhook/order", content=raw, headers=signed(raw))
            assert answer.status_code == 202, answer.text
            await wait_until(lambda: crm.killed or _busy(settings) == 0)
        if crm.killed:
            crm.killed = False
            async with running(settings, crm):  # the restart resumes the delivery
                await wait_until(lambda: _busy(settings) == 0)
    with sqlite3.connect(settings.database_path) as conn:
        statuses = conn.execute("SELECT status FROM order_events").fetchall()
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
