"""The amoCRM adapter through its `CrmAdapter` interface, against the stateful fake."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import pytest

from bridge.crm.amocrm import AmoCrm, build_amocrm
from bridge.domain import Contact, KeyKind, LookupKey
from bridge.errors import RateLimited
from bridge.settings import CrmConfig
from bridge.tokens import TokenPair
from tests.adapter_support import example_section, fake_and_adapter, phone_key
from tests.crm_cases import BY_NAME
from tests.fakes.amocrm import FakeAmoCrm
from tests.fakes.memory import MemoryTokens, adapter_on

CONFIG = example_section("bridge.example.toml", "amocrm", base_url="https://reference.amocrm.test")
SUBJECTS, DIRECTION = "700201", "700202"
PAYMENT_ID, TOTAL, COUNT = "700205", "700207", "700208"
SITE, SITE_WORKING = 4423755, 63242023
PARTNERS, PARTNERS_AUTOPAY = 8598230, 80517738
CASE = BY_NAME["amocrm"]
new_deal, new_contact = CASE.new_deal, CASE.new_contact


def make_adapter(fake: FakeAmoCrm, *, config: CrmConfig = CONFIG, **options: Any) -> AmoCrm:
    static = {"amocrm_access_token": fake.issue_token(ttl=3600)}
    return adapter_on(build_amocrm, fake, config, static=static, **options)


fake, amo = fake_and_adapter(functools.partial(FakeAmoCrm, CONFIG), make_adapter)


# ---- pure mappers -------------------------------------------------------------------


# ---- contacts -----------------------------------------------------------------------


async def test_phone_search_returns_raw_hits_with_exact_field_values(
    fake: FakeAmoCrm, amo: AmoCrm
) -> None:
    ivan = fake.add_contact(
        "Иван Петров",
        phones=["8 (999) 123-45-67"],
        emails=["Ivan@Example.com"],
        telegram_id="123456789",
        telegram_username="ivan_petrov",
    )
    first = fake.add_lead(ivan, pipeline_id=SITE, status_id=SITE_WORKING)
    second = fake.add_lead(ivan, pipeline_id=SITE, status_id=142)
    lookalike = fake.add_contact("Someone", phones=["+7 999 123-45-678"])

    hits = await amo.find_contacts(phone_key())

    assert {hit.id for hit in hits} == {str(ivan), str(lookalike)}  # the flow confirms
    [found] = [hit for hit in hits if hit.id == str(ivan)]
    assert found == Contact(
        id=str(ivan),
        name="Иван Петров",
        phones=("8 (999) 123-45-67",),
        emails=("Ivan@Example.com",),
        telegram_id="123456789",
        telegram_username="ivan_petrov",
        deal_ids=(str(first), str(second)),
    )
    [call] = fake.calls
    assert (call.method, call.path) == ("GET", "/api/v4/contacts")
    assert call.params == {"query": ["9991234567"], "with": ["leads"], "limit": ["50"]}


@pytest.mark.parametrize(
    ("key", "query"),
    [
        (LookupKey(KeyKind.EMAIL, "ivan@example.com"), "ivan@example.com"),
        (LookupKey(KeyKind.TELEGRAM_ID, "123456789"), "123456789"),
    ],
)
async def test_email_and_telegram_are_searched_as_themselves(
    fake: FakeAmoCrm, amo: AmoCrm, key: LookupKey, query: str
) -> None:
    contact_id = fake.add_contact("Иван", emails=["ivan@example.com"], telegram_id="123456789")
    [hit] = await amo.find_contacts(key)
    assert hit.id == str(contact_id)
    assert hit.deal_ids == ()
    assert fake.calls[-1].params["query"] == [query]


# ---- deals --------------------------------------------------------------------------


async def test_list_deals_is_one_leads_call_when_ids_are_known(
    fake: FakeAmoCrm, amo: AmoCrm
) -> None:
    contact_id = fake.add_contact("Иван", phones=["+79991234567"])
    open_lead = fake.add_lead(
        contact_id,
        pipeline_id=SITE,
        status_id=SITE_WORKING,
        updated_at=1000,
        fields={TOTAL: 1500, COUNT: 2, SUBJECTS: [800002], DIRECTION: 800102},
    )
    won = fake.add_lead(contact_id, pipeline_id=SITE, status_id=142, updated_at=3000)
    gone = fake.add_lead(contact_id, pipeline_id=SITE, status_id=SITE_WORKING, is_deleted=True)
    [contact] = await amo.find_contacts(phone_key())
    before = fake.count()

    deals = {deal.id: deal for deal in await amo.list_deals(contact)}

    assert fake.count() == before + 1
    call = fake.calls[-1]
    assert call.path == "/api/v4/leads"
    assert call.params["filter[id][]"] == [str(open_lead), str(won), str(gone)]
    first = deals[str(open_lead)]
    assert (first.pipeline_id, first.status_id, first.updated_at) == (
        str(SITE),
        str(SITE_WORKING),
        1000,
    )
    assert not first.is_closed and not first.is_deleted
    assert first.fields == {TOTAL: "1500", COUNT: "2", SUBJECTS: "Математика", DIRECTION: "ОГЭ"}
    assert deals[str(won)].is_closed
    assert deals[str(gone)].is_deleted

    fake.move_lead(open_lead, 143)  # a manager closes it
    [moved] = [deal for deal in await amo.list_deals(contact) if deal.id == str(open_lead)]
    assert moved.is_closed and moved.updated_at > 1000


async def test_list_deals_reads_the_contact_when_ids_are_unknown(
    fake: FakeAmoCrm, amo: AmoCrm
) -> None:
    with_lead = fake.add_contact("A")
    lead = fake.add_lead(with_lead)
    without = fake.add_contact("B")

    deals = await amo.list_deals(Contact(id=str(with_lead)))
    assert [deal.id for deal in deals] == [str(lead)]
    assert [call.path for call in fake.calls] == [f"/api/v4/contacts/{with_lead}", "/api/v4/leads"]

    assert await amo.list_deals(Contact(id=str(without))) == []
    assert fake.count() == 3  # no leads call without ids
    assert await amo.list_deals(Contact(id=str(without), deal_ids=())) == []
    assert fake.count() == 3


async def test_create_contact_and_deal_is_one_call(fake: FakeAmoCrm, amo: AmoCrm) -> None:
    contact, deal = await amo.create_contact_and_deal(new_contact(), new_deal())

    assert fake.count() == 1
    assert fake.calls[0].path == "/api/v4/leads/complex"
    [lead] = fake.leads()
    assert str(lead["id"]) == deal.id
    assert [c["id"] for c in lead["_embedded"]["contacts"]] == [int(contact.id)]
    assert (lead["pipeline_id"], lead["status_id"], lead["price"]) == (
        PARTNERS,
        PARTNERS_AUTOPAY,
        10000,
    )
    assert contact.id == str(fake.contacts()[0]["id"])
    assert contact.emails == ("ivan@example.com",)

    fake.calls.clear()
    [found] = await amo.find_contacts(LookupKey(KeyKind.TELEGRAM_ID, "123456789"))
    assert found.id == contact.id
    assert found.deal_ids == (deal.id,)


# ---- notes --------------------------------------------------------------------------


async def test_notes_are_common_notes_read_with_a_type_filter(
    fake: FakeAmoCrm, amo: AmoCrm
) -> None:
    lead, quiet = fake.add_lead(), fake.add_lead()
    await amo.add_note(str(lead), "second")
    assert fake.calls[-1].json == [{"note_type": "common", "params": {"text": "second"}}]
    await amo.deal_notes(str(lead))
    assert fake.calls[-1].params["filter[note_type][]"] == ["common"]
    assert await amo.deal_notes(str(quiet)) == []
    assert fake.calls[-1].status == 204


# ---- rate limits, faults, auth ------------------------------------------------------


async def test_a_burst_beyond_the_fakes_window_gets_429s(fake: FakeAmoCrm, amo: AmoCrm) -> None:
    amo.connection.http.quick_tries = 1
    results = await asyncio.gather(
        *(amo.find_contacts(phone_key()) for _ in range(10)), return_exceptions=True
    )
    assert sum(isinstance(result, RateLimited) for result in results) == 3
    assert fake.throttled == 3


async def test_the_adapters_own_limiter_stays_under_7_per_second(fake: FakeAmoCrm) -> None:
    adapter = make_adapter(fake, real_limiter=True)
    for _ in range(9):
        await adapter.find_contacts(phone_key())
    await adapter.connection.aclose()
    assert fake.throttled == 0


OAUTH = CONFIG.model_copy(update={"auth": "oauth"})


async def test_oauth_refreshes_ahead_of_expiry_without_a_401(fake: FakeAmoCrm) -> None:
    access, refresh = fake.issue_oauth_pair(ttl=60)
    tokens = MemoryTokens(TokenPair(access, refresh, fake.clock() + 60))  # inside the margin
    adapter = make_adapter(fake, config=OAUTH, tokens=tokens)
    await adapter.find_contacts(phone_key())
    assert fake.count(status=401) == 0
    assert [call.path for call in fake.calls] == ["/oauth2/access_token", "/api/v4/contacts"]
    assert len(tokens.saved) == 1
    await adapter.connection.aclose()


async def test_a_restarted_adapter_respects_the_calls_its_previous_run_made(
    fake: FakeAmoCrm,
) -> None:
    """Issue 13.14: after a SIGKILL the new run's limiter must not add a burst on top of
    the last second of the old run's calls (the CRM counts both)."""
    before_kill = make_adapter(fake, real_limiter=True)
    for _ in range(7):
        await before_kill.find_contacts(phone_key())
    # No aclose: the process died. The next run starts at once.
    after_restart = make_adapter(fake, real_limiter=True)
    for _ in range(3):
        await after_restart.find_contacts(phone_key())
    await after_restart.connection.aclose()
    assert fake.throttled == 0
