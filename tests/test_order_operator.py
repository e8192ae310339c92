"""The operator's tools cover orders (SPEC §8, §10): `crm-bridge events --orders`, `show`
by order id or order event, `stats` per kind, `retry` of an order, the `order_events`
view and the README's audit queries over it.

The database is made by the real app over the in-memory CRM; the commands then run on it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from bridge.errors import PermanentCrmError
from tests.cli_support import Cli, make_cli, write_config
from tests.order_cases import MEMORY, post_order
from tests.order_support import order_body, order_config_toml

TENT = [("tent-02", "Шатёр 6×12", 1, "25000.00")]
NEWER = "2026-11-21T09:00:00+03:00"
BETWEEN = "2026-11-20T12:00:00+03:00"  # after the first event, before the newer one


@pytest.fixture
async def ordered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    """Three events of ord_1042 (created, a newer update, then a stale older one) and a
    failed one of ord_2000, as the app over the in-memory CRM left them."""
    crm = MEMORY.make_fake()
    async with MEMORY.running(crm, tmp_path)() as bridge:
        assert (
            await post_order(bridge, order_body(event="created", status="new"))
        ).status_code == 200
        newer = order_body(status="in_rent", updated_at=NEWER, items=TENT)
        assert (await post_order(bridge, newer)).status_code == 200
        stale = await post_order(bridge, order_body(status="reserved", updated_at=BETWEEN))
        assert stale.json() == {"status": "stale"}
        crm.fail_at(len(crm.calls) + 1, error=PermanentCrmError("amocrm", "HTTP 400 refused"))
        refused = await post_order(bridge, order_body("ord_2000", phone="+7 916 000-22-33"))
        assert refused.json()["status"] == "failed"
    monkeypatch.chdir(tmp_path)
    text = write_config(tmp_path).read_text(encoding="utf-8") + order_config_toml()
    config = tmp_path / "orders.toml"  # make_cli writes bridge.toml again
    config.write_text(text, encoding="utf-8")
    return make_cli(tmp_path, CONFIG_FILE=str(config))


def test_events_lists_order_events_with_their_keys(ordered: Cli) -> None:
    rows = ordered.json("events", "--orders")
    assert {row["order_event"]: row["status"] for row in rows} == {
        "ord_1042@2026-11-20T07:15:00Z": "success",
        "ord_1042@2026-11-21T06:00:00Z": "success",
        "ord_1042@2026-11-20T09:00:00Z": "skipped",
        "ord_2000@2026-11-20T07:15:00Z": "failed",
    }
    assert rows[0]["order_event"] == "ord_2000@2026-11-20T07:15:00Z"  # newest first
    newer = next(row for row in rows if row["order_event"] == "ord_1042@2026-11-21T06:00:00Z")
    assert newer["updated_at"] == NEWER
    assert ordered.json("events") == []  # payments only, as before
    human = ordered("events", "--orders")
    assert "order event" in human.stdout and "ord_1042@2026-11-21T06:00:00Z" in human.stdout


def test_show_an_order_gives_its_deal_per_crm_and_all_its_events(ordered: Cli) -> None:
    report: dict[str, Any] = ordered.json("show", "ord_1042")
    assert report["order_id"] == "ord_1042"
    assert report["order_event"] == "ord_1042@2026-11-21T06:00:00Z"  # the newest
    assert report["event"] == "updated" and report["order_status"] == "in_rent"
    assert report["order_crms"] == ["amocrm"]
    [link] = report["order_links"]
    assert link["crm"] == "amocrm" and link["status"] == "in_rent"
    assert link["applied_event"] == "ord_1042@2026-11-21T06:00:00Z"
    assert [e["status"] for e in report["order_events"]] == ["success", "success", "skipped"]
    assert {step["step"] for step in report["journal"]} >= {"contact", "deal", "note"}
    human = ordered("show", "ord_1042")
    assert human.exit_code == 0
    assert "the order's deal per CRM" in human.stdout and "order event" in human.stdout


def test_show_a_stale_order_event_says_why_nothing_was_delivered(ordered: Cli) -> None:
    report = ordered.json("show", "ord_1042@2026-11-20T09:00:00Z")
    assert report["status"] == "skipped" and report["deliveries"] == []
    assert report["error"].startswith("stale: order ord_1042 has a newer update")
    assert [(r["http_status"], r["detail"]) for r in report["requests"]] == [(202, "stale")]
    assert (
        "none (the event was not processed)"
        in ordered("show", "ord_1042@2026-11-20T09:00:00Z").stdout
    )


def test_stats_counts_orders_apart(ordered: Cli) -> None:
    report = ordered.json("stats")
    assert report["events_by_kind"]["order"]["failed"] == 1
    assert "orders:" in ordered("stats").stdout


def test_retry_an_order_puts_its_failed_event_back(ordered: Cli) -> None:
    result = ordered("retry", "ord_2000")
    assert result.exit_code == 0, result.output
    assert "1 event(s) queued again" in result.stdout
    report = ordered.json("show", "ord_2000@2026-11-20T07:15:00Z")
    assert report["deliveries"][0]["status"] == "pending"
    assert "nothing to retry" in ordered("retry", "ord_1042").stdout


def test_the_readme_audit_queries_run_on_the_order_events_view(ordered: Cli) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Auditing orders") :]
    queries = [block.split("```", 1)[0].strip() for block in section.split("```sql")[1:4]]
    assert len(queries) == 3
    with sqlite3.connect(ordered.db_path) as conn:
        for query in queries:
            conn.execute(query).fetchall()
        deals = conn.execute(queries[0]).fetchall()
    assert deals


def test_send_posts_an_order_body_to_the_order_route(tmp_path: Path) -> None:
    import httpx

    from tests.order_support import EXAMPLE_ORDER

    cli = make_cli(tmp_path)
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, json={"status": "queued"})

    cli.http_transport = httpx.MockTransport(answer)
    result = cli("send", str(EXAMPLE_ORDER))
    assert result.exit_code == 0, result.output
    [request] = seen
    assert str(request.url) == "http://127.0.0.1:8080/webhook/order"
    assert request.content == EXAMPLE_ORDER.read_bytes()
    assert "crm-bridge show ord_1042" in result.stderr


def test_check_wants_an_order_id_field_and_known_placeholders(tmp_path: Path) -> None:
    from bridge.checks import settings_findings
    from bridge.settings import OrderFieldIds, OrderRules
    from tests.conftest import make_settings
    from tests.test_order_route import order_file

    file = order_file()
    section = file.crm["amocrm"].model_copy(update={"order_fields": OrderFieldIds()})
    bad_rules = OrderRules(deal_name_template="Заказ {order_number}")
    file = file.model_copy(update={"crm": {"amocrm": section}, "order": bad_rules})
    problems = [
        f.text for f in settings_findings(make_settings(tmp_path, file)) if f.level == "problem"
    ]
    assert any("crm.amocrm: takes orders" in p and "order_fields.order_id" in p for p in problems)
    assert "order.deal_name_template: unknown placeholder {order_number}" in problems
    assert not [
        f for f in settings_findings(make_settings(tmp_path, order_file())) if f.level == "problem"
    ]
