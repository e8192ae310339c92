"""Zoho CRM's API credits and concurrency, counted on our side.

Every call costs credits from a pool the whole org shares over a rolling 24 hours
(https://www.zoho.com/crm/developer/docs/api/v8/api-limits.html: 50,000 + licences ×
250/500/1000/2000 by edition, plus add-ons). Zoho does not say in its answers how much is
left, and a spent pool answers 429 to every integration of the org, so the adapter keeps
its own account, as the Pipedrive adapter does for its daily token budget:
- `credit_cost` is what one request costs (most 1; COQL 1/2/3 by its LIMIT up to 200 /
  1000 / 2000; a composite call 1, 2 when `rollback_on_fail` holds and nothing rolls
  back; inserts and updates 1 per 10 records; the accounts server's token endpoint 0);
- `CreditPool` adds up what was answered in the last 24 hours and refuses, with
  `RateLimited` and the seconds until enough of it falls out of the window, a request
  that would go over the configured pool: deliveries wait, none fails;
- `credit_hooks` are the httpx event hooks that charge every answered request (quick
  retries and the resend after a refresh included) except those Zoho refuses before any
  work (401, 429, 5xx);
- `Concurrency` keeps the calls in flight under the org's concurrency limit for this
  app (Free 5 … Ultimate 25); a composite call counts as five.

The pool starts empty when the bridge starts: it guards the bridge's own use and is an
estimate of the org's, whose other integrations draw from the same pool.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import httpx

from bridge.crm.allowance import Allowance, charging

WINDOW = 86400.0  # a rolling 24 hours
COMPOSITE_UNITS = 5  # concurrency a composite call takes, whatever it holds
_LIMIT = re.compile(r"\blimit\s+(\d+)(?:\s*,\s*(\d+))?", re.IGNORECASE)


def credit_cost(method: str, path: str, body: bytes | None) -> int:
    """The credits one request costs (see the module docstring)."""
    if path.endswith("/oauth/v2/token"):
        return 0
    parsed = _json(body)
    if path.endswith("/coql"):
        text = parsed.get("select_query") if isinstance(parsed, dict) else None
        match = _LIMIT.search(str(text or ""))
        limit = int(match.group(2) or match.group(1)) if match else 200
        return 1 if limit <= 200 else 2 if limit <= 1000 else 3
    if path.endswith("/__composite_requests"):
        rollback = isinstance(parsed, dict) and parsed.get("rollback_on_fail") is True
        return 2 if rollback else 1
    records = parsed.get("data") if isinstance(parsed, dict) else None
    if method.upper() in ("POST", "PUT") and isinstance(records, list) and records:
        return max(1, math.ceil(len(records) / 10))
    return 1


def _json(body: bytes | None) -> Any:
    try:
        return json.loads(body) if body else None
    except ValueError:
        return None


class CreditPool(Allowance):
    """Credits answered in the last 24 hours against the org's pool."""

    def details(self) -> dict[str, object]:
        used = self.used
        details: dict[str, object] = {
            "daily_credits": self.daily,
            "credits_used_24h": used,
            "credits_remaining": max(self.daily - used, 0),
        }
        if self._spent:
            freed = datetime.fromtimestamp(self._spent[0][0] + WINDOW, UTC)
            details["credits_next_freed_at"] = freed.isoformat().replace("+00:00", "Z")
        return details

    def _counted(self, when: float, now: float) -> bool:
        return when > now - WINDOW

    def _free_at(self, cost: int) -> float:
        """Once the oldest charges leave the window."""
        excess = self._used + cost - self.daily
        for when, credits in self._spent:
            excess -= credits
            if excess <= 0:
                return when + WINDOW
        return self._clock() + WINDOW  # more than the whole pool: the best there is

    def _used_up(self) -> str:
        return (
            f"API credits used up ({self._used} of {self.daily} in the last 24 hours);"
            " waiting for the rolling window to free them"
        )


def credit_hooks(pool: CreditPool) -> dict[str, list[Callable[[Any], Awaitable[None]]]]:
    """httpx event hooks: charge every answered request except 401, 429 and 5xx."""

    def cost(request: httpx.Request) -> int:
        return credit_cost(request.method, request.url.path, request.content)

    return {"response": [charging(pool, cost)]}


class Concurrency:
    """At most `limit` units in flight; a request waits for its units (FIFO-ish)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._in_flight = 0
        self._changed = asyncio.Condition()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def acquire(self, units: int) -> None:
        units = min(units, self.limit)
        async with self._changed:
            await self._changed.wait_for(lambda: self._in_flight + units <= self.limit)
            self._in_flight += units

    async def release(self, units: int) -> None:
        units = min(units, self.limit)
        async with self._changed:
            self._in_flight -= units
            self._changed.notify_all()
