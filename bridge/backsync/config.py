"""What back-sync reads from the settings.

Environment:
- `PLATFORM_CALLBACK_URL`: where `order.status_changed` goes (empty: back-sync off);
- `PLATFORM_CALLBACK_SECRET`: its Standard Webhooks secret, `whsec_<base64>` (or text);
- per CRM section `[crm.NAME]`, `<PREFIX>_EVENT_SECRETS` (PREFIX as for the section's
  other secrets, `bridge.settings.crm_secrets`), comma-separated for rotation: amoCRM's
  URL tokens, Bitrix24's application tokens, HubSpot's app secrets (default: the
  section's `CLIENT_SECRET`, which is what HubSpot signs with), Pipedrive's
  `user:password` pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.errors import ConfigError
from bridge.settings import Settings, crm_secrets, secret_prefix, secret_value
from bridge.signing import standard_secret_key

EVENT_SECRETS_SUFFIX = "EVENT_SECRETS"


@dataclass(frozen=True)
class CallbackTarget:
    url: str
    secret: str


def callback_target(settings: Settings) -> CallbackTarget | None:
    """The platform's callback, None when back-sync is not configured. ConfigError (naming
    the variable, never its value) when half of it is set or the secret is unusable."""
    url = settings.platform_callback_url.strip()
    secret = secret_value(settings.platform_callback_secret) or ""
    if not url and not secret:
        return None
    if not url or not secret:
        missing = "PLATFORM_CALLBACK_URL" if not url else "PLATFORM_CALLBACK_SECRET"
        raise ConfigError(f"environment: {missing} is needed for back-sync callbacks")
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("http", "https") or not rest.strip("/"):
        raise ConfigError("environment: PLATFORM_CALLBACK_URL needs a scheme and a host")
    try:
        standard_secret_key(secret)
    except ValueError as exc:
        raise ConfigError(f"environment: PLATFORM_CALLBACK_SECRET: {exc}") from exc
    return CallbackTarget(url, secret)


def event_secrets_var(name: str) -> str:
    return f"{secret_prefix(name)}_{EVENT_SECRETS_SUFFIX}"


def event_secrets(settings: Settings, name: str) -> tuple[str, ...]:
    """The active secrets events of `[crm.NAME]` are checked against (empty: none, and
    every event is refused)."""
    raw = settings.crm_env.get(event_secrets_var(name))
    values = tuple(
        part.strip() for part in (raw.get_secret_value() if raw else "").split(",") if part.strip()
    )
    if values:
        return values
    config = settings.file.crm.get(name)
    if config is not None and config.kind == "hubspot":
        client_secret = crm_secrets(settings, name, "ACCESS_TOKEN").client_secret
        return (client_secret,) if client_secret else ()
    return ()
