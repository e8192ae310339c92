"""Bitrix24's batch forms (`BatchForms`, issue 20): one flow step for many customers in
`batch` requests of up to 50 commands, each item's commands built and read by the same
code as the per-call method's (`bitrix24_json`, `bitrix24_search`, the adapter's readers).

    get_deals        POST batch {gI_deal: crm.deal.get, gI_contacts: crm.deal.contact.items.get}
    update_deals     POST batch, halt=0 {uI: crm.deal.update} (none for an item without fields)
    add_notes        POST batch, halt=0 {nI: crm.timeline.comment.add}
    create_deals     POST batch, halt=0 {dI: crm.deal.add}
    create_contacts_and_deals
                     POST batch, halt=1 {cI_contact: crm.contact.add, cI_deal: crm.deal.add
                       CONTACT_IDS $result[cI_contact]}; the items after a failed one resent
    list_deals       POST batch {lI: crm.item.list (`open_deals_params`)} for the contacts
                       whose deals find_contact(s) did not just read; then {lI: the next
                       page} for those with more than 50 open deals
    find_contacts    POST batch of every customer's lookup (`ContactSearch`, sI_ keys), then
                       one of the candidates of the customers that need them

Reads travel as POSTs that only read (many customers' commands do not fit in a URL) and
are retried like GETs. `halt=0` runs every command whatever failed before it, so one
item's refusal (its `result_error`) fails that item alone [apidocs.bitrix24.com
settings/how-to-call-rest-api/batch.html: halt "determines whether to halt the sequence
of requests in case of an error", default false; CRestProvider::methodsBatch reads it as
`(bool)`]. A payload that cannot be built fails its item before anything is sent.

A new customer's contact and deal are chained as `create_contact_and_deal` chains them,
and with halt for the same reason: when `crm.contact.add` fails, `$result[cI_contact]`
is not an error but the nearest array (the results so far: `processBatchElement` walks
the path while keys exist), and crm.deal.add does not refuse that (its bindings drop an
empty array, and cast a full one to contact 1): without halt, a deal with no contact or
the wrong one. With halt the batch stops at the failed command, that item gets its
error, and the items after it, which did not run, go in the next request (one request
more per refused item). Splitting, and errors of whole requests:
`BitrixCalls.write_groups`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, TypeVar

from bridge.crm import bitrix24_json as bx
from bridge.crm.base import BatchForms, Confirm, DealWrite, ItemError, NoteWrite
from bridge.crm.bitrix24_calls import (
    JSON,
    MAX_COMMANDS,
    MAX_PAGES,
    BatchAnswer,
    BitrixCalls,
    Commands,
)
from bridge.crm.bitrix24_search import ContactSearch
from bridge.domain import Contact, Deal, LookupKey, NewContact, NewDeal
from bridge.errors import CrmError

if TYPE_CHECKING:
    from bridge.crm.bitrix24 import Bitrix24

Item = TypeVar("Item")
Sent = TypeVar("Sent")
Result = TypeVar("Result")
NOTHING_SENT = BatchAnswer({}, {}, {})


def batch_forms(adapter: Bitrix24, calls: BitrixCalls) -> BatchForms:
    forms = Bitrix24Batches(adapter, calls)
    return BatchForms(
        limit=min(adapter.config.batch_size, MAX_COMMANDS),
        get_deals=forms.get_deals,
        update_deals=forms.update_deals,
        add_notes=forms.add_notes,
        create_deals=forms.create_deals,
        create_contacts_and_deals=forms.create_contacts_and_deals,
        list_deals=forms.list_deals,
        find_contacts=forms.find_contacts,
    )


class Bitrix24Batches:
    def __init__(self, adapter: Bitrix24, calls: BitrixCalls) -> None:
        self._adapter = adapter
        self._calls = calls

    # ---- reads ----------------------------------------------------------------------

    async def get_deals(self, deal_ids: Sequence[str]) -> Mapping[str, Deal]:
        # An id that is no deal id is not asked for (get_deal: None).
        wanted = list(dict.fromkeys(deal_id for deal_id in deal_ids if deal_id.isdigit()))
        groups = [bx.deal_get_commands(deal_id, f"g{i}_") for i, deal_id in enumerate(wanted)]
        answers = await self._calls.read_groups(groups, "deals.get")
        found: dict[str, Deal] = {}
        for index, (deal_id, answer) in enumerate(zip(wanted, answers, strict=True)):
            deal = self._adapter.deal_in(answer, f"g{index}_")
            if deal is not None:
                found[deal_id] = deal
        return found

    async def list_deals(
        self, items: Sequence[tuple[Contact, Sequence[Deal]]]
    ) -> Sequence[list[Deal] | CrmError]:
        """As `list_deals` per contact: the deals `find_contact` read for it when it
        still may hand them over, else a page of `crm.item.list` per contact, every
        contact's in shared batches, and the next pages of those with more in the next
        round. A command that failed fails the whole call, as it fails `list_deals`; a
        contact that no longer exists is no error, as per call (it has no deals)."""
        adapter = self._adapter
        listed: list[list[Deal] | None] = []
        for index, (contact, _) in enumerate(items):
            # As per call: a contact's prefetch serves its first call only.
            first = all(contact.id != other.id for other, _ in items[:index])
            listed.append(adapter.prefetched(contact) if first else None)
        read: dict[int, list[Deal]] = {i: [] for i, deals in enumerate(listed) if deals is None}
        starts: dict[int, int] = dict.fromkeys(read, 0)
        for _ in range(MAX_PAGES):
            if not starts:
                break
            groups = [
                {
                    f"l{index}": (
                        "crm.item.list",
                        bx.open_deals_params(items[index][0].id, adapter.config, start),
                    )
                }
                for index, start in starts.items()
            ]
            answers = await self._calls.read_groups(groups, "deals.list")
            following: dict[int, int] = {}
            for (index, start), answer in zip(starts.items(), answers, strict=True):
                key = f"l{index}"
                self._calls.raise_for(answer, [key], "deals.list")
                page, later = adapter.deals_page(answer.results[key], answer.more.get(key), start)
                read[index] += page
                if later is not None:
                    following[index] = later
            starts = following
        for contact, _ in items:  # answered: as per call, a prefetch is used once
            adapter.drop_prefetch(contact.id)
        return [
            adapter.with_known(read[index] if deals is None else deals, known)
            for index, (deals, (_, known)) in enumerate(zip(listed, items, strict=True))
        ]

    async def find_contacts(
        self, keys: Sequence[Sequence[LookupKey]], confirm: Confirm
    ) -> Sequence[Contact | None]:
        """As `find_contact` per customer: its lookups, then its candidates when needed,
        every customer's in shared batches. A command that failed fails the whole call
        (a read: nothing to undo), as it fails `find_contact`."""
        self._adapter.forget_stale_prefetches()
        config = self._adapter.config
        searches = [ContactSearch(k, confirm, config, f"s{i}_") for i, k in enumerate(keys)]
        looking = [index for index, search in enumerate(searches) if search.lookup]
        lookups = [searches[index].lookup for index in looking]
        last: dict[int, BatchAnswer] = {}
        candidates: dict[int, Commands] = {}
        answers = await self._calls.read_groups(lookups, "contacts.find")
        for index, answer in zip(looking, answers, strict=True):
            last[index] = answer
            more = self._adapter.read_lookup(searches[index], answer)
            if more:
                candidates[index] = more
        groups = list(candidates.values())
        answers = await self._calls.read_groups(groups, "contacts.get")
        for index, answer in zip(candidates, answers, strict=True):
            last[index] = answer
            self._adapter.read_candidates(searches[index], answer)
        return [
            self._adapter.settle(search, last[index]) if index in last else None
            for index, search in enumerate(searches)
        ]

    # ---- writes ---------------------------------------------------------------------

    async def update_deals(self, items: Sequence[DealWrite]) -> Sequence[ItemError]:
        def build(index: int, item: DealWrite) -> tuple[None, Commands]:
            deal_id, updates = item
            if not updates:
                return None, {}  # as update_deal: nothing to set, no call
            return None, {f"u{index}": ("crm.deal.update", bx.deal_update_params(deal_id, updates))}

        results = await self._writes(items, build, _applied, "deals.update")
        return [result if isinstance(result, CrmError) else None for result in results]

    async def add_notes(self, items: Sequence[NoteWrite]) -> Sequence[ItemError]:
        def build(index: int, item: NoteWrite) -> tuple[None, Commands]:
            deal_id, text = item
            return None, {f"n{index}": ("crm.timeline.comment.add", bx.note_params(deal_id, text))}

        results = await self._writes(items, build, _applied, "notes.add")
        return [result if isinstance(result, CrmError) else None for result in results]

    async def create_deals(
        self, items: Sequence[tuple[Contact, NewDeal]]
    ) -> Sequence[Deal | CrmError]:
        currency = self._adapter.options.currency_id

        def build(index: int, item: tuple[Contact, NewDeal]) -> tuple[dict[str, JSON], Commands]:
            contact, new = item
            fields = bx.deal_fields(new, contact.id, currency)
            return fields, {f"d{index}": ("crm.deal.add", bx.add_params(fields))}

        def read(
            item: tuple[Contact, NewDeal],
            fields: dict[str, JSON],
            keys: list[str],
            answer: BatchAnswer,
        ) -> Deal:
            return self._adapter.sent_deal(fields, answer.results[keys[0]], item[0].id)

        return await self._writes(items, build, read, "deals.create")

    async def create_contacts_and_deals(
        self, items: Sequence[tuple[NewContact, NewDeal]]
    ) -> Sequence[tuple[Contact, Deal] | CrmError]:
        currency = self._adapter.options.currency_id

        def build(
            index: int, item: tuple[NewContact, NewDeal]
        ) -> tuple[bx.ContactAndDeal, Commands]:
            sent = bx.contact_and_deal_commands(*item, currency, f"c{index}_")
            return sent, sent[2]

        def read(
            item: tuple[NewContact, NewDeal],
            sent: bx.ContactAndDeal,
            keys: list[str],
            answer: BatchAnswer,
        ) -> tuple[Contact, Deal]:
            return self._adapter.created_pair(sent, answer)

        # halt: see the module docstring.
        return await self._writes(items, build, read, "contacts.deals.create", halt=True)

    async def _writes(
        self,
        items: Sequence[Item],
        build: Callable[[int, Item], tuple[Sent, Commands]],
        read: Callable[[Item, Sent, list[str], BatchAnswer], Result],
        operation: str,
        *,
        halt: bool = False,
    ) -> list[Result | CrmError]:
        """Per item: `build` its commands (a payload that cannot be built is its own
        `PermanentCrmError`), send every item's together, `read` the answer of an item
        whose commands all ran, else its error."""
        built: list[tuple[Sent, Commands] | CrmError] = []
        for index, item in enumerate(items):
            try:
                with self._calls.reading(operation):
                    built.append(build(index, item))
            except CrmError as exc:
                built.append(exc)
        groups = [one[1] for one in built if not isinstance(one, CrmError) and one[1]]
        answers = iter(await self._calls.write_groups(groups, operation, halt=halt))
        results: list[Result | CrmError] = []
        for item, one in zip(items, built, strict=True):
            if isinstance(one, CrmError):
                results.append(one)
                continue
            sent, commands = one
            answer = next(answers) if commands else NOTHING_SENT
            if isinstance(answer, CrmError):
                results.append(answer)
                continue
            keys = list(commands)
            error = self._calls.item_error(answer, keys, operation)
            if error is not None:
                results.append(error)
                continue
            try:
                with self._calls.reading(operation):
                    results.append(read(item, sent, keys, answer))
            except CrmError as exc:  # applied, but its answer is not what was expected
                results.append(exc)
        return results


def _applied(item: object, sent: None, keys: list[str], answer: BatchAnswer) -> None:
    return None
