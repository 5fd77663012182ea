"""server.py and http_layer.py: the h11 receive-buffer fast path behaves exactly like h11's own."""

from __future__ import annotations

import json
import os
import random
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h11
import httpx
import pytest
from h11 import _receivebuffer

from pocketserver import http_layer, server
from tests.interop.conftest import start_pocketserver

Buffer = _receivebuffer.ReceiveBuffer


@pytest.fixture
def unpatched() -> Iterator[None]:
    """h11's own methods for the test (another test may have patched them), then the
    state the test found."""
    was = bool(http_layer._H11_ORIGINALS)
    http_layer.unpatch_h11_body_reads()
    yield
    http_layer.unpatch_h11_body_reads()
    if was:
        http_layer.patch_h11_body_reads()


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
    assert http_layer.patch_h11_body_reads()
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
    assert http_layer.patch_h11_body_reads()
    for step, events in plain.items():
        assert _parse(wire, step) == events
    events = plain[7001]
    assert b"".join(d for n, d in events[:-6] if n == "Data") == body
    assert [n for n, _ in events].count("Request") == 3


def test_a_read_that_is_all_body_is_handed_on_without_a_copy(unpatched: None) -> None:
    assert http_layer.patch_h11_body_reads()
    buf = Buffer()
    piece = bytes(100_000)
    buf += piece
    assert buf.maybe_extract_at_most(1 << 20) is piece
    assert bytes(buf) == b"" and buf.maybe_extract_at_most(10) is None


# -- a real server: response heads coalesced with their bodies -------------------------


def _exchange(sock: Any, conn: h11.Connection, request: h11.Request, body: bytes = b"") -> tuple[int, dict[bytes, bytes], bytes]:
    sock.sendall(conn.send(request))
    if body:
        sock.sendall(conn.send(h11.Data(data=body)))
    sock.sendall(conn.send(h11.EndOfMessage()))
    status, headers, data = 0, {}, b""
    for _ in range(100_000):
        ev = conn.next_event()
        if ev is h11.NEED_DATA:
            conn.receive_data(sock.recv(65536))
            continue
        if isinstance(ev, h11.Response):
            status, headers = ev.status_code, dict(ev.headers)
        elif isinstance(ev, h11.Data):
            data += bytes(ev.data)
        elif isinstance(ev, h11.EndOfMessage):
            conn.start_next_cycle()
            return status, headers, data
    raise AssertionError("no complete response")


def test_keep_alive_responses_of_every_shape_arrive_whole(tmp_path: Path) -> None:
    """JSON answers, errors, an empty body, HEAD, a large streamed download and an
    upload, one after the other on one connection."""
    with start_pocketserver(tmp_path, server_name="test.local") as sp:
        host, port = sp.base_url.split("//")[1].split(":")
        r = httpx.post(
            f"{sp.base_url}/_matrix/client/v3/register",
            json={"username": "alice", "password": "pw-alice-1", "auth": {"type": "m.login.dummy"}},
        )
        token = r.json()["access_token"]
        auth = [("Host", "x"), ("Authorization", f"Bearer {token}")]
        blob = os.urandom(3 * 1024 * 1024 + 5)
        with socket.create_connection((host, int(port))) as sock:
            conn = h11.Connection(h11.CLIENT)
            get = lambda path, method="GET": h11.Request(method=method, target=path, headers=auth)  # noqa: E731
            status, _, data = _exchange(sock, conn, get("/_matrix/client/versions"))
            assert status == 200 and b"v1." in data
            status, _, data = _exchange(sock, conn, get("/_matrix/client/v3/nowhere"))
            assert status == 404 and b"M_UNRECOGNIZED" in data
            up = h11.Request(
                method="POST",
                target="/_matrix/media/v3/upload?filename=b.bin",
                headers=[*auth, ("Content-Type", "application/octet-stream"), ("Content-Length", str(len(blob)))],
            )
            status, _, data = _exchange(sock, conn, up, blob)
            assert status == 200
            mxc = json.loads(data)["content_uri"]
            path = "/_matrix/client/v1/media/download/" + mxc[len("mxc://") :]
            status, headers, data = _exchange(sock, conn, get(path))
            assert status == 200 and data == blob
            assert int(headers[b"content-length"]) == len(blob)
            status, headers, data = _exchange(sock, conn, get(path, "HEAD"))
            assert status == 200 and data == b""
            room = h11.Request(
                method="PUT",
                target="/_matrix/client/v3/user/%40alice%3Atest.local/account_data/x.empty",
                headers=[*auth, ("Content-Type", "application/json"), ("Content-Length", "2")],
            )
            status, _, data = _exchange(sock, conn, room, b"{}")
            assert status == 200 and json.loads(data) == {}


def test_tune_interpreter_shortens_the_gil_switch_interval() -> None:
    import sys

    before = sys.getswitchinterval()
    try:
        server.tune_interpreter()
        assert sys.getswitchinterval() == pytest.approx(server.GIL_SWITCH_INTERVAL_S)
    finally:
        sys.setswitchinterval(before)


def _bind(address: str, port: int) -> str:
    from pocketserver.config import ListenerConfig
    from tests.conftest import make_config

    lst = ListenerConfig(address=address, port=port, resources=("client",))
    cfg = make_config(Path("/nonexistent"))
    with pytest.raises(server.ListenError) as e:
        server.bind_listener(server._hypercorn_config(cfg, lst), lst)
    return str(e.value)


def test_a_listener_that_cannot_bind_says_which_and_why() -> None:
    # 192.0.2.1 is a documentation address (never this machine's); binding sends nothing.
    assert _bind("192.0.2.1", 8008) == (
        "cannot listen on 192.0.2.1:8008 (client): address not available (not an address of this machine)"
    )
    if not socket.has_ipv6:
        return
    with socket.socket(socket.AF_INET6) as other:
        try:
            other.bind(("::1", 0))
        except OSError:
            return  # no IPv6 loopback here
        other.listen()
        port = other.getsockname()[1]
        assert _bind("::1", port) == f"cannot listen on [::1]:{port} (client): address already in use"
