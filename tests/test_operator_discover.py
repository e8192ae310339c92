"""`crm-bridge discover` fills what it can decide by field name and type."""

from __future__ import annotations

import tomllib

from bridge.crm.base import CrmSchema, CustomField, Pipeline
from bridge.crmconfig import config_snippet
from bridge.fieldmatch import NAMES, normalise

SCHEMA = CrmSchema(
    pipelines=(Pipeline("1", "Воронка", {"10": "Новая"}),),
    fields=(
        CustomField("11", "Payment ID", "text", "leads"),
        CustomField("12", "utm_source", "tracking_data", "leads"),
        CustomField("13", "Сумма последней оплаты клиента", "numeric", "leads"),
        CustomField("14", "Направление", "select", "leads", {"5": "ЕГЭ", "6": "ОГЭ"}),
        CustomField("15", "Telegram ID", "text", "contacts"),
        CustomField("16", "Номер счёта", "text", "leads"),
        CustomField("17", "Всего оплачено (руб)", "text", "leads"),  # wrong type
        CustomField("18", "Дата оплаты 1", "date_time", "leads"),
        CustomField("19", "Дата оплаты 2", "date_time", "leads"),
    ),
)


def test_exact_and_near_matches_are_filled_and_the_rest_commented() -> None:
    text = config_snippet("amocrm", None, SCHEMA)
    parsed = tomllib.loads(text)["crm"]["amocrm"]
    assert parsed["deal_fields"] == {
        "payment_id": 11,
        "utm_source": 12,
        "last_payment_amount": 13,
        "direction": 14,
        "invoice_id": 16,
    }
    assert parsed["contact_fields"] == {"telegram_id": 15}
    assert parsed["directions"] == {"ЕГЭ": 5, "ОГЭ": 6}
    assert '"Payment ID" (text), matched by name' in text
    assert '"Сумма последней оплаты клиента" (numeric), NEAR match: check it' in text
    # A text field cannot hold a sum; two date fields equally good: left to the operator.
    assert "# total_paid =" in text and "# last_payment_at =" in text


def test_names_are_normalised() -> None:
    assert normalise("  ID  Счёта_") == "id счета"
    assert all(NAMES.values())
