"""A second, in-process "server" for federation tests: it builds and signs events with
the protocol core and its own key, keeps its view of a room's event graph, and answers
the federation requests the intake makes (a fake FederationRequester) from that graph.
A fake KeyLookup hands out its verify keys."""

from __future__ import annotations

import urllib.parse
from collections.abc import Collection, Iterable, Mapping
from typing import Any, BinaryIO

import orjson

from pocketserver.federation.interfaces import FederationError, FederationUnreachable, Query
from pocketserver.protocol.auth_rules import AuthError, auth_types_for_event, check_auth
from pocketserver.protocol.events import Event
from pocketserver.protocol.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from pocketserver.protocol.signing import SigningKey, sign_event, signing_key_from_seed

JsonDict = dict[str, Any]


def key_for(name: str) -> SigningKey:
    seed = (name.encode() * 32)[:32]
    return signing_key_from_seed(seed, "remote1")


class RemoteRoom:
    """One room as a remote server sees it: its events, state and extremities."""

    def __init__(self, server: str, room_id: str, rv: RoomVersion) -> None:
        self.server = server
        self.key = key_for(server)
        self.room_id = room_id
        self.rv = rv
        self.events: dict[str, Event] = {}
        self.state: dict[tuple[str, str], str] = {}
        # the state before each event (what /state_ids answers)
        self.state_before: dict[str, dict[tuple[str, str], str]] = {}
        self.extremities: list[str] = []
        # every event taken into the timeline, in order
        self.timeline: list[str] = []
        self.ts = 1_700_000_000_000
        self.counter = 0

    @classmethod
    def create(
        cls, server: str, creator: str, rv: RoomVersion, *, join_rule: str = "public"
    ) -> RemoteRoom:
        """A new room hosted by ``server``: create, the creator's join, power levels
        and join rules."""
        room = cls(server, f"!remote:{server}", rv)
        content: JsonDict = {"room_version": rv.identifier}
        if not rv.implicit_room_creator:
            content["creator"] = creator
        pdu: JsonDict = {
            "type": "m.room.create",
            "state_key": "",
            "sender": creator,
            "content": content,
            "origin_server_ts": room.ts,
            "depth": 1,
            "prev_events": [],
            "auth_events": [],
        }
        if not rv.room_id_is_create_event_hash:
            pdu["room_id"] = room.room_id
        if not rv.updated_redaction_rules:
            pdu["origin"] = server
        if rv.uses_event_id_in_pdu:
            pdu["event_id"] = f"$create:{server}"
        signed = sign_event(pdu, server, room.key, rv)
        ev = Event.from_pdu(signed, rv)
        room.room_id = ev.room_id
        room.learn_timeline(signed)
        room.build(creator, "m.room.member", {"membership": "join"}, state_key=creator)
        pl: JsonDict = {"users": {} if rv.privileged_creators else {creator: 100}}
        room.build(creator, "m.room.power_levels", pl, state_key="")
        room.build(creator, "m.room.join_rules", {"join_rule": join_rule}, state_key="")
        return room

    # -- learning our events ----------------------------------------------------------

    def learn(self, pdus: Iterable[JsonDict], *, state: bool = False) -> None:
        """Take events another server sent (a send_join answer, say)."""
        for pdu in pdus:
            ev = Event.from_pdu(pdu, self.rv)
            self.events[ev.event_id] = ev
            if state and ev.state_key is not None:
                self.state[ev.state_tuple] = ev.event_id

    def learn_timeline(self, pdu: JsonDict) -> Event:
        ev = Event.from_pdu(pdu, self.rv)
        self.state_before[ev.event_id] = dict(self.state)
        self.events[ev.event_id] = ev
        if ev.state_key is not None:
            self.state[ev.state_tuple] = ev.event_id
        self.extremities = [e for e in self.extremities if e not in ev.prev_event_ids] + [ev.event_id]
        self.timeline.append(ev.event_id)
        return ev

    # -- building ---------------------------------------------------------------------

    def build(
        self,
        sender: str,
        etype: str,
        content: Mapping[str, Any],
        *,
        state_key: str | None = None,
        prev_events: list[str] | None = None,
        auth_state: Mapping[tuple[str, str], str] | None = None,
        advance: bool = True,
        extra: Mapping[str, Any] | None = None,
    ) -> JsonDict:
        """A signed PDU on the room's extremities (or ``prev_events``); with ``advance``
        it becomes part of this server's view."""
        prevs = list(prev_events if prev_events is not None else self.extremities)
        state = auth_state if auth_state is not None else self.state
        fields: JsonDict = {"type": etype, "sender": sender, "content": dict(content)}
        if state_key is not None:
            fields["state_key"] = state_key
        wanted = auth_types_for_event(fields, self.rv)
        auth = sorted(state[k] for k in wanted if k in state)
        depth = max((self.events[p].depth for p in prevs if p in self.events), default=0) + 1
        self.ts += 1
        pdu: JsonDict = {
            **fields,
            "room_id": self.room_id,
            "origin_server_ts": self.ts,
            "depth": depth,
            "prev_events": self._refs(prevs),
            "auth_events": self._refs(auth),
        }
        if not self.rv.updated_redaction_rules:
            pdu["origin"] = self.server
        if self.rv.uses_event_id_in_pdu:
            self.counter += 1
            pdu["event_id"] = f"${self.counter}x{self.ts}:{self.server}"
        if extra:
            pdu.update(extra)
        signed = sign_event(pdu, self.server, self.key, self.rv)
        if advance:
            self.learn_timeline(signed)
        else:
            ev = Event.from_pdu(signed, self.rv)
            self.events[ev.event_id] = ev
            self.state_before[ev.event_id] = dict(state)
        return signed

    def template(self, user_id: str, membership: str) -> JsonDict:
        """What make_join / make_leave / make_knock answer: the unsigned event."""
        pdu = self.build(user_id, "m.room.member", {"membership": membership}, state_key=user_id, advance=False)
        del self.events[self.event_id(pdu)]
        for key in ("signatures", "hashes", "event_id"):
            pdu.pop(key, None)
        return pdu

    def _refs(self, ids: list[str]) -> list[Any]:
        if not self.rv.uses_event_id_in_pdu:
            return list(ids)
        return [[i, self.events[i].pdu.get("hashes", {}) if i in self.events else {}] for i in ids]

    def event_id(self, pdu: JsonDict) -> str:
        return Event.from_pdu(pdu, self.rv).event_id

    # -- what the remote server answers -------------------------------------------------

    def auth_chain(self, event_ids: Iterable[str]) -> list[str]:
        seen: set[str] = set()
        todo = list(event_ids)
        while todo:
            eid = todo.pop()
            ev = self.events.get(eid)
            if ev is None:
                continue
            for a in ev.auth_event_ids:
                if a not in seen:
                    seen.add(a)
                    todo.append(a)
        return sorted(seen)


class FakeKeys:
    """A KeyLookup over a fixed set of servers' keys."""

    def __init__(self, *keys: tuple[str, SigningKey]) -> None:
        self.keys = {name: key for name, key in keys}
        self.asked: list[str] = []

    async def verify_keys(
        self, server_name: str, key_ids: Collection[str], *, minimum_valid_until_ts: int
    ) -> dict[str, bytes]:
        self.asked.append(server_name)
        key = self.keys.get(server_name)
        if key is None:
            return {}
        return {k: bytes(key.verify_key) for k in key_ids if k == key.key_id}


class FakeRequester:
    """Answers /event, /event_auth, /state_ids and /get_missing_events from remote
    rooms' graphs; records every request; refuses anything else."""

    def __init__(self, *rooms: RemoteRoom) -> None:
        self.rooms = {r.room_id: r for r in rooms}
        self.requests: list[tuple[str, str, str]] = []
        self.answer_missing_events = True
        self.offline = False
        self.other: dict[str, Any] = {}
        # Tamper with the bytes of a streamed answer (send_join) before they are written.
        self.raw_answer: Any = None

    def _event(self, eid: str) -> tuple[RemoteRoom, Event] | None:
        for room in self.rooms.values():
            ev = room.events.get(eid)
            if ev is not None:
                return room, ev
        return None

    async def get_json(
        self, destination: str, path: str, query: Query | None = None, *, timeout_s: float = 60.0
    ) -> Any:
        self.requests.append(("GET", destination, path))
        if self.offline:
            raise FederationUnreachable("offline")
        parts = [urllib.parse.unquote(p) for p in path.split("/")]
        # ['', '_matrix', 'federation', 'v1', name, ...]
        name = parts[4]
        if name == "event":
            found = self._event(parts[5])
            if found is None:
                raise FederationError(404, "M_NOT_FOUND", "no such event")
            return {"origin": destination, "origin_server_ts": 0, "pdus": [found[1].pdu]}
        if name == "event_auth":
            room = self.rooms[parts[5]]
            ids = room.auth_chain([parts[6]])
            return {"auth_chain": [room.events[i].pdu for i in ids]}
        if name == "state_ids":
            room = self.rooms[parts[5]]
            q = dict(query or {})
            eid = q["event_id"]
            assert isinstance(eid, str)
            before = room.state_before[eid]
            return {"pdu_ids": sorted(before.values()), "auth_chain_ids": room.auth_chain(before.values())}
        if path in self.other:
            return self.other[path]
        raise FederationError(404, "M_UNRECOGNIZED", path)

    async def put_json(
        self, destination: str, path: str, body: Any, query: Query | None = None, *, timeout_s: float = 60.0
    ) -> Any:
        self.requests.append(("PUT", destination, path))
        if path in self.other:
            return self.other[path]
        raise FederationError(404, "M_UNRECOGNIZED", path)

    async def put_json_to_file(
        self, destination: str, path: str, body: Any, sink: BinaryIO, *, timeout_s: float = 60.0,
        max_size: int = 1 << 30,
    ) -> int:
        """put_json's answer as the bytes the wire would carry."""
        raw = orjson.dumps(await self.put_json(destination, path, body, timeout_s=timeout_s))
        if self.raw_answer is not None:
            raw = self.raw_answer(raw)
        if len(raw) > max_size:
            raise FederationUnreachable(f"answer over {max_size} bytes")
        sink.write(raw)
        return len(raw)

    async def post_json(
        self, destination: str, path: str, body: Any, query: Query | None = None, *, timeout_s: float = 60.0
    ) -> Any:
        self.requests.append(("POST", destination, path))
        if self.offline:
            raise FederationUnreachable("offline")
        parts = [urllib.parse.unquote(p) for p in path.split("/")]
        if parts[4] == "get_missing_events":
            if not self.answer_missing_events:
                raise FederationError(500, "M_UNKNOWN", "not today")
            room = self.rooms[parts[5]]
            earliest = set(body.get("earliest_events", []))
            limit = int(body.get("limit", 10))
            out: list[Event] = []
            seen = set(earliest)
            todo = list(body.get("latest_events", []))
            seen.update(todo)
            while todo and len(out) < limit:
                eid = todo.pop(0)
                ev = room.events.get(eid)
                if ev is None:
                    continue
                for p in ev.prev_event_ids:
                    if p not in seen and p in room.events:
                        seen.add(p)
                        out.append(room.events[p])
                        todo.append(p)
            out.sort(key=lambda e: e.depth)
            return {"events": [e.pdu for e in out[:limit]]}
        if path in self.other:
            return self.other[path]
        raise FederationError(404, "M_UNRECOGNIZED", path)


def room_version(v: str) -> RoomVersion:
    return KNOWN_ROOM_VERSIONS[v]


class HostingRequester(FakeRequester):
    """Other servers that *host* rooms our users take part in: on top of the readers of
    :class:`FakeRequester`, make/send join, leave and knock, /backfill, invites of their
    users (signed with the invitee server's key), query/directory and /publicRooms, and
    transactions from us (recorded). A server in ``down`` is unreachable."""

    def __init__(self, *rooms: RemoteRoom) -> None:
        super().__init__(*rooms)
        self.down: set[str] = set()
        self.aliases: dict[str, tuple[str, list[str]]] = {}
        self.public: dict[str, list[JsonDict]] = {}
        self.received: list[tuple[str, JsonDict]] = []  # (destination, transaction body)
        self.bodies: list[tuple[str, str, str, Any]] = []  # (method, destination, path, body)
        # Tamper with a send_join answer before it goes out (forgery tests).
        self.tamper_send_join: Any = None
        # servers that answer only the deprecated v1 invite
        self.v1_invites_only: set[str] = set()
        # called with the countersigned invite event before it is answered
        self.tamper_invite: Any = None
        # servers that answer only the deprecated v1 send_join
        self.v1_send_join_only: set[str] = set()
        # what make_join answers instead, by server (an error raised, or an answer)
        self.make_join_answer: dict[str, Any] = {}

    def _check_up(self, destination: str) -> None:
        if destination in self.down:
            raise FederationUnreachable(f"{destination} is down")

    def sent_pdus(self, destination: str) -> list[JsonDict]:
        return [p for d, body in self.received if d == destination for p in body.get("pdus", [])]

    def asked(self, method: str, name: str) -> list[str]:
        """Destinations asked ``/…/{name}/…`` with ``method``, in order."""
        return [d for m, d, p in self.requests if m == method and f"/{name}/" in p + "/"]

    async def get_json(
        self, destination: str, path: str, query: Query | None = None, *, timeout_s: float = 60.0
    ) -> Any:
        parts = [urllib.parse.unquote(p) for p in path.split("/")]
        name = parts[4] if len(parts) > 4 else ""
        if name in ("make_join", "make_leave", "make_knock", "backfill", "query", "publicRooms"):
            self.requests.append(("GET", destination, path))
            self._check_up(destination)
            q = dict(query or {})
            if name == "query":
                alias = q.get("room_alias")
                if alias not in self.aliases:
                    raise FederationError(404, "M_NOT_FOUND", "no such alias")
                room_id, servers = self.aliases[str(alias)]
                return {"room_id": room_id, "servers": servers}
            if name == "publicRooms":
                return {"chunk": self.public.get(destination, []), "total_room_count_estimate": 1}
            if name == "make_join" and destination in self.make_join_answer:
                answer = self.make_join_answer[destination]
                if isinstance(answer, Exception):
                    raise answer
                return answer
            room = self.rooms.get(parts[5])
            if room is None:
                raise FederationError(404, "M_NOT_FOUND", "unknown room")
            if name == "backfill":
                v = q.get("v", [])
                return self._backfill(room, [v] if isinstance(v, str) else list(v), int(str(q.get("limit", "10"))))
            membership = name.split("_", 1)[1]
            template = room.template(parts[6], membership)
            probe = Event.from_pdu(dict(template, signatures={}, hashes={}), room.rv, event_id="$probe")
            state = {k: room.events[room.state[k]] for k in auth_types_for_event(probe, room.rv) if k in room.state}
            if room.rv.room_id_is_create_event_hash:
                state[("m.room.create", "")] = room.events[room.state[("m.room.create", "")]]
            try:
                check_auth(probe, state)
            except AuthError as e:
                raise FederationError(403, "M_FORBIDDEN", str(e)) from None
            return {"event": template, "room_version": room.rv.identifier}
        return await super().get_json(destination, path, query, timeout_s=timeout_s)

    def _backfill(self, room: RemoteRoom, start: list[str], limit: int) -> JsonDict:
        seen = set(start)
        todo = [e for e in start if e in room.events]
        out: list[Event] = []
        while todo and len(out) < limit:
            todo.sort(key=lambda e: room.events[e].depth)
            ev = room.events[todo.pop()]
            out.append(ev)
            for p in ev.prev_event_ids:
                if p not in seen and p in room.events:
                    seen.add(p)
                    todo.append(p)
        return {"origin": room.server, "origin_server_ts": 0, "pdus": [e.pdu for e in out]}

    async def put_json(
        self, destination: str, path: str, body: Any, query: Query | None = None, *, timeout_s: float = 60.0
    ) -> Any:
        parts = [urllib.parse.unquote(p) for p in path.split("/")]
        name = parts[4] if len(parts) > 4 else ""
        self.bodies.append(("PUT", destination, path, body))
        if name == "send":
            self.requests.append(("PUT", destination, path))
            self._check_up(destination)
            self.received.append((destination, body))
            return {"pdus": {}}
        if name in ("send_join", "send_leave", "send_knock", "invite"):
            self.requests.append(("PUT", destination, path))
            self._check_up(destination)
            room = self.rooms.get(parts[5])
            if name == "invite" and parts[3] == "v2" and destination in self.v1_invites_only:
                raise FederationError(404, "M_UNKNOWN", "", errcode_given=False)  # an old server's bare 404
            if name == "invite" and parts[3] == "v1":
                state = body.get("unsigned", {}).get("invite_room_state", [])
                return [200, self._sign_invite(destination, {"room_version": "1", "event": body, "invite_room_state": state})]
            if name == "invite":
                return self._sign_invite(destination, body)
            v1_only = name == "send_join" and destination in self.v1_send_join_only
            if v1_only and parts[3] == "v2":
                raise FederationError(404, "M_UNKNOWN", "", errcode_given=False)
            if room is None:
                raise FederationError(404, "M_NOT_FOUND", "unknown room")
            before = dict(room.state)
            room.learn_timeline(body)
            if name == "send_leave":
                return {}
            if name == "send_knock":
                return {"knock_room_state": [
                    {k: room.events[e].pdu[k] for k in ("type", "state_key", "sender", "content")}
                    for e in before.values()
                    if room.events[e].type in ("m.room.create", "m.room.join_rules", "m.room.name")
                ]}
            answer = {
                "origin": room.server,
                "members_omitted": False,
                "state": [room.events[e].pdu for e in before.values()],
                "auth_chain": [room.events[e].pdu for e in room.auth_chain([*before.values(), room.event_id(body)])],
                "event": body,
            }
            if self.tamper_send_join is not None:
                self.tamper_send_join(answer)
            return [200, answer] if v1_only else answer
        return await super().put_json(destination, path, body, query, timeout_s=timeout_s)

    def _sign_invite(self, destination: str, body: JsonDict) -> JsonDict:
        from pocketserver.protocol.redaction import redact
        from pocketserver.protocol.signing import sign_json

        rv = KNOWN_ROOM_VERSIONS[body["room_version"]]
        pdu = dict(body["event"])
        signed = sign_json(redact(pdu, rv), destination, key_for(destination), strict=rv.strict_canonicaljson)
        pdu["signatures"] = signed["signatures"]
        if self.tamper_invite is not None:
            self.tamper_invite(pdu)
        self.invites = [*getattr(self, "invites", []), body]
        return {"event": pdu}

    async def post_json(
        self, destination: str, path: str, body: Any, query: Query | None = None, *, timeout_s: float = 60.0
    ) -> Any:
        if path == "/_matrix/federation/v1/publicRooms":
            self.requests.append(("POST", destination, path))
            self._check_up(destination)
            return {"chunk": self.public.get(destination, []), "total_room_count_estimate": 1}
        return await super().post_json(destination, path, body, query, timeout_s=timeout_s)
