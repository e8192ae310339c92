"""One `CrmCase` per CRM: what the CRM-parametrized suites need to know about it.

A case makes the CRM's stateful fake, points the CRM's example section at it, gives the
settings that authorise the bridge there, and shows the fake's state in common terms:
contacts and deals by id, a deal's field by its logical name (`total_paid`, …), a deal's
notes as text. A new CRM joins every suite with one entry in `CASES`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from cryptography.fernet import Fernet
from litestar.testing import AsyncTestClient
from pydantic import SecretStr

from bridge.app import create_app
from bridge.crm.odoo_json import note_text as odoo_note_text
from bridge.crm.richtext import note_text
from bridge.settings import FileConfig, load_file_config
from tests.conftest import Bridge, make_settings, reference_file_config
from tests.fakes.amocrm import FakeAmoCrm
from tests.fakes.bitrix24 import EXAMPLE_CONFIG as BITRIX_EXAMPLE
from tests.fakes.bitrix24 import FakeBitrix24
from tests.fakes.hubspot import FakeHubSpot
from tests.fakes.megaplan import EXAMPLE_CONFIG as MEGAPLAN_EXAMPLE
from tests.fakes.megaplan import HUMAN_CATEGORY, FakeMegaplan
from tests.fakes.odoo import EXAMPLE_CONFIG as ODOO_EXAMPLE
from tests.fakes.odoo import FakeOdoo, example_odoo
from tests.fakes.pipedrive import FakePipedrive
from tests.fakes.salesforce import EXAMPLE_CONFIG as SALESFORCE_EXAMPLE
from tests.fakes.salesforce import SITE, YANDEX, FakeSalesforce
from tests.fakes.zoho import FakeZoho

ROOT = Path(__file__).resolve().parent.parent
Fake = Any  # each CRM's fake; the case's functions know which


def _example(path: Path, name: str, **fixed: Any) -> Callable[..., FileConfig]:
    """The example section `name` of `path`, enabled, as the only CRM; `changes` on top.
    A short request timeout: a write whose answer was lost is looked for again only after
    it, and tests should not wait 15 s for that."""

    def file_config(**changes: Any) -> FileConfig:
        config = load_file_config(path)
        update = {
            "enabled": True,
            "request_timeout_seconds": 1.0,
            "late_write_seconds": 1.0,
            **fixed,
            **changes,
        }
        return config.model_copy(update={"crm": {name: config.crm[name].model_copy(update=update)}})

    return file_config


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


def _odoo_value(value: Any) -> Any:
    """Odoo reads an empty field as False: None in the common view."""
    return None if value is False else value


def _odoo_section(name: str) -> Callable[..., FileConfig]:
    """The example's `[crm.odoo]` as `[crm.NAME]`, without the example's 2 calls a second
    (a hosted Odoo's pace; the fake is not one)."""
    example = _example(ODOO_EXAMPLE, "odoo", rate_limit_per_second=1000)

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
        deals=lambda fake: [str(lead["id"]) for lead in fake.leads()],
        raw_deal_field=lambda fake, deal_id, field_id: _odoo_value(fake.lead(deal_id)[field_id]),
        notes=lambda fake, deal_id: [odoo_note_text(body) for body in fake.notes(deal_id)],
        add_contact=lambda fake, who, phone, username: fake.add_partner(
            who, phone=phone, fields={"x_telegram_username": username} if username else None
        ),
        raw_contact_field=lambda fake, contact_id, field_id: _odoo_value(
            fake.partner(contact_id)[field_id]
        ),
        placement=lambda fake, deal_id: (
            fake.lead(deal_id)["team_id"],
            fake.lead(deal_id)["stage_id"],
        ),
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
    contacts: Callable[[Fake], list[str]]
    deals: Callable[[Fake], list[str]]
    raw_deal_field: Callable[[Fake, str, str], Any]  # fake, deal id, the CRM's field id
    notes: Callable[[Fake, str], list[str]]  # texts, as a reader sees them
    close_deal: Callable[[Fake, str], None]  # a manager marks it won
    placement: Callable[[Fake, str], tuple[object, object]]  # a deal's pipeline and status
    # A deal a manager made: fake, contact id, where ("yandex_working", "closed" or the
    # excluded "site_autopay"), updated at, field values by the CRM's field id.
    add_deal: Callable[[Fake, str, str, int, dict[str, Any]], object]
    # A returning customer found by phone, its open deal updated: the process's first.
    returning_calls: int
    # A contact a manager typed: name, phone as typed, Telegram username or None.
    add_contact: Callable[[Fake, str, str, str | None], object]
    raw_contact_field: Callable[[Fake, str, str], Any]  # fake, contact id, field id
    trouble: Callable[[Fake], Callable[[], None]] = _default_trouble  # → its check
    api_path: str = "/"  # where the API is: calls elsewhere (a session minted) are not its

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
        contacts=lambda fake: [str(c["id"]) for c in fake.contacts()],
        deals=lambda fake: [str(lead["id"]) for lead in fake.leads()],
        raw_deal_field=lambda fake, deal_id, field_id: fake.lead_field(deal_id, field_id),
        notes=lambda fake, deal_id: fake.notes(deal_id),
        add_contact=lambda fake, name, phone, username: fake.add_contact(
            name, phones=[phone], telegram_username=username
        ),
        raw_contact_field=lambda fake, contact_id, field_id: fake.contact_field(
            contact_id, field_id
        ),
        placement=lambda fake, deal_id: (
            fake.lead(deal_id)["pipeline_id"],
            fake.lead(deal_id)["status_id"],
        ),
        add_deal=lambda fake, contact, where, at, fields: fake.add_lead(
            contact,
            pipeline_id={"yandex_working": 10089806}.get(where, 4423755),
            status_id={"yandex_working": 80579131, "closed": 142}.get(where, 63242022),
            updated_at=at,
            fields=fields,
        ),
        returning_calls=4,
        close_deal=lambda fake, deal_id: fake.move_lead(deal_id, 142),
    ),
    CrmCase(
        "hubspot",
        FakeHubSpot,
        _example(
            ROOT / "etc" / "crm-hubspot.example.toml", "hubspot", base_url="https://api.hubapi.test"
        ),
        lambda fake: {"hubspot_access_token": fake.issue_token()},
        contacts=lambda fake: [str(c["id"]) for c in fake.contacts()],
        deals=lambda fake: [str(d["id"]) for d in fake.deals()],
        raw_deal_field=lambda fake, deal_id, field_id: fake.deal_field(deal_id, field_id),
        notes=lambda fake, deal_id: fake.notes(deal_id),
        add_contact=lambda fake, name, phone, username: fake.add_contact(
            firstname=name, phone=phone, **({"telegram_username": username} if username else {})
        ),
        raw_contact_field=lambda fake, contact_id, field_id: fake.contact_field(
            contact_id, field_id
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
    ),
    CrmCase(
        "pipedrive",
        FakePipedrive,
        _example(
            ROOT / "etc" / "crm-pipedrive.example.toml",
            "pipedrive",
            base_url="https://example.pipedrive.test",
        ),
        lambda fake: {"pipedrive_api_token": fake.issue_api_token()},
        contacts=lambda fake: [str(p["id"]) for p in fake.persons()],
        deals=lambda fake: [str(d["id"]) for d in fake.deals()],
        raw_deal_field=lambda fake, deal_id, field_id: fake.deal_field(deal_id, field_id),
        notes=lambda fake, deal_id: [note_text(html) for html in fake.notes(deal_id)],
        add_contact=lambda fake, name, phone, username: fake.add_person(
            name, phones=[phone], telegram_username=username
        ),
        raw_contact_field=lambda fake, contact_id, field_id: fake.person_field(
            contact_id, field_id
        ),
        placement=lambda fake, deal_id: (
            fake.deal(deal_id)["pipeline_id"],
            fake.deal(deal_id)["stage_id"],
        ),
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
    ),
    CrmCase(
        "bitrix24",
        FakeBitrix24,
        _example(BITRIX_EXAMPLE, "bitrix24"),
        lambda fake: {"bitrix24_webhook_url": fake.webhook_url()},
        contacts=lambda fake: [str(c["ID"]) for c in fake.contacts()],
        deals=lambda fake: [str(d["ID"]) for d in fake.deals()],
        raw_deal_field=lambda fake, deal_id, field_id: fake.deal_field(deal_id, field_id),
        notes=lambda fake, deal_id: fake.notes(deal_id),
        add_contact=lambda fake, name, phone, username: fake.add_contact(
            name, phones=[phone], telegram_username=username
        ),
        raw_contact_field=lambda fake, contact_id, field_id: fake.contact_field(
            contact_id, field_id
        ),
        placement=lambda fake, deal_id: (
            fake.deal(deal_id)["CATEGORY_ID"],
            fake.deal(deal_id)["STAGE_ID"],
        ),
        add_deal=lambda fake, contact, where, at, fields: fake.add_deal(
            int(contact),
            stage_id={"yandex_working": "C1:EXECUTING", "closed": "WON"}.get(where, "UC_AUTOPAY"),
            modified=at,
            fields=fields,
        ),
        returning_calls=4,
        close_deal=lambda fake, deal_id: fake.move_deal(deal_id, "WON"),
        trouble=_bitrix_trouble,
    ),
    CrmCase(
        "salesforce",
        FakeSalesforce,
        _example(SALESFORCE_EXAMPLE, "salesforce", base_url="https://example.my.salesforce.com"),
        # Sessions are minted (JWT bearer) from the consumer key and the key file.
        lambda fake: {
            "salesforce_client_id": fake.consumer_key,
            "salesforce_private_key_file": fake.private_key_file,
        },
        contacts=lambda fake: [str(c["Id"]) for c in fake.contacts()],
        deals=lambda fake: [str(d["Id"]) for d in fake.deals()],
        raw_deal_field=lambda fake, deal_id, field_id: fake.deal_field(deal_id, field_id),
        notes=lambda fake, deal_id: fake.notes(deal_id),
        add_contact=lambda fake, name, phone, username: fake.add_contact(
            LastName=name,
            Phone=phone,
            **({"Telegram_Username__c": username} if username else {}),
        ),
        raw_contact_field=lambda fake, contact_id, field_id: fake.contact_field(
            contact_id, field_id
        ),
        placement=lambda fake, deal_id: (
            fake.deal(deal_id)["RecordTypeId"],
            fake.deal(deal_id)["StageName"],
        ),
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
    ),
    _odoo_case("odoo", 18),
    # A second section of kind "odoo", on a 19 server: JSON-2, and ODOO_19_API_KEY.
    _odoo_case("odoo-19", 19),
    CrmCase(
        "zoho",
        FakeZoho,
        _example(ROOT / "etc" / "crm-zoho.example.toml", "zoho"),
        lambda fake: _zoho_credentials(fake),
        contacts=lambda fake: [str(c["id"]) for c in fake.contacts()],
        deals=lambda fake: [str(d["id"]) for d in fake.deals()],
        raw_deal_field=lambda fake, deal_id, field_id: fake.deal(deal_id).get(field_id),
        notes=lambda fake, deal_id: fake.notes(deal_id),
        add_contact=lambda fake, name, phone, username: fake.add_contact(
            name, phone=phone, telegram_username=username
        ),
        raw_contact_field=lambda fake, contact_id, field_id: fake.contact(contact_id).get(field_id),
        placement=lambda fake, deal_id: (
            fake.deal(deal_id)["Pipeline"],
            fake.deal(deal_id)["Stage"],
        ),
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
        api_path="/crm/",  # not the accounts server's token endpoint (another host)
    ),
    CrmCase(
        "megaplan",
        lambda: FakeMegaplan(rate_limit=1000),
        # An application token (the OAuth pair's rotation is the contract suite's); not
        # the example's 3 calls a second, which is a real account's pace.
        _example(MEGAPLAN_EXAMPLE, "megaplan", auth="long_lived_token", rate_limit_per_second=1000),
        lambda fake: {"megaplan_access_token": fake.issue_token(never=True)},
        contacts=lambda fake: [str(h["id"]) for h in fake.humans()],
        deals=lambda fake: [str(d["id"]) for d in fake.deals()],
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
    ),
]

BY_NAME = {case.name: case for case in CASES}
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
