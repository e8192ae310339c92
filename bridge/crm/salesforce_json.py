"""Pure translation between the domain types and Salesforce's REST API (sObjects, SOQL,
SOSL, Composite), plus the JWT bearer assertion. No I/O, no clock: `now` is passed in.

Records. A contact is a `Contact`, a deal an `Opportunity`; they are linked through
`OpportunityContactRole` (the documented many-to-many link, not `Opportunity.ContactId`).
"Open" is Salesforce's own `IsClosed = false` (from the stage's `OpportunityStage.IsClosed`);
a pipeline is a record type (each names a sales process, which lists its stages), and a
status is a `StageName` picklist value. An org without record types has one pipeline, the
master record type `012000000000000AAA`, which is never sent on a create (Salesforce
refuses it there).

Values. Custom fields end in `__c` and are named by the config. Text, picklist values and
date-times are JSON strings (date-times in UTC, ISO 8601 with milliseconds and `Z`),
numbers are JSON numbers, a multi-select picklist is its values joined by `;` (the whole
set is replaced).

Search. SOQL equality compares the stored string (case-insensitively for text), and phones
are stored as typed ("+7 999 123-45-67", "(415) 555-1212"). So the contact lookup is one
SOQL query OR-ing every key with the E.164 form the bridge itself writes (found at once,
no index lag), and when there is a phone, a SOSL phone search beside it in the same
Composite Batch request: SOSL's phone search matches digits whatever the punctuation
(https://developer.salesforce.com/docs/atlas.en-us.262.0.api.meta/api/sample_search_call.htm
searches `4155551212`); the term is sent in every digit form a number is commonly typed in
(international, national significant, national with trunk prefix), OR-ed, and the flow's
confirm rule compares normalised numbers afterwards.

Notes are classic `Note` records (`ParentId` = the opportunity, plain-text `Body` up to
32 KB): one sub-request to write, and one SOQL query reads every body back in full. The
enhanced `ContentNote` would need a second record (`ContentDocumentLink`) to attach it,
strips line breaks from plain text, and keeps its body in a blob that SOQL does not
return (one more GET per note, and blob reads are not allowed in a composite request).

Errors. Salesforce answers an array of `{message, errorCode, fields}`
(https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/errorcodes.htm);
`error_from_answer` turns one into the bridge's error tree. The daily org allocation
spent answers 403 REQUEST_LIMIT_EXCEEDED, not 429.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from urllib.parse import quote

import phonenumbers
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from bridge.crm.base import JSON, CustomField, Pipeline
from bridge.crm.values import typed_value
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
    OrderItem,
)
from bridge.errors import (
    AuthError,
    CrmError,
    PermanentCrmError,
    RateLimited,
    TransientCrmError,
)
from bridge.settings import CrmConfig

DEFAULT_API_VERSION = "68.0"  # Winter '27, current in December 2026; configurable
MASTER_RECORD_TYPE = "012000000000000AAA"
PHONE_FIELDS = ("Phone", "MobilePhone", "HomePhone", "OtherPhone")
CONTACT_BASE = ("Id", "FirstName", "LastName", "Email", *PHONE_FIELDS)
DEAL_BASE = ("Id", "Name", "StageName", "IsClosed", "RecordTypeId", "Amount", "LastModifiedDate")
ROLES = "(SELECT ContactId FROM OpportunityContactRoles)"
QUERY_LIMIT = 200
NOTE_TITLE_MAX = 80  # Note.Title is a string(80); the body holds the whole text
NOTE_BODY_MAX = 32000
# Composite: at most 25 sub-requests, five of them queries; batch: 25 independent ones.
COMPOSITE_MAX = 25
JWT_LIFETIME = 180  # seconds; Salesforce takes an `exp` at most 3 minutes ahead
# Errors that say the record was busy or the org briefly unavailable: worth retrying.
TRANSIENT_CODES = frozenset({"UNABLE_TO_LOCK_ROW", "SERVER_UNAVAILABLE", "QUERY_TIMEOUT"})
_ROLLED_BACK = "PROCESSING_HALTED"


def data_path(version: str) -> str:
    """`/services/data/v66.0`: every REST resource lives under it."""
    return f"/services/data/v{version.removeprefix('v')}"


# ---- SOQL / SOSL --------------------------------------------------------------------

_SOQL_ESCAPES = {"\\": "\\\\", "'": "\\'", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def soql_literal(value: str) -> str:
    """A SOQL string literal: quoted, with backslash escapes (no injection through a value)."""
    return "'" + "".join(_SOQL_ESCAPES.get(char, char) for char in value) + "'"


def is_record_id(value: str) -> bool:
    """A Salesforce record id: 15 or 18 letters and digits."""
    return re.fullmatch(r"[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?", value) is not None


def checked_id(value: str) -> str:
    """`value` when it is a record id (so it can go into a URL); ValueError otherwise."""
    if not is_record_id(value):
        raise ValueError(f"{value!r} is not a Salesforce record id")
    return value


def _soql_id(value: str) -> str:
    # Record ids are 15 or 18 letters and digits; anything else is refused before it is sent.
    if not is_record_id(value):
        raise ValueError(f"{value!r} is not a Salesforce record id")
    return f"'{value}'"


def phone_digit_forms(e164: str) -> list[str]:
    """The digit strings a number is commonly typed as: "+79991234567" → 79991234567,
    9991234567, 89991234567 (trunk prefix). SOSL matches digits, not formatting."""
    digits = "".join(char for char in e164 if char.isdigit())
    forms = [digits]
    try:
        number = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return forms
    forms.append(phonenumbers.national_significant_number(number))
    national = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL)
    forms.append("".join(char for char in national if char.isdigit()))
    return list(dict.fromkeys(form for form in forms if len(form) >= 5))


def contact_fields(config: CrmConfig) -> list[str]:
    ids = config.contact_fields
    return _names([*CONTACT_BASE, ids.telegram_id, ids.telegram_username])


def deal_fields(config: CrmConfig) -> list[str]:
    """What a deal read selects: the flow's standard fields and every configured one
    (payments' and orders', so the order-id marker is read back too)."""
    return _names([*DEAL_BASE, *config.deal_field_ids()])


_FIELD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def _names(names: Iterable[str | None]) -> list[str]:
    """Distinct field API names; a configured name that is not one (it would end up in a
    query as it is) raises ValueError naming it."""
    distinct = list(dict.fromkeys(name for name in names if name))
    for name in distinct:
        if not _FIELD_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a Salesforce field API name")
    return distinct


def contact_soql(keys: Sequence[LookupKey], config: CrmConfig) -> str | None:
    """One SOQL query OR-ing an exact match on every key (None when no key can be searched:
    a Telegram id without a configured field). Oldest first, as the flow's tie-break wants."""
    conditions: list[str] = []
    for key in keys:
        if key.kind is KeyKind.TELEGRAM_ID and config.contact_fields.telegram_id:
            conditions.append(f"{config.contact_fields.telegram_id} = {soql_literal(key.value)}")
        elif key.kind is KeyKind.PHONE:
            literal = soql_literal(key.value)
            conditions.extend(f"{name} = {literal}" for name in PHONE_FIELDS)
        elif key.kind is KeyKind.EMAIL:
            conditions.append(f"Email = {soql_literal(key.value)}")
    if not conditions:
        return None
    return (
        f"SELECT {', '.join(contact_fields(config))} FROM Contact"  # noqa: S608 - literals escaped
        f" WHERE {' OR '.join(conditions)} ORDER BY CreatedDate ASC LIMIT {QUERY_LIMIT}"
    )


def contact_sosl(keys: Sequence[LookupKey], config: CrmConfig) -> str | None:
    """A SOSL search of phone fields for every digit form of the phone key (None: no phone)."""
    terms = [
        form for key in keys if key.kind is KeyKind.PHONE for form in phone_digit_forms(key.value)
    ]
    if not terms:
        return None
    returning = (
        f"Contact({', '.join(contact_fields(config))} ORDER BY CreatedDate ASC LIMIT {QUERY_LIMIT})"
    )
    return f"FIND {{{' OR '.join(dict.fromkeys(terms))}}} IN PHONE FIELDS RETURNING {returning}"


def deals_soql(contact_id: str, config: CrmConfig) -> str:
    """The contact's open opportunities (any record type), newest first, each with the
    contacts its roles name. Excluded stages are open in Salesforce's terms: the flow
    drops them itself."""
    linked = (
        "SELECT OpportunityId FROM OpportunityContactRole"  # noqa: S608 - ids checked
        f" WHERE ContactId = {_soql_id(contact_id)}"
    )
    return (
        f"SELECT {', '.join(deal_fields(config))}, {ROLES} FROM Opportunity"  # noqa: S608
        f" WHERE IsClosed = false AND Id IN ({linked})"
        f" ORDER BY LastModifiedDate DESC LIMIT {QUERY_LIMIT}"
    )


def deal_soql(deal_id: str, config: CrmConfig) -> str:
    """One opportunity, open or closed, with the contacts its roles name."""
    return (
        f"SELECT {', '.join(deal_fields(config))}, {ROLES} FROM Opportunity"  # noqa: S608
        f" WHERE Id = {_soql_id(deal_id)}"
    )


def notes_soql(deal_id: str) -> str:
    return (
        "SELECT Id, Title, Body, CreatedDate FROM Note"  # noqa: S608 - the id is checked
        f" WHERE ParentId = {_soql_id(deal_id)} ORDER BY CreatedDate ASC, Id ASC"
    )


def query_path(version: str, soql: str) -> str:
    """A Query resource URL with the statement in it, for a composite sub-request."""
    return f"{data_path(version)}/query?q={quote(soql, safe='')}"


def lookup_batch_json(version: str, soql: str, sosl: str) -> dict[str, JSON]:
    """A Composite Batch of the SOQL query and the SOSL search: one HTTP request. (The
    Composite resource takes no Search sub-request; Batch does, and each sub-request
    counts once against the daily allocation.)"""
    short = f"v{version.removeprefix('v')}"
    return {
        "haltOnError": False,
        "batchRequests": [
            {"method": "GET", "url": f"{short}/query?q={quote(soql, safe='')}"},
            {"method": "GET", "url": f"{short}/search?q={quote(sosl, safe='')}"},
        ],
    }


def batch_results(crm: str, answer: JSON) -> list[JSON]:
    """The sub-results of a Composite Batch answer; a failed sub-request raises its error."""
    results = answer["results"]
    bodies: list[JSON] = []
    for index, result in enumerate(results):
        status = int(result["statusCode"])
        if status >= 400:
            raise error_from_answer(crm, status, result.get("result"), f"batch request {index}")
        bodies.append(result.get("result"))
    return bodies


# ---- domain → JSON ------------------------------------------------------------------


def field_value(update: FieldUpdate) -> JSON:
    """The JSON value Salesforce takes for one field (ValueError when it does not fit):
    numbers as JSON numbers, multi-select options `;`-joined (so none may hold one)."""

    def options(values: list[str]) -> str:
        if any(";" in value for value in values):
            raise ValueError(f"field {update.field_id}: a multi-select value cannot hold ';'")
        return ";".join(values)

    if update.kind is FieldKind.DATE:
        # A Date field takes `YYYY-MM-DD`; a datetime (a subclass of date) is not a day.
        if isinstance(update.value, datetime) or not isinstance(update.value, date):
            raise ValueError(f"field {update.field_id}: date value {update.value!r} is not a day")
        return update.value.isoformat()
    return typed_value(update, json_number, options)


def fields_json(updates: Iterable[FieldUpdate]) -> dict[str, JSON]:
    return {update.field_id: field_value(update) for update in updates}


def json_number(value: Decimal) -> int | float:
    """An int when whole, else the float nearest the decimal (money has two places)."""
    if not value.is_finite():
        raise ValueError(f"{value} is not a number Salesforce can store")
    if value == value.to_integral_value():
        return int(value)
    return float(value)


def contact_create_json(new: NewContact) -> dict[str, JSON]:
    """A new contact. `LastName` is required: without a last name the first name (or
    the phone, e-mail, Telegram username or id) goes there, so a manager sees who it is."""
    who = new.customer
    username = f"@{who.telegram_username}" if who.telegram_username else ""
    last = who.last_name or who.first_name or who.phone or who.email or username
    body: dict[str, JSON] = {
        "FirstName": who.first_name if who.last_name else "",
        "LastName": last or f"Telegram {who.telegram_id or ''}".strip(),
        "Email": who.email or "",
        "MobilePhone": who.phone or "",
    }
    body = {name: value for name, value in body.items() if value}
    body.update(fields_json(new.fields))
    return body


def deal_create_json(new: NewDeal, close_date: date) -> dict[str, JSON]:
    """A new opportunity: `Name`, `StageName` and `CloseDate` are required; the master
    record type is left out (an org without record types refuses it)."""
    body: dict[str, JSON] = {
        "Name": new.name[:120],  # Opportunity.Name is a string(120)
        "StageName": new.status_id,
        "CloseDate": close_date.isoformat(),
        "Amount": json_number(new.price),
    }
    if new.pipeline_id and new.pipeline_id != MASTER_RECORD_TYPE:
        body["RecordTypeId"] = new.pipeline_id
    if new.company_id:
        body["AccountId"] = new.company_id  # the order's company (Opportunity.AccountId)
    body.update(fields_json(new.fields))
    return body


def role_json(deal_ref: str, contact_ref: str) -> dict[str, JSON]:
    return {"OpportunityId": deal_ref, "ContactId": contact_ref, "IsPrimary": True}


def note_create_json(deal_id: str, text: str) -> dict[str, JSON]:
    """A classic Note on the opportunity; its title is the first line of the text."""
    if len(text) > NOTE_BODY_MAX:
        raise ValueError(f"a note holds {NOTE_BODY_MAX} characters, this one {len(text)}")
    first = next((line.strip() for line in text.splitlines() if line.strip()), "Note")
    return {"ParentId": deal_id, "Title": first[:NOTE_TITLE_MAX], "Body": text}


@dataclass(frozen=True)
class SubRequest:
    method: str
    sobject: str
    reference: str
    body: Mapping[str, JSON]


def composite_json(version: str, steps: Sequence[SubRequest]) -> dict[str, JSON]:
    """One Composite request, all or none: later steps name earlier records as
    `@{reference.id}`. Not collated, so the steps run in the order given."""
    if not 0 < len(steps) <= COMPOSITE_MAX:
        raise ValueError(f"a composite request takes 1 to {COMPOSITE_MAX} sub-requests")
    return {
        "allOrNone": True,
        "collateSubrequests": False,
        "compositeRequest": [
            {
                "method": step.method,
                "url": f"{data_path(version)}/sobjects/{step.sobject}",
                "referenceId": step.reference,
                "body": dict(step.body),
            }
            for step in steps
        ],
    }


def create_contact_and_deal_steps(
    contact: Mapping[str, JSON], deal: Mapping[str, JSON]
) -> list[SubRequest]:
    return [
        SubRequest("POST", "Contact", "contact", contact),
        SubRequest("POST", "Opportunity", "deal", deal),
        SubRequest(
            "POST", "OpportunityContactRole", "role", role_json("@{deal.id}", "@{contact.id}")
        ),
    ]


def create_deal_steps(contact_id: str, deal: Mapping[str, JSON]) -> list[SubRequest]:
    return [
        SubRequest("POST", "Opportunity", "deal", deal),
        SubRequest("POST", "OpportunityContactRole", "role", role_json("@{deal.id}", contact_id)),
    ]


def composite_results(crm: str, answer: JSON) -> dict[str, JSON]:
    """Each sub-request's body by reference id. With allOrNone a failure rolls back the
    rest, which then answer PROCESSING_HALTED: the error raised is the one that caused it."""
    results = answer["compositeResponse"]
    failed = [r for r in results if int(r["httpStatusCode"]) >= 400]
    if failed:
        cause = next((r for r in failed if _first_code(r.get("body")) != _ROLLED_BACK), failed[0])
        where = f"composite {cause.get('referenceId', '?')}"
        error = error_from_answer(crm, int(cause["httpStatusCode"]), cause.get("body"), where)
        raise error
    return {str(r["referenceId"]): r.get("body") for r in results}


# ---- orders: accounts, stage moves, opportunity products ------------------------------
#
# A company is an `Account`; Salesforce has no INN field, so `order_fields.company_inn`
# names a custom text field of Account (without one, companies are found by name only).
# A contact belongs to its company through `Contact.AccountId` and an opportunity through
# `Opportunity.AccountId`. A deal's items are `OpportunityLineItem` rows, each of a
# `PricebookEntry` of the opportunity's `Pricebook2`
# (https://developer.salesforce.com/docs/platform/object-reference/references/standard-objects/object-opportunitylineitem.html):
# only with a price book configured (`order_catalog_id`), products found by `ProductCode`.

ACCOUNT_BASE = ("Id", "Name", "CreatedDate")
LINE_FIELDS = "Id, PricebookEntryId, ProductCode, Quantity, UnitPrice"
COLLECTION_MAX = 200  # records per sObject Collections request
NAME_WORDS_MAX = 8


def _like_literal(words: Sequence[str]) -> str:
    """A SOQL LIKE pattern matching the words in order with anything between them (so
    runs of spaces do not matter): `%` and `_` in a word are escaped, not wildcards."""
    escaped = []
    for word in words:
        text = word.replace("\\", "\\\\").replace("'", "\\'")
        escaped.append(text.replace("%", "\\%").replace("_", "\\_"))
    return "'" + "%".join(escaped) + "'"


def company_soql(company: Company, config: CrmConfig) -> str | None:
    """One query for the company by INN (the configured Account field) OR by name, oldest
    first. LIKE ignores case in SOQL; the flow's rule confirms every hit."""
    inn_field = config.order_fields.company_inn
    conditions = []
    if inn_field and company.inn:
        conditions.append(f"{_names([inn_field])[0]} = {soql_literal(company.inn)}")
    words = company.name.split()[:NAME_WORDS_MAX]
    if words:
        conditions.append(f"Name LIKE {_like_literal(words)}")
    if not conditions:
        return None
    fields = _names([*ACCOUNT_BASE, inn_field])
    return (
        f"SELECT {', '.join(fields)} FROM Account"  # noqa: S608 - literals escaped
        f" WHERE {' OR '.join(conditions)} ORDER BY CreatedDate ASC, Id ASC LIMIT {QUERY_LIMIT}"
    )


def company_from_json(record: Mapping[str, JSON], config: CrmConfig) -> CompanyRecord:
    inn_field = config.order_fields.company_inn
    return CompanyRecord(
        id=str(record["Id"]), name=_text(record, "Name"), inn=_text(record, inn_field)
    )


def company_create_json(company: Company, config: CrmConfig) -> dict[str, JSON]:
    """A new Account: its name (string(255)), phone, and INN in the configured field. An
    Account has no standard e-mail field: the e-mail stays with the contact."""
    body: dict[str, JSON] = {"Name": company.name[:255]}
    if company.phone:
        body["Phone"] = company.phone
    inn_field = config.order_fields.company_inn
    if inn_field and company.inn:
        body[_names([inn_field])[0]] = company.inn
    return body


def deal_change_json(change: DealChange) -> dict[str, JSON]:
    """One PATCH of the opportunity: its stage (and record type, the pipeline), amount,
    name and fields. The master record type is never sent (Salesforce refuses it)."""
    body: dict[str, JSON] = {}
    if change.status_id is not None:
        body["StageName"] = change.status_id
    if change.pipeline_id and change.pipeline_id != MASTER_RECORD_TYPE:
        body["RecordTypeId"] = change.pipeline_id
    if change.price is not None:
        body["Amount"] = json_number(change.price)
    if change.name is not None:
        body["Name"] = change.name[:120]
    body.update(fields_json(change.fields))
    return body


def items_read_json(
    version: str, deal_id: str, pricebook_id: str, codes: Sequence[str]
) -> dict[str, JSON]:
    """One Composite request of queries: the opportunity's price book and line items, and
    the active entries of `pricebook_id` for the products' codes (when there are any)."""
    lines = (
        f"SELECT Id, Pricebook2Id, (SELECT {LINE_FIELDS} FROM OpportunityLineItems)"  # noqa: S608
        f" FROM Opportunity WHERE Id = {_soql_id(deal_id)}"
    )
    queries = [("deal", lines)]
    if codes:
        listed = ", ".join(soql_literal(code) for code in dict.fromkeys(codes))
        entries = (
            "SELECT Id, ProductCode FROM PricebookEntry"  # noqa: S608 - literals escaped
            f" WHERE Pricebook2Id = {_soql_id(pricebook_id)} AND IsActive = true"
            f" AND ProductCode IN ({listed})"
        )
        queries.append(("entries", entries))
    return {
        "allOrNone": False,
        "collateSubrequests": False,
        "compositeRequest": [
            {"method": "GET", "url": query_path(version, soql), "referenceId": ref}
            for ref, soql in queries
        ],
    }


@dataclass(frozen=True)
class LineItems:
    """What the opportunity holds now, as the read answered."""

    pricebook_id: str
    lines: tuple[tuple[str, str, Decimal, Decimal], ...]  # (line id, entry id, qty, price)
    entries: Mapping[str, str]  # product code → price book entry id


def line_items_from_json(results: Mapping[str, JSON]) -> LineItems | None:
    """The read's answer (None: no such opportunity)."""
    deal = results.get("deal") or {}
    rows = list(deal.get("records") or ())
    if not rows:
        return None
    children = rows[0].get("OpportunityLineItems")
    lines = tuple(
        (
            str(line["Id"]),
            str(line.get("PricebookEntryId") or ""),
            _decimal(line.get("Quantity")),
            _decimal(line.get("UnitPrice")),
        )
        for line in (children.get("records") if isinstance(children, dict) else None) or ()
    )
    entries_answer = results.get("entries") or {}
    entries = {
        str(row["ProductCode"]): str(row["Id"])
        for row in entries_answer.get("records") or ()
        if row.get("ProductCode")
    }
    return LineItems(_text(rows[0], "Pricebook2Id"), lines, entries)


def missing_products(items: Sequence[OrderItem], entries: Mapping[str, str]) -> list[str]:
    return list(dict.fromkeys(item.product_id for item in items if item.product_id not in entries))


def wanted_lines(
    items: Sequence[OrderItem], entries: Mapping[str, str]
) -> list[tuple[str, Decimal, Decimal]]:
    return [(entries[item.product_id], item.quantity, item.price) for item in items]


def same_lines(current: LineItems, wanted: Sequence[tuple[str, Decimal, Decimal]]) -> bool:
    held = sorted((entry, qty, price) for _, entry, qty, price in current.lines)
    return held == sorted(wanted)


def items_write_json(
    version: str,
    deal_id: str,
    pricebook_id: str,
    current: LineItems,
    wanted: Sequence[tuple[str, Decimal, Decimal]],
) -> dict[str, JSON]:
    """One Composite request, all or none: delete the opportunity's lines (an sObject
    Collections DELETE), set its price book when it has another or none, insert the new
    lines (an sObject Collections POST). Each part only when there is something to do."""
    base = data_path(version)
    steps: list[dict[str, JSON]] = []
    old = [line_id for line_id, *_ in current.lines]
    for start in range(0, len(old), COLLECTION_MAX):
        ids = ",".join(old[start : start + COLLECTION_MAX])
        steps.append(
            {
                "method": "DELETE",
                "url": f"{base}/composite/sobjects?ids={ids}&allOrNone=true",
                "referenceId": f"drop{start // COLLECTION_MAX}",
            }
        )
    if wanted and current.pricebook_id != pricebook_id:
        steps.append(
            {
                "method": "PATCH",
                "url": f"{base}/sobjects/Opportunity/{checked_id(deal_id)}",
                "referenceId": "pricebook",
                "body": {"Pricebook2Id": pricebook_id},
            }
        )
    records = [
        {
            "attributes": {"type": "OpportunityLineItem"},
            "OpportunityId": deal_id,
            "PricebookEntryId": entry,
            "Quantity": json_number(quantity),
            "UnitPrice": json_number(price),
        }
        for entry, quantity, price in wanted
    ]
    for start in range(0, len(records), COLLECTION_MAX):
        steps.append(
            {
                "method": "POST",
                "url": f"{base}/composite/sobjects",
                "referenceId": f"add{start // COLLECTION_MAX}",
                "body": {"allOrNone": True, "records": records[start : start + COLLECTION_MAX]},
            }
        )
    if not 0 < len(steps) <= COMPOSITE_MAX:
        raise ValueError(f"a composite request takes 1 to {COMPOSITE_MAX} sub-requests")
    return {"allOrNone": True, "collateSubrequests": False, "compositeRequest": steps}


def collection_errors(crm: str, results: Mapping[str, JSON]) -> CrmError | None:
    """An sObject Collections answer is a 200 listing each record's outcome: the first
    record refused, as an error (None when every record was saved or deleted)."""
    for ref, body in results.items():
        if not isinstance(body, list):
            continue
        for item in body:
            if isinstance(item, dict) and item.get("success") is False:
                # Collections name the code `statusCode`; the error mapper reads `errorCode`.
                errors = [
                    {**error, "errorCode": error.get("statusCode")}
                    for error in item.get("errors") or ()
                    if isinstance(error, dict)
                ]
                return error_from_answer(crm, 400, errors, f"composite {ref}")
    return None


# ---- JSON → domain ------------------------------------------------------------------


def _text(record: Mapping[str, JSON], name: str | None) -> str:
    value = record.get(name) if name else None
    if value is None or isinstance(value, dict | list):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def contact_from_json(record: Mapping[str, JSON], config: CrmConfig) -> Contact:
    """A query or search row as a `Contact`. `deal_ids` is () rather than None: the row
    does not list opportunities, and `list_deals` queries them itself."""
    ids = config.contact_fields
    name = " ".join(p for p in (_text(record, "FirstName"), _text(record, "LastName")) if p)
    return Contact(
        id=str(record["Id"]),
        name=name,
        phones=tuple(_text(record, f) for f in PHONE_FIELDS if _text(record, f)),
        emails=(_text(record, "Email"),) if _text(record, "Email") else (),
        telegram_id=_text(record, ids.telegram_id),
        telegram_username=_text(record, ids.telegram_username),
        deal_ids=(),
    )


def deal_from_json(record: Mapping[str, JSON], config: CrmConfig) -> Deal:
    """An opportunity row as the flow sees it: closed is Salesforce's `IsClosed` (or a
    stage the config lists as closed); linked contacts come from the roles sub-query."""
    stage = _text(record, "StageName")
    roles = record.get("OpportunityContactRoles")
    rows = roles.get("records") if isinstance(roles, dict) else None
    contacts = (str(row["ContactId"]) for row in rows or () if row.get("ContactId"))
    wanted = config.deal_field_ids()
    return Deal(
        id=str(record["Id"]),
        pipeline_id=_text(record, "RecordTypeId") or MASTER_RECORD_TYPE,
        status_id=stage,
        updated_at=timestamp(record.get("LastModifiedDate")),
        price=_decimal(record.get("Amount")),
        is_deleted=bool(record.get("IsDeleted")),
        is_closed=record.get("IsClosed") is True or stage in config.closed_status_ids,
        contact_ids=tuple(dict.fromkeys(contacts)),
        fields={name: _text(record, name) for name in wanted if _text(record, name)},
    )


def note_text(record: Mapping[str, JSON]) -> str:
    return _text(record, "Body").replace("\r\n", "\n")


def query_rows(answer: JSON) -> tuple[list[Mapping[str, JSON]], str | None]:
    """A query answer's rows and the URL of the next batch (None when done)."""
    rows = list(answer.get("records") or ())
    following = answer.get("nextRecordsUrl") if not answer.get("done", True) else None
    return rows, str(following) if following else None


def search_rows(answer: JSON) -> list[Mapping[str, JSON]]:
    return list(answer.get("searchRecords") or ())


def timestamp(value: JSON) -> int:
    """Unix seconds of a Salesforce dateTime ("2026-12-02T10:00:00.000+0000"); 0 when absent."""
    if value is None or value == "":
        return 0
    text = re.sub(r"([+-]\d\d)(\d\d)$", r"\1:\2", str(value).replace("Z", "+00:00"))
    return int(datetime.fromisoformat(text).timestamp())


def _decimal(value: JSON) -> Decimal:
    try:
        return Decimal(str(value)) if value not in (None, "") else Decimal(0)
    except InvalidOperation:
        return Decimal(0)


# ---- schema (discover / check) ------------------------------------------------------

_TYPES = {
    "string": "text",
    "email": "text",
    "phone": "text",
    "url": "text",
    "textarea": "textarea",
    "double": "numeric",
    "currency": "numeric",
    "percent": "numeric",
    "int": "numeric",
    "long": "numeric",
    "datetime": "date_time",
    "date": "date",
    "picklist": "select",
    "multipicklist": "multiselect",
    "boolean": "checkbox",
}


def record_types(describe: Mapping[str, JSON]) -> list[Mapping[str, JSON]]:
    """The object's active record types other than the master one (none: an org whose
    opportunities have no record types)."""
    infos = describe.get("recordTypeInfos") or ()
    return [i for i in infos if i.get("active") and not i.get("master")]


def active_values(values: Iterable[Mapping[str, JSON]]) -> dict[str, str]:
    """Picklist value → label, active ones only (describe and UI API shapes alike)."""
    return {
        str(v["value"]): str(v.get("label") or v["value"])
        for v in values
        if v.get("active", True) is not False
    }


def master_pipeline(describe: Mapping[str, JSON]) -> Pipeline:
    """The one pipeline of an org without record types: every active stage."""
    stage = next(f for f in describe.get("fields") or () if f.get("name") == "StageName")
    statuses = active_values(stage.get("picklistValues") or ())
    return Pipeline(id=MASTER_RECORD_TYPE, name="Master", statuses=statuses)


def pipeline_from_json(info: Mapping[str, JSON], stage_values: Mapping[str, JSON]) -> Pipeline:
    """A record type with the stages of its sales process (the UI API's picklist values
    of `StageName` for that record type)."""
    statuses = active_values(stage_values.get("values") or ())
    return Pipeline(id=str(info["recordTypeId"]), name=str(info.get("name", "")), statuses=statuses)


def stage_values_path(version: str, record_type_id: str) -> str:
    """The UI API's stage values of one record type (its sales process)."""
    info = f"{data_path(version)}/ui-api/object-info/Opportunity"
    return f"{info}/picklist-values/{record_type_id}/StageName"


def custom_fields(describe: Mapping[str, JSON], entity: str) -> list[CustomField]:
    """The object's custom fields (`__c`) in the names `crm-bridge check` compares."""
    found = []
    for record in describe.get("fields") or ():
        if not record.get("custom"):
            continue
        kind = str(record.get("type", ""))
        enums = active_values(record.get("picklistValues") or ())
        label = str(record.get("label", ""))
        found.append(CustomField(str(record["name"]), label, _TYPES.get(kind, kind), entity, enums))
    return found


# ---- errors -------------------------------------------------------------------------


def _first_code(body: JSON) -> str:
    if isinstance(body, list) and body and isinstance(body[0], dict):
        return str(body[0].get("errorCode") or "")
    return ""


def error_text(body: JSON) -> str:
    """ "INVALID_FIELD: No such column 'X__c' (fields: X__c)" for each error of the array."""
    if not isinstance(body, list):
        return ""
    parts = []
    for item in body[:3]:
        if not isinstance(item, dict):
            continue
        fields = item.get("fields") or ()
        suffix = f" (fields: {', '.join(map(str, fields))})" if fields else ""
        parts.append(f"{item.get('errorCode', '?')}: {str(item.get('message', ''))[:200]}{suffix}")
    return "; ".join(parts)


def error_from_answer(crm: str, status: int, body: JSON, where: str) -> CrmError:
    """The bridge's error for a Salesforce error answer (a whole response or a composite
    sub-response). The daily allocation spent (403 REQUEST_LIMIT_EXCEEDED) waits and
    retries like a 429; a locked row or an unavailable server is transient."""
    code = _first_code(body)
    detail = error_text(body) or f"HTTP {status}"
    message = f"{where}: HTTP {status} {detail}"
    if status == 401:
        return AuthError(crm, message)
    if code == "REQUEST_LIMIT_EXCEEDED":
        return RateLimited(crm, f"{message}: the org's daily API allocation is spent")
    if status == 429:
        return RateLimited(crm, message)
    if code in TRANSIENT_CODES or status == 408 or status >= 500:
        return TransientCrmError(crm, message)
    return PermanentCrmError(crm, message)


def answer_json(text: str) -> JSON:
    """An answer body as JSON (None when it is not JSON: a proxy's HTML page)."""
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


# ---- OAuth 2.0 (JWT bearer, client credentials) -------------------------------------

JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def load_private_key(pem: bytes) -> rsa.RSAPrivateKey:
    """The RSA key whose certificate is uploaded to the External Client App (ValueError
    for anything else: a certificate, an encrypted key, another key type)."""
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("the private key is not an RSA key (RS256 needs one)")
    return key


def jwt_assertion(
    key: rsa.RSAPrivateKey, consumer_key: str, username: str, audience: str, now: float
) -> str:
    """The signed JWT of the JWT bearer flow: `iss` the consumer key, `sub` the username,
    `aud` the login host (login / test / My Domain), `exp` three minutes ahead, RS256
    (https://help.salesforce.com/s/articleView?id=xcloud.remoteaccess_oauth_jwt_flow.htm)."""
    header = _b64url(json.dumps({"alg": "RS256"}, separators=(",", ":")).encode())
    claims = {
        "iss": consumer_key,
        "sub": username,
        "aud": audience.rstrip("/"),
        "exp": int(now) + JWT_LIFETIME,
    }
    payload = _b64url(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{header}.{payload}".encode()
    signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return f"{header}.{payload}.{_b64url(signature)}"


def jwt_grant_form(assertion: str) -> dict[str, str]:
    return {"grant_type": JWT_GRANT, "assertion": assertion}


def client_credentials_form(client_id: str, client_secret: str) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "client_id": client_id,
        "client_secret": client_secret,
    }


@dataclass(frozen=True)
class Session:
    """A minted access token. Salesforce gives no `expires_in`: the session lives until the
    org's session timeout after its last use, and a new one is minted on a 401."""

    access_token: str
    instance_url: str
    issued_at: float  # unix seconds


def session_from_json(body: JSON, now: float) -> Session:
    """A token answer (`access_token`, `instance_url`, `issued_at` in ms, no refresh token)."""
    token = str(body["access_token"])
    if not token:
        raise ValueError("empty access_token")
    issued = body.get("issued_at")
    issued_at = int(str(issued)) / 1000 if issued and str(issued).isdigit() else now
    return Session(token, str(body.get("instance_url") or ""), issued_at)


def token_error(body: JSON) -> str:
    """ "invalid_grant: user hasn't approved this consumer" from an OAuth error answer."""
    if not isinstance(body, dict):
        return ""
    error = str(body.get("error") or "")[:60]
    description = str(body.get("error_description") or "")[:200]
    return f"{error}: {description}" if description else error
