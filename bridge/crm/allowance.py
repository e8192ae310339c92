"""A daily allowance of API units a CRM charges per call, counted on our side.

Pipedrive's daily token budget and Zoho CRM's API credits work alike: every answered
call costs units from an allowance the whole account shares, the CRM does not say in its
answers how much is left, and a spent allowance answers 429 to every integration. So the
adapter keeps its own account: `Allowance` adds up what the answered calls cost, refuses
with `RateLimited` (and the seconds until enough is free) a call that would overspend,
so deliveries wait and none fails; `charging` is the httpx response hook that charges.
What differs is the window (`_counted`: Pipedrive's UTC day, Zoho's rolling 24 hours),
when units come back (`_free_at`), and the words (`_used_up`, `details`).

The account starts empty when the bridge starts: it guards the bridge's own use and is
an estimate of the account's, whose other integrations draw from the same allowance.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable

import httpx

from bridge.errors import RateLimited


class Allowance(ABC):
    """Units the answered calls spent, of `daily`, within the subclass's window."""

    def __init__(self, crm: str, daily: int, clock: Callable[[], float] = time.time) -> None:
        self.crm = crm
        self.daily = daily
        self._clock = clock
        self._spent: deque[tuple[float, int]] = deque()  # (when, units), oldest first
        self._used = 0

    def require(self, cost: int) -> None:
        """Raise `RateLimited` (retry once enough is free) when `cost` does not fit."""
        self._expire()
        if self._used + cost <= self.daily:
            return
        wait = max(self._free_at(cost) - self._clock(), 0.0)
        raise RateLimited(self.crm, self._used_up(), retry_after=wait)

    def charge(self, cost: int) -> None:
        if cost <= 0:
            return
        self._expire()
        self._spent.append((self._clock(), cost))
        self._used += cost

    @property
    def used(self) -> int:
        self._expire()
        return self._used

    @abstractmethod
    def details(self) -> dict[str, object]:
        """What /webhook/health shows."""

    @abstractmethod
    def _counted(self, when: float, now: float) -> bool:
        """Whether a charge made at `when` still counts at `now`."""

    @abstractmethod
    def _free_at(self, cost: int) -> float:
        """When `cost` more units fit (called only when they do not fit now)."""

    @abstractmethod
    def _used_up(self) -> str:
        """Why a call waits, for the delivery's log and `crm-bridge show`."""

    def _expire(self) -> None:
        now = self._clock()
        while self._spent and not self._counted(self._spent[0][0], now):
            self._used -= self._spent.popleft()[1]


def charging(
    allowance: Allowance, cost: Callable[[httpx.Request], int]
) -> Callable[[httpx.Response], Awaitable[None]]:
    """A response hook charging every answered call (quick retries and the resend after a
    refresh included) except those a CRM refuses before any work: 401, 429 and 5xx."""

    async def on_response(response: httpx.Response) -> None:
        status = response.status_code
        if status < 500 and status not in (401, 429):
            allowance.charge(cost(response.request))

    return on_response
