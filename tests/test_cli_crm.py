"""`crm-bridge check`, `discover` and `auth` against the stateful fake amoCRM.

The library functions (`checks.run_checks`, `crmconfig.schema_problems`/`config_snippet`)
are called with the fake's transport; the commands get it through `CliEnv`, which
CliRunner hands to them as click's context object.
"""

from __future__ import annotations

import asyncio
import tomllib
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from bridge import checks
from bridge.crm.base import CrmSchema, CustomField, Pipeline
from bridge.crmconfig import config_snippet, schema_problems
from bridge.crypto import TokenCipher
from bridge.settings import load_file_config
from bridge.tokens import TokenPair
from tests.cli_support import AMOCRM_OAUTH_ENV, T0, Cli, make_cli, write_config
from tests.conftest import make_settings, reference_file_config
from tests.fakes.amocrm import FakeAmoCrm

KEY = Fernet.generate_key().decode()
OAUTH = {'auth = "long_lived_token"': 'auth = "oauth"'}
OAUTH_ENV = {**AMOCRM_OAUTH_ENV, "BRIDGE_SECRET_KEY": KEY}


@pytest.fixture
def fake() -> FakeAmoCrm:
    return FakeAmoCrm()


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake: FakeAmoCrm) -> Cli:
    monkeypatch.chdir(tmp_path)  # no stray .env
    cli = make_cli(tmp_path, AMOCRM_ACCESS_TOKEN=fake.issue_token())
    cli.transports = {"amocrm": fake.transport()}
    return cli


def configure(cli: Cli, replace: dict[str, str]) -> None:
    write_config(cli.tmp_path, replace=replace)


# ---- the library ------------------------------------------------------------------


def test_run_checks_on_the_reference_account_finds_nothing_wrong(
    tmp_path: Path, fake: FakeAmoCrm
) -> None:
    settings = make_settings(tmp_path, amocrm_access_token=fake.issue_token())
    findings = asyncio.run(checks.run_checks(settings, transports={"amocrm": fake.transport()}))
    assert [f for f in findings if f.level != "ok"] == []
    texts = [f.text for f in findings]
    assert any("crm.amocrm: reachable and authorised (3 pipelines" in t for t in texts)
    assert "crm.amocrm: every configured pipeline, status, field and enum id exists" in texts


SCHEMA = CrmSchema(
    pipelines=(Pipeline("10", "Site", {"100": "New", "101": "Auto"}),),
    fields=(
        CustomField("1", "Предметы", "multiselect", "leads", {"7": "Русский"}),
        CustomField("2", "Всего оплачено", "text", "leads"),
        CustomField("3", "Telegram ID", "text", "contacts"),
    ),
)


def test_schema_problems_name_the_config_key_of_every_missing_id() -> None:
    config = reference_file_config(
        excluded_status_ids=("101", "999"),
    ).crm["amocrm"]
    config = config.model_copy(
        update={
            "pipeline_rules": config.pipeline_rules[:1],
            "default_pipeline": config.default_pipeline.model_copy(
                update={"pipeline_id": "10", "status_id": "102"}
            ),
            "deal_fields": config.deal_fields.model_copy(
                update={"subjects": "1", "total_paid": "2", "payment_id": "3"}
            ),
            "contact_fields": config.contact_fields.model_copy(
                update={"telegram_id": "3", "telegram_username": None}
            ),
            "subjects": {"Русский": 7, "Физика": 8},
        }
    )
    problems = [str(p) for p in schema_problems("amocrm", config, SCHEMA)]
    assert problems[:3] == [
        "crm.amocrm.pipeline_rules[0].pipeline_id = 8598230: no such pipeline",
        "crm.amocrm.default_pipeline.status_id = 102: no such status in pipeline 10",
        "crm.amocrm.excluded_status_ids: 999: no such status",
    ]
    assert "crm.amocrm.deal_fields.direction = 700202: no such lead field" in problems
    assert "crm.amocrm.deal_fields.payment_id = 3: no such lead field" in problems
    assert (
        'crm.amocrm.deal_fields.total_paid = 2: "Всего оплачено" is a text field;'
        " total_paid needs monetary or numeric or price"
    ) in problems
    assert 'crm.amocrm.subjects."Физика" = 8: no such value in lead field 1 "Предметы"' in problems
    assert not any("contact_fields" in p for p in problems)
    assert not any("directions" in p for p in problems)  # its field is missing: said once


def test_config_snippet_is_toml_and_keeps_known_ids() -> None:
    config = reference_file_config().crm["amocrm"]
    text = config_snippet("amocrm", config, SCHEMA)
    parsed = tomllib.loads(text)["crm"]["amocrm"]
    # None of the configured ids is in this CRM: fields are matched by name and type.
    assert parsed["deal_fields"] == {"subjects": 1}  # "Всего оплачено" is text: no match
    assert parsed["contact_fields"] == {"telegram_id": 3}
    assert parsed["subjects"] == {"Русский": 7}
    assert '#   pipeline 10 = "Site"' in text and '#     status 101 = "Auto"' in text
    assert '#   2 = "Всего оплачено" (text)' in text
    assert "# total_paid =" in text


# ---- bridge check -----------------------------------------------------------------


def test_check_ok(cli: Cli) -> None:
    result = cli("check")
    assert result.exit_code == 0, result.output
    assert "OK       database" in result.stdout
    assert "OK       crm.amocrm: reachable and authorised" in result.stdout
    assert result.stderr == ""


def test_check_names_the_config_key_of_each_problem(cli: Cli) -> None:
    configure(
        cli,
        {
            "total_paid = 700207": "total_paid = 700299",
            '"ОГЭ" = 800102': '"ОГЭ" = 800199',
            "status_id = 80579130": "status_id = 80579199",
        },
    )
    result = cli("check")
    assert result.exit_code == 1
    assert (
        "PROBLEM  crm.amocrm.deal_fields.total_paid = 700299: no such lead field" in result.stderr
    )
    assert (
        'PROBLEM  crm.amocrm.directions."ОГЭ" = 800199: no such value in lead field 700202'
        in result.stderr
    )
    assert "crm.amocrm.pipeline_rules[1].status_id = 80579199: no such status" in result.stderr
    assert "Error: " in result.stderr and "problem(s) found" in result.stderr


def test_check_template_placeholders(cli: Cli) -> None:
    template = 'deal_name_template = "Оплата {subject} - {client_name}"'
    configure(cli, {template: 'deal_name_template = "Оплата {subjekt}"'})
    result = cli("check")
    assert result.exit_code == 1
    assert "payment.deal_name_template: unknown placeholder {subjekt}" in result.stderr


def test_check_without_credentials_or_secrets(cli: Cli) -> None:
    cli.env.update(AMOCRM_ACCESS_TOKEN="", WEBHOOK_SECRETS="")
    result = cli("check")
    assert result.exit_code == 1
    assert "PROBLEM  no WEBHOOK_SECRETS or STANDARD_WEBHOOK_SECRETS" in result.stderr
    assert "PROBLEM  crm.amocrm: no credentials: set AMOCRM_ACCESS_TOKEN" in result.stderr


def test_check_rejected_token_and_unreachable_crm(cli: Cli, fake: FakeAmoCrm) -> None:
    cli.env["AMOCRM_ACCESS_TOKEN"] = "revoked"
    assert "crm.amocrm: GET /api/v4/leads/pipelines: 401 unauthorised" in cli("check").stderr
    cli.env["AMOCRM_ACCESS_TOKEN"] = fake.issue_token()
    fake.down()
    down = cli("check")
    assert down.exit_code == 1
    assert "crm.amocrm: cannot read its pipelines and fields" in down.stderr


def test_check_keys_and_secrets(cli: Cli) -> None:
    configure(cli, OAUTH)
    cli.env["STANDARD_WEBHOOK_SECRETS"] = "whsec_***"
    result = cli("check")
    assert result.exit_code == 1
    assert "STANDARD_WEBHOOK_SECRETS #1: standard webhook secret: whsec_ value is not base64" in (
        result.stderr
    )
    assert "BRIDGE_SECRET_KEY is not set, but amocrm use(s) OAuth" in result.stderr
    cli.env["BRIDGE_SECRET_KEY"] = "not-a-key"
    assert "each key must be 32 url-safe base64-encoded bytes" in cli("check").stderr


def test_check_reports_a_paused_crm_and_a_bad_config_file(cli: Cli) -> None:
    cli.with_store(lambda s: s.set_crm_state("amocrm", paused_reason="401 unauthorised"))
    result = cli("check")
    assert result.exit_code == 0
    # No bridge runs (no serve lock held): the pause is from its last run.
    assert "paused when the bridge last ran (401 unauthorised)" in result.stderr
    Path(cli.env["CONFIG_FILE"]).write_text("[crm.amocrm\n", encoding="utf-8")
    broken = cli("check")
    assert broken.exit_code == 1 and "not valid TOML" in broken.stderr


# ---- bridge discover ----------------------------------------------------------------


def test_discover_prints_a_ready_snippet(cli: Cli) -> None:
    result = cli("discover", "amocrm")
    assert result.exit_code == 0, result.output
    parsed = tomllib.loads(result.stdout)["crm"]["amocrm"]
    example = load_file_config(Path(cli.env["CONFIG_FILE"])).crm["amocrm"]
    assert parsed["deal_fields"] == {
        k: int(v) for k, v in example.deal_fields.model_dump().items() if v
    }
    assert parsed["contact_fields"] == {"telegram_id": 700101, "telegram_username": 700102}
    assert parsed["subjects"] == example.subjects
    assert parsed["directions"] == example.directions
    assert '#   pipeline 8598230 = "Partners"' in result.stdout
    assert '#     status 80517738 = "Автооплаты ООО"' in result.stdout
    assert '#   600001 = "Телефон" (multitext)' in result.stdout


@pytest.mark.parametrize("wrong", ["700999", "700208"])  # missing; a numeric field
def test_discover_lists_candidates_for_ids_the_crm_lacks(cli: Cli, wrong: str) -> None:
    configure(cli, {"subjects = 700201": f"subjects = {wrong}"})
    result = cli("discover", "amocrm")
    parsed = tomllib.loads(result.stdout)["crm"]["amocrm"]
    # The configured id is wrong; the field named "Предметы" is found by name instead.
    assert parsed["deal_fields"]["subjects"] == 700201
    assert '"Предметы" (multiselect), matched by name' in result.stdout
    assert parsed["subjects"]["Русский"] == 800001


def test_a_field_of_the_wrong_type_is_one_problem(cli: Cli) -> None:
    configure(cli, {"subjects = 700201": "subjects = 700208"})
    result = cli("check")
    problems = [line for line in result.stderr.splitlines() if line.startswith("PROBLEM")]
    assert problems == [
        'PROBLEM  crm.amocrm.deal_fields.subjects = 700208: "Количество покупок" is a numeric'
        " field; subjects needs multiselect"
    ]


def test_discover_errors(cli: Cli) -> None:
    unknown = cli("discover", "hubspot")
    assert unknown.exit_code == 1 and "no [crm.hubspot] section" in unknown.stderr
    cli.env["AMOCRM_ACCESS_TOKEN"] = ""
    unauthorised = cli("discover", "amocrm")
    assert unauthorised.exit_code == 1
    assert "no credentials" in unauthorised.stderr


# ---- crm-bridge auth-------------------------------------------------------------------


def test_auth_with_a_code_stores_the_pair_and_check_then_passes(cli: Cli, fake: FakeAmoCrm) -> None:
    configure(cli, OAUTH)
    cli.env.update(OAUTH_ENV, AMOCRM_ACCESS_TOKEN="")
    assert "crm.amocrm: not authorised: run `crm-bridge auth amocrm`" in cli("check").stderr
    fake.register_code("code-1")
    result = cli("auth", "amocrm", "--code", "code-1")
    assert result.exit_code == 0, result.output
    assert "amocrm: tokens stored encrypted; the access token expires 2025-06-16T16:06:40Z" in (
        result.stdout
    )
    assert "access-" not in result.output and "refresh-" not in result.output
    pair = cli.with_store(lambda s: s.load_tokens("amocrm"), cipher=TokenCipher([KEY]))
    assert pair is not None and pair.access_token.startswith("access-")
    assert cli("check").exit_code == 0
    reused = cli("auth", "amocrm", "--code", "code-1")
    assert reused.exit_code == 1
    assert "authorization code rejected (HTTP 400: Authorization code has been revoked)" in (
        reused.stderr
    )


def test_auth_with_a_token_pair(cli: Cli, fake: FakeAmoCrm) -> None:
    configure(cli, OAUTH)
    cli.env.update(OAUTH_ENV)
    access, refresh = fake.issue_oauth_pair()
    result = cli(
        "auth",
        "amocrm",
        "--access-token",
        access,
        "--refresh-token",
        refresh,
        "--expires-in",
        "600",
    )
    assert result.exit_code == 0, result.output
    assert "expires 2025-06-15T16:16:40Z" in result.stdout
    stored = cli.with_store(lambda s: s.load_tokens("amocrm"), cipher=TokenCipher([KEY]))
    assert stored == TokenPair(access, refresh, T0 + 3600 + 600)


def test_auth_errors(cli: Cli) -> None:
    assert cli("auth", "amocrm").exit_code == 2
    assert cli("auth", "amocrm", "--code", "c", "--access-token", "a").exit_code == 2
    assert cli("auth", "amocrm", "--access-token", "a").exit_code == 2
    long_lived = cli("auth", "amocrm", "--code", "c")
    assert long_lived.exit_code == 1 and 'auth = "oauth"' in long_lived.stderr
    configure(cli, {'auth = "long_lived_token"': 'auth = "minted"'})
    minted = cli("auth", "amocrm", "--code", "c")
    assert minted.exit_code == 1 and "sessions are minted" in minted.stderr
    configure(cli, OAUTH)
    no_key = cli("auth", "amocrm", "--code", "c")
    assert no_key.exit_code == 1 and "BRIDGE_SECRET_KEY is not set" in no_key.stderr
    cli.env["BRIDGE_SECRET_KEY"] = KEY
    no_client = cli("auth", "amocrm", "--code", "c")
    assert no_client.exit_code == 1
    assert "OAuth needs AMOCRM_CLIENT_ID and AMOCRM_CLIENT_SECRET" in no_client.stderr
    unknown = cli("auth", "hubspot", "--code", "c")
    assert unknown.exit_code == 1 and "no [crm.hubspot] section" in unknown.stderr
