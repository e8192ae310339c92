"""The order settings the CRM examples carry commented out (`#: ` lines), uncommented:
what an operator gets by removing the marks, so tests hold the examples to the settings
the fakes and the order contract use."""

from __future__ import annotations

import tomllib
from pathlib import Path

from bridge.settings import FileConfig

MARK = "#: "


def uncommented_orders(path: Path) -> FileConfig:
    """The example file with every `#: ` line uncommented, parsed as the bridge would."""
    lines = [
        line[len(MARK) :] if line.startswith(MARK) else line
        for line in path.read_text(encoding="utf-8").splitlines()
    ]
    return FileConfig.model_validate(tomllib.loads("\n".join(lines)))
