"""`systemctl reload crm-bridge` (SIGHUP): re-read the config, validate, swap or refuse.

The new settings are loaded and checked exactly as `serve` checks them at start; on any
problem the reload is refused with the reason (one ERROR line) and the bridge goes on
with what it had. Otherwise new adapters are built and swapped in at once, between two
statements on the event loop, so every request and every delivery sees either the old
config or the new one whole: deliveries already running finish with the adapter and
config they started with, and the old adapters are closed once they are done.

What a reload cannot change is refused, not half-applied: the database, the listen
address and port, the server's connection limits (a restart does those).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from bridge.checks import settings_findings
from bridge.crm import build_adapters
from bridge.crm.base import CrmAdapter
from bridge.errors import BridgeError
from bridge.settings import Settings

if TYPE_CHECKING:
    from bridge.app import Runtime

log = logging.getLogger("bridge.reload")

Loader = Callable[[], Settings]
# What needs a restart: (attribute, what to call it in the refusal).
# The server's own connection limits (bridge.server) are set when it starts, too.
_FIXED = (
    ("database_path", "DATABASE_PATH"),
    ("host", "HOST"),
    ("port", "PORT"),
    ("header_timeout_seconds", "HEADER_TIMEOUT_SECONDS"),
    ("body_timeout_seconds", "BODY_TIMEOUT_SECONDS"),
    ("keep_alive_seconds", "KEEP_ALIVE_SECONDS"),
    ("max_connections", "MAX_CONNECTIONS"),
    ("forwarded_allow_ips", "FORWARDED_ALLOW_IPS"),
)


async def reload_runtime(rt: Runtime, load: Loader) -> bool:
    """Load, validate and swap in new settings; False (and one log line) when refused."""
    try:
        settings = load()
    except BridgeError as exc:
        log.error("reload refused, still running on the previous config: %s", exc)
        return False
    problems = [f.text for f in settings_findings(settings) if f.level == "problem"]
    for attribute, name in _FIXED:
        if getattr(settings, attribute) != getattr(rt.settings, attribute):
            problems.append(f"{name} changed: that needs a restart")
    if problems:
        log.error("reload refused, still running on the previous config: %s", "; ".join(problems))
        return False
    try:
        adapters = build_adapters(
            settings, rt.store, transports=rt.transports, on_call=rt.metrics.observe_call
        )
    except BridgeError as exc:
        log.error("reload refused, still running on the previous config: %s", exc)
        return False
    old = dict(rt.adapters)
    running = list(rt.worker.running_tasks())
    # The swap: no await between these lines.
    rt.settings = settings
    rt.adapters = adapters
    rt.hmac_secrets = tuple(s.get_secret_value() for s in settings.webhook_secrets)
    rt.standard_secrets = tuple(s.get_secret_value() for s in settings.standard_webhook_secrets)
    rt.worker.reconfigure(settings, adapters)
    if rt.alerter is not None:
        rt.alerter.settings = settings
    rt.config_loaded_at = time.time()
    asyncio.get_running_loop().create_task(_close_when_done(old, running))
    await rt.worker.recheck_credentials()
    if rt.on_reloaded is not None:
        await rt.on_reloaded(rt.store, settings)
    log.warning(
        "config reloaded from %s: CRMs %s", settings.config_file, ", ".join(adapters) or "none"
    )
    return True


async def _close_when_done(
    adapters: Mapping[str, CrmAdapter], running: list[asyncio.Task[None]]
) -> None:
    if running:
        await asyncio.wait(running)
    for adapter in adapters.values():
        try:
            await adapter.connection.aclose()
        except Exception:  # closing a client must not end the bridge
            log.exception("closing a replaced adapter failed")
