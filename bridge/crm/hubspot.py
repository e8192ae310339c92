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
Batch forms (`batch_forms`, issue 20): `hubspot_batch`.
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

from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

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
from bridge.crm.hubspot_batch import batch_forms
from bridge.crm.hubspot_json import (
    BATCH_READ,
    EXISTING_ID,
    MAX_PAGES,
    OBJECTS,
    PIPELINES,
    PROPERTIES,
    associated,
    batch_read_json,
    company_create_json,
    company_from_json,
    company_search_json,
    contact_create_json,
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
    field_from_json,
    ids_json,
    is_custom,
    line_items_create_json,
    note_create_json,
    pipeline_from_json,
    properties_json,
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
from bridge.errors import ConfigError, PermanentCrmError
from bridge.settings import CrmConfig

SEARCH_LIMIT = 100  # per page; HubSpot allows 200
DEFAULT_SEARCH_RATE = 4.0  # HubSpot allows 5 searches per second per account
T = TypeVar("T")


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
        self.known_date_properties: frozenset[str] | None = None
        self.batch_forms = batch_forms(self)

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
            answer = await self.send("POST", f"{OBJECTS}/contacts", "contacts.create", json=payload)
        except PermanentCrmError as exc:
            existing = EXISTING_ID.search(exc.message) if " HTTP 409" in exc.message else None
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
        await self.send("PATCH", path, "contacts.update", json=payload)

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
            body = await self.send("GET", f"{OBJECTS}/deals/{deal_id}", "deals.get", params=params)
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
            return payload, await self.send("POST", path, "deals.create", json=payload)

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
            await self.send("PATCH", path, "deals.update", json=payload)

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
        answer = await self.send("POST", f"{OBJECTS}/companies", "companies.create", json=payload)
        with self._reading("companies.create"):
            props = {**payload["properties"], **(answer.get("properties") or {})}
            return company_from_json({"id": answer["id"], "properties": props}, inn_property)

    async def link_contact_to_company(self, contact_id: str, company_id: str) -> None:
        # The default (unlabeled) association; a PUT, so an existing link stays one
        # [developers.hubspot.com/docs/reference/api/crm/associations/association-details].
        path = f"{OBJECTS}/contacts/{contact_id}/associations/default/companies/{company_id}"
        await self.send("PUT", path, "contacts.link_company")

    async def change_deal(self, deal_id: str, change: DealChange) -> None:
        async def attempt(date_only: frozenset[str]) -> None:
            with self._reading("deals.change"):
                payload = deal_change_json(change, date_only)
            if not payload["properties"]:
                return
            path = f"{OBJECTS}/deals/{deal_id}"
            await self.send("PATCH", path, "deals.change", json=payload)

        await self._with_date_properties(change.fields, attempt)

    async def set_deal_items(self, deal_id: str, items: Sequence[OrderItem], currency: str) -> None:
        """The deal's line items become `items`: the old ones are archived and new ones
        created with their deal association. Line items belong to one deal, so they are
        replaced rather than edited; the read first makes a repeat harmless (it archives
        what the last attempt created). `currency` is the deal's (HubSpot prices line
        items in the deal's currency)."""
        params = {"properties": "hs_object_id", "associations": "line_items"}
        body = await self.send("GET", f"{OBJECTS}/deals/{deal_id}", "deals.items", params=params)
        with self._reading("deals.items"):
            old = list(associated(body, "line_items"))
        for start in range(0, len(old), BATCH_READ):
            payload = ids_json(old[start : start + BATCH_READ])
            path = f"{OBJECTS}/line_items/batch/archive"
            await self.send("POST", path, "line_items.archive", json=payload)
        for start in range(0, len(items), BATCH_READ):
            with self._reading("line_items.create"):
                payload = line_items_create_json(deal_id, items[start : start + BATCH_READ])
            path = f"{OBJECTS}/line_items/batch/create"
            await self.send("POST", path, "line_items.create", json=payload)

    # ---- notes ----------------------------------------------------------------------

    async def deal_notes(self, deal_id: str) -> list[str]:
        params = {"properties": "hs_object_id", "associations": "notes"}
        path = f"{OBJECTS}/deals/{deal_id}"
        body = await self.send("GET", path, "deals.notes", params=params)
        with self._reading("deals.notes"):
            note_ids = list(associated(body, "notes"))
        records: list[dict[str, JSON]] = []
        for start in range(0, len(note_ids), BATCH_READ):
            chunk = note_ids[start : start + BATCH_READ]
            payload = batch_read_json(chunk, ["hs_note_body", "hs_timestamp"])
            answer = await self.send(
                "POST", f"{OBJECTS}/notes/batch/read", "notes.read", json=payload
            )
            records.extend(answer.get("results") or ())
        with self._reading("notes.read"):
            records.sort(key=lambda r: (str(r["properties"].get("hs_timestamp") or ""), r["id"]))
            return [note_text(str(r["properties"].get("hs_note_body") or "")) for r in records]

    async def add_note(self, deal_id: str, text: str) -> None:
        now = datetime.fromtimestamp(self._clock(), UTC)
        payload = note_create_json(deal_id, text, now)
        await self.send("POST", f"{OBJECTS}/notes", "notes.create", json=payload)

    # ---- schema, credentials, lifecycle ---------------------------------------------

    async def schema(self) -> CrmSchema:
        body = await self.send("GET", f"{PIPELINES}/deals", "pipelines.list")
        fields: list[CustomField] = []
        kinds = (("leads", "deals"), ("contacts", "contacts"), ("companies", "companies"))
        for entity, object_type in kinds:
            path = f"{PROPERTIES}/{object_type}"
            answer = await self.send("GET", path, "properties.list")
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
        known = self.known_date_properties
        try:
            return await attempt(known or frozenset())
        except PermanentCrmError as exc:
            datetimes = {u.field_id for u in updates if u.kind is FieldKind.DATETIME}
            if known is not None or not datetimes or " HTTP 400" not in exc.message:
                raise
            if not datetimes & await self.learn_date_properties():
                raise
        return await attempt(await self.learn_date_properties())

    async def learn_date_properties(self) -> frozenset[str]:
        """The deal properties of type `date`, looked up once per process."""
        if self.known_date_properties is None:
            answer = await self.send("GET", f"{PROPERTIES}/deals", "properties.list")
            with self._reading("properties.list"):
                self.known_date_properties = date_properties(answer.get("results") or ())
        return self.known_date_properties

    async def _search(
        self, object_type: str, body: dict[str, JSON], operation: str
    ) -> list[dict[str, JSON]]:
        path = f"{OBJECTS}/{object_type}/search"
        records: list[dict[str, JSON]] = []
        for _ in range(MAX_PAGES):
            answer = await self.send("POST", path, operation, json=body, search=True)
            with self._reading(operation):
                records.extend(answer.get("results") or ())
                after = ((answer.get("paging") or {}).get("next") or {}).get("after")
            if not after:
                break
            body = {**body, "after": str(after)}
        return records

    async def send(
        self, method: str, path: str, operation: str, *, search: bool = False, **kwargs: Any
    ) -> Any:
        """One request through the general or the search lane; the JSON answer."""
        http = self.search_http if search else self.http
        return await self.connection.send(method, path, operation, http=http, **kwargs)


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
