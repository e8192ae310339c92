"""The rate limiter under a busy event loop, in virtual time.

amoCRM counts requests in a sliding second (7 allowed; the bridge is set to 6.5/s). The
limiter reserves evenly spaced slots in advance; a request whose wake-up comes late (the
loop busy with a batch's answers) must not then go out close enough to the requests
reserved after it that some second holds 8. Nor may a request whose headers are
written late (the HTTP client yielding to a busy loop after the grant).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools

from bridge.crm.base import RateLimiter


class VirtualTime:
    """A clock and a sleep whose time moves only when every task waits; sleep number
    `late` (0-based) wakes `lateness` seconds after it was due."""

    def __init__(self, late: int | None = None, lateness: float = 0.0) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._late, self._lateness = late, lateness

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        number = next(self._order)
        extra = self._lateness if number == self._late else 0.0
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + max(seconds, 0.0) + extra, number, future))
        await future

    async def run(self, tasks: list[asyncio.Task[float]]) -> list[float]:
        while not all(task.done() for task in tasks):
            for _ in range(5):  # let every task run until it sleeps or ends
                await asyncio.sleep(0)
            if self._sleepers:
                due, _, future = heapq.heappop(self._sleepers)
                self.now = max(self.now, due)
                future.set_result(None)
        return [task.result() for task in tasks]


async def sends(limiter: RateLimiter, time: VirtualTime, count: int) -> list[float]:
    async def one() -> float:
        await limiter.acquire()
        return time.clock()

    tasks = [asyncio.ensure_future(one()) for _ in range(count)]
    return sorted(await time.run(tasks))


def most_in_a_second(times: list[float]) -> int:
    return max(sum(1 for t in times if start <= t < start + 1.0) for start in times)


async def test_even_requests_go_out_at_the_configured_rate() -> None:
    time = VirtualTime()
    limiter = RateLimiter(6.5, clock=time.clock, sleep=time.sleep)
    times = await sends(limiter, time, 20)
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(times)]
    assert gaps == [round(1 / 6.5, 6)] * 19  # no request is held back beyond its slot
    assert most_in_a_second(times) == 7


async def test_a_request_woken_late_does_not_crowd_the_ones_after_it() -> None:
    time = VirtualTime(late=0, lateness=0.1)  # the first request's wake-up comes 100 ms late
    limiter = RateLimiter(6.5, clock=time.clock, sleep=time.sleep)
    times = await sends(limiter, time, 20)
    assert most_in_a_second(times) <= 7, times
    assert times[-1] < 20 / 6.5 + 0.2  # and the rate is kept, not lowered


async def test_a_request_written_late_does_not_crowd_the_ones_after_it() -> None:
    """Each request is granted on time; the first one's headers leave 100 ms later, as
    httpx's trace reports. Counted by grant, 8 requests would reach the CRM in a second."""
    time = VirtualTime()
    limiter = RateLimiter(6.5, clock=time.clock, sleep=time.sleep)

    async def one(number: int) -> float:
        departure = await limiter.reserve()
        if number == 0:
            await time.sleep(0.1)
        await departure.trace("http11.send_request_headers.complete", {})
        departure.settle()
        return time.clock()

    tasks = [asyncio.ensure_future(one(number)) for number in range(20)]
    times = sorted(await time.run(tasks))
    assert most_in_a_second(times) <= 7, times
    assert times[-1] < 20 / 6.5 + 0.2
