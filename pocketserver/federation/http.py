"""HTTP/1.1 over TLS to other servers: address vetting, one connection, a small pool.

Every federation connection (requests, well-known look-ups, key fetches) is opened
here: the addresses a name resolves to are vetted *before* connecting, and only the
vetted address is connected to (so a DNS answer cannot slip a private address in
between the check and the connect). Private, loopback, link-local, multicast and
reserved addresses are refused unless ``[federation] allowed_ip_ranges`` covers them.

TLS comes from :class:`pocketserver.services.outbound.Outbound`, the one TLS context
of the server (``verify_tls``, ``extra_ca_file``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import h11
import trio

from pocketserver.services.outbound import BlockedAddress, IpPolicy, Outbound, OutboundError

log = logging.getLogger("pocketserver.federation.http")

MAX_HEADER_BYTES = 64 * 1024
USER_AGENT = "pocketserver"


class ResponseTooLarge(OutboundError):
    """The response body passed the caller's size limit."""


@dataclass
class HttpResponse:
    status: int
    headers: dict[str, str]  # lower-cased names; the last value of a repeated header
    body: bytes


class HttpConnection:
    """One HTTP/1.1 connection; reusable after a complete exchange (keep-alive)."""

    def __init__(self, stream: trio.abc.Stream, peer: str) -> None:
        self.stream = stream
        self.peer = peer
        self.conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADER_BYTES)
        self.idle_since = 0.0
        self.received_any = False

    @property
    def reusable(self) -> bool:
        return self.conn.our_state is h11.IDLE and self.conn.their_state is h11.IDLE

    async def request(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes | None,
        max_size: int,
    ) -> HttpResponse:
        """Send one request and read its whole response (at most ``max_size`` bytes of
        body, else :class:`ResponseTooLarge`). Fails with OUTBOUND_ERRORS."""
        response = await self.start(method, target, headers, body, max_size)
        chunks = [piece async for piece in self.body(max_size)]
        return HttpResponse(status=response.status, headers=response.headers, body=b"".join(chunks))

    async def start(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes | None,
        max_size: int,
    ) -> HttpResponse:
        """Send one request and read the head of its response (``body`` is left empty:
        read it with :meth:`body`). A declared length over ``max_size`` fails at once
        with :class:`ResponseTooLarge`. Fails with OUTBOUND_ERRORS."""
        self.received_any = False
        all_headers = [*headers, ("User-Agent", USER_AGENT)]
        if body is not None:
            all_headers.append(("Content-Length", str(len(body))))
        await self.stream.send_all(
            self.conn.send(h11.Request(method=method, target=target.encode("ascii"), headers=all_headers))
            or b""
        )
        if body:
            await self.stream.send_all(self.conn.send(h11.Data(data=body)) or b"")
        await self.stream.send_all(self.conn.send(h11.EndOfMessage()) or b"")
        while True:
            event = await self._next_event()
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                declared = dict(event.headers).get(b"content-length")
                if declared is not None and declared.isdigit() and int(declared) > max_size:
                    raise ResponseTooLarge(f"response of {int(declared)} bytes is over {max_size} bytes")
                return HttpResponse(
                    status=event.status_code,
                    headers={k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers},
                    body=b"",
                )
            if isinstance(event, h11.ConnectionClosed):
                raise OutboundError("connection closed before the response came")

    async def body(
        self, max_size: int, *, read_timeout_s: float | None = None, deadline: float | None = None
    ) -> AsyncIterator[bytes]:
        """The body of the response :meth:`start` began, piece by piece as it arrives
        (:class:`ResponseTooLarge` past ``max_size`` bytes; each read from the network
        bounded by ``read_timeout_s`` and by the trio time ``deadline``; else
        ``trio.TooSlowError``). Once it ends, the connection can be reused."""
        size = 0
        while True:
            timeout = read_timeout_s
            if deadline is not None:
                left = max(deadline - trio.current_time(), 0.0)
                timeout = left if timeout is None else min(timeout, left)
            event = await self._next_event(timeout)
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > max_size:
                    raise ResponseTooLarge(f"response is over {max_size} bytes")
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise OutboundError("connection closed before the response ended")
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()

    async def _next_event(self, read_timeout_s: float | None = None) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            if read_timeout_s is None:
                data = await self.stream.receive_some(65536)
            else:
                with trio.fail_after(read_timeout_s):
                    data = await self.stream.receive_some(65536)
            if data:
                self.received_any = True
            self.conn.receive_data(bytes(data))

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


async def connect(
    outbound: Outbound,
    policy: IpPolicy,
    addresses: Sequence[str],
    port: int,
    tls_name: str,
) -> HttpConnection:
    """A TLS connection to the first allowed address of ``addresses`` that answers,
    verified for ``tls_name``. :class:`BlockedAddress` when none is allowed."""
    allowed = [ip for ip in addresses if policy.allows(ip)]
    if not allowed:
        if addresses:
            raise BlockedAddress(
                f"{', '.join(addresses)} may not be reached (federation.allowed_ip_ranges)"
            )
        raise OutboundError(f"{tls_name} has no address")
    last: BaseException | None = None
    for ip in allowed:
        try:
            stream = await outbound.open_stream(ip, port, tls=True, server_hostname=tls_name)
        except (OSError, OutboundError, trio.BrokenResourceError) as e:
            last = e
            continue
        return HttpConnection(stream, f"{ip}:{port}")
    raise OutboundError(f"cannot connect to {tls_name} port {port}: {last}")
