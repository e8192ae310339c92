"""Pipedrive as a `CrmAdapter`: API v2 for persons, deals, search, pipelines, stages and
fields; v1 for notes, which exist nowhere else.

The mappers are in `pipedrive_json`, the daily token budget in `pipedrive_budget`; this
module holds the adapter and `build_pipedrive` (the API token goes in the `x-api-token`
header, never the historic `?api_token=` query, which would land in every logged URL).
Calls per method (token cost):

    find_contact   per key, in priority order, until a confirmed hit:
                   GET   /api/v2/persons/search?term=…&fields=…        (20; a phone:
                         up to 3, one per `phone_terms` form, until a confirmed hit)
                   GET   /api/v2/persons/{id}  the hit's custom fields  (1)
    create_contact POST  /api/v2/persons                                (5)
    update_contact PATCH /api/v2/persons/{id}    (none when nothing to set; 5)
    list_deals     GET   /api/v2/deals?person_id=…&status=open&sort_by=update_time (10)
    get_deal       GET   /api/v2/deals/{id}                             (1)
    create_deal    POST  /api/v2/deals  (linked by person_id, fields set; 5)
    create_contact_and_deal  the two POSTs above: Pipedrive has no composite call
    update_deal    PATCH /api/v2/deals/{id}      (none when nothing to set; 5)
    deal_notes     GET   /api/v1/notes?deal_id=…                        (20)
    add_note       POST  /api/v1/notes                                  (10)
    schema         GET   /api/v2/pipelines, /stages (5 each), /dealFields,
                         /personFields (10 each)
    schema         + GET /api/v2/organizationFields                  (10)
Orders (`OrderAdapter`):
    find_company   GET   /api/v2/organizations/search  by the INN field exactly, then (no
                         confirmed hit) by the name's longest word      (20 each)
    create_company POST  /api/v2/organizations                          (5)
    link_contact_to_company  PATCH /api/v2/persons/{id} {org_id}        (5)
    create_deal / create_contact_and_deal  `org_id` in the same POSTs
    change_deal    PATCH /api/v2/deals/{id}  stage, status, value, fields (5)
    set_deal_items DELETE /api/v2/deals/{id}/products  (every attached one; 15),
                   per SKU not yet known to this process: GET /api/v2/products/search
                   (20) and, when the catalog lacks it, POST /api/v2/products (5);
                   POST /api/v2/deals/{id}/products/bulk                 (25; none when empty)
v2 lists page with `additional_data.next_cursor`, v1 notes with `start`. A deal is
closed when its status is won or lost (Pipedrive's stages carry no closed flag): the
order status `cancelled` maps to a stage, and a move there also marks the deal lost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from bridge.crm.base import (
    JSON,
    CompanyKey,
    Confirm,
    ConfirmCompany,
    CrmSchema,
    CustomField,
    RateLimiter,
    first_confirmed,
)
from bridge.crm.connection import ApiTokenHeader, Connection, OAuthEndpoint, Wiring
from bridge.crm.pipedrive_budget import (
    DEFAULT_DAILY_BUDGET,
    TokenBudget,
    budget_hooks,
    token_cost,
)
from bridge.crm.pipedrive_json import (
    contact_from_person,
    contact_from_search,
    custom_field_from_json,
    custom_fields_json,
    data_of,
    deal_change_json,
    deal_from_json,
    deal_json,
    deal_products_json,
    int_id,
    org_from_search,
    org_json,
    org_record,
    org_search_params,
    person_json,
    phone_terms,
    pipelines_from_json,
    product_json,
    product_of,
    product_search_params,
    search_params,
)
from bridge.crm.richtext import note_html, note_text
from bridge.domain import (
    Company,
    CompanyRecord,
    Contact,
    ContactPatch,
    Deal,
    DealChange,
    FieldUpdate,
    KeyKind,
    LookupKey,
    NewContact,
    NewDeal,
    OrderItem,
    OrderStatus,
)
from bridge.errors import PermanentCrmError

PAGE_LIMIT = 500
MAX_PAGES = 50  # a runaway cursor must not loop forever
# Search has its own burst limit on every plan: 10 requests per 2 seconds.
DEFAULT_SEARCH_RATE = 4.5
DEFAULT_OAUTH_URL = "https://oauth.pipedrive.com"
OPTIONS = ("daily_token_budget", "oauth_url", "search_rate_per_second")
BULK_PRODUCTS = 100  # deal products per bulk attach or delete


# ---- the adapter --------------------------------------------------------------------


class Pipedrive:
    """One Pipedrive company. Build it with `build_pipedrive`."""

    # Order items are deal products: catalog products (found by `code` = SKU) attached.
    keeps_items = True

    def __init__(self, connection: Connection, budget: TokenBudget, search_rate: float) -> None:
        self.name = connection.name
        self.config = connection.config
        self.connection = connection
        self.budget = budget
        self.search_limiter = RateLimiter(search_rate)
        self._reading = connection.reading
        connection.extra_health = budget.details
        # SKU → catalog product id, learnt once per process (a search costs 20 tokens);
        # forgotten when an attach refuses one (a product deleted meanwhile).
        self._products: dict[str, int] = {}

    async def find_contact(self, keys: Sequence[LookupKey], confirm: Confirm) -> Contact | None:
        # One search per key, stopping at the first confirmed hit. Without a Telegram id
        # field nothing could confirm a Telegram hit, so that search is not even made.
        for key in keys:
            if key.kind is KeyKind.TELEGRAM_ID and not self.config.contact_fields.telegram_id:
                continue
            terms = phone_terms(key.value) if key.kind is KeyKind.PHONE else [None]
            for term in terms:
                hits = await self.search_persons(key, term)
                while (found := first_confirmed([key], {key: hits}, confirm)) is not None:
                    whole = await self._whole_person(found, key)
                    if whole is not None and confirm(whole, key):
                        return whole
                    hits = [hit for hit in hits if hit.id != found.id]
        return None

    async def search_persons(self, key: LookupKey, term: str | None = None) -> list[Contact]:
        """The raw hits of one search for `key` (unconfirmed, as the search shows them);
        `term`: one of a phone's `phone_terms` (the first by default)."""
        await self.search_limiter.acquire()
        params = search_params(key, term)
        body = await self._send("GET", "/api/v2/persons/search", "persons.search", params=params)
        with self._reading("persons.search"):
            items = (data_of(body) or {}).get("items") or ()
            return [contact_from_search(entry["item"], key) for entry in items]

    async def create_contact(self, new: NewContact, org_id: str | None = None) -> Contact:
        with self._reading("persons.create"):
            payload = person_json(new, org_id)
        body = await self._send("POST", "/api/v2/persons", "persons.create", json=payload)
        with self._reading("persons.create"):
            return contact_from_person(data_of(body), self.config)

    async def update_contact(self, contact_id: str, patch: ContactPatch) -> None:
        if not patch.fields:
            return
        with self._reading("persons.update"):
            payload = {"custom_fields": custom_fields_json(patch.fields)}
            path = f"/api/v2/persons/{int_id(contact_id)}"
        await self._send("PATCH", path, "persons.update", json=payload)

    async def list_deals(self, contact: Contact, known: Sequence[Deal] = ()) -> list[Deal]:
        """The person's open deals (every pipeline, excluded stages included), newest
        first, and the `known` ones (just read, perhaps closed) that are not among them."""
        with self._reading("deals.list"):
            params: dict[str, Any] = {
                "person_id": int_id(contact.id),
                "status": "open",
                "sort_by": "update_time",
                "sort_direction": "desc",
                "limit": PAGE_LIMIT,
                **self._deal_field_filter(),
            }
        records = await self._cursor_pages("/api/v2/deals", params, "deals.list")
        with self._reading("deals.list"):
            fetched = [deal_from_json(record) for record in records]
        seen = {deal.id for deal in fetched}
        return [*fetched, *(deal for deal in known if deal.id not in seen)]

    async def get_deal(self, deal_id: str) -> Deal | None:
        if not (deal_id.isascii() and deal_id.isdigit()):
            return None
        path = f"/api/v2/deals/{deal_id}"
        try:
            body = await self._send("GET", path, "deals.get", params=self._deal_field_filter())
        except PermanentCrmError:
            return None  # 404: gone for good (a deleted deal still answers, marked deleted)
        with self._reading("deals.get"):
            return deal_from_json(data_of(body))

    async def create_deal(self, contact: Contact, new: NewDeal) -> Deal:
        with self._reading("deals.create"):
            payload = deal_json(new, contact.id)
        body = await self._send("POST", "/api/v2/deals", "deals.create", json=payload)
        with self._reading("deals.create"):
            return deal_from_json(data_of(body))

    async def create_contact_and_deal(
        self, contact: NewContact, deal: NewDeal
    ) -> tuple[Contact, Deal]:
        # No composite call in Pipedrive: two POSTs. Should the second fail, a retry
        # finds the person by the normal search and creates only the deal.
        person = await self.create_contact(contact, deal.company_id)
        return person, await self.create_deal(person, deal)

    async def update_deal(self, deal_id: str, updates: Sequence[FieldUpdate]) -> None:
        if not updates:
            return
        with self._reading("deals.update"):
            payload = {"custom_fields": custom_fields_json(updates)}
            path = f"/api/v2/deals/{int_id(deal_id)}"
        await self._send("PATCH", path, "deals.update", json=payload)

    # ---- orders: organizations, stage moves, deal products --------------------------

    async def find_company(self, company: Company, confirm: ConfirmCompany) -> CompanyRecord | None:
        inn_field = self.config.order_fields.company_inn
        keys: list[CompanyKey] = ["inn"] if inn_field and company.inn else []
        if company.name.strip():
            keys.append("name")
        for key in keys:
            await self.search_limiter.acquire()
            with self._reading("organizations.search"):
                params = org_search_params(company, key, inn_field)
            path = "/api/v2/organizations/search"
            body = await self._send("GET", path, "organizations.search", params=params)
            with self._reading("organizations.search"):
                items = (data_of(body) or {}).get("items") or ()
                hits = [org_from_search(entry["item"], company.inn) for entry in items]
            confirmed = [hit for hit in hits if confirm(hit, key)]
            if confirmed:
                return min(confirmed, key=lambda hit: int(hit.id))
        return None

    async def create_company(self, company: Company) -> CompanyRecord:
        inn_field = self.config.order_fields.company_inn
        with self._reading("organizations.create"):
            payload = org_json(company, inn_field)
        path = "/api/v2/organizations"
        body = await self._send("POST", path, "organizations.create", json=payload)
        with self._reading("organizations.create"):
            return org_record(data_of(body), inn_field)

    async def link_contact_to_company(self, contact_id: str, company_id: str) -> None:
        # A person has one organization (`org_id`): setting it again changes nothing.
        with self._reading("persons.link_org"):
            path = f"/api/v2/persons/{int_id(contact_id)}"
            payload = {"org_id": int_id(company_id)}
        await self._send("PATCH", path, "persons.link_org", json=payload)

    async def change_deal(self, deal_id: str, change: DealChange) -> None:
        lost = self.config.order_stages.get(OrderStatus.CANCELLED.value)
        with self._reading("deals.change"):
            payload = deal_change_json(change, (lost.pipeline_id, lost.status_id) if lost else None)
            path = f"/api/v2/deals/{int_id(deal_id)}"
        if payload:
            await self._send("PATCH", path, "deals.change", json=payload)

    async def set_deal_items(self, deal_id: str, items: Sequence[OrderItem], currency: str) -> None:
        """Detach every product of the deal, then attach the order's in one bulk call:
        a repeat detaches what the last attempt attached, so it never doubles them."""
        with self._reading("deals.products"):
            path = f"/api/v2/deals/{int_id(deal_id)}/products"
        await self._detach_all(path)
        if not items:
            return
        remembered = any(item.product_id in self._products for item in items)
        try:
            await self._attach(path, items, currency)
        except PermanentCrmError:
            if not remembered:
                raise
            # A product this process remembered may have been deleted since: learn the
            # catalog again and attach once more (detached first: over 100 items, part of
            # the first attempt may have been attached).
            self._products.clear()
            await self._detach_all(path)
            await self._attach(path, items, currency)

    async def _detach_all(self, path: str) -> None:
        for _ in range(MAX_PAGES):  # at most 100 go per call
            body = await self._send("DELETE", path, "deal_products.delete")
            with self._reading("deal_products.delete"):
                more = (body.get("additional_data") or {}).get("more_items_in_collection")
            if not more:
                break

    async def _attach(self, path: str, items: Sequence[OrderItem], currency: str) -> None:
        for item in items:
            if item.product_id not in self._products:
                self._products[item.product_id] = await self._product_id(item, currency)
        for start in range(0, len(items), BULK_PRODUCTS):
            with self._reading("deal_products.add"):
                payload = deal_products_json(items[start : start + BULK_PRODUCTS], self._products)
            await self._send("POST", f"{path}/bulk", "deal_products.add", json=payload)

    async def _product_id(self, item: OrderItem, currency: str) -> int:
        """The catalog product with the item's SKU as its `code`, created when missing."""
        await self.search_limiter.acquire()
        params = product_search_params(item.product_id)
        body = await self._send("GET", "/api/v2/products/search", "products.search", params=params)
        with self._reading("products.search"):
            items = (data_of(body) or {}).get("items") or ()
            found = product_of((entry["item"] for entry in items), item.product_id)
        if found is not None:
            return found
        with self._reading("products.create"):
            payload = product_json(item, currency)
        created = await self._send("POST", "/api/v2/products", "products.create", json=payload)
        with self._reading("products.create"):
            return int(data_of(created)["id"])

    # ---- notes ----------------------------------------------------------------------

    async def deal_notes(self, deal_id: str) -> list[str]:
        with self._reading("notes.list"):
            params: dict[str, Any] = {"deal_id": int_id(deal_id), "limit": PAGE_LIMIT}
        notes: list[str] = []
        for _ in range(MAX_PAGES):
            body = await self._send("GET", "/api/v1/notes", "notes.list", params=params)
            with self._reading("notes.list"):
                notes += [note_text(str(note.get("content") or "")) for note in data_of(body) or ()]
                more = (body.get("additional_data") or {}).get("pagination") or {}
                if not more.get("more_items_in_collection"):
                    break
                params["start"] = int(more["next_start"])
        return notes

    async def add_note(self, deal_id: str, text: str) -> None:
        with self._reading("notes.add"):
            payload = {"content": note_html(text), "deal_id": int_id(deal_id)}
        await self._send("POST", "/api/v1/notes", "notes.add", json=payload)

    async def schema(self) -> CrmSchema:
        pipelines = await self._cursor_pages("/api/v2/pipelines", {}, "pipelines.list")
        stages = await self._cursor_pages("/api/v2/stages", {}, "stages.list")
        fields: list[CustomField] = []
        kinds = (
            ("leads", "/api/v2/dealFields"),
            ("contacts", "/api/v2/personFields"),
            ("companies", "/api/v2/organizationFields"),
        )
        for entity, path in kinds:
            records = await self._cursor_pages(path, {}, "fields.list")
            with self._reading("fields.list"):
                fields += [
                    custom_field_from_json(record, entity)
                    for record in records
                    if record.get("is_custom_field")
                ]
        with self._reading("pipelines.list"):
            return CrmSchema(pipelines_from_json(pipelines, stages), tuple(fields))

    def _deal_field_filter(self) -> dict[str, str]:
        # Only the configured fields (at most 15 may be asked for): smaller answers.
        keys = list(self.config.deal_field_ids())
        return {"custom_fields": ",".join(keys)} if 0 < len(keys) <= 15 else {}

    async def _send(self, method: str, path: str, operation: str, **kwargs: Any) -> JSON:
        """One request, refused beforehand when the daily token budget is spent."""
        self.budget.require(token_cost(method, path))
        return await self.connection.send(method, path, operation, **kwargs)

    async def _cursor_pages(
        self, path: str, params: dict[str, Any], operation: str
    ) -> list[dict[str, JSON]]:
        items: list[dict[str, JSON]] = []
        query = {"limit": PAGE_LIMIT, **params}
        for _ in range(MAX_PAGES):
            body = await self._send("GET", path, operation, params=query)
            with self._reading(operation):
                items += [item for item in data_of(body) or () if isinstance(item, dict)]
                cursor = (body.get("additional_data") or {}).get("next_cursor")
            if not cursor:
                break
            query["cursor"] = cursor
        return items

    async def _whole_person(self, hit: Contact, key: LookupKey) -> Contact | None:
        """The hit with its custom fields (to confirm a Telegram id, and for the flow's
        fill-if-empty); no call when neither needs them. None when it is gone."""
        ids = self.config.contact_fields
        keys = [field for field in (ids.telegram_id, ids.telegram_username) if field]
        if key.kind is not KeyKind.TELEGRAM_ID and not keys:
            return replace(hit, deal_ids=())
        path = f"/api/v2/persons/{int_id(hit.id)}"
        try:
            body = await self._send(
                "GET", path, "persons.get", params={"custom_fields": ",".join(keys)}
            )
        except PermanentCrmError:
            return None
        with self._reading("persons.get"):
            return contact_from_person(data_of(body), self.config)


# ---- the builder --------------------------------------------------------------------


def build_pipedrive(wiring: Wiring) -> Pipedrive:
    """The adapter with its one HTTP client, rate limiters, token budget and credentials.

    `[crm.NAME.options]`: `daily_token_budget` (default 30000: one seat of the smallest
    plan; set 30000 × plan multiplier × seats, or the share the bridge may use),
    `search_rate_per_second` (default 4.5: search allows 10 per 2 s on every plan) and
    `oauth_url` (default https://oauth.pipedrive.com).
    """
    daily, search_rate, oauth_url = _options(wiring)
    budget = TokenBudget(wiring.name, daily, wiring.clock)
    # POST {oauth_url}/oauth/token, HTTP Basic with the client id and secret and a form
    # body. A refresh returns the same refresh token with its 60-day idle expiry reset;
    # whatever comes back is stored, so a rotating one works as well.
    endpoint = OAuthEndpoint(
        oauth_url.rstrip("/") + "/oauth/token",
        style="basic",
        error_fields=("error_description", "message", "error"),
        rotates=False,
    )
    connection = Connection(
        wiring,
        wiring.secrets("API_TOKEN"),
        endpoint,
        event_hooks=budget_hooks(budget),
        static_auth=lambda source: ApiTokenHeader(source, "x-api-token"),
    )
    return Pipedrive(connection, budget, search_rate)


def _options(wiring: Wiring) -> tuple[int, float, str]:
    options = wiring.options(OPTIONS)
    daily = options.whole(
        "daily_token_budget", DEFAULT_DAILY_BUDGET, 1, "a whole number of tokens above 0"
    )
    rate = options.positive("search_rate_per_second", DEFAULT_SEARCH_RATE)
    return daily, rate, options.url("oauth_url", DEFAULT_OAUTH_URL)
