"""Set-up the per-CRM adapter tests share: the example's section, an adapter on the
test's fake that is closed after the test, the requests a fake received, lookup keys."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from bridge.domain import KeyKind, LookupKey
from bridge.settings import CrmConfig, load_file_config

ROOT = Path(__file__).resolve().parent.parent


def example_section(example: str, kind: str, **update: Any) -> CrmConfig:
    """`[crm.KIND]` of etc/`example`, with `update` on top (a fake's base URL, enabled)."""
    return load_file_config(ROOT / "etc" / example).crm[kind].model_copy(update=update)


def fake_and_adapter(
    make_fake: Callable[..., Any], make_adapter: Callable[..., Any]
) -> tuple[Any, Any]:
    """Two fixtures: the CRM's fake, `make_fake()`, and `make_adapter(fake)`, closed after
    the test. A test's indirect parameter of either gives it keyword arguments."""

    @pytest.fixture
    def fake(request: pytest.FixtureRequest) -> Any:
        return make_fake(**getattr(request, "param", {}))

    @pytest.fixture
    async def adapter(fake: Any, request: pytest.FixtureRequest) -> AsyncIterator[Any]:
        made = make_adapter(fake, **getattr(request, "param", {}))
        yield made
        await made.connection.aclose()

    return fake, adapter


def paths(fake: Any) -> list[str]:
    """The requests the fake received, as "METHOD /path"."""
    return [f"{call.method} {call.path}" for call in fake.calls]


def tg_key(value: str = "123456789") -> LookupKey:
    return LookupKey(KeyKind.TELEGRAM_ID, value)


def phone_key(value: str = "+79991234567") -> LookupKey:
    return LookupKey(KeyKind.PHONE, value)


def email_key(value: str = "ivan@example.com") -> LookupKey:
    return LookupKey(KeyKind.EMAIL, value)
