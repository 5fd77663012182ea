"""Application services' outbound queues and published room lists.

Events are not copied per AS: the pusher follows the main event stream and stores, per
AS, how far it has read (``appservice_state.stream_pos``). What it takes from the
stream goes into a transaction row (``appservice_txns``) in the same write that moves
the position, so a transaction, once built, is resent unchanged until the AS accepts
it (the spec: "Homeservers MUST NOT alter ... events they were going to send within
that transaction ID on retries"), across restarts too. Ephemeral data and to-device
messages are not in the event stream: their producers queue them in
``appservice_queue`` inside their own write transaction.

``appservice_rooms`` holds the rooms an AS published in its own per-network room
directories (``/directory/list/appservice/{networkId}/{roomId}``).
"""

from __future__ import annotations

from dataclasses import dataclass

from pocketserver.storage.database import Conn


@dataclass(frozen=True, slots=True)
class AsState:
    stream_pos: int
    next_txn_id: int
    last_success_ts: int | None
    failing_since_ts: int | None


@dataclass(frozen=True, slots=True)
class AsTxn:
    txn_id: int
    body: bytes
    n_events: int
    created_ts: int


def get_state(conn: Conn, as_id: str) -> AsState | None:
    row = conn.execute(
        "SELECT stream_pos, next_txn_id, last_success_ts, failing_since_ts FROM appservice_state"
        " WHERE as_id = ?",
        (as_id,),
    ).fetchone()
    return None if row is None else AsState(*row)


def ensure_state(conn: Conn, as_id: str, stream_pos: int) -> AsState:
    """The AS's state; a newly configured AS starts at ``stream_pos`` (no history)."""
    conn.execute(
        "INSERT OR IGNORE INTO appservice_state (as_id, stream_pos, next_txn_id) VALUES (?, ?, 1)",
        (as_id, stream_pos),
    )
    state = get_state(conn, as_id)
    assert state is not None
    return state


def set_stream_pos(conn: Conn, as_id: str, stream_pos: int) -> None:
    conn.execute("UPDATE appservice_state SET stream_pos = ? WHERE as_id = ?", (stream_pos, as_id))


def insert_txn(conn: Conn, as_id: str, body: bytes, n_events: int, now_ms: int, stream_pos: int) -> int:
    """Store the next transaction and move the stream position past what it holds."""
    (txn_id,) = conn.execute(
        "UPDATE appservice_state SET next_txn_id = next_txn_id + 1, stream_pos = ?"
        " WHERE as_id = ? RETURNING next_txn_id - 1",
        (stream_pos, as_id),
    ).fetchone()
    conn.execute(
        "INSERT INTO appservice_txns (as_id, txn_id, body, n_events, created_ts) VALUES (?, ?, ?, ?, ?)",
        (as_id, txn_id, body, n_events, now_ms),
    )
    return int(txn_id)


def oldest_txn(conn: Conn, as_id: str) -> AsTxn | None:
    row = conn.execute(
        "SELECT txn_id, body, n_events, created_ts FROM appservice_txns WHERE as_id = ?"
        " ORDER BY txn_id LIMIT 1",
        (as_id,),
    ).fetchone()
    return None if row is None else AsTxn(row[0], bytes(row[1]), row[2], row[3])


def queued_events(conn: Conn, as_id: str) -> int:
    (n,) = conn.execute(
        "SELECT coalesce(sum(n_events), 0) FROM appservice_txns WHERE as_id = ?", (as_id,)
    ).fetchone()
    return int(n)


def stream_page(conn: Conn, after: int, upto: int, limit: int) -> list[tuple[str, int]]:
    """Accepted events of the main stream in (after, upto], oldest first: (ID, position)."""
    return [
        (r[0], r[1])
        for r in conn.execute(
            "SELECT event_id, stream_pos FROM events WHERE stream_pos > ? AND stream_pos <= ?"
            " AND rejected_reason IS NULL ORDER BY stream_pos LIMIT ?",
            (after, upto, limit),
        )
    ]


def count_txns(conn: Conn, as_id: str) -> int:
    (n,) = conn.execute("SELECT count(*) FROM appservice_txns WHERE as_id = ?", (as_id,)).fetchone()
    return int(n)


def complete_txn(conn: Conn, as_id: str, txn_id: int, now_ms: int) -> None:
    conn.execute("DELETE FROM appservice_txns WHERE as_id = ? AND txn_id = ?", (as_id, txn_id))
    conn.execute(
        "UPDATE appservice_state SET last_success_ts = ?, failing_since_ts = NULL WHERE as_id = ?",
        (now_ms, as_id),
    )


def set_failing(conn: Conn, as_id: str, now_ms: int) -> None:
    conn.execute(
        "UPDATE appservice_state SET failing_since_ts = coalesce(failing_since_ts, ?) WHERE as_id = ?",
        (now_ms, as_id),
    )


# -- ephemeral and to-device items --------------------------------------------------------


def enqueue(conn: Conn, as_id: str, kind: str, payload: bytes) -> None:
    conn.execute(
        "INSERT INTO appservice_queue (as_id, kind, payload) VALUES (?, ?, ?)", (as_id, kind, payload)
    )


def queued(conn: Conn, as_id: str, limit: int) -> list[tuple[int, str, bytes]]:
    return [
        (r[0], r[1], bytes(r[2]))
        for r in conn.execute(
            "SELECT id, kind, payload FROM appservice_queue WHERE as_id = ? ORDER BY id LIMIT ?",
            (as_id, limit),
        )
    ]


def delete_queued_upto(conn: Conn, as_id: str, upto_id: int) -> None:
    conn.execute("DELETE FROM appservice_queue WHERE as_id = ? AND id <= ?", (as_id, upto_id))


def trim_queue(conn: Conn, as_id: str, keep: int) -> None:
    """Keep the newest ``keep`` items (an AS down for days must not grow it forever)."""
    conn.execute(
        "DELETE FROM appservice_queue WHERE as_id = ? AND id <= ("
        " SELECT id FROM appservice_queue WHERE as_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
        (as_id, as_id, keep),
    )


# -- published room lists -----------------------------------------------------------------


def set_room_published(conn: Conn, as_id: str, network_id: str, room_id: str, published: bool) -> None:
    if published:
        conn.execute(
            "INSERT OR IGNORE INTO appservice_rooms (as_id, network_id, room_id) VALUES (?, ?, ?)",
            (as_id, network_id, room_id),
        )
    else:
        conn.execute(
            "DELETE FROM appservice_rooms WHERE as_id = ? AND network_id = ? AND room_id = ?",
            (as_id, network_id, room_id),
        )


def published_rooms(conn: Conn, as_id: str | None = None, network_id: str | None = None) -> list[str]:
    """Rooms in AS room lists: one AS network's, or every one's (``as_id`` None)."""
    if as_id is None:
        rows = conn.execute("SELECT DISTINCT room_id FROM appservice_rooms")
    else:
        rows = conn.execute(
            "SELECT room_id FROM appservice_rooms WHERE as_id = ? AND network_id = ?", (as_id, network_id)
        )
    return [r[0] for r in rows]
