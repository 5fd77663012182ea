"""The global stream counter that orders everything a client syncs.

Every row that /sync must deliver (timeline events, account data, receipts, to-device
messages, device-list changes, presence, membership changes) takes the next position
from :func:`next_stream_pos` inside the same transaction that writes it, and the writer
calls ``Notifier.notify(pos)`` once the transaction has committed. A sync token is the
highest position a client has seen.
"""

from __future__ import annotations

from pocketserver.storage.database import Conn


def next_stream_pos(conn: Conn) -> int:
    """Allocate the next position of the main stream (call inside a write transaction)."""
    (pos,) = conn.execute(
        "UPDATE stream_positions SET pos = pos + 1 WHERE name = 'main' RETURNING pos"
    ).fetchone()
    return int(pos)


def next_backfill_pos(conn: Conn) -> int:
    """Allocate a negative position for backfilled history (-1, -2, ... older first)."""
    (pos,) = conn.execute(
        "UPDATE stream_positions SET pos = pos + 1 WHERE name = 'backfill' RETURNING pos"
    ).fetchone()
    return -int(pos)


def current_stream_pos(conn: Conn) -> int:
    (pos,) = conn.execute("SELECT pos FROM stream_positions WHERE name = 'main'").fetchone()
    return int(pos)
