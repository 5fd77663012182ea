"""The media tables: chunked, deduplicated, bounded-decompression content."""

from __future__ import annotations

import hashlib
import os

import pytest
import zstandard

from pocketserver.storage import media as store
from pocketserver.storage.database import open_memory


def _store(conn, data: bytes, now: int = 1) -> int:
    cid = store.begin_content(conn, now)
    for seq, off in enumerate(range(0, len(data), store.CHUNK_SIZE)):
        raw = data[off : off + store.CHUNK_SIZE]
        compressed, blob = store.encode_chunk(raw)
        store.insert_chunk(conn, cid, seq, compressed, len(raw), blob)
    return store.finish_content(conn, cid, hashlib.sha256(data).digest(), len(data))


def _read_all(conn, cid: int) -> bytes:
    out = b""
    seq = 0
    for _ in range(1000):
        chunks = store.read_chunks(conn, cid, seq, 2)
        if not chunks:
            break
        out += b"".join(c.data for c in chunks)
        seq = chunks[-1].seq + 1
    return out


def test_text_is_compressed_and_random_bytes_are_stored_raw() -> None:
    text = b"2026-01-01 INFO request handled path=/sync status=200\n" * 50_000
    compressed, blob = store.encode_chunk(text[: store.CHUNK_SIZE])
    assert compressed and len(blob) < store.CHUNK_SIZE // 20
    noise = os.urandom(store.CHUNK_SIZE)
    compressed, blob = store.encode_chunk(noise)
    assert not compressed and blob == noise


def test_chunks_given_as_parts_keep_them_when_raw_and_round_trip() -> None:
    # As an upload arrives: parts of uneven sizes, the sample's middle inside one part
    # or across two.
    noise = os.urandom(store.CHUNK_SIZE)
    text = (b"2026-01-01 INFO request handled path=/sync status=200\n" * 20_000)[
        : store.CHUNK_SIZE
    ]
    cuts = [0, 100_000, 524_000, 530_000, store.CHUNK_SIZE]
    as_parts = lambda b: [b[a:z] for a, z in zip(cuts, cuts[1:], strict=False)]  # noqa: E731
    compressed, size, data = store.encode_parts(as_parts(noise))
    assert (compressed, size) == (False, store.CHUNK_SIZE) and isinstance(data, list)
    compressed, size, tdata = store.encode_parts(as_parts(text))
    assert compressed and size == len(text) and isinstance(tdata, bytes)

    conn = open_memory()
    cid = store.insert_chunks(conn, None, 1, 0, [(False, size, data), (True, size, tdata)])
    store.finish_content(conn, cid, hashlib.sha256(noise + text).digest(), 2 * size)
    assert _read_all(conn, cid) == noise + text
    assert store.storage_stats(conn)["stored_bytes"] < store.CHUNK_SIZE * 1.1


def test_round_trip_across_chunks() -> None:
    conn = open_memory()
    data = os.urandom(store.CHUNK_SIZE) + b"x" * (store.CHUNK_SIZE + 123)
    cid = _store(conn, data)
    assert _read_all(conn, cid) == data
    assert store.read_content(conn, cid, len(data)) == data
    assert store.read_content(conn, cid, len(data) - 1) is None


def test_same_bytes_are_stored_once() -> None:
    conn = open_memory()
    data = b"hello world " * 100_000
    a = _store(conn, data)
    b = _store(conn, data)
    assert a == b
    counts = store.count_rows(conn, ["media_content", "media_chunks"])
    assert counts["media_content"] == 1
    assert counts["media_chunks"] == 2  # 1.2 MB: two chunks, not four
    (refcount,) = conn.execute(
        "SELECT refcount FROM media_content WHERE content_id = ?", (a,)
    ).fetchone()
    assert refcount == 2


def test_interrupted_upload_is_swept_and_never_visible() -> None:
    conn = open_memory()
    cid = store.begin_content(conn, 1)
    store.insert_chunk(conn, cid, 0, False, 3, b"abc")
    assert store.sweep_incomplete_content(conn) == 1
    assert store.count_rows(conn, ["media_content", "media_chunks"]) == {
        "media_content": 0,
        "media_chunks": 0,
    }


def test_deleting_the_last_reference_frees_the_content() -> None:
    conn = open_memory()
    data = b"shared bytes" * 1000
    cid = _store(conn, data)
    cid2 = _store(conn, data)
    store.insert_media(conn, "hs", "A", "@u:hs", "text/plain", None, len(data), cid, 1)
    store.insert_media(conn, "hs", "B", "@v:hs", "text/plain", None, len(data), cid2, 2)
    assert store.delete_media(conn, "hs", "A")
    assert store.count_rows(conn, ["media_chunks"])["media_chunks"] == 1
    assert store.delete_media(conn, "hs", "B")
    assert store.count_rows(conn, ["media_content", "media_chunks"]) == {
        "media_content": 0,
        "media_chunks": 0,
    }
    assert not store.delete_media(conn, "hs", "B")


def test_list_and_usage() -> None:
    conn = open_memory()
    cid = _store(conn, b"abc")
    store.insert_media(conn, "hs", "A", "@u:hs", None, None, 3, cid, 100)
    store.insert_media(conn, "hs", "B", "@v:hs", None, None, 3, _store(conn, b"abc"), 200)
    assert store.list_media(conn, user_id="@u:hs") == [("hs", "A")]
    assert store.list_media(conn, before_ts=150) == [("hs", "A")]
    assert store.user_usage(conn, "@v:hs") == 3


def test_a_crafted_zstd_bomb_is_refused_without_allocating() -> None:
    bomb = zstandard.ZstdCompressor(level=19).compress(b"\0" * (256 * 1024 * 1024))
    assert len(bomb) < 100_000
    # Recorded as a 1 KiB chunk, the frame declares 256 MiB: refused from the header.
    with pytest.raises(store.CorruptChunk):
        store.decode_chunk(True, 1024, bomb)
    # A frame that hides its size is refused too.
    hidden = zstandard.ZstdCompressor(write_content_size=False).compress(b"a" * 1000)
    with pytest.raises(store.CorruptChunk):
        store.decode_chunk(True, 1000, hidden)
    with pytest.raises(store.CorruptChunk):
        store.decode_chunk(True, 10, b"not zstd at all")


def test_thumbnails_share_the_content_store_and_go_with_their_media() -> None:
    conn = open_memory()
    cid = _store(conn, b"image bytes")
    store.insert_media(conn, "hs", "A", "@u:hs", "image/png", None, 11, cid, 1)
    t = store.insert_thumbnail(
        conn, "hs", "A", 32, 32, "crop", False, "image/png", b"thumb",
        hashlib.sha256(b"thumb").digest(), 2,
    )
    assert t is not None
    assert store.get_thumbnail(conn, "hs", "A", 32, 32, "crop", False) == t
    store.delete_media(conn, "hs", "A")
    assert store.count_rows(conn, ["media_content", "media_thumbnails"]) == {
        "media_content": 0,
        "media_thumbnails": 0,
    }


def test_a_window_over_parts_is_the_joined_slice() -> None:
    import random

    rng = random.Random(3)
    for _ in range(200):
        parts = [rng.randbytes(rng.randint(0, 50)) for _ in range(rng.randint(1, 6))]
        joined = b"".join(parts)
        start, length = rng.randint(0, len(joined)), rng.randint(1, 60)
        assert bytes(store._window(parts, start, length)) == joined[start : start + length]


def test_the_codec_is_safe_from_many_threads_at_once() -> None:
    """Uploads encode and readers decode on worker threads, all through the process's
    one zstd context each: chunks encoded and decoded from eight threads at once come
    back as they went in."""
    import threading

    from pocketserver.storage.media import decode_chunk, encode_chunk, encode_parts

    failures: list[str] = []
    start = threading.Barrier(8)

    def work(n: int) -> None:
        start.wait(10)
        for i in range(6):
            raw = (f"thread {n} round {i} " * 40000).encode()[: 300_000 + n * 1000 + i]
            compressed, data = encode_chunk(raw)
            if not compressed or decode_chunk(True, len(raw), data) != raw:
                failures.append(f"encode_chunk {n}/{i}")
            c2, size, d2 = encode_parts([raw[:1000], raw[1000:]])
            if not c2 or size != len(raw) or decode_chunk(True, size, d2) != raw:  # type: ignore[arg-type]
                failures.append(f"encode_parts {n}/{i}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert failures == []
