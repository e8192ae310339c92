"""Odoo (17, 18, 19; Community and Enterprise; self-hosted, Odoo.sh or Odoo Online) as a
`CrmAdapter`.

Shapes are `odoo_json`; here: the session (which API, the uid, the optional fields this
database has) and the adapter. Odoo has no batch: every step is one call, and every read
is a `search_read` that brings the fields it needs. Calls per operation:

    find_contact        res.partner.search_read, every key in one OR domain
    create_contact      res.partner.create
    update_contact      res.partner.write (none when nothing to fill)
    list_deals          crm.lead.search_read (open opportunities of the contact)
    get_deal            crm.lead.search_read by id (archived ones too: they read as lost)
    create_deal         crm.lead.create
    create_contact_and_deal   res.partner.create + crm.lead.create
    update_deal         crm.lead.write
    deal_notes / add_note     mail.message.search_read / crm.lead.message_post
    schema              crm.team, crm.stage, ir.model.fields (+ selections, + the records
                        of each many2one/many2many field's model) search_reads

Once per process, before the first of these: with `api = "auto"` a JSON-2 probe
(`res.users/context_get`: 200 on 19+, a redirect to the login page or a 404 before),
with JSON-RPC `common.authenticate` for the uid (about 0.4 s of key hashing on the
server, §6.6, so it is done once), and one ir.model.fields read of the optional fields
(`odoo_json.PROBED_FIELDS`). An AccessDenied later forgets all three, so a rotated key or
an upgraded server is picked up on the next attempt.

Options (`[crm.NAME.options]`, see `OdooOptions`): `database`, `login`, `api`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Literal

import httpx

from bridge.crm import odoo_json as oj
from bridge.crm.base import Confirm, CrmHttp, CrmSchema, RateLimiter, first_confirmed
from bridge.crm.odoo_json import JSON, Capabilities, OdooCall, OdooOptions
from bridge.domain import (
    Contact,
    ContactPatch,
    Deal,
    FieldUpdate,
    LookupKey,
    NewContact,
    NewDeal,
)
from bridge.errors import AuthError, ConfigError, CrmError, PermanentCrmError
from bridge.settings import CrmConfig, Settings, secret_value
from bridge.tokens import StaticToken, TokenPair, TokenRepository, TokenSource

OnCall = Callable[[str, str, float, int], None]
Api = Literal["jsonrpc", "json2"]
PROBE = oj.model_method("res.users", "context_get")


class Json2Bearer(httpx.Auth):
    """The API key as a bearer token on JSON-2 paths only: over JSON-RPC it travels in
    the body, and no other path needs it."""

    def __init__(self, source: TokenSource) -> None:
        self._source = source

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        if request.url.path.startswith(oj.JSON2_PREFIX):
            request.headers["Authorization"] = f"bearer {await self._source.current()}"
        yield request


def json2_error_hook(crm: str) -> Callable[[httpx.Response], object]:
    """A JSON-2 refusal names its exception; classify by the name before `CrmHttp` maps
    the bare status (a ValueError for an unknown field is a 500 that will never pass)."""

    async def hook(response: httpx.Response) -> None:
        if response.status_code < 400 or not response.request.url.path.startswith(oj.JSON2_PREFIX):
            return
        await response.aread()
        try:
            body = json.loads(response.content)
        except ValueError:
            return  # a proxy's page: the status alone decides
        if isinstance(body, dict) and body.get("name"):
            where = response.request.url.path.removeprefix(oj.JSON2_PREFIX)
            raise oj.json2_error(crm, response.status_code, body, where)

    return hook


class Odoo:
    """One Odoo database. Build it with `build_odoo`; it owns one HTTP client."""

    def __init__(
        self,
        name: str,
        config: CrmConfig,
        options: OdooOptions,
        http: CrmHttp,
        source: TokenSource,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.config = config
        self.options = options
        self.http = http
        self._source = source
        self._clock = clock
        self._api: Api | None = None if options.api == "auto" else options.api
        self._uid: int | None = None
        self._caps: Capabilities | None = None
        self._versions = ""
        self._ids = itertools.count(1)
        self._ready = asyncio.Lock()

    # ---- the session ------------------------------------------------------------------

    async def _capabilities(self) -> Capabilities:
        caps = self._caps
        if caps is not None and self._api is not None:
            return caps
        async with self._ready:
            if self._api is None:
                self._api = await self._probe()
            if self._api == "jsonrpc" and self._uid is None:
                self._uid = await self._authenticate()
            if self._caps is None:
                answer = await self._call(oj.capabilities_call())
                with self._reading("capabilities"):
                    self._caps = oj.capabilities_from(oj.records(self.name, answer, "capabilities"))
            return self._caps

    async def _probe(self) -> Api:
        """JSON-2 when the server offers it; an outage decides nothing (raised)."""
        try:
            response = await self.http.request(
                "POST", oj.json2_path(PROBE), json=oj.json2_body(PROBE), operation="odoo.probe"
            )
        except PermanentCrmError:
            return self._fallback()  # 404/405: no such route
        offered = oj.json2_offered(response.status_code, response.headers.get("location", ""))
        if offered is True:
            return "json2"
        if offered is False:
            return self._fallback()
        raise AuthError(self.name, f"odoo.probe: unexpected HTTP {response.status_code}")

    def _fallback(self) -> Api:
        if not self.options.login:
            raise AuthError(
                self.name,
                f"this server has no JSON-2 API (Odoo before 19): set crm.{self.name}.options"
                ".login to the API user's login for JSON-RPC",
            )
        return "jsonrpc"

    async def _authenticate(self) -> int:
        key = await self._source.current()
        body = oj.authenticate_body(self.options.database, self.options.login, key, next(self._ids))
        response = await self.http.request(
            "POST", oj.RPC_PATH, json=body, operation="common.authenticate"
        )
        result = oj.rpc_result(
            self.name, self._json(response, "common.authenticate"), "common.authenticate"
        )
        return oj.uid_from(self.name, result)

    async def _send(self, call: OdooCall) -> JSON:
        """One ORM call once the session is ready."""
        await self._capabilities()
        return await self._call(call)

    async def _call(self, call: OdooCall) -> JSON:
        try:
            if self._api == "json2":
                response = await self.http.request(
                    "POST", oj.json2_path(call), json=oj.json2_body(call), operation=call.operation
                )
                if oj.json2_offered(response.status_code) is False:
                    raise AuthError(
                        self.name,
                        f"{call.operation}: this server has no JSON-2 API (Odoo before 19):"
                        f' set crm.{self.name}.options.api = "jsonrpc" or "auto"',
                    )
                return self._json(response, call.operation)
            key = await self._source.current()
            uid = self._uid or 0
            body = oj.execute_kw_body(call, self.options.database, uid, key, next(self._ids))
            response = await self.http.request(
                "POST", oj.RPC_PATH, json=body, operation=call.operation
            )
            return oj.rpc_result(self.name, self._json(response, call.operation), call.operation)
        except AuthError:
            # A rotated key, another user, an upgraded server: learn them again next time.
            self._uid, self._caps = None, None
            self._api = None if self.options.api == "auto" else self.options.api
            raise

    def _json(self, response: httpx.Response, operation: str) -> JSON:
        with self._reading(operation):
            return response.json()

    @contextmanager
    def _reading(self, operation: str) -> Iterator[None]:
        try:
            yield
        except CrmError:
            raise
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise PermanentCrmError(self.name, f"{operation}: {type(exc).__name__}: {exc}") from exc

    # ---- contacts ---------------------------------------------------------------------

    async def find_contact(self, keys: Sequence[LookupKey], confirm: Confirm) -> Contact | None:
        caps = await self._capabilities()
        call = oj.partner_lookup_call(keys, self.config, caps)
        if call is None:
            return None
        answer = await self._call(call)
        with self._reading(call.operation):
            found = [
                oj.contact_from_partner(record, self.config)
                for record in oj.records(self.name, answer, call.operation)
            ]
        # One search for every key: each hit is a candidate for each key, and the flow's
        # rule decides which key it really carries.
        return first_confirmed(keys, dict.fromkeys(keys, found), confirm)

    async def create_contact(self, new: NewContact) -> Contact:
        with self._reading("res.partner.create"):
            values = oj.partner_values(new)
        answer = await self._send(oj.create(oj.PARTNER, values))
        partner_id = oj.created_id(self.name, answer, "res.partner.create")
        with self._reading("res.partner.create"):
            return oj.contact_from_partner({**values, "id": partner_id}, self.config)

    async def update_contact(self, contact_id: str, patch: ContactPatch) -> None:
        if not patch.fields:
            return
        with self._reading("res.partner.write"):
            call = oj.write(oj.PARTNER, [int(contact_id)], oj.field_values(patch.fields))
        await self._send(call)

    # ---- deals ------------------------------------------------------------------------

    async def list_deals(self, contact: Contact, known: Sequence[Deal] = ()) -> list[Deal]:
        caps = await self._capabilities()
        with self._reading("crm.lead.search_read"):
            call = oj.open_deals_call(contact.id, self.config, caps)
        answer = await self._call(call)
        with self._reading(call.operation):
            deals = [
                oj.deal_from_lead(record, self.config)
                for record in oj.records(self.name, answer, call.operation)
            ]
        seen = {deal.id for deal in deals}
        return [*deals, *(deal for deal in known if deal.id not in seen)]

    async def get_deal(self, deal_id: str) -> Deal | None:
        if not (deal_id.isascii() and deal_id.isdigit()):
            return None
        caps = await self._capabilities()
        call = oj.deal_call(int(deal_id), self.config, caps)
        answer = await self._call(call)
        with self._reading(call.operation):
            found = oj.records(self.name, answer, call.operation)
            return oj.deal_from_lead(found[0], self.config) if found else None

    async def create_deal(self, contact: Contact, new: NewDeal) -> Deal:
        with self._reading("crm.lead.create"):
            partner_id = int(contact.id)
            values = oj.lead_values(new, partner_id)
        answer = await self._send(oj.create(oj.LEAD, values))
        deal_id = oj.created_id(self.name, answer, "crm.lead.create")
        return oj.deal_from_sent(new, deal_id, partner_id, self._clock())

    async def create_contact_and_deal(
        self, contact: NewContact, deal: NewDeal
    ) -> tuple[Contact, Deal]:
        """Two calls: a many2one cannot create its record inline. Should the second fail,
        the retry finds the partner by the normal lookup and creates only the deal."""
        with self._reading("crm.lead.create"):
            oj.lead_values(deal, 0)  # a deal that cannot be built must not leave a partner
        created = await self.create_contact(contact)
        return created, await self.create_deal(created, deal)

    async def update_deal(self, deal_id: str, updates: Sequence[FieldUpdate]) -> None:
        if not updates:
            return
        with self._reading("crm.lead.write"):
            call = oj.write(oj.LEAD, [int(deal_id)], oj.field_values(updates))
        await self._send(call)

    # ---- notes ------------------------------------------------------------------------

    async def deal_notes(self, deal_id: str) -> list[str]:
        call = oj.notes_call(int(deal_id))
        answer = await self._send(call)
        with self._reading(call.operation):
            return [
                oj.note_text(r.get("body")) for r in oj.records(self.name, answer, call.operation)
            ]

    async def add_note(self, deal_id: str, text: str) -> None:
        await self._send(oj.note_call(int(deal_id), text))

    # ---- schema, credentials ------------------------------------------------------------

    async def schema(self) -> CrmSchema:
        teams = oj.records(self.name, await self._send(oj.teams_call()), "crm.team.search_read")
        stages = oj.records(self.name, await self._call(oj.stages_call()), "crm.stage.search_read")
        fields = oj.records(
            self.name, await self._call(oj.custom_fields_call()), "ir.model.fields.search_read"
        )
        selection_ids = [int(row["id"]) for row in fields if row.get("ttype") == "selection"]
        selections: list[dict[str, JSON]] = []
        if selection_ids:
            answer = await self._call(oj.selections_call(selection_ids))
            selections = oj.records(self.name, answer, "ir.model.fields.selection.search_read")
        relations: dict[str, Sequence[Mapping[str, JSON]]] = {}
        for model in oj.relation_models(fields):
            answer = await self._call(oj.relation_records_call(model))
            relations[model] = oj.records(self.name, answer, f"{model}.search_read")
        with self._reading("schema"):
            return CrmSchema(
                pipelines=oj.pipelines_from(teams, stages),
                fields=tuple(oj.custom_fields_from(fields, selections, relations)),
            )

    async def exchange_code(self, code: str) -> TokenPair:
        raise AuthError(self.name, "Odoo's external API has no OAuth: set ODOO_API_KEY")

    async def credentials_problem(self) -> str | None:
        return await self._source.problem()

    def token_expires_at(self) -> float | None:
        return None

    def health_details(self) -> Mapping[str, object]:
        return {
            "rate_limit_per_second": round(self.http.limiter.rate, 2),
            "api": self._api or "not yet chosen",
        }

    async def aclose(self) -> None:
        await self.http.client.aclose()


# ---- the builder ----------------------------------------------------------------------


def build_odoo(
    name: str,
    config: CrmConfig,
    settings: Settings,
    tokens: TokenRepository,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    on_call: OnCall | None = None,
    clock: Callable[[], float] = time.time,
) -> Odoo:
    """The adapter with its one HTTP client and the API key (ODOO_API_KEY)."""
    del tokens  # an API key is static: nothing to store
    options = OdooOptions.from_config(name, config.options)
    if config.auth != "long_lived_token":
        raise ConfigError(f'crm.{name}.auth: Odoo takes an API key: auth = "long_lived_token"')
    source = StaticToken(name, secret_value(settings.odoo_api_key), "set ODOO_API_KEY")
    client = httpx.AsyncClient(
        base_url=config.base_url.rstrip("/"),
        timeout=config.request_timeout_seconds,
        transport=transport,
        auth=Json2Bearer(source),
        event_hooks={"response": [json2_error_hook(name)]},
        # The database of a JSON-2 call, where one server hosts several (external_api.rst
        # "Database"); JSON-RPC names it in the body.
        headers={"User-Agent": "crm-bridge", "X-Odoo-Database": options.database},
    )
    http = CrmHttp(name, client, RateLimiter(config.rate_limit_per_second), on_call=on_call)
    return Odoo(name, config, options, http, source, clock)
