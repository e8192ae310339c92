"""Issue 21 from the command line: `map test`, and `check`/`serve` on source sections."""

from __future__ import annotations

import json
import re
from pathlib import Path

from bridge.sources.config import PRESETS
from bridge.store import NewEvent
from tests.cli_support import Cli, make_cli
from tests.conftest import ROOT

CP_EXAMPLE = PRESETS / "cloudpayments.example.form"
SECTIONS = """
[source.cloudpayments]
preset = "cloudpayments"

[source.yclients]
preset = "yclients"
"""


def cli_with(tmp_path: Path, sections: str = SECTIONS, **env: str) -> Cli:
    secrets = {"CLOUDPAYMENTS_SOURCE_SECRETS": "cp-secret", "YCLIENTS_SOURCE_SECRETS": "yc-token"}
    cli = make_cli(tmp_path, **{**secrets, **env})
    config = Path(cli.env["CONFIG_FILE"])
    config.write_text(config.read_text(encoding="utf-8") + sections, encoding="utf-8")
    return cli


def test_map_test_prints_the_canonical_payment(tmp_path: Path) -> None:
    cli = cli_with(tmp_path)
    result = cli("map", "test", "cloudpayments", str(CP_EXAMPLE))
    assert result.exit_code == 0, result.output
    payment = json.loads(result.stdout)
    assert payment["payment_id"] == "cloudpayments:1211506522"
    assert payment["amount"] == "1500.00"
    assert payment["paid_at"] == "2026-11-20T11:49:42+00:00"
    assert payment["customer"]["email"] == "ivan.petrov@example.com"
    assert payment["items"][0]["course_name"] == "Курс «Математика»"
    assert "status 'Completed': delivered to the CRMs" in result.stderr


def test_map_test_names_each_expression_that_failed(tmp_path: Path) -> None:
    cli = cli_with(tmp_path)
    sample = tmp_path / "sample.json"
    sample.write_text('{"resource": "record", "resource_id": 5, "data": {"services": 3}}')
    result = cli("map", "test", "yclients", str(sample))
    assert result.exit_code == 1
    assert "FAILED  map.items = 'data.services': gives a number, not a list" in result.stderr
    assert "[source.yclients]: 1 expression(s) cannot read sample.json" in result.stderr
    unknown = cli("map", "test", "nosuch", str(sample))
    assert unknown.exit_code == 1
    assert "no [source.nosuch] section (configured: cloudpayments, yclients)" in unknown.stderr


def test_check_maps_each_presets_example(tmp_path: Path) -> None:
    cli = cli_with(tmp_path)
    result = cli("check")
    assert (
        "[source.cloudpayments]: POST /webhook/source/cloudpayments; example"
        " cloudpayments.example.form maps to payment cloudpayments:1211506522, 1500.00 RUB,"
        " status Completed (delivered)"
    ) in result.output
    assert "[source.yclients]: POST /webhook/source/yclients" in result.output


BROKEN = """
[source.cloudpayments]
preset = "cloudpayments"

[source.cloudpayments.map]
amount = "PaymentAmount.value"
"""


def test_check_and_serve_refuse_a_mapping_that_cannot_read_its_example(tmp_path: Path) -> None:
    cli = cli_with(tmp_path, BROKEN)
    expected = (
        "[source.cloudpayments]: example cloudpayments.example.form: map.amount ="
        " 'PaymentAmount.value': gives nothing"
    )
    checked = cli("check")
    assert checked.exit_code == 1
    assert f"PROBLEM  {expected}" in checked.stderr
    served = cli("serve")
    assert served.exit_code == 1
    assert f"PROBLEM: {expected}" in served.stderr
    assert "configuration problems above" in served.stderr


def test_check_and_serve_refuse_an_expression_that_does_not_parse(tmp_path: Path) -> None:
    cli = cli_with(tmp_path, '[source.shop]\npreset = "yclients"\n[source.shop.map]\nid = "a[?"\n')
    for command in ("check", "serve"):
        result = cli(command)
        assert result.exit_code == 1
        assert "source.shop.map.id: Value error, expression 'a[?' is not JMESPath" in (
            result.stderr
        )


def test_a_source_without_secrets_is_a_problem_for_check(tmp_path: Path) -> None:
    cli = cli_with(tmp_path, CLOUDPAYMENTS_SOURCE_SECRETS="")
    result = cli("check")
    assert result.exit_code == 1
    assert (
        "PROBLEM  [source.cloudpayments]: no CLOUDPAYMENTS_SOURCE_SECRETS: every request would"
        " be 401"
    ) in result.stderr


def test_show_says_which_source_an_event_came_from(tmp_path: Path) -> None:
    cli = cli_with(tmp_path)
    body = CP_EXAMPLE.read_text(encoding="utf-8")
    event = NewEvent(
        kind="payment",
        key="cloudpayments:1211506522",
        status="skipped",
        amount="1500.00",
        customer_keys=(),
        payload=body,
        crms=(),
        note="status Test is not paid for source cloudpayments",
        source="cloudpayments",
    )
    cli.with_store(lambda store: store.intake(event))
    shown = cli.json("show", "cloudpayments:1211506522")
    assert shown["source"] == "cloudpayments"
    assert shown["payload"] == body  # form-encoded: kept as it came
    human = cli("show", "cloudpayments:1211506522")
    assert human.exit_code == 0
    assert "source" in human.output and "cloudpayments" in human.output


def test_the_readme_worked_example_maps_as_it_says(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Connecting another platform", 1)[1].split("\n## ", 1)[0]
    [sample] = re.findall(r"(?ms)^```json\n(.*?)^```$", section)
    [config] = re.findall(r"(?ms)^```toml\n(.*?)^```$", section)
    cli = cli_with(tmp_path, "\n" + config, SHOP_SOURCE_SECRETS="shop-secret")
    (tmp_path / "shop-sample.json").write_text(sample, encoding="utf-8")
    result = cli("map", "test", "shop", str(tmp_path / "shop-sample.json"))
    assert result.exit_code == 0, result.output
    payment = json.loads(result.stdout)
    assert (payment["payment_id"], payment["amount"]) == ("shop:A-1001", "5990.50")
    assert payment["customer"]["phone"] == "+79120001122"
    assert payment["customer"]["email"] == "petr@example.com"
    assert [item["course_name"] for item in payment["items"]] == [
        "Английский, 8 уроков",
        "Разговорный клуб",
    ]
    assert "[source.shop]: POST /webhook/source/shop; example shop-sample.json maps to" in (
        cli("check").output
    )
