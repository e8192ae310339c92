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
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import httpx

from bridge.crm.allowance import Allowance, charging

DAY = 86400
DEFAULT_DAILY_BUDGET = 30_000  # one seat on the smallest plan: 30,000 × 1 × 1

# (method, path template) → x-token-cost. v2 for persons, deals, search, pipelines,
# stages, fields, organizations, products and deal products; notes exist only in v1; the
# OAuth token endpoint costs nothing.
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
    ("GET", "/api/v2/organizations/search"): 20,
    ("POST", "/api/v2/organizations"): 5,
    ("GET", "/api/v2/organizationFields"): 10,
    ("GET", "/api/v2/products/search"): 20,
    ("POST", "/api/v2/products"): 5,
    ("DELETE", "/api/v2/deals/{id}/products"): 15,
    ("POST", "/api/v2/deals/{id}/products/bulk"): 25,
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


class TokenBudget(Allowance):
    """Tokens spent today (UTC) against a daily budget."""

    def seconds_to_reset(self) -> float:
        return self._free_at(0) - self._clock()

    def details(self) -> dict[str, object]:
        used = self.used
        resets = datetime.fromtimestamp(self._free_at(0), UTC)
        return {
            "daily_token_budget": self.daily,
            "daily_tokens_used": used,
            "daily_tokens_remaining": max(self.daily - used, 0),
            "daily_budget_resets_at": resets.isoformat().replace("+00:00", "Z"),
        }

    def _counted(self, when: float, now: float) -> bool:
        return when // DAY == now // DAY

    def _free_at(self, cost: int) -> float:
        """At the next 00:00 UTC."""
        return (self._clock() // DAY + 1) * DAY

    def _used_up(self) -> str:
        return (
            f"daily token budget used up ({self._used} of {self.daily} tokens);"
            " it resets at 00:00 UTC"
        )


EventHooks = dict[str, list[Callable[[Any], Awaitable[None]]]]


def budget_hooks(budget: TokenBudget) -> EventHooks:
    """httpx event hooks: charge each answered request; a burst 429's reset → Retry-After.

    Every answer counts (quick retries and the resend after a 401 refresh too) except
    those Pipedrive gives before doing any work: 401, 429 and 5xx.
    """

    def cost(request: httpx.Request) -> int:
        return token_cost(request.method, request.url.path)

    async def burst_reset(response: httpx.Response) -> None:
        # Burst-limit answers carry the seconds left in the 2-second window.
        reset = response.headers.get("x-ratelimit-reset")
        if response.status_code == 429 and reset and "retry-after" not in response.headers:
            response.headers["retry-after"] = reset

    return {"response": [charging(budget, cost), burst_reset]}
