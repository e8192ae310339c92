"""One `CrmCase` per CRM: what the CRM-parametrized suites need to know about it.

A case makes the CRM's stateful fake, points the CRM's example section at it, gives the
settings that authorise the bridge there, and shows the fake's state in common terms:
contacts and deals by id, a deal's field by its logical name (`total_paid`, …), a deal's
notes as text. A new CRM joins every suite with one entry in `CASES`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from litestar.testing import AsyncTestClient
from pydantic import SecretStr

from bridge.app import create_app
from bridge.crm.odoo_json import note_text as odoo_note_text
from bridge.crm.richtext import note_html, note_text
from bridge.domain import Customer, FieldKind, FieldUpdate, NewContact, NewDeal, Utm
from bridge.settings import CrmConfig, FileConfig
from tests.conftest import (
    EXPECTED_NOTE,
    Bridge,
    example_file_config,
    make_settings,
    reference_file_config,
)
from tests.fakes.amocrm import FakeAmoCrm
from tests.fakes.bitrix24 import EXAMPLE_CONFIG as BITRIX_EXAMPLE
from tests.fakes.bitrix24 import FakeBitrix24
from tests.fakes.hubspot import FakeHubSpot
from tests.fakes.megaplan import DEAL_CATEGORY, HUMAN_CATEGORY, FakeMegaplan
from tests.fakes.megaplan import EXAMPLE_CONFIG as MEGAPLAN_EXAMPLE
from tests.fakes.odoo import EXAMPLE_CONFIG as ODOO_EXAMPLE
from tests.fakes.odoo import FakeOdoo, example_odoo
from tests.fakes.openapi_check import Spec
from tests.fakes.pipedrive import FakePipedrive
from tests.fakes.pipedrive_openapi import PipedriveOpenApi
from tests.fakes.salesforce import EXAMPLE_CONFIG as SALESFORCE_EXAMPLE
from tests.fakes.salesforce import PARTNERS, SITE, YANDEX, FakeSalesforce
from tests.fakes.service import Call
from tests.fakes.zoho import FakeZoho
from tests.fakes.zoho_openapi import ZohoOpenApi

ROOT = Path(__file__).resolve().parent.parent
Fake = Any  # each CRM's fake; the case's functions know which
# 00:49 on the 21st in Moscow: a CRM that keeps dates only must take the local day.
PAID_AT = datetime(2025, 1, 20, 21, 49, 20, tzinfo=UTC).astimezone(timezone(timedelta(hours=3)))
CUSTOMER = Customer("Иван", "Петров", "+79991234567", "ivan@example.com", "123456789", "ivan")
# A note as the flow writes them: blank line, indent, characters HTML escapes.
NOTE = "Оплата проведена\n\nКурсы:\n  Годовой <2к25> & стандарт (Русский)\nPayment ID: pay_1"


def _ids(listing: str, key: str = "id") -> Callable[[Fake], list[str]]:
    """The ids of the records `fake.<listing>()` lists, as strings."""
    return lambda fake: [str(record[key]) for record in getattr(fake, listing)()]


def _placement(record: str, pipeline: str, status: str) -> Callable[[Fake, str], tuple[Any, Any]]:
    """A deal's pipeline and status: two keys of `fake.<record>(deal_id)`."""

    def placement(fake: Fake, deal_id: str) -> tuple[Any, Any]:
        deal = getattr(fake, record)(deal_id)
        return deal[pipeline], deal[status]

    return placement


_CONTACTS, _DEALS = _ids("contacts"), _ids("deals")  # what most fakes list, by "id"


def _default_trouble(fake: Fake) -> Callable[[], None]:
    fake.fail_next(6, status=429)
    fake.fail_next(6, status=503)

    def check() -> None:
        assert fake.count(status=429) >= 3 and fake.count(status=503) >= 3

    return check


def _bitrix_trouble(fake: FakeBitrix24) -> Callable[[], None]:
    fake.drain_per_second = 1.0
    fake.fill_bucket()  # 503 QUERY_LIMIT_EXCEEDED until it drains
    fake.fail_next(3, status=429, method="POST")  # and the writes meet 429s

    def check() -> None:
        assert fake.count(status=503) >= 1
        assert fake.count(method="POST", status=429) >= 1  # some may meet the outage instead

    return check


def _add_contact(fake: Fake, name: str, phone: str, username: str | None) -> object:
    """`CrmCase.add_contact` for a fake whose `add_contact` takes a list of phones and a
    username (amoCRM's, Bitrix24's)."""
    return fake.add_contact(name, phones=[phone], telegram_username=username)


def _amo_autopay_again(calls: list[Call]) -> None:
    # The remembered deal is read once (still auto-payment), then the contact's deals.
    assert [(call.method, call.path.split("/")[3]) for call in calls[:2]] == [
        ("GET", "leads"),
        ("GET", "contacts"),
    ]


def _hubspot_new_customer(fake: FakeHubSpot, contact: str, deal: str) -> None:
    assert fake.deal_contacts(deal) == [contact]
    for name, value in (("firstname", "Иван"), ("lastname", "Петров"), ("phone", "+79991234567"),
                        ("email", "ivan@example.com")):  # fmt: skip
        assert fake.contact_field(contact, name) == value
    assert fake.searches() == 1


def _pipedrive_new_customer(fake: FakePipedrive, contact: str, deal: str) -> None:
    assert fake.person(contact)["name"] == "Иван Петров"
    stored = fake.deal(deal)
    assert (stored["person_id"], stored["value"]) == (int(contact), 10000)
    assert stored["title"] == "Оплата Русский, Обществознание - Иван Петров"
    assert fake.notes(deal) == [note_html(EXPECTED_NOTE)]  # HTML; the case reads it as text
    assert fake.tokens_used == 5 * 20 + 5 + 5 + 10


def _bitrix_new_customer(fake: FakeBitrix24, contact: str, deal: str) -> None:
    stored = fake.deal(deal)
    assert stored["CONTACT_IDS"] == [int(contact)]
    assert (stored["OPPORTUNITY"], stored["CURRENCY_ID"]) == ("10000.00", "RUB")
    assert (fake.contact(contact)["NAME"], fake.contact(contact)["LAST_NAME"]) == ("Иван", "Петров")
    assert [p["VALUE"] for p in fake.contact(contact)["PHONE"]] == ["+79991234567"]


# What every CRM refuses in a deal update (`CrmCase.refused`): a field it does not have,
# another select field's option, an option id it does not have, text for a number.
REFUSALS = ("unknown_field", "another_fields_option", "unknown_option", "text_for_a_number")


def _refusals(error: str, *updates: tuple[str, FieldKind, Any]) -> dict[str, Any]:
    """`refused` where every refusal reads alike: `updates` in REFUSALS order."""
    return {name: (*update, error) for name, update in zip(REFUSALS, updates, strict=True)}


def _salesforce_new_customer(fake: FakeSalesforce, contact: str, deal: str) -> None:
    composite = "/services/data/v68.0/composite"
    assert [c.path for c in fake.calls if c.path.startswith(composite)] == [
        f"{composite}/batch",  # the lookup: SOQL and SOSL side by side
        composite,  # contact, opportunity and contact role, all or none
    ]
    assert fake.deal_contacts(deal) == [contact] and fake.deal(deal)["IsClosed"] is False


def _odoo_new_customer(fake: FakeOdoo, contact: str, deal: str) -> None:
    partner, lead = fake.partner(int(contact)), fake.lead(int(deal))
    assert (partner["name"], partner["email"]) == ("Иван Петров", "ivan@example.com")
    assert (lead["type"], lead["partner_id"]) == ("opportunity", int(contact))
    assert lead["expected_revenue"] == 10000
    [note] = fake.messages(int(deal))[1:]  # after "Opportunity Created"
    assert (note["message_type"], note["subtype_id"]) == ("comment", 2)  # a log note
    # Odoo's plaintext2html: a blank line makes a paragraph, a line break <br/>.
    assert note["body"].startswith("<p>Оплата проведена</p><p>Имя клиента: Иван Петров<br/>")


def _zoho_new_customer(fake: FakeZoho, contact: str, deal: str) -> None:
    person = fake.contact(contact)
    assert (person["Last_Name"], person["First_Name"]) == ("Петров", "Иван")
    assert fake.deal(deal)["Contact_Name"] == {"id": contact}
    # The search (a composite call that would read the hit's deals too), the composite
    # contact + deal, the note; the token refresh aside.
    assert [f"{c.method} {c.path}" for c in fake.calls if c.path.startswith("/crm/")] == [
        "POST /crm/v8/__composite_requests",
        "POST /crm/v8/__composite_requests",
        "POST /crm/v8/Notes",
    ]
    assert fake.credits_used == 3


def _zoho_returning(fake: FakeZoho, deal: str) -> None:
    # The search with the contact's deals (one composite call), the update, the note.
    assert [f"{c.method} {c.path}" for c in fake.calls if c.path.startswith("/crm/")] == [
        "POST /crm/v8/__composite_requests",
        f"PUT /crm/v8/Deals/{deal}",
        "POST /crm/v8/Notes",
    ]


def _megaplan_new_customer(fake: FakeMegaplan, contact: str, deal: str) -> None:
    assert fake.deal(deal)["contractor"]["id"] == contact
    assert fake.human(contact)["contactInfo"][0]["value"] == "+79991234567"


def _stored(
    subjects: Any,
    direction: Any,
    paid_at: Any,
    amount: Any = 10000,
    total: Any = 11500.5,
    count: Any = 3,
) -> dict[str, Any]:
    """`CrmCase.every_kind()` as the CRM's fake stores it (`CrmCase.stored`)."""
    return {
        "subjects": subjects,
        "direction": direction,
        "last_payment_amount": amount,
        "last_payment_at": paid_at,
        "payment_id": "pay_1",
        "total_paid": total,
        "purchase_count": count,
        "utm_source": "advcake",
    }


def _odoo_value(value: Any) -> Any:
    """Odoo reads an empty field as False: None in the common view."""
    return None if value is False else value


def _odoo_section(name: str) -> Callable[..., FileConfig]:
    """The example's `[crm.odoo]` as `[crm.NAME]`, without the example's 2 calls a second
    (a hosted Odoo's pace; the fake is not one)."""
    example = example_file_config(ODOO_EXAMPLE, "odoo", rate_limit_per_second=1000)

    def file_config(**changes: Any) -> FileConfig:
        config = example(**changes)
        return config.model_copy(update={"crm": {name: config.crm["odoo"]}})

    return file_config


def _odoo_case(name: str, version: int) -> CrmCase:
    """Odoo 18 (JSON-RPC, the recorded transcript's server) or 19 (JSON-2). The first
    delivery of a process also pays the session: the JSON-2 probe, `authenticate` on
    JSON-RPC, the read of the optional fields (3 calls on 18, 2 on 19)."""
    session = 3 if version < 19 else 2
    variable = f"{name.upper().replace('-', '_')}_API_KEY"

    def credentials(fake: FakeOdoo) -> dict[str, Any]:
        key = fake.issue_api_key()
        return {"odoo_api_key": key} if name == "odoo" else {"crm_env": {variable: SecretStr(key)}}

    return CrmCase(
        name,
        lambda: example_odoo(version=version),
        _odoo_section(name),
        credentials,
        contacts=lambda fake: [str(p["id"]) for p in fake.partners() if not p.get("is_company")],
        deals=_ids("leads"),
        raw_deal_field=lambda fake, deal_id, field_id: _odoo_value(fake.lead(deal_id)[field_id]),
        notes=lambda fake, deal_id: [odoo_note_text(body) for body in fake.notes(deal_id)],
        add_contact=lambda fake, who, phone, username: fake.add_partner(
            who, phone=phone, fields={"x_telegram_username": username} if username else None
        ),
        raw_contact_field=lambda fake, contact_id, field_id: _odoo_value(
            fake.partner(contact_id)[field_id]
        ),
        placement=_placement("lead", "team_id", "stage_id"),
        # Teams (pipelines) 1 Сайт, 2 Яндекс; stages 2 Автооплата (excluded), 3 In
        # progress, 4 Won (is_won).
        add_deal=lambda fake, contact, where, at, fields: fake.add_lead(
            int(contact),
            team_id={"yandex_working": 2}.get(where, 1),
            stage_id={"yandex_working": 3, "closed": 4}.get(where, 2),
            write_date=at,
            fields=fields,
        ),
        returning_calls=session + 4,
        close_deal=lambda fake, deal_id: fake.set_won(int(deal_id)),
        subjects=(1, 3),  # crm.tag ids
        direction="ege",
        partners=("3", "2"),
        # the time in UTC, as Odoo keeps datetimes
        stored=_stored([1, 3], "ege", "2025-01-20 21:49:20"),
        refused={
            "unknown_field": ("x_no_such", FieldKind.TEXT, "x", "Invalid field 'x_no_such'"),
            "another_fields_option": ("direction", FieldKind.SELECT, 1, "Wrong value"),
            "unknown_option": ("subjects", FieldKind.MULTISELECT, (1, 999), "does not exist"),
            "text_for_a_number": ("total_paid", FieldKind.TEXT, "a lot", "Wrong value"),
        },
        # Stages may be shared by every team, so a team's stage is no refusal in Odoo.
        bad_placements=({"pipeline_id": "99"}, {"status_id": "99"}),
        bad_placement_error=r"crm\.lead[./]create",
        paging=(260, 1),  # one search_read, no limit
        schema_calls=5,
        pipelines=frozenset({"1", "2", "3"}),
        static_secret="odoo_api_key",
        revoke=lambda fake: fake.expire_api_keys(),
        revoked_error="401|AccessDenied",  # JSON-2 answers 401, JSON-RPC a fault
        lookup_calls=1,
        on_call=(
            ("res.partner.search_read", 200),
            ("res.partner.create", 200),
            ("crm.lead.create", 200),
        ),
        new_customer={"subjects": [1, 3], "direction": "ege"},
        new_customer_calls=session + 4,  # partner lookup, partner, lead, note
        new_customer_wire=_odoo_new_customer,
        # JSON-RPC: authenticate, the optional fields, the lookup, the partner come first.
        deal_write="/jsonrpc" if version < 19 else "/json/2/crm.lead/create",
        deal_write_skip=4 if version < 19 else 0,
        read_note=lambda text: text.replace("\n\n", "\n"),  # a paragraph reads as one break
    )


ZOHO_TOKEN_KEY = Fernet.generate_key().decode()


def _zoho_credentials(fake: FakeZoho) -> dict[str, Any]:
    """A Self Client's id and secret and a refresh token (the bridge mints the rest)."""
    secrets = {
        "ZOHO_CLIENT_ID": fake.client_id,
        "ZOHO_CLIENT_SECRET": fake.client_secret,
        "ZOHO_REFRESH_TOKEN": fake.issue_oauth_pair()[1],
    }
    crm_env = {key: SecretStr(value) for key, value in secrets.items()}
    return {"crm_env": crm_env, "bridge_secret_key": ZOHO_TOKEN_KEY}  # minted tokens are kept


@dataclass(frozen=True)
class CrmCase:
    name: str  # the section's name (its kind, but for a second section such as odoo-19)
    make_fake: Callable[[], Fake]
    file_config: Callable[..., FileConfig]  # the example section pointed at the fake
    credentials: Callable[[Fake], dict[str, Any]]  # settings that authorise the bridge
    close_deal: Callable[[Fake, str], None]  # a manager marks it won
    placement: Callable[[Fake, str], tuple[object, object]]  # a deal's pipeline and status
    # A deal a manager made: fake, contact id, where ("yandex_working", "closed" or the
    # excluded "site_autopay"), updated at, field values by the CRM's field id.
    add_deal: Callable[[Fake, str, str, int, dict[str, Any]], object]
    # A returning customer found by phone, its open deal updated: the process's first.
    returning_calls: int
    # A contact a manager typed: name, phone as typed, Telegram username or None.
    add_contact: Callable[[Fake, str, str, str | None], object]
    # ---- the fake's state in common terms; the defaults are the shapes most fakes share ----
    contacts: Callable[[Fake], list[str]] = _CONTACTS
    deals: Callable[[Fake], list[str]] = _DEALS
    notes: Callable[[Fake, str], list[str]] = lambda fake, deal_id: fake.notes(deal_id)  # texts
    # A deal's field and a contact's: fake, the record's id, the CRM's field id.
    raw_deal_field: Callable[[Fake, str, str], Any] = lambda fake, deal_id, field_id: (
        fake.deal_field(deal_id, field_id)
    )
    raw_contact_field: Callable[[Fake, str, str], Any] = lambda fake, contact_id, field_id: (
        fake.contact_field(contact_id, field_id)
    )
    trouble: Callable[[Fake], Callable[[], None]] = _default_trouble  # → its check
    api_path: str = "/"  # where the API is: calls elsewhere (a session minted) are not its
    # ---- the vendor's wire shapes, for the adapter contract (tests/test_contract.py) ----
    subjects: tuple[Any, Any] = (None, None)  # two option ids of `subjects`, as sent
    direction: Any = None  # an option id of `direction`, as sent
    partners: tuple[str, str] = ("", "")  # a pipeline and status new deals may go to
    # `every_kind()` as the fake stores it, by logical field name.
    stored: Mapping[str, Any] = field(default_factory=dict)
    # Deal updates the CRM refuses, by REFUSALS name: (logical name or field id, kind,
    # value, error regex).
    refused: Mapping[str, tuple[str, FieldKind, Any, str]] = field(default_factory=dict)
    # `new_deal` changes naming a pipeline / status the CRM does not have there.
    bad_placements: tuple[Mapping[str, str], ...] = ()
    bad_placement_error: str = "400"
    atomic_create: bool = False  # contact and deal in one request: a refusal leaves neither
    paging: tuple[int, int] = (0, 0)  # deals of one contact, the calls listing them takes
    schema_calls: int = 0
    lookup_calls: int = 0  # finding no one by Telegram id, phone and e-mail
    deal_write: str = ""  # the path prefix of the POST that creates a new customer's deal
    pipelines: frozenset[str] = frozenset()  # the example account's pipeline ids
    static_secret: str = ""  # the long-lived secret's setting
    revoke: Callable[[Fake], None] = lambda fake: fake.expire_all_access_tokens()
    # (operation, status) seen by on_call for a phone lookup, then create_contact_and_deal.
    on_call: tuple[tuple[str, int], ...] = ()
    # The new-customer scenario: deal fields as stored (logical name → raw value), the
    # CRM calls it costs, and vendor checks on (fake, contact id, deal id).
    new_customer: Mapping[str, Any] = field(default_factory=dict)
    new_customer_calls: int = 0
    new_customer_wire: Callable[[Fake, str, str], None] = lambda fake, contact, deal: None
    # The POST a new customer's deal is created by, and how many requests matching it come
    # first (lookups on the same path: a JSON-RPC endpoint, a batch of queries).
    deal_write_skip: int = 0
    amount_type: str = "numeric"  # how `schema()` types a number field
    revoked_error: str = "401"  # what a refused long-lived secret's error says
    # A note as written, as the CRM gives it back (Odoo makes a blank line a paragraph).
    read_note: Callable[[str], str] = lambda text: text
    # The vendor's published OpenAPI files (None: not checked out), which every request a
    # scenario sends must keep; None where the vendor publishes none we use.
    openapi: Callable[[], Spec | None] | None = None
    # A returning customer's scenario: vendor checks on (fake, the open deal's id).
    returning_wire: Callable[[Fake, str], None] = lambda fake, deal: None
    # A remembered deal still in auto-payment: vendor checks on the next payment's calls.
    autopay_again_wire: Callable[[list[Call]], None] = lambda calls: None
    # Shared checks that do not apply to this CRM: check name → why (see `not_applicable`).
    skips: Mapping[str, str] = field(default_factory=dict)

    @property
    def config(self) -> CrmConfig:
        return self.file_config().crm[self.name]

    def field_id(self, logical: str) -> str:
        """A deal field's id by logical name; a name that is none is an id already."""
        return getattr(self.config.deal_fields, logical, None) or logical

    def every_kind(self) -> tuple[FieldUpdate, ...]:
        """One update of every field kind the flow writes, in this CRM's option ids."""
        values = (
            ("subjects", FieldKind.MULTISELECT, self.subjects),
            ("direction", FieldKind.SELECT, self.direction),
            ("last_payment_amount", FieldKind.NUMBER, Decimal("10000.00")),
            ("last_payment_at", FieldKind.DATETIME, PAID_AT),
            ("payment_id", FieldKind.TEXT, "pay_1"),
            ("total_paid", FieldKind.NUMBER, Decimal("11500.5")),
            ("purchase_count", FieldKind.NUMBER, 3),
            ("utm_source", FieldKind.TEXT, "advcake"),
        )
        return tuple(FieldUpdate(self.field_id(name), kind, value) for name, kind, value in values)

    def new_deal(self, **changes: Any) -> NewDeal:
        pipeline, status = self.partners
        values: dict[str, Any] = {
            "name": "Оплата Русский - Иван Петров",
            "price": Decimal("10000"),
            "pipeline_id": pipeline,
            "status_id": status,
            "fields": self.every_kind(),
            **changes,
        }
        return NewDeal(**values)

    def new_contact(self, customer: Customer = CUSTOMER) -> NewContact:
        ids = self.config.contact_fields
        telegram = (
            FieldUpdate(ids.telegram_id or "", FieldKind.TEXT, customer.telegram_id),
            FieldUpdate(ids.telegram_username or "", FieldKind.TEXT, customer.telegram_username),
        )
        return NewContact(customer, Utm(source="advcake", medium="cpa"), telegram)

    def stored_as(self, fake: Fake, deal_id: str, expected: Mapping[str, Any]) -> dict[str, Any]:
        """The deal's fields named in `expected` (logical names or ids), as stored."""
        return {name: self.raw_deal_field(fake, deal_id, self.field_id(name)) for name in expected}

    def not_applicable(self, check: str) -> None:
        """Skip `check` where `skips` says it does not apply, saying why."""
        if check in self.skips:
            pytest.skip(f"{self.name}: {self.skips[check]}")

    def api_calls(self, fake: Fake) -> int:
        """Requests the CRM's API received, as the per-payment call counts mean them."""
        return int(fake.count(path_prefix=self.api_path))

    def seed_deal(self, fake: Fake, contact: str, where: str, at: int, **fields: Any) -> str:
        """`add_deal` with the fields by logical name (`total_paid=1500`)."""
        ids = self.file_config().crm[self.name].deal_fields
        by_id = {getattr(ids, name): value for name, value in fields.items()}
        return str(self.add_deal(fake, contact, where, at, by_id))

    def deal_field(self, fake: Fake, deal_id: str, logical: str) -> Any:
        field_id = getattr(self.file_config().crm[self.name].deal_fields, logical)
        return self.raw_deal_field(fake, deal_id, field_id)

    def contact_field(self, fake: Fake, contact_id: str, logical: str) -> Any:
        field_id = getattr(self.file_config().crm[self.name].contact_fields, logical)
        return self.raw_contact_field(fake, contact_id, field_id)

    def place(self, fake: Fake, deal_id: str) -> tuple[str, str]:
        pipeline, status = self.placement(fake, deal_id)
        return str(pipeline), str(status)

    def deal_number(self, fake: Fake, deal_id: str, logical: str) -> Decimal:
        return Decimal(str(self.deal_field(fake, deal_id, logical)))

    def __str__(self) -> str:
        return self.name


CASES = [
    CrmCase(
        "amocrm",
        FakeAmoCrm,
        reference_file_config,
        lambda fake: {"amocrm_access_token": fake.issue_token(ttl=3600)},
        deals=_ids("leads"),
        raw_deal_field=lambda fake, deal_id, field_id: fake.lead_field(deal_id, field_id),
        add_contact=_add_contact,
        placement=_placement("lead", "pipeline_id", "status_id"),
        add_deal=lambda fake, contact, where, at, fields: fake.add_lead(
            contact,
            pipeline_id={"yandex_working": 10089806}.get(where, 4423755),
            status_id={"yandex_working": 80579131, "closed": 142}.get(where, 63242022),
            updated_at=at,
            fields=fields,
        ),
        returning_calls=4,
        close_deal=lambda fake, deal_id: fake.move_lead(deal_id, 142),
        subjects=(800001, 800003),
        direction=800101,
        partners=("8598230", "80517738"),
        stored=_stored(
            [800001, 800003],
            800101,
            int(PAID_AT.timestamp()),
            amount="10000",
            total="11500.5",
            count="3",
        ),
        refused=_refusals(
            "400",
            ("999999", FieldKind.TEXT, "unknown field"),
            ("direction", FieldKind.SELECT, 800001),  # a subject's enum
            ("subjects", FieldKind.MULTISELECT, (800001, 123)),
            ("total_paid", FieldKind.TEXT, "a lot"),
        ),
        bad_placements=({"pipeline_id": "1"}, {"status_id": "63242022"}),
        bad_placement_error="validation",
        atomic_create=True,
        paging=(260, 2),
        schema_calls=3,
        pipelines=frozenset({"4423755", "10089806", "8598230"}),
        static_secret="amocrm_access_token",
        deal_write="/api/v4/leads/complex",
        lookup_calls=3,
        on_call=(("contacts.search", 204), ("leads.complex", 200)),
        new_customer={"subjects": [800001, 800003], "direction": 800101},
        new_customer_calls=5,
        autopay_again_wire=_amo_autopay_again,
    ),
    CrmCase(
        "hubspot",
        FakeHubSpot,
        example_file_config(
            ROOT / "etc" / "crm-hubspot.example.toml", "hubspot", base_url="https://api.hubapi.test"
        ),
        lambda fake: {"hubspot_access_token": fake.issue_token()},
        add_contact=lambda fake, name, phone, username: fake.add_contact(
            firstname=name, phone=phone, **({"telegram_username": username} if username else {})
        ),
        placement=lambda fake, deal_id: (
            fake.deal_field(deal_id, "pipeline"),
            fake.deal_field(deal_id, "dealstage"),
        ),
        add_deal=lambda fake, contact, where, at, fields: fake.add_deal(
            contact,
            pipeline={"yandex_working": "1023405100"}.get(where, "default"),
            stage={"yandex_working": "1023405102", "closed": "closedwon"}.get(where, "1023405001"),
            updated_at=at,
            **{name: str(value) for name, value in fields.items()},
        ),
        returning_calls=4,
        close_deal=lambda fake, deal_id: fake.move_deal(deal_id, "closedwon"),
        subjects=("russian", "social_studies"),
        direction="ege",
        partners=("1023405200", "1023405201"),
        stored=_stored(
            "russian;social_studies",
            "ege",
            "2025-01-20T21:49:20.000Z",
            amount="10000",
            total="11500.5",
            count="3",
        ),
        refused={
            "unknown_field": ("no_such_property", FieldKind.TEXT, "x", "PROPERTY_DOESNT_EXIST"),
            "another_fields_option": ("direction", FieldKind.SELECT, "russian", "INVALID_OPTION"),
            "unknown_option": (
                "subjects",
                FieldKind.MULTISELECT,
                ("russian", "Russian"),  # options are case-sensitive
                "INVALID_OPTION",
            ),
            "text_for_a_number": ("total_paid", FieldKind.TEXT, "a lot", "INVALID_DECIMAL"),
        },
        bad_placements=({"pipeline_id": "1"}, {"status_id": "1023405001"}),
        paging=(130, 2),
        schema_calls=4,  # + the companies' properties (order_fields.company_inn)
        pipelines=frozenset({"default", "1023405100", "1023405200", "1023405300"}),  # + rental
        static_secret="hubspot_access_token",
        deal_write="/crm/objects/2026-09/deals",
        lookup_calls=1,
        on_call=(("contacts.search", 200), ("contacts.create", 201), ("deals.create", 201)),
        new_customer={
            "subjects": "russian;social_studies",
            "direction": "ege",
            "last_payment_at": "2025-01-20T11:49:20.000Z",
            "utm_medium": "cpa",
            "amount": "10000",
            "dealname": "Оплата Русский, Обществознание - Иван Петров",
        },
        new_customer_calls=4,  # contacts search, contact, deal (fields, association), note
        new_customer_wire=_hubspot_new_customer,
    ),
    CrmCase(
        "pipedrive",
        FakePipedrive,
        example_file_config(
            ROOT / "etc" / "crm-pipedrive.example.toml",
            "pipedrive",
            base_url="https://example.pipedrive.test",
        ),
        lambda fake: {"pipedrive_api_token": fake.issue_api_token()},
        contacts=_ids("persons"),
        notes=lambda fake, deal_id: [note_text(html) for html in fake.notes(deal_id)],
        add_contact=lambda fake, name, phone, username: fake.add_person(
            name, phones=[phone], telegram_username=username
        ),
        raw_contact_field=lambda fake, person_id, key: fake.person_field(person_id, key),
        placement=_placement("deal", "pipeline_id", "stage_id"),
        add_deal=lambda fake, contact, where, at, fields: fake.add_deal(
            int(contact),
            pipeline_id={"yandex_working": 2}.get(where, 1),
            stage_id={"yandex_working": 4, "closed": 2}.get(where, 1),
            status="won" if where == "closed" else "open",
            update_time=at,
            fields=fields,
        ),
        returning_calls=5,
        close_deal=lambda fake, deal_id: fake.move_deal(deal_id, status="won"),
        subjects=(11, 13),
        direction=21,
        partners=("3", "5"),
        # the day in Moscow
        stored=_stored([11, 13], 21, "2025-01-21"),
        refused=_refusals(
            r"400.*Validation failed",
            ("0" * 40, FieldKind.TEXT, "unknown field"),
            ("direction", FieldKind.SELECT, 11),  # a subject's option
            ("subjects", FieldKind.MULTISELECT, (11, 999)),
            ("total_paid", FieldKind.TEXT, "a lot"),
        ),
        bad_placements=({"pipeline_id": "99"}, {"status_id": "1"}),
        paging=(501, 2),
        schema_calls=5,  # + the organizations' fields (order_fields.company_inn)
        pipelines=frozenset({"1", "2", "3", "4"}),  # 4: the rental pipeline of order_stages
        static_secret="pipedrive_api_token",
        deal_write="/api/v2/deals",
        lookup_calls=5,
        revoke=lambda fake: fake.revoke_api_tokens(),
        on_call=(
            *[("persons.search", 200)] * 3,  # the three forms of the phone
            ("persons.create", 200),
            ("deals.create", 200),
        ),
        new_customer={"subjects": [11, 13], "direction": 21, "last_payment_at": "2025-01-20"},
        # Five searches (Telegram id, three forms of the phone, e-mail), person, deal, note.
        new_customer_calls=8,
        new_customer_wire=_pipedrive_new_customer,
        openapi=PipedriveOpenApi.load,
    ),
    CrmCase(
        "bitrix24",
        FakeBitrix24,
        example_file_config(BITRIX_EXAMPLE, "bitrix24"),
        lambda fake: {"bitrix24_webhook_url": fake.webhook_url()},
        contacts=_ids("contacts", "ID"),
        deals=_ids("deals", "ID"),
        add_contact=_add_contact,
        placement=_placement("deal", "CATEGORY_ID", "STAGE_ID"),
        add_deal=lambda fake, contact, where, at, fields: fake.add_deal(
            int(contact),
            stage_id={"yandex_working": "C1:EXECUTING", "closed": "WON"}.get(where, "UC_AUTOPAY"),
            modified=at,
            fields=fields,
        ),
        returning_calls=4,
        close_deal=lambda fake, deal_id: fake.move_deal(deal_id, "WON"),
        trouble=_bitrix_trouble,
        subjects=(45, 47),
        direction=61,
        partners=("2", "C2:UC_AUTOPAY"),
        stored=_stored([45, 47], 61, "2025-01-21T00:49:20+03:00", amount=10000.0, count=3.0),
        refused={
            "unknown_field": ("UF_CRM_NO_SUCH", FieldKind.TEXT, "x", "Unknown user field"),
            "another_fields_option": ("direction", FieldKind.SELECT, 45, "no list item"),
            "unknown_option": ("subjects", FieldKind.MULTISELECT, (45, 999), "no list item"),
            "text_for_a_number": ("total_paid", FieldKind.TEXT, "a lot", "TOTAL_PAID"),
        },
        bad_placements=({"status_id": "C1:NEW"},),  # a stage of another pipeline
        bad_placement_error=r"\[deal\].*Stage",
        paging=(120, 3),
        schema_calls=2,
        pipelines=frozenset({"0", "1", "2"}),
        static_secret="bitrix24_webhook_url",
        deal_write="/rest/",
        lookup_calls=1,
        revoke=lambda fake: fake.revoke_webhooks(),
        on_call=(("contacts.find", 200), ("contacts.deals.create", 200)),
        new_customer={
            "subjects": [45, 47],
            "direction": 61,
            "last_payment_at": "2025-01-20T14:49:20+03:00",
        },
        new_customer_calls=3,  # lookup batch, create batch (contact + deal), comment
        new_customer_wire=_bitrix_new_customer,
    ),
    CrmCase(
        "salesforce",
        FakeSalesforce,
        example_file_config(
            SALESFORCE_EXAMPLE, "salesforce", base_url="https://example.my.salesforce.com"
        ),
        # Sessions are minted (JWT bearer) from the consumer key and the key file.
        lambda fake: {
            "salesforce_client_id": fake.consumer_key,
            "salesforce_private_key_file": fake.private_key_file,
        },
        contacts=_ids("contacts", "Id"),
        deals=_ids("deals", "Id"),
        add_contact=lambda fake, name, phone, username: fake.add_contact(
            LastName=name,
            Phone=phone,
            **({"Telegram_Username__c": username} if username else {}),
        ),
        placement=_placement("deal", "RecordTypeId", "StageName"),
        add_deal=lambda fake, contact, where, at, fields: fake.add_deal(
            contact,
            record_type={"yandex_working": YANDEX}.get(where, SITE),
            stage={"yandex_working": "In Progress", "closed": "Closed Won"}.get(where, "Autopay"),
            updated_at=at,
            **fields,
        ),
        returning_calls=4,
        close_deal=lambda fake, deal_id: fake.move_deal(deal_id, "Closed Won"),
        api_path="/services/data/",  # not the token endpoint
        subjects=("Russian", "Social Studies"),  # picklist values
        direction="EGE",
        partners=(PARTNERS, "Autopay"),  # a record type and a stage
        stored=_stored("Russian;Social Studies", "EGE", "2025-01-20T21:49:20.000+0000"),
        refused=_refusals(
            "HTTP 400",
            ("No_Such__c", FieldKind.TEXT, "x"),
            ("direction", FieldKind.SELECT, "Russian"),
            ("subjects", FieldKind.MULTISELECT, ("Russian", "Klingon")),
            ("total_paid", FieldKind.TEXT, "a lot"),
        ),
        bad_placements=({"pipeline_id": "1"}, {"status_id": "No Such Stage"}),
        bad_placement_error="HTTP 400",
        atomic_create=True,  # one composite, all or none
        # The newest 200 open deals in one query (salesforce_json.QUERY_LIMIT); paging by
        # nextRecordsUrl is test_salesforce_adapter's, with a small batch size.
        paging=(200, 1),
        schema_calls=5,
        pipelines=frozenset({SITE, YANDEX, PARTNERS}),  # record types
        lookup_calls=1,  # SOQL and SOSL in one batch
        on_call=(("contacts.search", 200), ("contacts.create", 200)),
        new_customer={
            "subjects": "Russian;Social Studies",
            "direction": "EGE",
            "last_payment_at": "2025-01-20T11:49:20.000+0000",
        },
        new_customer_calls=3,  # the lookup batch, one composite, the note
        new_customer_wire=_salesforce_new_customer,
        deal_write="/services/data/v68.0/composite",
        deal_write_skip=1,  # the lookup's /composite/batch
        skips={
            "static_401": "no long-lived secret: sessions are minted from the consumer key"
            " and private key, and a 401 mints a new one (test_salesforce_scenarios)",
        },
    ),
    _odoo_case("odoo", 18),
    # A second section of kind "odoo", on a 19 server: JSON-2, and ODOO_19_API_KEY.
    _odoo_case("odoo-19", 19),
    CrmCase(
        "zoho",
        FakeZoho,
        example_file_config(ROOT / "etc" / "crm-zoho.example.toml", "zoho"),
        _zoho_credentials,
        raw_deal_field=lambda fake, deal_id, field_id: fake.deal(deal_id).get(field_id),
        add_contact=lambda fake, name, phone, username: fake.add_contact(
            name, phone=phone, telegram_username=username
        ),
        raw_contact_field=lambda fake, contact_id, field_id: fake.contact(contact_id).get(field_id),
        placement=_placement("deal", "Pipeline", "Stage"),
        add_deal=lambda fake, contact, where, at, fields: fake.add_deal(
            contact,
            pipeline={"yandex_working": "Yandex"}.get(where, "Site"),
            stage={"yandex_working": "В работе", "closed": "Closed Won"}.get(where, "Автооплата"),
            modified=at,
            fields=fields,
        ),
        # The search with the contact's deals in one composite call, the update, the note.
        returning_calls=3,
        close_deal=lambda fake, deal_id: fake.move_deal(deal_id, stage="Closed Won"),
        api_path="/crm/",  # not the accounts server's token endpoint
        subjects=("Русский", "Обществознание"),  # picklist values are the labels
        direction="ЕГЭ",
        partners=("Partners", "Автооплата"),
        # the time in the org's zone
        stored=_stored(["Русский", "Обществознание"], "ЕГЭ", "2025-01-21T00:49:20+03:00"),
        refused=_refusals(
            "INVALID_DATA",
            ("No_Such_Field", FieldKind.TEXT, "x"),
            ("direction", FieldKind.SELECT, "Русский"),
            ("subjects", FieldKind.MULTISELECT, ("Русский", "Klingon")),
            ("total_paid", FieldKind.TEXT, "a lot"),
        ),
        bad_placements=({"pipeline_id": "1"}, {"status_id": "No Such Stage"}),
        bad_placement_error="INVALID_DATA",  # the composite keeps the contact
        paging=(260, 2),  # COQL, 200 a page
        schema_calls=4,
        pipelines=frozenset({"Site", "Yandex", "Partners"}),
        amount_type="price",  # Total_Paid is a currency field
        lookup_calls=1,  # one composite: the search (and the hit's deals)
        # 207: the multi-status of a composite call; the create is one named "composite".
        on_call=(("contacts.search", 207), ("composite", 200)),
        new_customer={
            "subjects": ["Русский", "Обществознание"],
            "direction": "ЕГЭ",
            "last_payment_at": "2025-01-20T14:49:20+03:00",
        },
        new_customer_calls=3,
        new_customer_wire=_zoho_new_customer,
        returning_wire=_zoho_returning,
        openapi=ZohoOpenApi.beside_shared,  # raises when ../shared lacks them
        deal_write="/crm/v8/__composite_requests",
        deal_write_skip=1,  # the lookup is a composite call too
        skips={
            "static_401": "Zoho CRM has no long-lived token, OAuth only: a refused refresh"
            " is the OAuth contract's (test_a_refused_refresh_token_is_an_auth_error…)",
        },
    ),
    CrmCase(
        "megaplan",
        lambda: FakeMegaplan(rate_limit=1000),
        # An application token (the OAuth pair's rotation is the contract suite's); not
        # the example's 3 calls a second, which is a real account's pace.
        example_file_config(
            MEGAPLAN_EXAMPLE, "megaplan", auth="long_lived_token", rate_limit_per_second=1000
        ),
        lambda fake: {"megaplan_access_token": fake.issue_token(never=True)},
        contacts=_ids("humans"),
        raw_deal_field=lambda fake, deal_id, field_id: fake.field(fake.deal(deal_id), field_id),
        notes=lambda fake, deal_id: [note_text(html) for html in fake.comments(deal_id)],
        add_contact=lambda fake, name, phone, username: fake.add_human(
            name,
            phone=phone,
            fields={f"{HUMAN_CATEGORY}TelegramUsername": username} if username else None,
        ),
        raw_contact_field=lambda fake, contact_id, field_id: fake.field(
            fake.human(contact_id), field_id
        ),
        placement=lambda fake, deal_id: (
            fake.deal(deal_id)["program"]["id"],
            fake.deal(deal_id)["state"]["id"],
        ),
        # Programs 1 Сайт, 2 Яндекс; states N2 Автооплата (excluded), N3 В работе, N4 won.
        add_deal=lambda fake, contact, where, at, fields: fake.add_deal(
            int(contact),
            program={"yandex_working": 2}.get(where, 1),
            state={"yandex_working": 23, "closed": 14}.get(where, 12),
            updated_at=at,
            fields=fields,
        ),
        returning_calls=4,
        close_deal=lambda fake, deal_id: fake.win(deal_id),
        subjects=("Русский", "Обществознание"),  # enum values are the labels
        direction="ЕГЭ",
        partners=("3", "32"),  # a program and its state
        stored=_stored(["Русский", "Обществознание"], "ЕГЭ", "2025-01-20T21:49:20+00:00"),
        refused={
            "unknown_field": (
                f"{DEAL_CATEGORY}CustomFieldNoSuch",
                FieldKind.TEXT,
                "x",
                "unknown extra field",
            ),
            "another_fields_option": ("direction", FieldKind.SELECT, "Русский", "422"),
            "unknown_option": ("subjects", FieldKind.MULTISELECT, ("Русский", "Klingon"), "422"),
            "text_for_a_number": ("total_paid", FieldKind.TEXT, "a lot", "422"),
        },
        bad_placements=({"pipeline_id": "99"}, {"status_id": "12"}),  # 12: Сайт's state
        bad_placement_error="422",
        paging=(260, 3),  # 100 a page
        schema_calls=7,  # + the companies' extra fields (order_fields.company_inn)
        pipelines=frozenset({"1", "2", "3"}),  # programs
        static_secret="megaplan_access_token",
        lookup_calls=3,  # the Telegram id filter, the phone and the e-mail searches
        on_call=(
            ("contractor.search", 200),
            ("contractorHuman.create", 200),
            ("deal.create", 200),
        ),
        new_customer={"subjects": ["Русский", "Обществознание"], "direction": "ЕГЭ"},
        new_customer_calls=6,  # three lookups, client, deal, comment
        new_customer_wire=_megaplan_new_customer,
        deal_write="/api/v3/deal",
    ),
]

BY_NAME = {case.name: case for case in CASES}


def secret_values(credentials: Mapping[str, Any]) -> list[str]:
    """The secrets among `CrmCase.credentials`' settings (and its `crm_env`), as text."""
    values = [*credentials.values(), *credentials.get("crm_env", {}).values()]
    texts = [v.get_secret_value() if isinstance(v, SecretStr) else v for v in values]
    texts = [text for text in texts if isinstance(text, str)]
    # A webhook URL (Bitrix24's) holds its secret in its last path segment.
    urls = [text.rstrip("/") for text in texts if text.startswith("https://")]
    return texts + [url.rsplit("/", 1)[1] for url in urls]


Run = Callable[..., Any]


def running(
    case: CrmCase,
    fake: Fake,
    tmp_path: Path,
    wrap: Callable[[httpx.AsyncBaseTransport], httpx.AsyncBaseTransport] = lambda t: t,
) -> Run:
    """`async with run(file=None, **settings_overrides) as bridge:` — the app with this
    CRM only, authorised on its fake (`wrap` may record what is sent)."""

    @asynccontextmanager
    async def run(file: FileConfig | None = None, **overrides: Any) -> AsyncIterator[Bridge]:
        overrides = {**case.credentials(fake), **overrides}
        settings = make_settings(tmp_path, file or case.file_config(), **overrides)
        app = create_app(settings, transports={case.name: wrap(fake.transport())})
        async with AsyncTestClient(app=app) as client:
            yield Bridge(client, settings, fake)

    return run
