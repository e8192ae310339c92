"""`crm-bridge import`: row validation (table-driven) and the command against a real SQLite file."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from bridge.importer import (
    CsvRow,
    ImportFileError,
    RowError,
    parse_amount,
    parse_csv,
    parse_date,
    payment_from_row,
    read_csv,
)
from bridge.payloads import parse_payment
from tests.cli_support import Cli, make_cli

HEADER = "date,phone,email,name,amount,description"


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.chdir(tmp_path)  # no stray .env
    return make_cli(tmp_path)


def write(tmp_path: Path, text: str, name: str = "payments.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1000", "1000"),
        ("1000.50", "1000.50"),
        ("1000,50", "1000.50"),
        ("1 000,50", "1000.50"),
        ("1\u00a0000,50", "1000.50"),
        ("1\u2009000,5", "1000.5"),
        ("1\u202f000", "1000"),
        ("1,000.50", "1000.50"),
        ("1.000,50", "1000.50"),
        ("1,000", "1000"),
        ("1.000", "1000"),
        ("1,000,000.5", "1000000.5"),
        ("0,5", "0.5"),
        (" 250 ", "250"),
    ],
)
def test_amounts_in_common_forms(raw: str, expected: str) -> None:
    assert parse_amount(raw) == Decimal(expected)


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "0",
        "0,00",
        "-5",
        "abc",
        "1e5",
        "1,00,000",
        "12,3456",
        "1.000.50",
        "1,000,50",
        ".5",
        "10000,000",
        "1.000,000.50",
    ],
)
def test_bad_amounts(raw: str) -> None:
    with pytest.raises(RowError):
        parse_amount(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2025-01-20", "2025-01-20 00:00:00"),
        ("2025-01-20 14:49", "2025-01-20 14:49:00"),
        ("2025-01-20T14:49:20", "2025-01-20 14:49:20"),
        ("2025-01-20 14:49:20+03:00", "2025-01-20T14:49:20+03:00"),
    ],
)
def test_dates(raw: str, expected: str) -> None:
    assert parse_date(raw) == expected


@pytest.mark.parametrize("raw", ["", "32.01.2025", "20250120", "2025-13-01", "2025-01-20 25:00"])
def test_bad_dates(raw: str) -> None:
    with pytest.raises(RowError):
        parse_date(raw)


def row(**values: str) -> CsvRow:
    base = {
        "date": "2024-11-05",
        "phone": "8 999 123-45-67",
        "email": "Ivan@Example.com",
        "name": "Иван  Петров",
        "amount": "1 500,00",
        "description": "Годовой курс",
    }
    base.update(values)
    return CsvRow(2, base)


def test_a_row_becomes_a_platform_payload_the_webhook_model_accepts() -> None:
    payment = payment_from_row(row())
    order = payment.payload["course_order"]
    assert order["status"] == "CONFIRMED"
    assert order["created_at"] == "2024-11-05 00:00:00"
    assert order["user"] == {
        "first_name": "Иван",
        "last_name": "Петров",
        "phone": "+79991234567",
        "email": "ivan@example.com",
    }
    assert order["course_order_items"] == [{"cost": 1500, "course": {"name": "Годовой курс"}}]
    assert payment.payment_id.startswith("import-") and len(payment.payment_id) == 23
    webhook = parse_payment(json.loads(json.dumps(payment.payload)))
    assert webhook.course_order.course_order_items[0].cost == Decimal(1500)


def test_the_derived_id_depends_on_the_normalised_row_only() -> None:
    same = payment_from_row(row(phone="+7 (999) 123-45-67", email="ivan@example.com"))
    assert same.payment_id == payment_from_row(row()).payment_id
    assert payment_from_row(row(amount="1501")).payment_id != same.payment_id
    assert payment_from_row(row(id="pay_777")).payment_id == "pay_777"


def test_fractional_amounts_stay_exact() -> None:
    payment = payment_from_row(row(amount="1 000,10"))
    cost = payment.payload["course_order"]["course_order_items"][0]["cost"]
    assert parse_payment(json.loads(json.dumps(payment.payload))).course_order.course_order_items[
        0
    ].cost == Decimal("1000.1")
    assert cost == 1000.1


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ({"phone": "12"}, "phone '12' is not a phone number"),
        ({"email": "nobody"}, "email 'nobody' has no '@'"),
        ({"phone": "", "email": ""}, "no phone and no email"),
        ({"amount": "-1"}, "amount '-1' is not a positive number"),
        ({"date": "05/11/2024"}, "date '05/11/2024'"),
    ],
)
def test_row_problems_say_which_value(values: dict[str, str], reason: str) -> None:
    with pytest.raises(RowError, match=reason.replace("(", r"\(")):
        payment_from_row(row(**values))


def test_every_problem_of_a_row_is_reported_at_once() -> None:
    with pytest.raises(RowError) as caught:
        payment_from_row(row(phone="x", amount="0", date="yesterday"))
    assert str(caught.value).count(";") == 2


def test_semicolon_files_bom_and_blank_lines() -> None:
    text = (
        "\ufeffDate;Phone;Email;Name;Amount;Description;ID\n"
        "\n"
        "2024-01-01;89991234567;;A;1 000,50;x;p1\n"
    )
    rows = parse_csv(text)
    assert [(r.number, r.values["amount"], r.values["id"]) for r in rows] == [(3, "1 000,50", "p1")]


def test_missing_columns_and_short_rows(tmp_path: Path) -> None:
    with pytest.raises(ImportFileError, match="lacks amount"):
        parse_csv("date,phone,email,name,description\n")
    with pytest.raises(ImportFileError, match="empty file"):
        parse_csv("")
    (short,) = parse_csv(f"{HEADER}\n2024-01-01,89991234567\n")
    with pytest.raises(RowError, match="2 fields where the header has 6"):
        payment_from_row(short)
    write(tmp_path, "x", "latin.csv").write_bytes(b"date\xff\n")
    with pytest.raises(ImportFileError, match="not UTF-8"):
        read_csv(tmp_path / "latin.csv")


def test_import_stores_events_like_webhooks_and_a_second_run_adds_nothing(
    cli: Cli, tmp_path: Path
) -> None:
    csv_file = write(
        tmp_path,
        f"{HEADER},id\n"
        "2024-11-05,89991234567,ivan@example.com,Иван Петров,1500,Курс А,\n"
        '2024-11-06 10:00,+7 999 765-43-21,,Анна,"1,000.50",Курс Б,pay_hist_2\n'
        "2024-11-07,12,bad,Кто-то,0,Курс В,\n"
        "2024-11-05,89991234567,ivan@example.com,Иван Петров,1500,Курс А,\n",
    )
    result = cli("import", str(csv_file))
    assert result.exit_code == 1
    assert "4 rows: imported 2, already present 1, bad 1" in result.stdout
    assert result.stderr.splitlines()[:2] == [
        "row 4: amount '0' is not positive; phone '12' is not a phone number;"
        " email 'bad' has no '@'",
        "row 5: same payment as row 2: skipped",
    ]
    assert "1 bad row(s) not imported" in result.stderr
    rows = cli.query(
        "SELECT e.key, e.status, e.amount, d.crm, d.status FROM events e"
        " JOIN deliveries d ON d.event_id = e.id ORDER BY e.id"
    )
    assert rows[1] == ("pay_hist_2", "pending", 1000.5, "amocrm", "pending")
    assert rows[0][0].startswith("import-")
    keys = cli.query("SELECT customer_keys FROM events WHERE key = 'pay_hist_2'")
    assert json.loads(keys[0][0]) == ["phone:+79997654321"]

    again = cli("import", str(csv_file))
    assert "4 rows: imported 0, already present 3, bad 1" in again.stdout
    assert cli.query("SELECT COUNT(*) FROM events") == [(2,)]


def test_dry_run_stores_nothing(cli: Cli, tmp_path: Path) -> None:
    csv_file = write(tmp_path, f"{HEADER}\n2024-11-05,89991234567,,Иван,1500,Курс\n")
    result = cli("import", "--dry-run", str(csv_file))
    assert result.exit_code == 0, result.output
    assert "1 rows: would import 1, already present 0, bad 0" in result.stdout
    assert not cli.db_path.exists()
    assert cli("import", str(csv_file)).exit_code == 0
    again = cli("import", "--dry-run", str(csv_file))
    assert "would import 0, already present 1" in again.stdout


def test_chunks_cover_every_row(cli: Cli, tmp_path: Path) -> None:
    lines = [HEADER] + [
        f"2024-01-{1 + i % 28:02d},8999{i:07d},,Клиент {i},{100 + i},Курс" for i in range(2500)
    ]
    csv_file = write(tmp_path, "\n".join(lines) + "\n")
    result = cli("import", str(csv_file))
    assert "2500 rows: imported 2500, already present 0, bad 0" in result.stdout
    assert cli.query("SELECT COUNT(*) FROM deliveries WHERE status = 'pending'") == [(2500,)]


def test_file_level_errors_exit_1_with_a_message(cli: Cli, tmp_path: Path) -> None:
    missing = cli("import", str(tmp_path / "nope.csv"))
    assert missing.exit_code == 2
    assert "does not exist" in missing.stderr
    bad_header = cli("import", str(write(tmp_path, "when,who\n1,2\n")))
    assert bad_header.exit_code == 1
    assert "header row lacks date, phone, email, name, amount, description" in bad_header.stderr
