"""The order body (SPEC §8): its model, its normalisation, its key, and a property test
that whatever arrives at `POST /webhook/order` is answered with a documented code and
never a 500."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar.testing import TestClient
from pydantic import ValidationError

from bridge.app import create_app
from bridge.domain import Company, CustomerType, OrderEventKind, OrderStatus
from bridge.order_normalize import order_event_key, order_from_webhook, order_stamp
from bridge.order_payloads import parse_order
from tests.conftest import make_settings, signed
from tests.fakes.memory import MemoryCrm
from tests.order_support import EXAMPLE_ORDER, MOSCOW, order_body
from tests.test_order_route import order_file


def test_the_example_body_becomes_the_domain_order() -> None:
    order, warnings = order_from_webhook(parse_order(json.loads(EXAMPLE_ORDER.read_text())), MOSCOW)
    assert warnings == []
    assert order.order_id == "ord_1042"
    assert order.event is OrderEventKind.UPDATED and order.status is OrderStatus.RESERVED
    assert order.updated_at == datetime(2026, 11, 20, 7, 15, tzinfo=UTC)
    assert order.total == Decimal("48500.00") and order.currency == "RUB"
    assert order.customer.phone == "+79160001122" and order.customer.email == "anna@example.com"
    assert order.customer_type is CustomerType.BUSINESS
    assert order.company == Company("ООО Ромашка", "7701234567", None, None)
    assert order.installation_date == date(2026, 12, 1)
    assert [item.total for item in order.items] == [Decimal("14000.00"), Decimal("34500.00")]


def test_a_naive_updated_at_is_in_the_platform_zone() -> None:
    body = order_body(updated_at="2026-11-20 10:15:00")
    order, _ = order_from_webhook(parse_order(body), MOSCOW)
    assert order.updated_at == datetime(2026, 11, 20, 7, 15, tzinfo=UTC)


@pytest.mark.parametrize(
    ("moment", "key"),
    [
        (datetime(2026, 11, 20, 7, 15, tzinfo=UTC), "ord_1@2026-11-20T07:15:00Z"),
        (datetime(2026, 11, 20, 7, 15, 0, 5000, tzinfo=UTC), "ord_1@2026-11-20T07:15:00.005000Z"),
    ],
)
def test_the_key_is_the_order_id_and_utc_time(moment: datetime, key: str) -> None:
    assert order_event_key("ord_1", moment) == key


def test_stamps_compare_as_their_times_do() -> None:
    earlier = order_stamp(datetime(2026, 11, 20, 7, 15, 0, 500000, tzinfo=UTC))
    later = order_stamp(datetime(2026, 11, 20, 7, 15, 1, tzinfo=UTC))
    assert earlier < later


def test_a_cancelled_event_cancels_whatever_status_it_carries() -> None:
    order, _ = order_from_webhook(parse_order(order_body(event="cancelled")), MOSCOW)
    assert order.effective_status is OrderStatus.CANCELLED


def test_an_inn_is_digits_and_a_bad_company_phone_is_dropped_with_a_warning() -> None:
    body = order_body()
    body["order"]["customer"]["company"].update(inn=" 7701 234567 ", phone="nonsense")
    order, warnings = order_from_webhook(parse_order(body), MOSCOW)
    assert order.company is not None and order.company.inn == "7701234567"
    assert warnings == ["company phone dropped: unparseable"]


def test_null_lists_and_texts_are_empty_and_an_item_without_name_is_named_by_its_sku() -> None:
    body = order_body(business=False)
    body["order"].update(items=[{"product_id": 42, "quantity": "2.5", "price": 100}], comment=None)
    order, _ = order_from_webhook(parse_order(body), MOSCOW)
    assert [(i.product_id, i.name, i.quantity) for i in order.items] == [
        ("42", "42", Decimal("2.5"))
    ]
    assert order.comment == ""
    body["order"]["items"] = None
    assert order_from_webhook(parse_order(body), MOSCOW)[0].items == ()


def test_text_with_a_lone_surrogate_is_refused() -> None:
    body = order_body()
    body["order"]["comment"] = "\ud83d"
    with pytest.raises(ValidationError):
        parse_order(body)


# ---- whatever arrives, a documented answer ---------------------------------------------

DOCUMENTED = {200, 202, 400, 401, 409, 413, 422}
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(10**6), 10**6), st.text(max_size=12))
FIELDS = (
    "id",
    "status",
    "updated_at",
    "total_amount",
    "installation_date",
    "customer",
    "items",
    "currency",
)


@st.composite
def bent_bodies(draw: st.DrawFn) -> bytes:
    body: dict[str, Any] = order_body(
        updated_at=draw(st.sampled_from(["2026-11-20T10:15:00+03:00", "2026-11-21T00:00:00Z"]))
    )
    for field in draw(st.lists(st.sampled_from(FIELDS), max_size=3, unique=True)):
        if draw(st.booleans()):
            body["order"].pop(field, None)
        else:
            body["order"][field] = draw(scalars)
    if draw(st.booleans()):
        body["event"] = draw(st.one_of(scalars, st.sampled_from(["created", "cancelled"])))
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=40))
    return json.dumps(body, ensure_ascii=draw(st.booleans())).encode()


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path: Path = tmp_path_factory.mktemp("orders")
    app_settings = make_settings(path, order_file(), wait_seconds=0)
    crm = MemoryCrm(app_settings.file.crm["amocrm"], name="amocrm")
    app = create_app(app_settings, adapters=lambda _settings, _store: {"amocrm": crm})
    with TestClient(app=app) as test_client:
        yield test_client


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(body=bent_bodies(), sign=st.booleans())
def test_any_body_gets_a_documented_answer_never_500(client: Any, body: bytes, sign: bool) -> None:
    headers = signed(body) if sign else {"Content-Type": "application/json"}
    response = client.post("/webhook/order", content=body, headers=headers)
    assert response.status_code in DOCUMENTED, response.text
    if not sign:
        assert response.status_code == 401
