"""Pipedrive's daily token budget, counted on our side.

Every Pipedrive operation costs tokens (`x-token-cost` in the published OpenAPI files)
from a budget the whole company shares per day (30,000 × plan multiplier × seats).
Pipedrive reports no remaining budget in its headers, and an exhausted budget answers
429 until the next day, so the adapter keeps its own running total:
- `TOKEN_COSTS` lists the operations the adapter uses with their cost (a test checks
  the table against the OpenAPI files);
- `TokenBudget` adds up what was sent today (UTC) and refuses, with `RateLimited` and the
  seconds until midnight UTC, a request that would go over the configured daily budget;
- `budget_hooks` are the httpx event hooks that charge every request Pipedrive answered
  (quick retries included) and turn a burst-limit 429's `x-ratelimit-reset` into the
  `Retry-After` that `CrmHttp` honours.

The total starts at zero when the bridge starts: it guards the bridge's own use and
is an estimate of the company's, whose other integrations draw from the same budget.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import httpx

from bridge.errors import RateLimited

DAY = 86400
DEFAULT_DAILY_BUDGET = 30_000  # one seat on the smallest plan: 30,000 × 1 × 1

# (method, path template) → x-token-cost. v2 for persons, deals, search, pipelines,
# stages and fields; notes exist only in v1; the OAuth token endpoint costs nothing.
TOKEN_COSTS: Mapping[tuple[str, str], int] = {
    ("GET", "/api/v2/persons/search"): 20,
    ("GET", "/api/v2/persons/{id}"): 1,
    ("POST", "/api/v2/persons"): 5,
    ("PATCH", "/api/v2/persons/{id}"): 5,
    ("GET", "/api/v2/deals"): 10,
    ("GET", "/api/v2/deals/{id}"): 1,
    ("POST", "/api/v2/deals"): 5,
    ("PATCH", "/api/v2/deals/{id}"): 5,
    ("GET", "/api/v2/pipelines"): 5,
    ("GET", "/api/v2/stages"): 5,
    ("GET", "/api/v2/dealFields"): 10,
    ("GET", "/api/v2/personFields"): 10,
    ("GET", "/api/v1/notes"): 20,
    ("POST", "/api/v1/notes"): 10,
    ("POST", "/oauth/token"): 0,
}
UNKNOWN_COST = 40  # the dearest v1 operation: an operation missing above is not free

_TEMPLATES = [
    (method, re.compile(re.sub(r"\\\{[a-z_]+\\\}", "[0-9]+", re.escape(path)) + "$"), cost)
    for (method, path), cost in TOKEN_COSTS.items()
]


def token_cost(method: str, path: str) -> int:
    """The cost of one request; `path` may carry a proxy's prefix before `/api/`."""
    for template_method, pattern, cost in _TEMPLATES:
        if template_method == method.upper() and pattern.search(path):
            return cost
    return UNKNOWN_COST


class TokenBudget:
    """Tokens spent today (UTC) against a daily budget."""

    def __init__(self, crm: str, daily: int, clock: Callable[[], float] = time.time) -> None:
        self.crm = crm
        self.daily = daily
        self._clock = clock
        self._day = self._today()
        self._used = 0

    def require(self, cost: int) -> None:
        """Raise `RateLimited` (retry after the reset) when `cost` does not fit today."""
        self._roll()
        if self._used + cost > self.daily:
            raise RateLimited(
                self.crm,
                f"daily token budget used up ({self._used} of {self.daily} tokens);"
                " it resets at 00:00 UTC",
                retry_after=self.seconds_to_reset(),
            )

    def charge(self, cost: int) -> None:
        self._roll()
        self._used += cost

    @property
    def used(self) -> int:
        self._roll()
        return self._used

    def seconds_to_reset(self) -> float:
        return (self._day + 1) * DAY - self._clock()

    def details(self) -> dict[str, object]:
        """What /webhook/health shows."""
        used = self.used
        resets = datetime.fromtimestamp((self._day + 1) * DAY, UTC)
        return {
            "daily_token_budget": self.daily,
            "daily_tokens_used": used,
            "daily_tokens_remaining": max(self.daily - used, 0),
            "daily_budget_resets_at": resets.isoformat().replace("+00:00", "Z"),
        }

    def _today(self) -> int:
        return int(self._clock() // DAY)

    def _roll(self) -> None:
        today = self._today()
        if today != self._day:
            self._day, self._used = today, 0


EventHooks = dict[str, list[Callable[[Any], Awaitable[None]]]]


def budget_hooks(budget: TokenBudget) -> EventHooks:
    """httpx event hooks: charge each answered request; a burst 429's reset → Retry-After.

    Every answer counts (quick retries and the resend after a 401 refresh too) except
    those Pipedrive gives before doing any work: 401, 429 and 5xx.
    """

    async def on_response(response: httpx.Response) -> None:
        status, request = response.status_code, response.request
        if status < 500 and status not in (401, 429):
            budget.charge(token_cost(request.method, request.url.path))
        # Burst-limit answers carry the seconds left in the 2-second window.
        reset = response.headers.get("x-ratelimit-reset")
        if status == 429 and reset and "retry-after" not in response.headers:
            response.headers["retry-after"] = reset

    return {"response": [on_response]}
