"""The one connection that writes, and the one thread that owns it.

A write is a function of a `sqlite3.Connection` that runs on this thread, so a whole
transaction costs the event loop one hand-over and one wake-up, however many statements
it runs. (Through aiosqlite every statement was a round trip of its own, and the thread
had to win the GIL back from a busy event loop after each one.)

Two kinds of work, taken in turn so neither starves the other:
- `call(fn)`: `fn(conn)` alone; the store wraps it in its own transaction;
- `submit(item)` / `post(item)`: items the thread writes together, everything waiting
  at once, with `write_batch` in one transaction with one commit (group commit). Each
  submitted item's caller still waits for that commit; posted items ride along.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from bridge.errors import StoreUnavailable

T = TypeVar("T")
Item = TypeVar("Item")
Result = TypeVar("Result")

BatchWriter = Callable[[sqlite3.Connection, list[Item]], Sequence[Result]]


class WriterThread(Generic[Item, Result]):
    def __init__(
        self,
        conn: sqlite3.Connection,
        write_batch: BatchWriter[Item, Result],
        *,
        max_batch: int = 512,
        name: str = "bridge-sqlite-writer",
    ) -> None:
        self._conn = conn
        self._write_batch = write_batch
        self._max_batch = max_batch
        self._loop: asyncio.AbstractEventLoop | None = None
        # deque appends and pops are atomic: the event loop adds, the thread takes.
        self._items: deque[tuple[Item, asyncio.Future[Result] | None]] = deque()
        self._calls: deque[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] = (
            deque()
        )
        self._signal = threading.Event()
        self._closing = False
        self._closed: asyncio.Future[None] | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._closed = self._loop.create_future()
        self._thread.start()

    async def call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        future: asyncio.Future[T] = self._require_loop().create_future()
        self._calls.append((fn, future))
        self._signal.set()
        return await future

    def submit(self, item: Item) -> asyncio.Future[Result]:
        """Queue `item` for the next batch; the future settles after its commit."""
        future: asyncio.Future[Result] = self._require_loop().create_future()
        self._items.append((item, future))
        self._signal.set()
        return future

    def post(self, item: Item) -> None:
        """Queue `item` for the next batch, unawaited (a request-log row). Once the
        writer is closing it is dropped: the answer it describes must not fail for it."""
        if self._loop is None or self._closing:
            return
        self._items.append((item, None))
        self._signal.set()

    async def close(self) -> None:
        """Write everything queued so far, then close the connection."""
        if self._closed is None or self._closing:
            return
        self._closing = True
        self._signal.set()
        await self._closed

    def _require_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None or self._closing:
            raise StoreUnavailable("the database is closed")
        return self._loop

    # ---- on the writer thread ----------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                self._signal.wait()
                self._signal.clear()
                while self._items or self._calls:
                    if self._items:
                        self._write_items()
                    if self._calls:
                        self._run_call(*self._calls.popleft())
                if self._closing and not self._items and not self._calls:
                    return
        finally:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._settle(self._closed, None, None)

    def _write_items(self) -> None:
        taken = [self._items.popleft() for _ in range(min(len(self._items), self._max_batch))]
        try:
            results: Sequence[Result] = self._write_batch(self._conn, [item for item, _ in taken])
        except Exception as exc:  # noqa: BLE001 - every waiting request gets the error
            self._settle_many([(future, None, exc) for _, future in taken])
            return
        self._settle_many(
            [(future, result, None) for (_, future), result in zip(taken, results, strict=True)]
        )

    def _run_call(
        self, fn: Callable[[sqlite3.Connection], Any], future: asyncio.Future[Any]
    ) -> None:
        try:
            result = fn(self._conn)
        except Exception as exc:  # noqa: BLE001 - raised again in the awaiting coroutine
            self._settle(future, None, exc)
        else:
            self._settle(future, result, None)

    def _settle(
        self, future: asyncio.Future[Any] | None, result: Any, exc: BaseException | None
    ) -> None:
        self._settle_many([(future, result, exc)])

    def _settle_many(
        self, outcomes: list[tuple[asyncio.Future[Any] | None, Any, BaseException | None]]
    ) -> None:
        waiting = [outcome for outcome in outcomes if outcome[0] is not None]
        if waiting and self._loop is not None:
            # One wake-up of the event loop per batch, not one per request.
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                self._loop.call_soon_threadsafe(_resolve, waiting)


def _resolve(outcomes: list[tuple[asyncio.Future[Any] | None, Any, BaseException | None]]) -> None:
    for future, result, exc in outcomes:
        if future is None or future.done():  # its request was cancelled meanwhile
            continue
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)
