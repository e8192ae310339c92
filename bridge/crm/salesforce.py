"""Salesforce (REST API, version configurable) as a `CrmAdapter`.

The mappers are in `salesforce_json`, sessions in `salesforce_auth`, the daily allocation
in `salesforce_limits`; this module is the adapter and `build_salesforce`. The calls each
method makes (`D` = `/services/data/vXX.X`):

    find_contact             GET  D/query  one SOQL query OR-ing every key (exact values,
                             or   POST D/composite/batch  that query and a SOSL phone search
                                  side by side, when there is a phone)
    create_contact           POST D/sobjects/Contact
    update_contact           PATCH D/sobjects/Contact/{id}          (none when nothing to set)
    list_deals               GET  D/query  open opportunities linked by a contact role
    get_deal                 GET  D/query  one opportunity with its roles' contacts
    create_deal              POST D/composite  Opportunity + OpportunityContactRole, all or none
    create_contact_and_deal  POST D/composite  Contact + Opportunity + role, all or none
    update_deal              PATCH D/sobjects/Opportunity/{id}      (none when nothing to set)
    deal_notes               GET  D/query  the opportunity's classic Notes, bodies in full
    add_note                 POST D/sobjects/Note
    schema                   GET  D/sobjects/Opportunity/describe, D/sobjects/Contact/describe,
                                  D/sobjects/Account/describe (a section taking orders),
                                  and per record type
                                  D/ui-api/object-info/Opportunity/picklist-values/{id}/StageName
Orders (an `OrderAdapter`; a company is an Account, items opportunity products):
    find_company             GET  D/query  one SOQL query: the INN field = … OR Name LIKE …
    create_company           POST D/sobjects/Account
    link_contact_to_company  PATCH D/sobjects/Contact/{id}  AccountId (the same again: harmless)
    change_deal              PATCH D/sobjects/Opportunity/{id}  stage, record type, amount,
                                  fields in one write                (none when nothing to set)
    set_deal_items           with a price book (`order_catalog_id`): POST D/composite of two
                             queries (the opportunity's price book and lines; the entries of
                             the products' codes), then, unless it already holds exactly
                             these, POST D/composite all or none: DELETE the lines
                             (D/composite/sobjects?ids=…), PATCH the price book when another,
                             POST the new lines (D/composite/sobjects). Without a price book
                             none: `keeps_items` is False and the note lists the items.
`create_deal` and `create_contact_and_deal` set `AccountId` on the opportunity (and the
new contact) in the same composite request when the order has a company.
Queries page through `nextRecordsUrl`. A Telegram id Salesforce refuses as a duplicate
(DUPLICATE_VALUE on a unique field: a contact the lookup could not see) names the contact
it belongs to, and that one is used.

`options` of `[crm.NAME]`: `flow` ("jwt_bearer" | "client_credentials"), `api_version`,
`login_url`, `username`, `api_stop_percent`, `session_timeout_seconds`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, date, datetime
from typing import Any

from bridge.crm.base import (
    JSON,
    Confirm,
    ConfirmCompany,
    CrmSchema,
    CustomField,
    first_confirmed,
)
from bridge.crm.connection import Connection, OAuthEndpoint, Wiring
from bridge.crm.salesforce_auth import TOKEN_PATH, Flow, SessionMinter, SessionSource
from bridge.crm.salesforce_json import (
    DEFAULT_API_VERSION,
    SubRequest,
    batch_results,
    checked_id,
    collection_errors,
    company_create_json,
    company_from_json,
    company_soql,
    composite_json,
    composite_results,
    contact_create_json,
    contact_from_json,
    contact_soql,
    contact_sosl,
    create_contact_and_deal_steps,
    create_deal_steps,
    custom_fields,
    data_path,
    deal_change_json,
    deal_create_json,
    deal_from_json,
    deal_soql,
    deals_soql,
    fields_json,
    is_record_id,
    items_read_json,
    items_write_json,
    line_items_from_json,
    lookup_batch_json,
    master_pipeline,
    missing_products,
    note_create_json,
    note_text,
    notes_soql,
    pipeline_from_json,
    query_rows,
    record_types,
    same_lines,
    search_rows,
    stage_values_path,
    wanted_lines,
)
from bridge.crm.salesforce_limits import DEFAULT_STOP_PERCENT, ApiUsage, usage_hooks
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
from bridge.errors import ConfigError, PermanentCrmError, RateLimited
from bridge.settings import CrmConfig

OPTIONS = (
    "flow",
    "api_version",
    "login_url",
    "username",
    "api_stop_percent",
    "session_timeout_seconds",
)
DEFAULT_SESSION_TIMEOUT = 7200.0  # the org default: 2 hours
MAX_PAGES = 20
# DUPLICATE_VALUE's message names the unique field and the record holding the value.
_DUPLICATE = re.compile(r"duplicate value found: (\w+) duplicates value on record with id: (\w+)")

# The token endpoint, as data: a form body, refusals named by `error` and
# `error_description`. Salesforce's server flows answer no refresh token, so the connection
# never refreshes through it (auth = "minted"): `SessionMinter` posts the grants.
OAUTH = OAuthEndpoint(
    TOKEN_PATH, style="form", error_fields=("error_description", "error"), rotates=False
)


class Salesforce:
    """One Salesforce org. Build it with `build_salesforce`."""

    def __init__(self, connection: Connection, usage: ApiUsage, version: str, flow: Flow) -> None:
        self.name = connection.name
        self.config = connection.config
        self.connection = connection
        self.http = connection.http
        self.usage = usage
        self.version = version
        self.flow = flow
        self._reading = connection.reading
        self._clock = connection.clock
        self._data = data_path(version)
        # Opportunity products need a price book; without one the items live in the note.
        self.keeps_items = bool(self.config.order_catalog_id)

    # ---- contacts -------------------------------------------------------------------

    async def find_contact(self, keys: Sequence[LookupKey], confirm: Confirm) -> Contact | None:
        hits = await self.find_contacts(keys)
        # Every hit goes to every key: `confirm` decides which key a hit really carries.
        return first_confirmed(keys, {key: hits for key in keys}, confirm)

    async def find_contacts(self, keys: Sequence[LookupKey]) -> list[Contact]:
        """Raw hits of the one lookup request for all `keys` (unconfirmed)."""
        with self._reading("contacts.search"):
            soql, sosl = contact_soql(keys, self.config), contact_sosl(keys, self.config)
        if soql is None:
            return []
        if sosl is None:
            rows = await self._query(soql, "contacts.search")
        else:
            body = lookup_batch_json(self.version, soql, sosl)
            answer = await self._send(
                "POST",
                f"{self._data}/composite/batch",
                "contacts.search",
                json=body,
                idempotent=True,  # queries only: retried quickly like a GET
            )
            with self._reading("contacts.search"):
                queried, searched = batch_results(self.name, answer)
                rows, following = query_rows(queried)
                rows = [*rows, *search_rows(searched)]
            if following:  # more than a batch of exact hits: an org of duplicates
                rows += await self._more(following, "contacts.search")
        with self._reading("contacts.search"):
            unique = {str(row["Id"]): row for row in rows}
            return [contact_from_json(row, self.config) for row in unique.values()]

    async def create_contact(self, new: NewContact) -> Contact:
        with self._reading("contacts.create"):
            body = contact_create_json(new)
        try:
            answer = await self._send(
                "POST", f"{self._data}/sobjects/Contact", "contacts.create", json=body
            )
            contact_id = str(answer["id"])
        except PermanentCrmError as exc:
            contact_id = self._duplicate_of(exc)
        with self._reading("contacts.create"):
            return contact_from_json({**body, "Id": contact_id}, self.config)

    async def update_contact(self, contact_id: str, patch: ContactPatch) -> None:
        if not patch.fields:
            return
        with self._reading("contacts.update"):
            body = fields_json(patch.fields)
        path = f"{self._data}/sobjects/Contact/{contact_id}"
        await self._send("PATCH", path, "contacts.update", json=body)

    def _duplicate_of(self, exc: PermanentCrmError) -> str:
        """The contact a unique Telegram id already belongs to, else the error again."""
        found = _DUPLICATE.search(exc.message) if "DUPLICATE_VALUE" in exc.message else None
        if found is None or found.group(1) != self.config.contact_fields.telegram_id:
            raise exc
        return found.group(2)

    # ---- deals ----------------------------------------------------------------------

    async def list_deals(self, contact: Contact, known: Sequence[Deal] = ()) -> list[Deal]:
        with self._reading("deals.list"):
            soql = deals_soql(contact.id, self.config)
        rows = await self._query(soql, "deals.list")
        with self._reading("deals.list"):
            found = [deal_from_json(row, self.config) for row in rows]
        ids = {deal.id for deal in found}
        # A known deal the query leaves out is closed: keep it, the flow decides.
        return [*found, *(deal for deal in known if deal.id not in ids)]

    async def get_deal(self, deal_id: str) -> Deal | None:
        if not is_record_id(deal_id):
            return None  # no record has such an id
        with self._reading("deals.get"):
            soql = deal_soql(deal_id, self.config)
        rows = await self._query(soql, "deals.get")
        with self._reading("deals.get"):
            return deal_from_json(rows[0], self.config) if rows else None  # none: deleted

    async def create_deal(self, contact: Contact, new: NewDeal) -> Deal:
        with self._reading("deals.create"):
            body = deal_create_json(new, self._today())
            steps = create_deal_steps(contact.id, body)
        created = await self._composite(steps, "deals.create")
        return self._new_deal(created, body, new, contact.id)

    async def create_contact_and_deal(
        self, contact: NewContact, deal: NewDeal
    ) -> tuple[Contact, Deal]:
        with self._reading("contacts.create"):
            contact_body = contact_create_json(contact)
            if deal.company_id:
                contact_body["AccountId"] = deal.company_id  # the contact joins the company
            deal_body = deal_create_json(deal, self._today())
            steps = create_contact_and_deal_steps(contact_body, deal_body)
        try:
            created = await self._composite(steps, "contacts.create")
        except PermanentCrmError as exc:
            # All or none: nothing was created. A Telegram id the lookup could not see
            # belongs to a contact already; the deal goes to that one.
            existing = Contact(id=self._duplicate_of(exc))
            return existing, await self.create_deal(existing, deal)
        with self._reading("contacts.create"):
            made = contact_from_json({**contact_body, "Id": created["contact"]["id"]}, self.config)
        return made, self._new_deal(created, deal_body, deal, made.id)

    def _new_deal(
        self, created: Mapping[str, JSON], body: Mapping[str, JSON], new: NewDeal, contact_id: str
    ) -> Deal:
        with self._reading("deals.create"):
            record = {
                **body,
                "Id": created["deal"]["id"],
                "RecordTypeId": new.pipeline_id,
                "OpportunityContactRoles": {"records": [{"ContactId": contact_id}]},
            }
            deal = deal_from_json(record, self.config)
        return replace(deal, updated_at=int(self._clock()))

    async def update_deal(self, deal_id: str, updates: Sequence[FieldUpdate]) -> None:
        if not updates:
            return
        with self._reading("deals.update"):
            body = fields_json(updates)
        await self._send(
            "PATCH", f"{self._data}/sobjects/Opportunity/{deal_id}", "deals.update", json=body
        )

    async def change_deal(self, deal_id: str, change: DealChange) -> None:
        with self._reading("deals.change"):
            body = deal_change_json(change)
            path = f"{self._data}/sobjects/Opportunity/{checked_id(deal_id)}"
        if body:
            await self._send("PATCH", path, "deals.change", json=body)

    # ---- orders: companies and items ------------------------------------------------

    async def find_company(self, company: Company, confirm: ConfirmCompany) -> CompanyRecord | None:
        with self._reading("companies.search"):
            soql = company_soql(company, self.config)
        if soql is None:
            return None
        rows = await self._query(soql, "companies.search")
        with self._reading("companies.search"):
            hits = [company_from_json(row, self.config) for row in rows]  # oldest first
        for key in ("inn", "name"):
            found = next((hit for hit in hits if confirm(hit, key)), None)
            if found is not None:
                return found
        return None

    async def create_company(self, company: Company) -> CompanyRecord:
        with self._reading("companies.create"):
            body = company_create_json(company, self.config)
        answer = await self._send(
            "POST", f"{self._data}/sobjects/Account", "companies.create", json=body
        )
        with self._reading("companies.create"):
            return company_from_json({**body, "Id": answer["id"]}, self.config)

    async def link_contact_to_company(self, contact_id: str, company_id: str) -> None:
        """`Contact.AccountId`: a contact's one account (a second PATCH sets it again)."""
        with self._reading("contacts.link"):
            path = f"{self._data}/sobjects/Contact/{checked_id(contact_id)}"
            body = {"AccountId": checked_id(company_id)}
        await self._send("PATCH", path, "contacts.link", json=body)

    async def set_deal_items(self, deal_id: str, items: Sequence[OrderItem], currency: str) -> None:
        """Replace the opportunity's products with `items` (two requests; one when it
        already holds exactly these). A product code the price book lacks is refused
        before anything changes: the operator adds the product and retries."""
        pricebook = self.config.order_catalog_id
        if not pricebook:
            return  # no price book: Salesforce keeps no products on the deal
        with self._reading("deals.items"):
            body = items_read_json(
                self.version, deal_id, pricebook, [item.product_id for item in items]
            )
        answer = await self._send(
            "POST",
            f"{self._data}/composite",
            "deals.items",
            json=body,
            idempotent=True,  # queries only: retried quickly like a GET
        )
        with self._reading("deals.items"):
            current = line_items_from_json(composite_results(self.name, answer))
        if current is None:
            raise PermanentCrmError(self.name, f"deals.items: no opportunity {deal_id}")
        missing = missing_products(items, current.entries)
        if missing:
            raise PermanentCrmError(
                self.name,
                f"deals.items: price book {pricebook} has no active entry for product"
                f" code {', '.join(missing)}: add the products to it, then retry",
            )
        wanted = wanted_lines(items, current.entries)
        if same_lines(current, wanted):
            return  # already these: a retry after a lost answer changes nothing
        with self._reading("deals.items"):
            body = items_write_json(self.version, deal_id, pricebook, current, wanted)
        answer = await self._send("POST", f"{self._data}/composite", "deals.items", json=body)
        with self._reading("deals.items"):
            refused = collection_errors(self.name, composite_results(self.name, answer))
        if refused is not None:
            raise refused

    # ---- notes ----------------------------------------------------------------------

    async def deal_notes(self, deal_id: str) -> list[str]:
        with self._reading("notes.read"):
            soql = notes_soql(deal_id)
        rows = await self._query(soql, "notes.read")
        with self._reading("notes.read"):
            return [note_text(row) for row in rows]

    async def add_note(self, deal_id: str, text: str) -> None:
        with self._reading("notes.create"):
            body = note_create_json(deal_id, text)
        await self._send("POST", f"{self._data}/sobjects/Note", "notes.create", json=body)

    # ---- schema, credentials, lifecycle ---------------------------------------------

    async def schema(self) -> CrmSchema:
        described = await self._send(
            "GET", f"{self._data}/sobjects/Opportunity/describe", "schema.describe"
        )
        with self._reading("schema.describe"):
            infos = record_types(described)
        pipelines = []
        for info in infos:
            path = stage_values_path(self.version, str(info["recordTypeId"]))
            values = await self._send("GET", path, "schema.stages")
            with self._reading("schema.stages"):
                pipelines.append(pipeline_from_json(info, values))
        contact = await self._send(
            "GET", f"{self._data}/sobjects/Contact/describe", "schema.describe"
        )
        with self._reading("schema.describe"):
            if not pipelines:
                pipelines.append(master_pipeline(described))
            fields: list[CustomField] = [
                *custom_fields(described, "leads"),
                *custom_fields(contact, "contacts"),
            ]
        if self.config.takes_orders:  # Account's fields (the INN) only where orders go
            account = await self._send(
                "GET", f"{self._data}/sobjects/Account/describe", "schema.describe"
            )
            with self._reading("schema.describe"):
                fields += custom_fields(account, "companies")
        return CrmSchema(pipelines=tuple(pipelines), fields=tuple(fields))

    # ---- plumbing -------------------------------------------------------------------

    def _today(self) -> date:
        """A new opportunity's CloseDate (required): the day it is created, in UTC."""
        return datetime.fromtimestamp(self._clock(), UTC).date()

    async def _composite(self, steps: Sequence[SubRequest], operation: str) -> dict[str, JSON]:
        with self._reading(operation):
            body = composite_json(self.version, steps)
        answer = await self._send("POST", f"{self._data}/composite", operation, json=body)
        with self._reading(operation):
            return composite_results(self.name, answer)  # a refused step raises its error

    async def _query(self, soql: str, operation: str) -> list[Mapping[str, JSON]]:
        answer = await self._send("GET", f"{self._data}/query", operation, params={"q": soql})
        with self._reading(operation):
            rows, following = query_rows(answer)
        if following:
            rows += await self._more(following, operation)
        return rows

    async def _more(self, following: str, operation: str) -> list[Mapping[str, JSON]]:
        rows: list[Mapping[str, JSON]] = []
        next_url: str | None = following
        for _ in range(MAX_PAGES):
            if next_url is None:
                break
            answer = await self._send("GET", next_url, operation)
            with self._reading(operation):
                more, next_url = query_rows(answer)
            rows.extend(more)
        return rows

    async def _send(self, method: str, path: str, operation: str, **kwargs: Any) -> Any:
        """One request, held back while the org's daily allocation is near its end; a
        refusal because it is spent (403 REQUEST_LIMIT_EXCEEDED) waits like a 429."""
        self.usage.require()
        try:
            return await self.connection.send(method, path, operation, **kwargs)
        except PermanentCrmError as exc:
            if " HTTP 403" in exc.message and "REQUEST_LIMIT_EXCEEDED" in exc.message:
                raise RateLimited(self.name, exc.message, self.usage.recheck_seconds) from exc
            raise


# ---- the builder --------------------------------------------------------------------


def _options(name: str, config: CrmConfig) -> dict[str, Any]:
    """`[crm.NAME.options]`, validated (ConfigError names the key)."""
    options = config.options
    where = f"crm.{name}.options"
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise ConfigError(f"{where}: not known to Salesforce: {', '.join(sorted(unknown))}")
    flow = options.get("flow", "jwt_bearer")
    if flow not in ("jwt_bearer", "client_credentials"):
        raise ConfigError(f'{where}.flow = {flow!r}: "jwt_bearer" or "client_credentials"')
    version = str(options.get("api_version", DEFAULT_API_VERSION)).removeprefix("v")
    if not re.fullmatch(r"\d{2,3}\.0", version):
        raise ConfigError(f"{where}.api_version = {version!r}: a REST API version like 68.0")
    login_url = str(options.get("login_url", "https://login.salesforce.com"))
    if not re.match(r"https?://[^/]+/?$", login_url):
        raise ConfigError(
            f"{where}.login_url = {login_url!r}: a URL like https://login.salesforce.com"
        )
    numbers = {}
    for key, default, low, high in (
        ("api_stop_percent", DEFAULT_STOP_PERCENT, 1.0, 100.0),
        ("session_timeout_seconds", DEFAULT_SESSION_TIMEOUT, 60.0, 86400.0),
    ):
        value = options.get(key, default)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not low <= value <= high
        ):
            raise ConfigError(f"{where}.{key} = {value!r}: a number from {low:g} to {high:g}")
        numbers[key] = float(value)
    return {
        "flow": flow,
        "version": version,
        "login_url": login_url,
        "username": str(options.get("username", "")),
        **numbers,
    }


def build_salesforce(wiring: Wiring) -> Salesforce:
    """The adapter on its connection: sessions minted (auth = "minted"), the daily API
    allocation read from every answer."""
    name, config = wiring.name, wiring.config
    opts = _options(name, config)
    if config.auth != "minted":
        raise ConfigError(
            f'crm.{name}.auth = "{config.auth}": Salesforce sessions are minted,'
            ' use auth = "minted" (options.flow says how)'
        )
    secrets = wiring.secrets("PRIVATE_KEY_FILE")
    usage = ApiUsage(name, opts["api_stop_percent"], clock=wiring.clock)

    def sessions(connection: Connection) -> SessionSource:
        minter = SessionMinter(
            name,
            connection.http,
            opts["flow"],
            login_url=opts["login_url"],
            username=opts["username"],
            secrets=secrets,
            clock=wiring.clock,
        )
        return SessionSource(
            name,
            minter.mint,
            minter.missing,
            session_timeout=opts["session_timeout_seconds"],
            clock=wiring.clock,
        )

    connection = Connection(
        wiring,
        secrets,
        OAUTH,
        event_hooks=usage_hooks(usage),
        empty_answer={},  # a PATCH answers 204
        minted=sessions,
    )
    connection.extra_health = lambda: {
        "api_version": opts["version"],
        "flow": opts["flow"],
        **usage.details(),
    }
    return Salesforce(connection, usage, opts["version"], opts["flow"])
