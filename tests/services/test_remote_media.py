"""The media service's copies of other servers' media, with a fake remote: fetched
once however many ask at once, kept (the second download is local), thumbnailed here,
and every failure the remote's or the limit's error, with nothing half-stored."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from pocketserver.config import config_from_dict
from pocketserver.errors import MatrixError, NotFound
from pocketserver.services.clock import Clock
from pocketserver.services.media import MediaService, RemoteFile
from pocketserver.storage import media as store
from pocketserver.storage.database import Database
from tests.api.helpers_media import png_bytes

REMOTE = "remote.test"


class FakeRemote:
    """Serves ``files`` {media_id: (content_type, filename, bytes)}; counts downloads.
    ``gate``, when set, holds every download after its first piece until it is set."""

    def __init__(self, files: dict[str, tuple[str, str | None, bytes]]) -> None:
        self.files = files
        self.downloads: list[str] = []
        self.gate: trio.Event | None = None
        self.started = trio.Event()
        self.error: MatrixError | None = None

    @asynccontextmanager
    async def download(self, server_name: str, media_id: str, timeout_ms: int) -> AsyncIterator[RemoteFile]:
        assert server_name == REMOTE
        self.downloads.append(media_id)
        if self.error is not None:
            raise self.error
        if media_id not in self.files:
            raise NotFound("not there")
        ctype, filename, data = self.files[media_id]

        async def pieces() -> AsyncIterator[bytes]:
            for i in range(0, len(data), 65536):
                yield data[i : i + 65536]
                if self.gate is not None:
                    self.started.set()
                    await self.gate.wait()

        yield RemoteFile(ctype, filename, pieces())


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[tuple[MediaService, FakeRemote, Database]]:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    cfg = config_from_dict(
        {"server_name": "test.local", "data_dir": str(data_dir), "media": {"max_upload_size": 1_000_000}}
    )
    db = Database(cfg.path("database"))
    remote = FakeRemote({})
    try:
        yield MediaService(cfg, db, Clock(), remote=remote), remote, db
    finally:
        db.close()


async def _read(svc: MediaService, media_id: str) -> bytes:
    dl = await svc.download(REMOTE, media_id)
    return b"".join([p async for p in svc.stream(dl)])


async def test_remote_media_is_fetched_once_and_kept(env: Any) -> None:
    svc, remote, db = env
    data = bytes(range(256)) * 2000
    remote.files["m1"] = ("application/pdf", "doc.pdf", data)
    remote.gate = trio.Event()
    got: list[bytes] = []

    async def one() -> None:
        got.append(await _read(svc, "m1"))

    async with trio.open_nursery() as n:
        for _ in range(5):
            n.start_soon(one)
        await remote.started.wait()
        remote.gate.set()
    assert got == [data] * 5
    assert remote.downloads == ["m1"]
    dl = await svc.download(REMOTE, "m1")
    assert (dl.content_type, dl.filename, dl.size) == ("application/pdf", "doc.pdf", len(data))
    assert remote.downloads == ["m1"]
    info = await db.read(store.get_media, REMOTE, "m1")
    assert info.user_id is None and info.size == len(data)


async def test_a_cancelled_fetch_leaves_nothing_and_the_next_request_fetches(env: Any) -> None:
    svc, remote, db = env
    data = b"z" * 300_000
    remote.files["m2"] = ("text/plain", None, data)
    remote.gate = trio.Event()
    with trio.move_on_after(5):
        async with trio.open_nursery() as n:
            n.start_soon(_read, svc, "m2")
            await remote.started.wait()
            n.cancel_scope.cancel()  # the client went away mid-download
    assert await db.read(store.get_media, REMOTE, "m2") is None
    counts = await db.read(store.count_rows, ["media_content", "media_chunks"])
    assert counts == {"media_content": 0, "media_chunks": 0}
    remote.gate = None
    assert await _read(svc, "m2") == data
    assert remote.downloads == ["m2", "m2"]


async def test_waiters_share_the_fetchs_error(env: Any) -> None:
    svc, remote, _ = env
    remote.error = MatrixError(502, "M_UNKNOWN", "Failed to fetch")
    errors: list[str] = []

    async def one() -> None:
        try:
            await svc.download(REMOTE, "m3")
        except MatrixError as e:
            errors.append(e.errcode)

    async with trio.open_nursery() as n:
        for _ in range(3):
            n.start_soon(one)
    assert errors == ["M_UNKNOWN"] * 3
    assert 1 <= len(remote.downloads) <= 3
    with pytest.raises(MatrixError) as e:
        await svc.download(REMOTE, "gone")
    assert e.value.status == 404 or e.value.status == 502


async def test_too_large_is_502_and_not_kept(env: Any) -> None:
    svc, remote, db = env
    remote.files["big"] = ("application/zip", None, b"\x01" * 1_500_000)
    for _ in range(2):
        with pytest.raises(MatrixError) as e:
            await svc.download(REMOTE, "big")
        assert (e.value.status, e.value.errcode) == (502, "M_TOO_LARGE")
    assert remote.downloads == ["big", "big"]
    counts = await db.read(store.count_rows, ["media", "media_content", "media_chunks"])
    assert counts == {"media": 0, "media_content": 0, "media_chunks": 0}


async def test_unknown_quarantined_and_not_allowed_are_not_found(env: Any) -> None:
    svc, remote, db = env
    with pytest.raises(MatrixError) as e:
        await svc.download(REMOTE, "nope")
    assert e.value.errcode == "M_NOT_FOUND"
    remote.files["q"] = ("text/plain", None, b"quarantine me")
    with pytest.raises(MatrixError) as e:
        await svc.download(REMOTE, "q", allow_remote=False)
    assert e.value.errcode == "M_NOT_FOUND"
    assert await _read(svc, "q") == b"quarantine me"
    await db.write(lambda conn: conn.execute("UPDATE media SET quarantined = 1"))
    with pytest.raises(MatrixError) as e:
        await svc.download(REMOTE, "q")
    assert e.value.errcode == "M_NOT_FOUND"
    with pytest.raises(MatrixError) as e:
        await svc.download("not a server", "q")
    assert e.value.errcode == "M_NOT_FOUND"
    assert remote.downloads == ["nope", "q"]


async def test_thumbnails_of_remote_media_are_made_from_the_copy(env: Any) -> None:
    svc, remote, _ = env
    remote.files["img"] = ("image/png", "pic.png", png_bytes(400, 300))
    dl = await svc.thumbnail(REMOTE, "img", 32, 32, "scale", False)
    thumb = b"".join([p async for p in svc.stream(dl)])
    from PIL import Image

    assert max(Image.open(io.BytesIO(thumb)).size) < 400
    await svc.thumbnail(REMOTE, "img", 64, 64, "crop", False)
    assert remote.downloads == ["img"]
