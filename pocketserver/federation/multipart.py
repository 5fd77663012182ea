"""The ``multipart/mixed`` answers of the federation media endpoints, both ways.

Spec: server-server-api.md, "Content Repository"; data/api/server-server/
content_repository.yaml. An answer has exactly two parts (RFC 2046 section 5.1): the
first ``application/json`` metadata (an empty object today), the second either the
media's bytes with their ``Content-Type`` and ``Content-Disposition``, or a
``Location`` header to fetch them from.

:func:`media_parts` writes one around a stream of bytes; :class:`MultipartReader` reads
one from a stream of pieces, handing out the media's bytes as they arrive: it never
holds more than one piece and a delimiter's length of the body, whatever the file's
size. Neither does any I/O of its own: they wrap async iterators.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from urllib.parse import quote, unquote

# Bounds on what is buffered before the media bytes: the preamble, the headers of a
# part, the JSON metadata part.
MAX_PREAMBLE = 16 * 1024
MAX_HEADERS = 16 * 1024
MAX_METADATA = 64 * 1024


class MultipartError(Exception):
    """The answer is not a well-formed two-part ``multipart/mixed`` body."""


def new_boundary() -> str:
    return secrets.token_hex(16)


def content_disposition(disposition: str, filename: str | None) -> str:
    """A ``Content-Disposition`` value, with the file name quoted or RFC 5987-encoded."""
    if not filename:
        return disposition
    if all(32 <= ord(c) < 127 for c in filename) and '"' not in filename and "\\" not in filename:
        return f'{disposition}; filename="{filename}"'
    return f"{disposition}; filename*=utf-8''{quote(filename, safe='')}"


def filename_from_disposition(value: str | None) -> str | None:
    """The file name a ``Content-Disposition`` value gives (``filename*`` preferred)."""
    if not value:
        return None
    plain: str | None = None
    for param in value.split(";")[1:]:
        name, sep, raw = param.strip().partition("=")
        if not sep:
            continue
        name = name.strip().lower()
        raw = raw.strip()
        if name == "filename*":
            charset, _, rest = raw.partition("'")
            _, _, encoded = rest.partition("'")
            try:
                decoded = unquote(encoded, encoding=charset or "utf-8", errors="strict")
            except (LookupError, UnicodeDecodeError):
                continue
            return decoded or None
        if name == "filename":
            if len(raw) >= 2 and raw[0] == raw[-1] == '"':
                raw = raw[1:-1].replace('\\"', '"').replace("\\\\", "\\")
            plain = raw or None
    return plain


def boundary_of(content_type: str | None) -> str | None:
    """The ``boundary`` of a ``multipart/mixed`` Content-Type, or None."""
    if not content_type:
        return None
    kind, *params = content_type.split(";")
    if kind.strip().lower() != "multipart/mixed":
        return None
    for param in params:
        name, sep, value = param.strip().partition("=")
        if sep and name.strip().lower() == "boundary":
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            if 1 <= len(value) <= 70:
                return value
    return None


def media_head(boundary: str, content_type: str, disposition: str) -> bytes:
    """Everything an answer sends before the media's bytes."""
    return (
        f"--{boundary}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n"
        f"--{boundary}\r\nContent-Type: {content_type}\r\nContent-Disposition: {disposition}\r\n\r\n"
    ).encode()


def media_tail(boundary: str) -> bytes:
    return f"\r\n--{boundary}--\r\n".encode("ascii")


async def media_parts(
    boundary: str, content_type: str, disposition: str, body: AsyncIterator[bytes]
) -> AsyncIterator[bytes]:
    """The whole answer: metadata part, then the media part around ``body``."""
    yield media_head(boundary, content_type, disposition)
    async for piece in body:
        yield piece
    yield media_tail(boundary)


class MultipartReader:
    """Reads a two-part media answer from ``pieces``.

    ``await reader.open()`` reads up to the start of the second part and answers its
    headers (lower-cased names); then ``reader.content()`` yields that part's bytes.
    """

    def __init__(self, pieces: AsyncIterator[bytes], boundary: str) -> None:
        self._pieces = pieces
        self._delim = b"\r\n--" + boundary.encode("ascii")
        # The CRLF before the first delimiter may be missing (no preamble): add one.
        self._buf = bytearray(b"\r\n")
        self._eof = False
        self.metadata: bytes = b""

    async def _fill(self) -> None:
        if self._eof:
            raise MultipartError("the answer ended inside the multipart body")
        try:
            piece = await self._pieces.__anext__()
        except StopAsyncIteration:
            self._eof = True
            return
        self._buf += piece

    async def _until(self, marker: bytes, limit: int, what: str) -> bytes:
        """The bytes before ``marker`` (consumed with it), at most ``limit`` of them."""
        start = 0
        while True:
            i = self._buf.find(marker, start)
            if i >= 0:
                out = bytes(self._buf[:i])
                del self._buf[: i + len(marker)]
                return out
            if len(self._buf) > limit + len(marker):
                raise MultipartError(f"the {what} is too long")
            start = max(len(self._buf) - len(marker) + 1, 0)
            await self._fill()

    async def _part_headers(self) -> dict[str, str]:
        # After a delimiter: "--" ends the body; else optional padding, then CRLF.
        line = await self._until(b"\r\n", MAX_HEADERS, "delimiter line")
        if line.startswith(b"--"):
            raise MultipartError("the answer has fewer than two parts")
        if line.strip(b" \t"):
            raise MultipartError("junk after a delimiter")
        while len(self._buf) < 2:
            await self._fill()
        if self._buf.startswith(b"\r\n"):  # a part without headers
            del self._buf[:2]
            return {}
        raw = await self._until(b"\r\n\r\n", MAX_HEADERS, "part's header block")
        headers: dict[str, str] = {}
        for header in raw.split(b"\r\n"):
            name, sep, value = header.partition(b":")
            if not sep or not name.strip():
                raise MultipartError("a malformed part header")
            headers[name.strip().decode("latin-1").lower()] = value.strip().decode("latin-1")
        return headers

    async def open(self) -> dict[str, str]:
        await self._until(self._delim, MAX_PREAMBLE, "preamble")
        first = await self._part_headers()
        ctype = first.get("content-type", "").split(";", 1)[0].strip().lower()
        if ctype != "application/json":
            raise MultipartError("the first part is not application/json")
        self.metadata = await self._until(self._delim, MAX_METADATA, "metadata part")
        return await self._part_headers()

    async def _epilogue(self) -> None:
        """Read what follows the last part's body to the end of the answer (the close
        delimiter's ``--`` and any epilogue, bounded), so the connection can be reused."""
        while not self._eof:
            if len(self._buf) > MAX_PREAMBLE:
                raise MultipartError("the epilogue is too long")
            await self._fill()

    async def content(self) -> AsyncIterator[bytes]:
        """The second part's bytes, as they arrive (after :meth:`open`)."""
        keep = len(self._delim) - 1
        while True:
            i = self._buf.find(self._delim)
            if i >= 0:
                if i:
                    yield bytes(self._buf[:i])
                del self._buf[: i + len(self._delim)]
                await self._epilogue()
                return
            if len(self._buf) > keep:
                n = len(self._buf) - keep
                out = bytes(self._buf[:n])
                del self._buf[:n]
                yield out
            await self._fill()
