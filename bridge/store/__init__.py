"""The only package with SQL: schema, migrations, and every read and write of the bridge.

Durability contract (SPEC §7): WAL with `synchronous=FULL`, so an event acknowledged
with a 2xx survives a power cut. Every write goes through one connection and one writer
(`store.writer`). Intake is group-committed: the writer takes whatever requests are
waiting, writes them in one transaction, commits once (on its thread), then wakes every
request — each still waits for its own commit, but concurrent requests share the fsync.
Request-log rows ride along in the next batch and are not awaited; the worker's few-row
writes ride along too, each in a savepoint, and are awaited. Writes of unbounded size
are a transaction each, wholly on the writer's thread; reads use a second connection
(aiosqlite).

Times are stored as UTC text `YYYY-MM-DD HH:MM:SS.fff` (sortable, understood by
SQLite's date functions); schedule times as unix seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

import aiosqlite

from bridge.crypto import TokenCipher
from bridge.errors import StoreUnavailable
from bridge.store.base import (
    Clock,
    create_private_file,
    log,
)
from bridge.store.intake import ROWS_PER_STATEMENT
from bridge.store.operator import OperatorMixin
from bridge.store.oversight import OversightMixin
from bridge.store.queue import QueueMixin
from bridge.store.records import (
    CrmState,
    CrmStats,
    DeliveryJob,
    DeliveryOutcome,
    DueSlice,
    EventSummary,
    EventView,
    IntakeResult,
    JournalEntry,
    NewEvent,
    OperatorStats,
    QueueStats,
    RequestRecord,
    RequestRow,
    utc_text,
)
from bridge.store.schema import (
    migrate,
)

_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=5000",
)
# SQLite checkpoints the WAL inside the COMMIT that takes it past the limit, and every
# webhook waiting on that commit waits for the copy and its fsyncs too (tens of ms). The
# store checkpoints from the reader's thread instead, every second; the writer's own
# checkpoint stays as a backstop should that fall behind.
CHECKPOINT_EVERY_SECONDS = 1.0
_WRITER_CHECKPOINT_PAGES = 20_000

__all__ = [
    "CrmState",
    "CrmStats",
    "DeliveryJob",
    "DeliveryOutcome",
    "DueSlice",
    "EventSummary",
    "EventView",
    "IntakeResult",
    "JournalEntry",
    "NewEvent",
    "OperatorStats",
    "QueueStats",
    "RequestRecord",
    "RequestRow",
    "Store",
    "utc_text",
]


class Store(QueueMixin, OperatorMixin, OversightMixin):
    """The bridge's SQLite database: open it with `await Store.open(path, clock=...)`."""

    # ---- lifecycle -------------------------------------------------------------------

    @classmethod
    async def open(cls, path: Path, *, clock: Clock, cipher: TokenCipher | None = None) -> Store:
        try:
            create_private_file(path)
            # The writer owns this connection from here on; sqlite3's own
            # transaction handling stays off, the store says BEGIN and COMMIT itself.
            writer = sqlite3.connect(
                path,
                isolation_level=None,
                check_same_thread=False,
                # Multi-row inserts have a statement per row count (store.intake).
                cached_statements=3 * ROWS_PER_STATEMENT + 64,
            )
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailable(f"cannot open database {path}: {exc}") from exc
        try:
            reader = await aiosqlite.connect(path, isolation_level=None)
            for statement in _PRAGMAS:
                writer.execute(statement)
                await reader.execute(statement)
        except (OSError, sqlite3.Error) as exc:
            writer.close()
            raise StoreUnavailable(f"cannot open database {path}: {exc}") from exc
        writer.execute(f"PRAGMA wal_autocheckpoint={_WRITER_CHECKPOINT_PAGES}")
        store = cls(path, writer, reader, clock, cipher)
        store._writer.start()
        try:
            await store._writer.call(migrate)
            # From here on a lock held by another process is waited for by the writer,
            # on its thread (`writer.begin_immediate`), not by SQLite on the event loop.
            await store._writer.call(lambda db: db.execute("PRAGMA busy_timeout=0"))
        except (OSError, sqlite3.Error) as exc:
            await store.close()
            raise StoreUnavailable(f"cannot migrate database {path}: {exc}") from exc
        store._checkpointer = asyncio.get_running_loop().create_task(store._checkpoint_loop())
        return store

    async def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpointer
            self._checkpointer = None
        await self._writer.close()
        await self._reader.close()

    async def _checkpoint_loop(self) -> None:
        """Copy committed WAL frames into the database file, off the commit path."""
        while True:
            await asyncio.sleep(CHECKPOINT_EVERY_SECONDS)
            try:
                await self._reader.execute_fetchall("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error as exc:
                log.warning("WAL checkpoint failed (the writer's own will take over): %s", exc)

    async def schema_version(self) -> int:
        rows = await self._read("PRAGMA user_version")
        return int(rows[0][0])
