"""The one storage seam: a single SQLite file through apsw.

``await db.write(fn, *args)`` runs ``fn(conn, *args)`` in one transaction on the single
writer connection, in a worker thread, so the event loop never blocks on disk.
``await db.read(fn, *args)`` runs ``fn`` on one of a few read-only connections (WAL lets
readers run beside the writer). Storage functions are plain sync functions taking the
connection first, so they are tested directly on ``:memory:``.

Durability: WAL with ``synchronous=NORMAL`` loses nothing when the *process* is killed
(a committed transaction is in the WAL before ``write`` returns); ``durable=True`` on
open switches to ``FULL`` for power-loss safety at some write cost.

Checkpoints (copying the WAL back into the database file, with its fsyncs) run on a
:class:`_Checkpointer` thread with its own connection, not inside the writer's commit as
SQLite's auto-checkpoint would: a large write (media chunks) then costs one copy on the
writer's path instead of two plus a sync. The thread waits while a bulk write streams
in (:meth:`Database.bulk`: an upload) and then until the database has been idle for
:data:`QUIET_S` (no transaction began or ended), unless the WAL is past
:data:`WAL_URGENT_BYTES` (more than a maximum-size upload): neither an upload nor the
requests right after it compete with the copy, which a personal server's idle moments
absorb. The writer still checkpoints itself,
waiting for the thread, if the WAL ever grows past :data:`WAL_HARD_BYTES`. A WAL file
left larger than :data:`WAL_SIZE_LIMIT` is cut back to that size by the same thread
once the database has been idle for :data:`TRUNCATE_QUIET_S`, never by a request's
commit (SQLite's ``journal_size_limit`` truncates inside the first commit after a
checkpoint: freeing 100 MB of file cost that commit about 50 ms). It is cut back, not
emptied, because overwriting a file's cached pages costs half of what growing it
does. (With
``synchronous=NORMAL`` the WAL is synced at checkpoints, so a power cut during an
upload can lose what was committed since the last one, never corrupt the file.)
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

import apsw
import trio

from pocketserver.storage.schema import APPLICATION_ID, DatabaseTooNewError, migrate

T = TypeVar("T")

# Page size of a new database file (an existing file keeps the size it was made with).
# Larger than SQLite's 4 KiB default because media chunks are stored as blobs: every
# page costs a WAL frame (two writes) and a checkpoint copy (a read and a write), so
# 16 KiB pages write a megabyte with a quarter of the system calls, at no measurable
# cost to small transactions (benchmarks/bench_client.py) and about 1 MB more for an
# empty database (one page per table and index).
PAGE_SIZE = 16 * 1024
# WAL size (bytes) that wakes the checkpointer thread (SQLite's auto-checkpoint default,
# 1000 pages, at 16 KiB pages: fewer checkpoints, each with its two fsyncs); the thread
# then waits for the end of any bulk write and QUIET_S of idleness, unless the WAL is
# past WAL_URGENT_BYTES. Past WAL_HARD_BYTES the writer checkpoints itself so the WAL
# stays bounded.
WAL_CHECKPOINT_BYTES = 16 * 1024 * 1024
WAL_URGENT_BYTES = 128 * 1024 * 1024
WAL_HARD_BYTES = 256 * 1024 * 1024
QUIET_S = 0.05
# A WAL file larger than this after a checkpoint is cut back to it by the checkpointer
# thread once the database has been idle for TRUNCATE_QUIET_S.
WAL_SIZE_LIMIT = 64 * 1024 * 1024
TRUNCATE_QUIET_S = 1.0

# In-memory caches kept above the seam (the access-token cache of services/auth.py) are
# told of committed changes to what they cache: a change tag, and the temporary
# triggers on the writer connection that note it (temporary, so the file itself needs
# no function of ours and stays editable with any SQLite tool). Each commit that fired
# one bumps that tag's generation (Database.generation) after the commit.
WATCHED_CHANGES: dict[str, tuple[str, ...]] = {
    "auth": (
        "AFTER UPDATE ON main.access_tokens",
        "AFTER DELETE ON main.access_tokens",
        "AFTER UPDATE OF user_id, is_guest, deactivated, locked, suspended, is_admin"
        " ON main.users",
        "AFTER DELETE ON main.users",
    ),
}

# Storage functions take the connection first. apsw types every column value as the
# union of all SQLite values, so each storage function converts what it reads itself;
# the alias keeps their signatures readable.
Conn: TypeAlias = Any


DEFAULT_CACHE_KIB = 2048


def _configure(
    conn: apsw.Connection, *, readonly: bool, durable: bool, cache_kib: int = DEFAULT_CACHE_KIB
) -> None:
    conn.setbusytimeout(10_000)
    conn.execute("PRAGMA foreign_keys=OFF")
    # A small page cache per connection: the OS page cache does the rest, and memory
    # is the scarce resource on a Raspberry Pi.
    conn.execute(f"PRAGMA cache_size=-{int(cache_kib)}")
    conn.execute("PRAGMA temp_store=MEMORY")
    if not readonly:
        # Takes effect only while the file is still empty (before WAL mode is set).
        conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        # Never truncate the WAL inside a commit: the checkpointer thread does it.
        conn.execute("PRAGMA journal_size_limit=-1")


def open_connection(
    path: str | Path,
    *,
    readonly: bool = False,
    durable: bool = False,
    cache_kib: int = DEFAULT_CACHE_KIB,
) -> apsw.Connection:
    flags = apsw.SQLITE_OPEN_READONLY if readonly else (
        apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
    )
    conn = apsw.Connection(str(path), flags=flags)
    _configure(conn, readonly=readonly, durable=durable, cache_kib=cache_kib)
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


class _Checkpointer:
    """Checkpoints the WAL on its own thread and connection when the writer asks.

    Installed as the writer's WAL hook (which replaces SQLite's auto-checkpoint): after
    each commit that leaves at least :data:`WAL_CHECKPOINT_BYTES` in the WAL the thread
    is woken for a PASSIVE checkpoint, which never blocks the writer or the readers. It
    waits while a bulk write is in progress (``bulk`` > 0) and then for :data:`QUIET_S`
    without any transaction (``last_activity``), unless the WAL is past
    :data:`WAL_URGENT_BYTES`. Past :data:`WAL_HARD_BYTES` the writer waits for the
    thread and checkpoints itself.

    A WAL file left over :data:`WAL_SIZE_LIMIT` is cut back to it once no bulk write
    runs and nothing has touched the database for :data:`TRUNCATE_QUIET_S`: this
    connection, whose ``journal_size_limit`` is that size, checkpoints what is left and
    commits a one-page write (the application ID, rewritten unchanged), which starts
    the WAL over and truncates it. That takes SQLite's write lock, so it is tried
    without waiting: if a writer or a reader is busy, it is tried again at the next
    quiet second.
    """

    def __init__(self, path: str, durable: bool, page_size: int) -> None:
        self.path = path
        self.durable = durable
        self.soft_pages = max(1, WAL_CHECKPOINT_BYTES // page_size)
        self.urgent_pages = max(2, WAL_URGENT_BYTES // page_size)
        self.hard_pages = max(3, WAL_HARD_BYTES // page_size)
        self.checkpoints = 0
        self.truncations = 0
        # Bulk writes in progress (Database.bulk), when a transaction last began or
        # ended, and the WAL's size at the last commit.
        self.bulk = 0
        self.last_activity = 0.0
        self._pages = 0
        self._wanted = threading.Event()
        self._running = threading.Lock()
        self._stop = False
        self._thread: threading.Thread | None = None

    def wal_hook(self, conn: Conn, name: str, pages: int) -> int:
        self._pages = pages
        if pages >= self.hard_pages:
            with self._running:
                try:
                    conn.wal_checkpoint(name)
                    self.checkpoints += 1
                except apsw.BusyError:
                    pass
        elif pages >= self.soft_pages and not self._stop:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="sqlite-checkpoint", daemon=True
                )
                self._thread.start()
            self._wanted.set()
        return apsw.SQLITE_OK

    def _run(self) -> None:
        conn = open_connection(self.path, durable=self.durable)
        conn.setbusytimeout(0)  # the truncating write must never wait holding the lock
        conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        truncate_pending = False
        try:
            while True:
                woken = self._wanted.wait(TRUNCATE_QUIET_S if truncate_pending else None)
                if self._stop:
                    return
                if woken:
                    self._wanted.clear()
                    self._wait_for_quiet()
                    if self._stop:
                        return
                    with self._running:
                        try:
                            conn.wal_checkpoint()
                            self.checkpoints += 1
                        except apsw.BusyError:
                            pass
                    truncate_pending = self._wal_file_size() > WAL_SIZE_LIMIT
                elif truncate_pending and self._quiet_for(TRUNCATE_QUIET_S):
                    truncate_pending = not self._truncate(conn)
        finally:
            conn.close()

    def _wal_file_size(self) -> int:
        try:
            return os.path.getsize(self.path + "-wal")
        except OSError:
            return 0

    def _quiet_for(self, seconds: float) -> bool:
        return self.bulk <= 0 and time.monotonic() - self.last_activity >= seconds

    def _truncate(self, conn: Conn) -> bool:
        """Cut the WAL file back to :data:`WAL_SIZE_LIMIT`; False if the database was
        busy (or a reader still held the old WAL, so it could not start over)."""
        with self._running:
            try:
                conn.wal_checkpoint()
                conn.execute("BEGIN IMMEDIATE")
                try:
                    app_id = int(conn.execute("PRAGMA application_id").get)
                    conn.execute(f"PRAGMA application_id={app_id}")
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            except apsw.BusyError:
                return False
        if self._wal_file_size() > WAL_SIZE_LIMIT:
            return False
        self.truncations += 1
        return True

    def _wait_for_quiet(self) -> None:
        """Until no bulk write is in progress and the database is idle, or the WAL is
        urgent to copy."""
        for _ in range(100_000):  # bounded: a commit or a bulk's end wakes each round
            if self._pages >= self.urgent_pages or self._stop:
                return
            idle = time.monotonic() - self.last_activity
            if self.bulk <= 0 and idle >= QUIET_S:
                return
            self._wanted.wait(1.0 if self.bulk > 0 else QUIET_S - idle)
            self._wanted.clear()

    def begin_bulk(self) -> None:
        self.bulk += 1

    def end_bulk(self) -> None:
        self.bulk -= 1
        if self._pages >= self.soft_pages:
            self._wanted.set()

    def stop(self) -> None:
        self._stop = True
        self._wanted.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


class Database:
    """One writer connection and a small pool of readers over one file."""

    def __init__(
        self,
        path: str | Path,
        *,
        readers: int = 2,
        durable: bool = False,
        cache_kib: int = DEFAULT_CACHE_KIB,
    ) -> None:
        """``cache_kib``: SQLite's page cache per connection. Resident memory grows by
        up to that much per connection as the caches warm, then stays."""
        self.path = str(path)
        self._memory = self.path == ":memory:"
        self._writer = open_connection(self.path, durable=durable, cache_kib=cache_kib)
        version_at_open = self._writer.execute("PRAGMA user_version").get
        if migrate(self._writer) != version_at_open and not self._memory:
            # A first start (or an upgrade) ran hundreds of statements through this
            # connection: a fresh one leaves their cached statements and pages behind.
            self._writer.close()
            self._writer = open_connection(self.path, durable=durable, cache_kib=cache_kib)
        self._checkpointer: _Checkpointer | None = None
        if not self._memory:
            page_size = self._writer.execute("PRAGMA page_size").get
            self._checkpointer = _Checkpointer(self.path, durable, int(page_size))
            self._writer.set_wal_hook(self._checkpointer.wal_hook)
        self._generations = dict.fromkeys(WATCHED_CHANGES, 0)
        self._changed: set[str] = set()
        self._watch_changes(self._writer)
        self._write_lock = trio.Lock()
        self._readers: list[_Slot] = []
        if not self._memory:
            self._readers = [
                _Slot(open_connection(self.path, readonly=True, cache_kib=cache_kib))
                for _ in range(readers)
            ]
        self._reader_sem = trio.Semaphore(max(1, len(self._readers)))
        self._closed = False
        self.writes = 0
        self.reads = 0

    def _watch_changes(self, conn: Conn) -> None:
        conn.create_scalar_function("pocketserver_changed", self._note_change, 1)
        for tag, events in WATCHED_CHANGES.items():
            for i, event in enumerate(events):
                conn.execute(
                    f"CREATE TEMP TRIGGER IF NOT EXISTS watch_{tag}_{i} {event}"
                    f" BEGIN SELECT pocketserver_changed('{tag}'); END"
                )

    def _note_change(self, tag: str) -> None:
        self._changed.add(tag)

    def generation(self, tag: str) -> int:
        """How many committed write transactions changed what ``tag`` watches
        (:data:`WATCHED_CHANGES`): a cache filled while this stayed the same is current.
        The bump comes after the commit and before ``write`` returns."""
        return self._generations[tag]

    # -- the seam --------------------------------------------------------------

    @contextlib.contextmanager
    def bulk(self) -> Iterator[None]:
        """Around a large write made of many transactions (an upload streaming in):
        checkpoints wait until it ends, unless the WAL grows past
        :data:`WAL_URGENT_BYTES`."""
        ckpt = self._checkpointer
        if ckpt is None:
            yield
            return
        ckpt.begin_bulk()
        try:
            yield
        finally:
            ckpt.end_bulk()

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` in one write transaction off the event loop.

        The transaction commits before this returns; if the caller is cancelled while
        it runs, the thread still finishes and commits (it is never half-applied).
        """
        async with self._write_lock:
            self.writes += 1
            return await trio.to_thread.run_sync(self._run_write, fn, args, abandon_on_cancel=False)

    def _run_write(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        return self._run(self._writer, fn, args)

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
                            self._run, slot.conn, fn, args, abandon_on_cancel=False
                        )
                    finally:
                        slot.lock.release()
            raise RuntimeError("no free reader connection")  # unreachable: semaphore

    def _run(self, conn: Conn, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        """``fn`` in one transaction on ``conn``, noting the activity for checkpoints."""
        ckpt = self._checkpointer
        if ckpt is not None:
            ckpt.last_activity = time.monotonic()
        try:
            with conn:
                return fn(conn, *args)
        finally:
            if ckpt is not None:
                ckpt.last_activity = time.monotonic()
            if self._changed:  # (a rolled-back change bumps too: a needless refill only)
                for tag in self._changed:
                    self._generations[tag] += 1
                self._changed.clear()

    async def shrink_memory(self) -> None:
        """Hand back the memory of SQLite's page caches (``PRAGMA shrink_memory`` on
        the writer and every idle reader): after start-up, and when the server has gone
        quiet after work. The pages come back from the OS's file cache when needed; on
        a Pi the megabytes are worth more than the microseconds."""
        if self._memory or self._closed:
            return  # a memory database's pages are its data
        async with self._write_lock:
            self._writer.execute("PRAGMA shrink_memory")
        for slot in self._readers:
            if slot.lock.acquire(blocking=False):  # a reader at work is left alone
                try:
                    slot.conn.execute("PRAGMA shrink_memory")
                finally:
                    slot.lock.release()

    def write_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """For start-up and the CLI, before the event loop runs."""
        return self._run_write(fn, args)

    def read_sync(self, fn: Callable[..., T], *args: Any) -> T:
        return self._run_write(fn, args)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._checkpointer is not None:
            self._checkpointer.stop()
        for slot in self._readers:
            slot.conn.close()
        try:
            self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except apsw.Error:
            pass
        self._writer.close()

    def statistics(self) -> dict[str, int]:
        ckpt = self._checkpointer
        return {
            "writes": self.writes,
            "reads": self.reads,
            "readers": len(self._readers),
            "checkpoints": ckpt.checkpoints if ckpt is not None else 0,
        }


__all__ = [
    "APPLICATION_ID",
    "Conn",
    "Database",
    "DatabaseTooNewError",
    "open_connection",
    "open_memory",
]
