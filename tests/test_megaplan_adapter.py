"""The Megaplan adapter and its pure translation (`megaplan_json`), against the fake.

The shared behaviour (429s, network trouble, OAuth rotation, the crash window, every
field kind, refusals, schema) is the contract suite's (tests/test_contract.py); here are
Megaplan's own shapes and quirks.
"""

from __future__ import annotations

import functools
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import unquote

import pytest

from bridge.crm import megaplan_json as mj
from bridge.crm.megaplan import Megaplan, build_megaplan
from bridge.domain import (
    ContactPatch,
    FieldKind,
    FieldUpdate,
    KeyKind,
    LookupKey,
    NewDeal,
)
from bridge.errors import AuthError, PermanentCrmError
from bridge.rules import contact_matches
from bridge.settings import CrmConfig
from bridge.tokens import TokenPair
from tests.adapter_support import fake_and_adapter
from tests.crm_cases import BY_NAME
from tests.fakes.megaplan import DEAL_CATEGORY, HUMAN_CATEGORY, FakeMegaplan, example_config
from tests.fakes.memory import MemoryTokens, adapter_on

CONFIG = example_config().model_copy(update={"auth": "long_lived_token"})
TG_ID = f"{HUMAN_CATEGORY}TelegramId"
TOTAL, COUNT = f"{DEAL_CATEGORY}TotalPaid", f"{DEAL_CATEGORY}PurchaseCount"
PAID_AT = datetime(2025, 1, 20, 11, 49, 20, tzinfo=UTC)


def make_adapter(fake: FakeMegaplan, *, config: CrmConfig = CONFIG, **kw: Any) -> Megaplan:
    """`make` as the contract suite calls it (`transport`, `tokens`, settings in `kw`)."""
    static = {"megaplan_access_token": fake.issue_token(never=True)}
    return adapter_on(build_megaplan, fake, config, static=static, **kw)


new_contact = BY_NAME["megaplan"].new_contact


def new_deal() -> NewDeal:
    fields = (
        FieldUpdate(f"{DEAL_CATEGORY}Subjects", FieldKind.MULTISELECT, ("Русский", "Физика")),
        FieldUpdate(f"{DEAL_CATEGORY}Direction", FieldKind.SELECT, "ЕГЭ"),
        FieldUpdate(TOTAL, FieldKind.NUMBER, Decimal("10000.50")),
        FieldUpdate(COUNT, FieldKind.NUMBER, 1),
        FieldUpdate(f"{DEAL_CATEGORY}LastPaymentAt", FieldKind.DATETIME, PAID_AT),
        FieldUpdate(f"{DEAL_CATEGORY}PaymentId", FieldKind.TEXT, "pay_1"),
    )
    return NewDeal("Оплата Русский - Иван Петров", Decimal("10000.50"), "1", "12", fields)


fake, megaplan = fake_and_adapter(functools.partial(FakeMegaplan, rate_limit=1000), make_adapter)


def test_get_parameters_travel_as_one_json_object() -> None:
    path = mj.query_path("/api/v3/contractor", {"q": "+7 999&x=1", "limit": 5})
    route, _, query = path.partition("?")
    assert route == "/api/v3/contractor" and "&" not in query and "+" not in query
    assert json.loads(unquote(query)) == {"q": "+7 999&x=1", "limit": 5}


def test_an_error_inside_a_200_envelope_is_raised_by_its_inner_status() -> None:
    body = {"meta": {"status": 401, "errors": [{"message": "token expired"}]}, "data": None}
    with pytest.raises(AuthError, match="token expired"):
        mj.data("megaplan", body, "deal.get")
    invalid = {"meta": {"status": 422, "errors": [{"fieldName": "program", "message": "x"}]}}
    with pytest.raises(PermanentCrmError, match="program: x"):
        mj.data("megaplan", invalid, "deal.create")
    with pytest.raises(PermanentCrmError, match="not a Megaplan envelope"):
        mj.data("megaplan", [], "deal.get")


def test_values_are_written_as_megaplan_types_and_read_back_as_text() -> None:
    written = mj.ENCODING.values(new_deal().fields)
    assert written[f"{DEAL_CATEGORY}Subjects"] == ["Русский", "Физика"]
    assert written[TOTAL] == 10000.5 and written[COUNT] == 1
    when = written[f"{DEAL_CATEGORY}LastPaymentAt"]
    assert when == {"contentType": "DateTime", "value": "2025-01-20T11:49:20+00:00"}
    assert [mj.value_text(written[k]) for k in (TOTAL, COUNT)] == ["10000.5", "1"]
    assert mj.value_text(when) == "2025-01-20T11:49:20+00:00"


async def test_lookup_by_telegram_id_filters_the_extra_field_then_phone_searches_loosely(
    fake: FakeMegaplan, megaplan: Megaplan
) -> None:
    typed = fake.add_human("Иван Петров", phone="8 (999) 123-45-67")
    keys = [LookupKey(KeyKind.TELEGRAM_ID, "123456789"), LookupKey(KeyKind.PHONE, "+79991234567")]
    found = await megaplan.find_contact(keys, contact_matches)
    assert found is not None and found.id == str(typed)
    assert fake.count(path_prefix="/api/v3/contractor") == 2  # the filter found nobody
    fake.calls.clear()
    await megaplan.update_contact(
        found.id, ContactPatch((FieldUpdate(TG_ID, FieldKind.TEXT, "123456789"),))
    )
    again = await megaplan.find_contact(keys, contact_matches)
    assert again is not None and again.id == found.id and again.telegram_id == "123456789"
    assert fake.count(method="GET") == 1


async def test_a_contractors_deals_come_with_their_state_and_closed_ones_say_so(
    fake: FakeMegaplan, megaplan: Megaplan
) -> None:
    human = fake.add_human("Иван Петров", phone="+79991234567")
    working = fake.add_deal(human, program=2, state=23, updated_at=1000, fields={TOTAL: 1500})
    won = fake.add_deal(human, program=1, state=14, updated_at=2000)
    contact = await megaplan.find_contact(
        [LookupKey(KeyKind.PHONE, "+79991234567")], contact_matches
    )
    assert contact is not None
    deals = {d.id: d for d in await megaplan.list_deals(contact)}
    assert deals[str(working)].is_closed is False and deals[str(working)].fields[TOTAL] == "1500"
    assert deals[str(won)].is_closed is True and deals[str(won)].pipeline_id == "1"


async def test_an_update_never_moves_the_deal(fake: FakeMegaplan, megaplan: Megaplan) -> None:
    human = fake.add_human("Иван", phone="+79991234567")
    deal = fake.add_deal(human, program=1, state=13, updated_at=1000)
    await megaplan.update_deal(str(deal), [FieldUpdate(COUNT, FieldKind.NUMBER, 2)])
    assert fake.deal(deal)[COUNT] == 2 and fake.deal(deal)["state"]["id"] == "13"


async def test_a_comment_is_stored_as_html(fake: FakeMegaplan, megaplan: Megaplan) -> None:
    human = fake.add_human("Иван", phone="+79991234567")
    deal = str(fake.add_deal(human, program=1, state=13, updated_at=1000))
    await megaplan.add_note(deal, "Оплата <1500>\n  Payment ID: pay_1")
    assert fake.comments(deal) == ["Оплата &lt;1500&gt;<br>&nbsp;&nbsp;Payment ID: pay_1"]


async def test_the_password_grants_pair_rotates_and_is_stored_before_use(
    fake: FakeMegaplan,
) -> None:
    access, refresh = fake.issue_oauth_pair()
    tokens = MemoryTokens(TokenPair(access, refresh, 0.0))  # expired: refresh first
    adapter = make_adapter(fake, config=CONFIG.model_copy(update={"auth": "oauth"}), tokens=tokens)
    assert await adapter.connection.credentials_problem() is None  # no client app needed
    await adapter.find_contact([LookupKey(KeyKind.EMAIL, "a@b.c")], contact_matches)
    [saved] = tokens.saved
    assert saved.refresh_token != refresh  # rotated, the old one spent
    [token_call] = [c for c in fake.calls if c.path.endswith("/auth/access_token")]
    assert token_call.method == "POST"
    with pytest.raises(AuthError, match="no authorization codes"):
        await adapter.connection.exchange_code("code")
    await adapter.connection.aclose()
