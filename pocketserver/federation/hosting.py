"""Hosting rooms for other servers: the services behind the federation room endpoints.

Spec: server-server-api.md "Joining Rooms" (make_join, send_join v2 with
``omit_members``), "Restricted rooms", "Knocking upon a room", "Inviting to a room"
(invite v2), "Leaving Rooms", "Retrieving events" (/event, /state, /state_ids),
"Retrieving event authorisation information" (/event_auth), "Backfilling and retrieving
missing events" (/backfill, /get_missing_events), timestamp_to_event; shapes in
data/api/server-server/{joins-v2,knocks,leaving-v2,invites-v2,events,event_auth,
backfill}.yaml. History visibility for a server: client-server-api "Room History
Visibility" (a server sees what one of its users could have).

Each method takes the requesting server's name (``origin``, already authenticated by
the transport) and answers the response body, or raises a
:class:`~pocketserver.errors.MatrixError` with the spec's status and errcode.
Events handed over (send_join, send_leave, send_knock) go through the intake like any
other; what the answer lists is read from storage, one room's state at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pocketserver.errors import Forbidden, InviteBlocked, MatrixError, NotFound
from pocketserver.federation.intake import BadlySigned, IntakeError, NonCanonicalPdu, PduIntake
from pocketserver.federation.interfaces import FederationRequester, KeyLookup
from pocketserver.federation.joining import RemoteRooms
from pocketserver.federation.transactions import TransactionHandler
from pocketserver.protocol import pdu_checks as pc
from pocketserver.protocol.auth_rules import (
    CREATE,
    JOIN_RULES,
    POWER_LEVELS,
    AuthError,
    auth_types_for_event,
    check_auth,
)
from pocketserver.protocol.events import Event
from pocketserver.protocol.identifiers import is_valid_user_id
from pocketserver.protocol.power_levels import PowerLevels
from pocketserver.protocol.redaction import redact
from pocketserver.protocol.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from pocketserver.protocol.signing import SigningKey, sign_json
from pocketserver.services.client_events import stripped_state
from pocketserver.services.clock import Clock
from pocketserver.services.invite_permission import blocks_invites
from pocketserver.services.notifier import Notifier
from pocketserver.storage import accounts as accounts_store
from pocketserver.storage import event_graph as graph
from pocketserver.storage import events as ev_store
from pocketserver.storage import outbox
from pocketserver.storage import state as state_store
from pocketserver.storage.database import Conn, Database
from pocketserver.storage.events import EventRecord, NewEvent, RoomInfo
from pocketserver.storage.streams import next_stream_pos

log = logging.getLogger(__name__)

JsonDict = dict[str, Any]
AcceptedHook = Callable[[EventRecord], Awaitable[None]]

MAX_PREV_EVENTS = 10
MAX_DEPTH = 2**63 - 1
MAX_BACKFILL = 100
MAX_MISSING = 100
# The state types an invitee or knocker is shown ("stripped state"), as /sync shows them.
STRIPPED_TYPES = (
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.topic",
)


def _domain(identifier: str) -> str:
    return identifier.split(":", 1)[1] if ":" in identifier else ""


class RoomHosting:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        notifier: Notifier,
        intake: PduIntake,
        server_name: str,
        signing_key: SigningKey,
    ) -> None:
        self.db = db
        self.clock = clock
        self.notifier = notifier
        self.intake = intake
        self.server_name = server_name
        self.signing_key = signing_key
        # Events other servers handed to this one to put in the room (joins, leaves,
        # knocks): the outbound sender passes them on to the room's other servers.
        self.on_accepted: list[AcceptedHook] = []

    # -- make_join / make_leave / make_knock -------------------------------------------

    async def make_join(self, origin: str, room_id: str, user_id: str, versions: Iterable[str]) -> JsonDict:
        """``GET /_matrix/federation/v1/make_join/{roomId}/{userId}?ver=...``"""
        return await self._make(origin, room_id, user_id, "join", list(versions) or ["1"])

    async def make_leave(self, origin: str, room_id: str, user_id: str) -> JsonDict:
        """``GET /_matrix/federation/v1/make_leave/{roomId}/{userId}``"""
        return await self._make(origin, room_id, user_id, "leave", None)

    async def make_knock(self, origin: str, room_id: str, user_id: str, versions: Iterable[str]) -> JsonDict:
        """``GET /_matrix/federation/v1/make_knock/{roomId}/{userId}?ver=...``"""
        return await self._make(origin, room_id, user_id, "knock", list(versions) or ["1"])

    async def _make(
        self, origin: str, room_id: str, user_id: str, membership: str, versions: list[str] | None
    ) -> JsonDict:
        if not is_valid_user_id(user_id) or _domain(user_id) != origin:
            raise Forbidden("The user must belong to the requesting server")
        info = await self._hosted(room_id, origin)
        rv = info.room_version
        if versions is not None and rv.identifier not in versions:
            raise MatrixError(
                400,
                "M_INCOMPATIBLE_ROOM_VERSION",
                f"The room is version {rv.identifier}",
                room_version=rv.identifier,
            )
        if membership == "knock" and not rv.knock_join_rule:
            raise MatrixError(
                400, "M_INCOMPATIBLE_ROOM_VERSION", "This room version has no knocking", room_version=rv.identifier
            )
        template = await self.db.read(self._template, info, user_id, membership)
        return {"event": template, "room_version": rv.identifier}

    def _template(self, conn: Conn, info: RoomInfo, user_id: str, membership: str) -> JsonDict:
        rv = info.room_version
        room_id = info.room_id
        content: JsonDict = {"membership": membership}
        fields: JsonDict = {"type": "m.room.member", "sender": user_id, "state_key": user_id, "content": content}
        wanted = auth_types_for_event(fields, rv) | {CREATE, JOIN_RULES, POWER_LEVELS}
        state_ids = state_store.get_current_state_ids(conn, room_id, wanted)
        records = ev_store.get_events(conn, state_ids.values())
        state = {k: records[e].event for k, e in state_ids.items() if e in records}
        if rv.room_id_is_create_event_hash:
            create = ev_store.get_event(conn, "$" + room_id[1:])
            if create is not None:
                state[CREATE] = create.event
        if membership == "join":
            via = self._restricted_via(conn, info, state, user_id)
            if via is not None:
                content["join_authorised_via_users_server"] = via
                more = state_store.get_current_state_ids(conn, room_id, [("m.room.member", via)])
                state_ids.update(more)
                for k, e in more.items():
                    rec = ev_store.get_event(conn, e)
                    if rec is not None:
                        state[k] = rec.event
        auth_keys = auth_types_for_event(fields, rv)
        auth_ids = sorted(state_ids[k] for k in auth_keys if k in state_ids)
        extremities = ev_store.forward_extremities(conn, room_id)[:MAX_PREV_EVENTS]
        depth = min(max((d for _, d in extremities), default=0) + 1, MAX_DEPTH)
        pdu: JsonDict = {
            **fields,
            "room_id": room_id,
            "origin_server_ts": self.clock.time_ms(),
            "depth": depth,
        }
        if not rv.updated_redaction_rules:
            pdu["origin"] = self.server_name
        if rv.uses_event_id_in_pdu:
            recs = ev_store.get_events(conn, [e for e, _ in extremities] + auth_ids)
            pdu["prev_events"] = [[e, recs[e].event.pdu.get("hashes", {})] for e, _ in extremities if e in recs]
            pdu["auth_events"] = [[e, recs[e].event.pdu.get("hashes", {})] for e in auth_ids if e in recs]
        else:
            pdu["prev_events"] = [e for e, _ in extremities]
            pdu["auth_events"] = auth_ids
        # Would the event be allowed? Tell the server now rather than at send_*.
        probe = Event.from_pdu(dict(pdu), rv, event_id="$probe")
        try:
            check_auth(probe, state)
        except AuthError as e:
            raise Forbidden(f"The room does not allow this {membership}: {e}") from None
        return pdu

    def _restricted_via(
        self, conn: Conn, info: RoomInfo, state: Mapping[tuple[str, str], Event], user_id: str
    ) -> str | None:
        """Restricted rooms (v8+): a local member able to invite who authorises the
        join, when the user is in one of the allowed rooms; None when no authorisation
        is needed. Raises the spec's errors when it cannot be given."""
        rv = info.room_version
        jr = state.get(JOIN_RULES)
        rule = jr.content.get("join_rule") if jr is not None else None
        if not (
            (rv.restricted_join_rule and rule == "restricted")
            or (rv.knock_restricted_join_rule and rule == "knock_restricted")
        ):
            return None
        m = state_store.get_membership(conn, info.room_id, user_id)
        if m is not None and m[0] in ("join", "invite"):
            return None
        allow = jr.content.get("allow") if jr is not None else None
        rooms = [
            a["room_id"]
            for a in (allow if isinstance(allow, list) else [])
            if isinstance(a, dict) and a.get("type") == "m.room_membership" and isinstance(a.get("room_id"), str)
        ]
        known = [r for r in rooms if state_store.current_state_group(conn, r) is not None]
        if not known:
            raise MatrixError(400, "M_UNABLE_TO_AUTHORISE_JOIN", "No allowed room is known here")
        if not any(
            (mm := state_store.get_membership(conn, r, user_id)) is not None and mm[0] == "join" for r in known
        ):
            raise Forbidden("The user is in none of the rooms that allow joining")
        pl = PowerLevels.from_events(state.get(CREATE), state.get(POWER_LEVELS), rv)
        for candidate in sorted(state_store.local_members(conn, info.room_id)):
            if pl.user_level(candidate) >= pl.invite:
                return candidate
        raise MatrixError(400, "M_UNABLE_TO_GRANT_JOIN", "No user here may authorise the join")

    # -- send_join / send_leave / send_knock ---------------------------------------------

    async def send_join(
        self, origin: str, room_id: str, event_id: str, pdu: Any, *, omit_members: bool = False
    ) -> JsonDict:
        """``PUT /_matrix/federation/v2/send_join/{roomId}/{eventId}?omit_members=``"""
        info = await self._hosted(room_id, origin)
        pdu = self._countersign_restricted(info, pdu)
        event = await self._accept(origin, info, event_id, pdu, "join")

        def read(conn: Conn) -> JsonDict:
            before = state_store.state_before_event(conn, event.event_id) or {}
            # The servers in the room before the join: the joiner's only if another of
            # its users was already there.
            servers = state_store.servers_in_room(conn, room_id)
            joiner = _domain(event.sender)
            if graph.joined_users_of_server(conn, room_id, joiner, 2) < 2:
                servers.discard(joiner)
            kept = before
            omitted = False
            if omit_members:
                omitted = True
                heroes: set[str] = set()
                if ("m.room.name", "") not in before and ("m.room.canonical_alias", "") not in before:
                    members = sorted(k[1] for k in before if k[0] == "m.room.member")
                    heroes = set(members[:5])
                kept = {k: v for k, v in before.items() if k[0] != "m.room.member" or k[1] in heroes}
            chain = graph.auth_chain_ids(conn, [*kept.values(), event.event_id])
            if omit_members:
                chain -= set(kept.values())
            state_recs = ev_store.get_events(conn, kept.values())
            chain_recs = ev_store.get_events(conn, chain)
            answer: JsonDict = {
                "state": [_pdu(r) for r in _in_depth_order(state_recs)],
                "auth_chain": [_pdu(r) for r in _in_depth_order(chain_recs)],
                "event": dict(event.pdu),
                "members_omitted": omitted,
            }
            if omitted:
                answer["servers_in_room"] = sorted(servers)
            return answer

        return await self.db.read(read)

    async def send_leave(self, origin: str, room_id: str, event_id: str, pdu: Any) -> JsonDict:
        """``PUT /_matrix/federation/v2/send_leave/{roomId}/{eventId}``"""
        info = await self._hosted(room_id, origin)
        await self._accept(origin, info, event_id, pdu, "leave")
        return {}

    async def send_knock(self, origin: str, room_id: str, event_id: str, pdu: Any) -> JsonDict:
        """``PUT /_matrix/federation/v1/send_knock/{roomId}/{eventId}``"""
        info = await self._hosted(room_id, origin)
        if not info.room_version.knock_join_rule:
            raise MatrixError(400, "M_INCOMPATIBLE_ROOM_VERSION", "This room version has no knocking",
                              room_version=info.room_version.identifier)
        await self._accept(origin, info, event_id, pdu, "knock")
        state = await self.db.read(_stripped_state, room_id, None)
        return {"knock_room_state": state}

    def _countersign_restricted(self, info: RoomInfo, pdu: Any) -> Any:
        """A restricted join authorised by one of our users carries our signature too
        (auth rule 5.2); added before the checks, which require it."""
        if not isinstance(pdu, dict) or not info.room_version.restricted_join_rule:
            return pdu
        content = pdu.get("content")
        via = content.get("join_authorised_via_users_server") if isinstance(content, dict) else None
        if not isinstance(via, str) or _domain(via) != self.server_name:
            return pdu
        rv = info.room_version
        try:
            signed = sign_json(redact(pdu, rv), self.server_name, self.signing_key, strict=rv.strict_canonicaljson)
        except ValueError as e:
            raise MatrixError(400, "M_BAD_JSON", f"Not a valid event: {e}") from None
        out = dict(pdu)
        out["signatures"] = signed["signatures"]
        return out

    async def _checked(self, pdu: JsonDict, rv: RoomVersion) -> Event:
        """Steps 1-3 of the PDU checks for an event one server hands us to countersign
        or accept (send_join, send_leave, send_knock, invite), with one answer for each
        way it can fail: not canonical JSON -> 400 ``M_BAD_JSON``; not signed, or signed
        badly, by the servers that must sign it -> 403 ``M_FORBIDDEN`` (no server vouches
        for it: a refusal, as Synapse answers; invites-v1/v2 mandate no code); anything
        else malformed -> 400 ``M_INVALID_PARAM``."""
        try:
            return await self.intake.check_event(pdu, rv)
        except NonCanonicalPdu as e:
            raise MatrixError(400, "M_BAD_JSON", str(e)) from None
        except BadlySigned as e:
            raise Forbidden(f"The event is not signed by its server: {e}") from None
        except IntakeError as e:
            if _unsigned(pdu, rv):
                # The template sent back as it came: no server vouches for it.
                raise Forbidden("The event is not signed") from None
            raise MatrixError(400, "M_INVALID_PARAM", str(e)) from None

    async def _accept(self, origin: str, info: RoomInfo, event_id: str, pdu: Any, membership: str) -> Event:
        if not isinstance(pdu, dict):
            raise MatrixError(400, "M_BAD_JSON", "The event must be a JSON object")
        event = await self._checked(pdu, info.room_version)
        if event.event_id != event_id:
            raise MatrixError(400, "M_INVALID_PARAM", "The event ID does not match the path")
        if event.room_id != info.room_id:
            raise MatrixError(400, "M_INVALID_PARAM", "The event is for another room")
        if event.type != "m.room.member" or event.membership != membership:
            raise MatrixError(400, "M_INVALID_PARAM", f"Not an m.room.member event with membership {membership}")
        if _domain(event.sender) != origin:
            # A server speaks only for its own users (a replayed leave of another
            # server's user, say): not permitted.
            raise Forbidden("The sender does not belong to the requesting server")
        if event.state_key != event.sender:
            raise MatrixError(400, "M_INVALID_PARAM", "state_key must be the sender")
        try:
            rec = await self.intake.accept(origin, info, event)
        except IntakeError as e:
            raise MatrixError(400, "M_INVALID_PARAM", str(e)) from None
        if rec is None or rec.rejected_reason is not None:
            reason = rec.rejected_reason if rec is not None else "not stored"
            raise Forbidden(f"The {membership} is not allowed: {reason}")
        if rec.stream_pos is None:
            raise Forbidden(f"The {membership} is not allowed by the room's current state")
        for hook in self.on_accepted:
            try:
                await hook(rec)
            except Exception:
                log.exception("accepted-event hook failed for %s", event.event_id)
        return rec.event

    # -- invites ------------------------------------------------------------------------

    async def on_invite(self, origin: str, room_id: str, event_id: str, body: Any) -> JsonDict:
        """``PUT /_matrix/federation/v2/invite/{roomId}/{eventId}``: one of our users is
        invited; check the event, sign it with our key, keep it (an outlier) so the
        invitee's /sync shows it with ``invite_room_state``. The invitee need not have
        an account yet, as with Synapse (bridges register their users when these are
        first invited; and a 404 here would tell the inviting server to retry with the
        v1 API, invites-v2 says, not that the user is unknown)."""
        if not isinstance(body, dict):
            raise MatrixError(400, "M_NOT_JSON", "The body must be a JSON object")
        version = body.get("room_version")
        pdu = body.get("event")
        if not isinstance(version, str):
            raise MatrixError(400, "M_MISSING_PARAM", "room_version is required")
        rv = KNOWN_ROOM_VERSIONS.get(version)
        if rv is None:
            raise MatrixError(400, "M_INCOMPATIBLE_ROOM_VERSION", f"Unknown room version {version}", room_version=version)
        if not isinstance(pdu, dict):
            raise MatrixError(400, "M_MISSING_PARAM", "event is required")
        event = await self._checked(pdu, rv)
        stripped = await self._invite_room_state(body.get("invite_room_state", []), room_id, rv)
        if event.event_id != event_id or event.room_id != room_id:
            raise MatrixError(400, "M_INVALID_PARAM", "The event does not match the path")
        if event.type != "m.room.member" or event.membership != "invite" or event.state_key is None:
            raise MatrixError(400, "M_INVALID_PARAM", "Not an invite")
        if _domain(event.state_key) != self.server_name:
            raise MatrixError(400, "M_INVALID_PARAM", "The invitee is not a user of this server")
        if _domain(event.sender) != origin:
            raise Forbidden("The inviter does not belong to the requesting server")
        if await self.db.read(blocks_invites, event.state_key):
            raise InviteBlocked("The user does not accept invites")
        info = await self.db.read(ev_store.get_room, room_id)
        if info is not None and info.room_version.identifier != rv.identifier:
            raise MatrixError(400, "M_INVALID_PARAM", "The room version does not match the room")
        if info is not None and info.has_state:
            if not await self.db.read(graph.acl_allows, room_id, origin):
                raise Forbidden("The server ACL of the room denies the requesting server")
            m = await self.db.read(state_store.get_membership, room_id, event.state_key)
            if m is not None and m[0] in ("join", "ban"):
                raise Forbidden(f"The user is already {m[0]}")
        # Our signature: the invitee's server vouches for the invite (redacted form).
        signed = sign_json(redact(event.pdu, rv), self.server_name, self.signing_key, strict=rv.strict_canonicaljson)
        out = dict(event.pdu)
        out["signatures"] = signed["signatures"]
        stored = dict(out)
        unsigned = dict(stored.get("unsigned") or {})
        unsigned["invite_room_state"] = stripped
        stored["unsigned"] = unsigned
        stored_event = Event.from_pdu(stored, rv, event_id=event.event_id)
        pos = await self.db.write(self._store_invite, stored_event, rv)
        if pos is not None:
            self.notifier.notify(pos)
        return {"event": out}

    async def _invite_room_state(self, entries: Any, room_id: str, rv: RoomVersion) -> list[JsonDict]:
        """``invite_room_state`` as stripped state for the invitee's client. Since v1.16
        its entries are the room's events, the create event among them: checked like
        any PDU (format, signatures, same room). Room version 12 refuses an entry that
        fails (M_INVALID_PARAM); older versions, where servers are still migrating, keep
        what reads as stripped state and drop the rest (the spec's "MAY")."""
        if not isinstance(entries, list):
            raise MatrixError(400, "M_BAD_JSON", "invite_room_state must be a list of events")
        strict = rv.room_id_is_create_event_hash
        out: list[JsonDict] = []
        has_create = False
        for entry in entries[:50]:
            if not isinstance(entry, dict):
                raise MatrixError(400, "M_BAD_JSON", "invite_room_state must be a list of events")
            try:
                ev = await self.intake.check_event(entry, rv)
                if ev.room_id != room_id or ev.state_key is None:
                    raise IntakeError("not a state event of the room")
                item: JsonDict = {
                    "type": ev.type, "state_key": ev.state_key, "sender": ev.sender, "content": dict(ev.content),
                }
            except IntakeError as e:
                if strict:
                    raise MatrixError(400, "M_INVALID_PARAM", f"invite_room_state: {e}") from None
                log.info("invite_room_state entry kept as stripped state: %s", e)
                if not (
                    isinstance(entry.get("type"), str)
                    and isinstance(entry.get("state_key"), str)
                    and isinstance(entry.get("content"), dict)
                ):
                    continue
                item = {k: entry[k] for k in ("type", "state_key", "sender", "content") if k in entry}
            has_create = has_create or item["type"] == "m.room.create"
            out.append(item)
        if strict and not has_create:
            raise MatrixError(400, "M_INVALID_PARAM", "invite_room_state must hold the m.room.create event")
        return out

    def _store_invite(self, conn: Conn, event: Event, rv: RoomVersion) -> int | None:
        now = self.clock.time_ms()
        room_id = event.room_id
        if ev_store.get_room(conn, room_id) is None:
            ev_store.insert_room(conn, room_id, rv.identifier, None, now)
        if ev_store.event_nid(conn, event.event_id) is not None:
            return None
        ev_store.insert_event(conn, NewEvent(event, None, outlier=True, received_ts=now), now)
        pos = next_stream_pos(conn)
        assert event.state_key is not None
        if state_store.current_state_group(conn, room_id) is None or not state_store.has_local_member(conn, room_id):
            # A room we are not in (never were, or all our users left: what we hold of
            # its state is stale, and its servers no longer send us its events): the
            # invite is the invitee's membership until they join.
            state_store.set_membership(conn, room_id, event.state_key, "invite", event.event_id, pos, True)
        return pos

    # -- readers ------------------------------------------------------------------------

    async def get_event(self, origin: str, event_id: str) -> JsonDict:
        """``GET /_matrix/federation/v1/event/{eventId}``"""

        def read(conn: Conn) -> JsonDict:
            rec = ev_store.get_event(conn, event_id)
            if rec is None:
                raise NotFound("Unknown event")
            if not graph.acl_allows(conn, rec.event.room_id, origin):
                raise Forbidden("The server ACL of the room denies the requesting server")
            self._check_origin_in_room(conn, rec.event.room_id, origin)
            return self._envelope([self._for_server(conn, rec, origin)])

        return await self.db.read(read)

    async def get_state_ids(self, origin: str, room_id: str, event_id: str) -> JsonDict:
        """``GET /_matrix/federation/v1/state_ids/{roomId}?event_id=``"""

        def read(conn: Conn) -> JsonDict:
            state = self._state_at(conn, room_id, event_id, origin)
            chain = graph.auth_chain_ids(conn, state.values())
            return {"pdu_ids": sorted(state.values()), "auth_chain_ids": sorted(chain)}

        return await self.db.read(read)

    async def get_state(self, origin: str, room_id: str, event_id: str) -> JsonDict:
        """``GET /_matrix/federation/v1/state/{roomId}?event_id=``"""

        def read(conn: Conn) -> JsonDict:
            state = self._state_at(conn, room_id, event_id, origin)
            chain = graph.auth_chain_ids(conn, state.values())
            pdus = ev_store.get_events(conn, state.values())
            auth = ev_store.get_events(conn, chain)
            return {"pdus": [_pdu(r) for r in _in_depth_order(pdus)], "auth_chain": [_pdu(r) for r in _in_depth_order(auth)]}

        return await self.db.read(read)

    async def get_event_auth(self, origin: str, room_id: str, event_id: str) -> JsonDict:
        """``GET /_matrix/federation/v1/event_auth/{roomId}/{eventId}``"""

        def read(conn: Conn) -> JsonDict:
            rec = self._event_in_room(conn, room_id, event_id, origin)
            chain = graph.auth_chain_ids(conn, [rec.event.event_id])
            return {"auth_chain": [_pdu(r) for r in _in_depth_order(ev_store.get_events(conn, chain))]}

        return await self.db.read(read)

    async def backfill(self, origin: str, room_id: str, event_ids: list[str], limit: int) -> JsonDict:
        """``GET /_matrix/federation/v1/backfill/{roomId}?v=...&limit=``: the events
        from ``v`` backwards through prev_events, at most ``limit``."""
        if not event_ids:
            raise MatrixError(400, "M_MISSING_PARAM", "v is required")
        if limit < 1:
            raise MatrixError(400, "M_INVALID_PARAM", "limit must be positive")

        def read(conn: Conn) -> JsonDict:
            self._room_for_origin(conn, room_id, origin)
            ids = graph.walk_back(conn, room_id, event_ids, limit=min(limit, MAX_BACKFILL), include_start=True)
            recs = ev_store.get_events(conn, ids)
            return self._envelope([self._for_server(conn, recs[i], origin) for i in ids if i in recs])

        return await self.db.read(read)

    async def get_missing_events(self, origin: str, room_id: str, body: Any) -> JsonDict:
        """``POST /_matrix/federation/v1/get_missing_events/{roomId}``. An absent
        ``earliest_events`` or ``latest_events`` reads as an empty list (as Synapse
        reads it: with no ``latest_events`` nothing is asked for, and ``{"events": []}``
        is the answer); present, they must be lists of event IDs."""
        if not isinstance(body, dict):
            raise MatrixError(400, "M_NOT_JSON", "The body must be a JSON object")
        earliest, latest = body.get("earliest_events", []), body.get("latest_events", [])
        limit, min_depth = body.get("limit", 10), body.get("min_depth", 0)
        if not isinstance(earliest, list) or not isinstance(latest, list):
            raise MatrixError(400, "M_BAD_JSON", "earliest_events and latest_events must be lists")
        if not all(isinstance(e, str) for e in earliest + latest):
            raise MatrixError(400, "M_BAD_JSON", "event IDs must be strings")
        if type(limit) is not int or type(min_depth) is not int:
            raise MatrixError(400, "M_BAD_JSON", "limit and min_depth must be integers")

        def read(conn: Conn) -> JsonDict:
            self._room_for_origin(conn, room_id, origin)
            ids = graph.walk_back(
                conn,
                room_id,
                latest,
                limit=max(0, min(limit, MAX_MISSING)),
                stop_at=earliest,
                min_depth=min_depth,
                include_start=False,
            )
            recs = ev_store.get_events(conn, ids)
            events = [self._for_server(conn, recs[i], origin) for i in reversed(ids) if i in recs]
            return {"events": events}

        return await self.db.read(read)

    async def timestamp_to_event(self, origin: str, room_id: str, ts: int, direction: str) -> JsonDict:
        """``GET /_matrix/federation/v1/timestamp_to_event/{roomId}?ts=&dir=``"""
        if direction not in ("f", "b"):
            raise MatrixError(400, "M_INVALID_PARAM", "dir must be f or b")

        def read(conn: Conn) -> JsonDict:
            self._room_for_origin(conn, room_id, origin)
            eid = ev_store.event_id_at_or_near_ts(conn, room_id, ts, direction == "f")
            rec = ev_store.get_event(conn, eid) if eid is not None else None
            if rec is None:
                raise NotFound("No event found")
            return {"event_id": rec.event.event_id, "origin_server_ts": rec.event.origin_server_ts}

        return await self.db.read(read)

    # -- checks on the requesting server ----------------------------------------------------

    async def _hosted(self, room_id: str, origin: str) -> RoomInfo:
        info = await self.db.read(ev_store.get_room, room_id)
        if info is None or not info.has_state:
            raise NotFound("This server is not in that room")
        if not await self.db.read(graph.acl_allows, room_id, origin):
            raise Forbidden("The server ACL of the room denies the requesting server")
        locals_ = await self.db.read(state_store.local_members, room_id)
        if not locals_:
            raise NotFound("This server has no member in that room")
        return info

    def _room_for_origin(self, conn: Conn, room_id: str, origin: str) -> RoomInfo:
        info = ev_store.get_room(conn, room_id)
        if info is None or not info.has_state:
            raise NotFound("Unknown room")
        if not graph.acl_allows(conn, room_id, origin):
            raise Forbidden("The server ACL of the room denies the requesting server")
        self._check_origin_in_room(conn, room_id, origin)
        return info

    def _check_origin_in_room(self, conn: Conn, room_id: str, origin: str) -> None:
        if not graph.server_in_room(conn, room_id, origin):
            raise Forbidden("The requesting server has no member in the room")

    def _event_in_room(self, conn: Conn, room_id: str, event_id: str, origin: str) -> EventRecord:
        self._room_for_origin(conn, room_id, origin)
        rec = ev_store.get_event(conn, event_id)
        if rec is None or rec.event.room_id != room_id:
            raise NotFound("Unknown event")
        return rec

    def _state_at(self, conn: Conn, room_id: str, event_id: str, origin: str) -> dict[tuple[str, str], str]:
        rec = self._event_in_room(conn, room_id, event_id, origin)
        if rec.rejected_reason is not None:
            # A rejected event is no part of the room: there is no state "at" it to give.
            raise NotFound("That event was rejected here")
        if not self._visible(conn, rec, origin):
            raise Forbidden("The requesting server may not see that event")
        state = state_store.state_before_event(conn, event_id)
        if state is None:
            raise NotFound("The state at that event is not known here")
        return state

    def _visible(self, conn: Conn, rec: EventRecord, origin: str) -> bool:
        """History visibility for a server: it may see the event if one of its users
        could (``world_readable`` and ``shared``: any server in the room; ``invited``: a
        user of it invited or joined at the event; ``joined``: joined at the event)."""
        suffix = ":" + origin
        state = state_store.state_before_event(
            conn,
            rec.event.event_id,
            lambda t, k: t == "m.room.history_visibility" or (t == "m.room.member" and k.endswith(suffix)),
        )
        if state is None:
            return True  # an outlier (auth chains, invites): no history to hide
        hv_id = state.get(("m.room.history_visibility", ""))
        hv = "shared"
        if hv_id is not None:
            hrec = ev_store.get_event(conn, hv_id)
            value = hrec.event.content.get("history_visibility") if hrec else None
            hv = value if isinstance(value, str) else "shared"
        if hv in ("world_readable", "shared"):
            return True
        allowed = ("join", "invite") if hv == "invited" else ("join",)
        members = ev_store.get_events(conn, [v for k, v in state.items() if k[0] == "m.room.member"])
        if rec.event.type == "m.room.member" and rec.event.state_key and rec.event.state_key.endswith(suffix):
            return True  # its own users' membership events
        return any(m.event.membership in allowed for m in members.values())

    def _for_server(self, conn: Conn, rec: EventRecord, origin: str) -> JsonDict:
        """The PDU, or its redacted copy when the server may not see it or its sender
        asked to be erased when deactivating (account_deactivation.yaml, ``erase``:
        other servers are served what a user joining now would see)."""
        erased = rec.event.sender.endswith(":" + self.server_name) and accounts_store.erased_since(
            conn, (rec.event.sender,)
        )
        if not erased and self._visible(conn, rec, origin):
            return _pdu(rec)
        rv = rec.event.room_version
        pruned = redact(rec.event.pdu, rv)
        return pruned

    def _envelope(self, pdus: list[JsonDict]) -> JsonDict:
        return {"origin": self.server_name, "origin_server_ts": self.clock.time_ms(), "pdus": pdus}


def _unsigned(pdu: JsonDict, rv: RoomVersion) -> bool:
    """A well-formed event that only lacks its hashes or signatures (or both): not
    hashed and signed by its server."""
    if pdu.get("signatures") and pdu.get("hashes"):
        return False
    try:
        pc.check_format(
            dict(pdu, hashes=pdu.get("hashes") or {"sha256": ""}, signatures=pdu.get("signatures") or {"x": {}}),
            rv,
        )
    except pc.PduFormatError:
        return False
    return True


def _pdu(rec: EventRecord) -> JsonDict:
    """An event as servers exchange it (no ``unsigned`` of ours)."""
    pdu = dict(rec.event.pdu)
    pdu.pop("unsigned", None)
    return pdu


def _stripped_state(conn: Conn, room_id: str, user_id: str | None) -> list[JsonDict]:
    keys: list[tuple[str, str]] = [(t, "") for t in STRIPPED_TYPES]
    if user_id is not None:
        keys.append(("m.room.member", user_id))
    ids = state_store.get_current_state_ids(conn, room_id, keys)
    recs = ev_store.get_events(conn, ids.values())
    return [stripped_state(recs[e]) for e in ids.values() if e in recs]




@dataclass(frozen=True, slots=True)
class RoomFederation:
    """The inbound room services, wired together (what the federation routes call)."""

    intake: PduIntake
    transactions: TransactionHandler
    hosting: RoomHosting
    remote: RemoteRooms


def build_room_federation(services: Any, requester: FederationRequester, keys: KeyLookup) -> RoomFederation:
    """Build the intake, the transaction handler and the hosting service over
    ``services`` (a :class:`~pocketserver.services.Services`); the intake shares the
    local event pipeline's per-room locks and event cache."""
    s = services
    intake = PduIntake(
        s.db,
        s.clock,
        s.notifier,
        requester,
        keys,
        s.config.server_name,
        s.signing_key,
        room_lock=s.pipeline.room_lock,
        forget_cached=s.pipeline.cache.pop,
    )
    transactions = TransactionHandler(
        s.db, s.clock, s.notifier, intake, requester, s.config.server_name, typing=s.typing, receipts=s.receipts
    )
    hosting = RoomHosting(s.db, s.clock, s.notifier, intake, s.config.server_name, s.signing_key)
    remote = RemoteRooms(s.db, s.clock, s.notifier, intake, requester, s.config.server_name, s.signing_key)
    # Our users in rooms held elsewhere: the client API's joins, invites, leaves,
    # knocks, directory and history go through it.
    s.rooms.remote = remote
    transactions.joining_through = remote.joining_through
    s.reader.remote = remote
    sender = s.federation_sender
    if sender is not None:
        hosting.on_accepted.append(_relay_accepted(s.db, sender, s.config.server_name))
    return RoomFederation(intake, transactions, hosting, remote)


def _relay_accepted(db: Database, sender: Any, server_name: str) -> AcceptedHook:
    """A join, leave or knock another server handed us through send_join / send_leave /
    send_knock: the room's other servers hear of it from us (the resident server), not
    the server that sent it, which has it already."""

    async def relay(rec: EventRecord) -> None:
        event = rec.event
        origin = _domain(event.sender)

        def txn(conn: Conn) -> None:
            servers = outbox.remote_servers_in_room(conn, event.room_id) - {origin, server_name}
            if servers:
                sender.queue_in_txn(conn, sorted(servers), outbox.PDU, _pdu(rec))

        await db.write(txn)

    return relay


def _in_depth_order(recs: Mapping[str, EventRecord]) -> list[EventRecord]:
    """Events oldest first (depth, then timestamp), the same on every call: a peer
    that applies a state or auth-chain list in order (SyTest's does) ends with the
    newest of two events of one state key, never whichever a set happened to give last."""
    return sorted(recs.values(), key=lambda r: (r.event.depth, r.event.origin_server_ts, r.event.event_id))
