"""Salesforce's daily API allocation, as the org itself reports it.

Every REST answer carries `Sforce-Limit-Info: api-usage=USED/LIMIT` (the org's calls in
the last 24 hours against its allocation: 100,000 plus a per-licence amount; 15,000 on a
Developer Edition; https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/headers_api_usage.htm).
The allocation is the whole org's: every integration draws from it, and once it is spent
Salesforce answers 403 REQUEST_LIMIT_EXCEEDED to all of them. So the bridge stops short:
when the last reported usage reaches `stop_percent` of the limit, requests are refused
here with `RateLimited` (deliveries wait; nothing fails) and one request is let through
every `recheck_seconds` to read the usage again. The window is rolling, so usage falls
back gradually; there is no reset time to wait for.

A composite request counts once; a Composite Batch counts once per sub-request. The
header reports what Salesforce counted, so the bridge never has to.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import httpx

from bridge.errors import RateLimited

DEFAULT_STOP_PERCENT = 90.0
DEFAULT_RECHECK_SECONDS = 300.0
_USAGE = re.compile(r"(?<![\w-])api-usage=(\d+)/(\d+)")  # not per-app-api-usage


def parse_limit_info(header: str | None) -> tuple[int, int] | None:
    """(used, limit) from a `Sforce-Limit-Info` value; None when it has no api-usage."""
    found = _USAGE.search(header or "")
    return (int(found.group(1)), int(found.group(2))) if found else None


class ApiUsage:
    """The org's reported API usage and the bridge's decision to hold back."""

    def __init__(
        self,
        crm: str,
        stop_percent: float = DEFAULT_STOP_PERCENT,
        recheck_seconds: float = DEFAULT_RECHECK_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.crm = crm
        self.stop_percent = stop_percent
        self.recheck_seconds = recheck_seconds
        self._clock = clock
        self.used: int | None = None
        self.limit: int | None = None
        self._seen_at = 0.0  # when the usage was last reported (or a probe let through)

    def observe(self, header: str | None) -> None:
        parsed = parse_limit_info(header)
        if parsed is not None:
            self.used, self.limit = parsed
            self._seen_at = self._clock()

    def spent(self) -> None:
        """Salesforce refused a call: the allocation is used up, whatever was reported."""
        if self.limit is not None:
            self.used = max(self.used or 0, self.limit)
        else:
            self.used, self.limit = 1, 1
        self._seen_at = self._clock()

    @property
    def stop_at(self) -> int | None:
        return None if self.limit is None else int(self.limit * self.stop_percent / 100)

    def holding_back(self) -> bool:
        stop = self.stop_at
        return stop is not None and self.used is not None and self.used >= stop

    def require(self) -> None:
        """Raise `RateLimited` while the usage is at the stop mark and was read less than
        `recheck_seconds` ago; past that one request goes out to read it again (and the
        next ones wait for its answer's figure)."""
        if not self.holding_back():
            return
        waited = self._clock() - self._seen_at
        if waited >= self.recheck_seconds:
            self._seen_at = self._clock()  # this request is the probe
            return
        raise RateLimited(
            self.crm,
            f"daily API allocation at {self.used} of {self.limit} calls"
            f" (the bridge stops at {self.stop_percent:g} %): waiting for it to fall",
            retry_after=self.recheck_seconds - waited,
        )

    def details(self) -> dict[str, object]:
        """What /webhook/health shows."""
        if self.limit is None:
            return {"daily_api_usage": None}
        seen = datetime.fromtimestamp(self._seen_at, UTC).isoformat().replace("+00:00", "Z")
        return {
            "daily_api_usage": self.used,
            "daily_api_limit": self.limit,
            "daily_api_stop_at": self.stop_at,
            "daily_api_holding_back": self.holding_back(),
            "daily_api_usage_read_at": seen,
        }


EventHooks = dict[str, list[Callable[[Any], Awaitable[None]]]]


def usage_hooks(usage: ApiUsage) -> EventHooks:
    """httpx event hooks: read the usage from every answer; a 403 REQUEST_LIMIT_EXCEEDED
    marks the allocation spent (the answer carries no usage figure to trust then)."""

    async def on_response(response: httpx.Response) -> None:
        usage.observe(response.headers.get("sforce-limit-info"))
        if response.status_code == 403:
            await response.aread()
            if b"REQUEST_LIMIT_EXCEEDED" in response.content:
                usage.spent()

    return {"response": [on_response]}
