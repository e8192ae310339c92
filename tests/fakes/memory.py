"""An in-memory `CrmAdapter`: the flow's policy tested once, at unit speed.

It keeps contacts, deals and notes the way the real adapters present them (custom
fields as text by field id, a contact's deals listed with it) and records every call.
`fail_at(n)` makes the n-th call fail before it does anything; `fail_at(n, after=True)`
lets it take effect and then loses the answer, the crash window between a CRM write
and its journal write. `kill_at(n, after=...)` does the same with `Killed`, which no
`except Exception` stops: the delivery ends there, nothing after it is written (what a
SIGKILL of the bridge leaves), and the CRM keeps what it applied.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from decimal import Decimal
from typing import Any, TypeVar

import httpx

from bridge.crm.base import (
    BatchForms,
    Confirm,
    ConfirmCompany,
    CrmSchema,
    RateLimiter,
    first_confirmed,
)
from bridge.crm.connection import Connection, Wiring
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
)
from bridge.errors import CrmError, PermanentCrmError, TransientCrmError
from bridge.settings import CrmConfig, FileConfig, Settings
from bridge.tokens import TokenPair

T = TypeVar("T")
A = TypeVar("A")


def field_text(update: FieldUpdate) -> str:
    """A written value as a CRM reads it back: the text the flow compares and adds to."""
    value = update.value
    if isinstance(value, tuple):
        return ",".join(str(item) for item in value)
    if isinstance(value, date | datetime):  # a DATE reads back as YYYY-MM-DD
        return value.isoformat()
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    return str(value)


@dataclass
class StoredContact:
    id: str
    name: str
    phones: tuple[str, ...]
    emails: tuple[str, ...]
    fields: dict[str, str] = field(default_factory=dict)


class Killed(BaseException):
    """The bridge process died at this CRM call (see `MemoryCrm.kill_at`)."""


class MemoryConnection:
    """What the app and worker ask of an adapter's connection: always authorised."""

    async def credentials_problem(self) -> str | None:
        return None

    def token_expires_at(self) -> float | None:
        return None

    def health_details(self) -> Mapping[str, object]:
        return {}

    async def aclose(self) -> None:
        return None


@dataclass
class StoredCompany:
    id: str
    name: str
    inn: str
    phone: str | None = None
    email: str | None = None


Item = tuple[str, Decimal, Decimal]  # name, quantity, unit price


class MemoryCrm:
    """One CRM in a dict. Ids are sequential numbers; `tick` orders deal updates.

    It also takes orders (`OrderAdapter`): companies searched loosely (INN and name
    substrings, so the flow must confirm), contacts and deals linked to companies, stage
    moves, and deal items replaced as a whole; `keeps_items=False` plays a CRM whose deals
    hold no items (no call is made)."""

    def __init__(
        self, config: CrmConfig, name: str = "memory", *, keeps_items: bool = True
    ) -> None:
        self.name = name
        self.config = config
        self.keeps_items = keeps_items
        self.connection = MemoryConnection()  # no plumbing: nothing to authorise
        self.contacts: dict[str, StoredContact] = {}
        self.deals: dict[str, Deal] = {}
        self.notes: dict[str, list[str]] = {}
        self.companies: dict[str, StoredCompany] = {}
        self.contact_companies: dict[str, set[str]] = {}
        self.deal_company: dict[str, str] = {}
        self.deal_names: dict[str, str] = {}
        self.items: dict[str, list[Item]] = {}
        self.calls: list[str] = []
        self._next_id = 100
        self._failure: tuple[int, bool, CrmError] | None = None
        self._kill: tuple[int, bool] | None = None
        self.killed = False
        self.kills = 0

    # ---- set up and inspect ---------------------------------------------------------

    def fail_at(self, call: int, *, after: bool = False, error: CrmError | None = None) -> None:
        lost = TransientCrmError(self.name, "answer lost", maybe_applied=after)
        self._failure = (call, after, error or lost)

    def kill_at(self, call: int, *, after: bool = False) -> None:
        """The n-th call from now kills the delivery, before or after it takes effect."""
        self._kill = (len(self.calls) + call, after)

    def add_contact(
        self, phones: Sequence[str] = (), emails: Sequence[str] = (), **fields: str
    ) -> str:
        """A contact a manager entered; `fields` by logical name (telegram_id, ...)."""
        contact_id = self._new_id()
        ids = self.config.contact_fields.model_dump()
        values = {ids[name]: value for name, value in fields.items()}
        self.contacts[contact_id] = StoredContact(
            contact_id, "", tuple(phones), tuple(emails), values
        )
        return contact_id

    def add_deal(self, contact_id: str, status_id: str = "1", **fields: str) -> str:
        """A deal of `contact_id`; `fields` by logical name (payment_id, total_paid, ...)."""
        deal_id = self._new_id()
        ids = self.config.deal_fields.model_dump()
        values = {ids[name]: value for name, value in fields.items()}
        self.deals[deal_id] = Deal(
            deal_id,
            "1",
            status_id,
            updated_at=self._next_id,
            is_closed=status_id in self.config.closed_status_ids,
            contact_ids=(contact_id,),
            fields=values,
        )
        return deal_id

    def deal_field(self, deal_id: str, name: str) -> str | None:
        field_id = getattr(self.config.deal_fields, name)
        return self.deals[deal_id].fields.get(field_id)

    def contact_field(self, contact_id: str, name: str) -> str | None:
        field_id = getattr(self.config.contact_fields, name)
        return self.contacts[contact_id].fields.get(field_id)

    def writes(self) -> list[str]:
        return [
            call
            for call in self.calls
            if call.startswith(("create", "update", "add", "link", "change", "set"))
        ]

    def add_company(self, name: str, inn: str = "") -> str:
        """A company a manager entered."""
        company_id = self._new_id()
        self.companies[company_id] = StoredCompany(company_id, name, inn)
        return company_id

    def stage(self, deal_id: str) -> tuple[str, str]:
        deal = self.deals[deal_id]
        return deal.pipeline_id, deal.status_id

    # ---- CrmAdapter -----------------------------------------------------------------

    async def find_contact(self, keys: Sequence[LookupKey], confirm: Confirm) -> Contact | None:
        return self._call("find_contact", lambda: self._find(keys, confirm))

    async def create_contact(self, new: NewContact) -> Contact:
        return self._call("create_contact", lambda: self._create_contact(new))

    async def update_contact(self, contact_id: str, patch: ContactPatch) -> None:
        if patch.fields:
            fields = self.contacts[contact_id].fields
            self._call("update_contact", lambda: fields.update(_texts(patch.fields)))

    async def list_deals(self, contact: Contact, known: Sequence[Deal] = ()) -> list[Deal]:
        return self._call("list_deals", lambda: self._deals_of(contact.id))

    async def get_deal(self, deal_id: str) -> Deal | None:
        return self._call("get_deal", lambda: self.deals.get(deal_id))

    async def create_deal(self, contact: Contact, new: NewDeal) -> Deal:
        return self._call("create_deal", lambda: self._create_deal(contact.id, new))

    async def create_contact_and_deal(
        self, contact: NewContact, deal: NewDeal
    ) -> tuple[Contact, Deal]:
        def both() -> tuple[Contact, Deal]:
            created = self._create_contact(contact)
            if deal.company_id is not None:
                self.contact_companies.setdefault(created.id, set()).add(deal.company_id)
            return created, self._create_deal(created.id, deal)

        return self._call("create_contact_and_deal", both)

    async def update_deal(self, deal_id: str, updates: Sequence[FieldUpdate]) -> None:
        if updates:
            self._call("update_deal", lambda: self._update_fields(deal_id, updates))

    async def deal_notes(self, deal_id: str) -> list[str]:
        return self._call("deal_notes", lambda: list(self.notes.get(deal_id, [])))

    async def add_note(self, deal_id: str, text: str) -> None:
        self._call("add_note", lambda: self.notes.setdefault(deal_id, []).append(text))

    async def schema(self) -> CrmSchema:
        return CrmSchema((), ())

    # ---- OrderAdapter ---------------------------------------------------------------

    async def find_company(self, company: Company, confirm: ConfirmCompany) -> CompanyRecord | None:
        def search() -> CompanyRecord | None:
            for key, needle in (("inn", company.inn), ("name", company.name)):
                if not needle:
                    continue
                hits = [
                    CompanyRecord(c.id, c.name, c.inn)
                    for c in self.companies.values()
                    if _loose(needle) in _loose(c.inn if key == "inn" else c.name)
                ]
                confirmed = [hit for hit in hits if confirm(hit, key)]  # type: ignore[arg-type]
                if confirmed:
                    return min(confirmed, key=lambda hit: int(hit.id))
            return None

        return self._call("find_company", search)

    async def create_company(self, company: Company) -> CompanyRecord:
        def create() -> CompanyRecord:
            company_id = self._new_id()
            self.companies[company_id] = StoredCompany(
                company_id, company.name, company.inn, company.phone, company.email
            )
            return CompanyRecord(company_id, company.name, company.inn)

        return self._call("create_company", create)

    async def link_contact_to_company(self, contact_id: str, company_id: str) -> None:
        links = self.contact_companies.setdefault(contact_id, set())
        self._call("link_contact_to_company", lambda: links.add(company_id))

    async def change_deal(self, deal_id: str, change: DealChange) -> None:
        def apply() -> None:
            deal = self.deals[deal_id]
            pipeline_id, status_id = deal.pipeline_id, deal.status_id
            if change.pipeline_id is not None and change.status_id is not None:
                pipeline_id, status_id = change.pipeline_id, change.status_id
            if change.name is not None:
                self.deal_names[deal_id] = change.name
            self.deals[deal_id] = replace(
                deal,
                pipeline_id=pipeline_id,
                status_id=status_id,
                is_closed=self._closed(status_id),
                price=deal.price if change.price is None else change.price,
                fields={**deal.fields, **_texts(change.fields)},
                updated_at=self._new_tick(),
            )

        self._call("change_deal", apply)

    async def set_deal_items(self, deal_id: str, items: Sequence[OrderItem], currency: str) -> None:
        if not self.keeps_items:
            return  # like Zoho Deals or Odoo leads: the note lists the items

        def replace_items() -> None:
            self.items[deal_id] = [(item.name, item.quantity, item.price) for item in items]

        self._call("set_deal_items", replace_items)

    # ---- inside ---------------------------------------------------------------------

    def _call(self, operation: str, effect: Callable[[], T]) -> T:
        self.calls.append(operation)
        kill = self._kill
        if kill is not None and kill[0] == len(self.calls):
            self._kill, self.killed = None, True
            self.kills += 1
            if kill[1]:
                effect()
            raise Killed(operation)
        failure = self._failure
        if failure is not None and failure[0] == len(self.calls) and not failure[1]:
            self._failure = None
            raise failure[2]
        result = effect()
        if failure is not None and failure[0] == len(self.calls):
            self._failure = None
            raise failure[2]
        return result

    def _find(self, keys: Sequence[LookupKey], confirm: Confirm) -> Contact | None:
        hits = {key: [self._view(c) for c in self._loose_hits(key)] for key in keys}
        return first_confirmed(keys, hits, confirm)

    def _loose_hits(self, key: LookupKey) -> list[StoredContact]:
        # Like a CRM's full-text search: substrings match, so the flow must confirm.
        def carries(contact: StoredContact) -> bool:
            if key.kind is KeyKind.PHONE:
                digits = key.value[-10:]
                return any(digits in "".join(filter(str.isdigit, p)) for p in contact.phones)
            if key.kind is KeyKind.EMAIL:
                return any(key.value in email.lower() for email in contact.emails)
            return key.value in contact.fields.values()

        return [contact for contact in self.contacts.values() if carries(contact)]

    def _view(self, stored: StoredContact) -> Contact:
        ids = self.config.contact_fields
        return Contact(
            id=stored.id,
            name=stored.name,
            phones=stored.phones,
            emails=stored.emails,
            telegram_id=stored.fields.get(ids.telegram_id or "", ""),
            telegram_username=stored.fields.get(ids.telegram_username or "", ""),
            deal_ids=tuple(deal.id for deal in self._deals_of(stored.id)),
        )

    def _update_fields(self, deal_id: str, updates: Sequence[FieldUpdate]) -> None:
        deal = self.deals[deal_id]
        fields = {**deal.fields, **_texts(updates)}
        self.deals[deal_id] = replace(deal, fields=fields, updated_at=self._new_tick())

    def _deals_of(self, contact_id: str) -> list[Deal]:
        return [deal for deal in self.deals.values() if contact_id in deal.contact_ids]

    def _create_contact(self, new: NewContact) -> Contact:
        who = new.customer
        contact_id = self._new_id()
        stored = StoredContact(
            contact_id,
            who.full_name,
            (who.phone,) if who.phone else (),
            (who.email,) if who.email else (),
            _texts(new.fields),
        )
        self.contacts[contact_id] = stored
        return self._view(stored)

    def _create_deal(self, contact_id: str, new: NewDeal) -> Deal:
        deal = Deal(
            self._new_id(),
            new.pipeline_id,
            new.status_id,
            updated_at=self._new_tick(),
            price=new.price,
            is_closed=self._closed(new.status_id),
            contact_ids=(contact_id,),
            fields=_texts(new.fields),
        )
        self.deals[deal.id] = deal
        self.deal_names[deal.id] = new.name
        if new.company_id is not None:
            self.deal_company[deal.id] = new.company_id
        return deal

    def _closed(self, status_id: str) -> bool:
        return status_id in self.config.closed_status_ids

    def _new_id(self) -> str:
        self._next_id += 1
        return str(self._next_id)

    def _new_tick(self) -> int:
        self._next_id += 1
        return self._next_id


def _loose(text: str) -> str:
    # A CRM's search ignores case and runs of spaces and matches substrings.
    return " ".join(text.casefold().split())


def _texts(updates: Sequence[FieldUpdate]) -> dict[str, str]:
    return {update.field_id: field_text(update) for update in updates}


@dataclass
class MemoryTokens:
    """A `TokenRepository` in memory; `saved` records every pair stored, in order."""

    pair: TokenPair | None = None
    saved: list[TokenPair] = field(default_factory=list)

    async def load_tokens(self, crm: str) -> TokenPair | None:
        return self.pair

    async def save_tokens(self, crm: str, pair: TokenPair) -> None:
        self.pair = pair
        self.saved.append(pair)


async def no_wait(seconds: float) -> None:
    await asyncio.sleep(0)


def adapter_on(
    build: Callable[[Wiring], A],
    fake: Any,
    config: CrmConfig,
    *,
    static: Mapping[str, Any],
    tokens: MemoryTokens | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    on_call: Callable[[str, str, float, int], None] | None = None,
    clock: Callable[[], float] | None = None,
    limiter: RateLimiter | None = None,
    real_limiter: bool = False,
    **env: Any,
) -> A:
    """An adapter of `config.kind` on `fake`: the fake's OAuth client, `static` (the
    long-lived secret) unless the section uses OAuth, then `env`; quick retries quick and
    rate limiters out of the way (rates are tested apart) unless `real_limiter`, or
    `limiter` instead."""
    kind = config.kind
    values: dict[str, Any] = {
        # A CRM without OAuth (Odoo) has no client: its fake, none.
        f"{kind}_client_id": getattr(fake, "client_id", ""),
        f"{kind}_client_secret": getattr(fake, "client_secret", None),
        f"{kind}_redirect_uri": getattr(fake, "redirect_uri", ""),
        **(static if config.auth == "long_lived_token" else {}),
        **env,
    }
    settings = Settings(_env_file=None, file=FileConfig(crm={kind: config}), **values)
    wiring = Wiring(
        kind,
        config,
        settings,
        tokens or MemoryTokens(),
        transport=transport or fake.transport(),
        on_call=on_call,
        clock=clock or fake.clock,
    )
    adapter = build(wiring)
    connection: Connection = adapter.connection  # type: ignore[attr-defined]
    for http in () if real_limiter else (connection.http, *connection.lanes.values()):
        http.limiter = limiter or RateLimiter(1000, sleep=no_wait)
        http.backoff_initial, http.backoff_max = 0.001, 0.01
    return adapter


class BatchingMemoryCrm(MemoryCrm):
    """A `MemoryCrm` with every batch form (`BatchForms`): a form's call is one call in
    `calls` ("batch:<form>×N"), so `fail_at` / `kill_at` hit a whole batch as a CRM's
    lost answer or a SIGKILL would. `refuse(deal_id)` makes writes to that deal fail on
    their own (a per-item error), and `refuse(text)` a note holding that text;
    `refuse_whole()` refuses the next batch as a whole,
    applying nothing (as amoCRM's 400 validation-errors)."""

    def __init__(self, config: CrmConfig, name: str = "memory", *, limit: int = 50) -> None:
        super().__init__(config, name)
        self.refused: set[str] = set()
        self._whole_refusals = 0
        self.batch_forms = BatchForms(
            limit=limit,
            get_deals=self.get_deals,
            update_deals=self.update_deals,
            add_notes=self.add_notes,
            create_deals=self.create_deals,
            create_contacts_and_deals=self.create_contacts_and_deals,
            find_contacts=self.find_contacts,
        )

    def refuse(self, deal_id: str) -> None:
        self.refused.add(deal_id)

    def refuse_whole(self, times: int = 1) -> None:
        self._whole_refusals = times

    def batches(self) -> list[str]:
        return [call for call in self.calls if call.startswith("batch:")]

    async def get_deals(self, deal_ids: Sequence[str]) -> Mapping[str, Deal]:
        def read() -> dict[str, Deal]:
            return {i: self.deals[i] for i in deal_ids if i in self.deals}

        return self._batch("get_deals", len(deal_ids), read)

    async def update_deals(
        self, writes: Sequence[tuple[str, Sequence[FieldUpdate]]]
    ) -> list[CrmError | None]:
        def apply() -> list[CrmError | None]:
            answers: list[CrmError | None] = []
            for deal_id, updates in writes:
                if deal_id in self.refused:
                    answers.append(PermanentCrmError(self.name, f"deal {deal_id} refused"))
                    continue
                self._update_fields(deal_id, updates)
                answers.append(None)
            return answers

        return self._batch("update_deals", len(writes), apply)

    async def add_notes(self, notes: Sequence[tuple[str, str]]) -> list[CrmError | None]:
        def apply() -> list[CrmError | None]:
            answers: list[CrmError | None] = []
            for deal_id, text in notes:
                if deal_id in self.refused or any(word in text for word in self.refused):
                    answers.append(PermanentCrmError(self.name, f"deal {deal_id} refused"))
                else:
                    self.notes.setdefault(deal_id, []).append(text)
                    answers.append(None)
            return answers

        return self._batch("add_notes", len(notes), apply)

    async def create_deals(self, items: Sequence[tuple[Contact, NewDeal]]) -> list[Deal]:
        def apply() -> list[Deal]:
            return [self._create_deal(contact.id, new) for contact, new in items]

        return self._batch("create_deals", len(items), apply)

    async def create_contacts_and_deals(
        self, items: Sequence[tuple[NewContact, NewDeal]]
    ) -> list[tuple[Contact, Deal]]:
        def apply() -> list[tuple[Contact, Deal]]:
            made = []
            for contact, deal in items:
                created = self._create_contact(contact)
                made.append((created, self._create_deal(created.id, deal)))
            return made

        return self._batch("create_contacts_and_deals", len(items), apply)

    async def find_contacts(
        self, keys: Sequence[Sequence[LookupKey]], confirm: Confirm
    ) -> list[Contact | None]:
        def search() -> list[Contact | None]:
            return [self._find(mine, confirm) for mine in keys]

        return self._batch("find_contacts", len(keys), search)

    def _batch(self, form: str, size: int, effect: Callable[[], T]) -> T:
        if self._whole_refusals:
            self._whole_refusals -= 1
            self.calls.append(f"batch:{form}×{size}")
            raise PermanentCrmError(self.name, f"{form}: 400 validation-errors")
        return self._call(f"batch:{form}×{size}", effect)
