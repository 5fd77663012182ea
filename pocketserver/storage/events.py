"""Rooms and events: interning, persistence, the timeline and the event graph.

Callers speak in room IDs and event IDs; the integers (``room_nid``, ``event_nid``,
``sk_nid``) stay inside ``storage/``. An event's PDU is stored once, as canonical JSON,
zstd-compressed when that makes it smaller (a zstd frame is told apart from JSON by its
first byte).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import zstandard

from pocketserver.protocol.canonical_json import encode_canonical_json
from pocketserver.protocol.events import Event
from pocketserver.protocol.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from pocketserver.storage.database import Conn

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# Events are at most 64 KiB; anything claiming more is corrupt, never allocated.
_MAX_EVENT_JSON = 1 << 20


class _Codecs(threading.local):
    """zstd contexts are not thread-safe, and storage functions run on several worker
    threads at once (the writer and the readers): each thread gets its own pair."""

    def __init__(self) -> None:
        self.compressor = zstandard.ZstdCompressor(level=3, write_content_size=True)
        self.decompressor = zstandard.ZstdDecompressor()


_codecs = _Codecs()


def encode_pdu(pdu: dict[str, Any]) -> bytes:
    raw = encode_canonical_json(pdu)
    if len(raw) > 200:
        packed = _codecs.compressor.compress(raw)
        if len(packed) < len(raw):
            return packed
    return raw


def decode_pdu(blob: bytes) -> dict[str, Any]:
    if blob[:4] == _ZSTD_MAGIC:
        blob = _codecs.decompressor.decompress(blob, max_output_size=_MAX_EVENT_JSON)
    try:
        # orjson parses an event several times faster than json (a big room's member
        # list is hundreds of them); what it refuses and json reads (a lone surrogate
        # escape, an integer beyond 64 bits from an old room) goes to json.
        value: dict[str, Any] = orjson.loads(blob)
    except orjson.JSONDecodeError:
        value = json.loads(blob)
    return value


@dataclass(frozen=True, slots=True)
class RoomInfo:
    room_id: str
    room_version: RoomVersion
    creator: str | None
    is_public: bool
    created_ts: int
    has_state: bool


@dataclass(slots=True)
class EventRecord:
    """An event with what this server knows about it."""

    event: Event
    stream_pos: int | None
    outlier: bool
    rejected_reason: str | None
    redacted_by: str | None
    # The event a state event replaced (its prev_content comes from it).
    replaces_event_id: str | None
    txn_key: str | None


# -- interning -------------------------------------------------------------------------


def room_nid(conn: Conn, room_id: str) -> int | None:
    row = conn.execute("SELECT room_nid FROM rooms WHERE room_id = ?", (room_id,)).fetchone()
    return None if row is None else int(row[0])


def insert_room(
    conn: Conn, room_id: str, room_version: str, creator: str | None, now_ms: int
) -> int:
    conn.execute(
        "INSERT INTO rooms (room_id, room_version, creator, created_ts) VALUES (?, ?, ?, ?)",
        (room_id, room_version, creator, now_ms),
    )
    return int(conn.last_insert_rowid())


def get_room(conn: Conn, room_id: str) -> RoomInfo | None:
    row = conn.execute(
        "SELECT room_id, room_version, creator, is_public, created_ts, current_state_group"
        " FROM rooms WHERE room_id = ?",
        (room_id,),
    ).fetchone()
    if row is None:
        return None
    rv = KNOWN_ROOM_VERSIONS.get(row[1])
    if rv is None:
        return None
    return RoomInfo(row[0], rv, row[2], bool(row[3]), row[4], row[5] is not None)


def state_key_nid(conn: Conn, etype: str, state_key: str) -> int:
    """Intern (type, state_key), creating the row if needed."""
    row = conn.execute(
        "SELECT sk_nid FROM state_keys WHERE type = ? AND state_key = ?", (etype, state_key)
    ).fetchone()
    if row is not None:
        return int(row[0])
    conn.execute("INSERT INTO state_keys (type, state_key) VALUES (?, ?)", (etype, state_key))
    return int(conn.last_insert_rowid())


def lookup_state_key_nid(conn: Conn, etype: str, state_key: str) -> int | None:
    row = conn.execute(
        "SELECT sk_nid FROM state_keys WHERE type = ? AND state_key = ?", (etype, state_key)
    ).fetchone()
    return None if row is None else int(row[0])


def event_nid(conn: Conn, event_id: str) -> int | None:
    row = conn.execute("SELECT event_nid FROM events WHERE event_id = ?", (event_id,)).fetchone()
    return None if row is None else int(row[0])


def have_events(conn: Conn, event_ids: Iterable[str]) -> set[str]:
    out: set[str] = set()
    for eid in event_ids:
        if conn.execute("SELECT 1 FROM events WHERE event_id = ?", (eid,)).fetchone():
            out.add(eid)
    return out


# -- reading events --------------------------------------------------------------------

_RECORD_COLS = (
    "e.event_id, e.json, r.room_version, e.stream_pos, e.outlier, e.rejected_reason,"
    " e.redacted_by, (SELECT event_id FROM events p WHERE p.event_nid = e.replaces_nid),"
    " e.txn_key, e.expired_ts"
)
# The columns above, for queries that select more after them.
_RECORD_NCOLS = 10
_RECORD_FROM = " FROM events e JOIN rooms r ON r.room_nid = e.room_nid "


class DecodedEvents:
    """The events last read, decoded: a bounded LRU by (database file, event ID,
    redacting event ID, time its content self-destructed).

    Decoding (zstd, then JSON) is most of what reading an event costs, and a big room's
    member list or a busy timeline is read again and again. An event's JSON changes
    only when it is redacted or self-destructs, which changes the rest of the key, so
    an entry is never stale. Shared by the reader and writer threads (a lock); ``Event`` is
    immutable, each read still gets its own ``EventRecord``. Sized by
    ``caches.event_cache_size`` (:func:`configure_event_cache`).
    """

    def __init__(self, max_size: int) -> None:
        self.max_size = max(1, max_size)
        self._data: OrderedDict[tuple[str, str, str | None, int | None], Event] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[str, str, str | None, int | None]) -> Event | None:
        with self._lock:
            ev = self._data.get(key)
            if ev is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return ev

    def put(self, key: tuple[str, str, str | None, int | None], ev: Event) -> None:
        with self._lock:
            self._data[key] = ev
            while len(self._data) > self.max_size:
                self._data.popitem(last=False)

    def resize(self, max_size: int) -> None:
        with self._lock:
            self.max_size = max(1, max_size)
            while len(self._data) > self.max_size:
                self._data.popitem(last=False)

    def statistics(self) -> dict[str, int]:
        with self._lock:
            return {"size": len(self._data), "max_size": self.max_size, "hits": self.hits, "misses": self.misses}


_decoded = DecodedEvents(2000)


def configure_event_cache(max_size: int) -> None:
    _decoded.resize(max_size)


def event_cache_statistics() -> dict[str, int]:
    return _decoded.statistics()


def _record(conn: Conn, row: Sequence[Any]) -> EventRecord:
    # Keyed by the database file too: tests run many servers in one process. An
    # in-memory database (storage tests) is never cached: they all have the same name.
    db_file = conn.filename
    key = (db_file, row[0], row[6], row[9])
    ev = _decoded.get(key) if db_file else None
    if ev is None:
        ev = Event.from_stored(decode_pdu(row[1]), KNOWN_ROOM_VERSIONS[row[2]], row[0])
        if db_file:
            _decoded.put(key, ev)
    return EventRecord(ev, row[3], bool(row[4]), row[5], row[6], row[7], row[8])


def get_event(conn: Conn, event_id: str) -> EventRecord | None:
    row = conn.execute(
        f"SELECT {_RECORD_COLS}{_RECORD_FROM}WHERE e.event_id = ?", (event_id,)
    ).fetchone()
    return None if row is None else _record(conn, row)


# Parameters per IN (...) query (SQLite allows far more; this keeps statements cacheable).
_BATCH = 256


def get_events(conn: Conn, event_ids: Iterable[str]) -> dict[str, EventRecord]:
    """The stored events among ``event_ids`` (unknown IDs are left out), a few queries
    for any number of IDs."""
    wanted = list(dict.fromkeys(event_ids))
    out: dict[str, EventRecord] = {}
    for i in range(0, len(wanted), _BATCH):
        part = wanted[i : i + _BATCH]
        marks = ",".join("?" * len(part))
        for row in conn.execute(
            f"SELECT {_RECORD_COLS}{_RECORD_FROM}WHERE e.event_id IN ({marks})", part
        ):
            out[row[0]] = _record(conn, row)
    return out


def current_state_events(conn: Conn, room_id: str, etype: str) -> list[EventRecord]:
    """The events of one type in a room's current state (its members, say), one query."""
    rows = conn.execute(
        f"SELECT {_RECORD_COLS}{_RECORD_FROM}JOIN current_state c ON c.event_nid = e.event_nid"
        " JOIN state_keys k ON k.sk_nid = c.sk_nid WHERE c.room_nid = r.room_nid"
        " AND r.room_id = ? AND k.type = ?",
        (room_id, etype),
    ).fetchall()
    return [_record(conn, r) for r in rows]


def get_events_by_nids(conn: Conn, nids: Iterable[int]) -> dict[int, EventRecord]:
    wanted = list(dict.fromkeys(nids))
    out: dict[int, EventRecord] = {}
    for i in range(0, len(wanted), _BATCH):
        part = wanted[i : i + _BATCH]
        marks = ",".join("?" * len(part))
        for row in conn.execute(
            f"SELECT e.event_nid, {_RECORD_COLS}{_RECORD_FROM}WHERE e.event_nid IN ({marks})", part
        ):
            out[int(row[0])] = _record(conn, row[1:])
    return out


def get_txn_event_id(conn: Conn, txn_key: str) -> str | None:
    row = conn.execute("SELECT event_id FROM events WHERE txn_key = ?", (txn_key,)).fetchone()
    return None if row is None else str(row[0])


def forward_extremities(conn: Conn, room_id: str) -> list[tuple[str, int]]:
    """(event_id, depth) of the room's forward extremities, deepest first."""
    return [
        (r[0], r[1])
        for r in conn.execute(
            "SELECT e.event_id, e.depth FROM forward_extremities f"
            " JOIN rooms r ON r.room_nid = f.room_nid JOIN events e ON e.event_nid = f.event_nid"
            " WHERE r.room_id = ? ORDER BY e.depth DESC, e.event_nid DESC",
            (room_id,),
        )
    ]


def room_timeline(
    conn: Conn,
    room_id: str,
    *,
    from_pos: int | None,
    to_pos: int | None,
    backwards: bool,
    limit: int,
) -> list[EventRecord]:
    """Timeline events of a room between two stream positions, exclusive of ``from_pos``.

    Backwards: positions < from_pos (None: from the newest), down to > to_pos, newest
    first. Forwards: positions > from_pos, up to <= to_pos, oldest first.
    """
    rnid = room_nid(conn, room_id)
    if rnid is None:
        return []
    clauses = ["e.room_nid = ?", "e.stream_pos IS NOT NULL", "e.rejected_reason IS NULL"]
    args: list[Any] = [rnid]
    if backwards:
        if from_pos is not None:
            clauses.append("e.stream_pos < ?")
            args.append(from_pos)
        if to_pos is not None:
            clauses.append("e.stream_pos > ?")
            args.append(to_pos)
        order = "DESC"
    else:
        if from_pos is not None:
            clauses.append("e.stream_pos > ?")
            args.append(from_pos)
        if to_pos is not None:
            clauses.append("e.stream_pos <= ?")
            args.append(to_pos)
        order = "ASC"
    args.append(limit)
    rows = conn.execute(
        f"SELECT {_RECORD_COLS}{_RECORD_FROM}WHERE {' AND '.join(clauses)}"
        f" ORDER BY e.stream_pos {order} LIMIT ?",
        args,
    ).fetchall()
    return [_record(conn, r) for r in rows]


def rooms_with_events_between(
    conn: Conn, room_ids: Iterable[str], since: int, upto: int
) -> set[str]:
    """Which of ``room_ids`` have timeline events in (since, upto]."""
    out: set[str] = set()
    for rid, in conn.execute(
        "SELECT DISTINCT r.room_id FROM events e JOIN rooms r ON r.room_nid = e.room_nid"
        " WHERE e.stream_pos > ? AND e.stream_pos <= ?",
        (since, upto),
    ):
        out.add(rid)
    return out & set(room_ids)


def latest_stream_pos_in_room(conn: Conn, room_id: str) -> int | None:
    row = conn.execute(
        "SELECT MAX(e.stream_pos) FROM events e JOIN rooms r ON r.room_nid = e.room_nid"
        " WHERE r.room_id = ?",
        (room_id,),
    ).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def event_position(conn: Conn, event_id: str) -> tuple[str, int | None] | None:
    """(room_id, stream_pos) of an event."""
    row = conn.execute(
        "SELECT r.room_id, e.stream_pos FROM events e JOIN rooms r ON r.room_nid = e.room_nid"
        " WHERE e.event_id = ?",
        (event_id,),
    ).fetchone()
    return None if row is None else (row[0], row[1])


def event_id_at_or_near_ts(conn: Conn, room_id: str, ts: int, forwards: bool) -> str | None:
    op, order = (">=", "ASC") if forwards else ("<=", "DESC")
    row = conn.execute(
        "SELECT e.event_id FROM events e JOIN rooms r ON r.room_nid = e.room_nid"
        f" WHERE r.room_id = ? AND e.stream_pos IS NOT NULL AND e.rejected_reason IS NULL"
        f" AND e.origin_server_ts {op} ? ORDER BY e.origin_server_ts {order}, e.stream_pos {order}"
        " LIMIT 1",
        (room_id, ts),
    ).fetchone()
    return None if row is None else str(row[0])


# -- relations, search ---------------------------------------------------------------------


def relations_of(
    conn: Conn,
    parent_id: str,
    rel_type: str | None,
    event_type: str | None,
    *,
    from_pos: int | None,
    backwards: bool,
    limit: int,
) -> list[EventRecord]:
    clauses = ["rel.relates_to_id = ?", "e.stream_pos IS NOT NULL", "e.rejected_reason IS NULL"]
    args: list[Any] = [parent_id]
    if rel_type is not None:
        clauses.append("rel.rel_type = ?")
        args.append(rel_type)
    if event_type is not None:
        clauses.append("e.type = ?")
        args.append(event_type)
    if from_pos is not None:
        clauses.append("e.stream_pos < ?" if backwards else "e.stream_pos > ?")
        args.append(from_pos)
    order = "DESC" if backwards else "ASC"
    args.append(limit)
    rows = conn.execute(
        f"SELECT {_RECORD_COLS}{_RECORD_FROM}JOIN event_relations rel ON rel.event_nid = e.event_nid"
        f" WHERE {' AND '.join(clauses)} ORDER BY e.stream_pos {order} LIMIT ?",
        args,
    ).fetchall()
    return [_record(conn, r) for r in rows]


def annotation_counts(conn: Conn, parent_id: str) -> list[tuple[str, str, int]]:
    """(event type, key, count) of the annotations (reactions) of an event."""
    return [
        (r[0], r[1], int(r[2]))
        for r in conn.execute(
            "SELECT e.type, rel.aggregation_key, COUNT(*) FROM event_relations rel"
            " JOIN events e ON e.event_nid = rel.event_nid"
            " WHERE rel.relates_to_id = ? AND rel.rel_type = 'm.annotation'"
            " AND e.redacted_by IS NULL AND e.rejected_reason IS NULL"
            " GROUP BY e.type, rel.aggregation_key ORDER BY MIN(e.stream_pos)",
            (parent_id,),
        )
    ]


# -- writing events ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewEvent:
    """Everything needed to persist one event; built by the rooms service."""

    event: Event
    stream_pos: int | None
    outlier: bool = False
    rejected_reason: str | None = None
    txn_key: str | None = None
    received_ts: int = 0


def insert_event(conn: Conn, new: NewEvent, now_ms: int) -> int:
    """Insert the event row and its graph edges. Returns its nid (storage-internal)."""
    ev = new.event
    rnid = room_nid(conn, ev.room_id)
    if rnid is None:
        raise KeyError(f"unknown room {ev.room_id}")
    sk = state_key_nid(conn, ev.type, ev.state_key) if ev.state_key is not None else None
    conn.execute(
        "INSERT INTO events (event_id, room_nid, type, sk_nid, sender, depth, origin_server_ts,"
        " received_ts, stream_pos, outlier, rejected_reason, txn_key, json)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            ev.event_id,
            rnid,
            ev.type,
            sk,
            ev.sender,
            ev.depth,
            ev.origin_server_ts,
            new.received_ts or now_ms,
            new.stream_pos,
            int(new.outlier),
            new.rejected_reason,
            new.txn_key,
            encode_pdu(ev.pdu),
        ),
    )
    nid = int(conn.last_insert_rowid())
    for prev in ev.prev_event_ids:
        conn.execute(
            "INSERT OR IGNORE INTO event_edges (event_nid, prev_event_id) VALUES (?, ?)",
            (nid, prev),
        )
    for auth in ev.auth_event_ids:
        conn.execute(
            "INSERT OR IGNORE INTO event_auth_edges (event_nid, auth_event_id) VALUES (?, ?)",
            (nid, auth),
        )
    if new.rejected_reason is None:
        _index_content(conn, nid, ev)
    return nid


def _index_content(conn: Conn, nid: int, ev: Event) -> None:
    rel = ev.content.get("m.relates_to")
    if isinstance(rel, dict):
        parent = rel.get("event_id")
        rel_type = rel.get("rel_type")
        if isinstance(parent, str) and isinstance(rel_type, str):
            key = rel.get("key") if rel_type == "m.annotation" else None
            conn.execute(
                "INSERT OR REPLACE INTO event_relations (event_nid, relates_to_id, rel_type,"
                " aggregation_key) VALUES (?, ?, ?, ?)",
                (nid, parent, rel_type, key if isinstance(key, str) else None),
            )
    text = _searchable_text(ev)
    if text:
        conn.execute("INSERT INTO event_search (rowid, body) VALUES (?, ?)", (nid, text))


def _searchable_text(ev: Event) -> str | None:
    """The text /search finds an event by (client-server API "Server Side Search").

    ``content.body`` of m.room.message, ``content.name`` of m.room.name, and
    ``content.topic`` plus the text/plain ``m.topic`` representation of m.room.topic.
    Encrypted events (m.room.encrypted) have no readable body: never indexed.
    """
    key = {"m.room.message": "body", "m.room.name": "name", "m.room.topic": "topic"}.get(ev.type)
    if key is None:
        return None
    value = ev.content.get(key)
    parts = [value] if isinstance(value, str) and value else []
    if ev.type == "m.room.topic":
        block = ev.content.get("m.topic")
        texts = block.get("m.text") if isinstance(block, dict) else None
        for t in texts if isinstance(texts, list) else []:
            if isinstance(t, dict) and t.get("mimetype", "text/plain") == "text/plain":
                body = t.get("body")
                if isinstance(body, str) and body and body not in parts:
                    parts.append(body)
    return "\n".join(parts) or None


def set_forward_extremities(conn: Conn, room_id: str, new_event_id: str) -> None:
    """A new timeline event replaces the extremities it points at."""
    rnid = room_nid(conn, room_id)
    nid = event_nid(conn, new_event_id)
    assert rnid is not None and nid is not None
    conn.execute(
        "DELETE FROM forward_extremities WHERE room_nid = ? AND event_nid IN"
        " (SELECT p.event_nid FROM event_edges ed JOIN events p ON p.event_id = ed.prev_event_id"
        "  WHERE ed.event_nid = ?)",
        (rnid, nid),
    )
    conn.execute(
        "INSERT OR IGNORE INTO forward_extremities (room_nid, event_nid) VALUES (?, ?)", (rnid, nid)
    )


def apply_redaction(conn: Conn, target_id: str, redaction_id: str, redacted_pdu: dict[str, Any]) -> bool:
    """Replace an event's stored PDU with its redacted form (the original is not kept)."""
    nid = event_nid(conn, target_id)
    if nid is None:
        return False
    conn.execute(
        "UPDATE events SET json = ?, redacted_by = ? WHERE event_nid = ?",
        (encode_pdu(redacted_pdu), redaction_id, nid),
    )
    conn.execute("DELETE FROM event_search WHERE rowid = ?", (nid,))
    conn.execute("DELETE FROM event_relations WHERE event_nid = ?", (nid,))
    return True


def search_messages(
    conn: Conn, room_ids: Sequence[str], query: str, *, before_pos: int | None, limit: int
) -> list[tuple[EventRecord, float]]:
    """Full-text search (FTS5) over message bodies in ``room_ids``, newest first."""
    if not room_ids:
        return []
    marks = ",".join("?" * len(room_ids))
    args: list[Any] = [query, *room_ids]
    extra = ""
    if before_pos is not None:
        extra = " AND e.stream_pos < ?"
        args.append(before_pos)
    args.append(limit)
    rows = conn.execute(
        f"SELECT {_RECORD_COLS}, bm25(event_search){_RECORD_FROM}"
        " JOIN event_search s ON s.rowid = e.event_nid"
        f" WHERE event_search MATCH ? AND r.room_id IN ({marks}) AND e.redacted_by IS NULL"
        f"{extra} ORDER BY e.stream_pos DESC LIMIT ?",
        args,
    ).fetchall()
    return [(_record(conn, r[:_RECORD_NCOLS]), -float(r[_RECORD_NCOLS])) for r in rows]


def count_relations(conn: Conn, parent_id: str, rel_type: str) -> int:
    (n,) = conn.execute(
        "SELECT COUNT(*) FROM event_relations rel JOIN events e ON e.event_nid = rel.event_nid"
        " WHERE rel.relates_to_id = ? AND rel.rel_type = ? AND e.rejected_reason IS NULL"
        " AND e.stream_pos IS NOT NULL",
        (parent_id, rel_type),
    ).fetchone()
    return int(n)


def has_related_from(conn: Conn, parent_id: str, rel_type: str, sender: str) -> bool:
    return (
        conn.execute(
            "SELECT 1 FROM event_relations rel JOIN events e ON e.event_nid = rel.event_nid"
            " WHERE rel.relates_to_id = ? AND rel.rel_type = ? AND e.sender = ? LIMIT 1",
            (parent_id, rel_type, sender),
        ).fetchone()
        is not None
    )


def thread_roots(
    conn: Conn, room_id: str, *, participated_by: str | None, before_pos: int | None, limit: int
) -> list[tuple[EventRecord, int]]:
    """Thread roots of a room ordered by their latest reply, newest first, with that position."""
    args: list[Any] = [room_id]
    extra = ""
    if participated_by is not None:
        extra = (
            " AND (root.sender = ? OR EXISTS (SELECT 1 FROM event_relations r2 JOIN events e2"
            " ON e2.event_nid = r2.event_nid WHERE r2.relates_to_id = root.event_id"
            " AND r2.rel_type = 'm.thread' AND e2.sender = ?))"
        )
        args += [participated_by, participated_by]
    having = ""
    if before_pos is not None:
        having = " HAVING MAX(reply.stream_pos) < ?"
    rows = conn.execute(
        f"SELECT root.event_id, MAX(reply.stream_pos) AS latest FROM events root"
        " JOIN rooms r ON r.room_nid = root.room_nid"
        " JOIN event_relations rel ON rel.relates_to_id = root.event_id AND rel.rel_type = 'm.thread'"
        " JOIN events reply ON reply.event_nid = rel.event_nid"
        f" WHERE r.room_id = ?{extra} GROUP BY root.event_id{having}"
        " ORDER BY latest DESC LIMIT ?",
        [*args, *([before_pos] if before_pos is not None else []), limit],
    ).fetchall()
    out: list[tuple[EventRecord, int]] = []
    for eid, latest in rows:
        rec = get_event(conn, eid)
        if rec is not None:
            out.append((rec, int(latest)))
    return out
