"""Zoho CRM (API v8) as a `CrmAdapter`.

The mappers are in `zoho_json`, the token endpoint's quirks and the API domain in
`zoho_oauth`, credits and concurrency in `zoho_credits`; this module is the adapter and
`build_zoho`, on the `Connection` every adapter shares.
The calls each method makes (credits):

    find_contact             POST /crm/v8/__composite_requests: the search (every key OR-ed
                                  in one criteria: Telegram id, Phone + Mobile, Email)
                                  and the COQL of its first hit's deals, kept for
                                  list_deals                                           (1)
    create_contact           POST /crm/v8/Contacts                                     (1)
    update_contact           PUT  /crm/v8/Contacts/{id}    (none when nothing to set;  1)
    list_deals               none when find_contact read them; else POST /crm/v8/coql,
                                  the contact's deals by Contact_Name, newest first    (1)
    get_deal                 GET  /crm/v8/Deals/{id}?fields=…                           (1)
    create_deal              POST /crm/v8/Deals  linked by Contact_Name, fields set     (1)
    create_contact_and_deal  POST /crm/v8/__composite_requests: the contact, then the deal
                                  referring to it (`@{c:$.data[0].details.id}`)        (1)
    update_deal              PUT  /crm/v8/Deals/{id}       (none when nothing to set;  1)
    deal_notes               GET  /crm/v8/Deals/{id}/Notes?fields=…                     (1)
    add_note                 POST /crm/v8/Notes  Parent_Id + $se_module                 (1)
    schema                   GET  /crm/v8/settings/layouts?module=Deals, /settings/pipeline
                                  per layout, /settings/fields for Deals, Contacts (and
                                  Accounts when the section takes orders)
Orders (an `OrderAdapter`; a company is an Account, a deal holds no items):
    find_company             POST /crm/v8/coql  Accounts by the INN field OR every word of
                                  the name, oldest first                               (1)
    create_company           POST /crm/v8/Accounts                                     (1)
    link_contact_to_company  PUT  /crm/v8/Contacts/{id}  Account_Name (again: harmless;  1)
    change_deal              PUT  /crm/v8/Deals/{id}  Pipeline, Stage, Amount, fields in one
                                  write                    (none when nothing to set;  1)
    set_deal_items           none: Deals have no line items (`keeps_items` False); the note
                                  lists the items
`create_deal` and `create_contact_and_deal` set the deal's (and the new contact's)
`Account_Name` in the same request when the order has a company.
Searches and lists answer 204 with no body when nothing matches. Every request first takes
its credits from the pool (`options.daily_credits`, rolling 24 h) and its share of the
org's concurrency (`options.concurrency`; a composite call takes five).

`[crm.NAME.options]`: `data_centre` (us, eu, in, au, jp, ca, cn, sa; required),
`daily_credits` (default 50000), `concurrency` (default 10), `accounts_url` (the data
centre's accounts server unless a proxy stands in for it).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from bridge.crm.base import (
    JSON,
    Confirm,
    ConfirmCompany,
    CrmSchema,
    CustomField,
    first_confirmed,
)
from bridge.crm.connection import Connection, OAuthEndpoint, Wiring
from bridge.crm.zoho_credits import (
    COMPOSITE_UNITS,
    Concurrency,
    CreditPool,
    credit_cost,
    credit_hooks,
)
from bridge.crm.zoho_json import (
    API,
    COQL_LIMIT,
    DATA_CENTRES,
    SEARCH_PAGE,
    TOKEN_PATH,
    DataCentre,
    SubRequest,
    closed_stages,
    companies_query,
    company_from_record,
    company_json,
    composite_body,
    composite_items,
    contact_fields,
    contact_from_record,
    contact_json,
    custom_fields_from_json,
    deal_change_json,
    deal_fields,
    deal_from_record,
    deal_json,
    deals_query,
    deals_query_of,
    error_from_body,
    fields_json,
    layout_ids,
    more_records,
    new_deal_read,
    note_json,
    pipelines_from_json,
    record_id,
    records_body,
    records_of,
    reference,
    search_criteria,
    sub_responses,
    write_details,
)
from bridge.crm.zoho_oauth import ApiDomain, token_hooks
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
from bridge.errors import ConfigError, CrmError, PermanentCrmError
from bridge.tokens import BearerAuth

DEFAULT_DAILY_CREDITS = 50_000  # a Standard org's base pool, before licences and add-ons
DEFAULT_CONCURRENCY = 10  # Standard edition
MAX_PAGES = 10  # search stops at 2,000 records (10 × 200)
KEEP_DEALS_SECONDS = 30.0  # deals read with the contact serve the flow's next step only
OPTIONS = ("data_centre", "daily_credits", "concurrency", "accounts_url")


class Zoho:
    """One Zoho CRM org. Build it with `build_zoho`; it owns one HTTP client."""

    # Deals hold no products with quantities and prices (see `zoho_json`): the note does.
    keeps_items = False

    def __init__(
        self,
        connection: Connection,
        pool: CreditPool,
        gate: Concurrency,
        domain: ApiDomain,
        zone: ZoneInfo,
    ) -> None:
        self.name = connection.name
        self.config = connection.config
        self.connection = connection
        self.pool = pool
        self.gate = gate
        self.domain = domain
        self._zone = zone
        self._reading = connection.reading
        # Deals the lookup read along with the contact, for the `list_deals` right after.
        self._deals_read: dict[str, tuple[float, list[Deal]]] = {}
        connection.extra_health = self._health

    async def find_contact(self, keys: Sequence[LookupKey], confirm: Confirm) -> Contact | None:
        """One composite call: the search for every key (OR-ed criteria), and the deals of
        its first hit, which is nearly always the contact the flow confirms; its deals are
        then kept for the `list_deals` that follows. The flow's rule confirms hits, in key
        priority order. More than 25 hits (a composite read's most) are searched again
        page by page on their own."""
        with self._reading("contacts.search"):
            criteria = search_criteria(keys, self.config.contact_fields.telegram_id)
            fields = ",".join(contact_fields(self.config))
        if criteria is None:
            return None
        with self._reading("contacts.search"):
            params = {"criteria": criteria, "fields": fields, "per_page": "25", "page": "1"}
            query = deals_query_of("s", self.config)
            body = composite_body(
                [
                    SubRequest("s", "GET", f"{API}/Contacts/search", params=params),
                    SubRequest("q", "POST", f"{API}/coql", {"select_query": query}),
                ]
            )
        try:
            answer = await self._send(
                "POST",
                f"{API}/__composite_requests",
                "contacts.search",
                json=body,
                units=COMPOSITE_UNITS,
            )
        except PermanentCrmError:
            # Zoho refused the pair as a whole (an empty search leaves the deals query's
            # reference unresolved; should that ever fail the call and not just its
            # sub-request): the search alone says what it says, or why not.
            hits = await self._search_pages(criteria, fields)
            return first_confirmed(keys, dict.fromkeys(keys, hits), confirm)
        searched, first_deals = composite_items(self.name, answer, 2)
        if isinstance(searched, CrmError):
            raise searched
        status, found = searched
        if status >= 400:
            raise error_from_body(self.name, "contacts.search", status, found)
        if more_records(found):
            hits = await self._search_pages(criteria, fields)
        else:
            with self._reading("contacts.search"):
                hits = [contact_from_record(record, self.config) for record in records_of(found)]
        contact = first_confirmed(keys, dict.fromkeys(keys, hits), confirm)
        if contact is not None and hits and contact.id == hits[0].id:
            self._keep_deals(contact.id, first_deals)
        return contact

    async def _search_pages(self, criteria: str, fields: str) -> list[Contact]:
        hits: list[Contact] = []
        for page in range(1, MAX_PAGES + 1):
            params = {"criteria": criteria, "fields": fields, "per_page": SEARCH_PAGE, "page": page}
            body = await self._send(
                "GET", f"{API}/Contacts/search", "contacts.search", params=params
            )
            with self._reading("contacts.search"):
                hits += [contact_from_record(record, self.config) for record in records_of(body)]
            if not more_records(body):
                break
        return hits

    def _keep_deals(self, contact_id: str, answer: tuple[int, JSON] | CrmError) -> None:
        """Keep the deals the composite read for the contact found, when they are all."""
        if isinstance(answer, CrmError) or answer[0] >= 400 or more_records(answer[1]):
            return
        with self._reading("deals.list"):
            deals = [deal_from_record(row, self.config) for row in records_of(answer[1])]
        now = time.monotonic()
        # Drop what a failed delivery left unread, then keep these.
        stale = [key for key, (at, _) in self._deals_read.items() if now - at >= KEEP_DEALS_SECONDS]
        for key in stale:
            del self._deals_read[key]
        self._deals_read[contact_id] = (now, deals)

    async def create_contact(self, new: NewContact) -> Contact:
        with self._reading("contacts.create"):
            record = contact_json(new)
        body = await self._send(
            "POST", f"{API}/Contacts", "contacts.create", json=records_body(record)
        )
        with self._reading("contacts.create"):
            details = write_details(self.name, body, "contacts.create")
            return contact_from_record({**record, "id": details["id"]}, self.config)

    async def update_contact(self, contact_id: str, patch: ContactPatch) -> None:
        if not patch.fields:
            return
        with self._reading("contacts.update"):
            path = f"{API}/Contacts/{record_id(contact_id)}"
            payload = records_body(fields_json(patch.fields))
        body = await self._send("PUT", path, "contacts.update", json=payload)
        write_details(self.name, body, "contacts.update")

    async def list_deals(self, contact: Contact, known: Sequence[Deal] = ()) -> list[Deal]:
        """Every deal linked to the contact (any pipeline, any stage), newest first, and the
        `known` ones (just read) that are not among them."""
        kept = self._deals_read.pop(contact.id, None)
        if kept is not None and time.monotonic() - kept[0] < KEEP_DEALS_SECONDS:
            seen = {deal.id for deal in kept[1]}
            return [*kept[1], *(deal for deal in known if deal.id not in seen)]
        fetched: list[Deal] = []
        offset = 0
        for _ in range(MAX_PAGES):
            with self._reading("deals.list"):
                query = deals_query(contact.id, self.config)
                if offset:
                    query += f" offset {offset}"
            body = await self._send(
                "POST", f"{API}/coql", "deals.list", json={"select_query": query}
            )
            with self._reading("deals.list"):
                fetched += [deal_from_record(row, self.config) for row in records_of(body)]
            if not more_records(body):
                break
            offset += COQL_LIMIT
        seen = {deal.id for deal in fetched}
        return [*fetched, *(deal for deal in known if deal.id not in seen)]

    async def get_deal(self, deal_id: str) -> Deal | None:
        if not (deal_id.isascii() and deal_id.isdigit()):
            return None
        params = {"fields": ",".join(deal_fields(self.config)[1:])}
        try:
            body = await self._send("GET", f"{API}/Deals/{deal_id}", "deals.get", params=params)
        except PermanentCrmError:
            return None  # an id Zoho calls invalid: gone for good
        with self._reading("deals.get"):
            records = records_of(body)  # 204: no such record (deleted)
            return deal_from_record(records[0], self.config) if records else None

    async def create_deal(self, contact: Contact, new: NewDeal) -> Deal:
        with self._reading("deals.create"):
            record = deal_json(new, record_id(contact.id), self._today())
        body = await self._send("POST", f"{API}/Deals", "deals.create", json=records_body(record))
        with self._reading("deals.create"):
            details = write_details(self.name, body, "deals.create")
            return new_deal_read(new, str(details["id"]), contact.id, details.get("Modified_Time"))

    async def create_contact_and_deal(
        self, contact: NewContact, deal: NewDeal
    ) -> tuple[Contact, Deal]:
        """One composite call: the contact, then the deal linked to it by reference. Should
        the deal fail, the contact stays (no rollback: one credit, automation as usual) and
        the retry finds it by the normal search."""
        with self._reading("contacts.create+deals.create"):
            person = contact_json(contact)
            if deal.company_id:
                person["Account_Name"] = {"id": record_id(deal.company_id)}  # its company
            linked = deal_json(deal, reference("c"), self._today())
            body = composite_body(
                [
                    SubRequest("c", "POST", f"{API}/Contacts", records_body(person)),
                    SubRequest("d", "POST", f"{API}/Deals", records_body(linked)),
                ]
            )
        answer = await self._send(
            "POST", f"{API}/__composite_requests", "composite", json=body, units=COMPOSITE_UNITS
        )
        (status_c, body_c), (status_d, body_d) = sub_responses(self.name, answer, 2)
        contact_details = self._sub_write(status_c, body_c, "contacts.create")
        deal_details = self._sub_write(status_d, body_d, "deals.create")
        with self._reading("contacts.create+deals.create"):
            contact_id = str(contact_details["id"])
            made = contact_from_record({**person, "id": contact_id}, self.config)
            modified = deal_details.get("Modified_Time")
            return made, new_deal_read(deal, str(deal_details["id"]), contact_id, modified)

    async def update_deal(self, deal_id: str, updates: Sequence[FieldUpdate]) -> None:
        if not updates:
            return
        with self._reading("deals.update"):
            path = f"{API}/Deals/{record_id(deal_id)}"
            payload = records_body(fields_json(updates))
        body = await self._send("PUT", path, "deals.update", json=payload)
        write_details(self.name, body, "deals.update")

    async def change_deal(self, deal_id: str, change: DealChange) -> None:
        with self._reading("deals.change"):
            path = f"{API}/Deals/{record_id(deal_id)}"
            record = deal_change_json(change)
        if not record:
            return
        body = await self._send("PUT", path, "deals.change", json=records_body(record))
        write_details(self.name, body, "deals.change")

    async def find_company(self, company: Company, confirm: ConfirmCompany) -> CompanyRecord | None:
        with self._reading("companies.search"):
            query = companies_query(company, self.config)
        if query is None:
            return None
        body = await self._send(
            "POST", f"{API}/coql", "companies.search", json={"select_query": query}
        )
        with self._reading("companies.search"):
            hits = [company_from_record(row, self.config) for row in records_of(body)]
        for key in ("inn", "name"):
            found = next((hit for hit in hits if confirm(hit, key)), None)  # oldest first
            if found is not None:
                return found
        return None

    async def create_company(self, company: Company) -> CompanyRecord:
        with self._reading("companies.create"):
            record = company_json(company, self.config)
        body = await self._send(
            "POST", f"{API}/Accounts", "companies.create", json=records_body(record)
        )
        with self._reading("companies.create"):
            details = write_details(self.name, body, "companies.create")
            return company_from_record({**record, "id": details["id"]}, self.config)

    async def link_contact_to_company(self, contact_id: str, company_id: str) -> None:
        """The contact's `Account_Name` lookup: one account per contact (set again: same)."""
        with self._reading("contacts.link"):
            path = f"{API}/Contacts/{record_id(contact_id)}"
            payload = records_body({"Account_Name": {"id": record_id(company_id)}})
        body = await self._send("PUT", path, "contacts.link", json=payload)
        write_details(self.name, body, "contacts.link")

    async def set_deal_items(self, deal_id: str, items: Sequence[OrderItem], currency: str) -> None:
        """No call: a Zoho deal has no line items of its own (`keeps_items` is False)."""
        return None

    async def deal_notes(self, deal_id: str) -> list[str]:
        with self._reading("notes.list"):
            path = f"{API}/Deals/{record_id(deal_id)}/Notes"
        notes: list[str] = []
        for page in range(1, MAX_PAGES + 1):
            params = {"fields": "Note_Title,Note_Content", "per_page": 200, "page": page}
            body = await self._send("GET", path, "notes.list", params=params)
            with self._reading("notes.list"):
                notes += [str(note.get("Note_Content") or "") for note in records_of(body)]
            if not more_records(body):
                break
        return notes

    async def add_note(self, deal_id: str, text: str) -> None:
        with self._reading("notes.add"):
            title = next((line.strip() for line in text.splitlines() if line.strip()), "")
            payload = records_body(note_json(record_id(deal_id), text, title[:120]))
        body = await self._send("POST", f"{API}/Notes", "notes.add", json=payload)
        write_details(self.name, body, "notes.add")

    async def schema(self) -> CrmSchema:
        body = await self._send(
            "GET", f"{API}/settings/layouts", "layouts.list", params={"module": "Deals"}
        )
        layouts = []
        for layout_id, layout_name in layout_ids(body):
            answer = await self._send(
                "GET", f"{API}/settings/pipeline", "pipelines.list", params={"layout_id": layout_id}
            )
            layouts.append((layout_name, answer))
        fields: list[CustomField] = []
        modules = [("Deals", "leads"), ("Contacts", "contacts")]
        if self.config.takes_orders:
            # Accounts only for a section that takes orders (their INN field): a token
            # without the accounts scope still checks a payments-only section.
            modules.append(("Accounts", "companies"))
        for module, entity in modules:
            answer = await self._send(
                "GET", f"{API}/settings/fields", "fields.list", params={"module": module}
            )
            with self._reading("fields.list"):
                fields += custom_fields_from_json(answer, entity)
        with self._reading("pipelines.list"):
            closed = frozenset(closed_stages(layouts))
            return CrmSchema(pipelines_from_json(layouts), tuple(fields), closed)

    def _health(self) -> Mapping[str, object]:
        return {
            "api_domain": self.domain.url,
            "concurrency": self.gate.limit,
            **self.pool.details(),
        }

    # ---- plumbing ---------------------------------------------------------------------

    def _today(self) -> date:
        return datetime.fromtimestamp(self.connection.clock(), self._zone).date()

    def _sub_write(self, status: int, body: JSON, operation: str) -> dict[str, JSON]:
        if status >= 400:
            raise error_from_body(self.name, operation, status, body)
        return write_details(self.name, body, operation)

    async def _send(
        self, method: str, path: str, operation: str, *, units: int = 1, **kwargs: Any
    ) -> JSON:
        """One request: its credits first (refused beforehand when the pool is spent),
        then its share of the concurrency limit; the answer's JSON (None for a 204)."""
        payload = kwargs.get("json")
        content = json.dumps(payload).encode() if payload is not None else None
        self.pool.require(credit_cost(method, path, content))
        async with self._in_flight(units):
            return await self.connection.send(method, path, operation, **kwargs)

    @asynccontextmanager
    async def _in_flight(self, units: int) -> AsyncIterator[None]:
        await self.gate.acquire(units)
        try:
            yield
        finally:
            await self.gate.release(units)


# ---- the builder ----------------------------------------------------------------------


def build_zoho(wiring: Wiring) -> Zoho:
    """The adapter on its connection, with its credit pool and concurrency gate.

    `data_centre` decides the accounts server (tokens) and the API domain; a token
    answer's `api_domain` wins; a `base_url` in the section (a proxy) is kept as is.
    """
    data_centre, daily, concurrency = zoho_options(wiring)
    if wiring.config.auth != "oauth":
        raise ConfigError(f'crm.{wiring.name}.auth: Zoho CRM takes "oauth" (a Self Client)')
    pool = CreditPool(wiring.name, daily, wiring.clock)
    domain = ApiDomain(data_centre.api_domain, pinned=bool(wiring.config.base_url))
    # POST {accounts}/oauth/v2/token, a form with the client id and secret. A refresh
    # answers only an access token: the refresh token presented stays.
    endpoint = OAuthEndpoint(
        data_centre.accounts + TOKEN_PATH,
        style="form",
        error_fields=("error", "error_description"),
        rotates=False,
    )
    hooks = credit_hooks(pool)
    hooks["response"] = [*hooks["response"], *token_hooks(domain)]
    connection = Connection(
        wiring,
        wiring.secrets("ACCESS_TOKEN"),
        endpoint,
        base_url=wiring.config.base_url or data_centre.api_domain,
        event_hooks=hooks,
        oauth_auth=lambda source: BearerAuth(source, "Zoho-oauthtoken", domain.aim),
        empty_answer=None,  # Zoho answers an empty read with 204 and no body
    )
    zone = ZoneInfo(wiring.settings.display_timezone)
    return Zoho(connection, pool, Concurrency(concurrency), domain, zone)


def zoho_options(wiring: Wiring) -> tuple[DataCentre, int, int]:
    options = wiring.options(OPTIONS)
    centre = options.values.get("data_centre")
    if not isinstance(centre, str) or centre.lower() not in DATA_CENTRES:
        raise ConfigError(f"{options.where}.data_centre: one of {', '.join(DATA_CENTRES)}")
    daily = options.whole(
        "daily_credits", DEFAULT_DAILY_CREDITS, 1, "a whole number of credits above 0"
    )
    concurrency = options.whole(
        "concurrency", DEFAULT_CONCURRENCY, 5, "a whole number, 5 or more (Zoho's Free edition)"
    )
    data_centre = DATA_CENTRES[centre.lower()]
    accounts = options.url("accounts_url", data_centre.accounts)
    return replace(data_centre, accounts=accounts.rstrip("/")), daily, concurrency
