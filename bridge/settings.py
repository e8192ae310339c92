"""Settings, built once at start and passed down; nothing reads the environment later.

Two sources, as SPEC §11 asks:
- the environment (or `.env`): secrets and simple knobs, documented in `env.example`;
- a TOML file (`CONFIG_FILE`): the structured mappings — per-CRM pipelines, rules,
  field ids, enum maps, templates.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from dotenv import dotenv_values
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bridge.domain import OrderStatus
from bridge.errors import ConfigError
from bridge.sources.config import SourceConfig, check_source_names

DEFAULT_NOTE_TEMPLATE = """Оплата проведена

Имя клиента: {client_name}
Дата/время: {paid_at_local} ({display_timezone_label})
Дата/время UTC: {paid_at_utc}
Статус: {status}
Сумма: {amount} {currency}
Метод оплаты: {payment_method}
Курсы:
{courses}
Промокод: {promo_code}
{contacts_line}
Источник: {utm_source}
Invoice ID: {invoice_id}
Payment ID: {payment_id}"""

DEFAULT_DEAL_NAME_TEMPLATE = "Оплата {subject} - {client_name}"

# The note an applied order event leaves on its deal (bridge.order_rules): what changed.
# Lines whose placeholders are all empty drop out, like the payment note's; the marker
# line "Order event: <id> <updated_at>" is added when the template leaves it out.
DEFAULT_ORDER_NOTE_TEMPLATE = """Заказ {order_id}: {event_label}
{changes}
Позиции:
{items}
Монтаж: {installation_date}
Демонтаж: {dismantle_date}
Доставка: {delivery}
Комментарий: {comment}
Order event: {order_event}"""

DEFAULT_ORDER_DEAL_NAME_TEMPLATE = "Заказ {order_id} - {client_name}"

# Retry delays of SPEC §3: ~1 min, 5 min, 30 min, 2 h, 6 h, then every 12 h up to 3 days.
DEFAULT_RETRY_SCHEDULE = (60, 300, 1800, 7200, 21600, 43200, 43200, 43200, 43200, 43200, 43200)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PipelineRule(_Strict):
    """New deals whose UTM `field` contains any of `contains` go to pipeline/status."""

    utm_field: Literal["source", "medium", "campaign", "term", "content"]
    contains: tuple[str, ...]
    pipeline_id: str
    status_id: str
    name: str = ""

    @field_validator("pipeline_id", "status_id", mode="before")
    @classmethod
    def _id_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, int) else value


class PipelineTarget(_Strict):
    pipeline_id: str
    status_id: str
    name: str = ""

    @field_validator("pipeline_id", "status_id", mode="before")
    @classmethod
    def _id_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, int) else value


class DealFieldIds(_Strict):
    """Custom-field ids on the deal; a field left out is simply not written."""

    subjects: str | None = None  # multiselect, enum ids from `subjects`
    direction: str | None = None  # select, enum ids from `directions`
    last_payment_amount: str | None = None  # numeric
    last_payment_at: str | None = None  # date/time
    payment_id: str | None = None  # text; also the crash-window marker (SPEC §3)
    invoice_id: str | None = None  # text
    total_paid: str | None = None  # numeric, incremented
    purchase_count: str | None = None  # numeric, incremented
    utm_source: str | None = None
    utm_medium: str | None = None
    utm_campaign: str | None = None
    utm_term: str | None = None
    utm_content: str | None = None

    @field_validator("*", mode="before")
    @classmethod
    def _id_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, int) else value


class ContactFieldIds(_Strict):
    telegram_id: str | None = None
    telegram_username: str | None = None

    @field_validator("*", mode="before")
    @classmethod
    def _id_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, int) else value


class OrderStage(_Strict):
    """Where an order in one status belongs: `[crm.NAME.order_stages] reserved = {…}`."""

    pipeline_id: str
    status_id: str

    @field_validator("pipeline_id", "status_id", mode="before")
    @classmethod
    def _id_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, int) else value


class OrderFieldIds(_Strict):
    """Deal fields an order writes (`[crm.NAME.order_fields]`), and where a company's INN
    lives when the CRM has no INN field of its own."""

    order_id: str | None = None  # text; also how a lost order → deal link is found again
    order_status: str | None = None  # text: the platform's status name
    installation_date: str | None = None  # date
    dismantle_date: str | None = None  # date
    delivery_method: str | None = None  # text
    delivery_address: str | None = None  # text
    comment: str | None = None  # text
    company_inn: str | None = None  # a company field; CRMs with a built-in INN ignore it

    @field_validator("*", mode="before")
    @classmethod
    def _id_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, int) else value


class CrmConfig(_Strict):
    """One CRM section of the TOML file: `[crm.<name>]`."""

    kind: str = "amocrm"  # a key of `bridge.crm.BUILDERS`
    enabled: bool = True
    base_url: str
    # "minted": the adapter mints sessions from credentials in the environment (Salesforce's
    # JWT bearer or client credentials): no refresh token, nothing stored, no `crm-bridge auth`.
    auth: Literal["long_lived_token", "oauth", "minted"] = "long_lived_token"
    rate_limit_per_second: float = Field(default=6.5, gt=0)
    request_timeout_seconds: float = Field(default=15.0, gt=0)
    # How long a write whose answer was lost (timeout, dropped connection) is given to
    # land before the remote state is looked at again; never less than the request
    # timeout. A CRM that queues work applies it after the bridge stopped waiting.
    late_write_seconds: float = Field(default=120.0, gt=0)
    # Due payments of different customers one batch call may carry, where the CRM has
    # batch forms (issue 20); 1 turns batching off. The CRM's own limit caps it.
    batch_size: int = Field(default=50, ge=1, le=250)
    closed_status_ids: tuple[str, ...] = ("142", "143")
    excluded_status_ids: tuple[str, ...] = ()
    pipeline_rules: tuple[PipelineRule, ...] = ()
    default_pipeline: PipelineTarget
    deal_fields: DealFieldIds = DealFieldIds()
    contact_fields: ContactFieldIds = ContactFieldIds()
    subjects: dict[str, int | str] = Field(default_factory=dict)  # subject name → enum id
    directions: dict[str, int | str] = Field(default_factory=dict)  # ЕГЭ/ОГЭ → enum id
    # Orders (SPEC §8): order status (`new`, `reserved`, …) → stage; the section takes
    # orders only when every status is mapped (settings refuse a partial map).
    order_stages: dict[str, OrderStage] = Field(default_factory=dict)
    order_fields: OrderFieldIds = OrderFieldIds()
    # The CRM's product catalog where its deal items must be catalog products (amoCRM).
    order_catalog_id: str | None = None
    # Settings only one kind of CRM understands (e.g. Pipedrive's daily token budget);
    # each adapter documents and validates its own.
    options: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        from bridge.crm import BUILDERS  # late: the registry imports this module

        if value not in BUILDERS:
            raise ValueError(f"Input should be one of {', '.join(map(repr, BUILDERS))}")
        return value

    @field_validator("base_url")
    @classmethod
    def _absolute_url(cls, value: str) -> str:
        # httpx would take `example.amocrm.ru` as a path and fail on every call instead.
        # Empty is allowed: a CRM whose host follows from other settings (Zoho's data
        # centre) derives it; the connection refuses an empty one for every other CRM.
        if not value:
            return value
        scheme, sep, rest = value.partition("://")
        if not sep or scheme.lower() not in ("http", "https") or not rest.strip("/"):
            raise ValueError(f"{value!r} needs a scheme and a host, e.g. https://{value or 'x'}")
        return value

    @field_validator("order_stages")
    @classmethod
    def _every_status_mapped(cls, value: dict[str, OrderStage]) -> dict[str, OrderStage]:
        known = {status.value for status in OrderStatus}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(
                f"unknown order status {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        missing = sorted(known - set(value)) if value else []
        if missing:
            raise ValueError(f"every order status needs a stage; missing: {', '.join(missing)}")
        return value

    @field_validator("order_catalog_id", mode="before")
    @classmethod
    def _catalog_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, int) else value

    @property
    def takes_orders(self) -> bool:
        return bool(self.order_stages)

    def deal_field_ids(self) -> tuple[str, ...]:
        """Every configured deal field (payments' and orders'): what an adapter reads back
        with a deal, so the flow can see the payment-id and order-id markers."""
        orders = self.order_fields.model_dump(exclude={"company_inn"})  # a company's field
        ids = [*self.deal_fields.model_dump().values(), *orders.values()]
        return tuple(dict.fromkeys(field for field in ids if field))

    @field_validator("closed_status_ids", "excluded_status_ids", mode="before")
    @classmethod
    def _ids_as_text(cls, value: object) -> object:
        if isinstance(value, list | tuple):
            return tuple(str(item) for item in value)
        return value


class PaymentRules(_Strict):
    processed_statuses: tuple[str, ...] = ("CONFIRMED",)
    note_template: str = DEFAULT_NOTE_TEMPLATE
    deal_name_template: str = DEFAULT_DEAL_NAME_TEMPLATE


class OrderRules(_Strict):
    """`[order]`: the texts an order writes (SPEC §8); stages and fields are per CRM."""

    note_template: str = DEFAULT_ORDER_NOTE_TEMPLATE
    deal_name_template: str = DEFAULT_ORDER_DEAL_NAME_TEMPLATE


class FileConfig(_Strict):
    """The TOML file's whole content."""

    payment: PaymentRules = PaymentRules()
    order: OrderRules = OrderRules()
    crm: dict[str, CrmConfig] = Field(default_factory=dict)
    # Other platforms' webhooks (bridge.sources), each at POST /webhook/source/NAME.
    source: dict[str, SourceConfig] = Field(default_factory=dict)

    @field_validator("source")
    @classmethod
    def _source_names(cls, value: dict[str, SourceConfig]) -> dict[str, SourceConfig]:
        check_source_names(value)
        return value


class Settings(BaseSettings):
    """Environment settings plus the parsed TOML file (`file`)."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    config_file: Path = Path("etc/bridge.example.toml")
    database_path: Path = Path("db/bridge.sqlite")
    host: str = "127.0.0.1"
    port: int = 8080
    log_level: str = "INFO"

    wait_seconds: float = Field(default=5.0, ge=0)
    create_if_not_found: bool = True
    platform_timezone: str = "Europe/Moscow"
    display_timezone: str = "Europe/Moscow"
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    # HTTP limits (bridge.server, README "Decisions"): they bound what one client can hold.
    header_timeout_seconds: float = Field(default=10.0, gt=0)
    body_timeout_seconds: float = Field(default=30.0, gt=0)
    keep_alive_seconds: int = Field(default=5, ge=1)
    max_connections: int = Field(default=256, ge=1)
    # Peers whose X-Forwarded-For / X-Forwarded-Proto are believed: the reverse proxy only.
    forwarded_allow_ips: str = "127.0.0.1,::1"

    # Comma-separated, so several can be active at once during a rotation.
    webhook_secrets: Annotated[tuple[SecretStr, ...], NoDecode] = ()
    standard_webhook_secrets: Annotated[tuple[SecretStr, ...], NoDecode] = ()
    legacy_secret_header_enabled: bool = False

    bridge_secret_key: Annotated[tuple[SecretStr, ...], NoDecode] = ()

    amocrm_access_token: SecretStr | None = None
    amocrm_client_id: str = ""
    amocrm_client_secret: SecretStr | None = None
    amocrm_redirect_uri: str = ""
    amocrm_refresh_token: SecretStr | None = None

    hubspot_access_token: SecretStr | None = None
    hubspot_client_id: str = ""
    hubspot_client_secret: SecretStr | None = None
    hubspot_redirect_uri: str = ""
    hubspot_refresh_token: SecretStr | None = None

    pipedrive_api_token: SecretStr | None = None
    pipedrive_client_id: str = ""
    pipedrive_client_secret: SecretStr | None = None
    pipedrive_redirect_uri: str = ""
    pipedrive_refresh_token: SecretStr | None = None

    bitrix24_webhook_url: SecretStr | None = None
    bitrix24_client_id: str = ""
    bitrix24_client_secret: SecretStr | None = None
    bitrix24_refresh_token: SecretStr | None = None

    # Salesforce mints sessions (JWT bearer or client credentials): no tokens are stored.
    salesforce_client_id: str = ""  # the External Client App's consumer key
    salesforce_client_secret: SecretStr | None = None  # client_credentials only
    salesforce_private_key_file: str = ""  # jwt_bearer: the path of the RSA key, PEM
    odoo_api_key: SecretStr | None = None
    # Megaplan: an application token, or the rotating pair of its password grant.
    megaplan_access_token: SecretStr | None = None
    megaplan_refresh_token: SecretStr | None = None

    retry_schedule_seconds: Annotated[tuple[float, ...], NoDecode] = DEFAULT_RETRY_SCHEDULE
    worker_concurrency: int = Field(default=8, ge=1)
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)
    pause_probe_seconds: float = Field(default=30.0, gt=0)

    # Alerts (bridge.alerts): a Telegram chat and/or a signed webhook.
    alert_telegram_bot_token: SecretStr | None = None
    alert_telegram_chat_id: str = ""
    alert_webhook_url: str = ""
    alert_webhook_secret: SecretStr | None = None
    alert_min_interval_seconds: float = Field(default=900.0, ge=0)
    alert_queue_age_seconds: float = Field(default=3600.0, ge=0)  # 0: never

    file: FileConfig = FileConfig()
    # Secrets of configured CRMs by derived name (`crm_secrets`), gathered once at start
    # from the environment and `.env`: their names depend on the TOML file's sections.
    crm_env: dict[str, SecretStr] = Field(default_factory=dict)

    # Back-sync (bridge.backsync): where order status changes made in a CRM are sent,
    # signed with Standard Webhooks headers; empty URL: back-sync off.
    platform_callback_url: str = ""
    platform_callback_secret: SecretStr | None = None

    @property
    def enabled_crms(self) -> tuple[str, ...]:
        """The CRMs every event is delivered to, in configuration order."""
        return tuple(name for name, crm in self.file.crm.items() if crm.enabled)

    @property
    def order_crms(self) -> tuple[str, ...]:
        """The CRMs every order event is delivered to: enabled, with `order_stages`."""
        return tuple(
            name for name, crm in self.file.crm.items() if crm.enabled and crm.takes_orders
        )

    @field_validator(
        "webhook_secrets", "standard_webhook_secrets", "bridge_secret_key", mode="before"
    )
    @classmethod
    def _split_secrets(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(SecretStr(part.strip()) for part in value.split(",") if part.strip())
        return value

    @field_validator("retry_schedule_seconds", mode="before")
    @classmethod
    def _split_schedule(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(float(part) for part in value.split(",") if part.strip())
        return value


def secret_value(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


SECRET_SUFFIXES = (
    "ACCESS_TOKEN",
    "API_TOKEN",
    "API_KEY",
    "WEBHOOK_URL",
    "CLIENT_ID",
    "CLIENT_SECRET",
    "REDIRECT_URI",
    "REFRESH_TOKEN",
    "PRIVATE_KEY_FILE",
    "SOURCE_SECRETS",  # `[source.NAME]`'s: NAME_SOURCE_SECRETS (bridge.sources.auth)
    "EVENT_SECRETS",  # back-sync: what a CRM's events are checked against (bridge.backsync)
)
_SECRET_NAME = re.compile(rf"[A-Z0-9_]+_(?:{'|'.join(SECRET_SUFFIXES)})")


def is_crm_secret_name(name: str) -> bool:
    """Whether `name` is read as a CRM section's secret (`<PREFIX>_<SUFFIX>`)."""
    return _SECRET_NAME.fullmatch(name) is not None


@dataclass(frozen=True)
class CrmSecrets:
    """One configured CRM's secrets. `[crm.NAME]` reads `<PREFIX>_<SUFFIX>`, PREFIX being
    NAME upper-cased with anything but letters and digits as `_` (`[crm.amo-sandbox]` →
    `AMO_SANDBOX_ACCESS_TOKEN`). `token_name` is the kind's long-lived secret (ACCESS_TOKEN,
    Pipedrive's API_TOKEN, Bitrix24's WEBHOOK_URL, Odoo's API_KEY, the path of
    Salesforce's PRIVATE_KEY_FILE)."""

    prefix: str
    token_name: str
    token: str | None = None
    client_id: str = ""
    client_secret: str | None = None
    redirect_uri: str = ""
    refresh_token: str | None = None

    def var(self, suffix: str) -> str:
        """The environment variable holding one of these secrets (for messages)."""
        return f"{self.prefix}_{suffix}"


def secret_prefix(name: str) -> str:
    return re.sub(r"[^A-Z0-9]", "_", name.upper())


def crm_secrets(settings: Settings, name: str, token_name: str) -> CrmSecrets:
    """The secrets of `[crm.NAME]`: derived variables first; a section named like its kind
    also reads the settings fields of that kind (today's `AMOCRM_ACCESS_TOKEN`, ...)."""
    prefix = secret_prefix(name)
    config = settings.file.crm.get(name)
    legacy = config is not None and config.kind == name

    def value(suffix: str) -> str | None:
        derived = settings.crm_env.get(f"{prefix}_{suffix}")
        if derived is not None:
            return derived.get_secret_value() or None
        raw = getattr(settings, f"{name}_{suffix.lower()}", None) if legacy else None
        return raw.get_secret_value() if isinstance(raw, SecretStr) else raw or None

    return CrmSecrets(
        prefix=prefix,
        token_name=token_name,
        token=value(token_name),
        client_id=value("CLIENT_ID") or "",
        client_secret=value("CLIENT_SECRET"),
        redirect_uri=value("REDIRECT_URI") or "",
        refresh_token=value("REFRESH_TOKEN"),
    )


def _crm_environment(env_file: Path) -> dict[str, SecretStr]:
    """Every variable named like a CRM secret, from `.env` then the environment (which
    wins, as for every other setting)."""
    found = {**dotenv_values(env_file), **os.environ} if env_file.exists() else dict(os.environ)
    return {
        key: SecretStr(value)
        for key, value in found.items()
        if value is not None and _SECRET_NAME.fullmatch(key)
    }


def load_file_config(path: Path) -> FileConfig:
    """Parse and validate the TOML file; errors name the file and the key."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: file not found") from exc
    except OSError as exc:  # a directory, no permission, an I/O error: one line, the file
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc.reason}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    try:
        return FileConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from exc


def load_settings(**overrides: object) -> Settings:
    """Environment + TOML file, validated. Tests pass overrides instead of env vars."""
    try:
        env_settings = Settings(**overrides)  # type: ignore[arg-type]
    except OSError as exc:
        env_file = overrides.get("_env_file", ".env")
        where = exc.filename or env_file
        raise ConfigError(f"{where}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        env_file = overrides.get("_env_file", ".env")
        raise ConfigError(f"{env_file}: not UTF-8 text: {exc.reason}") from exc
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']).upper()}: {error['msg']}"
            for error in exc.errors()
        )
        raise ConfigError(f"environment: {problems}") from exc
    if "crm_env" not in overrides:
        crm_env = _crm_environment(Path(".env"))
        env_settings = env_settings.model_copy(update={"crm_env": crm_env})
    if "file" in overrides:
        return env_settings
    file_config = load_file_config(env_settings.config_file)
    return env_settings.model_copy(update={"file": file_config})
