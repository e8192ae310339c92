"""The connections, the write lock and the guards every part of the store shares."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import stat
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
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

log = logging.getLogger("bridge.store")

Clock = Callable[[], float]
T = TypeVar("T")


@dataclass
class PendingIntake:
    record: RequestRecord | None
    event: NewEvent | None
    future: asyncio.Future[IntakeResult] | None = None


STOP = object()


class StoreBase:
    def __init__(
        self,
        path: Path,
        writer: aiosqlite.Connection,
        reader: aiosqlite.Connection,
        clock: Clock,
        cipher: TokenCipher | None,
    ) -> None:
        self.path = path
        self._writer = writer
        self._reader = reader
        self._clock = clock
        self._cipher = cipher
        self._write_lock = asyncio.Lock()
        self._queue: asyncio.Queue[PendingIntake | object] = asyncio.Queue()
        self._writer_task: asyncio.Task[None] | None = None
        self._inode = _inode(path)

    # ---- plumbing ---------------------------------------------------------------------

    async def _write(self, apply: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        async with self._write_lock:
            try:
                self._check_file()
                await self._writer.execute("BEGIN IMMEDIATE")
                result = await apply(self._writer)
                await self._writer.execute("COMMIT")
                return result
            except (sqlite3.Error, OSError) as exc:
                await self._rollback_quietly()
                raise StoreUnavailable(f"database write failed: {exc}") from exc
            except BaseException:
                # Cancellation at shutdown included: never leave the transaction open.
                await asyncio.shield(self._rollback_quietly())
                raise

    async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            async with self._reader.execute(sql, params) as cursor:
                return list(await cursor.fetchall())
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"database read failed: {exc}") from exc

    async def _rollback_quietly(self) -> None:
        # The connection may be the very thing that failed; nothing is left to undo then.
        with contextlib.suppress(sqlite3.Error):
            if self._writer.in_transaction:
                await self._writer.execute("ROLLBACK")

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


def create_private_file(path: Path) -> None:
    # Created 0600 before SQLite opens it: the payloads hold personal data.
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None
