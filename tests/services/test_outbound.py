"""The one outbound opener applies [federation]'s TLS settings: against a loopback TLS
server with a self-signed certificate, refused by default, accepted with its CA in
``extra_ca_file``, accepted with ``verify_tls = false``."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator

import pytest
import trio

from pocketserver.config import FederationConfig
from pocketserver.services.outbound import (
    OUTBOUND_ERRORS,
    BlockedAddress,
    IpPolicy,
    Outbound,
    OutboundError,
)
from tests.conftest import shared_certificate


def server_context() -> ssl.SSLContext:
    cert, key = shared_certificate()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


async def _greet(stream: trio.abc.Stream) -> None:
    try:
        await stream.send_all(b"hello")
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the client refused the handshake
    finally:
        await trio.aclose_forcefully(stream)


@pytest.fixture
async def tls_port(nursery: trio.Nursery) -> AsyncIterator[int]:
    """A loopback TLS server (the test certificate: CN test.local, SAN 127.0.0.1) that
    says hello and closes."""
    listeners = await nursery.start(
        lambda task_status: trio.serve_ssl_over_tcp(
            _greet, 0, server_context(), host="127.0.0.1", task_status=task_status
        )
    )
    yield listeners[0].transport_listener.socket.getsockname()[1]


async def _hello(outbound: Outbound, port: int) -> bytes:
    with trio.fail_after(10):
        stream = await outbound.open_stream("127.0.0.1", port, tls=True, server_hostname="test.local")
        async with stream:
            return bytes(await stream.receive_some(100))


async def test_a_self_signed_server_is_refused_by_default(tls_port: int) -> None:
    with pytest.raises(OutboundError, match="TLS"):
        await _hello(Outbound(FederationConfig()), tls_port)


async def test_extra_ca_file_makes_it_trusted(tls_port: int) -> None:
    cert, _ = shared_certificate()
    outbound = Outbound(FederationConfig(extra_ca_file=cert))
    assert await _hello(outbound, tls_port) == b"hello"
    # One context, built once, serves every request.
    assert outbound.tls_context() is outbound.tls_context()
    assert await _hello(outbound, tls_port) == b"hello"


async def test_verify_tls_false_accepts_any_certificate(tls_port: int) -> None:
    assert await _hello(Outbound(FederationConfig(verify_tls=False)), tls_port) == b"hello"


async def test_the_host_name_is_still_checked_with_extra_ca_file(tls_port: int) -> None:
    cert, _ = shared_certificate()
    outbound = Outbound(FederationConfig(extra_ca_file=cert))
    with trio.fail_after(10), pytest.raises(OutboundError):
        await outbound.open_stream("127.0.0.1", tls_port, tls=True, server_hostname="other.example")


async def test_an_unreadable_extra_ca_file_is_an_outbound_failure(tmp_path: object, tls_port: int) -> None:
    outbound = Outbound(FederationConfig(extra_ca_file="/nonexistent/ca.pem"))
    with pytest.raises(OUTBOUND_ERRORS):
        await _hello(outbound, tls_port)


def test_an_unreadable_extra_ca_file_fails_the_start_check() -> None:
    with pytest.raises(OutboundError, match="extra_ca_file /nonexistent/ca.pem"):
        Outbound(FederationConfig(extra_ca_file="/nonexistent/ca.pem")).check_tls_files()
    # Not verifying, the file is not read.
    Outbound(FederationConfig(verify_tls=False, extra_ca_file="/nonexistent/ca.pem")).check_tls_files()


@pytest.mark.parametrize(
    ("ip", "allowed", "ok"),
    [
        ("8.8.8.8", (), True),
        ("2001:4860:4860::8888", (), True),
        ("127.0.0.1", (), False),
        ("::1", (), False),
        ("10.1.2.3", (), False),
        ("192.168.1.10", (), False),
        ("169.254.169.254", (), False),  # cloud metadata
        ("::ffff:127.0.0.1", (), False),  # IPv4-mapped loopback
        ("fe80::1%eth0", (), False),
        ("224.0.0.1", (), False),
        ("127.0.0.1", ("127.0.0.0/8",), True),
        ("::ffff:127.0.0.1", ("127.0.0.0/8",), True),
        ("192.168.1.10", ("192.168.1.0/24",), True),
        ("not an ip", (), False),
    ],
)
def test_ip_policy(ip: str, allowed: tuple[str, ...], ok: bool) -> None:
    assert IpPolicy(allowed).allows(ip) is ok


async def test_open_vetted_refuses_a_name_with_a_loopback_address(tls_port: int) -> None:
    outbound = Outbound(FederationConfig(verify_tls=False))
    with trio.fail_after(10), pytest.raises(BlockedAddress):
        await outbound.open_vetted("localhost", tls_port, tls=True, policy=IpPolicy())
    with trio.fail_after(10):
        stream = await outbound.open_vetted("127.0.0.1", tls_port, tls=True, policy=IpPolicy(["127.0.0.0/8"]))
        async with stream:
            assert await stream.receive_some(100) == b"hello"


async def _http_server(nursery: trio.Nursery, answer_body: bytes, seen: list[bytes]) -> int:
    """A loopback plain-HTTP server that records each request and answers 200 with
    ``answer_body``."""

    async def handle(stream: trio.abc.Stream) -> None:
        raw = b""
        with trio.move_on_after(10):
            while b"\r\n\r\n" not in raw:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                raw += chunk
            head, _, rest = raw.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(rest) < length:
                rest += await stream.receive_some(65536)
            seen.append(head + b"\r\n\r\n" + rest)
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(answer_body)
                + answer_body
            )
        await trio.aclose_forcefully(stream)

    listeners = await nursery.start(lambda task_status: trio.serve_tcp(handle, 0, host="127.0.0.1", task_status=task_status))
    return int(listeners[0].socket.getsockname()[1])


async def test_request_sends_the_body_and_returns_the_answer(nursery: trio.Nursery) -> None:
    seen: list[bytes] = []
    port = await _http_server(nursery, b'{"ok":true}', seen)
    answer = await Outbound().request(
        "POST", f"http://127.0.0.1:{port}/push?x=1", body=b'{"a":1}',
        headers=[("Content-Type", "application/json")], policy=IpPolicy(["127.0.0.0/8"]),
        max_bytes=1000, timeout_s=10,
    )
    assert (answer.status, answer.body) == (200, b'{"ok":true}')
    request = seen[0]
    assert request.startswith(b"POST /push?x=1 HTTP/1.1\r\n")
    assert b"host: 127.0.0.1:%d" % port in request.lower()
    assert request.endswith(b'\r\n\r\n{"a":1}')


async def test_request_refuses_large_answers_and_blocked_addresses(nursery: trio.Nursery) -> None:
    port = await _http_server(nursery, b"x" * 5000, [])
    outbound = Outbound()
    with pytest.raises(OutboundError, match="more than 1000 bytes"):
        await outbound.request("GET", f"http://127.0.0.1:{port}/", policy=None, max_bytes=1000, timeout_s=10)
    with pytest.raises(BlockedAddress):
        await outbound.request("GET", f"http://127.0.0.1:{port}/", policy=IpPolicy(), max_bytes=1000, timeout_s=10)
    with pytest.raises(OutboundError, match="not an http"):
        await outbound.request("GET", "ftp://127.0.0.1/", policy=None, max_bytes=1000, timeout_s=10)
