"""server.py: the h11 receive-buffer fast path behaves exactly like h11's own."""

from __future__ import annotations

import random
from collections.abc import Iterator

import h11
import pytest
from h11 import _receivebuffer

from pocketserver import server

Buffer = _receivebuffer.ReceiveBuffer


@pytest.fixture
def unpatched() -> Iterator[None]:
    """h11's own methods for the test (another test may have patched them), then the
    state the test found."""
    was = bool(server._H11_ORIGINALS)
    server.unpatch_h11_body_reads()
    yield
    server.unpatch_h11_body_reads()
    if was:
        server.patch_h11_body_reads()


def _state(buf: Buffer) -> tuple[bytes, int, int]:
    return bytes(buf), buf._next_line_search, buf._multiple_lines_search


def _run_ops(seed: int) -> list[object]:
    """A random sequence of buffer operations; what each returned, and the state."""
    rng = random.Random(seed)
    buf = Buffer()
    out: list[object] = []
    for _ in range(40):
        op = rng.random()
        if op < 0.35:
            piece = rng.randbytes(rng.randint(0, 40)) + rng.choice([b"", b"\r\n", b"\r\n\r\n"])
            buf += piece if rng.random() < 0.8 else bytearray(piece)
        elif op < 0.65:
            got = buf.maybe_extract_at_most(rng.randint(0, 60))
            out.append(None if got is None else bytes(got))
        elif op < 0.8:
            got = buf.maybe_extract_next_line()
            out.append(None if got is None else bytes(got))
        elif op < 0.95:
            lines = buf.maybe_extract_lines()
            out.append(None if lines is None else [bytes(x) for x in lines])
        else:
            out.append(buf.is_next_line_obviously_invalid_request_line())
        out.append(_state(buf))
    return out


def test_patched_buffer_matches_h11_on_random_operations(unpatched: None) -> None:
    plain = [_run_ops(seed) for seed in range(400)]
    assert server.patch_h11_body_reads()
    assert [_run_ops(seed) for seed in range(400)] == plain


def _parse(wire: bytes, step: int) -> list[tuple[str, bytes]]:
    conn = h11.Connection(h11.SERVER)
    out: list[tuple[str, bytes]] = []
    for i in range(0, len(wire), step):
        conn.receive_data(wire[i : i + step])
        for _ in range(1000):
            ev = conn.next_event()
            if ev is h11.NEED_DATA or ev is h11.PAUSED:
                break
            out.append((type(ev).__name__, bytes(ev.data) if isinstance(ev, h11.Data) else b""))
            if isinstance(ev, h11.EndOfMessage):
                conn.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
                conn.send(h11.EndOfMessage())
                conn.start_next_cycle()
    return out


def test_h11_parses_bodies_chunks_and_pipelining_the_same_when_patched(unpatched: None) -> None:
    body = bytes(range(256)) * 1000
    wire = (
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
        + body
        + b"POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        + b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    plain = {step: _parse(wire, step) for step in (1, 3, 7001, 65536, len(wire))}
    assert server.patch_h11_body_reads()
    for step, events in plain.items():
        assert _parse(wire, step) == events
    events = plain[7001]
    assert b"".join(d for n, d in events[:-6] if n == "Data") == body
    assert [n for n, _ in events].count("Request") == 3


def test_a_read_that_is_all_body_is_handed_on_without_a_copy(unpatched: None) -> None:
    assert server.patch_h11_body_reads()
    buf = Buffer()
    piece = bytes(100_000)
    buf += piece
    assert buf.maybe_extract_at_most(1 << 20) is piece
    assert bytes(buf) == b"" and buf.maybe_extract_at_most(10) is None
