"""Pending send-to-device messages and the transaction IDs of non-event endpoints.

Spec: shared/spec/content/client-server-api/modules/send_to_device.md. A message stays
until its device acknowledges it by syncing with a token at or past its position
(:func:`delete_acknowledged`); it is never dropped earlier, and it survives restarts
because it is a row like any other.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from pocketserver.storage.database import Conn

JsonDict = dict[str, Any]


def insert_messages(
    conn: Conn,
    stream_pos: int,
    sender: str,
    event_type: str,
    messages: Iterable[tuple[str, str, str]],
    message_id: str | None = None,
) -> int:
    """Queue (user_id, device_id, content JSON text) rows at one stream position."""
    rows = [
        (user_id, device_id, stream_pos, sender, event_type, content, message_id)
        for user_id, device_id, content in messages
    ]
    conn.executemany(
        "INSERT OR REPLACE INTO to_device_messages (user_id, device_id, stream_pos, sender,"
        " type, content, message_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    return len(rows)


def get_messages(
    conn: Conn, user_id: str, device_id: str, after_pos: int, upto_pos: int, limit: int
) -> list[tuple[int, JsonDict]]:
    """Up to ``limit`` messages in (after_pos, upto_pos], oldest first, as (pos, event)."""
    rows = conn.execute(
        "SELECT stream_pos, sender, type, content FROM to_device_messages"
        " WHERE user_id = ? AND device_id = ? AND stream_pos > ? AND stream_pos <= ?"
        " ORDER BY stream_pos LIMIT ?",
        (user_id, device_id, after_pos, upto_pos, limit),
    )
    return [
        (pos, {"sender": sender, "type": type_, "content": json.loads(content)})
        for pos, sender, type_, content in rows
    ]


def delete_acknowledged(conn: Conn, user_id: str, device_id: str, upto_pos: int) -> int:
    """Delete the device's messages at or before ``upto_pos``; the number deleted."""
    conn.execute(
        "DELETE FROM to_device_messages WHERE user_id = ? AND device_id = ? AND stream_pos <= ?",
        (user_id, device_id, upto_pos),
    )
    return conn.changes()


def has_acknowledged(conn: Conn, user_id: str, device_id: str, upto_pos: int) -> bool:
    return (
        conn.execute(
            "SELECT 1 FROM to_device_messages WHERE user_id = ? AND device_id = ?"
            " AND stream_pos <= ? LIMIT 1",
            (user_id, device_id, upto_pos),
        ).fetchone()
        is not None
    )


def count_pending(conn: Conn, user_id: str, device_id: str) -> int:
    row = conn.execute(
        "SELECT COUNT(*) FROM to_device_messages WHERE user_id = ? AND device_id = ?",
        (user_id, device_id),
    ).fetchone()
    return int(row[0]) if row else 0


def delete_device_messages(conn: Conn, user_id: str, device_id: str) -> None:
    conn.execute(
        "DELETE FROM to_device_messages WHERE user_id = ? AND device_id = ?", (user_id, device_id)
    )


def list_device_ids(conn: Conn, user_id: str) -> list[str]:
    """The user's devices that can receive messages (for ``*``)."""
    rows = conn.execute(
        "SELECT device_id FROM devices WHERE user_id = ? AND hidden = 0 ORDER BY device_id",
        (user_id,),
    )
    return [r[0] for r in rows]


# -- transaction IDs ------------------------------------------------------------------------


def get_txn_response(
    conn: Conn, user_id: str, device_id: str, endpoint: str, txn_id: str
) -> JsonDict | None:
    row = conn.execute(
        "SELECT response_json FROM client_txns WHERE user_id = ? AND device_id = ?"
        " AND endpoint = ? AND txn_id = ?",
        (user_id, device_id, endpoint, txn_id),
    ).fetchone()
    return json.loads(row[0]) if row else None


def put_txn_response(
    conn: Conn,
    user_id: str,
    device_id: str,
    endpoint: str,
    txn_id: str,
    response: JsonDict,
    now_ms: int,
) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO client_txns (user_id, device_id, endpoint, txn_id,"
        " response_json, created_ts) VALUES (?, ?, ?, ?, ?, ?)",
        (user_id, device_id, endpoint, txn_id, json.dumps(response), now_ms),
    )


def delete_old_txns(conn: Conn, before_ms: int) -> int:
    conn.execute("DELETE FROM client_txns WHERE created_ts < ?", (before_ms,))
    return conn.changes()


def queue_federation_edu(conn: Conn, destination: str, edu: JsonDict, now_ms: int) -> None:
    """Queue an EDU (``{"edu_type", "content"}``, as JSON) for the federation sender."""
    conn.execute(
        "INSERT INTO federation_outbox (destination, kind, payload, created_ts)"
        " VALUES (?, 'edu', ?, ?)",
        (destination, json.dumps(edu, separators=(",", ":")).encode("utf-8"), now_ms),
    )
