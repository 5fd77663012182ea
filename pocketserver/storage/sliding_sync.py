"""The reads simplified sliding sync needs beyond /sync's: a user's rooms with their
latest activity in one query, a room's ``bump_stamp``, and whether a state key is set."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pocketserver.storage.database import Conn
from pocketserver.storage.events import lookup_state_key_nid, room_nid


@dataclass(frozen=True, slots=True)
class UserRoom:
    room_id: str
    membership: str
    membership_pos: int
    membership_sender: str
    # The newest timeline event of the room (None: none stored with a position).
    latest_pos: int | None


def user_rooms(conn: Conn, user_id: str, memberships: Iterable[str]) -> list[UserRoom]:
    """A user's rooms (not forgotten) with the given memberships, each with the sender
    of the membership event and the position of the room's newest event: the room list
    of a sliding sync in one query (the newest event is found through the
    ``events_room_stream`` index, one probe per room)."""
    ms = list(memberships)
    marks = ",".join("?" * len(ms))
    rows = conn.execute(
        "SELECT r.room_id, m.membership, m.stream_pos, e.sender,"
        " (SELECT MAX(x.stream_pos) FROM events x WHERE x.room_nid = m.room_nid)"
        " FROM room_memberships m JOIN rooms r ON r.room_nid = m.room_nid"
        " JOIN events e ON e.event_nid = m.event_nid"
        f" WHERE m.user_id = ? AND m.membership IN ({marks}) AND m.forgotten = 0",
        (user_id, *ms),
    )
    return [UserRoom(rid, mem, int(pos), sender, latest) for rid, mem, pos, sender, latest in rows]


def bump_stamp(conn: Conn, room_id: str, types: Iterable[str], upto: int | None = None) -> int | None:
    """The position of the newest event of one of ``types`` in a room (at or before
    ``upto``), walking the room's events newest first."""
    rnid = room_nid(conn, room_id)
    if rnid is None:
        return None
    ts = list(types)
    marks = ",".join("?" * len(ts))
    args: list[object] = [rnid, *ts]
    sql = (
        "SELECT stream_pos FROM events WHERE room_nid = ? AND stream_pos IS NOT NULL"
        f" AND rejected_reason IS NULL AND type IN ({marks})"
    )
    if upto is not None:
        sql += " AND stream_pos <= ?"
        args.append(upto)
    row = conn.execute(sql + " ORDER BY stream_pos DESC LIMIT 1", args).fetchone()
    return None if row is None else int(row[0])


def has_state(conn: Conn, room_id: str, etype: str, state_key: str) -> bool:
    """Whether the room's current state has an entry for (type, state_key)."""
    rnid = room_nid(conn, room_id)
    sk = lookup_state_key_nid(conn, etype, state_key)
    if rnid is None or sk is None:
        return False
    row = conn.execute(
        "SELECT 1 FROM current_state WHERE room_nid = ? AND sk_nid = ?", (rnid, sk)
    ).fetchone()
    return row is not None


def receipts_in_rooms(
    conn: Conn, room_ids: Iterable[str], viewer: str
) -> dict[str, list[tuple[str, str, str, str, dict[str, Any]]]]:
    """{room_id: [(event_id, receipt_type, user_id, thread_id, data)]}: every receipt the
    rooms hold now (one per user, type and thread), through the receipts' primary key.
    Private receipts (m.read.private) only for their owner."""
    out: dict[str, list[tuple[str, str, str, str, dict[str, Any]]]] = {}
    for room_id in room_ids:
        rnid = room_nid(conn, room_id)
        if rnid is None:
            continue
        for eid, rtype, uid, tid, data in conn.execute(
            "SELECT event_id, receipt_type, user_id, thread_id, data_json FROM receipts WHERE room_nid = ?",
            (rnid,),
        ):
            if rtype == "m.read.private" and uid != viewer:
                continue
            out.setdefault(room_id, []).append((eid, rtype, uid, tid, json.loads(data)))
    return out


def current_state_ids(conn: Conn, room_id: str, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """The current state of a room for the given (type, state_key) pairs, in one query
    (``state.get_current_state_ids`` asks two per key: a sliding sync's
    ``required_state`` often names a dozen)."""
    wanted = list(dict.fromkeys(keys))
    rnid = room_nid(conn, room_id)
    if rnid is None or not wanted:
        return {}
    out: dict[tuple[str, str], str] = {}
    for i in range(0, len(wanted), 200):
        part = wanted[i : i + 200]
        values = ",".join("(?, ?)" for _ in part)
        args: list[Any] = []
        for t, s in part:
            args += [t, s]
        args.append(rnid)
        # CROSS JOIN keeps SQLite starting from the wanted keys (two index probes each)
        # instead of scanning the room's whole state (all members of a big room).
        for t, s, eid in conn.execute(
            f"SELECT k.type, k.state_key, e.event_id FROM (VALUES {values}) v"
            " CROSS JOIN state_keys k ON k.type = v.column1 AND k.state_key = v.column2"
            " CROSS JOIN current_state c ON c.room_nid = ? AND c.sk_nid = k.sk_nid"
            " JOIN events e ON e.event_nid = c.event_nid",
            args,
        ):
            out[(t, s)] = eid
    return out
