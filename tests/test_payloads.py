from __future__ import annotations

import copy
import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from bridge.canonical import decode_canonical
from bridge.intake import payment_intake
from bridge.payloads import parse_payment, validation_details
from bridge.settings import Settings
from bridge.store import NewEvent
from tests.conftest import reference_file_config

# SPEC §4, verbatim.
SPEC_PAYLOAD: dict[str, Any] = json.loads(
    """{"course_order": {
  "status": "CONFIRMED", "amount": 100,
  "created_at": "2025-01-20 14:49:20", "updated_at": "2025-01-20 14:49:20",
  "code": "PROMO2025", "payment_id": "pay_123456", "invoice_id": "inv_789",
  "payment_method": "SBP", "currency": "RUB",
  "course_order_items": [
    {"cost": 5000, "number_lessons": 10, "package_id": null,
     "course": {"name": "Годовой 2к25 стандарт",
                "subject": {"name": "Русский", "project": "ЕГЭ"}}}],
  "user": {"first_name": "Иван", "last_name": "Петров", "phone": "89991234567",
           "email": "ivan@example.com", "telegram_id": "123456789",
           "telegram_tag": "ivan_petrov"},
  "utm": {"source": "platform", "medium": "direct", "compaign": "summer2025",
          "term": "", "content": "", "ym": "1234567890"},
  "domain": "pl.el-ed.ru"}}"""
)


def _with(path: str, value: object) -> dict[str, Any]:
    """SPEC_PAYLOAD with the dotted `path` set to `value` (or removed when value is ...)."""
    payload = copy.deepcopy(SPEC_PAYLOAD)
    *parents, last = path.split(".")
    node: Any = payload
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value is ...:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return payload


def test_spec_payload_parses() -> None:
    order = parse_payment(SPEC_PAYLOAD).course_order
    assert order.status == "CONFIRMED"
    assert order.payment_id == "pay_123456"
    assert order.amount == Decimal(100)
    assert order.course_order_items[0].cost == Decimal(5000)
    assert order.course_order_items[0].course is not None
    assert order.course_order_items[0].course.subject is not None
    assert order.course_order_items[0].course.subject.project == "ЕГЭ"
    assert order.user.telegram_tag == "ivan_petrov"
    assert order.utm is not None
    assert order.utm.compaign == "summer2025"
    assert order.utm.campaign is None


def _read(node: Any, path: str) -> Any:
    """The value at the dotted `path` of a parsed model (list items by index)."""
    for part in path.split("."):
        node = node[int(part)] if isinstance(node, list) else getattr(node, part)
    return node


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("course_order.payment_id", 123456, "123456"),
        ("course_order.payment_id", "  pay_1 \n", "pay_1"),
        ("course_order.invoice_id", 789, "789"),
        ("course_order.invoice_id", None, None),
        ("course_order.invoice_id", ..., None),
        ("course_order.user.telegram_id", 123456789, "123456789"),
        ("course_order.user.phone", 89991234567, "89991234567"),
        ("course_order.utm.ym", 1234567890, "1234567890"),
        ("course_order.utm.campaign", "winter", "winter"),
        ("course_order.utm", None, None),
        ("course_order.utm", ..., None),
        ("course_order.amount", ..., None),
        ("course_order.amount", "100.50", Decimal("100.50")),
        ("course_order.course_order_items", None, []),
        ("course_order.course_order_items", ..., []),
        ("course_order.course_order_items.0.cost", 0, 0),
        ("course_order.course_order_items.0.cost", "4999.99", Decimal("4999.99")),
        ("course_order.course_order_items.0.cost", 4999.5, Decimal("4999.5")),
        ("course_order.course_order_items.0.course", None, None),
        ("course_order.course_order_items.0.package_id", {"any": ["shape"]}, {"any": ["shape"]}),
    ],
)
def test_accepted_variants(path: str, value: object, expected: object) -> None:
    assert _read(parse_payment(_with(path, value)), path) == expected


@pytest.mark.parametrize(
    ("path", "value", "read", "expected"),
    [
        ("course_order.user", {}, "course_order.user.phone", None),
        ("course_order.surprise", {"new": "field"}, "course_order.payment_id", "pay_123456"),
        ("course_order.user.middle_name", "Иванович", "course_order.user.first_name", "Иван"),
        ("course_order.utm.gclid", "x", "course_order.utm.source", "platform"),
        ("event", "payment", "course_order.payment_id", "pay_123456"),  # beside course_order
        ("version", 2, "course_order.payment_id", "pay_123456"),
    ],
)
def test_unknown_or_empty_parts_leave_the_rest_readable(
    path: str, value: object, read: str, expected: object
) -> None:
    assert _read(parse_payment(_with(path, value)), read) == expected


# What the models refuse, each by its dotted path (the field the refusal names).
REFUSED = [
    ("course_order.payment_id", ...),
    ("course_order.payment_id", ""),
    ("course_order.payment_id", "   "),
    ("course_order.payment_id", None),
    ("course_order.payment_id", True),
    ("course_order.status", ...),
    ("course_order.status", None),
    ("course_order.user", ...),
    ("course_order.user", "Иван"),
    ("course_order.user.email", ["a@b.c"]),
    ("course_order.course_order_items.0.cost", -1),
    ("course_order.course_order_items.0.cost", "abc"),
    ("course_order.course_order_items.0.cost", "NaN"),
    ("course_order.course_order_items.0.cost", True),
    ("course_order.course_order_items.0.cost", ...),
    ("course_order.course_order_items", {"cost": 1}),
    ("course_order.course_order_items.0.number_lessons", "ten"),
    ("course_order.utm", "platform"),
]


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        *((_with(path, value), path) for path, value in REFUSED),
        ({"order": {}}, "course_order"),
        ([SPEC_PAYLOAD], "body"),
        ("payment", "body"),
    ],
)
def test_rejected_payloads_name_the_field(raw: object, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_payment(raw)
    details = validation_details(caught.value)
    assert field in [detail["field"] for detail in details]
    assert all(set(detail) == {"field", "error"} and detail["error"] for detail in details)


def test_validation_details_never_echo_the_input() -> None:
    raw = _with("course_order.user.phone", ["+79991234567"])
    with pytest.raises(ValidationError) as caught:
        parse_payment(raw)
    assert "+79991234567" not in json.dumps(validation_details(caught.value), ensure_ascii=False)


FIELD_NAMES = [
    "course_order", "status", "amount", "created_at", "updated_at", "code", "payment_id",
    "invoice_id", "payment_method", "currency", "course_order_items", "cost",
    "number_lessons", "package_id", "course", "name", "subject", "project", "user",
    "first_name", "last_name", "phone", "email", "telegram_id", "telegram_tag", "utm",
    "source", "medium", "compaign", "campaign", "term", "content", "ym", "domain",
]  # fmt: skip

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["", " ", "NaN", "-Infinity", "1e999999", "5000", "-1", "0x10", "pay_1"]),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=8), children, max_size=8),
    ),
    max_leaves=40,
)


@given(raw=st.one_of(json_values, st.fixed_dictionaries({"course_order": json_values})))
def test_arbitrary_json_raises_only_validation_error(raw: object) -> None:
    _parsed_or_explained(raw)


def _parsed_or_explained(raw: object) -> None:
    """`raw` is a payment, or refused with a ValidationError whose details say why."""
    try:
        parse_payment(raw)
    except ValidationError as exc:
        details = validation_details(exc)
        assert details and all(detail["error"] for detail in details)


def _mutations() -> st.SearchStrategy[dict[str, Any]]:
    paths = [
        "course_order.status",
        "course_order.payment_id",
        "course_order.amount",
        "course_order.created_at",
        "course_order.course_order_items",
        "course_order.course_order_items.0",
        "course_order.course_order_items.0.cost",
        "course_order.course_order_items.0.course",
        "course_order.user",
        "course_order.user.phone",
        "course_order.user.telegram_id",
        "course_order.utm",
        "course_order.utm.compaign",
    ]
    return st.builds(_with, st.sampled_from(paths), json_values)


@given(raw=_mutations())
def test_near_valid_payloads_raise_only_validation_error(raw: dict[str, Any]) -> None:
    _parsed_or_explained(raw)


# --- the canonical shortcut (bridge.canonical) ------------------------------------------


def _both_readings(raw: object) -> tuple[object, object] | None:
    body = json.dumps(raw, ensure_ascii=False).encode()
    fast = decode_canonical(body)
    if fast is None:
        return None
    return fast, parse_payment(json.loads(body)).course_order


def _intake_of(order: Any) -> NewEvent:
    return payment_intake(order, "{}", Settings(file=reference_file_config())).event


@given(raw=st.one_of(_mutations(), json_values))
def test_whatever_the_shortcut_accepts_the_models_accept_alike(raw: object) -> None:
    readings = _both_readings(raw)
    if readings is None:
        return  # the shortcut declined: the models decide, as they always did
    fast, model = readings
    assert _intake_of(fast) == _intake_of(model)


def test_the_spec_payload_takes_the_shortcut_to_the_same_event() -> None:
    readings = _both_readings(SPEC_PAYLOAD)
    assert readings is not None
    fast, model = readings
    assert _intake_of(fast) == _intake_of(model)
    assert _intake_of(fast).amount == "5000"


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("course_order.payment_id", 123456),
        ("course_order.payment_id", "  pay_1 "),
        ("course_order.user.phone", 89991234567),
        ("course_order.course_order_items.0.cost", "4999.99"),
        ("course_order.course_order_items.0.cost", 4999.5),
        ("course_order.course_order_items", None),
        ("course_order.amount", "100.50"),
    ],
)
def test_lenient_variants_leave_the_shortcut_for_the_models(path: str, value: object) -> None:
    raw = _with(path, value)
    assert _both_readings(raw) is None
    parse_payment(raw)  # and the models still accept them


def test_deep_nesting_leaves_the_shortcut() -> None:
    assert decode_canonical(b'{"course_order": ' * 5000 + b"1" + b"}" * 5000) is None


@pytest.mark.parametrize(("path", "value"), REFUSED)
def test_what_the_models_refuse_the_shortcut_refuses(path: str, value: object) -> None:
    raw = _with(path, value)
    with pytest.raises(ValidationError):
        parse_payment(raw)
    assert decode_canonical(json.dumps(raw, ensure_ascii=False).encode()) is None
