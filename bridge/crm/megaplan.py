"""Megaplan (API v3, cloud *.megaplan.ru and boxed) as a `CrmAdapter`.

Shapes are `megaplan_json`; here the adapter on the `Connection` every CRM shares. Calls
per operation:

    find_contact        GET  /api/v3/contractor?{"q"|"filter",…}   (per key, first hit wins)
    create_contact      POST /api/v3/contractorHuman
    update_contact      POST /api/v3/contractorHuman/{id}          (none when nothing to set)
    list_deals          GET  /api/v3/contractor/{id}/deals?{…}     (paged while hasMoreNext)
    get_deal            GET  /api/v3/deal/{id}?{"fields":…}        (404: gone)
    create_deal         POST /api/v3/deal
    create_contact_and_deal   POST /contractorHuman + POST /deal (a deal cannot create
                        its contractor inline)
    update_deal         POST /api/v3/deal/{id}                     (none when nothing to set)
    deal_notes / add_note     GET / POST /api/v3/deal/{id}/comments
    schema              GET /api/v3/program, /program/{id}/states per program,
                        /deal/extraFields, /contractorHuman/extraFields,
                        /contractorCompany/extraFields
    find_company        GET /api/v3/contractorCompany?{"filter"} by the INN field, then
                        ?{"q"} by the name when the INN found none
    create_company      POST /api/v3/contractorCompany
    link_contact_to_company   POST /api/v3/contractorHuman/{id} {"company"} (none when
                        this process linked them already)
    change_deal         a stage: GET /deal/{id} (state, possibleTransitions), then
                        POST /deal/{id} (price, fields) and POST /deal/{id}/applyTransition
                        (an update ignores `state`); no stage: the POST alone
    set_deal_items      GET /api/v3/offer?{"filter"} by article (skipped when this process
                        knows every offer), POST /api/v3/offer per new product, then one
                        POST /deal/{id} {"positions"} replacing the list

A business order's deal is the person's (its `contractor`), the person one of the
company's contact persons (`ContractorHuman.company`): `/contractor/{id}/deals` of the
person keeps finding it, and Megaplan shows the company on the person's card.

Auth: `auth = "oauth"` is Megaplan's own token endpoint, `/api/v3/auth/access_token`
(`OAUTH`): the first pair from a password grant (README), then refresh grants whose
refresh token rotates, each new pair stored before use as for amoCRM; `auth =
"long_lived_token"` is an application token (`<NAME>_ACCESS_TOKEN`) sent as the bearer.
Every update is a POST (Megaplan has no PATCH); reads are GETs and retried as such.
"""

from __future__ import annotations

from collections.abc import Sequence

from bridge.crm import megaplan_json as mj
from bridge.crm.base import CompanyKey, Confirm, ConfirmCompany, CrmSchema, first_confirmed
from bridge.crm.connection import Connection, OAuthEndpoint, Wiring
from bridge.crm.megaplan_json import JSON
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
from bridge.errors import PermanentCrmError

MAX_PAGES = 50  # a runaway `hasMoreNext` must not loop forever

# A form body, no client application (client_app=False); the refresh token rotates, and a
# refused grant explains itself OAuth2-style in error_description / error.
OAUTH = OAuthEndpoint(
    f"{mj.API}/auth/access_token",
    style="form",
    error_fields=("error_description", "error"),
    rotates=True,
    client_app=False,
)


class Megaplan:
    """One Megaplan account. Build it with `build_megaplan`."""

    # A deal's `positions` (OfferRows of catalog offers) are its items.
    keeps_items = True

    def __init__(self, connection: Connection) -> None:
        self.name = connection.name
        self.config = connection.config
        self.connection = connection
        self._reading = connection.reading
        # Savings only, both safe to lose: (person, company) pairs this process linked,
        # and the catalog's offer id per article (an offer is never re-created: a miss
        # costs one search).
        self._linked: set[tuple[str, str]] = set()
        self._offers: dict[str, str] = {}

    async def _get(self, path: str, operation: str, params: dict[str, JSON]) -> JSON:
        body = await self.connection.send("GET", mj.query_path(path, params), operation)
        with self._reading(operation):
            return mj.data(self.name, body, operation)

    async def _post(self, path: str, operation: str, payload: JSON) -> JSON:
        body = await self.connection.send("POST", path, operation, json=payload)
        with self._reading(operation):
            return mj.data(self.name, body, operation)

    # ---- contacts ---------------------------------------------------------------------

    async def find_contact(self, keys: Sequence[LookupKey], confirm: Confirm) -> Contact | None:
        # One search per key, stopping at the first confirmed hit: a returning customer
        # found by Telegram id costs one call.
        for key in keys:
            params = mj.search_params(key, self.config)
            if params is None:
                continue
            found = await self._get(f"{mj.API}/contractor", "contractor.search", params)
            with self._reading("contractor.search"):
                # People only: `/contractor` lists companies too, and a company sharing
                # the person's phone (a small firm's one number) is not the person, nor
                # a deal's client the bridge can write (`deal_json` links a person).
                hits = [
                    mj.contact_from_json(record, self.config)
                    for record in found or ()
                    if isinstance(record, dict) and record.get("contentType") == mj.HUMAN
                ]
            chosen = first_confirmed([key], {key: hits}, confirm)
            if chosen is not None:
                return chosen
        return None

    async def create_contact(self, new: NewContact, *, company_id: str | None = None) -> Contact:
        """A person; with `company_id`, one of the company's contact persons from the start."""
        with self._reading("contractorHuman.create"):
            payload = mj.contact_json(new)
            if company_id is not None:
                payload |= mj.human_company_json(company_id)
        created = await self._post(f"{mj.API}/contractorHuman", "contractorHuman.create", payload)
        if company_id is not None:
            self._linked.add((str(created["id"]), company_id))
        with self._reading("contractorHuman.create"):
            return mj.contact_from_json({**payload, "id": created["id"]}, self.config)

    async def update_contact(self, contact_id: str, patch: ContactPatch) -> None:
        if not patch.fields:
            return
        with self._reading("contractorHuman.update"):
            payload = mj.contact_patch_json(patch.fields)
        path = f"{mj.API}/contractorHuman/{contact_id}"
        await self._post(path, "contractorHuman.update", payload)

    # ---- deals ------------------------------------------------------------------------

    async def list_deals(self, contact: Contact, known: Sequence[Deal] = ()) -> list[Deal]:
        params: dict[str, JSON] = {
            "limit": mj.PAGE_LIMIT,
            "fields": mj.deal_fields(self.config),
            "sortBy": [{"contentType": "SortField", "fieldName": "timeUpdated", "desc": True}],
        }
        path = mj.query_path(f"{mj.API}/contractor/{contact.id}/deals", params)
        records: list[dict[str, JSON]] = []
        for _ in range(MAX_PAGES):
            body = await self.connection.send("GET", path, "contractor.deals")
            with self._reading("contractor.deals"):
                page = mj.records(self.name, body, "contractor.deals")
            records += page
            if not (page and mj.has_more(body)):
                break
            after = {**params, "pageAfter": mj.link("Deal", page[-1]["id"])}
            path = mj.query_path(f"{mj.API}/contractor/{contact.id}/deals", after)
        with self._reading("contractor.deals"):
            deals = [mj.deal_from_json(record, self.config) for record in records]
        seen = {deal.id for deal in deals}
        return [*deals, *(deal for deal in known if deal.id not in seen)]

    async def get_deal(self, deal_id: str) -> Deal | None:
        if not (deal_id.isascii() and deal_id.isdigit()):
            return None
        params = {"fields": mj.deal_fields(self.config)}
        try:
            record = await self._get(f"{mj.API}/deal/{deal_id}", "deal.get", params)
        except PermanentCrmError as error:
            if "HTTP 404" in str(error):
                return None  # deleted for good
            raise
        if not isinstance(record, dict):
            return None
        with self._reading("deal.get"):
            return mj.deal_from_json(record, self.config)

    async def create_deal(self, contact: Contact, new: NewDeal) -> Deal:
        with self._reading("deal.create"):
            payload = mj.deal_json(new, contact.id)
        if new.company_id is not None:
            await self.link_contact_to_company(contact.id, new.company_id)
        created = await self._post(f"{mj.API}/deal", "deal.create", payload)
        with self._reading("deal.create"):
            now = self.connection.clock()
            return mj.deal_from_sent(payload, str(created["id"]), now, self.config)

    async def create_contact_and_deal(
        self, contact: NewContact, deal: NewDeal
    ) -> tuple[Contact, Deal]:
        """Two calls. Should the second fail, the retry finds the contractor by the normal
        lookup and creates only the deal."""
        with self._reading("deal.create"):
            mj.deal_json(deal, "0")  # a deal that cannot be built must not leave a contractor
        created = await self.create_contact(contact, company_id=deal.company_id)
        return created, await self.create_deal(created, deal)

    async def update_deal(self, deal_id: str, updates: Sequence[FieldUpdate]) -> None:
        if not updates:
            return
        with self._reading("deals.update"):
            payload = mj.deal_patch_json(updates)
        await self._post(f"{mj.API}/deal/{deal_id}", "deals.update", payload)

    # ---- orders -----------------------------------------------------------------------

    async def find_company(self, company: Company, confirm: ConfirmCompany) -> CompanyRecord | None:
        searches: tuple[tuple[CompanyKey, dict[str, JSON] | None], ...] = (
            ("inn", mj.company_inn_params(company, self.config)),
            ("name", mj.company_name_params(company, self.config)),
        )
        for key, params in searches:
            if params is None:
                continue
            found = await self._get(
                f"{mj.API}/contractorCompany", "contractorCompany.search", params
            )
            with self._reading("contractorCompany.search"):
                hits = [
                    mj.company_from_json(record, self.config)
                    for record in mj.oldest_first(
                        r
                        for r in found or ()
                        if isinstance(r, dict) and r.get("contentType") == mj.COMPANY
                    )
                ]
            chosen = next((hit for hit in hits if confirm(hit, key)), None)
            if chosen is not None:
                return chosen
        return None

    async def create_company(self, company: Company) -> CompanyRecord:
        with self._reading("contractorCompany.create"):
            payload = mj.company_json(company, self.config)
        path = f"{mj.API}/contractorCompany"
        created = await self._post(path, "contractorCompany.create", payload)
        return CompanyRecord(str(created["id"]), company.name, company.inn)

    async def link_contact_to_company(self, contact_id: str, company_id: str) -> None:
        if (contact_id, company_id) in self._linked:
            return
        with self._reading("contractorHuman.update"):
            payload = mj.human_company_json(company_id)
        await self._post(
            f"{mj.API}/contractorHuman/{contact_id}", "contractorHuman.update", payload
        )
        self._linked.add((contact_id, company_id))

    async def change_deal(self, deal_id: str, change: DealChange) -> None:
        """The transition is chosen before anything is written (a move the program's
        scheme does not allow fails with nothing changed); then the values, then the
        transition: should the last request fail, the retry writes the same values
        again and moves the deal."""
        with self._reading("deals.update"):
            payload = mj.change_json(change)
        transition: str | None = None
        if change.status_id is not None:
            params = {"fields": list(mj.TRANSITION_FIELDS)}
            record = await self._get(f"{mj.API}/deal/{deal_id}", "deal.get", params)
            with self._reading("deal.get"):
                program, state = mj.current_state(record)
                if state != change.status_id:
                    transition = self._transition(record, program, state, change)
        if payload is not None:
            await self._post(f"{mj.API}/deal/{deal_id}", "deals.update", payload)
        if transition is not None:
            path = f"{mj.API}/deal/{deal_id}/applyTransition"
            await self._post(path, "deal.applyTransition", mj.transition_json(transition))

    def _transition(
        self, record: dict[str, JSON], program: str, state: str, change: DealChange
    ) -> str:
        if change.pipeline_id is not None and change.pipeline_id != program:
            raise PermanentCrmError(
                self.name,
                f"deal {record.get('id')} is in program {program}: a transition cannot move"
                f" it to program {change.pipeline_id} (map the order's statuses to states of"
                " one program)",
            )
        target = change.status_id or ""
        found = mj.transition_to(record, target)
        if found is None:
            raise PermanentCrmError(
                self.name,
                f"deal {record.get('id')}: program {program} has no transition from state"
                f" {state} to {target}; add one to the program's scheme",
            )
        return found

    async def set_deal_items(self, deal_id: str, items: Sequence[OrderItem], currency: str) -> None:
        articles = list(dict.fromkeys(item.product_id for item in items))
        unknown = [article for article in articles if article not in self._offers]
        if unknown:
            found = await self._get(f"{mj.API}/offer", "offer.search", mj.offer_params(unknown))
            with self._reading("offer.search"):
                for offer in found or ():
                    if isinstance(offer, dict) and str(offer.get("article") or "") in unknown:
                        self._offers.setdefault(str(offer["article"]), str(offer["id"]))
        for item in items:
            if item.product_id in self._offers:
                continue
            created = await self._post(
                f"{mj.API}/offer", "offer.create", mj.offer_json(item, currency)
            )
            self._offers[item.product_id] = str(created["id"])
        payload = mj.positions_json(items, self._offers, currency)
        await self._post(f"{mj.API}/deal/{deal_id}", "deals.update", payload)

    # ---- comments ---------------------------------------------------------------------

    async def deal_notes(self, deal_id: str) -> list[str]:
        params = {"limit": mj.PAGE_LIMIT}
        found = await self._get(f"{mj.API}/deal/{deal_id}/comments", "comments.list", params)
        with self._reading("comments.list"):
            return [mj.comment_text(c) for c in found or () if isinstance(c, dict)]

    async def add_note(self, deal_id: str, text: str) -> None:
        path = f"{mj.API}/deal/{deal_id}/comments"
        await self._post(path, "comments.add", mj.comment_json(text))

    # ---- schema -----------------------------------------------------------------------

    async def schema(self) -> CrmSchema:
        programs = await self._get(f"{mj.API}/program", "program.list", {"limit": mj.PAGE_LIMIT})
        pipelines = []
        for program in programs or ():
            path = f"{mj.API}/program/{program['id']}/states"
            states = await self._get(path, "program.states", {"limit": mj.PAGE_LIMIT})
            with self._reading("program.states"):
                pipelines.append(mj.pipeline_from(program, states or ()))
        fields = []
        resources = (
            ("leads", "deal"),
            ("contacts", "contractorHuman"),
            ("companies", "contractorCompany"),
        )
        for entity, resource in resources:
            path = f"{mj.API}/{resource}/extraFields"
            found = await self._get(path, f"{resource}.extraFields", {})
            with self._reading(f"{resource}.extraFields"):
                fields += [mj.custom_field_from(record, entity) for record in found or ()]
        return CrmSchema(pipelines=tuple(pipelines), fields=tuple(fields))


# ---- the builder ----------------------------------------------------------------------


def build_megaplan(wiring: Wiring) -> Megaplan:
    """The adapter on its connection: Megaplan's token endpoint (`OAUTH`), or an
    application token (`<NAME>_ACCESS_TOKEN`)."""
    return Megaplan(Connection(wiring, wiring.secrets("ACCESS_TOKEN"), OAUTH))
