"""What `bridge check` and `crm-bridge discover` make of each CRM's example section, and
how each adapter refuses options it does not know: one table per check, a row per CRM."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from bridge import checks
from bridge.crmconfig import config_snippet, schema_problems
from bridge.errors import ConfigError
from bridge.rules import contact_matches
from bridge.settings import CrmConfig, OrderStage, Settings
from tests import test_hubspot_adapter as hs
from tests import test_pipedrive_adapter as pd
from tests import test_salesforce_adapter as sf
from tests import test_zoho_adapter as zo
from tests.adapter_support import ROOT, tg_key
from tests.crm_cases import BY_NAME, CASES, CrmCase
from tests.fakes.hubspot import FakeHubSpot
from tests.fakes.megaplan import DEAL_CATEGORY
from tests.fakes.memory import MemoryTokens
from tests.fakes.pipedrive_openapi import PipedriveOpenApi
from tests.fakes.salesforce import YANDEX
from tests.fakes.zoho import FakeZoho
from tests.fakes.zoho_openapi import ZohoOpenApi
from tests.fakes.zoho_org import RENTAL_STAGES
from tests.order_examples import uncommented_orders


@pytest.fixture(autouse=True)
def requests_conform_to_openapi() -> Iterator[None]:
    """What the Pipedrive and Zoho adapters send is checked against their vendors'
    OpenAPI files here too, as in their own test files."""
    with (
        contextmanager(pd.SENT.checked)(PipedriveOpenApi.load),
        contextmanager(zo.SENT.checked)(ZohoOpenApi.beside_shared),
    ):
        yield


def settings_for(case: CrmCase, fake: Any, **changes: Any) -> Settings:
    """The case's example section (with `changes`), authorised on `fake`."""
    file = case.file_config(**changes)
    return Settings(_env_file=None, file=file, **case.credentials(fake))


# Lines `discover` writes for the example section (its own ids matched by the config).
SNIPPETS = {
    "hubspot": ('subjects = "subjects"', '"Русский" = "russian"'),
    "salesforce": ('subjects = "Subjects__c"', '"Русский" = "Russian"'),
    "odoo": ('subjects = "x_subject_ids"', '"Математика" = 2', '"ЕГЭ" = "ege"'),
    "megaplan": (f'total_paid = "{DEAL_CATEGORY}TotalPaid"', '"Русский" = "Русский"'),
}


@pytest.mark.parametrize("case", CASES, ids=str)
async def test_bridge_check_and_discover_read_the_example_account(case: CrmCase) -> None:
    fake = case.make_fake()
    settings = settings_for(case, fake)
    transports = {case.name: fake.transport()}
    tokens = MemoryTokens()
    findings = await checks.crm_findings(case.name, settings, tokens, transports, fake.clock)
    assert [f.level for f in findings] == ["ok", "ok"], findings
    if case.config.auth == "minted":
        assert tokens.saved == []  # a session minted from the key is never stored
    assert f"({len(case.pipelines)} pipelines" in findings[0].text
    adapter = checks.build_adapter(case.name, settings, MemoryTokens(), transports, fake.clock)
    snippet = config_snippet(case.config.kind, case.config, await adapter.schema())
    await adapter.connection.aclose()
    for line in SNIPPETS.get(case.name, ()):
        assert line in snippet


# CRM → its pipelines in order, some pipelines' statuses in order (ids, or ids and names),
# field types by (entity, id), fields `schema()` leaves out (the CRM's own), and settings
# it then flags (a change to the example section and the problems' keys).
SCHEMAS: dict[str, tuple[Any, ...]] = {
    "hubspot": (
        {
            "default": "Site",
            "1023405100": "Yandex",
            "1023405200": "Partners",
            "1023405300": "Аренда",
        },
        {"default": ("1023405001", "appointmentscheduled", "closedwon", "closedlost")},
        {
            ("leads", "last_payment_at"): "date_time",
            ("leads", "installation_date"): "date",
            ("companies", "inn"): "text",
        },
        [("leads", "dealname")],
        None,
    ),
    "pipedrive": (
        {"1": "Site", "2": "Yandex", "3": "Partners", "4": "Аренда"},
        {"1": {"1": "Автооплата", "2": "В работе"}},
        {
            ("leads", pd.LAST_AT): "date",
            ("companies", pd.CONFIG.order_fields.company_inn): "text",
        },
        [("leads", "title")],  # system fields are not custom fields
        None,
    ),
    "zoho": (
        {"Site": "Site", "Partners": "Partners", "Yandex": "Yandex"},
        {"Site": ("Автооплата", *RENTAL_STAGES, "В работе", "Closed Won", "Closed Lost")},
        {},
        [],
        (
            lambda c: c.model_copy(
                update={"deal_fields": c.deal_fields.model_copy(update={"direction": "Subjects"})}
            ),
            ["crm.zoho.deal_fields.direction = Subjects"],
        ),
    ),
    "bitrix24": (
        {"0": "Сайт", "1": "Яндекс", "2": "Партнёры"},
        {
            "0": ("NEW", "UC_AUTOPAY", "EXECUTING", "WON", "LOSE"),
            "2": ("C2:NEW", "C2:UC_AUTOPAY", "C2:EXECUTING", "C2:WON", "C2:LOSE"),
        },
        {("leads", "UF_CRM_LAST_PAYMENT_AT"): "date_time"},
        [],
        (
            lambda c: c.model_copy(update={"excluded_status_ids": ("C9:NOPE",)}),
            ["crm.bitrix24.excluded_status_ids: C9:NOPE"],
        ),
    ),
    "odoo-19": (
        {"1": "Сайт", "2": "Яндекс", "3": "Партнёры"},
        {
            "1": {
                "1": "New",
                "2": "Автооплата",
                "3": "In progress",
                "4": "Won",
                "lost": "Lost (archived with a reason)",  # the pseudo-stage of cancelled orders
            }
        },
        {},
        [],
        None,
    ),
}


@pytest.mark.parametrize(
    ("name", "pipelines", "statuses", "types", "left_out", "flagged"),
    [pytest.param(name, *row, id=name) for name, row in SCHEMAS.items()],
)
async def test_schema_names_pipelines_and_statuses_in_order_and_types_fields(
    name: str,
    pipelines: dict[str, str],
    statuses: dict[str, tuple[str, ...] | dict[str, str]],
    types: dict[tuple[str, str], str],
    left_out: list[tuple[str, str]],
    flagged: tuple[Callable[[CrmConfig], CrmConfig], list[str]] | None,
) -> None:
    case = BY_NAME[name]
    fake = case.make_fake()
    settings = settings_for(case, fake)
    adapter = checks.build_adapter(name, settings, MemoryTokens(), {name: fake.transport()})
    schema = await adapter.schema()
    await adapter.connection.aclose()
    assert [(p.id, p.name) for p in schema.pipelines] == list(pipelines.items())
    by_id = {p.id: p for p in schema.pipelines}
    for pipeline, expected in statuses.items():
        actual = by_id[pipeline].statuses
        if isinstance(expected, dict):  # ids and names
            assert list(actual.items()) == list(expected.items())
        else:
            assert tuple(actual) == expected
    fields = {(f.entity, f.id): f.type for f in schema.fields}
    assert {key: fields.get(key) for key in types} == types
    assert not set(left_out) & set(fields)
    if flagged is not None:
        wrong, keys = flagged
        assert [
            p.key for p in schema_problems(case.config.kind, wrong(case.config), schema)
        ] == keys


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("hubspot", {"search_rate_limit": 4}, "not known"),
        ("hubspot", {"search_rate_limit_per_second": 0}, "positive"),
        ("hubspot", {"search_rate_limit_per_second": "4"}, "positive"),
        ("pipedrive", {"daily_budget": 1}, "unknown daily_budget"),
        ("pipedrive", {"daily_token_budget": 0}, "daily_token_budget"),
        ("pipedrive", {"daily_token_budget": "lots"}, "daily_token_budget"),
        ("pipedrive", {"search_rate_per_second": -1}, "search_rate_per_second"),
        ("pipedrive", {"oauth_url": "oauth.pipedrive.com"}, "oauth_url"),
        ("bitrix24", {"burst": 0}, "burst"),
        ("bitrix24", {"burst": True}, "burst"),
        ("bitrix24", {"currency_id": "руб."}, "currency_id"),
        ("bitrix24", {"oauth_server": "http://x"}, "oauth_server"),
        ("bitrix24", {"token_budget": 1}, "unknown"),
        ("salesforce", {"flow": "password"}, "jwt_bearer"),
        ("salesforce", {"api_version": "latest"}, "68.0"),
        ("salesforce", {"login_url": "login.salesforce.com"}, "https://login"),
        ("salesforce", {"api_stop_percent": 0}, "from 1 to 100"),
        ("salesforce", {"session_timeout_seconds": "2h"}, "from 60"),
        ("salesforce", {"search_rate": 1}, "not known to Salesforce"),
        ("zoho", {}, "data_centre"),
        ("zoho", {"data_centre": "mars"}, "data_centre"),
        ("zoho", {"data_centre": "eu", "daily_credits": 0}, "daily_credits"),
        ("zoho", {"data_centre": "eu", "concurrency": 2}, "concurrency"),
        ("zoho", {"data_centre": "eu", "nope": 1}, "unknown nope"),
        ("zoho", {"data_centre": "eu", "accounts_url": "accounts.zoho.eu"}, "accounts_url"),
    ],
)
def test_options_are_validated(name: str, options: dict[str, Any], message: str) -> None:
    case = BY_NAME[name]
    fake = case.make_fake()
    settings = settings_for(case, fake, options=options)
    with pytest.raises(ConfigError, match=message):
        checks.build_adapter(name, settings, MemoryTokens(), {name: fake.transport()})


# Not amoCRM's: its search is one query over every field, whose hits the flow confirms.
@pytest.mark.parametrize("case", [case for case in CASES if case.name != "amocrm"], ids=str)
async def test_without_a_telegram_field_a_telegram_id_is_not_searched(case: CrmCase) -> None:
    fake = case.make_fake()
    fields = case.config.contact_fields.model_copy(update={"telegram_id": None})
    settings = settings_for(case, fake, contact_fields=fields)
    adapter = checks.build_adapter(
        case.name, settings, MemoryTokens(), {case.name: fake.transport()}
    )
    await adapter.find_contact([], contact_matches)  # what a process pays once (Odoo's session)
    fake.calls.clear()
    assert await adapter.find_contact([tg_key()], contact_matches) is None
    assert fake.count() == 0
    await adapter.connection.aclose()


# ---- orders (SPEC §8): the sections' order settings -----------------------------------


@pytest.mark.parametrize(
    ("kind", "tested", "example"),
    [
        ("salesforce", sf.order_config(sf.CONFIG), "crm-salesforce.example.toml"),
        ("zoho", zo.order_config(zo.CONFIG), "crm-zoho.example.toml"),
    ],
)
def test_the_examples_order_settings_are_the_ones_tested(
    kind: str, tested: CrmConfig, example: str
) -> None:
    """Uncommented, the example's order settings are the ones the adapter's tests use."""
    uncommented = uncommented_orders(ROOT / "etc" / example).crm[kind]
    assert uncommented.order_stages == tested.order_stages
    assert uncommented.order_fields == tested.order_fields
    assert uncommented.order_catalog_id == tested.order_catalog_id


ORDER_CHECKS = [
    pytest.param(
        lambda: hs.make_adapter(FakeHubSpot(hs.CONFIG)),
        hs.CONFIG,
        {"cancelled": OrderStage(pipeline_id=hs.RENT, status_id="closedlost")},
        {"order_id": "no_such_property", "company_inn": "phone_typo"},
        [
            "crm.hubspot.order_stages.cancelled.status_id = closedlost: no such status in"
            f" pipeline {hs.RENT}",
            "crm.hubspot.order_fields.order_id = no_such_property: no such lead field",
            "crm.hubspot.order_fields.company_inn = phone_typo: no such company field",
        ],
        (
            "cancelled = { pipeline_id = 1023405300, status_id = 1023405306 }",
            'installation_date = "installation_date"',
            'company_inn = "inn"',
        ),
        ("# cancelled = { pipeline_id = …, status_id = … }", 'company_inn = "inn"'),
        id="hubspot",
    ),
    pytest.param(
        lambda: pd.make_adapter(BY_NAME["pipedrive"].make_fake()),
        pd.CONFIG,
        {"new": OrderStage(pipeline_id="99", status_id=pd.CONFIG.order_stages["new"].status_id)},
        {"company_inn": "x" * 40, "installation_date": pd.PAYMENT_ID},
        [
            "crm.pipedrive.order_stages.new.pipeline_id = 99: no such pipeline",
            f"crm.pipedrive.order_fields.installation_date = {pd.PAYMENT_ID}:"
            ' "ID платежа" is a text field; installation_date needs birthday or date'
            " or date_time or zoho:date",
            f"crm.pipedrive.order_fields.company_inn = {'x' * 40}: no such company field",
        ],
        (),
        (),
        id="pipedrive",
    ),
    pytest.param(
        lambda: sf.make_adapter(sf.order_fake(), config=sf.order_config(sf.CONFIG)),
        sf.order_config(sf.CONFIG),
        {"cancelled": OrderStage(pipeline_id=YANDEX, status_id="X")},
        {"installation_date": "Order_Comment__c", "company_inn": "Tax__c"},
        [
            "crm.salesforce.order_stages.cancelled.status_id = X: no such status in pipeline"
            f" {YANDEX}",
            "crm.salesforce.order_fields.installation_date = Order_Comment__c:"
            ' "Order Comment" is a textarea field; installation_date needs birthday or date'
            " or date_time or zoho:date",
            "crm.salesforce.order_fields.company_inn = Tax__c: no such company field",
        ],
        (),
        (
            'installation_date = "Installation_Date__c"',
            'order_id = "Order_Id__c"',
            'company_inn = "INN__c"',
        ),
        id="salesforce",
    ),
    pytest.param(
        lambda: zo.make_adapter(FakeZoho(zo.CONFIG), config=zo.order_config(zo.CONFIG)),
        zo.order_config(zo.CONFIG),
        {"new": OrderStage(pipeline_id="Rent", status_id="X")},
        {"dismantle_date": "Order_Status"},
        [
            "crm.zoho.order_stages.new.pipeline_id = Rent: no such pipeline",
            'crm.zoho.order_fields.dismantle_date = Order_Status: "Order Status" is a text field;'
            " dismantle_date needs birthday or date or date_time or zoho:date",
        ],
        (),
        ('dismantle_date = "Dismantle_Date"', 'order_id = "Order_ID"', 'company_inn = "INN"'),
        id="zoho",
    ),
]


@pytest.mark.parametrize(
    ("make", "config", "stages", "fields", "problems", "discovered", "bare"), ORDER_CHECKS
)
async def test_check_and_discover_cover_the_order_settings(
    make: Callable[[], Any],
    config: CrmConfig,
    stages: dict[str, OrderStage],
    fields: dict[str, str],
    problems: list[str],
    discovered: tuple[str, ...],
    bare: tuple[str, ...],
) -> None:
    """The example's order settings check clean; a stage or an order field that is not
    there is named (`problems`); the snippet `discover` writes over the section
    (`discovered`) or alone (`bare`, the order fields matched by name) holds them."""
    adapter = make()
    try:
        schema = await adapter.schema()
    finally:
        await adapter.connection.aclose()
    assert schema_problems(config.kind, config, schema) == []
    wrong = config.model_copy(
        update={
            "order_stages": {**config.order_stages, **stages},
            "order_fields": config.order_fields.model_copy(update=fields),
        }
    )
    assert [str(p) for p in schema_problems(config.kind, wrong, schema)] == problems
    for lines, over in ((discovered, config), (bare, None)):
        snippet = config_snippet(config.kind, over, schema)
        for line in lines:
            assert line in snippet
