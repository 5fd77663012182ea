"""The user directory (client-server API "User directory"): POST /user_directory/search.

Searched: users sharing a room with the requester (not the requester), and users
joined to rooms with a ``public`` join rule or ``world_readable`` history (the spec's
minimum, and Synapse's default). Matching is case-insensitive: every word of the search term must start a
word of the user ID or the display name (or appear in the user ID). Results are
ranked exact match, then prefix of the display name / localpart, then others, with
users who have a profile first within each rank.
"""

from __future__ import annotations

import re
from typing import Any

from pocketserver.errors import InvalidParam
from pocketserver.protocol.identifiers import is_valid_user_id
from pocketserver.services.auth import Requester
from pocketserver.storage import user_directory as ud_store
from pocketserver.storage.database import Conn, Database

JsonDict = dict[str, Any]

DEFAULT_LIMIT = 10
MAX_LIMIT = 100
_WORDS = re.compile(r"[\w]+", re.UNICODE)


def _rank(user_id: str, name: str | None, terms: list[str], whole: str) -> int | None:
    """Lower is better; None: no match."""
    uid = user_id.lower()
    localpart = uid[1:].split(":", 1)[0]
    display = (name or "").lower()
    words = set(_WORDS.findall(uid)) | set(_WORDS.findall(display))
    for t in terms:
        if t in uid:
            continue
        if not any(w.startswith(t) for w in words):
            return None
    if whole in (display, localpart, uid):
        return 0
    if display.startswith(whole) or localpart.startswith(whole) or uid.startswith("@" + whole):
        return 1
    return 2


class UserDirectoryService:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def search(self, requester: Requester, term: str, limit: int | None) -> JsonDict:
        n = max(0, min(limit if limit is not None else DEFAULT_LIMIT, MAX_LIMIT))
        whole = term.strip().lower()
        terms = [t for t in _WORDS.findall(whole)] or ([whole] if whole else [])

        def run(conn: Conn) -> JsonDict:
            public = set(ud_store.public_room_ids(conn))
            mine = set(ud_store.shared_room_ids(conn, requester.user_id))
            profiles = ud_store.joined_member_profiles(conn, sorted(public | mine))
            if not mine & public:
                # A private room makes its members visible to each other, not the
                # searcher to themselves: one finds oneself through public rooms only
                # (so closing a room takes its members out of the directory).
                profiles.pop(requester.user_id, None)
            local = ud_store.local_profiles(conn, profiles)
            scored: list[tuple[int, int, str, JsonDict]] = []
            for user_id, profile in profiles.items():
                if user_id in local:
                    lp = local[user_id]
                    if lp is None:
                        continue  # deactivated
                    profile = lp
                name, avatar = profile
                rank = _rank(user_id, name, terms, whole) if whole else None
                if rank is None:
                    continue
                entry: JsonDict = {"user_id": user_id}
                if name:
                    entry["display_name"] = name
                if avatar:
                    entry["avatar_url"] = avatar
                scored.append((rank, 0 if name and avatar else 1 if name or avatar else 2, user_id, entry))
            scored.sort(key=lambda s: (s[0], s[1], s[2]))
            return {"results": [s[3] for s in scored[:n]], "limited": len(scored) > n}

        return await self.db.read(run)

    async def mutual_rooms(self, requester: Requester, user_id: str, from_token: str | None) -> JsonDict:
        """GET /mutual_rooms: rooms both users are joined to (all in one batch)."""
        if not is_valid_user_id(user_id, strict=True) or user_id == requester.user_id:
            raise InvalidParam("The user ID provided was invalid")
        if from_token is not None:
            # Every answer is complete, so no token was ever handed out.
            raise InvalidParam("Unknown pagination token")

        def run(conn: Conn) -> JsonDict:
            mine = set(ud_store.shared_room_ids(conn, requester.user_id))
            theirs = set(ud_store.shared_room_ids(conn, user_id))
            joined = sorted(mine & theirs)
            return {"joined": joined, "count": len(joined)}

        return await self.db.read(run)
