"""The media repository's tables: media items, deduplicated chunked content, thumbnails,
URL previews.

Content is written chunk by chunk under a provisional ``media_content`` row whose
``sha256`` is NULL; :func:`finish_content` then names it by its hash in one transaction,
or, when identical bytes are already stored, drops the new chunks and shares the old
content (dedupe). Rows still NULL at start-up belong to uploads that were interrupted
and are swept by :func:`sweep_incomplete_content`.

Chunks are zstd frames only when that made them smaller. :func:`decode_chunk` refuses a
frame whose declared size is not the recorded raw size before allocating anything, so a
crafted blob cannot make the server allocate more than one chunk.

The codec keeps one zstd compression context and one decompression context for the
process (a context is a megabyte or more of workspace), each behind a lock: a context
must never be used by two threads at once (python-zstandard's instances are not
thread-safe), and uploads encode and readers decode on worker threads.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pocketserver.storage.database import Conn

# Raw bytes per chunk. Bounded memory per transfer: a few chunks at a time.
CHUNK_SIZE = 1024 * 1024
ZSTD_LEVEL = 3
_SAMPLE = 32 * 1024


class CorruptChunk(Exception):
    """A stored chunk does not decode to its recorded size."""


# -- chunk codec (pure) -------------------------------------------------------

_cctx: Any = None
_dctx: Any = None
# Around every use of _cctx and _probe, and of _dctx (see the module's docstring).
_ENCODE_LOCK = threading.Lock()
_DECODE_LOCK = threading.Lock()
_INSERT_CHUNK = (
    "INSERT INTO media_chunks (content_id, seq, compressed, raw_size, data) VALUES (?, ?, ?, ?, ?)"
)


def _compressor() -> Any:
    global _cctx
    if _cctx is None:
        import zstandard

        # The frame carries the content size, which decode_chunk checks before allocating.
        _cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True)
    return _cctx


_probe: Any = None


def _sample_incompressible(sample: bytes | memoryview) -> bool:
    """Whether a sample of a chunk shows it is already compressed (JPEG, MP4, zip).

    zstd's fastest level is enough to tell: text shrinks severalfold at any level."""
    global _probe
    if _probe is None:
        import zstandard

        _probe = zstandard.ZstdCompressor(level=1, write_content_size=False)
    with _ENCODE_LOCK:
        probed = len(_probe.compress(sample))
    return probed > len(sample) - len(sample) // 32


def encode_chunk(raw: bytes) -> tuple[bool, bytes]:
    """``(compressed, data)``: a zstd frame when it saves at least 1/64, else ``raw``.

    Already-compressed media (JPEG, MP4, zip) is then stored as is and costs nothing
    to read back; text, JSON, logs and PCM audio shrink several times.
    """
    if len(raw) >= 4 * _SAMPLE:
        # Most media does not compress at all: a sample from the middle says so for a
        # fraction of the cost of compressing the whole chunk.
        mid = len(raw) // 2
        if _sample_incompressible(memoryview(raw)[mid : mid + _SAMPLE]):
            return False, raw
    cctx = _compressor()
    with _ENCODE_LOCK:
        comp: bytes = cctx.compress(raw)
    if len(comp) < len(raw) - len(raw) // 64:
        return True, comp
    return False, raw


def _window(parts: list[bytes], start: int, length: int) -> bytes | memoryview:
    """``length`` bytes of the parts laid end to end, from ``start``; copied only where
    the window spans more than one part."""
    pieces: list[memoryview] = []
    pos = 0
    for part in parts:
        end = pos + len(part)
        if end > start and length > 0:
            piece = memoryview(part)[max(start - pos, 0) :][:length]
            pieces.append(piece)
            length -= len(piece)
        pos = end
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def encode_parts(parts: list[bytes]) -> tuple[bool, int, bytes | list[bytes]]:
    """:func:`encode_chunk` for a chunk given as consecutive parts (as a request body
    arrives): ``(compressed, raw_size, data)``. A chunk that stays raw keeps its parts,
    which :func:`insert_chunks` writes straight into the row's blob, so incompressible
    media is never joined into one buffer."""
    size = sum(map(len, parts))
    if len(parts) == 1:
        compressed, data = encode_chunk(parts[0])
        return compressed, size, data
    if size >= 4 * _SAMPLE and _sample_incompressible(_window(parts, size // 2, _SAMPLE)):
        return False, size, parts
    compressed, data = encode_chunk(b"".join(parts))
    return compressed, size, data


def decode_chunk(compressed: bool, raw_size: int, data: bytes) -> bytes:
    """The raw bytes of a chunk, never allocating more than ``raw_size``."""
    global _dctx
    if not compressed:
        if len(data) != raw_size:
            raise CorruptChunk("raw chunk has the wrong size")
        return data
    import zstandard

    if _dctx is None:
        _dctx = zstandard.ZstdDecompressor()
    try:
        params = zstandard.get_frame_parameters(data)
    except zstandard.ZstdError as e:
        raise CorruptChunk(f"not a zstd frame: {e}") from None
    # A frame without a declared size, or one declaring more than the chunk holds, is
    # refused before any allocation (zstd would otherwise trust the header).
    if params.content_size != raw_size or raw_size > CHUNK_SIZE:
        raise CorruptChunk("zstd frame size does not match the chunk")
    try:
        with _DECODE_LOCK:
            out: bytes = _dctx.decompress(data, max_output_size=raw_size)
    except zstandard.ZstdError as e:
        raise CorruptChunk(f"zstd: {e}") from None
    if len(out) != raw_size:
        raise CorruptChunk("chunk decoded to the wrong size")
    return out


def _row(conn: Conn, sql: str, args: tuple[Any, ...] = ()) -> tuple[Any, ...]:
    """The one row an aggregate query returns."""
    row = conn.execute(sql, args).fetchone()
    assert row is not None
    return tuple(row)


# -- content --------------------------------------------------------------------


def begin_content(conn: Conn, now_ms: int, chunk_size: int = CHUNK_SIZE) -> int:
    """A provisional content row for an upload in progress; its ``content_id``."""
    conn.execute(
        "INSERT INTO media_content (sha256, chunk_size, created_ts) VALUES (NULL, ?, ?)",
        (chunk_size, now_ms),
    )
    return int(conn.last_insert_rowid())


def insert_chunk(
    conn: Conn, content_id: int, seq: int, compressed: bool, raw_size: int, data: bytes
) -> None:
    conn.execute(_INSERT_CHUNK, (content_id, seq, int(compressed), raw_size, data))


def insert_chunks(
    conn: Conn,
    content_id: int | None,
    now_ms: int,
    first_seq: int,
    chunks: Iterable[tuple[bool, int, Any]],
) -> int:
    """Store encoded chunks ``(compressed, raw_size, data)`` from ``first_seq`` on, under a
    provisional content row (made first when ``content_id`` is None); the content ID.

    ``data`` is the stored bytes, or a list of raw parts (:func:`encode_parts`): the row
    is then made with a zero blob of the right size and the parts written into it in
    place, which spares SQLite two copies of every byte (binding and record building).
    """
    if content_id is None:
        content_id = begin_content(conn, now_ms)
    for seq, (compressed, raw_size, data) in enumerate(chunks, first_seq):
        if isinstance(data, list):
            conn.execute(
                "INSERT INTO media_chunks (content_id, seq, compressed, raw_size, data)"
                " VALUES (?, ?, 0, ?, zeroblob(?))",
                (content_id, seq, raw_size, raw_size),
            )
            with conn.blob_open("main", "media_chunks", "data", conn.last_insert_rowid(), True) as blob:
                for part in data:
                    blob.write(part)
        else:
            conn.execute(_INSERT_CHUNK, (content_id, seq, int(compressed), raw_size, data))
    return content_id


def _drop_content(conn: Conn, content_id: int) -> None:
    conn.execute("DELETE FROM media_chunks WHERE content_id = ?", (content_id,))
    conn.execute("DELETE FROM media_content WHERE content_id = ?", (content_id,))


def finish_content(conn: Conn, content_id: int, sha256: bytes, size: int) -> int:
    """Name the provisional content by its hash and take one reference; the content ID.

    When the same bytes are already stored, the new chunks are dropped and the existing
    content gains the reference instead (the ID returned is then the existing one).
    """
    row = conn.execute(
        "SELECT content_id FROM media_content WHERE sha256 = ?", (sha256,)
    ).fetchone()
    if row is not None and row[0] != content_id:
        _drop_content(conn, content_id)
        conn.execute(
            "UPDATE media_content SET refcount = refcount + 1 WHERE content_id = ?", (row[0],)
        )
        return int(row[0])
    (stored,) = _row(conn, "SELECT COALESCE(SUM(LENGTH(data)), 0) FROM media_chunks WHERE content_id = ?",
        (content_id,),)
    conn.execute(
        "UPDATE media_content SET sha256 = ?, size = ?, stored_size = ?, refcount = refcount + 1"
        " WHERE content_id = ?",
        (sha256, size, stored, content_id),
    )
    return content_id


def complete_content(
    conn: Conn,
    content_id: int | None,
    now_ms: int,
    first_seq: int,
    chunks: list[tuple[bool, int, Any]],
    sha256: bytes,
    size: int,
) -> int:
    """Store an upload's last encoded chunks and name its content (:func:`finish_content`);
    the content ID. With no provisional content yet (the whole body is in ``chunks``),
    bytes that are already stored are shared without writing them again."""
    if content_id is None:
        row = conn.execute(
            "SELECT content_id FROM media_content WHERE sha256 = ?", (sha256,)
        ).fetchone()
        if row is not None:
            conn.execute(
                "UPDATE media_content SET refcount = refcount + 1 WHERE content_id = ?",
                (row[0],),
            )
            return int(row[0])
    content_id = insert_chunks(conn, content_id, now_ms, first_seq, chunks)
    return finish_content(conn, content_id, sha256, size)


def abandon_content(conn: Conn, content_id: int) -> None:
    """Drop a provisional content row and its chunks (an upload that failed)."""
    row = conn.execute(
        "SELECT sha256 FROM media_content WHERE content_id = ?", (content_id,)
    ).fetchone()
    if row is not None and row[0] is None:
        _drop_content(conn, content_id)


def sweep_incomplete_content(conn: Conn) -> int:
    """Drop every provisional content row (call at start-up); how many were dropped."""
    ids = [r[0] for r in conn.execute("SELECT content_id FROM media_content WHERE sha256 IS NULL")]
    for cid in ids:
        _drop_content(conn, cid)
    return len(ids)


def release_content(conn: Conn, content_id: int) -> None:
    """Drop one reference; the content goes when nothing refers to it."""
    conn.execute(
        "UPDATE media_content SET refcount = refcount - 1 WHERE content_id = ?", (content_id,)
    )
    row = conn.execute(
        "SELECT refcount FROM media_content WHERE content_id = ?", (content_id,)
    ).fetchone()
    if row is not None and row[0] <= 0:
        _drop_content(conn, content_id)


@dataclass(frozen=True, slots=True)
class Chunk:
    seq: int
    data: bytes  # raw (decoded) bytes


def read_chunks(conn: Conn, content_id: int, from_seq: int, limit: int) -> list[Chunk]:
    """Up to ``limit`` decoded chunks from ``from_seq`` on, in order."""
    out = []
    for seq, compressed, raw_size, data in conn.execute(
        "SELECT seq, compressed, raw_size, data FROM media_chunks"
        " WHERE content_id = ? AND seq >= ? ORDER BY seq LIMIT ?",
        (content_id, from_seq, limit),
    ):
        out.append(Chunk(seq, decode_chunk(bool(compressed), raw_size, data)))
    return out


def read_content(conn: Conn, content_id: int, max_size: int) -> bytes | None:
    """The whole content if it is at most ``max_size`` bytes (thumbnailing), else None."""
    row = conn.execute(
        "SELECT size FROM media_content WHERE content_id = ?", (content_id,)
    ).fetchone()
    if row is None or row[0] > max_size:
        return None
    parts = [
        decode_chunk(bool(c), n, d)
        for c, n, d in conn.execute(
            "SELECT compressed, raw_size, data FROM media_chunks WHERE content_id = ? ORDER BY seq",
            (content_id,),
        )
    ]
    return b"".join(parts)


def store_small_content(conn: Conn, data: bytes, sha256: bytes, now_ms: int) -> int:
    """Store bytes that are already in memory (thumbnails, preview images) in one go."""
    cid = begin_content(conn, now_ms)
    for seq, off in enumerate(range(0, max(len(data), 1), CHUNK_SIZE)):
        raw = data[off : off + CHUNK_SIZE]
        if not raw and seq > 0:
            break
        compressed, blob = encode_chunk(raw)
        insert_chunk(conn, cid, seq, compressed, len(raw), blob)
    return finish_content(conn, cid, sha256, len(data))


# -- media items ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MediaInfo:
    server_name: str
    media_id: str
    user_id: str | None
    content_type: str | None
    filename: str | None
    size: int | None
    content_id: int | None
    created_ts: int
    unused_expires_ts: int | None
    quarantined: bool
    chunk_size: int | None


_MEDIA_COLS = (
    "m.server_name, m.media_id, m.user_id, m.content_type, m.filename, m.size, m.content_id,"
    " m.created_ts, m.unused_expires_ts, m.quarantined, c.chunk_size"
)


def _media(row: Any) -> MediaInfo:
    return MediaInfo(
        server_name=row[0],
        media_id=row[1],
        user_id=row[2],
        content_type=row[3],
        filename=row[4],
        size=row[5],
        content_id=row[6],
        created_ts=row[7],
        unused_expires_ts=row[8],
        quarantined=bool(row[9]),
        chunk_size=row[10],
    )


def get_media(conn: Conn, server_name: str, media_id: str) -> MediaInfo | None:
    row = conn.execute(
        f"SELECT {_MEDIA_COLS} FROM media m LEFT JOIN media_content c"
        " ON c.content_id = m.content_id WHERE m.server_name = ? AND m.media_id = ?",
        (server_name, media_id),
    ).fetchone()
    return _media(row) if row is not None else None


def insert_media(
    conn: Conn,
    server_name: str,
    media_id: str,
    user_id: str | None,
    content_type: str | None,
    filename: str | None,
    size: int | None,
    content_id: int | None,
    now_ms: int,
    unused_expires_ts: int | None = None,
) -> bool:
    """Insert a media row; False if that media ID exists."""
    conn.execute(
        "INSERT OR IGNORE INTO media (server_name, media_id, user_id, content_type, filename,"
        " size, content_id, created_ts, unused_expires_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            server_name,
            media_id,
            user_id,
            content_type,
            filename,
            size,
            content_id,
            now_ms,
            unused_expires_ts,
        ),
    )
    return conn.changes() > 0


def fill_pending_media(
    conn: Conn,
    server_name: str,
    media_id: str,
    content_type: str | None,
    filename: str | None,
    size: int,
    content_id: int,
) -> bool:
    """Attach content to a media ID made by /create; False if it already has content."""
    conn.execute(
        "UPDATE media SET content_type = ?, filename = ?, size = ?, content_id = ?,"
        " unused_expires_ts = NULL WHERE server_name = ? AND media_id = ? AND content_id IS NULL",
        (content_type, filename, size, content_id, server_name, media_id),
    )
    return conn.changes() > 0


def count_pending_uploads(conn: Conn, user_id: str, now_ms: int) -> int:
    (n,) = _row(conn, "SELECT COUNT(*) FROM media WHERE user_id = ? AND content_id IS NULL"
        " AND unused_expires_ts > ?",
        (user_id, now_ms),)
    return int(n)


def delete_expired_pending(conn: Conn, now_ms: int) -> int:
    conn.execute(
        "DELETE FROM media WHERE content_id IS NULL AND unused_expires_ts <= ?", (now_ms,)
    )
    return int(conn.changes())


def user_usage(conn: Conn, user_id: str) -> int:
    """Bytes a user has uploaded and not deleted (what the quota counts)."""
    (n,) = _row(conn, "SELECT COALESCE(SUM(size), 0) FROM media WHERE user_id = ? AND content_id IS NOT NULL",
        (user_id,),)
    return int(n)


def touch_media(conn: Conn, server_name: str, media_id: str, now_ms: int) -> None:
    conn.execute(
        "UPDATE media SET last_access_ts = ? WHERE server_name = ? AND media_id = ?",
        (now_ms, server_name, media_id),
    )


def delete_media(conn: Conn, server_name: str, media_id: str) -> bool:
    """Delete a media item, its thumbnails, and any content nothing else refers to."""
    row = conn.execute(
        "SELECT content_id FROM media WHERE server_name = ? AND media_id = ?",
        (server_name, media_id),
    ).fetchone()
    if row is None:
        return False
    thumbs = [
        r[0]
        for r in conn.execute(
            "SELECT content_id FROM media_thumbnails WHERE server_name = ? AND media_id = ?",
            (server_name, media_id),
        )
    ]
    conn.execute(
        "DELETE FROM media_thumbnails WHERE server_name = ? AND media_id = ?",
        (server_name, media_id),
    )
    for cid in thumbs:
        release_content(conn, cid)
    conn.execute(
        "DELETE FROM media WHERE server_name = ? AND media_id = ?", (server_name, media_id)
    )
    if row[0] is not None:
        release_content(conn, row[0])
    return True


def list_media(
    conn: Conn,
    *,
    user_id: str | None = None,
    before_ts: int | None = None,
    server_name: str | None = None,
) -> list[tuple[str, str]]:
    """(server_name, media_id) of media matching every filter given."""
    where, args = [], []  # type: tuple[list[str], list[Any]]
    if user_id is not None:
        where.append("user_id = ?")
        args.append(user_id)
    if before_ts is not None:
        where.append("created_ts < ?")
        args.append(before_ts)
    if server_name is not None:
        where.append("server_name = ?")
        args.append(server_name)
    sql = "SELECT server_name, media_id FROM media"
    if where:
        sql += " WHERE " + " AND ".join(where)
    return [(r[0], r[1]) for r in conn.execute(sql, args)]


def delete_unreferenced_content(conn: Conn) -> int:
    """Drop finished content no media or thumbnail refers to (repairs refcounts too)."""
    conn.execute(
        "UPDATE media_content SET refcount ="
        " (SELECT COUNT(*) FROM media m WHERE m.content_id = media_content.content_id)"
        " + (SELECT COUNT(*) FROM media_thumbnails t WHERE t.content_id = media_content.content_id)"
        " WHERE sha256 IS NOT NULL"
    )
    ids = [
        r[0]
        for r in conn.execute(
            "SELECT content_id FROM media_content WHERE sha256 IS NOT NULL AND refcount <= 0"
        )
    ]
    for cid in ids:
        _drop_content(conn, cid)
    return len(ids)


def storage_stats(conn: Conn) -> dict[str, int]:
    (items,) = _row(conn, "SELECT COUNT(*) FROM media")
    contents, size, stored = _row(conn, "SELECT COUNT(*), COALESCE(SUM(size), 0), COALESCE(SUM(stored_size), 0)"
        " FROM media_content WHERE sha256 IS NOT NULL"
    )
    (logical,) = _row(conn, "SELECT COALESCE(SUM(size), 0) FROM media WHERE content_id IS NOT NULL"
    )
    (thumbs,) = _row(conn, "SELECT COUNT(*) FROM media_thumbnails")
    return {
        "media": int(items),
        "contents": int(contents),
        "thumbnails": int(thumbs),
        "uploaded_bytes": int(logical),
        "content_bytes": int(size),
        "stored_bytes": int(stored),
    }


# -- thumbnails -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ThumbnailInfo:
    width: int
    height: int
    method: str
    animated: bool
    content_type: str
    content_id: int


def get_thumbnail(
    conn: Conn, server_name: str, media_id: str, width: int, height: int, method: str, animated: bool
) -> ThumbnailInfo | None:
    row = conn.execute(
        "SELECT width, height, method, animated, content_type, content_id FROM media_thumbnails"
        " WHERE server_name = ? AND media_id = ? AND width = ? AND height = ? AND method = ?"
        " AND animated = ?",
        (server_name, media_id, width, height, method, int(animated)),
    ).fetchone()
    if row is None:
        return None
    return ThumbnailInfo(row[0], row[1], row[2], bool(row[3]), row[4], row[5])


def insert_thumbnail(
    conn: Conn,
    server_name: str,
    media_id: str,
    width: int,
    height: int,
    method: str,
    animated: bool,
    content_type: str,
    data: bytes,
    sha256: bytes,
    now_ms: int,
) -> ThumbnailInfo | None:
    """Store a generated thumbnail (the first one wins a race); None if the media went."""
    if conn.execute(
        "SELECT 1 FROM media WHERE server_name = ? AND media_id = ?", (server_name, media_id)
    ).fetchone() is None:
        return None
    existing = get_thumbnail(conn, server_name, media_id, width, height, method, animated)
    if existing is not None:
        return existing
    cid = store_small_content(conn, data, sha256, now_ms)
    conn.execute(
        "INSERT INTO media_thumbnails (server_name, media_id, width, height, method, animated,"
        " content_type, content_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (server_name, media_id, width, height, method, int(animated), content_type, cid),
    )
    return ThumbnailInfo(width, height, method, animated, content_type, cid)


def content_size(conn: Conn, content_id: int) -> int | None:
    row = conn.execute(
        "SELECT size FROM media_content WHERE content_id = ?", (content_id,)
    ).fetchone()
    return int(row[0]) if row is not None else None


# -- URL previews -----------------------------------------------------------------


def get_url_preview(conn: Conn, url: str, now_ms: int) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT og_json FROM url_previews WHERE url = ? AND expires_ts > ?", (url, now_ms)
    ).fetchone()
    if row is None:
        return None
    value = json.loads(row[0])
    return value if isinstance(value, dict) else None


def upsert_url_preview(
    conn: Conn, url: str, og: dict[str, Any], now_ms: int, expires_ts: int
) -> None:
    conn.execute(
        "INSERT INTO url_previews (url, fetched_ts, og_json, expires_ts) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (url) DO UPDATE SET fetched_ts = excluded.fetched_ts,"
        " og_json = excluded.og_json, expires_ts = excluded.expires_ts",
        (url, now_ms, json.dumps(og, ensure_ascii=False), expires_ts),
    )


def delete_expired_url_previews(conn: Conn, now_ms: int) -> int:
    conn.execute("DELETE FROM url_previews WHERE expires_ts <= ?", (now_ms,))
    return int(conn.changes())


def count_rows(conn: Conn, tables: Iterable[str]) -> dict[str, int]:
    """Row counts of the media tables (tests and the CLI's stats)."""
    allowed = {"media", "media_content", "media_chunks", "media_thumbnails", "url_previews"}
    out = {}
    for t in tables:
        if t not in allowed:
            raise ValueError(t)
        (n,) = _row(conn, f"SELECT COUNT(*) FROM {t}")
        out[t] = int(n)
    return out
