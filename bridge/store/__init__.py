"""The only package with SQL: schema, migrations, and every read and write of the bridge.

Durability contract (SPEC §7): WAL with `synchronous=FULL`, so an event acknowledged
with a 2xx survives a power cut. Intake writes go through a group-commit writer: one
task collects whatever requests are waiting, writes them in one transaction, commits
once, then wakes every request — each still waits for its own commit, but concurrent
requests share the fsync. Request-log rows ride along in the next batch and are not
awaited. Worker writes use the same connection, one short transaction each.

Times are stored as UTC text `YYYY-MM-DD HH:MM:SS.fff` (sortable, understood by
SQLite's date functions); schedule times as unix seconds.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import aiosqlite

from bridge.crypto import TokenCipher
from bridge.errors import StoreUnavailable
from bridge.store.base import (
    STOP,
    Clock,
    create_private_file,
)
from bridge.store.operator import OperatorMixin
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


class Store(QueueMixin, OperatorMixin):
    """The bridge's SQLite database: open it with `await Store.open(path, clock=...)`."""

    # ---- lifecycle -------------------------------------------------------------------

    @classmethod
    async def open(cls, path: Path, *, clock: Clock, cipher: TokenCipher | None = None) -> Store:
        try:
            create_private_file(path)
            writer = await aiosqlite.connect(path, isolation_level=None)
            reader = await aiosqlite.connect(path, isolation_level=None)
            for conn in (writer, reader):
                await conn.execute("PRAGMA journal_mode=WAL")
                await conn.execute("PRAGMA synchronous=FULL")
                await conn.execute("PRAGMA foreign_keys=ON")
                await conn.execute("PRAGMA busy_timeout=5000")
            await migrate(writer)
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailable(f"cannot open database {path}: {exc}") from exc
        store = cls(path, writer, reader, clock, cipher)
        store._writer_task = asyncio.get_running_loop().create_task(store._writer_loop())
        return store

    async def close(self) -> None:
        if self._writer_task is not None:
            await self._queue.put(STOP)
            await self._writer_task
            self._writer_task = None
        await self._writer.close()
        await self._reader.close()

    async def schema_version(self) -> int:
        rows = await self._read("PRAGMA user_version")
        return int(rows[0][0])
