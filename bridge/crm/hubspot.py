"""HubSpot CRM, date-versioned API 2026-09, as a `CrmAdapter`.

The mappers are in `hubspot_json`; this module is the adapter, its token endpoint (`OAUTH`)
and `build_hubspot`. The calls each method makes:

    find_contact             POST  /crm/objects/2026-09/contacts/search  one search, every key
                                   OR-ed (Telegram id property, phone + mobilephone, email)
    create_contact           POST  /crm/objects/2026-09/contacts         a 409 "Existing ID"
                                   (search index not caught up) means that contact
    update_contact           PATCH /crm/objects/2026-09/contacts/{id}     (none when nothing to set)
    list_deals               POST  /crm/objects/2026-09/deals/search     associations.contact
                                   + hs_is_closed=false, newest first (excluded stages included)
    get_deal                 GET   /crm/objects/2026-09/deals/{id}?associations=contacts
    create_deal              POST  /crm/objects/2026-09/deals            contact association
                                   (type 3) and every field in the same request
    create_contact_and_deal  the two creates above (HubSpot has no composite request)
    update_deal              PATCH /crm/objects/2026-09/deals/{id}        (none when nothing to set)
    deal_notes               GET   /crm/objects/2026-09/deals/{id}?associations=notes, then
                                   POST /crm/objects/2026-09/notes/batch/read (none without notes)
    add_note                 POST  /crm/objects/2026-09/notes            deal association (214)
    schema                   GET   /crm/pipelines/2026-09/deals, /crm/properties/2026-09/deals,
                                   /contacts and /companies
Orders (`OrderAdapter`):
    find_company             POST  /crm/objects/2026-09/companies/search  one search: the INN
                                   property (`order_fields.company_inn`) OR every word of the name
    create_company           POST  /crm/objects/2026-09/companies
    link_contact_to_company  PUT   /crm/objects/2026-09/contacts/{id}/associations/default/
                                   companies/{id}   (a PUT: linking twice links once)
    create_deal / create_contact_and_deal  the company association (deal → company 5,
                                   contact → company 1) rides in the same create
    change_deal              PATCH /crm/objects/2026-09/deals/{id}   stage, amount and fields;
                                   a lost order's stage is a lost stage (`closedlost`)
    set_deal_items           GET   /crm/objects/2026-09/deals/{id}?associations=line_items,
                                   POST …/line_items/batch/archive (none without old ones),
                                   POST …/line_items/batch/create (none without new ones)
Batch forms (`batch_forms`, issue 20), each one request for up to 100 deliveries:
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
    find_contacts            none: a search takes one query (per customer, as above)
Creates carry `objectWriteTraceId`, so a 207 names the inputs refused and the rest are
created; a 5xx of a batch write is a lost write (`maybe_applied`).
A deal write with a date-time that HubSpot refuses (400) learns once per process which
deal properties are `date` (GET /crm/properties/2026-09/deals) and is sent again with
dates (`_with_date_properties`).
Searches page through `paging.next.after`. They have their own limit (5 per second per
account, and no share of the ten-second limit of every other call), so they go through a
second lane of the connection (its own rate limiter, the same client). Notes are read through
associations, not search: what was just written is visible at once, while the search index
may lag a few seconds behind.

`options` of `[crm.NAME]`: `search_rate_limit_per_second` (default 4); `portal_id` (the
account id, for UI links in `crm-bridge show`).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from bridge.crm.base import (
    JSON,
    BatchForms,
    CompanyKey,
    Confirm,
    ConfirmCompany,
    CrmSchema,
    CustomField,
    DealWrite,
    ItemError,
    NoteWrite,
    first_confirmed,
)
from bridge.crm.connection import Connection, OAuthEndpoint, Wiring
from bridge.crm.hubspot_json import (
    ASSOCIATIONS,
    OBJECTS,
    PIPELINES,
    PROPERTIES,
    associated,
    associations_from_json,
    associations_next,
    batch_read_json,
    company_create_json,
    company_from_json,
    company_search_json,
    contact_create_json,
    contact_deals,
    contact_from_json,
    contact_search_json,
    created_contact,
    created_deal,
    date_properties,
    deal_change_json,
    deal_create_json,
    deal_from_json,
    deal_properties,
    deal_search_json,
    deal_update_json,
    error_ids,
    field_from_json,
    ids_json,
    is_custom,
    line_items_create_json,
    note_create_json,
    pipeline_from_json,
    properties_json,
    refused_inputs,
    traced_json,
    traced_results,
)
from bridge.crm.richtext import note_text
from bridge.domain import (
    Company,
    CompanyRecord,
    Contact,
    ContactPatch,
    Deal,
    DealChange,
    FieldKind,
    FieldUpdate,
    LookupKey,
    NewContact,
    NewDeal,
    OrderItem,
)
from bridge.errors import (
    AuthError,
    ConfigError,
    CrmError,
    PermanentCrmError,
    TransientCrmError,
)
from bridge.settings import CrmConfig

SEARCH_LIMIT = 100  # per page; HubSpot allows 200
MAX_PAGES = 20
BATCH_READ = 100  # inputs per batch request (read, create, archive)
DEFAULT_SEARCH_RATE = 4.0  # HubSpot allows 5 searches per second per account
_EXISTING_ID = re.compile(r"Existing ID: (\d+)")
# Categories of a batch answer's per-input error that a later try may get past; any other
# (VALIDATION_ERROR, OBJECT_NOT_FOUND, CONFLICT, ...) refuses that input as sent.
TRANSIENT_CATEGORIES = frozenset({"RATE_LIMITS", "INTERNAL_ERROR", "SERVICE_UNAVAILABLE"})
T = TypeVar("T")
R = TypeVar("R")


# POST /oauth/v3/token with a form body (v3 refuses the query parameters v1 took). Access
# tokens live `expires_in` seconds (1800 today) and HubSpot asks clients to refresh ahead
# of expiry rather than wait for a 401: 5 minutes ahead. The refresh token does not rotate
# (kept when an answer leaves it out); a refusal names itself in `status`
# (BAD_REFRESH_TOKEN, BAD_AUTH_CODE, ...).
OAUTH = OAuthEndpoint(
    "/oauth/v3/token", style="form", error_fields=("status",), rotates=False, refresh_margin=300
)


class HubSpot:
    """One HubSpot account. Build it with `build_hubspot`."""

    # Order items are line items associated to the deal (`set_deal_items`).
    keeps_items = True

    def __init__(self, connection: Connection, search_rate: float) -> None:
        self.name = connection.name
        self.config = connection.config
        self.connection = connection
        self.http = connection.http
        self.search_http = connection.lane("search_rate_limit_per_second", search_rate)
        self._reading = connection.reading
        self._clock = connection.clock
        # Deal properties of type `date` (None: not looked up yet; see _with_date_properties).
        self._date_properties: frozenset[str] | None = None
        # HubSpot has no batch search (a search takes one query), so `find_contacts` stays
        # per customer.
        self.batch_forms = BatchForms(
            limit=min(self.config.batch_size, BATCH_READ),
            get_deals=self.get_deals,
            update_deals=self.update_deals,
            add_notes=self.add_notes,
            create_deals=self.create_deals,
            create_contacts_and_deals=self.create_contacts_and_deals,
            list_deals=self.contacts_deals,
        )

    # ---- contacts -------------------------------------------------------------------

    async def find_contact(self, keys: Sequence[LookupKey], confirm: Confirm) -> Contact | None:
        hits = await self.find_contacts(keys)
        # Every hit goes to every key: `confirm` decides which key a hit really carries.
        return first_confirmed(keys, {key: hits for key in keys}, confirm)

    async def find_contacts(self, keys: Sequence[LookupKey]) -> list[Contact]:
        """Raw hits of the one search for all `keys` (unconfirmed)."""
        with self._reading("contacts.search"):
            body = contact_search_json(keys, self.config, SEARCH_LIMIT)
        if body is None:
            return []
        records = await self._search("contacts", body, "contacts.search")
        with self._reading("contacts.search"):
            return [contact_from_json(record, self.config) for record in records]

    async def create_contact(self, new: NewContact, company_id: str | None = None) -> Contact:
        """`company_id`: the new contact is that company's (in the same request). A contact
        that already existed (the 409 below) is linked to it separately."""
        with self._reading("contacts.create"):
            payload = contact_create_json(new, company_id)
        try:
            answer = await self._send(
                "POST", f"{OBJECTS}/contacts", "contacts.create", json=payload
            )
        except PermanentCrmError as exc:
            existing = _EXISTING_ID.search(exc.message) if " HTTP 409" in exc.message else None
            if existing is None:
                raise
            # The e-mail belongs to a contact the search did not show yet: that one it is.
            answer = {"id": existing.group(1), "properties": {}}
            if company_id is not None:
                await self.link_contact_to_company(answer["id"], company_id)
        with self._reading("contacts.create"):
            return created_contact(payload, answer, self.config)

    async def update_contact(self, contact_id: str, patch: ContactPatch) -> None:
        if not patch.fields:
            return
        with self._reading("contacts.update"):
            payload = {"properties": properties_json(patch.fields)}
        path = f"{OBJECTS}/contacts/{contact_id}"
        await self._send("PATCH", path, "contacts.update", json=payload)

    # ---- deals ----------------------------------------------------------------------

    async def list_deals(self, contact: Contact, known: Sequence[Deal] = ()) -> list[Deal]:
        body = deal_search_json(contact.id, self.config, SEARCH_LIMIT)
        records = await self._search("deals", body, "deals.search")
        with self._reading("deals.search"):
            found = [deal_from_json(record, self.config, (contact.id,)) for record in records]
        ids = {deal.id for deal in found}
        # A known deal the search leaves out is closed (or not indexed yet): keep it, the
        # flow decides.
        return [*found, *(deal for deal in known if deal.id not in ids)]

    async def get_deal(self, deal_id: str) -> Deal | None:
        params = {"properties": ",".join(deal_properties(self.config)), "associations": "contacts"}
        try:
            body = await self._send("GET", f"{OBJECTS}/deals/{deal_id}", "deals.get", params=params)
        except PermanentCrmError as exc:
            if " HTTP 404" in exc.message:
                return None  # deleted (archived) or never existed
            raise
        with self._reading("deals.get"):
            return deal_from_json(body, self.config)

    async def create_deal(self, contact: Contact, new: NewDeal) -> Deal:
        async def attempt(date_only: frozenset[str]) -> tuple[dict[str, JSON], Any]:
            with self._reading("deals.create"):
                payload = deal_create_json(new, contact.id, date_only)
            path = f"{OBJECTS}/deals"
            return payload, await self._send("POST", path, "deals.create", json=payload)

        payload, answer = await self._with_date_properties(new.fields, attempt)
        with self._reading("deals.create"):
            return created_deal(payload, answer, self.config, contact.id)

    async def create_contact_and_deal(
        self, contact: NewContact, deal: NewDeal
    ) -> tuple[Contact, Deal]:
        created = await self.create_contact(contact, deal.company_id)
        return created, await self.create_deal(created, deal)

    async def update_deal(self, deal_id: str, updates: Sequence[FieldUpdate]) -> None:
        if not updates:
            return

        async def attempt(date_only: frozenset[str]) -> None:
            with self._reading("deals.update"):
                payload = deal_update_json(updates, date_only)
            path = f"{OBJECTS}/deals/{deal_id}"
            await self._send("PATCH", path, "deals.update", json=payload)

        await self._with_date_properties(updates, attempt)

    # ---- orders: companies, stage moves, line items ---------------------------------

    async def find_company(self, company: Company, confirm: ConfirmCompany) -> CompanyRecord | None:
        inn_property = self.config.order_fields.company_inn
        body = company_search_json(company, inn_property, SEARCH_LIMIT)
        if body is None:
            return None
        records = await self._search("companies", body, "companies.search")
        with self._reading("companies.search"):
            hits = [company_from_json(record, inn_property) for record in records]
        keys: tuple[CompanyKey, ...] = ("inn", "name") if inn_property else ("name",)
        for key in keys:
            confirmed = [hit for hit in hits if confirm(hit, key)]
            if confirmed:
                return min(confirmed, key=lambda hit: (len(hit.id), hit.id))
        return None

    async def create_company(self, company: Company) -> CompanyRecord:
        inn_property = self.config.order_fields.company_inn
        with self._reading("companies.create"):
            payload = company_create_json(company, inn_property)
        answer = await self._send("POST", f"{OBJECTS}/companies", "companies.create", json=payload)
        with self._reading("companies.create"):
            props = {**payload["properties"], **(answer.get("properties") or {})}
            return company_from_json({"id": answer["id"], "properties": props}, inn_property)

    async def link_contact_to_company(self, contact_id: str, company_id: str) -> None:
        # The default (unlabeled) association; a PUT, so an existing link stays one
        # [developers.hubspot.com/docs/reference/api/crm/associations/association-details].
        path = f"{OBJECTS}/contacts/{contact_id}/associations/default/companies/{company_id}"
        await self._send("PUT", path, "contacts.link_company")

    async def change_deal(self, deal_id: str, change: DealChange) -> None:
        async def attempt(date_only: frozenset[str]) -> None:
            with self._reading("deals.change"):
                payload = deal_change_json(change, date_only)
            if not payload["properties"]:
                return
            path = f"{OBJECTS}/deals/{deal_id}"
            await self._send("PATCH", path, "deals.change", json=payload)

        await self._with_date_properties(change.fields, attempt)

    async def set_deal_items(self, deal_id: str, items: Sequence[OrderItem], currency: str) -> None:
        """The deal's line items become `items`: the old ones are archived and new ones
        created with their deal association. Line items belong to one deal, so they are
        replaced rather than edited; the read first makes a repeat harmless (it archives
        what the last attempt created). `currency` is the deal's (HubSpot prices line
        items in the deal's currency)."""
        params = {"properties": "hs_object_id", "associations": "line_items"}
        body = await self._send("GET", f"{OBJECTS}/deals/{deal_id}", "deals.items", params=params)
        with self._reading("deals.items"):
            old = list(associated(body, "line_items"))
        for start in range(0, len(old), BATCH_READ):
            payload = ids_json(old[start : start + BATCH_READ])
            path = f"{OBJECTS}/line_items/batch/archive"
            await self._send("POST", path, "line_items.archive", json=payload)
        for start in range(0, len(items), BATCH_READ):
            with self._reading("line_items.create"):
                payload = line_items_create_json(deal_id, items[start : start + BATCH_READ])
            path = f"{OBJECTS}/line_items/batch/create"
            await self._send("POST", path, "line_items.create", json=payload)

    # ---- notes ----------------------------------------------------------------------

    async def deal_notes(self, deal_id: str) -> list[str]:
        params = {"properties": "hs_object_id", "associations": "notes"}
        path = f"{OBJECTS}/deals/{deal_id}"
        body = await self._send("GET", path, "deals.notes", params=params)
        with self._reading("deals.notes"):
            note_ids = list(associated(body, "notes"))
        records: list[dict[str, JSON]] = []
        for start in range(0, len(note_ids), BATCH_READ):
            chunk = note_ids[start : start + BATCH_READ]
            payload = batch_read_json(chunk, ["hs_note_body", "hs_timestamp"])
            answer = await self._send(
                "POST", f"{OBJECTS}/notes/batch/read", "notes.read", json=payload
            )
            records.extend(answer.get("results") or ())
        with self._reading("notes.read"):
            records.sort(key=lambda r: (str(r["properties"].get("hs_timestamp") or ""), r["id"]))
            return [note_text(str(r["properties"].get("hs_note_body") or "")) for r in records]

    async def add_note(self, deal_id: str, text: str) -> None:
        now = datetime.fromtimestamp(self._clock(), UTC)
        payload = note_create_json(deal_id, text, now)
        await self._send("POST", f"{OBJECTS}/notes", "notes.create", json=payload)

    # ---- batch forms (issue 20): one request for the same step of many deliveries ------

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
                deal_from_json(r, self.config, contacts.get(str(r["id"]), ())) for r in records
            ]
        return {deal.id: deal for deal in deals}

    async def _deal_records(self, deal_ids: Sequence[str]) -> list[Mapping[str, JSON]]:
        """The records of the deals that exist, by deals batch reads (one per 100)."""
        records: list[Mapping[str, JSON]] = []
        for chunk in _chunks(list(dict.fromkeys(deal_ids))):
            payload = batch_read_json(chunk, deal_properties(self.config))
            path = f"{OBJECTS}/deals/batch/read"
            answer = await self._send("POST", path, "deals.read", json=payload, idempotent=True)
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
                or contact_deals(contact.id, linked.get(contact.id, ()), by_id, known, self.config)
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
                    else created_deal(payloads[k], item, self.config, pairs[n][0].id)
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
                and (match := _EXISTING_ID.search(str(error.get("message") or "")))
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
                contacts.append(created_contact(payload, item, self.config))
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
            return await self.create_deal(contact, new)
        except AuthError:
            raise
        except CrmError as exc:
            return exc

    async def _existing_contact(
        self, contact_id: str, company_id: str | None
    ) -> Mapping[str, JSON] | CrmError:
        """The contact a batch create found already there (see `create_contact`)."""
        if company_id is not None:
            try:
                await self.link_contact_to_company(contact_id, company_id)
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
                answer = await self._send("POST", path, operation, json=body, idempotent=True)
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
            return await self._send("POST", path, operation, json=payload)
        except TransientCrmError as exc:
            if type(exc) is not TransientCrmError or exc.maybe_applied:
                raise
            raise TransientCrmError(self.name, exc.message, maybe_applied=True) from exc

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
            or TransientCrmError(self.name, lost % n, maybe_applied=True)
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
            return TransientCrmError(self.name, message)
        return PermanentCrmError(self.name, message)

    def _permanent(self, message: str) -> PermanentCrmError:
        return PermanentCrmError(self.name, message)

    async def _batch_with_dates(
        self,
        updates_of: Mapping[int, Sequence[FieldUpdate]],
        send: Callable[[Sequence[int], frozenset[str]], Awaitable[dict[int, R | CrmError]]],
    ) -> dict[int, R | CrmError]:
        """`_with_date_properties` for a batch of deal writes (item index → its fields):
        a date-time a `date` property refuses is a 400 for the whole batch update (nothing
        applied: all of it is sent again with dates) and an input's own error in a traced
        batch create (the inputs refused so are sent again, the others were created)."""
        indices = list(updates_of)
        known = self._date_properties

        def datetimes(n: int) -> set[str]:
            return {u.field_id for u in updates_of[n] if u.kind is FieldKind.DATETIME}

        if known is not None or not any(datetimes(n) for n in indices):
            return await send(indices, known or frozenset())
        try:
            outcome = await send(indices, frozenset())
        except PermanentCrmError as exc:
            if " HTTP 400" not in exc.message:
                raise
            dates = await self._learn_date_properties()
            if not any(datetimes(n) & dates for n in indices):
                raise
            return await send(indices, dates)
        refused = [n for n in indices if isinstance(outcome[n], PermanentCrmError)]
        if any(datetimes(n) for n in refused):
            dates = await self._learn_date_properties()
            again = [n for n in refused if datetimes(n) & dates]
            if again:
                outcome.update(await send(again, dates))
        return outcome

    # ---- schema, credentials, lifecycle ---------------------------------------------

    async def schema(self) -> CrmSchema:
        body = await self._send("GET", f"{PIPELINES}/deals", "pipelines.list")
        fields: list[CustomField] = []
        kinds = (("leads", "deals"), ("contacts", "contacts"), ("companies", "companies"))
        for entity, object_type in kinds:
            path = f"{PROPERTIES}/{object_type}"
            answer = await self._send("GET", path, "properties.list")
            with self._reading("properties.list"):
                records = [r for r in answer.get("results") or () if is_custom(r)]
                fields.extend(field_from_json(record, entity) for record in records)
        with self._reading("pipelines.list"):
            pipelines = tuple(pipeline_from_json(p) for p in body.get("results") or ())
        return CrmSchema(pipelines=pipelines, fields=tuple(fields))

    # ---- plumbing -------------------------------------------------------------------

    async def _with_date_properties(
        self, updates: Sequence[FieldUpdate], attempt: Callable[[frozenset[str]], Awaitable[T]]
    ) -> T:
        """A deal write whose date-times fit their properties' types.

        A date-time goes out with its time of day, which a `date` property refuses with a
        400 (see `property_value`). Which deal properties are dates is learnt on the first
        400 of a write carrying a date-time (one properties list per process), and the
        write is sent again with dates: nothing extra for accounts whose fields are
        date-times. A 400 leaves nothing applied, so the resend cannot double a deal."""
        known = self._date_properties
        try:
            return await attempt(known or frozenset())
        except PermanentCrmError as exc:
            datetimes = {u.field_id for u in updates if u.kind is FieldKind.DATETIME}
            if known is not None or not datetimes or " HTTP 400" not in exc.message:
                raise
            if not datetimes & await self._learn_date_properties():
                raise
        return await attempt(await self._learn_date_properties())

    async def _learn_date_properties(self) -> frozenset[str]:
        """The deal properties of type `date`, looked up once per process."""
        if self._date_properties is None:
            answer = await self._send("GET", f"{PROPERTIES}/deals", "properties.list")
            with self._reading("properties.list"):
                self._date_properties = date_properties(answer.get("results") or ())
        return self._date_properties

    async def _search(
        self, object_type: str, body: dict[str, JSON], operation: str
    ) -> list[dict[str, JSON]]:
        path = f"{OBJECTS}/{object_type}/search"
        records: list[dict[str, JSON]] = []
        for _ in range(MAX_PAGES):
            answer = await self._send("POST", path, operation, json=body, search=True)
            with self._reading(operation):
                records.extend(answer.get("results") or ())
                after = ((answer.get("paging") or {}).get("next") or {}).get("after")
            if not after:
                break
            body = {**body, "after": str(after)}
        return records

    async def _send(
        self, method: str, path: str, operation: str, *, search: bool = False, **kwargs: Any
    ) -> Any:
        """One request through the general or the search lane; the JSON answer."""
        http = self.search_http if search else self.http
        return await self.connection.send(method, path, operation, http=http, **kwargs)


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


# ---- the builder --------------------------------------------------------------------


def search_rate(config: CrmConfig) -> float:
    """`options.search_rate_limit_per_second`, validated (ConfigError names the key)."""
    unknown = set(config.options) - {"search_rate_limit_per_second", "portal_id"}
    if unknown:
        raise ConfigError(f"crm options not known to HubSpot: {', '.join(sorted(unknown))}")
    value = config.options.get("search_rate_limit_per_second", DEFAULT_SEARCH_RATE)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"options.search_rate_limit_per_second = {value!r}: a positive number")
    return float(value)


def build_hubspot(wiring: Wiring) -> HubSpot:
    """The adapter on its connection, with a second rate limiter for searches."""
    searches_per_second = search_rate(wiring.config)
    secrets = wiring.secrets("ACCESS_TOKEN")
    return HubSpot(Connection(wiring, secrets, OAUTH, empty_answer={}), searches_per_second)
