"""`POST /webhook/order` (SPEC §8): the payment route's answer contract, plus stale.

The whole app runs (lifespan, store in tmp_path, worker) over the in-memory CRM, which
takes orders: 200 done / 202 queued / 409 duplicate / 401 / 400 / 422 naming fields /
413 / 503, and 202 {"status": "stale"} for an update older than one already received.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient

from bridge.app import create_app
from bridge.errors import ConfigError
from bridge.intake import NO_ORDER_CRM
from bridge.settings import FileConfig
from tests.conftest import Bridge, make_settings, reference_file_config, signed
from tests.fakes.memory import MemoryConnection, MemoryCrm
from tests.order_support import PIPELINE, STAGES, order_body, with_orders

TENT = [("tent-02", "Шатёр 6×12", 1, "25000.00")]


class OrderBridge(Bridge):
    """The app over the in-memory CRM, which takes orders."""

    @property
    def crm(self) -> MemoryCrm:
        crm: MemoryCrm = self.fake  # type: ignore[assignment]
        return crm

    async def post(self, payload: dict[str, Any] | bytes, **headers: str) -> httpx.Response:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return await self.client.post(
            "/webhook/order", content=body, headers={**signed(body), **headers}
        )


def order_file(takes_orders: bool = True) -> FileConfig:
    file = reference_file_config()
    amo = file.crm["amocrm"]
    return file.model_copy(update={"crm": {"amocrm": with_orders(amo) if takes_orders else amo}})


Factory = Callable[..., Any]


@pytest.fixture
def bridge(tmp_path: Path) -> Factory:
    @asynccontextmanager
    async def factory(takes_orders: bool = True, **overrides: Any) -> AsyncIterator[OrderBridge]:
        settings = make_settings(tmp_path, order_file(takes_orders), **overrides)
        crm = MemoryCrm(settings.file.crm["amocrm"], name="amocrm")
        app = create_app(settings, adapters=lambda _settings, _store: {"amocrm": crm})
        async with AsyncTestClient(app=app) as client:
            yield OrderBridge(client, settings, crm)  # type: ignore[arg-type]

    return factory


async def test_an_order_delivered_within_the_window_is_200_with_the_deal(bridge: Factory) -> None:
    async with bridge() as b:
        response = await b.post(order_body(event="created", status="new"))
        assert response.status_code == 200, response.text
        [deal] = b.crm.deals
        [contact] = b.crm.contacts
        assert response.json() == {
            "status": "success",
            "results": {"amocrm": {"contact_id": contact, "lead_id": deal, "lead_created": True}},
        }
        [link] = b.query("SELECT crm, order_id, deal_id, status, total FROM order_links")
        assert link == ("amocrm", "ord_1042", deal, "new", "48500.00")


async def test_a_repeat_of_a_delivered_event_is_409_and_calls_no_crm(bridge: Factory) -> None:
    async with bridge() as b:
        assert (await b.post(order_body())).status_code == 200
        calls = len(b.crm.calls)
        again = await b.post(order_body())
        assert again.status_code == 409
        assert again.json() == {"status": "duplicate"}
        await b.settle()
        assert len(b.crm.calls) == calls


async def test_with_no_wait_window_an_order_is_202_queued_then_delivered(bridge: Factory) -> None:
    async with bridge(wait_seconds=0) as b:
        response = await b.post(order_body())
        assert (response.status_code, response.json()) == (202, {"status": "queued"})
        await b.settle()
        assert len(b.crm.deals) == 1


async def test_an_older_update_after_a_newer_one_is_202_stale_and_changes_nothing(
    bridge: Factory,
) -> None:
    async with bridge() as b:
        newer = order_body(status="in_rent", updated_at="2026-11-21T09:00:00+03:00", items=TENT)
        assert (await b.post(newer)).status_code == 200
        calls = len(b.crm.calls)
        older = order_body(status="reserved", updated_at="2026-11-20T10:15:00+03:00")
        response = await b.post(older)
        assert (response.status_code, response.json()) == (202, {"status": "stale"})
        repeat = await b.post(older)
        assert (repeat.status_code, repeat.json()) == (202, {"status": "stale"})
        await b.settle()
        assert len(b.crm.calls) == calls
        [deal] = b.crm.deals
        assert b.crm.stage(deal) == (PIPELINE, STAGES["in_rent"])
        rows = b.query(
            "SELECT updated_at, status, crm, error_message FROM order_events ORDER BY id"
        )
        assert rows[0][1:3] == ("success", "amocrm")
        assert rows[1][:3] == ("2026-11-20T10:15:00+03:00", "skipped", None)
        assert rows[1][3].startswith("stale: ")


async def test_created_updated_cancelled_is_one_deal_moved_along(bridge: Factory) -> None:
    async with bridge() as b:
        assert (await b.post(order_body(event="created", status="new"))).status_code == 200
        update = order_body(status="in_rent", updated_at="2026-11-21T09:00:00+03:00", items=TENT)
        assert (await b.post(update)).status_code == 200
        cancel = order_body(
            event="cancelled", status="in_rent", updated_at="2026-11-22T09:00:00+03:00", items=TENT
        )
        response = await b.post(cancel)
        assert response.status_code == 200
        assert response.json()["results"]["amocrm"]["lead_created"] is False
        [deal] = b.crm.deals
        assert b.crm.deals[deal].is_closed
        assert b.crm.items[deal] == [("Шатёр 6×12", Decimal(1), Decimal("25000.00"))]
        assert len(b.crm.notes[deal]) == 3
        assert b.query("SELECT status FROM order_links") == [("cancelled",)]


async def test_a_section_without_order_stages_gets_no_delivery(bridge: Factory) -> None:
    async with bridge(takes_orders=False) as b:
        response = await b.post(order_body())
        assert response.status_code == 202
        assert response.json() == {"status": "skipped", "reason": NO_ORDER_CRM}
        assert b.query("SELECT COUNT(*) FROM deliveries") == [(0,)]
        assert b.crm.calls == []


async def test_a_wrong_signature_is_401_and_stores_nothing(bridge: Factory) -> None:
    async with bridge() as b:
        response = await b.post(order_body(), **{"X-Signature": "sha256=" + "0" * 64})
        assert (response.status_code, response.json()) == (401, {"error": "invalid_signature"})
        assert b.query("SELECT COUNT(*) FROM events") == [(0,)]


async def test_a_body_that_is_not_json_is_400(bridge: Factory) -> None:
    async with bridge() as b:
        response = await b.post(b"{not json")
        assert response.status_code == 400
        assert response.json()["error"].startswith("body is not JSON")


def _broken(**changes: Any) -> dict[str, Any]:
    body = order_body()
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        target = body
        for part in parents:
            target = target[part]
        if value is None:
            del target[leaf]
        else:
            target[leaf] = value
    return body


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (_broken(order__id=None), "order.id"),
        (_broken(order__id="ord 1\n"), "order.id"),
        (_broken(event="deleted"), "event"),
        (_broken(order__status="lost"), "order.status"),
        (_broken(order__updated_at="yesterday"), "order.updated_at"),
        (_broken(order__updated_at=None), "order.updated_at"),
        (_broken(order__total_amount="-1"), "order.total_amount"),
        (_broken(order__installation_date="2026-13-01"), "order.installation_date"),
        (_broken(order__customer__company=None), "order.customer"),
        (_broken(order__customer__company__inn="123"), "order.customer.company.inn"),
        (
            _broken(order__items=[{"product_id": "x", "quantity": 0, "price": "1"}]),
            "order.items.0.quantity",
        ),
        (
            _broken(order__items=[{"name": "x", "quantity": 1, "price": "1"}]),
            "order.items.0.product_id",
        ),
    ],
)
async def test_a_body_not_matching_the_model_is_422_naming_the_field(
    bridge: Factory, body: dict[str, Any], field: str
) -> None:
    async with bridge() as b:
        response = await b.post(body)
        assert response.status_code == 422, response.text
        answer = response.json()
        assert answer["error"] == "invalid_payload"
        assert field in [detail["field"] for detail in answer["details"]]
        assert b.query("SELECT COUNT(*) FROM events") == [(0,)]


async def test_a_body_over_the_limit_is_413(bridge: Factory) -> None:
    async with bridge(max_body_bytes=2048) as b:
        body = order_body()
        body["order"]["comment"] = "x" * 4096
        response = await b.post(body)
        assert response.status_code == 413
        assert b.query("SELECT COUNT(*) FROM events") == [(0,)]


async def test_an_order_that_cannot_be_stored_is_503(bridge: Factory) -> None:
    async with bridge() as b:
        os.chmod(b.settings.database_path, 0o400)
        try:
            response = await b.post(order_body())
        finally:
            os.chmod(b.settings.database_path, 0o600)
        assert (response.status_code, response.json()) == (503, {"error": "storage_unavailable"})


async def test_the_path_with_a_trailing_slash_is_the_same_route(bridge: Factory) -> None:
    async with bridge() as b:
        body = json.dumps(order_body()).encode()
        response = await b.client.post("/webhook/order/", content=body, headers=signed(body))
        assert response.status_code == 200


async def test_a_section_with_order_stages_whose_crm_takes_no_orders_is_refused_at_start(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path, order_file())
    payments_only = SimpleNamespace(connection=MemoryConnection())  # no order operations
    app = create_app(settings, adapters=lambda _settings, _store: {"amocrm": payments_only})
    with pytest.raises(BaseException) as raised:  # noqa: PT011 - the lifespan's group
        async with AsyncTestClient(app=app):
            pass
    errors = getattr(raised.value, "exceptions", (raised.value,))
    assert [type(e) for e in errors] == [ConfigError], errors
    assert "crm.amocrm: order_stages is set" in str(errors[0])
