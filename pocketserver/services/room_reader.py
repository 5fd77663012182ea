"""Reading rooms for clients: state, events, members, /messages, /context, directory.

Every read checks what the requester may see: current state for members, the state
at the moment they left for former members, everything for world-readable rooms, and
history visibility per event for timelines (see ``visibility``).

Also the deprecated snapshots clients still call: ``GET /rooms/{roomId}/initialSync``
(Element previews, "peeks" into, a room it has not joined with it), ``GET /initialSync``
and ``GET /events/{eventId}`` (client-server API, old_sync.yaml and
room_initial_sync.yaml; shaped as Synapse answers them).
"""

from __future__ import annotations

import base64
import json
from typing import Any, Protocol

from pocketserver.errors import BadJson, Forbidden, InvalidParam, NotFound
from pocketserver.services.auth import Requester
from pocketserver.services.client_events import serialize_event, serialize_events, v1_format
from pocketserver.services.clock import Clock
from pocketserver.services.filtering import InvalidFilter, RoomEventFilter
from pocketserver.services.ignored_users import ignored_users, is_hidden
from pocketserver.services.invite_permission import blocks_invites
from pocketserver.services.params import parse_int
from pocketserver.services.sync import parse_stream_token, presence_event, receipt_event
from pocketserver.services.visibility import VisibilityChecker
from pocketserver.storage import account_data as ad_store
from pocketserver.storage import appservices as as_store
from pocketserver.storage import event_graph as graph
from pocketserver.storage import events as ev_store
from pocketserver.storage import presence as presence_store
from pocketserver.storage import rooms as room_store
from pocketserver.storage import state as state_store
from pocketserver.storage.database import Conn, Database
from pocketserver.storage.events import EventRecord
from pocketserver.storage.state import StateMap
from pocketserver.storage.streams import current_stream_pos

JsonDict = dict[str, Any]


def _parse_room_filter(raw: str | None) -> RoomEventFilter | None:
    if not raw:
        return None
    try:
        obj = json.loads(raw)
        return RoomEventFilter.parse(obj)
    except (ValueError, InvalidFilter) as e:
        raise BadJson(f"Invalid filter: {e}") from None


def _view(rec: EventRecord) -> JsonDict:
    ev = rec.event
    return {"type": ev.type, "sender": ev.sender, "room_id": ev.room_id, "content": ev.content}


def _v1_presence(p: presence_store.Presence, now: int) -> JsonDict:
    """A presence event as the deprecated snapshots give it: the user also in content."""
    event = presence_event(p, now)
    event["content"]["user_id"] = p.user_id
    return event


def _outlier_visible(conn: Conn, checker: VisibilityChecker, rec: EventRecord) -> bool:
    """An event held outside the timeline (fetched by /event, or part of the state we
    were given at a join): its place in history is unknown, so it is shown only to a
    member of the room while its history is shared with members."""
    if rec.stream_pos is not None or rec.rejected_reason is not None:
        return False
    if checker.current_membership != "join":
        return False
    return checker.visibility_at(current_stream_pos(conn) + 1) in ("shared", "world_readable")


class RemoteHistory(Protocol):
    """History of rooms held elsewhere (federation/joining.py's RemoteRooms)."""

    async def backfill(self, room_id: str, limit: int) -> int: ...

    async def fetch_event(self, room_id: str, event_id: str) -> bool: ...


class RoomReader:
    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock
        # Set when federation is wired: /messages backfills from other servers at the
        # start of what is held here, /context and /event fetch an event we lack.
        self.remote: RemoteHistory | None = None

    async def _fetch_missing(self, requester: Requester, room_id: str, event_id: str) -> None:
        """An event of a room we are in that we lack: fetched from a server in it, for a
        member of the room only (the caller then checks, as for any event, whether the
        user may see it)."""
        if self.remote is None:
            return

        def read(conn: Conn) -> bool:
            m = state_store.get_membership(conn, room_id, requester.user_id)
            return m is not None and m[0] == "join" and ev_store.event_nid(conn, event_id) is None

        if await self.db.read(read):
            await self.remote.fetch_event(room_id, event_id)

    # -- access --------------------------------------------------------------------------

    def _visible_state(self, conn: Conn, requester: Requester, room_id: str) -> StateMap:
        """The state the requester may read, or Forbidden.

        A member who left reads the state as it was when they left (the spec's "If the
        user has left the room"); a banned user does not: a ban removes the user's
        access, as Synapse does (it allows departed users only with membership
        ``leave``), unless the room is world-readable."""
        if ev_store.get_room(conn, room_id) is None:
            raise Forbidden("You are not in this room")
        m = state_store.get_membership(conn, room_id, requester.user_id)
        if m is not None and m[0] == "join":
            return state_store.get_current_state_ids(conn, room_id)
        if m is not None and m[0] == "leave":
            after = state_store.state_after_event(conn, m[1])
            if after is not None:
                return after
        checker = VisibilityChecker(conn, room_id, requester.user_id)
        if checker.world_readable_now:
            return state_store.get_current_state_ids(conn, room_id)
        raise Forbidden("You are not in this room")

    # -- state ------------------------------------------------------------------------------

    async def joined_rooms(self, user_id: str) -> list[str]:
        rooms = await self.db.read(state_store.rooms_for_user, user_id, ("join",))
        return sorted(rooms)

    async def state_event(
        self, requester: Requester, room_id: str, etype: str, state_key: str
    ) -> JsonDict | None:
        def run(conn: Conn) -> JsonDict | None:
            state = self._visible_state(conn, requester, room_id)
            eid = state.get((etype, state_key))
            if eid is None:
                return None
            rec = ev_store.get_event(conn, eid)
            if rec is None:
                return None
            return serialize_event(
                conn, rec, user_id=requester.user_id, device_id=requester.device_id,
                now_ms=self.clock.time_ms(), bundle=False,
            )

        return await self.db.read(run)

    async def room_state(self, requester: Requester, room_id: str) -> list[JsonDict]:
        def run(conn: Conn) -> list[JsonDict]:
            state = self._visible_state(conn, requester, room_id)
            recs = ev_store.get_events(conn, state.values())
            return serialize_events(
                conn, [recs[e] for e in state.values() if e in recs],
                user_id=requester.user_id, device_id=requester.device_id,
                now_ms=self.clock.time_ms(), bundle=False,
            )

        return await self.db.read(run)

    async def members(
        self,
        requester: Requester,
        room_id: str,
        *,
        at: str | None,
        membership: str | None,
        not_membership: str | None,
    ) -> list[JsonDict]:
        def run(conn: Conn) -> list[JsonDict]:
            records: list[EventRecord]
            mine = state_store.get_membership(conn, room_id, requester.user_id)
            if at is None and mine is not None and mine[0] == "join" and ev_store.get_room(conn, room_id):
                # A member asking for the list now (nearly every call): the current
                # member events in one query.
                records = ev_store.current_state_events(conn, room_id, "m.room.member")
            else:
                state = self._visible_state(conn, requester, room_id)
                if at is not None:
                    pos = parse_stream_token(at)
                    state = self._state_at_pos(conn, room_id, pos) or state
                ids = [eid for (t, _), eid in state.items() if t == "m.room.member"]
                recs = ev_store.get_events(conn, ids)
                records = [recs[eid] for eid in ids if eid in recs]
            chosen = []
            for rec in records:
                m = rec.event.membership
                if membership is not None and m != membership:
                    continue
                if not_membership is not None and m == not_membership:
                    continue
                chosen.append(rec)
            return serialize_events(
                conn, chosen, user_id=requester.user_id, device_id=requester.device_id,
                now_ms=self.clock.time_ms(), bundle=False,
            )

        return await self.db.read(run)

    def _state_at_pos(self, conn: Conn, room_id: str, pos: int) -> StateMap | None:
        recs = ev_store.room_timeline(conn, room_id, from_pos=pos + 1, to_pos=None, backwards=True, limit=1)
        if not recs:
            return None
        return state_store.state_after_event(conn, recs[0].event.event_id)

    async def joined_members(self, requester: Requester, room_id: str) -> JsonDict:
        def run(conn: Conn) -> JsonDict:
            state = self._visible_state(conn, requester, room_id)
            ids = [eid for (t, _), eid in state.items() if t == "m.room.member"]
            recs = ev_store.get_events(conn, ids)
            out: JsonDict = {}
            for rec in recs.values():
                if rec.event.membership == "join" and rec.event.state_key is not None:
                    c = rec.event.content
                    out[rec.event.state_key] = {
                        "display_name": c.get("displayname") if isinstance(c.get("displayname"), str) else None,
                        "avatar_url": c.get("avatar_url") if isinstance(c.get("avatar_url"), str) else None,
                    }
            return out

        return await self.db.read(run)

    # -- events --------------------------------------------------------------------------------

    async def event(self, requester: Requester, room_id: str, event_id: str) -> JsonDict:
        await self._fetch_missing(requester, room_id, event_id)

        def run(conn: Conn) -> JsonDict:
            rec = ev_store.get_event(conn, event_id)
            if rec is None or rec.event.room_id != room_id or rec.rejected_reason is not None:
                raise NotFound("Event not found")
            if ev_store.get_room(conn, room_id) is None:
                raise NotFound("Event not found")
            checker = VisibilityChecker(conn, room_id, requester.user_id)
            if not checker.can_see(rec) and not _outlier_visible(conn, checker, rec):
                raise NotFound("Event not found")
            return serialize_event(
                conn, rec, user_id=requester.user_id, device_id=requester.device_id,
                now_ms=self.clock.time_ms(),
            )

        return await self.db.read(run)

    async def messages(
        self,
        requester: Requester,
        room_id: str,
        *,
        from_token: str | None,
        to_token: str | None,
        backwards: bool,
        limit: int,
        raw_filter: str | None,
    ) -> JsonDict:
        flt = _parse_room_filter(raw_filter)
        start_pos = parse_stream_token(from_token) if from_token else None
        end_pos = parse_stream_token(to_token) if to_token else None

        def run(conn: Conn) -> JsonDict:
            if ev_store.get_room(conn, room_id) is None:
                raise Forbidden("You are not in this room")
            checker = VisibilityChecker(conn, room_id, requester.user_id)
            if checker.current_membership is None and not checker.world_readable_now:
                raise Forbidden("You are not in this room")
            ignored = ignored_users(conn, requester.user_id)
            # A token t{p} is the gap after the event at position p.
            if backwards:
                boundary = start_pos if start_pos is not None else current_stream_pos(conn)
                cursor = boundary + 1
            else:
                boundary = start_pos if start_pos is not None else -(2**62)
                cursor = boundary
            picked: list[EventRecord] = []
            exhausted = False
            page_size = max(limit, 20)
            for _ in range(50):
                page = ev_store.room_timeline(
                    conn, room_id, from_pos=cursor, to_pos=end_pos, backwards=backwards, limit=page_size
                )
                full = False
                for rec in page:
                    if len(picked) >= limit:
                        full = True
                        break
                    assert rec.stream_pos is not None
                    cursor = rec.stream_pos
                    if not checker.can_see(rec) or is_hidden(rec, ignored):
                        continue
                    if flt is not None and not flt.matches(_view(rec)):
                        continue
                    picked.append(rec)
                if full or len(picked) >= limit:
                    break
                if len(page) < page_size:
                    exhausted = True
                    break
            chunk = serialize_events(
                conn, picked, user_id=requester.user_id, device_id=requester.device_id,
                now_ms=self.clock.time_ms(),
            )
            out: JsonDict = {"chunk": chunk, "start": f"t{boundary}"}
            if not exhausted and (picked or limit == 0):
                out["end"] = f"t{cursor - 1}" if backwards else f"t{cursor}"
            elif not backwards:
                # Forwards there is no end of history: events sent later follow this
                # token, so the client can keep paginating from it.
                reached = end_pos if end_pos is not None else current_stream_pos(conn)
                out["end"] = f"t{max(cursor, min(reached, current_stream_pos(conn)))}"
            if flt is not None and flt.lazy_load_members and picked:
                senders = {r.event.sender for r in picked}
                state = state_store.get_current_state_ids(
                    conn, room_id, [("m.room.member", s) for s in senders]
                )
                recs = ev_store.get_events(conn, state.values())
                out["state"] = serialize_events(
                    conn, list(recs.values()), user_id=requester.user_id,
                    device_id=requester.device_id, now_ms=self.clock.time_ms(), bundle=False,
                )
            return out

        out = await self.db.read(run)
        if (
            backwards
            and self.remote is not None
            and len(out["chunk"]) < limit
            and bool(await self.db.read(graph.backward_extremities, room_id))
        ):
            # The start of what is held here: one /backfill from a server in the room
            # (bounded: one request per call, at most 100 events), then read again.
            if await self.remote.backfill(room_id, min(max(limit, 10), 100)):
                out = await self.db.read(run)
        return out

    async def context(
        self, requester: Requester, room_id: str, event_id: str, limit: int, raw_filter: str | None
    ) -> JsonDict:
        flt = _parse_room_filter(raw_filter)
        await self._fetch_missing(requester, room_id, event_id)

        def run(conn: Conn) -> JsonDict:
            # As /messages: someone who was never in a room that is not world-readable
            # is told so (403, event_context.yaml), before anything about its events.
            if ev_store.get_room(conn, room_id) is None:
                raise Forbidden("You are not in this room")
            checker = VisibilityChecker(conn, room_id, requester.user_id)
            if checker.current_membership is None and not checker.world_readable_now:
                raise Forbidden("You are not in this room")
            rec = ev_store.get_event(conn, event_id)
            if rec is None or rec.event.room_id != room_id or rec.stream_pos is None:
                raise NotFound("Event not found")
            if not checker.can_see(rec):
                raise NotFound("Event not found")
            pos = rec.stream_pos
            ignored = ignored_users(conn, requester.user_id)
            before_n = limit // 2
            after_n = limit - before_n

            def collect(backwards: bool, n: int) -> tuple[list[EventRecord], int]:
                out: list[EventRecord] = []
                cursor = pos
                for _ in range(20):
                    page = ev_store.room_timeline(
                        conn, room_id, from_pos=cursor, to_pos=None, backwards=backwards, limit=max(n, 20)
                    )
                    if not page:
                        break
                    for r in page:
                        assert r.stream_pos is not None
                        if len(out) >= n:
                            break
                        cursor = r.stream_pos
                        if (
                            checker.can_see(r)
                            and not is_hidden(r, ignored)
                            and (flt is None or flt.matches(_view(r)))
                        ):
                            out.append(r)
                    if len(out) >= n or len(page) < max(n, 20):
                        break
                return out, cursor

            before, start = collect(True, before_n)
            after, end = collect(False, after_n)
            kw = {"user_id": requester.user_id, "device_id": requester.device_id, "now_ms": self.clock.time_ms()}
            last = after[-1].event.event_id if after else event_id
            state_ids = state_store.state_after_event(conn, last) or {}
            if flt is not None and flt.lazy_load_members:
                senders = {r.event.sender for r in [rec, *before, *after]}
                state_ids = {k: v for k, v in state_ids.items() if k[0] != "m.room.member" or k[1] in senders}
            srecs = ev_store.get_events(conn, state_ids.values())
            return {
                "event": serialize_event(conn, rec, **kw),  # type: ignore[arg-type]
                "events_before": serialize_events(conn, before, **kw),  # type: ignore[arg-type]
                "events_after": serialize_events(conn, after, **kw),  # type: ignore[arg-type]
                "start": f"t{start - 1}",
                "end": f"t{end}",
                "state": serialize_events(conn, list(srecs.values()), bundle=False, **kw),  # type: ignore[arg-type]
            }

        return await self.db.read(run)

    async def timestamp_to_event(self, requester: Requester, room_id: str, ts: int, forwards: bool) -> JsonDict:
        def run(conn: Conn) -> JsonDict:
            self._visible_state(conn, requester, room_id)
            eid = ev_store.event_id_at_or_near_ts(conn, room_id, ts, forwards)
            if eid is None:
                raise NotFound("No event found")
            rec = ev_store.get_event(conn, eid)
            assert rec is not None
            return {"event_id": eid, "origin_server_ts": rec.event.origin_server_ts}

        return await self.db.read(run)

    # -- deprecated snapshots: initialSync, /events/{eventId} --------------------------------------

    async def room_initial_sync(self, requester: Requester, room_id: str, limit: int) -> JsonDict:
        """A member's (or former member's) snapshot of a room, or a peek into a
        world-readable one; M_FORBIDDEN otherwise, the refusal Element expects."""

        def run(conn: Conn) -> JsonDict:
            if ev_store.get_room(conn, room_id) is None:
                raise Forbidden("You are not in this room")
            m = state_store.get_membership(conn, room_id, requester.user_id)
            membership = m[0] if m is not None and m[0] in ("join", "leave", "ban") else None
            if membership is None and not VisibilityChecker(conn, room_id, requester.user_id).world_readable_now:
                raise Forbidden("You are not in this room and it is not world-readable")
            now = self.clock.time_ms()
            return self._snapshot(conn, requester, room_id, membership, m[1] if m else None, limit, now)

        return await self.db.read(run)

    async def initial_sync(self, requester: Requester, limit: int, archived: bool) -> JsonDict:
        """GET /initialSync: every room of the user (left ones too with ``archived``),
        presence and global account data, and the position to stream /events from."""

        def run(conn: Conn) -> JsonDict:
            upto = current_stream_pos(conn)
            now = self.clock.time_ms()
            wanted = ("join", "invite", "leave", "ban") if archived else ("join", "invite")
            rooms_out: list[JsonDict] = []
            memberships = state_store.rooms_for_user(conn, requester.user_id, wanted)
            invites_blocked = blocks_invites(conn, requester.user_id)
            for room_id in sorted(memberships):
                m = state_store.get_membership(conn, room_id, requester.user_id)
                if m is None:
                    continue
                if m[0] == "invite":
                    if invites_blocked:
                        continue  # invite_permission.md: not served while blocked
                    rec = ev_store.get_event(conn, m[1])
                    info = ev_store.get_room(conn, room_id)
                    entry: JsonDict = {
                        "room_id": room_id,
                        "membership": "invite",
                        "visibility": "public" if info is not None and info.is_public else "private",
                    }
                    if rec is not None:
                        entry["invite"] = v1_format(serialize_event(
                            conn, rec, user_id=requester.user_id, device_id=requester.device_id,
                            now_ms=now, bundle=False,
                        ))
                    rooms_out.append(entry)
                    continue
                rooms_out.append(self._snapshot(conn, requester, room_id, m[0], m[1], limit, now))
            account = ad_store.get_account_data_since(conn, requester.user_id, 0, upto)
            joined_rooms = [r for r, (m, _) in memberships.items() if m == "join"]
            return {
                "end": f"t{upto}",
                "rooms": rooms_out,
                "receipts": self._receipts(conn, requester, joined_rooms),
                "presence": [
                    _v1_presence(p, now)
                    for p in presence_store.get_presence_changes_since(conn, requester.user_id, 0, upto)
                ],
                "account_data": ad_store.to_events(account.global_),
            }

        return await self.db.read(run)

    def _snapshot(
        self,
        conn: Conn,
        requester: Requester,
        room_id: str,
        membership: str | None,
        member_event_id: str | None,
        limit: int,
        now: int,
    ) -> JsonDict:
        """One room's RoomInfo. A member sees the current state and the latest events;
        a former member the state when they left and the events before it (their own
        leave included); a peeker (``membership`` None) a world-readable room now."""
        upto = current_stream_pos(conn)
        state: StateMap | None = None
        if membership in ("leave", "ban") and member_event_id is not None:
            state = state_store.state_after_event(conn, member_event_id)
            where = ev_store.event_position(conn, member_event_id)
            if where is not None and where[1] is not None:
                upto = where[1]
        if state is None:
            state = state_store.get_current_state_ids(conn, room_id)
        checker = VisibilityChecker(conn, room_id, requester.user_id)
        ignored = ignored_users(conn, requester.user_id)
        picked: list[EventRecord] = []
        cursor = upto + 1
        exhausted = False
        for _ in range(20):
            page = ev_store.room_timeline(
                conn, room_id, from_pos=cursor, to_pos=None, backwards=True, limit=max(limit, 20)
            )
            for rec in page:
                if len(picked) >= limit:
                    break
                assert rec.stream_pos is not None
                cursor = rec.stream_pos
                if checker.can_see(rec) and not is_hidden(rec, ignored):
                    picked.append(rec)
            if len(picked) >= limit:
                break
            if len(page) < max(limit, 20):
                exhausted = True
                break
        picked.reverse()
        kw: dict[str, Any] = {"user_id": requester.user_id, "device_id": requester.device_id, "now_ms": now}
        # ``start`` pages back from the first event; from the room's start that finds
        # nothing, which is how a client learns it has everything.
        messages: JsonDict = {
            "chunk": [v1_format(e) for e in serialize_events(conn, picked, **kw)],
            "start": f"t{cursor - 1}" if picked or not exhausted else f"t{upto}",
            "end": f"t{upto}",
        }
        recs = ev_store.get_events(conn, state.values())
        info = ev_store.get_room(conn, room_id)
        joined = set(state_store.room_members(conn, room_id, "join"))
        room_ad = ad_store.get_account_data_since(conn, requester.user_id, 0, None).rooms.get(room_id, {})
        out: JsonDict = {
            "room_id": room_id,
            "messages": messages,
            "state": [
                v1_format(e)
                for e in serialize_events(conn, [recs[e] for e in state.values() if e in recs], bundle=False, **kw)
            ],
            "visibility": "public" if info is not None and info.is_public else "private",
            "account_data": ad_store.to_events(room_ad),
            # A former member learns nothing of who is around now.
            "presence": [
                _v1_presence(p, now)
                for p in presence_store.get_presences(conn, sorted(joined))
            ]
            if membership not in ("leave", "ban")
            else [],
            "receipts": self._receipts(conn, requester, [room_id])
            if membership not in ("leave", "ban")
            else [],
        }
        if membership is not None:
            out["membership"] = membership
        return out

    def _receipts(self, conn: Conn, requester: Requester, room_ids: list[str]) -> list[JsonDict]:
        """The rooms' current receipts as m.receipt events, one per room."""
        upto = current_stream_pos(conn)
        by_room = room_store.receipts_since(conn, room_ids, 0, upto, requester.user_id)
        out = []
        for room_id in sorted(by_room):
            event = receipt_event(by_room[room_id])
            event["room_id"] = room_id
            out.append(event)
        return out

    async def event_by_id(self, requester: Requester, event_id: str) -> JsonDict:
        """GET /events/{eventId}: any event the requester may see, in whichever room."""

        def run(conn: Conn) -> JsonDict:
            rec = ev_store.get_event(conn, event_id)
            if rec is None or rec.rejected_reason is not None or rec.stream_pos is None:
                raise NotFound("Event not found")
            if not VisibilityChecker(conn, rec.event.room_id, requester.user_id).can_see(rec):
                raise Forbidden("You don't have permission to access that event")
            return v1_format(serialize_event(
                conn, rec, user_id=requester.user_id, device_id=requester.device_id,
                now_ms=self.clock.time_ms(),
            ))

        return await self.db.read(run)

    # -- aliases, directory, reports -------------------------------------------------------------

    async def room_aliases(self, requester: Requester, room_id: str) -> list[str]:
        def run(conn: Conn) -> list[str]:
            self._visible_state(conn, requester, room_id)
            return room_store.aliases_for_room(conn, room_id)

        return await self.db.read(run)

    async def room_is_public(self, room_id: str) -> bool:
        info = await self.db.read(ev_store.get_room, room_id)
        if info is None:
            raise NotFound("Unknown room")
        return info.is_public

    async def set_room_public(self, requester: Requester, room_id: str, public: bool) -> None:
        def run(conn: Conn) -> None:
            if ev_store.get_room(conn, room_id) is None:
                raise NotFound("Unknown room")
            m = state_store.get_membership(conn, room_id, requester.user_id)
            if (m is None or m[0] != "join") and not requester.is_admin:
                raise Forbidden("You must be in the room to publish it")
            room_store.set_room_public(conn, room_id, public)

        await self.db.write(run)

    async def public_rooms(
        self,
        *,
        limit: int | None,
        since: str | None,
        search: str | None,
        instance: tuple[str, str] | None = None,
        include_all_networks: bool = False,
    ) -> JsonDict:
        """The room directory: the server's own list; or one application service
        network's (``instance`` = (AS ID, network ID), from ``third_party_instance_id``);
        or both with ``include_all_networks``."""
        offset = 0
        if since:
            try:
                text = base64.urlsafe_b64decode(since.encode()).decode()
            except ValueError:
                raise InvalidParam("Invalid since token") from None
            offset = parse_int(text, "since token", minimum=0)

        def run(conn: Conn) -> JsonDict:
            entries = []
            if instance is not None:
                room_ids = as_store.published_rooms(conn, *instance)
            else:
                room_ids = room_store.public_room_ids(conn)
                if include_all_networks:
                    room_ids = list(dict.fromkeys([*room_ids, *as_store.published_rooms(conn)]))
            for room_id in room_ids:
                entry = self._directory_entry(conn, room_id)
                if search:
                    hay = " ".join(str(entry.get(k, "")) for k in ("name", "topic", "canonical_alias")).lower()
                    if search.lower() not in hay:
                        continue
                entries.append(entry)
            entries.sort(key=lambda e: (-e["num_joined_members"], e["room_id"]))
            total = len(entries)
            page = entries[offset:] if limit is None else entries[offset : offset + limit]
            out: JsonDict = {"chunk": page, "total_room_count_estimate": total}
            if limit is not None and offset + limit < total:
                out["next_batch"] = base64.urlsafe_b64encode(str(offset + limit).encode()).decode()
            if offset > 0:
                out["prev_batch"] = base64.urlsafe_b64encode(str(max(0, offset - (limit or 0))).encode()).decode()
            return out

        return await self.db.read(run)

    def _directory_entry(self, conn: Conn, room_id: str) -> JsonDict:
        keys = [
            ("m.room.name", ""), ("m.room.topic", ""), ("m.room.canonical_alias", ""),
            ("m.room.avatar", ""), ("m.room.join_rules", ""), ("m.room.history_visibility", ""),
            ("m.room.guest_access", ""), ("m.room.create", ""),
        ]
        ids = state_store.get_current_state_ids(conn, room_id, keys)
        recs = ev_store.get_events(conn, ids.values())
        content = {k[0]: recs[e].event.content for k, e in ids.items() if e in recs}
        entry: JsonDict = {
            "room_id": room_id,
            "num_joined_members": state_store.count_members(conn, room_id),
            "world_readable": content.get("m.room.history_visibility", {}).get("history_visibility") == "world_readable",
            "guest_can_join": content.get("m.room.guest_access", {}).get("guest_access") == "can_join",
            "join_rule": content.get("m.room.join_rules", {}).get("join_rule", "invite"),
        }
        for key, etype, field in (
            ("name", "m.room.name", "name"),
            ("topic", "m.room.topic", "topic"),
            ("canonical_alias", "m.room.canonical_alias", "alias"),
            ("avatar_url", "m.room.avatar", "url"),
        ):
            v = content.get(etype, {}).get(field)
            if isinstance(v, str) and v:
                entry[key] = v
        room_type = content.get("m.room.create", {}).get("type")
        if isinstance(room_type, str):
            entry["room_type"] = room_type
        return entry

    async def report(
        self, requester: Requester, room_id: str, event_id: str | None, reason: str | None, score: int | None
    ) -> None:
        def run(conn: Conn) -> None:
            if ev_store.get_room(conn, room_id) is None:
                raise NotFound("Unknown room")
            if event_id is not None:
                rec = ev_store.get_event(conn, event_id)
                if rec is None or rec.event.room_id != room_id:
                    raise NotFound("Event not found")
                if not VisibilityChecker(conn, room_id, requester.user_id).can_see(rec):
                    raise NotFound("Event not found")
            room_store.insert_report(conn, room_id, event_id, requester.user_id, reason, score, self.clock.time_ms())

        await self.db.write(run)
