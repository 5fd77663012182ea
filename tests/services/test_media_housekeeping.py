"""The media service against a real database file, and the `pocketserver media` CLI."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from pocketserver.cli import main
from pocketserver.config import config_from_dict
from pocketserver.errors import MatrixError
from pocketserver.services.clock import Clock
from pocketserver.services.media import MediaService
from pocketserver.storage import media as store
from pocketserver.storage.database import Database


async def _pieces(data: bytes, size: int = 65536) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


class FakeClock(Clock):
    def __init__(self, now: int) -> None:
        self.now = now

    def time_ms(self) -> int:
        return self.now


def _setup(tmp_path: Path, **media: Any) -> tuple[Any, Path]:
    data_dir = tmp_path / "data"
    conf = tmp_path / "pocketserver.toml"
    lines = ['server_name = "test.local"', f'data_dir = "{data_dir}"', 'log_level = "warning"', "[media]"]
    lines += [f"{k} = {v}" for k, v in media.items()]
    conf.write_text("\n".join(lines) + "\n")
    cfg = config_from_dict({"server_name": "test.local", "data_dir": str(data_dir), "media": media})
    data_dir.mkdir()
    return cfg, conf


async def test_service_upload_dedupe_and_cli_delete_then_purge(tmp_path: Path, capsys: Any) -> None:
    cfg, conf = _setup(tmp_path)
    db = Database(cfg.path("database"))
    clock = FakeClock(1_700_000_000_000)
    svc = MediaService(cfg, db, clock)
    logs = b"2024-05-01T12:00:00Z INFO sync user=@alice:test.local took=12ms\n" * 200_000
    a = await svc.upload("@alice:test.local", _pieces(logs), None, "text/plain", "a.log")
    clock.now += 86_400_000
    b = await svc.upload("@bob:test.local", _pieces(logs), None, "text/plain", "b.log")
    noise = os.urandom(3_000_000)
    await svc.upload("@bob:test.local", _pieces(noise), None, "application/zip", None)
    stats = await db.read(store.storage_stats)
    assert stats["media"] == 3 and stats["contents"] == 2
    # 12.6 MB of logs stored once, compressed far below its size.
    assert stats["stored_bytes"] < len(noise) * 1.01 + len(logs) / 10
    db.close()

    assert main(["--config", str(conf), "media", "delete", "--id", a]) == 0
    assert main(["--config", str(conf), "media", "delete", "--before", "2023-11-15"]) == 0
    assert main(["--config", str(conf), "media", "delete", "--id", "not-an-mxc"]) == 2
    out = capsys.readouterr().out
    assert "deleted 1 media item(s)" in out and "deleted 0 media item(s)" in out
    size_before = cfg.path("database").stat().st_size
    assert main(["--config", str(conf), "media", "delete", "--user", "@bob:test.local", "--purge"]) == 0
    assert "deleted 2 media item(s)" in capsys.readouterr().out
    assert cfg.path("database").stat().st_size < size_before - 2_500_000

    db = Database(cfg.path("database"))
    try:
        counts = await db.read(store.count_rows, ["media", "media_content", "media_chunks"])
        assert counts == {"media": 0, "media_content": 0, "media_chunks": 0}
        svc = MediaService(cfg, db, clock)
        with pytest.raises(MatrixError) as e:
            await svc.download("test.local", b.rsplit("/", 1)[1])
        assert e.value.errcode == "M_NOT_FOUND"
    finally:
        db.close()
    assert main(["--config", str(conf), "media", "stats"]) == 0
    assert "media            0" in capsys.readouterr().out


async def test_expired_create_ids_are_not_found(tmp_path: Path) -> None:
    cfg, _ = _setup(tmp_path)
    db = Database(cfg.path("database"))
    clock = FakeClock(1_000_000)
    svc = MediaService(cfg, db, clock)
    try:
        mxc, expires = await svc.create("@a:test.local")
        clock.now = expires + 1
        media_id = mxc.rsplit("/", 1)[1]
        with pytest.raises(MatrixError) as e:
            await svc.upload_to("@a:test.local", "test.local", media_id, _pieces(b"x"), 1, None, None)
        assert e.value.errcode == "M_NOT_FOUND"
        # The sweep forgets it.
        async with trio.open_nursery() as n:
            await n.start(svc.run)
            n.cancel_scope.cancel()
        assert await db.read(store.get_media, "test.local", media_id) is None
    finally:
        db.close()


async def test_too_many_pending_uploads_is_rate_limited(tmp_path: Path) -> None:
    cfg, _ = _setup(tmp_path)
    db = Database(cfg.path("database"))
    svc = MediaService(cfg, db, FakeClock(1_000_000))
    try:
        for _ in range(16):
            await svc.create("@a:test.local")
        with pytest.raises(MatrixError) as e:
            await svc.create("@a:test.local")
        assert e.value.status == 429 and e.value.errcode == "M_LIMIT_EXCEEDED"
        await svc.create("@b:test.local")
    finally:
        db.close()
