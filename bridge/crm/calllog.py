"""Every CRM call of a delivery, for `crm-bridge show`: method, path, status, time, error.

The one place HTTP requests are sent (`CrmHttp` in `base`) reports each attempt through
`note_call`; whoever wants the calls wraps the work in `recording_calls()` (the worker,
around one delivery attempt) and stores what it collected. A contextvar carries the
recorder, so concurrent deliveries never see each other's calls, and code outside a
recording (check, discover, health) records nothing.

What is kept is safe to show: the path the adapter asked for (never the query string,
which carries the searched phone or e-mail, nor the base URL, which for a Bitrix24
inbound webhook holds its secret), and the CRM's error body cut short and masked.
"""

from __future__ import annotations

import contextvars
import re
import time
from dataclasses import dataclass, field

from bridge.logs import mask_text

ERROR_BODY_LIMIT = 500
# Token-like values a CRM may echo back in an error (`"access_token": "…"`, `auth=…`).
_SECRET_VALUE = re.compile(
    r"(?i)((?:access_token|refresh_token|client_secret|api_token|auth|token)"
    r"[\"']?\s*[:=]\s*[\"']?)[^\"'&\s,}]+"
)


@dataclass(frozen=True)
class CrmCall:
    crm: str
    method: str
    path: str
    status: int  # 0: no answer (connection failure, timeout)
    ms: float
    at: float  # unix time the call started
    error: str | None = None  # the masked error body, or what went wrong in transport
    batch: int = 1  # deliveries one batch call served (`bridge.batching`)


@dataclass
class CallLog:
    calls: list[CrmCall] = field(default_factory=list)


_current: contextvars.ContextVar[CallLog | None] = contextvars.ContextVar(
    "crm_call_log", default=None
)


class recording_calls:  # noqa: N801 - used as a context manager, reads like one
    """Collect the CRM calls made inside the block (per asyncio task)."""

    def __init__(self) -> None:
        self.log = CallLog()
        self._token: contextvars.Token[CallLog | None] | None = None

    def __enter__(self) -> CallLog:
        self._token = _current.set(self.log)
        return self.log

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _current.reset(self._token)


def current() -> CallLog | None:
    """The recording in force (a batch credits its calls to each delivery it served)."""
    return _current.get()


def recording() -> bool:
    return _current.get() is not None


def note_call(
    crm: str,
    method: str,
    path: str,
    status: int,
    started_perf: float,
    *,
    error: str | None = None,
    wall_clock: float | None = None,
) -> None:
    """Record one attempt of one request, if a recording is active (cheap otherwise)."""
    log = _current.get()
    if log is None:
        return
    ms = (time.perf_counter() - started_perf) * 1000
    at = wall_clock if wall_clock is not None else time.time() - ms / 1000
    log.calls.append(
        CrmCall(
            crm=crm,
            method=method.upper(),
            path=safe_path(path),
            status=status,
            ms=round(ms, 1),
            at=at,
            error=None if error is None else mask_error(error),
        )
    )


def safe_path(path: str) -> str:
    """The path without query string or scheme/host (they may hold data or secrets)."""
    path = path.split("?", 1)[0]
    if "://" in path:
        path = "/" + path.split("://", 1)[1].partition("/")[2]
    return path


def mask_error(text: str) -> str:
    text = " ".join(text.split())
    text = _SECRET_VALUE.sub(r"\1***", text)
    text = mask_text(text)
    if len(text) > ERROR_BODY_LIMIT:
        text = text[: ERROR_BODY_LIMIT - 1] + "…"
    return text
