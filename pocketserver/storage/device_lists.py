"""Device-list change tracking: who must re-query whose keys (device_lists in /sync,
/keys/changes).

Spec: shared/spec/content/client-server-api/modules/end_to_end_encryption.md, "Tracking
the device list for a user" and "Extensions to /sync" (``device_lists.changed`` /
``left``). A change row is written, at a fresh main-stream position, whenever a user
publishes keys for a new device, deletes a device with keys, replaces cross-signing keys
or has a signature uploaded over them. Membership changes need no rows of their own:
``room_memberships.stream_pos`` already says when two users started or stopped sharing
a room.

"Sharing a room" means both users' membership is ``join``, as /keys/changes defines it.
"""

from __future__ import annotations

from pocketserver.storage.database import Conn

_SHARES_ROOM = (
    "EXISTS (SELECT 1 FROM room_memberships a JOIN room_memberships b"
    " ON b.room_nid = a.room_nid WHERE a.user_id = ? AND a.membership = 'join'"
    " AND b.user_id = {col} AND b.membership = 'join')"
)


def add_change(conn: Conn, stream_pos: int, user_id: str, only_for: str | None = None) -> None:
    """Record that ``user_id``'s keys changed (for everyone sharing a room, or one user)."""
    conn.execute(
        "INSERT INTO device_list_changes (stream_pos, user_id, only_for) VALUES (?, ?, ?)",
        (stream_pos, user_id, only_for),
    )


def shares_room(conn: Conn, user_id: str, other: str) -> bool:
    if user_id == other:
        return True
    row = conn.execute("SELECT " + _SHARES_ROOM.format(col="?"), (user_id, other)).fetchone()
    return bool(row and row[0])


def key_changes_seen_by(conn: Conn, user_id: str, after_pos: int, upto_pos: int) -> set[str]:
    """Users whose keys changed in (after_pos, upto_pos] and who share a room with
    ``user_id`` (the user themself included: their other devices must re-query)."""
    rows = conn.execute(
        "SELECT DISTINCT c.user_id FROM device_list_changes c"
        " WHERE c.stream_pos > ? AND c.stream_pos <= ?"
        " AND (c.only_for = ? OR (c.only_for IS NULL AND (c.user_id = ? OR "
        + _SHARES_ROOM.format(col="c.user_id")
        + ")))",
        (after_pos, upto_pos, user_id, user_id, user_id),
    )
    return {r[0] for r in rows}


def membership_changes(
    conn: Conn, user_id: str, after_pos: int, upto_pos: int
) -> tuple[set[str], set[str]]:
    """(newly sharing, maybe stopped sharing) users from joins and leaves in the range.

    Newly sharing: the other members of rooms ``user_id`` joined in the range, and users
    who joined or were invited to a room ``user_id`` is in. Stopped-sharing candidates: the members of rooms
    ``user_id`` left, and users who left one of ``user_id``'s rooms; the caller keeps
    only those who share no room any more.
    """
    joined_rooms_now = (
        "SELECT room_nid FROM room_memberships WHERE user_id = ? AND membership = 'join'"
    )
    new: set[str] = set()
    # Rooms I joined in the range: everyone joined there.
    rows = conn.execute(
        "SELECT DISTINCT theirs.user_id FROM room_memberships mine"
        " JOIN room_memberships theirs ON theirs.room_nid = mine.room_nid"
        " WHERE mine.user_id = ? AND mine.membership = 'join'"
        " AND mine.stream_pos > ? AND mine.stream_pos <= ?"
        " AND theirs.membership = 'join' AND theirs.user_id != ?",
        (user_id, after_pos, upto_pos, user_id),
    )
    new.update(r[0] for r in rows)
    # Others who joined my rooms in the range.
    rows = conn.execute(
        "SELECT DISTINCT user_id FROM room_memberships WHERE room_nid IN ("
        + joined_rooms_now
        + ") AND membership = 'join' AND stream_pos > ? AND stream_pos <= ? AND user_id != ?",
        (user_id, after_pos, upto_pos, user_id),
    )
    new.update(r[0] for r in rows)
    # Others invited to my rooms in the range: a client may share the room's keys with
    # them before they join (end_to_end_encryption.md, "Sharing keys between users").
    rows = conn.execute(
        "SELECT DISTINCT user_id FROM room_memberships WHERE room_nid IN ("
        + joined_rooms_now
        + ") AND membership = 'invite' AND stream_pos > ? AND stream_pos <= ? AND user_id != ?",
        (user_id, after_pos, upto_pos, user_id),
    )
    new.update(r[0] for r in rows)

    gone: set[str] = set()
    # Rooms I left (or was kicked / banned from) in the range: everyone still there.
    rows = conn.execute(
        "SELECT DISTINCT theirs.user_id FROM room_memberships mine"
        " JOIN room_memberships theirs ON theirs.room_nid = mine.room_nid"
        " WHERE mine.user_id = ? AND mine.membership IN ('leave', 'ban')"
        " AND mine.stream_pos > ? AND mine.stream_pos <= ?"
        " AND theirs.membership = 'join' AND theirs.user_id != ?",
        (user_id, after_pos, upto_pos, user_id),
    )
    gone.update(r[0] for r in rows)
    # Others who left my rooms in the range.
    rows = conn.execute(
        "SELECT DISTINCT user_id FROM room_memberships WHERE room_nid IN ("
        + joined_rooms_now
        + ") AND membership IN ('leave', 'ban') AND stream_pos > ? AND stream_pos <= ?"
        " AND user_id != ?",
        (user_id, after_pos, upto_pos, user_id),
    )
    gone.update(r[0] for r in rows)
    return new, gone


def device_list_delta(
    conn: Conn, user_id: str, after_pos: int, upto_pos: int
) -> tuple[list[str], list[str]]:
    """(changed, left) for /sync's ``device_lists`` and /keys/changes, sorted."""
    changed = key_changes_seen_by(conn, user_id, after_pos, upto_pos)
    new, gone = membership_changes(conn, user_id, after_pos, upto_pos)
    changed |= new
    left = {u for u in gone if not shares_room(conn, user_id, u)}
    changed -= left
    return sorted(changed), sorted(left)
