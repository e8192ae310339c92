"""A stateful fake of the amoCRM API v4: one account, its contacts, leads, links and notes.

It answers like the real API where the bridge depends on it:
- `GET /api/v4/contacts?query=` is a case-insensitive substring search over names and
  every custom value (phones also by their digits, so "9991234567" finds
  "+7 999 123-45-67"); `with=leads` embeds linked lead ids; nothing found → 204, no body;
- writes are validated first and applied only when all of the request is valid: an
  unknown field id, an enum id the field does not have, a non-numeric value for a numeric
  field, an unknown pipeline or status, an unknown lead → 400 `{"validation-errors":
  [...], "status": 400}`, each error under the `request_id` of its item (the one the
  client sent, else the item's index), which every answer of an array write echoes;
- array writes take 1..250 items (`leads/complex` 1..50), else 400 [crm-notes §1.8]:
  `POST /api/v4/leads` and `/leads/complex`, `PATCH /api/v4/leads` (each item with the
  `id` of a lead), `POST /api/v4/leads/notes` (each note with `entity_id`); a batch is
  one request for the rate limit (amoCRM counts requests) and for every fault and hook;
- `GET /api/v4/leads?filter[id][]=…` answers the leads among those ids (`with=contacts`
  embeds their contacts), paged by `limit` ≤ 250;
- Bearer tokens expire by the injectable `clock` → 401; OAuth refresh tokens are
  single-use and rotate (a used one answers 400 "Token has been revoked");
- more than `rate_limit` admitted requests in any sliding second → 429 (not applied).

Orders [amocrm.ru/developers/content/crm_platform/companies-api, entity-links-api,
catalogs-api, leads-api "Комплексное добавление сделок"]:
- companies: `GET /api/v4/companies?query=` searches like contacts (substring of the name
  and every custom value, 204 when nothing); `POST /api/v4/companies`;
- links: `POST /api/v4/contacts/{id}/link` with `to_entity_type` "companies" (a contact
  belongs to one company: linking another replaces it; linking the same again changes
  nothing), `_embedded.companies: [{"id"}]` in `POST /leads` and `/leads/complex` (one
  company per lead, linked to the lead only; complex links a contact and a company to
  each other only when it creates both);
- the products catalog `order_catalog_id` (type "products"): `GET/POST/PATCH
  /api/v4/catalogs/{id}/elements` (`query` searches name and values), elements linked to a
  lead with `POST /api/v4/leads/{id}/link` (`metadata.catalog_id`, `metadata.quantity`;
  linking a linked element sets its quantity), `POST /leads/{id}/unlink` (204), and
  `GET /api/v4/leads/{id}/links` (`filter[to_catalog_id]`);
- a lead moved to 143 is lost, 142 won, in any pipeline (`closed_at` set).

Set up and inspect (no call is logged): `add_contact`, `add_lead`, `add_note` (return
ids), `add_company`, `add_element`, `companies()`, `lead_company`, `contact_companies`,
`lead_items`, `elements()`, `delete_element`, `move_lead` (a manager changing the stage
or deleting), `remove_lead` (deleted for good: the trash emptied), `contacts()`,
`contact(id)`, `leads()`, `lead(id)` (API-shaped dicts), `notes(lead_id)`, `lead_field`,
`contact_field`. Credentials: `issue_token(ttl)`, `issue_oauth_pair(ttl)`,
`register_code(code)`, `expire_all_access_tokens()`, `forbid(detail)` (every call 403).

The HTTP side (`transport()`, `asgi_app`, `calls`, `count`, the rate window and the
faults `fail_next`, `fail_after_apply`, `fail_randomly`, `down`/`up`, `latency`) is
`tests.fakes.service.FakeService`; pipelines, fields and the validation of field values
are `tests.fakes.amocrm_account`. This module holds the data and the routes.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode, urlsplit

from bridge.settings import CrmConfig, load_file_config
from tests.fakes.amocrm_account import (
    ACCOUNT_ID,
    EMAIL_FIELD,
    LOST,
    PHONE_FIELD,
    PRICE_FIELD,
    SKU_FIELD,
    WON,
    Account,
    Problems,
    is_int,
)
from tests.fakes.crm_events import AmoLead, CrmRequest, amocrm_webhook
from tests.fakes.service import (
    ApiError,
    FakeRequest,
    FakeResponse,
    FakeService,
    JSONDict,
    OAuthFake,
    only_digits,
    problem,
    telegram_fields,
)

EXAMPLE_CONFIG = Path(__file__).resolve().parents[2] / "etc" / "bridge.example.toml"
Known = TypeVar("Known")


# ---- state --------------------------------------------------------------------------


@dataclass
class ContactRec:
    id: int
    name: str
    first_name: str
    last_name: str
    created_at: int
    updated_at: int
    values: dict[int, list[JSONDict]] = field(default_factory=dict)


@dataclass
class LeadRec:
    id: int
    name: str
    price: int
    pipeline_id: int
    status_id: int
    created_at: int
    updated_at: int
    closed_at: int | None = None
    is_deleted: bool = False
    values: dict[int, list[JSONDict]] = field(default_factory=dict)


@dataclass
class CompanyRec:
    id: int
    name: str
    created_at: int
    updated_at: int
    values: dict[int, list[JSONDict]] = field(default_factory=dict)


@dataclass
class ElementRec:
    id: int
    catalog_id: int
    name: str
    created_at: int
    updated_at: int
    values: dict[int, list[JSONDict]] = field(default_factory=dict)


@dataclass
class NoteRec:
    id: int
    entity_id: int
    note_type: str
    params: JSONDict
    created_at: int


# ---- the fake -----------------------------------------------------------------------


class FakeAmoCrm(OAuthFake, FakeService):
    """The reference account of `etc/bridge.example.toml` (or `config`), empty of data."""

    name = "fake amoCRM"
    success_content_type = "application/hal+json"

    def __init__(
        self,
        config: CrmConfig | None = None,
        *,
        rate_limit: int = 7,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        client_id: str = "fake-client-id",
        client_secret: str = "fake-client-secret",  # noqa: S107
        redirect_uri: str = "https://bridge.example/oauth",
        oauth_ttl: int = 86400,
    ) -> None:
        super().__init__(rate_limit=rate_limit, monotonic=monotonic)
        self.config = config or load_file_config(EXAMPLE_CONFIG).crm["amocrm"]
        # Refresh tokens rotate: each is spent on use (see above).
        self.oauth_client(clock, client_id, client_secret, oauth_ttl, redirect_uri)
        self.account = Account.from_config(self.config)
        self._contacts: dict[int, ContactRec] = {}
        self._leads: dict[int, LeadRec] = {}
        self._links: set[tuple[int, int]] = set()  # (contact id, lead id)
        self._notes: dict[int, list[NoteRec]] = {}
        self._companies: dict[int, CompanyRec] = {}
        self._lead_company: dict[int, int] = {}  # lead → its one company
        self._contact_company: dict[int, int] = {}  # contact → its one company
        self._elements: dict[int, ElementRec] = {}
        self._lead_items: dict[int, dict[int, float]] = {}  # lead → element → quantity
        # The one products catalog (an account has at most one) [catalogs-api].
        self.catalog_id = int(self.config.order_catalog_id or 7001)
        self._forbidden: str | None = None
        self._ids = {
            kind: itertools.count(start)
            for kind, start in (
                ("contact", 30000001),
                ("lead", 20000001),
                ("note", 90000001),
                ("company", 40000001),
                ("element", 50000001),
            )
        }
        self.origin = "https://example.amocrm.ru"
        self.routes = [
            ("GET", re.compile(r"/api/v4/contacts"), self._list_contacts),
            ("POST", re.compile(r"/api/v4/contacts"), self._create_contacts),
            ("GET", re.compile(r"/api/v4/contacts/(\d+)"), self._get_contact),
            ("PATCH", re.compile(r"/api/v4/contacts/(\d+)"), self._patch_contact),
            (
                "GET",
                re.compile(r"/api/v4/(leads|contacts|companies)/custom_fields"),
                self._custom_fields,
            ),
            ("GET", re.compile(r"/api/v4/companies"), self._list_companies),
            ("POST", re.compile(r"/api/v4/companies"), self._create_companies),
            ("POST", re.compile(r"/api/v4/contacts/(\d+)/link"), self._link_contact),
            ("GET", re.compile(r"/api/v4/leads/(\d+)/links"), self._lead_links),
            ("POST", re.compile(r"/api/v4/leads/(\d+)/link"), self._link_lead),
            ("POST", re.compile(r"/api/v4/leads/(\d+)/unlink"), self._unlink_lead),
            ("GET", re.compile(r"/api/v4/catalogs/(\d+)/elements"), self._list_elements),
            ("POST", re.compile(r"/api/v4/catalogs/(\d+)/elements"), self._create_elements),
            ("PATCH", re.compile(r"/api/v4/catalogs/(\d+)/elements"), self._patch_elements),
            ("GET", re.compile(r"/api/v4/leads/pipelines"), self._list_pipelines),
            ("GET", re.compile(r"/api/v4/leads"), self._list_leads),
            ("POST", re.compile(r"/api/v4/leads"), self._create_leads),
            ("PATCH", re.compile(r"/api/v4/leads"), self._patch_leads),
            ("POST", re.compile(r"/api/v4/leads/notes"), self._add_entity_notes),
            ("POST", re.compile(r"/api/v4/leads/complex"), self._create_complex),
            ("GET", re.compile(r"/api/v4/leads/(\d+)"), self._get_lead),
            ("PATCH", re.compile(r"/api/v4/leads/(\d+)"), self._patch_lead),
            ("GET", re.compile(r"/api/v4/leads/(\d+)/notes"), self._list_notes),
            ("POST", re.compile(r"/api/v4/leads/(\d+)/notes"), self._add_notes),
            ("POST", re.compile(r"/oauth2/access_token"), self._token),
        ]

    # ---- credentials ----------------------------------------------------------------

    def issue_token(self, ttl: float = 86400) -> str:
        """A valid access token (a long-lived token is just one with a long ttl)."""
        with self._lock:
            return self.tokens.issue_token(ttl)

    # ---- inspection and setup -------------------------------------------------------

    def contacts(self) -> list[JSONDict]:
        with self._lock:
            return [self._contact_json(c, with_leads=True) for c in self._contacts.values()]

    def contact(self, contact_id: int | str) -> JSONDict:
        with self._lock:
            return self._contact_json(self._contacts[int(contact_id)], with_leads=True)

    def leads(self) -> list[JSONDict]:
        with self._lock:
            return [self._lead_json(lead, with_contacts=True) for lead in self._leads.values()]

    def lead(self, lead_id: int | str) -> JSONDict:
        with self._lock:
            return self._lead_json(self._leads[int(lead_id)], with_contacts=True)

    def notes(self, lead_id: int | str) -> list[str]:
        with self._lock:
            return [str(n.params.get("text", "")) for n in self._notes.get(int(lead_id), [])]

    def lead_field(self, lead_id: int | str, field_id: int | str) -> Any:
        """Text, numeric text, unix seconds, an enum id (select) or enum ids (multiselect);
        None when empty."""
        with self._lock:
            return self.account.value_of("leads", self._leads[int(lead_id)].values, int(field_id))

    def contact_field(self, contact_id: int | str, field_id: int | str) -> Any:
        with self._lock:
            record = self._contacts[int(contact_id)]
            return self.account.value_of("contacts", record.values, int(field_id))

    def add_contact(
        self,
        name: str = "",
        *,
        first_name: str = "",
        last_name: str = "",
        phones: Iterable[str] = (),
        emails: Iterable[str] = (),
        telegram_id: str | None = None,
        telegram_username: str | None = None,
        fields: Mapping[int | str, Any] | None = None,
        updated_at: int | None = None,
    ) -> int:
        """A contact as a manager would have typed it; returns its id. No call is logged."""
        raw: dict[int | str, Any] = dict(fields or {})
        raw.update({PHONE_FIELD: list(phones), EMAIL_FIELD: list(emails)})
        raw.update(telegram_fields(self.config, telegram_id, telegram_username))
        with self._lock:
            now = int(self.clock())
            record = ContactRec(
                next(self._ids["contact"]),
                name,
                first_name,
                last_name,
                now,
                updated_at if updated_at is not None else now,
            )
            record.name = name or f"{first_name} {last_name}".strip()
            record.values = self.account.seed_values("contacts", raw)
            self._contacts[record.id] = record
            return record.id

    def add_lead(
        self,
        contact_id: int | str | None = None,
        *,
        name: str = "Сделка",
        price: int = 0,
        pipeline_id: int | None = None,
        status_id: int | None = None,
        fields: Mapping[int | str, Any] | None = None,
        updated_at: int | None = None,
        is_deleted: bool = False,
    ) -> int:
        """A lead, linked to `contact_id` when given; returns its id. No call is logged."""
        with self._lock:
            account = self.account
            pipeline = account.pipelines[pipeline_id] if pipeline_id else account.main_pipeline()
            status = status_id if status_id is not None else pipeline.statuses[0].id
            if not pipeline.has_status(status):
                raise ValueError(f"status {status} is not in pipeline {pipeline.id}")
            now = int(self.clock())
            lead = LeadRec(
                next(self._ids["lead"]),
                name,
                price,
                pipeline.id,
                status,
                now,
                updated_at if updated_at is not None else now,
                is_deleted=is_deleted,
            )
            lead.closed_at = now if status in (WON, LOST) else None
            lead.values = self.account.seed_values("leads", dict(fields or {}))
            self._leads[lead.id] = lead
            if contact_id is not None:
                self._links.add((int(contact_id), lead.id))
            return lead.id

    def move_lead(
        self,
        lead_id: int | str,
        status_id: int,
        *,
        pipeline_id: int | None = None,
        is_deleted: bool | None = None,
    ) -> None:
        """What a manager does in the UI: change stage (or pipeline), or delete."""
        with self._lock:
            lead = self._leads[int(lead_id)]
            pipeline = self.account.pipelines[pipeline_id or lead.pipeline_id]
            if not pipeline.has_status(status_id):
                raise ValueError(f"status {status_id} is not in pipeline {pipeline.id}")
            self._apply_lead(lead, {"pipeline_id": pipeline.id, "status_id": status_id})
            if is_deleted is not None:
                lead.is_deleted = is_deleted

    def move_leads_event(
        self, moves: Sequence[tuple[int | str, int, int | None]], *, url: str
    ) -> CrmRequest:
        """A manager moving leads (lead id, status id, pipeline id or None); the one
        request amoCRM then posts to `url` (the registered URL, `?token=` included):
        every lead under `leads[status][N]`, in one batch."""
        changed: list[tuple[str, AmoLead]] = []
        for lead_id, status_id, pipeline_id in moves:
            with self._lock:
                lead = self._leads[int(lead_id)]
                old_status, old_pipeline = lead.status_id, lead.pipeline_id
            self.move_lead(lead_id, status_id, pipeline_id=pipeline_id)
            with self._lock:
                changed.append(
                    (
                        "status",
                        AmoLead(
                            lead.id,
                            lead.name,
                            lead.status_id,
                            lead.pipeline_id,
                            old_status,
                            old_pipeline,
                            lead.price,
                            lead.created_at,
                            lead.updated_at,
                        ),
                    )
                )
        subdomain = (urlsplit(self.config.base_url).hostname or "example").split(".")[0]
        return amocrm_webhook(url, changed, subdomain=subdomain, account_id=ACCOUNT_ID)

    def remove_lead(self, lead_id: int | str) -> None:
        """A lead gone for good (deleted and the trash emptied): no read finds it, and a
        write naming it is refused."""
        with self._lock:
            lead = int(lead_id)
            del self._leads[lead]
            self._links = {(c, lead_of) for c, lead_of in self._links if lead_of != lead}
            self._notes.pop(lead, None)
            self._lead_company.pop(lead, None)
            self._lead_items.pop(lead, None)

    def add_note(self, lead_id: int | str, text: str) -> int:
        with self._lock:
            return self._store_note(int(lead_id), "common", {"text": text})

    def add_company(self, name: str, inn: str = "") -> int:
        """A company as a manager typed it, its INN in the configured INN field."""
        with self._lock:
            raw: dict[int | str, Any] = {}
            inn_field = self.config.order_fields.company_inn
            if inn and inn_field:
                raw[inn_field] = inn
            return self._store_company(name, self.account.seed_values("companies", raw))

    def companies(self) -> list[JSONDict]:
        with self._lock:
            return [self._company_json(c) for c in self._companies.values()]

    def lead_company(self, lead_id: int | str) -> int | None:
        with self._lock:
            return self._lead_company.get(int(lead_id))

    def contact_companies(self, contact_id: int | str) -> set[int]:
        with self._lock:
            company = self._contact_company.get(int(contact_id))
            return set() if company is None else {company}

    def add_element(self, sku: str, name: str, price: Decimal | int) -> int:
        """A product of the products catalog, as a manager entered it."""
        with self._lock:
            values = self.account.seed_values("catalog", {SKU_FIELD: sku, PRICE_FIELD: str(price)})
            return self._store_element(self.catalog_id, name, values).id

    def delete_element(self, element_id: int) -> None:
        """A manager deleting a product: it leaves the catalog and every lead."""
        with self._lock:
            del self._elements[int(element_id)]
            for items in self._lead_items.values():
                items.pop(int(element_id), None)

    def elements(self) -> list[JSONDict]:
        with self._lock:
            return [self._element_json(e) for e in self._elements.values()]

    def lead_items(self, lead_id: int | str) -> list[tuple[str, Decimal, Decimal]]:
        """The lead's linked products: name, quantity, unit price (the element's)."""
        with self._lock:
            items = []
            for element_id, quantity in self._lead_items.get(int(lead_id), {}).items():
                element = self._elements[element_id]
                price = self.account.value_of("catalog", element.values, PRICE_FIELD)
                items.append((element.name, Decimal(str(quantity)), Decimal(str(price or 0))))
            return items

    def forbid(self, detail: str | None = "Account is blocked") -> None:
        """Every API call with a valid token answers 403 (None lifts it): what amoCRM sends
        for a blocked account, an IP ban or a user without API rights, whatever was asked
        (crm-notes §1.9; amocrm.ru/developers "Коды ошибок": 403 account blocked)."""
        with self._lock:
            self._forbidden = detail

    def authorise(self, request: FakeRequest) -> FakeResponse | None:
        if not request.path.startswith("/api/"):
            return None
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme == "Bearer" and self.tokens.access_problem(token) is None:
            if self._forbidden is not None:
                return FakeResponse(403, problem(403, "Forbidden", self._forbidden))
            return None
        return FakeResponse(401, problem(401, "Unauthorized", "Unauthorized"))

    # ---- routes: contacts -----------------------------------------------------------

    def _list_contacts(self, request: FakeRequest) -> FakeResponse:
        query = request.one("query").strip().lower()
        with_leads = "leads" in request.one("with").split(",")
        hits = [c for c in self._contacts.values() if not query or self._matches(c, query)]
        # filter[id][] narrows the list to those contacts (an id or an array of ids)
        # [amocrm/amocrm-api-php src/AmoCRM/Filters/ContactsFilter.php `setIds`;
        # rdrr.io/github/grkhr/amocrm/man/AmoContacts.html "id or vector of ids"].
        ids = {int(value) for value in request.all("filter[id]") if value.isdigit()}
        if ids:
            hits = [c for c in hits if c.id in ids]
        items = [self._contact_json(c, with_leads) for c in hits]
        return self._page(request, items, "contacts")

    def _matches(self, contact: ContactRec, query: str) -> bool:
        if self._found(contact.values, query, contact.name, contact.first_name, contact.last_name):
            return True
        digits = only_digits(query)
        phones = [str(v["value"]) for v in contact.values.get(PHONE_FIELD, [])]
        return bool(re.fullmatch(r"[\d\s()+\-]{5,}", query)) and any(
            digits in only_digits(phone) for phone in phones
        )

    def _get_contact(self, request: FakeRequest, contact_id: str) -> FakeResponse:
        contact = self._contacts.get(int(contact_id))
        if contact is None:
            return FakeResponse(204)
        with_leads = "leads" in request.one("with").split(",")
        return FakeResponse(200, self._contact_json(contact, with_leads))

    def _create_contacts(self, request: FakeRequest) -> FakeResponse:
        items = self._array(request.json(), 250)
        problems = Problems()
        parsed = [self._parse_contact(item, str(i), "", problems) for i, item in enumerate(items)]
        problems.check()
        created = [self._store_contact(changes) for changes in parsed]
        rows = [self._written("contacts", c.id, str(i)) for i, c in enumerate(created)]
        return self._listing(request, "contacts", rows)

    def _patch_contact(self, request: FakeRequest, contact_id: str) -> FakeResponse:
        contact = _known(self._contacts, "contact", contact_id)
        problems = Problems()
        changes = self._parse_contact(request.json(), "0", "", problems)
        problems.check()
        self._apply_contact(contact, changes)
        return FakeResponse(
            200,
            {
                "id": contact.id,
                "name": contact.name,
                "updated_at": contact.updated_at,
                "_links": self._self_link("contacts", contact.id),
            },
        )

    # ---- routes: leads --------------------------------------------------------------

    def _list_leads(self, request: FakeRequest) -> FakeResponse:
        ids = [int(value) for value in request.all("filter[id]") if value.isdigit()]
        if ids:
            leads = [self._leads[i] for i in sorted(set(ids)) if i in self._leads]
        else:
            leads = [lead for lead in self._leads.values() if not lead.is_deleted]
        with_contacts = "contacts" in request.one("with").split(",")
        items = [self._lead_json(lead, with_contacts) for lead in leads]
        return self._page(request, items, "leads")

    def _get_lead(self, request: FakeRequest, lead_id: str) -> FakeResponse:
        lead = self._leads.get(int(lead_id))
        if lead is None:
            return FakeResponse(204)
        with_contacts = "contacts" in request.one("with").split(",")
        return FakeResponse(200, self._lead_json(lead, with_contacts))

    def _create_leads(self, request: FakeRequest) -> FakeResponse:
        items = self._array(request.json(), 250)
        problems = Problems()
        parsed = []
        for i, item in enumerate(items):
            rid = _request_id(item, i)
            changes = self._parse_lead(item, rid, problems, current=None)
            links = self._existing_contacts(item, rid, problems)
            changes["company"] = self._existing_company(item, rid, problems)
            parsed.append((rid, changes, links))
        problems.check()
        created = [(rid, self._store_lead(changes, links)) for rid, changes, links in parsed]
        rows = [self._written("leads", lead.id, rid) for rid, lead in created]
        return self._listing(request, "leads", rows)

    def _patch_leads(self, request: FakeRequest) -> FakeResponse:
        """`PATCH /api/v4/leads`: an array of leads, each by its `id` [leads-api
        "Редактирование сделок"; developers.kommo.com/reference/update-tags]."""
        items = self._array(request.json(), 250)
        problems = Problems()
        parsed: list[tuple[str, LeadRec, JSONDict]] = []
        for i, item in enumerate(items):
            rid = _request_id(item, i)
            lead_id = item.get("id") if isinstance(item, dict) else None
            lead = self._leads.get(lead_id) if is_int(lead_id) else None
            if lead is None:
                problems.add(rid, "id", "NotFound", f"lead {lead_id} not found")
                continue
            parsed.append((rid, lead, self._parse_lead(item, rid, problems, current=lead)))
        problems.check()
        for _, lead, changes in parsed:
            self._apply_lead(lead, changes)
        rows = [
            self._written("leads", lead.id, rid, updated_at=lead.updated_at)
            for rid, lead, _ in parsed
        ]
        return self._listing(request, "leads", rows)

    def _create_complex(self, request: FakeRequest) -> FakeResponse:
        items = self._array(request.json(), 50)
        problems = Problems()
        parsed: list[tuple[str, JSONDict, JSONDict | int | None, JSONDict | int | None]] = []
        for i, item in enumerate(items):
            rid = _request_id(item, i)
            changes = self._parse_lead(item, rid, problems, current=None)
            contacts = _embedded(item, "contacts")
            contact: JSONDict | int | None = None
            if not isinstance(contacts, list) or len(contacts) > 1:
                problems.add(rid, "_embedded.contacts", "InvalidType", "at most one contact")
            elif contacts and isinstance(contacts[0], dict) and "id" in contacts[0]:
                linked = self._existing_contacts(item, rid, problems)
                contact = linked[0] if linked else None
            elif contacts:
                contact = self._parse_contact(contacts[0], rid, "_embedded.contacts.0.", problems)
            company = self._complex_company(item, rid, problems)
            parsed.append((rid, changes, contact, company))
        problems.check()
        answer = []
        for rid, changes, contact, company in parsed:
            contact_id = None
            if isinstance(contact, dict):
                contact_id = self._store_contact(contact).id
            elif isinstance(contact, int):
                contact_id = contact
            company_id = company if isinstance(company, int) else None
            if isinstance(company, dict):
                company_id = self._store_company(*company["new"])
            changes["company"] = company_id
            lead = self._store_lead(changes, [contact_id] if contact_id else [])
            if isinstance(company, dict) and isinstance(contact, dict) and contact_id:
                # "При создании нового контакта и компании, они будут связаны между собой":
                # only a contact and company both new; an existing company (by id) is
                # linked to the lead alone (amocrm-api-php issue #370 reports exactly that).
                self._contact_company[contact_id] = company_id
            answer.append(
                {
                    "id": lead.id,
                    "contact_id": contact_id,
                    "company_id": company_id,
                    "request_id": [rid],
                    "merged": False,
                }
            )
        return FakeResponse(200, answer)

    def _patch_lead(self, request: FakeRequest, lead_id: str) -> FakeResponse:
        lead = _known(self._leads, "lead", lead_id)
        problems = Problems()
        changes = self._parse_lead(request.json(), "0", problems, current=lead)
        problems.check()
        self._apply_lead(lead, changes)
        return FakeResponse(
            200,
            {
                "id": lead.id,
                "updated_at": lead.updated_at,
                "_links": self._self_link("leads", lead.id),
            },
        )

    # ---- routes: companies, links, catalog -------------------------------------------

    def _list_companies(self, request: FakeRequest) -> FakeResponse:
        query = request.one("query").strip().lower()
        hits = [
            self._company_json(c)
            for c in self._companies.values()
            if not query or self._found(c.values, query, c.name)
        ]
        return self._page(request, hits, "companies")

    @staticmethod
    def _found(values: Mapping[int, list[JSONDict]], query: str, *names: str) -> bool:
        """Whether `query` is part of a name or of a custom value, any case."""
        texts = [*names, *(str(v.get("value", "")) for items in values.values() for v in items)]
        return any(query in text.lower() for text in texts)

    def _create_companies(self, request: FakeRequest) -> FakeResponse:
        items = self._array(request.json(), 250)
        problems = Problems()
        parsed: list[tuple[str, dict[int, list[JSONDict] | None]]] = []
        for i, item in enumerate(items):
            rid = str(i)
            if not isinstance(item, dict):
                problems.add(rid, "", "InvalidType", "must be an object")
                continue
            name = item.get("name", "")
            if not isinstance(name, str):
                problems.add(rid, "name", "InvalidType", "This value should be of type string.")
            values = self.account.parse_values(
                "companies", item.get("custom_fields_values"), rid, "", problems
            )
            parsed.append((str(name), values))
        problems.check()
        created = [self._store_company(name, values) for name, values in parsed]
        rows = [self._written("companies", c, str(i)) for i, c in enumerate(created)]
        return self._listing(request, "companies", rows)

    def _link_contact(self, request: FakeRequest, contact_id: str) -> FakeResponse:
        _known(self._contacts, "contact", contact_id)
        links = self._array(request.json(), 250)
        problems = Problems()
        companies = []
        for i, link in enumerate(links):
            target = link.get("to_entity_id") if isinstance(link, dict) else None
            kind = link.get("to_entity_type") if isinstance(link, dict) else None
            if kind != "companies":
                problems.add(str(i), "to_entity_type", "NotSupportedChoice", "not supported here")
            elif not is_int(target) or target not in self._companies:
                problems.add(str(i), "to_entity_id", "NotFound", "company not found")
            else:
                companies.append(int(target))
        problems.check()
        for company in companies:
            self._contact_company[int(contact_id)] = company
        source = {"entity_id": int(contact_id), "entity_type": "contacts"}
        return _links_answer([_link("companies", c, None, **source) for c in companies])

    def _lead_links(self, request: FakeRequest, lead_id: str) -> FakeResponse:
        lead = _known(self._leads, "lead", lead_id).id
        catalog = request.one("filter[to_catalog_id]")
        links: list[JSONDict] = []
        if not catalog:
            links += [
                _link("contacts", c, {"main_contact": n == 0})
                for n, c in enumerate(sorted(c for c, l_id in self._links if l_id == lead))
            ]
            if lead in self._lead_company:
                links.append(_link("companies", self._lead_company[lead], None))
        for element_id, quantity in self._lead_items.get(lead, {}).items():
            if not catalog or str(self._elements[element_id].catalog_id) == catalog:
                links.append(self._element_link(element_id, quantity))
        return self._page(request, links, "links")

    def _element_link(self, element_id: int, quantity: float, **source: Any) -> JSONDict:
        metadata = {"quantity": quantity, "catalog_id": self._elements[element_id].catalog_id}
        return _link("catalog_elements", element_id, metadata, **source)

    def _link_lead(self, request: FakeRequest, lead_id: str) -> FakeResponse:
        lead = _known(self._leads, "lead", lead_id).id
        parsed = self._element_links(request.json(), need_quantity=True)
        items = self._lead_items.setdefault(lead, {})
        for element_id, quantity in parsed:
            items[element_id] = quantity  # linking a linked element sets its quantity
        source = {"entity_id": lead, "entity_type": "leads"}
        return _links_answer([self._element_link(e, q, **source) for e, q in parsed])

    def _unlink_lead(self, request: FakeRequest, lead_id: str) -> FakeResponse:
        lead = _known(self._leads, "lead", lead_id).id
        for element_id, _ in self._element_links(request.json(), need_quantity=False):
            self._lead_items.get(lead, {}).pop(element_id, None)
        return FakeResponse(204)

    def _element_links(self, body: Any, *, need_quantity: bool) -> list[tuple[int, float]]:
        """Catalog-element links of a link / unlink request (only those are modelled)."""
        links = self._array(body, 250)
        problems = Problems()
        parsed = []
        for i, link in enumerate(links):
            rid = str(i)
            if not isinstance(link, dict) or link.get("to_entity_type") != "catalog_elements":
                problems.add(rid, "to_entity_type", "NotSupportedChoice", "not modelled")
                continue
            target, meta = link.get("to_entity_id"), link.get("metadata") or {}
            element = self._elements.get(target) if is_int(target) else None
            if element is None:
                problems.add(rid, "to_entity_id", "NotFound", "element not found")
                continue
            if not isinstance(meta, dict) or meta.get("catalog_id") != element.catalog_id:
                problems.add(rid, "metadata.catalog_id", "InvalidType", "wrong catalog")
                continue
            quantity = meta.get("quantity", 0)
            valid = isinstance(quantity, int | float) and not isinstance(quantity, bool)
            if need_quantity and not (valid and quantity > 0):
                problems.add(rid, "metadata.quantity", "InvalidType", "a positive number")
                continue
            parsed.append((element.id, float(quantity) if valid else 0.0))
        problems.check()
        return [(eid, int(q) if q.is_integer() else q) for eid, q in parsed]

    def _catalog(self, catalog_id: str) -> int:
        return _known({self.catalog_id: self.catalog_id}, "catalog", catalog_id)

    def _list_elements(self, request: FakeRequest, catalog_id: str) -> FakeResponse:
        catalog = self._catalog(catalog_id)
        query = request.one("query").strip().lower()
        hits = [
            self._element_json(e)
            for e in self._elements.values()
            if e.catalog_id == catalog and (not query or self._found(e.values, query, e.name))
        ]
        return self._page(request, hits, "elements")

    def _create_elements(self, request: FakeRequest, catalog_id: str) -> FakeResponse:
        catalog = self._catalog(catalog_id)
        parsed = self._parse_elements(request.json(), with_id=False)
        created = [self._store_element(catalog, name or "", values) for _, name, values in parsed]
        rows = [{**self._element_json(e), "request_id": str(i)} for i, e in enumerate(created)]
        return self._listing(request, "elements", rows)

    def _patch_elements(self, request: FakeRequest, catalog_id: str) -> FakeResponse:
        self._catalog(catalog_id)
        parsed = self._parse_elements(request.json(), with_id=True)
        changed = []
        for element_id, name, values in parsed:
            element = self._elements[element_id]
            if name is not None:
                element.name = name
            _apply_values(element.values, values)
            element.updated_at = int(self.clock())
            changed.append(element)
        return FakeResponse(
            200, {"_embedded": {"elements": [self._element_json(e) for e in changed]}}
        )

    def _parse_elements(
        self, body: Any, *, with_id: bool
    ) -> list[tuple[int, str | None, dict[int, list[JSONDict] | None]]]:
        items = self._array(body, 250)
        problems = Problems()
        parsed = []
        for i, item in enumerate(items):
            rid = str(i)
            if not isinstance(item, dict):
                problems.add(rid, "", "InvalidType", "must be an object")
                continue
            element_id = item.get("id", 0)
            if with_id and (not is_int(element_id) or element_id not in self._elements):
                problems.add(rid, "id", "NotFound", "element not found")
                continue
            name = item.get("name")
            if (name is None and not with_id) or (name is not None and not isinstance(name, str)):
                problems.add(rid, "name", "InvalidType", "a name is required")
                continue
            values = self.account.parse_values(
                "catalog", item.get("custom_fields_values"), rid, "", problems
            )
            parsed.append((int(element_id), name, values))
        problems.check()
        return parsed

    # ---- routes: notes, account, OAuth ----------------------------------------------

    def _list_notes(self, request: FakeRequest, lead_id: str) -> FakeResponse:
        types = set(request.all("filter[note_type]"))
        notes = [n for n in self._notes.get(int(lead_id), []) if not types or n.note_type in types]
        return self._page(request, [self._note_json(n) for n in notes], "notes")

    def _add_notes(self, request: FakeRequest, lead_id: str) -> FakeResponse:
        items = self._array(request.json(), 250)
        problems = Problems()
        if int(lead_id) not in self._leads:
            problems.add("0", "entity_id", "NotFound", f"lead {lead_id} not found")
        notes = [self._parse_note(item, i, int(lead_id), problems) for i, item in enumerate(items)]
        problems.check()
        return self._store_notes(request, notes)

    def _add_entity_notes(self, request: FakeRequest) -> FakeResponse:
        """`POST /api/v4/leads/notes`: notes of many leads, each naming its `entity_id`
        [events-and-notes "Adding notes"]."""
        items = self._array(request.json(), 250)
        problems = Problems()
        notes = []
        for i, item in enumerate(items):
            lead_id = item.get("entity_id") if isinstance(item, dict) else None
            if not is_int(lead_id) or lead_id not in self._leads:
                problems.add(_request_id(item, i), "entity_id", "NotFound", "lead not found")
                continue
            notes.append(self._parse_note(item, i, lead_id, problems))
        problems.check()
        return self._store_notes(request, notes)

    def _parse_note(
        self, item: Any, index: int, lead_id: int, problems: Problems
    ) -> tuple[str, int, str, JSONDict]:
        rid = _request_id(item, index)
        note_type = item.get("note_type") if isinstance(item, dict) else None
        params = item.get("params") if isinstance(item, dict) else None
        if note_type not in ("common", "service_message"):
            problems.add(rid, "note_type", "NotSupportedChoice", "unknown note_type")
        elif not isinstance(params, dict) or not isinstance(params.get("text"), str):
            problems.add(rid, "params.text", "InvalidType", "text must be a string")
        return rid, lead_id, str(note_type), dict(params) if isinstance(params, dict) else {}

    def _store_notes(
        self, request: FakeRequest, notes: Sequence[tuple[str, int, str, JSONDict]]
    ) -> FakeResponse:
        rows = [
            {
                "id": self._store_note(lead_id, note_type, params),
                "entity_id": lead_id,
                "request_id": rid,
            }
            for rid, lead_id, note_type, params in notes
        ]
        return self._listing(request, "notes", rows)

    def _list_pipelines(self, request: FakeRequest) -> FakeResponse:
        pipelines = [self.account.pipeline_json(p) for p in self.account.pipelines.values()]
        return self._listing(request, "pipelines", pipelines, _total_items=len(pipelines))

    def _custom_fields(self, request: FakeRequest, entity: str) -> FakeResponse:
        items = [self.account.field_json(d) for d in self.account.fields[entity].values()]
        return self._page(request, items, "custom_fields", max_limit=50)

    def _token(self, request: FakeRequest) -> FakeResponse:
        body = request.json()
        if not isinstance(body, dict):
            raise ApiError(400, {"hint": "Invalid request", "status": 400})
        if (body.get("client_id"), body.get("client_secret")) != (
            self.client_id,
            self.client_secret,
        ):
            return FakeResponse(401, {"hint": "Client authentication failed", "status": 401})
        if body.get("redirect_uri") != self.redirect_uri:
            return FakeResponse(400, {"hint": "Redirect URI mismatch", "status": 400})
        grant = body.get("grant_type")
        if grant == "refresh_token":
            pair = self.tokens.refreshed(str(body.get("refresh_token")))
            if pair == "spent":
                return FakeResponse(400, {"hint": "Token has been revoked", "status": 400})
        elif grant == "authorization_code":
            pair = self.tokens.exchanged(str(body.get("code"))) or "unknown code"
        else:
            return FakeResponse(400, {"hint": "Unsupported grant type", "status": 400})
        if isinstance(pair, str):
            hint = "Cannot decrypt the refresh token"
            if pair == "unknown code":
                hint = "Authorization code has been revoked"
            return FakeResponse(400, {"hint": hint, "status": 400})
        access, refresh = pair
        return FakeResponse(
            200,
            {
                "token_type": "Bearer",
                "expires_in": self.oauth_ttl,
                "server_time": int(self.clock()),
                "access_token": access,
                "refresh_token": refresh,
            },
        )

    # ---- parsing and validation -----------------------------------------------------

    def _array(self, body: Any, limit: int) -> list[Any]:
        if not isinstance(body, list) or not body or len(body) > limit:
            problems = Problems()
            problems.add("0", "", "InvalidType", f"body must be an array of 1..{limit} items")
            problems.check()
        return list(body)

    def _parse_contact(self, body: Any, rid: str, prefix: str, problems: Problems) -> JSONDict:
        if not isinstance(body, dict):
            problems.add(rid, prefix.rstrip("."), "InvalidType", "must be an object")
            return {}
        changes: JSONDict = {}
        for key in ("name", "first_name", "last_name"):
            if key in body:
                if isinstance(body[key], str):
                    changes[key] = body[key]
                else:
                    problems.add(rid, prefix + key, "InvalidType", "must be a string")
        changes["values"] = self.account.parse_values(
            "contacts", body.get("custom_fields_values"), rid, prefix, problems
        )
        return changes

    def _parse_lead(
        self, body: Any, rid: str, problems: Problems, *, current: LeadRec | None
    ) -> JSONDict:
        if not isinstance(body, dict):
            problems.add(rid, "", "InvalidType", "must be an object")
            return {}
        changes: JSONDict = {}
        if "name" in body:
            if isinstance(body["name"], str):
                changes["name"] = body["name"]
            else:
                problems.add(rid, "name", "InvalidType", "This value should be of type string.")
        if "price" in body:
            if is_int(body["price"]) and body["price"] >= 0:
                changes["price"] = body["price"]
            else:
                problems.add(rid, "price", "InvalidType", "This value should be of type int.")
        pipeline_id, status_id = body.get("pipeline_id"), body.get("status_id")
        for key, value in (("pipeline_id", pipeline_id), ("status_id", status_id)):
            if value is not None and not is_int(value):
                problems.add(rid, key, "InvalidType", "This value should be of type int.")
                return changes
        if pipeline_id is not None and pipeline_id not in self.account.pipelines:
            problems.add(rid, "pipeline_id", "NotSupportedChoice", "pipeline not found")
            return changes
        same_pipeline = current is not None and pipeline_id in (None, current.pipeline_id)
        pipeline = self.account.pipelines[
            pipeline_id or (current.pipeline_id if current else self.account.main_pipeline().id)
        ]
        if status_id is None:
            status_id = current.status_id if current and same_pipeline else None
            status_id = status_id or pipeline.statuses[0].id
        if not pipeline.has_status(status_id):
            problems.add(rid, "status_id", "NotSupportedChoice", "status not in the pipeline")
        changes.update(pipeline_id=pipeline.id, status_id=status_id)
        changes["values"] = self.account.parse_values(
            "leads", body.get("custom_fields_values"), rid, "", problems
        )
        return changes

    def _complex_company(self, item: Any, rid: str, problems: Problems) -> JSONDict | int | None:
        """leads/complex: an existing company by id, or a new one's model."""
        companies = _embedded(item, "companies")
        if isinstance(companies, list) and len(companies) == 1:
            model = companies[0]
            if isinstance(model, dict) and "id" not in model:
                name = model.get("name")
                if not isinstance(name, str):
                    problems.add(rid, "_embedded.companies.0.name", "InvalidType", "a string")
                    return None
                where = "_embedded.companies.0."
                raw = model.get("custom_fields_values")
                values = self.account.parse_values("companies", raw, rid, where, problems)
                return {"new": (name, values)}
        return self._existing_company(item, rid, problems)

    def _store_company(self, name: str, values: Mapping[int, list[JSONDict] | None]) -> int:
        now = int(self.clock())
        company = CompanyRec(next(self._ids["company"]), name, now, now)
        _apply_values(company.values, values)
        self._companies[company.id] = company
        return company.id

    def _store_element(
        self, catalog: int, name: str, values: Mapping[int, list[JSONDict] | None]
    ) -> ElementRec:
        now = int(self.clock())
        element = ElementRec(next(self._ids["element"]), catalog, name, now, now)
        _apply_values(element.values, values)
        self._elements[element.id] = element
        return element

    def _existing_company(self, item: Any, rid: str, problems: Problems) -> int | None:
        companies = _embedded(item, "companies")
        if not isinstance(companies, list) or len(companies) > 1:
            problems.add(rid, "_embedded.companies", "InvalidType", "at most one company")
            return None
        if not companies:
            return None
        company_id = companies[0].get("id") if isinstance(companies[0], dict) else None
        if not is_int(company_id) or company_id not in self._companies:
            problems.add(rid, "_embedded.companies.0.id", "NotFound", "company not found")
            return None
        return int(company_id)

    def _existing_contacts(self, item: Any, rid: str, problems: Problems) -> list[int]:
        contacts = _embedded(item, "contacts")
        ids = []
        for i, contact in enumerate(contacts):
            contact_id = contact.get("id") if isinstance(contact, dict) else None
            if not is_int(contact_id) or contact_id not in self._contacts:
                problems.add(rid, f"_embedded.contacts.{i}.id", "NotFound", "contact not found")
            else:
                ids.append(contact_id)
        return ids

    # ---- storing --------------------------------------------------------------------

    def _store_contact(self, changes: JSONDict) -> ContactRec:
        now = int(self.clock())
        contact = ContactRec(next(self._ids["contact"]), "", "", "", now, now)
        self._apply_contact(contact, changes)
        if not contact.name:
            contact.name = f"{contact.first_name} {contact.last_name}".strip()
        self._contacts[contact.id] = contact
        return contact

    def _apply_contact(self, contact: ContactRec, changes: JSONDict) -> None:
        for key in ("name", "first_name", "last_name"):
            if key in changes:
                setattr(contact, key, changes[key])
        _apply_values(contact.values, changes.get("values", {}))
        contact.updated_at = int(self.clock())

    def _store_lead(self, changes: JSONDict, contact_ids: Sequence[int]) -> LeadRec:
        now = int(self.clock())
        lead = LeadRec(next(self._ids["lead"]), "", 0, 0, 0, now, now)
        lead.name = f"Сделка #{lead.id}"
        self._apply_lead(lead, changes)
        self._leads[lead.id] = lead
        self._links.update((contact_id, lead.id) for contact_id in contact_ids)
        if changes.get("company") is not None:
            self._lead_company[lead.id] = changes["company"]
        return lead

    def _apply_lead(self, lead: LeadRec, changes: JSONDict) -> None:
        was_closed = lead.status_id in (WON, LOST)
        for key in ("name", "price", "pipeline_id", "status_id"):
            if key in changes:
                setattr(lead, key, changes[key])
        _apply_values(lead.values, changes.get("values", {}))
        lead.updated_at = int(self.clock())
        if (lead.status_id in (WON, LOST)) != was_closed:
            lead.closed_at = lead.updated_at if not was_closed else None

    def _store_note(self, lead_id: int, note_type: str, params: JSONDict) -> int:
        note = NoteRec(next(self._ids["note"]), lead_id, note_type, params, int(self.clock()))
        self._notes.setdefault(lead_id, []).append(note)
        return note.id

    # ---- rendering ------------------------------------------------------------------

    def _page(
        self, request: FakeRequest, items: list[JSONDict], key: str, max_limit: int = 250
    ) -> FakeResponse:
        limit = min(int(request.one("limit", "50") or 50), max_limit)
        page = max(int(request.one("page", "1") or 1), 1)
        chunk = items[(page - 1) * limit : page * limit]
        if not chunk:
            return FakeResponse(204)
        links = {"self": {"href": self._page_href(request, page)}}
        if page * limit < len(items):
            links["next"] = {"href": self._page_href(request, page + 1)}
        return FakeResponse(200, {"_page": page, "_links": links, "_embedded": {key: chunk}})

    def _page_href(self, request: FakeRequest, page: int) -> str:
        query = [(k, v) for k, v in request.query if k != "page"] + [("page", str(page))]
        return f"{self._href(request.path)}?{urlencode(query)}"

    def _href(self, path: str) -> str:
        return f"{self.origin}{path}"

    def _listing(
        self, request: FakeRequest, key: str, rows: list[JSONDict], **first: Any
    ) -> FakeResponse:
        """The answer of an array write (or a whole list): `first` (e.g. `_total_items`),
        a link to the request's path, the rows under `_embedded[key]`."""
        links = {"self": {"href": self._href(request.path)}}
        return FakeResponse(200, {**first, "_links": links, "_embedded": {key: rows}})

    def _written(self, entity: str, entity_id: int, rid: str, **extra: Any) -> JSONDict:
        """One row of an array write's answer: the entity's id, `extra`, the item's
        `request_id` and its link."""
        links = self._self_link(entity, entity_id)
        return {"id": entity_id, **extra, "request_id": rid, "_links": links}

    def _self_link(self, entity: str, entity_id: int) -> JSONDict:
        return {"self": {"href": self._href(f"/api/v4/{entity}/{entity_id}")}}

    def _contact_json(self, contact: ContactRec, with_leads: bool) -> JSONDict:
        embedded = _tags_and_company(self._contact_company.get(contact.id))
        if with_leads:
            lead_ids = sorted(lead for c, lead in self._links if c == contact.id)
            embedded["leads"] = [{"id": i, "_links": self._self_link("leads", i)} for i in lead_ids]
        return {
            "id": contact.id,
            "name": contact.name,
            "first_name": contact.first_name,
            "last_name": contact.last_name,
            "responsible_user_id": 1,
            "group_id": 0,
            "created_by": 0,
            "updated_by": 0,
            "created_at": contact.created_at,
            "updated_at": contact.updated_at,
            "closest_task_at": None,
            "is_deleted": False,
            "is_unsorted": False,
            "custom_fields_values": self.account.values_json("contacts", contact.values),
            "account_id": ACCOUNT_ID,
            "_links": self._self_link("contacts", contact.id),
            "_embedded": embedded,
        }

    def _lead_json(self, lead: LeadRec, with_contacts: bool) -> JSONDict:
        embedded = _tags_and_company(self._lead_company.get(lead.id))
        if with_contacts:
            contact_ids = sorted(c for c, lead_id in self._links if lead_id == lead.id)
            embedded["contacts"] = [
                {"id": c, "is_main": n == 0, "_links": self._self_link("contacts", c)}
                for n, c in enumerate(contact_ids)
            ]
        return {
            "id": lead.id,
            "name": lead.name,
            "price": lead.price,
            "responsible_user_id": 1,
            "group_id": 0,
            "status_id": lead.status_id,
            "pipeline_id": lead.pipeline_id,
            "loss_reason_id": None,
            "created_by": 0,
            "updated_by": 0,
            "created_at": lead.created_at,
            "updated_at": lead.updated_at,
            "closed_at": lead.closed_at,
            "closest_task_at": None,
            "is_deleted": lead.is_deleted,
            "custom_fields_values": self.account.values_json("leads", lead.values),
            "score": None,
            "account_id": ACCOUNT_ID,
            "labor_cost": None,
            "_links": self._self_link("leads", lead.id),
            "_embedded": embedded,
        }

    def _company_json(self, company: CompanyRec) -> JSONDict:
        contacts = sorted(c for c, owner in self._contact_company.items() if owner == company.id)
        leads = sorted(lead for lead, owner in self._lead_company.items() if owner == company.id)
        return {
            "id": company.id,
            "name": company.name,
            "responsible_user_id": 1,
            "group_id": 0,
            "created_by": 0,
            "updated_by": 0,
            "created_at": company.created_at,
            "updated_at": company.updated_at,
            "closest_task_at": None,
            "is_deleted": False,
            "custom_fields_values": self.account.values_json("companies", company.values),
            "account_id": ACCOUNT_ID,
            "_links": self._self_link("companies", company.id),
            "_embedded": {
                "tags": [],
                "contacts": [{"id": c} for c in contacts],
                "leads": [{"id": lead} for lead in leads],
            },
        }

    def _element_json(self, element: ElementRec) -> JSONDict:
        return {
            "id": element.id,
            "catalog_id": element.catalog_id,
            "name": element.name,
            "created_by": 0,
            "updated_by": 0,
            "created_at": element.created_at,
            "updated_at": element.updated_at,
            "is_deleted": False,
            "custom_fields_values": self.account.values_json("catalog", element.values),
            "account_id": ACCOUNT_ID,
            "_links": {
                "self": {
                    "href": self._href(
                        f"/api/v4/catalogs/{element.catalog_id}/elements/{element.id}"
                    )
                }
            },
        }

    def _note_json(self, note: NoteRec) -> JSONDict:
        return {
            "id": note.id,
            "entity_id": note.entity_id,
            "created_by": 0,
            "updated_by": 0,
            "created_at": note.created_at,
            "updated_at": note.created_at,
            "responsible_user_id": 1,
            "group_id": 0,
            "note_type": note.note_type,
            "params": dict(note.params),
            "account_id": ACCOUNT_ID,
        }


def _request_id(item: Any, index: int) -> str:
    """The `request_id` the client gave an item of an array write ("returned unchanged"
    [developers.kommo.com, leads and notes "add"]), else its index."""
    given = item.get("request_id") if isinstance(item, dict) else None
    valid = isinstance(given, str | int) and not isinstance(given, bool)
    return str(given) if valid else str(index)


def _link(to_type: str, to_id: int, metadata: JSONDict | None, **source: Any) -> JSONDict:
    """One link as the links API shows it (`source`: its entity, where the answer names
    it)."""
    return {**source, "to_entity_id": to_id, "to_entity_type": to_type, "metadata": metadata}


def _links_answer(links: list[JSONDict]) -> FakeResponse:
    return FakeResponse(200, {"_total_items": len(links), "_embedded": {"links": links}})


def _tags_and_company(company: int | None) -> JSONDict:
    """The `_embedded` a contact or lead always shows: no tags, its one company if any."""
    return {"tags": [], "companies": [] if company is None else [{"id": company}]}


def _known(records: Mapping[int, Known], kind: str, record_id: str) -> Known:
    """The record a route's path names, else 404."""
    record = records.get(int(record_id))
    if record is None:
        raise ApiError(404, problem(404, "Not Found", f"{kind} {record_id}"))
    return record


def _embedded(item: Any, key: str) -> Any:
    """`_embedded[key]` of an array write's item (empty when absent)."""
    embedded = (item.get("_embedded") or {}) if isinstance(item, dict) else {}
    return embedded.get(key) or []


def _apply_values(
    values: dict[int, list[JSONDict]], changes: Mapping[int, list[JSONDict] | None]
) -> None:
    for field_id, items in changes.items():
        if items is None:
            values.pop(field_id, None)
        else:
            values[field_id] = items
