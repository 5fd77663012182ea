"""Outbound connections (push gateways, URL previews; federation later): TCP, then TLS.

Owns the one default TLS context for verified outbound HTTPS, made on first use (it
loads the system's CA store, which costs memory an idle server does not need).
"""

from __future__ import annotations

import ssl

import trio

_default_context: ssl.SSLContext | None = None


def default_tls_context() -> ssl.SSLContext:
    global _default_context
    if _default_context is None:
        _default_context = ssl.create_default_context()
    return _default_context


async def open_stream(address: str, port: int, *, tls: bool, server_hostname: str) -> trio.abc.Stream:
    """A connected stream to ``address`` (a host name or an IP already vetted by the
    caller), wrapped in TLS verified for ``server_hostname`` when ``tls``."""
    stream: trio.abc.Stream = await trio.open_tcp_stream(address, port)
    if not tls:
        return stream
    ssl_stream = trio.SSLStream(
        stream, default_tls_context(), server_hostname=server_hostname, https_compatible=True
    )
    try:
        await ssl_stream.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return ssl_stream
