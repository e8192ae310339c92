"""amoCRM (and Kommo: the same API on *.kommo.com), API v4, as a `CrmAdapter`.

The mappers are in `amocrm_json`; this module is the adapter, its token endpoint (`OAUTH`)
and `build_amocrm` on its `Connection`. Calls per method:

    find_contact(s)          GET   /api/v4/contacts?query=…&with=leads&limit=50  (per key)
    create_contact           POST  /api/v4/contacts
    update_contact           PATCH /api/v4/contacts/{id}             (none when nothing to set)
    list_deals               [GET  /api/v4/contacts/{id}?with=leads  only when ids unknown]
                             GET   /api/v4/leads?filter[id][]=…      (none when all known)
    get_deal                 GET   /api/v4/leads/{id}?with=contacts
    create_deal              POST  /api/v4/leads
    create_contact_and_deal  POST  /api/v4/leads/complex
                             [POST /api/v4/contacts/{id}/link  with a company: see there]
    update_deal              PATCH /api/v4/leads/{id}                (none when nothing to set)
    deal_notes / add_note    GET / POST /api/v4/leads/{id}/notes
    schema                   GET   /api/v4/leads/pipelines, /leads/custom_fields,
                                   /contacts/custom_fields [, /companies/custom_fields
                                   for a section taking orders]
Orders (`OrderAdapter`):
    find_company             GET   /api/v4/companies?query=<INN>     then, on no confirmed
                             GET   /api/v4/companies?query=<word>    hit, by the name's
                                                                      longest word
    create_company           POST  /api/v4/companies
    link_contact_to_company  POST  /api/v4/contacts/{id}/link        (amoCRM keeps one
                                                                      link per pair)
    change_deal              PATCH /api/v4/leads/{id}                (stage, price, fields)
    set_deal_items           GET   /api/v4/catalogs/{c}/elements?query=<SKU>  per SKU not
                                                                      yet known to this process
                             [POST / PATCH /api/v4/catalogs/{c}/elements  missing / stale]
                             GET   /api/v4/leads/{id}/links?filter[to_catalog_id]=c
                             [POST /api/v4/leads/{id}/unlink, /link  only what differs]
`create_deal` / `create_contact_and_deal` link the deal to its company in the same call
(`_embedded.companies`); the contact complex creates needs one link more. A deal's items
are catalog elements of the products catalog `order_catalog_id`, found by their SKU
field and linked with `metadata.quantity`.
Lists are paged while the answer carries `_links.next`; an empty list is HTTP 204.

Batch forms (`batch_forms`, issue 20): `amocrm_batch`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from decimal import Decimal
from typing import Any

from bridge.crm.amocrm_batch import batch_forms
from bridge.crm.amocrm_json import (
    PAGE_LIMIT,
    catalog_links,
    change_json,
    company_from_json,
    company_json,
    contact_from_json,
    contact_json,
    custom_field_from_json,
    deal_from_json,
    deal_json,
    element_json,
    element_matches,
    element_state,
    embedded,
    field_values_json,
    int_id,
    linked_deal_json,
    name_search_word,
    note_json,
    pipeline_from_json,
    quantity_json,
    search_query,
    update_json,
)
from bridge.crm.base import (
    JSON,
    CompanyKey,
    Confirm,
    ConfirmCompany,
    CrmSchema,
    CustomField,
    first_confirmed,
)
from bridge.crm.connection import Connection, OAuthEndpoint, Wiring
from bridge.domain import (
    Company,
    CompanyRecord,
    Contact,
    ContactPatch,
    Deal,
    DealChange,
    FieldUpdate,
    LookupKey,
    NewContact,
    NewDeal,
    OrderItem,
)
from bridge.errors import AuthError, ConfigError, PermanentCrmError

SEARCH_LIMIT = 50
MAX_PAGES = 100  # a runaway `next` link must not loop forever
_FORBIDDEN = re.compile(r"\S+ \S+: HTTP 403\b")  # how `error_for_status` words a 403


# ---- the adapter --------------------------------------------------------------------

# POST /oauth2/access_token with a JSON body; each refresh answers a new refresh token
# (the old one is spent); a refusal explains itself in `hint` ("Token has been revoked").
OAUTH = OAuthEndpoint(
    "/oauth2/access_token",
    style="json",
    error_fields=("hint",),
    rotates=True,
    refused=frozenset({400, 401, 403, 404}),
    redirect_on_refresh=True,
)


class AmoCrm:
    """One amoCRM account. Build it with `build_amocrm`."""

    def __init__(self, connection: Connection) -> None:
        self.name = connection.name
        self.config = connection.config
        self.connection = connection
        self._reading = connection.reading
        self._clock = connection.clock
        orders = self.config.order_fields
        self._days = tuple(f for f in (orders.installation_date, orders.dismantle_date) if f)
        # Items are catalog elements: only with a products catalog to find them in.
        self.keeps_items = bool(self.config.order_catalog_id)
        # Companies' fields are read by `schema` only for a section taking orders (for
        # discover to propose company_inn and check to verify it).
        self._company_fields = self.config.takes_orders or bool(orders.company_inn)
        # SKU → catalog element id, name and price, as last read or written: a returning
        # product costs no search (a manager's later edit is caught by the link answer).
        self._elements: dict[str, tuple[int, str, Decimal | None]] = {}
        self.batch_forms = batch_forms(self)

    async def find_contact(self, keys: Sequence[LookupKey], confirm: Confirm) -> Contact | None:
        # One search per key, stopping at the first confirmed hit: a returning customer
        # found by Telegram id costs one call, not three.
        for key in keys:
            found = first_confirmed([key], {key: await self.find_contacts(key)}, confirm)
            if found is not None:
                return found
        return None

    async def find_contacts(self, key: LookupKey) -> list[Contact]:
        params = {"query": search_query(key), "with": "leads", "limit": SEARCH_LIMIT}
        body = await self.send("GET", "/api/v4/contacts", "contacts.search", params=params)
        with self._reading("contacts.search"):
            return [
                contact_from_json(record, self.config, with_leads=True)
                for record in embedded(body, "contacts")
            ]

    async def create_contact(self, new: NewContact) -> Contact:
        with self._reading("contacts.create"):
            payload = [contact_json(new)]
        answer = await self.send("POST", "/api/v4/contacts", "contacts.create", json=payload)
        with self._reading("contacts.create"):
            [created] = embedded(answer, "contacts")
            # Its deals are unknown from here on (a deal may be created for it next):
            # `list_deals` reads them rather than trusting "none".
            return replace(self._sent_contact(payload[0], created["id"]), deal_ids=None)

    async def update_contact(self, contact_id: str, patch: ContactPatch) -> None:
        if not patch.fields:
            return
        with self._reading("contacts.update"):
            payload = {"custom_fields_values": field_values_json(patch.fields)}
        path = f"/api/v4/contacts/{contact_id}"
        await self.send("PATCH", path, "contacts.update", json=payload)

    async def list_deals(self, contact: Contact, known: Sequence[Deal] = ()) -> list[Deal]:
        deal_ids = contact.deal_ids
        if deal_ids is None:
            path = f"/api/v4/contacts/{contact.id}"
            body = await self.send("GET", path, "contacts.get", params={"with": "leads"})
            if body is None:
                raise PermanentCrmError(self.name, f"contact {contact.id} no longer exists")
            with self._reading("contacts.get"):
                deal_ids = contact_from_json(body, self.config, with_leads=True).deal_ids or ()
        fresh = {deal.id: deal for deal in known if deal.id in deal_ids}
        missing = [deal_id for deal_id in deal_ids if deal_id not in fresh]
        if not missing:
            return list(fresh.values())
        params = {"filter[id][]": missing, "limit": PAGE_LIMIT}
        records = await self.pages("/api/v4/leads", params, "leads", "leads.list")
        with self._reading("leads.list"):
            fetched = [self.read_deal(record) for record in records]
        return [*fresh.values(), *fetched]

    async def get_deal(self, deal_id: str) -> Deal | None:
        path = f"/api/v4/leads/{deal_id}"
        try:
            body = await self.send("GET", path, "leads.get", params={"with": "contacts"})
        except PermanentCrmError:
            return None  # 404: deleted for good
        if body is None:
            return None
        with self._reading("leads.get"):
            return self.read_deal(body)

    async def create_deal(self, contact: Contact, new: NewDeal) -> Deal:
        with self._reading("leads.create"):
            payload = [linked_deal_json(contact, new)]
        answer = await self.send("POST", "/api/v4/leads", "leads.create", json=payload)
        with self._reading("leads.create"):
            [created] = embedded(answer, "leads")
            return self.sent_deal(payload[0], created["id"], contact.id)

    async def create_contact_and_deal(
        self, contact: NewContact, deal: NewDeal
    ) -> tuple[Contact, Deal]:
        with self._reading("leads.complex"):
            payload = [deal_json(deal, contact_json(contact))]
        answer = await self.send("POST", "/api/v4/leads/complex", "leads.complex", json=payload)
        with self._reading("leads.complex"):
            [created] = answer
        return await self.complex_created(payload[0], created, deal)

    async def complex_created(
        self, sent: dict[str, JSON], created: JSON, deal: NewDeal
    ) -> tuple[Contact, Deal]:
        """One lead of a `leads/complex` answer: its new contact and deal, as sent."""
        with self._reading("leads.complex"):
            if not created.get("contact_id"):
                raise ValueError(f"lead {created.get('id')} came back without a contact")
            sent_contact = sent["_embedded"]["contacts"][0]
            new = self._sent_contact(sent_contact, created["contact_id"])
            new = replace(new, deal_ids=(str(created["id"]),))
        if deal.company_id is not None:
            # complex links the lead to an existing company, but links a contact and a
            # company to each other only when it creates both [leads-api "Комплексное
            # добавление"]: the new contact joins its company with one link more.
            await self.link_contact_to_company(new.id, deal.company_id)
        return new, self.sent_deal(sent, created["id"], new.id)

    async def update_deal(self, deal_id: str, updates: Sequence[FieldUpdate]) -> None:
        if not updates:
            return
        with self._reading("leads.update"):
            payload = update_json(updates)
        await self.send("PATCH", f"/api/v4/leads/{deal_id}", "leads.update", json=payload)

    async def deal_notes(self, deal_id: str) -> list[str]:
        params = {"filter[note_type][]": "common", "limit": PAGE_LIMIT}
        path = f"/api/v4/leads/{deal_id}/notes"
        notes = await self.pages(path, params, "notes", "notes.list")
        with self._reading("notes.list"):
            return [str(n["params"]["text"]) for n in notes if n.get("note_type") == "common"]

    async def add_note(self, deal_id: str, text: str) -> None:
        payload = [note_json(text)]
        await self.send("POST", f"/api/v4/leads/{deal_id}/notes", "notes.add", json=payload)

    async def schema(self) -> CrmSchema:
        body = await self.send("GET", "/api/v4/leads/pipelines", "pipelines.list")
        fields: list[CustomField] = []
        entities = ("leads", "contacts", "companies")[: 3 if self._company_fields else 2]
        for entity in entities:
            path = f"/api/v4/{entity}/custom_fields"
            records = await self.pages(path, {"limit": 50}, "custom_fields", "fields.list")
            with self._reading("fields.list"):
                fields.extend(custom_field_from_json(record, entity) for record in records)
        with self._reading("pipelines.list"):
            pipelines = tuple(pipeline_from_json(p) for p in embedded(body, "pipelines"))
        return CrmSchema(pipelines=pipelines, fields=tuple(fields))

    # ---- orders ---------------------------------------------------------------------

    async def find_company(self, company: Company, confirm: ConfirmCompany) -> CompanyRecord | None:
        inn_field = self.config.order_fields.company_inn
        searches: list[tuple[CompanyKey, str]] = []
        if company.inn and inn_field:
            searches.append(("inn", company.inn))
        word = name_search_word(company.name)
        if word:
            searches.append(("name", word))
        for key, query in searches:
            params = {"query": query, "limit": SEARCH_LIMIT}
            body = await self.send("GET", "/api/v4/companies", "companies.search", params=params)
            with self._reading("companies.search"):
                hits = [company_from_json(r, inn_field) for r in embedded(body, "companies")]
            confirmed = [hit for hit in hits if confirm(hit, key)]
            if confirmed:
                return min(confirmed, key=lambda hit: int(hit.id))
        return None

    async def create_company(self, company: Company) -> CompanyRecord:
        inn_field = self.config.order_fields.company_inn
        with self._reading("companies.create"):
            payload = [company_json(company, inn_field)]
        answer = await self.send("POST", "/api/v4/companies", "companies.create", json=payload)
        with self._reading("companies.create"):
            [created] = embedded(answer, "companies")
            inn = company.inn if inn_field else ""
            return CompanyRecord(id=str(created["id"]), name=company.name, inn=inn)

    async def link_contact_to_company(self, contact_id: str, company_id: str) -> None:
        with self._reading("contacts.link"):
            payload = [{"to_entity_id": int_id(company_id), "to_entity_type": "companies"}]
        path = f"/api/v4/contacts/{int_id(contact_id)}/link"
        await self.send("POST", path, "contacts.link", json=payload)

    async def change_deal(self, deal_id: str, change: DealChange) -> None:
        with self._reading("leads.update"):
            payload = change_json(change)
        if payload:
            await self.send("PATCH", f"/api/v4/leads/{deal_id}", "leads.update", json=payload)

    async def set_deal_items(self, deal_id: str, items: Sequence[OrderItem], currency: str) -> None:
        # `currency` is the account's: a catalog price has none of its own.
        catalog = self.config.order_catalog_id
        if not catalog:
            return  # no products catalog: the note lists the items
        if not catalog.isdigit():
            raise ConfigError(f"crm.{self.name}.order_catalog_id: {catalog!r} is not a number")
        catalog_id = int(catalog)
        wanted: dict[int, Decimal] = {}
        elements = await self._elements_for(catalog_id, items)
        for item in items:
            element_id = elements[item.product_id]
            wanted[element_id] = wanted.get(element_id, Decimal(0)) + item.quantity
        path = f"/api/v4/leads/{int_id(deal_id)}/links"
        params = {"filter[to_catalog_id]": catalog_id, "limit": PAGE_LIMIT}
        body = await self.send("GET", path, "leads.links", params=params)
        with self._reading("leads.links"):
            linked = catalog_links(body, catalog_id)
        # A quantity changes by unlinking and linking again: what a re-link of a linked
        # element does to its quantity is not documented.
        stale = [eid for eid, quantity in linked.items() if wanted.get(eid) != quantity]
        fresh = [eid for eid, quantity in wanted.items() if linked.get(eid) != quantity]
        lead = f"/api/v4/leads/{int_id(deal_id)}"
        if stale:
            gone = [_element_link(eid, catalog_id) for eid in stale]
            await self.send("POST", f"{lead}/unlink", "leads.unlink", json=gone)
        if fresh:
            links = [_element_link(eid, catalog_id, wanted[eid]) for eid in fresh]
            try:
                await self.send("POST", f"{lead}/link", "leads.link", json=links)
            except PermanentCrmError:
                # An element a manager deleted since this process found it: search again
                # on the retry.
                self._elements.clear()
                raise

    async def _elements_for(self, catalog_id: int, items: Sequence[OrderItem]) -> dict[str, int]:
        """SKU → element id for every item: found by SKU (searched once per process),
        created when missing, and given the order's name and price when they differ."""
        base = f"/api/v4/catalogs/{catalog_id}/elements"
        latest = {item.product_id: item for item in items}
        for sku in latest:
            if sku in self._elements:
                continue
            params = {"query": sku, "limit": SEARCH_LIMIT}
            body = await self.send("GET", base, "catalog.search", params=params)
            with self._reading("catalog.search"):
                hits = [r for r in embedded(body, "elements") if element_matches(r, sku)]
                if hits:
                    oldest = min(hits, key=lambda record: int(record["id"]))
                    self._elements[sku] = (int(oldest["id"]), *element_state(oldest))
        missing = [item for sku, item in latest.items() if sku not in self._elements]
        changed = [
            item
            for sku, item in latest.items()
            if sku in self._elements and self._elements[sku][1:] != (item.name, item.price)
        ]
        if missing:
            with self._reading("catalog.create"):
                payload = [element_json(item) for item in missing]
            answer = await self.send("POST", base, "catalog.create", json=payload)
            with self._reading("catalog.create"):
                created = embedded(answer, "elements")
                for item, record in zip(missing, created, strict=True):
                    self._elements[item.product_id] = (int(record["id"]), item.name, item.price)
        if changed:
            with self._reading("catalog.update"):
                payload = [element_json(i, self._elements[i.product_id][0]) for i in changed]
            await self.send("PATCH", base, "catalog.update", json=payload)
            for item in changed:
                self._elements[item.product_id] = (
                    self._elements[item.product_id][0],
                    item.name,
                    item.price,
                )
        return {sku: self._elements[sku][0] for sku in latest}

    async def send(self, method: str, path: str, operation: str, **kwargs: Any) -> JSON:
        """One request through the connection; the JSON answer, or None for a 204.

        amoCRM answers 403 for the account or its token rather than the request (an account
        blocked for exceeding the rate, an IP ban, a user without API rights): no delivery
        can succeed until an operator acts, so it pauses the CRM like a 401 instead of
        failing every delivery in turn."""
        try:
            return await self.connection.send(method, path, operation, **kwargs)
        except PermanentCrmError as exc:
            if _FORBIDDEN.match(exc.message):
                raise AuthError(self.name, exc.message) from exc
            raise

    async def pages(
        self, path: str, params: dict[str, Any], key: str, operation: str
    ) -> list[dict[str, JSON]]:
        # amoCRM's `next` href is absolute on the account domain; asking for the next page
        # number on our own base URL keeps a configured proxy in the path.
        items: list[dict[str, JSON]] = []
        for page in range(1, MAX_PAGES + 1):
            body = await self.send("GET", path, operation, params={**params, "page": page})
            items.extend(embedded(body, key))
            links = body.get("_links") if isinstance(body, dict) else None
            if not (isinstance(links, dict) and links.get("next")):
                break
        return items

    def read_deal(self, record: Mapping[str, JSON]) -> Deal:
        return deal_from_json(record, self.config.closed_status_ids, self._days)

    def _sent_contact(self, sent: dict[str, JSON], contact_id: object) -> Contact:
        # What was sent is what amoCRM stored: no read-back GET.
        return contact_from_json({**sent, "id": contact_id}, self.config, with_leads=True)

    def sent_deal(self, sent: dict[str, JSON], deal_id: object, contact_id: str) -> Deal:
        record = {**sent, "id": deal_id, "updated_at": int(self._clock())}
        record["_embedded"] = {"contacts": [{"id": contact_id}]}
        values = record.get("custom_fields_values") or []
        # What was sent is RFC 3339 for a date: read it back as the day it names.
        record["custom_fields_values"] = [
            {**entry, "values": [{"value": str(entry["values"][0]["value"])[:10]}]}
            if str(entry.get("field_id")) in self._days
            else entry
            for entry in values
        ]
        return deal_from_json(record, self.config.closed_status_ids)


def _element_link(
    element_id: int, catalog_id: int, quantity: Decimal | None = None
) -> dict[str, JSON]:
    metadata: dict[str, JSON] = {"catalog_id": catalog_id}
    if quantity is not None:
        metadata["quantity"] = quantity_json(quantity)
    return {"to_entity_id": element_id, "to_entity_type": "catalog_elements", "metadata": metadata}


# ---- the builder --------------------------------------------------------------------


def build_amocrm(wiring: Wiring) -> AmoCrm:
    """The adapter on its connection (one HTTP client, rate limiter, token source)."""
    # An empty list is a 204.
    return AmoCrm(Connection(wiring, wiring.secrets("ACCESS_TOKEN"), OAUTH, empty_answer=None))
