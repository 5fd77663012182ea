"""The content repository: uploads, downloads, thumbnails, quotas, housekeeping.

Spec: client-server-api/modules/content_repo.md and the content-repo /
authed-content-repo OpenAPI files.

Memory is bounded whatever the file size: an upload is read from the request stream,
cut into :data:`~pocketserver.storage.media.CHUNK_SIZE` chunks, and written in batches
of :data:`BATCH_CHUNKS` (encoded in a worker thread, then one transaction per batch)
while the next batch is received, each piece hashed as it arrives; the last chunks are written by
the transaction that completes the upload, so a small upload is one write. A download
reads a couple of chunks per ``db.read``. An upload becomes visible only in the
transaction that names its content by SHA-256 (deduplicating it) and inserts the media
row, so a client that disconnects, or a server that is killed, leaves no partial media:
the provisional chunks are dropped at once, or swept at the next start-up.

This service never knows about HTTP: the API layer hands it an async iterator of body
pieces and turns the byte iterators it returns into responses.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from pocketserver.config import Config
from pocketserver.errors import Forbidden, LimitExceeded, MatrixError, NotFound, TooLarge
from pocketserver.protocol.identifiers import is_valid_server_name
from pocketserver.services.clock import Clock
from pocketserver.services.outbound import Outbound
from pocketserver.storage import media as store
from pocketserver.storage.database import Database

log = logging.getLogger("pocketserver.media")

MEDIA_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
MEDIA_ID_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_CONTENT_TYPE_RE = re.compile(r"^[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+(\s*;[ -~]*)?$")

UNUSED_EXPIRY_MS = 24 * 3600 * 1000
MAX_PENDING_UPLOADS = 16
MAX_TIMEOUT_MS = 60_000
DEFAULT_TIMEOUT_MS = 20_000
# Chunks per read transaction when streaming a download.
READ_BATCH = 2
# Chunks per write transaction while an upload streams in: fewer transactions and thread
# hops per byte, with at most about twice this many chunks of an upload in memory.
BATCH_CHUNKS = 2

# Content-Disposition: inline only for these (spec "Serving inline content").
INLINE_TYPES = frozenset(
    """text/css text/plain text/csv application/json application/ld+json image/jpeg
    image/gif image/png image/apng image/webp image/avif video/mp4 video/webm video/ogg
    video/quicktime audio/mp4 audio/webm audio/aac audio/mpeg audio/ogg audio/wave
    audio/wav audio/x-wav audio/x-pn-wav audio/flac audio/x-flac""".split()
)


def new_media_id() -> str:
    return "".join(secrets.choice(MEDIA_ID_ALPHABET) for _ in range(24))


def normalise_content_type(value: str | None) -> str:
    """The upload's Content-Type, or application/octet-stream if absent or malformed."""
    if not value:
        return "application/octet-stream"
    value = value.strip()
    if len(value) > 255 or not _CONTENT_TYPE_RE.match(value):
        return "application/octet-stream"
    return value


def is_inline_type(content_type: str | None) -> bool:
    return (content_type or "").split(";", 1)[0].strip().lower() in INLINE_TYPES


@dataclass
class RemoteFile:
    """A file on another server, its body read as ``pieces`` is consumed."""

    content_type: str | None
    filename: str | None
    pieces: AsyncIterator[bytes]


class RemoteMediaSource(Protocol):
    """Where other servers' media is copied from (federation/media.py over HTTP; a
    fake in tests). Raises :class:`MatrixError` for what the client is to be told,
    also while ``pieces`` is read."""

    def download(
        self, server_name: str, media_id: str, timeout_ms: int
    ) -> AbstractAsyncContextManager[RemoteFile]: ...


@dataclass(slots=True)
class _Flight:
    """One fetch of a remote file in progress, that other requests for it wait for."""

    done: trio.Event = field(default_factory=trio.Event)
    error: MatrixError | None = None


@dataclass(frozen=True, slots=True)
class Download:
    """What the API layer needs to answer a download or thumbnail request."""

    content_type: str
    filename: str | None
    size: int
    content_id: int
    chunk_size: int


class MediaService:
    def __init__(
        self,
        config: Config,
        db: Database,
        clock: Clock,
        *,
        outbound: Outbound | None = None,
        remote: RemoteMediaSource | None = None,
    ) -> None:
        self.config = config
        self.outbound = outbound or Outbound(config.federation)
        self.cfg = config.media
        self.db = db
        self.clock = clock
        self.server_name = config.server_name
        self._uploaded: dict[tuple[str, str], trio.Event] = {}
        # Where other servers' media comes from (None: federation is off).
        self.remote = remote
        self._fetching: dict[tuple[str, str], _Flight] = {}
        # One thumbnail decode at a time: image decoding is the memory peak.
        self._thumb_lock = trio.Lock()
        self._url_previews: Any = None

    @property
    def url_previews(self) -> Any:
        """The URL preview service, built on first use (it is rarely needed)."""
        if self._url_previews is None:
            from pocketserver.services.url_preview import UrlPreviewService

            self._url_previews = UrlPreviewService(
                self.config, self.db, self.clock, self, self.outbound
            )
        return self._url_previews

    # -- background --------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sweep interrupted uploads at start-up, then expire unused media IDs hourly."""
        swept = await self.db.write(store.sweep_incomplete_content)
        if swept:
            log.info("dropped %d interrupted upload(s)", swept)
        while True:
            now = self.clock.time_ms()
            await self.db.write(store.delete_expired_pending, now)
            await self.db.write(store.delete_expired_url_previews, now)
            task_status.started()
            task_status = trio.TASK_STATUS_IGNORED
            await trio.sleep(3600)

    # -- upload --------------------------------------------------------------------

    async def _check_quota(self, user_id: str, incoming: int) -> None:
        quota = self.cfg.per_user_quota
        if quota <= 0:
            return
        used = await self.db.read(store.user_usage, user_id)
        if used + incoming > quota:
            raise Forbidden("Media quota exceeded: delete some uploads first")

    def check_declared_length(self, length: int | None) -> None:
        """Refuse before reading a body whose Content-Length is over the limit."""
        if length is not None and length > self.cfg.max_upload_size:
            raise TooLarge(f"File is larger than the {self.cfg.max_upload_size} byte limit")

    async def _ingest(self, body: AsyncIterator[bytes]) -> _Ingested:
        """Read a body into chunks, storing all but the last few as provisional content.

        Each piece is hashed as it arrives (SHA-256 lets other threads run meanwhile),
        so no hashing is left once the body ends. Full batches of :data:`BATCH_CHUNKS`
        chunks go to a writer task (encoded in a worker thread, then one transaction
        each) while the next batch is received; what is left at the end is encoded and
        written by the completing transaction (:meth:`_complete`), so a small upload
        costs one write and one thread hop.
        Provisional content is dropped if anything goes wrong, including cancellation
        (a client that went away).
        """
        limit = self.cfg.max_upload_size
        up = _Ingested()
        error: MatrixError | None = None
        try:
            send, recv = trio.open_memory_channel[list[list[bytes]]](0)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_batches, up, recv)
                async with send:
                    chunker = _Chunker(store.CHUNK_SIZE)
                    batch: list[list[bytes]] = []
                    try:
                        async for piece in body:
                            up.size += len(piece)
                            if up.size > limit:
                                raise TooLarge(f"File is larger than the {limit} byte limit")
                            up.hasher.update(piece)
                            for chunk in chunker.feed(piece):
                                batch.append(chunk)
                                if len(batch) >= BATCH_CHUNKS:
                                    await send.send(batch)
                                    batch = []
                        last = chunker.finish()
                        if last is not None:
                            batch.append(last)
                    except MatrixError as e:
                        error = e
                        nursery.cancel_scope.cancel()
            if error is not None:
                raise error
            up.tail_raw = batch
            del batch
        except BaseException:
            await self._abandon(up)
            raise
        finally:
            aclose = getattr(body, "aclose", None)
            if aclose is not None:
                with trio.CancelScope(shield=True):
                    await aclose()
        return up

    async def _write_batches(
        self,
        up: _Ingested,
        recv: trio.MemoryReceiveChannel[list[list[bytes]]],
    ) -> None:
        async with recv:
            async for batch in recv:
                encoded = await trio.to_thread.run_sync(_encode, batch)
                del batch
                up.content_id = await self.db.write(
                    store.insert_chunks, up.content_id, self.clock.time_ms(), up.tail_seq, encoded
                )
                up.tail_seq += len(encoded)

    async def _abandon(self, up: _Ingested) -> None:
        """Drop the provisional chunks of an upload that failed."""
        if up.content_id is not None:
            with trio.CancelScope(shield=True):
                await self.db.write(store.abandon_content, up.content_id)

    async def upload(
        self,
        user_id: str,
        body: AsyncIterator[bytes],
        content_length: int | None,
        content_type: str | None,
        filename: str | None,
    ) -> str:
        """POST /upload: store the body and answer its new mxc:// URI."""
        self.check_declared_length(content_length)
        await self._check_quota(user_id, content_length or 0)
        ctype = normalise_content_type(content_type)
        media_id = new_media_id()
        with self.db.bulk():
            up = await self._ingest(body)
            await self._complete(up, self._complete_new, user_id, media_id, ctype, filename, up)
        return f"mxc://{self.server_name}/{media_id}"

    async def _complete(self, up: _Ingested, fn: Any, *args: Any) -> None:
        """Run the completing transaction; if it refuses, drop the provisional chunks."""
        with trio.CancelScope(shield=True):
            try:
                await self.db.write(fn, *args)
            except BaseException:
                await self._abandon(up)
                raise

    def _store_content(self, conn: Any, up: _Ingested) -> int:
        """In the completing transaction: the upload's last chunks encoded and stored,
        its content named by its hash; its content ID."""
        tail = _encode(up.tail_raw)
        up.tail_raw = []
        return store.complete_content(
            conn, up.content_id, self.clock.time_ms(), up.tail_seq, tail, up.hasher.digest(),
            up.size,
        )

    def _complete_new(
        self,
        conn: Any,
        user_id: str,
        media_id: str,
        ctype: str,
        filename: str | None,
        up: _Ingested,
    ) -> None:
        self._quota_in_txn(conn, user_id, up.size)
        cid = self._store_content(conn, up)
        store.insert_media(
            conn, self.server_name, media_id, user_id, ctype, filename, up.size, cid,
            self.clock.time_ms(),
        )

    def _quota_in_txn(self, conn: Any, user_id: str, size: int) -> None:
        quota = self.cfg.per_user_quota
        if quota > 0 and store.user_usage(conn, user_id) + size > quota:
            raise Forbidden("Media quota exceeded: delete some uploads first")

    async def create(self, user_id: str) -> tuple[str, int]:
        """POST /create: a media ID to upload to later; (mxc URI, unused_expires_at)."""
        now = self.clock.time_ms()
        expires = now + UNUSED_EXPIRY_MS
        media_id = new_media_id()

        def txn(conn: Any) -> None:
            store.delete_expired_pending(conn, now)
            if store.count_pending_uploads(conn, user_id, now) >= MAX_PENDING_UPLOADS:
                raise LimitExceeded(60_000, "Too many pending uploads: upload to them first")
            store.insert_media(
                conn, self.server_name, media_id, user_id, None, None, None, None, now, expires
            )

        await self.db.write(txn)
        return f"mxc://{self.server_name}/{media_id}", expires

    async def upload_to(
        self,
        user_id: str,
        server_name: str,
        media_id: str,
        body: AsyncIterator[bytes],
        content_length: int | None,
        content_type: str | None,
        filename: str | None,
    ) -> None:
        """PUT /upload/{serverName}/{mediaId}: fill a media ID made by /create."""
        info = await self._pending_for(user_id, server_name, media_id)
        self.check_declared_length(content_length)
        await self._check_quota(user_id, content_length or 0)
        ctype = normalise_content_type(content_type)

        def txn(conn: Any, up: _Ingested) -> None:
            # Checked again: another PUT may have won while this body streamed in.
            current = store.get_media(conn, server_name, media_id)
            if current is None or (current.unused_expires_ts or 0) <= self.clock.time_ms():
                raise NotFound("Unknown media ID, or it has expired")
            if current.content_id is not None:
                raise MatrixError(409, "M_CANNOT_OVERWRITE_MEDIA", "Media already uploaded")
            self._quota_in_txn(conn, user_id, up.size)
            cid = self._store_content(conn, up)
            store.fill_pending_media(conn, server_name, media_id, ctype, filename, up.size, cid)

        del info
        with self.db.bulk():
            up = await self._ingest(body)
            await self._complete(up, txn, up)
        event = self._uploaded.pop((server_name, media_id), None)
        if event is not None:
            event.set()

    async def _pending_for(self, user_id: str, server_name: str, media_id: str) -> store.MediaInfo:
        if server_name != self.server_name or not MEDIA_ID_RE.match(media_id):
            raise NotFound("Unknown media ID")
        info = await self.db.read(store.get_media, server_name, media_id)
        if info is None:
            raise NotFound("Unknown media ID")
        if info.content_id is not None:
            raise MatrixError(409, "M_CANNOT_OVERWRITE_MEDIA", "Media already uploaded")
        if info.user_id != user_id:
            raise Forbidden("This media ID was created by another user")
        if (info.unused_expires_ts or 0) <= self.clock.time_ms():
            raise NotFound("This media ID has expired")
        return info

    # -- download ------------------------------------------------------------------

    async def get_media(
        self,
        server_name: str,
        media_id: str,
        timeout_ms: int | None = None,
        *,
        allow_remote: bool = True,
    ) -> store.MediaInfo:
        """The media item, waiting up to ``timeout_ms`` for an async upload to land;
        another server's media is copied from it first unless ``allow_remote`` is false."""
        if not MEDIA_ID_RE.match(media_id):
            raise NotFound("Unknown media ID")
        if server_name != self.server_name:
            return await self._remote_media(server_name, media_id, timeout_ms, allow_remote)
        timeout = DEFAULT_TIMEOUT_MS if timeout_ms is None else timeout_ms
        deadline = trio.current_time() + min(max(timeout, 0), MAX_TIMEOUT_MS) / 1000
        for _ in range(3):
            info = await self.db.read(store.get_media, server_name, media_id)
            if info is None or info.quarantined:
                raise NotFound("Unknown media ID")
            if info.content_id is not None:
                return info
            if (info.unused_expires_ts or 0) <= self.clock.time_ms():
                raise NotFound("Unknown media ID")
            event = self._uploaded.setdefault((server_name, media_id), trio.Event())
            with trio.move_on_at(deadline):
                await event.wait()
            if trio.current_time() >= deadline:
                break
        info = await self.db.read(store.get_media, server_name, media_id)
        if info is not None and info.content_id is not None:
            return info
        raise MatrixError(504, "M_NOT_YET_UPLOADED", "Content has not yet been uploaded")

    async def download(
        self,
        server_name: str,
        media_id: str,
        timeout_ms: int | None = None,
        *,
        allow_remote: bool = True,
    ) -> Download:
        info = await self.get_media(server_name, media_id, timeout_ms, allow_remote=allow_remote)
        assert info.content_id is not None
        return Download(
            content_type=info.content_type or "application/octet-stream",
            filename=info.filename,
            size=info.size or 0,
            content_id=info.content_id,
            chunk_size=info.chunk_size or store.CHUNK_SIZE,
        )

    async def stream(self, dl: Download, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The bytes ``start`` to ``end`` (exclusive) of a download, a chunk at a time."""
        end = dl.size if end is None else min(end, dl.size)
        if start >= end:
            return
        seq = start // dl.chunk_size
        pos = seq * dl.chunk_size
        while pos < end:
            chunks = await self.db.read(store.read_chunks, dl.content_id, seq, READ_BATCH)
            if not chunks:
                raise store.CorruptChunk("content ended early")
            for chunk in chunks:
                if chunk.seq != seq:
                    raise store.CorruptChunk("a chunk is missing")
                data = chunk.data
                lo = max(start - pos, 0)
                hi = min(end - pos, len(data))
                if lo < hi:
                    yield data[lo:hi] if (lo, hi) != (0, len(data)) else data
                pos += len(data)
                seq += 1
                if pos >= end:
                    return

    # -- remote media ----------------------------------------------------------------

    async def _remote_media(
        self, server_name: str, media_id: str, timeout_ms: int | None, allow_remote: bool
    ) -> store.MediaInfo:
        """Another server's media: the stored copy, or a copy fetched now.

        Concurrent requests for the same media wait for one fetch (the first); if that
        one fails they get its error; if it was cancelled (its client went away), the
        next one fetches.
        """
        key = (server_name, media_id)
        for _ in range(4):
            info = await self.db.read(store.get_media, server_name, media_id)
            if info is not None and info.quarantined:
                raise NotFound("Unknown media ID")
            if info is not None and info.content_id is not None:
                return info
            if not allow_remote:
                raise NotFound("Remote media is not fetched for this request (allow_remote=false)")
            if self.remote is None or not is_valid_server_name(server_name):
                raise NotFound("Unknown media ID")
            flight = self._fetching.get(key)
            if flight is not None:
                await flight.done.wait()
                if flight.error is not None:
                    raise flight.error
                continue
            flight = self._fetching[key] = _Flight()
            try:
                # Read again: the read above may have begun before a fetch that just
                # ended committed its copy.
                info = await self.db.read(store.get_media, server_name, media_id)
                if info is not None and info.quarantined:
                    raise NotFound("Unknown media ID")
                if info is not None and info.content_id is not None:
                    return info
                return await self._fetch_remote(server_name, media_id, timeout_ms)
            except MatrixError as e:
                flight.error = e
                raise
            finally:
                del self._fetching[key]
                flight.done.set()
        raise MatrixError(502, "M_UNKNOWN", f"Failed to fetch the media from {server_name}")

    async def _fetch_remote(
        self, server_name: str, media_id: str, timeout_ms: int | None
    ) -> store.MediaInfo:
        assert self.remote is not None
        timeout = DEFAULT_TIMEOUT_MS if timeout_ms is None else min(max(timeout_ms, 0), MAX_TIMEOUT_MS)
        async with self.remote.download(server_name, media_id, timeout) as remote_file:
            ctype = normalise_content_type(remote_file.content_type)
            filename = remote_file.filename
            if filename is not None and (len(filename) > 1024 or any(ord(c) < 32 for c in filename)):
                filename = None

            result: list[store.MediaInfo] = []

            def txn(conn: Any, up: _Ingested) -> None:
                cid = self._store_content(conn, up)
                if not store.insert_media(
                    conn, server_name, media_id, None, ctype, filename, up.size, cid,
                    self.clock.time_ms(),
                ):
                    store.release_content(conn, cid)  # a copy landed meanwhile: keep that
                info = store.get_media(conn, server_name, media_id)
                assert info is not None
                result.append(info)

            with self.db.bulk():
                try:
                    up = await self._ingest(remote_file.pieces)
                except TooLarge:
                    raise MatrixError(
                        502, "M_TOO_LARGE",
                        f"The media on {server_name} is larger than this server's"
                        f" {self.cfg.max_upload_size} byte limit",
                    ) from None
                await self._complete(up, txn, up)
        log.info("copied mxc://%s/%s (%d bytes)", server_name, media_id, up.size)
        info = result[0]
        if info.quarantined or info.content_id is None:
            raise NotFound("Unknown media ID")
        return info

    # -- thumbnails ----------------------------------------------------------------

    async def thumbnail(
        self,
        server_name: str,
        media_id: str,
        width: int,
        height: int,
        method: str,
        animated: bool,
        timeout_ms: int | None = None,
        *,
        allow_remote: bool = True,
    ) -> Download:
        """A stored or freshly generated thumbnail, or the original if it is smaller.
        Thumbnails of another server's media are made here from the copied original."""
        from pocketserver.services import thumbnails as th

        info = await self.get_media(server_name, media_id, timeout_ms, allow_remote=allow_remote)
        assert info.content_id is not None
        if not th.can_thumbnail(info.content_type):
            raise MatrixError(400, "M_UNKNOWN", "Cannot generate thumbnails for the requested content")
        tw, tht, tm = th.choose_size(width, height, method)
        is_anim = animated and th.base_type(info.content_type) in ("image/gif", "image/webp", "image/png", "image/apng")
        existing = await self.db.read(
            store.get_thumbnail, server_name, media_id, tw, tht, tm, is_anim
        )
        if existing is None:
            existing = await self._generate(info, tw, tht, tm, is_anim)
        if existing is None:
            return await self.download(server_name, media_id, 0)
        size = await self.db.read(store.content_size, existing.content_id)
        return Download(
            content_type=existing.content_type,
            filename=None,
            size=size or 0,
            content_id=existing.content_id,
            chunk_size=store.CHUNK_SIZE,
        )

    async def _generate(
        self, info: store.MediaInfo, tw: int, tht: int, tm: str, animated: bool
    ) -> store.ThumbnailInfo | None:
        from pocketserver.services import thumbnails as th

        if (info.size or 0) > self.cfg.max_thumbnail_source_size:
            raise TooLarge("Content is too large to thumbnail")
        async with self._thumb_lock:
            again = await self.db.read(
                store.get_thumbnail, info.server_name, info.media_id, tw, tht, tm, animated
            )
            if again is not None:
                return again
            assert info.content_id is not None
            data = await self.db.read(
                store.read_content, info.content_id, self.cfg.max_thumbnail_source_size
            )
            if data is None:
                raise TooLarge("Content is too large to thumbnail")
            try:
                thumb = await trio.to_thread.run_sync(
                    th.make_thumbnail,
                    data,
                    info.content_type,
                    tw,
                    tht,
                    tm,
                    animated,
                    self.cfg.max_thumbnail_pixels,
                )
            except th.ImageTooLarge:
                raise TooLarge("Image is too large to thumbnail") from None
            except th.CannotThumbnail:
                raise MatrixError(
                    400, "M_UNKNOWN", "Cannot generate thumbnails for the requested content"
                ) from None
            finally:
                del data
            if thumb is None:
                return None
            sha = hashlib.sha256(thumb.data).digest()
            return await self.db.write(
                store.insert_thumbnail,
                info.server_name,
                info.media_id,
                tw,
                tht,
                tm,
                animated,
                thumb.content_type,
                thumb.data,
                sha,
                self.clock.time_ms(),
            )

    # -- housekeeping --------------------------------------------------------------

    async def delete(self, server_name: str, media_id: str) -> bool:
        return await self.db.write(store.delete_media, server_name, media_id)

    async def store_bytes(
        self, user_id: str | None, data: bytes, content_type: str, filename: str | None
    ) -> tuple[str, int]:
        """Store a small in-memory file (URL preview images); (mxc URI, size)."""
        media_id = new_media_id()
        sha = hashlib.sha256(data).digest()
        now = self.clock.time_ms()

        def txn(conn: Any) -> None:
            cid = store.store_small_content(conn, data, sha, now)
            store.insert_media(
                conn, self.server_name, media_id, user_id, content_type, filename, len(data),
                cid, now,
            )

        await self.db.write(txn)
        return f"mxc://{self.server_name}/{media_id}", len(data)


@dataclass(slots=True)
class _Ingested:
    """An upload as it is stored: provisional content (``content_id``, None until the first
    batch is written) holding chunks up to ``tail_seq``; the last chunks, ``tail_raw``,
    which the completing transaction stores; the body's ``hasher`` and size."""

    content_id: int | None = None
    tail_seq: int = 0
    tail_raw: list[list[bytes]] = field(default_factory=list)
    hasher: Any = field(default_factory=hashlib.sha256)
    size: int = 0


class _Chunker:
    """Groups body pieces into ``size``-byte chunks, each a list of parts.

    The parts are never joined on the event loop: a chunk that stays raw is written
    part by part into its blob (a compressible one is joined in a worker thread to be
    compressed). A piece that straddles a chunk boundary is split,
    and only then copied. A full chunk is only handed out once more data follows it, so the
    last chunk of the body (full or not) is always what :meth:`finish` returns.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._parts: list[bytes] = []
        self._len = 0

    def feed(self, piece: bytes) -> list[list[bytes]]:
        out: list[list[bytes]] = []
        if self._len + len(piece) <= self.size:
            if piece:
                self._parts.append(piece)
                self._len += len(piece)
            return out
        view = memoryview(piece)
        pos = 0
        while self._len + len(piece) - pos > self.size:
            need = self.size - self._len
            if need:
                self._parts.append(bytes(view[pos : pos + need]))
            out.append(self._parts)
            self._parts = []
            self._len = 0
            pos += need
        if pos < len(piece):
            self._parts.append(bytes(view[pos:]) if pos else piece)
            self._len = len(piece) - pos
        return out

    def finish(self) -> list[bytes] | None:
        if not self._len:
            return None
        last = self._parts
        self._parts = []
        self._len = 0
        return last


def _encode(chunks: list[list[bytes]]) -> list[tuple[bool, int, Any]]:
    """Each chunk (its parts) encoded for storage (:func:`~pocketserver.storage.media.encode_parts`)."""
    return [store.encode_parts(parts) for parts in chunks]


def delete_media_sync(
    db: Database,
    *,
    mxc: str | None = None,
    user_id: str | None = None,
    before_ts: int | None = None,
    server_name: str,
) -> int:
    """For the CLI: delete media by mxc URI, by uploader, or created before a time."""
    if mxc is not None:
        m = re.match(r"^mxc://([^/]+)/([A-Za-z0-9_-]+)$", mxc)
        if m is None:
            raise ValueError(f"not an mxc:// URI: {mxc}")
        return int(db.write_sync(store.delete_media, m.group(1), m.group(2)))
    targets = db.read_sync(
        lambda conn: store.list_media(conn, user_id=user_id, before_ts=before_ts)
    )
    n = 0
    # Bounded transactions: a few hundred items each.
    for i in range(0, len(targets), 200):
        batch = targets[i : i + 200]

        def txn(conn: Any, batch: list[tuple[str, str]] = batch) -> int:
            return sum(1 for s, m in batch if store.delete_media(conn, s, m))

        n += db.write_sync(txn)
    return n
