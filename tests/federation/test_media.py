"""Fetching another server's media (federation/media.py) from a loopback HTTPS server
that answers like a remote would: the federation endpoint's multipart answer, the
fall-back to the deprecated endpoint when the new one is unknown there, and every
failure as the Matrix error a client is given (404, 502, 502 M_TOO_LARGE)."""

from __future__ import annotations

import os

import pytest

from pocketserver.config import FederationConfig
from pocketserver.errors import MatrixError
from pocketserver.federation.client import FederationClient
from pocketserver.federation.media import RemoteMedia
from pocketserver.federation.multipart import media_head, media_tail
from pocketserver.protocol.signing import signing_key_from_seed
from pocketserver.services.outbound import Outbound
from tests.federation.loopback import Route, https_server

FED = "/_matrix/federation/v1/media/download/abc?timeout_ms=20000"
LEGACY_PREFIX = "/_matrix/media/v3/download/127.0.0.1%3A{port}/abc"
LEGACY_QUERY = "?allow_remote=false&timeout_ms=20000"
LOCATION = (
    b"--XyZ\r\nContent-Type: application/json\r\n\r\n{}\r\n"
    b"--XyZ\r\nLocation: https://cdn.test/x\r\n\r\n\r\n--XyZ--\r\n"
)


def _remote(max_size: int = 1 << 20) -> RemoteMedia:
    cfg = FederationConfig(verify_tls=False, allowed_ip_ranges=("127.0.0.0/8",))
    client = FederationClient("me.test", signing_key_from_seed(b"\x07" * 32, "x"), Outbound(cfg), cfg)
    return RemoteMedia(client, max_size)


def _multipart(body: bytes, ctype: str = "image/png", disposition: str = 'inline; filename="a.png"') -> Route:
    answer = media_head("XyZ", ctype, disposition) + body + media_tail("XyZ")
    return 200, [("Content-Type", "multipart/mixed; boundary=XyZ")], answer


async def _fetch(remote: RemoteMedia, server: str) -> tuple[str | None, str | None, bytes]:
    async with remote.download(server, "abc") as f:
        data = b"".join([p async for p in f.pieces])
    return f.content_type, f.filename, data


async def test_the_federation_endpoint_is_asked_first() -> None:
    body = os.urandom(200_000)
    async with https_server({FED: _multipart(body)}) as https:
        got = await _fetch(_remote(), f"127.0.0.1:{https.port}")
    assert got == ("image/png", "a.png", body)
    assert list(https.requests) == [FED]


@pytest.mark.parametrize(
    "refusal",
    [
        (404, [], b'{"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"}'),
        (400, [], b'{"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"}'),
        (405, [], b""),
    ],
)
async def test_a_server_without_it_is_asked_on_the_deprecated_endpoint(refusal: Route) -> None:
    body = b"old server bytes"
    routes = {FED: refusal}
    async with https_server(routes) as https:
        # The deprecated path names the server, so it is known once the port is.
        legacy = LEGACY_PREFIX.format(port=https.port) + LEGACY_QUERY
        routes[legacy] = (
            200, [("Content-Type", "text/plain"), ("Content-Disposition", "attachment; filename=t.txt")], body
        )
        got = await _fetch(_remote(), f"127.0.0.1:{https.port}")
    assert got == ("text/plain", "t.txt", body)
    assert list(https.requests) == [FED, legacy]


@pytest.mark.parametrize(
    ("route", "status", "errcode"),
    [
        ((404, [], b'{"errcode": "M_NOT_FOUND"}'), 404, "M_NOT_FOUND"),
        ((500, [], b'{"errcode": "M_UNKNOWN", "error": "secret internals"}'), 502, "M_UNKNOWN"),
        ((403, [], b'{"errcode": "M_FORBIDDEN"}'), 502, "M_UNKNOWN"),
        ((200, [("Content-Type", "application/json")], b"{}"), 502, "M_UNKNOWN"),  # not multipart
        ((200, [("Content-Type", "multipart/mixed; boundary=Q")], b"--Q\r\n\r\nx"), 502, "M_UNKNOWN"),
        ((200, _multipart(b"")[1], LOCATION), 502, "M_UNKNOWN"),  # not followed
        (_multipart(b"x" * 2_000_000), 502, "M_TOO_LARGE"),
    ],
)
async def test_failures_are_what_the_client_is_told(route: Route, status: int, errcode: str) -> None:
    async with https_server({FED: route}) as https:
        with pytest.raises(MatrixError) as e:
            await _fetch(_remote(max_size=1_000_000), f"127.0.0.1:{https.port}")
    assert (e.value.status, e.value.errcode) == (status, errcode)
    assert "secret" not in str(e.value)


async def test_an_unreachable_server_is_502() -> None:
    with pytest.raises(MatrixError) as e:
        await _fetch(_remote(), "127.0.0.1:1")
    assert (e.value.status, e.value.errcode) == (502, "M_UNKNOWN")
