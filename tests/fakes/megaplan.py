"""A stateful fake Megaplan account (API v3), seeded like `etc/crm-megaplan.example.toml`.

What it keeps and checks, and where that comes from (crm-notes §3; dev.megaplan.ru/apiv3
and the in-account docs dump borzov/megaplan-sdk docs/megaplan.md; megaplan/megaplansdk
examples):
- answers are envelopes `{"meta": {"status", "errors", "pagination"}, "data"}`; a request
  error is 422 with `meta.errors[{"fieldName", "message"}]`, a missing entity 404, no or
  a dead token 401 (docs dump, general section);
- GET parameters are one URL-encoded JSON object in the query string (§3.2);
- `/api/v3/auth/access_token` takes a form: `grant_type=password` with username and
  password, or `grant_type=refresh_token`; access tokens expire (`expires_in`, 48 h in
  the docs' sample) and each refresh spends the refresh token and answers a new one
  (borzov/megaplan-sdk auth.py, CHANGELOG 0.5.0); a refusal is OAuth2's
  `{"error", "error_description"}` with 400;
- `/contractor` lists ContractorHuman and ContractorCompany and searches with `q` loosely
  (a substring of the name, an e-mail or a phone's digits) or with a CrmFilter term on an
  extra field (§3.3); clients are created and changed through `/contractorHuman` (§3.5);
- deals belong to a program (scheme) and sit in one of its states; a POST to a deal
  changes only what it carries and ignores `state` (a transition is needed, §3.6); a
  contractor's deals are `/contractor/{id}/deals`, newest first, paged with `pageAfter`;
- extra fields are `Category{N}CustomField{Name}` keys, typed (§3.6): numbers are JSON
  numbers, a DateTimeField a `{"contentType": "DateTime", "value"}`, an EnumField one of
  its values, a multiple one a list of them; an unknown one is a 422;
- comments on a deal (`/deal/{id}/comments`, HTML `content`, §3.7);
- orders, after the account's RAML (a copy: borzov/megaplan-sdk docs/megaplan.raml):
  companies (`ContractorCompany`, `/contractorCompany`: `q` a substring of the name, a
  CrmFilter on its extra fields; no INN of its own, so the example keeps it in the
  extra field `Category1002CustomFieldInn`); a person's `company` link; a state's `type`
  active / positive / negative, read as the deal's `result`; programs' transitions and
  a deal's `possibleTransitions` (from its state), applied by `POST
  /deal/{id}/applyTransition` with one of them (anything else: 422); catalog offers
  (`/offer`, found by `article` with an OfferFilter [U: the term's shape is the
  CrmFilter's]) and a deal's `positions` (OfferRows
  naming an existing offer), replaced whole by an update that carries them [U: the
  replace semantics are not in the RAML]; a DateField takes a DateOnly entity whose
  month counts from 0;
- a rate limit of 5 requests a second (a third-party client's "5 rps", §3.9, [U]) answered
  429 like the others.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from bridge.settings import CrmConfig, load_file_config
from tests.fakes.service import (
    ApiError,
    FakeRequest,
    FakeResponse,
    FakeService,
    OAuthFake,
    TokenIssuer,
)

JSONDict = dict[str, Any]
EXAMPLE_CONFIG = Path(__file__).resolve().parents[2] / "etc" / "crm-megaplan.example.toml"
API = "/api/v3"
DEAL_CATEGORY, HUMAN_CATEGORY = "Category1000CustomField", "Category1001CustomField"
COMPANY_CATEGORY = "Category1002CustomField"
# Programs (schemes) and their states: id → (name, [(state id, name)]).
PROGRAMS: dict[int, tuple[str, list[tuple[int, str]]]] = {
    number: (
        name,
        [
            (number * 10 + 1, "Новая"),
            (number * 10 + 2, "Автооплата"),
            (number * 10 + 3, "В работе"),
            (number * 10 + 4, "Завершена успешно"),
            (number * 10 + 5, "Отказ"),
        ],
    )
    for number, name in ((1, "Сайт"), (2, "Яндекс"), (3, "Партнёры"))
}
SUBJECTS = ("Русский", "Математика", "Обществознание", "История", "Физика", "Информатика")
# Extra fields: name → (type, enum values, multiple).
ExtraFields = Mapping[str, tuple[str, tuple[str, ...], bool]]
DEAL_FIELDS: ExtraFields = {
    f"{DEAL_CATEGORY}Subjects": ("EnumField", SUBJECTS, True),
    f"{DEAL_CATEGORY}Direction": ("EnumField", ("ЕГЭ", "ОГЭ"), False),
    f"{DEAL_CATEGORY}LastPayment": ("FloatField", (), False),
    f"{DEAL_CATEGORY}LastPaymentAt": ("DateTimeField", (), False),
    f"{DEAL_CATEGORY}PaymentId": ("StringField", (), False),
    f"{DEAL_CATEGORY}InvoiceId": ("StringField", (), False),
    f"{DEAL_CATEGORY}TotalPaid": ("FloatField", (), False),
    f"{DEAL_CATEGORY}PurchaseCount": ("IntegerField", (), False),
    # Orders
    f"{DEAL_CATEGORY}OrderId": ("StringField", (), False),
    f"{DEAL_CATEGORY}OrderStatus": ("StringField", (), False),
    f"{DEAL_CATEGORY}InstallationDate": ("DateField", (), False),
    f"{DEAL_CATEGORY}DismantleDate": ("DateField", (), False),
    f"{DEAL_CATEGORY}DeliveryMethod": ("StringField", (), False),
    f"{DEAL_CATEGORY}DeliveryAddress": ("StringField", (), False),
    f"{DEAL_CATEGORY}Comment": ("StringField", (), False),
    **{
        f"{DEAL_CATEGORY}Utm{part}": ("StringField", (), False)
        for part in ("Source", "Medium", "Campaign", "Term", "Content")
    },
}
HUMAN_FIELDS: ExtraFields = {
    f"{HUMAN_CATEGORY}TelegramId": ("StringField", (), False),
    f"{HUMAN_CATEGORY}TelegramUsername": ("StringField", (), False),
}
COMPANY_FIELDS: ExtraFields = {
    f"{COMPANY_CATEGORY}Inn": ("StringField", (), False),
}
# Entity → its extra fields (`GET /{entity}/extraFields`).
EXTRA_FIELDS = {
    "deal": DEAL_FIELDS,
    "contractorHuman": HUMAN_FIELDS,
    "contractorCompany": COMPANY_FIELDS,
}


def state_type(state: int) -> str:
    """ProgramState.type: "Завершена успешно" positive, "Отказ" negative."""
    return {4: "positive", 5: "negative"}.get(state % 10, "active")


def transitions(program: int) -> list[tuple[str, int, int]]:
    """The program's scheme: (id, from, to). From a working state to any other; from a
    final one back to "Новая" or "В работе" (a deal re-opened)."""
    states = [state for state, _ in PROGRAMS[program][1]]
    found = []
    for origin in states:
        final = state_type(origin) != "active"
        for target in states:
            if target == origin or (final and target % 10 not in (1, 3)):
                continue
            found.append((str(origin * 100 + target), origin, target))
    return found


def envelope(data: Any, status: int = 200, **pagination: Any) -> JSONDict:
    meta: JSONDict = {"status": status, "errors": []}
    if pagination:
        meta["pagination"] = pagination
    return {"meta": meta, "data": data}


def refusal(status: int, message: str, field: str | None = None) -> ApiError:
    error: JSONDict = {"message": message}
    if field is not None:
        error["fieldName"] = field
    return ApiError(status, {"meta": {"status": status, "errors": [error]}, "data": None})


def _digits(text: str) -> str:
    return re.sub(r"\D", "", text)


def _iso(at: float) -> JSONDict:
    return {"contentType": "DateTime", "value": datetime.fromtimestamp(at, UTC).isoformat()}


class FakeMegaplan(OAuthFake, FakeService):
    """The example account, empty of clients and deals."""

    name = "fake Megaplan"

    def __init__(
        self,
        *,
        rate_limit: int = 5,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        username: str = "bridge@example.com",
        password: str = "fake-password",  # noqa: S107
        oauth_ttl: int = 172800,
    ) -> None:
        super().__init__(rate_limit=rate_limit, monotonic=monotonic)
        self.clock = clock
        self.username = username
        # The contract suite checks no error echoes the client secret: the password is it.
        self.client_secret = password
        self.oauth_ttl = oauth_ttl
        self.tokens = TokenIssuer(lambda: self.clock(), lambda: self.oauth_ttl)
        self._humans: dict[int, JSONDict] = {}
        self._companies: dict[int, JSONDict] = {}
        self._offers: dict[int, JSONDict] = {}
        self._deals: dict[int, JSONDict] = {}
        self._comments: dict[int, list[JSONDict]] = {}
        self._ids = itertools.count(1000001)
        self.origin = "https://example.megaplan.ru"
        self.routes = [
            ("POST", re.compile(f"{API}/auth/access_token"), self._token),
            ("GET", re.compile(f"{API}/contractor"), self._list_contractors),
            ("GET", re.compile(rf"{API}/contractor/(\d+)/deals"), self._contractor_deals),
            ("POST", re.compile(f"{API}/contractorHuman"), self._create_human),
            ("POST", re.compile(rf"{API}/contractorHuman/(\d+)"), self._update_human),
            ("GET", re.compile(f"{API}/contractorCompany"), self._list_companies),
            ("POST", re.compile(f"{API}/contractorCompany"), self._create_company),
            ("GET", re.compile(f"{API}/offer"), self._list_offers),
            ("POST", re.compile(f"{API}/offer"), self._create_offer),
            ("POST", re.compile(rf"{API}/deal/(\d+)/applyTransition"), self._apply_transition),
            ("POST", re.compile(f"{API}/deal"), self._create_deal),
            ("GET", re.compile(f"{API}/({'|'.join(EXTRA_FIELDS)})/extraFields"), self._extras),
            ("GET", re.compile(rf"{API}/deal/(\d+)"), self._get_deal),
            ("POST", re.compile(rf"{API}/deal/(\d+)"), self._update_deal),
            ("GET", re.compile(rf"{API}/deal/(\d+)/comments"), self._list_comments),
            ("POST", re.compile(rf"{API}/deal/(\d+)/comments"), self._add_comment),
            ("GET", re.compile(f"{API}/program"), self._programs),
            ("GET", re.compile(rf"{API}/program/(\d+)/states"), self._states),
        ]

    # ---- credentials ----------------------------------------------------------------

    def issue_token(self, ttl: float | None = None, *, never: bool = False) -> str:
        """An access token, e.g. an application token (`never` expires)."""
        with self._lock:
            return self.tokens.issue_token(ttl, never=never)

    def authorise(self, request: FakeRequest) -> FakeResponse | None:
        if request.path == f"{API}/auth/access_token":
            return None
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self.tokens.access_problem(token) is None:
            return None
        return refusal(401, "Unauthorized: the access token is missing or expired").response

    def _token(self, request: FakeRequest) -> FakeResponse:
        form = dict(parse_qsl(request.body.decode()))
        grant = form.get("grant_type")
        if grant == "password":
            if (form.get("username"), form.get("password")) != (self.username, self.client_secret):
                return self._refused("invalid_grant", "Invalid username and password combination")
            access, refresh = self.tokens.issue_pair()
        elif grant == "refresh_token":
            pair = self.tokens.refreshed(form.get("refresh_token", ""))
            if isinstance(pair, str):
                return self._refused("invalid_grant", "Invalid refresh token")
            access, refresh = pair
        else:
            return self._refused("unsupported_grant_type", "Grant type not supported")
        body = {
            "access_token": access,
            "expires_in": self.oauth_ttl,
            "token_type": "bearer",
            "scope": None,
            "refresh_token": refresh,
        }
        return FakeResponse(200, body)

    @staticmethod
    def _refused(error: str, description: str) -> FakeResponse:
        return FakeResponse(400, {"error": error, "error_description": description})

    def _too_many(self) -> FakeResponse:
        answer = super()._too_many()
        error = refusal(429, "Too Many Requests: the account's request limit is reached")
        return FakeResponse(429, error.response.body, answer.headers)

    # ---- inspection and setup -------------------------------------------------------

    def humans(self) -> list[JSONDict]:
        with self._lock:
            return [dict(h) for h in self._humans.values()]

    def human(self, human_id: int | str) -> JSONDict:
        with self._lock:
            return dict(self._humans[int(human_id)])

    def deals(self) -> list[JSONDict]:
        with self._lock:
            return [dict(d) for d in self._deals.values()]

    def deal(self, deal_id: int | str) -> JSONDict:
        with self._lock:
            return dict(self._deals[int(deal_id)])

    def companies(self) -> list[JSONDict]:
        with self._lock:
            return [dict(c) for c in self._companies.values()]

    def offers(self) -> list[JSONDict]:
        with self._lock:
            return [dict(o) for o in self._offers.values()]

    def add_company(self, name: str, *, inn: str = "") -> int:
        """A company a manager typed, its INN in the example's extra field."""
        fields = {f"{COMPANY_CATEGORY}Inn": inn} if inn else {}
        with self._lock:
            return self._store_company({"name": name, **fields})

    def human_company(self, human_id: int | str) -> str | None:
        with self._lock:
            company = self._humans[int(human_id)].get("company")
        return str(company["id"]) if isinstance(company, dict) else None

    def comments(self, deal_id: int | str) -> list[str]:
        with self._lock:
            return [str(c["content"]) for c in self._comments.get(int(deal_id), [])]

    def add_human(
        self, name: str, *, phone: str | None = None, fields: Mapping[str, Any] | None = None
    ) -> int:
        """A client a manager typed (the phone as typed)."""
        first, _, last = name.partition(" ")
        info = [{"contentType": "ContactInfo", "type": "phone", "value": phone}] if phone else []
        with self._lock:
            return self._store_human(
                {"firstName": first, "lastName": last, "contactInfo": info, **(fields or {})}
            )

    def add_deal(
        self,
        contractor: int,
        *,
        program: int,
        state: int,
        updated_at: float,
        fields: Mapping[str, Any] | None = None,
    ) -> int:
        with self._lock:
            deal_id = next(self._ids)
            self._deals[deal_id] = {
                "contentType": "Deal",
                "id": str(deal_id),
                "name": f"Сделка {deal_id}",
                "program": {"contentType": "Program", "id": str(program)},
                "state": {"contentType": "ProgramState", "id": str(state)},
                "contractor": {"contentType": "ContractorHuman", "id": str(contractor)},
                "price": {"contentType": "Money", "value": 0, "currency": "RUB"},
                "timeUpdated": _iso(updated_at),
                **(fields or {}),
            }
            return deal_id

    def move_deal(self, deal_id: int | str, state: int) -> None:
        """A manager applies a transition (the API's own update ignores `state`)."""
        with self._lock:
            deal = self._deals[int(deal_id)]
            deal["state"] = {"contentType": "ProgramState", "id": str(state)}
            deal["timeUpdated"] = _iso(self.clock())

    def win(self, deal_id: int | str) -> None:
        """A manager closes the deal as won: its program's "Завершена успешно"."""
        with self._lock:
            program = int(self._deals[int(deal_id)]["program"]["id"])
        self.move_deal(deal_id, program * 10 + 4)

    def field(self, record: JSONDict, field_id: str) -> Any:
        """An extra field's value as a manager reads it (a date-time's text; None: empty)."""
        value = record.get(field_id)
        return value.get("value") if isinstance(value, dict) else value

    # ---- routes: contractors --------------------------------------------------------

    def _params(self, request: FakeRequest) -> JSONDict:
        if not request.query:
            return {}
        if len(request.query) != 1 or request.query[0][1]:
            raise refusal(422, "GET parameters are one JSON object")
        try:
            params = json.loads(request.query[0][0])
        except ValueError:
            raise refusal(422, "GET parameters are not valid JSON") from None
        if not isinstance(params, dict):
            raise refusal(422, "GET parameters are one JSON object")
        return params

    def _list_contractors(self, request: FakeRequest) -> FakeResponse:
        params = self._params(request)
        # The generic list holds people and companies alike (§3.3).
        hits = [*self._humans.values(), *self._companies.values()]
        query = params.get("q")
        if isinstance(query, str) and query.strip():
            hits = [h for h in hits if self._matches(h, query.strip().lower())]
        if "filter" in params:
            hits = [h for h in hits if self._filtered(h, params["filter"])]
        return self._listed(hits, params)

    @staticmethod
    def _listed(hits: list[JSONDict], params: JSONDict) -> FakeResponse:
        """The first `limit` (100 by default) of a list, saying whether more follow."""
        limit = int(params.get("limit") or 100)
        return FakeResponse(200, envelope(hits[:limit], limit=limit, hasMoreNext=len(hits) > limit))

    @staticmethod
    def _matches(human: JSONDict, query: str) -> bool:
        """A substring of the name, of an e-mail, or of a phone's digits."""
        name = f"{human.get('firstName', '')} {human.get('lastName', '')}".lower()
        if human.get("contentType") == "ContractorCompany":
            name = str(human.get("name") or "").lower()
        if query in name:
            return True
        for info in human.get("contactInfo") or ():
            value = str(info.get("value") or "")
            if info.get("type") == "email" and query in value.lower():
                return True
            digits = _digits(query)
            if info.get("type") == "phone" and len(digits) >= 5 and digits in _digits(value):
                return True
        return False

    def _filtered(
        self,
        human: JSONDict,
        crm_filter: Any,
        fields: Mapping[str, Any] = HUMAN_FIELDS,
        kind: str = "CrmFilter",
    ) -> bool:
        try:
            assert crm_filter["contentType"] == kind
            group = crm_filter["config"]["termGroup"]
            assert group["contentType"] == "FilterTermGroup"
            terms = group["terms"]
        except (AssertionError, KeyError, TypeError):
            raise refusal(422, "filter: not a CrmFilter", "filter") from None
        results = []
        for term in terms:
            field = term.get("field")
            if field not in fields or term.get("comparison") != "equals":
                raise refusal(422, f"filter: cannot filter by {field}", "filter")
            results.append(str(human.get(field) or "") == str(term.get("value")))
        return all(results) if group.get("join", "and") == "and" else any(results)

    def _create_human(self, request: FakeRequest) -> FakeResponse:
        body = self._entity(request, "ContractorHuman")
        if not (body.get("firstName") or body.get("lastName")):
            raise refusal(422, "a client needs a name", "firstName")
        human_id = self._store_human(body)
        return FakeResponse(200, envelope(self._humans[human_id]))

    def _update_human(self, request: FakeRequest, human_id: str) -> FakeResponse:
        human = self._humans.get(int(human_id))
        if human is None:
            raise refusal(404, f"ContractorHuman {human_id} not found")
        changes = self._entity(request, "ContractorHuman")
        self._check_fields(changes, HUMAN_FIELDS)
        self._check_company_link(changes)
        human.update({k: v for k, v in changes.items() if k != "id"})
        return FakeResponse(200, envelope(human))

    def _store_human(self, body: JSONDict) -> int:
        self._check_fields(body, HUMAN_FIELDS)
        self._check_company_link(body)
        return self._store(self._humans, "ContractorHuman", body)

    def _store(self, table: dict[int, JSONDict], content_type: str, body: JSONDict) -> int:
        record_id = next(self._ids)
        table[record_id] = {**body, "contentType": content_type, "id": str(record_id)}
        return record_id

    def _check_company_link(self, body: JSONDict) -> None:
        company = self._link(body, "company", "ContractorCompany")
        if company is not None and int(company) not in self._companies:
            raise refusal(422, f"company {company} not found", "company")

    # ---- routes: companies and offers -----------------------------------------------

    def _list_companies(self, request: FakeRequest) -> FakeResponse:
        params = self._params(request)
        hits = list(self._companies.values())
        query = params.get("q")
        if isinstance(query, str) and query.strip():
            # `q` goes through a search index (it "returns empty on a fresh account: the
            # index is not built", §3.3): word by word, not one substring.
            words = query.lower().split()
            hits = [c for c in hits if all(w in str(c.get("name", "")).lower() for w in words)]
        if "filter" in params:
            hits = [c for c in hits if self._filtered(c, params["filter"], COMPANY_FIELDS)]
        return self._listed(hits, params)

    def _create_company(self, request: FakeRequest) -> FakeResponse:
        body = self._entity(request, "ContractorCompany")
        if not str(body.get("name") or "").strip():
            raise refusal(422, "a company needs a name", "name")
        company_id = self._store_company(body)
        return FakeResponse(200, envelope(self._companies[company_id]))

    def _store_company(self, body: JSONDict) -> int:
        self._check_fields(body, COMPANY_FIELDS)
        return self._store(self._companies, "ContractorCompany", body)

    def _list_offers(self, request: FakeRequest) -> FakeResponse:
        params = self._params(request)
        hits = list(self._offers.values())
        if "filter" in params:
            articles = {"article": ("StringField", (), False)}
            hits = [o for o in hits if self._filtered(o, params["filter"], articles, "OfferFilter")]
        return self._listed(hits, params)

    def _create_offer(self, request: FakeRequest) -> FakeResponse:
        body = self._entity(request, "Offer")
        if not str(body.get("name") or "").strip():
            raise refusal(422, "an offer needs a name", "name")
        self._check_money(body.get("price"), "price")  # required (RAML Offer.price)
        offer_id = self._store(self._offers, "Offer", body)  # `body` says "Offer" already
        return FakeResponse(200, envelope(self._offers[offer_id]))

    @staticmethod
    def _check_money(value: Any, field: str) -> None:
        if not (
            isinstance(value, dict)
            and value.get("contentType") == "Money"
            and isinstance(value.get("value"), int | float)
            and not isinstance(value.get("value"), bool)
        ):
            raise refusal(422, f"{field}: not a Money value", field)

    def _positions(self, rows: Any) -> list[JSONDict]:
        """OfferRows as an update carries them: each names an existing offer."""
        if not isinstance(rows, list):
            raise refusal(422, "positions: a list of OfferRow", "positions")
        stored = []
        for row in rows:
            if not isinstance(row, dict) or row.get("contentType") != "OfferRow":
                raise refusal(422, "positions: a list of OfferRow", "positions")
            offer = self._link(row, "offer", "Offer")
            if offer is None or int(offer) not in self._offers:
                raise refusal(422, f"positions: offer {offer} not found", "positions")
            quantity = row.get("quantity")
            if not isinstance(quantity, int | float) or isinstance(quantity, bool) or quantity <= 0:
                raise refusal(422, "positions: quantity must be a positive number", "positions")
            self._check_money(row.get("price"), "positions")
            stored.append({**row, "id": str(next(self._ids))})
        return stored

    # ---- routes: deals --------------------------------------------------------------

    def _deal(self, deal_id: str) -> JSONDict:
        deal = self._deals.get(int(deal_id))
        if deal is None:
            raise refusal(404, f"Deal {deal_id} not found")
        return deal

    def _view(self, deal: JSONDict) -> JSONDict:
        """A deal as read: its result and the transitions its state allows."""
        state = int(deal["state"]["id"])
        program = int(deal["program"]["id"])
        possible = [
            {
                "contentType": "ProgramTransition",
                "id": transition_id,
                "from": {"contentType": "ProgramState", "id": str(origin)},
                "to": {"contentType": "ProgramState", "id": str(target)},
                "enabled": True,
            }
            for transition_id, origin, target in transitions(program)
            if origin == state
        ]
        return {**deal, "result": state_type(state), "possibleTransitions": possible}

    def _apply_transition(self, request: FakeRequest, deal_id: str) -> FakeResponse:
        deal = self._deal(deal_id)
        body = self._entity(request, "ProgramTransition")
        chosen = next(
            (t for t in self._view(deal)["possibleTransitions"] if t["id"] == str(body.get("id"))),
            None,
        )
        if chosen is None:
            raise refusal(422, f"transition {body.get('id')} is not possible now", "transition")
        deal["state"] = {"contentType": "ProgramState", "id": chosen["to"]["id"]}
        deal["timeUpdated"] = _iso(self.clock())
        return FakeResponse(200, envelope(self._view(deal)))

    def _contractor_deals(self, request: FakeRequest, human_id: str) -> FakeResponse:
        if int(human_id) not in self._humans:
            raise refusal(404, f"Contractor {human_id} not found")
        params = self._params(request)
        mine = [self._view(d) for d in self._deals.values() if d["contractor"]["id"] == human_id]
        mine.sort(key=lambda d: (d["timeUpdated"]["value"], int(d["id"])), reverse=True)
        after = params.get("pageAfter")
        if isinstance(after, dict):
            ids = [d["id"] for d in mine]
            start = ids.index(str(after.get("id"))) + 1 if str(after.get("id")) in ids else 0
            mine = mine[start:]
        return self._listed(mine, params)

    def _get_deal(self, request: FakeRequest, deal_id: str) -> FakeResponse:
        self._params(request)
        deal = self._deal(deal_id)
        return FakeResponse(200, envelope(self._view(deal)))

    def _create_deal(self, request: FakeRequest) -> FakeResponse:
        body = self._entity(request, "Deal")
        program = self._link(body, "program", "Program")
        if program is None or int(program) not in PROGRAMS:
            raise refusal(422, "a deal needs an existing program", "program")
        state = self._link(body, "state", "ProgramState") or str(PROGRAMS[int(program)][1][0][0])
        if int(state) not in {s for s, _ in PROGRAMS[int(program)][1]}:
            raise refusal(422, f"state {state} is not a state of program {program}", "state")
        contractor = self._link(body, "contractor", "ContractorHuman")
        if contractor is not None and int(contractor) not in self._humans:
            raise refusal(422, f"contractor {contractor} not found", "contractor")
        if "positions" in body:
            body = {**body, "positions": self._positions(body["positions"])}
        self._check_fields(body, DEAL_FIELDS)
        deal_id = next(self._ids)
        self._deals[deal_id] = {
            **body,
            "id": str(deal_id),
            "state": {"contentType": "ProgramState", "id": state},
            "timeUpdated": _iso(self.clock()),
        }
        return FakeResponse(200, envelope(self._deals[deal_id]))

    def _update_deal(self, request: FakeRequest, deal_id: str) -> FakeResponse:
        deal = self._deal(deal_id)
        changes = self._entity(request, "Deal")
        self._check_fields(changes, DEAL_FIELDS)
        if "positions" in changes:
            changes = {**changes, "positions": self._positions(changes["positions"])}
        if "price" in changes:
            self._check_money(changes["price"], "price")
        # `state` is not changed by an update: only a transition moves a deal (§3.6).
        ignored = ("id", "state", "contentType")
        deal.update({k: v for k, v in changes.items() if k not in ignored})
        deal["timeUpdated"] = _iso(self.clock())
        return FakeResponse(200, envelope(self._view(deal)))

    # ---- routes: comments and schema ------------------------------------------------

    def _list_comments(self, request: FakeRequest, deal_id: str) -> FakeResponse:
        self._params(request)
        self._deal(deal_id)
        return FakeResponse(200, envelope(self._comments.get(int(deal_id), [])))

    def _add_comment(self, request: FakeRequest, deal_id: str) -> FakeResponse:
        self._deal(deal_id)
        body = self._entity(request, "Comment")
        if not isinstance(body.get("content"), str) or not body["content"]:
            raise refusal(422, "a comment needs content", "content")
        comment = {"contentType": "Comment", "id": str(next(self._ids)), "content": body["content"]}
        self._comments.setdefault(int(deal_id), []).append(comment)
        return FakeResponse(200, envelope(comment))

    def _programs(self, request: FakeRequest) -> FakeResponse:
        items = [
            {"contentType": "Program", "id": str(number), "name": name}
            for number, (name, _) in PROGRAMS.items()
        ]
        return FakeResponse(200, envelope(items))

    def _states(self, request: FakeRequest, program: str) -> FakeResponse:
        if int(program) not in PROGRAMS:
            raise refusal(404, f"Program {program} not found")
        states = PROGRAMS[int(program)][1]
        items = [{"contentType": "ProgramState", "id": str(i), "name": n} for i, n in states]
        return FakeResponse(200, envelope(items))

    def _extras(self, request: FakeRequest, entity: str) -> FakeResponse:
        return FakeResponse(200, envelope(self._fields_json(EXTRA_FIELDS[entity])))

    @staticmethod
    def _fields_json(fields: ExtraFields) -> list[JSONDict]:
        return [
            {
                "contentType": kind,
                "name": name,
                "hrName": name.rsplit("CustomField", 1)[1],
                "enumValues": list(values),
                "multiple": multiple,
            }
            for name, (kind, values, multiple) in fields.items()
        ]

    # ---- validation -----------------------------------------------------------------

    @staticmethod
    def _entity(request: FakeRequest, content_type: str) -> JSONDict:
        body = request.json()
        if not isinstance(body, dict) or body.get("contentType") != content_type:
            raise refusal(422, f"the body must be a {content_type}", "contentType")
        return body

    @staticmethod
    def _link(body: JSONDict, key: str, content_type: str) -> str | None:
        value = body.get(key)
        if value is None:
            return None
        if not isinstance(value, dict) or value.get("contentType") != content_type:
            raise refusal(422, f"{key} must be a {content_type} link", key)
        return str(value.get("id"))

    @staticmethod
    def _check_fields(body: JSONDict, fields: ExtraFields) -> None:
        for key, value in body.items():
            if "CustomField" not in key:
                continue
            if key not in fields:
                raise refusal(422, f"unknown extra field {key}", key)
            kind, values, multiple = fields[key]
            ok = {
                "StringField": isinstance(value, str),
                "FloatField": isinstance(value, int | float) and not isinstance(value, bool),
                "IntegerField": isinstance(value, int) and not isinstance(value, bool),
                "DateTimeField": isinstance(value, dict)
                and value.get("contentType") == "DateTime"
                and isinstance(value.get("value"), str),
                # DateOnly: the month counts from 0 (RAML DateOnly.month).
                "DateField": isinstance(value, dict)
                and value.get("contentType") == "DateOnly"
                and isinstance(value.get("year"), int)
                and value.get("month") in range(12)
                and value.get("day") in range(1, 32),
                "EnumField": (
                    isinstance(value, list) and all(v in values for v in value)
                    if multiple
                    else value in values
                ),
            }[kind]
            if value is not None and not ok:
                raise refusal(422, f"{key}: {value!r} is not a {kind} value", key)


def example_config() -> CrmConfig:
    return load_file_config(EXAMPLE_CONFIG).crm["megaplan"]
