"""The writer thread: group commit, errors to every waiter, orderly close."""

from __future__ import annotations

import asyncio
import sqlite3
import threading

import pytest

from bridge.errors import StoreUnavailable
from bridge.store.writer import WriterThread


class Recorder:
    """A batch writer that records what it was given, on which thread."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.batches: list[list[str]] = []
        self.threads: set[str] = set()
        self.fail_on = fail_on

    def __call__(self, db: sqlite3.Connection, batch: list[str]) -> list[str]:
        self.threads.add(threading.current_thread().name)
        self.batches.append(list(batch))
        if self.fail_on in batch:
            raise StoreUnavailable("disk on fire")
        db.execute("SELECT 1")
        return [item.upper() for item in batch]


def _writer(recorder: Recorder) -> WriterThread[str, str]:
    return WriterThread(sqlite3.connect(":memory:", check_same_thread=False), recorder)


async def test_concurrent_submissions_share_batches_and_get_their_own_results() -> None:
    recorder = Recorder()
    writer = _writer(recorder)
    writer.start()
    results = await asyncio.gather(*(writer.submit(f"e{i}") for i in range(200)))
    await writer.close()
    assert results == [f"E{i}" for i in range(200)]
    assert sum(len(batch) for batch in recorder.batches) == 200
    assert len(recorder.batches) < 200  # submitted together, written together
    assert recorder.threads == {"bridge-sqlite-writer"}


async def test_posted_items_ride_along_unawaited() -> None:
    recorder = Recorder()
    writer = _writer(recorder)
    writer.start()
    writer.post("log-1")
    assert await writer.submit("event") == "EVENT"
    await writer.close()
    assert [item for batch in recorder.batches for item in batch] == ["log-1", "event"]


async def test_a_failed_batch_fails_each_of_its_submitters_and_the_thread_goes_on() -> None:
    recorder = Recorder(fail_on="bad")
    writer = _writer(recorder)
    writer.start()
    first = writer.submit("bad")
    second = writer.submit("also-in-that-batch")
    outcomes = await asyncio.gather(first, second, return_exceptions=True)
    assert all(isinstance(outcome, StoreUnavailable) for outcome in outcomes)
    assert await writer.submit("later") == "LATER"
    await writer.close()


async def test_calls_run_alone_on_the_thread_and_raise_in_the_caller() -> None:
    writer = _writer(Recorder())
    writer.start()
    assert await writer.call(lambda db: db.execute("SELECT 41 + 1").fetchone()[0]) == 42
    with pytest.raises(sqlite3.OperationalError):
        await writer.call(lambda db: db.execute("SELECT * FROM missing"))
    await writer.close()


async def test_close_writes_what_was_queued_then_refuses_more() -> None:
    recorder = Recorder()
    writer = _writer(recorder)
    writer.start()
    pending = writer.submit("last")
    await writer.close()
    assert await pending == "LAST"
    with pytest.raises(StoreUnavailable):
        writer.submit("too late")
    writer.post("dropped")  # a request-log row after close is dropped, not an error
    assert [item for batch in recorder.batches for item in batch] == ["last"]
