"""matrix-nio uploads and downloads media through the real pocketserver process.

An image and a 20 MB file come back byte-identical through the authenticated media
endpoints; a thumbnail is served at the spec's size; an m.image event with ``info`` and
a thumbnail reaches the other user through /sync, who downloads both from the event.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import time
from typing import Any

import pytest

from tests.interop.conftest import ServerProcess

pytestmark = pytest.mark.interop

DEADLINE_S = 20.0


def _jpeg(width: int, height: int) -> bytes:
    from PIL import Image

    img = Image.new("RGB", (width, height), (30, 120, 200))
    for x in range(0, width, 7):
        img.putpixel((x, (x * 3) % height), (255, 255, 0))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


async def _upload(client: Any, data: bytes, ctype: str, name: str) -> str:
    import nio

    resp, _keys = await client.upload(
        io.BytesIO(data), content_type=ctype, filename=name, filesize=len(data)
    )
    assert isinstance(resp, nio.UploadResponse), resp
    return str(resp.content_uri)


async def _scenario(base_url: str) -> None:
    import nio
    from PIL import Image

    cfg = nio.AsyncClientConfig(encryption_enabled=False)
    alice = nio.AsyncClient(base_url, "alice", config=cfg)
    bob = nio.AsyncClient(base_url, "bob", config=cfg)
    try:
        assert isinstance(await alice.register("alice", "alice-pw"), nio.RegisterResponse)
        assert isinstance(await bob.register("bob", "bob-pw"), nio.RegisterResponse)

        # An image: uploaded, downloaded identical, with its name and type.
        photo = _jpeg(1600, 1200)
        photo_uri = await _upload(alice, photo, "image/jpeg", "holiday.jpg")
        dl = await bob.download(mxc=photo_uri)
        assert isinstance(dl, nio.MemoryDownloadResponse), dl
        assert dl.body == photo
        assert dl.content_type == "image/jpeg"
        assert dl.filename == "holiday.jpg"

        # A 20 MB file, byte-identical.
        big = os.urandom(20 * 1024 * 1024)
        big_uri = await _upload(alice, big, "application/octet-stream", "backup.tar")
        dl = await bob.download(mxc=big_uri)
        assert isinstance(dl, nio.MemoryDownloadResponse), dl
        assert hashlib.sha256(dl.body).digest() == hashlib.sha256(big).digest()

        # A thumbnail the server makes, and the one the client uploads for the event.
        thumb = await bob.thumbnail(
            *photo_uri[len("mxc://") :].split("/"), width=320, height=240,
            method=nio.ResizingMethod.scale,
        )
        assert isinstance(thumb, nio.ThumbnailResponse), thumb
        assert Image.open(io.BytesIO(thumb.body)).size == (320, 240)
        thumb_uri = await _upload(alice, thumb.body, thumb.content_type, "thumbnail.jpg")

        room = await alice.room_create(name="Photos", invite=[bob.user_id])
        assert isinstance(room, nio.RoomCreateResponse), room
        await bob.sync(timeout=0)
        assert isinstance(await bob.join(room.room_id), nio.JoinResponse)
        sent = await alice.room_send(
            room.room_id,
            "m.room.message",
            {
                "msgtype": "m.image",
                "body": "holiday.jpg",
                "url": photo_uri,
                "info": {
                    "mimetype": "image/jpeg",
                    "size": len(photo),
                    "w": 1600,
                    "h": 1200,
                    "thumbnail_url": thumb_uri,
                    "thumbnail_info": {
                        "mimetype": thumb.content_type,
                        "size": len(thumb.body),
                        "w": 320,
                        "h": 240,
                    },
                },
            },
        )
        assert isinstance(sent, nio.RoomSendResponse), sent

        event = None
        deadline = time.monotonic() + DEADLINE_S
        while event is None and time.monotonic() < deadline:
            resp = await bob.sync(timeout=2000, since=bob.next_batch)
            assert isinstance(resp, nio.SyncResponse), resp
            joined = resp.rooms.join.get(room.room_id)
            for ev in joined.timeline.events if joined else []:
                if isinstance(ev, nio.RoomMessageImage):
                    event = ev
        assert event is not None, "the m.image event did not arrive through /sync"
        assert event.url == photo_uri and event.body == "holiday.jpg"
        info = event.source["content"]["info"]
        assert info["w"] == 1600 and info["thumbnail_info"]["h"] == 240
        got = await bob.download(mxc=event.url)
        assert isinstance(got, nio.MemoryDownloadResponse) and got.body == photo
        got = await bob.download(mxc=info["thumbnail_url"])
        assert isinstance(got, nio.MemoryDownloadResponse) and got.body == thumb.body

        # Unknown media is M_NOT_FOUND to nio too.
        missing = await bob.download(mxc=f"mxc://{photo_uri.split('/')[2]}/NoSuchMedia")
        assert isinstance(missing, nio.DownloadError) and missing.status_code == "M_NOT_FOUND"
    finally:
        await alice.close()
        await bob.close()


def test_nio_media_upload_download_and_image_event(pocketserver_url: str) -> None:
    asyncio.run(_scenario(pocketserver_url))


def test_nio_media_server_process_is_the_one_started(pocketserver_process: ServerProcess) -> None:
    # (Sanity: media lives in the one database file of the data folder.)
    asyncio.run(_upload_one(pocketserver_process.base_url))
    assert (pocketserver_process.data_dir / "homeserver.db").exists()
    assert not any(p.is_dir() for p in pocketserver_process.data_dir.iterdir())


async def _upload_one(base_url: str) -> None:
    import nio

    c = nio.AsyncClient(base_url, "carol", config=nio.AsyncClientConfig(encryption_enabled=False))
    try:
        assert isinstance(await c.register("carol", "carol-pw"), nio.RegisterResponse)
        await _upload(c, b"one file, one database", "text/plain", "note.txt")
    finally:
        await c.close()
