"""Bitrix24 (cloud REST: inbound webhook or OAuth 2.0) as a `CrmAdapter`.

Shapes are `bitrix24_json`, method and batch calls `bitrix24_calls`, the transport and
token auth `bitrix24_rest`, one customer's contact search `bitrix24_search`, the batch
forms across customers (`batch_forms`) `bitrix24_batch`; here: the adapter, the readers
of answers both paths share, its token server and `build_bitrix24`.
Reads are GET (retried after a 5xx or a timeout), writes POST; a `batch` of up to 50
methods is one request for the leaky bucket. Requests per method:

    find_contact    GET batch {tg: crm.contact.list by the Telegram user field,
                      tg_deals: crm.item.list of $result[tg][0][ID],
                      commN: crm.duplicate.findbycomm per phone / e-mail}
                    + GET batch {contacts: crm.contact.list @ID, deals_ID: crm.item.list}
                      only when no Telegram hit is confirmed and findbycomm found ids
    create_contact / create_deal       POST crm.contact.add / crm.deal.add
    create_contact_and_deal            POST batch, halt {contact: crm.contact.add,
                                         deal: crm.deal.add, CONTACT_IDS $result[contact]}
    update_contact / update_deal       POST crm.contact.update / crm.deal.update (none
                                         when nothing to set)
    list_deals      none right after find_contact read them, else GET crm.item.list
                      (deals by contactIds: every deal the contact is bound to)
    get_deal        GET batch {deal: crm.deal.get, contacts: crm.deal.contact.items.get}
    deal_notes / add_note              GET crm.timeline.comment.list / POST …comment.add
    schema          GET batch {crm.category.list, crm.deal.fields, crm.contact.fields}
                    + GET batch {crm.status.list per pipeline}
Batch forms (`batch_forms`, up to min(batch_size, 50) customers; each item's commands as
the per-call method's, in POST batches of up to 50 commands, see `bitrix24_batch`):
    get_deals       batch {crm.deal.get, crm.deal.contact.items.get per deal}
    update_deals / add_notes / create_deals
                    batch, halt=0 {crm.deal.update / crm.timeline.comment.add /
                      crm.deal.add per item}: a refused command fails its item only
    create_contacts_and_deals          batch, halt {crm.contact.add, crm.deal.add
                      $result[…contact] per item}; the items after a refused one resent
    find_contacts   batch of every customer's find_contact lookups, then a batch of the
                      candidates of those whose Telegram hit was not confirmed
    list_deals      batch {crm.item.list per contact whose deals were not prefetched},
                      then one of the next pages of the contacts with more
Orders (`OrderAdapter`):
    find_company    GET batch {inn: crm.requisite.list by RQ_INN (companies),
                      name: crm.company.list by %TITLE of the name's longest word}
    create_company  POST batch, halt {company: crm.company.add, requisite:
                      crm.requisite.add RQ_INN of $result[company]} (crm.company.add alone
                      without an INN)
    link_contact_to_company            POST crm.contact.company.add (an existing
                                         binding answers false and stays one)
    change_deal     POST crm.item.update (categoryId + stageId, opportunity, fields:
                      crm.deal.update cannot change the pipeline)
    set_deal_items  POST crm.deal.productrows.set (replaces every row)
A deal (and a contact created with it) is bound to its company in the same call:
COMPANY_ID in crm.deal.add, COMPANY_IDS in crm.contact.add.

`find_contact` reads the found contact's open deals in its own batch, and `list_deals`
hands them over when asked within PREFETCH_TTL for that same `Contact`: one request
less per returning customer. The chained `$result[tg][0][ID]` counts only when that
first Telegram hit is the contact chosen; on a Telegram miss it resolves to an empty
array, and `open_deals_params` makes that filter match nothing rather than everything.

Options (`[crm.NAME.options]`, see `BitrixOptions`): `burst`, `currency_id`,
`oauth_server`, `requisite_preset_id`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import httpx

from bridge.crm import bitrix24_json as bx
from bridge.crm.base import (
    CompanyKey,
    Confirm,
    ConfirmCompany,
    CrmSchema,
    CustomField,
)
from bridge.crm.bitrix24_batch import batch_forms
from bridge.crm.bitrix24_calls import JSON, MAX_PAGES, BatchAnswer, BitrixCalls, Commands
from bridge.crm.bitrix24_json import BitrixOptions
from bridge.crm.bitrix24_rest import (
    WEBHOOK_BASE,
    BitrixTokenAuth,
    BitrixTransport,
    WebhookAuth,
    webhook_problem,
)
from bridge.crm.bitrix24_search import ContactSearch
from bridge.crm.connection import Connection, OAuthEndpoint, Wiring
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

PREFETCH_TTL = 10.0  # seconds a prefetched deal list may be handed to list_deals


@dataclass(frozen=True)
class _Prefetch:
    at: float
    deal_ids: tuple[str, ...]
    deals: tuple[Deal, ...]


class Bitrix24:
    """One Bitrix24 portal. Build it with `build_bitrix24`; it owns one HTTP client."""

    keeps_items = True  # a deal's product rows

    def __init__(self, connection: Connection, options: BitrixOptions) -> None:
        self.name = connection.name
        self.config = connection.config
        self.connection = connection
        self.options = options
        self._calls = BitrixCalls(connection)
        self._clock = connection.clock
        self._prefetch: dict[str, _Prefetch] = {}
        self.batch_forms = batch_forms(self, self._calls)

    # ---- contacts -------------------------------------------------------------------

    async def find_contact(self, keys: Sequence[LookupKey], confirm: Confirm) -> Contact | None:
        self.forget_stale_prefetches()
        search = ContactSearch(keys, confirm, self.config)
        if not search.lookup:
            return None
        first = await self._calls.batch(search.lookup, "contacts.find")
        candidates = self.read_lookup(search, first)
        if not candidates:
            return self.settle(search, first)
        second = await self._calls.batch(candidates, "contacts.get")
        self.read_candidates(search, second)
        return self.settle(search, second)

    async def create_contact(self, new: NewContact) -> Contact:
        with self._calls.reading("contacts.create"):
            fields = bx.contact_fields(new)
        body = bx.add_params(fields)
        created, _ = await self._calls.call("crm.contact.add", "contacts.create", body, write=True)
        with self._calls.reading("contacts.create"):
            return bx.contact_from_record({**fields, "ID": int(created)}, self.config)

    async def update_contact(self, contact_id: str, patch: ContactPatch) -> None:
        if not patch.fields:
            return
        with self._calls.reading("contacts.update"):
            body = {"id": int(contact_id), "fields": bx.field_values(patch.fields)}
        await self._calls.call(
            "crm.contact.update", "contacts.update", {**body, "params": bx.QUIET}, write=True
        )

    # ---- deals ----------------------------------------------------------------------

    async def list_deals(self, contact: Contact, known: Sequence[Deal] = ()) -> list[Deal]:
        deals = self.prefetched(contact)
        self.drop_prefetch(contact.id)
        if deals is None:
            deals = []
            start: int | None = 0
            for _ in range(MAX_PAGES):
                if start is None:
                    break
                params = self._open_deals(contact.id, start)
                result, following = await self._calls.call("crm.item.list", "deals.list", params)
                page, start = self.deals_page(result, following, start)
                deals += page
        return self.with_known(deals, known)

    async def get_deal(self, deal_id: str) -> Deal | None:
        if not deal_id.isdigit():
            return None
        answer = await self._calls.batch(bx.deal_get_commands(deal_id), "deals.get")
        return self.deal_in(answer)

    async def create_deal(self, contact: Contact, new: NewDeal) -> Deal:
        with self._calls.reading("deals.create"):
            fields = bx.deal_fields(new, contact.id, self.options.currency_id)
        body = bx.add_params(fields)
        created, _ = await self._calls.call("crm.deal.add", "deals.create", body, write=True)
        with self._calls.reading("deals.create"):
            return self.sent_deal(fields, created, contact.id)

    async def create_contact_and_deal(
        self, contact: NewContact, deal: NewDeal
    ) -> tuple[Contact, Deal]:
        with self._calls.reading("contacts.deals.create"):
            sent = bx.contact_and_deal_commands(contact, deal, self.options.currency_id)
        # halt: a deal must never be created when its contact was not.
        answer = await self._calls.batch(sent[2], "contacts.deals.create", write=True)
        self._calls.raise_for(answer, list(sent[2]), "contacts.deals.create")
        return self.created_pair(sent, answer)

    async def update_deal(self, deal_id: str, updates: Sequence[FieldUpdate]) -> None:
        if not updates:
            return
        with self._calls.reading("deals.update"):
            body = bx.deal_update_params(deal_id, updates)
        await self._calls.call("crm.deal.update", "deals.update", body, write=True)

    # ---- orders ---------------------------------------------------------------------

    async def find_company(self, company: Company, confirm: ConfirmCompany) -> CompanyRecord | None:
        commands: dict[str, tuple[str, Mapping[str, JSON]]] = {}
        if company.inn:
            commands["inn"] = ("crm.requisite.list", bx.requisites_by_inn(company.inn))
        word = bx.name_search_word(company.name)
        if word:
            commands["name"] = ("crm.company.list", bx.companies_by_name(word))
        if not commands:
            return None
        answer = await self._calls.batch(commands, "companies.find")
        self._calls.raise_for(answer, list(commands), "companies.find")
        with self._calls.reading("companies.find"):
            by_inn, by_name = bx.companies_from(
                answer.results.get("inn"), answer.results.get("name")
            )
        searches: tuple[tuple[CompanyKey, list[CompanyRecord]], ...] = (
            ("inn", by_inn),
            ("name", by_name),
        )
        for key, hits in searches:
            confirmed = [hit for hit in hits if confirm(hit, key)]
            if confirmed:
                return min(confirmed, key=lambda hit: int(hit.id))
        return None

    async def create_company(self, company: Company) -> CompanyRecord:
        with self._calls.reading("companies.create"):
            fields = bx.company_fields(company)
        if not company.inn:
            created, _ = await self._calls.call(
                "crm.company.add",
                "companies.create",
                {"fields": fields, "params": bx.QUIET},
                write=True,
            )
            return CompanyRecord(id=str(int(created)), name=company.name)
        with self._calls.reading("companies.create"):
            requisite = bx.requisite_fields(
                company, "$result[company]", self.options.requisite_preset_id
            )
        commands: Commands = {
            "company": ("crm.company.add", {"fields": fields, "params": bx.QUIET}),
            "requisite": ("crm.requisite.add", {"fields": requisite}),
        }
        # halt: no requisite without its company.
        answer = await self._calls.batch(commands, "companies.create", write=True)
        self._calls.raise_for(answer, ["company", "requisite"], "companies.create")
        with self._calls.reading("companies.create"):
            company_id = str(int(answer.results["company"]))
        return CompanyRecord(id=company_id, name=company.name, inn=company.inn)

    async def link_contact_to_company(self, contact_id: str, company_id: str) -> None:
        with self._calls.reading("contacts.link"):
            body = {"id": int(contact_id), "fields": {"COMPANY_ID": int(company_id)}}
        await self._calls.call("crm.contact.company.add", "contacts.link", body, write=True)

    async def change_deal(self, deal_id: str, change: DealChange) -> None:
        with self._calls.reading("deals.change"):
            params = bx.change_params(deal_id, change)
        if params:
            await self._calls.call("crm.item.update", "deals.change", params, write=True)

    async def set_deal_items(self, deal_id: str, items: Sequence[OrderItem], currency: str) -> None:
        # `currency` is the deal's own (CURRENCY_ID); rows have none.
        with self._calls.reading("deals.items"):
            body = {"id": int(deal_id), "rows": bx.product_rows(items)}
        await self._calls.call("crm.deal.productrows.set", "deals.items", body, write=True)

    # ---- notes ----------------------------------------------------------------------

    async def deal_notes(self, deal_id: str) -> list[str]:
        def page(start: int) -> dict[str, JSON]:
            return {
                "filter": {"ENTITY_ID": deal_id, "ENTITY_TYPE": "deal"},
                "select": ["ID", "COMMENT"],
                "start": start,
            }

        records = await self._calls.pages("crm.timeline.comment.list", "notes.list", page)
        return [bx.text(record.get("COMMENT")) for record in records]

    async def add_note(self, deal_id: str, text: str) -> None:
        with self._calls.reading("notes.add"):
            body = bx.note_params(deal_id, text)
        await self._calls.call("crm.timeline.comment.add", "notes.add", body, write=True)

    # ---- schema -----------------------------------------------------------

    async def schema(self) -> CrmSchema:
        commands: Commands = {
            "categories": ("crm.category.list", {"entityTypeId": 2}),
            "deal_fields": ("crm.deal.fields", {}),
            "contact_fields": ("crm.contact.fields", {}),
        }
        first = await self._calls.batch(commands, "schema")
        self._calls.raise_for(first, list(commands), "schema")
        with self._calls.reading("schema"):
            categories = bx.categories_from(first.results["categories"])
            fields: list[CustomField] = bx.custom_fields_from(first.results["deal_fields"], "leads")
            fields += bx.custom_fields_from(first.results["contact_fields"], "contacts")
        stages: dict[str, JSON] = {}
        for chunk in range(0, len(categories), 50):
            stage_commands = {
                bx.stages_key(c): bx.stages_command(c) for c in categories[chunk : chunk + 50]
            }
            answer = await self._calls.batch(stage_commands, "schema")
            self._calls.raise_for(answer, list(stage_commands), "schema")
            stages.update(answer.results)
        with self._calls.reading("schema"):
            pipelines = tuple(bx.pipeline_from(c, stages.get(bx.stages_key(c))) for c in categories)
        return CrmSchema(pipelines=pipelines, fields=tuple(fields))

    # ---- helpers ------------------------------------------------------------------

    def _open_deals(self, contact_id: str, start: int = 0) -> dict[str, JSON]:
        return bx.open_deals_params(contact_id, self.config, start)

    # ---- reading answers (the per-call methods' and the batch forms') ------------------

    def read_lookup(self, search: ContactSearch, answer: BatchAnswer) -> Commands:
        """The search's lookup answer read: the candidates' commands, when needed."""
        self._calls.raise_for(answer, search.lookup_keys, "contacts.find")
        with self._calls.reading("contacts.find"):
            return search.read_lookup(answer)

    def read_candidates(self, search: ContactSearch, answer: BatchAnswer) -> None:
        self._calls.raise_for(answer, [search.key("contacts")], "contacts.get")
        with self._calls.reading("contacts.get"):
            search.read_candidates(answer)

    def settle(self, search: ContactSearch, answer: BatchAnswer) -> Contact | None:
        """The search's pick, with its open deals kept for `list_deals` when read."""
        found = search.found
        if found is None:
            return None
        if search.deals_key is None:
            self._prefetch.pop(found.id, None)
            return found
        return self._with_prefetch(found, answer, search.deals_key)

    def deal_in(self, answer: BatchAnswer, prefix: str = "") -> Deal | None:
        """`deal_get_commands`' answer: the deal, None when it does not exist."""
        error = answer.errors.get(f"{prefix}deal")
        if error is not None and "not found" in bx.text(error.get("error_description")).lower():
            return None
        self._calls.raise_for(answer, [f"{prefix}deal", f"{prefix}contacts"], "deals.get")
        with self._calls.reading("deals.get"):
            contact_ids = bx.linked_contact_ids(answer.results.get(f"{prefix}contacts"))
            return bx.deal_from_record(answer.results[f"{prefix}deal"], self.config, contact_ids)

    def prefetched(self, contact: Contact) -> list[Deal] | None:
        """The deals `find_contact` read for this same `Contact` within PREFETCH_TTL, if
        any (kept: `list_deals` drops them once it has its answer)."""
        prefetched = self._prefetch.get(contact.id)
        if (
            prefetched is None
            or contact.deal_ids != prefetched.deal_ids
            or self._clock() - prefetched.at > PREFETCH_TTL
        ):
            return None
        return list(prefetched.deals)

    @staticmethod
    def with_known(deals: Sequence[Deal], known: Sequence[Deal]) -> list[Deal]:
        """`list_deals`' answer: the deals read, then those of `known` not among them."""
        seen = {deal.id for deal in deals}
        return [*deals, *(deal for deal in known if deal.id not in seen)]

    def drop_prefetch(self, contact_id: str) -> None:
        self._prefetch.pop(contact_id, None)

    def deals_page(
        self, result: JSON, following: JSON, start: int
    ) -> tuple[list[Deal], int | None]:
        """One page of `open_deals_params`' list: its deals, and the next page's start (None:
        the last page; a `next` that does not move on ends the list too)."""
        with self._calls.reading("deals.list"):
            records = bx.deal_records(result, self.config)
            deals = [bx.deal_from_record(record, self.config) for record in records]
        if not isinstance(following, int) or following <= start:
            return deals, None
        return deals, following

    def created_pair(self, sent: bx.ContactAndDeal, answer: BatchAnswer) -> tuple[Contact, Deal]:
        """`contact_and_deal_commands`' answer, both commands run: what was sent, stored."""
        contact_fields, deal_fields, commands = sent
        contact_key, deal_key = commands
        with self._calls.reading("contacts.deals.create"):
            contact_id = int(answer.results[contact_key])
            new = bx.contact_from_record({**contact_fields, "ID": contact_id}, self.config)
            return new, self.sent_deal(deal_fields, answer.results[deal_key], new.id)

    def sent_deal(self, fields: Mapping[str, JSON], deal_id: JSON, contact_id: str) -> Deal:
        # What was sent is what Bitrix stored: no read-back.
        modified = datetime.fromtimestamp(self._clock(), UTC).isoformat()
        record = {**fields, "ID": int(deal_id), "DATE_MODIFY": modified}
        record.update(CONTACT_ID=contact_id, CONTACT_IDS=[contact_id])
        return bx.deal_from_record(record, self.config)

    def _with_prefetch(self, contact: Contact, answer: BatchAnswer, key: str) -> Contact:
        self._prefetch.pop(contact.id, None)
        if key in answer.errors or key in answer.more or key not in answer.results:
            return contact
        with self._calls.reading("contacts.find"):
            records = bx.deal_records(answer.results[key], self.config)
            deals = tuple(bx.deal_from_record(r, self.config) for r in records)
        if any(contact.id not in deal.contact_ids for deal in deals):
            return contact  # not the read asked for: list_deals reads again
        ids = tuple(deal.id for deal in deals)
        self._prefetch[contact.id] = _Prefetch(self._clock(), ids, deals)
        return replace(contact, deal_ids=ids)

    def forget_stale_prefetches(self) -> None:
        now = self._clock()
        for contact_id, entry in list(self._prefetch.items()):
            if now - entry.at > PREFETCH_TTL:
                del self._prefetch[contact_id]


# ---- the builder --------------------------------------------------------------------


def build_bitrix24(wiring: Wiring) -> Bitrix24:
    """The adapter with its one HTTP client, rate limiter and credentials.

    `auth = "long_lived_token"`: the inbound webhook URL (BITRIX24_WEBHOOK_URL), which
    holds its secret in its path; `auth = "oauth"`: tokens from `crm-bridge auth`, calls to
    `base_url` (the portal) with the `auth` parameter.
    """
    config, clock = wiring.config, wiring.clock
    options = BitrixOptions.from_config(wiring.name, config.options)
    secrets = wiring.secrets("WEBHOOK_URL")
    inner = wiring.transport or httpx.AsyncHTTPTransport()
    webhook = secrets.token
    problem = webhook_problem(webhook, secrets.var("WEBHOOK_URL"))
    if config.auth == "oauth":
        base, wire = config.base_url.rstrip("/") + "/rest/", BitrixTransport(inner, clock=clock)
    else:
        base = WEBHOOK_BASE
        wire = BitrixTransport(inner, webhook if problem is None else None, clock)
    connection = Connection(
        wiring,
        secrets,
        oauth_endpoint(options.oauth_server),
        transport=wire,
        base_url=base,
        burst=options.burst,
        oauth_auth=BitrixTokenAuth,
        static_auth=WebhookAuth,
        static_token=(webhook if problem is None else None, problem or ""),
    )
    return Bitrix24(connection, options)


def oauth_endpoint(server: str) -> OAuthEndpoint:
    """GET {server}/oauth/token/ with everything in the query (never echoed: it holds the
    client secret). Each refresh answers a new refresh token, the old one is spent; Bitrix
    asks apps to refresh on `expired_token`, not ahead of time [b24-rest-docs
    settings/oauth/index.md]."""
    return OAuthEndpoint(
        server.rstrip("/") + "/oauth/token/",
        style="query",
        error_fields=("error",),
        rotates=True,
        refused=frozenset({400, 401, 403, 404}),
        refresh_margin=0.0,
    )
