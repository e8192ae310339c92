"""`crm-bridge import`: historic payments from a CSV file, stored the way webhooks are.

The file has a header row naming the columns `date, phone, email, name, amount,
description` and optionally `id` (any order, any case; `,` or `;` between fields; UTF-8).
Every row is validated before anything is stored; a bad row is reported by its row number
(the header is row 1, as in a spreadsheet) and skipped, the good rows are stored.

A good row becomes a platform-shaped payment payload (status CONFIRMED, one item) and goes
through `intake.payment_intake`, like a webhook, into `Store.import_events`, one
transaction per chunk. Without an `id` the payment id is `import-` plus a hash of the
normalised row, so importing the same file again stores nothing new.

Amounts: digits with optional grouping (spaces, including thin and non-breaking ones, or
the separator that is not the decimal one) and an optional decimal part of one or two
digits: `1 000,50`, `1.000,50`, `1,000.50`, `1000.50`, `1000`. The last separator is the
decimal one when one or two digits follow it; when three follow, it groups thousands
(`1,000` and `1.000` are one thousand), because money has at most two decimals.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from bridge.errors import BridgeError
from bridge.intake import payment_intake
from bridge.normalize import normalize_email, normalize_phone
from bridge.payloads import parse_payment, validation_details
from bridge.rules import format_amount
from bridge.settings import Settings
from bridge.store import NewEvent, Store

REQUIRED_COLUMNS = ("date", "phone", "email", "name", "amount", "description")
OPTIONAL_COLUMNS = ("id", "currency")
CHUNK_ROWS = 1000

_SPACES = re.compile(r"[\s\u00a0\u2007\u2009\u202f]")
_AMOUNT = re.compile(r"\d+(?:[.,]\d+)*")
_DATE_PREFIX = re.compile(r"\d{4}-\d{2}-\d{2}(?:$|[ T])")
# DD.MM.YYYY[ HH:MM[:SS]]: what a Russian-locale spreadsheet writes.
_DOTTED_DATE = re.compile(r"(\d{1,2})\.(\d{1,2})\.(\d{4})(?:[ T](\d{1,2}):(\d{2})(?::(\d{2}))?)?")
DEFAULT_CURRENCY = "RUB"


class ImportFileError(BridgeError):
    """The file as a whole cannot be imported (unreadable, no usable header)."""


class RowError(ValueError):
    """One row is invalid; the message says which value and why."""


@dataclass(frozen=True)
class CsvRow:
    number: int  # row number in the file, the header being row 1
    values: Mapping[str, str]
    problem: str = ""  # set when the row cannot be read as the header says


@dataclass(frozen=True)
class ImportedPayment:
    number: int
    payment_id: str
    payload: dict[str, Any]


@dataclass
class ImportReport:
    rows: int = 0
    imported: int = 0
    already_present: int = 0
    bad: list[tuple[int, str]] = field(default_factory=list)  # (row number, reason)
    repeated: list[tuple[int, int]] = field(default_factory=list)  # (row, first row)


def read_csv(path: Path) -> list[CsvRow]:
    """The data rows of `path`, keyed by lower-case column name; blank lines dropped."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ImportFileError(
            f"{path}: not UTF-8 text (byte {exc.start}): save it as CSV UTF-8"
        ) from exc
    except OSError as exc:
        raise ImportFileError(f"{path}: cannot read: {exc.strerror}") from exc
    return parse_csv(text, str(path))


def parse_csv(text: str, name: str = "file") -> list[CsvRow]:
    text = text.removeprefix("\ufeff")
    first_line = text.split("\n", 1)[0]
    delimiter = ";" if first_line.count(";") > first_line.count(",") else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = [column.strip().lower() for column in next(reader)]
    except StopIteration:
        raise ImportFileError(f"{name}: empty file (a header row is required)") from None
    missing = [column for column in REQUIRED_COLUMNS if column not in header]
    if missing:
        raise ImportFileError(
            f"{name}: header row lacks {', '.join(missing)} (found: {', '.join(header)}; "
            f"expected {', '.join(REQUIRED_COLUMNS)} and optionally id)"
        )
    rows: list[CsvRow] = []
    for number, fields in enumerate(reader, start=2):
        if not any(value.strip() for value in fields):
            continue
        if len(fields) != len(header):
            problem = f"{len(fields)} fields where the header has {len(header)}"
            rows.append(CsvRow(number, {}, problem))
        else:
            rows.append(CsvRow(number, dict(zip(header, fields, strict=True))))
    return rows


def parse_amount(raw: str) -> Decimal:
    """A positive amount in the forms of the module docstring."""
    text = _SPACES.sub("", raw)
    if not _AMOUNT.fullmatch(text):
        raise RowError(f"amount {raw!r} is not a positive number")
    last = max(text.rfind(","), text.rfind("."))
    whole, decimals = text, ""
    if last >= 0 and len(text) - last - 1 in (1, 2):
        whole, decimals = text[:last], text[last + 1 :]
    groups = re.split(r"[.,]", whole)
    separators = set(re.findall(r"[.,]", whole))
    if decimals and text[last] in separators:
        raise RowError(f"amount {raw!r}: {text[last]!r} both groups and separates decimals")
    misgrouped = len(groups) > 1 and (
        len(groups[0]) > 3 or any(len(group) != 3 for group in groups[1:])
    )
    if len(separators) > 1 or misgrouped:
        raise RowError(f"amount {raw!r} has misplaced separators")
    try:
        amount = Decimal("".join(groups) + ("." + decimals if decimals else ""))
    except InvalidOperation as exc:  # pragma: no cover - the pattern admits only digits
        raise RowError(f"amount {raw!r} is not a number") from exc
    if amount <= 0:
        raise RowError(f"amount {raw!r} is not positive")
    return amount


def parse_date(raw: str) -> str:
    """`YYYY-MM-DD` or with a time (and an optional offset), as the platform writes it;
    or `DD.MM.YYYY[ HH:MM[:SS]]`, as a Russian-locale spreadsheet writes it."""
    text = raw.strip()
    dotted = _DOTTED_DATE.fullmatch(text)
    if dotted:
        day, month, year, hour, minute, second = (int(part or 0) for part in dotted.groups())
        try:
            value = datetime(year, month, day, hour, minute, second)
        except ValueError as exc:
            raise RowError(f"date {raw!r} is not a valid date/time") from exc
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if not _DATE_PREFIX.match(text):
        raise RowError(f"date {raw!r} is not YYYY-MM-DD, DD.MM.YYYY or either with HH:MM[:SS]")
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise RowError(f"date {raw!r} is not a valid date/time") from exc
    if value.tzinfo is None:
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return value.isoformat()


def payment_from_row(row: CsvRow) -> ImportedPayment:
    """Validate one row and build the payload the platform would have sent for it."""
    if row.problem:
        raise RowError(row.problem)
    values = {key: value.strip() for key, value in row.values.items()}
    problems: list[str] = []

    def check(parse: Callable[[str], Any], raw: str) -> Any:
        try:
            return parse(raw)
        except RowError as exc:
            problems.append(str(exc))
            return None

    date = check(parse_date, values["date"])
    amount = check(parse_amount, values["amount"])
    phone = normalize_phone(values["phone"])
    if values["phone"] and phone is None:
        problems.append(f"phone {values['phone']!r} is not a phone number")
    email = normalize_email(values["email"])
    if values["email"] and email is None:
        problems.append(f"email {values['email']!r} has no '@'")
    if not values["phone"] and not values["email"]:
        problems.append("no phone and no email: the customer could not be found in a CRM")
    if problems:
        raise RowError("; ".join(problems))
    name = " ".join(values["name"].split())
    first_name, _, last_name = name.partition(" ")
    description = values["description"]
    normalised = [date, phone or "", email or "", name, format_amount(amount), description]
    digest = hashlib.sha256(json.dumps(normalised, ensure_ascii=False).encode()).hexdigest()
    payment_id = values.get("id") or f"import-{digest[:16]}"
    payload = {
        "course_order": {
            "status": "CONFIRMED",
            "created_at": date,
            "updated_at": date,
            "payment_id": payment_id,
            # The note says "Сумма: 5000 RUB" as for a webhook.
            "currency": values.get("currency") or DEFAULT_CURRENCY,
            "course_order_items": [{"cost": _json_number(amount), "course": {"name": description}}],
            "user": {
                "first_name": first_name,
                "last_name": last_name,
                "phone": phone,
                "email": email,
            },
        }
    }
    return ImportedPayment(row.number, payment_id, payload)


def validate(
    rows: Sequence[CsvRow], report: ImportReport, first_row: dict[str, int]
) -> list[ImportedPayment]:
    """Good rows, each payment id once per file (`first_row` remembers where it was
    seen); bad and repeated rows go into `report`."""
    good: list[ImportedPayment] = []
    for row in rows:
        report.rows += 1
        try:
            payment = payment_from_row(row)
        except RowError as exc:
            report.bad.append((row.number, str(exc)))
            continue
        if payment.payment_id in first_row:
            report.repeated.append((row.number, first_row[payment.payment_id]))
            report.already_present += 1
            continue
        first_row[payment.payment_id] = row.number
        good.append(payment)
    return good


def to_events(
    payments: Sequence[ImportedPayment], settings: Settings
) -> Iterator[tuple[ImportedPayment, NewEvent | str]]:
    """Each payment through the webhook's intake: its event, or why the model refused it."""
    for payment in payments:
        body = json.dumps(payment.payload, ensure_ascii=False)
        try:
            webhook = parse_payment(payment.payload)
        except ValidationError as exc:
            reason = "; ".join(f"{d['field']}: {d['error']}" for d in validation_details(exc))
            yield payment, reason
            continue
        yield payment, payment_intake(webhook.course_order, body, settings).event


async def import_rows(
    store: Store | None,
    settings: Settings,
    rows: Sequence[CsvRow],
    *,
    dry_run: bool = False,
    on_progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Validate every row and store the good ones in chunks; `on_progress(rows_done)`.
    A dry run stores nothing; its `store` may be None when there is no database yet."""
    if store is None and not dry_run:
        raise ValueError("import_rows: a store is needed unless it is a dry run")
    report = ImportReport()
    first_row: dict[str, int] = {}
    done = 0
    for start in range(0, len(rows), CHUNK_ROWS):
        chunk = rows[start : start + CHUNK_ROWS]
        events: list[NewEvent] = []
        good = validate(chunk, report, first_row)
        for payment, event in to_events(good, settings):
            if isinstance(event, str):
                report.bad.append((payment.number, event))
            else:
                events.append(event)
        if store is None or dry_run:
            keys = [event.key for event in events]
            known = await store.known_keys("payment", keys) if store is not None else set()
            report.already_present += len(known)
            report.imported += len(events) - len(known)
        elif events:
            created = await store.import_events(events)
            report.imported += created
            report.already_present += len(events) - created
        done += len(chunk)
        if on_progress is not None:
            on_progress(done)
    report.bad.sort()
    return report


def _json_number(amount: Decimal) -> int | float | str:
    """The amount as the platform sends it, a JSON number, unless a float would round it."""
    if amount == amount.to_integral_value():
        return int(amount)
    as_float = float(amount)
    return as_float if Decimal(repr(as_float)) == amount else str(amount)
