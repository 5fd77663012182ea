"""Keeping rooms in step with accounts: profile changes and deactivation.

* Profile change (``AccountsService.on_profile_changed``): a new ``m.room.member``
  event (still ``join``, same other content, new ``displayname`` / ``avatar_url``) in
  every room the user is joined to, as other servers and clients read names from
  member events.
* Deactivation (``AccountsService.on_deactivate``): the user leaves every room they
  are joined to, invited to or knocking on.

A failure in one room (a power level forbidding it, say) is logged and the others
still get their update.
"""

from __future__ import annotations

import logging
from typing import Any

from pocketserver.errors import MatrixError
from pocketserver.services.auth import Requester
from pocketserver.services.rooms import RoomService
from pocketserver.storage import accounts
from pocketserver.storage import events as ev_store
from pocketserver.storage import state as state_store
from pocketserver.storage.database import Database

log = logging.getLogger(__name__)


class MemberProfiles:
    def __init__(self, db: Database, rooms: RoomService) -> None:
        self.db = db
        self.rooms = rooms

    async def on_profile_changed(self, user_id: str) -> None:
        user = await self.db.read(accounts.get_user, user_id)
        if user is None:
            return
        profile: dict[str, Any] = {"displayname": user.get("displayname"), "avatar_url": user.get("avatar_url")}
        joined = await self.db.read(state_store.rooms_for_user, user_id, ("join",))
        for room_id in sorted(joined):
            m = await self.db.read(state_store.get_membership, room_id, user_id)
            if m is None or m[0] != "join":
                continue
            current = await self.db.read(ev_store.get_event, m[1])
            content = dict(current.event.content) if current is not None else {"membership": "join"}
            updated = dict(content)
            for key, value in profile.items():
                if value is None:
                    updated.pop(key, None)
                else:
                    updated[key] = value
            updated.pop("join_authorised_via_users_server", None)
            if updated == content:
                continue
            info = await self.db.read(ev_store.get_room, room_id)
            if info is None:
                continue
            try:
                await self.rooms.pipeline.create_room_event(
                    room_id, info.room_version, user_id, "m.room.member", updated, state_key=user_id
                )
            except MatrixError as e:
                log.warning("profile update of %s in %s refused: %s", user_id, room_id, e)

    async def on_deactivate(self, user_id: str) -> None:
        rooms = await self.db.read(state_store.rooms_for_user, user_id, ("join", "invite", "knock"))
        requester = Requester(user_id, None)
        for room_id in sorted(rooms):
            try:
                await self.rooms.update_membership(requester, room_id, user_id, "leave")
            except MatrixError as e:
                log.warning("deactivated %s could not leave %s: %s", user_id, room_id, e)
