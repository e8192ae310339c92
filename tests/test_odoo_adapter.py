"""The Odoo adapter alone against the fake: how it chooses its API, what it lists, and how
Odoo's access and outage errors land in the error tree. Every operation's round trip and
the refused values are the contract suite's (tests/test_contract.py), for 18 and 19."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from bridge.crm.connection import Wiring
from bridge.crm.odoo import Odoo, build_odoo
from bridge.domain import (
    Contact,
    FieldKind,
    FieldUpdate,
    NewContact,
    NewDeal,
    Utm,
)
from bridge.errors import AuthError, ConfigError, TransientCrmError
from bridge.rules import contact_matches
from bridge.settings import CrmConfig, FileConfig, Settings
from tests.crm_cases import BY_NAME, CUSTOMER
from tests.fakes.memory import MemoryTokens, adapter_on
from tests.fakes.odoo import FakeOdoo, example_config, example_odoo


def make(
    fake: FakeOdoo, config: CrmConfig | None = None, *, key: str | None = None, **options: Any
) -> Odoo:
    """The adapter on `fake` with `options` over the example's `[crm.odoo.options]`."""
    config = config or example_config()
    if options:
        config = config.model_copy(update={"options": {**config.options, **options}})
    return make_adapter(fake, config=config, key=key)


def make_adapter(
    fake: FakeOdoo, *, config: CrmConfig | None = None, key: str | None = None, **kw: Any
) -> Odoo:
    """`make` as the contract suite calls it (`transport`, `tokens`, settings in `kw`)."""
    static = {"odoo_api_key": fake.issue_api_key() if key is None else key}
    return adapter_on(build_odoo, fake, config or example_config(), static=static, **kw)


def odoo(version: int = 18, **kwargs: Any) -> FakeOdoo:
    return example_odoo(version=version, **kwargs)


@pytest.mark.parametrize(("version", "api", "session"), [(18, "jsonrpc", 3), (19, "json2", 2)])
async def test_auto_picks_the_api_once_per_process(version: int, api: str, session: int) -> None:
    fake = odoo(version)
    adapter = make(fake)
    assert adapter.connection.health_details()["api"] == "not yet chosen"
    assert await adapter.find_contact(CUSTOMER.lookup_keys(), contact_matches) is None
    assert adapter.connection.health_details()["api"] == api
    assert fake.count() == session + 1
    await adapter.find_contact(CUSTOMER.lookup_keys(), contact_matches)
    assert fake.count() == session + 2  # the session is not paid again


async def test_a_server_without_json2_routes_falls_back_to_jsonrpc() -> None:
    """Odoo 17 does not route /json/2 at all: a 404, not the 18.0 login redirect."""
    fake = odoo(18)
    fake.routes = [
        route
        for route in fake.routes
        if "json" not in route[1].pattern or route[1].pattern == "/jsonrpc"
    ]
    adapter = make(fake)
    assert await adapter.find_contact(CUSTOMER.lookup_keys(), contact_matches) is None
    assert adapter.connection.health_details()["api"] == "jsonrpc"


async def test_json2_pinned_on_an_18_server_says_what_to_set() -> None:
    adapter = make(odoo(18), api="json2")
    with pytest.raises(AuthError, match="no JSON-2 API"):
        await adapter.find_contact(CUSTOMER.lookup_keys(), contact_matches)


async def test_jsonrpc_without_a_login_says_what_to_set() -> None:
    adapter = make(odoo(18), login="")
    with pytest.raises(AuthError, match="login"):
        await adapter.find_contact(CUSTOMER.lookup_keys(), contact_matches)


async def test_pinned_api_skips_the_probe() -> None:
    fake = odoo(19)
    adapter = make(fake, api="jsonrpc")
    await adapter.find_contact(CUSTOMER.lookup_keys(), contact_matches)
    assert fake.executed[:1] == ["ir.model.fields.search_read"]
    assert fake.count("POST", "/json/2/") == 0
    assert fake.count() == 3  # authenticate, optional fields, the lookup


async def test_won_deals_are_closed_and_not_listed() -> None:
    fake = odoo()
    partner = fake.add_partner("Иван", phone="+79991234567")
    won = fake.add_lead(partner, stage_id=3)
    fake.set_won(won)
    adapter = make(fake)
    assert await adapter.list_deals(Contact(str(partner))) == []
    read = await adapter.get_deal(str(won))
    assert read is not None and read.is_closed


async def test_a_company_lists_its_people_deals() -> None:
    fake = odoo()
    company = fake.add_partner("ООО Ромашка", is_company=True)
    person = fake.add_partner("Анна", parent_id=company)
    lead = fake.add_lead(person, stage_id=3)
    adapter = make(fake)
    [deal] = await adapter.list_deals(Contact(str(company)))
    assert deal.id == str(lead) and deal.contact_ids == (str(person),)


async def test_refusals_land_in_the_error_tree() -> None:
    fake = odoo(19)
    adapter = make(fake)
    contact = await adapter.create_contact(NewContact(CUSTOMER, Utm()))
    deal = await adapter.create_deal(contact, NewDeal("x", Decimal(1), "1", "1"))
    # Refused values and placements are the contract suite's; here, access and outages.
    fake.deny("crm.lead", "write")
    with pytest.raises(AuthError, match="not allowed"):
        await adapter.update_deal(deal.id, (FieldUpdate("x_payment_id", FieldKind.TEXT, "a"),))
    fake.fail_next(1, 503, path_prefix="/json/2/crm.lead/message_post")
    with pytest.raises(TransientCrmError):
        await adapter.add_note(deal.id, "note")


@pytest.mark.parametrize("version", [18, 19])
async def test_an_expired_key_pauses_and_a_new_one_resumes(version: int) -> None:
    fake = odoo(version)
    adapter = make(fake)
    await adapter.find_contact(CUSTOMER.lookup_keys(), contact_matches)
    fake.expire_api_keys()
    with pytest.raises(AuthError) as raised:
        await adapter.find_contact(CUSTOMER.lookup_keys(), contact_matches)
    assert all(key.key not in str(raised.value) for key in fake.api_keys)
    assert adapter.connection.health_details()["api"] == "not yet chosen"  # learnt again next time


async def test_a_wrong_database_pauses() -> None:
    adapter = make(odoo(18), database="nope")
    with pytest.raises(AuthError, match="no database of that name"):
        await adapter.find_contact(CUSTOMER.lookup_keys(), contact_matches)


async def test_a_database_without_the_phone_mixin_still_finds_unformatted_numbers() -> None:
    fake = odoo(18, sms_installed=False)
    partner = fake.add_partner("Иван", phone="+79991234567")
    adapter = make(fake)
    found = await adapter.find_contact(CUSTOMER.lookup_keys()[1:2], contact_matches)
    assert found is not None and found.id == str(partner)


async def test_exchange_code_is_refused() -> None:
    adapter = make(odoo())
    with pytest.raises(AuthError, match="no OAuth: set ODOO_API_KEY"):
        await adapter.connection.exchange_code("code")
    assert await adapter.connection.credentials_problem() is None
    keyless = make(odoo(), key="").connection
    assert await keyless.credentials_problem() == "no credentials: set ODOO_API_KEY"


def test_oauth_is_refused_when_the_section_is_read() -> None:
    with pytest.raises(ConfigError, match=r'crm\.odoo\.auth: .*"long_lived_token"'):
        make(odoo(), example_config(auth="oauth"))


async def test_a_second_section_reads_its_own_key() -> None:
    """Secrets are the section's: `[crm.odoo-eu]` reads ODOO_EU_API_KEY, not ODOO_API_KEY."""
    fake = odoo(19)
    config = example_config()
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        file=FileConfig(crm={"odoo-eu": config}),
        odoo_api_key="not this one",
        crm_env={"ODOO_EU_API_KEY": fake.issue_api_key()},
    )
    wiring = Wiring("odoo-eu", config, settings, MemoryTokens(), transport=fake.transport())
    adapter = build_odoo(wiring)
    assert await adapter.find_contact(CUSTOMER.lookup_keys(), contact_matches) is None
    keyless = build_odoo(
        Wiring("odoo-eu", config, settings.model_copy(update={"crm_env": {}}), MemoryTokens())
    )
    assert await keyless.connection.credentials_problem() == "no credentials: set ODOO_EU_API_KEY"


# ---- for the contract suite (tests/test_contract.py) ----------------------------------


new_contact = BY_NAME["odoo"].new_contact


def new_deal() -> NewDeal:
    fields = (
        FieldUpdate("x_subject_ids", FieldKind.MULTISELECT, (1, 2)),
        FieldUpdate("x_direction", FieldKind.SELECT, "ege"),
        FieldUpdate("x_total_paid", FieldKind.NUMBER, Decimal("10000.00")),
        FieldUpdate("x_purchase_count", FieldKind.NUMBER, 1),
        FieldUpdate("x_payment_id", FieldKind.TEXT, "pay_1"),
        FieldUpdate("x_utm_source", FieldKind.TEXT, "advcake"),
    )
    return NewDeal("Оплата Русский - Иван Петров", Decimal("10000"), "1", "2", fields)


async def warm_up(adapter: Odoo) -> None:
    """The once-per-process session (API choice, uid, optional fields), paid up front."""
    await adapter.find_contact([], contact_matches)
