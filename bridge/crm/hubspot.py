"""HubSpot CRM, date-versioned API 2026-09, as a `CrmAdapter`.

The mappers are in `hubspot_json`, the OAuth token endpoint in `hubspot_oauth`; this module
is the adapter and `build_hubspot`. The calls each method makes:

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
    schema                   GET   /crm/pipelines/2026-09/deals, /crm/properties/2026-09/deals
                                   and /contacts
Searches page through `paging.next.after`. They have their own limit (5 per second per
account, and no share of the ten-second limit of every other call), so they go through a
second `CrmHttp` with its own rate limiter on the same client. Notes are read through
associations, not search: what was just written is visible at once, while the search index
may lag a few seconds behind.

`options` of `[crm.NAME]`: `search_rate_limit_per_second` (default 4); `portal_id` (the
account id, for UI links in `crm-bridge show`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import httpx

from bridge.crm.base import (
    JSON,
    Confirm,
    CrmHttp,
    CrmSchema,
    CustomField,
    RateLimiter,
    first_confirmed,
)
from bridge.crm.hubspot_json import (
    OBJECTS,
    PIPELINES,
    PROPERTIES,
    associated,
    contact_create_json,
    contact_from_json,
    contact_search_json,
    deal_create_json,
    deal_from_json,
    deal_properties,
    deal_search_json,
    field_from_json,
    is_custom,
    note_create_json,
    note_text,
    pipeline_from_json,
    properties_json,
)
from bridge.crm.hubspot_oauth import HubSpotOAuth
from bridge.domain import Contact, ContactPatch, Deal, FieldUpdate, LookupKey, NewContact, NewDeal
from bridge.errors import AuthError, ConfigError, PermanentCrmError, TransientCrmError
from bridge.settings import CrmConfig, Settings, secret_value
from bridge.tokens import (
    BearerAuth,
    OAuthTokenSource,
    StaticToken,
    TokenPair,
    TokenRepository,
    TokenSource,
)

SEARCH_LIMIT = 100  # per page; HubSpot allows 200
MAX_PAGES = 20
BATCH_READ = 100
DEFAULT_SEARCH_RATE = 4.0  # HubSpot allows 5 searches per second per account
# Access tokens live 30 minutes: refresh once fewer than 5 are left, well before expiry.
OAUTH_REFRESH_MARGIN = 300.0
_EXISTING_ID = re.compile(r"Existing ID: (\d+)")
OnCall = Callable[[str, str, float, int], None]


class HubSpot:
    """One HubSpot account. Build it with `build_hubspot`; it owns one HTTP client."""

    def __init__(
        self,
        name: str,
        config: CrmConfig,
        http: CrmHttp,
        search_http: CrmHttp,
        source: TokenSource,
        oauth: HubSpotOAuth,
        tokens: TokenRepository,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.config = config
        self.http = http
        self.search_http = search_http
        self._source = source
        self._oauth = oauth
        self._tokens = tokens
        self._clock = clock

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

    async def create_contact(self, new: NewContact) -> Contact:
        with self._reading("contacts.create"):
            payload = contact_create_json(new)
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
        with self._reading("contacts.create"):
            props = {**payload["properties"], **(answer.get("properties") or {})}
            return contact_from_json({"id": answer["id"], "properties": props}, self.config)

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
        with self._reading("deals.create"):
            payload = deal_create_json(new, contact.id)
        answer = await self._send("POST", f"{OBJECTS}/deals", "deals.create", json=payload)
        with self._reading("deals.create"):
            props = {**payload["properties"], **(answer.get("properties") or {})}
            record = {**answer, "properties": props}
            return deal_from_json(record, self.config, (contact.id,))

    async def create_contact_and_deal(
        self, contact: NewContact, deal: NewDeal
    ) -> tuple[Contact, Deal]:
        created = await self.create_contact(contact)
        return created, await self.create_deal(created, deal)

    async def update_deal(self, deal_id: str, updates: Sequence[FieldUpdate]) -> None:
        if not updates:
            return
        with self._reading("deals.update"):
            payload = {"properties": properties_json(updates)}
        await self._send("PATCH", f"{OBJECTS}/deals/{deal_id}", "deals.update", json=payload)

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
            payload = {
                "inputs": [{"id": note_id} for note_id in chunk],
                "properties": ["hs_note_body", "hs_timestamp"],
                "propertiesWithHistory": [],
            }
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

    # ---- schema, credentials, lifecycle ---------------------------------------------

    async def schema(self) -> CrmSchema:
        body = await self._send("GET", f"{PIPELINES}/deals", "pipelines.list")
        fields: list[CustomField] = []
        for entity, object_type in (("leads", "deals"), ("contacts", "contacts")):
            path = f"{PROPERTIES}/{object_type}"
            answer = await self._send("GET", path, "properties.list")
            with self._reading("properties.list"):
                records = [r for r in answer.get("results") or () if is_custom(r)]
                fields.extend(field_from_json(record, entity) for record in records)
        with self._reading("pipelines.list"):
            pipelines = tuple(pipeline_from_json(p) for p in body.get("results") or ())
        return CrmSchema(pipelines=pipelines, fields=tuple(fields))

    async def exchange_code(self, code: str) -> TokenPair:
        """`crm-bridge auth`: trade an authorization code for a pair and store it before use."""
        if self.config.auth != "oauth":
            message = f'auth is "{self.config.auth}": an authorization code needs auth = "oauth"'
            raise AuthError(self.name, message)
        pair = await self._oauth.exchange_code(code)
        await self._tokens.save_tokens(self.name, pair)
        if isinstance(self._source, OAuthTokenSource):
            self._source.forget()
        return pair

    async def credentials_problem(self) -> str | None:
        if self.config.auth == "oauth":
            missing = self._oauth.missing_client()
            if missing is not None:
                return missing
        return await self._source.problem()

    def token_expires_at(self) -> float | None:
        return self._source.expires_at()

    def health_details(self) -> Mapping[str, object]:
        return {
            "rate_limit_per_second": round(self.http.limiter.rate, 2),
            "search_rate_limit_per_second": round(self.search_http.limiter.rate, 2),
        }

    async def aclose(self) -> None:
        await self.http.client.aclose()

    # ---- plumbing -------------------------------------------------------------------

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
        """One request through the general or the search `CrmHttp`; the JSON answer."""
        http = self.search_http if search else self.http
        response = await http.request(method, path, operation=operation, **kwargs)
        if response.status_code == 204 or not response.content:
            return {}
        try:
            return response.json()
        except ValueError as exc:
            raise TransientCrmError(self.name, f"{method} {path}: answer is not JSON") from exc

    @contextmanager
    def _reading(self, operation: str) -> Iterator[None]:
        """Turn a payload that cannot be built, or an answer of an unexpected shape, into
        a `PermanentCrmError` naming the operation."""
        try:
            yield
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            message = f"{operation}: {type(exc).__name__}: {exc}"
            raise PermanentCrmError(self.name, message) from exc


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


def build_hubspot(
    name: str,
    config: CrmConfig,
    settings: Settings,
    tokens: TokenRepository,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    on_call: OnCall | None = None,
    clock: Callable[[], float] = time.time,
) -> HubSpot:
    """The adapter with its one HTTP client, its two rate limiters and its token source."""
    searches_per_second = search_rate(config)
    client = httpx.AsyncClient(
        base_url=config.base_url,
        timeout=config.request_timeout_seconds,
        transport=transport,
    )
    http = CrmHttp(name, client, RateLimiter(config.rate_limit_per_second), on_call=on_call)
    search_http = CrmHttp(name, client, RateLimiter(searches_per_second), on_call=on_call)
    oauth = HubSpotOAuth(name, http, settings, clock)
    source: TokenSource
    if config.auth == "oauth":
        source = OAuthTokenSource(
            name,
            tokens,
            oauth.refresh,
            bootstrap_refresh_token=secret_value(settings.hubspot_refresh_token),
            refresh_margin_seconds=OAUTH_REFRESH_MARGIN,
            clock=clock,
        )
    else:
        hint = (
            "set HUBSPOT_ACCESS_TOKEN (a Service Key or private-app token)"
            f' or use auth = "oauth" and run `crm-bridge auth {name}`'
        )
        source = StaticToken(name, secret_value(settings.hubspot_access_token), hint)
    # Set after construction: the refresher above needs this same client.
    client.auth = BearerAuth(source)
    return HubSpot(name, config, http, search_http, source, oauth, tokens, clock)
