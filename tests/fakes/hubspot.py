"""A stateful fake of HubSpot's date-versioned CRM API (2026-09): one portal's contacts,
deals, notes, companies, line items, their associations, pipelines, properties, tokens and
rate limits.

It answers like the real API where the bridge depends on it (only `/…/2026-09/…` paths
exist here: a v3/v4 path is a 404):
- search semantics, phones included, are `tests.fakes.hubspot_search`; `index_lag` seconds
  keep a record created through the API out of search results (HubSpot's index trails
  writes), never out of reads by id;
- writes are validated first and applied only when all of the request is valid
  (`tests.fakes.hubspot_account`), except a batch create whose inputs carry
  `objectWriteTraceId` (a 207 names the refused ones, the others are created); a batch
  update skips unknown ids (a 207, see `tests.fakes.hubspot_portal`); batches take 1 to
  100 inputs (else 400); a contact whose e-mail exists → 409 CONFLICT "Contact
  already exists. Existing ID: N"; a stage outside the deal's pipeline, or an association
  to a missing record or of the wrong type → 400 (`tests.fakes.hubspot_portal`);
- `hs_is_closed` is calculated from the stage's `isClosed`, `hs_lastmodifieddate` moves
  on every write (by the injectable `clock`), archived records are gone (404);
- rate limits: searches `search_rate_limit` per second, everything else `ten_second_limit`
  per rolling 10 s (searches are exempt from it) → 429 with HubSpot's RATE_LIMIT body
  (policy SECONDLY / TEN_SECONDLY_ROLLING), nothing applied;
- Bearer tokens: static ones (Service Keys) never expire, OAuth access tokens expire by
  `clock` → 401 EXPIRED_AUTHENTICATION; `POST /oauth/v3/token` takes a form body, answers
  `expires_in` (1800) and repeats the refresh token, which does not rotate.

Orders: companies (a custom INN property) are searched like every object; a contact or a
deal is linked to its company in its create (types 1 and 5) or by the default association
(`PUT …/contacts/{id}/associations/default/companies/{id}`); line items are objects of
their own, created in batches with their deal association (type 20), gone from the deal
once archived (`…/line_items/batch/archive`).

Set up and inspect (no call is logged): `add_contact`, `add_deal`, `move_deal`, `add_note`,
`add_company`, `company_ids()`, `deal_companies(deal)`, `contact_companies(contact)`,
`line_items(deal)`,
`contacts()`, `contact(id)`, `deals()`, `deal(id)`, `deal_field`, `contact_field`,
`deal_contacts`, `notes(deal)` (as a reader sees them), `note_bodies(deal)` (as stored),
`searches()`. Credentials: `issue_token(ttl)`, `issue_oauth_pair(ttl)`, `register_code`,
`expire_all_access_tokens()`. Faults, the call log and the ASGI side are `FakeService`'s.
"""

from __future__ import annotations

import html
import re
import secrets
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import parse_qsl

from bridge.settings import CrmConfig, load_file_config
from tests.fakes.crm_events import CrmRequest, HubSpotStageChange, hubspot_stage_events
from tests.fakes.hubspot_account import PORTAL_ID, hs_error, invalid, iso_ms
from tests.fakes.hubspot_portal import KINDS, Portal, Rec, pipeline_json
from tests.fakes.service import (
    FakeRequest,
    FakeResponse,
    FakeService,
    JSONDict,
    OAuthFake,
)

EXAMPLE_CONFIG = Path(__file__).resolve().parents[2] / "etc" / "crm-hubspot.example.toml"
V = "2026-09"
# The refresh token does not rotate: a refresh answers the same one.
TOKENS = {"prefixes": ("pat-na1-", "na1-"), "rotates": False}
TYPES = "(contacts|deals|notes|companies|line_items)"


class FakeHubSpot(OAuthFake, FakeService):
    """The portal of `etc/crm-hubspot.example.toml` (or `config`), empty of records."""

    name = "fake HubSpot"
    success_content_type = "application/json;charset=utf-8"

    def __init__(
        self,
        config: CrmConfig | None = None,
        *,
        search_rate_limit: int = 5,
        ten_second_limit: int = 100,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        client_id: str = "fake-client-id",
        client_secret: str = "fake-client-secret",  # noqa: S107
        redirect_uri: str = "https://bridge.example/oauth",
        oauth_ttl: int = 1800,
        index_lag: float = 0.0,
    ) -> None:
        super().__init__(rate_limit=1_000_000, monotonic=monotonic)  # HubSpot's own below
        self.config = config or load_file_config(EXAMPLE_CONFIG).crm["hubspot"]
        self.portal = Portal(self.config, clock, index_lag)
        self.search_rate_limit, self.ten_second_limit = search_rate_limit, ten_second_limit
        self.oauth_client(clock, client_id, client_secret, oauth_ttl, redirect_uri, **TOKENS)
        self._windows: dict[str, deque[float]] = {"search": deque(), "general": deque()}
        objects = f"/crm/objects/{V}/{TYPES}"
        self.routes = [
            ("POST", re.compile(f"{objects}/search"), self._portal_route("search", 200)),
            ("POST", re.compile(f"{objects}/batch/read"), self._portal_route("batch_read")),
            ("POST", re.compile(f"{objects}/batch/create"), self._portal_route("batch_create")),
            ("POST", re.compile(f"{objects}/batch/update"), self._portal_route("batch_update")),
            (
                "POST",
                re.compile(f"{objects}/batch/archive"),
                self._portal_route("batch_archive", 204),
            ),
            (
                "PUT",
                re.compile(rf"{objects}/(\d+)/associations/default/{TYPES}/(\d+)"),
                self._associate,
            ),
            ("POST", re.compile(objects), self._portal_route("create", 201)),
            ("GET", re.compile(rf"{objects}/(\d+)"), self._read),
            ("PATCH", re.compile(rf"{objects}/(\d+)"), self._portal_route("update", 200)),
            ("DELETE", re.compile(rf"{objects}/(\d+)"), self._archive),
            (
                "POST",
                re.compile(f"/crm/associations/{V}/{TYPES}/{TYPES}/batch/read"),
                self._portal_route("associations_read"),
            ),
            ("GET", re.compile(f"/crm/pipelines/{V}/deals"), self._pipelines),
            ("GET", re.compile(f"/crm/properties/{V}/{TYPES}"), self._properties),
            ("POST", re.compile(r"/oauth/v3/token"), self._token),
        ]

    # ---- credentials ----------------------------------------------------------------

    def set_property_type(self, kind: str, name: str, type_: str, field_type: str) -> None:
        """Retype a property, e.g. ("deals", "last_payment_at", "date", "date"): what a date
        picker made in HubSpot's UI is; a time of day is then refused (`_check_value`)."""
        with self._lock:
            prop = self.portal.properties[kind][name]
            prop.type, prop.field_type = type_, field_type

    def issue_token(self, ttl: float | None = None) -> str:
        """A valid access token; without `ttl` a static one (a Service Key)."""
        with self._lock:
            return self.tokens.issue_token(ttl, never=ttl is None)

    def authorise(self, request: FakeRequest) -> FakeResponse | None:
        if not request.path.startswith("/crm/"):
            return None
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        problem = self.tokens.access_problem(token) if scheme == "Bearer" else "unknown"
        if problem == "unknown":
            message = "Authentication credentials not found."
            return hs_error(401, "INVALID_AUTHENTICATION", message).response
        if problem == "expired":
            message = "The OAuth token used to make this call expired."
            return hs_error(401, "EXPIRED_AUTHENTICATION", message).response
        return None

    # ---- setup and inspection -------------------------------------------------------

    def add_contact(self, *, updated_at: float | None = None, **props: str) -> str:
        """A contact as typed in HubSpot (properties by name); returns its id."""
        with self._lock:
            return self.portal.store("contacts", self.portal.seed("contacts", props), updated_at).id

    def add_deal(
        self,
        contact_id: str | None = None,
        *,
        name: str = "Сделка",
        pipeline: str = "default",
        stage: str | None = None,
        updated_at: float | None = None,
        archived: bool = False,
        **props: str,
    ) -> str:
        """A deal in `pipeline` (its first stage unless `stage`), linked to `contact_id`."""
        with self._lock:
            stage = stage or self.portal.pipelines[pipeline].stages[0].id
            if self.portal.pipelines[pipeline].stage(stage) is None:
                raise ValueError(f"stage {stage} is not in pipeline {pipeline}")
            values = {"dealname": name, "pipeline": pipeline, "dealstage": stage, **props}
            deal = self.portal.store("deals", self.portal.seed("deals", values), updated_at)
            deal.archived = archived
            if contact_id is not None:
                self.portal.link(deal, self._rec("contacts", contact_id))
            return deal.id

    def move_deal(
        self, deal_id: str, stage: str, *, pipeline: str | None = None, archived: bool | None = None
    ) -> None:
        """What a manager does: move the deal to another stage (or pipeline), or delete it."""
        with self._lock:
            deal = self._rec("deals", deal_id)
            target = pipeline or str(deal.props["pipeline"])
            if self.portal.pipelines[target].stage(stage) is None:
                raise ValueError(f"stage {stage} is not in pipeline {target}")
            self.portal.apply(deal, {"pipeline": target, "dealstage": stage})
            if archived is not None:
                deal.archived = archived

    def move_deals_event(
        self, moves: Sequence[tuple[str, str]], *, url: str, app_secret: str
    ) -> CrmRequest:
        """A manager moving deals (deal id, stage id; pipeline unchanged); the batch of
        `deal.propertyChange` events on `dealstage` HubSpot then posts to `url`, signed."""
        changes = []
        for deal_id, stage in moves:
            self.move_deal(deal_id, stage)
            with self._lock:
                occurred = self._rec("deals", deal_id).updated_ms
            # eventId: HubSpot promises no uniqueness; the change's time serves here.
            changes.append(HubSpotStageChange(deal_id, stage, occurred, event_id=occurred))
        now_ms = int(self.clock() * 1000)
        return hubspot_stage_events(url, changes, app_secret=app_secret, now_ms=now_ms)

    def add_note(self, deal_id: str, body: str) -> str:
        """A note on the deal with this (HTML) body, as HubSpot's editor would store it."""
        with self._lock:
            values = {"hs_note_body": body, "hs_timestamp": iso_ms(self.portal.now())}
            note = self.portal.store("notes", values)
            self.portal.link(note, self._rec("deals", deal_id))
            return note.id

    def add_company(self, name: str, inn: str = "", **props: str) -> str:
        """A company as typed in HubSpot (the INN in `order_fields.company_inn`)."""
        values = {"name": name, **props}
        inn_property = self.config.order_fields.company_inn
        if inn and inn_property:
            values[inn_property] = inn
        with self._lock:
            return self.portal.store("companies", self.portal.seed("companies", values)).id

    def company_ids(self) -> list[str]:
        with self._lock:
            live = self.portal.records["companies"].values()
            return [rec.id for rec in live if not rec.archived]

    def deal_companies(self, deal_id: str) -> list[str]:
        with self._lock:
            return self.portal.live_links(self._rec("deals", deal_id), "companies")

    def contact_companies(self, contact_id: str) -> list[str]:
        with self._lock:
            return self.portal.live_links(self._rec("contacts", contact_id), "companies")

    def line_items(self, deal_id: str) -> list[tuple[str, str, str, str]]:
        """The deal's live line items as (name, quantity, price, SKU), as stored."""
        with self._lock:
            ids = self.portal.live_links(self._rec("deals", deal_id), "line_items")
            props = [self._rec("line_items", i).props for i in ids]
            return [
                tuple(str(p.get(name) or "") for name in ("name", "quantity", "price", "hs_sku"))
                for p in props
            ]  # type: ignore[misc]

    def contacts(self) -> list[JSONDict]:
        return self._all("contacts")

    def deals(self) -> list[JSONDict]:
        return self._all("deals")

    def contact(self, contact_id: str) -> JSONDict:
        return self._one("contacts", contact_id)

    def deal(self, deal_id: str) -> JSONDict:
        return self._one("deals", deal_id)

    def deal_field(self, deal_id: str, name: str) -> str | None:
        """A deal property as the API returns it (calculated ones too); None when empty."""
        with self._lock:
            return self.portal.values(self._rec("deals", deal_id)).get(name)

    def contact_field(self, contact_id: str, name: str) -> str | None:
        with self._lock:
            return self.portal.values(self._rec("contacts", contact_id)).get(name)

    def deal_contacts(self, deal_id: str) -> list[str]:
        with self._lock:
            return sorted(self._rec("deals", deal_id).links.get("contacts", set()))

    def note_bodies(self, deal_id: str) -> list[str]:
        with self._lock:
            ids = sorted(self._rec("deals", deal_id).links.get("notes", set()), key=int)
            return [str(self._rec("notes", i).props.get("hs_note_body") or "") for i in ids]

    def notes(self, deal_id: str) -> list[str]:
        """Note texts as a reader sees them: one line per `<br>` or paragraph."""
        return [_rendered(body) for body in self.note_bodies(deal_id)]

    def searches(self) -> int:
        return sum(1 for call in self.calls if call.path.endswith("/search"))

    def _rec(self, kind: str, record_id: str) -> Rec:
        return self.portal.records[kind][record_id]

    def _one(self, kind: str, record_id: str) -> JSONDict:
        with self._lock:
            rec = self._rec(kind, record_id)
            return self.portal.render(rec, list(rec.props), [k for k in KINDS if k != kind])

    def _all(self, kind: str) -> list[JSONDict]:
        with self._lock:
            return [self._one(kind, record_id) for record_id in self.portal.records[kind]]

    # ---- rate limits ----------------------------------------------------------------

    def _serve(self, request: FakeRequest) -> FakeResponse:
        if request.path.startswith("/crm/"):
            search = request.path.endswith("/search")
            window = self._windows["search" if search else "general"]
            limit, period = (
                (self.search_rate_limit, 1.0) if search else (self.ten_second_limit, 10.0)
            )
            if not self._admit_in(window, limit, period):
                return self._throttle("SECONDLY" if search else "TEN_SECONDLY_ROLLING")
        return super()._serve(request)

    def _too_many(self) -> FakeResponse:  # injected 429s look like the real ones too
        return self._throttle("TEN_SECONDLY_ROLLING")

    def _throttle(self, policy: str) -> FakeResponse:
        self.throttled += 1
        limit = "secondly" if policy == "SECONDLY" else "ten_secondly_rolling"
        body = {
            "status": "error",
            "message": f"You have reached your {limit} limit.",
            "errorType": "RATE_LIMIT",
            "correlationId": secrets.token_hex(16),
            "policyName": policy,
            "groupName": f"publicapi:{policy.lower()}:{PORTAL_ID}",
        }
        headers = {} if self.retry_after is None else {"retry-after": str(self.retry_after)}
        return FakeResponse(429, body, headers)

    def _headers(self, response: FakeResponse) -> dict[str, str]:
        headers = dict(response.headers)
        if response.body is not None:  # HubSpot's errors are plain JSON too
            headers.setdefault("content-type", self.success_content_type)
        return headers

    # ---- routes ---------------------------------------------------------------------

    def _portal_route(
        self, operation: str, status: int | None = None
    ) -> Callable[..., FakeResponse]:
        """A route calling `self.portal.<operation>(*path groups, JSON object body)`,
        looked up per request (a test may replace it), which answers (status, body), or
        the body alone (None too) answered with `status`."""

        def route(request: FakeRequest, *groups: str) -> FakeResponse:
            answer = getattr(self.portal, operation)(*groups, _object(request))
            return FakeResponse(*answer) if status is None else FakeResponse(status, answer)

        return route

    def _associate(
        self, request: FakeRequest, kind: str, record_id: str, other: str, other_id: str
    ) -> FakeResponse:
        return FakeResponse(200, self.portal.associate_default(kind, record_id, other, other_id))

    def _read(self, request: FakeRequest, kind: str, record_id: str) -> FakeResponse:
        rec = self.portal.live(kind, record_id)
        wanted = _csv(request.all("properties")) or None
        return FakeResponse(200, self.portal.render(rec, wanted, _csv(request.all("associations"))))

    def _archive(self, request: FakeRequest, kind: str, record_id: str) -> FakeResponse:
        self.portal.live(kind, record_id).archived = True
        return FakeResponse(204)

    def _pipelines(self, request: FakeRequest) -> FakeResponse:
        pipelines = [pipeline_json(p) for p in self.portal.pipelines.values()]
        return FakeResponse(200, {"results": pipelines})

    def _properties(self, request: FakeRequest, kind: str) -> FakeResponse:
        properties = [p.json() for p in self.portal.properties[kind].values()]
        return FakeResponse(200, {"results": properties})

    def _token(self, request: FakeRequest) -> FakeResponse:
        if "application/x-www-form-urlencoded" not in request.headers.get("content-type", ""):
            return _oauth_error("BAD_REQUEST", "the token endpoint takes a form body")
        form = dict(parse_qsl(request.body.decode(), keep_blank_values=True))
        if form.get("client_id") != self.client_id:
            return _oauth_error("BAD_CLIENT_ID", "missing or unknown client id")
        if form.get("client_secret") != self.client_secret:
            return _oauth_error("BAD_CLIENT_SECRET", "missing or invalid client secret")
        grant = form.get("grant_type")
        if grant == "refresh_token":
            pair = self.tokens.refreshed(form.get("refresh_token", ""))
            if isinstance(pair, str):
                return _oauth_error("BAD_REFRESH_TOKEN", "missing or unknown refresh token")
        elif grant == "authorization_code":
            if form.get("redirect_uri") != self.redirect_uri:
                return _oauth_error("BAD_REDIRECT_URI", "redirect_uri does not match")
            exchanged = self.tokens.exchanged(form.get("code", ""))
            if exchanged is None:
                return _oauth_error("BAD_AUTH_CODE", "missing or unknown auth code")
            pair = exchanged
        else:
            return _oauth_error("BAD_GRANT_TYPE", "unknown grant_type")
        access, refresh = pair
        scopes = [
            f"crm.objects.{o}.{rw}" for o in ("contacts", "deals") for rw in ("read", "write")
        ]
        answer = {
            "token_type": "bearer",
            "access_token": access,
            "refresh_token": refresh,
            "expires_in": self.oauth_ttl,
            "hub_id": PORTAL_ID,
            "scopes": scopes,
        }
        return FakeResponse(200, answer)


def _object(request: FakeRequest) -> JSONDict:
    body = request.json()
    if not isinstance(body, dict):
        raise invalid("Invalid input JSON: expected an object")
    return body


def _csv(values: list[str]) -> list[str]:
    return [part for value in values for part in value.split(",") if part]


def _oauth_error(status: str, message: str) -> FakeResponse:
    body = {"status": status, "message": message, "correlationId": secrets.token_hex(16)}
    return FakeResponse(400, body)


def _rendered(body: str) -> str:
    text = re.sub(r"<br\s*/?>|</(?:p|div)>", "\n", body, flags=re.IGNORECASE)
    # A reader sees a space where the note keeps leading spaces as &nbsp;.
    return html.unescape(re.sub(r"<[^>]*>", "", text)).replace("\xa0", " ").rstrip("\n")
