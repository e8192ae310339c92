"""CRM adapters: one module per CRM, chosen by the `kind` of each `[crm.NAME]` section.

Every module provides `build_<kind>(name, config, settings, tokens, *, transport=None,
on_call=None, clock=time.time)` returning its adapter with the one HTTP client it owns.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Mapping
from typing import Protocol

import httpx

from bridge.crm.base import CrmAdapter
from bridge.settings import CrmConfig, Settings
from bridge.tokens import TokenRepository

OnCall = Callable[[str, str, float, int], None]


class Builder(Protocol):
    def __call__(
        self,
        name: str,
        config: CrmConfig,
        settings: Settings,
        tokens: TokenRepository,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        on_call: OnCall | None = None,
        clock: Callable[[], float] = time.time,
    ) -> CrmAdapter: ...


def builder(kind: str) -> Builder:
    """The builder of one CRM kind; modules are imported only when configured."""
    module = importlib.import_module(f"bridge.crm.{kind}")
    built: Builder = getattr(module, f"build_{kind}")
    return built


def build_adapter(
    name: str,
    config: CrmConfig,
    settings: Settings,
    tokens: TokenRepository,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    on_call: OnCall | None = None,
    clock: Callable[[], float] = time.time,
) -> CrmAdapter:
    build = builder(config.kind)
    return build(name, config, settings, tokens, transport=transport, on_call=on_call, clock=clock)


def build_adapters(
    settings: Settings,
    tokens: TokenRepository,
    *,
    transports: Mapping[str, httpx.AsyncBaseTransport] | None = None,
    on_call: OnCall | None = None,
) -> dict[str, CrmAdapter]:
    """One adapter (and so one HTTP client) per enabled CRM, for the process lifetime."""
    return {
        name: build_adapter(
            name, config, settings, tokens, transport=(transports or {}).get(name), on_call=on_call
        )
        for name, config in settings.file.crm.items()
        if config.enabled
    }
