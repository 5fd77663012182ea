"""URL previews over HTTP against a page served on loopback (allowed by config)."""

from __future__ import annotations

import ssl
from functools import partial
from typing import Any

import httpx
import pytest
import trio

from pocketserver.server import run_server
from tests.api.helpers_media import auth, make_user, png_bytes
from tests.conftest import make_config, shared_certificate

PREVIEW = "/_matrix/client/v1/media/preview_url"

PAGE = b"""<!doctype html><html><head><meta charset="utf-8">
<title>  Fallback   title </title>
<meta property="og:title" content="Pocket &amp; Server">
<meta property="og:description" content="A homeserver in one file">
<meta property="og:image" content="/logo.png">
</head><body>hello</body></html>"""


async def _site(
    tls: ssl.SSLContext | None = None, *, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    """A tiny HTTP/1.1 server: /page, /logo.png, /redirect, /big, /plain (over TLS
    with ``tls``)."""
    logo = png_bytes(48, 32)

    async def handle(stream: trio.abc.Stream) -> None:
        try:
            await answer(stream)
        except trio.BrokenResourceError:
            pass  # a client that refused our certificate
        finally:
            await trio.aclose_forcefully(stream)

    async def answer(stream: trio.abc.Stream) -> None:
        data = b""
        with trio.move_on_after(10):
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    return
                data += chunk
        path = data.split(b" ", 2)[1].decode()
        status, ctype, body, extra = "200 OK", "text/html; charset=utf-8", PAGE, ""
        if path == "/logo.png":
            ctype, body = "image/png", logo
        elif path == "/redirect":
            status, body, extra = "302 Found", b"", "Location: /page\r\n"
        elif path == "/big":
            body = b"<html><head><title>big</title></head>" + b"x" * 3_000_000
        elif path == "/plain":
            ctype, body = "text/plain", b"no preview"
        elif path != "/page":
            status, body = "404 Not Found", b"nope"
        head = f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n"
        try:
            await stream.send_all(head.encode() + body)
        except trio.BrokenResourceError:
            pass
        await stream.aclose()

    tcp = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = tcp[0].socket.getsockname()[1]
    listeners: list[Any] = list(tcp)
    if tls is not None:
        listeners = [trio.SSLListener(lst, tls, https_compatible=True) for lst in tcp]
    task_status.started(port)
    await trio.serve_listeners(handle, listeners)


@pytest.fixture
def config(tmp_path: Any) -> Any:
    return make_config(
        tmp_path,
        {"media": {"url_preview_ip_allowlist": ["127.0.0.0/8"], "url_preview_max_size": 1_000_000}},
    )


async def test_preview_reads_opengraph_and_stores_the_image(server: Any, http: httpx.AsyncClient, nursery: trio.Nursery) -> None:
    port = await nursery.start(_site)
    _, token = await make_user(server)
    url = f"http://127.0.0.1:{port}/redirect"
    r = await http.get(PREVIEW, params={"url": url}, headers=auth(token))
    assert r.status_code == 200, r.text
    og = r.json()
    assert og["og:title"] == "Pocket & Server"
    assert og["og:description"] == "A homeserver in one file"
    assert og["og:image"].startswith("mxc://test.local/")
    assert og["og:image:type"] == "image/png"
    assert (og["og:image:width"], og["og:image:height"]) == (48, 32)
    s, m = og["og:image"][len("mxc://") :].split("/")
    img = await http.get(f"/_matrix/client/v1/media/download/{s}/{m}", headers=auth(token))
    assert img.status_code == 200 and len(img.content) == og["matrix:image:size"]
    # Cached: the same answer, without storing the image again.
    r2 = await http.get(PREVIEW, params={"url": url}, headers=auth(token))
    assert r2.json() == og


async def test_preview_limits_and_fallbacks(server: Any, http: httpx.AsyncClient, nursery: trio.Nursery) -> None:
    port = await nursery.start(_site)
    _, token = await make_user(server)
    # A page over the size limit is read only up to it.
    r = await http.get(PREVIEW, params={"url": f"http://127.0.0.1:{port}/big"}, headers=auth(token))
    assert r.status_code == 200 and r.json() == {"og:title": "big"}
    r = await http.get(PREVIEW, params={"url": f"http://127.0.0.1:{port}/plain"}, headers=auth(token))
    assert r.status_code == 200 and r.json() == {}
    r = await http.get(PREVIEW, params={"url": f"http://127.0.0.1:{port}/missing"}, headers=auth(token))
    assert r.status_code == 502
    r = await http.get(PREVIEW, params={"url": "ftp://example.org/"}, headers=auth(token))
    assert r.status_code == 400
    r = await http.get(PREVIEW, headers=auth(token))
    assert r.status_code == 400 and r.json()["errcode"] == "M_MISSING_PARAM"
    r = await http.get(PREVIEW, params={"url": f"http://127.0.0.1:{port}/page"})
    assert r.status_code == 401


async def test_private_addresses_are_refused_by_default(tmp_path: Any, nursery: trio.Nursery) -> None:
    port = await nursery.start(_site)
    cfg = make_config(tmp_path)
    running = await nursery.start(partial(run_server, cfg, out=None, handle_signals=False))
    try:
        _, token = await make_user(running)
        async with httpx.AsyncClient(base_url=running.urls[0]) as http:
            for url in (f"http://127.0.0.1:{port}/page", f"http://localhost:{port}/page", "http://10.1.2.3/", "http://[::1]:1/"):
                r = await http.get(PREVIEW, params={"url": url}, headers=auth(token))
                assert r.status_code == 403, url
                assert r.json()["errcode"] == "M_FORBIDDEN"
    finally:
        running.stop.set()


# -- HTTPS: [federation]'s TLS settings apply; a TLS failure is a 502 ------------------------


def _site_tls() -> ssl.SSLContext:
    cert, key = shared_certificate()  # self-signed, SAN 127.0.0.1
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


@pytest.mark.parametrize(
    "federation, ok",
    [
        ({}, False),
        ({"extra_ca_file": shared_certificate()[0]}, True),
        ({"verify_tls": False}, True),
    ],
    ids=["default", "extra_ca_file", "verify_tls_false"],
)
async def test_https_previews_use_the_federation_tls_settings(
    tmp_path: Any, nursery: trio.Nursery, federation: dict[str, Any], ok: bool
) -> None:
    port = await nursery.start(_site, _site_tls())
    cfg = make_config(
        tmp_path, {"media": {"url_preview_ip_allowlist": ["127.0.0.0/8"]}, "federation": federation}
    )
    running = await nursery.start(partial(run_server, cfg, out=None, handle_signals=False))
    try:
        _, token = await make_user(running)
        async with httpx.AsyncClient(base_url=running.urls[0]) as http:
            url = f"https://127.0.0.1:{port}/page"
            r = await http.get(PREVIEW, params={"url": url}, headers=auth(token))
            if ok:
                assert r.status_code == 200, r.text
                assert r.json()["og:title"] == "Pocket & Server"
            else:
                # The certificate is not trusted: an upstream failure, not a 500.
                assert r.status_code == 502, r.text
                assert r.json()["errcode"] == "M_UNKNOWN"
    finally:
        running.stop.set()


async def test_malformed_urls_and_upstreams_are_4xx_or_502(
    server: Any, http: httpx.AsyncClient, nursery: trio.Nursery
) -> None:
    port = await nursery.start(_site)
    _, token = await make_user(server)
    for url in ("http://127.0.0.1:99999/", "http://[::1/", "http://127.0.0.1:abc/"):
        r = await http.get(PREVIEW, params={"url": url}, headers=auth(token))
        assert r.status_code == 400 and r.json()["errcode"] == "M_INVALID_PARAM", url
    # A TLS client at a plain HTTP server: an upstream failure, 502.
    r = await http.get(PREVIEW, params={"url": f"https://127.0.0.1:{port}/page"}, headers=auth(token))
    assert r.status_code == 502 and r.json()["errcode"] == "M_UNKNOWN"
