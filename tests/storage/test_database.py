"""The storage seam: page size of new and existing files, checkpoint thresholds."""

from __future__ import annotations

import os
import time
from pathlib import Path

import apsw
import pytest

from pocketserver.storage import database as dbm
from pocketserver.storage.database import Database


def test_new_database_uses_large_pages(tmp_path: Path) -> None:
    db = Database(tmp_path / "new.db")
    try:
        assert db.read_sync(lambda c: c.execute("PRAGMA page_size").get) == dbm.PAGE_SIZE
        ckpt = db._checkpointer
        assert ckpt is not None
        assert ckpt.soft_pages * dbm.PAGE_SIZE == dbm.WAL_CHECKPOINT_BYTES
        assert ckpt.hard_pages * dbm.PAGE_SIZE == dbm.WAL_HARD_BYTES
    finally:
        db.close()


def test_existing_database_keeps_its_page_size(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = apsw.Connection(str(path))
    conn.execute("PRAGMA page_size=4096")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE keep (x)")
    conn.close()
    db = Database(path)
    try:
        assert db.read_sync(lambda c: c.execute("PRAGMA page_size").get) == 4096
        assert db.read_sync(lambda c: c.execute("SELECT COUNT(*) FROM keep").get) == 0
        ckpt = db._checkpointer
        assert ckpt is not None and ckpt.hard_pages == dbm.WAL_HARD_BYTES // 4096
    finally:
        db.close()


MB = 1 << 20


def _write_megabytes(db: Database, n: int) -> None:
    """``n`` transactions of 1 MB each (the table is made on first use)."""
    blob = os.urandom(MB)
    db.write_sync(lambda c: c.execute("CREATE TABLE IF NOT EXISTS b (x BLOB)"))
    for _ in range(n):
        db.write_sync(lambda c: c.execute("INSERT INTO b VALUES (?)", (blob,)))


def _poll(pred, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


def _wal_size(path: Path) -> int:
    wal = Path(str(path) + "-wal")
    return wal.stat().st_size if wal.exists() else 0


def test_writes_past_the_soft_size_are_checkpointed(tmp_path: Path) -> None:
    path = tmp_path / "burst.db"
    db = Database(path)
    try:
        _write_megabytes(db, dbm.WAL_CHECKPOINT_BYTES // MB + 4)  # past the size that wakes it
        assert _poll(lambda: db.statistics()["checkpoints"] >= 1)
    finally:
        db.close()


def test_a_bulk_write_defers_checkpoints_until_it_ends(tmp_path: Path) -> None:
    path = tmp_path / "bulk.db"
    db = Database(path)
    try:
        with db.bulk():
            _write_megabytes(db, dbm.WAL_CHECKPOINT_BYTES // MB + 4)
            time.sleep(0.3)
            assert db.statistics()["checkpoints"] == 0
        assert _poll(lambda: db.statistics()["checkpoints"] >= 1)
        # The next write starts the WAL over from its beginning: it stops growing.
        size = _wal_size(path)
        db.write_sync(lambda c: c.execute("INSERT INTO b VALUES (?)", (b"small",)))
        assert _wal_size(path) <= size
    finally:
        db.close()


def test_an_urgent_wal_is_checkpointed_during_a_bulk_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The bulk write never ends, yet the WAL past the urgent size is copied back; past
    # the hard size the writer does it itself, so the WAL stays bounded.
    monkeypatch.setattr(dbm, "WAL_CHECKPOINT_BYTES", 2 << 20)
    monkeypatch.setattr(dbm, "WAL_URGENT_BYTES", 6 << 20)
    monkeypatch.setattr(dbm, "WAL_HARD_BYTES", 12 << 20)
    path = tmp_path / "urgent.db"
    db = Database(path)
    try:
        with db.bulk():
            for _ in range(40):
                _write_megabytes(db, 1)
                assert _wal_size(path) <= (12 << 20) + (2 << 20)
            assert db.statistics()["checkpoints"] >= 1
    finally:
        db.close()
    assert _wal_size(path) == 0


def test_commits_never_truncate_the_wal(tmp_path: Path) -> None:
    db = Database(tmp_path / "limit.db")
    try:
        assert db.write_sync(lambda c: c.execute("PRAGMA journal_size_limit").get) == -1
    finally:
        db.close()


def _small_wal(monkeypatch: pytest.MonkeyPatch, *, quiet_s: float, urgent: int) -> None:
    """Checkpoints from 2 MB of WAL, urgent from ``urgent`` bytes, the file cut back
    to 4 MB after ``quiet_s`` of idleness."""
    monkeypatch.setattr(dbm, "WAL_CHECKPOINT_BYTES", 2 << 20)
    monkeypatch.setattr(dbm, "WAL_URGENT_BYTES", urgent)
    monkeypatch.setattr(dbm, "WAL_SIZE_LIMIT", 4 << 20)
    monkeypatch.setattr(dbm, "TRUNCATE_QUIET_S", quiet_s)


def _checkpointer(db: Database) -> dbm._Checkpointer:
    ckpt = db._checkpointer
    assert ckpt is not None
    return ckpt


def test_a_large_wal_is_truncated_once_the_database_is_idle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A long quiet time, so that the cut cannot come before the checks made before it.
    _small_wal(monkeypatch, quiet_s=1.0, urgent=dbm.WAL_URGENT_BYTES)
    path = tmp_path / "shrink.db"
    db = Database(path)
    try:
        ckpt = _checkpointer(db)
        with db.bulk():
            _write_megabytes(db, 8)
        assert _poll(lambda: db.statistics()["checkpoints"] >= 1)
        # The first commit after the checkpoint starts the WAL over but leaves the
        # file as large as it was (no truncation on the writer's path) ...
        before = _wal_size(path)
        db.write_sync(lambda c: c.execute("INSERT INTO b VALUES (?)", (b"small",)))
        assert _wal_size(path) == before > 4 << 20
        assert ckpt.truncations == 0
        # ... and the thread cuts it back once nothing has happened for a while.
        assert _poll(lambda: ckpt.truncations == 1)
        assert _wal_size(path) <= 4 << 20
        assert db.read_sync(lambda c: c.execute("SELECT COUNT(*) FROM b").get) == 9
    finally:
        db.close()


def test_truncation_waits_for_a_bulk_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _small_wal(monkeypatch, quiet_s=0.2, urgent=6 << 20)
    path = tmp_path / "busy.db"
    db = Database(path)
    try:
        ckpt = _checkpointer(db)
        with db.bulk():
            _write_megabytes(db, 8)  # urgent: checkpointed during the bulk write
            assert _poll(lambda: db.statistics()["checkpoints"] >= 1)
            time.sleep(0.6)
            assert ckpt.truncations == 0 and _wal_size(path) > 4 << 20
        assert _poll(lambda: ckpt.truncations == 1)
    finally:
        db.close()


def test_watched_changes_bump_their_generation_after_commit(tmp_path: Path) -> None:
    path = tmp_path / "watch.db"
    db = Database(path)
    try:
        db.write_sync(
            lambda c: c.execute(
                "INSERT INTO users (user_id, created_ts) VALUES ('@a:t', 0), ('@b:t', 0)"
            )
        )
        db.write_sync(
            lambda c: c.execute(
                "INSERT INTO access_tokens (token_hash, user_id, device_id, created_ts)"
                " VALUES (x'01', '@a:t', 'D', 0)"
            )
        )
        gen = db.generation("auth")  # inserts are not watched: nothing cached can be stale
        db.write_sync(lambda c: c.execute("UPDATE users SET displayname = 'A'"))
        assert db.generation("auth") == gen
        seen: list[int] = []

        def delete_token(c: dbm.Conn) -> None:
            c.execute("DELETE FROM access_tokens WHERE token_hash = x'01'")
            seen.append(db.generation("auth"))

        db.write_sync(delete_token)
        assert seen == [gen] and db.generation("auth") == gen + 1  # after the commit
        db.write_sync(lambda c: c.execute("UPDATE users SET locked = 1 WHERE user_id = '@b:t'"))
        assert db.generation("auth") == gen + 2
    finally:
        db.close()
    # The triggers live on the server's connection only: any other tool edits the file.
    other = apsw.Connection(str(path))
    other.execute("UPDATE users SET locked = 0")
    other.execute("DELETE FROM access_tokens")
    other.close()


async def test_shrink_memory_hands_back_page_caches_and_keeps_the_data(tmp_path: Path) -> None:
    db = Database(tmp_path / "s.db")
    try:
        _write_megabytes(db, 2)
        rows = await db.read(lambda c: c.execute("SELECT count(*) FROM b").get)
        before = apsw.memory_used()
        await db.shrink_memory()
        assert apsw.memory_used() < before
        assert await db.read(lambda c: c.execute("SELECT count(*) FROM b").get) == rows
    finally:
        db.close()
