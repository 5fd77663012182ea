"""Media across two real pocketservers on loopback: a's users download and thumbnail
b's media through a (which copies it over /_matrix/federation/v1/media/download and
keeps it), b serves its media to a signed request as multipart/mixed, and every
failure is the spec's error, never a 5xx other than 502 for a remote's fault."""

from __future__ import annotations

import io
import os
from pathlib import Path

import httpx
import pytest
import trio

from pocketserver.federation.multipart import MultipartReader, boundary_of
from pocketserver.server import RunningServer
from tests.api.helpers_media import auth, make_user, png_bytes
from tests.federation.servers import start_federating_server

UPLOAD = "/_matrix/media/v3/upload"
DOWNLOAD = "/_matrix/client/v1/media/download"
THUMBNAIL = "/_matrix/client/v1/media/thumbnail"
FED_DOWNLOAD = "/_matrix/federation/v1/media/download"


def name(server: RunningServer) -> str:
    return str(server.services.config.server_name)


async def upload(server: RunningServer, data: bytes, ctype: str, filename: str | None = None) -> str:
    """Upload on ``server``; the media ID."""
    _, token = await make_user(server)
    params = {"filename": filename} if filename else None
    async with httpx.AsyncClient(base_url=server.urls[0]) as http:
        r = await http.post(UPLOAD, content=data, params=params, headers={**auth(token), "Content-Type": ctype})
    assert r.status_code == 200, r.text
    mxc = str(r.json()["content_uri"])
    assert mxc.startswith(f"mxc://{name(server)}/")
    return mxc.rsplit("/", 1)[1]


@pytest.fixture
async def pair(nursery: trio.Nursery, tmp_path: Path) -> tuple[RunningServer, RunningServer]:
    # a also serves the deprecated unauthenticated endpoints.
    a = await start_federating_server(nursery, tmp_path / "a", extra={"media": {"legacy_unauthenticated": True}})
    b = await start_federating_server(nursery, tmp_path / "b")
    return a, b


async def test_a_user_downloads_remote_media_which_is_then_kept(pair: tuple[RunningServer, RunningServer]) -> None:
    a, b = pair
    data = os.urandom(3 * 1024 * 1024 + 17)
    media_id = await upload(b, data, "application/pdf", "report ü.pdf")
    _, token = await make_user(a)
    async with httpx.AsyncClient(base_url=a.urls[0], timeout=60) as http:
        r = await http.get(f"{DOWNLOAD}/{name(b)}/{media_id}", headers=auth(token))
        assert r.status_code == 200, r.text
        assert r.content == data
        assert r.headers["content-type"] == "application/pdf"
        assert r.headers["content-disposition"] == "attachment; filename*=utf-8''report%20%C3%BC.pdf"
        # Kept: gone from b, a still serves it (and the original file name).
        assert await b.services.media.delete(name(b), media_id)
        r = await http.get(f"{DOWNLOAD}/{name(b)}/{media_id}/other.pdf", headers=auth(token))
        assert r.status_code == 200 and r.content == data
        assert r.headers["content-disposition"] == 'attachment; filename="other.pdf"'
        # The authenticated endpoint needs a token.
        r = await http.get(f"{DOWNLOAD}/{name(b)}/{media_id}")
        assert r.status_code == 401


async def test_the_deprecated_endpoints_fetch_unless_allow_remote_is_false(
    pair: tuple[RunningServer, RunningServer],
) -> None:
    a, b = pair
    media_id = await upload(b, b"legacy bytes", "text/plain")
    legacy = f"/_matrix/media/v3/download/{name(b)}/{media_id}"
    async with httpx.AsyncClient(base_url=a.urls[0], timeout=60) as http:
        r = await http.get(legacy, params={"allow_remote": "false"})
        assert (r.status_code, r.json()["errcode"]) == (404, "M_NOT_FOUND")
        r = await http.get(legacy)
        assert r.status_code == 200 and r.content == b"legacy bytes"
        # Once copied, it is served here even with allow_remote=false.
        r = await http.get(legacy, params={"allow_remote": "false"})
        assert r.status_code == 200 and r.content == b"legacy bytes"


async def test_a_thumbnail_of_remote_media_is_made_locally(pair: tuple[RunningServer, RunningServer]) -> None:
    a, b = pair
    media_id = await upload(b, png_bytes(640, 480), "image/png")
    _, token = await make_user(a)
    async with httpx.AsyncClient(base_url=a.urls[0], timeout=60) as http:
        r = await http.get(
            f"{THUMBNAIL}/{name(b)}/{media_id}", params={"width": 64, "height": 64, "method": "crop"},
            headers=auth(token),
        )
    assert r.status_code == 200, r.text
    from PIL import Image

    img = Image.open(io.BytesIO(r.content))
    # Cropped to a square of one of the standard sizes at least as large as asked for.
    assert img.size[0] == img.size[1] and 64 <= img.size[0] < 480


async def test_remote_failures_are_404_or_502(pair: tuple[RunningServer, RunningServer], nursery: trio.Nursery, tmp_path: Path) -> None:
    a, b = pair
    _, token = await make_user(a)
    async with httpx.AsyncClient(base_url=a.urls[0], timeout=60) as http:
        r = await http.get(f"{DOWNLOAD}/{name(b)}/NoSuchMedia", headers=auth(token))
        assert (r.status_code, r.json()["errcode"]) == (404, "M_NOT_FOUND")
        r = await http.get(
            f"{THUMBNAIL}/{name(b)}/NoSuchMedia", params={"width": 32, "height": 32}, headers=auth(token)
        )
        assert (r.status_code, r.json()["errcode"]) == (404, "M_NOT_FOUND")
        # Nothing listens on port 1.
        r = await http.get(f"{DOWNLOAD}/localhost:1/abc", headers=auth(token))
        assert (r.status_code, r.json()["errcode"]) == (502, "M_UNKNOWN")
        r = await http.get(f"{DOWNLOAD}/not a server/abc", headers=auth(token))
        assert r.status_code == 404
    # A file over the downloading server's upload limit is refused, and not kept.
    small = await start_federating_server(
        nursery, tmp_path / "small", extra={"media": {"max_upload_size": 100_000}}
    )
    media_id = await upload(b, os.urandom(300_000), "application/octet-stream")
    _, token = await make_user(small)
    async with httpx.AsyncClient(base_url=small.urls[0], timeout=60) as http:
        for _ in range(2):
            r = await http.get(f"{DOWNLOAD}/{name(b)}/{media_id}", headers=auth(token))
            assert (r.status_code, r.json()["errcode"]) == (502, "M_TOO_LARGE")


async def test_concurrent_downloads_of_one_remote_file_all_get_it(pair: tuple[RunningServer, RunningServer]) -> None:
    a, b = pair
    data = os.urandom(1024 * 1024)
    media_id = await upload(b, data, "application/octet-stream")
    _, token = await make_user(a)
    got: list[bytes] = []

    async def one(http: httpx.AsyncClient) -> None:
        r = await http.get(f"{DOWNLOAD}/{name(b)}/{media_id}", headers=auth(token))
        assert r.status_code == 200, r.text
        got.append(r.content)

    async with httpx.AsyncClient(base_url=a.urls[0], timeout=60) as http:
        async with trio.open_nursery() as n:
            for _ in range(5):
                n.start_soon(one, http)
    assert got == [data] * 5


async def test_the_federation_endpoints_serve_our_media_as_multipart(pair: tuple[RunningServer, RunningServer]) -> None:
    a, b = pair
    data = b"hello over federation\r\n--not-a-boundary\r\n" * 1000
    media_id = await upload(b, data, "text/plain", "hello.txt")
    client = a.services.federation_client
    async with client.stream(name(b), f"{FED_DOWNLOAD}/{media_id}") as resp:
        assert resp.status == 200
        boundary = boundary_of(resp.headers["content-type"])
        assert boundary is not None
        reader = MultipartReader(resp.pieces, boundary)
        part = await reader.open()
        assert reader.metadata == b"{}"
        body = b"".join([p async for p in reader.content()])
    assert body == data
    assert part["content-type"] == "text/plain"
    assert part["content-disposition"] == 'inline; filename="hello.txt"'
    png_id = await upload(b, png_bytes(300, 200), "image/png")
    async with client.stream(
        name(b), f"/_matrix/federation/v1/media/thumbnail/{png_id}",
        {"width": "32", "height": "32", "method": "scale"},
    ) as resp:
        reader = MultipartReader(resp.pieces, boundary_of(resp.headers["content-type"]) or "")
        part = await reader.open()
        thumb = b"".join([p async for p in reader.content()])
    assert part["content-type"] in ("image/png", "image/jpeg", "image/webp") and len(thumb) > 0
    # Unknown and quarantined media: 404; no signature: 401.
    from pocketserver.federation.interfaces import FederationError

    with pytest.raises(FederationError) as e:
        async with client.stream(name(b), f"{FED_DOWNLOAD}/NoSuchMedia"):
            pass
    assert (e.value.status, e.value.errcode) == (404, "M_NOT_FOUND")
    await b.services.db.write(
        lambda conn: conn.execute("UPDATE media SET quarantined = 1 WHERE media_id = ?", (media_id,))
    )
    with pytest.raises(FederationError) as e:
        async with client.stream(name(b), f"{FED_DOWNLOAD}/{media_id}"):
            pass
    assert (e.value.status, e.value.errcode) == (404, "M_NOT_FOUND")
    async with httpx.AsyncClient(base_url=b.urls[0]) as http:
        r = await http.get(f"{FED_DOWNLOAD}/{png_id}")
        assert (r.status_code, r.json()["errcode"]) == (401, "M_UNAUTHORIZED")
