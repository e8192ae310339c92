"""The writer: group commit (of items and of small transactions), errors to every waiter,
lock waits off the loop, orderly close."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from bridge.errors import StoreUnavailable
from bridge.store.writer import Writer


class Recorder:
    """A batch writer that stores each item as a row and records where it ran."""

    def __init__(self, fail_on: str | None = None, rollback_on: str | None = None) -> None:
        self.batches: list[list[str]] = []
        self.threads: set[str] = set()
        self.fail_on = fail_on  # an item that cannot be stored
        self.rollback_on = rollback_on  # ... and SQLite undid the transaction (disk full)

    def __call__(self, db: sqlite3.Connection, batch: list[str]) -> list[str]:
        self.threads.add(threading.current_thread().name)
        self.batches.append(list(batch))
        db.executemany("INSERT INTO items (name) VALUES (?)", [(item,) for item in batch])
        if self.fail_on in batch:
            raise UnicodeEncodeError("utf-8", "\ud83d", 0, 1, "surrogates not allowed")
        if self.rollback_on in batch:
            db.execute("ROLLBACK")
            raise StoreUnavailable("disk on fire")
        return [item.upper() for item in batch]


def _started(
    tmp_path: Path, recorder: Recorder | None = None, lock_wait_seconds: float = 5.0
) -> tuple[Path, Writer[str, str]]:
    """A new database with an `items` table, and a started writer over it."""
    db = tmp_path / "w.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE items (name TEXT NOT NULL)")
    writers = sqlite3.connect(db, isolation_level=None, check_same_thread=False, timeout=0)
    writer = Writer(writers, recorder or Recorder(), lock_wait_seconds=lock_wait_seconds)
    writer.start()
    return db, writer


def _stored(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [name for (name,) in conn.execute("SELECT name FROM items ORDER BY rowid")]


async def test_concurrent_submissions_share_committed_batches(tmp_path: Path) -> None:
    recorder = Recorder()
    db, writer = _started(tmp_path, recorder)
    results = await asyncio.gather(*(writer.submit(f"e{i}") for i in range(200)))
    # Every result came after its commit: another connection sees the rows already.
    assert sorted(_stored(db)) == sorted(f"e{i}" for i in range(200))
    await writer.close()
    assert results == [f"E{i}" for i in range(200)]
    assert len(recorder.batches) < 200  # submitted together, written together
    # The batch's statements run on the event loop's thread; only COMMIT leaves it.
    assert recorder.threads == {threading.current_thread().name}


async def test_posted_items_ride_along_unawaited(tmp_path: Path) -> None:
    db, writer = _started(tmp_path)
    writer.post("log-1")
    assert await writer.submit("event") == "EVENT"
    await writer.close()
    assert _stored(db) == ["log-1", "event"]


async def test_an_item_that_cannot_be_stored_fails_alone_not_its_batch(tmp_path: Path) -> None:
    """Issue 13.5: one webhook SQLite could not take failed every webhook of its batch."""
    recorder = Recorder(fail_on="bad")
    db, writer = _started(tmp_path, recorder)
    async with _writer_busy(writer):
        futures = [writer.submit(name) for name in ("before", "bad", "after")]
        writer.post("log-row")
    outcomes = await asyncio.gather(*futures, return_exceptions=True)
    assert outcomes[0] == "BEFORE" and outcomes[2] == "AFTER"
    assert isinstance(outcomes[1], StoreUnavailable)
    assert recorder.batches[0] == ["before", "bad", "after", "log-row"]  # tried together
    await writer.close()
    assert _stored(db) == ["before", "after", "log-row"]


async def test_a_failed_batch_fails_each_submitter_leaves_no_rows_and_the_writer_goes_on(
    tmp_path: Path,
) -> None:
    db, writer = _started(tmp_path, Recorder(rollback_on="bad"))
    first = writer.submit("bad")
    second = writer.submit("also-in-that-batch")
    outcomes = await asyncio.gather(first, second, return_exceptions=True)
    assert all(isinstance(outcome, StoreUnavailable) for outcome in outcomes)
    assert await writer.submit("later") == "LATER"
    await writer.close()
    assert _stored(db) == ["later"]


async def test_calls_run_alone_on_the_writer_thread_and_raise_in_the_caller(
    tmp_path: Path,
) -> None:
    _, writer = _started(tmp_path)
    name = await writer.call(lambda db: threading.current_thread().name)
    assert name.startswith("bridge-sqlite-writer")
    assert await writer.call(lambda db: db.execute("SELECT 41 + 1").fetchone()[0]) == 42
    with pytest.raises(sqlite3.OperationalError):
        await writer.call(lambda db: db.execute("SELECT * FROM missing"))
    await writer.close()


def _insert(name: str) -> Callable[[sqlite3.Connection], str]:
    def apply(db: sqlite3.Connection) -> str:
        db.execute("INSERT INTO items (name) VALUES (?)", (name,))
        return threading.current_thread().name

    return apply


def _insert_then_fail(name: str) -> Callable[[sqlite3.Connection], None]:
    def apply(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO items (name) VALUES (?)", (name,))
        raise ValueError(f"{name} refused")

    return apply


@contextlib.asynccontextmanager
async def _writer_busy(writer: Writer[str, str]) -> AsyncIterator[None]:
    """Keeps the writer inside a call on its thread, so what is queued meanwhile is
    taken as one batch when the block ends."""
    gate = threading.Event()
    busy = asyncio.ensure_future(writer.call(lambda db: gate.wait(5)))
    await asyncio.sleep(0.05)
    yield
    await asyncio.sleep(0.05)  # queued coroutines have run up to their first await
    gate.set()
    assert await busy


async def test_grouped_transactions_share_the_batch_commit_on_the_loop(tmp_path: Path) -> None:
    recorder = Recorder()
    db, writer = _started(tmp_path, recorder)
    outcomes = await asyncio.gather(
        *(writer.transact(_insert(f"t{i}")) for i in range(50)),
        *(writer.submit(f"e{i}") for i in range(50)),
    )
    # Every result came after its commit: another connection sees the rows already.
    assert sorted(_stored(db)) == sorted(
        [*(f"t{i}" for i in range(50)), *(f"e{i}" for i in range(50))]
    )
    assert set(outcomes[:50]) == {threading.current_thread().name}
    assert outcomes[50:] == [f"E{i}" for i in range(50)]
    assert len(recorder.batches) < 50  # the transactions rode along with the items
    await writer.close()


async def test_a_failed_grouped_transaction_undoes_only_itself_and_raises_in_its_caller(
    tmp_path: Path,
) -> None:
    db, writer = _started(tmp_path)
    async with _writer_busy(writer):  # all four in one transaction
        before = asyncio.ensure_future(writer.transact(_insert("before")))
        failing = asyncio.ensure_future(writer.transact(_insert_then_fail("half-done")))
        after = asyncio.ensure_future(writer.transact(_insert("after")))
        event = writer.submit("event")
    outcomes = await asyncio.gather(before, failing, after, event, return_exceptions=True)
    assert isinstance(outcomes[1], ValueError)
    assert str(outcomes[1]) == "half-done refused"
    assert outcomes[3] == "EVENT"
    await writer.close()
    assert sorted(_stored(db)) == ["after", "before", "event"]


async def test_a_failed_batch_fails_its_grouped_transactions_too(tmp_path: Path) -> None:
    db, writer = _started(tmp_path, Recorder(rollback_on="bad"))
    async with _writer_busy(writer):
        grouped = asyncio.ensure_future(writer.transact(_insert("grouped")))
        bad = writer.submit("bad")
    outcomes = await asyncio.gather(grouped, bad, return_exceptions=True)
    assert all(isinstance(outcome, StoreUnavailable) for outcome in outcomes)
    assert await writer.transact(_insert("later")) == threading.current_thread().name
    await writer.close()
    assert _stored(db) == ["later"]


def _queue_item(writer: Writer[str, str]) -> asyncio.Future[str]:
    return writer.submit("waited")


def _queue_transaction(writer: Writer[str, str]) -> asyncio.Future[str]:
    def apply(db: sqlite3.Connection) -> str:
        db.execute("INSERT INTO items (name) VALUES ('waited')")
        return "WAITED"

    return asyncio.ensure_future(writer.transact(apply))


@pytest.mark.parametrize("queue", [_queue_item, _queue_transaction], ids=["item", "transaction"])
async def test_a_batch_waits_for_another_connections_lock_without_stalling_the_loop(
    tmp_path: Path, queue: Callable[[Writer[str, str]], asyncio.Future[str]]
) -> None:
    db, writer = _started(tmp_path)
    other = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    pending = queue(writer)
    ticks = 0
    started = time.monotonic()
    while time.monotonic() - started < 0.3:  # the loop keeps running meanwhile
        await asyncio.sleep(0.01)
        ticks += 1
    assert not pending.done()
    other.execute("COMMIT")
    other.close()
    assert await pending == "WAITED"
    assert ticks >= 10
    await writer.close()
    assert _stored(db) == ["waited"]


async def test_a_lock_held_past_the_wait_fails_the_batch_then_the_writer_recovers(
    tmp_path: Path,
) -> None:
    db, writer = _started(tmp_path, lock_wait_seconds=0.2)
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    with pytest.raises(StoreUnavailable, match="locked"):
        await writer.submit("refused")
    other.execute("ROLLBACK")
    other.close()
    assert await writer.submit("after") == "AFTER"
    await writer.close()
    assert _stored(db) == ["after"]


async def test_close_writes_what_was_queued_then_refuses_more(tmp_path: Path) -> None:
    db, writer = _started(tmp_path)
    pending = writer.submit("last")
    await writer.close()
    assert await pending == "LAST"
    with pytest.raises(StoreUnavailable):
        writer.submit("too late")
    with pytest.raises(StoreUnavailable):
        await writer.transact(_insert("too late"))
    writer.post("dropped")  # a request-log row after close is dropped, not an error
    assert _stored(db) == ["last"]
