"""A stateful fake of Zoho CRM's API v8 and its accounts server: one org's Contacts, Deals
and Notes, its layouts, pipelines and fields, OAuth tokens, API credits and concurrency.

It answers like the real API where the bridge depends on it (sources cited per part):
- hosts: the token endpoint answers on `accounts_url` only, the API on `api_domain` only
  (a token is good in its own data centre only,
  https://www.zoho.com/crm/developer/docs/api/v8/multi-dc.html); the token answer names
  `api_domain`. `check_hosts=False` serves both anywhere (ASGI);
- OAuth (`POST /oauth/v2/token`, form or query parameters,
  https://www.zoho.com/crm/developer/docs/api/v8/access-refresh.html; tokens by the
  shared `TokenIssuer`): the authorization-code grant (a Self Client's code is single-use
  and lives `code_ttl` seconds) answers a refresh token once; refreshes answer only an
  access token (1 h). Refusals come with HTTP **200** and `{"error": "invalid_code"}`
  (or `invalid_client`), as Zoho does; more than `token_requests_per_minute` token
  requests answer 400 "too many requests continuously";
- requests carry `Authorization: Zoho-oauthtoken …`; none → 401 AUTHENTICATION_FAILURE,
  unknown or expired → 401 INVALID_TOKEN;
- credits (https://www.zoho.com/crm/developer/docs/api/v8/api-limits.html): a pool of
  `daily_credits` per rolling 24 hours; most calls cost 1, COQL 1/2/3 by LIMIT (≤200,
  ≤1000, ≤2000), a composite call 1 (2 with `rollback_on_fail` when nothing rolls back),
  writes 1 per 10 records; an answer Zoho refuses first (401, 429) costs nothing; spent →
  429 TOO_MANY_REQUESTS. Concurrency: more than `concurrency` calls in flight (a
  composite counts 5) → 429 TOO_MANY_REQUESTS;
- reads: an empty search, COQL, related list or unknown record id answers **204** with
  no body; search and COQL semantics are `tests.fakes.zoho_query`'s; a record created
  through the API reaches search `index_lag` seconds later (COQL sees it at once);
- writes are checked by `tests.fakes.zoho_org` and answered per record
  (`{"data": [{code, details, message, status}]}`): 201 created / 200 updated, 400 when
  every record failed, 207 when some did. Deals need a Pipeline whose maps hold the Stage;
- notes: `Parent_Id` as `{module: {api_name}, id}` or an id with `$se_module`;
- composite (https://zoho.com/crm/developer/docs/api/v8/composite-overview.html): 1–5
  sub-requests run in order, `@{sub_request_id:$.json.path}` references resolved from
  earlier answers (an unresolvable one → INVALID_REFERENCE, the sub-request not run);
  writes limited to one record, reads to 25; `rollback_on_fail` undoes every sub-request
  when one fails; `rollback_on_fail` with parallel execution → AMBIGUITY_DURING_PROCESSING.

Accounts (companies) are a module like Contacts: created, searched, read by COQL, linked
from a contact's or a deal's `Account_Name` lookup.

Setup and inspection (not logged as calls): `add_contact`, `add_deal`, `move_deal`,
`add_company`, `companies()`, `add_note`, `contact(id)`, `deal(id)`, `contacts()`,
`deals()`, `notes(deal_id)`, `credits_used`, `issue_oauth_pair`, `register_code`,
`expire_all_access_tokens`.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import re
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit
from zoneinfo import ZoneInfo

from bridge.settings import CrmConfig, load_file_config
from tests.fakes.service import (
    ApiError,
    FakeRequest,
    FakeResponse,
    FakeService,
    Fault,
    JSONDict,
    OAuthFake,
    TokenIssuer,
)
from tests.fakes.zoho_org import ACCOUNT_INN, Org, RecordError, zoho_item
from tests.fakes.zoho_query import (
    QueryError,
    check_criteria,
    coql_fields,
    coql_matches,
    matches_criteria,
    parse_coql,
    parse_criteria,
)

EXAMPLE_CONFIG = Path(__file__).resolve().parents[2] / "etc" / "crm-zoho.example.toml"
MODULES = ("Contacts", "Deals", "Notes", "Accounts")
DAY = 86400
SUB_URI = re.compile(r"/crm(/.*)?/v[0-9]+([.][0-9]+)?/.*")
SUB_ID = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_]*")
REFERENCE = re.compile(r"@\{([^:}]+):(\$[^}]*)\}")
COMPOSITE_READ_LIMIT = 25
OWNER = {"name": "Bridge Admin", "id": "5725767000000235001", "email": "admin@example.com"}


def zoho_error(
    status: int, code: str, message: str, details: Mapping[str, Any] | None = None
) -> ApiError:
    return ApiError(status, zoho_item(code, message, details or {}))


@dataclass
class Rec:
    id: str
    module: str
    values: dict[str, Any]
    created: float
    modified: float
    searchable_from: float = 0.0
    deleted: bool = False


class FakeZoho(OAuthFake, FakeService):
    """The org of `etc/crm-zoho.example.toml` (or `config`), empty of data."""

    name = "fake Zoho CRM"
    success_content_type = "application/json;charset=UTF-8"

    def __init__(
        self,
        config: CrmConfig | None = None,
        *,
        rate_limit: int = 1000,
        daily_credits: int = 50_000,
        concurrency: int = 10,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        client_id: str = "1000.FAKECLIENTID",
        client_secret: str = "fake-client-secret",  # noqa: S107
        accounts_url: str = "https://accounts.zoho.eu",
        api_domain: str = "https://www.zohoapis.eu",
        check_hosts: bool = True,
        access_ttl: int = 3600,
        code_ttl: int = 180,
        token_requests_per_minute: int = 10,
        index_lag: float = 0.0,
        time_zone: str = "Europe/Moscow",
    ) -> None:
        super().__init__(rate_limit=rate_limit, monotonic=monotonic)
        self.config = config or load_file_config(EXAMPLE_CONFIG).crm["zoho"]
        self.org = Org.from_config(self.config)
        self.daily_credits, self.concurrency = daily_credits, concurrency
        self.clock = clock
        self.client_id, self.client_secret = client_id, client_secret
        self.accounts_url, self.api_domain = accounts_url, api_domain
        self.check_hosts = check_hosts
        self.access_ttl, self.code_ttl = access_ttl, code_ttl
        self.token_requests_per_minute = token_requests_per_minute
        self.index_lag = index_lag
        self.zone = ZoneInfo(time_zone)
        self.records: dict[str, dict[str, Rec]] = {module: {} for module in MODULES}
        self._ids = itertools.count(5725767000001000001)
        # Access tokens live an hour; a refresh answers only a new access token (the
        # refresh token stays until revoked); a Self Client's code expires in minutes.
        self.tokens = TokenIssuer(
            clock, lambda: self.access_ttl, prefixes=("1000.a", "1000.r"), rotates=False
        )
        self._code_expiry: dict[str, float] = {}
        self._spent: deque[tuple[float, int]] = deque()  # (clock, credits)
        self._token_window: deque[float] = deque()
        self._inflight = 0
        self.hosts: list[str] = []  # scheme://host of every request, in order
        routes = [
            ("POST", r"/oauth/v2/token", self._token),
            ("GET", r"/crm/v8/settings/layouts", self._layouts),
            ("GET", r"/crm/v8/settings/pipeline", self._pipelines),
            ("GET", r"/crm/v8/settings/fields", self._fields),
            ("POST", r"/crm/v8/coql", self._coql),
            ("POST", r"/crm/v8/__composite_requests", self._composite),
            ("GET", r"/crm/v8/(Contacts|Deals|Accounts)/search", self._search),
            ("GET", r"/crm/v8/Deals/([^/]+)/Notes", self._deal_notes),
            ("GET", r"/crm/v8/(Contacts|Deals|Notes|Accounts)/([^/]+)", self._get_record),
            ("PUT", r"/crm/v8/(Contacts|Deals|Accounts)/([^/]+)", self._update_record),
            ("POST", r"/crm/v8/(Contacts|Deals|Notes|Accounts)", self._create_records),
        ]
        self.routes = [(m, re.compile(p), handler) for m, p, handler in routes]

    # ---- credentials --------------------------------------------------------------------

    def register_code(self, code: str, ttl: float | None = None) -> None:
        """A Self Client grant code, as the API console generates it (`code_ttl` seconds)."""
        super().register_code(code)
        with self._lock:
            self._code_expiry[code] = self.clock() + (self.code_ttl if ttl is None else ttl)

    # ---- inspection and setup -------------------------------------------------------------

    @property
    def credits_used(self) -> int:
        with self._lock:
            return self._credits_in_window()

    def count(
        self, method: str | None = None, path_prefix: str | None = None, status: int | None = None
    ) -> int:
        """Requests to the org's API; the accounts server's (`/oauth/v2/token`, another
        host) only when `path_prefix` asks for them."""
        total = super().count(method, path_prefix, status)
        if path_prefix is None:
            total -= super().count(method, "/oauth/v2/token", status)
        return total

    def add_contact(
        self,
        last_name: str = "Петров",
        first_name: str = "",
        *,
        phone: str | None = None,
        mobile: str | None = None,
        email: str | None = None,
        telegram_id: str | None = None,
        telegram_username: str | None = None,
        fields: Mapping[str, Any] | None = None,
        modified: float | None = None,
    ) -> str:
        """A contact as a user typed it in the app (searchable at once)."""
        values: dict[str, Any] = {"Last_Name": last_name, "First_Name": first_name or None}
        ids = self.config.contact_fields
        for name, value in (
            ("Phone", phone),
            ("Mobile", mobile),
            ("Email", email),
            (ids.telegram_id, telegram_id),
            (ids.telegram_username, telegram_username),
        ):
            if name and value is not None:
                values[name] = value
        values.update(fields or {})
        return self._insert_direct("Contacts", values, modified)

    def add_deal(
        self,
        contact_id: str | None = None,
        *,
        name: str = "Сделка",
        pipeline: str | None = None,
        stage: str = "В работе",
        amount: float = 0,
        fields: Mapping[str, Any] | None = None,
        modified: float | None = None,
    ) -> str:
        values: dict[str, Any] = {
            "Deal_Name": name,
            "Pipeline": pipeline or next(iter(self.org.pipelines)),
            "Stage": stage,
            "Amount": amount,
            "Closing_Date": "2025-01-31",
        }
        if contact_id is not None:
            values["Contact_Name"] = {"id": contact_id}
        values.update(fields or {})
        return self._insert_direct("Deals", values, modified)

    def move_deal(
        self,
        deal_id: str,
        *,
        stage: str | None = None,
        pipeline: str | None = None,
        contact_id: str | None = None,
        deleted: bool | None = None,
    ) -> None:
        """What a user does in the app: move the stage, relink, delete."""
        with self._lock:
            rec = self.records["Deals"][deal_id]
            changes: dict[str, Any] = {}
            if stage is not None:
                changes["Stage"] = stage
            if pipeline is not None:
                changes["Pipeline"] = pipeline
            if contact_id is not None:
                changes["Contact_Name"] = {"id": contact_id}
            checked = self._check("Deals", changes, creating=False)
            rec.values.update(checked)
            if deleted is not None:
                rec.deleted = deleted
            rec.modified = self.clock()

    def add_company(self, name: str, inn: str = "", **fields: Any) -> str:
        """An account as a user typed it in the app, its INN in the configured field."""
        values: dict[str, Any] = {"Account_Name": name, **fields}
        if inn:
            values[self.config.order_fields.company_inn or ACCOUNT_INN] = inn
        return self._insert_direct("Accounts", values, None)

    def companies(self) -> list[dict[str, Any]]:
        return self._listed("Accounts")

    def add_note(self, deal_id: str, text: str, title: str = "") -> str:
        values = {"Note_Title": title, "Note_Content": text, "Parent_Id": {"id": deal_id}}
        return self._insert_direct("Notes", values, None)

    def contact(self, record_id: str) -> dict[str, Any]:
        with self._lock:
            return dict(self.records["Contacts"][record_id].values)

    def deal(self, record_id: str) -> dict[str, Any]:
        with self._lock:
            return dict(self.records["Deals"][record_id].values)

    def contacts(self) -> list[dict[str, Any]]:
        return self._listed("Contacts")

    def deals(self) -> list[dict[str, Any]]:
        return self._listed("Deals")

    def _listed(self, module: str) -> list[dict[str, Any]]:
        with self._lock:
            return [{"id": r.id, **r.values} for r in self._live(module)]

    def notes(self, deal_id: str) -> list[str]:
        with self._lock:
            return [str(r.values.get("Note_Content") or "") for r in self._notes_of(deal_id)]

    def _insert_direct(self, module: str, values: dict[str, Any], modified: float | None) -> str:
        with self._lock:
            rec = self._stored(module, self._check(module, values, creating=module != "Notes"))
            rec.modified = rec.modified if modified is None else modified
            return rec.id

    def _stored(self, module: str, values: dict[str, Any], lag: float | None = None) -> Rec:
        """A new record, searchable `lag` seconds from now (None: from the start)."""
        now = self.clock()
        rec = Rec(str(next(self._ids)), module, values, now, now, 0.0 if lag is None else now + lag)
        self.records[module][rec.id] = rec
        return rec

    def _live(self, module: str) -> list[Rec]:
        return [rec for rec in self.records[module].values() if not rec.deleted]

    def _live_one(self, module: str, record_id: str) -> Rec | None:
        rec = self.records.get(module, {}).get(record_id)
        return None if rec is None or rec.deleted else rec

    def _notes_of(self, deal_id: str) -> list[Rec]:
        return [
            r for r in self._live("Notes") if (r.values.get("Parent_Id") or {}).get("id") == deal_id
        ]

    def _check(self, module: str, record: Any, *, creating: bool, index: int = 0) -> dict[str, Any]:
        checked = self.org.check_record(
            module, record, creating=creating, exists=self._exists, index=index
        )
        if module == "Deals":
            self._check_stage(checked, creating=creating, index=index)
        return checked

    def _check_stage(self, values: dict[str, Any], *, creating: bool, index: int) -> None:
        pipeline = values.get("Pipeline")
        if creating and not pipeline:
            raise RecordError.missing("Pipeline", index)
        stage = values.get("Stage")
        if pipeline and stage:
            maps = next(
                (p["maps"] for p in self.org.pipelines_json() if p["display_value"] == pipeline), []
            )
            if stage not in {m["display_value"] for m in maps}:
                raise RecordError("INVALID_DATA", "invalid data", "Stage", f"$.data[{index}].Stage")

    def _exists(self, module: str, record_id: str) -> bool:
        return self._live_one(module, record_id) is not None

    # ---- the gate: hosts, credentials, credits, concurrency -----------------------------

    async def handle(self, request: FakeRequest) -> FakeResponse:
        # The accounts server is not the org's API: its calls hold no concurrency.
        units = 0 if request.path == "/oauth/v2/token" else 1
        units = 5 if request.path.endswith("/__composite_requests") else units
        with self._lock:
            self._inflight += units
            self.hosts.append(request.origin)
        try:
            return await super().handle(request)
        finally:
            with self._lock:
                self._inflight -= units

    def _take_fault(self, request: FakeRequest) -> Fault | None:
        """Faults are the org's API's trouble: the accounts server (another host) meets
        only those aimed at its path."""
        if request.path == "/oauth/v2/token":
            with self._lock:
                for fault in self._faults:
                    aimed = bool(fault.path_prefix) and fault.matches(request.method, request.path)
                    if aimed:
                        self._faults.remove(fault)
                        return fault
            return None
        return super()._take_fault(request)

    def authorise(self, request: FakeRequest) -> FakeResponse | None:
        if request.path == "/oauth/v2/token":
            if self.check_hosts and request.origin != self.accounts_url:
                return FakeResponse(200, {"error": "invalid_client"})
            return None
        if self.check_hosts and request.origin != self.api_domain:
            return _unauthorised("INVALID_TOKEN", "invalid oauth token")
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme != "Zoho-oauthtoken" or not token:
            return _unauthorised("AUTHENTICATION_FAILURE", "Authentication failed")
        if self.tokens.access_problem(token) is not None:
            return _unauthorised("INVALID_TOKEN", "invalid oauth token")
        if self._inflight > self.concurrency:
            return self._limited("the concurrency limit of the org is exceeded")
        cost = self._cost(request)
        if self._credits_in_window() + cost > self.daily_credits:
            return self._limited("the API credits of the last 24 hours are used up")
        self._spent.append((self.clock(), cost))
        return None

    def _limited(self, message: str) -> FakeResponse:
        self.throttled += 1
        response = zoho_error(429, "TOO_MANY_REQUESTS", message).response
        if self.retry_after is not None:
            response.headers["retry-after"] = str(self.retry_after)
        return response

    def _too_many(self) -> FakeResponse:
        return self._limited("too many requests")

    def _credits_in_window(self) -> int:
        horizon = self.clock() - DAY
        while self._spent and self._spent[0][0] <= horizon:
            self._spent.popleft()
        return sum(cost for _, cost in self._spent)

    def _cost(self, request: FakeRequest) -> int:
        body = _json_or_none(request.body)
        if request.path.endswith("/coql"):
            limit = _coql_limit(body)
            return 1 if limit <= 200 else 2 if limit <= 1000 else 3
        if request.method in ("POST", "PUT") and request.path.rstrip("/").count("/") == 3:
            records = body.get("data") if isinstance(body, dict) else None
            return max(1, math.ceil(len(records) / 10)) if isinstance(records, list) else 1
        return 1

    # ---- routes: records ------------------------------------------------------------------

    def _get_record(self, request: FakeRequest, module: str, record_id: str) -> FakeResponse:
        rec = self._live_one(module, record_id)
        if not record_id.isdigit():
            raise _invalid_id(record_id)
        if rec is None:
            return FakeResponse(204)
        return FakeResponse(200, {"data": [self._record_json(rec, _field_list(request))]})

    def _create_records(self, request: FakeRequest, module: str) -> FakeResponse:
        records = _data_of(request.json())
        items: list[JSONDict] = []
        for index, record in enumerate(records):
            try:
                if module == "Notes":
                    checked = self._check_note(record, index)
                else:
                    checked = self._check(module, record, creating=True, index=index)
            except RecordError as error:
                items.append(error.json())
                continue
            rec = self._stored(module, checked, self.index_lag)
            items.append(_success(rec, "record added", self._time(rec.created)))
        return _write_answer(items, created=True)

    def _update_record(self, request: FakeRequest, module: str, record_id: str) -> FakeResponse:
        records = _data_of(request.json())
        if len(records) != 1:
            raise zoho_error(
                400, "INVALID_DATA", "one record is updated by id", {"api_name": "data"}
            )
        rec = self._live_one(module, record_id)
        if rec is None:
            error = RecordError(
                "INVALID_DATA", "the id given seems to be invalid", "id", "$.data[0].id"
            )
            return _write_answer([error.json()], created=False)
        try:
            checked = self._check(module, records[0], creating=False)
            if module == "Deals":
                merged = {**rec.values, **checked}
                self._check_stage(merged, creating=False, index=0)
        except RecordError as error:
            return _write_answer([error.json()], created=False)
        rec.values.update(checked)
        rec.modified = self.clock()
        return _write_answer(
            [_success(rec, "record updated", self._time(rec.modified))], created=False
        )

    def _check_note(self, record: Any, index: int) -> dict[str, Any]:
        if not isinstance(record, dict):
            raise RecordError("INVALID_DATA", "invalid data", "data", f"$.data[{index}]")
        parent = record.get("Parent_Id")
        module = record.get("$se_module")
        if isinstance(parent, dict):
            module = ((parent.get("module") or {}).get("api_name")) or module
            parent = parent.get("id")
        if not parent or not module:
            raise RecordError.missing("Parent_Id", index)
        if module not in ("Contacts", "Deals") or not self._exists(module, str(parent)):
            message = "the related id given seems to be invalid"
            raise RecordError("INVALID_DATA", message, "Parent_Id", f"$.data[{index}].Parent_Id")
        if not isinstance(record.get("Note_Content"), str) or not record["Note_Content"]:
            raise RecordError.missing("Note_Content", index)
        rest = {k: v for k, v in record.items() if k != "Parent_Id"}
        checked = self.org.check_record(
            "Notes", rest, creating=False, exists=self._exists, index=index
        )
        checked["Parent_Id"] = {"id": str(parent), "module": {"api_name": module}}
        return checked

    def _deal_notes(self, request: FakeRequest, deal_id: str) -> FakeResponse:
        if not self._exists("Deals", deal_id):
            raise _invalid_id(deal_id)
        return self._page(request, self._notes_of(deal_id), _field_list(request))

    # ---- routes: search and COQL ------------------------------------------------------------

    def _search(self, request: FakeRequest, module: str) -> FakeResponse:
        ways = [name for name in ("criteria", "email", "phone", "word") if request.one(name)]
        if len(ways) != 1:
            raise zoho_error(
                400,
                "REQUIRED_PARAM_MISSING",
                "one of the expected parameter is missing",
                {"param": "criteria, email, phone or word"},
            )
        kind = self.org.field_type(module)
        way, value = ways[0], request.one(ways[0])
        try:
            if way == "criteria":
                node = parse_criteria(value)
                check_criteria(node, kind)
            else:
                types = {
                    "email": ("email",),
                    "phone": ("phone",),
                    "word": ("text", "email", "phone"),
                }
                names = [n for n, f in self.org.fields[module].items() if f.data_type in types[way]]
                criteria = "(" + "or".join(f"({n}:equals:{_escape(value)})" for n in names) + ")"
                node = parse_criteria(criteria if len(names) > 1 else criteria[1:-1])
        except QueryError as error:
            raise zoho_error(400, error.code, error.message, error.details) from error
        now = self.clock()
        found = [
            rec
            for rec in self._live(module)
            if rec.searchable_from <= now and matches_criteria(node, rec.values, kind)
        ]
        return self._page(request, found, _field_list(request), max_total=2000)

    def _coql(self, request: FakeRequest) -> FakeResponse:
        body = request.json()
        text = body.get("select_query") if isinstance(body, dict) else None
        if not isinstance(text, str):
            raise zoho_error(
                400, "REQUIRED_PARAM_MISSING", "select_query is missing", {"param": "select_query"}
            )
        try:
            query = parse_coql(text)
        except QueryError as error:
            raise zoho_error(400, error.code, error.message, error.details) from error
        if query.module not in ("Contacts", "Deals", "Accounts"):
            raise zoho_error(400, "INVALID_QUERY", "invalid module", {"module": query.module})
        kind = self.org.field_type(query.module)
        for name in [*query.fields, *coql_fields(query.where), *(n for n, _ in query.order_by)]:
            if name not in ("id", "Created_Time", "Modified_Time") and kind(name) is None:
                raise zoho_error(400, "INVALID_QUERY", "invalid column", {"column_name": name})
        if getattr(request, "in_composite", False) and query.limit > COMPOSITE_READ_LIMIT:
            raise zoho_error(
                400, "LIMIT_EXCEEDED", "a composite sub-request reads at most 25 records"
            )
        rows = [
            rec for rec in self._live(query.module) if coql_matches(query.where, self._values(rec))
        ]
        for name, descending in reversed(query.order_by):
            rows.sort(
                key=lambda rec, n=name: _sort_key(self._values(rec).get(n), rec, n),
                reverse=descending,
            )
        chunk = rows[query.offset : query.offset + query.limit]
        if not chunk:
            return FakeResponse(204)
        data = [self._coql_row(rec, query.fields) for rec in chunk]
        more = query.offset + query.limit < len(rows)
        return FakeResponse(200, {"data": data, "info": {"count": len(data), "more_records": more}})

    # ---- routes: metadata ---------------------------------------------------------------------

    def _layouts(self, request: FakeRequest) -> FakeResponse:
        _module_param(request)
        layout = {
            "id": self.org.layout_id,
            "name": self.org.layout_name,
            "display_label": self.org.layout_name,
            "status": "active",
            "visible": True,
        }
        return FakeResponse(200, {"layouts": [layout]})

    def _pipelines(self, request: FakeRequest) -> FakeResponse:
        if request.one("layout_id") != self.org.layout_id:
            raise zoho_error(400, "INVALID_DATA", "invalid layout id", {"param_name": "layout_id"})
        return FakeResponse(200, {"pipeline": self.org.pipelines_json()})

    def _fields(self, request: FakeRequest) -> FakeResponse:
        module = _module_param(request)
        return FakeResponse(200, {"fields": self.org.fields_json(module)})

    # ---- routes: composite ----------------------------------------------------------------------

    def _composite(self, request: FakeRequest) -> FakeResponse:
        subs, rollback = _check_composite(request.json())
        snapshot = copy.deepcopy(self.records) if rollback else None
        answers: dict[str, Any] = {}
        items: list[JSONDict] = []
        failed_at: int | None = None
        for index, sub in enumerate(subs):
            try:
                resolved = _resolve(sub, answers)
            except _Unresolved as problem:
                where = f"$.__composite_requests[{index}]"
                details = {"api_name": "uri", "json_path": where, "reference": problem.reference}
                items.append(zoho_item("INVALID_REFERENCE", "invalid reference", details))
                failed_at = index if failed_at is None else failed_at
                continue
            response = self._sub_request(resolved, request)
            if sub.get("sub_request_id"):
                answers[sub["sub_request_id"]] = response.body
            items.append(self._sub_item(response))
            if response.status >= 400 and failed_at is None:
                failed_at = index
            if rollback and failed_at is not None:
                break
        if rollback and failed_at is not None and snapshot is not None:
            self.records = snapshot
            details = {"rollbacked_by_sub_request_index": failed_at}
            rolled = [zoho_item("ROLLBACK_PERFORMED", "rollback performed", details) for _ in subs]
            rolled[failed_at] = items[failed_at]
            return FakeResponse(400, {"__composite_requests": rolled})
        if rollback:
            self._spent.append((self.clock(), 1))  # a composite that stayed applied costs two
        return FakeResponse(200 if failed_at is None else 207, {"__composite_requests": items})

    def _sub_item(self, response: FakeResponse) -> JSONDict:
        answer = {
            "headers": {"content-type": self.success_content_type},
            "body": response.body,
            "status_code": response.status,
        }
        message = "composite sub request executed successfully"
        return zoho_item("SUCCESS", message, {"response": answer}, "success")

    def _sub_request(self, sub: JSONDict, outer: FakeRequest) -> FakeResponse:
        params = sub.get("params") or {}
        path = urlsplit(sub["uri"]).path
        query = [(str(k), str(v)) for k, v in params.items()] + parse_qsl(
            urlsplit(sub["uri"]).query
        )
        body = sub.get("body")
        inner = FakeRequest(
            sub["method"],
            path,
            query,
            dict(outer.headers),
            b"" if body is None else json.dumps(body).encode(),
            outer.origin,
        )
        inner.in_composite = True  # type: ignore[attr-defined]
        if sub["method"] in ("POST", "PUT") and isinstance(body, dict):
            data = body.get("data")
            if isinstance(data, list) and len(data) > 1:
                message = "a composite sub-request writes one record"
                return zoho_error(400, "LIMIT_EXCEEDED", message, {"limit": 1}).response
        if (
            path.endswith("/search")
            and int(dict(query).get("per_page", "200") or 200) > COMPOSITE_READ_LIMIT
        ):
            message = "a composite sub-request reads at most 25 records"
            details = {"limit": COMPOSITE_READ_LIMIT}
            return zoho_error(400, "LIMIT_EXCEEDED", message, details).response
        for method, pattern, handler in self.routes:
            match = pattern.fullmatch(path)
            if (
                match is None
                or method != sub["method"]
                or path.endswith(("/__composite_requests", "/oauth/v2/token"))
            ):
                continue
            try:
                return handler(inner, *match.groups())
            except ApiError as error:
                return error.response
        message = "Please check if the URL trying to access is a correct one"
        return zoho_error(404, "INVALID_URL_PATTERN", message).response

    # ---- routes: OAuth -----------------------------------------------------------------------

    def _token(self, request: FakeRequest) -> FakeResponse:
        form = dict(request.query)
        if request.body:
            form.update(parse_qsl(request.body.decode()))
        now = self.monotonic()
        while self._token_window and self._token_window[0] <= now - 60:
            self._token_window.popleft()
        if len(self._token_window) >= self.token_requests_per_minute:
            # What Zoho's accounts server answers to a burst of token requests.
            return FakeResponse(
                400,
                {
                    "error_description": "You have made too many requests continuously."
                    " Please try again after some time.",
                    "error": "Access Denied",
                    "status": "failure",
                },
            )
        self._token_window.append(now)
        if (
            form.get("client_id") != self.client_id
            or form.get("client_secret") != self.client_secret
        ):
            return FakeResponse(200, {"error": "invalid_client"})
        grant = form.get("grant_type")
        refresh: str | None = None
        if grant == "authorization_code":
            code = form.get("code", "")
            if self._code_expiry.get(code, float("inf")) <= self.clock():
                self.tokens.codes.discard(code)
            exchanged = self.tokens.exchanged(code)
            if exchanged is None:
                return FakeResponse(200, {"error": "invalid_code"})
            access, refresh = exchanged
        elif grant == "refresh_token":
            pair = self.tokens.refreshed(form.get("refresh_token", ""))
            if isinstance(pair, str):
                return FakeResponse(200, {"error": "invalid_code"})
            access = pair[0]
        else:
            return FakeResponse(200, {"error": "unsupported_grant_type"})
        answer: JSONDict = {
            "access_token": access,
            "scope": "ZohoCRM.modules.ALL ZohoCRM.settings.ALL ZohoCRM.coql.READ",
            "api_domain": self.api_domain,
            "token_type": "Bearer",
            "expires_in": self.access_ttl,
        }
        if refresh is not None:
            answer["refresh_token"] = refresh
        return FakeResponse(200, answer)

    # ---- rendering ---------------------------------------------------------------------------

    def _time(self, seconds: float) -> str:
        return datetime.fromtimestamp(int(seconds), self.zone).isoformat()

    def _values(self, rec: Rec) -> dict[str, Any]:
        return {
            **rec.values,
            "id": rec.id,
            "Modified_Time": self._time(rec.modified),
            "Created_Time": self._time(rec.created),
        }

    def _record_json(self, rec: Rec, fields: list[str] | None) -> JSONDict:
        out: JSONDict = {"id": rec.id}
        defs = self.org.fields[rec.module]
        for name, definition in defs.items():
            if fields is not None and name not in fields:
                continue
            value = rec.values.get(name)
            if definition.data_type == "lookup" and isinstance(value, dict):
                value = {
                    "name": self._lookup_name(definition.lookup_module, value["id"]),
                    "id": value["id"],
                }
            if name == "Pipeline" and value is not None:
                value = {"name": value, "id": self.org.pipelines.get(value)}
            if name == "Full_Name" and rec.module == "Contacts":
                value = _full_name(rec.values)
            if (
                rec.module == "Notes"
                and name == "Parent_Id"
                and isinstance(rec.values.get(name), dict)
            ):
                value = {
                    "id": rec.values[name]["id"],
                    "module": rec.values[name].get("module", {"api_name": "Deals"}),
                }
            out[name] = value
        if fields is None or "Modified_Time" in fields:
            out["Modified_Time"] = self._time(rec.modified)
        if fields is None or "Created_Time" in fields:
            out["Created_Time"] = self._time(rec.created)
        if fields is None:
            out["Owner"] = dict(OWNER)
        return out

    def _coql_row(self, rec: Rec, fields: list[str]) -> JSONDict:
        values = self._values(rec)
        row: JSONDict = {"id": rec.id}
        for name in fields:
            value = values.get(name)
            definition = self.org.fields[rec.module].get(name)
            if (
                definition is not None
                and definition.data_type == "lookup"
                and isinstance(value, dict)
            ):
                value = {"id": value["id"]}
            row[name] = value
        return row

    def _lookup_name(self, module: str, record_id: str) -> str:
        rec = self.records.get(module, {}).get(record_id)
        if rec is None:
            return ""
        values = rec.values
        if module == "Contacts":
            return _full_name(values)
        if module == "Accounts":
            return str(values.get("Account_Name") or "")
        return str(values.get("Deal_Name") or "")

    def _page(
        self, request: FakeRequest, recs: list[Rec], fields: list[str] | None, max_total: int = 0
    ) -> FakeResponse:
        per_page = _int_param(request, "per_page", 200)
        page = _int_param(request, "page", 1)
        if not 1 <= per_page <= 200 or page < 1:
            raise zoho_error(400, "INVALID_DATA", "invalid data", {"param_name": "per_page"})
        if max_total and page * per_page > max_total:
            raise zoho_error(400, "LIMIT_EXCEEDED", f"a search reads at most {max_total} records")
        chunk = recs[(page - 1) * per_page : page * per_page]
        if not chunk:
            return FakeResponse(204)
        more = page * per_page < len(recs)
        info = {"per_page": per_page, "count": len(chunk), "page": page, "more_records": more}
        return FakeResponse(
            200, {"data": [self._record_json(rec, fields) for rec in chunk], "info": info}
        )


def _check_composite(body: Any) -> tuple[list[JSONDict], bool]:
    """The sub-requests and `rollback_on_fail`, or the 400 Zoho answers the wrapper with."""
    subs = body.get("__composite_requests") if isinstance(body, dict) else None
    where = "$.__composite_requests"
    if not isinstance(subs, list) or not subs:
        raise _invalid(
            "MANDATORY_NOT_FOUND", "required field not found", "__composite_requests", where
        )
    if len(subs) > 5:
        message = "the number of sub-requests exceeds the limit"
        raise _invalid("INVALID_DATA", message, "__composite_requests", where, maximum_length=5)
    rollback = bool(body.get("rollback_on_fail"))
    parallel = body.get("parallel_execution", body.get("concurrent_execution"))
    if rollback and parallel is True:
        ambiguity = [{"api_name": "rollback_on_fail", "json_path": "$.rollback_on_fail"}]
        details = {"ambiguity_due_to": ambiguity}
        raise zoho_error(400, "AMBIGUITY_DURING_PROCESSING", "rollback_on_fail", details)
    seen: set[str] = set()
    for index, sub in enumerate(subs):
        _check_sub_request(f"{where}[{index}]", sub, seen)
    return subs, rollback


def _check_sub_request(where: str, sub: Any, seen: set[str]) -> None:
    def invalid(
        api_name: str, code: str = "INVALID_DATA", message: str = "invalid data", **extra: Any
    ) -> ApiError:
        return _invalid(code, message, api_name, f"{where}.{api_name}", **extra)

    if not isinstance(sub, dict):
        raise _invalid("INVALID_DATA", "invalid data", "__composite_requests", where)
    sub_id = sub.get("sub_request_id")
    if sub_id is not None and (not isinstance(sub_id, str) or not SUB_ID.fullmatch(sub_id)):
        raise invalid("sub_request_id", regex=SUB_ID.pattern)
    if sub_id in seen:
        raise invalid("sub_request_id", "DUPLICATE_DATA", "duplicate data")
    if sub_id:
        seen.add(sub_id)
    if sub.get("method") not in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        raise invalid("method")
    uri = sub.get("uri")
    if not isinstance(uri, str) or not SUB_URI.fullmatch(uri):
        raise invalid("uri", regex=SUB_URI.pattern)
    if "__composite_requests" in uri:
        raise invalid("uri", "NOT_SUPPORTED", "the API is not supported in a composite request")
    restricted = ["authorization", "x-crm-org"]
    if {str(k).lower() for k in sub.get("headers") or {}} & set(restricted):
        raise invalid("headers", message="restricted headers", restricted_headers=restricted)


def _invalid(code: str, message: str, api_name: str, json_path: str, **extra: Any) -> ApiError:
    return zoho_error(400, code, message, {"api_name": api_name, "json_path": json_path, **extra})


def _invalid_id(record_id: str) -> ApiError:
    return zoho_error(400, "INVALID_DATA", "the id given seems to be invalid", {"id": record_id})


class _Unresolved(Exception):
    def __init__(self, reference: str) -> None:
        super().__init__(reference)
        self.reference = reference


def _resolve(sub: JSONDict, answers: Mapping[str, Any]) -> JSONDict:
    """The sub-request with every `@{id:$.path}` replaced by the value it names."""

    def value_at(reference: str, sub_id: str, path: str) -> Any:
        if sub_id not in answers or answers[sub_id] is None:
            raise _Unresolved(reference)
        node: Any = answers[sub_id]
        for part in re.findall(r"\.([A-Za-z0-9_$]+)|\[(\d+)\]", path[1:]):
            key, index = part
            try:
                node = node[key] if key else node[int(index)]
            except (KeyError, IndexError, TypeError):
                raise _Unresolved(reference) from None
        return node

    def walk(node: Any) -> Any:
        if isinstance(node, str):
            whole = REFERENCE.fullmatch(node)
            if whole:
                return value_at(node, whole.group(1), whole.group(2))
            return REFERENCE.sub(lambda m: str(value_at(m.group(0), m.group(1), m.group(2))), node)
        if isinstance(node, list):
            return [walk(item) for item in node]
        if isinstance(node, dict):
            return {key: walk(value) for key, value in node.items()}
        return node

    return {
        key: walk(value) if key in ("uri", "params", "body") else value
        for key, value in sub.items()
    }


def _module_param(request: FakeRequest) -> str:
    module = request.one("module")
    if module not in MODULES:
        message = "the module name given seems to be invalid"
        raise zoho_error(400, "INVALID_MODULE", message, {"module": module})
    return module


def _unauthorised(code: str, message: str) -> FakeResponse:
    return zoho_error(401, code, message).response


def _success(rec: Rec, message: str, stamp: str) -> JSONDict:
    details = {
        "Modified_Time": stamp,
        "Modified_By": {"name": OWNER["name"], "id": OWNER["id"]},
        "Created_Time": stamp,
        "id": rec.id,
        "Created_By": {"name": OWNER["name"], "id": OWNER["id"]},
    }
    return zoho_item("SUCCESS", message, details, "success")


def _write_answer(items: list[JSONDict], *, created: bool) -> FakeResponse:
    ok = sum(1 for item in items if item["status"] == "success")
    if ok == len(items):
        return FakeResponse(201 if created else 200, {"data": items})
    return FakeResponse(400 if ok == 0 else 207, {"data": items})


def _data_of(body: Any) -> list[Any]:
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list) or not data:
        raise _invalid("MANDATORY_NOT_FOUND", "required field not found", "data", "$.data")
    if len(data) > 100:
        details = {"api_name": "data", "limit": 100}
        raise zoho_error(400, "LIMIT_EXCEEDED", "at most 100 records per call", details)
    return data


def _field_list(request: FakeRequest) -> list[str] | None:
    raw = request.one("fields")
    return [name.strip() for name in raw.split(",") if name.strip()] if raw else None


def _int_param(request: FakeRequest, name: str, default: int) -> int:
    raw = request.one(name)
    if not raw:
        return default
    if not raw.isdigit():
        raise zoho_error(400, "INVALID_DATA", "invalid data", {"param_name": name})
    return int(raw)


def _full_name(values: Mapping[str, Any]) -> str:
    return " ".join(p for p in (values.get("First_Name"), values.get("Last_Name")) if p)


def _escape(value: str) -> str:
    return re.sub(r"([(),\\])", r"\\\1", value)


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except ValueError:
        return None


def _coql_limit(body: Any) -> int:
    text = body.get("select_query") if isinstance(body, dict) else None
    match = re.search(r"\blimit\s+(\d+)(?:\s*,\s*(\d+))?", str(text or ""), re.IGNORECASE)
    if match is None:
        return 200
    return int(match.group(2) or match.group(1))


def _sort_key(value: Any, rec: Rec, name: str) -> tuple[int, Any]:
    if name == "Modified_Time":
        return (0, rec.modified)
    if name == "Created_Time":
        return (0, rec.created)
    if value is None:
        return (1, "")
    if isinstance(value, int | float):
        return (0, float(value))
    return (0, str(value).casefold())
