"""The one connection that writes, and the one task that decides what it does next.

Intake is group-committed: everything waiting is written in one transaction with one
commit, and each submitted item's caller still waits for that commit. The statements of
such a batch run on the event loop itself, and only the COMMIT (the WAL write and its
fsync, where SQLite lets the GIL go) runs on the writer's thread. A batch thus costs
one hand-over to the thread and one wake-up back, and no statement of it has to win the
GIL back from the busy loop. (Run wholly on a thread, each of a batch's statements
released the GIL and then waited for it; the loop paid for the contention too.)

Two kinds of work, taken in turn so neither starves the other:
- batches, one transaction the writer opens and commits, of:
  - `submit(item)` / `post(item)`: items written together by `write_batch`. Submitted
    items' callers wait for the commit; posted items (request-log rows) ride along
    unawaited. Should the batch's items fail together, the batch is written again with
    each item in a savepoint of its own, so an item SQLite refuses fails alone;
  - `transact(fn)`: a small transaction of the store's own (the worker's updates of a
    few rows), `fn(conn)` in a savepoint of the batch, so that it costs no commit and
    no turn of its own. Its failure rolls back only its savepoint.
- `call(fn)`: `fn(conn)` wholly on the thread (migrations, operator commands, anything
  whose size is not bounded), so that it never stalls the loop.

The store turns the connection's busy timeout off: a wait for a write lock that another
process holds happens on the thread (`begin_immediate`), never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

from bridge.errors import StoreUnavailable

log = logging.getLogger("bridge.store")

T = TypeVar("T")
Item = TypeVar("Item")
Result = TypeVar("Result")

BatchWriter = Callable[[sqlite3.Connection, list[Item]], Sequence[Result]]
_Call = tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]
_Outcome = tuple[Any, Exception | None]  # a grouped transaction's value, or its failure
# How long a write waits for a lock another connection holds (SQLite's usual 5 s).
LOCK_WAIT_SECONDS = 5.0


class Writer(Generic[Item, Result]):
    def __init__(
        self,
        conn: sqlite3.Connection,
        write_batch: BatchWriter[Item, Result],
        *,
        guard: Callable[[], None] = lambda: None,
        max_batch: int = 512,
        lock_wait_seconds: float = LOCK_WAIT_SECONDS,
        name: str = "bridge-sqlite-writer",
    ) -> None:
        """`guard()` runs before each batch and raises to refuse it (a replaced file)."""
        self._conn = conn
        self._write_batch = write_batch
        self._guard = guard
        self._max_batch = max_batch
        self._lock_wait = lock_wait_seconds
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._items: deque[tuple[Item, asyncio.Future[Result] | None]] = deque()
        self._calls: deque[_Call] = deque()
        self._grouped: deque[_Call] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task = self._loop.create_task(self._run(self._wake), name="bridge-sqlite-writer")

    async def call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """`fn(conn)` on the writer's thread, alone; its exceptions raise here."""
        future: asyncio.Future[T] = self._require_loop().create_future()
        self._calls.append((fn, future))
        self._signal()
        return await future

    async def transact(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """`fn(conn)` on the event loop inside the next batch, in a savepoint of its own;
        returns after the batch's commit. `fn` must be small: it holds up the loop."""
        future: asyncio.Future[T] = self._require_loop().create_future()
        self._grouped.append((fn, future))
        self._signal()
        return await future

    async def reconnect(self, connect: Callable[[], sqlite3.Connection]) -> None:
        """Close the connection and write through `connect()`'s from the next batch on;
        on the thread, between batches."""

        def swap(old: sqlite3.Connection) -> None:
            old.close()
            self._conn = connect()

        await self.call(swap)

    def submit(self, item: Item) -> asyncio.Future[Result]:
        """Queue `item` for the next batch; the future settles after its commit."""
        future: asyncio.Future[Result] = self._require_loop().create_future()
        self._items.append((item, future))
        self._signal()
        return future

    def post(self, item: Item) -> None:
        """Queue `item` for the next batch, unawaited (a request-log row). Once the
        writer is closing it is dropped: the answer it describes must not fail for it."""
        if self._loop is None or self._closing:
            return
        self._items.append((item, None))
        self._signal()

    async def close(self) -> None:
        """Write everything queued so far, then close the connection and the thread."""
        if self._task is None or self._closing:
            return
        self._closing = True
        self._signal()
        await asyncio.shield(self._task)
        with contextlib.suppress(sqlite3.Error):
            await self._on_thread(lambda conn: conn.close())
        self._thread.shutdown(wait=True)

    def _require_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None or self._closing:
            raise StoreUnavailable("the database is closed")
        return self._loop

    def _signal(self) -> None:
        if self._wake is not None:
            self._wake.set()

    # ---- the writer task ----------------------------------------------------------------

    async def _run(self, wake: asyncio.Event) -> None:
        while True:
            if not self._items and not self._grouped and not self._calls:
                if self._closing:
                    return
                wake.clear()
                await wake.wait()
                continue
            if self._items or self._grouped:
                await self._write_batch_of_waiting()
            if self._calls:
                await self._run_call(*self._calls.popleft())

    async def _write_batch_of_waiting(self) -> None:
        taken = _take(self._items, self._max_batch)
        grouped = _take(self._grouped, self._max_batch)
        try:
            results, outcomes = await self._batch_transaction(
                [item for item, _ in taken], [fn for fn, _ in grouped]
            )
        except Exception as exc:  # noqa: BLE001 - every waiting request gets the error
            error = exc if isinstance(exc, StoreUnavailable) else _unavailable(exc)
            log.error("batch of %d writes not stored: %s", len(taken) + len(grouped), error)
            for _, future in (*taken, *grouped):
                _settle(future, None, error)
            return
        for (_, future), (result, failure) in zip(taken, results, strict=True):
            _settle(future, result, failure)
        for (_, future), (value, failure) in zip(grouped, outcomes, strict=True):
            _settle(future, value, failure)

    async def _batch_transaction(
        self, items: list[Item], fns: list[Callable[[sqlite3.Connection], Any]]
    ) -> tuple[list[_Outcome], list[_Outcome]]:
        conn = self._conn
        self._guard()
        await self._begin(conn)
        try:
            outcomes = [in_savepoint(conn, fn) for fn in fns]
            try:
                results: list[_Outcome] = [(r, None) for r in self._write_batch(conn, items)]
            except Exception as exc:
                if not conn.in_transaction:  # SQLite undid the transaction: the batch fails
                    raise
                outcomes, results = await self._again_one_by_one(conn, items, fns, exc)
            await self._on_thread(_commit)
        except asyncio.CancelledError:
            raise  # the loop is going away; the thread may still hold the connection
        except BaseException:
            rollback_quietly(conn)  # a failed COMMIT has left the thread already
            raise
        return results, outcomes

    async def _again_one_by_one(
        self,
        conn: sqlite3.Connection,
        items: list[Item],
        fns: list[Callable[[sqlite3.Connection], Any]],
        exc: Exception,
    ) -> tuple[list[_Outcome], list[_Outcome]]:
        """The items failed together: the transaction again, each item in a savepoint of
        its own, so one item SQLite cannot take (text it cannot encode, a broken
        constraint) fails alone and not every webhook that shared its batch.

        The whole transaction is rolled back and redone (the grouped transactions run a
        second time, the first undone) rather than the items kept in a savepoint on the
        usual path: inside a savepoint SQLite copies every page the batch touches into its
        statement journal first, which cost the batch a third more time."""
        log.warning("a batch of %d writes failed (%s): writing them one by one", len(items), exc)
        conn.execute("ROLLBACK")
        await self._begin(conn)
        outcomes = [in_savepoint(conn, fn) for fn in fns]
        return outcomes, [self._write_one(conn, item) for item in items]

    async def _begin(self, conn: sqlite3.Connection) -> None:
        if not try_begin_immediate(conn):
            await self._on_thread(lambda conn: begin_immediate(conn, self._lock_wait))

    def _write_one(self, conn: sqlite3.Connection, item: Item) -> _Outcome:
        value, failure = in_savepoint(conn, lambda db: self._write_batch(db, [item])[0])
        if failure is None:
            return value, None
        log.error("a write was refused and not stored: %s", failure)
        return None, failure if isinstance(failure, StoreUnavailable) else _unavailable(failure)

    async def _run_call(
        self, fn: Callable[[sqlite3.Connection], Any], future: asyncio.Future[Any]
    ) -> None:
        try:
            result = await self._on_thread(fn)
        except Exception as exc:  # noqa: BLE001 - raised again in the awaiting coroutine
            _settle(future, None, exc)
        else:
            _settle(future, result, None)

    async def _on_thread(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, fn, self._conn)


def try_begin_immediate(conn: sqlite3.Connection) -> bool:
    """BEGIN IMMEDIATE if the write lock is free now; False if another connection has it."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if _is_busy(exc):
            return False
        raise
    return True


def begin_immediate(conn: sqlite3.Connection, wait_seconds: float = LOCK_WAIT_SECONDS) -> None:
    """BEGIN IMMEDIATE, waiting up to `wait_seconds` for another connection's write lock.

    Blocks: for the writer's thread (or a CLI), never for the event loop."""
    deadline = time.monotonic() + wait_seconds
    pause = 0.001
    while not try_begin_immediate(conn):
        if time.monotonic() >= deadline:
            raise StoreUnavailable(f"the database stayed locked for {wait_seconds:g} s")
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def in_savepoint(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], Any]) -> _Outcome:
    """`fn(conn)` inside the open transaction; its failure undoes only its own writes.

    Raises (failing the whole transaction) only when SQLite has already rolled that
    back (a full disk, an I/O error) or the savepoint itself cannot be undone."""
    conn.execute("SAVEPOINT grouped")
    try:
        value = fn(conn)
    except Exception as exc:  # the caller's: raised again in its coroutine
        if not conn.in_transaction:
            raise
        conn.execute("ROLLBACK TO grouped")
        conn.execute("RELEASE grouped")
        return None, exc
    conn.execute("RELEASE grouped")
    return value, None


def rollback_quietly(conn: sqlite3.Connection) -> None:
    # The connection may be the very thing that failed; nothing is left to undo then.
    with contextlib.suppress(sqlite3.Error):
        if conn.in_transaction:
            conn.execute("ROLLBACK")


def _take(queue: deque[T], most: int) -> list[T]:
    return [queue.popleft() for _ in range(min(len(queue), most))]


def _commit(conn: sqlite3.Connection) -> None:
    conn.execute("COMMIT")


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None) or 0
    return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)  # and extended codes


def _unavailable(exc: BaseException) -> StoreUnavailable:
    return StoreUnavailable(f"database write failed: {exc}")


def _settle(future: asyncio.Future[Any] | None, result: Any, exc: BaseException | None) -> None:
    if future is None or future.done():  # unawaited, or its request was cancelled
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
