"""Self-destructing messages (MSC2228, ``org.matrix.self_destruct_after``): when each
event's content is to be destroyed, and the destroying.

The content goes the way a redaction takes it (the event keeps its place in the room's
graph, its hashes and signatures), but without a redaction event: ``expired_ts``
records when, and is part of the decoded-event cache's key (storage/events.py).
"""

from __future__ import annotations

from typing import Any

from pocketserver.storage import events as ev_store
from pocketserver.storage.database import Conn
from pocketserver.storage.events import encode_pdu


def insert_expiry(conn: Conn, event_id: str, expiry_ts: int) -> None:
    nid = ev_store.event_nid(conn, event_id)
    if nid is not None:
        conn.execute(
            "INSERT OR REPLACE INTO event_expiry (event_nid, expiry_ts) VALUES (?, ?)", (nid, expiry_ts)
        )


def next_expiry_ts(conn: Conn) -> int | None:
    """When the soonest expiry is due, or None when no event is waiting for one."""
    (ts,) = conn.execute("SELECT MIN(expiry_ts) FROM event_expiry").fetchone()
    return None if ts is None else int(ts)


def due_expiries(conn: Conn, now_ms: int, limit: int) -> list[tuple[int, str | None]]:
    """(row, event ID) of the expiries due at ``now_ms``, soonest first, at most
    ``limit``; the event ID is None when the event is no longer stored."""
    return [
        (int(r[0]), None if r[1] is None else str(r[1]))
        for r in conn.execute(
            "SELECT x.event_nid, e.event_id FROM event_expiry x LEFT JOIN events e ON e.event_nid = x.event_nid"
            " WHERE x.expiry_ts <= ? ORDER BY x.expiry_ts LIMIT ?",
            (now_ms, limit),
        )
    ]


def count_pending(conn: Conn) -> int:
    (n,) = conn.execute("SELECT COUNT(*) FROM event_expiry").fetchone()
    return int(n)


def delete_expiry(conn: Conn, row: int) -> None:
    conn.execute("DELETE FROM event_expiry WHERE event_nid = ?", (row,))


def expire_event(conn: Conn, event_id: str, pruned_pdu: dict[str, Any], now_ms: int) -> None:
    """Replace the event's stored PDU with ``pruned_pdu`` (the original is not kept),
    drop it from search and relations, and forget its expiry."""
    nid = ev_store.event_nid(conn, event_id)
    if nid is None:
        return
    conn.execute(
        "UPDATE events SET json = ?, expired_ts = ? WHERE event_nid = ?", (encode_pdu(pruned_pdu), now_ms, nid)
    )
    conn.execute("DELETE FROM event_search WHERE rowid = ?", (nid,))
    conn.execute("DELETE FROM event_relations WHERE event_nid = ?", (nid,))
    conn.execute("DELETE FROM event_expiry WHERE event_nid = ?", (nid,))
