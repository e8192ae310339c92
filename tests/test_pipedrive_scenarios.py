"""Issue scenarios 1–8 through HTTP, with Pipedrive as the only CRM (the stateful fake).

The bridge runs with `etc/crm-pipedrive.example.toml` pointed at the fake. Every request
it sends is recorded and, after each test, checked against Pipedrive's published
OpenAPI files. The CRM calls per payment are measured with the fake's call log.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.crm.richtext import note_html, note_text
from bridge.settings import load_file_config
from tests.conftest import EXPECTED_NOTE, crm_calls, number, payment_payload
from tests.crm_cases import BY_NAME, Run, running
from tests.fakes.openapi_check import SentRequests
from tests.fakes.pipedrive import FakePipedrive
from tests.fakes.pipedrive_openapi import PipedriveOpenApi

ROOT = Path(__file__).resolve().parent.parent
PD_URL = "https://example.pipedrive.test"
EXAMPLE = load_file_config(ROOT / "etc" / "crm-pipedrive.example.toml").crm["pipedrive"]
DF = EXAMPLE.deal_fields
TG_ID, TG_USERNAME = EXAMPLE.contact_fields.telegram_id, EXAMPLE.contact_fields.telegram_username
PARTNERS, PARTNERS_AUTOPAY = 3, 5
SENT = SentRequests()


CASE = BY_NAME["pipedrive"]
pipedrive_file_config = CASE.file_config


@pytest.fixture
def fake() -> FakePipedrive:
    return FakePipedrive()


@pytest.fixture
def run_bridge(tmp_path: Path, fake: FakePipedrive) -> Run:
    """The app on the fake; every request it sends is checked against the OpenAPI files."""
    return running(CASE, fake, tmp_path, SENT.recording)


@pytest.fixture(autouse=True)
def requests_conform_to_openapi() -> Iterator[None]:
    SENT.clear()
    yield
    spec = PipedriveOpenApi.load()
    if spec is None:
        return  # the shared specs are not checked out next to the repository
    assert SENT.problems(spec) == []


# ---- (1) a new customer -------------------------------------------------------------


async def test_new_customer_gets_person_deal_fields_and_note(run_bridge, fake) -> None:
    async with run_bridge() as bridge:
        response = await bridge.post_payment(
            payment_payload("pay_new", utm_source="advcake", utm_medium="cpa")
        )
        calls = crm_calls(bridge, "pay_new")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "success"
    [person] = fake.persons()
    [deal] = fake.deals()
    assert body["results"]["pipedrive"] == {
        "contact_id": str(person["id"]),
        "lead_id": str(deal["id"]),
        "lead_created": True,
    }
    assert person["name"] == "Иван Петров"
    assert person["custom_fields"][TG_ID] == "123456789"
    assert person["custom_fields"][TG_USERNAME] == "ivan_petrov"
    assert (deal["pipeline_id"], deal["stage_id"], deal["person_id"]) == (
        PARTNERS,
        PARTNERS_AUTOPAY,
        person["id"],
    )
    assert (deal["title"], deal["value"]) == ("Оплата Русский, Обществознание - Иван Петров", 10000)
    field = lambda key: fake.deal_field(deal["id"], key)  # noqa: E731
    assert number(field(DF.total_paid)) == 10000
    assert number(field(DF.purchase_count)) == 1
    assert number(field(DF.last_payment_amount)) == 10000
    assert field(DF.last_payment_at) == "2025-01-20"
    assert field(DF.payment_id) == "pay_new"
    assert field(DF.invoice_id) == "inv_pay_new"
    assert field(DF.utm_source) == "advcake"
    assert field(DF.subjects) == [11, 13]
    assert field(DF.direction) == 21
    [content] = fake.notes(deal["id"])
    assert content == note_html(EXPECTED_NOTE)
    assert note_text(content) == EXPECTED_NOTE
    # Five searches (Telegram id, three forms of the phone, email), the person, the deal,
    # the note.
    assert calls == fake.count() == 8
    assert fake.tokens_used == 5 * 20 + 5 + 5 + 10


# ---- (2) a returning customer -------------------------------------------------------


# ---- (7) trouble, and the crash windows ---------------------------------------------


@pytest.mark.parametrize("path", ["/api/v2/deals", "/api/v1/notes"])
async def test_a_write_whose_answer_was_lost_is_not_repeated(run_bridge, fake, path) -> None:
    fake.fail_after_apply(1, status=500, method="POST", path_prefix=path)
    async with run_bridge(wait_seconds=0) as bridge:
        await bridge.post_payment(payment_payload("pay_lost"))
        await bridge.settle(timeout=20)
        [(status,)] = bridge.query("SELECT status FROM payment_events")
    assert status == "success"
    assert len(fake.persons()) == 1
    [deal] = fake.deals()
    assert number(fake.deal_field(deal["id"], DF.purchase_count)) == 1
    [content] = fake.notes(deal["id"])  # the retry read the notes back and found it
    assert note_text(content).endswith("Payment ID: pay_lost")
