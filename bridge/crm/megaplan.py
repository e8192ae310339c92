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
                        /deal/extraFields, /contractorHuman/extraFields

Auth: `auth = "oauth"` is Megaplan's own token endpoint, `/api/v3/auth/access_token`
(`OAUTH`): the first pair from a password grant (README), then refresh grants whose
refresh token rotates, each new pair stored before use as for amoCRM; `auth =
"long_lived_token"` is an application token (`<NAME>_ACCESS_TOKEN`) sent as the bearer.
Every update is a POST (Megaplan has no PATCH); reads are GETs and retried as such.
"""

from __future__ import annotations

from collections.abc import Sequence

from bridge.crm import megaplan_json as mj
from bridge.crm.base import Confirm, CrmSchema, first_confirmed
from bridge.crm.connection import Connection, OAuthEndpoint, Wiring
from bridge.crm.megaplan_json import JSON
from bridge.domain import (
    Contact,
    ContactPatch,
    Deal,
    FieldUpdate,
    LookupKey,
    NewContact,
    NewDeal,
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

    def __init__(self, connection: Connection) -> None:
        self.name = connection.name
        self.config = connection.config
        self.connection = connection
        self._reading = connection.reading

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
                hits = [
                    mj.contact_from_json(record, self.config)
                    for record in found or ()
                    if isinstance(record, dict) and record.get("contentType") in mj.CONTRACTORS
                ]
            chosen = first_confirmed([key], {key: hits}, confirm)
            if chosen is not None:
                return chosen
        return None

    async def create_contact(self, new: NewContact) -> Contact:
        with self._reading("contractorHuman.create"):
            payload = mj.contact_json(new)
        created = await self._post(f"{mj.API}/contractorHuman", "contractorHuman.create", payload)
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
        created = await self.create_contact(contact)
        return created, await self.create_deal(created, deal)

    async def update_deal(self, deal_id: str, updates: Sequence[FieldUpdate]) -> None:
        if not updates:
            return
        with self._reading("deals.update"):
            payload = mj.deal_patch_json(updates)
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
        for entity, resource in (("leads", "deal"), ("contacts", "contractorHuman")):
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
