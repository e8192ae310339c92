"""The Odoo fake against a real server: every request of the recorded Odoo 18.0 session
(crm-notes/odoo18-jsonrpc-transcript.md §8, copied to `tests/fakes/odoo18_transcript.json`)
replayed in order gets the answer the real server gave, and JSON-2 as Odoo 19 answers it.

Only what a recording cannot pin is left out of the comparison: the traceback in
`debug` and the clock in `date`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.odoo import FakeOdoo

TRANSCRIPT = Path(__file__).parent / "fakes" / "odoo18_transcript.json"
RECORDED_AT = datetime(2026, 11, 22, 13, 55, 30, tzinfo=UTC).timestamp()


def _scrub(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items() if k not in ("debug", "date")}
    if isinstance(value, list):
        return [_scrub(item) for item in value]
    return value


def _client(fake: FakeOdoo, **options: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=fake.transport(), base_url="http://odoo.test", **options)


def rpc(service: str, method: str, args: list[Any]) -> dict[str, Any]:
    params = {"service": service, "method": method, "args": args}
    return {"jsonrpc": "2.0", "method": "call", "id": 1, "params": params}


async def test_every_recorded_request_gets_the_recorded_answer() -> None:
    fake = FakeOdoo(clock=lambda: RECORDED_AT)
    pairs = json.loads(TRANSCRIPT.read_text(encoding="utf-8"))
    assert len(pairs) == 49
    async with _client(fake) as client:
        for pair in pairs:
            answer = await client.post("/jsonrpc", json=pair["request"])
            assert answer.status_code == 200, pair["section"]
            assert _scrub(answer.json()) == _scrub(pair["response"]), (
                f"§{pair['section']} {pair['title']}"
            )


async def test_json2_is_a_login_redirect_on_18() -> None:
    fake = FakeOdoo(version=18)
    async with _client(fake) as client:
        answer = await client.post("/json/2/res.partner/search", json={"domain": []})
    assert answer.status_code == 303
    assert answer.headers["location"].startswith("/web/login?redirect=")


async def test_json2_on_19_answers_bare_results_and_real_statuses() -> None:
    fake = FakeOdoo(version=19, database="mycompany")
    key = fake.issue_api_key()
    headers = {"authorization": f"bearer {key}", "x-odoo-database": "mycompany"}
    async with _client(fake, headers=headers) as client:
        created = await client.post(
            "/json/2/res.partner/create",
            json={"vals_list": [{"name": "Jane", "email": "Jane@Example.com"}]},
        )
        assert created.status_code == 200 and created.json() == [7]
        found = await client.post(
            "/json/2/res.partner/search_read",
            json={"domain": [["email_normalized", "=", "jane@example.com"]], "fields": ["name"]},
        )
        assert found.json() == [{"id": 7, "name": "Jane"}]
        bad_field = await client.post(
            "/json/2/res.partner/write",
            json={"ids": [7], "vals": {"x_nope": 1}},
        )
        assert bad_field.status_code == 500
        assert bad_field.json()["name"] == "builtins.ValueError"
        created_lead = await client.post(
            "/json/2/crm.lead/create",
            json={"vals_list": [{"name": "Deal", "type": "opportunity", "partner_id": 7}]},
        )
        lead = created_lead.json()[0]
        note = await client.post(
            "/json/2/crm.lead/message_post",
            json={
                "ids": [lead],
                "body": "a\nb",
                "message_type": "comment",
                "subtype_xmlid": "mail.mt_note",
            },
        )
        assert note.status_code == 200 and isinstance(note.json(), list)
        assert fake.notes(lead) == ["<p>a<br/>b</p>"]
        lost = await client.post("/json/2/crm.lead/action_set_lost", json={"ids": [lead]})
        assert lost.status_code == 200 and lost.json() is None
        unexpected = await client.post("/json/2/res.partner/search", json={"nope": 1})
        assert unexpected.status_code == 422
        wrong_key = await client.post(
            "/json/2/res.partner/search", json={}, headers={"authorization": "bearer nope"}
        )
        assert wrong_key.status_code == 401
        assert wrong_key.json()["message"] == "Invalid apikey"
        fake.deny("crm.lead", "write")
        denied = await client.post(
            "/json/2/crm.lead/write", json={"ids": [lead], "vals": {"name": "x"}}
        )
        assert denied.status_code == 403
        assert denied.json()["name"] == "odoo.exceptions.AccessError"


async def test_an_expired_api_key_is_access_denied_over_rpc() -> None:
    fake = FakeOdoo(clock=lambda: 1_000.0)
    key = fake.issue_api_key(ttl=60)
    body = rpc("object", "execute_kw", ["crm_lab", 2, key, "res.partner", "search_count", [[]], {}])
    async with _client(fake) as client:
        assert (await client.post("/jsonrpc", json=body)).json()[
            "result"
        ] == 2  # YourCompany, Administrator
        fake.expire_api_keys()
        error = (await client.post("/jsonrpc", json=body)).json()["error"]
    assert error["data"]["name"] == "odoo.exceptions.AccessDenied"


@pytest.mark.parametrize("database", ["nope", "crm_lab2"])
async def test_a_wrong_database_fails_to_connect(database: str) -> None:
    fake = FakeOdoo()
    body = rpc("common", "authenticate", [database, "admin", "admin", {}])
    async with _client(fake) as client:
        error = (await client.post("/jsonrpc", json=body)).json()["error"]
    assert error["data"]["name"] == "psycopg2.OperationalError"
    assert f'database "{database}" does not exist' in error["data"]["message"]
