"""The one storage seam: a single SQLite file through apsw.

``await db.write(fn, *args)`` runs ``fn(conn, *args)`` in one transaction on the single
writer connection, in a worker thread, so the event loop never blocks on disk.
``await db.read(fn, *args)`` runs ``fn`` on one of a few read-only connections (WAL lets
readers run beside the writer). Storage functions are plain sync functions taking the
connection first, so they are tested directly on ``:memory:``.

Durability: WAL with ``synchronous=NORMAL`` loses nothing when the *process* is killed
(a committed transaction is in the WAL before ``write`` returns); ``durable=True`` on
open switches to ``FULL`` for power-loss safety at some write cost.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

import apsw
import trio

from pocketserver.storage.schema import APPLICATION_ID, DatabaseTooNewError, migrate

T = TypeVar("T")

# Storage functions take the connection first. apsw types every column value as the
# union of all SQLite values, so each storage function converts what it reads itself;
# the alias keeps their signatures readable.
Conn: TypeAlias = Any


def _configure(conn: apsw.Connection, *, readonly: bool, durable: bool) -> None:
    conn.setbusytimeout(10_000)
    conn.execute("PRAGMA foreign_keys=OFF")
    # A small page cache per connection: the OS page cache does the rest, and memory
    # is the scarce resource on a Raspberry Pi.
    conn.execute("PRAGMA cache_size=-2048")
    conn.execute("PRAGMA temp_store=MEMORY")
    if not readonly:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")


def open_connection(
    path: str | Path, *, readonly: bool = False, durable: bool = False
) -> apsw.Connection:
    flags = apsw.SQLITE_OPEN_READONLY if readonly else (
        apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
    )
    conn = apsw.Connection(str(path), flags=flags)
    _configure(conn, readonly=readonly, durable=durable)
    return conn


def open_memory() -> apsw.Connection:
    """A migrated in-memory database, for storage tests."""
    conn = apsw.Connection(":memory:")
    _configure(conn, readonly=True, durable=False)  # (no WAL for memory databases)
    migrate(conn)
    return conn


class _Slot:
    __slots__ = ("conn", "lock")

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self.lock = threading.Lock()


class Database:
    """One writer connection and a small pool of readers over one file."""

    def __init__(self, path: str | Path, *, readers: int = 2, durable: bool = False) -> None:
        self.path = str(path)
        self._memory = self.path == ":memory:"
        self._writer = open_connection(self.path, durable=durable)
        migrate(self._writer)
        self._write_lock = trio.Lock()
        self._readers: list[_Slot] = []
        if not self._memory:
            self._readers = [
                _Slot(open_connection(self.path, readonly=True)) for _ in range(readers)
            ]
        self._reader_sem = trio.Semaphore(max(1, len(self._readers)))
        self._closed = False
        self.writes = 0
        self.reads = 0

    # -- the seam --------------------------------------------------------------

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` in one write transaction off the event loop.

        The transaction commits before this returns; if the caller is cancelled while
        it runs, the thread still finishes and commits (it is never half-applied).
        """
        async with self._write_lock:
            self.writes += 1
            return await trio.to_thread.run_sync(self._run_write, fn, args, abandon_on_cancel=False)

    def _run_write(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        conn: Conn = self._writer
        with conn:
            result = fn(conn, *args)
        return result

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` in one read transaction on a reader connection."""
        self.reads += 1
        if self._memory:
            async with self._write_lock:
                return await trio.to_thread.run_sync(self._run_write, fn, args)
        async with self._reader_sem:
            for slot in self._readers:
                if slot.lock.acquire(blocking=False):
                    try:
                        return await trio.to_thread.run_sync(
                            self._run_read, slot.conn, fn, args, abandon_on_cancel=False
                        )
                    finally:
                        slot.lock.release()
            raise RuntimeError("no free reader connection")  # unreachable: semaphore

    @staticmethod
    def _run_read(conn: Conn, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        with conn:
            result = fn(conn, *args)
        return result

    def write_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """For start-up and the CLI, before the event loop runs."""
        return self._run_write(fn, args)

    def read_sync(self, fn: Callable[..., T], *args: Any) -> T:
        return self._run_write(fn, args)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for slot in self._readers:
            slot.conn.close()
        try:
            self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except apsw.Error:
            pass
        self._writer.close()

    def statistics(self) -> dict[str, int]:
        return {"writes": self.writes, "reads": self.reads, "readers": len(self._readers)}


__all__ = [
    "APPLICATION_ID",
    "Conn",
    "Database",
    "DatabaseTooNewError",
    "open_connection",
    "open_memory",
]
