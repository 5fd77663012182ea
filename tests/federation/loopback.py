"""Loopback stand-ins for the network discovery talks to: a DNS server and an HTTPS server.

``dns_server(records)`` answers A, AAAA and SRV queries over UDP on 127.0.0.1 from a
dict ``{(name, type): [rdata text, ...]}`` (NXDOMAIN for anything else) and counts the
queries it saw. ``https_server(routes)`` serves ``{path: (status, headers, body)}``
over TLS with the tests' shared self-signed certificate and counts the requests.
"""

from __future__ import annotations

import ssl
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import h11
import trio

from tests.conftest import shared_certificate


@dataclass
class LoopbackDns:
    port: int
    queries: Counter[tuple[str, str]] = field(default_factory=Counter)

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"


@asynccontextmanager
async def dns_server(records: dict[tuple[str, str], list[str]]) -> AsyncIterator[LoopbackDns]:
    import dns.message
    import dns.rcode
    import dns.rdataclass
    import dns.rdatatype
    import dns.rrset

    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    server = LoopbackDns(sock.getsockname()[1])

    async def serve() -> None:
        while True:
            data, addr = await sock.recvfrom(4096)
            query = dns.message.from_wire(data)
            response = dns.message.make_response(query)
            question = query.question[0]
            name = question.name.to_text(omit_final_dot=True).lower()
            rdtype = dns.rdatatype.to_text(question.rdtype)
            server.queries[(name, rdtype)] += 1
            answers = records.get((name, rdtype))
            if answers:
                response.answer.append(
                    dns.rrset.from_text_list(question.name, 300, dns.rdataclass.IN, rdtype, answers)
                )
            elif not any(n == name for n, _ in records):
                response.set_rcode(dns.rcode.NXDOMAIN)
            await sock.sendto(response.to_wire(), addr)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()
            sock.close()


Route = tuple[int, list[tuple[str, str]], bytes]


@dataclass
class LoopbackHttps:
    port: int
    requests: Counter[str] = field(default_factory=Counter)
    hosts: list[str] = field(default_factory=list)


@asynccontextmanager
async def https_server(routes: dict[str, Route]) -> AsyncIterator[LoopbackHttps]:
    cert, key = shared_certificate()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    listeners = await trio.open_ssl_over_tcp_listeners(0, ctx, host="127.0.0.1")
    server = LoopbackHttps(listeners[0].transport_listener.socket.getsockname()[1])

    async def handle(stream: trio.SSLStream[trio.SocketStream]) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    conn.receive_data(data)
                    if not data:
                        return
                    continue
                if isinstance(event, h11.Request):
                    path = event.target.decode()
                    server.requests[path] += 1
                    server.hosts.append(dict(event.headers).get(b"host", b"").decode())
                    status, headers, body = routes.get(path, (404, [], b"{}"))
                    await stream.send_all(conn.send(h11.Response(
                        status_code=status,
                        headers=[*headers, ("Content-Length", str(len(body))), ("Connection", "close")],
                    )) or b"")
                    await stream.send_all(conn.send(h11.Data(data=body)) or b"")
                    await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
                    return
                if isinstance(event, (h11.ConnectionClosed, h11.EndOfMessage)):
                    continue
        except (trio.BrokenResourceError, h11.RemoteProtocolError):
            return
        finally:
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, handle, listeners)
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()
