"""Presence of local users: one row per user, stamped with a global stream position.

``get_presence_changes_since`` answers /sync's question: which users sharing a joined
room with me (and I myself) changed presence since my token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pocketserver.storage.database import Conn
from pocketserver.storage.streams import next_stream_pos


@dataclass(frozen=True, slots=True)
class Presence:
    user_id: str
    state: str
    status_msg: str | None
    last_active_ts: int
    currently_active: bool
    stream_pos: int


_COLS = "user_id, state, status_msg, last_active_ts, currently_active, stream_pos"


def _row(row: Any) -> Presence:
    return Presence(row[0], row[1], row[2], row[3], bool(row[4]), row[5])


def set_presence(
    conn: Conn,
    user_id: str,
    state: str,
    status_msg: str | None,
    last_active_ts: int,
    currently_active: bool,
) -> int:
    """Store a user's presence; return the stream position it took."""
    pos = next_stream_pos(conn)
    conn.execute(
        "INSERT INTO presence (user_id, state, status_msg, last_active_ts, currently_active,"
        " stream_pos) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (user_id) DO UPDATE SET"
        " state = excluded.state, status_msg = excluded.status_msg,"
        " last_active_ts = excluded.last_active_ts,"
        " currently_active = excluded.currently_active, stream_pos = excluded.stream_pos",
        (user_id, state, status_msg, last_active_ts, int(currently_active), pos),
    )
    return pos


def get_presence(conn: Conn, user_id: str) -> Presence | None:
    row = conn.execute(f"SELECT {_COLS} FROM presence WHERE user_id = ?", (user_id,)).fetchone()
    return None if row is None else _row(row)


def delete_presence(conn: Conn, user_id: str) -> None:
    conn.execute("DELETE FROM presence WHERE user_id = ?", (user_id,))


def shares_room(conn: Conn, user_a: str, user_b: str) -> bool:
    """True if both users are joined to at least one common room."""
    if user_a == user_b:
        return True
    row = conn.execute(
        "SELECT 1 FROM room_memberships a JOIN room_memberships b ON a.room_nid = b.room_nid"
        " WHERE a.user_id = ? AND a.membership = 'join' AND b.user_id = ?"
        " AND b.membership = 'join' LIMIT 1",
        (user_a, user_b),
    ).fetchone()
    return row is not None


def get_presence_changes_since(
    conn: Conn, user_id: str, since_pos: int, upto_pos: int | None = None
) -> list[Presence]:
    """Presence rows changed in ``(since_pos, upto_pos]`` of users who share a joined room
    with ``user_id``, and ``user_id``'s own; ordered by stream position."""
    sql = (
        f"SELECT {_COLS} FROM presence WHERE stream_pos > ?"
        + (" AND stream_pos <= ?" if upto_pos is not None else "")
        + " AND (user_id = ? OR user_id IN ("
        " SELECT b.user_id FROM room_memberships a JOIN room_memberships b"
        " ON a.room_nid = b.room_nid WHERE a.user_id = ? AND a.membership = 'join'"
        " AND b.membership = 'join')) ORDER BY stream_pos"
    )
    args: list[Any] = [since_pos]
    if upto_pos is not None:
        args.append(upto_pos)
    args += [user_id, user_id]
    return [_row(r) for r in conn.execute(sql, args)]


def get_presences(conn: Conn, user_ids: list[str], upto_pos: int | None = None) -> list[Presence]:
    """The stored presence of each of ``user_ids`` (as of ``upto_pos``: rows written later
    are left for the next sync), ordered by stream position."""
    out: list[Presence] = []
    for i in range(0, len(user_ids), 500):
        chunk = user_ids[i : i + 500]
        sql = f"SELECT {_COLS} FROM presence WHERE user_id IN ({','.join('?' * len(chunk))})"
        args: list[Any] = list(chunk)
        if upto_pos is not None:
            sql += " AND stream_pos <= ?"
            args.append(upto_pos)
        out.extend(_row(r) for r in conn.execute(sql, args))
    return sorted(out, key=lambda p: p.stream_pos)
