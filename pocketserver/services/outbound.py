"""Outbound connections (push gateways, application services, identity servers, URL
previews; federation has its own client on top): TCP, then TLS, and one small HTTP/1.1
client, :meth:`Outbound.request`, for the JSON exchanges.

:class:`Outbound` is the one opener every outbound request goes through, so the TLS
settings of ``[federation]`` apply to all of them: ``verify_tls = false`` accepts any
certificate, ``extra_ca_file`` adds trusted CAs to the system's store. Its one TLS
context is made on first use (loading the system's CA store costs memory an idle
server does not need) and reused.

Which *addresses* may be reached is the caller's decision, made before it connects:
:class:`IpPolicy` says which (public addresses, plus the ranges an operator allows), and
:meth:`Outbound.open_vetted` resolves a host, refuses it unless every address it has is
allowed, and connects. Federation, push gateways and identity servers go by
``federation.allowed_ip_ranges``; URL previews by ``media.url_preview_ip_allowlist``.

Everything an exchange with a remote can fail with because of the remote or the
network is in :data:`OUTBOUND_ERRORS`: callers catch that tuple and answer an upstream
failure (502 for a client's request, a retry for a push), never a 500.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11
import trio

from pocketserver.config import FederationConfig

log = logging.getLogger("pocketserver.outbound")


class OutboundError(Exception):
    """A remote could not be reached or spoke no acceptable TLS or HTTP."""


class BlockedAddress(OutboundError):
    """Every address (or, for :meth:`Outbound.open_vetted`, some address) of the remote is
    one the caller's :class:`IpPolicy` does not allow."""


class ResponseTooLarge(OutboundError):
    """The remote's answer was larger than the caller allows."""


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    status: int
    body: bytes


class IpPolicy:
    """Which IP addresses an outbound request may connect to: global unicast ones, and
    any in the ranges the operator allows (loopback and private networks are refused
    unless allowed, so no user can make the server call into its own network)."""

    def __init__(self, allowed_ranges: Sequence[str] = ()) -> None:
        self.allowed = [ipaddress.ip_network(c, strict=False) for c in allowed_ranges]

    def allows(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        if any(addr in net for net in self.allowed):
            return True
        return addr.is_global and not addr.is_multicast


#: What a connection, a TLS handshake or an HTTP exchange with a remote can raise.
OUTBOUND_ERRORS: tuple[type[Exception], ...] = (
    OutboundError,
    OSError,  # refused, unreachable, reset; ssl.SSLError is one too
    trio.BrokenResourceError,  # the stream broke: a TLS failure, an abrupt close
    trio.ClosedResourceError,
    trio.TooSlowError,
    h11.ProtocolError,  # the remote's HTTP was malformed
    UnicodeError,  # a host name IDNA cannot encode
)


class Outbound:
    def __init__(self, federation: FederationConfig | None = None) -> None:
        cfg = federation or FederationConfig()
        self.verify_tls = cfg.verify_tls
        self.extra_ca_file = cfg.extra_ca_file
        self._context: ssl.SSLContext | None = None

    def tls_context(self) -> ssl.SSLContext:
        """The client TLS context, built once from the configuration."""
        if self._context is None:
            if not self.verify_tls:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            else:
                ctx = ssl.create_default_context()
                if self.extra_ca_file:
                    try:
                        ctx.load_verify_locations(cafile=self.extra_ca_file)
                    except (OSError, ValueError) as e:
                        log.warning("federation.extra_ca_file %s: %s", self.extra_ca_file, e)
                        raise OutboundError(f"federation.extra_ca_file {self.extra_ca_file}: cannot load: {e}") from None
            self._context = ctx
        return self._context

    def check_tls_files(self) -> None:
        """Load the TLS context now: an ``extra_ca_file`` that cannot be read fails the
        start with :class:`OutboundError` instead of every later request."""
        if self.verify_tls and self.extra_ca_file:
            self.tls_context()

    async def open_vetted(
        self, host: str, port: int, *, tls: bool, policy: IpPolicy
    ) -> trio.abc.Stream:
        """Resolve ``host``, refuse it (:class:`BlockedAddress`) unless ``policy`` allows
        every address it resolves to, and connect to the first that answers."""
        infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM)
        ips = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not ips:
            raise OutboundError(f"{host} does not resolve")
        if not all(policy.allows(ip) for ip in ips):
            raise BlockedAddress(f"{host} resolves to an address that may not be reached")
        last: BaseException | None = None
        for ip in ips:
            try:
                return await self.open_stream(ip, port, tls=tls, server_hostname=host)
            except (OSError, trio.BrokenResourceError) as e:
                last = e
        raise OutboundError(f"cannot connect to {host} port {port}: {last}")

    async def open_stream(
        self, address: str, port: int, *, tls: bool, server_hostname: str
    ) -> trio.abc.Stream:
        """A connected stream to ``address`` (a host name or an IP already vetted by the
        caller), wrapped in TLS verified for ``server_hostname`` when ``tls``. Fails
        with one of :data:`OUTBOUND_ERRORS`."""
        context = self.tls_context() if tls else None
        stream: trio.abc.Stream = await trio.open_tcp_stream(address, port)
        if context is None:
            return stream
        ssl_stream = trio.SSLStream(
            stream, context, server_hostname=server_hostname, https_compatible=True
        )
        try:
            await ssl_stream.do_handshake()
        except trio.BrokenResourceError as e:
            await trio.aclose_forcefully(stream)
            raise OutboundError(f"TLS with {server_hostname} failed: {e.__cause__ or e}") from None
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return ssl_stream

    async def request(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        headers: Sequence[tuple[str, str]] = (),
        policy: IpPolicy | None,
        max_bytes: int,
        timeout_s: float,
    ) -> HttpAnswer:
        """One HTTP/1.1 request to an ``http(s)://`` URL on a fresh connection, bounded in
        time (``timeout_s`` for all of it) and in the size of the answer's body
        (:class:`ResponseTooLarge`). With a ``policy`` the host's addresses are vetted
        first (:meth:`open_vetted`); without, the URL is one the operator configured.
        Fails with one of :data:`OUTBOUND_ERRORS`; any status is an answer."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise OutboundError(f"not an http(s) URL: {url!r}")
        tls = parts.scheme == "https"
        host = parts.hostname
        try:
            port = parts.port or (443 if tls else 80)
        except ValueError:
            raise OutboundError(f"bad port in {url!r}") from None
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        all_headers = [
            ("Host", parts.netloc.rsplit("@", 1)[-1]),
            ("User-Agent", "pocketserver"),
            ("Connection", "close"),
            *headers,
        ]
        if body is not None or method not in ("GET", "HEAD"):
            all_headers.append(("Content-Length", str(len(body or b""))))
        with trio.fail_after(timeout_s):
            if policy is None:
                stream = await self.open_stream(host, port, tls=tls, server_hostname=host)
            else:
                stream = await self.open_vetted(host, port, tls=tls, policy=policy)
            async with stream:
                conn = h11.Connection(h11.CLIENT)
                request = h11.Request(method=method, target=target, headers=all_headers)
                await stream.send_all(conn.send(request) or b"")
                if body:
                    await stream.send_all(conn.send(h11.Data(data=body)) or b"")
                await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
                status = 0
                raw = bytearray()
                while True:  # bounded by the deadline above and by max_bytes
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(bytes(await stream.receive_some(65536)))
                    elif isinstance(event, h11.Response):
                        status = event.status_code
                    elif isinstance(event, h11.Data):
                        raw += event.data
                        if len(raw) > max_bytes:
                            raise ResponseTooLarge(f"{host} answered more than {max_bytes} bytes")
                    elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                        break
        return HttpAnswer(status, bytes(raw))
