"""`[source.NAME]` sections: another platform's webhook, described by config alone.

A section says how the platform signs (`auth`), how its body is encoded (`format`), how
the body maps onto the canonical payment (`map`, `item`: JMESPath expressions), which
status values mean "paid" and what answer the platform expects. `preset = "yclients"`
starts from a shipped section (`bridge/sources/presets/`, linked as `etc/sources/`);
keys given in the section override the preset's.

Every expression is compiled when the file is loaded: a bad one stops `serve` and
`check` with the section, the key and the expression in the message.
"""

from __future__ import annotations

import json
import re
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jmespath
from jmespath import functions
from jmespath.exceptions import JMESPathError
from jmespath.parser import ParsedResult
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

PRESETS = Path(__file__).parent / "presets"
# A source's name is a path segment, a log field and part of every event key.
SOURCE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@lru_cache(maxsize=1024)
def compiled(expression: str) -> ParsedResult:
    """The parsed expression (a config holds a few dozen; parsed once each)."""
    return jmespath.compile(expression)


class _Functions(functions.Functions):
    """JMESPath's own functions, and `from_json`: some platforms send a field holding JSON
    as text (CloudPayments' `Data`): `from_json(Data).phone`. Text that is not JSON (or
    is over 64 KiB) gives null, as a missing field does."""

    @functions.signature({"types": ["string", "null"]})
    def _func_from_json(self, text: str | None) -> object:
        if text is None or len(text) > 65536:
            return None
        try:
            return json.loads(text)
        except (ValueError, RecursionError):
            return None


OPTIONS = jmespath.Options(custom_functions=_Functions())


def search(expression: str, document: object) -> object:
    return compiled(expression).search(document, options=OPTIONS)


def _expression(value: str | None) -> str | None:
    if value is None:
        return None
    if not value.strip():
        raise ValueError("empty expression")
    try:
        compiled(value)
    except JMESPathError as exc:
        # The parser's own message says where (column) and what it expected.
        reason = " ".join(str(exc).split())
        raise ValueError(f"expression {value!r} is not JMESPath: {reason}") from exc
    return value


class SourceAuth(_Strict):
    """How a request proves it comes from the platform. Secrets come from the environment
    (`<NAME>_SOURCE_SECRETS`, comma-separated: several during a rotation), never the file."""

    scheme: Literal["hmac", "standard", "query_token", "basic"]
    header: str = "X-Signature"  # hmac: the header carrying the signature
    encoding: Literal["hex", "base64"] = "hex"  # hmac: how the digest is written
    prefix: str = ""  # hmac: text before the digest, e.g. "sha256="
    query_param: str = "token"  # query_token: the URL parameter holding the secret
    tolerance_seconds: int = Field(default=300, ge=1)  # standard: timestamp window


class ItemMap(_Strict):
    """Expressions read from each element of `map.items`."""

    name: str | None = None
    subject: str | None = None
    direction: str | None = None
    cost: str | None = None
    lessons: str | None = None

    @field_validator("*")
    @classmethod
    def _compile(cls, value: str | None) -> str | None:
        return _expression(value)


class PaymentMap(_Strict):
    """Expressions over the decoded body for each canonical payment field."""

    id: str
    status: str
    amount: str | None = None  # else the sum of the items' costs
    currency: str | None = None
    paid_at: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    phone: str | None = None
    email: str | None = None
    telegram_id: str | None = None
    telegram_username: str | None = None
    invoice_id: str | None = None
    payment_method: str | None = None
    promo_code: str | None = None
    domain: str | None = None
    utm_source: str | None = None
    utm_medium: str | None = None
    utm_campaign: str | None = None
    utm_term: str | None = None
    utm_content: str | None = None
    items: str | None = None  # a list; each element is read with `[source.NAME.item]`

    @field_validator("*")
    @classmethod
    def _compile(cls, value: str | None) -> str | None:
        return _expression(value)


class SourceAnswer(_Strict):
    """What the platform is answered once its event is stored (or was already): some
    want a fixed body and 200 whatever became of the payment. Refusals (401, 400, 422,
    413, 503) keep the bridge's own codes."""

    code: int = Field(default=200, ge=200, le=299)
    body: dict[str, Any] = Field(default_factory=dict)
    duplicate_code: int | None = Field(default=None, ge=200, le=299)
    duplicate_body: dict[str, Any] | None = None


class SourceConfig(_Strict):
    """One `[source.NAME]` section, its preset merged in."""

    preset: str | None = None
    title: str = ""  # the platform's name, for people
    format: Literal["json", "form"] = "json"
    auth: SourceAuth
    paid_statuses: tuple[str, ...] = Field(min_length=1)
    # The zone of times written without one; empty: PLATFORM_TIMEZONE.
    timezone: str = ""
    map: PaymentMap
    item: ItemMap = ItemMap()
    answer: SourceAnswer | None = None  # None: the bridge's own answers, as /webhook/payment
    example: str | None = None  # a sample body `check` maps (a preset brings its own)

    @model_validator(mode="before")
    @classmethod
    def _merge_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("preset") is None:
            return data
        return merge(load_preset(str(data["preset"])), data)

    @field_validator("paid_statuses", mode="before")
    @classmethod
    def _statuses_as_text(cls, value: object) -> object:
        if isinstance(value, list | tuple):
            return tuple(str(item) for item in value)
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        if value:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @model_validator(mode="after")
    def _amount_readable(self) -> SourceConfig:
        if self.map.amount is None and (self.map.items is None or self.item.cost is None):
            raise ValueError("map.amount, or map.items with item.cost, must say what was paid")
        return self


def load_preset(name: str) -> dict[str, Any]:
    path = PRESETS / f"{name}.toml"
    if not SOURCE_NAME.fullmatch(name) or not path.is_file():
        known = ", ".join(sorted(p.stem for p in PRESETS.glob("*.toml")))
        raise ValueError(f"unknown preset {name!r} (shipped: {known})")
    with path.open("rb") as file:
        return tomllib.load(file)


def preset_example(name: str) -> Path | None:
    """The sample body shipped with a preset (recorded from the vendor's documentation)."""
    for path in sorted(PRESETS.glob(f"{name}.example.*")):
        return path
    return None


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` over `base`, tables merged key by key."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def check_source_names(sources: dict[str, SourceConfig]) -> None:
    for name in sources:
        if not SOURCE_NAME.fullmatch(name):
            raise ValueError(
                f"source name {name!r}: 1 to 32 of a-z, 0-9, _ and -, starting with a letter"
                " or digit (it is the path /webhook/source/NAME)"
            )
