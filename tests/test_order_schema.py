"""`crm-bridge check` / `discover` cover the order settings (SPEC §8) for amoCRM and
Bitrix24: order stages and order fields are checked against the CRM's own schema like the
payment ones, and discover proposes `[crm.NAME.order_fields]`."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest

from bridge.crmconfig import config_snippet, schema_problems
from bridge.settings import CrmConfig, OrderStage
from tests import order_probes as orders
from tests.test_contract import ADAPTER_CASES

PROBES = {probe.kind: probe for probe in orders.PROBES if probe.kind in ("amocrm", "bitrix24")}
CASES = {str(case): case for case in ADAPTER_CASES}


async def _schema(kind: str, config: CrmConfig) -> Any:
    probe = PROBES[kind]
    assert probe.make_fake is not None
    fake = probe.make_fake()
    adapter = CASES[kind].make_adapter(fake, config=config)
    try:
        return await adapter.schema()
    finally:
        await adapter.connection.aclose()


@pytest.mark.parametrize("kind", sorted(PROBES))
async def test_a_config_with_orders_the_crm_has_checks_clean(kind: str) -> None:
    config = PROBES[kind].order_config(CASES[kind].config)
    schema = await _schema(kind, config)
    assert schema_problems(kind, config, schema) == []


@pytest.mark.parametrize("kind", sorted(PROBES))
async def test_an_unknown_order_stage_and_field_are_named(kind: str) -> None:
    config = PROBES[kind].order_config(CASES[kind].config)
    schema = await _schema(kind, config)
    stages = dict(config.order_stages)
    reserved = stages["reserved"]
    stages["reserved"] = OrderStage(pipeline_id=reserved.pipeline_id, status_id="777")
    fields = config.order_fields.model_copy(update={"comment": "999999"})
    broken = config.model_copy(update={"order_stages": stages, "order_fields": fields})
    keys = [p.key for p in schema_problems(kind, broken, schema)]
    assert keys == [
        f"crm.{kind}.order_stages.reserved.status_id = 777",
        f"crm.{kind}.order_fields.comment = 999999",
    ]


@pytest.mark.parametrize("kind", sorted(PROBES))
async def test_a_date_order_field_of_another_type_is_refused(kind: str) -> None:
    config = PROBES[kind].order_config(CASES[kind].config)
    schema = await _schema(kind, config)
    fields = config.order_fields
    swapped = fields.model_copy(update={"installation_date": fields.order_id, "order_id": None})
    problems = schema_problems(kind, config.model_copy(update={"order_fields": swapped}), schema)
    assert [p.key for p in problems] == [
        f"crm.{kind}.order_fields.installation_date = {fields.order_id}"
    ]
    assert "needs birthday or date or date_time" in problems[0].message


@pytest.mark.parametrize("kind", sorted(PROBES))
async def test_discover_proposes_the_order_fields(kind: str) -> None:
    config = PROBES[kind].order_config(CASES[kind].config)
    schema = await _schema(kind, config)
    # Unconfigured: every order field is found by its name and type.
    bare = config.model_copy(update={"order_fields": type(config.order_fields)()})
    parsed = tomllib.loads(config_snippet(kind, bare, schema))
    proposed = parsed["crm"][kind]["order_fields"]
    wanted = config.order_fields.model_dump(exclude_none=True)
    assert {key: str(value) for key, value in proposed.items()} == wanted
