"""server.py: the h11 body-read fast path behaves exactly like h11's own."""

from __future__ import annotations

import random

import h11
from h11 import _receivebuffer

from pocketserver import server

ORIGINAL = _receivebuffer.ReceiveBuffer.maybe_extract_at_most


def _state(buf: _receivebuffer.ReceiveBuffer) -> tuple[bytes, int, int]:
    return bytes(buf), buf._next_line_search, buf._multiple_lines_search


def test_patched_extract_matches_h11_on_random_operations() -> None:
    server._h11_extract_at_most = ORIGINAL
    rng = random.Random(7)
    for _ in range(300):
        a, b = _receivebuffer.ReceiveBuffer(), _receivebuffer.ReceiveBuffer()
        for _ in range(30):
            op = rng.random()
            if op < 0.4:
                piece = rng.randbytes(rng.randint(0, 40)) + rng.choice([b"", b"\r\n", b"\r\n\r\n"])
                a += piece
                b += piece
            elif op < 0.8:
                n = rng.randint(0, 60)
                got_a = ORIGINAL(a, n)
                got_b = server._take_body_bytes(b, n)
                assert (None if got_a is None else bytes(got_a)) == (
                    None if got_b is None else bytes(got_b)
                )
            else:
                assert a.maybe_extract_next_line() == b.maybe_extract_next_line()
            assert _state(a) == _state(b)


def test_h11_parses_bodies_and_pipelined_requests_the_same_when_patched() -> None:
    body = bytes(range(256)) * 1000
    wire = (
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
        + body
        + b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n"
    )

    def parse() -> list[tuple[str, bytes]]:
        conn = h11.Connection(h11.SERVER)
        out: list[tuple[str, bytes]] = []
        for i in range(0, len(wire), 7001):
            conn.receive_data(wire[i : i + 7001])
            for _ in range(1000):
                ev = conn.next_event()
                if ev is h11.NEED_DATA or ev is h11.PAUSED:
                    break
                name = type(ev).__name__
                out.append((name, bytes(ev.data) if isinstance(ev, h11.Data) else b""))
                if isinstance(ev, h11.EndOfMessage):
                    conn.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
                    conn.send(h11.EndOfMessage())
                    conn.start_next_cycle()
        return out

    plain = parse()
    assert server.patch_h11_body_reads()
    try:
        patched = parse()
    finally:
        _receivebuffer.ReceiveBuffer.maybe_extract_at_most = ORIGINAL  # type: ignore[method-assign]
    assert patched == plain
    assert b"".join(d for n, d in plain if n == "Data") == body
    assert [n for n, _ in plain].count("Request") == 2
