"""The Odoo adapter alone against the fake: how it chooses its API, what each operation
costs, and how Odoo's refusals land in the error tree."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest

from bridge.crm.base import RateLimiter
from bridge.crm.odoo import Odoo, build_odoo
from bridge.crmconfig import config_snippet, schema_problems
from bridge.domain import (
    Contact,
    ContactPatch,
    Customer,
    FieldKind,
    FieldUpdate,
    NewContact,
    NewDeal,
    Utm,
)
from bridge.errors import AuthError, PermanentCrmError, TransientCrmError
from bridge.rules import contact_matches
from bridge.settings import CrmConfig, FileConfig, Settings
from tests.fakes.odoo import FakeOdoo, example_config, example_odoo

CUSTOMER = Customer("Иван", "Петров", "+79991234567", "ivan@example.com", "123456789", "ivan")


async def no_wait(seconds: float) -> None:
    await asyncio.sleep(0)


class NoTokens:
    async def load_tokens(self, crm: str) -> None:
        return None

    async def save_tokens(self, crm: str, pair: Any) -> None:
        raise AssertionError("Odoo stores no tokens")


def make(
    fake: FakeOdoo, config: CrmConfig | None = None, *, key: str | None = None, **options: Any
) -> Odoo:
    config = config or example_config()
    if options:
        config = config.model_copy(update={"options": {**config.options, **options}})
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        file=FileConfig(crm={"odoo": config}),
        odoo_api_key=fake.issue_api_key() if key is None else key,
    )
    adapter = build_odoo("odoo", config, settings, NoTokens(), transport=fake.transport())  # type: ignore[arg-type]
    adapter.http.limiter = RateLimiter(1000, sleep=no_wait)
    adapter.http.backoff_initial, adapter.http.backoff_max = 0.001, 0.01
    return adapter


def odoo(version: int = 18, **kwargs: Any) -> FakeOdoo:
    return example_odoo(version=version, **kwargs)


@pytest.mark.parametrize(("version", "api", "session"), [(18, "jsonrpc", 3), (19, "json2", 2)])
async def test_auto_picks_the_api_once_per_process(version: int, api: str, session: int) -> None:
    fake = odoo(version)
    adapter = make(fake)
    assert adapter.health_details()["api"] == "not yet chosen"
    assert await adapter.find_contact(CUSTOMER.lookup_keys(), contact_matches) is None
    assert adapter.health_details()["api"] == api
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
    assert adapter.health_details()["api"] == "jsonrpc"


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


@pytest.mark.parametrize("version", [18, 19])
async def test_every_operation_round_trips(version: int) -> None:
    fake = odoo(version)
    adapter = make(fake)
    contact = await adapter.create_contact(
        NewContact(CUSTOMER, Utm(), (FieldUpdate("x_telegram_id", FieldKind.TEXT, "123456789"),))
    )
    await adapter.update_contact(
        contact.id, ContactPatch((FieldUpdate("x_telegram_username", FieldKind.TEXT, "ivan"),))
    )
    found = await adapter.find_contact(CUSTOMER.lookup_keys(), contact_matches)
    assert found is not None and found.id == contact.id
    assert (found.telegram_id, found.telegram_username) == ("123456789", "ivan")
    fields = (
        FieldUpdate("x_subject_ids", FieldKind.MULTISELECT, (1, 3)),
        FieldUpdate("x_payment_id", FieldKind.TEXT, "p1"),
    )
    deal = await adapter.create_deal(found, NewDeal("Оплата", Decimal("1500.50"), "2", "3", fields))
    assert (deal.pipeline_id, deal.status_id, deal.fields["x_subject_ids"]) == ("2", "3", "1")
    [listed] = await adapter.list_deals(found)
    assert (listed.id, listed.price, listed.is_closed) == (deal.id, Decimal("1500.5"), False)
    assert listed.fields["x_payment_id"] == "p1"
    await adapter.update_deal(deal.id, (FieldUpdate("x_total_paid", FieldKind.NUMBER, Decimal(7)),))
    assert fake.lead(deal.id)["x_total_paid"] == 7
    await adapter.add_note(deal.id, "Оплата <проведена>\nPayment ID: p1")
    assert await adapter.deal_notes(deal.id) == ["Оплата <проведена>\nPayment ID: p1"]
    fake.set_lost(int(deal.id))
    assert await adapter.list_deals(found) == []
    lost = await adapter.get_deal(deal.id)
    assert lost is not None and lost.is_closed
    fake.delete_lead(int(deal.id))
    assert await adapter.get_deal(deal.id) is None
    assert await adapter.get_deal("not-a-number") is None


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
    with pytest.raises(PermanentCrmError, match="x_nope"):
        await adapter.update_deal(deal.id, (FieldUpdate("x_nope", FieldKind.TEXT, "a"),))
    with pytest.raises(PermanentCrmError, match="Wrong value"):
        await adapter.update_deal(deal.id, (FieldUpdate("x_direction", FieldKind.SELECT, "nope"),))
    with pytest.raises(PermanentCrmError):
        await adapter.create_deal(contact, NewDeal("x", Decimal(1), "1", "999"))
    fake.deny("crm.lead", "write")
    with pytest.raises(AuthError, match="not allowed"):
        await adapter.update_deal(deal.id, (FieldUpdate("x_payment_id", FieldKind.TEXT, "a"),))
    fake.fail_next(1, 503)
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
    assert adapter.health_details()["api"] == "not yet chosen"  # learnt again next time


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


async def test_schema_discover_and_check_agree_with_the_example() -> None:
    fake = odoo(19)
    adapter = make(fake)
    schema = await adapter.schema()
    config = example_config()
    assert [(p.id, p.name) for p in schema.pipelines] == [
        ("1", "Сайт"),
        ("2", "Яндекс"),
        ("3", "Партнёры"),
    ]
    assert dict(schema.pipelines[0].statuses) == {
        "1": "New",
        "2": "Автооплата",
        "3": "In progress",
        "4": "Won",
    }
    assert schema_problems("odoo", config, schema) == []
    snippet = config_snippet("odoo", config, schema)
    assert 'subjects = "x_subject_ids"' in snippet and '"Математика" = 2' in snippet
    assert '"ЕГЭ" = "ege"' in snippet


async def test_exchange_code_is_refused() -> None:
    adapter = make(odoo())
    with pytest.raises(AuthError, match="no OAuth"):
        await adapter.exchange_code("code")
    assert await adapter.credentials_problem() is None
    assert await make(odoo(), key="").credentials_problem() == "no credentials: set ODOO_API_KEY"
