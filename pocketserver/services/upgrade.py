"""Room upgrades (client-server API "Room Upgrades", server behaviour steps 1-6).

1. The requester must be joined and able to send ``m.room.tombstone`` in the old room.
2. A replacement room is created whose ``m.room.create`` names the ``predecessor``
   and copies the old room's ``type`` (and ``m.federate``); in v12 the
   ``additional_creators`` come from the request only.
3. Transferable state is replicated: power levels (adjusted for the new version's
   creator rules), join rules, history visibility, guest access, name, topic,
   avatar, encryption, server ACL, space children; bans are carried over.
4. Local aliases and the directory listing move to the new room, and the canonical
   alias with them (removed from the old room).
5. ``m.room.tombstone`` is sent to the old room.
6. The old room's power levels are raised so that ordinary users can no longer send
   or invite (``events_default`` and ``invite`` to max(50, users_default + 1)).

The whole upgrade is shielded from cancellation: a client hanging up half way must
not leave a half-copied room behind.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from typing import Any

import trio

from pocketserver.errors import Forbidden, InvalidParam, MatrixError
from pocketserver.protocol.identifiers import is_valid_user_id
from pocketserver.protocol.power_levels import PowerLevels
from pocketserver.protocol.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from pocketserver.services.auth import Requester
from pocketserver.services.events import EventPipeline
from pocketserver.services.rooms import RoomService
from pocketserver.storage import account_data as ad_store
from pocketserver.storage import events as ev_store
from pocketserver.storage import room_upgrades as upgrade_store
from pocketserver.storage import state as state_store
from pocketserver.storage.database import Conn, Database
from pocketserver.storage.events import EventRecord

log = logging.getLogger(__name__)

JsonDict = dict[str, Any]

# State copied as is (recommended list of the spec, plus the space's children).
COPIED_STATE = (
    "m.room.server_acl",
    "m.room.encryption",
    "m.room.name",
    "m.room.avatar",
    "m.room.topic",
    "m.room.guest_access",
    "m.room.history_visibility",
    "m.room.join_rules",
)
COPIED_STATE_ANY_KEY = ("m.space.child",)


class UpgradeService:
    def __init__(self, db: Database, rooms: RoomService, pipeline: EventPipeline) -> None:
        self.db = db
        self.rooms = rooms
        self.pipeline = pipeline
        self.server_name = rooms.server_name
        self._locks: dict[str, trio.Lock] = {}

    async def upgrade(
        self,
        requester: Requester,
        room_id: str,
        new_version: str,
        additional_creators: Sequence[str] | None = None,
    ) -> str:
        requester.refuse_if_suspended()
        rv = KNOWN_ROOM_VERSIONS.get(new_version)
        if rv is None:
            raise MatrixError(400, "M_UNSUPPORTED_ROOM_VERSION", "This server does not support that room version")
        extra_creators: list[str] = []
        if additional_creators is not None:
            if not isinstance(additional_creators, list) or not all(
                isinstance(u, str) and is_valid_user_id(u) for u in additional_creators
            ):
                raise InvalidParam("additional_creators must be a list of user IDs")
            if rv.privileged_creators:
                extra_creators = [u for u in dict.fromkeys(additional_creators) if u != requester.user_id]
        lock = self._locks.setdefault(room_id, trio.Lock())
        new_room = ""
        with trio.CancelScope(shield=True):
            async with lock:
                try:
                    new_room = await self._upgrade(requester, room_id, rv, extra_creators)
                finally:
                    if not lock.statistics().tasks_waiting:
                        self._locks.pop(room_id, None)
        return new_room

    async def on_membership(self, room_id: str, user_id: str, membership: str) -> None:
        """A local user joining a room that replaced another takes their settings for
        the old room along (room_upgrades.md: "the server should automatically
        transfer/replicate some of the user's personalized settings"): the new room
        is direct where the old one was (m.direct), and gets the old room's tags."""
        if membership != "join" or not user_id.endswith(f":{self.server_name}"):
            return
        create = await self.rooms.current_state_event(room_id, "m.room.create") or {}
        predecessor = create.get("predecessor")
        old = predecessor.get("room_id") if isinstance(predecessor, dict) else None
        if not isinstance(old, str) or old == room_id:
            return
        pos = await self.db.write(_carry_settings_over, user_id, old, room_id)
        if pos is not None:
            self.pipeline.notifier.notify(pos)
        await self.db.write(_follow_tombstone, old, room_id)

    async def _state(self, room_id: str) -> dict[tuple[str, str], EventRecord]:
        ids = await self.db.read(state_store.get_current_state_ids, room_id)
        recs = await self.db.read(ev_store.get_events, ids.values())
        return {k: recs[e] for k, e in ids.items() if e in recs}

    async def _upgrade(
        self, requester: Requester, room_id: str, rv: RoomVersion, extra_creators: list[str]
    ) -> str:
        user_id = requester.user_id
        if await self.db.read(ev_store.get_room, room_id) is None:
            # room_upgrades.yaml's 403 is for a room one may not upgrade; a room this
            # server has never heard of is simply not there (room IDs are not guessable,
            # so this tells a prober nothing).
            raise MatrixError(404, "M_NOT_FOUND", "Unknown room")
        info = await self.rooms.get_room_for_sender(room_id)
        if await self.rooms.membership(room_id, user_id) != "join":
            raise Forbidden("You are not joined to this room")
        old_rv = info.room_version
        state = await self._state(room_id)
        create = state.get(("m.room.create", ""))
        pl_rec = state.get(("m.room.power_levels", ""))
        old_pl = PowerLevels.from_events(
            create.event if create else None, pl_rec.event if pl_rec else None, old_rv
        )
        # Step 1: permission to send the tombstone.
        if old_pl.user_level(user_id) < old_pl.send_level("m.room.tombstone", True):
            raise Forbidden("You cannot upgrade this room")
        if state.get(("m.room.tombstone", "")) is not None:
            tomb = state[("m.room.tombstone", "")].event.content
            if isinstance(tomb.get("replacement_room"), str):
                raise MatrixError(400, "M_BAD_STATE", "This room has already been upgraded")

        # Step 2: the replacement room.
        old_create = dict(create.event.content) if create else {}
        content: JsonDict = {"room_version": rv.identifier}
        for key in ("type", "m.federate"):
            if key in old_create:
                content[key] = old_create[key]
        predecessor: JsonDict = {"room_id": room_id}
        content["predecessor"] = predecessor
        if not rv.implicit_room_creator:
            content["creator"] = user_id
        if extra_creators:
            content["additional_creators"] = extra_creators
        canonical = state.get(("m.room.canonical_alias", ""))
        tombstone: JsonDict = {"body": "This room has been replaced"}

        async def build_replacement(new_id: str | None) -> str:
            """Steps 2-4, sending only to the new room."""
            created = await self.pipeline.create_create_event(rv, user_id, content, new_id)
            new_room = created.record.event.room_id
            await self.rooms.update_membership(requester, new_room, user_id, "join")
            await self._copy_state(requester, new_room, state, old_pl, pl_rec, rv, extra_creators)
            await self.db.write(upgrade_store.move_aliases_and_listing, room_id, new_room)
            if canonical is not None and canonical.event.content:
                await self._try_send(requester, new_room, "m.room.canonical_alias", canonical.event.content, "")
            return new_room

        if rv.room_id_is_create_event_hash:
            # v12: the new room's ID comes from its create event, so the tombstone (which
            # names it) can only follow; predecessor.event_id names the old room's last
            # event (it may be omitted from v12 on, room_upgrades.md).
            extremities = await self.db.read(ev_store.forward_extremities, room_id)
            if extremities:
                predecessor["event_id"] = extremities[0][0]
            new_room = await build_replacement(None)
            tombstone["replacement_room"] = new_room
            await self.rooms.send_event(requester, room_id, "m.room.tombstone", tombstone, state_key="")
        else:
            # Step 5's tombstone is built first (its ID is the old room's last event, which
            # predecessor.event_id names), the replacement made, then the tombstone stored;
            # if making the replacement fails, no tombstone appears.
            new_room = f"!{secrets.token_urlsafe(18)}:{self.server_name}"
            tombstone["replacement_room"] = new_room

            async def before_tombstone(tombstone_id: str) -> None:
                predecessor["event_id"] = tombstone_id
                await build_replacement(new_room)

            await self.pipeline.create_room_event(
                room_id, old_rv, user_id, "m.room.tombstone", tombstone, state_key="",
                before_persist=before_tombstone,
            )
        if canonical is not None and canonical.event.content:
            await self._try_send(requester, room_id, "m.room.canonical_alias", {}, "")
        # Step 6: stop ordinary users from talking in (or inviting to) the old room.
        if pl_rec is not None:
            restricted = max(50, old_pl.users_default + 1)
            if old_pl.events_default < restricted or old_pl.invite < restricted:
                lowered = {**pl_rec.event.content, "events_default": restricted, "invite": restricted}
                await self._try_send(requester, room_id, "m.room.power_levels", lowered, "")
        return new_room

    async def _copy_state(
        self,
        requester: Requester,
        new_room: str,
        state: dict[tuple[str, str], EventRecord],
        old_pl: PowerLevels,
        pl_rec: EventRecord | None,
        rv: RoomVersion,
        extra_creators: list[str],
    ) -> None:
        """Step 3: power levels first (raised for the upgrader while state is copied),
        the transferable state, the bans, then the final power levels."""
        user_id = requester.user_id
        new_creators = frozenset({user_id, *extra_creators})
        final_pl = self._new_power_levels(
            pl_rec.event.content if pl_rec else None, old_pl, rv, new_creators
        )
        copied = [
            rec
            for (etype, skey), rec in sorted(state.items())
            if (etype in COPIED_STATE and skey == "") or etype in COPIED_STATE_ANY_KEY
        ]
        bans = [
            rec for (etype, _), rec in sorted(state.items())
            if etype == "m.room.member" and rec.event.membership == "ban"
        ]
        first_pl = final_pl
        if not rv.privileged_creators:
            view = PowerLevels(final_pl, rv, new_creators)
            needed = max(
                [view.send_level("m.room.power_levels", True)]
                + [view.send_level(r.event.type, True) for r in copied]
                + ([view.ban, view.kick] if bans else [])
            )
            if view.user_level(user_id) < needed:
                first_pl = {**final_pl, "users": {**(final_pl.get("users") or {}), user_id: needed}}
        await self.rooms.send_event(requester, new_room, "m.room.power_levels", first_pl, state_key="")
        for rec in copied:
            await self._try_send(requester, new_room, rec.event.type, rec.event.content, rec.event.state_key or "")
        if ("m.room.guest_access", "") not in state:
            # The old room had none, which means "forbidden": the new room says so
            # explicitly, so its state shows the guest policy it inherited (clients and
            # SyTest read the new room's state for it).
            await self._try_send(requester, new_room, "m.room.guest_access", {"guest_access": "forbidden"}, "")
        for rec in bans:
            target = rec.event.state_key or ""
            try:
                await self.rooms.update_membership(
                    requester, new_room, target, "ban",
                    reason=rec.event.content.get("reason") if isinstance(rec.event.content.get("reason"), str) else None,
                )
            except MatrixError as e:
                log.warning("upgrade into %s: could not carry over the ban of %s: %s", new_room, target, e)
        if first_pl is not final_pl:
            await self.rooms.send_event(requester, new_room, "m.room.power_levels", final_pl, state_key="")

    def _new_power_levels(
        self,
        old_content: Any,
        old_pl: PowerLevels,
        rv: RoomVersion,
        new_creators: frozenset[str],
    ) -> JsonDict:
        """The old room's power levels, fitted to the new room version's creator rules."""
        pl: JsonDict = dict(old_content) if isinstance(old_content, dict) else {}
        users = dict(pl.get("users") or {}) if isinstance(pl.get("users"), dict) else {}
        if old_content is None:
            # No power levels event: the old creators had 100.
            for c in old_pl.creators:
                users[c] = 100
        if old_pl.privileged_creators and not rv.privileged_creators:
            # From v12 down: old creators had infinite power; give them the top level.
            top = max([100, *(v for v in users.values() if isinstance(v, int))])
            for c in old_pl.privileged_creators:
                users[c] = top
        if rv.privileged_creators:
            for c in new_creators:
                users.pop(c, None)
        pl["users"] = users
        if rv.enforce_int_power_levels:
            pl = _integer_levels(pl)
        return pl

    async def _try_send(self, requester: Requester, room_id: str, etype: str, content: Any, state_key: str) -> None:
        try:
            await self.rooms.send_event(requester, room_id, etype, dict(content), state_key=state_key)
        except MatrixError as e:
            log.warning("upgrade: could not send %s to %s: %s", etype, room_id, e)


def _follow_tombstone(conn: Conn, old: str, new: str) -> None:
    """Another server upgraded ``old`` to ``new`` and one of our users joined ``new``:
    our aliases of the old room and its listing in our directory move to the new one,
    as the upgrading server moved its own (step 4). Only when the old room's
    tombstone names ``new`` (a room claiming a predecessor cannot take its aliases)."""
    tomb_id = state_store.get_current_state_ids(conn, old, [("m.room.tombstone", "")]).get(
        ("m.room.tombstone", "")
    )
    tomb = ev_store.get_event(conn, tomb_id) if tomb_id is not None else None
    if tomb is not None and tomb.event.content.get("replacement_room") == new:
        upgrade_store.move_aliases_and_listing(conn, old, new)


def _carry_settings_over(conn: Conn, user_id: str, old: str, new: str) -> int | None:
    """Copy ``user_id``'s m.direct membership and m.tag of room ``old`` to ``new``."""
    pos = None
    direct = ad_store.get_account_data(conn, user_id, "", "m.direct")
    if isinstance(direct, dict):
        updated = {
            k: [*v, new] if isinstance(v, list) and old in v and new not in v else v
            for k, v in direct.items()
        }
        if updated != direct:
            pos = ad_store.put_account_data(conn, user_id, "", "m.direct", updated)
    tags = ad_store.get_account_data(conn, user_id, old, "m.tag")
    if (
        isinstance(tags, dict)
        and tags.get("tags")
        and ad_store.get_account_data(conn, user_id, new, "m.tag") is None
    ):
        pos = ad_store.put_account_data(conn, user_id, new, "m.tag", tags)
    return pos


def _integer_levels(pl: JsonDict) -> JsonDict:
    """Stringy levels of old room versions as integers (v10+ accepts integers only)."""

    def level(v: Any) -> Any:
        if isinstance(v, str):
            try:
                return int(v.strip())
            except ValueError:
                return v
        return v

    out: JsonDict = {}
    for k, v in pl.items():
        if isinstance(v, dict):
            out[k] = {kk: level(vv) for kk, vv in v.items()}
        else:
            out[k] = level(v)
    return out
