"""Odoo's vendor translation (bridge.crm.odoo_json): requests as the recorded server took
them, answers and errors into the bridge's types, and the domains it builds run against
the fake's emulation of the real search semantics."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from bridge.crm import odoo_json as oj
from bridge.domain import (
    Customer,
    FieldKind,
    FieldUpdate,
    KeyKind,
    LookupKey,
    NewContact,
    NewDeal,
    Utm,
)
from bridge.errors import AuthError, ConfigError, PermanentCrmError, TransientCrmError
from bridge.rules import contact_matches
from tests.fakes.odoo import example_config, example_odoo

FULL = oj.Capabilities(
    frozenset({"phone_mobile_search", "mobile", "email_normalized"}), frozenset({"won_status"})
)
BARE = oj.Capabilities()


def test_options_need_a_database_and_a_login_for_jsonrpc() -> None:
    assert oj.OdooOptions.from_config("odoo", {"database": "db"}) == oj.OdooOptions("db")
    with pytest.raises(ConfigError, match="database"):
        oj.OdooOptions.from_config("odoo", {})
    with pytest.raises(ConfigError, match="login"):
        oj.OdooOptions.from_config("odoo", {"database": "db", "api": "jsonrpc"})
    with pytest.raises(ConfigError, match="api"):
        oj.OdooOptions.from_config("odoo", {"database": "db", "api": "xmlrpc"})
    with pytest.raises(ConfigError, match="unknown"):
        oj.OdooOptions.from_config("odoo", {"database": "db", "uid": 2})
    # The reason an order cancelled in the platform is archived with (test_odoo_orders).
    with pytest.raises(ConfigError, match="lost_reason_id"):
        oj.OdooOptions.from_config("odoo", {"database": "db", "lost_reason_id": "Too dear"})
    lost = oj.OdooOptions.from_config("odoo", {"database": "db", "lost_reason_id": 3})
    assert lost == oj.OdooOptions("db", lost_reason_id=3)


def test_search_read_is_encoded_as_the_recorded_request_and_by_name_for_json2() -> None:
    domain = [["partner_id", "=", 7], ["type", "=", "opportunity"]]
    call = oj.search_read("crm.lead", domain, ["id", "name"], order="create_date desc")
    body = oj.execute_kw_body(call, "crm_lab", 2, "admin", 36)
    # transcript §8.37, request shape
    assert body == {
        "jsonrpc": "2.0",
        "method": "call",
        "params": {
            "service": "object",
            "method": "execute_kw",
            "args": [
                "crm_lab",
                2,
                "admin",
                "crm.lead",
                "search_read",
                [domain],
                {"fields": ["id", "name"], "order": "create_date desc"},
            ],
        },
        "id": 36,
    }
    assert oj.json2_path(call) == "/json/2/crm.lead/search_read"
    assert oj.json2_body(call) == {
        "domain": domain,
        "fields": ["id", "name"],
        "order": "create_date desc",
    }
    assert call.read_only


def test_writes_and_record_methods_for_both_transports() -> None:
    created = oj.create("res.partner", {"name": "Jane"})
    assert created.args == ({"name": "Jane"},)
    assert oj.json2_body(created) == {"vals_list": [{"name": "Jane"}]}
    written = oj.write("crm.lead", [1], {"x_a": "b"})
    assert written.args == ([1], {"x_a": "b"})
    assert oj.json2_body(written) == {"ids": [1], "vals": {"x_a": "b"}}
    note = oj.note_call(1, "text")
    assert note.args == ([1],)  # §8.46: ids in args, the rest by keyword
    assert note.kwargs == {
        "body": "text",
        "message_type": "comment",
        "subtype_xmlid": "mail.mt_note",
    }
    assert oj.json2_body(note)["ids"] == [1]
    assert not (created.read_only or written.read_only or note.read_only)


def test_answers_rpc_result_and_created_ids() -> None:
    assert oj.rpc_result("odoo", {"jsonrpc": "2.0", "id": 5, "result": 7}, "x") == 7
    # a method returning None answers no `result` key at all (§6.7)
    assert oj.rpc_result("odoo", {"jsonrpc": "2.0", "id": 34}, "x") is None
    assert oj.created_id("odoo", 7, "x") == 7
    assert oj.created_id("odoo", [7], "x") == 7
    with pytest.raises(PermanentCrmError):
        oj.created_id("odoo", True, "x")
    assert oj.uid_from("odoo", 2) == 2
    with pytest.raises(AuthError):
        oj.uid_from("odoo", False)  # §8.4: a wrong key is `false`, not an error


def _rpc_error(name: str, message: str) -> dict[str, object]:
    data = {"name": name, "debug": "…", "message": message, "arguments": [message], "context": {}}
    return {
        "jsonrpc": "2.0",
        "id": 1,
        "error": {"code": 200, "message": "Odoo Server Error", "data": data},
    }


@pytest.mark.parametrize(
    ("name", "message", "kind"),
    [
        ("odoo.exceptions.AccessDenied", "Access Denied", AuthError),  # §8.5
        ("odoo.exceptions.AccessError", "You are not allowed to modify …", AuthError),
        (
            "builtins.ValueError",
            "Invalid field 'x_not_a_field' on model 'crm.lead'",
            PermanentCrmError,
        ),
        ("odoo.exceptions.UserError", "Please enter at least 3 characters …", PermanentCrmError),
        ("odoo.exceptions.ValidationError", "The operation cannot be completed", PermanentCrmError),
        (
            "odoo.exceptions.MissingError",
            "Record does not exist or has been deleted.",
            PermanentCrmError,
        ),
        (
            "psycopg2.OperationalError",
            'connection to server on socket "/x" failed: FATAL:  database "nope" does not exist\n',
            AuthError,
        ),
        (
            "psycopg2.OperationalError",
            "server closed the connection unexpectedly",
            TransientCrmError,
        ),
        ("psycopg2.errors.SerializationFailure", "could not serialize access", TransientCrmError),
        ("odoo.exceptions.LockError", "could not lock", TransientCrmError),
    ],
)
def test_rpc_errors_map_to_the_error_tree(name: str, message: str, kind: type[Exception]) -> None:
    with pytest.raises(kind) as raised:
        oj.rpc_result("odoo", _rpc_error(name, message), "crm.lead.write")
    assert type(raised.value) is kind
    assert "crm.lead.write" in str(raised.value)


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (401, {"name": "werkzeug.exceptions.Unauthorized", "message": "Invalid apikey"}, AuthError),
        (403, {"name": "odoo.exceptions.AccessError", "message": "not allowed"}, AuthError),
        (422, {"name": "odoo.exceptions.UserError", "message": "no"}, PermanentCrmError),
        # ValueError is no UserError: 500 with a name that says it will never pass.
        (500, {"name": "builtins.ValueError", "message": "Invalid field"}, PermanentCrmError),
        (500, {"name": "psycopg2.errors.SerializationFailure", "message": "x"}, TransientCrmError),
        (502, "<html>Bad Gateway</html>", TransientCrmError),
        (429, None, TransientCrmError),
        (
            404,
            {"name": "werkzeug.exceptions.NotFound", "message": "no such model"},
            PermanentCrmError,
        ),
    ],
)
def test_json2_errors_map_by_name_before_status(
    status: int, body: object, kind: type[Exception]
) -> None:
    error = oj.json2_error("odoo", status, body, "crm.lead/write")
    assert type(error) is kind


def test_json2_probe_answers() -> None:
    assert oj.json2_offered(200) is True
    assert oj.json2_offered(303, "/web/login?redirect=%2Fjson%2F2") is False  # 18.0, §8.50
    assert oj.json2_offered(404) is False
    assert oj.json2_offered(503) is None


@pytest.mark.parametrize(
    ("e164", "term"),
    [
        ("+79160001122", "9160001122"),
        ("+14155550132", "4155550132"),
        ("+447700900123", "7700900123"),
    ],
)
def test_phone_term_is_the_national_number(e164: str, term: str) -> None:
    assert oj.phone_term(e164) == term


KEYS = (
    LookupKey(KeyKind.TELEGRAM_ID, "987654321"),
    LookupKey(KeyKind.PHONE, "+79160001122"),
    LookupKey(KeyKind.EMAIL, "ivan@example.com"),
)


def test_one_lookup_for_every_key() -> None:
    call = oj.partner_lookup_call(KEYS, example_config(), FULL)
    assert call is not None
    assert call.args[0] == [
        ["is_company", "=", False],  # people only: an order's company may share the phone
        "|",
        "|",
        ["x_telegram_id", "=", "987654321"],
        ["phone_mobile_search", "ilike", "9160001122"],
        ["email_normalized", "=", "ivan@example.com"],
    ]
    assert "mobile" in call.kwargs["fields"] and "x_telegram_username" in call.kwargs["fields"]
    bare = oj.partner_lookup_call(KEYS[1:], example_config(), BARE)
    assert bare is not None
    assert bare.args[0] == [
        ["is_company", "=", False],
        "|",
        "|",
        ["phone", "ilike", "9160001122"],
        ["phone", "=", "+79160001122"],
        ["email", "=ilike", "ivan@example.com"],
    ]
    assert "mobile" not in bare.kwargs["fields"]


@pytest.mark.parametrize(
    "typed",
    ["+7 (916) 000-11-22", "8 916 000 11 22", "89160001122", "+79160001122", "7.916.000.11.22"],
)
async def test_the_lookup_domain_finds_a_phone_typed_any_way(typed: str) -> None:
    """Run against the fake's copy of mail.thread.phone's SQL (§5 table), then confirmed
    by the flow's own rule, as the adapter does."""
    fake = example_odoo()
    partner_id = fake.add_partner("Ivan", phone=typed)
    fake.add_partner("Other", phone="+7 916 000 11 23")
    config = example_config()
    call = oj.partner_lookup_call(KEYS[1:2], config, FULL)
    assert call is not None
    db = fake.db
    model = db.models["res.partner"]
    rows = db.read_rows(model, db.search(model, call.args[0]), call.kwargs["fields"])
    contacts = [oj.contact_from_partner(row, config) for row in rows]
    confirmed = [c.id for c in contacts if contact_matches(c, KEYS[1])]
    assert confirmed == [str(partner_id)]


def test_field_values_per_kind() -> None:
    moscow = timezone(timedelta(hours=3))
    values = oj.field_values(
        [
            FieldUpdate("x_t", FieldKind.TEXT, "hello"),
            FieldUpdate("x_n", FieldKind.NUMBER, Decimal("1500.00")),
            FieldUpdate("x_f", FieldKind.NUMBER, Decimal("12.5")),
            FieldUpdate("x_d", FieldKind.DATETIME, datetime(2026, 5, 1, 12, 0, tzinfo=moscow)),
            FieldUpdate("x_sel", FieldKind.SELECT, "ege"),
            FieldUpdate("x_m2o", FieldKind.SELECT, 4),
            FieldUpdate("x_tags", FieldKind.MULTISELECT, (1, "2")),
        ]
    )
    assert values == {
        "x_t": "hello",
        "x_n": 1500,
        "x_f": 12.5,
        "x_d": "2026-05-01 09:00:00",
        "x_sel": "ege",
        "x_m2o": 4,
        "x_tags": [[6, 0, [1, 2]]],
    }
    with pytest.raises(ValueError, match="record id"):
        oj.field_values([FieldUpdate("x_tags", FieldKind.MULTISELECT, ("math",))])
    # Values of the wrong type: the shared FieldEncoding's (test_fieldvalues).


def test_new_partner_and_lead_values() -> None:
    customer = Customer("Иван", "Петров", "+79160001122", "ivan@example.com", "987654321")
    fields = (FieldUpdate("x_telegram_id", FieldKind.TEXT, "987654321"),)
    assert oj.partner_values(NewContact(customer, Utm(), fields)) == {
        "name": "Иван Петров",
        "is_company": False,
        "phone": "+79160001122",
        "email": "ivan@example.com",
        "x_telegram_id": "987654321",
    }
    deal = NewDeal(
        "Оплата", Decimal("1500"), "1", "2", (FieldUpdate("x_payment_id", FieldKind.TEXT, "p1"),)
    )
    assert oj.lead_values(deal, 7) == {
        "name": "Оплата",
        "type": "opportunity",
        "partner_id": 7,
        "team_id": 1,
        "stage_id": 2,
        "expected_revenue": 1500,
        "x_payment_id": "p1",
    }
    with pytest.raises(ValueError, match="sales team"):
        oj.lead_values(NewDeal("x", Decimal(1), "sales", "2"), 7)


def test_deal_from_lead_reads_won_status_or_falls_back() -> None:
    config = example_config()
    record = {
        "id": 1,
        "name": "Website deal #1001",
        "partner_id": [7, "Jane Webhook"],
        "team_id": [1, "Sales"],
        "stage_id": [1, "New"],
        "expected_revenue": 12500.0,
        "probability": 0.0,
        "active": True,
        "write_date": "2026-11-22 13:55:30",
        "won_status": "pending",
        "x_total_paid": 3000.0,
        "x_subject_ids": [2, 5],
        "x_payment_id": False,
    }
    deal = oj.deal_from_lead(record, config)
    assert (deal.id, deal.pipeline_id, deal.status_id, deal.contact_ids) == ("1", "1", "1", ("7",))
    assert deal.price == Decimal("12500") and not deal.is_closed
    assert deal.updated_at == int(datetime(2026, 11, 22, 13, 55, 30, tzinfo=UTC).timestamp())
    assert deal.fields == {"x_total_paid": "3000", "x_subject_ids": "2", "x_payment_id": ""}
    assert oj.deal_from_lead({**record, "won_status": "lost"}, config).is_closed
    old = {k: v for k, v in record.items() if k != "won_status"}
    assert not oj.deal_from_lead(old, config).is_closed
    assert oj.deal_from_lead({**old, "active": False}, config).is_closed
    assert oj.deal_from_lead({**old, "probability": 100.0}, config).is_closed


def test_schema_from_teams_stages_and_fields() -> None:
    teams = [{"id": 1, "name": "Сайт"}, {"id": 2, "name": "Яндекс"}]
    stages = [
        {"id": 1, "name": "New", "team_id": False, "is_won": False},
        {"id": 5, "name": "Yandex only", "team_id": [2, "Яндекс"], "is_won": False},
        {"id": 4, "name": "Won", "team_id": False, "is_won": True},
    ]
    pipelines = oj.pipelines_from(teams, stages)
    assert [(p.id, dict(p.statuses)) for p in pipelines] == [
        ("1", {"1": "New", "4": "Won", oj.LOST: "Lost (archived with a reason)"}),
        (
            "2",
            {"1": "New", "5": "Yandex only", "4": "Won", oj.LOST: "Lost (archived with a reason)"},
        ),
    ]
    assert oj.won_stage_ids(stages) == ("4",)
    columns = ("id", "name", "model", "field_description", "ttype", "relation")
    rows = [
        dict(zip(columns, values, strict=True))
        for values in (
            (3827, "x_direction", "crm.lead", "Direction", "selection", False),
            (3828, "x_subject_ids", "crm.lead", "Subjects", "many2many", "crm.tag"),
            (3829, "x_telegram_id", "res.partner", "Telegram", "char", False),
        )
    ]
    selections = [{"field_id": [3827, "Direction"], "value": "ege", "name": "ЕГЭ"}]
    assert oj.relation_models(rows) == ["crm.tag"]
    fields = oj.custom_fields_from(
        rows, selections, {"crm.tag": [{"id": 1, "display_name": "Математика"}]}
    )
    assert [(f.id, f.type, f.entity, dict(f.enums)) for f in fields] == [
        ("x_direction", "select", "leads", {"ege": "ЕГЭ"}),
        ("x_subject_ids", "multiselect", "leads", {"1": "Математика"}),
        ("x_telegram_id", "text", "contacts", {}),
    ]
