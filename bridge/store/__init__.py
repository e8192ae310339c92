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
from bridge.store.backsync import BacksyncMixin, CrmEventRow, ForwardedStatus
from bridge.store.base import (
    Clock,
    create_private_file,
    log,
    side_inodes,
)
from bridge.store.intake import ROWS_PER_STATEMENT
from bridge.store.operator import OperatorMixin
from bridge.store.orders import OrdersMixin
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
    OrderEventRow,
    OrderLink,
    OrderStamp,
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
    "CrmEventRow",
    "CrmState",
    "CrmStats",
    "DeliveryJob",
    "DeliveryOutcome",
    "DueSlice",
    "EventSummary",
    "EventView",
    "ForwardedStatus",
    "IntakeResult",
    "JournalEntry",
    "NewEvent",
    "OperatorStats",
    "OrderEventRow",
    "OrderLink",
    "OrderStamp",
    "QueueStats",
    "RequestRecord",
    "RequestRow",
    "Store",
    "utc_text",
]


class Store(QueueMixin, OperatorMixin, OversightMixin, OrdersMixin, BacksyncMixin):
    """The bridge's SQLite database: open it with `await Store.open(path, clock=...)`."""

    # ---- lifecycle -------------------------------------------------------------------

    @classmethod
    async def open(cls, path: Path, *, clock: Clock, cipher: TokenCipher | None = None) -> Store:
        try:
            create_private_file(path)
            writer = _connect_writer(path)
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailable(f"cannot open database {path}: {exc}") from exc
        try:
            reader = await _connect_reader(path)
        except (OSError, sqlite3.Error) as exc:
            writer.close()
            raise StoreUnavailable(f"cannot open database {path}: {exc}") from exc
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
        store._side_inodes = side_inodes(path)
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
        """Copy committed WAL frames into the database file, off the commit path; and
        notice a deleted WAL even when no webhook comes."""
        while True:
            await asyncio.sleep(CHECKPOINT_EVERY_SECONDS)
            try:
                self._check_file()
            except StoreUnavailable:
                if self._side_files_lost is not None:
                    await self._reopen_after_lost_side_files()
                continue  # never checkpoint into a file that is not the database's
            try:
                await self._reader.execute_fetchall("PRAGMA wal_checkpoint(PASSIVE)")
            except (sqlite3.Error, ValueError) as exc:
                log.warning("WAL checkpoint failed (the writer's own will take over): %s", exc)

    async def _reopen_after_lost_side_files(self) -> None:
        """The WAL or shared-memory file was deleted under the open store: copy what the
        deleted WAL holds into the database file, then reopen both connections on fresh
        files. Only while no other process has made new ones: its WAL would hold pages
        of its own, and copying ours under it could corrupt the database. Until then
        (and when it cannot be done) writes answer 503."""
        if side_inodes(self.path) != (None, None):
            if not self._reopen_refused:
                self._reopen_refused = True
                log.error(
                    "%s, and another process has opened the database since: writes are"
                    " refused; stop the other process, then restart the bridge (what that"
                    " process wrote since is dropped at the restart: run it again)",
                    self._side_files_lost,
                )
            return
        try:
            busy = await self._writer.call(_checkpoint_all)
        except sqlite3.Error as exc:
            log.error(
                "%s; copying its frames into the database failed: %s", self._side_files_lost, exc
            )
            return
        if busy:
            return  # a read is still open: next time
        # Every connection of the process is closed before any is opened again: SQLite
        # shares one shared-memory mapping among a process's connections to one file.
        await self._reader.close()
        await self._writer.reconnect(lambda: _connect_writer(self.path, migrated=True))
        self._reader = await _connect_reader(self.path)
        self._side_inodes = side_inodes(self.path)
        log.warning(
            "%s: what it held was copied into the database file and the database was"
            " reopened; writes are taken again",
            self._side_files_lost,
        )
        self._side_files_lost = None

    async def schema_version(self) -> int:
        rows = await self._read("PRAGMA user_version")
        return int(rows[0][0])


def _connect_writer(path: Path, *, migrated: bool = False) -> sqlite3.Connection:
    """The writer's connection. The writer owns it; sqlite3's own transaction handling
    stays off, the store says BEGIN and COMMIT itself."""
    conn = sqlite3.connect(
        path,
        isolation_level=None,
        check_same_thread=False,
        # Multi-row inserts have a statement per row count (store.intake).
        cached_statements=3 * ROWS_PER_STATEMENT + 64,
    )
    try:
        for statement in _PRAGMAS:
            conn.execute(statement)
        conn.execute(f"PRAGMA wal_autocheckpoint={_WRITER_CHECKPOINT_PAGES}")
        if migrated:  # see `Store.open`: lock waits happen on the writer's thread
            conn.execute("PRAGMA busy_timeout=0")
    except BaseException:
        conn.close()
        raise
    return conn


async def _connect_reader(path: Path) -> aiosqlite.Connection:
    reader = await aiosqlite.connect(path, isolation_level=None)
    try:
        for statement in _PRAGMAS:
            await reader.execute(statement)
    except BaseException:
        await reader.close()
        raise
    return reader


def _checkpoint_all(db: sqlite3.Connection) -> bool:
    """Every committed frame of the WAL into the database file (and its fsync); True
    when a reader kept it from finishing."""
    busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    return bool(busy)
