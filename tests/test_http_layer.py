"""http_layer.py: every shape of an HTTP/1.1 connection ends answered or cleanly closed.

A real server on loopback and raw sockets. Each shape runs with the speed patches
(h11's receive buffer, 256 KiB reads, one-write answers) and against hypercorn and h11
as released, many times over, with bodies of 1 KB, 100 KB and 1 MB: the hang it guards
against (an early answer, then the next request never answered) was intermittent.
"""

from __future__ import annotations

import logging
import re
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import h11
import hypercorn.protocol
import pytest
import trio

from pocketserver import http_layer
from pocketserver.server import RunningServer, run_server
from tests.conftest import make_config

REPO = Path(__file__).resolve().parents[1]
SIZES = (1024, 100 * 1024, 1024 * 1024)
REPEATS = 20
BOUND_S = 30.0  # a hang fails the test at this bound; a healthy exchange takes milliseconds
VERSIONS = b"GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\n\r\n"


@dataclass
class Answer:
    status: int
    headers: dict[bytes, bytes]
    body: bytes

    @property
    def closes(self) -> bool:
        return b"close" in self.headers.get(b"connection", b"").lower()


class Conn:
    """One client connection: raw bytes out, whole HTTP/1.1 answers in."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()
        self.eof = False

    @classmethod
    async def open(cls, port: int) -> Conn:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def send(self, data: bytes) -> bool:
        """False when the server has closed the connection (allowed after it said so)."""
        try:
            await self.stream.send_all(data)
            return True
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False

    async def shut(self) -> None:
        """Shut the client's sending side (a half-close)."""
        try:
            await self.stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the server has closed already

    async def _fill(self) -> None:
        try:
            data = await self.stream.receive_some(65536)
        except trio.BrokenResourceError:  # a reset after the server closed
            data = b""
        if not data:
            self.eof = True
        self.buf += data

    async def _until(self, cond: object) -> None:
        while not cond() and not self.eof:  # type: ignore[operator]
            await self._fill()

    async def _until_size(self, size: int) -> None:
        while len(self.buf) < size and not self.eof:
            await self._fill()

    async def answer(self) -> Answer | None:
        """The next answer (interim ones included); None if the server closed the
        connection before one began. A cut answer fails the test."""
        await self._until(lambda: b"\r\n\r\n" in self.buf)
        if b"\r\n\r\n" not in self.buf:
            assert not self.buf, f"connection closed inside an answer's head: {bytes(self.buf)!r}"
            return None
        head, _, _ = bytes(self.buf).partition(b"\r\n\r\n")
        del self.buf[: len(head) + 4]
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if status < 200:
            return Answer(status, headers, b"")
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            body = await self._chunked()
        else:
            length = int(headers.get(b"content-length", b"0"))
            await self._until_size(length)
            assert len(self.buf) >= length, "connection closed inside an answer's body"
            body = bytes(self.buf[:length])
            del self.buf[:length]
        return Answer(status, headers, body)

    async def _chunked(self) -> bytes:
        body = b""
        for _ in range(100_000):
            await self._until(lambda: b"\r\n" in self.buf)
            line, _, _ = bytes(self.buf).partition(b"\r\n")
            size = int(line.split(b";")[0], 16)
            await self._until_size(len(line) + 2 + size + 2)
            assert len(self.buf) >= len(line) + 2 + size + 2, "connection closed inside a chunk"
            body += bytes(self.buf[len(line) + 2 : len(line) + 2 + size])
            del self.buf[: len(line) + 2 + size + 2]
            if size == 0:
                return body
        raise AssertionError("too many chunks")

    async def final_answer(self) -> Answer | None:
        for _ in range(10):
            answer = await self.answer()
            if answer is None or answer.status >= 200:
                return answer
        raise AssertionError("only interim answers")

    async def closed(self) -> bool:
        """True once the server has closed the connection with nothing more to say."""
        await self._until(lambda: False)
        return self.eof and not self.buf

    async def aclose(self) -> None:
        await self.stream.aclose()


@pytest.fixture(params=["speed-patches", "as-released"])
async def served(
    request: pytest.FixtureRequest, tmp_path: Path, nursery: trio.Nursery
) -> AsyncIterator[RunningServer]:
    """A server whose HTTP/1.1 stack runs with the speed patches, or without any."""
    was = http_layer.SPEED_PATCHES
    http_layer.SPEED_PATCHES = request.param == "speed-patches"
    running: RunningServer = await nursery.start(
        partial(run_server, make_config(tmp_path), out=None, handle_signals=False)
    )
    patched = bool(http_layer._H11_ORIGINALS)
    assert patched == http_layer.SPEED_PATCHES
    try:
        yield running
    finally:
        running.stop.set()
        http_layer.SPEED_PATCHES = was
        http_layer.install()


def _port(running: RunningServer) -> int:
    return int(running.urls[0].rsplit(":", 1)[1])


def _post(path: str, size: int, *extra: str, method: str = "POST") -> bytes:
    head = [f"{method} {path} HTTP/1.1", "Host: x", f"Content-Length: {size}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode()


async def _send_concurrently(conn: Conn, pieces: list[bytes]) -> None:
    for piece in pieces:
        if not await conn.send(piece):
            return


async def _then_next_request(conn: Conn, first: Answer | None) -> str:
    """After an answer: the next request is answered, or the answer said
    ``Connection: close`` and the connection closes. Returns which."""
    assert first is not None, "connection closed without an answer"
    if first.closes:
        assert await conn.closed(), "answer said Connection: close, connection stayed open"
        return "closed"
    assert await conn.send(VERSIONS), "connection closed without Connection: close"
    second = await conn.final_answer()
    assert second is not None, "connection closed without Connection: close"
    assert second.status == 200 and b"versions" in second.body
    return "kept"


# Routes that answer without reading the body: unknown path, wrong method, no token.
EARLY = [
    ("/_matrix/client/v3/account/no_such_thing", "POST", 404),
    ("/_matrix/client/versions", "POST", 405),
    ("/_matrix/client/v3/createRoom", "POST", 401),
    ("/_matrix/federation/v1/nowhere", "PUT", 404),
]


@pytest.mark.parametrize(("path", "method", "status"), EARLY)
async def test_an_early_answer_leaves_the_connection_usable(
    served: RunningServer, path: str, method: str, status: int
) -> None:
    outcomes: list[str] = []
    for i in range(REPEATS):
        for size in SIZES:
            conn = await Conn.open(_port(served))
            body = bytes([i % 256]) * size
            with trio.fail_after(BOUND_S):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_send_concurrently, conn, [_post(path, size, method=method), body])
                    first = await conn.final_answer()
                assert first is not None and first.status == status
                outcomes.append(await _then_next_request(conn, first))
            await conn.aclose()
    # Bodies this size are read and dropped: the connection is kept, every time.
    assert outcomes == ["kept"] * len(outcomes)


async def test_expect_100_continue_then_an_early_answer(served: RunningServer) -> None:
    for _ in range(REPEATS):
        for size in SIZES:
            conn = await Conn.open(_port(served))
            with trio.fail_after(BOUND_S):
                await conn.send(_post("/_matrix/client/v3/nowhere", size, "Expect: 100-continue"))
                first = await conn.answer()
                assert first is not None
                if first.status == 100:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(_send_concurrently, conn, [b"x" * size])
                        first = await conn.final_answer()
                assert first is not None and first.status == 404
                assert await _then_next_request(conn, first) == "kept"
            await conn.aclose()


async def test_pipelined_requests_after_an_early_answer_are_all_answered(served: RunningServer) -> None:
    for _ in range(REPEATS):
        for size in SIZES:
            conn = await Conn.open(_port(served))
            wire = _post("/_matrix/client/v3/nowhere", size) + b"y" * size + VERSIONS
            wire += _post("/_matrix/client/versions", 3, method="POST") + b"abc" + VERSIONS
            with trio.fail_after(BOUND_S):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_send_concurrently, conn, [wire])
                    statuses = []
                    for _ in range(4):
                        answer = await conn.final_answer()
                        assert answer is not None and not answer.closes
                        statuses.append(answer.status)
                assert statuses == [404, 200, 405, 200]
            await conn.aclose()


async def test_a_chunked_body_then_an_early_answer(served: RunningServer) -> None:
    for _ in range(REPEATS):
        for size in SIZES:
            conn = await Conn.open(_port(served))
            head = b"POST /_matrix/client/v3/nowhere HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            piece = 16 * 1024
            chunks = [
                b"%x\r\n" % len(part) + part + b"\r\n"
                for part in (b"z" * min(piece, size - o) for o in range(0, size, piece))
            ]
            with trio.fail_after(BOUND_S):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_send_concurrently, conn, [head, *chunks, b"0\r\n\r\n"])
                    first = await conn.final_answer()
                assert first is not None and first.status == 404
                assert await _then_next_request(conn, first) == "kept"
            await conn.aclose()


async def test_a_client_that_asks_to_close_gets_its_answer_then_the_close(served: RunningServer) -> None:
    for _ in range(REPEATS):
        for size in SIZES:
            conn = await Conn.open(_port(served))
            with trio.fail_after(BOUND_S):
                async with trio.open_nursery() as nursery:
                    head = _post("/_matrix/client/v3/nowhere", size, "Connection: close")
                    nursery.start_soon(_send_concurrently, conn, [head, b"c" * size])
                    first = await conn.final_answer()
                assert first is not None and first.status == 404 and first.closes
                assert await conn.closed()
            await conn.aclose()


async def test_a_client_half_close_ends_the_connection_cleanly(served: RunningServer) -> None:
    """A client that shuts its side after a whole request gets at most one whole answer,
    then the close; one that shuts it inside the body (a broken request) gets the
    close. Never a hang."""
    for i in range(REPEATS):
        for size in SIZES:
            conn = await Conn.open(_port(served))
            whole = i % 2 == 1
            with trio.fail_after(BOUND_S):
                await conn.send(_post("/_matrix/client/v3/nowhere", size) + b"h" * (size if whole else size // 2))
                await conn.shut()
                if whole:
                    answer = await conn.final_answer()
                    assert answer is None or answer.status == 404
                else:
                    await conn._until(lambda: False)  # whatever comes, then the close
                    conn.buf.clear()
                assert await conn.closed()
            await conn.aclose()


async def test_a_body_too_large_to_drain_gets_its_answer_with_connection_close(
    served: RunningServer,
) -> None:
    declared = http_layer.DRAIN_BYTES + 1
    for _ in range(5):
        conn = await Conn.open(_port(served))
        with trio.fail_after(BOUND_S):
            await conn.send(_post("/_matrix/client/v3/nowhere", declared) + b"w" * 65536)
            first = await conn.final_answer()
            # 413: the declared length is over the route's cap too (checked before reading).
            assert first is not None and first.status in (404, 413) and first.closes
            assert await conn.closed()
        await conn.aclose()


async def test_a_body_that_stops_arriving_gets_its_answer_with_connection_close(
    served: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_layer, "DRAIN_SECONDS", 0.2)
    conn = await Conn.open(_port(served))
    with trio.fail_after(BOUND_S):
        await conn.send(_post("/_matrix/client/v3/nowhere", 100_000) + b"s" * 1000)
        first = await conn.final_answer()
        assert first is not None and first.status == 404 and first.closes
        assert await conn.closed()
    await conn.aclose()


async def test_a_huge_upload_is_refused_with_413_and_nothing_logged(
    served: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.api.helpers_media import make_user

    _, token = await make_user(served)
    caplog.set_level(logging.WARNING)
    for i in range(REPEATS):
        conn = await Conn.open(_port(served))
        head = _post(
            "/_matrix/media/v3/upload",
            10 * 1024**3,
            f"Authorization: Bearer {token}",
            "Content-Type: application/octet-stream",
        )
        with trio.fail_after(BOUND_S):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_send_concurrently, conn, [head, b"u" * (i * 65536)])
                first = await conn.final_answer()
            assert first is not None and first.status == 413 and first.closes
            assert b"M_TOO_LARGE" in first.body
            if i % 2:
                await conn.shut()  # a client that half-closes on the answer
            assert await conn.closed()
        await conn.aclose()
    problems = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not problems, [r.getMessage() for r in problems]


async def test_a_request_head_that_dribbles_in_is_cut_off(
    served: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_layer, "HEAD_TIMEOUT_S", 0.3)
    head = b"GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 200 + b"\r\n\r\n"
    # A second request on a kept connection gets the same deadline.
    for first in (b"", VERSIONS):
        conn = await Conn.open(_port(served))
        with trio.fail_after(BOUND_S):
            if first:
                await conn.send(first)
                answer = await conn.final_answer()
                assert answer is not None and answer.status == 200
            sent = 0
            for byte in head:
                if not await conn.send(bytes([byte])):
                    break
                sent += 1
                with trio.move_on_after(0.05):  # one byte per 50 ms: 12 s for the head
                    await conn._fill()
                if conn.eof:
                    break
            assert sent < len(head), "the whole head dribbled in without a cut"
            assert await conn.closed()
        await conn.aclose()
    # A head that comes in one piece is still served.
    conn = await Conn.open(_port(served))
    with trio.fail_after(BOUND_S):
        await conn.send(VERSIONS)
        answer = await conn.final_answer()
        assert answer is not None and answer.status == 200
    await conn.aclose()


@pytest.fixture
def short_keep_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_layer, "KEEP_ALIVE_S", 0.5)


async def test_an_idle_keep_alive_connection_is_closed(short_keep_alive: None, served: RunningServer) -> None:
    """After an answer (early or not) the keep-alive timer runs again: an idle
    connection is closed, not kept for ever."""
    for i in range(REPEATS):
        conn = await Conn.open(_port(served))
        with trio.fail_after(BOUND_S):
            if i % 2:
                await conn.send(_post("/_matrix/client/v3/nowhere", 100_000) + b"k" * 100_000)
            else:
                await conn.send(VERSIONS)
            answer = await conn.final_answer()
            assert answer is not None and not answer.closes
            assert await conn.closed()
        await conn.aclose()


def test_the_patched_packages_are_the_pinned_versions() -> None:
    """The speed patches and PocketH11Protocol replace private code of exactly these
    releases; pyproject.toml pins them, and they are what is installed."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for name, version in http_layer.PINNED.items():
        assert any(re.fullmatch(rf"{name}\s*==\s*{re.escape(version)}", d, re.I) for d in deps), name
    assert http_layer.versions_match()
    assert h11.__version__ == http_layer.PINNED["h11"]


async def test_connections_are_served_by_the_pocket_protocol(served: RunningServer) -> None:
    assert hypercorn.protocol.H11Protocol is http_layer.PocketH11Protocol
    conn = await Conn.open(_port(served))
    with trio.fail_after(BOUND_S):
        await conn.send(VERSIONS)
        answer = await conn.final_answer()
    assert answer is not None and answer.status == 200
    await conn.aclose()
