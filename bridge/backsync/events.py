"""The values back-sync speaks, whatever CRM an event came from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True)
class InboundRequest:
    """A CRM's request as the route received it.

    `url` is the full public URL the CRM called (scheme, host, path and query): HubSpot
    signs it and amoCRM's token travels in its query. Behind a reverse proxy the route
    rebuilds it from the trusted forwarded headers."""

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        for key, value in self.headers.items():
            if key.lower() == wanted:
                return value
        return None


@dataclass(frozen=True)
class DealMoved:
    """One CRM event about one deal: where the deal is now.

    `pipeline_id`/`status_id` are None when the event does not say (Bitrix24 sends only
    the deal id: `stage_read` fills them in; HubSpot's stage ids need no pipeline).
    `deleted`: the deal was deleted in the CRM (no stage). `dedup_key` is equal for every
    resend of the same change (CRMs resend until answered 2xx) and differs between two
    changes; it is unique within one CRM section, not across sections."""

    crm: str
    deal_id: str
    pipeline_id: str | None
    status_id: str | None
    dedup_key: str
    occurred_at: datetime
    deleted: bool = False


class Refused(Exception):
    """A request that is not taken; `reason` is safe to log and to answer with."""

    status_code = 400

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Unauthorized(Refused):
    """Not from the CRM (wrong or missing token, signature, credentials): 401."""

    status_code = 401


class Malformed(Refused):
    """Authentic (or not checkable before parsing) but not the CRM's format: 400."""

    status_code = 400


def utc_from_seconds(seconds: float) -> datetime:
    """A CRM's unix time as UTC; Malformed when no date has it (year past 9999)."""
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise Malformed(f"time {seconds:.0f} is out of range") from exc


def whole_number(value: object) -> str | None:
    """A JSON or form id as text, when it is a whole number of at most 19 digits (ids and
    unix times are; Python's int() refuses past 4 300 digits, so the bound comes first)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and 0 <= value < 10**19:
        return str(value)
    if isinstance(value, str):
        value = value.strip()
        if value.isascii() and value.isdigit() and len(value) <= 19:
            return value
    return None
