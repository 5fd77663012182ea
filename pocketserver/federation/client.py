"""The signing HTTP client: this server's requests to other servers.

:class:`FederationClient` is the :class:`~pocketserver.federation.interfaces.FederationRequester`
the federation services use. For each request it:

1. resolves the destination (:mod:`pocketserver.federation.discovery`): targets in the
   spec's order, each with its ``Host`` header and TLS name;
2. signs ``{method, uri, origin, destination, content?}`` with this server's key and
   sends it as ``Authorization: X-Matrix ...`` (server-server-api.md, "Request
   Authentication"; :mod:`pocketserver.protocol.request_auth`);
3. connects over TLS verified by default (``[federation] verify_tls``, ``extra_ca_file``)
   to vetted addresses only (:mod:`pocketserver.federation.http`), reusing an idle
   keep-alive connection to the same target when there is one;
4. bounds the whole exchange in time (``timeout_s``) and the answer in size
   (``max_size``, 64 MiB unless the caller says otherwise);
5. answers the decoded JSON of a 2xx (or, from :meth:`FederationClient.stream`, the
   head of the answer and its body as it arrives, for media), raises :class:`FederationError` for an error
   status (with the remote's errcode when it sent one) and
   :class:`FederationUnreachable` for everything else.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO
from urllib.parse import urlencode

import orjson
import trio

from pocketserver.config import FederationConfig
from pocketserver.federation.discovery import DnsResolver, ServerResolver, Target
from pocketserver.federation.http import (
    HttpConnection,
    HttpResponse,
    IpPolicy,
    ResponseTooLarge,
    connect,
)
from pocketserver.federation.interfaces import FederationError, FederationUnreachable, Query
from pocketserver.protocol.canonical_json import CanonicalJsonError, encode_canonical_json
from pocketserver.protocol.identifiers import InvalidIdentifier
from pocketserver.protocol.request_auth import format_header, signing_object
from pocketserver.protocol.signing import SigningKey, sign_json
from pocketserver.services.outbound import OUTBOUND_ERRORS, Outbound

log = logging.getLogger("pocketserver.federation.client")

DEFAULT_MAX_RESPONSE = 64 * 1024 * 1024
# Idle keep-alive connections kept per target, for how long, and over all targets.
POOL_PER_TARGET = 2
POOL_IDLE_S = 20.0
POOL_TARGETS = 64
# What is read of an error answer's body (its JSON errcode) from a streamed request.
ERROR_BODY_MAX = 64 * 1024


class ResponseTooLargeError(FederationUnreachable):
    """A streamed answer was (or declared itself) larger than the caller's limit."""


@dataclass
class StreamedResponse:
    """The head of a 2xx answer to :meth:`FederationClient.stream`, and its body."""

    status: int
    headers: dict[str, str]  # lower-cased names
    pieces: AsyncIterator[bytes]


class FederationClient:
    """Signed JSON requests to other servers (a ``FederationRequester``)."""

    def __init__(
        self,
        server_name: str,
        signing_key: SigningKey,
        outbound: Outbound,
        config: FederationConfig | None = None,
        *,
        resolver: ServerResolver | None = None,
    ) -> None:
        cfg = config or FederationConfig()
        self.enabled = cfg.enabled
        self.server_name = server_name
        self.signing_key = signing_key
        self.outbound = outbound
        self.policy = IpPolicy(cfg.allowed_ip_ranges)
        self.dns = DnsResolver(cfg.dns_servers)
        self.resolver = resolver or ServerResolver(self.dns, self.fetch_well_known)
        self._pool: OrderedDict[Target, list[HttpConnection]] = OrderedDict()

    def statistics(self) -> dict[str, int]:
        return {
            "pooled_connections": sum(len(v) for v in self._pool.values()),
            **self.resolver.statistics(),
        }

    # -- the FederationRequester interface ---------------------------------------------

    async def get_json(
        self,
        destination: str,
        path: str,
        query: Query | None = None,
        *,
        timeout_s: float = 60.0,
        max_size: int = DEFAULT_MAX_RESPONSE,
        signed: bool = True,
    ) -> Any:
        return await self.request_json(
            "GET", destination, path, query, None, timeout_s=timeout_s, max_size=max_size, signed=signed
        )

    async def put_json(
        self,
        destination: str,
        path: str,
        body: Any,
        query: Query | None = None,
        *,
        timeout_s: float = 60.0,
        max_size: int = DEFAULT_MAX_RESPONSE,
    ) -> Any:
        return await self.request_json(
            "PUT", destination, path, query, body, timeout_s=timeout_s, max_size=max_size
        )

    async def post_json(
        self,
        destination: str,
        path: str,
        body: Any,
        query: Query | None = None,
        *,
        timeout_s: float = 60.0,
        max_size: int = DEFAULT_MAX_RESPONSE,
        signed: bool = True,
    ) -> Any:
        return await self.request_json(
            "POST", destination, path, query, body, timeout_s=timeout_s, max_size=max_size, signed=signed
        )

    async def put_json_to_file(
        self,
        destination: str,
        path: str,
        body: Any,
        sink: BinaryIO,
        *,
        timeout_s: float = 60.0,
        max_size: int = DEFAULT_MAX_RESPONSE,
    ) -> int:
        """A PUT whose 2xx answer is too big to hold (a big room's send_join): its body
        written to ``sink`` as it arrives, never held whole; how many bytes. An error
        status raises :class:`FederationError` (its errcode decoded, as
        :meth:`request_json`); over ``max_size`` bytes or past ``timeout_s`` for the
        whole exchange, :class:`FederationUnreachable`."""
        if not self.enabled:
            raise FederationUnreachable("federation is turned off ([federation] enabled = false)")
        try:
            payload = encode_canonical_json(body)
        except CanonicalJsonError as e:
            raise FederationUnreachable(f"the request body is not canonical JSON: {e}") from None
        headers = [
            ("Accept", "application/json"),
            ("Content-Type", "application/json"),
            ("Authorization", self.authorization("PUT", destination, path, body)),
        ]
        written = 0
        with trio.move_on_after(timeout_s) as scope:
            target, conn, head = await self._start(destination, path, headers, max_size, "PUT", payload)
            done = False
            try:
                if not 200 <= head.status < 300:
                    head.body = b"".join([p async for p in conn.body(ERROR_BODY_MAX)])
                    done = True
                    _decode(head, destination, "PUT", path)  # raises FederationError
                async for piece in conn.body(max_size):
                    sink.write(piece)
                    written += len(piece)
                done = True
            except ResponseTooLarge as e:
                raise ResponseTooLargeError(f"PUT {destination}{path}: {e}") from None
            except OUTBOUND_ERRORS as e:
                raise FederationUnreachable(f"PUT {destination}{path}: {e or type(e).__name__}") from None
            finally:
                if done:
                    await self._give_back(target, conn)
                else:
                    await conn.aclose()
        if scope.cancelled_caught:
            raise FederationUnreachable(f"PUT {destination}{path}: timed out after {timeout_s} s")
        return written

    # -- the work ----------------------------------------------------------------------

    def authorization(self, method: str, destination: str, uri: str, content: Any) -> str:
        """The X-Matrix header value for a request (steps 1-3 of request signing)."""
        signed = sign_json(
            signing_object(method, uri, self.server_name, destination, content),
            self.server_name,
            self.signing_key,
        )
        sig = signed["signatures"][self.server_name][self.signing_key.key_id]
        return format_header(self.server_name, destination, self.signing_key.key_id, sig)

    async def request_json(
        self,
        method: str,
        destination: str,
        path: str,
        query: Query | None,
        body: Any,
        *,
        timeout_s: float = 60.0,
        max_size: int = DEFAULT_MAX_RESPONSE,
        signed: bool = True,
    ) -> Any:
        if not self.enabled:
            raise FederationUnreachable("federation is turned off ([federation] enabled = false)")
        uri = _with_query(path, query)
        payload: bytes | None = None
        if body is not None:
            try:
                payload = encode_canonical_json(body)
            except CanonicalJsonError as e:
                raise FederationUnreachable(f"the request body is not canonical JSON: {e}") from None
        headers = [("Accept", "application/json")]
        if payload is not None:
            headers.append(("Content-Type", "application/json"))
        if signed:
            headers.append(("Authorization", self.authorization(method, destination, uri, body)))
        with trio.move_on_after(timeout_s) as scope:
            response = await self._send(destination, method, uri, headers, payload, max_size)
        if scope.cancelled_caught:
            raise FederationUnreachable(f"{method} {destination}{path}: timed out after {timeout_s} s")
        return _decode(response, destination, method, path)

    @asynccontextmanager
    async def stream(
        self,
        destination: str,
        path: str,
        query: Query | None = None,
        *,
        signed: bool = True,
        timeout_s: float = 60.0,
        read_timeout_s: float = 60.0,
        total_timeout_s: float = 600.0,
        max_size: int = DEFAULT_MAX_RESPONSE,
    ) -> AsyncIterator[StreamedResponse]:
        """A GET whose body is not JSON and may be big (media): the head of a 2xx answer
        and its body as an async iterator of pieces, read as the caller consumes them.

        The head must come within ``timeout_s``; then each read within
        ``read_timeout_s`` and the whole body within ``total_timeout_s``, at most
        ``max_size`` bytes. An error status raises :class:`FederationError` before
        anything is yielded; everything else that goes wrong, including while the body
        is read, raises :class:`FederationUnreachable`. The connection goes back to
        the pool only when the body was read to its end.
        """
        if not self.enabled:
            raise FederationUnreachable("federation is turned off ([federation] enabled = false)")
        uri = _with_query(path, query)
        headers = [("Accept", "*/*")]
        if signed:
            headers.append(("Authorization", self.authorization("GET", destination, uri, None)))
        with trio.move_on_after(timeout_s) as scope:
            target, conn, head = await self._start(destination, uri, headers, max_size)
        if scope.cancelled_caught:
            raise FederationUnreachable(f"GET {destination}{path}: timed out after {timeout_s} s")
        done = False
        try:
            if not 200 <= head.status < 300:
                with trio.move_on_after(timeout_s):
                    try:
                        head.body = b"".join([p async for p in conn.body(ERROR_BODY_MAX)])
                        done = True
                    except OUTBOUND_ERRORS:
                        pass
                _decode(head, destination, "GET", path)  # raises FederationError
            deadline = trio.current_time() + total_timeout_s

            async def pieces() -> AsyncGenerator[bytes, None]:
                nonlocal done
                try:
                    async for piece in conn.body(max_size, read_timeout_s=read_timeout_s, deadline=deadline):
                        yield piece
                except ResponseTooLarge as e:
                    raise ResponseTooLargeError(f"GET {destination}{path}: {e}") from None
                except OUTBOUND_ERRORS as e:
                    raise FederationUnreachable(f"GET {destination}{path}: {e or type(e).__name__}") from None
                done = True

            body = pieces()
            try:
                yield StreamedResponse(head.status, head.headers, body)
            finally:
                await body.aclose()
        finally:
            if done:
                await self._give_back(target, conn)
            else:
                await conn.aclose()

    async def _start(
        self,
        destination: str,
        uri: str,
        headers: list[tuple[str, str]],
        max_size: int,
        method: str = "GET",
        payload: bytes | None = None,
    ) -> tuple[Target, HttpConnection, HttpResponse]:
        """The first target of ``destination`` that answers with a response head."""
        errors: list[str] = []
        for target in await self._targets(destination):
            all_headers = [("Host", target.host_header), *headers]
            conn = await self._take(target)
            if conn is not None:
                try:
                    return target, conn, await self._start_on(
                        conn, destination, method, uri, all_headers, payload, max_size
                    )
                except OUTBOUND_ERRORS as e:
                    if conn.received_any:
                        errors.append(f"{target.host}:{target.port}: {e or type(e).__name__}")
                        continue
            try:
                addresses = await self.dns.addresses(target.host, target.port)
                conn = await connect(self.outbound, self.policy, addresses, target.port, target.tls_name)
                return target, conn, await self._start_on(
                    conn, destination, method, uri, all_headers, payload, max_size
                )
            except OUTBOUND_ERRORS as e:
                errors.append(f"{target.host}:{target.port}: {e or type(e).__name__}")
        self.resolver.forget(destination)
        raise FederationUnreachable(f"{method} {destination}: " + "; ".join(errors))

    @staticmethod
    async def _start_on(
        conn: HttpConnection,
        destination: str,
        method: str,
        uri: str,
        headers: list[tuple[str, str]],
        payload: bytes | None,
        max_size: int,
    ) -> HttpResponse:
        """A request's response head on ``conn``; the connection is closed if it fails."""
        try:
            return await conn.start(method, uri, headers, payload, max_size)
        except ResponseTooLarge as e:
            await conn.aclose()
            raise ResponseTooLargeError(f"{method} {destination}: {e}") from None
        except BaseException:
            await conn.aclose()
            raise

    async def _targets(self, destination: str) -> list[Target]:
        try:
            resolution = await self.resolver.resolve(destination)
        except InvalidIdentifier:
            raise FederationUnreachable(f"{destination!r} is not a server name") from None
        return list(resolution.targets)

    async def _send(
        self,
        destination: str,
        method: str,
        uri: str,
        headers: list[tuple[str, str]],
        payload: bytes | None,
        max_size: int,
    ) -> HttpResponse:
        errors: list[str] = []
        for target in await self._targets(destination):
            try:
                return await self._exchange(target, method, uri, headers, payload, max_size)
            except OUTBOUND_ERRORS as e:
                errors.append(f"{target.host}:{target.port}: {e or type(e).__name__}")
        self.resolver.forget(destination)
        raise FederationUnreachable(f"{method} {destination}: " + "; ".join(errors))

    async def _exchange(
        self,
        target: Target,
        method: str,
        uri: str,
        headers: list[tuple[str, str]],
        payload: bytes | None,
        max_size: int,
    ) -> HttpResponse:
        all_headers = [("Host", target.host_header), *headers]
        # An idle pooled connection may have been closed by the remote meanwhile: if it
        # fails before any answer arrived, the request goes again on a fresh one.
        conn = await self._take(target)
        if conn is not None:
            try:
                response = await conn.request(method, uri, all_headers, payload, max_size)
            except OUTBOUND_ERRORS:
                await conn.aclose()
                if conn.received_any:
                    raise
            except BaseException:  # cancelled (a timeout): the connection is mid-exchange
                await conn.aclose()
                raise
            else:
                await self._give_back(target, conn)
                return response
        addresses = await self.dns.addresses(target.host, target.port)
        conn = await connect(self.outbound, self.policy, addresses, target.port, target.tls_name)
        try:
            response = await conn.request(method, uri, all_headers, payload, max_size)
        except BaseException:
            await conn.aclose()
            raise
        await self._give_back(target, conn)
        return response

    async def _take(self, target: Target) -> HttpConnection | None:
        idle = self._pool.get(target)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if now - conn.idle_since < POOL_IDLE_S:
                return conn
            await conn.aclose()
        return None

    async def _give_back(self, target: Target, conn: HttpConnection) -> None:
        if not conn.reusable:
            await conn.aclose()
            return
        conn.idle_since = time.monotonic()
        idle = self._pool.setdefault(target, [])
        self._pool.move_to_end(target)
        idle.append(conn)
        while len(idle) > POOL_PER_TARGET:
            await idle.pop(0).aclose()
        while len(self._pool) > POOL_TARGETS:
            _, old = self._pool.popitem(last=False)
            for c in old:
                await c.aclose()

    async def fetch_well_known(self, url: str, hostname: str) -> tuple[int, dict[str, str], bytes]:
        """One HTTPS GET of a well-known URL (no redirect followed), for discovery."""
        from urllib.parse import urlsplit

        from pocketserver.federation.discovery import WELL_KNOWN_MAX_BYTES

        parts = urlsplit(url)
        host = parts.hostname or hostname
        port = parts.port or 443
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        addresses = await self.dns.addresses(host, port)
        conn = await connect(self.outbound, self.policy, addresses, port, host)
        try:
            host_header = host if port == 443 else f"{host}:{port}"
            if ":" in host and not host.startswith("["):
                host_header = f"[{host}]" if port == 443 else f"[{host}]:{port}"
            response = await conn.request(
                "GET", target, [("Host", host_header), ("Connection", "close")], None, WELL_KNOWN_MAX_BYTES
            )
        finally:
            await conn.aclose()
        return response.status, response.headers, response.body


def _with_query(path: str, query: Query | None) -> str:
    if not query:
        return path
    return path + "?" + urlencode(
        [(k, v) for k, vs in query.items() for v in ([vs] if isinstance(vs, str) else vs)]
    )


def _decode(response: HttpResponse, destination: str, method: str, path: str) -> Any:
    if 200 <= response.status < 300:
        try:
            return orjson.loads(response.body)
        except orjson.JSONDecodeError:
            raise FederationUnreachable(f"{method} {destination}{path}: the answer is not JSON") from None
    errcode, message, given, version = "M_UNKNOWN", "", False, None
    try:
        doc = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        doc = None
    if isinstance(doc, dict):
        if isinstance(doc.get("errcode"), str):
            errcode, given = doc["errcode"], True
        if isinstance(doc.get("error"), str):
            message = doc["error"][:500]
        if isinstance(doc.get("room_version"), str):
            version = doc["room_version"][:100]
    raise FederationError(response.status, errcode, message, errcode_given=given, room_version=version)
