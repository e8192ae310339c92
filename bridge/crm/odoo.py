"""Odoo (17, 18, 19; Community and Enterprise; self-hosted, Odoo.sh or Odoo Online) as a
`CrmAdapter`.

Shapes are `odoo_json`; here: the session (which API, the uid, the optional fields this
database has) and the adapter, on the `Connection` every CRM shares. Odoo has no batch:
every step is one call, and every read is a `search_read` that brings the fields it needs.
Calls per operation:

    find_contact        res.partner.search_read, every key in one OR domain
    create_contact      res.partner.create
    update_contact      res.partner.write (none when nothing to fill)
    list_deals          crm.lead.search_read (open opportunities of the contact)
    get_deal            crm.lead.search_read by id (archived ones too: they read as lost)
    create_deal         crm.lead.create
    create_contact_and_deal   res.partner.create + crm.lead.create
    update_deal         crm.lead.write
    deal_notes / add_note     mail.message.search_read / crm.lead.message_post
    find_company        res.partner.search_read (is_company; INN in `vat` or the name)
    create_company      res.partner.create (is_company)
    link_contact_to_company   res.partner.write parent_id (none when this process
                        linked them already)
    change_deal         crm.lead.write, or crm.lead.action_set_lost for the lost
                        pseudo-stage: one call either way
    set_deal_items      none: crm.lead has no lines (the note lists the items)

A business order's deal is the person's (partner_id = the contact, whose parent_id is the
company), as Odoo's own lead form keeps a company's contact: the lead reads as
"Company, Person", its commercial partner is the company, and the contact's deals are
still found by `list_deals`. `create_deal` with a company links the person first unless
this process already did.
    schema              crm.team, crm.stage, ir.model.fields (+ selections, + the records
                        of each many2one/many2many field's model) search_reads

Once per process, before the first of these: with `api = "auto"` a JSON-2 probe
(`res.users/context_get`: 200 on 19+, a redirect to the login page or a 404 before),
with JSON-RPC `common.authenticate` for the uid (about 0.4 s of key hashing on the
server, §6.6, so it is done once), and one ir.model.fields read of the optional fields
(`odoo_json.PROBED_FIELDS`). An AccessDenied later forgets all three, so a rotated key or
an upgraded server is picked up on the next attempt. Every call is a POST; the reads
(`OdooCall.read_only`) are sent as `idempotent`, so a 5xx or a timeout is retried at once
as for a GET elsewhere, while a write that timed out is left to the flow.

Options (`[crm.NAME.options]`, see `OdooOptions`): `database`, `login`, `api`. The API key
is `<NAME>_API_KEY` (`ODOO_API_KEY` for `[crm.odoo]`).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from typing import Literal

import httpx

from bridge.crm import odoo_json as oj
from bridge.crm.base import (
    CompanyKey,
    Confirm,
    ConfirmCompany,
    CrmSchema,
    first_confirmed,
)
from bridge.crm.connection import Connection, Wiring
from bridge.crm.odoo_json import JSON, Capabilities, OdooCall, OdooOptions
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
from bridge.errors import AuthError, PermanentCrmError
from bridge.tokens import TokenSource

Api = Literal["jsonrpc", "json2"]
PROBE = oj.model_method("res.users", "context_get")


class NoJson2(AuthError):
    """A JSON-2 path answered with a redirect (to the login page): the server predates
    JSON-2. The probe falls back to JSON-RPC; a pinned `api = "json2"` pauses on it."""


class Json2Auth(httpx.Auth):
    """On JSON-2 paths only: the API key as a bearer token and the database (one server
    may host several, external_api.rst "Database"). Over JSON-RPC both travel in the body,
    and no other path needs them."""

    def __init__(self, source: TokenSource, *, database: str) -> None:
        self._source = source
        self._database = database

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        if request.url.path.startswith(oj.JSON2_PREFIX):
            request.headers["Authorization"] = f"bearer {await self._source.current()}"
            request.headers["X-Odoo-Database"] = self._database
        yield request


def json2_error_hook(crm: str) -> Callable[[httpx.Response], object]:
    """A JSON-2 refusal names its exception; classify by the name before `CrmHttp` maps
    the bare status (a ValueError for an unknown field is a 500 that will never pass). A
    redirect there is a server without JSON-2 (§8.50)."""

    async def hook(response: httpx.Response) -> None:
        path = response.request.url.path
        if not path.startswith(oj.JSON2_PREFIX):
            return
        where = path.removeprefix(oj.JSON2_PREFIX)
        status = response.status_code
        if status < 400:
            if oj.json2_offered(status, response.headers.get("location", "")) is False:
                raise NoJson2(
                    crm,
                    f"{where}: this server has no JSON-2 API (Odoo before 19):"
                    f' set crm.{crm}.options.api = "jsonrpc" or "auto"',
                )
            return
        await response.aread()
        try:
            body = json.loads(response.content)
        except ValueError:
            return  # a proxy's page: the status alone decides
        if isinstance(body, dict) and body.get("name"):
            raise oj.json2_error(crm, status, body, where)

    return hook


class Odoo:
    """One Odoo database. Build it with `build_odoo`."""

    # crm.lead has no order lines of its own (sale.order has, but is another app and
    # another record): the order's items live in the note only.
    keeps_items = False

    def __init__(self, connection: Connection, options: OdooOptions) -> None:
        self.name = connection.name
        self.config = connection.config
        self.connection = connection
        self.options = options
        self._api: Api | None = None if options.api == "auto" else options.api
        self._uid: int | None = None
        self._caps: Capabilities | None = None
        self._ids = itertools.count(1)
        self._ready = asyncio.Lock()
        # (contact, company) pairs this process linked: a deal created for the company
        # right after needs no second write. Only a saving; a miss writes again harmlessly.
        self._linked: set[tuple[str, str]] = set()
        connection.extra_health = lambda: {"api": self._api or "not yet chosen"}

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
                with self.connection.reading("capabilities"):
                    self._caps = oj.capabilities_from(oj.records(self.name, answer, "capabilities"))
            return self._caps

    async def _probe(self) -> Api:
        """JSON-2 when the server offers it; an outage decides nothing (raised)."""
        try:
            await self._post(oj.json2_path(PROBE), "odoo.probe", oj.json2_body(PROBE), True)
        except (NoJson2, PermanentCrmError):  # a redirect to the login page, or 404/405
            return self._fallback()
        return "json2"

    def _fallback(self) -> Api:
        if not self.options.login:
            raise AuthError(
                self.name,
                f"this server has no JSON-2 API (Odoo before 19): set crm.{self.name}.options"
                ".login to the API user's login for JSON-RPC",
            )
        return "jsonrpc"

    async def _authenticate(self) -> int:
        key = await self.connection.source.current()
        body = oj.authenticate_body(self.options.database, self.options.login, key, next(self._ids))
        answer = await self._post(oj.RPC_PATH, "common.authenticate", body, True)
        return oj.uid_from(self.name, oj.rpc_result(self.name, answer, "common.authenticate"))

    async def _send(self, call: OdooCall) -> JSON:
        """One ORM call once the session is ready."""
        await self._capabilities()
        return await self._call(call)

    async def _call(self, call: OdooCall) -> JSON:
        try:
            if self._api == "json2":
                path = oj.json2_path(call)
                return await self._post(path, call.operation, oj.json2_body(call), call.read_only)
            key = await self.connection.source.current()
            uid = self._uid or 0
            body = oj.execute_kw_body(call, self.options.database, uid, key, next(self._ids))
            answer = await self._post(oj.RPC_PATH, call.operation, body, call.read_only)
            return oj.rpc_result(self.name, answer, call.operation)
        except AuthError:
            # A rotated key, another user, an upgraded server: learn them again next time.
            self._uid, self._caps = None, None
            self._api = None if self.options.api == "auto" else self.options.api
            raise

    async def _post(self, path: str, operation: str, body: JSON, read_only: bool) -> JSON:
        return await self.connection.send("POST", path, operation, json=body, idempotent=read_only)

    # ---- contacts ---------------------------------------------------------------------

    async def find_contact(self, keys: Sequence[LookupKey], confirm: Confirm) -> Contact | None:
        caps = await self._capabilities()
        call = oj.partner_lookup_call(keys, self.config, caps)
        if call is None:
            return None
        answer = await self._call(call)
        with self.connection.reading(call.operation):
            found = [
                oj.contact_from_partner(record, self.config)
                for record in oj.records(self.name, answer, call.operation)
            ]
        # One search for every key: each hit is a candidate for each key, and the flow's
        # rule decides which key it really carries.
        return first_confirmed(keys, dict.fromkeys(keys, found), confirm)

    async def create_contact(self, new: NewContact, *, company_id: str | None = None) -> Contact:
        """A person; with `company_id`, one of the company's people from the start."""
        with self.connection.reading("res.partner.create"):
            values = oj.partner_values(new)
            if company_id is not None:
                values["parent_id"] = int(company_id)
        answer = await self._send(oj.create(oj.PARTNER, values))
        partner_id = oj.created_id(self.name, answer, "res.partner.create")
        if company_id is not None:
            self._linked.add((str(partner_id), company_id))
        with self.connection.reading("res.partner.create"):
            return oj.contact_from_partner({**values, "id": partner_id}, self.config)

    async def update_contact(self, contact_id: str, patch: ContactPatch) -> None:
        if not patch.fields:
            return
        with self.connection.reading("res.partner.write"):
            call = oj.write(oj.PARTNER, [int(contact_id)], oj.field_values(patch.fields))
        await self._send(call)

    # ---- deals ------------------------------------------------------------------------

    async def list_deals(self, contact: Contact, known: Sequence[Deal] = ()) -> list[Deal]:
        caps = await self._capabilities()
        with self.connection.reading("crm.lead.search_read"):
            call = oj.open_deals_call(contact.id, self.config, caps)
        answer = await self._call(call)
        with self.connection.reading(call.operation):
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
        with self.connection.reading(call.operation):
            found = oj.records(self.name, answer, call.operation)
            return oj.deal_from_lead(found[0], self.config) if found else None

    async def create_deal(self, contact: Contact, new: NewDeal) -> Deal:
        with self.connection.reading("crm.lead.create"):
            partner_id = int(contact.id)
            values = oj.lead_values(new, partner_id, self.options.lost_reason_id)
        if new.company_id is not None:
            await self.link_contact_to_company(contact.id, new.company_id)
        answer = await self._send(oj.create(oj.LEAD, values))
        deal_id = oj.created_id(self.name, answer, "crm.lead.create")
        return oj.deal_from_sent(new, deal_id, partner_id, self.connection.clock())

    async def create_contact_and_deal(
        self, contact: NewContact, deal: NewDeal
    ) -> tuple[Contact, Deal]:
        """Two calls: a many2one cannot create its record inline. Should the second fail,
        the retry finds the partner by the normal lookup and creates only the deal."""
        with self.connection.reading("crm.lead.create"):
            oj.lead_values(deal, 0)  # a deal that cannot be built must not leave a partner
        created = await self.create_contact(contact, company_id=deal.company_id)
        return created, await self.create_deal(created, deal)

    async def update_deal(self, deal_id: str, updates: Sequence[FieldUpdate]) -> None:
        if not updates:
            return
        with self.connection.reading("crm.lead.write"):
            call = oj.write(oj.LEAD, [int(deal_id)], oj.field_values(updates))
        await self._send(call)

    # ---- orders -----------------------------------------------------------------------

    async def find_company(self, company: Company, confirm: ConfirmCompany) -> CompanyRecord | None:
        call = oj.company_lookup_call(company)
        if call is None:
            return None
        answer = await self._send(call)
        with self.connection.reading(call.operation):
            hits = [
                oj.company_from_partner(r) for r in oj.records(self.name, answer, call.operation)
            ]
        keys: tuple[CompanyKey, ...] = ("inn", "name")
        for key in keys:  # by INN first; hits come oldest first
            chosen = next((hit for hit in hits if confirm(hit, key)), None)
            if chosen is not None:
                return chosen
        return None

    async def create_company(self, company: Company) -> CompanyRecord:
        values = oj.company_values(company)
        answer = await self._send(oj.create(oj.PARTNER, values))
        company_id = oj.created_id(self.name, answer, "res.partner.create")
        return CompanyRecord(str(company_id), company.name, company.inn)

    async def link_contact_to_company(self, contact_id: str, company_id: str) -> None:
        """The person's parent_id: Odoo's "works at" link; writing it again is harmless."""
        if (contact_id, company_id) in self._linked:
            return
        with self.connection.reading("res.partner.write"):
            call = oj.write(oj.PARTNER, [int(contact_id)], {"parent_id": int(company_id)})
        await self._send(call)
        self._linked.add((contact_id, company_id))

    async def change_deal(self, deal_id: str, change: DealChange) -> None:
        with self.connection.reading("crm.lead.write"):
            call = oj.change_call(int(deal_id), change, self.options.lost_reason_id)
        if call is not None:
            await self._send(call)

    async def set_deal_items(self, deal_id: str, items: Sequence[OrderItem], currency: str) -> None:
        """Nothing to send: an opportunity has no lines (`keeps_items` is False)."""
        del deal_id, items, currency

    # ---- notes ------------------------------------------------------------------------

    async def deal_notes(self, deal_id: str) -> list[str]:
        call = oj.notes_call(int(deal_id))
        answer = await self._send(call)
        with self.connection.reading(call.operation):
            return [
                oj.note_text(r.get("body")) for r in oj.records(self.name, answer, call.operation)
            ]

    async def add_note(self, deal_id: str, text: str) -> None:
        await self._send(oj.note_call(int(deal_id), text))

    # ---- schema ------------------------------------------------------------------------

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
        with self.connection.reading("schema"):
            return CrmSchema(
                pipelines=oj.pipelines_from(teams, stages),
                fields=tuple(oj.custom_fields_from(fields, selections, relations)),
            )


# ---- the builder ----------------------------------------------------------------------


def build_odoo(wiring: Wiring) -> Odoo:
    """The adapter on its connection: the API key (`<NAME>_API_KEY`) and no OAuth, which
    Odoo's external API does not have."""
    options = OdooOptions.from_config(wiring.name, wiring.config.options)
    secrets = wiring.secrets("API_KEY")
    connection = Connection(
        wiring,
        secrets,
        None,
        base_url=wiring.config.base_url.rstrip("/"),
        event_hooks={"response": [json2_error_hook(wiring.name)]},
        static_auth=functools.partial(Json2Auth, database=options.database),
        static_token=(secrets.token, f"set {secrets.var('API_KEY')}"),
    )
    return Odoo(connection, options)
