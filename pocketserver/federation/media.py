"""Fetching media from other servers: the source the media service copies remote
``mxc://`` content from.

Spec: server-server-api.md, "Content Repository". For ``mxc://{server}/{mediaId}``:

1. ``GET /_matrix/federation/v1/media/download/{mediaId}`` on ``server``, signed;
   the answer is ``multipart/mixed`` (:mod:`pocketserver.federation.multipart`): a JSON
   metadata part, then the bytes with their ``Content-Type`` and
   ``Content-Disposition``;
2. when that endpoint is unknown there (``404`` or ``400 M_UNRECOGNIZED``, or ``405``,
   as Synapse also treats it), the deprecated ``GET
   /_matrix/media/v3/download/{server}/{mediaId}?allow_remote=false`` over the same
   connection settings (TLS, IP ranges), unsigned: a plain body.

The body is handed out as it arrives, at most ``max_size`` bytes. Errors become the
Matrix errors a client is given (as Synapse answers them): the remote's 404 -> 404
``M_NOT_FOUND``; any other failure -> 502 ``M_UNKNOWN``; too large -> 502
``M_TOO_LARGE``. A remote's error text is never passed on.

Thumbnails of remote media are made here from the copied original, as Synapse does by
default (it fetches the original and thumbnails it locally), so this module only
downloads originals. A ``Location`` part (media served from elsewhere) is not followed:
502.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import quote

from pocketserver.errors import MatrixError, NotFound
from pocketserver.federation.client import FederationClient, ResponseTooLargeError
from pocketserver.federation.interfaces import FederationError, FederationUnreachable
from pocketserver.federation.multipart import (
    MultipartError,
    MultipartReader,
    boundary_of,
    filename_from_disposition,
)
from pocketserver.services.media import RemoteFile

log = logging.getLogger("pocketserver.federation.media")

# Room for the multipart framing around the media bytes.
FRAMING_ALLOWANCE = 256 * 1024


def _remote_failed(server_name: str, why: object) -> MatrixError:
    log.info("media from %s: %s", server_name, why)
    return MatrixError(502, "M_UNKNOWN", f"Failed to fetch the media from {server_name}")


def _too_large(server_name: str, max_size: int) -> MatrixError:
    return MatrixError(
        502, "M_TOO_LARGE", f"The media on {server_name} is larger than this server's {max_size} byte limit"
    )


def _unrecognised(e: FederationError) -> bool:
    return e.status == 405 or (e.status in (400, 404) and e.errcode == "M_UNRECOGNIZED")


class RemoteMedia:
    """Downloads of other servers' media over federation."""

    def __init__(self, client: FederationClient, max_size: int) -> None:
        self.client = client
        self.max_size = max_size

    @asynccontextmanager
    async def download(
        self, server_name: str, media_id: str, timeout_ms: int = 20_000
    ) -> AsyncIterator[RemoteFile]:
        """The remote file, its body read as the caller consumes ``pieces``. Raises
        :class:`MatrixError` (also from ``pieces``)."""
        timeout_s = max(timeout_ms / 1000, 1.0) + 10.0
        mid = quote(media_id, safe="")
        try:
            async with self.client.stream(
                server_name,
                f"/_matrix/federation/v1/media/download/{mid}",
                {"timeout_ms": str(timeout_ms)},
                timeout_s=timeout_s,
                max_size=self.max_size + FRAMING_ALLOWANCE,
            ) as resp:
                boundary = boundary_of(resp.headers.get("content-type"))
                if boundary is None:
                    raise _remote_failed(server_name, "the answer is not multipart/mixed")
                reader = MultipartReader(resp.pieces, boundary)
                try:
                    part = await reader.open()
                except MultipartError as e:
                    raise _remote_failed(server_name, e) from None
                except ResponseTooLargeError:
                    raise _too_large(server_name, self.max_size) from None
                except FederationUnreachable as e:
                    raise _remote_failed(server_name, e) from None
                if "location" in part:
                    raise _remote_failed(server_name, "it answered a Location, which is not followed")
                yield RemoteFile(
                    part.get("content-type"),
                    filename_from_disposition(part.get("content-disposition")),
                    self._checked(server_name, reader.content()),
                )
                return
        except ResponseTooLargeError:
            raise _too_large(server_name, self.max_size) from None
        except FederationError as e:
            if not _unrecognised(e):
                if e.status == 404:
                    raise NotFound(f"The media is not on {server_name}") from None
                raise _remote_failed(server_name, e) from None
        except FederationUnreachable as e:
            raise _remote_failed(server_name, e) from None
        async with self._legacy(server_name, media_id, timeout_ms, timeout_s) as remote_file:
            yield remote_file

    @asynccontextmanager
    async def _legacy(
        self, server_name: str, media_id: str, timeout_ms: int, timeout_s: float
    ) -> AsyncIterator[RemoteFile]:
        path = f"/_matrix/media/v3/download/{quote(server_name, safe='')}/{quote(media_id, safe='')}"
        query = {"allow_remote": "false", "timeout_ms": str(timeout_ms)}
        try:
            async with self.client.stream(
                server_name, path, query, signed=False, timeout_s=timeout_s, max_size=self.max_size
            ) as resp:
                yield RemoteFile(
                    resp.headers.get("content-type"),
                    filename_from_disposition(resp.headers.get("content-disposition")),
                    self._checked(server_name, resp.pieces),
                )
        except ResponseTooLargeError:
            raise _too_large(server_name, self.max_size) from None
        except FederationError as e:
            if e.status == 404:
                raise NotFound(f"The media is not on {server_name}") from None
            raise _remote_failed(server_name, e) from None
        except FederationUnreachable as e:
            raise _remote_failed(server_name, e) from None

    async def _checked(self, server_name: str, pieces: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """``pieces`` with failures while reading them turned into Matrix errors."""
        try:
            async for piece in pieces:
                yield piece
        except (MultipartError, FederationUnreachable) as e:
            if isinstance(e, ResponseTooLargeError):
                raise _too_large(server_name, self.max_size) from None
            raise _remote_failed(server_name, e) from None
