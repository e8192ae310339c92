"""The connections and the guards every part of the store shares."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import stat
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from bridge.crypto import TokenCipher
from bridge.errors import StoreUnavailable
from bridge.store.records import (
    IntakeResult,
    NewEvent,
    RequestRecord,
)
from bridge.store.writer import Writer, begin_immediate, rollback_quietly

log = logging.getLogger("bridge.store")

Clock = Callable[[], float]
T = TypeVar("T")


# What the group-commit writer takes: an event to store, or a request-log row.
IntakeItem = NewEvent | RequestRecord


class StoreBase(ABC):
    def __init__(
        self,
        path: Path,
        writer: sqlite3.Connection,
        reader: aiosqlite.Connection,
        clock: Clock,
        cipher: TokenCipher | None,
    ) -> None:
        self.path = path
        self._writer: Writer[IntakeItem, IntakeResult | None] = Writer(
            writer, self._apply_intake_batch, guard=self._check_file
        )
        self._reader = reader
        self._clock = clock
        self._cipher = cipher
        self._inode = _inode(path)
        # The WAL's and shared-memory file's inodes while the store is open (None before
        # the store is ready), and why writes are refused since they changed.
        self._side_inodes: tuple[int | None, int | None] | None = None
        self._side_files_lost: str | None = None
        self._reopen_refused = False  # logged once that it cannot reopen by itself
        self._checkpointer: asyncio.Task[None] | None = None

    @abstractmethod
    def _apply_intake_batch(
        self, db: sqlite3.Connection, batch: list[IntakeItem]
    ) -> list[IntakeResult | None]:
        """One group-commit batch, inside the writer's transaction (see `store.intake`)."""

    # ---- plumbing ---------------------------------------------------------------------

    async def _write(self, apply: Callable[[sqlite3.Connection], T]) -> T:
        """`apply(conn)` in a write transaction of its own, on the writer thread."""
        return await _stored(self._writer.call(lambda db: self._transaction(db, apply)))

    async def _write_grouped(self, apply: Callable[[sqlite3.Connection], T]) -> T:
        """`apply(conn)` committed with the next group commit, on the event loop.

        For the worker's writes of a few rows: each would otherwise cost a transaction,
        an fsync and a turn of the writer of its own, and hold up intake meanwhile."""
        return await _stored(self._writer.transact(apply))

    def _transaction(self, db: sqlite3.Connection, apply: Callable[[sqlite3.Connection], T]) -> T:
        """On the writer's thread: the file check, then `apply` between BEGIN and COMMIT."""
        self._check_file()
        begin_immediate(db)
        try:
            result = apply(db)
            db.execute("COMMIT")
        except BaseException:
            rollback_quietly(db)
            raise
        return result

    async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            # One job on the reader's thread, not three (execute, fetch, close): no other
            # job (a checkpoint) runs while the statement is half-read.
            return list(await self._reader.execute_fetchall(sql, params))
        except (sqlite3.Error, ValueError) as exc:  # ValueError: closed for a reopen
            raise StoreUnavailable(f"database read failed: {exc}") from exc

    def _check_file(self) -> None:
        # SQLite keeps writing through its open descriptor to a file that was deleted,
        # replaced or made read-only; such a write must not be acknowledged.
        try:
            info = os.stat(self.path)
        except OSError as exc:
            raise StoreUnavailable(f"database file {self.path} is gone: {exc}") from exc
        if info.st_ino != self._inode:
            raise StoreUnavailable(f"database file {self.path} was replaced")
        if not info.st_mode & stat.S_IWUSR:
            raise StoreUnavailable(f"database file {self.path} was made read-only")
        # So does it into a deleted WAL: a commit there is acknowledged and lost at the
        # next restart, and another process opening the database meanwhile starts a WAL
        # of its own. Two more stats a batch; the store reopens itself when it can
        # (`Store._reopen_after_lost_side_files`).
        if self._side_files_lost is not None:
            raise StoreUnavailable(self._side_files_lost)
        if self._side_inodes is not None and self._side_inodes != side_inodes(self.path):
            self._side_files_lost = (
                f"the WAL or shared-memory file of {self.path} was deleted or replaced"
            )
            raise StoreUnavailable(self._side_files_lost)


async def _stored(write: Awaitable[T]) -> T:
    try:
        return await write
    except (sqlite3.Error, OSError) as exc:
        raise StoreUnavailable(f"database write failed: {exc}") from exc


def create_private_file(path: Path) -> None:
    # Created 0600 before SQLite opens it: the payloads hold personal data.
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))


def _inode(path: Path | str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def side_inodes(path: Path) -> tuple[int | None, int | None]:
    """The inodes of the database's WAL and shared-memory files (None: there is none)."""
    return _inode(f"{path}-wal"), _inode(f"{path}-shm")
