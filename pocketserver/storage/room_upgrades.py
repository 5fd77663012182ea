"""What a room upgrade moves from the old room to its replacement in storage:
local aliases and the room directory listing (one transaction)."""

from __future__ import annotations

from pocketserver.storage.database import Conn


def move_aliases_and_listing(conn: Conn, old_room_id: str, new_room_id: str) -> list[str]:
    """Point the old room's aliases at the new room and move its directory listing.

    Returns the moved aliases.
    """
    aliases = [
        r[0]
        for r in conn.execute(
            "SELECT alias FROM room_aliases WHERE room_id = ? ORDER BY alias", (old_room_id,)
        )
    ]
    conn.execute("UPDATE room_aliases SET room_id = ? WHERE room_id = ?", (new_room_id, old_room_id))
    row = conn.execute("SELECT is_public FROM rooms WHERE room_id = ?", (old_room_id,)).fetchone()
    if row is not None and row[0]:
        conn.execute("UPDATE rooms SET is_public = 1 WHERE room_id = ?", (new_room_id,))
        conn.execute("UPDATE rooms SET is_public = 0 WHERE room_id = ?", (old_room_id,))
    return aliases
