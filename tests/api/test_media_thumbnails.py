"""Thumbnails over HTTP: the spec's sizes, crop and scale, animation, bad input."""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import httpx
from PIL import Image

from pocketserver.storage import media as store
from tests.api.helpers_media import auth, gif_animation, jpeg_bytes, make_user, png_bytes
from tests.api.test_media import _split, _upload

THUMB = "/_matrix/client/v1/media/thumbnail"


async def _thumb(http: httpx.AsyncClient, token: str, mxc: str, **params: Any) -> httpx.Response:
    s, m = _split(mxc)
    return await http.get(f"{THUMB}/{s}/{m}", params=params, headers=auth(token))


async def test_scale_and_crop_at_the_spec_sizes(server: Any, http: httpx.AsyncClient) -> None:
    _, token = await make_user(server)
    mxc = await _upload(http, token, jpeg_bytes(2000, 1000), "image/jpeg")
    r = await _thumb(http, token, mxc, width=300, height=200, method="scale")
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/jpeg"
    assert r.headers["content-disposition"] == 'inline; filename="thumbnail.jpeg"'
    img = Image.open(io.BytesIO(r.content))
    # 320x240 scale: fits inside, keeps 2:1, at least as large as asked in one dimension.
    assert img.size == (320, 160)
    r = await _thumb(http, token, mxc, width=90, height=90, method="crop")
    img = Image.open(io.BytesIO(r.content))
    assert img.size == (96, 96)
    # Stored on first request: asking again does not make another.
    before = await server.services.db.read(store.count_rows, ["media_thumbnails"])
    r2 = await _thumb(http, token, mxc, width=90, height=90, method="crop")
    assert r2.content == r.content
    after = await server.services.db.read(store.count_rows, ["media_thumbnails"])
    assert before == after == {"media_thumbnails": 2}


async def test_png_keeps_transparency_and_small_images_are_not_upscaled(server: Any, http: httpx.AsyncClient) -> None:
    _, token = await make_user(server)
    buf = io.BytesIO()
    Image.new("RGBA", (1000, 1000), (0, 0, 0, 0)).save(buf, "PNG")
    mxc = await _upload(http, token, buf.getvalue(), "image/png")
    r = await _thumb(http, token, mxc, width=32, height=32, method="crop")
    assert r.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(r.content))
    assert img.size == (32, 32) and img.mode == "RGBA"
    small = png_bytes(20, 10)
    mxc = await _upload(http, token, small, "image/png")
    r = await _thumb(http, token, mxc, width=640, height=480, method="scale")
    assert r.status_code == 200 and r.content == small


async def test_animated_thumbnails_only_when_asked(server: Any, http: httpx.AsyncClient) -> None:
    _, token = await make_user(server)
    mxc = await _upload(http, token, gif_animation(800, 800, frames=4), "image/gif")
    r = await _thumb(http, token, mxc, width=96, height=96, method="crop", animated="true")
    assert r.status_code == 200 and r.headers["content-type"] == "image/webp"
    img = Image.open(io.BytesIO(r.content))
    assert getattr(img, "n_frames", 1) == 4 and img.size == (96, 96)
    r = await _thumb(http, token, mxc, width=96, height=96, method="crop")
    img = Image.open(io.BytesIO(r.content))
    assert getattr(img, "n_frames", 1) == 1


async def test_bad_thumbnail_requests(server: Any, http: httpx.AsyncClient) -> None:
    _, token = await make_user(server)
    text = await _upload(http, token, b"just text", "text/plain")
    r = await _thumb(http, token, text, width=32, height=32)
    assert r.status_code == 400 and r.json()["errcode"] == "M_UNKNOWN"
    # Claims to be a PNG but is not one.
    liar = await _upload(http, token, b"\x00not a png at all" * 10, "image/png")
    r = await _thumb(http, token, liar, width=32, height=32)
    assert r.status_code == 400 and r.json()["errcode"] == "M_UNKNOWN"
    png = await _upload(http, token, png_bytes(100, 100), "image/png")
    r = await _thumb(http, token, png, width=-1, height=32)
    assert r.status_code == 400 and r.json()["errcode"] == "M_INVALID_PARAM"
    r = await _thumb(http, token, png, width=32)
    assert r.status_code == 400 and r.json()["errcode"] == "M_MISSING_PARAM"
    r = await _thumb(http, token, png, width=32, height=32, method="stretch")
    assert r.status_code == 400
    r = await _thumb(http, token, "mxc://test.local/Unknown123", width=32, height=32)
    assert r.status_code == 404 and r.json()["errcode"] == "M_NOT_FOUND"


def _png_bomb(width: int, height: int) -> bytes:
    """A valid PNG of width x height black pixels, a few KB compressed."""
    raw_row = b"\x00" + b"\x00" * width
    comp = zlib.compressobj(9)
    data = b"".join(comp.compress(raw_row) for _ in range(height)) + comp.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


async def test_a_pixel_bomb_is_refused_not_decoded(server: Any, http: httpx.AsyncClient) -> None:
    _, token = await make_user(server)
    bomb = _png_bomb(20_000, 20_000)  # 400 megapixels in well under a megabyte
    assert len(bomb) < 1_000_000
    mxc = await _upload(http, token, bomb, "image/png")
    r = await _thumb(http, token, mxc, width=96, height=96, method="crop")
    assert r.status_code == 413 and r.json()["errcode"] == "M_TOO_LARGE"
    # The file itself is still served as uploaded.
    s, m = _split(mxc)
    r = await http.get(f"/_matrix/client/v1/media/download/{s}/{m}", headers=auth(token))
    assert r.content == bomb
