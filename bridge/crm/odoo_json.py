"""Odoo's external API shapes, both ways, as pure functions (no I/O).

Two transports carry the same ORM calls [odoo/documentation external_api.rst, "Migrating
from XML-RPC / JSON-RPC"]:
- JSON-RPC, `POST /jsonrpc` `{"service": "object", "method": "execute_kw", "args": [db,
  uid, api_key, model, method, args, kwargs]}`: every Odoo with API keys (14+), deprecated
  from 19 on. Errors come back with HTTP 200 and `error.data.name`, the Python exception's
  qualified name (recorded from a real 18.0 server: crm-notes/odoo18-jsonrpc-transcript.md
  §6.8); a method returning None answers with no `result` key at all (§6.7);
- JSON-2 (19+), `POST /json/2/<model>/<method>` with `Authorization: bearer <api key>`,
  every argument by name plus `ids` and `context`; errors with a real HTTP status and
  `{"name", "message", "arguments", "context", "debug"}` (UserError 422, AccessError and
  AccessDenied 403, MissingError 404, LockError 409, an invalid key 401, anything else
  500 — odoo/http Json2Dispatcher.handle_error and odoo/exceptions.py `http_status`).

`OdooCall` is one ORM call, written once and encoded for either transport. Records become
`Contact` (res.partner) and `Deal` (crm.lead of type opportunity); "pipelines" are sales
teams (crm.team) and statuses are stages (crm.stage).

Values written [transcript §8.43; notes §4.5]: char/text as text, numbers as numbers,
datetime as "YYYY-MM-DD HH:MM:SS" in UTC, selection by its key, many2one by id, many2many
by commands (`[[6, 0, ids]]` replaces the set, as FieldUpdate's MULTISELECT means).
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, Literal

import phonenumbers

from bridge.crm.base import CustomField, Pipeline
from bridge.crm.fieldvalues import FieldEncoding, number_json
from bridge.domain import (
    Company,
    CompanyRecord,
    Contact,
    Deal,
    DealChange,
    FieldKind,
    FieldUpdate,
    KeyKind,
    LookupKey,
    NewContact,
    NewDeal,
)
from bridge.errors import (
    AuthError,
    ConfigError,
    CrmError,
    PermanentCrmError,
    TransientCrmError,
)
from bridge.settings import CrmConfig

JSON = Any
RPC_PATH = "/jsonrpc"
JSON2_PREFIX = "/json/2/"
API_CHOICES = ("auto", "jsonrpc", "json2")
PARTNER = "res.partner"
LEAD = "crm.lead"
NOTE_SUBTYPE = "mail.mt_note"  # an internal log note: no e-mail to followers (§6.9)
LOOKUP_LIMIT = 50  # partners per lookup; confirmation happens here, not in Odoo
ODOO_DATETIME = "%Y-%m-%d %H:%M:%S"
# Fields whose presence differs between databases and versions; learnt once per process
# (`capabilities_call`). phone_mobile_search / phone_sanitized come with the `sms`
# module's mail.thread.phone mixin (auto-installed with crm, §6.4); res.partner.mobile
# is gone in recent versions; won_status is the stored won/lost/pending of crm.lead.
PROBED_FIELDS = ("phone_mobile_search", "mobile", "email_normalized", "won_status")
# Odoo field types in the vocabulary `crm-bridge check` compares against (amoCRM's names).
FIELD_TYPES = {
    "char": "text",
    "text": "textarea",
    "html": "textarea",
    "integer": "numeric",
    "float": "numeric",
    "monetary": "monetary",
    "datetime": "date_time",
    "date": "date",
    "boolean": "checkbox",
    "selection": "select",
    "many2one": "select",
    "many2many": "multiselect",
}
# Standard lead fields `deal_fields` may name besides x_ fields: the Tags (many2many to
# crm.tag, values by tag id) and the lead's own text fields.
STANDARD_LEAD_FIELDS = {"tag_ids": ("Tags", "many2many", "crm.tag")}
# The order status `cancelled` maps to this pseudo-stage: Odoo has no lost stage, a lost
# opportunity is archived with a reason and keeps its stage (transcript §6.11); every
# sales team lists it in `schema`, so `crm-bridge check` takes it.
LOST = "lost"
COMPANY_LOOKUP_LIMIT = 50


# ---- options --------------------------------------------------------------------------


@dataclass(frozen=True)
class OdooOptions:
    """`[crm.NAME.options]` of an odoo section."""

    database: str
    login: str = ""  # the API user's login: JSON-RPC needs its uid (JSON-2 does not)
    api: Literal["auto", "jsonrpc", "json2"] = "auto"
    lost_reason_id: int | None = None  # crm.lost.reason of a cancelled order's deal

    @classmethod
    def from_config(cls, name: str, options: Mapping[str, object]) -> OdooOptions:
        where = f"crm.{name}.options"
        unknown = sorted(set(options) - {"database", "login", "api", "lost_reason_id"})
        if unknown:
            raise ConfigError(
                f"{where}: unknown {unknown}; odoo knows database, login, api, lost_reason_id"
            )
        database = options.get("database")
        if not (isinstance(database, str) and database.strip()):
            raise ConfigError(f'{where}.database: the database name, e.g. "mycompany"')
        login = options.get("login", "")
        if not isinstance(login, str):
            raise ConfigError(f"{where}.login: the API user's login (text)")
        api = options.get("api", "auto")
        if api not in API_CHOICES:
            raise ConfigError(f"{where}.api: one of {', '.join(API_CHOICES)}")
        if api == "jsonrpc" and not login.strip():
            raise ConfigError(f"{where}.login: JSON-RPC needs the API user's login")
        chosen: Literal["auto", "jsonrpc", "json2"] = api  # type: ignore[assignment]
        reason = options.get("lost_reason_id")
        if reason is not None and (
            isinstance(reason, bool) or not isinstance(reason, int) or reason <= 0
        ):
            raise ConfigError(f"{where}.lost_reason_id: a crm.lost.reason id (a number)")
        return cls(database.strip(), login.strip(), chosen, reason)


# ---- one ORM call, two encodings ------------------------------------------------------


@dataclass(frozen=True)
class OdooCall:
    """One model method call. `args` are execute_kw's positional arguments (record ids
    first for record methods); `named` are the same arguments by name, for JSON-2, which
    has no positional ones; `kwargs` go by name in both."""

    model: str
    method: str
    args: tuple[JSON, ...] = ()
    kwargs: Mapping[str, JSON] = field(default_factory=dict)
    named: Mapping[str, JSON] = field(default_factory=dict)
    read_only: bool = False

    @property
    def operation(self) -> str:
        return f"{self.model}.{self.method}"


def search_read(
    model: str,
    domain: Sequence[JSON],
    fields: Sequence[str],
    *,
    order: str | None = None,
    limit: int | None = None,
    context: Mapping[str, JSON] | None = None,
) -> OdooCall:
    """Search and read in one call (and one transaction), as §8.37 does."""
    kwargs: dict[str, JSON] = {"fields": list(fields)}
    if order:
        kwargs["order"] = order
    if limit is not None:
        kwargs["limit"] = limit
    if context:
        kwargs["context"] = dict(context)
    domain_list = list(domain)
    return OdooCall(model, "search_read", (domain_list,), kwargs, {"domain": domain_list}, True)


def create(model: str, values: Mapping[str, JSON]) -> OdooCall:
    """RPC answers the new id for one dict (§8.6); JSON-2 takes `vals_list` and answers a
    list of ids (`created_id` reads both)."""
    vals = dict(values)
    return OdooCall(model, "create", (vals,), {}, {"vals_list": [vals]})


def write(model: str, ids: Sequence[int], values: Mapping[str, JSON]) -> OdooCall:
    id_list, vals = list(ids), dict(values)
    return OdooCall(model, "write", (id_list, vals), {}, {"ids": id_list, "vals": vals})


def record_method(
    model: str, method: str, record_id: int, kwargs: Mapping[str, JSON] | None = None
) -> OdooCall:
    """A method on one record, its parameters by name (message_post's are keyword-only,
    §6.9): ids in `args` for RPC, in `ids` for JSON-2."""
    return OdooCall(model, method, ([record_id],), dict(kwargs or {}), {"ids": [record_id]})


def model_method(model: str, method: str, *, read_only: bool = True) -> OdooCall:
    """An @api.model method without arguments (res.users.context_get)."""
    return OdooCall(model, method, (), {}, {}, read_only)


def jsonrpc_body(
    service: str, method: str, args: Sequence[JSON], request_id: int
) -> dict[str, JSON]:
    return {
        "jsonrpc": "2.0",
        "method": "call",
        "params": {"service": service, "method": method, "args": list(args)},
        "id": request_id,
    }


def execute_kw_body(
    call: OdooCall, database: str, uid: int, api_key: str, request_id: int
) -> dict[str, JSON]:
    args = [database, uid, api_key, call.model, call.method, list(call.args), dict(call.kwargs)]
    return jsonrpc_body("object", "execute_kw", args, request_id)


def authenticate_body(database: str, login: str, api_key: str, request_id: int) -> dict[str, JSON]:
    """`common.authenticate` (§8.2): the uid, or false for a refused login (not an error)."""
    return jsonrpc_body("common", "authenticate", [database, login, api_key, {}], request_id)


def version_body(request_id: int) -> dict[str, JSON]:
    return jsonrpc_body("common", "version", [], request_id)


def json2_path(call: OdooCall) -> str:
    return f"{JSON2_PREFIX}{call.model}/{call.method}"


def json2_body(call: OdooCall) -> dict[str, JSON]:
    return {**call.named, **call.kwargs}


# ---- answers and errors ---------------------------------------------------------------


def rpc_result(crm: str, answer: JSON, where: str) -> JSON:
    """The `result` of a JSON-RPC answer, or its error raised as the bridge's error.

    No `result` key and no `error` is a method that returned None (action_set_lost, §6.7):
    a success, read as None."""
    if not isinstance(answer, dict):
        raise TransientCrmError(crm, f"{where}: answer is not a JSON-RPC object")
    error = answer.get("error")
    if isinstance(error, dict):
        data = error.get("data")
        data = data if isinstance(data, dict) else {}
        name = str(data.get("name") or "")
        message = str(data.get("message") or error.get("message") or "")
        raise error_for(crm, name, message, where)
    return answer.get("result")


def json2_error(crm: str, status: int, body: JSON, where: str) -> CrmError:
    """A JSON-2 error answer (4xx/5xx) as the bridge's error, by exception name first."""
    data = body if isinstance(body, dict) else {}
    name = str(data.get("name") or "")
    message = str(data.get("message") or "")
    if status == 401:
        return AuthError(crm, f"{where}: 401 {message or 'unauthorised'}")
    if not name:
        if status == 429:
            return TransientCrmError(crm, f"{where}: HTTP 429")
        if status >= 500 or status == 408:
            return TransientCrmError(crm, f"{where}: HTTP {status}")
        return PermanentCrmError(crm, f"{where}: HTTP {status}")
    return error_for(crm, name, message, where, status)


# Exceptions whose call may succeed later: the database was busy or restarting.
_TRANSIENT_NAMES = (
    "odoo.exceptions.LockError",
    "odoo.exceptions.ConcurrencyError",
    "builtins.MemoryError",
    "builtins.TimeoutError",
    "builtins.ConnectionError",
)
_AUTH_NAMES = (
    "odoo.exceptions.AccessDenied",  # wrong or expired API key, wrong login (§8.5)
    "odoo.http.SessionExpiredException",
    "werkzeug.exceptions.Unauthorized",  # JSON-2: "Invalid apikey"
    # The API user lacks a right (a group, a record rule): every delivery would fail
    # alike until an operator grants it, so the CRM pauses instead of failing them all.
    "odoo.exceptions.AccessError",
)
_MISSING_DATABASE = re.compile(r'database "[^"]*" does not exist|no such database', re.I)


def error_for(crm: str, name: str, message: str, where: str, status: int | None = None) -> CrmError:
    """Classify an Odoo exception by its qualified name (§6.8): pause on credentials,
    rights or a wrong database; retry on a busy database; fail for everything else (an
    unknown field is `builtins.ValueError`, a refused value `UserError`/`ValidationError`,
    a deleted record `MissingError`)."""
    text = f"{where}: {name or 'error'}: {_one_line(message)}"
    if name in _AUTH_NAMES:
        return AuthError(crm, text)
    if name.startswith("psycopg2"):
        # Registry(db) of an unknown database fails to connect (odoo/service/security.py
        # check → Registry(db)): a wrong `database` option, not an outage.
        if _MISSING_DATABASE.search(message):
            return AuthError(crm, f"{where}: no database of that name: {_one_line(message)}")
        return TransientCrmError(crm, text)
    if name in _TRANSIENT_NAMES or (status is not None and status in (408, 429, 502, 503, 504)):
        return TransientCrmError(crm, text)
    return PermanentCrmError(crm, text)


def _one_line(message: str) -> str:
    return " ".join(message.split())[:300]


def uid_from(crm: str, result: JSON) -> int:
    """`common.authenticate` answers false for a wrong login or key (§5, not an error)."""
    if isinstance(result, int) and not isinstance(result, bool) and result > 0:
        return result
    raise AuthError(crm, "common.authenticate: login or API key refused")


def created_id(crm: str, result: JSON, where: str) -> int:
    """The id `create` answered: an int over RPC, `[id]` over JSON-2."""
    if isinstance(result, list) and len(result) == 1:
        result = result[0]
    if isinstance(result, int) and not isinstance(result, bool):
        return result
    raise PermanentCrmError(crm, f"{where}: unexpected answer {str(result)[:80]!r}")


def records(crm: str, result: JSON, where: str) -> list[dict[str, JSON]]:
    if not isinstance(result, list):
        raise PermanentCrmError(crm, f"{where}: expected a list of records")
    return [record for record in result if isinstance(record, dict)]


def server_version(result: JSON) -> str:
    """`common.version` (§8.1) or `/web/version`: "18.0", "saas~18.3", "19.0"."""
    if isinstance(result, dict):
        return str(result.get("server_version") or result.get("version") or "")
    return ""


def json2_offered(status: int, location: str = "") -> bool | None:
    """Whether a JSON-2 probe answer shows the API: 200 yes; 18.0 and older redirect
    `/json/...` to the login page (303, §8.50) or do not route it (404): no. None: the
    answer says nothing (an outage), decided on a later call."""
    if status == 200:
        return True
    if status in (301, 302, 303, 307, 308) or "/web/login" in location:
        return False
    if status in (404, 405):
        return False
    return None


# ---- what a server has ----------------------------------------------------------------


@dataclass(frozen=True)
class Capabilities:
    """Optional fields present on this database (absent from older or slimmer ones)."""

    partner: frozenset[str] = frozenset()
    lead: frozenset[str] = frozenset()

    @property
    def phone_search(self) -> bool:
        return "phone_mobile_search" in self.partner

    @property
    def mobile(self) -> bool:
        return "mobile" in self.partner

    @property
    def email_normalized(self) -> bool:
        return "email_normalized" in self.partner

    @property
    def won_status(self) -> bool:
        return "won_status" in self.lead


def capabilities_call() -> OdooCall:
    """One read of ir.model.fields for both models: which optional fields exist."""
    domain = [["model", "in", [PARTNER, LEAD]], ["name", "in", list(PROBED_FIELDS)]]
    return search_read("ir.model.fields", domain, ["model", "name"])


def capabilities_from(found: Iterable[Mapping[str, JSON]]) -> Capabilities:
    partner = {str(r.get("name")) for r in found if r.get("model") == PARTNER}
    lead = {str(r.get("name")) for r in found if r.get("model") == LEAD}
    # `found` may be a one-shot iterable: materialise before filtering twice.
    return Capabilities(frozenset(partner), frozenset(lead))


# ---- contacts (res.partner) -----------------------------------------------------------


def phone_term(e164: str) -> str:
    """The national significant number of an E.164 phone, for a substring search.

    phone_mobile_search compares numbers stripped of spaces, dots, slashes, brackets and
    dashes (§5 table), so "+7 (916) 000-11-22", "8 916 000 11 22" and "+79160001122" all
    contain "9160001122"; `ilike` on it finds each, and the flow confirms the hit exactly.
    """
    try:
        number = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        number = None
    if number is not None and number.national_number:
        national = str(number.national_number)
        if len(national) >= 3:
            return national
    return "".join(char for char in e164 if char.isdigit())


def partner_fields(config: CrmConfig, caps: Capabilities) -> list[str]:
    names = ["id", "name", "phone", "email", "write_date"]
    if caps.mobile:
        names.append("mobile")
    configured = [f for f in config.contact_fields.model_dump().values() if f]
    return list(dict.fromkeys([*names, *configured]))


def partner_lookup_call(
    keys: Sequence[LookupKey], config: CrmConfig, caps: Capabilities
) -> OdooCall | None:
    """One res.partner search_read over every key at once (an OR domain, notes §4.2):
    Telegram id by the configured field, phone by phone_mobile_search (or by `phone`
    when the database lacks it), e-mail by email_normalized (or `=ilike`, as Odoo's own
    find_or_create does, §8.26). Every hit is confirmed by the flow afterwards."""
    leaves: list[JSON] = []
    tg_field = config.contact_fields.telegram_id
    for key in keys:
        if key.kind is KeyKind.TELEGRAM_ID and tg_field:
            leaves.append([tg_field, "=", key.value])
        elif key.kind is KeyKind.PHONE:
            term = phone_term(key.value)
            if caps.phone_search:
                leaves.append(["phone_mobile_search", "ilike", term])
            else:
                # Without the mixin only unformatted numbers meet (§8.12): both forms.
                leaves += [["phone", "ilike", term], ["phone", "=", key.value]]
        elif key.kind is KeyKind.EMAIL:
            email = key.value.strip().lower()  # email_normalized is lower-case (§8.28)
            if caps.email_normalized:
                leaves.append(["email_normalized", "=", email])
            else:
                leaves.append(["email", "=ilike", email])
    if not leaves:
        return None
    # People only: a company (an order's, created with its own phone and e-mail) that
    # shares the person's number is not the person, and cannot be made its own parent.
    domain: list[JSON] = [["is_company", "=", False], *(["|"] * (len(leaves) - 1)), *leaves]
    return search_read(
        PARTNER, domain, partner_fields(config, caps), order="id asc", limit=LOOKUP_LIMIT
    )


def contact_from_partner(record: Mapping[str, JSON], config: CrmConfig) -> Contact:
    ids = config.contact_fields
    phones = tuple(text(record.get(name)) for name in ("phone", "mobile") if text(record.get(name)))
    email = text(record.get("email"))
    return Contact(
        id=str(record["id"]),
        name=text(record.get("name")),
        phones=phones,
        emails=(email,) if email else (),
        telegram_id=text(record.get(ids.telegram_id)) if ids.telegram_id else "",
        telegram_username=text(record.get(ids.telegram_username)) if ids.telegram_username else "",
        deal_ids=(),
    )


def partner_values(new: NewContact) -> dict[str, JSON]:
    """A person: res.partner has no UTM fields (utm.mixin is on crm.lead), so the UTM
    travels on the deal only. Phones are stored as sent: RPC runs no onchange (§6.12)."""
    who = new.customer
    name = (
        who.full_name
        or who.phone
        or who.email
        or (f"Telegram {who.telegram_id}" if who.telegram_id else "")
    )
    values: dict[str, JSON] = {"name": name or "Customer", "is_company": False}
    if who.phone:
        values["phone"] = who.phone
    if who.email:
        values["email"] = who.email
    values.update(field_values(new.fields))
    return values


# ---- deals (crm.lead) -----------------------------------------------------------------


def deal_fields(config: CrmConfig, caps: Capabilities) -> list[str]:
    names = [
        "id",
        "name",
        "partner_id",
        "team_id",
        "stage_id",
        "expected_revenue",
        "probability",
        "active",
        "write_date",
    ]
    if caps.won_status:
        names.append("won_status")
    return list(dict.fromkeys([*names, *config.deal_field_ids()]))


def open_deals_call(contact_id: str, config: CrmConfig, caps: Capabilities) -> OdooCall:
    """The contact's open opportunities, newest change first (§8.37): not in a won stage,
    and active (lost ones are archived and skipped by the default active_test). child_of
    takes in the opportunities of a company's people when the contact is the company."""
    domain = [
        ["partner_id", "child_of", _int_id(contact_id)],
        ["type", "=", "opportunity"],
        ["stage_id.is_won", "=", False],
    ]
    return search_read(LEAD, domain, deal_fields(config, caps), order="write_date desc, id desc")


def deal_call(deal_id: int, config: CrmConfig, caps: Capabilities) -> OdooCall:
    """One opportunity by id, archived (lost) ones included so they read as closed."""
    domain = [["id", "=", deal_id]]
    context = {"active_test": False}
    return search_read(LEAD, domain, deal_fields(config, caps), context=context)


def deal_from_lead(record: Mapping[str, JSON], config: CrmConfig) -> Deal:
    """won_status is won/lost/pending where it exists; else lost = archived, won = 100 %
    (Odoo's own rule is both a won stage and 100 %, notes §4.3)."""
    won_status = record.get("won_status")
    if isinstance(won_status, str) and won_status:
        closed = won_status in ("won", "lost")
    else:
        probability = record.get("probability")
        won = isinstance(probability, int | float) and probability >= 100
        closed = record.get("active") is False or won
    partner = many2one_id(record.get("partner_id"))
    configured = set(config.deal_field_ids())
    return Deal(
        id=str(record["id"]),
        pipeline_id=many2one_id(record.get("team_id")),
        status_id=many2one_id(record.get("stage_id")),
        updated_at=unix_seconds(record.get("write_date")),
        price=Decimal(text(record.get("expected_revenue")) or 0),
        is_closed=closed,
        contact_ids=(partner,) if partner else (),
        fields={key: text(value) for key, value in record.items() if key in configured},
    )


def deal_from_sent(new: NewDeal, deal_id: int, partner_id: int, now: float) -> Deal:
    """The opportunity just created, from what was sent (no read-back: one call a step)."""
    written = {u.field_id: _sent_text(u) for u in new.fields}
    return Deal(
        id=str(deal_id),
        pipeline_id=new.pipeline_id,
        status_id=new.status_id,
        updated_at=int(now),
        price=new.price,
        is_closed=new.status_id == LOST,
        contact_ids=(str(partner_id),),
        fields=written,
    )


def _sent_text(update: FieldUpdate) -> str:
    value = update.value
    if isinstance(value, tuple):
        return str(value[0]) if value else ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime(ODOO_DATETIME)
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def lead_values(
    new: NewDeal, partner_id: int, lost_reason_id: int | None = None
) -> dict[str, JSON]:
    """An opportunity in the chosen team and stage. Probability is left to Odoo's lead
    scoring (§6.11); the partner's e-mail and phone are copied by Odoo itself. An order
    first seen cancelled is created lost in the same call: archived with probability 0
    (what action_set_lost leaves, so won_status reads "lost") in the team's first stage."""
    values: dict[str, JSON] = {
        "name": new.name,
        "type": "opportunity",
        "partner_id": partner_id,
        "team_id": _int_id(new.pipeline_id, "pipeline (sales team)"),
        "expected_revenue": number_json(new.price),
    }
    if new.status_id == LOST:
        values.update(active=False, probability=0)
        if lost_reason_id is not None:
            values["lost_reason_id"] = lost_reason_id
    else:
        values["stage_id"] = _int_id(new.status_id, "status (stage)")
    values.update(field_values(new.fields))
    return values


# ---- orders: companies, stage moves -----------------------------------------------------


def company_lookup_call(company: Company) -> OdooCall | None:
    """One search_read of companies (is_company) by INN or by name, oldest first.

    The INN is res.partner's built-in `vat` (the Russian localisation keeps it there, as
    "7701234567" or "RU7701234567": `ilike` finds both); the name by each of its words
    (`ilike` each), so "ооо  ромашка" is a hit for "ООО Ромашка" and the flow's rule
    confirms the exact name. `is_company` keeps out the company's people, whose `vat` is
    the company's own (a commercial field, synced from the parent)."""
    leaves: list[JSON] = []
    if company.inn:
        leaves.append([["vat", "ilike", company.inn]])
    words = company.name.split()
    if words:
        leaves.append(["&"] * (len(words) - 1) + [["name", "ilike", word] for word in words])
    if not leaves:
        return None
    either: list[JSON] = ["|"] * (len(leaves) - 1)
    for leaf in leaves:
        either += leaf
    domain = [["is_company", "=", True], *either]
    return search_read(
        PARTNER, domain, ["id", "name", "vat"], order="id asc", limit=COMPANY_LOOKUP_LIMIT
    )


def company_from_partner(record: Mapping[str, JSON]) -> CompanyRecord:
    return CompanyRecord(str(record["id"]), text(record.get("name")), text(record.get("vat")))


def company_values(company: Company) -> dict[str, JSON]:
    values: dict[str, JSON] = {"name": company.name, "is_company": True}
    if company.inn:
        values["vat"] = company.inn
    if company.phone:
        values["phone"] = company.phone
    if company.email:
        values["email"] = company.email
    return values


def change_call(deal_id: int, change: DealChange, lost_reason_id: int | None) -> OdooCall | None:
    """One call for the whole change. A live stage: `write` (team, stage, `active` and no
    lost reason so a lost opportunity comes back, revenue, fields). The lost
    pseudo-stage: Odoo's own `action_set_lost(**additional_values)`, which archives
    (probability 0, so won_status reads "lost") and then writes the rest
    [addons/crm/models/crm_lead.py]; it returns None, an answer without `result` over
    JSON-RPC (§6.7)."""
    values: dict[str, JSON] = {}
    if change.pipeline_id is not None:
        values["team_id"] = _int_id(change.pipeline_id, "pipeline (sales team)")
    if change.price is not None:
        values["expected_revenue"] = number_json(change.price)
    if change.name is not None:
        values["name"] = change.name
    values.update(field_values(change.fields))
    if change.status_id == LOST:
        if lost_reason_id is not None:
            values["lost_reason_id"] = lost_reason_id
        return OdooCall(LEAD, "action_set_lost", ([deal_id],), values, {"ids": [deal_id]})
    if change.status_id is not None:
        # A lost opportunity comes back as Odoo's own restore leaves it (toggle_active:
        # active, no lost reason); on a live one both are no change.
        values.update(stage_id=_int_id(change.status_id, "status (stage)"), active=True)
        values["lost_reason_id"] = False
    if not values:
        return None
    return write(LEAD, [deal_id], values)


def _int_id(value: str, what: str = "record") -> int:
    if value.isascii() and value.isdigit():
        return int(value)
    raise ValueError(f"{what} id {value!r} is not a number")


# ---- field values ---------------------------------------------------------------------


def field_values(updates: Iterable[FieldUpdate]) -> dict[str, JSON]:
    """`write`/`create` values for the updates (ValueError on a value that does not fit).
    A date field takes "YYYY-MM-DD" (transcript §8.43 `date_deadline`)."""
    values: dict[str, JSON] = {}
    for update in updates:
        if update.kind is FieldKind.DATE:
            values[update.field_id] = _day(update)
        else:
            values[update.field_id] = ENCODING.value(update)
    return values


def _day(update: FieldUpdate) -> str:
    value = update.value
    # A datetime is a date too: only a calendar day fits a date field.
    if isinstance(value, date) and not isinstance(value, datetime):
        return value.isoformat()
    raise ValueError(f"field {update.field_id}: date value {value!r} has the wrong type")


def _record_id(field_id: str, value: int | str) -> int:
    if isinstance(value, int) or (value.isascii() and value.isdigit()):
        return int(value)
    raise ValueError(f"field {field_id}: {value!r} is not a record id (many2many)")


# Odoo keeps datetimes naive in UTC (a date field takes the first 10 characters); a
# selection takes its key (text), a many2one its id (a number in the config); a
# many2many `Command.set` of record ids: the whole set, as MULTISELECT means.
ENCODING = FieldEncoding(
    when=lambda moment: moment.astimezone(UTC).strftime(ODOO_DATETIME),
    option=lambda field_id, value: value,
    options=lambda field_id, values: [[6, 0, [_record_id(field_id, item) for item in values]]],
)


# ---- reading values -------------------------------------------------------------------


def text(value: JSON) -> str:
    """A field value as the text the rules read: False (Odoo's "empty") as "", a
    many2one `[id, name]` and a many2many `[ids]` by their (first) id, whole floats
    without ".0"."""
    if value is None or value is False:
        return ""
    if isinstance(value, list):
        return text(value[0]) if value else ""
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


def many2one_id(value: JSON) -> str:
    if isinstance(value, list) and value:
        return str(value[0])
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return ""


def unix_seconds(value: JSON) -> int:
    """write_date "2026-11-22 13:55:30" (UTC, naive) as unix seconds; 0 when absent."""
    raw = text(value)
    if not raw:
        return 0
    return int(datetime.strptime(raw[:19], ODOO_DATETIME).replace(tzinfo=UTC).timestamp())


# ---- notes ----------------------------------------------------------------------------


def note_call(deal_id: int, body: str) -> OdooCall:
    """A log note on the opportunity's chatter (§8.46): comment type (the default is
    "notification"), note subtype (internal, notifies no follower). The plain-text body
    is escaped by Odoo and its line breaks become <br>, so nothing is sent as HTML."""
    kwargs = {"body": body, "message_type": "comment", "subtype_xmlid": NOTE_SUBTYPE}
    return record_method(LEAD, "message_post", deal_id, kwargs)


def notes_call(deal_id: int) -> OdooCall:
    domain = [["model", "=", LEAD], ["res_id", "=", deal_id], ["message_type", "=", "comment"]]
    return search_read("mail.message", domain, ["body"], order="id asc")


_BREAKS = re.compile(r"<br\s*/?>|</p>\s*<p[^>]*>", re.I)
_TAGS = re.compile(r"<[^>]+>")


def note_text(body: JSON) -> str:
    """A stored message body (HTML) back as the text that was posted."""
    raw = text(body)
    return html.unescape(_TAGS.sub("", _BREAKS.sub("\n", raw)))


# ---- schema ---------------------------------------------------------------------------


def teams_call() -> OdooCall:
    return search_read("crm.team", [], ["id", "name"], order="sequence, id")


def stages_call() -> OdooCall:
    return search_read(
        "crm.stage", [], ["id", "name", "sequence", "is_won", "team_id"], order="sequence, id"
    )


def custom_fields_call() -> OdooCall:
    """The x_ fields of both models (made in Studio or by a module, §8.41), plus Tags."""
    domain = [
        ["model", "in", [LEAD, PARTNER]],
        "|",
        ["name", "=like", "x\\_%"],
        ["name", "in", list(STANDARD_LEAD_FIELDS)],
    ]
    fields = ["id", "name", "model", "field_description", "ttype", "relation"]
    return search_read("ir.model.fields", domain, fields, order="model, name")


def selections_call(field_ids: Sequence[int]) -> OdooCall:
    domain = [["field_id", "in", list(field_ids)]]
    fields = ["field_id", "value", "name"]
    return search_read("ir.model.fields.selection", domain, fields, order="field_id, sequence, id")


def relation_records_call(model: str) -> OdooCall:
    """The values of a many2one / many2many field: its records (a tag list is short)."""
    return search_read(model, [], ["id", "display_name"], order="id", limit=200)


def pipelines_from(
    teams: Sequence[Mapping[str, JSON]], stages: Sequence[Mapping[str, JSON]]
) -> tuple[Pipeline, ...]:
    """Each sales team with its stages: the shared ones (no team) and its own."""
    pipelines: list[Pipeline] = []
    for team in teams:
        team_id = str(team["id"])
        statuses = {
            str(stage["id"]): text(stage.get("name"))
            for stage in stages
            if many2one_id(stage.get("team_id")) in ("", team_id)
        }
        # Lost is an outcome, not a stage (§6.11): offered to every team for `cancelled`.
        statuses[LOST] = "Lost (archived with a reason)"
        pipelines.append(Pipeline(team_id, text(team.get("name")), statuses))
    return tuple(pipelines)


def won_stage_ids(stages: Sequence[Mapping[str, JSON]]) -> tuple[str, ...]:
    return tuple(str(stage["id"]) for stage in stages if stage.get("is_won") is True)


def custom_fields_from(
    fields: Sequence[Mapping[str, JSON]],
    selections: Sequence[Mapping[str, JSON]],
    relation_values: Mapping[str, Sequence[Mapping[str, JSON]]],
) -> list[CustomField]:
    """`ir.model.fields` rows as CustomField; enums: a selection's keys, a relation's
    record ids."""
    by_field: dict[str, dict[str, str]] = {}
    for option in selections:
        by_field.setdefault(many2one_id(option.get("field_id")), {})[text(option.get("value"))] = (
            text(option.get("name"))
        )
    found: list[CustomField] = []
    for row in fields:
        ttype = text(row.get("ttype"))
        model = text(row.get("model"))
        entity = "leads" if model == LEAD else "contacts"
        relation = text(row.get("relation"))
        if ttype == "selection":
            enums = by_field.get(str(row.get("id")), {})
        elif ttype in ("many2one", "many2many"):
            enums = {
                str(rec["id"]): text(rec.get("display_name"))
                for rec in relation_values.get(relation, ())
            }
        else:
            enums = {}
        label = text(row.get("field_description")) or text(row.get("name"))
        kind = FIELD_TYPES.get(ttype, ttype)
        found.append(CustomField(text(row.get("name")), label, kind, entity, enums))
    return found


def relation_models(fields: Sequence[Mapping[str, JSON]]) -> list[str]:
    return list(
        dict.fromkeys(
            text(row.get("relation"))
            for row in fields
            if row.get("ttype") in ("many2one", "many2many") and text(row.get("relation"))
        )
    )
