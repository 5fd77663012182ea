"""Large request bodies are read one request at a time; small ones never wait."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import httpx
import trio

from pocketserver.app import LARGE_BODY
from pocketserver.server import RunningServer
from tests.api.helpers import V3, auth_headers, register
from tests.services.test_passwords import wait_until


def padded_to_device(size: int) -> bytes:
    """A valid sendToDevice body of ``size`` bytes (JSON allows trailing whitespace)."""
    head = b'{"messages": {}}'
    return head + b" " * (size - len(head))


async def test_large_bodies_wait_for_each_other_and_small_requests_do_not(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    _, token, _ = await register(http)
    stats = server.app.extensions["pocketserver.large_bodies"].limiter.statistics
    body = padded_to_device(2 * LARGE_BODY)
    # Request A: its head and half its body, then nothing for now (a slow client).
    url = urlsplit(server.urls[0])
    assert url.hostname is not None and url.port is not None
    sock = await trio.open_tcp_stream(url.hostname, url.port)
    head = (
        f"PUT {V3}/sendToDevice/m.test/slow HTTP/1.1\r\nHost: {url.netloc}\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    await sock.send_all(head + body[: len(body) // 2])
    await wait_until(lambda: stats().borrowed_tokens == 1)
    answers: dict[str, Any] = {}

    async def request_b() -> None:
        r = await http.put(
            f"{V3}/sendToDevice/m.test/second", content=body,
            headers={**auth_headers(token), "Content-Type": "application/json"},
        )
        answers["b"] = (r.status_code, r.json())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(request_b)
        await wait_until(lambda: stats().tasks_waiting == 1)
        # A small request is answered while the large ones hold or wait.
        r = await http.get(f"{V3}/account/whoami", headers=auth_headers(token))
        assert r.status_code == 200
        assert "b" not in answers
        await sock.send_all(body[len(body) // 2 :])
        reply = b""
        with trio.fail_after(10):
            while b"\r\n\r\n" not in reply:
                piece = await sock.receive_some(65536)
                assert piece, "connection closed before the answer"
                reply += piece
        assert reply.startswith(b"HTTP/1.1 200")
    await sock.aclose()
    assert answers["b"] == (200, {})
    # Each request lets go once hypercorn has closed its stream (just after the answer).
    await wait_until(lambda: stats().borrowed_tokens == 0 and stats().tasks_waiting == 0)


async def test_a_chunked_body_is_read_and_answered(http: httpx.AsyncClient) -> None:
    _, token, _ = await register(http)

    async def pieces() -> Any:
        yield b'{"messages": '
        yield b"{}}"

    r = await http.put(
        f"{V3}/sendToDevice/m.test/chunked", content=pieces(),
        headers={**auth_headers(token), "Content-Type": "application/json"},
    )
    assert r.status_code == 200 and r.json() == {}
