"""Bitrix24's batch forms (issue 20) through the adapter's `batch_forms`, against the fake:
many customers' items in as few `batch` requests as 50 commands allow, answered per item
as the per-call methods answer them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest

from bridge import rules
from bridge.crm.bitrix24 import Bitrix24
from bridge.domain import (
    Contact,
    Customer,
    Deal,
    FieldKind,
    FieldUpdate,
    KeyKind,
    LookupKey,
    NewContact,
    Utm,
)
from bridge.errors import CrmError, PermanentCrmError, TransientCrmError
from tests.crm_cases import CUSTOMER
from tests.fakes.bitrix24 import FakeBitrix24
from tests.test_bitrix24_adapter import (
    CONFIG,
    PAYMENT_ID,
    TOTAL,
    batch_commands,
    make_adapter,
    new_contact,
    new_deal,
)
from tests.vendor_support import closing, forms

BAD_FIELD = FieldUpdate("UF_CRM_NO_SUCH", FieldKind.TEXT, "x")  # the fake refuses it


@pytest.fixture
def fake() -> FakeBitrix24:
    return FakeBitrix24(CONFIG)


@pytest.fixture
async def bx(fake: FakeBitrix24) -> AsyncIterator[Bitrix24]:
    async with closing(make_adapter(fake)) as (adapter,):
        yield adapter


def customer(n: int, *, telegram: bool = True) -> Customer:
    return Customer(
        f"Имя{n}",
        "Фамилия",
        f"+7999000{n:04d}",
        f"c{n}@example.com",
        f"9000{n:05d}" if telegram else None,
        f"user{n}" if telegram else None,
    )


def stored(fake: FakeBitrix24) -> list[dict[str, Any]]:
    """The fake's deals without the moments they were written at."""
    return [
        {k: v for k, v in deal.items() if k not in ("DATE_CREATE", "DATE_MODIFY")}
        for deal in fake.deals()
    ]


def same_deal(deal: Deal | CrmError) -> Deal:
    assert isinstance(deal, Deal)
    return replace(deal, updated_at=0)


async def test_every_form_is_there_and_the_limit_is_bitrix_s_50(fake: FakeBitrix24) -> None:
    for size, limit in ((250, 50), (50, 50), (7, 7)):
        config = CONFIG.model_copy(update={"batch_size": size})
        async with closing(make_adapter(fake, config=config)) as (adapter,):
            found = forms(adapter).all
        assert found.limit == limit
        assert all(
            getattr(found, name) is not None
            for name in (
                "get_deals",
                "update_deals",
                "add_notes",
                "create_deals",
                "create_contacts_and_deals",
                "list_deals",
                "find_contacts",
            )
        )


# ---- reads --------------------------------------------------------------------------


async def test_get_deals_is_one_request_and_reads_as_get_deal(
    fake: FakeBitrix24, bx: Bitrix24
) -> None:
    ivan, anna = fake.add_contact("Иван"), fake.add_contact("Анна")
    ids = [
        fake.add_deal(ivan, stage_id="C2:WON", other_contacts=[anna], fields={TOTAL: 10}),
        fake.add_deal(anna, stage_id="EXECUTING"),
        fake.add_deal(ivan, stage_id="NEW"),
    ]
    fake.delete_deal(ids[2])
    wanted = [str(i) for i in ids] + ["not-a-number"]

    found = await forms(bx).get_deals(wanted)

    assert fake.count() == 1 and fake.calls[0].method == "POST"
    assert fake.calls[0].json["halt"] == 0
    assert sorted(found) == [str(ids[0]), str(ids[1])]
    for deal_id in found:
        assert found[deal_id] == await bx.get_deal(deal_id)
    assert found[str(ids[0])].contact_ids == (str(ivan), str(anna))


async def test_many_items_are_split_into_requests_of_50_commands(
    fake: FakeBitrix24, bx: Bitrix24
) -> None:
    contact = fake.add_contact("Иван")
    ids = [str(fake.add_deal(contact, stage_id="NEW")) for _ in range(120)]
    writes = [
        (deal_id, (FieldUpdate(PAYMENT_ID, FieldKind.TEXT, f"p{deal_id}"),)) for deal_id in ids
    ]

    assert await forms(bx).update_deals(writes) == [None] * 120
    assert fake.count() == 3  # 50 + 50 + 20 commands
    assert all(fake.deal_field(deal_id, PAYMENT_ID) == f"p{deal_id}" for deal_id in ids)

    before = fake.count()
    found = await forms(bx).get_deals(ids)
    assert len(found) == 120
    assert fake.count() - before == 5  # two commands a deal: 25 deals a request


# ---- writes -------------------------------------------------------------------------


def _deal_set(fake: FakeBitrix24, n: int) -> list[str]:
    contact = fake.add_contact("Иван")
    return [str(fake.add_deal(contact, stage_id="EXECUTING")) for _ in range(n)]


async def test_updates_and_notes_land_as_the_per_call_methods_land_them() -> None:
    per_call, batched = FakeBitrix24(CONFIG), FakeBitrix24(CONFIG)
    updates = (
        FieldUpdate(PAYMENT_ID, FieldKind.TEXT, "pay_1"),
        FieldUpdate(TOTAL, FieldKind.NUMBER, Decimal("1500.50")),
    )
    async with closing(make_adapter(per_call), make_adapter(batched)) as (one, many):
        ids = _deal_set(per_call, 4)
        assert _deal_set(batched, 4) == ids
        for deal_id in ids:
            await one.update_deal(deal_id, updates)
            await one.add_note(deal_id, f"Оплата {deal_id}\n\nPayment ID: pay_1")

        found = forms(many)
        results = await found.update_deals([(deal_id, updates) for deal_id in ids])
        notes = [(deal_id, f"Оплата {deal_id}\n\nPayment ID: pay_1") for deal_id in ids]
        assert await found.add_notes(notes) == [None] * 4

        assert results == [None] * 4
        assert batched.count() == 2  # one request a step
        assert [call.json["halt"] for call in batched.calls] == [0, 0]
        assert stored(batched) == stored(per_call)
        assert all(batched.notes(d) == per_call.notes(d) for d in ids)
        assert set(batch_commands(batched)) == {f"n{i}" for i in range(4)}


async def test_a_refused_item_fails_alone_and_the_others_are_applied(
    fake: FakeBitrix24, bx: Bitrix24
) -> None:
    ids = _deal_set(fake, 3)
    good = (FieldUpdate(PAYMENT_ID, FieldKind.TEXT, "pay_1"),)
    bad_value = (FieldUpdate(TOTAL, FieldKind.DATE, "not a day"),)  # cannot even be built
    writes = [(ids[0], good), (ids[1], (BAD_FIELD,)), ("999999", good), (ids[2], good)]
    writes.append((ids[0], bad_value))
    writes.append((ids[1], ()))  # nothing to set: no command, as update_deal

    results = await forms(bx).update_deals(writes)

    assert fake.count() == 1
    assert results[0] is None and results[3] is None and results[5] is None
    assert isinstance(results[1], PermanentCrmError) and "UF_CRM_NO_SUCH" in str(results[1])
    assert isinstance(results[2], PermanentCrmError) and "Not found" in str(results[2])
    assert isinstance(results[4], PermanentCrmError) and "not a day" in str(results[4])
    assert [fake.deal_field(d, PAYMENT_ID) for d in ids] == ["pay_1", None, "pay_1"]
    assert len(batch_commands(fake)) == 4

    notes = await forms(bx).add_notes([(ids[0], "a"), ("999999", "b"), (ids[1], "c")])
    assert notes[0] is None and notes[2] is None
    assert isinstance(notes[1], PermanentCrmError) and "Entity not found" in str(notes[1])
    assert (fake.notes(ids[0]), fake.notes(ids[1])) == (["a"], ["c"])


async def test_create_deals_answers_the_deals_create_deal_answers() -> None:
    per_call, batched = FakeBitrix24(CONFIG), FakeBitrix24(CONFIG)
    async with closing(make_adapter(per_call), make_adapter(batched)) as (one, many):
        contacts = [Contact(id=str(per_call.add_contact(f"К{n}"))) for n in range(3)]
        assert [Contact(id=str(batched.add_contact(f"К{n}"))) for n in range(3)] == contacts
        deals = [new_deal(name=f"Сделка {n}") for n in range(3)]
        expected = [
            same_deal(await one.create_deal(c, d)) for c, d in zip(contacts, deals, strict=True)
        ]

        items = list(zip(contacts, deals, strict=True))
        items.insert(1, (contacts[0], new_deal(status_id="C2:NO_SUCH_STAGE")))
        results = await forms(many).create_deals(items)

        assert batched.count() == 1
        assert isinstance(results[1], PermanentCrmError) and "NO_SUCH_STAGE" in str(results[1])
        assert [same_deal(r) for r in (results[0], *results[2:])] == expected
        assert stored(batched) == stored(per_call)


async def test_new_customers_contacts_and_deals_are_one_chained_request(
    fake: FakeBitrix24, bx: Bitrix24
) -> None:
    items = [(new_contact(customer(n)), new_deal(name=f"Сделка {n}")) for n in range(5)]

    results = await forms(bx).create_contacts_and_deals(items)

    assert fake.count() == 1 and fake.calls[0].json["halt"] == 1
    assert len(batch_commands(fake)) == 10
    pairs = [r for r in results if isinstance(r, tuple)]
    assert len(pairs) == 5
    for n, (contact, deal) in enumerate(pairs):
        assert fake.deal(deal.id)["CONTACT_IDS"] == [int(contact.id)]
        assert fake.deal(deal.id)["TITLE"] == f"Сделка {n}"
        assert contact.phones == (customer(n).phone,) and deal.contact_ids == (contact.id,)


@pytest.mark.parametrize("refused", [0, 2, 4])
async def test_a_refused_contact_gets_its_error_and_no_deal_while_the_rest_are_created(
    fake: FakeBitrix24, bx: Bitrix24, refused: int
) -> None:
    items = [(new_contact(customer(n)), new_deal(name=f"Сделка {n}")) for n in range(5)]
    who = customer(refused)
    items[refused] = (NewContact(who, Utm(), (BAD_FIELD,)), items[refused][1])

    results = await forms(bx).create_contacts_and_deals(items)

    error = results[refused]
    assert isinstance(error, PermanentCrmError) and "UF_CRM_NO_SUCH" in str(error)
    assert [isinstance(r, tuple) for r in results] == [n != refused for n in range(5)]
    assert len(fake.deals()) == 4 and len(fake.contacts()) == 4
    assert all(deal["CONTACT_IDS"] for deal in fake.deals())  # no deal without its contact
    assert fake.count() == (1 if refused == 4 else 2)  # the halted rest went again


async def test_without_halt_a_failed_contact_would_leave_a_deal_without_one(
    fake: FakeBitrix24, bx: Bitrix24
) -> None:
    # Why create_contacts_and_deals halts: the fake binds a reference to a failed command
    # as Bitrix does, and an empty array binds nothing.
    cmd = {
        "c": "crm.contact.add?fields[UF_CRM_NO_SUCH]=x",
        "d": "crm.deal.add?fields[TITLE]=X&fields[CONTACT_IDS][0]=$result[c]",
    }
    await bx.connection.send("POST", "batch.json", "probe", json={"halt": 0, "cmd": cmd})
    [deal] = fake.deals()
    assert deal["CONTACT_IDS"] == []


# ---- whole-request errors -----------------------------------------------------------


async def test_a_5xx_or_a_timeout_of_a_write_batch_is_a_write_that_may_have_landed(
    fake: FakeBitrix24, bx: Bitrix24
) -> None:
    ids = _deal_set(fake, 2)
    writes = [(d, (FieldUpdate(PAYMENT_ID, FieldKind.TEXT, "pay_1"),)) for d in ids]
    fake.fail_after_apply(1, status=500, method="POST")
    with pytest.raises(TransientCrmError) as failed:
        await forms(bx).update_deals(writes)
    assert failed.value.maybe_applied and fake.count() == 1  # a write is not repeated
    assert fake.deal_field(ids[0], PAYMENT_ID) == "pay_1"

    fake.fail_after_apply(1, kind="timeout")
    with pytest.raises(TransientCrmError, match="timeout") as lost:
        await forms(bx).add_notes([(ids[0], "a")])
    assert lost.value.maybe_applied and fake.notes(ids[0]) == ["a"]

    fake.fail_next(1, status=502)
    with pytest.raises(TransientCrmError) as refused:
        await forms(bx).create_contacts_and_deals([(new_contact(), new_deal())])
    assert refused.value.maybe_applied


async def test_a_5xx_of_a_read_batch_is_retried(fake: FakeBitrix24, bx: Bitrix24) -> None:
    deal_id = str(fake.add_deal(fake.add_contact("Иван"), stage_id="NEW"))
    fake.fail_next(2, status=500)
    assert list(await forms(bx).get_deals([deal_id])) == [deal_id]
    assert fake.count() == 3


async def test_a_later_request_s_failure_fails_its_items_and_keeps_the_earlier_ones(
    fake: FakeBitrix24, bx: Bitrix24
) -> None:
    items = [(new_contact(customer(n)), new_deal(name=f"Сделка {n}")) for n in range(30)]
    fake.fail_after_apply(1, status=500, method="POST", skip=1)  # the second request's answer

    results = await forms(bx).create_contacts_and_deals(items)

    assert fake.count() == 2  # 25 items (50 commands), then 5
    assert all(isinstance(r, tuple) for r in results[:25])
    assert all(isinstance(r, TransientCrmError) and r.maybe_applied for r in results[25:])
    assert len(fake.deals()) == 30  # applied, found by the flow's checks on the retry


async def test_429_is_retried_quickly_even_for_writes(fake: FakeBitrix24, bx: Bitrix24) -> None:
    ids = _deal_set(fake, 3)
    fake.fail_next(1, status=429)  # refused, so not applied
    results = await forms(bx).add_notes([(d, "a") for d in ids])
    assert results == [None] * 3
    assert [call.status for call in fake.calls] == [429, 200]
    assert all(fake.notes(d) == ["a"] for d in ids)


# ---- finding contacts ---------------------------------------------------------------


def _customers(fake: FakeBitrix24) -> tuple[list[tuple[LookupKey, ...]], dict[str, int]]:
    """Customers found every way find_contact finds them, and some it must not find."""
    by_tg = fake.add_contact("Телеграм", telegram_id="900000001", phones=["+79990000001"])
    fake.add_deal(by_tg, stage_id="EXECUTING")
    by_phone = fake.add_contact("Телефон", phones=["8 (999) 000-00-02"])
    fake.add_deal(by_phone, stage_id="NEW")
    by_email = fake.add_contact("Почта", emails=["C3@Example.com"])
    phone_first = fake.add_contact("Первый", emails=["c4@example.com"])  # lower priority
    by_phone_too = fake.add_contact("Второй", phones=["+79990000004"])
    near = fake.add_contact("Похожий", phones=["+79990000005"])  # refused by confirm
    keys = [customer(n).lookup_keys() for n in range(1, 7)]
    keys.append((LookupKey(KeyKind.EMAIL, "nobody@example.com"),))
    keys.append(())  # nothing to look up by
    ids = {"tg": by_tg, "phone": by_phone, "email": by_email, "phone_first": by_phone_too}
    ids.update(other=phone_first, near=near)
    return keys, ids


def _confirm(contact: Contact, key: LookupKey) -> bool:
    # "Похожий" stands for a hit the CRM's loose search returns and the flow refuses.
    return contact.name != "Похожий" and rules.contact_matches(contact, key)


async def test_find_contacts_picks_as_find_contact_does(fake: FakeBitrix24, bx: Bitrix24) -> None:
    keys, ids = _customers(fake)
    expected = [await bx.find_contact(k, _confirm) for k in keys]
    before = fake.count()

    found = await forms(bx).find_contacts(keys, _confirm)

    assert found == expected
    assert [c.id if c else None for c in found] == [
        str(ids["tg"]),
        str(ids["phone"]),
        str(ids["email"]),
        str(ids["phone_first"]),
        None,
        None,
        None,
        None,
    ]
    assert fake.count() - before == 2  # every lookup, then every customer's candidates
    assert fake.calls[-1].method == "POST" and fake.calls[-1].json["halt"] == 0


async def test_found_contacts_bring_their_open_deals_for_list_deals(
    fake: FakeBitrix24, bx: Bitrix24
) -> None:
    keys, ids = _customers(fake)
    found = await forms(bx).find_contacts(keys[:2], _confirm)
    before = fake.count()
    listed = [await bx.list_deals(contact) for contact in found if contact is not None]
    assert fake.count() == before  # prefetched in the lookups
    assert [[d.contact_ids[0] for d in deals] for deals in listed] == [
        [str(ids["tg"])],
        [str(ids["phone"])],
    ]


async def test_find_contacts_refuses_unconfirmed_hits_and_respects_priority(
    fake: FakeBitrix24, bx: Bitrix24
) -> None:
    fake.add_contact("Телеграм", telegram_id=CUSTOMER.telegram_id)
    ivan = fake.add_contact("Иван", phones=[CUSTOMER.phone or ""])
    keys = [CUSTOMER.lookup_keys()] * 2

    def not_by_telegram(contact: Contact, key: LookupKey) -> bool:
        return key.kind is not KeyKind.TELEGRAM_ID and rules.contact_matches(contact, key)

    found = await forms(bx).find_contacts(keys, not_by_telegram)
    assert [c.id if c else None for c in found] == [str(ivan)] * 2
    assert await forms(bx).find_contacts(keys, lambda c, k: False) == [None, None]


async def test_a_failed_lookup_command_fails_the_whole_read(
    fake: FakeBitrix24, bx: Bitrix24
) -> None:
    fake.block_method("crm.duplicate.findbycomm")
    with pytest.raises(CrmError, match="OPERATION_TIME_LIMIT"):
        await forms(bx).find_contacts([customer(1).lookup_keys()], _confirm)


# ---- a contact's deals --------------------------------------------------------------


def _contacts_with_deals(fake: FakeBitrix24) -> list[tuple[int, list[int]]]:
    """Contacts and their deals in every pipeline and status: open, excluded, won, lost,
    recurring, bound as the second contact, none at all."""
    ivan, anna, olga, petr = (fake.add_contact(n) for n in ("Иван", "Анна", "Ольга", "Пётр"))
    return [
        (
            ivan,
            [
                fake.add_deal(ivan, stage_id="UC_AUTOPAY", modified=2000),  # excluded, yet open
                fake.add_deal(ivan, stage_id="EXECUTING", modified=3000),
                fake.add_deal(ivan, stage_id="C2:WON", modified=4000),
                fake.add_deal(ivan, stage_id="C2:LOSE", modified=5000),
                fake.add_deal(ivan, stage_id="NEW", recurring=True),
            ],
        ),
        (anna, [fake.add_deal(olga, stage_id="C1:EXECUTING", other_contacts=[anna])]),
        (olga, [fake.add_deal(olga, stage_id="WON")]),
        (petr, []),
    ]


def _known(adapter_deals: list[Deal], contact_id: int) -> tuple[Deal, ...]:
    return tuple(d for d in adapter_deals if str(contact_id) in d.contact_ids)


async def test_list_deals_is_one_request_and_answers_as_list_deals() -> None:
    per_call, batched = FakeBitrix24(CONFIG), FakeBitrix24(CONFIG)
    seeded = _contacts_with_deals(per_call)
    assert _contacts_with_deals(batched) == seeded
    async with closing(make_adapter(per_call), make_adapter(batched)) as (one, many):
        # The remembered deals get_deal read: closed or excluded, so the flow lists the rest.
        every = [d for _, ids in seeded for i in ids if (d := await one.get_deal(str(i)))]
        items: list[tuple[Contact, tuple[Deal, ...]]] = [
            (Contact(id=str(cid)), known)
            for cid, _ in seeded
            for known in ((), _known(every, cid)[2:3], _known(every, cid))
        ]
        expected = [await one.list_deals(contact, known) for contact, known in items]

        listed = await forms(many).list_deals(items)

        assert listed == expected
        assert batched.count() == 1 and batched.calls[0].method == "POST"
        assert batched.calls[0].json["halt"] == 0
        assert set(batch_commands(batched).values()) == {"crm.item.list"}
        ivan_deals = expected[0]
        assert ivan_deals and all(not d.is_closed for d in ivan_deals)  # as per call: open only
        open_ids = [d.id for d in ivan_deals]
        assert [d.id for d in expected[1]] == [*open_ids, str(seeded[0][1][2])]
        assert [d.id for d in expected[2]] == [*open_ids, *(str(i) for i in seeded[0][1][2:])]
        assert expected[9] == []  # no deals, none known


async def test_a_gone_contact_answers_as_per_call_and_the_others_are_unaffected(
    fake: FakeBitrix24, bx: Bitrix24
) -> None:
    """crm.item.list filters deals; it does not check that the contact exists, so per call
    a contact that is gone has no deals (Bitrix unbinds a deleted contact's deals) and
    `list_deals` raises nothing: the batch form answers the same for that item alone."""
    seeded = _contacts_with_deals(fake)
    gone = Contact(id="987654")
    known = await bx.get_deal(str(seeded[0][1][2]))
    assert known is not None
    items = [(Contact(id=str(cid)), ()) for cid, _ in seeded[:2]] + [(gone, (known,))]
    expected = [await bx.list_deals(contact, k) for contact, k in items]
    before = fake.count()

    listed = await forms(bx).list_deals(items)

    assert listed == expected and listed[2] == [known]
    assert all(not isinstance(one, CrmError) for one in listed)
    assert fake.count() - before == 1


async def test_list_deals_hands_over_what_find_contacts_read_and_reads_the_rest(
    fake: FakeBitrix24, bx: Bitrix24
) -> None:
    keys, ids = _customers(fake)
    found = [c for c in await forms(bx).find_contacts(keys[:2], _confirm) if c is not None]
    resumed = Contact(id=str(ids["email"]))  # from a journal: no prefetch to use
    items = [(c, ()) for c in (*found, resumed, found[0])]  # the second found[0] reads
    before = fake.count()

    listed = await forms(bx).list_deals(items)

    assert fake.count() - before == 1
    assert set(batch_commands(fake)) == {"l2", "l3"}
    assert listed[0] == listed[3] and [d.contact_ids[0] for d in listed[1]] == [str(ids["phone"])]
    again = fake.count()
    assert await bx.list_deals(found[0]) == listed[0]  # a prefetch serves one call only
    assert fake.count() == again + 1


async def test_no_request_when_every_contact_s_deals_were_prefetched(
    fake: FakeBitrix24, bx: Bitrix24
) -> None:
    keys, _ = _customers(fake)
    found = [c for c in await forms(bx).find_contacts(keys[:2], _confirm) if c is not None]
    before = fake.count()
    assert len(await forms(bx).list_deals([(c, ()) for c in found])) == 2
    assert fake.count() == before


async def test_many_contacts_take_several_requests_and_long_lists_more_pages() -> None:
    fake = FakeBitrix24(CONFIG, bucket_size=1000)  # the per-call reads alone are 63 requests
    async with closing(make_adapter(fake)) as (bx,):
        contacts = [fake.add_contact(f"Клиент {n}") for n in range(60)]
        for n, contact in enumerate(contacts):
            fake.add_deal(contact, stage_id="NEW", modified=1000 + n)
        busy = contacts[0]
        for n in range(119):  # 120 open deals: three pages of 50
            fake.add_deal(busy, stage_id="EXECUTING", modified=2000 + n)
        items = [(Contact(id=str(c)), ()) for c in contacts]
        expected = [await bx.list_deals(contact) for contact, _ in items]
        before = fake.count()

        listed = await forms(bx).list_deals(items)

        assert listed == expected and len(listed[0]) == 120
        assert fake.count() - before == 4  # 50 contacts, 10 contacts, then busy's pages 2 and 3
        assert batch_commands(fake, -1) == {"l0": "crm.item.list"}


async def test_a_failed_list_command_fails_the_whole_read_and_keeps_the_prefetch(
    fake: FakeBitrix24, bx: Bitrix24
) -> None:
    keys, ids = _customers(fake)
    [found] = await forms(bx).find_contacts(keys[:1], _confirm)
    assert found is not None
    fake.block_method("crm.item.list")
    with pytest.raises(CrmError, match="OPERATION_TIME_LIMIT"):
        await forms(bx).list_deals([(found, ()), (Contact(id=str(ids["email"])), ())])
    fake.block_method("crm.item.list", blocked=False)
    before = fake.count()
    assert len(await bx.list_deals(found)) == 1  # the core's per-call retry: still prefetched
    assert fake.count() == before
