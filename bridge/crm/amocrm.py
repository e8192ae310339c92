"""amoCRM (and Kommo: the same API on *.kommo.com), API v4, as a `CrmAdapter`.

Pure mappers first (domain values to v4 JSON and back), then the adapter and
`build_amocrm`; the OAuth token endpoint is in `amocrm_oauth`. The calls each method makes:

    find_contact(s)          GET   /api/v4/contacts?query=…&with=leads&limit=50  (per key)
    create_contact           POST  /api/v4/contacts
    update_contact           PATCH /api/v4/contacts/{id}             (none when nothing to set)
    list_deals               [GET  /api/v4/contacts/{id}?with=leads  only when ids unknown]
                             GET   /api/v4/leads?filter[id][]=…      (none when all known)
    get_deal                 GET   /api/v4/leads/{id}?with=contacts
    create_deal              POST  /api/v4/leads
    create_contact_and_deal  POST  /api/v4/leads/complex
    update_deal              PATCH /api/v4/leads/{id}                (none when nothing to set)
    deal_notes / add_note    GET / POST /api/v4/leads/{id}/notes
    schema                   GET   /api/v4/leads/pipelines, /leads/custom_fields,
                                   /contacts/custom_fields
Lists are paged while the answer carries `_links.next`; an empty list is HTTP 204.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import httpx
import phonenumbers

from bridge.crm.amocrm_oauth import AmoOAuth
from bridge.crm.base import (
    JSON,
    Confirm,
    CrmHttp,
    CrmSchema,
    CustomField,
    Pipeline,
    RateLimiter,
    first_confirmed,
)
from bridge.domain import (
    Contact,
    ContactPatch,
    Deal,
    FieldKind,
    FieldUpdate,
    KeyKind,
    LookupKey,
    NewContact,
    NewDeal,
)
from bridge.errors import PermanentCrmError, TransientCrmError
from bridge.settings import CrmConfig, Settings, secret_value
from bridge.tokens import (
    BearerAuth,
    OAuthTokenSource,
    StaticToken,
    TokenPair,
    TokenRepository,
    TokenSource,
)

SEARCH_LIMIT = 50
PAGE_LIMIT = 250
MAX_PAGES = 100  # a runaway `next` link must not loop forever
OnCall = Callable[[str, str, float, int], None]


# ---- domain → v4 JSON ---------------------------------------------------------------


def search_query(key: LookupKey) -> str:
    """What to put in `query=`: amoCRM matches substrings, so a phone is searched by its
    national significant number ("+79991234567" → "9991234567") to find "8 999…" too."""
    if key.kind is not KeyKind.PHONE:
        return key.value
    try:
        parsed = phonenumbers.parse(key.value, None)
    except phonenumbers.NumberParseException:
        return "".join(char for char in key.value if char.isdigit())
    return str(phonenumbers.national_significant_number(parsed))


def field_values_json(updates: Iterable[FieldUpdate]) -> list[dict[str, JSON]]:
    """`custom_fields_values` for v4 (ValueError on a value that does not fit its kind).

    DATETIME is sent as an RFC 3339 string, as the official PHP SDK does
    (`DateCustomFieldValueModel::toApi`); amoCRM answers with unix seconds.
    """
    return [{"field_id": _int_id(u.field_id), "values": _values_json(u)} for u in updates]


def _values_json(update: FieldUpdate) -> list[dict[str, JSON]]:
    kind, value = update.kind, update.value
    if kind is FieldKind.TEXT and isinstance(value, str):
        return [{"value": value}]
    if kind is FieldKind.NUMBER and isinstance(value, Decimal | int):
        number = Decimal(value)
        return [{"value": int(number) if number == number.to_integral_value() else float(number)}]
    if kind is FieldKind.DATETIME and isinstance(value, datetime) and value.utcoffset() is not None:
        return [{"value": value.isoformat(timespec="seconds")}]
    if kind is FieldKind.SELECT and isinstance(value, int | str):
        return [{"enum_id": int(value)}]
    if kind is FieldKind.MULTISELECT and isinstance(value, tuple):
        return [{"enum_id": int(enum_id)} for enum_id in value]
    raise ValueError(f"field {update.field_id}: {kind.value} value {value!r} has the wrong type")


def _int_id(value: str) -> int:
    if not value.isdigit():
        raise ValueError(f"id {value!r} is not a number")
    return int(value)


def contact_json(new: NewContact) -> dict[str, JSON]:
    who = new.customer
    names = {"name": who.full_name, "first_name": who.first_name, "last_name": who.last_name}
    body: dict[str, JSON] = {key: value for key, value in names.items() if value}
    values: list[dict[str, JSON]] = [
        {"field_code": code, "values": [{"value": value, "enum_code": "WORK"}]}
        for code, value in (("PHONE", who.phone), ("EMAIL", who.email))
        if value
    ]
    values += field_values_json(new.fields)
    if values:
        body["custom_fields_values"] = values
    return body


def deal_json(new: NewDeal, contact: dict[str, JSON]) -> dict[str, JSON]:
    body: dict[str, JSON] = {
        "name": new.name,
        "price": int(new.price.to_integral_value(ROUND_HALF_UP)),
        "pipeline_id": _int_id(new.pipeline_id),
        "status_id": _int_id(new.status_id),
        "_embedded": {"contacts": [contact]},
    }
    if new.fields:
        body["custom_fields_values"] = field_values_json(new.fields)
    return body


# ---- v4 JSON → domain ---------------------------------------------------------------


def embedded(body: JSON, key: str) -> list[dict[str, JSON]]:
    """`body._embedded[key]`, tolerating a 204 (None) and missing keys."""
    inner = body.get("_embedded") if isinstance(body, dict) else None
    items = inner.get(key) if isinstance(inner, dict) else None
    return [item for item in items or () if isinstance(item, dict)]


def _field_values(record: Mapping[str, JSON]) -> Iterator[dict[str, JSON]]:
    for entry in record.get("custom_fields_values") or ():
        if isinstance(entry, dict) and entry.get("values"):
            yield entry


def _value_text(value: Mapping[str, JSON]) -> str:
    if value.get("value") is not None:
        return str(value["value"])
    return str(value.get("enum_id", ""))


def contact_from_json(
    record: Mapping[str, JSON], config: CrmConfig, *, with_leads: bool
) -> Contact:
    phones: list[str] = []
    emails: list[str] = []
    texts: dict[str, str] = {}
    for entry in _field_values(record):
        values = [_value_text(value) for value in entry["values"] if isinstance(value, dict)]
        if entry.get("field_code") == "PHONE":
            phones.extend(value for value in values if value)
        elif entry.get("field_code") == "EMAIL":
            emails.extend(value for value in values if value)
        elif values:
            texts[str(entry.get("field_id"))] = values[0]
    ids = config.contact_fields
    deal_ids = None
    if with_leads:
        deal_ids = tuple(str(lead["id"]) for lead in embedded(record, "leads"))
    return Contact(
        id=str(record["id"]),
        name=str(record.get("name") or ""),
        phones=tuple(phones),
        emails=tuple(emails),
        telegram_id=texts.get(ids.telegram_id or "", ""),
        telegram_username=texts.get(ids.telegram_username or "", ""),
        deal_ids=deal_ids,
    )


def deal_from_json(record: Mapping[str, JSON], closed_status_ids: Iterable[str]) -> Deal:
    status_id = str(record["status_id"])
    return Deal(
        id=str(record["id"]),
        pipeline_id=str(record["pipeline_id"]),
        status_id=status_id,
        updated_at=int(record.get("updated_at") or 0),
        price=Decimal(str(record.get("price") or 0)),
        is_deleted=bool(record.get("is_deleted")),
        is_closed=status_id in set(closed_status_ids),
        contact_ids=tuple(str(c["id"]) for c in embedded(record, "contacts")),
        fields={
            str(entry["field_id"]): _value_text(entry["values"][0])
            for entry in _field_values(record)
        },
    )


def pipeline_from_json(record: Mapping[str, JSON]) -> Pipeline:
    statuses = {str(s["id"]): str(s.get("name", "")) for s in embedded(record, "statuses")}
    return Pipeline(id=str(record["id"]), name=str(record.get("name", "")), statuses=statuses)


def custom_field_from_json(record: Mapping[str, JSON], entity: str) -> CustomField:
    enums = {str(e["id"]): str(e.get("value", "")) for e in record.get("enums") or ()}
    name, kind = str(record.get("name", "")), str(record.get("type", ""))
    return CustomField(str(record["id"]), name, kind, entity, enums)


# ---- the adapter --------------------------------------------------------------------


class AmoCrm:
    """One amoCRM account. Build it with `build_amocrm`; it owns one HTTP client."""

    def __init__(
        self,
        name: str,
        config: CrmConfig,
        http: CrmHttp,
        source: TokenSource,
        oauth: AmoOAuth,
        tokens: TokenRepository,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.config = config
        self.http = http
        self._source = source
        self._oauth = oauth
        self._tokens = tokens
        self._clock = clock

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
        body = await self._send("GET", "/api/v4/contacts", "contacts.search", params=params)
        with self._reading("contacts.search"):
            return [
                contact_from_json(record, self.config, with_leads=True)
                for record in embedded(body, "contacts")
            ]

    async def create_contact(self, new: NewContact) -> Contact:
        with self._reading("contacts.create"):
            payload = [contact_json(new)]
        answer = await self._send("POST", "/api/v4/contacts", "contacts.create", json=payload)
        with self._reading("contacts.create"):
            [created] = embedded(answer, "contacts")
            return self._sent_contact(payload[0], created["id"])

    async def update_contact(self, contact_id: str, patch: ContactPatch) -> None:
        if not patch.fields:
            return
        with self._reading("contacts.update"):
            payload = {"custom_fields_values": field_values_json(patch.fields)}
        path = f"/api/v4/contacts/{contact_id}"
        await self._send("PATCH", path, "contacts.update", json=payload)

    async def list_deals(self, contact: Contact, known: Sequence[Deal] = ()) -> list[Deal]:
        deal_ids = contact.deal_ids
        if deal_ids is None:
            path = f"/api/v4/contacts/{contact.id}"
            body = await self._send("GET", path, "contacts.get", params={"with": "leads"})
            if body is None:
                raise PermanentCrmError(self.name, f"contact {contact.id} no longer exists")
            with self._reading("contacts.get"):
                deal_ids = contact_from_json(body, self.config, with_leads=True).deal_ids or ()
        fresh = {deal.id: deal for deal in known if deal.id in deal_ids}
        missing = [deal_id for deal_id in deal_ids if deal_id not in fresh]
        if not missing:
            return list(fresh.values())
        params = {"filter[id][]": missing, "limit": PAGE_LIMIT}
        records = await self._pages("/api/v4/leads", params, "leads", "leads.list")
        with self._reading("leads.list"):
            fetched = [deal_from_json(record, self.config.closed_status_ids) for record in records]
        return [*fresh.values(), *fetched]

    async def get_deal(self, deal_id: str) -> Deal | None:
        path = f"/api/v4/leads/{deal_id}"
        try:
            body = await self._send("GET", path, "leads.get", params={"with": "contacts"})
        except PermanentCrmError:
            return None  # 404: deleted for good
        if body is None:
            return None
        with self._reading("leads.get"):
            return deal_from_json(body, self.config.closed_status_ids)

    async def create_deal(self, contact: Contact, new: NewDeal) -> Deal:
        with self._reading("leads.create"):
            payload = [deal_json(new, {"id": _int_id(contact.id)})]
        answer = await self._send("POST", "/api/v4/leads", "leads.create", json=payload)
        with self._reading("leads.create"):
            [created] = embedded(answer, "leads")
            return self._sent_deal(payload[0], created["id"], contact.id)

    async def create_contact_and_deal(
        self, contact: NewContact, deal: NewDeal
    ) -> tuple[Contact, Deal]:
        with self._reading("leads.complex"):
            payload = [deal_json(deal, contact_json(contact))]
        answer = await self._send("POST", "/api/v4/leads/complex", "leads.complex", json=payload)
        with self._reading("leads.complex"):
            [created] = answer
            if not created.get("contact_id"):
                raise ValueError(f"lead {created.get('id')} came back without a contact")
            sent_contact = payload[0]["_embedded"]["contacts"][0]
            new = self._sent_contact(sent_contact, created["contact_id"])
            return new, self._sent_deal(payload[0], created["id"], new.id)

    async def update_deal(self, deal_id: str, updates: Sequence[FieldUpdate]) -> None:
        if not updates:
            return
        with self._reading("leads.update"):
            payload = {"custom_fields_values": field_values_json(updates)}
        await self._send("PATCH", f"/api/v4/leads/{deal_id}", "leads.update", json=payload)

    async def deal_notes(self, deal_id: str) -> list[str]:
        params = {"filter[note_type][]": "common", "limit": PAGE_LIMIT}
        path = f"/api/v4/leads/{deal_id}/notes"
        notes = await self._pages(path, params, "notes", "notes.list")
        with self._reading("notes.list"):
            return [str(n["params"]["text"]) for n in notes if n.get("note_type") == "common"]

    async def add_note(self, deal_id: str, text: str) -> None:
        payload = [{"note_type": "common", "params": {"text": text}}]
        await self._send("POST", f"/api/v4/leads/{deal_id}/notes", "notes.add", json=payload)

    async def schema(self) -> CrmSchema:
        body = await self._send("GET", "/api/v4/leads/pipelines", "pipelines.list")
        fields: list[CustomField] = []
        for entity in ("leads", "contacts"):
            path = f"/api/v4/{entity}/custom_fields"
            records = await self._pages(path, {"limit": 50}, "custom_fields", "fields.list")
            with self._reading("fields.list"):
                fields.extend(custom_field_from_json(record, entity) for record in records)
        with self._reading("pipelines.list"):
            pipelines = tuple(pipeline_from_json(p) for p in embedded(body, "pipelines"))
        return CrmSchema(pipelines=pipelines, fields=tuple(fields))

    async def credentials_problem(self) -> str | None:
        return await self._source.problem()

    def health_details(self) -> Mapping[str, object]:
        return {"rate_limit_per_second": round(self.http.limiter.rate, 2)}

    def token_expires_at(self) -> float | None:
        return self._source.expires_at()

    async def exchange_code(self, code: str) -> TokenPair:
        """`crm-bridge auth`: trade an authorization code for a pair and store it before use."""
        pair = await self._oauth.exchange_code(code)
        await self._tokens.save_tokens(self.name, pair)
        if isinstance(self._source, OAuthTokenSource):
            self._source.forget()
        return pair

    async def aclose(self) -> None:
        await self.http.client.aclose()

    async def _send(self, method: str, path: str, operation: str, **kwargs: Any) -> JSON:
        """One request through `CrmHttp`; the JSON answer, or None for a 204."""
        response = await self.http.request(method, path, operation=operation, **kwargs)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise TransientCrmError(self.name, f"{method} {path}: answer is not JSON") from exc

    async def _pages(
        self, path: str, params: dict[str, Any], key: str, operation: str
    ) -> list[dict[str, JSON]]:
        # amoCRM's `next` href is absolute on the account domain; asking for the next page
        # number on our own base URL keeps a configured proxy in the path.
        items: list[dict[str, JSON]] = []
        for page in range(1, MAX_PAGES + 1):
            body = await self._send("GET", path, operation, params={**params, "page": page})
            items.extend(embedded(body, key))
            links = body.get("_links") if isinstance(body, dict) else None
            if not (isinstance(links, dict) and links.get("next")):
                break
        return items

    def _sent_contact(self, sent: dict[str, JSON], contact_id: object) -> Contact:
        # What was sent is what amoCRM stored: no read-back GET.
        return contact_from_json({**sent, "id": contact_id}, self.config, with_leads=True)

    def _sent_deal(self, sent: dict[str, JSON], deal_id: object, contact_id: str) -> Deal:
        record = {**sent, "id": deal_id, "updated_at": int(self._clock())}
        record["_embedded"] = {"contacts": [{"id": contact_id}]}
        return deal_from_json(record, self.config.closed_status_ids)

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


def build_amocrm(
    name: str,
    config: CrmConfig,
    settings: Settings,
    tokens: TokenRepository,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    on_call: OnCall | None = None,
    clock: Callable[[], float] = time.time,
) -> AmoCrm:
    """The adapter with its one HTTP client, rate limiter and token source."""
    client = httpx.AsyncClient(
        base_url=config.base_url,
        timeout=config.request_timeout_seconds,
        transport=transport,
    )
    http = CrmHttp(name, client, RateLimiter(config.rate_limit_per_second), on_call=on_call)
    oauth = AmoOAuth(name, http, settings, clock)
    source: TokenSource
    if config.auth == "oauth":
        source = OAuthTokenSource(
            name,
            tokens,
            oauth.refresh,
            bootstrap_refresh_token=secret_value(settings.amocrm_refresh_token),
            clock=clock,
        )
    else:
        hint = f'set AMOCRM_ACCESS_TOKEN or use auth = "oauth" and run `crm-bridge auth {name}`'
        source = StaticToken(name, secret_value(settings.amocrm_access_token), hint)
    # Set after construction: the refresher above needs this same client.
    client.auth = BearerAuth(source)
    return AmoCrm(name, config, http, source, oauth, tokens, clock)
