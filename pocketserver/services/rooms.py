"""Rooms: creation, membership, sending, state, redaction, aliases and the directory.

Every change to a room is one event through :class:`EventPipeline` (built, authorised
by the room version's rules, persisted in one transaction). This module decides *which*
events to send and enforces the client-API rules that sit above the auth rules
(aliases, redaction permission, upgrades).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol

import trio

from pocketserver.config import Config
from pocketserver.errors import (
    BadJson,
    Forbidden,
    InvalidParam,
    InviteBlocked,
    MatrixError,
    NotFound,
)
from pocketserver.protocol.appservice import AppserviceRegistry
from pocketserver.protocol.events import Event
from pocketserver.protocol.identifiers import (
    InvalidIdentifier,
    RoomAlias,
    is_valid_room_id,
    is_valid_user_id,
)
from pocketserver.protocol.room_versions import (
    DEFAULT_ROOM_VERSION,
    KNOWN_ROOM_VERSIONS,
)
from pocketserver.services.auth import Requester
from pocketserver.services.clock import Clock
from pocketserver.services.events import EventPipeline, Persisted
from pocketserver.services.invite_permission import blocks_invites
from pocketserver.services.notifier import Notifier
from pocketserver.services.params import get_choice, get_str
from pocketserver.storage import accounts
from pocketserver.storage import events as ev_store
from pocketserver.storage import rooms as room_store
from pocketserver.storage import state as state_store
from pocketserver.storage.database import Database
from pocketserver.storage.events import EventRecord, RoomInfo

JsonDict = dict[str, Any]

PRESETS: dict[str, dict[str, str]] = {
    "private_chat": {"join_rule": "invite", "history_visibility": "shared", "guest_access": "can_join"},
    "trusted_private_chat": {
        "join_rule": "invite",
        "history_visibility": "shared",
        "guest_access": "can_join",
    },
    "public_chat": {"join_rule": "public", "history_visibility": "shared", "guest_access": "forbidden"},
}

MEMBERSHIP_ACTIONS = ("invite", "join", "leave", "ban", "knock")

log = logging.getLogger("pocketserver.rooms")

# Keys of an m.room.member event that the server decides, not the joining client's
# request body (third_party_signed is a request parameter, not content).
SERVER_SET_MEMBER_KEYS = frozenset(
    ("membership", "reason", "third_party_signed", "third_party_invite",
     "join_authorised_via_users_server", "is_direct")
)


class RemoteMembership(Protocol):
    """Taking part in rooms hosted elsewhere (federation/joining.py's RemoteRooms)."""

    async def resolve_alias(self, alias: str) -> tuple[str, list[str]]: ...

    async def join(
        self, user_id: str, room_id: str, servers: Iterable[str], content: Mapping[str, Any] | None = None
    ) -> str: ...

    async def leave(self, user_id: str, room_id: str, servers: Iterable[str], reason: str | None = None) -> int: ...

    async def knock(self, user_id: str, room_id: str, servers: Iterable[str], reason: str | None = None) -> None: ...

    async def exchange_invite(self, event: Event) -> Event: ...

    async def public_rooms(self, server: str, query: Mapping[str, str], body: JsonDict | None) -> JsonDict: ...


def _domain(identifier: str) -> str:
    return identifier.split(":", 1)[1] if ":" in identifier else ""


class RoomService:
    def __init__(
        self,
        db: Database,
        config: Config,
        clock: Clock,
        notifier: Notifier,
        pipeline: EventPipeline,
    ) -> None:
        self.db = db
        self.config = config
        self.clock = clock
        self.notifier = notifier
        self.pipeline = pipeline
        self.server_name = config.server_name
        # Called with (room_id, user_id) after a local user's membership changed.
        self.on_membership: list[Callable[[str, str, str], Awaitable[None]]] = []
        # Called with (sender, room_id, type, content) before a client's non-state event
        # is built; raises to refuse it (relations: duplicate annotations, threads).
        self.before_send: list[Callable[[str, str, str, Mapping[str, Any]], Awaitable[None]]] = []
        # Rooms on other servers (set when federation is wired; None: local rooms only).
        self.remote: RemoteMembership | None = None
        # Application services (set when some are configured): namespaces, and asking
        # them about unknown aliases and users (services/appservices.py).
        self.appservices = AppserviceRegistry()
        # Rooms whose guest access another server changed, for :meth:`run` (a set: at
        # most one entry per room).
        self._guest_rooms_due: set[str] = set()
        self._guest_rooms_wakeup = trio.Event()
        self.query_alias: Callable[[str], Awaitable[bool]] | None = None
        self.query_user: Callable[[str], Awaitable[bool]] | None = None

    async def _local_alias(self, alias: str) -> tuple[str, str] | None:
        """The alias's (room ID, creator); an unknown alias of an application
        service's namespace is asked of the AS first (application-service-api.md,
        "Querying"), which creates it if it wants to."""
        row = await self.db.read(room_store.get_alias, alias)
        if row is None and self.query_alias is not None and self.appservices.interested_in_alias(alias):
            if await self.query_alias(alias):
                row = await self.db.read(room_store.get_alias, alias)
        return row

    # -- reading ---------------------------------------------------------------------------

    async def get_room(self, room_id: str) -> RoomInfo:
        info = await self.db.read(ev_store.get_room, room_id)
        if info is None:
            raise NotFound("Unknown room")
        return info

    async def membership(self, room_id: str, user_id: str) -> str | None:
        m = await self.db.read(state_store.get_membership, room_id, user_id)
        return None if m is None else m[0]

    async def require_joined(self, requester: Requester, room_id: str) -> RoomInfo:
        info = await self.db.read(ev_store.get_room, room_id)
        if info is None:
            raise Forbidden("You are not in this room")
        if await self.membership(room_id, requester.user_id) != "join":
            raise Forbidden("You are not joined to this room")
        return info

    async def current_state_event(self, room_id: str, etype: str, state_key: str = "") -> JsonDict | None:
        rec = await self.current_state_record(room_id, etype, state_key)
        return None if rec is None else dict(rec.event.content)

    async def current_state_record(self, room_id: str, etype: str, state_key: str = "") -> EventRecord | None:
        ids = await self.db.read(state_store.get_current_state_ids, room_id, [(etype, state_key)])
        eid = ids.get((etype, state_key))
        if eid is None:
            return None
        return await self.pipeline.get_event(eid)

    async def resolve_room_id_or_alias(self, room_id_or_alias: str) -> str:
        if room_id_or_alias.startswith("#"):
            try:
                RoomAlias.parse(room_id_or_alias)
            except InvalidIdentifier:
                raise InvalidParam("Invalid room alias") from None
            row = await self._local_alias(room_id_or_alias)
            if row is None:
                raise NotFound(f"Room alias {room_id_or_alias} not found")
            return row[0]
        if not room_id_or_alias.startswith("!") or not is_valid_room_id(room_id_or_alias):
            raise InvalidParam("Invalid room ID or alias")
        return room_id_or_alias

    # -- sending -----------------------------------------------------------------------------

    async def send_event(
        self,
        requester: Requester,
        room_id: str,
        etype: str,
        content: Mapping[str, Any],
        *,
        state_key: str | None = None,
        txn_id: str | None = None,
        ts: int | None = None,
    ) -> Persisted:
        requester.refuse_if_suspended()
        txn_key = None
        if txn_id is not None:
            txn_key = f"{requester.user_id}|{requester.device_id or ''}|{txn_id}"

        def read(conn: Any) -> tuple[RoomInfo | None, str | None]:
            known = ev_store.get_txn_event_id(conn, txn_key) if txn_key is not None else None
            return ev_store.get_room(conn, room_id), known

        info, retried = await self.db.read(read)
        if info is None:
            raise Forbidden("You are not in this room")
        # A retried transaction gets its event back, not a refusal.
        if state_key is None and self.before_send and retried is None:
            for check in self.before_send:
                await check(requester.user_id, room_id, etype, content)
        redacts = None
        if etype == "m.room.redaction":
            r = content.get("redacts")
            redacts = r if isinstance(r, str) else None
        return await self.pipeline.create_room_event(
            room_id,
            info.room_version,
            requester.user_id,
            etype,
            content,
            state_key=state_key,
            txn_key=txn_key,
            redacts=redacts,
            origin_server_ts=ts,
        )

    async def get_room_for_sender(self, room_id: str) -> RoomInfo:
        info = await self.db.read(ev_store.get_room, room_id)
        if info is None:
            # Unknown rooms look the same as rooms one is not in.
            raise Forbidden("You are not in this room")
        return info

    async def send_state(
        self, requester: Requester, room_id: str, etype: str, state_key: str, content: JsonDict,
        ts: int | None = None,
    ) -> Persisted:
        if etype == "m.room.member":
            membership = content.get("membership")
            if not isinstance(membership, str):
                raise BadJson("membership is required")
            return await self.update_membership(
                requester, room_id, state_key, membership, content=content, via_state_api=True
            )
        if etype == "m.room.canonical_alias":
            await self._check_canonical_alias(room_id, content)
        same = await self._unchanged_state(requester.user_id, room_id, etype, state_key, content)
        if same is not None:
            return same
        persisted = await self.send_event(requester, room_id, etype, content, state_key=state_key, ts=ts)
        if etype == "m.room.guest_access" and state_key == "":
            await self._remove_guests_unless_allowed(room_id)
        return persisted

    async def _guests_can_join(self, room_id: str) -> bool:
        ga = await self.current_state_event(room_id, "m.room.guest_access") or {}
        return ga.get("guest_access") == "can_join"

    # -- guests removed when another server revokes guest access -------------------------

    async def on_remote_event(self, record: EventRecord) -> None:
        """An event another server sent was stored (the federation intake's hook, called
        under the room's lock, so the work is handed to :meth:`run`): guest access
        revoked over federation makes this server's guests leave too."""
        ev = record.event
        if ev.type == "m.room.guest_access" and ev.state_key == "":
            self._guest_rooms_due.add(ev.room_id)
            self._guest_rooms_wakeup.set()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Remove local guests from rooms that no longer allow them: every room with a
        joined local guest once at start (a revocation received just before a crash
        is not lost), then each room whose guest access changed on another server."""
        task_status.started()
        due = set(await self.db.read(state_store.rooms_with_local_guests))
        while True:
            for room_id in sorted(due):
                try:
                    await self._remove_guests_unless_allowed(room_id)
                except Exception:  # one room's failure must not stop the server
                    log.exception("removing the guests of %s failed", room_id)
            await self._guest_rooms_wakeup.wait()
            self._guest_rooms_wakeup = trio.Event()
            due, self._guest_rooms_due = self._guest_rooms_due, set()

    async def _remove_guests_unless_allowed(self, room_id: str) -> None:
        """Guest access revoked: the room's local guests leave (modules/guest_access.md
        "Server behaviour": the server MUST set their membership to leave)."""
        if await self._guests_can_join(room_id):
            return
        members = await self.db.read(state_store.local_members, room_id)
        for user_id in members:
            user = await self.db.read(accounts.get_user, user_id)
            if user is None or not user["is_guest"]:
                continue
            try:
                await self.update_membership(
                    Requester(user_id, None, is_guest=True), room_id, user_id, "leave"
                )
            except MatrixError as e:  # e.g. already gone meanwhile
                log.info("guest %s could not be removed from %s: %s", user_id, room_id, e.message)

    async def _unchanged_state(
        self, user_id: str, room_id: str, etype: str, state_key: str, content: JsonDict
    ) -> Persisted | None:
        """The current state event if this member sent exactly this content for this
        key: setting it again changes nothing, so no new event is made (a retried PUT,
        or a client writing its settings back, does not fill the timeline)."""
        ids = await self.db.read(state_store.get_current_state_ids, room_id, [(etype, state_key)])
        eid = ids.get((etype, state_key))
        if eid is None:
            return None
        rec = await self.pipeline.get_event(eid)
        if (
            rec is None
            or rec.stream_pos is None
            or rec.event.sender != user_id
            or dict(rec.event.content) != content
        ):
            return None
        if await self.membership(room_id, user_id) != "join":
            return None
        return Persisted(rec, rec.stream_pos)

    async def _check_canonical_alias(self, room_id: str, content: JsonDict) -> None:
        aliases: list[Any] = []
        if "alias" in content and content["alias"] is not None:
            aliases.append(content["alias"])
        alt = content.get("alt_aliases", [])
        if not isinstance(alt, list):
            raise BadJson("alt_aliases must be a list")
        aliases += alt
        for alias in aliases:
            if not isinstance(alias, str):
                raise BadJson("aliases must be strings")
            try:
                parsed = RoomAlias.parse(alias)
            except InvalidIdentifier:
                raise MatrixError(400, "M_INVALID_PARAM", f"Invalid alias {alias}") from None
            if parsed.domain == self.server_name:
                row = await self.db.read(room_store.get_alias, alias)
                if row is None or row[0] != room_id:
                    raise MatrixError(400, "M_BAD_ALIAS", f"{alias} does not point at this room")

    async def redact(
        self, requester: Requester, room_id: str, event_id: str, reason: str | None, txn_id: str | None
    ) -> Persisted:
        info = await self.get_room_for_sender(room_id)
        target = await self.pipeline.get_event(event_id)
        if target is not None and target.event.room_id != room_id:
            # A redaction names an event of its own room; one pointing elsewhere could
            # never apply, and would only sit in the timeline as a puzzle.
            raise InvalidParam("That event is not in this room")
        if target is not None:
            # "Handling redactions": one's own events, or with the redact power level.
            if target.event.sender != requester.user_id:
                requester.refuse_if_suspended()
                pl = await self.current_state_event(room_id, "m.room.power_levels") or {}
                if await self._user_power(room_id, info, requester.user_id, pl) < _int(pl.get("redact"), 50):
                    raise Forbidden("You may not redact other users' events")
        content: JsonDict = {}
        if reason is not None:
            content["reason"] = reason
        if info.room_version.updated_redaction_rules:
            content["redacts"] = event_id
        txn_key = f"{requester.user_id}|{requester.device_id or ''}|{txn_id}" if txn_id else None
        return await self.pipeline.create_room_event(
            room_id,
            info.room_version,
            requester.user_id,
            "m.room.redaction",
            content,
            txn_key=txn_key,
            redacts=event_id,
        )

    async def _user_power(self, room_id: str, info: RoomInfo, user_id: str, pl: JsonDict) -> float:
        if info.room_version.privileged_creators:
            create = await self.current_state_event(room_id, "m.room.create") or {}
            creators = {info.creator} | set(create.get("additional_creators") or [])
            if user_id in creators:
                return float("inf")
        users = pl.get("users") or {}
        if not pl:
            return 100 if user_id == info.creator else 0
        return _int(users.get(user_id), _int(pl.get("users_default"), 0))

    # -- membership --------------------------------------------------------------------------

    async def update_membership(
        self,
        requester: Requester,
        room_id: str,
        target: str,
        membership: str,
        *,
        reason: str | None = None,
        content: Mapping[str, Any] | None = None,
        via_state_api: bool = False,
        is_direct: bool | None = None,
        txn_id: str | None = None,
    ) -> Persisted:
        if membership not in MEMBERSHIP_ACTIONS:
            raise InvalidParam(f"Unknown membership {membership!r}")
        if not is_valid_user_id(target):
            raise InvalidParam("Invalid user ID")
        if membership != "leave" or target != requester.user_id:
            requester.refuse_if_suspended()  # a suspended user may still leave
        if (
            membership == "invite"
            and target != requester.user_id
            and target.split(":", 1)[1] == self.server_name
            and await self.db.read(blocks_invites, target)
        ):
            raise InviteBlocked()
        if (
            membership == "invite"
            and self.query_user is not None
            and _domain(target) == self.server_name
            and self.appservices.interested_in_user(target)
            and not await self.db.read(accounts.user_exists, target)
        ):
            # An unknown user of an application service's namespace: the AS is asked
            # and may register it ("Querying").
            await self.query_user(target)
        info = await self.db.read(ev_store.get_room, room_id)
        if info is None:
            if membership == "join":
                raise NotFound("No known room with that ID (joining over federation is not available yet)")
            raise Forbidden("You are not in this room")
        body: JsonDict = dict(content or {})
        body["membership"] = membership
        if reason is not None:
            body["reason"] = reason
        if is_direct is not None:
            body["is_direct"] = is_direct
        if membership in ("join", "invite", "knock") and ":" in target:
            profile = await self.db.read(accounts.get_user, target)
            if profile is not None and not via_state_api:
                if profile.get("displayname") is not None:
                    body.setdefault("displayname", profile["displayname"])
                if profile.get("avatar_url") is not None:
                    body.setdefault("avatar_url", profile["avatar_url"])
        if membership == "join" and target == requester.user_id:
            await self._maybe_authorise_restricted_join(room_id, info, target, body)
        # An invite of another server's user is countersigned by that server first
        # (server-server "Inviting to a room").
        exchange = None
        if membership == "invite" and _domain(target) != self.server_name and self.remote is not None:
            exchange = self.remote.exchange_invite
        persisted = await self.pipeline.create_room_event(
            room_id,
            info.room_version,
            requester.user_id,
            "m.room.member",
            body,
            state_key=target,
            txn_key=f"{requester.user_id}|{requester.device_id or ''}|{txn_id}" if txn_id else None,
            exchange=exchange,
        )
        for hook in self.on_membership:
            await hook(room_id, target, membership)
        return persisted

    async def _maybe_authorise_restricted_join(
        self, room_id: str, info: RoomInfo, joiner: str, body: JsonDict
    ) -> None:
        """Restricted rooms: name a local member who may invite (auth rule 5.3.5.2)."""
        if not info.room_version.restricted_join_rule:
            return
        jr = await self.current_state_event(room_id, "m.room.join_rules") or {}
        if jr.get("join_rule") not in ("restricted", "knock_restricted"):
            return
        if await self.membership(room_id, joiner) in ("join", "invite"):
            return
        allow = jr.get("allow") or []
        allowed_rooms = [
            a["room_id"]
            for a in allow
            if isinstance(a, dict) and a.get("type") == "m.room_membership" and isinstance(a.get("room_id"), str)
        ]
        in_allowed = False
        for rid in allowed_rooms:
            if await self.membership(rid, joiner) == "join":
                in_allowed = True
                break
        if not in_allowed:
            raise Forbidden("You are not a member of a room that allows joining this room")
        pl = await self.current_state_event(room_id, "m.room.power_levels") or {}
        invite_level = _int(pl.get("invite"), 0)
        members = await self.db.read(state_store.local_members, room_id)
        for candidate in sorted(members):
            if await self._user_power(room_id, info, candidate, pl) >= invite_level:
                body["join_authorised_via_users_server"] = candidate
                return
        raise Forbidden("No member of this server can authorise the join")

    async def held_here(self, room_id: str) -> bool:
        """Whether this server takes part in the room itself (holds its state, with a
        local member): what it sends there needs no other server's help."""
        return not await self._remote_only(room_id)

    async def _remote_only(self, room_id: str) -> bool:
        """Whether a membership change must go through another server: the room is
        not held here (unknown, or only an invite or knock), or no local user is in it
        any more while other servers are (our copy of its state may be stale)."""

        def read(conn: Any) -> bool:
            info = ev_store.get_room(conn, room_id)
            if info is None or not info.has_state:
                return True
            if state_store.local_members(conn, room_id):
                return False
            return bool(state_store.servers_in_room(conn, room_id) - {self.server_name})

        return await self.db.read(read)

    async def _servers_for(self, room_id: str, user_id: str, via: Iterable[str]) -> list[str]:
        """Servers to ask about a room: the client's ``via``, the server of the user's
        pending invite's sender, the servers in the room we know of, the room ID's own
        server (pre-v12 IDs)."""

        def read(conn: Any) -> list[str]:
            out: list[str] = []
            m = state_store.get_membership(conn, room_id, user_id)
            if m is not None and m[0] in ("invite", "knock"):
                rec = ev_store.get_event(conn, m[1])
                if rec is not None:
                    if m[0] == "invite":
                        out.append(_domain(rec.event.sender))
                    sent = (rec.event.pdu.get("unsigned") or {}).get("invite_room_state")
                    for s in sent if isinstance(sent, list) else []:
                        if isinstance(s, dict) and isinstance(s.get("sender"), str):
                            out.append(_domain(s["sender"]))
            out.extend(sorted(state_store.servers_in_room(conn, room_id)))
            return out

        known = await self.db.read(read)
        servers = [*via, *known, _domain(room_id)]
        return [s for s in dict.fromkeys(servers) if s and s != self.server_name]

    async def _resolve_with_servers(self, room_id_or_alias: str) -> tuple[str, list[str]]:
        if room_id_or_alias.startswith("#") and self.remote is not None:
            try:
                alias = RoomAlias.parse(room_id_or_alias)
            except InvalidIdentifier:
                raise InvalidParam("Invalid room alias") from None
            if alias.domain != self.server_name:
                return await self.remote.resolve_alias(room_id_or_alias)
        return await self.resolve_room_id_or_alias(room_id_or_alias), []

    async def join(
        self,
        requester: Requester,
        room_id_or_alias: str,
        *,
        reason: str | None = None,
        content: Mapping[str, Any] | None = None,
        via: Iterable[str] = (),
    ) -> str:
        """Join; ``content`` holds extra keys the client put in the join request, kept in
        the membership event (those the server sets itself are dropped). A room held
        elsewhere is joined through ``via``, the alias's servers, or the inviter's."""
        room_id, alias_servers = await self._resolve_with_servers(room_id_or_alias)
        current = await self.membership(room_id, requester.user_id)
        if current == "join":
            return room_id
        extra = {k: v for k, v in (content or {}).items() if k not in SERVER_SET_MEMBER_KEYS}
        if self.remote is not None and await self._remote_only(room_id):
            if requester.is_guest:
                raise MatrixError(403, "M_GUEST_ACCESS_FORBIDDEN", "Guests may not join rooms on other servers")
            servers = await self._servers_for(room_id, requester.user_id, [*via, *alias_servers])
            body: JsonDict = dict(extra)
            if reason is not None:
                body["reason"] = reason
            profile = await self.db.read(accounts.get_user, requester.user_id)
            for key in ("displayname", "avatar_url"):
                if profile is not None and profile.get(key) is not None:
                    body.setdefault(key, profile[key])
            await self.remote.join(requester.user_id, room_id, servers, body)
            for hook in self.on_membership:
                await hook(room_id, requester.user_id, "join")
            return room_id
        if requester.is_guest and not await self._guests_can_join(room_id):
            # modules/guest_access.md "Server behaviour": guests join only rooms whose
            # m.room.guest_access is can_join.
            raise MatrixError(403, "M_GUEST_ACCESS_FORBIDDEN", "Guests may not join this room")
        await self.update_membership(
            requester, room_id, requester.user_id, "join", reason=reason, content=extra
        )
        pos = await self.db.write(_carry_tags_from_predecessor, room_id, requester.user_id)
        if pos is not None:
            self.notifier.notify(pos)
        return room_id

    async def knock(
        self, requester: Requester, room_id_or_alias: str, *, reason: str | None = None, via: Iterable[str] = ()
    ) -> str:
        room_id, alias_servers = await self._resolve_with_servers(room_id_or_alias)
        if self.remote is not None and await self._remote_only(room_id):
            if await self.membership(room_id, requester.user_id) in ("join", "ban"):
                raise Forbidden("You cannot knock on a room you are in or banned from")
            servers = await self._servers_for(room_id, requester.user_id, [*via, *alias_servers])
            await self.remote.knock(requester.user_id, room_id, servers, reason)
            for hook in self.on_membership:
                await hook(room_id, requester.user_id, "knock")
            return room_id
        await self.update_membership(requester, room_id, requester.user_id, "knock", reason=reason)
        return room_id

    async def leave(self, requester: Requester, room_id: str, reason: str | None = None) -> None:
        current = await self.membership(room_id, requester.user_id)
        if current is None or current in ("leave",):
            if current is None:
                raise Forbidden("You are not in this room")
            return
        if current in ("invite", "knock") and self.remote is not None and await self._remote_only(room_id):
            # Rejecting an invite or rescinding a knock of a room held elsewhere.
            servers = await self._servers_for(room_id, requester.user_id, [])
            await self.remote.leave(requester.user_id, room_id, servers, reason)
            for hook in self.on_membership:
                await hook(room_id, requester.user_id, "leave")
            return
        await self.update_membership(requester, room_id, requester.user_id, "leave", reason=reason)

    async def forget(self, requester: Requester, room_id: str) -> None:
        current = await self.membership(room_id, requester.user_id)
        if current in ("join", "invite", "knock"):
            raise MatrixError(400, "M_UNKNOWN", "Leave the room before forgetting it")
        if current is None:
            raise NotFound("You have never been in this room")
        await self.db.write(state_store.forget_room, room_id, requester.user_id)

    # -- creation ----------------------------------------------------------------------------

    async def create_room(self, requester: Requester, body: JsonDict) -> tuple[str, str | None]:
        requester.refuse_if_suspended()
        version_id = get_str(body, "room_version", default=DEFAULT_ROOM_VERSION)
        assert version_id is not None
        rv = KNOWN_ROOM_VERSIONS.get(version_id)
        if rv is None:
            raise MatrixError(400, "M_UNSUPPORTED_ROOM_VERSION", f"Unknown room version {version_id}")
        visibility = get_choice(body, "visibility", ("public", "private"), default="private")
        preset = get_choice(
            body, "preset", PRESETS, default="public_chat" if visibility == "public" else "private_chat"
        )
        assert preset is not None
        invites = body.get("invite", [])
        if not isinstance(invites, list) or not all(isinstance(u, str) for u in invites):
            raise BadJson("invite must be a list of user IDs")
        for u in invites:
            if not is_valid_user_id(u):
                raise InvalidParam(f"Invalid user ID {u!r}")
        if body.get("invite_3pid"):
            raise MatrixError(400, "M_UNRECOGNIZED", "Third-party invites are not supported yet")
        creation_content = body.get("creation_content") or {}
        if not isinstance(creation_content, dict):
            raise BadJson("creation_content must be an object")
        initial_state = body.get("initial_state", [])
        if not isinstance(initial_state, list):
            raise BadJson("initial_state must be a list")
        for item in initial_state:
            if not (isinstance(item, dict) and isinstance(item.get("type"), str) and isinstance(item.get("content"), dict)):
                raise BadJson("initial_state entries need type and content")
            if not isinstance(item.get("state_key", ""), str):
                raise BadJson("state_key must be a string")
        pl_override = body.get("power_level_content_override")
        if pl_override is not None and not isinstance(pl_override, dict):
            raise BadJson("power_level_content_override must be an object")
        for key in ("name", "topic"):
            if key in body and not isinstance(body[key], str):
                raise BadJson(f"{key} must be a string")
        is_direct = body.get("is_direct", False)
        if not isinstance(is_direct, bool):
            raise BadJson("is_direct must be a boolean")

        alias: str | None = None
        alias_name = body.get("room_alias_name")
        if alias_name is not None:
            if not isinstance(alias_name, str) or not alias_name or ":" in alias_name or "#" in alias_name:
                raise MatrixError(400, "M_INVALID_PARAM", "Invalid room_alias_name")
            alias = f"#{alias_name}:{self.server_name}"
            try:
                RoomAlias.parse(alias)
            except InvalidIdentifier:
                raise MatrixError(400, "M_INVALID_PARAM", "Invalid room_alias_name") from None
            if await self.db.read(room_store.get_alias, alias) is not None:
                raise MatrixError(400, "M_ROOM_IN_USE", "Room alias already taken")

        creator = requester.user_id
        create_content: JsonDict = dict(creation_content)
        create_content["room_version"] = rv.identifier
        if rv.implicit_room_creator:
            create_content.pop("creator", None)
        else:
            create_content["creator"] = creator
        if rv.privileged_creators:
            extra = create_content.get("additional_creators", [])
            if not isinstance(extra, list):
                raise BadJson("additional_creators must be a list")
            if preset == "trusted_private_chat":
                extra = list(dict.fromkeys([*extra, *invites]))
            if extra:
                create_content["additional_creators"] = extra
            else:
                create_content.pop("additional_creators", None)

        room_id = None
        if not rv.room_id_is_create_event_hash:
            room_id = f"!{secrets.token_urlsafe(18)}:{self.server_name}"
        created = await self.pipeline.create_create_event(rv, creator, create_content, room_id)
        room_id = created.record.event.room_id

        await self.update_membership(requester, room_id, creator, "join")

        pl: JsonDict = {
            "users": {} if rv.privileged_creators else {creator: 100},
            "users_default": 0,
            "events": {
                "m.room.name": 50,
                "m.room.power_levels": 100,
                "m.room.history_visibility": 100,
                "m.room.canonical_alias": 50,
                "m.room.avatar": 50,
                "m.room.tombstone": 150 if rv.privileged_creators else 100,
                "m.room.server_acl": 100,
                "m.room.encryption": 100,
            },
            "events_default": 0,
            "state_default": 50,
            "ban": 50,
            "kick": 50,
            "redact": 50,
            "invite": 0,
            "historical": 100,
            "notifications": {"room": 50},
        }
        if preset == "trusted_private_chat" and not rv.privileged_creators:
            for u in invites:
                pl["users"][u] = 100
        if pl_override:
            for k, v in pl_override.items():
                pl[k] = v
        await self.send_event(requester, room_id, "m.room.power_levels", pl, state_key="")

        if alias is not None:
            await self.db.write(room_store.insert_alias, alias, room_id, creator)
            await self.send_event(requester, room_id, "m.room.canonical_alias", {"alias": alias}, state_key="")

        p = PRESETS[preset]
        preset_state = {
            ("m.room.join_rules", ""): {"join_rule": p["join_rule"]},
            ("m.room.history_visibility", ""): {"history_visibility": p["history_visibility"]},
        }
        # A room without m.room.guest_access is "forbidden" (m.room.guest_access schema:
        # servers act as if it were present with that value), so public_chat's
        # "forbidden" needs no event: one event less in every public room's state, and
        # the state other servers and clients (and SyTest) expect of it.
        if p["guest_access"] != "forbidden":
            preset_state[("m.room.guest_access", "")] = {"guest_access": p["guest_access"]}
        initial = {(i["type"], i.get("state_key", "")): i["content"] for i in initial_state}
        for pkey, pcontent in preset_state.items():
            if pkey not in initial:
                await self.send_event(requester, room_id, pkey[0], pcontent, state_key=pkey[1])
        for (etype, skey), content in initial.items():
            if etype in ("m.room.create", "m.room.member", "m.room.power_levels"):
                continue
            await self.send_event(requester, room_id, etype, content, state_key=skey)
        if "name" in body:
            await self.send_event(requester, room_id, "m.room.name", {"name": body["name"]}, state_key="")
        if "topic" in body:
            await self.send_event(requester, room_id, "m.room.topic", {"topic": body["topic"]}, state_key="")
        for u in invites:
            try:
                await self.update_membership(requester, room_id, u, "invite", is_direct=is_direct or None)
            except InviteBlocked:
                # invite_permission.md: one invitee refusing invites does not fail the
                # creation; the room is made without their invite.
                continue
        if visibility == "public":
            await self.db.write(room_store.set_room_public, room_id, True)
        return room_id, alias

    # -- aliases and directory ----------------------------------------------------------------

    async def create_alias(self, requester: Requester, alias: str, room_id: str) -> None:
        try:
            parsed = RoomAlias.parse(alias)
        except InvalidIdentifier:
            raise InvalidParam("Invalid room alias") from None
        if parsed.domain != self.server_name:
            raise InvalidParam("Room alias must be on this server")
        if not is_valid_room_id(room_id):
            raise InvalidParam("Invalid room ID")
        if await self.db.read(ev_store.get_room, room_id) is None:
            raise NotFound("Unknown room")
        # Application service API, "Server admin style permissions": an alias in an
        # exclusive namespace is the AS's alone; an AS manages those of its namespaces
        # without being in the room.
        owner = self.appservices.exclusive_owner_of_alias(alias)
        as_reg = requester.appservice
        if owner is not None and (as_reg is None or as_reg.id != owner.id):
            raise MatrixError(400, "M_EXCLUSIVE", "This alias is reserved by an application service")
        managed = as_reg is not None and as_reg.is_interested_in_alias(alias)
        if (
            not managed
            and await self.membership(room_id, requester.user_id) != "join"
            and not requester.is_admin
        ):
            raise Forbidden("You must be in the room to create an alias for it")
        ok = await self.db.write(room_store.insert_alias, alias, room_id, requester.user_id)
        if not ok:
            raise MatrixError(409, "M_UNKNOWN", "Room alias already exists")

    async def delete_alias(self, requester: Requester, alias: str) -> None:
        row = await self.db.read(room_store.get_alias, alias)
        if row is None:
            raise NotFound("Room alias not found")
        room_id, creator = row
        owner = self.appservices.exclusive_owner_of_alias(alias)
        if owner is not None and (requester.appservice is None or requester.appservice.id != owner.id):
            raise MatrixError(400, "M_EXCLUSIVE", "This alias is managed by an application service")
        managed = requester.appservice is not None and requester.appservice.is_interested_in_alias(alias)
        if creator != requester.user_id and not requester.is_admin and not managed:
            info = await self.db.read(ev_store.get_room, room_id)
            pl = await self.current_state_event(room_id, "m.room.power_levels") or {}
            needed = _int((pl.get("events") or {}).get("m.room.canonical_alias"), _int(pl.get("state_default"), 50))
            if info is None or await self._user_power(room_id, info, requester.user_id, pl) < needed:
                raise Forbidden("You may not delete this alias")
        await self.db.write(room_store.delete_alias, alias)
        await self._drop_from_canonical_alias(requester, room_id, alias)

    async def _drop_from_canonical_alias(self, requester: Requester, room_id: str, alias: str) -> None:
        """A deleted alias leaves the room's m.room.canonical_alias (client-server-api,
        "Room aliases": a canonical alias must point at the room), as the deleter, if
        the deleter may change that state; otherwise it stays until someone who may
        does (clients treat an alias that no longer resolves as absent)."""
        content = await self.current_state_event(room_id, "m.room.canonical_alias")
        if not content:
            return
        alt = content.get("alt_aliases")
        new = dict(content)
        if content.get("alias") == alias:
            new.pop("alias")
        if isinstance(alt, list) and alias in alt:
            new["alt_aliases"] = [a for a in alt if a != alias]
        if new == content:
            return
        try:
            await self.send_event(requester, room_id, "m.room.canonical_alias", new, state_key="")
        except MatrixError as e:
            log.info("alias %s deleted; %s's canonical alias left as is: %s", alias, room_id, e.message)

    async def remote_public_rooms(self, server: str, query: Mapping[str, str], body: JsonDict | None) -> JsonDict:
        """Another server's public room directory (``/publicRooms?server=``)."""
        if self.remote is None:
            raise NotFound("Room directories of other servers are not available")
        return await self.remote.public_rooms(server, query, body)

    async def get_alias(self, alias: str) -> tuple[str, list[str]]:
        if self.remote is not None and alias.startswith("#"):
            try:
                parsed = RoomAlias.parse(alias)
            except InvalidIdentifier:
                raise InvalidParam("Invalid room alias") from None
            if parsed.domain != self.server_name:
                return await self.remote.resolve_alias(alias)
        row = await self._local_alias(alias)
        if row is None:
            raise NotFound(f"Room alias {alias} not found")
        # This server first (it holds the alias), then the room's other servers, which a
        # joining server may also ask.
        others = await self.db.read(state_store.servers_in_room, row[0])
        return row[0], [self.server_name, *sorted(others - {self.server_name})]


def _int(value: Any, default: int) -> int:
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return default
    return default


def _carry_tags_from_predecessor(conn: Any, room_id: str, user_id: str) -> int | None:
    """Joining an upgraded room brings the user's tags from the room it replaced
    (room_upgrades.md: "the server should automatically transfer ... tags"), unless
    the user already tagged the new room. Returns the stream position written, if any."""
    from pocketserver.storage import account_data as ad_store

    create = state_store.get_current_state_ids(conn, room_id, [("m.room.create", "")])
    rec = ev_store.get_event(conn, create[("m.room.create", "")]) if create else None
    predecessor = rec.event.content.get("predecessor") if rec is not None else None
    old_room = predecessor.get("room_id") if isinstance(predecessor, dict) else None
    if not isinstance(old_room, str) or ad_store.get_account_data(conn, user_id, room_id, "m.tag"):
        return None
    tags = ad_store.get_account_data(conn, user_id, old_room, "m.tag")
    if not tags or not tags.get("tags"):
        return None
    return ad_store.put_account_data(conn, user_id, room_id, "m.tag", tags)
