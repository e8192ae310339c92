"""amoCRM's batch forms (issue 20) through `AmoCrm.batch_forms`, against the stateful fake:
one request per form whatever the number of items, the same results and stored state as
the per-call methods, and a refusal of one item refusing the whole call unapplied."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest

from bridge.crm.amocrm import AmoCrm
from bridge.domain import Contact, Customer, Deal, FieldKind, FieldUpdate, NewContact, Utm
from bridge.errors import CrmError, PermanentCrmError, TransientCrmError
from tests.fakes.amocrm import FakeAmoCrm
from tests.test_amocrm_adapter import (
    CONFIG,
    PAYMENT_ID,
    SITE,
    SITE_WORKING,
    TOTAL,
    make_adapter,
    new_deal,
)
from tests.vendor_support import closing, forms

NOW = 1_737_000_000  # both twins' clock: ids and timestamps then match item for item
UNKNOWN_FIELD = "999999"


def twin() -> FakeAmoCrm:
    return FakeAmoCrm(CONFIG, clock=lambda: NOW)


@pytest.fixture
def fake() -> FakeAmoCrm:
    return twin()


@pytest.fixture
async def amo(fake: FakeAmoCrm) -> AsyncIterator[AmoCrm]:
    async with closing(make_adapter(fake)) as (adapter,):
        yield adapter


async def per_call(run: Callable[[AmoCrm], Awaitable[Any]]) -> tuple[FakeAmoCrm, Any]:
    """What the per-call methods do, on a twin fake seeded like the test's."""
    fake = twin()
    seeded(fake)
    async with closing(make_adapter(fake)) as (adapter,):
        return fake, await run(adapter)


def seeded(fake: FakeAmoCrm) -> list[str]:
    """Three customers, each with one open deal in the site pipeline: the deals' ids."""
    for n in range(3):
        contact = fake.add_contact(f"Клиент {n}", phones=[f"+7999123456{n}"])
        fake.add_lead(contact, pipeline_id=SITE, status_id=SITE_WORKING, fields={TOTAL: 100 * n})
    return [str(lead["id"]) for lead in fake.leads()]


def unlinked(value: Any) -> Any:
    """The fake's records without `_links` (their hrefs follow the latest request's host)."""
    if isinstance(value, dict):
        return {key: unlinked(item) for key, item in value.items() if key != "_links"}
    if isinstance(value, list | tuple):
        return [unlinked(item) for item in value]
    return value


def rewriting(fake: FakeAmoCrm, edit: Callable[[httpx.Request, Any], Any]) -> httpx.MockTransport:
    """The fake's transport with each answer's JSON body passed through `edit`."""

    async def handle(request: httpx.Request) -> httpx.Response:
        response = await fake.transport().handle_async_request(request)
        await response.aread()
        body = edit(request, json.loads(response.content))
        return httpx.Response(response.status_code, json=body)

    return httpx.MockTransport(handle)


def customer(n: int) -> NewContact:
    who = Customer(f"Иван{n}", "Петров", f"+7999000000{n}", f"ivan{n}@example.com", f"12345{n}")
    return NewContact(
        who, Utm(source="advcake"), (FieldUpdate("700101", FieldKind.TEXT, who.telegram_id),)
    )


def payment(n: int) -> tuple[FieldUpdate, ...]:
    return (
        FieldUpdate(PAYMENT_ID, FieldKind.TEXT, f"pay_{n}"),
        FieldUpdate(TOTAL, FieldKind.NUMBER, Decimal(1000 + n)),
    )


# ---- the forms ----------------------------------------------------------------------


async def test_every_form_but_search_is_set_and_limited_by_complex(amo: AmoCrm) -> None:
    batch = forms(amo).all
    assert batch.limit == 50  # batch_size 50 by default; complex takes at most 50
    assert batch.find_contacts is None
    assert None not in (
        batch.get_deals,
        batch.update_deals,
        batch.add_notes,
        batch.create_deals,
        batch.create_contacts_and_deals,
    )
    small = CONFIG.model_copy(update={"batch_size": 7})
    async with closing(make_adapter(twin(), config=small)) as (adapter,):
        assert forms(adapter).limit == 7


async def test_get_deals_is_one_read_as_get_deal_reads_each(fake: FakeAmoCrm, amo: AmoCrm) -> None:
    ids = seeded(fake)
    flagged = fake.add_lead(fake.add_contact("Удалено"), is_deleted=True)
    removed = fake.add_lead(fake.add_contact("Стёрто"))
    fake.remove_lead(removed)
    fake.move_lead(ids[1], 142)  # won: closed

    deals = await forms(amo).get_deals([*ids, str(flagged), str(removed), "777"])

    assert fake.count() == 1
    call = fake.calls[0]
    assert (call.method, call.path) == ("GET", "/api/v4/leads")
    assert call.params["with"] == ["contacts"]
    assert call.params["limit"] == ["250"]
    assert sorted(deals) == sorted(ids)  # deleted, gone and unknown ones left out
    singles = {deal_id: await amo.get_deal(deal_id) for deal_id in ids}
    assert deals == singles
    assert deals[ids[1]].is_closed and deals[ids[0]].contact_ids
    assert await forms(amo).get_deals([]) == {}
    assert fake.count() == 1 + len(ids)  # none for no ids


async def test_get_deals_pages_past_250(fake: FakeAmoCrm, amo: AmoCrm) -> None:
    contact = fake.add_contact("Оптовик")
    ids = [str(fake.add_lead(contact)) for _ in range(300)]

    deals = await forms(amo).get_deals(ids)

    assert sorted(deals) == sorted(ids)
    assert [call.params["page"] for call in fake.calls] == [["1"], ["2"]]
    assert all(deal.contact_ids == (str(contact),) for deal in deals.values())


async def test_update_deals_is_one_patch_with_per_call_results(
    fake: FakeAmoCrm, amo: AmoCrm
) -> None:
    ids = seeded(fake)
    writes = [(ids[0], payment(0)), (ids[1], ()), (ids[2], payment(2))]
    update = forms(amo).update_deals

    assert await update(writes) == [None, None, None]

    assert fake.count() == 1
    call = fake.calls[0]
    assert (call.method, call.path) == ("PATCH", "/api/v4/leads")
    assert [item["id"] for item in call.json] == [int(ids[0]), int(ids[2])]  # none empty

    async def singly(adapter: AmoCrm) -> None:
        for deal_id, updates in writes:
            await adapter.update_deal(deal_id, updates)

    alone, _ = await per_call(singly)
    assert fake.leads() == alone.leads()
    assert fake.lead_field(ids[2], PAYMENT_ID) == "pay_2"

    assert await update([(ids[0], ()), (ids[1], ())]) == [None, None]
    assert fake.count() == 1  # nothing to set: no call


async def test_add_notes_is_one_post_with_entity_ids(fake: FakeAmoCrm, amo: AmoCrm) -> None:
    ids = seeded(fake)
    notes = [(deal_id, f"Оплата {n}\n\nPayment ID: pay_{n}") for n, deal_id in enumerate(ids)]
    add = forms(amo).add_notes

    assert await add(notes) == [None, None, None]

    assert fake.count() == 1
    call = fake.calls[0]
    assert (call.method, call.path) == ("POST", "/api/v4/leads/notes")
    assert [item["entity_id"] for item in call.json] == [int(deal_id) for deal_id in ids]

    async def singly(adapter: AmoCrm) -> None:
        for deal_id, text in notes:
            await adapter.add_note(deal_id, text)

    alone, _ = await per_call(singly)
    for deal_id in ids:
        assert fake.notes(deal_id) == alone.notes(deal_id)
        assert await amo.deal_notes(deal_id) == alone.notes(deal_id)
    assert await add([]) == []


async def test_create_deals_is_one_post_with_per_call_results(
    fake: FakeAmoCrm, amo: AmoCrm
) -> None:
    seeded(fake)
    contacts = [Contact(id=str(c["id"])) for c in fake.contacts()]
    items = [
        (contact, new_deal(name=f"Оплата {n}", price=Decimal(500 + n)))
        for n, contact in enumerate(contacts)
    ]
    create = forms(amo).create_deals

    created = await create(items)

    assert fake.count() == 1
    call = fake.calls[0]
    assert (call.method, call.path) == ("POST", "/api/v4/leads")
    assert [item["request_id"] for item in call.json] == ["0", "1", "2"]

    async def singly(adapter: AmoCrm) -> list[Any]:
        return [await adapter.create_deal(contact, new) for contact, new in items]

    alone, expected = await per_call(singly)
    assert created == expected
    assert fake.leads() == alone.leads()


async def test_create_contacts_and_deals_is_one_complex_with_per_call_results(
    fake: FakeAmoCrm, amo: AmoCrm
) -> None:
    seeded(fake)
    items = [(customer(n), new_deal(name=f"Оплата {n}")) for n in range(3)]
    create = forms(amo).create_contacts_and_deals

    created = await create(items)

    assert fake.count() == 1
    assert (fake.calls[0].method, fake.calls[0].path) == ("POST", "/api/v4/leads/complex")

    async def singly(adapter: AmoCrm) -> list[Any]:
        return [await adapter.create_contact_and_deal(who, new) for who, new in items]

    alone, expected = await per_call(singly)
    assert created == expected
    assert (fake.leads(), fake.contacts()) == (alone.leads(), alone.contacts())
    contact, deal = created[0]
    assert deal.contact_ids == (contact.id,) and contact.deal_ids == (deal.id,)


async def test_complex_answers_are_matched_by_request_id_not_order(fake: FakeAmoCrm) -> None:
    reversed_answers = rewriting(fake, lambda _, body: list(reversed(body)))
    async with closing(make_adapter(fake, transport=reversed_answers)) as (adapter,):
        create = forms(adapter).create_contacts_and_deals
        created = await create([(customer(n), new_deal(name=f"Оплата {n}")) for n in range(2)])

    for n, result in enumerate(created):
        assert not isinstance(result, CrmError)
        contact, deal = result
        assert fake.lead(deal.id)["name"] == f"Оплата {n}"
        assert fake.contact(contact.id)["first_name"] == f"Иван{n}"


# ---- refusals -----------------------------------------------------------------------


async def test_one_refused_update_refuses_the_whole_call_unapplied(
    fake: FakeAmoCrm, amo: AmoCrm
) -> None:
    ids = seeded(fake)
    before = unlinked(fake.leads())
    bad = (FieldUpdate(UNKNOWN_FIELD, FieldKind.TEXT, "x"),)
    update = forms(amo).update_deals

    with pytest.raises(PermanentCrmError, match=r"400.*validation-errors.*request_id"):
        await update([(ids[0], payment(0)), (ids[1], bad), (ids[2], payment(2))])
    assert unlinked(fake.leads()) == before
    assert fake.count(status=400) == 1

    fake.remove_lead(ids[1])
    with pytest.raises(PermanentCrmError, match="NotFound"):
        await update([(ids[0], payment(0)), (ids[1], payment(1))])
    assert fake.lead_field(ids[0], PAYMENT_ID) is None


async def test_a_note_on_a_deleted_lead_refuses_every_note(fake: FakeAmoCrm, amo: AmoCrm) -> None:
    ids = seeded(fake)
    fake.remove_lead(ids[2])
    add = forms(amo).add_notes

    with pytest.raises(PermanentCrmError, match="entity_id"):
        await add([(deal_id, "Оплата") for deal_id in ids])
    assert [fake.notes(deal_id) for deal_id in ids[:2]] == [[], []]


async def test_a_refused_new_deal_creates_none(fake: FakeAmoCrm, amo: AmoCrm) -> None:
    seeded(fake)
    before = unlinked((fake.leads(), fake.contacts()))
    bad = new_deal(fields=(FieldUpdate(UNKNOWN_FIELD, FieldKind.TEXT, "x"),))
    complex_create = forms(amo).create_contacts_and_deals
    create = forms(amo).create_deals

    with pytest.raises(PermanentCrmError, match="validation-errors"):
        await complex_create([(customer(0), new_deal()), (customer(1), bad)])
    with pytest.raises(PermanentCrmError, match="validation-errors"):
        await create([(Contact(id=str(fake.contacts()[0]["id"])), new_deal()), (Contact("1"), bad)])
    assert unlinked((fake.leads(), fake.contacts())) == before


async def test_the_fake_refuses_arrays_over_the_documented_limits(
    fake: FakeAmoCrm, amo: AmoCrm
) -> None:
    lead = seeded(fake)[0]
    add = forms(amo).add_notes
    complex_create = forms(amo).create_contacts_and_deals
    with pytest.raises(PermanentCrmError, match=r"1\.\.250 items"):
        await add([(lead, f"note {n}") for n in range(251)])
    with pytest.raises(PermanentCrmError, match=r"1\.\.50 items"):
        await complex_create([(customer(n), new_deal()) for n in range(51)])
    assert fake.notes(lead) == [] and len(fake.leads()) == 3
    assert await add([(lead, f"note {n}") for n in range(250)]) == [None] * 250


# ---- faults -------------------------------------------------------------------------


async def test_a_lost_answer_to_a_batch_write_may_have_landed(
    fake: FakeAmoCrm, amo: AmoCrm
) -> None:
    ids = seeded(fake)
    add = forms(amo).add_notes
    complex_create = forms(amo).create_contacts_and_deals

    fake.fail_after_apply(kind="timeout", path_prefix="/api/v4/leads/notes")
    with pytest.raises(TransientCrmError) as lost:
        await add([(deal_id, "Оплата") for deal_id in ids])
    assert lost.value.maybe_applied
    assert [fake.notes(deal_id) for deal_id in ids] == [["Оплата"]] * 3
    assert fake.count() == 1  # a POST is not repeated

    fake.fail_after_apply(status=502, path_prefix="/api/v4/leads/complex")
    with pytest.raises(TransientCrmError):
        await complex_create([(customer(n), new_deal()) for n in range(2)])
    assert len(fake.leads()) == 5 and fake.count() == 2

    fake.fail_next(status=503, path_prefix="/api/v4/leads/notes")
    with pytest.raises(TransientCrmError) as failed:
        await add([(ids[0], "ещё")])
    assert not failed.value.maybe_applied and fake.notes(ids[0]) == ["Оплата"]


async def test_a_timed_out_patch_is_retried_quickly(fake: FakeAmoCrm, amo: AmoCrm) -> None:
    ids = seeded(fake)
    update = forms(amo).update_deals
    fake.fail_after_apply(kind="timeout", method="PATCH", path_prefix="/api/v4/leads")

    assert await update([(deal_id, payment(n)) for n, deal_id in enumerate(ids)]) == [None] * 3

    assert fake.count(method="PATCH") == 2  # setting values again is harmless
    assert fake.lead_field(ids[1], PAYMENT_ID) == "pay_1"


async def test_a_429_is_retried_quickly_and_a_batch_is_one_request_for_the_rate(
    fake: FakeAmoCrm, amo: AmoCrm
) -> None:
    fake.monotonic = lambda: 100.0  # the fake's rate window frozen: all in one second
    ids = seeded(fake)
    add = forms(amo).add_notes
    get = forms(amo).get_deals
    fake.fail_next(status=429, path_prefix="/api/v4/leads/notes")

    assert await add([(deal_id, "Оплата") for deal_id in ids]) == [None] * 3
    assert [call.status for call in fake.calls] == [429, 200]

    # 7 requests a second whatever they carry (the fault's 429 was not admitted): 6 batch
    # reads pass, the next is throttled.
    amo.connection.http.quick_tries = 1
    for _ in range(6):
        await get(ids)
    with pytest.raises(CrmError, match="429"):
        await get(ids)


async def test_an_item_missing_from_the_answer_is_its_own_maybe_applied_error(
    fake: FakeAmoCrm,
) -> None:
    def drop_last_note(request: httpx.Request, body: Any) -> Any:
        if request.url.path == "/api/v4/leads/notes":
            body["_embedded"]["notes"].pop()
        return body

    ids = seeded(fake)
    async with closing(make_adapter(fake, transport=rewriting(fake, drop_last_note))) as (adapter,):
        results = await forms(adapter).add_notes([(deal_id, "Оплата") for deal_id in ids])

    assert results[:2] == [None, None]
    missing = results[2]
    assert isinstance(missing, TransientCrmError) and missing.maybe_applied
    assert str(ids[2]) in missing.message


async def test_many_contacts_deals_come_in_two_reads_as_list_deals_reads_them() -> None:
    fake = FakeAmoCrm(CONFIG, rate_limit=1000)  # the per-call reads to compare with are many
    async with closing(make_adapter(fake)) as (amo,):
        contacts: list[Contact] = []
        knowns: list[list[Deal]] = []
        for n in range(4):  # 0 to 3 deals each, one of them just read
            contact = fake.add_contact(f"C{n}", phones=[f"+7999300{n:04d}"])
            for _ in range(n):
                fake.add_lead(contact, pipeline_id=SITE, status_id=142)
            contacts.append(Contact(id=str(contact)))
            knowns.append((await amo.list_deals(Contact(id=str(contact))))[:1])
        singles = [await amo.list_deals(c, k) for c, k in zip(contacts, knowns, strict=True)]
        fake.calls.clear()
        items = [*zip(contacts, knowns, strict=True), (Contact(id="999999"), [])]
        answers = await forms(amo).list_deals(items)
        assert [(c.method, c.path) for c in fake.calls] == [
            ("GET", "/api/v4/contacts"),
            ("GET", "/api/v4/leads"),
        ]
        for single, answer in zip(singles, answers[:4], strict=True):
            assert isinstance(answer, list)
            assert {d.id: d.fields for d in answer} == {d.id: d.fields for d in single}
        assert isinstance(answers[4], PermanentCrmError) and "999999" in answers[4].message
