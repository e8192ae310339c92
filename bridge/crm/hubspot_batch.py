"""HubSpot's batch forms (`BatchForms`, issue 20), each one request for up to 100
deliveries (`BATCH_READ`), each item's JSON built and read by the same code as the
per-call method's (`hubspot_json`):

    get_deals                POST  /crm/objects/2026-09/deals/batch/read (gone deals: a 207),
                                   POST  /crm/associations/2026-09/deals/contacts/batch/read
    update_deals             POST  /crm/objects/2026-09/deals/batch/update  (an invalid value
                                   refuses all: 400; a gone deal: left out of the results)
    add_notes                POST  /crm/objects/2026-09/notes/batch/create   deal association
    create_deals             POST  /crm/objects/2026-09/deals/batch/create   contact association
    create_contacts_and_deals  contacts/batch/create, then deals/batch/create for the
                                   contacts made (or found: a 409 "Existing ID" input)
    list_deals               POST  /crm/associations/2026-09/contacts/deals/batch/read,
                                   POST  /crm/objects/2026-09/deals/batch/read for the deals
                                   not known (none without them): `contacts_deals`
    find_contacts            none: a search takes one query (per customer, as the adapter's)
Creates carry `objectWriteTraceId`, so a 207 names the inputs refused and the rest are
created; a 5xx of a batch write is a lost write (`maybe_applied`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from bridge.crm.base import JSON, BatchForms, DealWrite, ItemError, NoteWrite
from bridge.crm.hubspot_json import (
    ASSOCIATIONS,
    BATCH_READ,
    EXISTING_ID,
    MAX_PAGES,
    OBJECTS,
    associations_from_json,
    associations_next,
    batch_read_json,
    contact_create_json,
    contact_deals,
    created_contact,
    created_deal,
    deal_create_json,
    deal_from_json,
    deal_properties,
    deal_update_json,
    error_ids,
    ids_json,
    note_create_json,
    refused_inputs,
    traced_json,
    traced_results,
)
from bridge.domain import Contact, Deal, FieldKind, FieldUpdate, NewContact, NewDeal
from bridge.errors import AuthError, CrmError, PermanentCrmError, TransientCrmError

if TYPE_CHECKING:
    from bridge.crm.hubspot import HubSpot

# Categories of a batch answer's per-input error that a later try may get past; any other
# (VALIDATION_ERROR, OBJECT_NOT_FOUND, CONFLICT, ...) refuses that input as sent.
TRANSIENT_CATEGORIES = frozenset({"RATE_LIMITS", "INTERNAL_ERROR", "SERVICE_UNAVAILABLE"})
T = TypeVar("T")
R = TypeVar("R")


def batch_forms(adapter: HubSpot) -> BatchForms:
    # HubSpot has no batch search (a search takes one query), so `find_contacts` stays
    # per customer.
    forms = HubSpotBatches(adapter)
    return BatchForms(
        limit=min(adapter.config.batch_size, BATCH_READ),
        get_deals=forms.get_deals,
        update_deals=forms.update_deals,
        add_notes=forms.add_notes,
        create_deals=forms.create_deals,
        create_contacts_and_deals=forms.create_contacts_and_deals,
        list_deals=forms.contacts_deals,
    )


class HubSpotBatches:
    def __init__(self, adapter: HubSpot) -> None:
        self._adapter = adapter
        self._reading = adapter.connection.reading
        self._clock = adapter.connection.clock

    async def get_deals(self, deal_ids: Sequence[str]) -> dict[str, Deal]:
        """`get_deal` of many: a deals batch read, then one associations batch read for the
        contacts of those that exist (a batch read answers no associations). A deal that is
        gone is left out: HubSpot answers it among a 207's OBJECT_NOT_FOUND errors
        [github.com/HubSpot/hubspot-api-php/issues/619]."""
        records = await self._deal_records(deal_ids)
        with self._reading("deals.read"):
            ids = [str(record["id"]) for record in records]
        contacts = await self._linked("deals", "contacts", ids)
        with self._reading("deals.read"):
            deals = [
                deal_from_json(r, self._adapter.config, contacts.get(str(r["id"]), ()))
                for r in records
            ]
        return {deal.id: deal for deal in deals}

    async def _deal_records(self, deal_ids: Sequence[str]) -> list[Mapping[str, JSON]]:
        """The records of the deals that exist, by deals batch reads (one per 100)."""
        records: list[Mapping[str, JSON]] = []
        for chunk in _chunks(list(dict.fromkeys(deal_ids))):
            payload = batch_read_json(chunk, deal_properties(self._adapter.config))
            path = f"{OBJECTS}/deals/batch/read"
            answer = await self._adapter.send(
                "POST", path, "deals.read", json=payload, idempotent=True
            )
            with self._reading("deals.read"):
                records.extend(r for r in answer.get("results") or () if not r.get("archived"))
        return records

    async def contacts_deals(
        self, items: Sequence[tuple[Contact, Sequence[Deal]]]
    ) -> list[list[Deal] | CrmError]:
        """`list_deals` of many contacts: one associations batch read contacts → deals (per
        100 contacts, paged by `after`), then deals batch reads of the linked deals not
        known (none when there are none). A contact with no deals, or gone, is among the
        read's 207 `errors` as OBJECT_NOT_FOUND: it has no deals, as its search answers.
        Any other error of a contact is that item's, never "no deals" (the flow would
        then create a deal it may already have). Unlike the search, the associations
        show a deal created a moment ago (no index lag)."""
        contact_ids = list(dict.fromkeys(contact.id for contact, _ in items))
        errors: list[Mapping[str, JSON]] = []
        linked = await self._linked("contacts", "deals", contact_ids, errors)
        wanted: list[str] = []
        for contact, known in items:
            known_ids = {deal.id for deal in known}
            wanted.extend(d for d in linked.get(contact.id, ()) if d not in known_ids)
        records = await self._deal_records(wanted)
        operation = "contacts.associations"
        with self._reading(operation):
            refused: dict[str, CrmError] = {}
            for error in errors:
                if error.get("category") == "OBJECT_NOT_FOUND":
                    continue
                named = error_ids(error) or [c for c in contact_ids if c not in linked]
                for contact_id in named:
                    refused.setdefault(contact_id, self._item_error(operation, error))
        with self._reading("deals.read"):
            by_id = {str(record["id"]): record for record in records}
            return [
                refused.get(contact.id)
                or contact_deals(
                    contact.id, linked.get(contact.id, ()), by_id, known, self._adapter.config
                )
                for contact, known in items
            ]

    async def update_deals(self, writes: Sequence[DealWrite]) -> list[ItemError]:
        """`update_deal` of many, in `deals/batch/update`. HubSpot checks every input's
        values before it applies any: an invalid one refuses the whole batch with a 400
        (raised: nothing applied). A deal that is gone is left out of the answer's results
        (a 207 with nothing in `errors`, HubSpot's community on batch updates of unknown
        ids [eshopman-com.pages.dev/insights/hubspot-development/decoding-hubspots-batch-
        api-207-status-e-commerce-integrators-pay-attention]): that item's 404, as per call.
        """
        return await _in_chunks(writes, self._update_deals)

    async def _update_deals(self, writes: Sequence[DealWrite]) -> list[ItemError]:
        operation = "deals.batch_update"

        async def send(indices: Sequence[int], date_only: frozenset[str]) -> dict[int, ItemError]:
            ids = [writes[n][0] for n in indices]
            with self._reading(operation):
                inputs = [
                    {"id": writes[n][0], **deal_update_json(writes[n][1], date_only)}
                    for n in indices
                ]
            path = f"{OBJECTS}/deals/batch/update"
            answer = await self._batch_write(path, operation, traced_json(inputs))
            with self._reading(operation):
                updated = {str(record["id"]) for record in answer.get("results") or ()}
                refused = self._refused(answer, operation, ids)
            gone = f"{operation}: HTTP 404: deal %s is not in the answer (not found)"
            return {
                n: refused.get(k) or (None if ids[k] in updated else self._permanent(gone % ids[k]))
                for k, n in enumerate(indices)
            }

        # An item with nothing to set is applied without a request, as `update_deal`.
        todo = {n: updates for n, (_, updates) in enumerate(writes) if updates}
        outcome = await self._batch_with_dates(todo, send) if todo else {}
        return [outcome.get(n) for n in range(len(writes))]

    async def add_notes(self, notes: Sequence[NoteWrite]) -> list[ItemError]:
        """`add_note` of many, in `notes/batch/create` (traced: a refused note is that
        item's error, the others are created)."""
        return await _in_chunks(notes, self._add_notes)

    async def _add_notes(self, notes: Sequence[NoteWrite]) -> list[ItemError]:
        operation = "notes.batch_create"
        now = datetime.fromtimestamp(self._clock(), UTC)
        payload = traced_json(note_create_json(deal_id, text, now) for deal_id, text in notes)
        answer = await self._batch_write(f"{OBJECTS}/notes/batch/create", operation, payload)
        made = self._created(answer, operation, len(notes))
        return [item if isinstance(item, CrmError) else None for item in made]

    async def create_deals(self, pairs: Sequence[tuple[Contact, NewDeal]]) -> list[Deal | CrmError]:
        """`create_deal` of many, in `deals/batch/create` with each deal's associations
        (traced: a refused deal is that item's error, the others are created)."""
        return await _in_chunks(pairs, self._create_deals)

    async def _create_deals(
        self, pairs: Sequence[tuple[Contact, NewDeal]]
    ) -> list[Deal | CrmError]:
        operation = "deals.batch_create"

        async def send(
            indices: Sequence[int], date_only: frozenset[str]
        ) -> dict[int, Deal | CrmError]:
            with self._reading(operation):
                payloads = [
                    deal_create_json(pairs[n][1], pairs[n][0].id, date_only) for n in indices
                ]
            path = f"{OBJECTS}/deals/batch/create"
            answer = await self._batch_write(path, operation, traced_json(payloads))
            made = self._created(answer, operation, len(indices))
            with self._reading(operation):
                return {
                    n: item
                    if isinstance(item, CrmError)
                    else created_deal(payloads[k], item, self._adapter.config, pairs[n][0].id)
                    for k, (n, item) in enumerate(zip(indices, made, strict=True))
                }

        outcome = await self._batch_with_dates(dict(enumerate(p[1].fields for p in pairs)), send)
        return [outcome[n] for n in range(len(pairs))]

    async def create_contacts_and_deals(
        self, pairs: Sequence[tuple[NewContact, NewDeal]]
    ) -> list[tuple[Contact, Deal] | CrmError]:
        """`create_contact_and_deal` of many: `contacts/batch/create`, then
        `deals/batch/create` for the contacts that exist. A contact HubSpot refuses is that
        item's error and its deal is not created; one refused as a duplicate (409 CONFLICT
        "Existing ID", the search index not caught up) is that contact, as per call. Once
        contacts are created the deals' failure is every remaining item's own, never the
        whole call's: a whole-call error must mean nothing was applied (or may have been);
        a deals batch refused whole is sent again deal by deal."""
        return await _in_chunks(pairs, self._create_contacts_and_deals)

    async def _create_contacts_and_deals(
        self, pairs: Sequence[tuple[NewContact, NewDeal]]
    ) -> list[tuple[Contact, Deal] | CrmError]:
        operation = "contacts.batch_create"
        with self._reading(operation):
            payloads = [contact_create_json(new, deal.company_id) for new, deal in pairs]
        path = f"{OBJECTS}/contacts/batch/create"
        answer = await self._batch_write(path, operation, traced_json(payloads))
        with self._reading(operation):
            existing = {
                n: match.group(1)
                for n, error in refused_inputs(answer).items()
                if error.get("category") == "CONFLICT"
                and (match := EXISTING_ID.search(str(error.get("message") or "")))
            }
        made = self._created(answer, operation, len(pairs))
        contacts: list[Contact | CrmError] = []
        for n, (item, payload, (_, deal)) in enumerate(zip(made, payloads, pairs, strict=True)):
            if n in existing:
                item = await self._existing_contact(existing[n], deal.company_id)
            if isinstance(item, CrmError):
                contacts.append(item)
                continue
            with self._reading(operation):
                contacts.append(created_contact(payload, item, self._adapter.config))
        ready = [(n, c) for n, c in enumerate(contacts) if isinstance(c, Contact)]
        deals: list[Deal | CrmError] = []
        if ready:
            try:
                deals = await self._create_deals([(c, pairs[n][1]) for n, c in ready])
            except PermanentCrmError:
                # Refused whole, so nothing of it applied: each deal alone finds the one
                # refused, as the bridge does with a whole batch refused.
                deals = [await self._deal_alone(c, pairs[n][1]) for n, c in ready]
            except AuthError:
                raise
            except CrmError as exc:
                deals = [exc] * len(ready)
        paired = {n: (c, d) for (n, c), d in zip(ready, deals, strict=True)}
        return [
            item if isinstance(item, CrmError) else _pair_or_error(paired[n])
            for n, item in enumerate(contacts)
        ]

    async def _deal_alone(self, contact: Contact, new: NewDeal) -> Deal | CrmError:
        try:
            return await self._adapter.create_deal(contact, new)
        except AuthError:
            raise
        except CrmError as exc:
            return exc

    async def _existing_contact(
        self, contact_id: str, company_id: str | None
    ) -> Mapping[str, JSON] | CrmError:
        """The contact a batch create found already there (see `HubSpot.create_contact`)."""
        if company_id is not None:
            try:
                await self._adapter.link_contact_to_company(contact_id, company_id)
            except AuthError:
                raise
            except CrmError as exc:
                return exc
        return {"id": contact_id, "properties": {}}

    async def _linked(
        self,
        from_type: str,
        to_type: str,
        ids: Sequence[str],
        errors: list[Mapping[str, JSON]] | None = None,
    ) -> dict[str, list[str]]:
        """Each record's linked ids of `to_type`, by associations batch reads (one per 100
        records; a record with more links than a page is read on with `after`)
        [developers.hubspot.com/docs/api-reference/crm-associations-v4/guide; the v4 spec's
        `BatchInputPublicFetchAssociationsBatchRequest`, github.com/clarkmcc/go-hubspot
        generated/v4/crm_associations/api/openapi.yaml]. The answers' per-record errors (a
        207's) are added to `errors` when given."""
        path = f"{ASSOCIATIONS}/{from_type}/{to_type}/batch/read"
        operation = f"{from_type}.associations"
        linked: dict[str, list[str]] = {}
        for chunk in _chunks(ids):
            body: dict[str, JSON] = ids_json(chunk)
            for _ in range(MAX_PAGES):
                answer = await self._adapter.send(
                    "POST", path, operation, json=body, idempotent=True
                )
                with self._reading(operation):
                    for source, targets in associations_from_json(answer).items():
                        known = linked.setdefault(source, [])
                        known.extend(t for t in targets if t not in known)
                    body = {"inputs": associations_next(answer)}
                    if errors is not None:
                        errors.extend(e for e in answer.get("errors") or () if isinstance(e, dict))
                if not body["inputs"]:
                    break
        return linked

    async def _batch_write(self, path: str, operation: str, payload: dict[str, JSON]) -> Any:
        """A batch write's answer (200, 201 or 207). A 5xx may have applied part of it:
        HubSpot does not apply a batch as one transaction, so it is a lost write
        (`maybe_applied`), not one refused (a 429 or a refused connection was not applied
        and is retried quickly by `CrmHttp`)."""
        try:
            return await self._adapter.send("POST", path, operation, json=payload)
        except TransientCrmError as exc:
            if type(exc) is not TransientCrmError or exc.maybe_applied:
                raise
            raise TransientCrmError(self._adapter.name, exc.message, maybe_applied=True) from exc

    def _created(
        self, answer: Mapping[str, JSON], operation: str, count: int
    ) -> list[Mapping[str, JSON] | CrmError]:
        """Each input's record of a traced batch create, or the error that refused it; an
        input the answer says nothing of may have been created (a lost write)."""
        with self._reading(operation):
            records = traced_results(answer, count)
            refused = self._refused(answer, operation)
        lost = f"{operation}: input %d is not in the answer"
        return [
            records.get(n)
            or refused.get(n)
            or TransientCrmError(self._adapter.name, lost % n, maybe_applied=True)
            for n in range(count)
        ]

    def _refused(
        self, answer: Mapping[str, JSON], operation: str, ids: Sequence[str] = ()
    ) -> dict[int, CrmError]:
        """The inputs a 207 refused, by index: named by their trace id (`traced_json`) or,
        in a batch by record id, by `context.ids`."""
        refused = {n: self._item_error(operation, e) for n, e in refused_inputs(answer).items()}
        for error in answer.get("errors") or ():
            for record_id in error_ids(error):
                for n, input_id in enumerate(ids):
                    if input_id == record_id:
                        refused.setdefault(n, self._item_error(operation, error))
        return refused

    def _item_error(self, operation: str, error: Mapping[str, JSON]) -> CrmError:
        category = str(error.get("category") or "")
        message = f"{operation}: {category}: {str(error.get('message') or '')[:300]}"
        if category in TRANSIENT_CATEGORIES:
            return TransientCrmError(self._adapter.name, message)
        return PermanentCrmError(self._adapter.name, message)

    def _permanent(self, message: str) -> PermanentCrmError:
        return PermanentCrmError(self._adapter.name, message)

    async def _batch_with_dates(
        self,
        updates_of: Mapping[int, Sequence[FieldUpdate]],
        send: Callable[[Sequence[int], frozenset[str]], Awaitable[dict[int, R | CrmError]]],
    ) -> dict[int, R | CrmError]:
        """`HubSpot._with_date_properties` for a batch of deal writes (item index → its fields):
        a date-time a `date` property refuses is a 400 for the whole batch update (nothing
        applied: all of it is sent again with dates) and an input's own error in a traced
        batch create (the inputs refused so are sent again, the others were created)."""
        indices = list(updates_of)
        known = self._adapter.known_date_properties

        def datetimes(n: int) -> set[str]:
            return {u.field_id for u in updates_of[n] if u.kind is FieldKind.DATETIME}

        if known is not None or not any(datetimes(n) for n in indices):
            return await send(indices, known or frozenset())
        try:
            outcome = await send(indices, frozenset())
        except PermanentCrmError as exc:
            if " HTTP 400" not in exc.message:
                raise
            dates = await self._adapter.learn_date_properties()
            if not any(datetimes(n) & dates for n in indices):
                raise
            return await send(indices, dates)
        refused = [n for n in indices if isinstance(outcome[n], PermanentCrmError)]
        if any(datetimes(n) for n in refused):
            dates = await self._adapter.learn_date_properties()
            again = [n for n in refused if datetimes(n) & dates]
            if again:
                outcome.update(await send(again, dates))
        return outcome


def _chunks(items: Sequence[T], size: int = BATCH_READ) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


async def _in_chunks(
    items: Sequence[T], form: Callable[[Sequence[T]], Awaitable[list[R]]]
) -> list[R]:
    """A batch form over HubSpot's 100 inputs a request, answers in the items' order."""
    answers: list[R] = []
    for chunk in _chunks(items):
        answers.extend(await form(chunk))
    return answers


def _pair_or_error(pair: tuple[Contact, Deal | CrmError]) -> tuple[Contact, Deal] | CrmError:
    contact, deal = pair
    return deal if isinstance(deal, CrmError) else (contact, deal)
