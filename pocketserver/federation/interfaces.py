"""What the federation services need from the transport, as protocols.

The services that take part in rooms across servers (the PDU intake, the transaction
handler, joins, the outbound queue) talk to other servers only through these, so they
are tested with fakes and never depend on how requests are signed or routed.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any, BinaryIO, Protocol

Query = Mapping[str, str | Sequence[str]]


class FederationError(Exception):
    """The remote server answered with an error status."""

    def __init__(
        self,
        status: int,
        errcode: str,
        message: str = "",
        *,
        errcode_given: bool = True,
        room_version: str | None = None,
    ) -> None:
        super().__init__(f"{status} {errcode}: {message}")
        self.status = status
        self.errcode = errcode
        self.message = message
        # False when the answer carried no errcode (``errcode`` is then M_UNKNOWN)
        self.errcode_given = errcode_given
        # M_INCOMPATIBLE_ROOM_VERSION's ``room_version``: the version the room has.
        self.room_version = room_version

    @property
    def unknown_endpoint(self) -> bool:
        """The server does not serve that endpoint at all: M_UNRECOGNIZED, or a bare 404
        or 405 without an errcode (an older server)."""
        if self.errcode == "M_UNRECOGNIZED":
            return self.status in (400, 404, 405)
        return self.status in (404, 405) and not self.errcode_given


class FederationUnreachable(Exception):
    """No usable answer: discovery failed, the connection was refused or timed out, TLS
    failed, or the answer was too large or not JSON."""


class FederationRequester(Protocol):
    """Signed requests to other servers. ``path`` is the full, already percent-encoded
    path (``/_matrix/federation/v1/state_ids/%21room%3Ax``); the answer is decoded JSON.
    Raises :class:`FederationError` for an error status and
    :class:`FederationUnreachable` for anything else that went wrong."""

    async def get_json(
        self, destination: str, path: str, query: Query | None = None, *, timeout_s: float = 60.0
    ) -> Any: ...

    async def put_json(
        self,
        destination: str,
        path: str,
        body: Any,
        query: Query | None = None,
        *,
        timeout_s: float = 60.0,
    ) -> Any: ...

    async def post_json(
        self,
        destination: str,
        path: str,
        body: Any,
        query: Query | None = None,
        *,
        timeout_s: float = 60.0,
    ) -> Any: ...

    async def put_json_to_file(
        self,
        destination: str,
        path: str,
        body: Any,
        sink: BinaryIO,
        *,
        timeout_s: float = 60.0,
        max_size: int = ...,
    ) -> int:
        """A PUT whose answer may be too big to hold decoded (a big room's send_join):
        the raw JSON of a 2xx answer written to ``sink`` as it arrives (at most
        ``max_size`` bytes); how many bytes were written."""
        ...


class KeyLookup(Protocol):
    """Other servers' signing keys."""

    async def verify_keys(
        self, server_name: str, key_ids: Collection[str], *, minimum_valid_until_ts: int
    ) -> dict[str, bytes]:
        """The raw 32-byte ed25519 verify keys of ``server_name`` among ``key_ids`` that
        were valid at ``minimum_valid_until_ts`` (ms since the epoch), fetched and cached
        as needed. Keys it cannot get are missing from the answer."""
        ...
