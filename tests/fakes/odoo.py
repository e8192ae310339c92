"""A stateful fake of an Odoo server's external API: JSON-RPC (every version) and JSON-2
(19 on), over one database (`tests.fakes.odoo_db`).

It answers like the real server where the bridge depends on it (recorded from Odoo
18.0: crm-notes/odoo18-jsonrpc-transcript.md, §N; JSON-2 from odoo/documentation
external_api.rst and the Json2Dispatcher source):
- `POST /jsonrpc`, services `common` (version, login, authenticate) and `object`
  (execute_kw): HTTP 200 always; errors as `{"error": {"code": 200, "message": "Odoo
  Server Error", "data": {"name", "debug", "message", "arguments", "context"}}}` (§6.8);
  a method returning None answers without a `result` key (§6.7); a wrong password is
  `false` from authenticate (§8.4) and AccessDenied from execute_kw (§8.5); an unknown
  database fails in Registry(db) with psycopg2.OperationalError (service/security.py);
- `POST /json/2/<model>/<method>` (version >= 19): bearer API key (401
  werkzeug.exceptions.Unauthorized "Invalid apikey"), arguments by name plus `ids` and
  `context`, the bare result (recordsets as id lists), errors with the exception's
  `http_status` (422 UserError, 403 AccessError, 404 MissingError, 500 otherwise);
  on 18.0 the path is the web client's and redirects to the login page (303, §8.50);
- `GET /web/version` (19): `{"version_info", "version"}`;
- API keys with an expiry (an expired key is simply not found: AccessDenied / 401);
  `deny(model, operation)` takes a right away from the API user (AccessError);
  `rate_limit` (Odoo itself has none; Odoo Online answers 429 past about one call per
  second, notes §4.8) and every fault of `FakeService`.

Set up and inspect (no call logged): `add_partner`, `add_lead`, `add_field`, `add_tag`,
`add_team`, `set_won`, `set_lost`, `partner`, `lead`, `leads`,
`partners`, `notes`, `messages`, `issue_api_key`, `expire_api_keys`.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.settings import CrmConfig, load_file_config
from tests.fakes.odoo_db import (
    JSON,
    Model,
    OdooDb,
    OdooFault,
    access_denied,
    odoo_time,
    user_error,
    value_error,
)
from tests.fakes.service import FakeRequest, FakeResponse, FakeService

JSON2_PATH = re.compile(r"/json/2/([A-Za-z0-9_.]+)/([A-Za-z0-9_]+)")


@dataclass(frozen=True)
class Method:
    """An ORM method the fake serves: its parameter names in positional order (after the
    ids of a method called on records), the access right it needs, and whether its
    parameters are free keywords (message_post's are keyword-only, §6.9;
    action_set_lost takes `**additional_values`: any lead field, written after archiving)."""

    params: tuple[str, ...] = ()
    right: str = "read"
    on_records: bool = False
    free_keywords: bool = False


METHODS = {
    "search": Method(("domain", "offset", "limit", "order")),
    "search_read": Method(("domain", "fields", "offset", "limit", "order")),
    "search_count": Method(("domain", "limit")),
    "read": Method(("fields", "load"), on_records=True),
    "create": Method(("vals_list",), "create"),
    "write": Method(("vals",), "write", on_records=True),
    "unlink": Method((), "unlink", on_records=True),
    "fields_get": Method(("allfields", "attributes")),
    "message_post": Method(on_records=True, free_keywords=True),
    "action_set_won": Method(right="write", on_records=True),
    "action_set_lost": Method(right="write", on_records=True, free_keywords=True),
    "action_archive": Method(right="write", on_records=True),
    "action_unarchive": Method(right="write", on_records=True),
    "context_get": Method(),
}
OPERATION_WORDS = {"read": "access", "write": "modify", "create": "create", "unlink": "delete"}


def _on_records(method: str) -> bool:
    return method in METHODS and METHODS[method].on_records


@dataclass
class ApiKey:
    key: str
    uid: int
    expires_at: float | None  # unix seconds; None: no expiry


class FakeOdoo(FakeService):
    """One Odoo server with one database (`database`), user `admin` (uid 2)."""

    name = "fake Odoo"

    def __init__(
        self,
        *,
        version: int = 18,
        database: str = "crm_lab",
        password: str = "admin",  # noqa: S107 - the recorded lab's
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        rate_limit: int = 10**9,
        sms_installed: bool = True,
        partner_mobile: bool | None = None,
        won_status: bool = True,
    ) -> None:
        super().__init__(rate_limit=rate_limit, monotonic=monotonic)
        self.version = version
        self.clock = clock
        self.password = password
        # res.partner lost `mobile` after 18 [research notes §4.2, U]: off by default on 19.
        mobile = version <= 18 if partner_mobile is None else partner_mobile
        self.db = OdooDb(
            database,
            clock=clock,
            sms_installed=sms_installed,
            partner_mobile=mobile,
            won_status=won_status,
        )
        self.api_keys: list[ApiKey] = []
        self.denied: set[tuple[str, str]] = set()
        self.executed: list[str] = []  # "model.method" of every call that reached the ORM
        self.routes = [
            ("POST", re.compile(r"/jsonrpc"), self._jsonrpc),
            ("POST", JSON2_PATH, self._json2),
            ("GET", re.compile(r"/web/version"), self._web_version),
        ]

    # ---- credentials ------------------------------------------------------------------

    def issue_api_key(self, *, ttl: float | None = None, uid: int = 2) -> str:
        """A new API key (Preferences → Account Security → New API Key); `ttl` seconds.
        Odoo 19 caps a key's duration at three months (external_api.rst "API Key")."""
        key = secrets.token_hex(20)
        expires = None if ttl is None else self.clock() + ttl
        with self._lock:
            self.api_keys.append(ApiKey(key, uid, expires))
        return key

    def expire_api_keys(self) -> None:
        with self._lock:
            for api_key in self.api_keys:
                api_key.expires_at = float("-inf")

    def deny(self, model: str, operation: str) -> None:
        """Take `operation` (read / write / create / unlink) on `model` from the user."""
        with self._lock:
            self.denied.add((model, operation))

    def _key_uid(self, key: str) -> int | None:
        now = self.clock()
        for api_key in self.api_keys:
            if secrets.compare_digest(api_key.key, key) and (
                api_key.expires_at is None or api_key.expires_at > now
            ):
                return api_key.uid
        return None

    def _login_uid(self, login: str, password: str) -> int | None:
        user = next(
            (
                r
                for r in self.db.models["res.users"].rows.values()
                if r.get("login") == login and r.get("active")
            ),
            None,
        )
        if user is None:
            return None
        return user["id"] if self._signs_in(user["id"], password) else None

    def _signs_in(self, uid: JSON, password: JSON) -> bool:
        """The admin's password (uid 2), or an API key of the user."""
        return (uid == 2 and password == self.password) or self._key_uid(str(password)) == uid

    def _check_database(self, database: JSON) -> None:
        if database != self.db.name:
            # Registry(db) connects to PostgreSQL first (odoo/service/security.py check).
            raise OdooFault(
                "psycopg2.OperationalError",
                'connection to server on socket "/var/run/postgresql/.s.PGSQL.5432" failed:'
                f' FATAL:  database "{database}" does not exist\n',
            )

    # ---- setup and inspection (no call logged) ----------------------------------------

    def add_partner(
        self,
        name: str,
        *,
        phone: str | None = None,
        mobile: str | None = None,
        email: str | None = None,
        is_company: bool = False,
        parent_id: int | None = None,
        active: bool = True,
        fields: Mapping[str, Any] | None = None,
    ) -> int:
        """A contact as a user typed it in the web client (stored as typed)."""
        values: dict[str, Any] = {
            "name": name,
            "is_company": is_company,
            "active": active,
            **_given(phone=phone, mobile=mobile, email=email, parent_id=parent_id),
            **(fields or {}),
        }
        with self._lock:
            return self.db.create(self.db.models["res.partner"], values)

    def add_lead(
        self,
        partner_id: int | None,
        *,
        name: str = "Opportunity",
        stage_id: int | None = None,
        team_id: int | None = None,
        expected_revenue: float = 0.0,
        kind: str = "opportunity",
        fields: Mapping[str, Any] | None = None,
        write_date: float | None = None,
    ) -> int:
        values: dict[str, Any] = {
            "name": name,
            "type": kind,
            "expected_revenue": expected_revenue,
            **_given(partner_id=partner_id, stage_id=stage_id, team_id=team_id),
            **(fields or {}),
        }
        with self._lock:
            lead_id = self.db.create(self.db.models["crm.lead"], values)
            if write_date is not None:
                row = self.db.models["crm.lead"].rows[lead_id]
                row["write_date"] = odoo_time(write_date)
            return lead_id

    def add_field(self, model: str, name: str, ttype: str, **kwargs: Any) -> int:
        with self._lock:
            return self.db.add_field(model, name, ttype, **kwargs)

    def add_tag(self, name: str) -> int:
        with self._lock:
            return self.db._insert("crm.tag", {"name": name})

    def add_team(self, name: str) -> int:
        with self._lock:
            return self.db._insert("crm.team", {"name": name, "active": True, "sequence": 20})

    def set_won(self, lead_id: int) -> None:
        with self._lock:
            self.db.set_won([lead_id])

    def set_lost(self, lead_id: int, reason_id: int | None = 1) -> None:
        with self._lock:
            self.db.set_lost([lead_id], {"lost_reason_id": reason_id} if reason_id else None)

    def move_lead(self, lead_id: int, stage_id: int, *, at: float | None = None) -> None:
        with self._lock:
            row = self.db.models["crm.lead"].rows[lead_id]
            row["stage_id"] = stage_id
            row["write_date"] = odoo_time(self.clock() if at is None else at)

    def partner(self, partner_id: int | str) -> dict[str, Any]:
        return self._row("res.partner", partner_id)

    def lead(self, lead_id: int | str) -> dict[str, Any]:
        return self._row("crm.lead", lead_id)

    def partners(self) -> list[dict[str, Any]]:
        """The partners a user made (the seeded system ones left out)."""
        with self._lock:
            rows = self.db.models["res.partner"].rows
            return [dict(row) for pid, row in rows.items() if pid >= 7]

    def leads(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(row) for row in self.db.models["crm.lead"].rows.values()]

    def messages(self, lead_id: int | str) -> list[dict[str, Any]]:
        with self._lock:
            return [
                dict(row)
                for row in self.db.models["mail.message"].rows.values()
                if row["model"] == "crm.lead" and row["res_id"] == int(lead_id)
            ]

    def notes(self, lead_id: int | str) -> list[str]:
        """Bodies (HTML, as stored) of the log notes and comments posted on the lead."""
        return [m["body"] for m in self.messages(lead_id) if m["message_type"] == "comment"]

    def _row(self, model: str, record_id: int | str) -> dict[str, Any]:
        with self._lock:
            return dict(self.db.models[model].rows[int(record_id)])

    # ---- JSON-RPC -----------------------------------------------------------------------

    def _jsonrpc(self, request: FakeRequest) -> FakeResponse:
        body = request.json()
        request_id = body.get("id") if isinstance(body, dict) else None
        try:
            params = body["params"] if isinstance(body, dict) else None
            if not isinstance(params, dict):
                raise value_error("JSON-RPC request without params")
            result = self._service(
                str(params.get("service")), str(params.get("method")), params.get("args") or []
            )
        except OdooFault as fault:
            return FakeResponse(200, _rpc_error(request_id, fault))
        answer: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id}
        if result is not None:
            answer["result"] = result  # None: no `result` key at all (§6.7)
        return FakeResponse(200, answer)

    def _service(self, service: str, method: str, args: Sequence[JSON]) -> JSON:
        if service == "common":
            if method == "version":
                return self._version_info()
            if method in ("login", "authenticate"):
                database, login, password = args[0], args[1], args[2]
                self._check_database(database)
                return self._login_uid(str(login), str(password)) or False
            raise OdooFault("builtins.NameError", f"Method not available {method}")
        if service == "object" and method in ("execute_kw", "execute"):
            database, uid, password, model_name, name = args[:5]
            self._check_database(database)
            if not self._signs_in(uid, password):
                raise access_denied()
            if method == "execute_kw":
                positional = args[5] if len(args) > 5 else []
                keywords = args[6] if len(args) > 6 else {}
            else:
                positional, keywords = list(args[5:]), {}
            if not isinstance(positional, list) or not isinstance(keywords, dict):
                raise OdooFault(
                    "builtins.TypeError", "execute_kw() arguments must be a list and a dict"
                )
            return self._execute_rpc(str(model_name), str(name), positional, keywords)
        raise OdooFault("builtins.KeyError", f"'{service}'")

    def _execute_rpc(
        self, model_name: str, method: str, args: list[JSON], kwargs: dict[str, JSON]
    ) -> JSON:
        """execute_kw → call_kw: ids from the first positional argument of a record
        method, the rest bound by position then by name; create answers one id for a
        dict (§8.6), a list for a list; a recordset answer reduced to its ids."""
        context = kwargs.pop("context", None) or {}
        ids: list[int] | None = None
        if _on_records(method):
            if not args:
                raise OdooFault("builtins.TypeError", f"{method}() missing the record ids")
            first = args[0]
            ids = first if isinstance(first, list) else [first]
            args = args[1:]
        params = self._bind(method, args, kwargs)
        result = self._call(model_name, method, ids, params, context)
        if method == "create" and isinstance(params.get("vals_list"), dict):
            return result[0]
        return result

    def _bind(
        self, method: str, args: Sequence[JSON], kwargs: Mapping[str, JSON]
    ) -> dict[str, JSON]:
        if method not in METHODS:
            raise OdooFault("builtins.AttributeError", f"The method '{method}' does not exist")
        names = METHODS[method].params
        if len(args) > len(names):
            raise OdooFault(
                "builtins.TypeError",
                f"{method}() takes {len(names)} positional arguments but {len(args)} were given",
            )
        params = dict(zip(names, args, strict=False))
        for key, value in kwargs.items():
            if key in params:
                raise OdooFault(
                    "builtins.TypeError", f"{method}() got multiple values for argument {key!r}"
                )
            params[key] = value
        if not METHODS[method].free_keywords:
            unknown = sorted(set(params) - set(names))
            if unknown:
                raise OdooFault(
                    "builtins.TypeError",
                    f"{method}() got an unexpected keyword argument {unknown[0]!r}",
                )
        return params

    # ---- JSON-2 ---------------------------------------------------------------------------

    def _json2(self, request: FakeRequest, model_name: str, method: str) -> FakeResponse:
        if self.version < 19:
            # 18.0: /json/<path> is the web client's, needs a session (§8.50).
            location = f"/web/login?redirect=%2Fjson%2F2%2F{model_name}%2F{method}%3F"
            return FakeResponse(303, None, {"location": location})
        auth = request.headers.get("authorization", "")
        scheme, _, key = auth.partition(" ")
        uid = self._key_uid(key.strip()) if scheme.lower() == "bearer" else None
        if uid is None:
            return _werkzeug_error(401, "Invalid apikey", ["Invalid apikey", 401])
        database = request.headers.get("x-odoo-database")
        if database is not None and database != self.db.name:
            # [U] not recorded: a database the server does not serve is not routed.
            return _werkzeug_error(404, f'Database "{database}" not found', [database, 404])
        body = request.json()
        if body is None:
            body = {}
        if not isinstance(body, dict):
            return _werkzeug_error(400, "could not parse the body as json")
        params = dict(body)
        context = params.pop("context", None) or {}
        ids = params.pop("ids", None)
        if _on_records(method) and not ids:
            ids = []
        elif not _on_records(method) and ids:
            return _werkzeug_error(422, f"cannot call {model_name}.{method} with ids")
        if method not in METHODS:
            return _werkzeug_error(404, f"The method {method!r} does not exist on {model_name}")
        spec = METHODS[method]
        unknown = [] if spec.free_keywords else sorted(set(params) - set(spec.params))
        if unknown:
            # inspect.signature().bind mismatch → UnprocessableEntity (odoo/odoo#197801)
            return _werkzeug_error(422, f"got an unexpected keyword argument {unknown[0]!r}")
        try:
            result = self._call(model_name, method, ids, params, context)
        except OdooFault as fault:
            return _json2_error(fault.http_status, fault.name, fault.message, [fault.message])
        return _Json2Result(200, result, {"content-type": "application/json; charset=utf-8"})

    def _web_version(self, request: FakeRequest) -> FakeResponse:
        if self.version < 19:
            return FakeResponse(404, None)
        info = self._version_info()
        return FakeResponse(
            200, {"version_info": info["server_version_info"], "version": info["server_version"]}
        )

    def _version_info(self) -> dict[str, Any]:
        serie = f"{self.version}.0"
        return {
            "server_version": serie,
            "server_version_info": [self.version, 0, 0, "final", 0, ""],
            "server_serie": serie,
            "protocol_version": 1,
        }

    def _headers(self, response: FakeResponse) -> dict[str, str]:
        headers = dict(response.headers)
        if response.body is not None:
            headers.setdefault("content-type", "application/json")
        return headers

    # ---- the ORM call, whichever transport ----------------------------------------------

    def _call(
        self,
        model_name: str,
        method: str,
        ids: list[int] | None,
        params: Mapping[str, JSON],
        context: Mapping[str, JSON],
    ) -> JSON:
        db = self.db
        model = db.model(model_name)
        self._check_right(model, METHODS[method].right)
        self.executed.append(f"{model_name}.{method}")
        if ids is not None and not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise value_error(f"Invalid ids {ids!r}")
        if method in ("search", "search_read", "search_count"):
            return self._search(model, method, params, context)
        if method == "read":
            return db.read_rows(model, ids or [], params.get("fields"))
        if method == "create":
            vals_list = params.get("vals_list")
            many = vals_list if isinstance(vals_list, list) else [vals_list]
            if model_name == "ir.model.fields":
                return [self._create_field(vals) for vals in many]
            return [db.create(model, vals) for vals in many]
        if method == "write":
            db.write(model, ids or [], params.get("vals") or {})
            return True
        if method == "unlink":
            for record_id in ids or []:
                model.rows.pop(record_id, None)
            return True
        if method == "fields_get":
            return self._fields_get(model, params.get("allfields"), params.get("attributes"))
        if METHODS[method].on_records:  # read, write and unlink are answered above
            return self._record_action(model, method, ids or [], params)
        if method == "context_get":
            return {"lang": "en_US", "tz": False, "uid": db.uid}
        raise OdooFault(
            "builtins.AttributeError", f"The method '{model_name}.{method}' does not exist"
        )

    def _search(
        self, model: Model, method: str, params: Mapping[str, JSON], context: Mapping[str, JSON]
    ) -> JSON:
        db = self.db
        domain = params.get("domain") or []
        found = db.search(
            model,
            domain,
            context=context,
            order=params.get("order"),
            offset=int(params.get("offset") or 0),
            limit=params.get("limit"),
        )
        if method == "search":
            return found
        if method == "search_count":
            return len(found)
        return db.read_rows(model, found, params.get("fields"))

    def _record_action(
        self, model: Model, method: str, ids: list[int], params: Mapping[str, JSON]
    ) -> JSON:
        """message_post and the won / lost / archive buttons."""
        db, model_name = self.db, model.name
        if method == "message_post":
            if model_name not in _MAIL_THREADS:
                raise OdooFault(
                    "builtins.AttributeError",
                    f"The method '{model_name}.message_post' does not exist",
                )
            message_id = db.message_post(model, ids, params)
            # execute_kw answers the single message as its id (§8.46); JSON-2 reduces
            # the returned recordset to its ids.
            return message_id if self._transport_is_rpc else [message_id]
        if method == "action_set_won":
            return db.set_won(ids)
        if method == "action_set_lost":
            db.set_lost(ids, params)
            return None
        if method in ("action_archive", "action_unarchive"):
            db.write(model, ids, {"active": method == "action_unarchive"})
            return None
        raise AssertionError(method)

    _transport_is_rpc = True  # set per request in `_serve`, under the service's lock

    def _check_right(self, model: Model, operation: str) -> None:
        if (model.name, operation) in self.denied:
            word = OPERATION_WORDS.get(operation, operation)
            raise OdooFault(
                "odoo.exceptions.AccessError",
                f"You are not allowed to {word} '{model.description}' ({model.name}) records.\n\n"
                "This operation is allowed for the following groups:\n"
                "\t- Sales/User: Own Documents Only\n\n"
                "Contact your administrator to request access if necessary.",
                403,
            )

    def _create_field(self, vals: Mapping[str, JSON]) -> int:
        if not isinstance(vals, dict):
            raise value_error("create() expects a dict")
        model_row = self.db.models["ir.model"].rows.get(vals.get("model_id") or 0)
        if model_row is None:
            raise user_error("Model is required")
        selection: list[tuple[str, str]] = []
        for command in vals.get("selection_ids") or []:
            if isinstance(command, list) and command and command[0] == 0:
                selection.append((str(command[2]["value"]), str(command[2]["name"])))
        return self.db.add_field(
            str(model_row["model"]),
            str(vals.get("name") or ""),
            str(vals.get("ttype") or "char"),
            string=str(vals.get("field_description") or ""),
            relation=str(vals.get("relation") or ""),
            selection=selection,
        )

    def _fields_get(self, model: Model, allfields: JSON, attributes: JSON) -> dict[str, Any]:
        wanted = attributes or ["string", "type", "relation", "selection", "store"]
        answer: dict[str, Any] = {}
        for name, definition in model.fields.items():
            if allfields and name not in allfields:
                continue
            described = {
                "string": definition.string,
                "type": definition.ttype,
                "relation": definition.relation or None,
                "selection": [list(option) for option in definition.selection],
                "store": definition.stored,
            }
            answer[name] = {
                key: value
                for key, value in described.items()
                if key in wanted and value is not None
            }
        return answer

    def _serve(self, request: FakeRequest) -> FakeResponse:
        self._transport_is_rpc = not request.path.startswith("/json/2/")
        return super()._serve(request)


_MAIL_THREADS = {"crm.lead", "res.partner"}


class _Json2Result(FakeResponse):
    """A JSON-2 answer is the JSON of the result, `null` included (make_json_response)."""

    def content(self) -> bytes:
        return json.dumps(self.body, ensure_ascii=False).encode()


def _rpc_error(request_id: JSON, fault: OdooFault) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "error": {
            "code": 200,
            "message": "Odoo Server Error",
            "data": {
                "name": fault.name,
                "debug": "Traceback (most recent call last): …[traceback cut]",
                "message": fault.message,
                "arguments": [fault.message],
                "context": {},
            },
        },
    }


WERKZEUG = {400: "BadRequest", 401: "Unauthorized", 404: "NotFound", 422: "UnprocessableEntity"}


def _werkzeug_error(status: int, message: str, arguments: list[Any] | None = None) -> FakeResponse:
    """werkzeug's HTTPException of `status` as JSON-2 answers it."""
    name = f"werkzeug.exceptions.{WERKZEUG[status]}"
    return _json2_error(status, name, message, [] if arguments is None else arguments)


def _json2_error(status: int, name: str, message: str, arguments: list[Any]) -> FakeResponse:
    body = {
        "name": name,
        "message": message,
        "arguments": arguments,
        "context": {},
        "debug": "Traceback (most recent call last): …",
    }
    return FakeResponse(status, body, {"content-type": "application/json; charset=utf-8"})


def _given(**values: Any) -> dict[str, Any]:
    """The values a setup call was given (None: left to the model's default)."""
    return {key: value for key, value in values.items() if value is not None}


EXAMPLE_CONFIG = Path(__file__).resolve().parents[2] / "etc" / "crm-odoo.example.toml"
# The x_ fields of the example database, as made in Studio: name → (type, relation).
EXAMPLE_FIELD_TYPES = {
    "subjects": ("many2many", "crm.tag"),
    "direction": ("selection", ""),
    "last_payment_amount": ("float", ""),
    "last_payment_at": ("datetime", ""),
    "payment_id": ("char", ""),
    "invoice_id": ("char", ""),
    "total_paid": ("float", ""),
    "purchase_count": ("integer", ""),
    # Orders (`order_fields`): dates are date fields, the rest text.
    "installation_date": ("date", ""),
    "dismantle_date": ("date", ""),
    "comment": ("text", ""),
}


ORDER_FIELD_KEYS = (
    "order_id",
    "order_status",
    "installation_date",
    "dismantle_date",
    "delivery_method",
    "delivery_address",
    "comment",
)


def example_config(**changes: Any) -> CrmConfig:
    config = load_file_config(EXAMPLE_CONFIG).crm["odoo"]
    return config.model_copy(update=changes)


def example_odoo(config: CrmConfig | None = None, **kwargs: Any) -> FakeOdoo:
    """The database `etc/crm-odoo.example.toml` describes: its teams, stages, tags and
    x_ fields, empty of partners and leads."""
    config = config or example_config()
    options = config.options
    fake = FakeOdoo(database=str(options.get("database", "crm_lab")), **kwargs)
    db = fake.db
    db.models["res.users"].rows[2]["login"] = str(options.get("login") or "admin")
    targets = [config.default_pipeline, *config.pipeline_rules]
    names = {int(t.pipeline_id): t.name or f"Team {t.pipeline_id}" for t in targets}
    teams = db.models["crm.team"]
    for team_id in sorted(names):
        if team_id in teams.rows:
            teams.rows[team_id]["name"] = names[team_id]
        else:
            while max(teams.rows) < team_id:
                fake.add_team(names.get(max(teams.rows) + 1, "Team"))
    stages = db.models["crm.stage"].rows
    stages[2]["name"], stages[3]["name"] = "Автооплата", "In progress"
    tags = sorted({int(v) for v in config.subjects.values()})
    names_by_tag = {int(v): k for k, v in config.subjects.items()}
    for tag_id in range(1, (max(tags) if tags else 0) + 1):
        fake.add_tag(names_by_tag.get(tag_id, f"Tag {tag_id}"))
    # The order fields of the example's commented [crm.odoo.order_fields] exist too, so a
    # section switched to orders (the order scenarios) finds them.
    example_orders = {key: f"x_{key}" for key in ORDER_FIELD_KEYS}
    deal_ids = {
        **config.deal_fields.model_dump(),
        **example_orders,
        **config.order_fields.model_dump(exclude={"company_inn"}, exclude_none=True),
    }
    made: set[str] = set()
    for key, field_name in deal_ids.items():
        if not field_name or not field_name.startswith("x_") or field_name in made:
            continue
        made.add(field_name)
        ttype, relation = EXAMPLE_FIELD_TYPES.get(key, ("char", ""))
        selection = (
            [(str(v), k) for k, v in config.directions.items()] if key == "direction" else []
        )
        fake.add_field("crm.lead", field_name, ttype, relation=relation, selection=selection)
    for field_name in config.contact_fields.model_dump().values():
        if field_name and field_name.startswith("x_"):
            fake.add_field("res.partner", field_name, "char")
    return fake
