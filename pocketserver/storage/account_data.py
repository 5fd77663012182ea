"""Per-user account data, global (``room_id = ''``) and per room, including ``m.tag``.

Every write takes the next position of the global stream, so /sync delivers exactly the
entries that changed since a client's token. Content is stored as compact JSON text.
A deleted entry is stored as ``{}`` (the spec's own representation of a deletion).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pocketserver.storage.database import Conn
from pocketserver.storage.streams import next_stream_pos

GLOBAL = ""


def _dumps(content: Any) -> str:
    return json.dumps(content, ensure_ascii=False, separators=(",", ":"))


def put_account_data(
    conn: Conn, user_id: str, room_id: str, data_type: str, content: dict[str, Any]
) -> int:
    """Set one entry (``room_id=''`` for global); return its stream position."""
    pos = next_stream_pos(conn)
    conn.execute(
        "INSERT INTO account_data (user_id, room_id, type, content, stream_pos)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (user_id, room_id, type)"
        " DO UPDATE SET content = excluded.content, stream_pos = excluded.stream_pos",
        (user_id, room_id, data_type, _dumps(content), pos),
    )
    return pos


def get_account_data(
    conn: Conn, user_id: str, room_id: str, data_type: str
) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT content FROM account_data WHERE user_id = ? AND room_id = ? AND type = ?",
        (user_id, room_id, data_type),
    ).fetchone()
    if row is None:
        return None
    value: dict[str, Any] = json.loads(row[0])
    return value


def entry_size(conn: Conn, user_id: str, room_id: str, data_type: str) -> int:
    """Bytes one entry takes (content + type + room ID, as counted against a user's
    total); 0 if there is none."""
    row = conn.execute(
        "SELECT length(CAST(content AS BLOB)) + length(CAST(type AS BLOB))"
        " + length(CAST(room_id AS BLOB)) FROM account_data"
        " WHERE user_id = ? AND room_id = ? AND type = ?",
        (user_id, room_id, data_type),
    ).fetchone()
    return 0 if row is None else int(row[0])


def total_size(conn: Conn, user_id: str) -> int:
    """Bytes all of one user's entries take (content + type + room ID of each)."""
    (n,) = conn.execute(
        "SELECT COALESCE(SUM(length(CAST(content AS BLOB)) + length(CAST(type AS BLOB))"
        " + length(CAST(room_id AS BLOB))), 0) FROM account_data WHERE user_id = ?",
        (user_id,),
    ).fetchone()
    return int(n)


def entry_bytes(room_id: str, data_type: str, content: dict[str, Any]) -> int:
    """What :func:`entry_size` will say once ``content`` is stored."""
    return len(_dumps(content).encode("utf-8")) + len(data_type.encode("utf-8")) + len(
        room_id.encode("utf-8")
    )


@dataclass
class AccountDataChanges:
    """What changed in a stream range: ``global_`` by type, ``rooms`` by room then type."""

    global_: dict[str, dict[str, Any]] = field(default_factory=dict)
    rooms: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    max_pos: int = 0


def get_account_data_since(
    conn: Conn, user_id: str, since_pos: int, upto_pos: int | None = None
) -> AccountDataChanges:
    """Entries written in ``(since_pos, upto_pos]`` (all of them for ``since_pos=0``).

    Each (room, type) appears once, with its latest content; ``/sync`` puts them in
    ``account_data.events`` and ``rooms.join.<room>.account_data.events``.
    """
    sql = (
        "SELECT room_id, type, content, stream_pos FROM account_data"
        " WHERE user_id = ? AND stream_pos > ?"
    )
    args: list[Any] = [user_id, since_pos]
    if upto_pos is not None:
        sql += " AND stream_pos <= ?"
        args.append(upto_pos)
    out = AccountDataChanges()
    for room_id, data_type, content, pos in conn.execute(sql, args):
        value = json.loads(content)
        if room_id == GLOBAL:
            out.global_[data_type] = value
        else:
            out.rooms.setdefault(room_id, {})[data_type] = value
        out.max_pos = max(out.max_pos, pos)
    return out


def to_events(by_type: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """``{type: content}`` as the ``[{"type", "content"}]`` list /sync returns."""
    return [{"type": t, "content": c} for t, c in by_type.items()]
