"""`crm-bridge check` and config loading, as a new operator meets them."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.errors import ConfigError
from bridge.settings import load_file_config
from tests.cli_support import make_cli, seed


def test_check_exits_1_without_any_webhook_secret(tmp_path: Path) -> None:
    cli = make_cli(tmp_path, WEBHOOK_SECRETS="", STANDARD_WEBHOOK_SECRETS="")
    result = cli("check")
    assert result.exit_code == 1
    assert "PROBLEM  no WEBHOOK_SECRETS or STANDARD_WEBHOOK_SECRETS" in result.stderr


def test_check_warns_on_unknown_env_file_keys(tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("WEBHOOK_SECRET=typo\nWAIT_SECONDS=3\nAMOCRM_ACESS_TOKEN=x\n")
    cli = make_cli(tmp_path)
    result = cli("--env-file", str(env_file), "check")
    assert f"WARNING  {env_file}: unknown key WEBHOOK_SECRET (did you mean WEBHOOK_SECRETS?)" in (
        result.stderr
    )
    assert "unknown key AMOCRM_ACESS_TOKEN (did you mean AMOCRM_ACCESS_TOKEN?)" in result.stderr
    assert "WAIT_SECONDS" not in result.stderr


def test_check_names_an_operator_pause(tmp_path: Path) -> None:
    cli = make_cli(tmp_path)
    cli.with_store(lambda store: seed(store, {}))
    assert cli("pause", "amocrm", "--reason", "migration").exit_code == 0
    result = cli("check")
    assert "crm.amocrm: paused by" in result.stderr and "(migration)" in result.stderr
    assert "crm-bridge resume amocrm" in result.stderr
    cli.with_store(lambda store: seed(store, {"pay_0007": "pending"}))
    shown = cli.json("show", "pay_0007")["deliveries"][0]
    assert shown["waiting_because"].startswith("amocrm paused by ")
    assert shown["waiting_because"].endswith(": migration")
    assert "was not paused" in cli("resume", "hubspot").stdout


@pytest.mark.parametrize("kind", ["directory", "unreadable"])
def test_config_file_os_errors_are_one_line_naming_the_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "broken.toml"
    if kind == "directory":
        path.mkdir()
    else:
        path.write_text("x = 1\n")
        path.chmod(0)
        try:
            path.read_text()
        except PermissionError:
            pass
        else:
            pytest.skip("running as a user who can read a 0000 file (root)")
    with pytest.raises(ConfigError, match=rf"^{path}: cannot read: "):
        load_file_config(path)
    cli = make_cli(tmp_path, CONFIG_FILE=str(path))
    result = cli("stats")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: {path}: cannot read")
    assert len(result.stderr.strip().splitlines()) == 1


def test_an_env_file_that_is_a_directory_is_one_line(tmp_path: Path) -> None:
    result = make_cli(tmp_path)("--env-file", str(tmp_path), "stats")
    assert result.exit_code == 2
    assert "is a directory" in result.stderr and "Traceback" not in result.output


def test_base_url_needs_a_scheme(tmp_path: Path) -> None:
    cli = make_cli(tmp_path)
    config = Path(cli.env["CONFIG_FILE"])
    text = config.read_text(encoding="utf-8")
    config.write_text(
        text.replace('base_url = "https://reference.amocrm.test"', 'base_url = "x.amocrm.ru"'),
        encoding="utf-8",
    )
    result = cli("check")
    assert result.exit_code == 1
    assert "crm.amocrm.base_url" in result.stderr and "needs a scheme" in result.stderr


def test_serve_warns_on_unknown_env_file_keys_and_still_starts_checking(tmp_path: Path) -> None:
    from bridge.checks import env_file_findings

    env_file = tmp_path / "env"
    env_file.write_text("CREATE_IF_NOT_FOUD=false\n")
    (finding,) = env_file_findings(env_file)
    assert finding.level == "warning"
    assert "CREATE_IF_NOT_FOUD (did you mean CREATE_IF_NOT_FOUND?)" in finding.text
