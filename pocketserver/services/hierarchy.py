"""Spaces: the space hierarchy (GET /hierarchy) and room summaries (GET /room_summary).

Client-server API "Spaces", "Discovering rooms within spaces". The tree is walked
depth first from the requested room over its ``m.space.child`` state events (valid
when ``via`` is a non-empty list), children in the spec's order ("Ordering of children
within a space"), never visiting a room twice (loops are possible). A room is shown
when the requester may see or join it (the list in space_hierarchy.yaml); rooms this
server does not know are skipped (federation is not asked). Pagination is an offset
into the same walk, its token carrying the walk's parameters so that changing them is
refused.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from pocketserver.errors import Forbidden, InvalidParam, NotFound
from pocketserver.services.auth import Requester
from pocketserver.services.params import MAX_INT
from pocketserver.storage import events as ev_store
from pocketserver.storage import state as state_store
from pocketserver.storage.database import Conn, Database
from pocketserver.storage.events import EventRecord

JsonDict = dict[str, Any]

DEFAULT_LIMIT = 50
MAX_LIMIT = 100
# The walk stops after this many rooms, whatever the tree looks like.
MAX_ROOMS_WALKED = 1000

_SUMMARY_STATE = [
    ("m.room.create", ""),
    ("m.room.name", ""),
    ("m.room.topic", ""),
    ("m.room.canonical_alias", ""),
    ("m.room.avatar", ""),
    ("m.room.join_rules", ""),
    ("m.room.history_visibility", ""),
    ("m.room.guest_access", ""),
    ("m.room.encryption", ""),
]


def _valid_order(order: Any) -> bool:
    return isinstance(order, str) and len(order) <= 50 and all("\x20" <= c <= "\x7e" for c in order)


def _child_sort_key(rec: EventRecord) -> tuple[int, str, int, str]:
    order = rec.event.content.get("order")
    if _valid_order(order):
        return (0, str(order), rec.event.origin_server_ts, rec.event.state_key or "")
    return (1, "", rec.event.origin_server_ts, rec.event.state_key or "")


class HierarchyService:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- access -----------------------------------------------------------------------

    def _state_contents(self, conn: Conn, room_id: str) -> dict[str, JsonDict]:
        ids = state_store.get_current_state_ids(conn, room_id, _SUMMARY_STATE)
        recs = ev_store.get_events(conn, ids.values())
        return {k[0]: dict(recs[e].event.content) for k, e in ids.items() if e in recs}

    def _accessible(self, conn: Conn, user_id: str | None, room_id: str, state: dict[str, JsonDict]) -> bool:
        """The rules of space_hierarchy.yaml's ``rooms`` (and room_summary's)."""
        info = ev_store.get_room(conn, room_id)
        if info is None:
            return False
        if state.get("m.room.history_visibility", {}).get("history_visibility") == "world_readable":
            return True
        join_rule = state.get("m.room.join_rules", {}).get("join_rule", "invite")
        rv = info.room_version
        if join_rule == "public":
            return True
        if join_rule == "knock" and rv.knock_join_rule:
            return True
        if join_rule == "knock_restricted" and rv.knock_restricted_join_rule:
            return True
        if user_id is None:
            return False
        m = state_store.get_membership(conn, room_id, user_id)
        if m is not None and m[0] in ("join", "invite"):
            return True
        if join_rule in ("restricted", "knock_restricted") and rv.restricted_join_rule:
            for allowed in _allowed_room_ids(state):
                am = state_store.get_membership(conn, allowed, user_id)
                if am is not None and am[0] == "join":
                    return True
        return False

    def _summary(self, conn: Conn, room_id: str, state: dict[str, JsonDict]) -> JsonDict:
        info = ev_store.get_room(conn, room_id)
        assert info is not None
        entry: JsonDict = {
            "room_id": room_id,
            "num_joined_members": state_store.count_members(conn, room_id),
            "world_readable": state.get("m.room.history_visibility", {}).get("history_visibility")
            == "world_readable",
            "guest_can_join": state.get("m.room.guest_access", {}).get("guest_access") == "can_join",
            "join_rule": state.get("m.room.join_rules", {}).get("join_rule", "invite"),
            "room_version": info.room_version.identifier,
        }
        for key, etype, field in (
            ("name", "m.room.name", "name"),
            ("topic", "m.room.topic", "topic"),
            ("canonical_alias", "m.room.canonical_alias", "alias"),
            ("avatar_url", "m.room.avatar", "url"),
        ):
            v = state.get(etype, {}).get(field)
            if isinstance(v, str) and v:
                entry[key] = v
        room_type = state.get("m.room.create", {}).get("type")
        if isinstance(room_type, str):
            entry["room_type"] = room_type
        algorithm = state.get("m.room.encryption", {}).get("algorithm")
        if isinstance(algorithm, str):
            entry["encryption"] = algorithm
        allowed = _allowed_room_ids(state)
        if allowed and entry["join_rule"] in ("restricted", "knock_restricted"):
            entry["allowed_room_ids"] = allowed
        return entry

    def _children(self, conn: Conn, room_id: str, suggested_only: bool) -> list[EventRecord]:
        ids = state_store.get_current_state_ids(conn, room_id)
        child_ids = [eid for (t, _), eid in ids.items() if t == "m.space.child"]
        recs = ev_store.get_events(conn, child_ids)
        out = []
        for rec in recs.values():
            via = rec.event.content.get("via")
            if not (isinstance(via, list) and via and all(isinstance(v, str) for v in via)):
                continue
            if suggested_only and rec.event.content.get("suggested") is not True:
                continue
            out.append(rec)
        out.sort(key=_child_sort_key)
        return out

    # -- GET /hierarchy --------------------------------------------------------------------

    async def hierarchy(
        self,
        requester: Requester,
        room_id: str,
        *,
        suggested_only: bool,
        max_depth: int | None,
        limit: int | None,
        from_token: str | None,
    ) -> JsonDict:
        n = min(limit if limit is not None else DEFAULT_LIMIT, MAX_LIMIT)
        offset = 0
        if from_token:
            offset = _parse_token(from_token, room_id, suggested_only, max_depth)

        def run(conn: Conn) -> JsonDict:
            root_state = self._state_contents(conn, room_id)
            if not self._accessible(conn, requester.user_id, room_id, root_state):
                raise Forbidden("You are not allowed to view this room")
            rooms: list[JsonDict] = []
            seen: set[str] = set()
            stack: list[tuple[str, int]] = [(room_id, 0)]
            index = 0
            more = False
            while stack and len(seen) < MAX_ROOMS_WALKED:
                rid, depth = stack.pop()
                if rid in seen:
                    continue
                seen.add(rid)
                state = root_state if rid == room_id else self._state_contents(conn, rid)
                if not state or not self._accessible(conn, requester.user_id, rid, state):
                    continue
                is_space = state.get("m.room.create", {}).get("type") == "m.space"
                children = self._children(conn, rid, suggested_only) if is_space else []
                if index >= offset:
                    if len(rooms) >= n:
                        more = True
                        break
                    entry = self._summary(conn, rid, state)
                    entry["children_state"] = [
                        {
                            "type": c.event.type,
                            "state_key": c.event.state_key,
                            "content": dict(c.event.content),
                            "sender": c.event.sender,
                            "origin_server_ts": c.event.origin_server_ts,
                        }
                        for c in children
                    ]
                    rooms.append(entry)
                index += 1
                if max_depth is None or depth < max_depth:
                    for c in reversed(children):
                        if c.event.state_key not in seen:
                            stack.append((c.event.state_key or "", depth + 1))
            out: JsonDict = {"rooms": rooms}
            if more:
                out["next_batch"] = _make_token(room_id, suggested_only, max_depth, offset + len(rooms))
            return out

        return await self.db.read(run)

    # -- GET /_matrix/federation/v1/hierarchy/{roomId} ------------------------------------------

    def _server_accessible(self, conn: Conn, origin: str, room_id: str, state: dict[str, JsonDict]) -> bool:
        """Could a user of ``origin`` peek or join? Public, knockable or world-readable
        rooms, restricted ones (the server decides who of its users qualifies), and rooms
        where one of its users is joined or invited."""
        if self._accessible(conn, None, room_id, state):
            return True
        info = ev_store.get_room(conn, room_id)
        join_rule = state.get("m.room.join_rules", {}).get("join_rule", "invite")
        if info is not None and join_rule in ("restricted", "knock_restricted") and info.room_version.restricted_join_rule:
            return True
        suffix = ":" + origin
        return any(
            u.endswith(suffix)
            for membership in ("join", "invite")
            for u in state_store.room_members(conn, room_id, membership)
        )

    def _with_children_state(self, conn: Conn, room_id: str, state: dict[str, JsonDict], suggested_only: bool) -> JsonDict:
        entry = self._summary(conn, room_id, state)
        is_space = state.get("m.room.create", {}).get("type") == "m.space"
        children = self._children(conn, room_id, suggested_only) if is_space else []
        entry["children_state"] = [
            {
                "type": c.event.type,
                "state_key": c.event.state_key,
                "content": dict(c.event.content),
                "sender": c.event.sender,
                "origin_server_ts": c.event.origin_server_ts,
            }
            for c in children
        ]
        return entry

    async def federation_hierarchy(self, origin: str, room_id: str, *, suggested_only: bool) -> JsonDict:
        """The space and its direct children known here, for another server (no
        pagination: the requesting server filters); children it could not peek or join
        are listed by ID only, children unknown here are left out."""

        def run(conn: Conn) -> JsonDict:
            state = self._state_contents(conn, room_id)
            if not state or not self._server_accessible(conn, origin, room_id, state):
                raise NotFound("Room not found")
            room = self._with_children_state(conn, room_id, state, suggested_only)
            children: list[JsonDict] = []
            inaccessible: list[str] = []
            for c in room["children_state"][:MAX_ROOMS_WALKED]:
                child_id = c["state_key"]
                child_state = self._state_contents(conn, child_id) if child_id else {}
                if not child_state:
                    continue
                if self._server_accessible(conn, origin, child_id, child_state):
                    children.append(self._with_children_state(conn, child_id, child_state, suggested_only))
                else:
                    inaccessible.append(child_id)
            return {"room": room, "children": children, "inaccessible_children": inaccessible}

        return await self.db.read(run)

    # -- GET /room_summary --------------------------------------------------------------------

    async def room_summary(self, user_id: str | None, room_id: str) -> JsonDict:
        def run(conn: Conn) -> JsonDict:
            state = self._state_contents(conn, room_id)
            if not state or not self._accessible(conn, user_id, room_id, state):
                raise NotFound("Room not found")
            entry = self._summary(conn, room_id, state)
            if user_id is not None:
                m = state_store.get_membership(conn, room_id, user_id)
                if m is not None:
                    entry["membership"] = m[0]
            return entry

        return await self.db.read(run)


def _allowed_room_ids(state: dict[str, JsonDict]) -> list[str]:
    allow = state.get("m.room.join_rules", {}).get("allow")
    if not isinstance(allow, list):
        return []
    return [
        a["room_id"]
        for a in allow
        if isinstance(a, dict) and a.get("type") == "m.room_membership" and isinstance(a.get("room_id"), str)
    ]


def _make_token(room_id: str, suggested_only: bool, max_depth: int | None, offset: int) -> str:
    raw = json.dumps([room_id, suggested_only, max_depth, offset], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _parse_token(token: str, room_id: str, suggested_only: bool, max_depth: int | None) -> int:
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        rid, suggested, depth, offset = data
    except (ValueError, TypeError, RecursionError):
        raise InvalidParam("Unknown pagination token") from None
    if rid != room_id or not isinstance(offset, int) or not 0 <= offset <= MAX_INT:
        raise InvalidParam("Unknown pagination token")
    if suggested != suggested_only or depth != max_depth:
        raise InvalidParam("suggested_only and max_depth cannot change on paginated requests")
    return offset
