"""Payments through HTTP into the stateful fake Odoo, once over JSON-RPC (an Odoo 18
server) and once over JSON-2 (Odoo 19), through the two Odoo `CrmCase`s (the example
section as the only CRM): what each payment costs, what lands in Odoo, and the Odoo
refusals the error tree must pause or fail on."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import crm_calls, payment_payload
from tests.crm_cases import BY_NAME, CrmCase, Run, running
from tests.fakes.odoo import FakeOdoo

EXPECTED_BODY = (
    "<p>Оплата проведена</p><p>Имя клиента: Иван Петров<br/>Дата/время: 2025-01-20 14:49:20"
)


@pytest.fixture(params=["odoo", "odoo-19"], ids=["jsonrpc-18", "json2-19"])
def case(request: pytest.FixtureRequest) -> CrmCase:
    return BY_NAME[request.param]


@pytest.fixture
def fake(case: CrmCase) -> FakeOdoo:
    made: FakeOdoo = case.make_fake()
    return made


@pytest.fixture
def run(tmp_path: Path, case: CrmCase, fake: FakeOdoo) -> Run:
    return running(case, fake, tmp_path)


def session_calls(fake: FakeOdoo) -> int:
    """The once-per-process calls: the JSON-2 probe, authenticate on JSON-RPC, the
    optional-field read."""
    return 3 if fake.version < 19 else 2


async def test_new_customer_then_returning_then_known(
    run: Run, case: CrmCase, fake: FakeOdoo
) -> None:
    async with run() as bridge:
        first = await bridge.post_payment(payment_payload("pay_new", utm_source="advcake"))
        new_calls = crm_calls(bridge, "pay_new")
        assert first.status_code == 200, first.text
        [partner] = fake.partners()
        [lead] = fake.leads()
        assert first.json()["results"][case.name] == {
            "contact_id": str(partner["id"]),
            "lead_id": str(lead["id"]),
            "lead_created": True,
        }
        assert (partner["name"], partner["phone"], partner["email"]) == (
            "Иван Петров",
            "+79991234567",
            "ivan@example.com",
        )
        assert partner["x_telegram_id"] == "123456789"
        assert partner["x_telegram_username"] == "ivan_petrov"
        assert (lead["type"], lead["partner_id"], lead["team_id"], lead["stage_id"]) == (
            "opportunity",
            partner["id"],
            3,
            2,
        )
        assert lead["expected_revenue"] == 10000
        assert lead["x_subject_ids"] == [1, 3]  # Русский, Обществознание
        assert lead["x_direction"] == "ege"
        assert (lead["x_total_paid"], lead["x_purchase_count"]) == (10000, 1)
        assert lead["x_payment_id"] == "pay_new"
        assert lead["x_last_payment_at"] == "2025-01-20 11:49:20"  # UTC
        assert lead["x_utm_source"] == "advcake"
        [note] = fake.messages(lead["id"])[1:]  # after "Opportunity Created"
        assert (note["message_type"], note["subtype_id"]) == ("comment", 2)  # a log note
        assert note["body"].startswith(EXPECTED_BODY)
        assert "Payment ID: pay_new</p>" in note["body"]
        # session + partner lookup, partner create, lead create, note
        assert new_calls == session_calls(fake) + 4

        # A manager moves the deal on from "Автооплата"; the next payment goes to it, read
        # by id from the customer's last payment: get, write, note.
        fake.move_lead(lead["id"], 3)
        again = await bridge.post_payment(payment_payload("pay_two"))
        assert again.status_code == 200, again.text
        assert again.json()["results"][case.name]["lead_created"] is False
        assert crm_calls(bridge, "pay_two") == 3  # the known deal: get, write, note
        row = fake.lead(lead["id"])
        assert (row["x_total_paid"], row["x_purchase_count"]) == (20000, 2)
        assert row["x_payment_id"] == "pay_two"
        assert len(fake.notes(lead["id"])) == 2


async def test_returning_customer_typed_by_a_manager_is_found(
    run: Run, case: CrmCase, fake: FakeOdoo
) -> None:
    partner = fake.add_partner("Иван П.", phone="8 (999) 123-45-67", email="Ivan@Example.com")
    lead = fake.add_lead(partner, name="Курс", stage_id=3, team_id=2, expected_revenue=500)
    won = fake.add_lead(partner, name="Старая", stage_id=1)
    fake.set_won(won)
    async with run() as bridge:
        answer = await bridge.post_payment(payment_payload("pay_r", telegram_id=None))
        calls = crm_calls(bridge, "pay_r")
    assert answer.status_code == 200, answer.text
    assert answer.json()["results"][case.name] == {
        "contact_id": str(partner),
        "lead_id": str(lead),
        "lead_created": False,
    }
    assert fake.lead(lead)["x_payment_id"] == "pay_r"
    assert fake.lead(won)["x_payment_id"] is False
    # lookup, fill the empty Telegram username, open deals, write, note
    assert session_calls(fake) + 5 == calls
    assert fake.partner(partner)["x_telegram_username"] == "ivan_petrov"


async def test_a_lost_deal_is_not_reused(run: Run, case: CrmCase, fake: FakeOdoo) -> None:
    partner = fake.add_partner("Иван", phone="+79991234567")
    lost = fake.add_lead(partner, stage_id=3)
    fake.set_lost(lost)
    async with run() as bridge:
        answer = await bridge.post_payment(payment_payload("pay_l"))
    assert answer.status_code == 200, answer.text
    assert answer.json()["results"][case.name]["lead_created"] is True
    assert fake.lead(lost)["x_payment_id"] is False


async def test_a_field_odoo_lacks_fails_the_payment_for_good(
    run: Run, case: CrmCase, fake: FakeOdoo
) -> None:
    section = case.file_config().crm[case.name]
    fields = section.deal_fields.model_copy(update={"invoice_id": "x_no_such_field"})
    async with run(case.file_config(deal_fields=fields)) as bridge:
        answer = await bridge.post_payment(payment_payload("pay_f"))
        [(status, error)] = bridge.query(
            "SELECT d.status, d.last_error FROM deliveries d JOIN events e ON e.id = d.event_id"
            " WHERE e.key = 'pay_f'"
        )
    assert answer.status_code != 200
    assert status == "failed"
    assert "x_no_such_field" in error


async def test_an_expired_key_pauses_the_crm(run: Run, case: CrmCase, fake: FakeOdoo) -> None:
    credentials = case.credentials(fake)
    fake.expire_api_keys()
    async with run(**credentials) as bridge:
        answer = await bridge.post_payment(payment_payload("pay_k"))
        [(reason,)] = bridge.query(
            "SELECT paused_reason FROM crm_state WHERE crm = ?", (case.name,)
        )
    assert answer.status_code == 202, answer.text
    assert reason
    assert fake.api_keys[0].key not in reason
    assert fake.partners() == []
