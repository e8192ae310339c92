"""amoCRM's batch forms (`BatchForms`, issue 20): many deliveries' step in one call, at most
`min(batch_size, 50)` items (the complex form's limit, so that every write of a batch is
one request); there is no batch search (amoCRM's `query` takes one term). Each item's
JSON is built and read by the same code as the per-call method's (`amocrm_json`).

    get_deals                GET   /api/v4/leads?filter[id][]=…&with=contacts  (paged by 250)
    list_deals               [GET  /api/v4/contacts?filter[id][]=…&with=leads  contacts
                                                     whose deal ids are not known yet]
                             GET   /api/v4/leads?filter[id][]=…   (every deal not just read)
    update_deals             PATCH /api/v4/leads                  (none when nothing to set)
    add_notes                POST  /api/v4/leads/notes            (`entity_id` per note)
    create_deals             POST  /api/v4/leads
    create_contacts_and_deals POST /api/v4/leads/complex
                             [POST /api/v4/contacts/{id}/link  per deal with a company]
amoCRM refuses an array one item of which does not validate as a whole (400
`validation-errors` naming `request_id`s): a whole-call `PermanentCrmError`, nothing
applied (sources: the comment above `AmoBatches`). Creates and notes send a
`request_id` per item and match the answer by it; updates match by lead id.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from bridge.crm.amocrm_json import (
    COMPLEX_LIMIT,
    PAGE_LIMIT,
    contact_from_json,
    contact_json,
    deal_json,
    embedded,
    int_id,
    linked_deal_json,
    note_json,
    update_json,
)
from bridge.crm.base import JSON, BatchForms, DealWrite, ItemError, NoteWrite
from bridge.domain import Contact, Deal, NewContact, NewDeal
from bridge.errors import CrmError, PermanentCrmError, TransientCrmError

if TYPE_CHECKING:
    from bridge.crm.amocrm import AmoCrm


def batch_forms(adapter: AmoCrm) -> BatchForms:
    forms = AmoBatches(adapter)
    return BatchForms(
        limit=min(adapter.config.batch_size, COMPLEX_LIMIT),
        get_deals=forms.get_deals,
        list_deals=forms.list_contacts_deals,
        update_deals=forms.update_deals,
        add_notes=forms.add_notes,
        create_deals=forms.create_deals,
        create_contacts_and_deals=forms.create_contacts_and_deals,
    )


# An array one item of which does not validate is refused whole: amoCRM answers 400
# "Request validation failed" with `validation-errors` grouped by `request_id`
# [amocrm.ru/developers/content/api/errors "Ошибки при валидации данных"; crm-notes
# §1.9], and a successful add / update answers the entities of the request
# [developers.kommo.com/reference/complex-leads, /reference/update-tags: "returns an
# array of updated entities"]. Nothing documents a 200 with some items refused, or
# a 400 after which some items were kept, and the official SDK (amocrm-api-php
# `EntitiesServices/Leads::processAction`) throws on a 400 for the whole collection
# and reconciles a success only by `request_id`. So a refusal is the whole call's
# `PermanentCrmError` and means nothing was applied: the bridge then runs each item
# alone, which finds the one refused. `request_id` is "returned unchanged"
# [developers.kommo.com, request fields of notes and leads "add"]: creates and notes
# are matched by it, updates by the lead id they answer. An item the answer lacks
# may have been applied (`_unanswered`).
class AmoBatches:
    def __init__(self, adapter: AmoCrm) -> None:
        self._adapter = adapter
        self._reading = adapter.connection.reading

    async def get_deals(self, deal_ids: Sequence[str]) -> dict[str, Deal]:
        """The deals that still exist, each read as `get_deal` reads it; one deleted (the
        list answers it flagged, or not at all) is left out: the flow takes a flagged
        deal and a missing one alike."""
        if not deal_ids:
            return {}
        params = {"filter[id][]": list(deal_ids), "with": "contacts", "limit": PAGE_LIMIT}
        records = await self._adapter.pages("/api/v4/leads", params, "leads", "leads.list")
        with self._reading("leads.list"):
            deals = [self._adapter.read_deal(record) for record in records]
        wanted = set(deal_ids)
        return {deal.id: deal for deal in deals if deal.id in wanted and not deal.is_deleted}

    async def list_contacts_deals(
        self, items: Sequence[tuple[Contact, Sequence[Deal]]]
    ) -> list[list[Deal] | CrmError]:
        """`list_deals` of many contacts in two reads at most: the contacts whose deals
        are not known yet in one, every deal not just read in the other."""
        linked = await self._linked_deal_ids([c.id for c, _ in items if c.deal_ids is None])
        answers: list[list[Deal] | CrmError] = []
        wanted: list[tuple[dict[str, Deal], list[str]]] = []
        for contact, known in items:
            deal_ids = contact.deal_ids if contact.deal_ids is not None else linked.get(contact.id)
            if deal_ids is None:
                message = f"contact {contact.id} no longer exists"
                answers.append(PermanentCrmError(self._adapter.name, message))
                wanted.append(({}, []))
                continue
            fresh = {deal.id: deal for deal in known if deal.id in deal_ids}
            wanted.append((fresh, [i for i in deal_ids if i not in fresh]))
            answers.append([])
        missing = list(dict.fromkeys(i for _, ids in wanted for i in ids))
        fetched: dict[str, Deal] = {}
        if missing:
            params = {"filter[id][]": missing, "limit": PAGE_LIMIT}
            records = await self._adapter.pages("/api/v4/leads", params, "leads", "leads.list")
            with self._reading("leads.list"):
                fetched = {deal.id: deal for deal in map(self._adapter.read_deal, records)}
        return [
            answer
            if isinstance(answer, CrmError)
            else [*fresh.values(), *(fetched[i] for i in ids if i in fetched)]
            for answer, (fresh, ids) in zip(answers, wanted, strict=True)
        ]

    async def _linked_deal_ids(self, contact_ids: Sequence[str]) -> dict[str, tuple[str, ...]]:
        """Each existing contact's deal ids (one list read; a gone contact is absent)."""
        if not contact_ids:
            return {}
        params = {"filter[id][]": list(contact_ids), "with": "leads", "limit": PAGE_LIMIT}
        records = await self._adapter.pages("/api/v4/contacts", params, "contacts", "contacts.list")
        with self._reading("contacts.list"):
            contacts = [
                contact_from_json(r, self._adapter.config, with_leads=True) for r in records
            ]
        return {contact.id: contact.deal_ids or () for contact in contacts}

    async def update_deals(self, writes: Sequence[DealWrite]) -> list[ItemError]:
        sent = [(deal_id, updates) for deal_id, updates in writes if updates]
        if not sent:
            return [None] * len(writes)
        with self._reading("leads.update"):
            payload = [{"id": int_id(deal_id), **update_json(fields)} for deal_id, fields in sent]
        answer = await self._adapter.send("PATCH", "/api/v4/leads", "leads.update", json=payload)
        updated = {str(record.get("id")) for record in embedded(answer, "leads")}
        return [
            None
            if not updates or str(int(deal_id)) in updated
            else self._unanswered("leads.update", f"lead {deal_id}")
            for deal_id, updates in writes
        ]

    async def add_notes(self, notes: Sequence[NoteWrite]) -> list[ItemError]:
        if not notes:
            return []
        with self._reading("notes.add"):
            payload = [
                {"entity_id": int_id(deal_id), **note_json(text), "request_id": str(n)}
                for n, (deal_id, text) in enumerate(notes)
            ]
        answer = await self._adapter.send("POST", "/api/v4/leads/notes", "notes.add", json=payload)
        added = by_request_id(embedded(answer, "notes"))
        return [
            None if str(n) in added else self._unanswered("notes.add", f"note on lead {deal_id}")
            for n, (deal_id, _) in enumerate(notes)
        ]

    async def create_deals(self, items: Sequence[tuple[Contact, NewDeal]]) -> list[Deal | CrmError]:
        if not items:
            return []
        with self._reading("leads.create"):
            payload = [
                {**linked_deal_json(contact, new), "request_id": str(n)}
                for n, (contact, new) in enumerate(items)
            ]
        answer = await self._adapter.send("POST", "/api/v4/leads", "leads.create", json=payload)
        created = by_request_id(embedded(answer, "leads"))
        results: list[Deal | CrmError] = []
        for n, (contact, _) in enumerate(items):
            record = created.get(str(n))
            if record is None:
                results.append(self._unanswered("leads.create", f"lead {n} of the request"))
                continue
            try:
                with self._reading("leads.create"):
                    results.append(self._adapter.sent_deal(payload[n], record["id"], contact.id))
            except PermanentCrmError as exc:
                results.append(exc)
        return results

    async def create_contacts_and_deals(
        self, items: Sequence[tuple[NewContact, NewDeal]]
    ) -> list[tuple[Contact, Deal] | CrmError]:
        if not items:
            return []
        with self._reading("leads.complex"):
            payload = [
                {**deal_json(deal, contact_json(contact)), "request_id": str(n)}
                for n, (contact, deal) in enumerate(items)
            ]
        answer = await self._adapter.send(
            "POST", "/api/v4/leads/complex", "leads.complex", json=payload
        )
        created = by_request_id(answer if isinstance(answer, list) else ())
        results: list[tuple[Contact, Deal] | CrmError] = []
        for n, (_, deal) in enumerate(items):
            record = created.get(str(n))
            if record is None:
                results.append(self._unanswered("leads.complex", f"lead {n} of the request"))
                continue
            try:
                results.append(await self._adapter.complex_created(payload[n], record, deal))
            except CrmError as exc:  # this item's answer, or its company link
                results.append(exc)
        return results

    def _unanswered(self, operation: str, item: str) -> TransientCrmError:
        """An item the answer of a write does not mention: it may have landed all the same
        (the flow's remote checks decide on the retry)."""
        message = f"{operation}: the answer lacks {item}"
        return TransientCrmError(self._adapter.name, message, maybe_applied=True)


def by_request_id(records: Iterable[JSON]) -> dict[str, dict[str, JSON]]:
    """An array write's answers by the `request_id` each carries back. A complex answer
    holds a list: a lead that duplicate control merged carries every request it took."""
    found: dict[str, dict[str, JSON]] = {}
    for record in records:
        if not isinstance(record, dict):
            continue
        ids = record.get("request_id")
        for request_id in ids if isinstance(ids, list) else [ids]:
            if request_id is not None:
                found[str(request_id)] = record
    return found
