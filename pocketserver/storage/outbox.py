"""The federation outbox and the destinations' back-off (federation/sender.py).

``federation_outbox`` holds every PDU and persistent EDU queued for another server, one
row per (destination, item), in the order they were queued (the rowid); a row is deleted
once the destination acknowledged the transaction that carried it. ``destinations``
records each failing server's back-off, so a restart does not hammer a server that was
down.

Also here: which other servers take part in a room or share one with a user, read
through the partial index over remote joined members (migration 3), so a room without
remote members costs one empty index probe.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pocketserver.storage.database import Conn

PDU = "pdu"
EDU = "edu"


def _server_of(user_id: str) -> str:
    return user_id.split(":", 1)[1] if ":" in user_id else ""


# -- who is where -------------------------------------------------------------------------


def remote_servers_in_room(conn: Conn, room_id: str) -> set[str]:
    """Other servers with at least one joined member in ``room_id``."""
    rows = conn.execute(
        "SELECT m.user_id FROM room_memberships m"
        " WHERE m.room_nid = (SELECT room_nid FROM rooms WHERE room_id = ?)"
        " AND m.is_local = 0 AND m.membership = 'join'",
        (room_id,),
    )
    return {_server_of(r[0]) for r in rows}


def remote_servers_sharing_rooms(conn: Conn, user_id: str) -> set[str]:
    """Other servers with a joined member in a room where ``user_id`` is joined."""
    rows = conn.execute(
        "SELECT DISTINCT o.user_id FROM room_memberships m"
        " JOIN room_memberships o ON o.room_nid = m.room_nid"
        " AND o.is_local = 0 AND o.membership = 'join'"
        " WHERE m.user_id = ? AND m.membership = 'join'",
        (user_id,),
    )
    return {_server_of(r[0]) for r in rows}


def any_remote_members(conn: Conn) -> bool:
    row = conn.execute(
        "SELECT 1 FROM room_memberships WHERE is_local = 0 AND membership = 'join' LIMIT 1"
    ).fetchone()
    return row is not None


# -- the outbox ---------------------------------------------------------------------------


def enqueue(
    conn: Conn, destinations: Iterable[str], kind: str, payload: bytes, now_ms: int
) -> None:
    conn.executemany(
        "INSERT INTO federation_outbox (destination, kind, payload, created_ts)"
        " VALUES (?, ?, ?, ?)",
        ((d, kind, payload, now_ms) for d in destinations),
    )


def destinations_with_work(conn: Conn) -> list[str]:
    """Every destination with queued items (a skip-scan of the outbox index)."""
    out: list[str] = []
    row = conn.execute(
        "SELECT destination FROM federation_outbox ORDER BY destination LIMIT 1"
    ).fetchone()
    while row is not None:
        out.append(row[0])
        row = conn.execute(
            "SELECT destination FROM federation_outbox WHERE destination > ?"
            " ORDER BY destination LIMIT 1",
            (row[0],),
        ).fetchone()
    return out


def ack_and_read(
    conn: Conn, destination: str, acked: Sequence[int], limit: int
) -> list[tuple[int, str, bytes]]:
    """Delete the acknowledged items, then the next ``limit`` (id, kind, payload) rows
    of ``destination`` in queue order."""
    if acked:
        conn.executemany(
            "DELETE FROM federation_outbox WHERE id = ? AND destination = ?",
            ((i, destination) for i in acked),
        )
    return [
        (int(r[0]), r[1], bytes(r[2]))
        for r in conn.execute(
            "SELECT id, kind, payload FROM federation_outbox WHERE destination = ?"
            " ORDER BY id LIMIT ?",
            (destination, limit),
        )
    ]


def count_queued(conn: Conn, destination: str, kind: str | None = None) -> int:
    if kind is None:
        row = conn.execute(
            "SELECT count(*) FROM federation_outbox WHERE destination = ?", (destination,)
        ).fetchone()
    else:
        row = conn.execute(
            "SELECT count(*) FROM federation_outbox WHERE destination = ? AND kind = ?",
            (destination, kind),
        ).fetchone()
    return int(row[0])


def trim_pdus(conn: Conn, destination: str, keep: int) -> int:
    """Drop ``destination``'s oldest queued PDUs beyond the newest ``keep``; return how
    many were dropped. (The remote fills the hole with get_missing_events / backfill.)"""
    row = conn.execute(
        "SELECT id FROM federation_outbox WHERE destination = ? AND kind = 'pdu'"
        " ORDER BY id DESC LIMIT 1 OFFSET ?",
        (destination, keep),
    ).fetchone()
    if row is None:
        return 0
    conn.execute(
        "DELETE FROM federation_outbox WHERE destination = ? AND kind = 'pdu' AND id <= ?",
        (destination, row[0]),
    )
    return int(conn.changes())


# -- back-off -----------------------------------------------------------------------------


def backoffs(conn: Conn) -> dict[str, tuple[int, int]]:
    """destination -> (retry_last_ts, retry_interval ms) for every failing destination."""
    return {
        r[0]: (int(r[1] or 0), int(r[2]))
        for r in conn.execute(
            "SELECT destination, retry_last_ts, retry_interval FROM destinations"
            " WHERE retry_interval > 0"
        )
    }


def set_backoff(conn: Conn, destination: str, now_ms: int, interval_ms: int) -> None:
    conn.execute(
        "INSERT INTO destinations (destination, failure_ts, retry_last_ts, retry_interval)"
        " VALUES (?, ?, ?, ?) ON CONFLICT (destination) DO UPDATE SET"
        " failure_ts = coalesce(failure_ts, excluded.failure_ts),"
        " retry_last_ts = excluded.retry_last_ts, retry_interval = excluded.retry_interval",
        (destination, now_ms, now_ms, interval_ms),
    )


def clear_backoff(conn: Conn, destination: str) -> None:
    conn.execute(
        "UPDATE destinations SET failure_ts = NULL, retry_last_ts = NULL, retry_interval = 0"
        " WHERE destination = ?",
        (destination,),
    )
