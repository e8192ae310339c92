"""Pure mappers between the domain types and Zoho CRM's JSON (API v8).

Zoho names things by API name and display value, not by number: custom fields by their
`api_name` (`Telegram_ID`), picklist and multi-select picklist options by their display
value, pipelines and stages by their display value (the Stage picklist is one list per
module; each pipeline maps a subset of it, so a stage name means the same in every
pipeline). Those names are the "ids" of the bridge's config for Zoho.

No I/O here: the adapter sends what these build and reads what they parse. Sources:
https://www.zoho.com/crm/developer/docs/api/v8/search-records.html (criteria syntax and
escaping), https://zoho.com/crm/developer/docs/api/v8/Get-Records-through-COQL-Query.html,
https://www.zoho.com/crm/developer/docs/api/create-notes.html,
https://zoho.com/crm/developer/docs/api/v8/composite-overview.html, and the v8 OpenAPI
files (`zoho/crm-oas`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal

import phonenumbers

from bridge.crm.base import JSON, CustomField, Pipeline
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
from bridge.errors import AuthError, CrmError, PermanentCrmError, RateLimited, TransientCrmError
from bridge.settings import CrmConfig

API = "/crm/v8"
TOKEN_PATH = "/oauth/v2/token"  # noqa: S105 - a path, not a secret


@dataclass(frozen=True)
class DataCentre:
    accounts: str  # where OAuth tokens are minted
    api_domain: str  # where the CRM API answers (until a token answer names another)


# The data centre decides both hosts; a token from one is worthless in another.
# https://www.zoho.com/crm/developer/docs/api/v8/multi-dc.html
DATA_CENTRES: Mapping[str, DataCentre] = {
    "us": DataCentre("https://accounts.zoho.com", "https://www.zohoapis.com"),
    "eu": DataCentre("https://accounts.zoho.eu", "https://www.zohoapis.eu"),
    "in": DataCentre("https://accounts.zoho.in", "https://www.zohoapis.in"),
    "au": DataCentre("https://accounts.zoho.com.au", "https://www.zohoapis.com.au"),
    "jp": DataCentre("https://accounts.zoho.jp", "https://www.zohoapis.jp"),
    "ca": DataCentre("https://accounts.zohocloud.ca", "https://www.zohoapis.ca"),
    "cn": DataCentre("https://accounts.zoho.com.cn", "https://www.zohoapis.com.cn"),
    "sa": DataCentre("https://accounts.zoho.sa", "https://www.zohoapis.sa"),
}

# Standard Contacts fields the lookup reads and the flow compares.
CONTACT_PHONE_FIELDS = ("Phone", "Mobile")
CONTACT_EMAIL_FIELDS = ("Email", "Secondary_Email")
SEARCH_PAGE = 200  # the most a search page holds
MAX_CRITERIA = 10  # per search expression
COQL_LIMIT = 200  # 1 credit up to 200 rows
COMPOSITE_COQL_LIMIT = 25  # a COQL sub-request of a composite call reads at most 25
MAX_SUB_REQUESTS = 5
DEAL_SYSTEM_FIELDS = (
    "id",
    "Deal_Name",
    "Stage",
    "Pipeline",
    "Amount",
    "Modified_Time",
    "Contact_Name",
)
MAX_COQL_FIELDS = 50
API_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")

# Zoho field `data_type` → the vocabulary `crm-bridge check` compares the config with. A date
# field keeps a Zoho name: the last payment's time does not fit it.
FIELD_TYPES = {
    "text": "text",
    "textarea": "textarea",
    "email": "text",
    "phone": "text",
    "website": "url",
    "picklist": "select",
    "multiselectpicklist": "multiselect",
    "integer": "numeric",
    "bigint": "numeric",
    "double": "numeric",
    "decimal": "numeric",
    "currency": "price",
    "datetime": "date_time",
}
CLOSED_FORECAST_TYPES = ("Closed Won", "Closed Lost")


# ---- domain → Zoho JSON ---------------------------------------------------------------


def criteria_value(text: str) -> str:
    """A criteria value with Zoho's escapes: a backslash before `(`, `)` and `,` (the
    rest — `+`, `:`, `@` — is percent-encoded with the query string)."""
    return re.sub(r"([(),\\])", r"\\\1", text)


def national_number(phone: str) -> str:
    """The national significant number ("+79991234567" → "9991234567"): what every
    stored format of the number contains, digit for digit."""
    try:
        parsed = phonenumbers.parse(phone, None)
    except phonenumbers.NumberParseException:
        return "".join(char for char in phone if char.isdigit())
    return str(phonenumbers.national_significant_number(parsed))


def search_criteria(keys: Sequence[LookupKey], telegram_field: str | None) -> str | None:
    """One criteria expression for every key, OR-ed (None: nothing to search).

    Phones are searched by their national number in both phone fields (Zoho's `equals`
    matches contained values there, so "9991234567" finds "+7 999 123-45-67"); e-mails and
    the Telegram id as they are. The flow confirms every hit, so loose matches do no harm.
    """
    parts: list[str] = []
    for key in keys:
        if key.kind is KeyKind.PHONE:
            digits = national_number(key.value)
            parts += [f"({name}:equals:{criteria_value(digits)})" for name in CONTACT_PHONE_FIELDS]
        elif key.kind is KeyKind.EMAIL:
            parts.append(f"(Email:equals:{criteria_value(key.value)})")
        elif telegram_field:
            parts.append(f"({telegram_field}:equals:{criteria_value(key.value)})")
    if not parts:
        return None
    if len(parts) > MAX_CRITERIA:
        raise ValueError(f"{len(parts)} search criteria; Zoho takes at most {MAX_CRITERIA}")
    return parts[0] if len(parts) == 1 else "(" + "or".join(parts) + ")"


def contact_fields(config: CrmConfig) -> list[str]:
    """The Contacts fields a lookup asks for: names, phones, e-mails, Telegram fields."""
    ids = config.contact_fields
    extra = [name for name in (ids.telegram_id, ids.telegram_username) if name]
    return ["First_Name", "Last_Name", *CONTACT_PHONE_FIELDS, *CONTACT_EMAIL_FIELDS, *extra]


def value_json(update: FieldUpdate) -> JSON:
    """A field value as Zoho takes it (ValueError when it does not fit its kind): text as
    a string, numbers as JSON numbers, a date-time as ISO 8601 with its offset and no
    fraction, a picklist option by display value, a multi-select as a list of them."""
    encoded = _ENCODERS[update.kind](update.value)
    if encoded is None:
        kind, value = update.kind.value, update.value
        raise ValueError(f"field {update.field_id}: {kind} value {value!r} has the wrong type")
    return encoded


def _text(value: object) -> JSON:
    return value if isinstance(value, str) else None


def _number(value: object) -> JSON:
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        return None
    return number_json(Decimal(value))


def _datetime(value: object) -> JSON:
    if not isinstance(value, datetime) or value.utcoffset() is None:
        return None
    return value.replace(microsecond=0).isoformat()


def _date(value: object) -> JSON:
    """A Date field's `YYYY-MM-DD` (a datetime, a subclass of date, is not a day)."""
    if isinstance(value, datetime) or not isinstance(value, date):
        return None
    return value.isoformat()


def _option(value: object) -> str | None:
    """A picklist option's display value (None when `value` cannot be one)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    return str(value).strip() or None


def _options(value: object) -> JSON:
    if not isinstance(value, tuple) or not value:
        return None
    options = [_option(option) for option in value]
    return options if all(options) else None


_ENCODERS = {
    FieldKind.TEXT: _text,
    FieldKind.NUMBER: _number,
    FieldKind.DATETIME: _datetime,
    FieldKind.DATE: _date,
    FieldKind.SELECT: _option,
    FieldKind.MULTISELECT: _options,
}


def number_json(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)


def fields_json(updates: Iterable[FieldUpdate]) -> dict[str, JSON]:
    return {update.field_id: value_json(update) for update in updates}


def record_id(value: str) -> str:
    """A Zoho record id (a long number as a string); ValueError on anything else, so no
    id can smuggle a path or a COQL clause."""
    if not (value.isascii() and value.isdigit()):
        raise ValueError(f"id {value!r} is not a Zoho record id")
    return value


def contact_json(new: NewContact) -> dict[str, JSON]:
    """A new contact; `Last_Name` is mandatory, so a nameless customer is named by phone
    or e-mail."""
    who = new.customer
    body: dict[str, JSON] = {"Last_Name": who.last_name or who.first_name}
    if who.first_name and who.last_name:
        body["First_Name"] = who.first_name
    if not body["Last_Name"]:
        body["Last_Name"] = who.phone or who.email or "—"
    if who.phone:
        body["Phone"] = who.phone
    if who.email:
        body["Email"] = who.email
    body.update(fields_json(new.fields))
    return body


def deal_json(new: NewDeal, contact_id: str, closing_date: date) -> dict[str, JSON]:
    """A new deal linked to its contact by `Contact_Name`, with every field set.

    `Closing_Date` is mandatory in Zoho's standard Deals layout: the day of creation.
    """
    body: dict[str, JSON] = {
        "Deal_Name": new.name,
        "Pipeline": new.pipeline_id,
        "Stage": new.status_id,
        "Amount": number_json(new.price),
        "Closing_Date": closing_date.isoformat(),
        "Contact_Name": {"id": contact_id},
    }
    if new.company_id:
        body["Account_Name"] = {"id": record_id(new.company_id)}  # the order's company
    body.update(fields_json(new.fields))
    return body


def records_body(record: Mapping[str, JSON]) -> dict[str, JSON]:
    """The `{"data": [...]}` wrapper of a write; `trigger` left out keeps Zoho's default
    automation (workflows run as for a record a user saved)."""
    return {"data": [dict(record)]}


def note_json(deal_id: str, text: str, title: str) -> dict[str, JSON]:
    """A note on a deal. v8 names the parent as `Parent_Id: {module, id}`; the older
    `$se_module` is sent too, as the notes API has long asked for it."""
    return {
        "Note_Title": title,
        "Note_Content": text,
        "Parent_Id": {"module": {"api_name": "Deals"}, "id": deal_id},
        "$se_module": "Deals",
    }


def deal_fields(config: CrmConfig) -> list[str]:
    """What a deal read asks for: the flow's system fields and every configured one
    (payments' and orders', so the order-id marker is read back too)."""
    configured = list(config.deal_field_ids())
    names = list(dict.fromkeys([*DEAL_SYSTEM_FIELDS, *configured]))
    for name in names:
        if not API_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a Zoho field API name")
    if len(names) > MAX_COQL_FIELDS:
        raise ValueError(f"{len(names)} deal fields; a query selects at most {MAX_COQL_FIELDS}")
    return names


def deals_query(contact_id: str, config: CrmConfig, limit: int = COQL_LIMIT) -> str:
    """COQL for every deal of a contact, most recently modified first (one credit)."""
    return _deals_query(record_id(contact_id), config, limit)


def deals_query_of(sub_request_id: str, config: CrmConfig) -> str:
    """The same for the first contact an earlier sub-request of a composite call found
    (`@{s:$.data[0].id}`), as many deals as a composite sub-request may read."""
    if not API_NAME.fullmatch(sub_request_id):
        raise ValueError(f"{sub_request_id!r} is not a sub-request id")
    return _deals_query(reference(sub_request_id, "$.data[0].id"), config, COMPOSITE_COQL_LIMIT)


def _deals_query(quoted: str, config: CrmConfig, limit: int) -> str:
    fields = ", ".join(deal_fields(config))
    # Safe to build as text: field names are API names, the id digits or a reference.
    where = f"Contact_Name = '{quoted}'"
    order = f"order by Modified_Time desc limit {int(limit)}"
    return f"select {fields} from Deals where {where} {order}"  # noqa: S608


@dataclass(frozen=True)
class SubRequest:
    """One sub-request of `POST /crm/v8/__composite_requests`."""

    sub_request_id: str
    method: str
    uri: str
    body: JSON = None
    params: Mapping[str, str] | None = None

    def json(self) -> dict[str, JSON]:
        out: dict[str, JSON] = {
            "sub_request_id": self.sub_request_id,
            "method": self.method,
            "uri": self.uri,
        }
        if self.params:
            out["params"] = dict(self.params)
        if self.body is not None:
            out["body"] = self.body
        return out


def reference(sub_request_id: str, path: str = "$.data[0].details.id") -> str:
    """`@{id:JSONPath}`: a value of an earlier sub-request's answer, resolved by Zoho."""
    return f"@{{{sub_request_id}:{path}}}"


def composite_body(requests: Sequence[SubRequest]) -> dict[str, JSON]:
    """The composite wrapper. `rollback_on_fail` false: one credit, and automation runs
    as for single calls; a sub-request that fails leaves the earlier ones applied, which
    the flow's remote-state checks find on the retry. Independent sub-requests may run
    in parallel (Zoho's default); a reference makes one wait for what it refers to."""
    if not 0 < len(requests) <= MAX_SUB_REQUESTS:
        raise ValueError(f"{len(requests)} sub-requests; a composite call takes 1 to 5")
    return {"rollback_on_fail": False, "__composite_requests": [r.json() for r in requests]}


# ---- orders: Accounts, stage moves -----------------------------------------------------
#
# A company is a record of the Accounts module (`Account_Name` mandatory); Zoho has no INN
# field, so `order_fields.company_inn` names a custom single-line field of Accounts
# (without one, companies are found by name only). A contact joins its company through
# its `Account_Name` lookup, a deal through its own `Account_Name` lookup
# (https://www.zoho.com/crm/developer/docs/api/v8/insert-records.html lists both among
# the Contacts and Deals fields). Deals have no line items: products relate to a deal
# only as a related list, without quantity or price; quantities and prices live in the
# inventory modules (Quotes, Sales Orders, Invoices), which are documents of their own
# (https://www.zoho.com/crm/developer/docs/api/v8/get-related-records.html): the items
# of an order are listed in the note.

COMPANY_NAME_WORDS = 8  # COQL takes 25 criteria; a name of more words is cut
COMPANY_SYSTEM_FIELDS = ("id", "Account_Name", "Created_Time")


def coql_literal(text: str) -> str:
    """A COQL string literal: quoted, a backslash before `'` and `\\`."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def companies_query(company: Company, config: CrmConfig) -> str | None:
    """COQL for the company by INN OR by every word of its name (`like '%word%'`, so case
    and runs of spaces do not matter), oldest first; the flow's rule confirms each hit.
    COQL reads what was just written (a search would wait for the index)."""
    inn_field = config.order_fields.company_inn
    if inn_field and not API_NAME.fullmatch(inn_field):
        raise ValueError(f"{inn_field!r} is not a Zoho field API name")
    words = [word.replace("%", "") for word in company.name.split()][:COMPANY_NAME_WORDS]
    name: str | None = None
    for word in filter(None, words):
        like = f"Account_Name like {coql_literal(f'%{word}%')}"
        name = like if name is None else f"({name} and {like})"
    by_inn = f"{inn_field} = {coql_literal(company.inn)}" if inn_field and company.inn else None
    where = " or ".join(f"({part})" for part in (by_inn, name) if part)
    if not where:
        return None
    fields = ", ".join(dict.fromkeys([*COMPANY_SYSTEM_FIELDS, *([inn_field] if inn_field else [])]))
    order = f"order by Created_Time asc, id asc limit {COQL_LIMIT}"
    return f"select {fields} from Accounts where {where} {order}"  # noqa: S608 - escaped


def company_json(company: Company, config: CrmConfig) -> dict[str, JSON]:
    """A new Account: name, phone, and the INN in the configured field. Accounts have no
    standard e-mail field: the e-mail stays with the contact."""
    body: dict[str, JSON] = {"Account_Name": company.name}
    if company.phone:
        body["Phone"] = company.phone
    inn_field = config.order_fields.company_inn
    if inn_field and company.inn:
        body[inn_field] = company.inn
    return body


def company_from_record(record: Mapping[str, JSON], config: CrmConfig) -> CompanyRecord:
    inn_field = config.order_fields.company_inn
    return CompanyRecord(
        id=str(record["id"]),
        name=field_text(record.get("Account_Name")),
        inn=field_text(record.get(inn_field)) if inn_field else "",
    )


def deal_change_json(change: DealChange) -> dict[str, JSON]:
    """One update of a deal: pipeline and stage (by display value), amount, name and
    fields; an empty dict when there is nothing to write."""
    body: dict[str, JSON] = {}
    if change.pipeline_id is not None:
        body["Pipeline"] = change.pipeline_id
    if change.status_id is not None:
        body["Stage"] = change.status_id
    if change.price is not None:
        body["Amount"] = number_json(change.price)
    if change.name is not None:
        body["Deal_Name"] = change.name
    body.update(fields_json(change.fields))
    return body


# ---- Zoho JSON → domain ----------------------------------------------------------------


def field_text(value: JSON) -> str:
    """A field value as text: numbers without a trailing ".0", multi-select options
    comma-separated, a lookup by its name."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return str(number_json(Decimal(str(value))))
    if isinstance(value, list):
        return ",".join(text for text in (field_text(item) for item in value) if text)
    if isinstance(value, dict):
        return field_text(value.get("name", value.get("id")))
    return str(value)


def timestamp(value: JSON) -> int:
    """Zoho's ISO 8601 with offset ("2025-01-21T00:49:20+03:00") → unix seconds."""
    if not value:
        return 0
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return int((parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp())


def _texts(record: Mapping[str, JSON], names: Iterable[str]) -> tuple[str, ...]:
    return tuple(text for name in names if (text := field_text(record.get(name)).strip()))


def contact_from_record(record: Mapping[str, JSON], config: CrmConfig) -> Contact:
    ids = config.contact_fields
    name = " ".join(_texts(record, ("First_Name", "Last_Name")))
    return Contact(
        id=str(record["id"]),
        name=field_text(record.get("Full_Name")) or name,
        phones=_texts(record, CONTACT_PHONE_FIELDS),
        emails=_texts(record, CONTACT_EMAIL_FIELDS),
        telegram_id=field_text(record.get(ids.telegram_id)) if ids.telegram_id else "",
        telegram_username=(
            field_text(record.get(ids.telegram_username)) if ids.telegram_username else ""
        ),
        deal_ids=(),  # read whole: the flow may fill its empty fields
    )


def lookup_id(value: JSON) -> str:
    """A lookup's id: `{"id": …, "name": …}` in records, `{"id": …}` in COQL rows."""
    if isinstance(value, dict):
        found = value.get("id")
        return str(found) if found else ""
    return str(value) if value else ""


def deal_from_record(record: Mapping[str, JSON], config: CrmConfig) -> Deal:
    """A deal as read (record or COQL row). Closed means in one of the configured closed
    stages (`closed_status_ids`: the stages whose forecast type is Closed Won / Lost,
    which `crm-bridge check` compares with Zoho's pipelines)."""
    stage = field_text(record.get("Stage"))
    contact = lookup_id(record.get("Contact_Name"))
    configured = config.deal_field_ids()
    return Deal(
        id=str(record["id"]),
        pipeline_id=field_text(record.get("Pipeline")),
        status_id=stage,
        updated_at=timestamp(record.get("Modified_Time")),
        price=Decimal(str(record.get("Amount") or 0)),
        is_closed=stage in config.closed_status_ids,
        contact_ids=(contact,) if contact else (),
        fields={key: text for key in configured if (text := field_text(record.get(key)))},
    )


def new_deal_read(new: NewDeal, deal_id: str, contact_id: str, modified: JSON) -> Deal:
    """The deal just created, as far as its creation answer and request tell."""
    return Deal(
        id=deal_id,
        pipeline_id=new.pipeline_id,
        status_id=new.status_id,
        updated_at=timestamp(modified),
        price=new.price,
        contact_ids=(contact_id,),
        fields={update.field_id: field_text(value_json(update)) for update in new.fields},
    )


def records_of(body: JSON) -> list[dict[str, JSON]]:
    """`data` of a read answer; an empty read is HTTP 204 with no body at all."""
    if not isinstance(body, dict):
        return []
    return [item for item in body.get("data") or () if isinstance(item, dict)]


def more_records(body: JSON) -> bool:
    info = body.get("info") if isinstance(body, dict) else None
    return bool(isinstance(info, dict) and info.get("more_records"))


def write_details(crm: str, body: JSON, operation: str) -> dict[str, JSON]:
    """`details` of the one record a write sent (its `id`, `Modified_Time`, …), or the
    record's error as the error class it calls for."""
    items = records_of(body)
    if not items:
        raise PermanentCrmError(crm, f"{operation}: the answer names no record")
    item = items[0]
    if item.get("status") != "success":
        raise error_from_body(crm, operation, 400, item)
    details = item.get("details")
    if not isinstance(details, dict) or not details.get("id"):
        raise PermanentCrmError(crm, f"{operation}: the answer has no record id")
    return details


def composite_items(crm: str, body: JSON, expected: int) -> list[tuple[int, JSON] | CrmError]:
    """Each sub-request's HTTP status and body, in order, or the error that kept Zoho from
    running it (a wrapper error, an unresolvable reference, a rollback)."""
    items = body.get("__composite_requests") if isinstance(body, dict) else None
    if not isinstance(items, list) or len(items) != expected:
        raise PermanentCrmError(crm, "composite: the answer does not match the sub-requests")
    out: list[tuple[int, JSON] | CrmError] = []
    for index, item in enumerate(items):
        response = (item.get("details") or {}).get("response") if isinstance(item, dict) else None
        if not isinstance(item, dict) or item.get("status") != "success" or response is None:
            status = 400 if isinstance(item, dict) else 500
            out.append(error_from_body(crm, f"composite sub-request {index + 1}", status, item))
            continue
        out.append((int(response.get("status_code") or 0), response.get("body")))
    return out


def sub_responses(crm: str, body: JSON, expected: int) -> list[tuple[int, JSON]]:
    """`composite_items`, each of which must have run."""
    out: list[tuple[int, JSON]] = []
    for item in composite_items(crm, body, expected):
        if isinstance(item, CrmError):
            raise item
        out.append(item)
    return out


# Request-level and record-level error codes → what the bridge does about them.
AUTH_CODES = frozenset(
    {"INVALID_TOKEN", "AUTHENTICATION_FAILURE", "OAUTH_SCOPE_MISMATCH", "NO_PERMISSION"}
)
TRANSIENT_CODES = frozenset({"INTERNAL_ERROR", "INTERNAL_SERVER_ERROR", "REQUEST_TIMEOUT"})
LIMIT_CODES = frozenset({"TOO_MANY_REQUESTS"})


def error_from_body(crm: str, operation: str, status: int, body: JSON) -> CrmError:
    """The error class a Zoho error body (`{code, details, message, status: "error"}`)
    calls for; the message keeps Zoho's code, message and the field it names (never a
    value, never a secret)."""
    items = records_of(body)
    if items and not (isinstance(body, dict) and body.get("code")):
        body = items[0]  # a write's answer: the error of its (one) record
    code = str(body.get("code") or "") if isinstance(body, dict) else ""
    message = str(body.get("message") or "")[:200] if isinstance(body, dict) else ""
    details = body.get("details") if isinstance(body, dict) else None
    where = ""
    if isinstance(details, dict):
        named = details.get("api_name") or details.get("json_path")
        where = f" ({named})" if named else ""
    text = f"{operation}: HTTP {status} {code or 'error'}: {message}{where}".rstrip(": ")
    if code in AUTH_CODES or status == 401:
        return AuthError(crm, text)
    if code in LIMIT_CODES or status == 429:
        return RateLimited(crm, text)
    if code in TRANSIENT_CODES or status >= 500:
        return TransientCrmError(crm, text)
    return PermanentCrmError(crm, text)


def pipelines_from_json(layouts: Sequence[tuple[str, JSON]]) -> tuple[Pipeline, ...]:
    """Pipelines of every Deals layout (`GET /settings/pipeline?layout_id=` answers),
    keyed by display value; each stage named with its forecast type."""
    seen: dict[str, Pipeline] = {}
    for _layout_name, body in layouts:
        entries = body.get("pipeline") if isinstance(body, dict) else None
        for entry in entries or ():
            name = str(entry.get("display_value") or "")
            if not name or name in seen:
                continue
            stages = {
                str(stage.get("display_value")): _stage_label(stage)
                for stage in sorted(entry.get("maps") or (), key=_sequence)
                if stage.get("display_value")
            }
            seen[name] = Pipeline(id=name, name=name, statuses=stages)
    return tuple(seen.values())


def closed_stages(layouts: Sequence[tuple[str, JSON]]) -> set[str]:
    """Stage display values whose forecast type is Closed Won or Closed Lost."""
    closed: set[str] = set()
    for _layout_name, body in layouts:
        for entry in (body.get("pipeline") if isinstance(body, dict) else None) or ():
            for stage in entry.get("maps") or ():
                if stage.get("forecast_type") in CLOSED_FORECAST_TYPES:
                    closed.add(str(stage.get("display_value")))
    return closed


def _stage_label(stage: Mapping[str, JSON]) -> str:
    name, forecast = str(stage.get("display_value")), stage.get("forecast_type")
    return f"{name} ({forecast})" if forecast and forecast != "Open" else name


def _sequence(stage: Mapping[str, JSON]) -> int:
    number = stage.get("sequence_number")
    return number if isinstance(number, int) else 0


def custom_field_from_json(record: Mapping[str, JSON], entity: str) -> CustomField:
    kind = str(record.get("data_type", ""))
    options = {
        str(o["display_value"]): str(o["display_value"])
        for o in record.get("pick_list_values") or ()
        if o.get("display_value") and o.get("type") != "unused"
    }
    return CustomField(
        id=str(record["api_name"]),
        name=str(record.get("field_label") or record.get("display_label") or ""),
        type=FIELD_TYPES.get(kind, f"zoho:{kind}"),
        entity=entity,
        enums=options,
    )


def custom_fields_from_json(body: JSON, entity: str) -> list[CustomField]:
    entries = body.get("fields") if isinstance(body, dict) else None
    return [
        custom_field_from_json(entry, entity)
        for entry in entries or ()
        if isinstance(entry, dict) and entry.get("custom_field") and entry.get("api_name")
    ]


def layout_ids(body: JSON) -> list[tuple[str, str]]:
    """(id, name) of the active Deals layouts."""
    entries = body.get("layouts") if isinstance(body, dict) else None
    return [
        (str(entry["id"]), str(entry.get("name") or entry.get("display_label") or ""))
        for entry in entries or ()
        if isinstance(entry, dict) and entry.get("id") and entry.get("status", "active") == "active"
    ]
