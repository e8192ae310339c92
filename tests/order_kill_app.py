"""The bridge as a real process over a persistent in-memory CRM, for the SIGKILL test of
orders (tests/test_order_faults_kill.py).

`python -m tests.order_kill_app` serves the real app (lifespan, worker, SQLite at
DATABASE_PATH, settings from the environment like `crm-bridge serve`) on PORT, with one
CRM section, `amocrm`, answered by a `MemoryCrm` whose whole state is written to
STATE_FILE after every call that changes it (and read back at start), so it outlives
the process like a real CRM. With KILL_AT=n the process SIGKILLs itself at its n-th CRM
call: before the call takes effect, or with KILL_AFTER=1 after it took effect and was
saved, before its answer reaches the bridge.
"""

from __future__ import annotations

import os
import pickle
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import uvicorn

from bridge.app import create_app
from bridge.settings import CrmConfig, load_settings
from tests.fakes.memory import MemoryCrm

T = TypeVar("T")
STATE = ("contacts", "deals", "notes", "companies", "contact_companies", "deal_company")
STATE += ("deal_names", "items", "_next_id")


class PersistentCrm(MemoryCrm):
    def __init__(self, config: CrmConfig, path: Path, kill_at: int, kill_after: bool) -> None:
        super().__init__(config, name="amocrm")
        self.path = path
        self.kill = (kill_at, kill_after)
        if path.exists():
            saved: dict[str, Any] = pickle.loads(path.read_bytes())  # noqa: S301 - our own file
            for name, value in saved.items():
                setattr(self, name, value)

    def _call(self, operation: str, effect: Callable[[], T]) -> T:
        number = len(self.calls) + 1
        if number == self.kill[0] and not self.kill[1]:
            os.kill(os.getpid(), signal.SIGKILL)
        result = super()._call(operation, effect)
        self.save()
        if number == self.kill[0]:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    def save(self) -> None:
        state = {name: getattr(self, name) for name in STATE}
        partial = self.path.with_suffix(".tmp")
        partial.write_bytes(pickle.dumps(state))
        os.replace(partial, self.path)


def load_state(path: Path) -> dict[str, Any]:
    state: dict[str, Any] = pickle.loads(path.read_bytes())  # noqa: S301 - our own file
    return state


def main() -> None:
    settings = load_settings()
    crm = PersistentCrm(
        settings.file.crm["amocrm"],
        Path(os.environ["STATE_FILE"]),
        int(os.environ.get("KILL_AT", "0")),
        os.environ.get("KILL_AFTER") == "1",
    )
    app = create_app(settings, adapters=lambda _settings, _store: {"amocrm": crm})
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ["PORT"]), log_level="warning")


if __name__ == "__main__":
    main()
