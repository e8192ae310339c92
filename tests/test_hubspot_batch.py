"""HubSpot's batch forms (issue 20) through `batch_forms`, against the stateful fake.

Each form is checked against its per-call method on a twin fake (same seed, same clock):
the answers and the records it leaves are the same, in one request for every item.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from bridge.domain import Contact, Customer, Deal, FieldKind, FieldUpdate, NewContact
from bridge.errors import PermanentCrmError, TransientCrmError
from tests.fakes.hubspot import FakeHubSpot
from tests.test_hubspot_adapter import (
    CONFIG,
    PARTNERS,
    PARTNERS_AUTOPAY,
    SITE_AUTOPAY,
    SITE_WORKING,
    Clock,
    email_key,
    make_adapter,
    new_contact,
    new_deal,
)
from tests.vendor_support import Forms, closing

OBJECTS = "/crm/objects/2026-09"
IDS = CONFIG.deal_fields


class Twin:
    """A fake and its adapter, seeded like every other twin."""

    def __init__(self, **fake_options: object) -> None:
        self.clock = Clock()
        self.fake = FakeHubSpot(CONFIG, clock=self.clock, **fake_options)  # type: ignore[arg-type]
        self.hub = make_adapter(self.fake, clock=self.clock)
        self.ivan = self.fake.add_contact(firstname="Иван", email="ivan@example.com")
        self.maria = self.fake.add_contact(firstname="Мария", email="maria@example.com")
        self.petr = self.fake.add_contact(firstname="Пётр", email="petr@example.com")
        self.deals = [
            self.fake.add_deal(self.ivan, stage=SITE_WORKING, total_paid="700"),
            self.fake.add_deal(self.maria, stage=SITE_WORKING),
            self.fake.add_deal(self.petr, stage="closedwon"),
        ]
        self.fake.calls.clear()

    @property
    def forms(self) -> Forms:
        return Forms(self.hub)

    def paths(self) -> list[str]:
        return [call.path for call in self.fake.calls]


@pytest.fixture
async def twins() -> AsyncIterator[tuple[Twin, Twin]]:
    """(batched, per call)."""
    batched, single = Twin(), Twin()
    async with closing(batched.hub, single.hub):
        yield batched, single


@pytest.fixture
async def twin() -> AsyncIterator[Twin]:
    made = Twin()
    async with closing(made.hub):
        yield made


def paid(total: str, payment: str) -> list[FieldUpdate]:
    return [
        FieldUpdate(IDS.total_paid or "", FieldKind.NUMBER, Decimal(total)),
        FieldUpdate(IDS.payment_id or "", FieldKind.TEXT, payment),
    ]


def customer(n: int, email: str | None = None) -> NewContact:
    who = Customer("Клиент", f"№{n}", f"+7999123450{n}", email, f"10{n}", None)
    return replace(new_contact(), customer=who)


# ---- the forms --------------------------------------------------------------------


async def test_the_forms_hubspot_has_within_its_limit_of_100(twin: Twin) -> None:
    forms = twin.forms.all
    assert forms.limit == min(CONFIG.batch_size, 100)
    assert forms.find_contacts is None  # a search takes one query
    assert None not in (forms.get_deals, forms.update_deals, forms.add_notes)
    assert None not in (forms.create_deals, forms.create_contacts_and_deals)
    big = CONFIG.model_copy(update={"batch_size": 250})
    async with closing(make_adapter(twin.fake, config=big)) as (adapter,):
        assert adapter.batch_forms.limit == 100


async def test_deals_are_read_in_two_calls_as_get_deal_reads_each(
    twins: tuple[Twin, Twin],
) -> None:
    batched, single = twins
    for twin in twins:  # a second contact on a deal, a deal gone, one never there
        deals = twin.fake.portal.records["deals"]
        twin.fake.portal.link(deals[twin.deals[0]], twin.fake.portal.records["contacts"][twin.petr])
        twin.fake.move_deal(twin.deals[1], SITE_WORKING, archived=True)
    lonely = [twin.fake.add_deal(None, stage=SITE_WORKING) for twin in twins]
    assert lonely[0] == lonely[1]
    wanted = [*batched.deals, lonely[0], "999"]

    found = await batched.forms.get_deals(wanted)

    expected = {i: await single.hub.get_deal(i) for i in wanted}
    assert found == {i: deal for i, deal in expected.items() if deal is not None}
    assert set(found[batched.deals[0]].contact_ids) == {batched.ivan, batched.petr}
    assert found[lonely[0]].contact_ids == ()
    assert batched.paths() == [
        f"{OBJECTS}/deals/batch/read",
        "/crm/associations/2026-09/deals/contacts/batch/read",
    ]
    read, links = (call.json for call in batched.fake.calls)
    assert [entry["id"] for entry in read["inputs"]] == wanted
    assert set(read["properties"]) >= {"dealname", "dealstage", IDS.total_paid}
    # Only the deals that exist have their links read.
    assert {entry["id"] for entry in links["inputs"]} == {
        batched.deals[0],
        batched.deals[2],
        lonely[0],
    }
    assert batched.fake.calls[0].status == 207  # the gone and the unknown one


async def test_no_deals_asked_no_calls(twin: Twin) -> None:
    assert await twin.forms.get_deals([]) == {}
    assert twin.fake.calls == []


async def test_deal_updates_are_one_call_and_leave_what_updates_one_by_one_leave(
    twins: tuple[Twin, Twin],
) -> None:
    batched, single = twins
    writes = [
        (batched.deals[0], paid("1700", "pay_2")),
        (batched.deals[1], []),  # nothing to set: no input
        (batched.deals[2], paid("500", "pay_3")),
    ]

    assert await batched.forms.update_deals(writes) == [None, None, None]

    for deal_id, updates in writes:
        await single.hub.update_deal(deal_id, updates)
    assert batched.fake.deals() == single.fake.deals()
    assert batched.fake.deal_field(batched.deals[0], IDS.total_paid or "") == "1700"
    assert batched.paths() == [f"{OBJECTS}/deals/batch/update"]
    inputs = batched.fake.calls[0].json["inputs"]
    assert [entry["id"] for entry in inputs] == [batched.deals[0], batched.deals[2]]
    assert inputs[0]["properties"] == {"total_paid": "1700", "payment_id": "pay_2"}


async def test_a_deal_gone_fails_only_its_update(twin: Twin) -> None:
    twin.fake.move_deal(twin.deals[1], SITE_WORKING, archived=True)
    writes = [(deal_id, paid("900", "pay_9")) for deal_id in twin.deals]

    first, gone, last = await twin.forms.update_deals(writes)

    assert first is None and last is None
    assert isinstance(gone, PermanentCrmError) and " HTTP 404" in gone.message
    assert twin.fake.calls[0].status == 207
    assert twin.fake.deal_field(twin.deals[2], IDS.payment_id or "") == "pay_9"


async def test_an_invalid_value_refuses_the_whole_update_and_applies_nothing(twin: Twin) -> None:
    bad = FieldUpdate(IDS.direction or "", FieldKind.SELECT, "no-such-option")
    writes = [(twin.deals[0], paid("900", "pay_9")), (twin.deals[1], [bad])]

    with pytest.raises(PermanentCrmError, match="HTTP 400"):
        await twin.forms.update_deals(writes)

    assert twin.fake.deal_field(twin.deals[0], IDS.payment_id or "") is None
    assert twin.fake.count() == 1


async def test_more_than_100_updates_go_in_requests_of_100(twin: Twin) -> None:
    many = [twin.fake.add_deal(twin.ivan, stage=SITE_WORKING) for _ in range(101)]
    twin.fake.calls.clear()

    answers = await twin.forms.update_deals([(i, paid("1", "p")) for i in many])

    assert answers == [None] * 101
    assert [len(call.json["inputs"]) for call in twin.fake.calls] == [100, 1]


async def test_notes_are_one_call_and_a_note_refused_fails_only_its_item(
    twins: tuple[Twin, Twin],
) -> None:
    batched, single = twins
    notes = [(batched.deals[0], "Оплата\nPayment ID: pay_2"), (batched.deals[2], "Payment ID: 3")]

    first, second, refused = await batched.forms.add_notes([*notes, ("999", "to no deal")])

    assert first is None and second is None
    assert isinstance(refused, PermanentCrmError) and "VALIDATION_ERROR" in refused.message
    for deal_id, text in notes:
        await single.hub.add_note(deal_id, text)
    for deal_id in batched.deals:
        assert batched.fake.note_bodies(deal_id) == single.fake.note_bodies(deal_id)
    assert batched.fake.notes(batched.deals[0]) == ["Оплата\nPayment ID: pay_2"]
    assert batched.paths() == [f"{OBJECTS}/notes/batch/create"]
    assert batched.fake.calls[0].status == 207
    sent = batched.fake.calls[0].json["inputs"]
    assert [entry["objectWriteTraceId"] for entry in sent] == ["0", "1", "2"]
    assert sent[0]["associations"][0]["types"][0]["associationTypeId"] == 214


async def test_deals_are_created_in_one_call_as_create_deal_makes_them(
    twins: tuple[Twin, Twin],
) -> None:
    batched, single = twins
    contacts = [Contact(i, "", (), (), "", "", ()) for i in (batched.ivan, batched.maria)]
    deals = [new_deal(), new_deal(name="Оплата 2", price=Decimal("5")), new_deal()]
    bad = replace(deals[2], status_id="no-such-stage")
    items = [(contacts[0], deals[0]), (contacts[1], deals[1]), (contacts[0], bad)]

    made = await batched.forms.create_deals(items)

    expected = [await single.hub.create_deal(c, d) for c, d in items[:2]]
    assert made[:2] == expected
    assert isinstance(made[2], PermanentCrmError)
    assert batched.fake.deals() == single.fake.deals()
    first = made[0]
    assert isinstance(first, Deal)
    assert (first.pipeline_id, first.status_id, first.contact_ids) == (
        PARTNERS,
        PARTNERS_AUTOPAY,
        (batched.ivan,),
    )
    assert batched.fake.deal_contacts(first.id) == [batched.ivan]
    # The refused deal carries a date-time: which properties are dates is learnt (once per
    # process, as a single create refused does), and none of its is one.
    assert batched.paths() == [f"{OBJECTS}/deals/batch/create", "/crm/properties/2026-09/deals"]


async def test_contacts_and_deals_are_two_calls_and_a_known_email_is_that_contact(
    twins: tuple[Twin, Twin],
) -> None:
    batched, single = twins
    pairs = [
        (customer(1, "new1@example.com"), new_deal()),
        (customer(2, "ivan@example.com"), new_deal(name="Оплата Ивана")),  # the index lags
        (customer(3), new_deal(status_id="no-such-stage", fields=())),  # its deal refused
    ]
    unknown = replace(customer(4), fields=(FieldUpdate("no_such_property", FieldKind.TEXT, "x"),))

    made = await batched.forms.create_contacts_and_deals([*pairs, (unknown, new_deal())])

    expected = [await single.hub.create_contact_and_deal(c, d) for c, d in pairs[:2]]
    # The same contacts and deals; the deals' ids differ (one id sequence for all records,
    # and per call a deal is made between two contacts).
    assert [_anonymous(item) for item in made[:2]] == [_anonymous(item) for item in expected]
    assert isinstance(made[2], PermanentCrmError) and "deals.batch_create" in made[2].message
    assert isinstance(made[3], PermanentCrmError) and "contacts.batch_create" in made[3].message
    pair = made[1]
    assert isinstance(pair, tuple) and pair[0].id == batched.ivan
    assert batched.fake.deal_contacts(pair[1].id) == [batched.ivan]
    assert batched.paths() == [f"{OBJECTS}/contacts/batch/create", f"{OBJECTS}/deals/batch/create"]
    # Only the contacts made or found get a deal: 1 and 2, and 3's refused one.
    assert len(batched.fake.calls[1].json["inputs"]) == 3
    assert len(batched.fake.contacts()) == 3 + 2  # new1 and customer 3 (refused its deal)


def _anonymous(item: object) -> object:
    assert isinstance(item, tuple)
    contact, deal = item
    return contact, replace(deal, id="")


async def test_created_records_wait_for_the_search_index_as_single_creates_do() -> None:
    twin = Twin(index_lag=60)
    [made] = await twin.forms.create_contacts_and_deals([(customer(1, "a@b.example"), new_deal())])
    assert isinstance(made, tuple)
    assert await twin.hub.find_contacts([email_key(made[0].emails[0])]) == []
    twin.clock.now += 61
    assert [c.id for c in await twin.hub.find_contacts([email_key(made[0].emails[0])])] == [
        made[0].id
    ]
    await twin.hub.connection.aclose()


# ---- date properties ------------------------------------------------------------------


async def test_a_date_property_is_learnt_once_for_a_batch_update_and_a_batch_create(
    twin: Twin,
) -> None:
    twin.fake.set_property_type("deals", IDS.last_payment_at or "", "date", "date")
    at = datetime(2025, 1, 20, 11, 49, tzinfo=UTC)
    dated = [FieldUpdate(IDS.last_payment_at or "", FieldKind.DATETIME, at)]

    assert await twin.forms.update_deals([(twin.deals[0], dated)]) == [None]
    assert twin.paths() == [
        f"{OBJECTS}/deals/batch/update",  # 400: a time of day in a date
        "/crm/properties/2026-09/deals",
        f"{OBJECTS}/deals/batch/update",
    ]
    assert twin.fake.deal_field(twin.deals[0], IDS.last_payment_at or "") == "2025-01-20"
    twin.fake.calls.clear()
    contact = Contact(twin.ivan, "", (), (), "", "", ())
    [deal] = await twin.forms.create_deals([(contact, new_deal())])
    assert isinstance(deal, Deal)
    assert twin.paths() == [f"{OBJECTS}/deals/batch/create"]  # known by now


async def test_a_batch_create_refused_for_a_date_sends_again_only_the_refused(twin: Twin) -> None:
    twin.fake.set_property_type("deals", IDS.last_payment_at or "", "date", "date")
    contact = Contact(twin.ivan, "", (), (), "", "", ())
    plain = new_deal(fields=tuple(paid("1", "pay_plain")))

    made = await twin.forms.create_deals([(contact, plain), (contact, new_deal())])

    assert all(isinstance(deal, Deal) for deal in made)
    assert twin.paths() == [
        f"{OBJECTS}/deals/batch/create",  # 207: the dated one refused
        "/crm/properties/2026-09/deals",
        f"{OBJECTS}/deals/batch/create",
    ]
    assert len(twin.fake.calls[2].json["inputs"]) == 1
    assert len(twin.fake.deals()) == 3 + 2


# ---- faults ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["status", "timeout"])
async def test_a_batch_write_whose_answer_is_lost_may_have_been_applied(
    twin: Twin, kind: str
) -> None:
    twin.fake.fail_after_apply(1, 500, kind=kind, path_prefix=f"{OBJECTS}/deals/batch/update")

    with pytest.raises(TransientCrmError) as lost:
        await twin.forms.update_deals([(twin.deals[0], paid("1", "pay_lost"))])

    assert lost.value.maybe_applied
    assert twin.fake.count() == 1  # a write is not retried quickly
    assert twin.fake.deal_field(twin.deals[0], IDS.payment_id or "") == "pay_lost"


async def test_a_batch_create_refused_by_a_5xx_before_applying_is_still_a_lost_write(
    twin: Twin,
) -> None:
    twin.fake.fail_next(1, 503, path_prefix=f"{OBJECTS}/notes/batch/create")
    with pytest.raises(TransientCrmError) as lost:
        await twin.forms.add_notes([(twin.deals[0], "Payment ID: pay_1")])
    assert lost.value.maybe_applied  # HubSpot does not say how much of a batch landed


async def test_batch_reads_are_retried_quickly_after_a_5xx_and_writes_after_a_429(
    twin: Twin,
) -> None:
    twin.fake.fail_next(1, 503, path_prefix=f"{OBJECTS}/deals/batch/read")
    twin.fake.fail_next(1, 429, path_prefix="/crm/associations/")
    twin.fake.fail_next(1, 429, path_prefix=f"{OBJECTS}/notes/batch/create")

    assert set(await twin.forms.get_deals(twin.deals[:1])) == {twin.deals[0]}
    assert await twin.forms.add_notes([(twin.deals[0], "Payment ID: pay_1")]) == [None]

    assert [call.status for call in twin.fake.calls] == [503, 200, 429, 200, 429, 201]
    assert twin.fake.notes(twin.deals[0]) == ["Payment ID: pay_1"]


# ---- the fake's own batch rules ---------------------------------------------------------


async def test_the_fake_refuses_batches_over_100_and_untraced_creates_all_or_nothing(
    twin: Twin,
) -> None:
    client = twin.hub.connection.http.client
    over = {"inputs": [{"id": twin.deals[0], "properties": {}}] * 101}
    answer = await client.post(f"{OBJECTS}/deals/batch/update", json=over)
    assert answer.status_code == 400
    note = {"properties": {"hs_timestamp": "2025-01-20T11:49:20.000Z"}}
    untraced = {"inputs": [note, {"properties": {}}]}
    answer = await client.post(f"{OBJECTS}/notes/batch/create", json=untraced)
    assert answer.status_code == 400
    assert twin.fake.portal.records["notes"] == {}


async def test_a_deals_batch_refused_whole_after_the_contacts_goes_deal_by_deal(twin: Twin) -> None:
    twin.fake.fail_next(1, 400, path_prefix=f"{OBJECTS}/deals/batch/create")
    plain = new_deal(fields=())  # no date-time: the 400 is not a date's
    pairs = [(customer(1, "one@example.com"), plain), (customer(2), plain)]

    made = await twin.forms.create_contacts_and_deals(pairs)

    assert all(isinstance(item, tuple) for item in made)
    assert twin.paths() == [
        f"{OBJECTS}/contacts/batch/create",
        f"{OBJECTS}/deals/batch/create",  # 400: nothing applied
        f"{OBJECTS}/deals",
        f"{OBJECTS}/deals",
    ]
    assert len(twin.fake.contacts()) == 3 + 2  # no contact made twice


async def test_a_deals_batch_lost_after_the_contacts_fails_each_delivery_alone(twin: Twin) -> None:
    twin.fake.fail_after_apply(1, 502, path_prefix=f"{OBJECTS}/deals/batch/create")
    pairs = [(customer(1, "one@example.com"), new_deal()), (customer(2), new_deal())]

    made = await twin.forms.create_contacts_and_deals(pairs)

    assert all(isinstance(item, TransientCrmError) and item.maybe_applied for item in made)


# ---- list_deals: many contacts' deals ------------------------------------------------


ASSOCIATIONS_READ = "/crm/associations/2026-09/contacts/deals/batch/read"


def seed_deals(twin: Twin) -> dict[str, str]:
    """Ivan's deals in every state the search tells apart, one shared with Maria; the
    same ids on every twin."""
    now, fake = twin.clock.now, twin.fake
    deals = {
        "autopay": fake.add_deal(twin.ivan, stage=SITE_AUTOPAY, updated_at=now - 50),
        "lost": fake.add_deal(twin.ivan, stage="closedlost", updated_at=now - 10),
        "gone": fake.add_deal(twin.ivan, stage=SITE_WORKING, archived=True),
        "shared": fake.add_deal(twin.ivan, stage=SITE_WORKING, updated_at=now - 200),
        "partners": fake.add_deal(
            twin.maria, pipeline=PARTNERS, stage=PARTNERS_AUTOPAY, updated_at=now - 30
        ),
    }
    records = fake.portal.records
    fake.portal.link(records["deals"][deals["shared"]], records["contacts"][twin.maria])
    fake.calls.clear()
    return deals


async def test_deals_of_many_contacts_are_two_calls_as_list_deals_reads_each(
    twins: tuple[Twin, Twin],
) -> None:
    batched, single = twins
    seeded = [seed_deals(twin) for twin in twins]
    assert seeded[0] == seeded[1]
    olgas = [twin.fake.add_contact(firstname="Ольга", email="o@example.com") for twin in twins]
    olga = olgas[0]  # no deals
    batched.fake.calls.clear()
    contacts = [Contact(id=i) for i in (batched.ivan, batched.maria, batched.petr, olga, "999")]

    listed = await batched.forms.list_deals([(contact, ()) for contact in contacts])

    expected = [await single.hub.list_deals(contact) for contact in contacts]
    assert listed == expected
    assert [deal.id for deal in listed[0]] == [
        batched.deals[0],  # newest first; the lost and the archived deal are not open
        seeded[0]["autopay"],
        seeded[0]["shared"],
    ]
    assert listed[3] == listed[4] == []  # no deals, and a contact that is not there
    assert batched.paths() == [ASSOCIATIONS_READ, f"{OBJECTS}/deals/batch/read"]
    links, read = (call.json for call in batched.fake.calls)
    assert [entry["id"] for entry in links["inputs"]] == [c.id for c in contacts]
    assert batched.fake.calls[0].status == 207  # Olga and "999" have no deals
    # Every linked deal is read once (closed ones too: the links do not tell), the
    # archived one is no longer linked.
    read_ids = [entry["id"] for entry in read["inputs"]]
    assert sorted(read_ids) == sorted({*batched.deals, *seeded[0].values()} - {seeded[0]["gone"]})


async def test_known_deals_are_not_read_again_and_answer_as_list_deals_does(
    twins: tuple[Twin, Twin],
) -> None:
    """The case of a backlog: a known customer whose remembered deal is in an excluded
    auto-payment status (or closed) has its contact's other deals read."""
    batched, single = twins
    seeded = [seed_deals(twin) for twin in twins]
    ids = seeded[0]
    remembered = {
        batched.ivan: ids["autopay"],
        batched.maria: ids["shared"],  # linked to Ivan too: the search shows Maria alone
        batched.petr: batched.deals[2],  # closed won: the search leaves it out
    }
    known = {c: [await batched.hub.get_deal(d)] for c, d in remembered.items()}
    known_single = {c: [await single.hub.get_deal(d)] for c, d in remembered.items()}
    assert known == known_single
    batched.fake.calls.clear()
    items = [(Contact(id=c), tuple(deals)) for c, deals in known.items() if None not in deals]
    assert len(items) == 3

    listed = await batched.forms.list_deals(items)

    expected = [await single.hub.list_deals(c, known_single[c.id]) for c, _ in items]  # type: ignore[arg-type]
    assert listed == expected
    assert [deal.id for deal in listed[2]] == [batched.deals[2]]  # kept, last
    links, read = (call.json for call in batched.fake.calls)
    assert [entry["id"] for entry in links["inputs"]] == list(remembered)
    assert ids["autopay"] not in {entry["id"] for entry in read["inputs"]}
    assert ids["shared"] in {entry["id"] for entry in read["inputs"]}  # Ivan's, not known
    # Petr's only deal is known: with him alone nothing is left to read.
    batched.fake.calls.clear()
    assert await batched.forms.list_deals([items[2]]) == [expected[2]]
    assert batched.paths() == [ASSOCIATIONS_READ]


async def test_more_than_100_deals_are_read_in_requests_of_100(
    twins: tuple[Twin, Twin],
) -> None:
    batched, single = twins
    for twin in twins:
        for n in range(130):
            updated = twin.clock.now - n % 7  # ties too: the older id first, as the search
            twin.fake.add_deal(twin.ivan, stage=SITE_WORKING, updated_at=updated)
        twin.fake.calls.clear()
    items = [(Contact(id=batched.ivan), ()), (Contact(id=batched.maria), ())]

    listed = await batched.forms.list_deals(items)

    assert listed == [await single.hub.list_deals(contact) for contact, _ in items]
    assert len(listed[0]) == 131
    assert batched.paths() == [ASSOCIATIONS_READ, *[f"{OBJECTS}/deals/batch/read"] * 2]
    sizes = [len(call.json["inputs"]) for call in batched.fake.calls[1:]]
    assert sizes == [100, 32]


async def test_a_contact_whose_links_could_not_be_read_fails_alone(twin: Twin) -> None:
    """An error other than "no associations" is that contact's, never "no deals" (the flow
    would create a deal it may have)."""
    read = twin.fake.portal.associations_read

    def busy(kind: str, other: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        _, answer = read(kind, other, body)
        results = [r for r in answer["results"] if r["from"]["id"] != twin.maria]
        error = {
            "status": "error",
            "category": "INTERNAL_ERROR",
            "message": "Try again",
            "context": {"fromObjectId": [twin.maria]},
        }
        return 207, {**answer, "results": results, "errors": [error]}

    twin.fake.portal.associations_read = busy  # type: ignore[method-assign]
    items = [(Contact(id=twin.ivan), ()), (Contact(id=twin.maria), ())]

    ivan, maria = await twin.forms.list_deals(items)

    assert [deal.id for deal in ivan] == [twin.deals[0]]
    assert isinstance(maria, TransientCrmError) and "INTERNAL_ERROR" in maria.message
