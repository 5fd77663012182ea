"""This server's users in rooms hosted elsewhere: joining, inviting remote users,
leaving and rejecting invites, knocking, backfill and the remote room directory.

Spec: server-server-api.md "Joining Rooms" (make_join, send_join v2), "Inviting to a
room" (invite v2), "Leaving Rooms (Rejecting Invites)" (make_leave, send_leave v2),
"Knocking upon a room" (make_knock, send_knock), "Backfilling and retrieving missing
events" (/backfill, /event), "Querying for information" (query/directory) and "Public
Room Directory"; shapes in data/api/server-server/.

Joining, step by step (:meth:`RemoteRooms.join`):

1. ``make_join`` with the room versions this server knows, on each candidate server in
   turn until one answers (one that cannot be reached or refuses is skipped);
2. the template filled in (our timestamp and content, ``join_authorised_via_users_server``
   kept as given), hashed and signed with our key, its event ID per the room version;
3. ``send_join`` v2 to the same server (v1 when it does not serve v2);
4. the answer checked: every state and auth-chain event's format, signatures and
   content hash (the intake's steps 1-3; one that fails is dropped), the
   create event of the state names the room version make_join gave, and the join
   itself is allowed by the state;
5. one write transaction: the auth chain and state as outliers (each checked against
   its own auth events, rejected ones kept out of the state), the state before the join
   as a state group, the join in the timeline, the room's current state and
   memberships, the forward extremity (the join) and the backward extremities (its
   prev_events, where backfill goes on).

Memory: a send_join answer of a big room is tens of MB of JSON. Its lists are consumed
in place (each PDU dict becomes an :class:`~pocketserver.protocol.events.Event` around
the same dict, never copied) and the answer itself is dropped before the write; the
state map is of event IDs.

What it must never know: how requests are signed or routed (a
:class:`~pocketserver.federation.interfaces.FederationRequester`), HTTP, or the client
API's shapes beyond the directory's pass-through.
"""

from __future__ import annotations

import logging
import secrets
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from typing import Any, BinaryIO

import orjson
import trio

from pocketserver.errors import Forbidden, MatrixError, NotFound
from pocketserver.federation.intake import IntakeError, PduIntake
from pocketserver.federation.interfaces import (
    FederationError,
    FederationRequester,
    FederationUnreachable,
)
from pocketserver.protocol import pdu_checks as pc
from pocketserver.protocol.auth_rules import CREATE, AuthError, auth_types_for_event, check_auth
from pocketserver.protocol.canonical_json import CanonicalJsonError, encode_canonical_json
from pocketserver.protocol.events import Event, EventFormatError, StateKey
from pocketserver.protocol.json_stream import JsonStreamError, ObjectSplitter
from pocketserver.protocol.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from pocketserver.protocol.signing import SigningKey, sign_event
from pocketserver.services.clock import Clock
from pocketserver.services.notifier import Notifier
from pocketserver.storage import event_graph as graph
from pocketserver.storage import events as ev_store
from pocketserver.storage import state as state_store
from pocketserver.storage.database import Conn, Database
from pocketserver.storage.events import NewEvent, RoomInfo
from pocketserver.storage.streams import next_backfill_pos, next_stream_pos

log = logging.getLogger(__name__)

JsonDict = dict[str, Any]
StateMap = dict[StateKey, str]

REQUEST_TIMEOUT_S = 30.0
SEND_JOIN_TIMEOUT_S = 300.0  # a big room's state takes a while to gather and send
# A send_join answer is spooled to a temporary file, never held whole: this bounds the
# disk it may take (a room of 50,000 state events answers ~60 MB).
SEND_JOIN_MAX_BYTES = 1024 * 1024 * 1024
# Any one value in it (a PDU is at most 64 KiB; "event" is one PDU).
MAX_ANSWER_VALUE = 1024 * 1024
READ_CHUNK = 256 * 1024
# Events stored per write transaction during a join (each read back from the spool).
STORE_BATCH = 2000
# Auth events of the answer kept decoded between batches (the create event, power
# levels, join rules and the members that sent events, in a typical room).
AUTH_EVENTS_KEPT = 2000
MAX_CANDIDATES = 10
# How long after a send_join its server's EDUs about users we share no room with yet
# are kept (the answer of a big room takes minutes), and for how many servers at once.
JOINING_GRACE_S = SEND_JOIN_TIMEOUT_S + 60.0
MAX_JOINING_THROUGH = 1000
MAX_BACKFILL = 100
# The state an invitee's server is sent with an invite (and shown before joining).
INVITE_STATE_TYPES = (
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.topic",
)


def _q(s: str) -> str:
    return urllib.parse.quote(s, safe="")


def _domain(identifier: str) -> str:
    return identifier.split(":", 1)[1] if ":" in identifier else ""


class JoinFailed(Exception):
    """One server could not complete the join (its answer was unusable)."""


class RemoteRooms:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        notifier: Notifier,
        intake: PduIntake,
        requester: FederationRequester,
        server_name: str,
        signing_key: SigningKey,
    ) -> None:
        self.db = db
        self.clock = clock
        self.notifier = notifier
        self.intake = intake
        self.requester = requester
        self.server_name = server_name
        self.signing_key = signing_key
        self._backfill_turn = 0
        # Called inside the write that stores one of our users' join to a room held
        # elsewhere (the federation EDU producer: presence for the room's servers).
        self.in_join_txn: list[Callable[[Conn, Event], None]] = []
        # Servers we sent a send_join to lately -> until when (trio clock) their EDUs
        # about users not yet in a room here are expected (see joining_through).
        self._joined_through: dict[str, float] = {}

    # -- errors ----------------------------------------------------------------------------

    def _client_error(self, refused: FederationError | None, what: str, unusable: str | None = None) -> MatrixError:
        """The client's answer when no server completed ``what``: the refusal of the
        last server that refused (its errcode, never its body), else 502 (as Synapse),
        saying why when a server answered something we could not use (``unusable``,
        our own words: a make_join template that is no valid event of the room's
        version, a send_join answer without the room's create event, ...)."""
        if refused is not None and 400 <= refused.status < 500 and refused.status != 429:
            errcode = refused.errcode if refused.errcode.startswith("M_") else "M_FORBIDDEN"
            status = refused.status if refused.status in (400, 403, 404) else 403
            return MatrixError(status, errcode, f"The room's server refused the {what}")
        if unusable is not None:
            return MatrixError(502, "M_UNKNOWN", f"The room's server gave an answer this server cannot use: {unusable}")
        return MatrixError(502, "M_UNKNOWN", f"No server in the room could be reached to {what}")

    def candidates(self, servers: Iterable[str]) -> list[str]:
        out = [s for s in dict.fromkeys(servers) if isinstance(s, str) and s and s != self.server_name]
        return out[:MAX_CANDIDATES]

    # -- the room directory ----------------------------------------------------------------

    async def resolve_alias(self, alias: str) -> tuple[str, list[str]]:
        """``GET /_matrix/federation/v1/query/directory?room_alias=`` on the alias's
        server: (room ID, servers to join through)."""
        server = _domain(alias)
        try:
            body = await self.requester.get_json(
                server, "/_matrix/federation/v1/query/directory", {"room_alias": alias},
                timeout_s=REQUEST_TIMEOUT_S,
            )
        except FederationError as e:
            if e.status == 404:
                raise NotFound(f"Room alias {alias} not found") from None
            raise MatrixError(502, "M_UNKNOWN", f"{server} could not resolve the alias") from None
        except FederationUnreachable:
            raise MatrixError(502, "M_UNKNOWN", f"{server} could not be reached") from None
        room_id = body.get("room_id") if isinstance(body, dict) else None
        servers = body.get("servers") if isinstance(body, dict) else None
        if not isinstance(room_id, str) or not room_id.startswith("!"):
            raise MatrixError(502, "M_UNKNOWN", f"{server} gave no room for the alias")
        found = [s for s in servers if isinstance(s, str)] if isinstance(servers, list) else []
        return room_id, [server, *found] if server not in found else found

    async def public_rooms(self, server: str, query: Mapping[str, str], body: JsonDict | None) -> JsonDict:
        """``/_matrix/federation/v1/publicRooms`` on ``server`` (GET, or POST with a
        filter); the answer checked for shape, never passed on as it came."""
        path = "/_matrix/federation/v1/publicRooms"
        try:
            if body is None:
                answer = await self.requester.get_json(server, path, dict(query), timeout_s=REQUEST_TIMEOUT_S)
            else:
                answer = await self.requester.post_json(server, path, body, timeout_s=REQUEST_TIMEOUT_S)
        except FederationError as e:
            if e.status == 404:
                raise NotFound(f"{server} has no public room directory") from None
            raise MatrixError(502, "M_UNKNOWN", f"{server} did not answer the directory request") from None
        except FederationUnreachable:
            raise MatrixError(502, "M_UNKNOWN", f"{server} could not be reached") from None
        chunk = answer.get("chunk") if isinstance(answer, dict) else None
        if not isinstance(chunk, list):
            raise MatrixError(502, "M_UNKNOWN", f"{server} gave no room list")
        out: JsonDict = {"chunk": [c for c in chunk if isinstance(c, dict) and isinstance(c.get("room_id"), str)]}
        for key in ("next_batch", "prev_batch"):
            if isinstance(answer.get(key), str):
                out[key] = answer[key]
        if type(answer.get("total_room_count_estimate")) is int:
            out["total_room_count_estimate"] = answer["total_room_count_estimate"]
        return out

    # -- building our membership events from a template -------------------------------------

    async def _make(
        self, server: str, kind: str, room_id: str, user_id: str, with_versions: bool
    ) -> tuple[JsonDict, RoomVersion]:
        path = f"/_matrix/federation/v1/make_{kind}/{_q(room_id)}/{_q(user_id)}"
        query = {"ver": sorted(KNOWN_ROOM_VERSIONS)} if with_versions else None
        answer = await self.requester.get_json(server, path, query, timeout_s=REQUEST_TIMEOUT_S)
        if not isinstance(answer, dict) or not isinstance(answer.get("event"), dict):
            raise JoinFailed(f"make_{kind} from {server} gave no event")
        version = answer.get("room_version", "1")
        rv = KNOWN_ROOM_VERSIONS.get(version) if isinstance(version, str) else None
        if rv is None:
            # The room's version is one we do not know: no other server can help.
            raise _incompatible(version if isinstance(version, str) else None)
        return answer["event"], rv

    def _fill(
        self, template: JsonDict, rv: RoomVersion, room_id: str, user_id: str, membership: str,
        content: Mapping[str, Any] | None,
    ) -> Event:
        """The template as our event: checked to be the membership asked for, our
        timestamp and content added, hashed and signed."""
        t_content = template.get("content")
        if (
            template.get("type") != "m.room.member"
            or template.get("room_id") != room_id
            or template.get("sender") != user_id
            or template.get("state_key") != user_id
            or not isinstance(t_content, dict)
            or t_content.get("membership") != membership
        ):
            raise JoinFailed(f"the make_{membership} template is not a {membership} of {user_id}")
        pdu = {k: v for k, v in template.items() if k not in ("signatures", "hashes", "unsigned", "event_id")}
        new_content = dict(content or {})
        if "join_authorised_via_users_server" in t_content:
            new_content["join_authorised_via_users_server"] = t_content["join_authorised_via_users_server"]
        new_content["membership"] = membership
        pdu["content"] = new_content
        pdu["origin_server_ts"] = self.clock.time_ms()
        if rv.updated_redaction_rules:
            pdu.pop("origin", None)
        else:
            pdu["origin"] = self.server_name
        if rv.uses_event_id_in_pdu:
            pdu["event_id"] = f"${secrets.token_urlsafe(18)}:{self.server_name}"
        try:
            signed = sign_event(pdu, self.server_name, self.signing_key, rv)
            event = pc.check_format(signed, rv)
        except (ValueError, EventFormatError) as e:
            raise JoinFailed(f"the make_{membership} template is not a valid event of room version {rv.identifier}: {e}") from None
        return event

    # -- joining -----------------------------------------------------------------------------

    async def join(
        self, user_id: str, room_id: str, servers: Iterable[str], content: Mapping[str, Any] | None = None
    ) -> str:
        """Join ``room_id`` through the first of ``servers`` that lets us. Raises the
        client's error when none does."""
        refused: FederationError | None = None
        unusable: str | None = None
        tried = self.candidates(servers)
        if not tried:
            raise NotFound("No server to join the room through is known")
        for server in tried:
            try:
                template, rv = await self._make(server, "join", room_id, user_id, True)
                event = self._fill(template, rv, room_id, user_id, "join", content)
                self._note_joining_through(server)
                await self._send_join(server, event, rv)
                return room_id
            except FederationError as e:
                log.info("joining %s through %s refused: %s", room_id, server, e)
                if e.errcode == "M_INCOMPATIBLE_ROOM_VERSION":
                    raise _incompatible(e.room_version) from None
                refused = e
                if e.status in (400, 403):
                    break  # the room refuses (as Synapse: no other server is asked)
            except FederationUnreachable as e:
                log.info("joining %s through %s: unreachable: %s", room_id, server, e)
            except JoinFailed as e:
                log.warning("joining %s through %s failed: %s", room_id, server, e)
                unusable = str(e)
        raise self._client_error(refused, "join", unusable)

    async def _send_join(self, server: str, event: Event, rv: RoomVersion) -> None:
        """``send_join`` v2, its answer spooled to a temporary file as it arrives (never
        held whole), then checked and stored from there (:meth:`_complete_join`); v1
        (deprecated, its answer wrapped as ``[200, {...}]``) when the server does not
        serve v2 ("Joining Rooms": a server should fall back to v1 then)."""
        tail = f"send_join/{_q(event.room_id)}/{_q(event.event_id)}"
        with tempfile.TemporaryFile(prefix="pocketserver-send-join-") as raw:
            try:
                await self.requester.put_json_to_file(
                    server, "/_matrix/federation/v2/" + tail, event.pdu, raw,
                    timeout_s=SEND_JOIN_TIMEOUT_S, max_size=SEND_JOIN_MAX_BYTES,
                )
            except FederationError as e:
                if not e.unknown_endpoint:
                    raise
                answer = await self.requester.put_json(
                    server, "/_matrix/federation/v1/" + tail, event.pdu, timeout_s=SEND_JOIN_TIMEOUT_S
                )
                if isinstance(answer, list) and len(answer) == 2 and answer[0] == 200:
                    answer = answer[1]
                if not isinstance(answer, dict):
                    raise JoinFailed("send_join answered no object") from None
                raw.seek(0)
                raw.truncate()
                raw.write(orjson.dumps(answer))
                del answer
            raw.seek(0)
            await self._complete_join(server, event, rv, raw)

    def _note_joining_through(self, server: str) -> None:
        now = trio.current_time()
        if len(self._joined_through) >= MAX_JOINING_THROUGH:
            self._joined_through = {s: t for s, t in self._joined_through.items() if t > now}
        if len(self._joined_through) < MAX_JOINING_THROUGH:
            self._joined_through[server] = now + JOINING_GRACE_S

    def joining_through(self, server: str) -> bool:
        """Whether we sent ``server`` a send_join in the last :data:`JOINING_GRACE_S`
        seconds: the presence of the room's members it sends as it accepts the join
        may arrive before the join is stored here."""
        until = self._joined_through.get(server)
        return until is not None and trio.current_time() < until

    async def _complete_join(self, server: str, event: Event, rv: RoomVersion, raw: BinaryIO) -> None:
        """Steps 4 and 5 of a join over the spooled answer ``raw``.

        Pass 1 reads the answer piece by piece (:class:`~pocketserver.protocol.json_stream.ObjectSplitter`)
        and checks each event as it comes (format, signatures, hashes; one that fails is dropped
        as the intake drops it); what passed is written to a second temporary file,
        and only a small index entry of each (depth, timestamp, where it is) and the
        state map stay in memory. Then the create event and the join are checked
        against the state. Pass 2 stores the events oldest first (the order one
        big write would take: by depth, then timestamp) in batches of
        ``STORE_BATCH``, each read back from the file, each against its own auth
        events; then one write makes the join and the room's state. Nothing is
        stored before the whole answer passed pass 1; outliers stored by pass 2 stay
        harmless if the join stops there.
        """
        room_id = event.room_id
        t0 = time.perf_counter()
        splitter = ObjectSplitter(("state", "auth_chain"), ("event",), max_value=MAX_ANSWER_VALUE)
        # event ID -> (depth, origin_server_ts, offset, length) in ``checked``; first
        # insertion order kept (as a dict of events would), the last copy wins.
        index: dict[str, tuple[int, int, int, int]] = {}
        state: StateMap = {}
        dropped = 0
        memberships: dict[str, tuple[str, str]] = {}  # event ID -> (state_key, membership)
        creates: set[str] = set()
        # the events named as auth events: kept in memory once stored (bounded), as
        # the next batches' auth checks ask for the same few again and again
        auth_refs: set[str] = set()
        countersigned: Any = None
        with tempfile.TemporaryFile(prefix="pocketserver-join-checked-") as checked:
            where = 0
            count = 0
            while True:
                chunk = raw.read(READ_CHUNK)
                try:
                    pieces = splitter.feed(chunk) if chunk else None
                    if pieces is None:
                        splitter.close()
                        break
                except JsonStreamError as e:
                    raise JoinFailed(f"send_join answered invalid JSON: {e}") from None
                del chunk
                for piece in pieces:
                    if piece.key == "event":
                        countersigned = piece.value
                        continue
                    if piece.index is None:
                        raise JoinFailed("send_join answered no state or auth_chain")
                    which = piece.key
                    count += 1
                    if count % 64 == 0:
                        # A big room's checks take seconds of CPU: let other requests in.
                        await trio.lowlevel.checkpoint()
                    try:
                        ev = await self.intake.check_event(piece.value, rv)
                    except IntakeError as e:
                        # Dropped, as any PDU that fails steps 1-3 is (a bad signature,
                        # say): the join goes on without it; events it authorises are
                        # stored as rejected, and a missing create event fails the join.
                        log.warning("joining %s: dropped a %s event of the answer: %s", room_id, which, e)
                        dropped += 1
                        continue
                    if ev.room_id != room_id:
                        raise JoinFailed(f"a {which} event of the answer is of another room")
                    if which == "state":
                        if ev.state_key is None:
                            raise JoinFailed("a state event of the answer has no state_key")
                        state[ev.state_tuple] = ev.event_id
                    if ev.type == "m.room.member" and ev.state_key is not None and ev.membership is not None:
                        memberships[ev.event_id] = (ev.state_key, ev.membership)
                    if ev.type == "m.room.create":
                        creates.add(ev.event_id)
                    if len(auth_refs) < AUTH_EVENTS_KEPT:
                        auth_refs.update(ev.auth_event_ids)
                    data = orjson.dumps(ev.pdu)
                    checked.write(data)
                    index[ev.event_id] = (ev.depth, ev.origin_server_ts, where, len(data))
                    where += len(data)
            if not {"state", "auth_chain"} <= splitter.arrays_seen:
                raise JoinFailed("send_join answered no state or auth_chain")
            del splitter
            checked.flush()

            def load(eid: str) -> Event:
                _, _, offset, length = index[eid]
                checked.seek(offset)
                return Event.from_stored(orjson.loads(checked.read(length)), rv, eid)

            # The resident server may have countersigned a restricted join: its copy.
            if isinstance(countersigned, dict):
                try:
                    signed = await self.intake.check_event(countersigned, rv)
                except IntakeError as e:
                    raise JoinFailed(f"the countersigned join: {e}") from None
                # Only their signature may differ from ours (a redacted copy, same ID, would not).
                if signed.event_id == event.event_id and signed.pdu.get("content") == event.pdu.get("content"):
                    event = signed
            create_id = state.get(CREATE)
            if create_id is None or create_id not in index:
                raise JoinFailed("the state has no create event")
            create = load(create_id)
            if create.content.get("room_version", "1") != rv.identifier:
                raise JoinFailed("the create event names another room version than make_join")
            if rv.room_id_is_create_event_hash and room_id != "!" + create.event_id[1:]:
                raise JoinFailed("the create event is not the room's")
            if creates - {create.event_id}:
                raise JoinFailed("the answer holds a second create event")
            # The join against the state before it (the resident server accepted it there).
            auth_state = {k: load(state[k]) for k in auth_types_for_event(event, rv) | {CREATE} if k in state}
            try:
                check_auth(event, auth_state)
            except AuthError as e:
                raise JoinFailed(f"the join is not allowed by the room's state: {e}") from None
            del auth_state
            t1 = time.perf_counter()
            # Oldest first, as one write of all of them would take them (a stable sort
            # of the answer's order by depth, then timestamp).
            order = sorted(index, key=lambda eid: index[eid][:2])
            rejected: set[str] = set()
            kept: dict[str, Event] = {}
            await self.db.write(_insert_room, room_id, rv, create.sender, self.clock.time_ms())
            for i in range(0, len(order), STORE_BATCH):
                batch = {eid: load(eid) for eid in order[i : i + STORE_BATCH]}
                stored = await self.db.write(
                    self.intake.persist_outliers, rv, room_id, batch, (kept, auth_refs, AUTH_EVENTS_KEPT)
                )
                rejected.update(eid for eid, reason in stored.items() if reason is not None)
                del batch
            n_events = len(index)
            del order, kept
            index.clear()
        pos = await self.db.write(self._persist_join, event, rv, state, rejected, memberships)
        self.notifier.notify(pos)
        log.info(
            "joined %s through %s: %d events checked (%d dropped) in %.2f s, stored in %.2f s",
            room_id, server, n_events, dropped, t1 - t0, time.perf_counter() - t1,
        )

    def _persist_join(
        self,
        conn: Conn,
        join: Event,
        rv: RoomVersion,
        state: StateMap,
        rejected: set[str],
        memberships: dict[str, tuple[str, str]],
    ) -> int:
        """The join itself, after the answer's events are stored as outliers (those
        rejected are kept out of the state)."""
        room_id = join.room_id
        now = self.clock.time_ms()
        before = {k: v for k, v in state.items() if v not in rejected}
        # The state before the join, the join, the state after it.
        before_group = state_store.create_state_group(conn, room_id, None, before)
        pos = next_stream_pos(conn)
        known = graph.known_events(conn, [join.event_id]).get(join.event_id)
        if known is None:
            ev_store.insert_event(conn, NewEvent(join, pos, received_ts=now), now)
        else:
            graph.promote_outlier(conn, join.event_id, pos, None)
        key = join.state_tuple
        after = dict(before)
        after[key] = join.event_id
        after_group = state_store.create_state_group(conn, room_id, before_group, {key: join.event_id})
        state_store.set_event_state(conn, join.event_id, after_group, before.get(key))
        # Current state: what the room's state is now (a rejoin replaces what we held).
        old = state_store.get_current_state_ids(conn, room_id) if state_store.current_state_group(conn, room_id) else {}
        changes: dict[StateKey, str | None] = {k: v for k, v in after.items() if old.get(k) != v}
        changes.update({k: None for k in old if k not in after})
        state_store.set_current_state(conn, room_id, after_group, changes)
        assert join.state_key is not None and join.membership is not None
        memberships = {**memberships, join.event_id: (join.state_key, join.membership)}
        for (etype, _), eid in changes.items():
            m = memberships.get(eid) if etype == "m.room.member" and eid is not None else None
            if m is not None and eid is not None:
                state_store.set_membership(
                    conn, room_id, m[0], m[1], eid, pos, m[0].endswith(":" + self.server_name),
                )
        graph.replace_forward_extremities(conn, room_id, join.event_id)
        have = graph.known_events(conn, join.prev_event_ids)
        missing = [p for p in join.prev_event_ids if not (p in have and have[p].in_timeline)]
        graph.update_backward_extremities(conn, room_id, join.event_id, missing)
        for hook in self.in_join_txn:
            hook(conn, join)
        return pos

    # -- leaving a room we are not in (rejecting an invite, rescinding a knock) ------------

    async def leave(self, user_id: str, room_id: str, servers: Iterable[str], reason: str | None = None) -> int:
        """``make_leave`` / ``send_leave`` v2 through the first server that answers; our
        leave is kept (an outlier) as the user's membership, so /sync shows the room
        under ``leave``. Returns its stream position."""
        refused: FederationError | None = None
        content = {"reason": reason} if reason is not None else None
        for server in self.candidates(servers):
            try:
                template, rv = await self._make(server, "leave", room_id, user_id, False)
                event = self._fill(template, rv, room_id, user_id, "leave", content)
                path = f"/_matrix/federation/v2/send_leave/{_q(room_id)}/{_q(event.event_id)}"
                await self.requester.put_json(server, path, event.pdu, timeout_s=REQUEST_TIMEOUT_S)
            except FederationError as e:
                log.info("leaving %s through %s refused: %s", room_id, server, e)
                refused = e
                continue
            except FederationUnreachable as e:
                log.info("leaving %s through %s: unreachable: %s", room_id, server, e)
                continue
            except JoinFailed as e:
                log.warning("leaving %s through %s failed: %s", room_id, server, e)
                continue
            pos = await self.db.write(self._store_own_outlier, event, rv, None)
            self.notifier.notify(pos)
            return pos
        local = await self._reject_invite_locally(user_id, room_id, content)
        if local is not None:
            return local
        raise self._client_error(refused, "leave")

    async def _reject_invite_locally(
        self, user_id: str, room_id: str, content: Mapping[str, Any] | None
    ) -> int | None:
        """An invite whose inviting servers refuse or cannot be reached is still
        rejected here: our own leave on the invite (its only prev and auth event),
        signed and kept as an outlier, so the user is rid of it and /sync shows the room
        under ``leave`` (Synapse's "out-of-band" leave). The room never learns of it;
        the invite was never in our view of the room either. None if not invited."""

        def read(conn: Conn) -> tuple[RoomInfo, Event] | None:
            info = ev_store.get_room(conn, room_id)
            m = state_store.get_membership(conn, room_id, user_id)
            if info is None or info.has_state or m is None or m[0] != "invite":
                return None
            rec = ev_store.get_event(conn, m[1])
            return (info, rec.event) if rec is not None else None

        found = await self.db.read(read)
        if found is None:
            return None
        info, invite = found
        rv = info.room_version
        ref: Any = [invite.event_id, dict(invite.pdu.get("hashes") or {})] if rv.uses_event_id_in_pdu else invite.event_id
        template: JsonDict = {
            "type": "m.room.member", "room_id": room_id, "sender": user_id, "state_key": user_id,
            "content": {"membership": "leave"}, "depth": invite.depth + 1,
            "prev_events": [ref], "auth_events": [ref],
        }
        event = self._fill(template, rv, room_id, user_id, "leave", content)
        log.info("invite of %s to %s rejected here only: no server took the rejection", user_id, room_id)
        pos = await self.db.write(self._store_own_outlier, event, rv, None)
        self.notifier.notify(pos)
        return pos

    # -- knocking ----------------------------------------------------------------------------

    async def knock(self, user_id: str, room_id: str, servers: Iterable[str], reason: str | None = None) -> None:
        """``make_knock`` / ``send_knock``; the knock kept (an outlier) with the stripped
        state the room's server answered, for /sync's ``knock`` section."""
        refused: FederationError | None = None
        content = {"reason": reason} if reason is not None else None
        tried = self.candidates(servers)
        if not tried:
            raise NotFound("No server to knock through is known")
        for server in tried:
            try:
                template, rv = await self._make(server, "knock", room_id, user_id, True)
                if not rv.knock_join_rule:
                    raise MatrixError(400, "M_INCOMPATIBLE_ROOM_VERSION", "The room's version has no knocking")
                event = self._fill(template, rv, room_id, user_id, "knock", content)
                path = f"/_matrix/federation/v1/send_knock/{_q(room_id)}/{_q(event.event_id)}"
                answer = await self.requester.put_json(server, path, event.pdu, timeout_s=REQUEST_TIMEOUT_S)
            except FederationError as e:
                log.info("knocking on %s through %s refused: %s", room_id, server, e)
                if e.errcode == "M_INCOMPATIBLE_ROOM_VERSION":
                    raise MatrixError(400, "M_INCOMPATIBLE_ROOM_VERSION", "The room's version is not supported here") from None
                refused = e
                continue
            except FederationUnreachable as e:
                log.info("knocking on %s through %s: unreachable: %s", room_id, server, e)
                continue
            except JoinFailed as e:
                log.warning("knocking on %s through %s failed: %s", room_id, server, e)
                continue
            raw = answer.get("knock_room_state") if isinstance(answer, dict) else None
            stripped = [_stripped(s) for s in raw[:50] if _stripped(s) is not None] if isinstance(raw, list) else []
            pos = await self.db.write(self._store_own_outlier, event, rv, stripped)
            self.notifier.notify(pos)
            return
        raise self._client_error(refused, "knock")

    def _store_own_outlier(self, conn: Conn, event: Event, rv: RoomVersion, stripped: list[Any] | None) -> int:
        """Our own leave or knock in a room we are not in: an outlier, the user's
        membership row pointing at it (the room's state stays as it was, if any)."""
        room_id = event.room_id
        now = self.clock.time_ms()
        if ev_store.get_room(conn, room_id) is None:
            ev_store.insert_room(conn, room_id, rv.identifier, None, now)
        if stripped is not None:
            pdu = dict(event.pdu)
            unsigned = dict(pdu.get("unsigned") or {})
            unsigned["knock_room_state"] = [s for s in stripped if s is not None]
            pdu["unsigned"] = unsigned
            event = Event.from_pdu(pdu, rv, event_id=event.event_id)
        if ev_store.event_nid(conn, event.event_id) is None:
            ev_store.insert_event(conn, NewEvent(event, None, outlier=True, received_ts=now), now)
        pos = next_stream_pos(conn)
        assert event.state_key is not None and event.membership is not None
        state_store.set_membership(conn, room_id, event.state_key, event.membership, event.event_id, pos, True)
        return pos

    # -- inviting a remote user ----------------------------------------------------------------

    async def invite_room_state(self, room_id: str, sender: str | None = None) -> list[JsonDict]:
        """The stripped state sent with an invite: the room's invite state types and
        the inviter's membership (``sender``)."""
        keys = [(t, "") for t in INVITE_STATE_TYPES]
        if sender is not None:
            keys.append(("m.room.member", sender))

        def read(conn: Conn) -> list[JsonDict]:
            ids = state_store.get_current_state_ids(conn, room_id, keys)
            recs = ev_store.get_events(conn, ids.values())
            out = []
            for rec in recs.values():
                pdu = dict(rec.event.pdu)
                pdu.pop("unsigned", None)
                out.append(pdu)
            return out

        return await self.db.read(read)

    async def exchange_invite(self, event: Event) -> Event:
        """``PUT /_matrix/federation/v2/invite/{roomId}/{eventId}`` to the invitee's
        server: the invite back with its signature added (checked), ready to persist."""
        rv = event.room_version
        assert event.state_key is not None
        server = _domain(event.state_key)
        body = {
            "event": event.pdu,
            "room_version": rv.identifier,
            "invite_room_state": await self.invite_room_state(event.room_id, event.sender),
        }
        path = f"/_matrix/federation/v2/invite/{_q(event.room_id)}/{_q(event.event_id)}"
        try:
            try:
                answer = await self.requester.put_json(server, path, body, timeout_s=REQUEST_TIMEOUT_S)
            except FederationError as e:
                # A server without v2 invites: the deprecated v1, which serves only room
                # versions 1 and 2 (their event format), answering ``[200, {"event"}]``.
                if not (e.unknown_endpoint and rv.uses_event_id_in_pdu):
                    raise
                v1_body = dict(event.pdu)
                v1_body["unsigned"] = {**(event.pdu.get("unsigned") or {}), "invite_room_state": body["invite_room_state"]}
                v1_path = f"/_matrix/federation/v1/invite/{_q(event.room_id)}/{_q(event.event_id)}"
                v1_answer = await self.requester.put_json(server, v1_path, v1_body, timeout_s=REQUEST_TIMEOUT_S)
                ok = isinstance(v1_answer, list) and len(v1_answer) == 2 and v1_answer[0] == 200
                answer = v1_answer[1] if ok else None
        except FederationError as e:
            log.info("invite of %s refused by %s: %s", event.state_key, server, e)
            if e.status == 404:
                raise NotFound("The invited user's server does not know that user") from None
            if e.errcode == "M_INCOMPATIBLE_ROOM_VERSION":
                raise MatrixError(400, "M_INCOMPATIBLE_ROOM_VERSION", "The invitee's server does not support this room's version") from None
            raise Forbidden("The invited user's server refused the invite") from None
        except FederationUnreachable:
            raise MatrixError(502, "M_UNKNOWN", f"{server} could not be reached") from None
        returned = answer.get("event") if isinstance(answer, dict) else None
        if not isinstance(returned, dict):
            raise MatrixError(502, "M_UNKNOWN", f"{server} answered the invite without the event")
        try:
            encode_canonical_json(returned, strict=rv.strict_canonicaljson)
        except CanonicalJsonError as e:
            # rooms/v6 "Canonical JSON": strictly enforced, 400 M_BAD_JSON.
            raise MatrixError(400, "M_BAD_JSON", f"{server} answered the invite with invalid JSON: {e}") from None
        theirs = (returned.get("signatures") or {}).get(server) if isinstance(returned.get("signatures"), dict) else None
        if not isinstance(theirs, dict) or not theirs:
            raise MatrixError(502, "M_UNKNOWN", f"{server} did not sign the invite")
        signatures = {k: dict(v) for k, v in (event.pdu.get("signatures") or {}).items()}
        signatures[server] = dict(theirs)
        pdu = dict(event.pdu)
        pdu["signatures"] = signatures
        signed = Event.from_pdu(pdu, rv, event_id=event.event_id)
        keys = await self.intake.verify_keys_of(server, list(theirs), signed)
        try:
            pc.verify_signatures(signed, keys, {server})
        except pc.SignatureError as e:
            raise MatrixError(502, "M_UNKNOWN", f"{server}'s signature on the invite does not verify: {e}") from None
        return signed

    # -- history ---------------------------------------------------------------------------------

    async def backfill(self, room_id: str, limit: int) -> int:
        """One ``/backfill`` request from the room's backward extremities to a server in
        the room; each event through the intake's checks (steps 1-4) and stored as
        history before what we have (stream_pos < 0). Returns how many were stored."""

        def read(conn: Conn) -> tuple[list[str], list[str], RoomInfo | None]:
            info = ev_store.get_room(conn, room_id)
            extremities = graph.backward_extremities(conn, room_id)
            servers = sorted(state_store.servers_in_room(conn, room_id) - {self.server_name})
            return extremities, servers, info

        extremities, servers, info = await self.db.read(read)
        if not extremities or not servers or info is None or not info.has_state:
            return 0
        rv = info.room_version
        limit = max(1, min(limit, MAX_BACKFILL))
        # One request a call: to the server that answered last, else the next one in
        # turn (a failing server is skipped by the next call).
        server = servers[self._backfill_turn % len(servers)]
        path = f"/_matrix/federation/v1/backfill/{_q(room_id)}"
        try:
            answer = await self.requester.get_json(
                server, path, {"v": extremities[:20], "limit": str(limit)}, timeout_s=REQUEST_TIMEOUT_S
            )
        except (FederationError, FederationUnreachable) as e:
            log.info("backfill of %s from %s failed: %s", room_id, server, e)
            self._backfill_turn += 1
            return 0
        pdus = answer.get("pdus") if isinstance(answer, dict) else None
        if not isinstance(pdus, list):
            self._backfill_turn += 1
            return 0
        checked: dict[str, Event] = {}
        for pdu in pdus[:limit]:
            try:
                ev = await self.intake.check_event(pdu, rv)
            except IntakeError as e:
                log.info("backfilled event dropped: %s", e)
                continue
            if ev.room_id == room_id:
                checked[ev.event_id] = ev
        if not checked:
            return 0
        return await self.db.write(self._persist_backfill, rv, room_id, checked)

    def _persist_backfill(self, conn: Conn, rv: RoomVersion, room_id: str, checked: dict[str, Event]) -> int:
        # Newest first: each later event gets an older (more negative) position.
        order = sorted(checked.values(), key=lambda e: (e.depth, e.origin_server_ts), reverse=True)
        known = graph.known_events(conn, checked)
        # New events, and outliers (state we were given at the join) taking their place
        # in history; what was rejected stays out.
        fresh = {
            e.event_id: e
            for e in order
            if e.event_id not in known or (known[e.event_id].outlier and not known[e.event_id].rejected)
        }
        reasons = self.intake.persist_outliers(conn, rv, room_id, fresh)
        stored = 0
        for ev in order:
            if ev.event_id not in fresh:
                continue
            reason = reasons.get(ev.event_id)
            pos = next_backfill_pos(conn) if reason is None else None
            graph.promote_outlier(conn, ev.event_id, pos, reason)
            if reason is None:
                stored += 1
                for hook in self.intake.in_persist_txn:
                    hook(conn, ev)
            have = graph.known_events(conn, ev.prev_event_ids)
            missing = [p for p in ev.prev_event_ids if not (p in have and not have[p].outlier)]
            graph.update_backward_extremities(conn, room_id, ev.event_id, missing)
        return stored

    async def fetch_event(self, room_id: str, event_id: str) -> bool:
        """An event of a room we are in that we lack: ``/event`` from a server in the
        room, checked and stored as an outlier. Whether it is stored now."""

        def read(conn: Conn) -> tuple[Any, list[str]]:
            return ev_store.get_room(conn, room_id), sorted(
                state_store.servers_in_room(conn, room_id) - {self.server_name}
            )

        info, servers = await self.db.read(read)
        if info is None or not info.has_state:
            return False
        for server in servers[:3]:
            try:
                body = await self.requester.get_json(
                    server, f"/_matrix/federation/v1/event/{_q(event_id)}", timeout_s=REQUEST_TIMEOUT_S
                )
            except (FederationError, FederationUnreachable):
                continue
            pdus = body.get("pdus") if isinstance(body, dict) else None
            if not isinstance(pdus, list) or len(pdus) != 1:
                continue
            stored = await self.intake.store_outliers(info, pdus)
            return event_id in stored
        return False


def _incompatible(version: str | None) -> MatrixError:
    """The client's error for a room whose version this server does not support
    (with the room's version when the other server named it)."""
    extra = {"room_version": version[:100]} if version else {}
    return MatrixError(400, "M_INCOMPATIBLE_ROOM_VERSION", "The room's version is not supported here", **extra)


def _insert_room(conn: Conn, room_id: str, rv: RoomVersion, creator: str, now: int) -> None:
    if ev_store.get_room(conn, room_id) is None:
        ev_store.insert_room(conn, room_id, rv.identifier, creator, now)


def _stripped(entry: Any) -> JsonDict | None:
    if not isinstance(entry, dict):
        return None
    if not (isinstance(entry.get("type"), str) and isinstance(entry.get("state_key"), str)
            and isinstance(entry.get("content"), dict)):
        return None
    return {k: entry[k] for k in ("type", "state_key", "sender", "content") if k in entry}
