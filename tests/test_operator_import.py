"""`crm-bridge import` as an operator uses it: Russian spreadsheet dates, the currency in
the note, the payment date kept, and `--wait` following the delivery to the end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bridge.importer import RowError, parse_date
from tests.cli_support import make_cli, operator_cli
from tests.process import ServedAmoCrm, running

CSV = """date;phone;email;name;amount;description;currency
20.01.2025 14:49;89991230001;;Иван Петров;1 500,00;Русский язык;
05.02.2025;;anna@example.com;Анна Смирнова;2000;Математика;EUR
"""


def test_dotted_dates_are_accepted_and_checked() -> None:
    assert parse_date("20.01.2025") == "2025-01-20 00:00:00"
    assert parse_date("5.2.2025 9:05:07") == "2025-02-05 09:05:07"
    with pytest.raises(RowError, match="not a valid date"):
        parse_date("31.02.2025")
    with pytest.raises(RowError, match=r"DD\.MM\.YYYY"):
        parse_date("2025/01/20")


def test_import_wait_follows_delivery_and_notes_carry_date_and_currency(
    amo_server: ServedAmoCrm, tmp_path: Path
) -> None:
    fake = amo_server.fake
    bridge = amo_server.bridge(tmp_path)
    csv = tmp_path / "history.csv"
    csv.write_text(CSV, encoding="utf-8")
    cli = operator_cli(bridge)
    with running(bridge):
        bridge.start()
        result = cli("import", str(csv), "--wait")
        assert result.exit_code == 0, result.output
        assert "2 rows: imported 2" in result.stdout
        assert result.stdout.strip().splitlines()[-1] == (
            "delivered 2 of 2, waiting 0, failed 0, not found 0"
        )
        notes = [text for lead in fake.leads() for text in fake.notes(lead["id"])]
        assert any("Сумма: 1500 RUB" in n and "2025-01-20 14:49" in n for n in notes), notes
        assert any("Сумма: 2000 EUR" in n for n in notes), notes
        events = json.loads(cli("events", "--source", "import", "--json").stdout)
        assert {e["paid_at"] for e in events} == {"2025-01-20 14:49:00", "2025-02-05 00:00:00"}
        shown = json.loads(cli("show", events[0]["payment_id"], "--json").stdout)
        assert shown["paid_at"] in ("2025-01-20 14:49:00", "2025-02-05 00:00:00")


def test_import_wait_without_a_running_bridge_says_so(tmp_path: Path) -> None:
    csv = tmp_path / "history.csv"
    csv.write_text(CSV, encoding="utf-8")
    cli = make_cli(tmp_path)
    result = cli("import", str(csv), "--wait")
    assert result.exit_code == 1
    assert "no running bridge delivers them" in result.stderr
