"""Settings: env.example documents every setting; the TOML file is validated with locations."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bridge.errors import ConfigError
from bridge.settings import Settings, load_file_config, load_settings
from tests.conftest import EXAMPLE_CONFIG, ROOT


def test_env_example_lists_exactly_the_environment_settings() -> None:
    documented = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", (ROOT / "env.example").read_text(), re.M))
    # `file` and `crm_env` (secrets named after the file's sections) are not variables.
    fields = {name.upper() for name in Settings.model_fields if name not in ("file", "crm_env")}
    assert documented == fields


def test_env_example_has_no_inline_comments_systemd_would_keep() -> None:
    for line in (ROOT / "env.example").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            assert "#" not in line, line


def test_example_config_loads_with_reference_rules() -> None:
    config = load_file_config(EXAMPLE_CONFIG)
    amo = config.crm["amocrm"]
    assert [(r.pipeline_id, r.status_id) for r in amo.pipeline_rules] == [
        ("8598230", "80517738"),
        ("10089806", "80579130"),
    ]
    assert (amo.default_pipeline.pipeline_id, amo.default_pipeline.status_id) == (
        "4423755",
        "63242022",
    )
    assert set(amo.excluded_status_ids) == {"63242022", "80579130", "80517738"}


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("[crm.amocrm]\nbase_url = 1\n", "crm.amocrm"),
        ("[crm.amocrm]\nbase_url='x'\n[crm.amocrm.default_pipeline]\npipeline_id=1\n", "status_id"),
        ("[payment]\nunknown = 1\n", "payment.unknown"),
        ("not toml [", "not valid TOML"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path: Path, toml: str, expected: str) -> None:
    path = tmp_path / "bridge.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as error:
        load_file_config(path)
    assert str(path) in str(error.value)
    assert expected in str(error.value)


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_settings(config_file=tmp_path / "absent.toml")


def test_lists_come_comma_separated_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBHOOK_SECRETS", "s3cret-one, s3cret-two")
    monkeypatch.setenv("RETRY_SCHEDULE_SECONDS", "1,2.5")
    monkeypatch.setenv("CONFIG_FILE", str(EXAMPLE_CONFIG))
    settings = load_settings()
    assert [s.get_secret_value() for s in settings.webhook_secrets] == ["s3cret-one", "s3cret-two"]
    assert settings.retry_schedule_seconds == (1.0, 2.5)
    assert "s3cret" not in repr(settings)
