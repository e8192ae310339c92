"""A stateful fake of the Bitrix24 cloud REST API: one portal, its contacts, deals and
timeline comments, reached by an inbound webhook or with OAuth tokens.

It answers like the real API where the bridge depends on it:
- methods at `/rest/USER/CODE/{method}[.json]` (webhook) or `/rest/{method}[.json]` with
  an `auth` parameter (OAuth), GET with PHP-style query parameters or POST with JSON;
  answers `{"result": …, "total", "next", "time"}`, refusals `{"error",
  "error_description"}` (see `bitrix24_portal` for what is refused);
- `batch`: up to 50 commands run in order (each one past the 50th answers
  ERROR_BATCH_LENGTH_EXCEEDED in `result_error`), `$result[key]…` references resolved as
  PHP does, per-command errors in `result_error` and no `result` for them, a true `halt`
  (PHP's `(bool)`) stops at the first, the commands after it neither run nor answer;
  PHP's empty arrays come as `[]`; one batch is one request for the leaky bucket
  (CRestProvider::methodsBatch runs the commands inside the one request);
- `crm.duplicate.findbycomm` over an index of phones reduced to their digits (so
  "+7 999 123-45-67" and "79991234567" meet, "8999…" does not) and lower-cased e-mails;
  `crm.contact.list` / `crm.deal.list` filters, order, select (`UF_*`, multifields only
  when named), 50 per page; deal CONTACT_ID is the primary contact only, while
  `crm.item.list` (deals) filters `contactIds` over every bound contact;
- stage semantics P / S / F per pipeline; a stage not of the deal's pipeline is refused;
- the leaky bucket: each /rest/ request adds one, `drain_per_second` leave per second,
  past `bucket_size` the answer is 503 QUERY_LIMIT_EXCEEDED (not applied);
  `block_method(name)` answers 429 OPERATION_TIME_LIMIT for one method;
- webhooks (`webhook_url()`), OAuth access tokens expiring by `clock` (401
  expired_token) and single-use refresh tokens at `/oauth/token/`; `drop_scope()` makes
  every method answer 403 insufficient_scope, `deny_user_access()` 403 user_access_error.

Orders:
- companies: `crm.company.add` / `crm.company.list` (TITLE, PHONE, EMAIL; filters as
  contacts'); the INN lives in requisites, not on the company: `crm.requisite.add`
  (ENTITY_TYPE_ID 4 = company, ENTITY_ID, PRESET_ID, NAME required) and
  `crm.requisite.list` filtering RQ_INN [dev.1c-bitrix.ru rest_help crm/requisite
  crm_requisite_list.php, crm_requisite_add.php];
- bindings: COMPANY_ID of crm.deal.add / update, COMPANY_IDS of crm.contact.add, and
  `crm.contact.company.add`, which answers `false` for a binding that exists and keeps
  it once [b24-rest-docs crm/contacts/company/crm-contact-company-add.md];
- `crm.deal.productrows.set` replaces every row of the deal ("Товарные позиции сделки,
  существующие до момента вызова метода, будут заменены новыми") and recomputes the
  deal's amount from them unless the amount is manual (IS_MANUAL_OPPORTUNITY = Y)
  [dev.1c-bitrix.ru rest_help crm/cdeals/crm_deal_productrows_set.php];
  `crm.deal.productrows.get` reads them;
- crm.deal.update moves a deal within its pipeline only (a stage of another pipeline is
  refused; CATEGORY_ID is not writable there); `crm.item.update` (entityTypeId 2) takes
  `categoryId` with `stageId` and moves it to another pipeline, camelCase native fields,
  user fields by UF_ name with `useOriginalUfNames=Y`, unknown fields ignored
  [b24-rest-docs universal/crm-item-update.md]; LOSE (semantic F) is lost, WON (S) won.

Set up and inspect (no call logged): `add_company`, `companies()`, `contact_companies`,
`deal_rows`, `add_contact`, `add_deal`, `move_deal`,
`delete_deal`, `contacts()`, `contact(id)`, `deals()`, `deal(id)`, `notes(deal_id)`,
`deal_field`, `contact_field`, `methods` (every method run, batch commands included).
The HTTP side (`transport()`, `calls`, `count`, faults, `latency`) is `FakeService`.
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from bridge.settings import CrmConfig, load_file_config
from tests.fakes.bitrix24_portal import (
    DEAL_NATIVE,
    BitrixError,
    CommentRec,
    CompanyRec,
    ContactRec,
    DealRec,
    Portal,
    RequisiteRec,
    items,
    matches,
    ordered,
    page,
    param,
    parse_php,
    selected,
    substitute,
)
from tests.fakes.crm_events import CrmRequest, bitrix24_deal_event
from tests.fakes.service import (
    FakeRequest,
    FakeResponse,
    FakeService,
    OAuthFake,
    telegram_fields,
)

EXAMPLE_CONFIG = Path(__file__).resolve().parents[2] / "etc" / "crm-bitrix24.example.toml"
REST_PATH = re.compile(r"/rest/(?:(\d+)/([A-Za-z0-9_]+)/)?([A-Za-z0-9_.]+?)(?:\.json)?")
TOKEN_PATH = re.compile(r"/oauth/token/?")
Handler = Callable[[Mapping[str, Any]], tuple[Any, dict[str, Any]]]


def example_config(**changes: Any) -> CrmConfig:
    config = load_file_config(EXAMPLE_CONFIG).crm["bitrix24"]
    return config.model_copy(update=changes)


class FakeBitrix24(OAuthFake, FakeService):
    """The portal of `etc/crm-bitrix24.example.toml` (or `config`), empty of data."""

    name = "fake Bitrix24"

    def __init__(
        self,
        config: CrmConfig | None = None,
        *,
        bucket_size: int = 50,
        drain_per_second: float = 2.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        client_id: str = "local.fake",
        client_secret: str = "fake-client-secret",  # noqa: S107
        oauth_ttl: int = 3600,
    ) -> None:
        super().__init__(rate_limit=10**9, monotonic=monotonic)  # the bucket is ours
        self.config = config or example_config()
        self.portal = Portal.from_config(self.config)
        self.bucket_size, self.drain_per_second = bucket_size, drain_per_second
        self._level, self._level_at = 0.0, monotonic()
        self.methods: list[str] = []
        self._contacts: dict[int, ContactRec] = {}
        self._deals: dict[int, DealRec] = {}
        self._comments: list[CommentRec] = []
        self._companies: dict[int, CompanyRec] = {}
        self._requisites: dict[int, RequisiteRec] = {}
        self._webhooks: set[tuple[str, str]] = set()
        # Each refresh spends the refresh token and answers a new one.
        self.oauth_client(clock, client_id, client_secret, oauth_ttl)
        self._blocked: set[str] = set()
        self._denied: tuple[str, str] | None = None  # (code, description) of a 403
        self._ids = {
            kind: itertools.count(start)
            for kind, start in (("c", 101), ("d", 501), ("co", 701), ("rq", 801))
        }
        self._multi_ids = itertools.count(1001)
        self._comment_ids = itertools.count(9001)
        self.routes = [
            *((verb, REST_PATH, self._rest) for verb in ("GET", "POST")),
            *((verb, TOKEN_PATH, self._token) for verb in ("GET", "POST")),
        ]
        self._handlers: dict[str, Handler] = {
            "crm.contact.list": self._contact_list,
            "crm.contact.add": self._contact_add,
            "crm.contact.update": self._contact_update,
            "crm.contact.fields": lambda p: (self._fields(self.portal.contact_fields), {}),
            "crm.duplicate.findbycomm": self._findbycomm,
            "crm.deal.list": self._deal_list,
            "crm.item.list": self._item_list,
            "crm.item.update": self._item_update,
            "crm.deal.get": self._deal_get,
            "crm.deal.add": self._deal_add,
            "crm.deal.update": self._deal_update,
            "crm.deal.fields": lambda p: (self._fields(self.portal.deal_fields), {}),
            "crm.deal.contact.items.get": self._deal_contacts,
            "crm.category.list": self._category_list,
            "crm.status.list": self._status_list,
            "crm.timeline.comment.add": self._comment_add,
            "crm.timeline.comment.list": self._comment_list,
            "crm.company.add": self._company_add,
            "crm.company.list": self._company_list,
            "crm.requisite.add": self._requisite_add,
            "crm.requisite.list": self._requisite_list,
            "crm.contact.company.add": self._contact_company_add,
            "crm.deal.productrows.set": self._rows_set,
            "crm.deal.productrows.get": self._rows_get,
        }

    # ---- credentials and limits -----------------------------------------------------

    def webhook_url(self, portal: str = "https://example.bitrix24.ru", user: int = 1) -> str:
        code = secrets.token_hex(8)
        with self._lock:
            self._webhooks.add((str(user), code))
        return f"{portal}/rest/{user}/{code}/"

    def revoke_webhooks(self) -> None:
        """Every inbound webhook is deleted: its URL answers 401 from now on."""
        with self._lock:
            self._webhooks.clear()

    def drop_scope(self) -> None:
        self._denied = ("insufficient_scope", "The request requires higher privileges")

    def deny_user_access(self) -> None:
        """Every method answers 403 user_access_error: the app is installed, but the admin
        gave only some users access to it [b24-rest-docs _includes/system-errors.md]."""
        self._denied = ("user_access_error", "The user does not have access to the application")

    def block_method(self, method: str, blocked: bool = True) -> None:
        """`method` answers 429 OPERATION_TIME_LIMIT (alone or inside a batch)."""
        with self._lock:
            (self._blocked.add if blocked else self._blocked.discard)(method)

    def fill_bucket(self) -> None:
        """As if other integrations had just used up the portal's request budget."""
        with self._lock:
            self._level, self._level_at = float(self.bucket_size), self.monotonic()

    def authorise(self, request: FakeRequest) -> FakeResponse | None:
        route = REST_PATH.fullmatch(request.path)
        if route is None:
            return None
        now = self.monotonic()
        self._level = max(0.0, self._level - (now - self._level_at) * self.drain_per_second)
        self._level_at = now
        if self._level + 1 > self.bucket_size:
            self.throttled += 1
            return _error(503, "QUERY_LIMIT_EXCEEDED", "Too many requests")
        self._level += 1
        user, code, _ = route.groups()
        if user is not None:
            if (user, code) not in self._webhooks:
                return _error(401, "NO_AUTH_FOUND", "Wrong authorization data")
        else:
            token = str(self._params(request).get("auth") or "")
            problem = self.tokens.access_problem(token)
            if not token:
                return _error(401, "NO_AUTH_FOUND", "Wrong authorization data")
            if problem == "unknown":
                return _error(401, "invalid_token", "The access token provided is invalid.")
            if problem == "expired":
                return _error(401, "expired_token", "The access token provided has expired.")
        if self._denied is not None:
            return _error(403, *self._denied)
        return None

    # ---- inspection and setup -------------------------------------------------------

    def add_contact(
        self,
        name: str = "",
        last_name: str = "",
        *,
        phones: Iterable[str] = (),
        emails: Iterable[str] = (),
        telegram_id: str | None = None,
        telegram_username: str | None = None,
        fields: Mapping[str, Any] | None = None,
    ) -> int:
        """A contact as a manager would have typed it; returns its id."""
        user = dict(fields or {})
        user.update(telegram_fields(self.config, telegram_id, telegram_username))
        with self._lock:
            now = self.clock()
            contact = ContactRec(next(self._ids["c"]), name, last_name, created=now, modified=now)
            contact.phones = [self._multi(value, "WORK") for value in phones]
            contact.emails = [self._multi(value, "WORK") for value in emails]
            contact.user = {
                k: self.portal.user_value(self.portal.contact_fields, k, v) for k, v in user.items()
            }
            self._contacts[contact.id] = contact
            return contact.id

    def add_deal(
        self,
        contact_id: int | None = None,
        *,
        title: str = "Сделка",
        stage_id: str = "NEW",
        opportunity: float = 0,
        fields: Mapping[str, Any] | None = None,
        modified: float | None = None,
        other_contacts: Iterable[int] = (),
        recurring: bool = False,
    ) -> int:
        """A deal in the pipeline of `stage_id`, `contact_id` its primary contact."""
        with self._lock:
            category, stage = self._stage(stage_id)
            now = self.clock()
            deal = DealRec(
                next(self._ids["d"]),
                title,
                category.id,
                stage.id,
                stage.semantic,
                opportunity,
                recurring=recurring,
                created=now,
                modified=now if modified is None else modified,
            )
            deal.contact_ids = [*([contact_id] if contact_id else []), *other_contacts]
            for key, value in (fields or {}).items():
                self._set_deal_field(deal, key, value)
            self._deals[deal.id] = deal
            return deal.id

    def move_deal(self, deal_id: int | str, stage_id: str) -> None:
        """A manager moving the deal, within its pipeline or to another one."""
        with self._lock:
            deal = self._deals[int(deal_id)]
            category, stage = self._stage(stage_id)
            deal.category_id, deal.stage_id, deal.semantic = category.id, stage.id, stage.semantic
            deal.modified = max(self.clock(), deal.modified + 1)

    def add_company(self, title: str, inn: str = "", preset_id: int = 1) -> int:
        """A company as a manager typed it, with a requisite holding `inn` when given."""
        with self._lock:
            company = CompanyRec(next(self._ids["co"]), title, created=self.clock())
            self._companies[company.id] = company
            if inn:
                requisite = RequisiteRec(next(self._ids["rq"]), 4, company.id, preset_id, title)
                requisite.values = {"RQ_INN": inn, "RQ_COMPANY_NAME": title}
                self._requisites[requisite.id] = requisite
            return company.id

    def companies(self) -> list[dict[str, Any]]:
        with self._lock:
            return [c.record() for c in self._companies.values()]

    def requisites(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r.record() for r in self._requisites.values()]

    def contact_companies(self, contact_id: int | str) -> set[int]:
        with self._lock:
            return set(self._contacts[int(contact_id)].company_ids)

    def deal_rows(self, deal_id: int | str) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(row) for row in self._deals[int(deal_id)].rows]

    def move_deal_event(
        self, deal_id: int | str, stage_id: str, *, url: str, application_token: str
    ) -> CrmRequest:
        """A manager moving the deal; the `ONCRMDEALUPDATE` Bitrix24 then posts to `url`
        (only the deal id: the handler reads the stage)."""
        self.move_deal(deal_id, stage_id)
        with self._lock:
            ts = int(self._deals[int(deal_id)].modified)
        return bitrix24_deal_event(url, int(deal_id), application_token=application_token, ts=ts)

    def delete_deal(self, deal_id: int | str) -> None:
        with self._lock:
            del self._deals[int(deal_id)]

    def contacts(self) -> list[dict[str, Any]]:
        with self._lock:
            return [c.record() for c in self._contacts.values()]

    def contact(self, contact_id: int | str) -> dict[str, Any]:
        with self._lock:
            return self._contacts[int(contact_id)].record()

    def deals(self) -> list[dict[str, Any]]:
        with self._lock:
            return [self.deal(deal_id) for deal_id in self._deals]

    def deal(self, deal_id: int | str) -> dict[str, Any]:
        with self._lock:
            deal = self._deals[int(deal_id)]
            return {**deal.record(), "CONTACT_IDS": list(deal.contact_ids)}

    def notes(self, deal_id: int | str) -> list[str]:
        with self._lock:
            return [
                c.comment
                for c in self._comments
                if c.entity_type == "deal" and c.entity_id == int(deal_id)
            ]

    def deal_field(self, deal_id: int | str, field_id: str) -> Any:
        """A stored value: text, float, ISO date/time, item ID or item IDs; None: empty."""
        with self._lock:
            deal = self._deals[int(deal_id)]
            return (
                deal.user.get(field_id) if field_id.startswith("UF_") else deal.native.get(field_id)
            )

    def contact_field(self, contact_id: int | str, field_id: str) -> Any:
        with self._lock:
            contact = self._contacts[int(contact_id)]
            return contact.user.get(field_id, contact.native.get(field_id))

    # ---- dispatch -------------------------------------------------------------------

    def _params(self, request: FakeRequest) -> dict[str, Any]:
        params = parse_php(request.query)
        if request.body:
            if request.headers.get("content-type", "").startswith("application/json"):
                body = json.loads(request.body)
                params.update(body if isinstance(body, dict) else {})
            else:
                params.update(parse_php(parse_qsl(request.body.decode(), keep_blank_values=True)))
        return params

    def _rest(
        self, request: FakeRequest, user: str | None, code: str | None, method: str
    ) -> FakeResponse:
        params = {k: v for k, v in self._params(request).items() if k != "auth"}
        try:
            if method.lower() == "batch":
                return FakeResponse(200, {"result": self._batch(params), "time": self._time()})
            result, extra = self._run(method, params)
        except BitrixError as error:
            return FakeResponse(error.status, error.body())
        return FakeResponse(200, {"result": result, **extra, "time": self._time()})

    def _run(self, method: str, params: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        name = method.lower()
        self.methods.append(name)
        handler = self._handlers.get(name)
        if handler is None:
            raise BitrixError("Method not found!", "ERROR_METHOD_NOT_FOUND", 404)
        if name in self._blocked:
            raise BitrixError(
                "Method is blocked due to operation time limit.", "OPERATION_TIME_LIMIT", 429
            )
        return handler(params)

    def _batch(self, params: Mapping[str, Any]) -> dict[str, Any]:
        # CRestProvider::methodsBatch: `(bool) $arQuery['HALT']`, absent is false.
        halt = _php_bool(param(params, "halt", False))
        commands = param(params, "cmd", {})
        store: dict[str, dict[str, Any]] = {
            k: {} for k in ("result", "next", "total", "time", "error")
        }
        for count, (key, call) in enumerate(
            (commands if isinstance(commands, dict) else {}).items()
        ):
            method, _, query = str(call).partition("?")
            try:
                if count >= 50:
                    raise BitrixError("Max batch length exceeded", "ERROR_BATCH_LENGTH_EXCEEDED")
                if method.lower() == "batch":
                    raise BitrixError(
                        "Method is not allowed for batch usage", "ERROR_BATCH_METHOD_NOT_ALLOWED"
                    )
                sub = substitute(parse_php(parse_qsl(query, keep_blank_values=True)), store)
                result, extra = self._run(method, sub)
            except BitrixError as error:
                store["error"][key] = error.body()
                if halt:
                    break
                continue
            store["result"][key] = result
            for part in ("total", "next"):
                if part in extra:
                    store[part][key] = extra[part]
        return {f"result{'' if k == 'result' else '_' + k}": store[k] or [] for k in store}

    def _time(self) -> dict[str, Any]:
        now = self.clock()
        return {
            "start": now,
            "finish": now,
            "duration": 0.0,
            "operating": 0,
            "operating_reset_at": int(now) + 600,
        }

    # ---- contacts -------------------------------------------------------------------

    def _contact_list(self, params: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        rows = [c.record() for c in self._contacts.values()]
        return _selected_page(params, rows, set(self.portal.contact_fields), ("PHONE", "EMAIL"))

    def _contact_add(self, params: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        fields = _fields_param(params)
        now = self.clock()
        contact = ContactRec(0, created=now, modified=now)
        self._apply_contact(contact, fields)
        contact.id = next(self._ids["c"])
        self._contacts[contact.id] = contact
        return contact.id, {}

    def _contact_of(self, params: Mapping[str, Any]) -> ContactRec:
        contact = self._contacts.get(_int(param(params, "id")))
        if contact is None:
            raise BitrixError("Not found")
        return contact

    def _contact_update(self, params: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        contact = self._contact_of(params)
        self._apply_contact(contact, _fields_param(params))
        contact.modified = self.clock()
        return True, {}

    def _apply_contact(self, contact: ContactRec, fields: Mapping[str, Any]) -> None:
        # Validate everything first: a refused request changes nothing.
        user = self.portal.user_values(self.portal.contact_fields, fields)
        self._merge_multis(contact, fields)
        companies = [
            _int(cid) for cid in items(fields.get("COMPANY_IDS")) or items(fields.get("COMPANY_ID"))
        ]
        if any(cid not in self._companies for cid in companies):
            raise BitrixError(f"Company not found: {companies}")
        if "COMPANY_IDS" in fields:
            contact.company_ids = list(dict.fromkeys(companies))  # the whole set
        elif companies and companies[0] not in contact.company_ids:
            contact.company_ids.insert(0, companies[0])  # COMPANY_ID: the primary one
        contact.name = str(fields.get("NAME", contact.name) or "")
        contact.last_name = str(fields.get("LAST_NAME", contact.last_name) or "")
        contact.native.update({k: fields[k] for k in DEAL_NATIVE if k in fields})
        contact.user.update(user)

    def _merge_multis(self, record: ContactRec | CompanyRec, fields: Mapping[str, Any]) -> None:
        """The PHONE and EMAIL entries of an add or update, merged into `record`'s."""
        for kind, entries in (("PHONE", record.phones), ("EMAIL", record.emails)):
            for entry in items(fields.get(kind)):
                if not isinstance(entry, dict):
                    raise BitrixError(f"{kind}: an array of {{VALUE, VALUE_TYPE}} is expected")
                self._merge_multi(entries, entry)

    def _merge_multi(self, entries: list[dict[str, Any]], entry: Mapping[str, Any]) -> None:
        # No ID: added. With ID: replaced, or removed by DELETE=Y / an empty VALUE.
        existing = next((e for e in entries if str(e["ID"]) == str(entry.get("ID"))), None)
        if existing is None:
            if entry.get("VALUE"):
                entries.append(
                    self._multi(str(entry["VALUE"]), str(entry.get("VALUE_TYPE") or "WORK"))
                )
        elif entry.get("DELETE") == "Y" or not entry.get("VALUE"):
            entries.remove(existing)
        else:
            existing["VALUE"] = str(entry["VALUE"])

    def _multi(self, value: str, value_type: str) -> dict[str, Any]:
        return {"ID": str(next(self._multi_ids)), "VALUE": value, "VALUE_TYPE": value_type}

    def _findbycomm(self, params: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        kind = str(param(params, "type") or "")
        values = items(param(params, "values"))
        if kind not in ("PHONE", "EMAIL"):
            raise BitrixError(f"Communication type '{kind}' is not supported in current context")
        if not values:
            raise BitrixError("Communication values is not defined")
        if len(values) > 20:
            raise BitrixError("Too many values: 20 at most")
        wanted = {_comm_key(kind, str(value)) for value in values}
        found = [
            c.id
            for c in self._contacts.values()
            if any(
                _comm_key(kind, e["VALUE"]) in wanted
                for e in (c.phones if kind == "PHONE" else c.emails)
            )
        ]
        return ({"CONTACT": found[:20]} if found else []), {}

    # ---- deals ----------------------------------------------------------------------

    def _deal_list(self, params: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        rows = [d.record() for d in self._deals.values()]
        return _selected_page(params, rows, set(self.portal.deal_fields))

    def _item_list(self, params: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        """`crm.item.list` of deals (entityTypeId 2): camelCase fields, `contactIds` every
        bound contact (a filter on it matches any of them), `{"items": [...]}`; user
        fields as `ufCrm…` unless `useOriginalUfNames=Y` [b24-rest-docs
        universal/crm-item-list.md, universal/object-fields.md]."""
        if str(param(params, "entityTypeId", "")) != "2":
            raise BitrixError("this fake knows entityTypeId 2 (deals) only")
        original = str(param(params, "useOriginalUfNames", "N")).upper() == "Y"
        user = set(self.portal.deal_fields)
        rows = [_item(d, original) for d in self._deals.values()]
        names = user if original else {_camel_uf(name) for name in user}
        chunk, extra = _listed(params, rows, names, "id")
        wanted = [str(name) for name in items(param(params, "select"))] or ["*"]
        chosen = [
            {k: v for k, v in row.items() if "*" in wanted or k in wanted or k == "id"}
            for row in chunk
        ]
        return {"items": chosen}, extra

    def _item_update(self, params: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        if str(param(params, "entityTypeId", "")) != "2":
            raise BitrixError("this fake knows entityTypeId 2 (deals) only")
        deal = self._deal_of(params)
        fields = _fields_param(params)
        original = str(param(params, "useOriginalUfNames", "N")).upper() == "Y"
        category_id = _int(fields.get("categoryId", deal.category_id))
        category = self.portal.categories.get(category_id)
        if category is None:
            raise BitrixError(f"Category {category_id} is not found")
        stage_id = str(fields.get("stageId") or "")
        if category_id != deal.category_id and not stage_id:
            stage_id = category.stages[0].id  # a new pipeline starts at its first stage
        if stage_id and category.stage(stage_id) is None:
            raise BitrixError(f"Stage {stage_id!r} is not in category {category_id}")
        names = {"title": "TITLE", "opportunity": "OPPORTUNITY", "companyId": "COMPANY_ID"}
        names["isManualOpportunity"] = "IS_MANUAL_OPPORTUNITY"
        translated = {names[k]: v for k, v in fields.items() if k in names}
        for key, value in fields.items():
            if original and key.startswith("UF_"):
                translated[key] = value
            elif not original and key.startswith("ufCrm"):
                translated["UF_CRM_" + key.removeprefix("ufCrm")] = value
        if stage_id:
            translated["STAGE_ID"] = stage_id
        self._apply_deal(deal, translated)
        deal.category_id = category.id
        deal.modified = max(self.clock(), deal.modified + 1)
        return {"item": _item(deal, original)}, {}

    def _deal_get(self, params: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        return self._deal_of(params).record(), {}

    def _deal_contacts(self, params: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        deal = self._deal_of(params)
        return [
            {
                "CONTACT_ID": cid,
                "SORT": 10 * (n + 1),
                "ROLE_ID": 0,
                "IS_PRIMARY": "Y" if n == 0 else "N",
            }
            for n, cid in enumerate(deal.contact_ids)
        ], {}

    def _deal_of(self, params: Mapping[str, Any]) -> DealRec:
        raw = param(params, "id")
        if not str(raw or "").isdigit() or int(str(raw)) <= 0:
            raise BitrixError("ID is not defined or invalid.")
        deal = self._deals.get(int(str(raw)))
        if deal is None:
            raise BitrixError("Not found")
        return deal

    def _deal_add(self, params: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        fields = _fields_param(params)
        category_id = _int(fields.get("CATEGORY_ID", 0))
        category = self.portal.categories.get(category_id)
        if category is None:
            raise BitrixError(f"Category {category_id} is not found")
        stage = category.stage(str(fields.get("STAGE_ID") or category.stages[0].id))
        if stage is None:
            raise BitrixError(f"Stage {fields.get('STAGE_ID')!r} is not in category {category_id}")
        given = items(fields.get("CONTACT_IDS")) or items(fields.get("CONTACT_ID"))
        contact_ids = list(dict.fromkeys(_binding_ids(given)))
        if any(cid not in self._contacts for cid in contact_ids):
            raise BitrixError(f"Contact not found: {contact_ids}")
        now = self.clock()
        deal = DealRec(
            0,
            str(fields.get("TITLE") or ""),
            category.id,
            stage.id,
            stage.semantic,
            created=now,
            modified=now,
        )
        deal.contact_ids = contact_ids
        self._apply_deal(deal, fields)
        deal.id = next(self._ids["d"])
        deal.title = deal.title or f"Сделка #{deal.id}"
        self._deals[deal.id] = deal
        return deal.id, {}

    def _deal_update(self, params: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        deal = self._deal_of(params)
        fields = _fields_param(params)
        if "STAGE_ID" in fields:
            stage = self.portal.categories[deal.category_id].stage(str(fields["STAGE_ID"]))
            if stage is None:
                raise BitrixError(
                    f"Stage {fields['STAGE_ID']!r} is not in category {deal.category_id}"
                )
        self._apply_deal(deal, {k: v for k, v in fields.items() if k != "CATEGORY_ID"})
        deal.modified = max(self.clock(), deal.modified + 1)
        return True, {}

    def _apply_deal(self, deal: DealRec, fields: Mapping[str, Any]) -> None:
        user = self.portal.user_values(self.portal.deal_fields, fields)
        if "OPPORTUNITY" in fields:
            try:
                deal.opportunity = float(str(fields["OPPORTUNITY"]))
            except ValueError:
                raise BitrixError("OPPORTUNITY is not a number") from None
        if "STAGE_ID" in fields:
            _, stage = self._stage(str(fields["STAGE_ID"]))
            deal.stage_id, deal.semantic = stage.id, stage.semantic
        if fields.get("COMPANY_ID"):
            company_id = _int(fields["COMPANY_ID"])
            if company_id not in self._companies:
                raise BitrixError(f"Company {company_id} is not found")
            deal.company_id = company_id
        if "IS_MANUAL_OPPORTUNITY" in fields:
            deal.manual_opportunity = str(fields["IS_MANUAL_OPPORTUNITY"]).upper() == "Y"
        deal.title = str(fields.get("TITLE", deal.title))
        deal.currency = str(fields.get("CURRENCY_ID", deal.currency))
        deal.native.update({k: fields[k] for k in DEAL_NATIVE if k in fields})
        deal.user.update(user)

    def _set_deal_field(self, deal: DealRec, key: str, value: Any) -> None:
        if key.startswith("UF_"):
            deal.user[key] = self.portal.user_value(self.portal.deal_fields, key, value)
        else:
            deal.native[key] = value

    def _stage(self, stage_id: str) -> Any:
        found = self.portal.stage(stage_id)
        if found is None:
            raise ValueError(f"no stage {stage_id!r}")
        return found

    # ---- companies, requisites, product rows -----------------------------------------

    def _company_add(self, params: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        fields = _fields_param(params)
        title = str(fields.get("TITLE") or "")
        if not title:
            raise BitrixError("TITLE is required")
        company = CompanyRec(0, title, created=self.clock())
        self._merge_multis(company, fields)
        company.id = next(self._ids["co"])
        self._companies[company.id] = company
        return company.id, {}

    def _company_list(self, params: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        rows = [c.record() for c in self._companies.values()]
        return _selected_page(params, rows, set(), ("PHONE", "EMAIL"))

    def _requisite_add(self, params: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        fields = _fields_param(params)
        entity_type = _int(fields.get("ENTITY_TYPE_ID"))
        entity_id = _int(fields.get("ENTITY_ID"))
        if entity_type != 4 or entity_id not in self._companies:
            raise BitrixError("Entity not found (ENTITY_TYPE_ID 4 and a company ENTITY_ID)")
        if not str(fields.get("PRESET_ID") or "").isdigit():
            raise BitrixError("PRESET_ID is required")
        if not fields.get("NAME"):
            raise BitrixError("NAME is required")
        requisite = RequisiteRec(
            next(self._ids["rq"]),
            entity_type,
            entity_id,
            _int(fields["PRESET_ID"]),
            str(fields["NAME"]),
            {k: str(v) for k, v in fields.items() if k.startswith("RQ_")},
        )
        self._requisites[requisite.id] = requisite
        return requisite.id, {}

    def _requisite_list(self, params: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        return _selected_page(params, [r.record() for r in self._requisites.values()], set())

    def _contact_company_add(self, params: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        contact = self._contact_of(params)
        company_id = _int((param(params, "fields") or {}).get("COMPANY_ID"))
        if company_id not in self._companies:
            raise BitrixError("Company not found")
        if company_id in contact.company_ids:
            # "false — скорее всего компания … уже есть в привязках": no error, no change
            # [b24-rest-docs crm/contacts/company/crm-contact-company-add.md].
            return False, {}
        contact.company_ids.append(company_id)
        contact.modified = self.clock()
        return True, {}

    def _rows_set(self, params: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        deal = self._deal_of(params)
        rows = []
        for row in items(param(params, "rows")):
            if not isinstance(row, dict):
                raise BitrixError("rows: an array of product rows is expected")
            try:
                price, quantity = (
                    float(str(row.get("PRICE", 0))),
                    float(str(row.get("QUANTITY", 1))),
                )
            except ValueError:
                raise BitrixError("PRICE and QUANTITY are numbers") from None
            rows.append(
                {
                    "ID": str(len(rows) + 1),
                    "OWNER_ID": str(deal.id),
                    "OWNER_TYPE": "D",
                    "PRODUCT_ID": _int(row.get("PRODUCT_ID") or 0),
                    "PRODUCT_NAME": str(row.get("PRODUCT_NAME") or ""),
                    "PRICE": price,
                    "QUANTITY": quantity,
                }
            )
        deal.rows = rows  # every earlier row is replaced
        if not deal.manual_opportunity:
            deal.opportunity = sum(row["PRICE"] * row["QUANTITY"] for row in rows)
        deal.modified = max(self.clock(), deal.modified + 1)
        return True, {}

    def _rows_get(self, params: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        return [dict(row) for row in self._deal_of(params).rows], {}

    # ---- timeline, schema, OAuth ----------------------------------------------------

    def _comment_add(self, params: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        fields = _fields_param(params)
        entity_type = str(fields.get("ENTITY_TYPE") or "").lower()
        entity_id = _int(fields.get("ENTITY_ID"))
        if entity_type != "deal" or entity_id not in self._deals:
            raise BitrixError("Entity not found")
        comment = str(fields.get("COMMENT") or "")
        if not comment:
            raise BitrixError("COMMENT is empty")
        note = CommentRec(next(self._comment_ids), entity_id, entity_type, comment, self.clock())
        self._comments.append(note)
        return note.id, {}

    def _comment_list(self, params: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        conditions = param(params, "filter") or {}
        if "ENTITY_ID" not in conditions or "ENTITY_TYPE" not in conditions:
            raise BitrixError("ENTITY_ID and ENTITY_TYPE are required in the filter")
        return _selected_page(params, [c.record() for c in self._comments], set())

    def _fields(self, user_fields: Mapping[str, Any]) -> dict[str, Any]:
        native = {
            "ID": {"type": "integer", "title": "ID"},
            "TITLE": {"type": "string", "title": "Название"},
        }
        native.update({k: {"type": "string", "title": k, "isMultiple": False} for k in DEAL_NATIVE})
        return {**native, **{name: f.describe() for name, f in user_fields.items()}}

    def _category_list(self, params: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        if str(param(params, "entityTypeId")) != "2":
            raise BitrixError("entityTypeId 2 (deals) is the only one here")
        categories = [
            {
                "id": c.id,
                "name": c.name,
                "sort": 100 * (c.id + 1),
                "entityTypeId": 2,
                "isDefault": "Y" if c.id == 0 else "N",
            }
            for c in self.portal.categories.values()
        ]
        return {"categories": categories}, {"total": len(categories)}

    def _status_list(self, params: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        entity = str((param(params, "filter") or {}).get("ENTITY_ID") or "")
        rows = []
        for category in self.portal.categories.values():
            name = "DEAL_STAGE" if category.id == 0 else f"DEAL_STAGE_{category.id}"
            if entity and entity != name:
                continue
            for n, stage in enumerate(category.stages):
                semantics = {"P": None, "S": "S", "F": "F"}[stage.semantic]
                rows.append(
                    {
                        "ID": str(len(rows) + 1),
                        "ENTITY_ID": name,
                        "STATUS_ID": stage.id,
                        "NAME": stage.name,
                        "SORT": str(10 * (n + 1)),
                        "CATEGORY_ID": str(category.id),
                        "SEMANTICS": semantics,
                    }
                )
        return rows, {"total": len(rows)}

    def _token(self, request: FakeRequest) -> FakeResponse:
        params = self._params(request)
        if (params.get("client_id"), params.get("client_secret")) != (
            self.client_id,
            self.client_secret,
        ):
            return FakeResponse(
                401, {"error": "invalid_client", "error_description": "Invalid client"}
            )
        grant = params.get("grant_type")
        if grant == "refresh_token":
            pair = self.tokens.refreshed(str(params.get("refresh_token")))
            refused = "Invalid refresh token"
        elif grant == "authorization_code":
            pair = self.tokens.exchanged(str(params.get("code"))) or "unknown"
            refused = "Invalid code"
        else:
            return FakeResponse(
                400, {"error": "unsupported_grant_type", "error_description": "grant"}
            )
        if isinstance(pair, str):
            return FakeResponse(400, {"error": "invalid_grant", "error_description": refused})
        access, refresh = pair
        return FakeResponse(
            200,
            {
                "access_token": access,
                "expires": int(self.clock()) + self.oauth_ttl,
                "expires_in": self.oauth_ttl,
                "scope": "crm",
                "domain": "oauth.bitrix24.tech",
                "server_endpoint": "https://oauth.bitrix24.tech/rest/",
                "status": "L",
                "client_endpoint": "https://example.bitrix24.ru/rest/",
                "member_id": "fake-member",
                "user_id": 1,
                "refresh_token": refresh,
            },
        )


def _item(deal: DealRec, original_uf_names: bool) -> dict[str, Any]:
    """A deal as crm.item.list shows it."""
    record = deal.record()
    user = {
        (key if original_uf_names else _camel_uf(key)): value
        for key, value in record.items()
        if key.startswith("UF_")
    }
    return {
        "id": deal.id,
        "title": deal.title,
        "categoryId": deal.category_id,
        "stageId": deal.stage_id,
        "stageSemanticId": deal.semantic,
        "closed": record["CLOSED"],
        "opportunity": deal.opportunity,
        "currencyId": deal.currency,
        "contactId": deal.contact_ids[0] if deal.contact_ids else None,
        "contactIds": list(deal.contact_ids),
        "isRecurring": record["IS_RECURRING"],
        "createdTime": record["DATE_CREATE"],
        "updatedTime": record["DATE_MODIFY"],
        **user,
    }


def _listed(
    params: Mapping[str, Any], rows: list[dict[str, Any]], names: set[str], key: str = "ID"
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A list method's page: the rows matching `filter` (`names`: its known user fields),
    in `order` (`key` ascending when not given), 50 from `start`."""
    conditions = param(params, "filter") or {}
    found = [row for row in rows if matches(row, conditions, names)]
    return page(ordered(found, param(params, "order") or {key: "ASC"}), param(params, "start"))


def _selected_page(
    params: Mapping[str, Any], rows: list[dict[str, Any]], user: set[str], multi: Iterable[str] = ()
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """`crm.*.list`: `_listed`, each row cut to `select` (`multi`: multifields it may name)."""
    chunk, extra = _listed(params, rows, user)
    return [selected(row, param(params, "select"), user, multi) for row in chunk], extra


def _camel_uf(name: str) -> str:
    """UF_CRM_2_1639669411830 → ufCrm2_1639669411830 (the docs' own example)."""
    return "ufCrm" + name.removeprefix("UF_CRM_")


def _error(status: int, code: str, description: str) -> FakeResponse:
    return FakeResponse(status, {"error": code, "error_description": description})


def _fields_param(params: Mapping[str, Any]) -> dict[str, Any]:
    fields = param(params, "fields")
    if not isinstance(fields, dict):
        raise BitrixError("Parameter 'fields' must be array.")
    return fields


def _int(value: Any) -> int:
    try:
        return int(str(value))
    except ValueError:
        raise BitrixError(f"{value!r} is not an id") from None


def _php_bool(value: Any) -> bool:
    """PHP's `(bool)`: "0", "", 0 and empty arrays are false, any other string true."""
    return value not in (None, False, 0, "", "0") and value != {} and value != []


def _binding_ids(given: Iterable[Any]) -> Iterator[int]:
    """The contact ids crm.deal.add binds, as EntityBinding::prepareEntityBindings takes
    them: `array_filter` drops empty values, then `$id > 0` keeps numbers above zero and
    any array (PHP 8 ranks an array above a number), and `(int)` makes a non-empty array
    1. A batch reference to a command that failed is such an array (the results so far),
    so it is not refused: it binds nothing, or contact 1 (refused here only because no
    contact 1 exists)."""
    for value in given:
        if isinstance(value, dict | list):
            if value:
                yield 1
        elif str(value).strip().isdigit() and int(str(value)) > 0:
            yield int(str(value))


def _comm_key(kind: str, value: str) -> str:
    # NormalizePhone: digits only (8… and +7… stay different); e-mails lower-cased.
    return re.sub(r"\D", "", value) if kind == "PHONE" else value.strip().lower()
