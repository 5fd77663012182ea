"""Server-side search (client-server API "Server Side Search"), category ``room_events``.

Searches the rooms the user is or was in (not end-to-end encrypted rooms), returning
only events the user may see (history visibility: nothing after they left) and none
from ignored users. ``count`` counts the same set (visibility applied in the query as
stream-position ranges, see services/visibility.py), so it reveals nothing hidden.
Ordering ``rank`` (best first, paged by offset) or ``recent`` (newest first, paged by
stream position). ``next_batch`` is opaque base64 JSON that
also records a group (room or sender) when it came from a group.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from pocketserver.errors import BadJson, InvalidParam, MissingParam
from pocketserver.services.auth import Requester
from pocketserver.services.client_events import Erasures, serialize_event, serialize_events
from pocketserver.services.clock import Clock
from pocketserver.services.filtering import InvalidFilter, RoomEventFilter
from pocketserver.services.ignored_users import ignored_users, is_hidden
from pocketserver.services.params import MAX_INT
from pocketserver.services.visibility import VisibilityChecker
from pocketserver.storage import events as ev_store
from pocketserver.storage import search as search_store
from pocketserver.storage import state as state_store
from pocketserver.storage.database import Conn, Database
from pocketserver.storage.events import EventRecord

JsonDict = dict[str, Any]

KEY_TYPES = {
    "content.body": "m.room.message",
    "content.name": "m.room.name",
    "content.topic": "m.room.topic",
}
DEFAULT_LIMIT = 10
MAX_LIMIT = 50
DEFAULT_CONTEXT = 5
MAX_CONTEXT = 20
MAX_SEARCH_TERM = 1000
# Raw index rows read per round while filling a page past invisible events.
MAX_ROUNDS = 10
# Events read to count the matches of a contains_url filter exactly.
COUNT_SCAN = 2000


class _Criteria:
    """The validated ``room_events`` criteria."""

    def __init__(self, body: Mapping[str, Any]) -> None:
        term = body.get("search_term")
        if term is None:
            raise MissingParam("search_term is required")
        if not isinstance(term, str):
            raise BadJson("search_term must be a string")
        if len(term) > MAX_SEARCH_TERM:
            raise InvalidParam("search_term is too long")
        self.query = search_store.fts_query(term)
        keys = body.get("keys", list(KEY_TYPES))
        if not isinstance(keys, list) or not all(isinstance(k, str) and k in KEY_TYPES for k in keys):
            raise BadJson(f"keys must be a list of {', '.join(KEY_TYPES)}")
        self.types = sorted({KEY_TYPES[k] for k in keys})
        raw_filter = body.get("filter") or {}
        try:
            self.filter = RoomEventFilter.parse(raw_filter, "filter.")
        except InvalidFilter as e:
            raise BadJson(f"Invalid filter: {e}") from None
        limit = self.filter.limit if self.filter.limit is not None else DEFAULT_LIMIT
        self.limit = max(0, min(limit, MAX_LIMIT))
        order = body.get("order_by", "rank")
        if order not in ("rank", "recent"):
            raise BadJson("order_by must be rank or recent")
        self.by_rank = order == "rank"
        ctx = body.get("event_context")
        if ctx is not None and not isinstance(ctx, dict):
            raise BadJson("event_context must be an object")
        self.context: tuple[int, int, bool] | None = None
        if ctx is not None:
            before = ctx.get("before_limit", DEFAULT_CONTEXT)
            after = ctx.get("after_limit", DEFAULT_CONTEXT)
            profile = ctx.get("include_profile", False)
            for v in (before, after):
                if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                    raise BadJson("before_limit and after_limit must be non-negative integers")
            if not isinstance(profile, bool):
                raise BadJson("include_profile must be a boolean")
            self.context = (min(before, MAX_CONTEXT), min(after, MAX_CONTEXT), profile)
        include_state = body.get("include_state", False)
        if not isinstance(include_state, bool):
            raise BadJson("include_state must be a boolean")
        self.include_state = include_state
        groupings = body.get("groupings") or {}
        if not isinstance(groupings, dict):
            raise BadJson("groupings must be an object")
        group_by = groupings.get("group_by") or []
        if not isinstance(group_by, list):
            raise BadJson("group_by must be a list")
        self.group_keys: list[str] = []
        for g in group_by:
            key = g.get("key") if isinstance(g, dict) else None
            if key not in ("room_id", "sender"):
                raise BadJson("group_by keys must be room_id or sender")
            if key not in self.group_keys:
                self.group_keys.append(key)


def _encode_token(data: JsonDict) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str) -> JsonDict:
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, RecursionError):
        raise InvalidParam("Invalid next_batch token") from None
    if not isinstance(data, dict) or type(data.get("k")) is not int or not 0 <= data["k"] <= MAX_INT:
        raise InvalidParam("Invalid next_batch token")
    group = data.get("g")
    if group is not None and not (
        isinstance(group, list) and len(group) == 2 and group[0] in ("room_id", "sender")
        and isinstance(group[1], str)
    ):
        raise InvalidParam("Invalid next_batch token")
    return data


class SearchService:
    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock

    async def search(self, requester: Requester, body: Mapping[str, Any], next_batch: str | None) -> JsonDict:
        """POST /search"""
        categories = body.get("search_categories")
        if categories is None:
            raise MissingParam("search_categories is required")
        if not isinstance(categories, dict):
            raise BadJson("search_categories must be an object")
        room_events = categories.get("room_events")
        if room_events is None:
            return {"search_categories": {}}
        if not isinstance(room_events, dict):
            raise BadJson("room_events must be an object")
        criteria = _Criteria(room_events)
        token = _decode_token(next_batch) if next_batch else None
        result = await self.db.read(self._room_events, requester, criteria, token)
        return {"search_categories": {"room_events": result}}

    # -- one search, in one read transaction ------------------------------------------------

    def _searchable_rooms(self, conn: Conn, user_id: str, criteria: _Criteria) -> list[str]:
        rooms = state_store.rooms_for_user(conn, user_id, ("join", "leave", "ban"))
        out = []
        for room_id in sorted(rooms):
            if not criteria.filter.matches_room(room_id):
                continue
            if state_store.get_current_state_ids(conn, room_id, [("m.room.encryption", "")]):
                continue  # "The search will not include rooms that are end to end encrypted."
            out.append(room_id)
        return out

    def _room_events(
        self, conn: Conn, requester: Requester, criteria: _Criteria, token: JsonDict | None
    ) -> JsonDict:
        user_id = requester.user_id
        empty: JsonDict = {"results": [], "count": 0, "highlights": []}
        if criteria.query.match is None:
            return empty
        room_ids = self._searchable_rooms(conn, user_id, criteria)
        flt = criteria.filter
        senders: list[str] | None = list(flt.senders) if flt.senders is not None else None
        group = token.get("g") if token else None
        if group is not None:
            if group[0] == "room_id":
                room_ids = [r for r in room_ids if r == group[1]]
            else:
                senders = [s for s in (senders if senders is not None else [group[1]]) if s == group[1]]
        match = criteria.query.match
        ignored = ignored_users(conn, user_id)
        # The filter's type and sender conditions and the ignored users go into the query,
        # and so does history visibility, as stream-position ranges per room: the count
        # is then the number of results the user may page through, never more.
        scope = search_store.Scope(
            rooms={rid: ((None, None),) for rid in room_ids},
            types=[t for t in criteria.types if flt.matches_type(t)],
            senders=senders,
            not_senders=list(flt.not_senders or ()),
            hidden_senders=sorted(ignored),
        )
        checkers: dict[str, VisibilityChecker] = {}
        ranges: dict[str, search_store.Ranges] = {}
        for rid in sorted(search_store.matching_rooms(conn, match, scope)):
            checkers[rid] = VisibilityChecker(conn, rid, user_id)
            ranges[rid] = checkers[rid].visible_ranges()
        scope = dataclasses.replace(scope, rooms=ranges)

        # An erased sender's words are not found by those served them redacted.
        erasures = Erasures(conn, user_id)

        def visible(rec: EventRecord) -> bool:
            rid = rec.event.room_id
            checker = checkers.get(rid)
            if checker is None:
                checker = checkers[rid] = VisibilityChecker(conn, rid, user_id)
            if not checker.can_see(rec) or is_hidden(rec, ignored) or erasures.hides(rec):
                return False
            return flt.matches(
                {"type": rec.event.type, "sender": rec.event.sender, "room_id": rid, "content": rec.event.content}
            )

        cursor = token["k"] if token else (0 if criteria.by_rank else None)
        picked: list[tuple[EventRecord, float]] = []
        more = False
        batch = max(criteria.limit, 20)
        for _ in range(MAX_ROUNDS):
            if criteria.limit == 0:
                break
            rows = search_store.search_events(
                conn, match, scope, by_rank=criteria.by_rank,
                before_pos=cursor if not criteria.by_rank else None,
                offset=cursor if criteria.by_rank and cursor is not None else 0, limit=batch,
            )
            for rec, rank in rows:
                if len(picked) >= criteria.limit:
                    more = True
                    break
                cursor = (cursor or 0) + 1 if criteria.by_rank else rec.stream_pos
                if visible(rec):
                    picked.append((rec, rank))
            if more or len(rows) < batch:
                break
        else:
            more = True

        now = self.clock.time_ms()
        kw: Any = {"user_id": user_id, "device_id": requester.device_id, "now_ms": now, "ignored": ignored}
        results: list[JsonDict] = []
        for rec, rank in picked:
            item: JsonDict = {"rank": rank, "result": serialize_event(conn, rec, **kw)}
            if criteria.context is not None:
                item["context"] = self._context(conn, rec, criteria.context, visible, kw)
            results.append(item)

        out: JsonDict = {
            "results": results,
            "count": self._count(conn, match, scope, flt),
            "highlights": list(criteria.query.highlights),
        }
        next_token = None
        if more and cursor is not None:
            next_token = {"k": cursor}
            if group is not None:
                next_token["g"] = group
            out["next_batch"] = _encode_token(next_token)
        if criteria.group_keys:
            groups: JsonDict = {}
            for key in criteria.group_keys:
                by_value: JsonDict = {}
                for rec, _ in picked:
                    value = rec.event.room_id if key == "room_id" else rec.event.sender
                    entry = by_value.setdefault(value, {"order": len(by_value) + 1, "results": []})
                    entry["results"].append(rec.event.event_id)
                if next_token is not None:
                    for value, entry in by_value.items():
                        entry["next_batch"] = _encode_token({"k": next_token["k"], "g": [key, value]})
                groups[key] = by_value
            out["groups"] = groups
        if criteria.include_state:
            out["state"] = {
                rid: self._room_state(conn, user_id, rid, kw)
                for rid in dict.fromkeys(rec.event.room_id for rec, _ in picked)
            }
        return out

    def _count(self, conn: Conn, match: str, scope: search_store.Scope, flt: RoomEventFilter) -> int:
        """The number of results the user may see. ``contains_url`` needs the events'
        content: the first COUNT_SCAN events are read, the rest counted as matching (the
        spec's count is approximate; it never counts an event the user may not see)."""
        total = search_store.count_events(conn, match, scope)
        if flt.contains_url is None or total == 0:
            return total
        rows = search_store.search_events(conn, match, scope, by_rank=False, limit=COUNT_SCAN)
        kept = sum(1 for rec, _ in rows if ("url" in rec.event.content) == flt.contains_url)
        return kept + max(0, total - len(rows))

    def _context(
        self,
        conn: Conn,
        rec: EventRecord,
        limits: tuple[int, int, bool],
        visible: Any,
        kw: Any,
    ) -> JsonDict:
        before_n, after_n, include_profile = limits
        room_id = rec.event.room_id
        assert rec.stream_pos is not None

        def collect(backwards: bool, n: int) -> tuple[list[EventRecord], int]:
            out: list[EventRecord] = []
            cursor = rec.stream_pos
            assert cursor is not None
            for _ in range(MAX_ROUNDS):
                if n == 0:
                    break
                page = ev_store.room_timeline(
                    conn, room_id, from_pos=cursor, to_pos=None, backwards=backwards, limit=max(n, 20)
                )
                for r in page:
                    if len(out) >= n:
                        break
                    assert r.stream_pos is not None
                    cursor = r.stream_pos
                    if visible(r):
                        out.append(r)
                if len(out) >= n or len(page) < max(n, 20):
                    break
            return out, cursor

        before, start = collect(True, before_n)
        after, end = collect(False, after_n)
        ctx: JsonDict = {
            "events_before": serialize_events(conn, before, **kw),
            "events_after": serialize_events(conn, after, **kw),
            "start": f"t{start - 1}",
            "end": f"t{end}",
        }
        if include_profile:
            senders = sorted({r.event.sender for r in [rec, *before, *after]})
            state = state_store.state_before_event(conn, rec.event.event_id) or {}
            ids = [state[("m.room.member", s)] for s in senders if ("m.room.member", s) in state]
            members = ev_store.get_events(conn, ids)
            profiles: JsonDict = {}
            for m in members.values():
                content = m.event.content
                profile = {
                    k: content[k] for k in ("displayname", "avatar_url") if isinstance(content.get(k), str)
                }
                if m.event.state_key is not None:
                    profiles[m.event.state_key] = profile
            ctx["profile_info"] = profiles
        return ctx

    def _room_state(self, conn: Conn, user_id: str, room_id: str, kw: Any) -> list[JsonDict]:
        m = state_store.get_membership(conn, room_id, user_id)
        if m is not None and m[0] == "join":
            state = state_store.get_current_state_ids(conn, room_id)
        else:
            state = (state_store.state_after_event(conn, m[1]) if m is not None else None) or {}
        recs = ev_store.get_events(conn, state.values())
        return serialize_events(conn, list(recs.values()), bundle=False, **kw)
