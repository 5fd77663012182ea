"""Room aliases, the public room directory, receipts and reports."""

from __future__ import annotations

import json
from typing import Any

from pocketserver.storage.database import Conn
from pocketserver.storage.events import room_nid


def get_alias(conn: Conn, alias: str) -> tuple[str, str] | None:
    """(room_id, creator) of an alias."""
    row = conn.execute("SELECT room_id, creator FROM room_aliases WHERE alias = ?", (alias,)).fetchone()
    return None if row is None else (row[0], row[1])


def insert_alias(conn: Conn, alias: str, room_id: str, creator: str) -> bool:
    conn.execute(
        "INSERT OR IGNORE INTO room_aliases (alias, room_id, creator) VALUES (?, ?, ?)",
        (alias, room_id, creator),
    )
    return conn.changes() > 0


def delete_alias(conn: Conn, alias: str) -> None:
    conn.execute("DELETE FROM room_aliases WHERE alias = ?", (alias,))


def aliases_for_room(conn: Conn, room_id: str) -> list[str]:
    return [r[0] for r in conn.execute("SELECT alias FROM room_aliases WHERE room_id = ? ORDER BY alias", (room_id,))]


def set_room_public(conn: Conn, room_id: str, public: bool) -> None:
    conn.execute("UPDATE rooms SET is_public = ? WHERE room_id = ?", (int(public), room_id))


def public_room_ids(conn: Conn) -> list[str]:
    return [r[0] for r in conn.execute("SELECT room_id FROM rooms WHERE is_public = 1 ORDER BY room_nid")]


def all_room_ids(conn: Conn) -> list[str]:
    return [r[0] for r in conn.execute("SELECT room_id FROM rooms ORDER BY room_nid")]


# -- receipts -------------------------------------------------------------------------------


def upsert_receipt(
    conn: Conn,
    room_id: str,
    receipt_type: str,
    user_id: str,
    thread_id: str,
    event_id: str,
    data: dict[str, Any],
    stream_pos: int,
) -> None:
    """Store a receipt; one for an event before the user's current one of the same type
    and thread is ignored (a receipt says "read up to here" and never moves back)."""
    rnid = room_nid(conn, room_id)
    older = conn.execute(
        "SELECT 1 FROM receipts r JOIN events cur ON cur.event_id = r.event_id,"
        " events new ON new.event_id = ?"
        " WHERE r.room_nid = ? AND r.receipt_type = ? AND r.user_id = ? AND r.thread_id = ?"
        " AND new.stream_pos < cur.stream_pos",
        (event_id, rnid, receipt_type, user_id, thread_id),
    ).fetchone()
    if older is not None:
        return
    conn.execute(
        "INSERT OR REPLACE INTO receipts (room_nid, receipt_type, user_id, thread_id, event_id,"
        " data_json, stream_pos) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (rnid, receipt_type, user_id, thread_id, event_id, json.dumps(data), stream_pos),
    )


def get_receipt(conn: Conn, room_id: str, receipt_type: str, user_id: str, thread_id: str = "") -> str | None:
    row = conn.execute(
        "SELECT r.event_id FROM receipts r JOIN rooms m ON m.room_nid = r.room_nid WHERE m.room_id = ?"
        " AND r.receipt_type = ? AND r.user_id = ? AND r.thread_id = ?",
        (room_id, receipt_type, user_id, thread_id),
    ).fetchone()
    return None if row is None else str(row[0])


def receipts_since(
    conn: Conn, room_ids: list[str], since: int, upto: int, viewer: str
) -> dict[str, list[tuple[str, str, str, str, dict[str, Any]]]]:
    """{room_id: [(event_id, receipt_type, user_id, thread_id, data)]} changed in (since, upto].

    Private receipts (m.read.private) are only given to their owner.
    """
    out: dict[str, list[tuple[str, str, str, str, dict[str, Any]]]] = {}
    if not room_ids:
        return out
    wanted = set(room_ids)
    for rid, eid, rtype, uid, tid, data in conn.execute(
        "SELECT m.room_id, r.event_id, r.receipt_type, r.user_id, r.thread_id, r.data_json"
        " FROM receipts r JOIN rooms m ON m.room_nid = r.room_nid"
        " WHERE r.stream_pos > ? AND r.stream_pos <= ?",
        (since, upto),
    ):
        if rid not in wanted:
            continue
        if rtype == "m.read.private" and uid != viewer:
            continue
        out.setdefault(rid, []).append((eid, rtype, uid, tid, json.loads(data)))
    return out


def insert_report(
    conn: Conn, room_id: str, event_id: str | None, user_id: str, reason: str | None, score: int | None, now: int
) -> None:
    conn.execute(
        "INSERT INTO event_reports (room_id, event_id, user_id, reason, score, received_ts)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (room_id, event_id, user_id, reason, score, now),
    )


def insert_user_report(conn: Conn, target_user_id: str, user_id: str, reason: str, now: int) -> None:
    conn.execute(
        "INSERT INTO user_reports (target_user_id, user_id, reason, received_ts) VALUES (?, ?, ?, ?)",
        (target_user_id, user_id, reason, now),
    )


def get_user_reports(conn: Conn, target_user_id: str) -> list[tuple[str, str, int]]:
    """(reporter, reason, received_ts) of every report about a user, oldest first."""
    return [
        (r[0], r[1], r[2])
        for r in conn.execute(
            "SELECT user_id, reason, received_ts FROM user_reports WHERE target_user_id = ?"
            " ORDER BY report_id",
            (target_user_id,),
        )
    ]
