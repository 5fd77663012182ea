"""The content repository over real HTTP: upload, download, ranges, errors."""

from __future__ import annotations

import hashlib
import os
import socket
from typing import Any

import httpx
import trio

from pocketserver.storage import media as store
from tests.api.helpers_media import auth, make_user, png_bytes
from tests.conftest import make_config

UPLOAD = "/_matrix/media/v3/upload"
DOWNLOAD = "/_matrix/client/v1/media/download"


def _split(mxc: str) -> tuple[str, str]:
    assert mxc.startswith("mxc://")
    server, media_id = mxc[len("mxc://") :].split("/")
    return server, media_id


async def _upload(http: httpx.AsyncClient, token: str, data: bytes, ctype: str = "text/plain", filename: str | None = None) -> str:
    params = {"filename": filename} if filename else None
    r = await http.post(UPLOAD, content=data, params=params, headers={**auth(token), "Content-Type": ctype})
    assert r.status_code == 200, r.text
    return str(r.json()["content_uri"])


async def test_upload_and_download_keep_bytes_name_and_type(server: Any, http: httpx.AsyncClient) -> None:
    _, token = await make_user(server)
    data = b"Hello, Matrix!\n" * 1000
    mxc = await _upload(http, token, data, "text/plain", "greeting.txt")
    s, m = _split(mxc)
    assert s == "test.local"
    r = await http.get(f"{DOWNLOAD}/{s}/{m}", headers=auth(token))
    assert r.status_code == 200
    assert r.content == data
    assert r.headers["content-type"].startswith("text/plain")
    assert r.headers["content-disposition"] == 'inline; filename="greeting.txt"'
    assert "sandbox" in r.headers["content-security-policy"]
    assert r.headers["cross-origin-resource-policy"] == "cross-origin"
    # The file name in the path overrides the upload's.
    r = await http.get(f"{DOWNLOAD}/{s}/{m}/other.txt", headers=auth(token))
    assert r.headers["content-disposition"] == 'inline; filename="other.txt"'


async def test_unsafe_types_are_attachments_and_missing_type_is_octet_stream(server: Any, http: httpx.AsyncClient) -> None:
    _, token = await make_user(server)
    mxc = await _upload(http, token, b"<script>alert(1)</script>", "text/html", "x.html")
    s, m = _split(mxc)
    r = await http.get(f"{DOWNLOAD}/{s}/{m}", headers=auth(token))
    assert r.headers["content-type"].startswith("text/html")
    assert r.headers["content-disposition"].startswith("attachment")
    # A malformed Content-Type is not echoed back: the file is served as octet-stream.
    r = await http.post(UPLOAD, content=b"abc", headers={**auth(token), "Content-Type": "not a type"})
    s, m = _split(r.json()["content_uri"])
    r = await http.get(f"{DOWNLOAD}/{s}/{m}", headers=auth(token))
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["content-disposition"] == "attachment"
    # Non-ASCII file names use RFC 5987.
    mxc = await _upload(http, token, b"x", "text/plain", "résumé.txt")
    s, m = _split(mxc)
    r = await http.get(f"{DOWNLOAD}/{s}/{m}", headers=auth(token))
    assert r.headers["content-disposition"] == "inline; filename*=utf-8''r%C3%A9sum%C3%A9.txt"


async def test_download_needs_a_token_and_unknown_media_is_not_found(server: Any, http: httpx.AsyncClient) -> None:
    _, token = await make_user(server)
    mxc = await _upload(http, token, b"secret")
    s, m = _split(mxc)
    r = await http.get(f"{DOWNLOAD}/{s}/{m}")
    assert r.status_code == 401
    assert r.json()["errcode"] == "M_MISSING_TOKEN"
    r = await http.get(f"{DOWNLOAD}/{s}/NoSuchMediaId123", headers=auth(token))
    assert r.status_code == 404
    assert r.json()["errcode"] == "M_NOT_FOUND"
    r = await http.get(f"{DOWNLOAD}/{s}/bad..id", headers=auth(token))
    assert r.json()["errcode"] == "M_NOT_FOUND"
    # The frozen legacy endpoint does not serve it without authentication.
    r = await http.get(f"/_matrix/media/v3/download/{s}/{m}")
    assert r.status_code == 404
    assert r.json()["errcode"] == "M_NOT_FOUND"


async def test_legacy_endpoints_serve_when_not_frozen(tmp_path: Any, nursery: trio.Nursery) -> None:
    from functools import partial

    from pocketserver.server import run_server

    cfg = make_config(tmp_path, {"media": {"legacy_unauthenticated": True}})
    running = await nursery.start(partial(run_server, cfg, out=None, handle_signals=False))
    try:
        async with httpx.AsyncClient(base_url=running.urls[0]) as http:
            _, token = await make_user(running)
            mxc = await _upload(http, token, b"old style")
            s, m = _split(mxc)
            r = await http.get(f"/_matrix/media/v3/download/{s}/{m}")
            assert r.status_code == 200 and r.content == b"old style"
    finally:
        running.stop.set()


async def test_range_requests_let_video_seek(server: Any, http: httpx.AsyncClient) -> None:
    _, token = await make_user(server)
    data = os.urandom(store.CHUNK_SIZE * 2 + 1000)
    mxc = await _upload(http, token, data, "video/mp4")
    s, m = _split(mxc)
    url = f"{DOWNLOAD}/{s}/{m}"
    start = store.CHUNK_SIZE - 10
    r = await http.get(url, headers={**auth(token), "Range": f"bytes={start}-{start + 99}"})
    assert r.status_code == 206
    assert r.content == data[start : start + 100]
    assert r.headers["content-range"] == f"bytes {start}-{start + 99}/{len(data)}"
    r = await http.get(url, headers={**auth(token), "Range": "bytes=-500"})
    assert r.status_code == 206 and r.content == data[-500:]
    r = await http.get(url, headers={**auth(token), "Range": f"bytes={len(data) - 5}-"})
    assert r.content == data[-5:]
    r = await http.get(url, headers={**auth(token), "Range": f"bytes={len(data)}-"})
    assert r.status_code == 416
    assert r.headers["content-range"] == f"bytes */{len(data)}"
    r = await http.get(url, headers=auth(token))
    assert r.status_code == 200 and r.headers["accept-ranges"] == "bytes"
    assert hashlib.sha256(r.content).digest() == hashlib.sha256(data).digest()


async def test_identical_uploads_are_stored_once(server: Any, http: httpx.AsyncClient) -> None:
    _, token = await make_user(server)
    data = os.urandom(300_000)
    a = await _upload(http, token, data)
    b = await _upload(http, token, data)
    assert a != b
    counts = await server.services.db.read(store.count_rows, ["media", "media_content"])
    assert counts == {"media": 2, "media_content": 1}
    for mxc in (a, b):
        s, m = _split(mxc)
        r = await http.get(f"{DOWNLOAD}/{s}/{m}", headers=auth(token))
        assert r.content == data


async def test_config_reports_the_upload_limit(server: Any, http: httpx.AsyncClient) -> None:
    _, token = await make_user(server)
    for path in ("/_matrix/client/v1/media/config", "/_matrix/media/v3/config"):
        r = await http.get(path, headers=auth(token))
        assert r.json() == {"m.upload.size": server.services.config.media.max_upload_size}


async def _raw_request(url: str, head: bytes, body: bytes, *, close_early: bool = False) -> bytes:
    host, port = url.split("//")[1].rstrip("/").split(":")
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    await sock.connect((host, int(port)))
    stream = trio.SocketStream(sock)
    await stream.send_all(head + body)
    if close_early:
        await stream.aclose()
        return b""
    out = b""
    with trio.fail_after(10):
        while b"\r\n\r\n" not in out or not out.rstrip().endswith(b"}"):
            data = await stream.receive_some(65536)
            if not data:
                break
            out += data
    await stream.aclose()
    return out


async def test_truncated_upload_leaves_nothing(server: Any, http: httpx.AsyncClient) -> None:
    _, token = await make_user(server)
    head = (
        f"POST {UPLOAD} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: text/plain\r\nContent-Length: 900000\r\n\r\n"
    ).encode()
    await _raw_request(server.urls[0], head, b"a" * 400_000, close_early=True)
    db = server.services.db
    counts: dict[str, int] = {}
    with trio.fail_after(10):
        for _ in range(1000):
            counts = await db.read(store.count_rows, ["media", "media_content", "media_chunks"])
            if counts == {"media": 0, "media_content": 0, "media_chunks": 0}:
                # Still nothing once the server had time to see the disconnect.
                r = await http.get("/_matrix/client/v1/media/config", headers=auth(token))
                assert r.status_code == 200
                break
            await trio.sleep(0.01)
    assert counts == {"media": 0, "media_content": 0, "media_chunks": 0}


async def test_async_upload_create_then_put(server: Any, http: httpx.AsyncClient) -> None:
    _, token = await make_user(server)
    _, other = await make_user(server)
    r = await http.post("/_matrix/media/v1/create", headers=auth(token))
    assert r.status_code == 200
    body = r.json()
    assert body["unused_expires_at"] > server.services.clock.time_ms()
    s, m = _split(body["content_uri"])
    # Not uploaded yet: a download with a short timeout says so.
    r = await http.get(f"{DOWNLOAD}/{s}/{m}", params={"timeout_ms": 50}, headers=auth(token))
    assert r.status_code == 504 and r.json()["errcode"] == "M_NOT_YET_UPLOADED"
    # Someone else may not upload to it.
    r = await http.put(f"/_matrix/media/v3/upload/{s}/{m}", content=b"x", headers=auth(other))
    assert r.status_code == 403 and r.json()["errcode"] == "M_FORBIDDEN"
    r = await http.put(f"/_matrix/media/v3/upload/{s}/NotCreated1", content=b"x", headers=auth(token))
    assert r.status_code == 404 and r.json()["errcode"] == "M_NOT_FOUND"

    # A download waiting for the upload gets it as soon as it lands.
    got: dict[str, Any] = {}

    async def waiter() -> None:
        resp = await http.get(f"{DOWNLOAD}/{s}/{m}", params={"timeout_ms": 10000}, headers=auth(token))
        got["r"] = resp

    async with trio.open_nursery() as n:
        n.start_soon(waiter)
        await trio.sleep(0)
        r = await http.put(
            f"/_matrix/media/v3/upload/{s}/{m}",
            params={"filename": "late.txt"},
            content=b"arrived later",
            headers={**auth(token), "Content-Type": "text/plain"},
        )
        assert r.status_code == 200 and r.json() == {}
    assert got["r"].status_code == 200 and got["r"].content == b"arrived later"
    assert got["r"].headers["content-disposition"] == 'inline; filename="late.txt"'
    r = await http.put(f"/_matrix/media/v3/upload/{s}/{m}", content=b"again", headers=auth(token))
    assert r.status_code == 409 and r.json()["errcode"] == "M_CANNOT_OVERWRITE_MEDIA"


async def test_empty_and_png_uploads(server: Any, http: httpx.AsyncClient) -> None:
    _, token = await make_user(server)
    mxc = await _upload(http, token, b"", "text/plain")
    s, m = _split(mxc)
    r = await http.get(f"{DOWNLOAD}/{s}/{m}", headers=auth(token))
    assert r.status_code == 200 and r.content == b""
    png = png_bytes(10, 10)
    mxc = await _upload(http, token, png, "image/png")
    s, m = _split(mxc)
    r = await http.get(f"{DOWNLOAD}/{s}/{m}", headers=auth(token))
    assert r.content == png and r.headers["content-disposition"] == "inline"
