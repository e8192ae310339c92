"""CRM adapters: one builder per CRM kind, chosen by the `kind` of each `[crm.NAME]` section.

`BUILDERS` is the registry: mypy checks every entry against `Builder`, and the `kind`
values a configuration may use are its keys. A builder takes the `Wiring` of one section and
returns its adapter on a `Connection` (bridge.crm.connection), which owns that CRM's one
HTTP client.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import httpx

from bridge.crm.amocrm import build_amocrm
from bridge.crm.base import CrmAdapter, order_adapter
from bridge.crm.bitrix24 import build_bitrix24
from bridge.crm.connection import OnCall, Wiring
from bridge.crm.hubspot import build_hubspot
from bridge.crm.megaplan import build_megaplan
from bridge.crm.odoo import build_odoo
from bridge.crm.pipedrive import build_pipedrive
from bridge.crm.salesforce import build_salesforce
from bridge.crm.zoho import build_zoho
from bridge.errors import ConfigError
from bridge.settings import CrmConfig, Settings
from bridge.tokens import TokenRepository

Builder = Callable[[Wiring], CrmAdapter]

BUILDERS: Mapping[str, Builder] = {
    "amocrm": build_amocrm,
    "hubspot": build_hubspot,
    "pipedrive": build_pipedrive,
    "bitrix24": build_bitrix24,
    "salesforce": build_salesforce,
    "odoo": build_odoo,
    "zoho": build_zoho,
    "megaplan": build_megaplan,
}


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
    wiring = Wiring(name, config, settings, tokens, transport, on_call, clock)
    return BUILDERS[config.kind](wiring)


def build_adapters(
    settings: Settings,
    tokens: TokenRepository,
    *,
    transports: Mapping[str, httpx.AsyncBaseTransport] | None = None,
    on_call: OnCall | None = None,
) -> dict[str, CrmAdapter]:
    """One adapter (and so one HTTP client) per enabled CRM, for the process lifetime;
    ConfigError for a section taking orders whose CRM cannot (`check_order_sections`)."""
    adapters = {
        name: build_adapter(
            name, config, settings, tokens, transport=(transports or {}).get(name), on_call=on_call
        )
        for name, config in settings.file.crm.items()
        if config.enabled
    }
    check_order_sections(settings, adapters)
    return adapters


def check_order_sections(settings: Settings, adapters: Mapping[str, CrmAdapter]) -> None:
    """Refuse (ConfigError) a section with `order_stages` whose adapter has no order
    operations: it would take order events it can never deliver."""
    for name, adapter in adapters.items():
        config = settings.file.crm[name]
        if config.takes_orders and order_adapter(adapter) is None:
            raise ConfigError(
                f"crm.{name}: order_stages is set, but the {config.kind} adapter takes no"
                " orders: remove order_stages from that section"
            )
