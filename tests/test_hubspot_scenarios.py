"""Issue scenarios 1–8 through HTTP, with HubSpot as the only CRM (the stateful fake)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import payment_payload
from tests.crm_cases import BY_NAME, CrmCase, running
from tests.fakes.hubspot import FakeHubSpot
from tests.fakes.service import Abort, FakeRequest, FakeResponse

CONTACTS = "/crm/objects/2026-09/contacts"
CASE = BY_NAME["hubspot"]
hubspot_file_config = CASE.file_config  # test_fanout's HubSpot section


@pytest.fixture
def case() -> CrmCase:
    return CASE


async def test_a_contact_not_yet_in_the_search_index_is_not_duplicated(
    tmp_path: Path,
) -> None:
    # The contact is created, the answer is lost, and the retry's search does not show it
    # yet (HubSpot's index trails writes): the create answers 409 with the existing id.
    lagging = FakeHubSpot(index_lag=30)
    lost: list[str] = []

    def lose_the_first_create(request: FakeRequest, response: FakeResponse) -> None:
        if request.path == CONTACTS and not lost:
            lost.append(request.path)
            raise Abort("timeout")

    lagging.on_applied = lose_the_first_create
    async with running(CASE, lagging, tmp_path)() as bridge:
        await bridge.post_payment(payment_payload("pay_lag"))
        await bridge.settle()
        [(status,)] = bridge.query("SELECT status FROM payment_events")
    assert status == "success"
    [contact] = lagging.contacts()
    creates = [call.status for call in lagging.calls if call.path == CONTACTS]
    assert creates == [None, 409]  # the lost answer, then the conflict naming it
    [deal] = lagging.deals()
    assert lagging.deal_contacts(deal["id"]) == [contact["id"]]
    assert len(lagging.notes(deal["id"])) == 1


async def test_a_burst_stays_under_hubspots_limits(run, fake) -> None:
    async with run(wait_seconds=0) as bridge:
        for n in range(6):
            response = await bridge.post_payment(
                payment_payload(f"pay_b{n}", phone=f"8999000003{n}", telegram_id=None, email=None)
            )
            assert response.status_code == 202
        await bridge.settle(timeout=30)
    assert len(fake.deals()) == 6
    assert fake.throttled == 0  # the adapter's own limiters kept both windows
