"""A stateful fake of Pipedrive's API (v2 persons, deals, organizations, products, deal
products, search, pipelines, stages and fields; v1 notes; the OAuth token endpoint): one
company, its persons, deals, organizations, products and notes.

It answers like the real API where the bridge depends on it:
- `GET /api/v2/persons/search` searches one `term` in the chosen `fields` (name, email,
  phone, custom_fields of text-like types); `exact_match=true` is a whole-value,
  case-insensitive match, otherwise a substring one; phones are compared by their digits,
  partially from the start only ("7999123" finds "+7 999 123-45-67", "9991234567" does not
  find "8 (999) 123-45-67"; exact needs the same digits). Hits show phones
  and emails as strings and the searchable custom-field values unkeyed;
- a deal belongs to one person (`person_id`); its `status` open/won/lost/deleted is
  independent of its stage; `GET /api/v2/deals` filters by person and status, sorts by
  `update_time`, pages by cursor and returns only the asked `custom_fields`; a deleted deal
  still answers `GET /deals/{id}` (status deleted), an unknown one is a 404;
- writes are validated first and applied only when the whole request is valid: unknown
  custom-field key, an option id the field lacks, a string for a number, an unknown
  pipeline, stage or person → 400 `{"success": false, "error": "Validation failed: …"}`;
- notes (v1) keep their HTML `content` (scripts stripped, as Pipedrive sanitises);
- organizations: `GET /api/v2/organizations/search` like persons' (name, custom_fields of
  text-like types; exact or substring, any case); a person belongs to one organization
  (`org_id`), a deal to one (`org_id`), both set on create or by PATCH;
- products: `GET /api/v2/products/search` (code, name; exact or substring, any case),
  `POST /api/v2/products`; a deal's products are attachments of catalog products
  (`POST /api/v2/deals/{id}/products/bulk`, at most 100, all checked before any is
  attached: an unknown product → 400 and nothing attached), detached by
  `DELETE /api/v2/deals/{id}/products` (without `ids`: every one, 100 per call, with
  `more_items_in_collection`) [SPEC v2 /deals/{id}/products, /deals/{id}/products/bulk];
  a deal with products takes its value from them (their sum);
- a deal's status `lost` is set by PATCH with any stage (`lost_reason` kept);
- credentials: `x-api-token` header (never `?api_token=`) or `Authorization: Bearer` with
  an access token that expires by `clock` → 401. OAuth refresh tokens are reused, as
  Pipedrive documents (`rotate_refresh_tokens=True` makes them single-use);
- every authorised request costs its `x-token-cost` from a daily (UTC) budget; spent →
  429. Bursts: more than `rate_limit` requests in any 2 s, or more than 10 searches, →
  429 with `x-ratelimit-limit/remaining/reset` and no `Retry-After`.

Set up and inspect (no call is logged): `add_organization`, `organizations()`,
`deal_org`, `person_orgs`, `add_product`, `delete_product`, `products()`,
`deal_products(deal)`, `add_person`, `delete_person`, `add_deal`,
`move_deal`, `add_note`, `persons()`, `person(id)`, `deals()`, `deal(id)`,
`notes(deal_id)` (raw HTML), `deal_field`, `person_field`, `tokens_used`. Credentials:
`issue_api_token()`, `revoke_api_tokens()`, `issue_oauth_pair(ttl)`, `register_code(code)`,
`expire_all_access_tokens()`.
"""

from __future__ import annotations

import base64
import itertools
import math
import re
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from bridge.settings import CrmConfig, load_file_config
from tests.fakes.crm_events import PIPEDRIVE_V2_DEAL, CrmRequest, pipedrive_deal_change
from tests.fakes.pipedrive_company import Company, is_number, validation_error
from tests.fakes.service import (
    ApiError,
    FakeRequest,
    FakeResponse,
    FakeService,
    JSONDict,
    OAuthFake,
    only_digits,
    telegram_fields,
)

EXAMPLE_CONFIG = Path(__file__).resolve().parents[2] / "etc" / "crm-pipedrive.example.toml"
SEARCH_PATHS = (
    "/api/v2/persons/search",
    "/api/v2/itemSearch",
    "/api/v2/organizations/search",
    "/api/v2/products/search",
)
MAX_BULK = 100
# A refresh answers the same refresh token, whose 60-day idle expiry restarts.
TOKENS = {"prefixes": ("v1u:", "1:1:"), "rotates": False, "idle_expiry": 60 * 86400}
DEAL_STATUSES = ("open", "won", "lost", "deleted")
INFO = "Please check developers.pipedrive.com for more information about Pipedrive API."


@dataclass
class PersonRec:
    id: int
    name: str
    phones: list[JSONDict]
    emails: list[JSONDict]
    add_time: float
    update_time: float
    custom: dict[str, Any] = field(default_factory=dict)
    is_deleted: bool = False
    org_id: int | None = None


@dataclass
class OrgRec:
    id: int
    name: str
    add_time: float
    update_time: float
    custom: dict[str, Any] = field(default_factory=dict)


@dataclass
class ProductRec:
    id: int
    name: str
    code: str
    prices: list[JSONDict]
    is_deleted: bool = False


@dataclass
class DealProductRec:
    id: int
    deal_id: int
    product_id: int
    name: str
    item_price: float
    quantity: float
    comments: str = ""


@dataclass
class DealRec:
    id: int
    title: str
    person_id: int | None
    pipeline_id: int
    stage_id: int
    value: float
    add_time: float
    update_time: float
    status: str = "open"
    currency: str = "RUB"
    custom: dict[str, Any] = field(default_factory=dict)
    is_deleted: bool = False
    org_id: int | None = None
    lost_reason: str | None = None


@dataclass
class NoteRec:
    id: int
    deal_id: int
    content: str
    add_time: float


def rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(int(seconds), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def not_found(what: str) -> ApiError:
    return ApiError(404, {"success": False, "error": f"{what} not found", "error_info": INFO})


class FakePipedrive(OAuthFake, FakeService):
    """The company of `etc/crm-pipedrive.example.toml` (or `config`), empty of data."""

    name = "fake Pipedrive"

    def __init__(
        self,
        config: CrmConfig | None = None,
        *,
        rate_limit: int = 20,  # per 2 s: an API token on the smallest plan
        search_limit: int = 10,  # per 2 s, on every plan
        daily_budget: int = 30_000,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        client_id: str = "fake-client-id",
        client_secret: str = "fake-client-secret",  # noqa: S107
        redirect_uri: str = "https://bridge.example/oauth",
        oauth_ttl: int = 3599,
        rotate_refresh_tokens: bool = False,
    ) -> None:
        super().__init__(rate_limit=rate_limit, monotonic=monotonic)
        self.config = config or load_file_config(EXAMPLE_CONFIG).crm["pipedrive"]
        self.company = Company.from_config(self.config)
        self.search_limit, self.daily_budget = search_limit, daily_budget
        self.rotate_refresh_tokens = rotate_refresh_tokens
        self._persons: dict[int, PersonRec] = {}
        self._deals: dict[int, DealRec] = {}
        self._notes: dict[int, list[NoteRec]] = {}
        self._orgs: dict[int, OrgRec] = {}
        self._products: dict[int, ProductRec] = {}
        self._deal_products: dict[int, DealProductRec] = {}
        self._api_tokens: set[str] = set()
        self.oauth_client(clock, client_id, client_secret, oauth_ttl, redirect_uri, **TOKENS)
        starts = (("p", 1001), ("d", 2001), ("n", 3001), ("o", 4001), ("g", 5001), ("a", 6001))
        self._ids = {k: itertools.count(s) for k, s in starts}
        self._search_window: deque[float] = deque()
        self._spent: dict[int, int] = {}  # UTC day → tokens
        costed = [
            ("GET", r"/api/v2/persons/search", self._search, 20),
            ("GET", r"/api/v2/persons/(\d+)", self._get_person, 1),
            ("POST", r"/api/v2/persons", self._create_person, 5),
            ("PATCH", r"/api/v2/persons/(\d+)", self._patch_person, 5),
            ("GET", r"/api/v2/deals", self._list_deals, 10),
            ("POST", r"/api/v2/deals", self._create_deal, 5),
            ("GET", r"/api/v2/deals/(\d+)", self._get_deal, 1),
            ("PATCH", r"/api/v2/deals/(\d+)", self._patch_deal, 5),
            ("GET", r"/api/v2/pipelines", self._pipelines, 5),
            ("GET", r"/api/v2/stages", self._stages, 5),
            ("GET", r"/api/v2/(deal|person|organization)Fields", self._fields, 10),
            ("GET", r"/api/v2/organizations/search", self._search_orgs, 20),
            ("POST", r"/api/v2/organizations", self._create_org, 5),
            ("GET", r"/api/v2/products/search", self._search_products, 20),
            ("POST", r"/api/v2/products", self._create_product, 5),
            ("GET", r"/api/v2/deals/(\d+)/products", self._list_deal_products, 10),
            ("DELETE", r"/api/v2/deals/(\d+)/products", self._delete_deal_products, 15),
            ("POST", r"/api/v2/deals/(\d+)/products/bulk", self._add_deal_products, 25),
            ("GET", r"(?:/api)?/v1/notes", self._list_notes, 20),
            ("POST", r"(?:/api)?/v1/notes", self._add_note_route, 10),
            ("POST", r"/oauth/token", self._token, 0),
        ]
        self.routes = [(m, re.compile(p), handler) for m, p, handler, _ in costed]
        self._costs = [(m, re.compile(p), cost) for m, p, _, cost in costed]

    # ---- credentials ----------------------------------------------------------------

    def issue_api_token(self) -> str:
        token = secrets.token_hex(20)
        with self._lock:
            self._api_tokens.add(token)
        return token

    def revoke_api_tokens(self) -> None:
        with self._lock:
            self._api_tokens.clear()

    # ---- inspection and setup -------------------------------------------------------

    @property
    def tokens_used(self) -> int:
        with self._lock:
            return self._spent.get(int(self.clock() // 86400), 0)

    def persons(self) -> list[JSONDict]:
        with self._lock:
            return [self._person_json(p) for p in self._persons.values() if not p.is_deleted]

    def person(self, person_id: int | str) -> JSONDict:
        with self._lock:
            return self._person_json(self._persons[int(person_id)])

    def deals(self) -> list[JSONDict]:
        with self._lock:
            return [self._deal_json(d) for d in self._deals.values() if not d.is_deleted]

    def deal(self, deal_id: int | str) -> JSONDict:
        with self._lock:
            return self._deal_json(self._deals[int(deal_id)])

    def notes(self, deal_id: int | str) -> list[str]:
        """The stored HTML `content` of the deal's notes, oldest first."""
        with self._lock:
            return [note.content for note in self._notes.get(int(deal_id), [])]

    def deal_field(self, deal_id: int | str, key: str) -> Any:
        """The stored value: text, a number, "YYYY-MM-DD", an option id or a list of them."""
        with self._lock:
            return self._deals[int(deal_id)].custom.get(key)

    def person_field(self, person_id: int | str, key: str) -> Any:
        with self._lock:
            return self._persons[int(person_id)].custom.get(key)

    def add_organization(self, name: str, inn: str = "") -> int:
        """An organization as a manager would have typed it (the INN in its field)."""
        inn_field = self.config.order_fields.company_inn
        with self._lock:
            return self._store_org(name, {inn_field: inn} if inn and inn_field else {}).id

    def organizations(self) -> list[JSONDict]:
        with self._lock:
            return [self._org_json(org) for org in self._orgs.values()]

    def deal_org(self, deal_id: int | str) -> str | None:
        with self._lock:
            org_id = self._deals[int(deal_id)].org_id
            return None if org_id is None else str(org_id)

    def person_orgs(self, person_id: int | str) -> set[str]:
        """The person's organization as a set (a person has at most one)."""
        with self._lock:
            org_id = self._persons[int(person_id)].org_id
            return set() if org_id is None else {str(org_id)}

    def add_product(self, name: str, code: str, price: float = 0) -> int:
        with self._lock:
            return self._store_product(name, code, [{"currency": "RUB", "price": price}]).id

    def delete_product(self, product_id: int) -> None:
        with self._lock:
            self._products[product_id].is_deleted = True

    def products(self) -> list[JSONDict]:
        with self._lock:
            return [self._product_json(p) for p in self._products.values() if not p.is_deleted]

    def deal_products(self, deal_id: int | str) -> list[tuple[str, Decimal, Decimal]]:
        """The deal's attached products as (name as ordered, quantity, unit price)."""
        with self._lock:
            return [
                (a.comments or a.name, Decimal(str(a.quantity)), Decimal(str(a.item_price)))
                for a in self._deal_products.values()
                if a.deal_id == int(deal_id)
            ]

    def _deal_products_json(self, deal_id: int | str) -> list[JSONDict]:
        with self._lock:
            attached = self._deal_products.values()
            return [self._attachment_json(a) for a in attached if a.deal_id == int(deal_id)]

    def add_person(
        self,
        name: str = "",
        *,
        phones: Iterable[str] = (),
        emails: Iterable[str] = (),
        telegram_id: str | None = None,
        telegram_username: str | None = None,
        fields: Mapping[str, Any] | None = None,
        update_time: float | None = None,
    ) -> int:
        """A person as a manager would have typed it; returns its id."""
        custom = dict(fields or {})
        custom.update(telegram_fields(self.config, telegram_id, telegram_username))
        with self._lock:
            checked = self.company.parse_custom_fields("person", custom)
            now = self.clock()
            person = PersonRec(
                next(self._ids["p"]),
                name,
                _labelled(phones, "mobile"),
                _labelled(emails, "work"),
                now,
                update_time if update_time is not None else now,
                {k: v for k, v in checked.items() if v is not None},
            )
            self._persons[person.id] = person
            return person.id

    def add_deal(
        self,
        person_id: int | None = None,
        *,
        title: str = "Сделка",
        pipeline_id: int | None = None,
        stage_id: int | None = None,
        status: str = "open",
        value: float = 0,
        fields: Mapping[str, Any] | None = None,
        update_time: float | None = None,
        is_deleted: bool = False,
    ) -> int:
        with self._lock:
            stage = self._stage_for(pipeline_id, stage_id)
            checked = self.company.parse_custom_fields("deal", dict(fields or {}))
            now = self.clock()
            deal = DealRec(
                next(self._ids["d"]),
                title,
                person_id,
                stage.pipeline_id,
                stage.id,
                value,
                now,
                update_time if update_time is not None else now,
                status,
                custom={k: v for k, v in checked.items() if v is not None},
                is_deleted=is_deleted,
            )
            self._deals[deal.id] = deal
            return deal.id

    def move_deal(
        self,
        deal_id: int | str,
        *,
        stage_id: int | None = None,
        status: str | None = None,
        person_id: int | None = None,
        is_deleted: bool | None = None,
    ) -> None:
        """What a manager does in the app: change stage, win/lose, relink, delete."""
        with self._lock:
            deal = self._deals[int(deal_id)]
            if stage_id is not None:
                stage = self._stage_for(None, stage_id)
                deal.stage_id, deal.pipeline_id = stage.id, stage.pipeline_id
            if status is not None:
                deal.status = status
            if person_id is not None:
                deal.person_id = person_id
            if is_deleted is not None:
                deal.is_deleted = is_deleted
            deal.update_time = self.clock()

    def move_deal_event(
        self, deal_id: int | str, stage_id: int, *, url: str, user: str, password: str
    ) -> CrmRequest:
        """A manager moving the deal; the webhooks v2 `change` Pipedrive then posts to
        `url` with the webhook's Basic credentials (`previous`: the changed fields only)."""
        with self._lock:
            deal = self._deals[int(deal_id)]
            before = {"stage_id": deal.stage_id, "pipeline_id": deal.pipeline_id}
        self.move_deal(deal_id, stage_id=stage_id)
        with self._lock:
            now = self._deal_json(deal)
            data = {key: now[key] for key in PIPEDRIVE_V2_DEAL}
            previous = {key: value for key, value in before.items() if now[key] != value}
            stamp = int(deal.update_time)
        return pipedrive_deal_change(
            url, data, previous, user=user, password=password, timestamp=stamp
        )

    def delete_person(self, person_id: int | str) -> None:
        with self._lock:
            self._persons[int(person_id)].is_deleted = True

    def add_note(self, deal_id: int | str, content: str) -> int:
        with self._lock:
            return self._store_note(int(deal_id), content)

    # ---- the gate: credentials, budget, search bursts -------------------------------

    def authorise(self, request: FakeRequest) -> FakeResponse | None:
        if request.path == "/oauth/token":
            return None
        if "api_token" in request.params():
            return _unauthorised()  # v2 takes tokens only in headers
        token = request.headers.get("x-api-token")
        scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
        if token is not None:
            valid = token in self._api_tokens
        else:
            valid = scheme == "Bearer" and self.tokens.access_problem(bearer) is None
        if not valid:
            return _unauthorised()
        if request.path in SEARCH_PATHS and not self._admit_search():
            return self._too_many()
        cost = self._cost(request)
        day = int(self.clock() // 86400)
        if self._spent.get(day, 0) + cost > self.daily_budget:
            self.throttled += 1
            body = {"success": False, "error": "Daily API token budget exceeded", "errorCode": 429}
            return FakeResponse(429, body)
        self._spent[day] = self._spent.get(day, 0) + cost
        return None

    def _cost(self, request: FakeRequest) -> int:
        for method, pattern, cost in self._costs:
            if method == request.method and pattern.fullmatch(request.path):
                return cost
        return 0

    def _admit(self) -> bool:
        """Pipedrive's burst window is a rolling 2 seconds."""
        return self._admit_in(self._window, self.rate_limit, 2.0)

    def _admit_search(self) -> bool:
        return self._admit_in(self._search_window, self.search_limit, 2.0)

    def _too_many(self) -> FakeResponse:
        self.throttled += 1
        # Seconds until the oldest request leaves the 2 s window (1 for an injected 429).
        now = self.monotonic()
        oldest = self._window[0] if len(self._window) >= self.rate_limit else now - 1.0
        reset = max(1, math.ceil(2.0 - (now - oldest)))
        headers = {"x-ratelimit-limit": str(self.rate_limit), "x-ratelimit-remaining": "0"}
        headers["x-ratelimit-reset"] = str(reset)
        if self.retry_after is not None:
            headers["retry-after"] = str(self.retry_after)
        body = {"success": False, "error": "Request over limit", "errorCode": 429}
        return FakeResponse(429, body, headers)

    # ---- routes: persons ------------------------------------------------------------

    def _search(self, request: FakeRequest) -> FakeResponse:
        allowed = ("custom_fields", "email", "notes", "phone", "name")
        term, exact, fields = _search_terms(request, allowed)
        hits = [
            person
            for person in self._persons.values()
            if not person.is_deleted and self._person_matches(person, term, exact, fields)
        ]
        return _search_answer(request, [self._search_item(p) for p in hits])

    def _person_matches(self, person: PersonRec, term: str, exact: bool, fields: list[str]) -> bool:
        if "name" in fields and _hit([person.name], term, exact):
            return True
        if "email" in fields and _hit((e["value"] for e in person.emails), term, exact):
            return True
        # A phone's partial match is on the beginning of the stored number, punctuation
        # left out ("7999" finds "+7 999 123-45-67", "9991234567" does not): Pipedrive
        # documents only `exact_match`, so the fake assumes no more than a prefix search
        # [SPEC persons/search; crm-notes §2.2 "Phone caveat"].
        digits = only_digits(term)
        if "phone" in fields and digits:
            phone_digits = [only_digits(p["value"]) for p in person.phones]
            if any(d == digits if exact else d.startswith(digits) for d in phone_digits):
                return True
        searchable = self.company.searchable_values("person", person.custom)
        return "custom_fields" in fields and _hit(searchable, term, exact)

    def _live_person(self, person_id: str) -> PersonRec:
        person = self._persons.get(int(person_id))
        if person is None or person.is_deleted:
            raise not_found("Person")
        return person

    def _get_person(self, request: FakeRequest, person_id: str) -> FakeResponse:
        return _ok(self._person_json(self._live_person(person_id), _field_filter(request)))

    def _create_person(self, request: FakeRequest) -> FakeResponse:
        changes = self._parse_person(request.json(), creating=True)
        now = self.clock()
        person = PersonRec(next(self._ids["p"]), "", [], [], now, now)
        self._apply_person(person, changes)
        self._persons[person.id] = person
        return _ok(self._person_json(person))

    def _patch_person(self, request: FakeRequest, person_id: str) -> FakeResponse:
        person = self._live_person(person_id)
        self._apply_person(person, self._parse_person(request.json(), creating=False))
        return _ok(self._person_json(person))

    def _parse_person(self, body: Any, *, creating: bool) -> JSONDict:
        if not isinstance(body, dict):
            raise validation_error("body must be an object")
        changes: JSONDict = {}
        if "name" in body or creating:
            if not isinstance(body.get("name"), str) or not body["name"].strip():
                raise validation_error("name is required")
            changes["name"] = body["name"]
        for key in ("phones", "emails"):
            if key in body:
                entries = body[key]
                ok = isinstance(entries, list) and all(
                    isinstance(e, dict) and isinstance(e.get("value"), str) for e in entries
                )
                if not ok:
                    raise validation_error(f"{key} must be an array of {{value, primary, label}}")
                changes[key] = [dict(e) for e in entries]
        if "org_id" in body:
            changes["org_id"] = self._org_ref(body["org_id"])
        changes["custom"] = self.company.parse_custom_fields("person", body.get("custom_fields"))
        return changes

    def _apply_person(self, person: PersonRec, changes: JSONDict) -> None:
        person.name = changes.get("name", person.name)
        person.phones = changes.get("phones", person.phones)
        person.emails = changes.get("emails", person.emails)
        person.org_id = changes.get("org_id", person.org_id)
        _merge(person.custom, changes["custom"])
        person.update_time = self.clock()

    # ---- routes: deals --------------------------------------------------------------

    def _list_deals(self, request: FakeRequest) -> FakeResponse:
        person_id = _int_param(request, "person_id")
        raw_status = request.one("status")
        statuses = [s for s in raw_status.split(",") if s] if raw_status else []
        if not set(statuses) <= set(DEAL_STATUSES):
            raise validation_error("status must be open, won, lost or deleted")
        sort_by = request.one("sort_by", "id")
        direction = request.one("sort_direction", "asc")
        if sort_by not in ("id", "update_time", "add_time") or direction not in ("asc", "desc"):
            raise validation_error("sort_by/sort_direction not supported")

        def wanted(deal: DealRec) -> bool:
            if person_id is not None and deal.person_id != person_id:
                return False
            if deal.is_deleted:
                return "deleted" in statuses
            return not statuses or deal.status in statuses

        deals = sorted(
            (d for d in self._deals.values() if wanted(d)),
            key=lambda d: (getattr(d, sort_by), d.id),
            reverse=direction == "desc",
        )
        keys = _field_filter(request)
        return _paged(request, [self._deal_json(d, keys) for d in deals])

    def _get_deal(self, request: FakeRequest, deal_id: str) -> FakeResponse:
        deal = self._deals.get(int(deal_id))
        if deal is None:
            raise not_found("Deal")
        return _ok(self._deal_json(deal, _field_filter(request)))

    def _create_deal(self, request: FakeRequest) -> FakeResponse:
        changes = self._parse_deal(request.json(), current=None)
        now = self.clock()
        stage = changes.pop("stage")
        deal = DealRec(next(self._ids["d"]), "", None, stage.pipeline_id, stage.id, 0, now, now)
        self._apply_deal(deal, changes)
        self._deals[deal.id] = deal
        return _ok(self._deal_json(deal))

    def _patch_deal(self, request: FakeRequest, deal_id: str) -> FakeResponse:
        deal = self._live_deal(deal_id)
        changes = self._parse_deal(request.json(), current=deal)
        stage = changes.pop("stage", None)
        if stage is not None:
            deal.stage_id, deal.pipeline_id = stage.id, stage.pipeline_id
        self._apply_deal(deal, changes)
        return _ok(self._deal_json(deal))

    def _parse_deal(self, body: Any, *, current: DealRec | None) -> JSONDict:
        if not isinstance(body, dict):
            raise validation_error("body must be an object")
        changes: JSONDict = {}
        if "title" in body or current is None:
            if not isinstance(body.get("title"), str) or not body["title"].strip():
                raise validation_error("title is required")
            changes["title"] = body["title"]
        for key in ("person_id", "pipeline_id", "stage_id"):
            if key in body and (not isinstance(body[key], int) or isinstance(body[key], bool)):
                raise validation_error(f"{key} must be an integer")
        if "person_id" in body:
            person = self._persons.get(body["person_id"])
            if person is None or person.is_deleted:
                raise validation_error(f"person {body['person_id']} does not exist")
            changes["person_id"] = body["person_id"]
        if "stage_id" in body or "pipeline_id" in body or current is None:
            changes["stage"] = self._stage_for(body.get("pipeline_id"), body.get("stage_id"))
        if "value" in body:
            if not is_number(body["value"]):
                raise validation_error("value must be a number")
            changes["value"] = body["value"]
        if "status" in body:
            if body["status"] not in ("open", "won", "lost"):
                raise validation_error("status must be open, won or lost")
            changes["status"] = body["status"]
        if "currency" in body:
            if not isinstance(body["currency"], str):
                raise validation_error("currency must be a string")
            changes["currency"] = body["currency"]
        changes.update(self._parse_deal_links(body))
        changes["custom"] = self.company.parse_custom_fields("deal", body.get("custom_fields"))
        return changes

    def _parse_deal_links(self, body: JSONDict) -> JSONDict:
        """A deal write's organization and lost reason."""
        changes: JSONDict = {}
        if "org_id" in body:
            changes["org_id"] = self._org_ref(body["org_id"])
        if "lost_reason" in body:
            if not isinstance(body["lost_reason"], str | None):
                raise validation_error("lost_reason must be a string")
            changes["lost_reason"] = body["lost_reason"]
        return changes

    def _apply_deal(self, deal: DealRec, changes: JSONDict) -> None:
        for key in ("title", "person_id", "value", "status", "currency", "org_id", "lost_reason"):
            if key in changes:
                setattr(deal, key, changes[key])
        _merge(deal.custom, changes.get("custom", {}))
        deal.update_time = self.clock()

    def _stage_for(self, pipeline_id: int | None, stage_id: int | None) -> Any:
        company = self.company
        if pipeline_id is not None and pipeline_id not in company.pipelines:
            raise validation_error(f"pipeline {pipeline_id} does not exist")
        if stage_id is None:
            return company.first_stage(pipeline_id or min(company.pipelines))
        stage = company.stages.get(stage_id)
        if stage is None:
            raise validation_error(f"stage {stage_id} does not exist")
        if pipeline_id is not None and stage.pipeline_id != pipeline_id:
            raise validation_error(f"stage {stage_id} is not in pipeline {pipeline_id}")
        return stage

    def _org_ref(self, value: Any) -> int | None:
        """An `org_id` of a write: an existing organization's id, or null to unlink."""
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value not in self._orgs:
            raise validation_error(f"organization {value!r} does not exist")
        return value

    # ---- routes: organizations, products, deal products -----------------------------

    def _search_orgs(self, request: FakeRequest) -> FakeResponse:
        allowed = ("address", "custom_fields", "notes", "name")
        term, exact, fields = _search_terms(request, allowed)

        def values(org: OrgRec) -> list[str]:
            found = [org.name] if "name" in fields else []
            if "custom_fields" in fields:
                found += self.company.searchable_values("organization", org.custom)
            return found

        hits = [org for org in self._orgs.values() if _hit(values(org), term, exact)]
        return _search_answer(request, [self._org_search_item(org) for org in hits])

    def _create_org(self, request: FakeRequest) -> FakeResponse:
        body = request.json()
        name = body.get("name") if isinstance(body, dict) else None
        if not isinstance(name, str) or not name.strip():
            raise validation_error("name is required")
        custom = self.company.parse_custom_fields("organization", body.get("custom_fields"))
        return _ok(self._org_json(self._store_org(name, custom)))

    def _store_org(self, name: str, custom: Mapping[str, Any]) -> OrgRec:
        now = self.clock()
        org = OrgRec(next(self._ids["o"]), name, now, now)
        _merge(org.custom, custom)
        self._orgs[org.id] = org
        return org

    def _search_products(self, request: FakeRequest) -> FakeResponse:
        term, exact, fields = _search_terms(request, ("code", "custom_fields", "name"))

        def values(product: ProductRec) -> list[str]:
            return [v for f, v in (("code", product.code), ("name", product.name)) if f in fields]

        hits = [
            p for p in self._products.values() if not p.is_deleted and _hit(values(p), term, exact)
        ]
        return _search_answer(request, [self._product_search_item(p) for p in hits])

    def _create_product(self, request: FakeRequest) -> FakeResponse:
        body = request.json()
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            raise validation_error("name is required")
        if not body["name"]:
            raise validation_error("name cannot be an empty string")
        code = body.get("code", "")
        prices = body.get("prices", [])
        if not isinstance(code, str) or not isinstance(prices, list):
            raise validation_error("code must be a string, prices an array")
        for price in prices:
            ok = isinstance(price, dict) and isinstance(price.get("currency"), str)
            if not ok or not is_number(price.get("price")):
                raise validation_error("prices: objects with currency and a numeric price")
        if len({price["currency"] for price in prices}) != len(prices):
            raise validation_error("one price per currency")
        product = self._store_product(body["name"], code, [dict(p) for p in prices])
        return _ok(self._product_json(product))

    def _store_product(self, name: str, code: str, prices: list[JSONDict]) -> ProductRec:
        product = ProductRec(next(self._ids["g"]), name, code, prices)
        self._products[product.id] = product
        return product

    def _live_deal(self, deal_id: str) -> DealRec:
        deal = self._deals.get(int(deal_id))
        if deal is None or deal.is_deleted:
            raise not_found("Deal")
        return deal

    def _list_deal_products(self, request: FakeRequest, deal_id: str) -> FakeResponse:
        return _paged(request, self._deal_products_json(self._live_deal(deal_id).id))

    def _delete_deal_products(self, request: FakeRequest, deal_id: str) -> FakeResponse:
        """Without `ids`: the deal's attachments, 100 at most per call ("If not provided,
        all deal products will be deleted up to 100 items") [SPEC v2 DELETE
        /deals/{id}/products]."""
        deal = self._live_deal(deal_id)
        attached = [a.id for a in self._deal_products.values() if a.deal_id == deal.id]
        raw = request.one("ids")
        if raw:
            wanted = [int(part) for part in raw.split(",") if part.strip().isdigit()]
            if len(wanted) > MAX_BULK:
                raise validation_error(f"ids: at most {MAX_BULK}")
            chosen = [i for i in wanted if i in attached]
        else:
            chosen = attached[:MAX_BULK]
        for attachment_id in chosen:
            del self._deal_products[attachment_id]
        self._value_from_products(deal)
        more = len(attached) - len(chosen) > 0 and not raw
        body = {"success": True, "data": {"ids": chosen}}
        return FakeResponse(200, {**body, "additional_data": {"more_items_in_collection": more}})

    def _add_deal_products(self, request: FakeRequest, deal_id: str) -> FakeResponse:
        deal = self._live_deal(deal_id)
        body = request.json()
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list) or not 0 < len(data) <= MAX_BULK:
            raise validation_error(f"data: an array of 1 to {MAX_BULK} products")
        checked = [self._checked_attachment(entry) for entry in data]
        created = []
        for product, entry in checked:
            attachment = DealProductRec(
                next(self._ids["a"]),
                deal.id,
                product.id,
                product.name,
                entry["item_price"],
                entry["quantity"],
                str(entry.get("comments") or ""),
            )
            self._deal_products[attachment.id] = attachment
            created.append(self._attachment_json(attachment))
        self._value_from_products(deal)
        return FakeResponse(201, {"success": True, "data": created})

    def _value_from_products(self, deal: DealRec) -> None:
        """A deal with products takes its value from them: the sum of the enabled ones
        (a disabled product is "refrained from being included in the deal value
        calculation" [github.com/pipedrive/client-nodejs docs/UpdateDealProduct.md
        `enabled_flag`]; the fake attaches only enabled ones, without discount or tax).
        Without products the value is left as it was."""
        attached = [a for a in self._deal_products.values() if a.deal_id == deal.id]
        if attached:
            deal.value = sum(a.item_price * a.quantity for a in attached)
        deal.update_time = self.clock()

    def _checked_attachment(self, entry: Any) -> tuple[ProductRec, JSONDict]:
        if not isinstance(entry, dict):
            raise validation_error("each product is an object")
        for key in ("product_id", "item_price", "quantity"):
            if key not in entry:
                raise validation_error(f"{key} is required")
        product = self._products.get(entry["product_id"])
        if product is None or product.is_deleted:
            raise validation_error(f"product {entry['product_id']!r} does not exist")
        if not is_number(entry["item_price"]) or not is_number(entry["quantity"]):
            raise validation_error("item_price and quantity must be numbers")
        if "comments" in entry and not isinstance(entry["comments"], str):
            raise validation_error("comments must be a string")
        return product, entry

    # ---- routes: notes (v1), pipelines, fields, OAuth -------------------------------

    def _list_notes(self, request: FakeRequest) -> FakeResponse:
        deal_id = _int_param(request, "deal_id")
        start = _int_param(request, "start") or 0
        limit = _int_param(request, "limit") or 100
        notes = [
            n for ns in self._notes.values() for n in ns if deal_id is None or n.deal_id == deal_id
        ]
        chunk = notes[start : start + limit]
        more = start + limit < len(notes)
        pagination: JSONDict = {"start": start, "limit": limit, "more_items_in_collection": more}
        if more:
            pagination["next_start"] = start + limit
        body = {"success": True, "data": [self._note_json(n) for n in chunk] or None}
        return FakeResponse(200, {**body, "additional_data": {"pagination": pagination}})

    def _add_note_route(self, request: FakeRequest) -> FakeResponse:
        body = request.json()
        if not isinstance(body, dict) or not isinstance(body.get("content"), str):
            raise ApiError(400, {"success": False, "error": "Content is required"})
        deal_id = body.get("deal_id")
        if isinstance(deal_id, str) and deal_id.isdigit():
            deal_id = int(deal_id)  # v1 is lenient
        if not isinstance(deal_id, int) or int(deal_id) not in self._deals:
            raise not_found("Deal")
        note_id = self._store_note(deal_id, body["content"])
        [note] = [n for n in self._notes[deal_id] if n.id == note_id]
        return FakeResponse(200, {"success": True, "data": self._note_json(note)})

    def _pipelines(self, request: FakeRequest) -> FakeResponse:
        items = [
            {"id": p.id, "name": p.name, "order_nr": p.order_nr, "is_deleted": False}
            for p in self.company.pipelines.values()
        ]
        return _paged(request, items)

    def _stages(self, request: FakeRequest) -> FakeResponse:
        pipeline_id = _int_param(request, "pipeline_id")
        items = [
            {
                "id": s.id,
                "order_nr": s.order_nr,
                "name": s.name,
                "is_deleted": False,
                "pipeline_id": s.pipeline_id,
            }
            for s in self.company.stages.values()
            if pipeline_id is None or s.pipeline_id == pipeline_id
        ]
        return _paged(request, items)

    def _fields(self, request: FakeRequest, entity: str) -> FakeResponse:
        """`GET /api/v2/{dealFields,personFields,organizationFields}`."""
        return _paged(request, self.company.fields_json(entity))

    def _token(self, request: FakeRequest) -> FakeResponse:
        expected = base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        if request.headers.get("authorization") != f"Basic {expected}":
            return FakeResponse(401, {"error": "invalid_client", "error_description": "Bad client"})
        form = dict(parse_qsl(request.body.decode()))
        grant = form.get("grant_type")
        if grant == "refresh_token":
            self.tokens.rotates = self.rotate_refresh_tokens
            pair = self.tokens.refreshed(form.get("refresh_token", ""))
            if isinstance(pair, str):
                return _grant_error("Invalid refresh token")
        elif grant == "authorization_code":
            if (
                form.get("redirect_uri") != self.redirect_uri
                and form.get("code") in self.tokens.codes
            ):
                return _grant_error("Redirect URI mismatch")
            exchanged = self.tokens.exchanged(form.get("code", ""))
            if exchanged is None:
                return _grant_error("Invalid authorization code")
            pair = exchanged
        else:
            return FakeResponse(400, {"error": "unsupported_grant_type"})
        access, refresh = pair
        return FakeResponse(
            200,
            {
                "access_token": access,
                "token_type": "Bearer",
                "refresh_token": refresh,
                "scope": "base,deals:full,contacts:full,search:read",
                "expires_in": self.oauth_ttl,
                "api_domain": "https://example.pipedrive.com",
            },
        )

    # ---- storing and rendering ------------------------------------------------------

    def _store_note(self, deal_id: int, content: str) -> int:
        # Pipedrive sanitises note HTML; scripts are the part that surely goes.
        clean = re.sub(r"(?is)<script.*?</script\s*>", "", content)
        note = NoteRec(next(self._ids["n"]), deal_id, clean, self.clock())
        self._notes.setdefault(deal_id, []).append(note)
        return note.id

    def _custom_json(self, entity: str, values: dict[str, Any], keys: list[str] | None) -> JSONDict:
        shown = keys if keys is not None else list(self.company.fields[entity])
        return {key: values.get(key) for key in shown if key in self.company.fields[entity]}

    def _search_item(self, person: PersonRec) -> JSONDict:
        return {
            "id": person.id,
            "type": "person",
            "name": person.name,
            "phones": [p["value"] for p in person.phones],
            "emails": [e["value"] for e in person.emails],
            "visible_to": 3,
            "owner": {"id": 1},
            "organization": None,
            "custom_fields": self.company.searchable_values("person", person.custom),
            "notes": [],
        }

    def _person_json(self, person: PersonRec, keys: list[str] | None = None) -> JSONDict:
        first, _, last = person.name.partition(" ")
        return {
            "id": person.id,
            "name": person.name,
            "first_name": first,
            "last_name": last,
            "owner_id": 1,
            "org_id": person.org_id,
            "add_time": rfc3339(person.add_time),
            "update_time": rfc3339(person.update_time),
            "emails": [dict(e) for e in person.emails],
            "phones": [dict(p) for p in person.phones],
            "is_deleted": person.is_deleted,
            "visible_to": 3,
            "label_ids": [],
            "picture_id": None,
            "custom_fields": self._custom_json("person", person.custom, keys),
        }

    def _deal_json(self, deal: DealRec, keys: list[str] | None = None) -> JSONDict:
        closed = deal.status in ("won", "lost")
        return {
            "id": deal.id,
            "title": deal.title,
            "owner_id": 1,
            "person_id": deal.person_id,
            "org_id": deal.org_id,
            "pipeline_id": deal.pipeline_id,
            "stage_id": deal.stage_id,
            "value": deal.value,
            "currency": deal.currency,
            "add_time": rfc3339(deal.add_time),
            "update_time": rfc3339(deal.update_time),
            "stage_change_time": rfc3339(deal.update_time),
            "is_deleted": deal.is_deleted,
            "is_archived": False,
            "status": "deleted" if deal.is_deleted else deal.status,
            "probability": None,
            "lost_reason": deal.lost_reason,
            "visible_to": 3,
            "close_time": rfc3339(deal.update_time) if closed else None,
            "expected_close_date": None,
            "label_ids": [],
            "origin": "API",
            "custom_fields": self._custom_json("deal", deal.custom, keys),
        }

    def _org_json(self, org: OrgRec) -> JSONDict:
        return {
            "id": org.id,
            "name": org.name,
            "owner_id": 1,
            "add_time": rfc3339(org.add_time),
            "update_time": rfc3339(org.update_time),
            "is_deleted": False,
            "visible_to": 3,
            "label_ids": [],
            "address": None,
            "custom_fields": self._custom_json("organization", org.custom, None),
        }

    def _org_search_item(self, org: OrgRec) -> JSONDict:
        # Custom-field values come unkeyed, like a person hit's [SPEC organizations/search].
        return {
            "id": org.id,
            "type": "organization",
            "name": org.name,
            "address": None,
            "visible_to": 3,
            "owner": {"id": 1},
            "custom_fields": self.company.searchable_values("organization", org.custom),
            "notes": [],
        }

    def _product_json(self, product: ProductRec) -> JSONDict:
        return {
            "id": product.id,
            "name": product.name,
            "code": product.code,
            "prices": [dict(p) for p in product.prices],
            "is_deleted": product.is_deleted,
            "is_linkable": True,
            "owner_id": 1,
            "visible_to": 3,
            "custom_fields": {},
        }

    def _product_search_item(self, product: ProductRec) -> JSONDict:
        return {
            "id": product.id,
            "type": "product",
            "name": product.name,
            "code": product.code,
            "visible_to": 3,
            "owner": {"id": 1},
            "custom_fields": [],
        }

    def _attachment_json(self, a: DealProductRec) -> JSONDict:
        return {
            "id": a.id,
            "deal_id": a.deal_id,
            "product_id": a.product_id,
            "name": a.name,
            "item_price": a.item_price,
            "quantity": a.quantity,
            "sum": a.item_price * a.quantity,
            "currency": self._deals[a.deal_id].currency,
            "comments": a.comments,
            "discount": 0,
            "discount_type": "percentage",
            "tax": 0,
            "tax_method": "inclusive",
            "is_enabled": True,
            "billing_frequency": "one-time",
        }

    def _note_json(self, note: NoteRec) -> JSONDict:
        stamp = datetime.fromtimestamp(int(note.add_time), UTC).strftime("%Y-%m-%d %H:%M:%S")
        return {
            "id": note.id,
            "active_flag": True,
            "add_time": stamp,
            "update_time": stamp,
            "content": note.content,
            "deal_id": note.deal_id,
            "person_id": None,
            "org_id": None,
            "lead_id": None,
            "pinned_to_deal_flag": False,
            "user_id": 1,
        }


def _search_terms(request: FakeRequest, allowed: tuple[str, ...]) -> tuple[str, bool, list[str]]:
    """`term`, `exact_match` and `fields` of a v2 search, checked as Pipedrive does."""
    term = request.one("term")
    exact = _bool_param(request, "exact_match", default=False)
    fields = [f for f in request.one("fields", ",".join(allowed)).split(",") if f]
    if not set(fields) <= set(allowed):
        raise validation_error(f"fields must be a subset of {', '.join(allowed)}")
    if len(term.strip()) < (1 if exact else 2):
        raise validation_error("term must be at least 2 characters (1 with exact_match)")
    return term, exact, fields


def _hit(values: Iterable[str], term: str, exact: bool) -> bool:
    """`exact_match`: the whole value, any case; otherwise the term anywhere in it."""
    wanted = term.strip().lower()
    texts = [value.strip().lower() for value in values]
    return any(t == wanted if exact else wanted in t for t in texts)


def _paged(request: FakeRequest, items: list[Any]) -> FakeResponse:
    """One cursor page of `items`, the next cursor in `additional_data`."""
    chunk, cursor = _cursor_page(request, items)
    return _ok(chunk, {"next_cursor": cursor})


def _search_answer(request: FakeRequest, hits: list[JSONDict]) -> FakeResponse:
    """A v2 search's page: each hit as an `item` with its `result_score`."""
    chunk, cursor = _cursor_page(request, [{"result_score": 1.0, "item": h} for h in hits])
    return _ok({"items": chunk}, {"next_cursor": cursor})


def _ok(data: Any, additional: JSONDict | None = None) -> FakeResponse:
    body: JSONDict = {"success": True, "data": data}
    if additional is not None:
        body["additional_data"] = additional
    return FakeResponse(200, body)


def _unauthorised() -> FakeResponse:
    body = {"success": False, "error": "unauthorized access", "errorCode": 401, "error_info": INFO}
    return FakeResponse(401, body)


def _grant_error(description: str) -> FakeResponse:
    return FakeResponse(400, {"error": "invalid_grant", "error_description": description})


def _labelled(values: Iterable[str], label: str) -> list[JSONDict]:
    return [{"value": v, "primary": n == 0, "label": label} for n, v in enumerate(values)]


def _merge(values: dict[str, Any], changes: Mapping[str, Any]) -> None:
    for key, value in changes.items():
        if value is None:
            values.pop(key, None)
        else:
            values[key] = value


def _int_param(request: FakeRequest, name: str) -> int | None:
    raw = request.one(name)
    if not raw:
        return None
    if not raw.isdigit():
        raise validation_error(f"{name} must be an integer")
    return int(raw)


def _bool_param(request: FakeRequest, name: str, *, default: bool) -> bool:
    raw = request.one(name)
    if not raw:
        return default
    if raw not in ("true", "false"):
        raise validation_error(f"{name} must be true or false")  # v2 takes no 1/0
    return raw == "true"


def _field_filter(request: FakeRequest) -> list[str] | None:
    raw = request.one("custom_fields")
    if not raw:
        return None
    keys = [key for key in raw.split(",") if key]
    if len(keys) > 15:
        raise validation_error("custom_fields: at most 15 keys")
    return keys


def _cursor_page(request: FakeRequest, items: list[Any]) -> tuple[list[Any], str | None]:
    limit = _int_param(request, "limit") or 100
    if limit > 500:
        raise validation_error("limit must not exceed 500")
    raw = request.one("cursor")
    try:
        offset = int(base64.urlsafe_b64decode(raw.encode()).decode()) if raw else 0
    except ValueError as exc:
        raise validation_error("cursor is not valid") from exc
    chunk = items[offset : offset + limit]
    more = offset + limit < len(items)
    return chunk, base64.urlsafe_b64encode(str(offset + limit).encode()).decode() if more else None
