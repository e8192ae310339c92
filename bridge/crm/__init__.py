"""CRM adapters: one module per CRM, chosen by the `kind` of each `[crm.NAME]` section."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import httpx

from bridge.crm.amocrm import build_amocrm
from bridge.crm.base import CrmAdapter
from bridge.settings import Settings
from bridge.tokens import TokenRepository

OnCall = Callable[[str, str, float, int], None]


def build_adapters(
    settings: Settings,
    tokens: TokenRepository,
    *,
    transports: Mapping[str, httpx.AsyncBaseTransport] | None = None,
    on_call: OnCall | None = None,
) -> dict[str, CrmAdapter]:
    """One adapter (and so one HTTP client) per enabled CRM, for the process lifetime."""
    adapters: dict[str, CrmAdapter] = {}
    for name, config in settings.file.crm.items():
        if not config.enabled:
            continue
        transport = (transports or {}).get(name)
        adapters[name] = build_amocrm(
            name, config, settings, tokens, transport=transport, on_call=on_call
        )
    return adapters
