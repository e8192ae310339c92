"""`crm-bridge check`: is this installation ready to take webhooks? (SPEC §10)

In order: the settings (webhook secrets, time zones, templates, BRIDGE_SECRET_KEY), the
database (opens, migrates, takes a write, stored tokens decrypt), then every enabled CRM:
reachable and authorised (its schema is read), and every id the config names exists
there (`crmconfig.schema_problems`). The config file itself was validated when the
settings were loaded. Each finding is a line; any `problem` makes the command fail.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
from dotenv import dotenv_values

from bridge import order_rules, rules, servelock
from bridge.backsync.config import callback_target, event_secrets, event_secrets_var
from bridge.backsync.inbound import sends_events
from bridge.crm import build_adapter as build_crm_adapter
from bridge.crm import check_order_sections
from bridge.crm.base import CrmAdapter
from bridge.crmconfig import schema_problems
from bridge.crypto import TokenCipher
from bridge.errors import AuthError, BridgeError, ConfigError, CrmError, StoreUnavailable
from bridge.settings import Settings, is_crm_secret_name, secret_prefix
from bridge.signing import standard_secret_key
from bridge.sources.checks import source_findings
from bridge.staleness import stale_config
from bridge.store import Store
from bridge.tokens import TokenRepository

Transports = Mapping[str, httpx.AsyncBaseTransport]
# The running bridge's worker tries a paused CRM again this often.
PAUSE_PROBE_SECONDS = 30


@dataclass(frozen=True)
class Finding:
    level: Literal["ok", "warning", "problem"]
    text: str


def ok(text: str) -> Finding:
    return Finding("ok", text)


def warning(text: str) -> Finding:
    return Finding("warning", text)


def problem(text: str) -> Finding:
    return Finding("problem", text)


def build_adapter(
    name: str,
    settings: Settings,
    tokens: TokenRepository,
    transports: Transports | None = None,
    clock: Callable[[], float] = time.time,
) -> CrmAdapter:
    """The adapter of `[crm.NAME]` (enabled or not), for check, discover and auth."""
    config = settings.file.crm.get(name)
    if config is None:
        known = ", ".join(settings.file.crm) or "none"
        raise ConfigError(f"{settings.config_file}: no [crm.{name}] section (configured: {known})")
    transport = (transports or {}).get(name)
    return build_crm_adapter(name, config, settings, tokens, transport=transport, clock=clock)


def backsync_findings(settings: Settings) -> list[Finding]:
    """Back-sync (issue 19): the platform's callback, and each section that would take
    events but has no secret to check them against (every event would be 401)."""
    try:
        target = callback_target(settings)
    except ConfigError as exc:
        return [problem(str(exc))]
    if target is None:
        return []
    host = target.url.partition("://")[2].split("/", 1)[0]
    sections = [
        name
        for name, crm in settings.file.crm.items()
        if crm.enabled and crm.takes_orders and sends_events(crm.kind)
    ]
    found = [ok(f"back-sync: callbacks to {host}; CRM events from {', '.join(sections) or 'none'}")]
    for name in sections:
        if not event_secrets(settings, name):
            found.append(
                warning(
                    f"{event_secrets_var(name)} is not set: every event of {name} would be"
                    " answered 401 (README, Back-sync)"
                )
            )
    return found


def settings_findings(settings: Settings, *, require_secret: bool = False) -> list[Finding]:
    """What can be told from the settings alone. `require_secret` (check): no webhook
    secret at all is a problem; `serve` still starts without one (every webhook 401)."""
    crms = settings.file.crm
    enabled = [name for name, crm in crms.items() if crm.enabled]
    found = [ok(f"config {settings.config_file}: CRMs {', '.join(enabled) or 'none enabled'}")]
    if not enabled:
        found.append(warning("no CRM enabled: webhooks are stored but delivered nowhere"))
    hmac_n, standard_n = len(settings.webhook_secrets), len(settings.standard_webhook_secrets)
    if hmac_n + standard_n == 0:
        # An installation that takes only other platforms' webhooks needs none.
        found.append(
            (problem if require_secret and not settings.file.source else warning)(
                "no WEBHOOK_SECRETS or STANDARD_WEBHOOK_SECRETS: every webhook would be"
                " answered 401"
            )
        )
    else:
        found.append(ok(f"webhook secrets: {hmac_n} HMAC, {standard_n} Standard Webhooks"))
    for index, secret in enumerate(settings.standard_webhook_secrets, start=1):
        try:
            standard_secret_key(secret.get_secret_value())
        except ValueError as exc:
            found.append(problem(f"STANDARD_WEBHOOK_SECRETS #{index}: {exc}"))
    if settings.legacy_secret_header_enabled and not hmac_n:
        found.append(problem("LEGACY_SECRET_HEADER_ENABLED needs WEBHOOK_SECRETS"))
    for key, zone in (
        ("PLATFORM_TIMEZONE", settings.platform_timezone),
        ("DISPLAY_TIMEZONE", settings.display_timezone),
    ):
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            found.append(problem(f"{key} = {zone}: unknown time zone"))
    payment = settings.file.payment
    for key, template, names in (
        ("deal_name_template", payment.deal_name_template, rules.DEAL_NAME_PLACEHOLDERS),
        ("note_template", payment.note_template, rules.NOTE_PLACEHOLDERS),
    ):
        found += [problem(f"payment.{key}: {p}") for p in rules.template_problems(template, names)]
    found += [
        Finding(level, text)
        for level, text in source_findings(settings, require_secret=require_secret)
    ]
    found += order_findings(settings)
    found += backsync_findings(settings)
    oauth = [name for name in enabled if crms[name].auth == "oauth"]
    if settings.bridge_secret_key:
        try:
            TokenCipher([key.get_secret_value() for key in settings.bridge_secret_key])
            found.append(ok(f"BRIDGE_SECRET_KEY: {len(settings.bridge_secret_key)} key(s)"))
        except ConfigError as exc:
            found.append(problem(str(exc)))
    elif oauth:
        found.append(
            problem(
                f"BRIDGE_SECRET_KEY is not set, but {', '.join(oauth)} use(s) OAuth: generate"
                " one with `crm-bridge rotate-key --generate`"
            )
        )
    return found


async def run_checks(
    settings: Settings,
    *,
    transports: Transports | None = None,
    clock: Callable[[], float] = time.time,
    env_file: Path | None = None,
) -> list[Finding]:
    found = settings_findings(settings, require_secret=True)
    found += env_file_findings(env_file, settings.file.crm)
    cipher = _cipher_or_none(settings)
    path = settings.database_path
    created = "" if path.exists() else " (created)"
    try:
        store = await Store.open(path, clock=clock, cipher=cipher)
    except StoreUnavailable as exc:
        return [*found, problem(str(exc)), problem("CRMs not checked: no database")]
    try:
        await store.check_writable()
        version = await store.schema_version()
        found.append(ok(f"database {path}{created}: schema {version}, writable"))
        found += await _token_findings(store, settings, cipher)
        states = await store.crm_states()
        holds = await store.holds()
        serving = servelock.running_pid(path) is not None
        stale = await stale_config(store, settings)
        if stale:
            found.append(warning(stale))
        for name, config in settings.file.crm.items():
            if not config.enabled:
                found.append(ok(f"crm.{name}: disabled, not checked"))
                continue
            found += await crm_findings(name, settings, store, transports, clock)
            paused = states.get(name)
            if paused is not None and paused.paused_reason:
                found.append(
                    warning(
                        f"crm.{name}: the running bridge paused it ({paused.paused_reason});"
                        f" it tries again every {PAUSE_PROBE_SECONDS} s"
                        if serving
                        else f"crm.{name}: paused when the bridge last ran"
                        f" ({paused.paused_reason}); it tries again when it starts"
                    )
                )
            hold = holds.get(name)
            if hold is not None:
                found.append(
                    warning(
                        f"crm.{name}: paused by {hold.by} at {hold.at} UTC ({hold.reason});"
                        f" deliveries wait until `crm-bridge resume {name}`"
                    )
                )
    except StoreUnavailable as exc:
        found.append(problem(str(exc)))
    finally:
        await store.close()
    return found


async def crm_findings(
    name: str,
    settings: Settings,
    tokens: TokenRepository,
    transports: Transports | None = None,
    clock: Callable[[], float] = time.time,
) -> list[Finding]:
    """Reachable, authorised, and every configured id present in this CRM."""
    adapter = build_adapter(name, settings, tokens, transports, clock)
    try:
        check_order_sections(settings, {name: adapter})
    except ConfigError as exc:  # order_stages in a section whose CRM takes no orders
        await adapter.connection.aclose()
        return [problem(str(exc))]
    try:
        schema = await adapter.schema()
    except AuthError as exc:
        return [problem(f"crm.{name}: {exc.message}")]
    except CrmError as exc:
        return [problem(f"crm.{name}: cannot read its pipelines and fields: {exc.message}")]
    except BridgeError as exc:  # stored tokens that cannot be read
        return [problem(f"crm.{name}: not authorised: {exc}")]
    finally:
        await adapter.connection.aclose()
    found = [
        ok(
            f"crm.{name}: reachable and authorised ({len(schema.pipelines)} pipelines,"
            f" {len(schema.fields)} custom fields)"
        )
    ]
    config = settings.file.crm[name]
    problems = schema_problems(name, config, schema)
    found += [problem(str(p)) for p in problems]
    if not problems:
        found.append(ok(f"crm.{name}: every configured pipeline, status, field and enum id exists"))
    return found


async def _token_findings(
    store: Store, settings: Settings, cipher: TokenCipher | None
) -> list[Finding]:
    stored = await store.token_ciphertexts()
    if not stored:
        return []
    if cipher is None:
        return [problem(f"tokens stored for {', '.join(stored)} but BRIDGE_SECRET_KEY is not set")]
    found: list[Finding] = []
    for crm in stored:
        try:
            pair = await store.load_tokens(crm)
        except ConfigError as exc:
            found.append(problem(f"stored tokens of {crm}: {exc}"))
            continue
        if pair is not None and crm not in settings.file.crm:
            found.append(warning(f"tokens stored for {crm}, which is not in the config"))
    return found or [ok(f"stored tokens decrypt: {', '.join(stored)}")]


def _cipher_or_none(settings: Settings) -> TokenCipher | None:
    try:
        keys = [key.get_secret_value() for key in settings.bridge_secret_key]
        return TokenCipher(keys) if keys else None
    except ConfigError:
        return None  # reported by settings_findings


def env_file_findings(env_file: Path | None, sections: Iterable[str] = ()) -> list[Finding]:
    """Keys in the environment file the bridge does not know: a typo is otherwise
    silently ignored and its setting left at the default. A secret of one of the TOML
    file's `sections` (`<PREFIX>_<SUFFIX>`, see `crm_secrets`) is known."""
    prefixes = tuple(f"{secret_prefix(name)}_" for name in sections)
    path = env_file if env_file is not None else Path(".env")
    try:
        values = dotenv_values(path) if path.is_file() else {}
    except (OSError, UnicodeDecodeError) as exc:
        return [problem(f"{path}: cannot read: {exc}")]
    known = {name.upper() for name in Settings.model_fields if name != "file"}
    found: list[Finding] = []
    for key in values:
        if key.upper() in known or (is_crm_secret_name(key) and key.startswith(prefixes)):
            continue
        close = difflib.get_close_matches(key.upper(), sorted(known), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        found.append(warning(f"{path}: unknown key {key}{hint}: it is ignored"))
    return found


def order_findings(settings: Settings) -> list[Finding]:
    """The `[order]` texts, and the order-id field every section taking orders needs: it
    is how a deal whose link was lost to a crash is found again instead of made twice."""
    order = settings.file.order
    found = [
        problem(f"order.{key}: {p}")
        for key, template, names in (
            (
                "deal_name_template",
                order.deal_name_template,
                order_rules.ORDER_DEAL_NAME_PLACEHOLDERS,
            ),
            ("note_template", order.note_template, order_rules.ORDER_NOTE_PLACEHOLDERS),
        )
        for p in rules.template_problems(template, names)
    ]
    for name, crm in settings.file.crm.items():
        if crm.enabled and crm.takes_orders and not crm.order_fields.order_id:
            found.append(
                problem(
                    f"crm.{name}: takes orders (order_stages) but has no order_fields.order_id:"
                    " a deal field (text) for the order id is needed"
                )
            )
    return found
