"""The storage seam: page size of new and existing files, checkpoint thresholds."""

from __future__ import annotations

import os
from pathlib import Path

import apsw

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


def test_big_writes_are_checkpointed_and_the_wal_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "big.db"
    db = Database(path)
    blob = os.urandom(1 << 20)
    try:
        db.write_sync(lambda c: c.execute("CREATE TABLE b (x BLOB)"))
        for _ in range(80):  # 80 MB, past the hard limit
            db.write_sync(lambda c: c.execute("INSERT INTO b VALUES (?)", (blob,)))
        assert os.path.getsize(str(path) + "-wal") <= dbm.WAL_HARD_BYTES + 4 * (1 << 20)
    finally:
        db.close()
    assert not os.path.exists(str(path) + "-wal") or os.path.getsize(str(path) + "-wal") == 0
