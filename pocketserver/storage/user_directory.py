"""What the user directory searches: users visible to a requester, with their profiles.

No table of its own: the directory is read from room memberships (who is joined
where), the rooms' current join rules and history visibility, the member events
(display names of remote users) and the ``users`` table (local profiles, which win).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pocketserver.storage.database import Conn
from pocketserver.storage.events import decode_pdu

Profile = tuple[str | None, str | None]


def _content(blob: bytes) -> dict[str, Any]:
    content = decode_pdu(blob).get("content")
    return content if isinstance(content, dict) else {}


def public_room_ids(conn: Conn) -> list[str]:
    """Rooms whose join rule is ``public`` or whose history is ``world_readable``, and
    that this server is in (a local user is joined): once the server has left a room,
    its state is no longer kept current, so its members are no longer listed."""
    out: list[str] = []
    for room_id, etype, blob in conn.execute(
        "SELECT r.room_id, k.type, e.json FROM current_state c"
        " JOIN state_keys k ON k.sk_nid = c.sk_nid"
        " JOIN rooms r ON r.room_nid = c.room_nid JOIN events e ON e.event_nid = c.event_nid"
        " WHERE k.state_key = '' AND k.type IN ('m.room.join_rules', 'm.room.history_visibility')"
        " AND EXISTS (SELECT 1 FROM room_memberships m WHERE m.room_nid = c.room_nid"
        " AND m.is_local = 1 AND m.membership = 'join')"
    ):
        content = _content(blob)
        if (etype == "m.room.join_rules" and content.get("join_rule") == "public") or (
            etype == "m.room.history_visibility"
            and content.get("history_visibility") == "world_readable"
        ):
            out.append(room_id)
    return sorted(set(out))


def shared_room_ids(conn: Conn, user_id: str) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT r.room_id FROM room_memberships m JOIN rooms r ON r.room_nid = m.room_nid"
            " WHERE m.user_id = ? AND m.membership = 'join'",
            (user_id,),
        )
    ]


def joined_member_profiles(conn: Conn, room_ids: Iterable[str]) -> dict[str, Profile]:
    """{user_id: (displayname, avatar_url)} of the users joined to ``room_ids``, from
    their member events (the newest one when a user is in several rooms)."""
    out: dict[str, tuple[int, Profile]] = {}
    for room_id in room_ids:
        for user_id, pos, blob in conn.execute(
            "SELECT m.user_id, m.stream_pos, e.json FROM room_memberships m"
            " JOIN rooms r ON r.room_nid = m.room_nid JOIN events e ON e.event_nid = m.event_nid"
            " WHERE r.room_id = ? AND m.membership = 'join'",
            (room_id,),
        ):
            seen = out.get(user_id)
            if seen is not None and seen[0] >= pos:
                continue
            content = _content(blob)
            name = content.get("displayname")
            avatar = content.get("avatar_url")
            out[user_id] = (
                pos,
                (name if isinstance(name, str) else None, avatar if isinstance(avatar, str) else None),
            )
    return {u: p for u, (_, p) in out.items()}


def local_profiles(conn: Conn, user_ids: Iterable[str]) -> dict[str, Profile | None]:
    """{user_id: (displayname, avatar_url)} for local users; None for deactivated ones."""
    out: dict[str, Profile | None] = {}
    for uid in user_ids:
        row = conn.execute(
            "SELECT displayname, avatar_url, deactivated FROM users WHERE user_id = ?", (uid,)
        ).fetchone()
        if row is not None:
            out[uid] = None if row[2] else (row[0], row[1])
    return out
