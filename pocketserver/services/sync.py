"""/sync (v2): everything that happened to a user since their last token.

Client-server API "Syncing". A token is ``s{pos}_{typing}_{to_device}``: the global
stream position everything stored is ordered by, the in-memory typing serial, and how
far to-device messages were handed out (they are delivered in batches and deleted only
when the next token acknowledges them).

Per joined room the timeline is the newest ``limit`` events after the token (``limited``
with a ``prev_batch`` when more were skipped); ``state`` is what the client needs to
know about the state at the start of that timeline and does not know yet. A sync with
nothing to say waits on the :class:`Notifier` until something arrives or the timeout.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from pocketserver.errors import Forbidden, InvalidParam
from pocketserver.services.auth import Requester
from pocketserver.services.client_events import serialize_events, stripped_state
from pocketserver.services.clock import Clock
from pocketserver.services.ephemeral import TypingTracker
from pocketserver.services.filtering import Filter
from pocketserver.services.ignored_users import ignored_users, is_hidden
from pocketserver.services.notifier import Notifier
from pocketserver.services.params import parse_int
from pocketserver.services.visibility import VisibilityChecker
from pocketserver.storage import account_data as ad_store
from pocketserver.storage import events as ev_store
from pocketserver.storage import presence as presence_store
from pocketserver.storage import rooms as room_store
from pocketserver.storage import state as state_store
from pocketserver.storage.database import Conn, Database
from pocketserver.storage.events import EventRecord
from pocketserver.storage.streams import current_stream_pos

JsonDict = dict[str, Any]

DEFAULT_TIMELINE_LIMIT = 10
MAX_TIMELINE_LIMIT = 200
MAX_TIMEOUT_S = 300.0
EVENT_STREAM_LIMIT = 100
INVITE_STATE_TYPES = (
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.topic",
)

_TOKEN = re.compile(r"s([^_]*)_([^_]*)_([^_]*)")


@dataclass(frozen=True, slots=True)
class SyncToken:
    pos: int
    typing: int
    to_device: int

    def __str__(self) -> str:
        return f"s{self.pos}_{self.typing}_{self.to_device}"

    @classmethod
    def parse(cls, raw: str) -> SyncToken:
        m = _TOKEN.fullmatch(raw)
        if m is None:
            raise InvalidParam("Invalid since token")
        pos = parse_int(m.group(1), "since token")
        typing, to_device = (parse_int(g, "since token", minimum=0) for g in m.groups()[1:])
        return cls(pos, typing, to_device)


def parse_stream_token(raw: str) -> int:
    """A /messages-style token: a sync token or ``t{pos}``/``b{pos}``."""
    if raw.startswith(("t", "b")):
        return parse_int(raw[1:], "pagination token", minimum=0)
    return SyncToken.parse(raw).pos


# Extensions other services plug in for the top-level sections (to-device, device
# lists, key counts). Each gets (requester, since token or None, upto pos) and fills
# ``response``; the to-device one returns the to-device position it reached.
SyncExtension = Callable[[Requester, SyncToken | None, int, JsonDict], Awaitable[int | None]]
UnreadCounter = Callable[[Conn, str, str], tuple[int, int]]


class SyncService:
    def __init__(
        self, db: Database, clock: Clock, notifier: Notifier, typing: TypingTracker
    ) -> None:
        self.db = db
        self.clock = clock
        self.notifier = notifier
        self.typing = typing
        self.extensions: list[SyncExtension] = []
        # (conn, user_id, room_id) -> (notification_count, highlight_count)
        self.unread_counter: UnreadCounter = default_unread_counts

    async def sync(
        self,
        requester: Requester,
        *,
        since: str | None,
        timeout_ms: int,
        filt: Filter,
        full_state: bool,
        set_presence: str | None = None,
        state_after_key: str | None = None,
    ) -> JsonDict:
        """One /sync answer. ``state_after_key`` set (``"state_after"``, or the MSC4222
        name a client asked with) gives each room the state at the *end* of its timeline
        under that key instead of ``state`` (the spec's ``use_state_after``, v1.16)."""
        token = SyncToken.parse(since) if since else None
        deadline = trio.current_time() + min(max(timeout_ms, 0) / 1000, MAX_TIMEOUT_S)
        while True:
            changed = self.notifier.change_event()
            typing_serial = self.notifier.ephemeral_serial
            upto, response = await self.db.read(
                self._build_now, requester, token, typing_serial, filt, full_state,
                state_after_key,
            )
            td_pos: int | None = upto
            for ext in self.extensions:
                reached = await ext(requester, token, upto, response)
                if reached is not None:
                    td_pos = min(td_pos, reached) if td_pos is not None else reached
            response["next_batch"] = str(SyncToken(upto, typing_serial, td_pos or upto))
            if token is None or full_state or _has_content(response):
                return response
            remaining = deadline - trio.current_time()
            if remaining <= 0:
                return response
            expiry = self.typing.next_expiry_in()
            if expiry is not None:
                remaining = min(remaining, expiry + 0.05)
            await self.notifier.wait_for_change(remaining, changed)

    # -- the deprecated event stream ---------------------------------------------------------

    async def event_stream(
        self, requester: Requester, *, from_token: str | None, timeout_ms: int, room_id: str | None
    ) -> JsonDict:
        """GET /events: the room events after ``from`` (now, when absent) in the user's
        rooms, or in one room the user may see (a peek into a world-readable room, as
        matrix-js-sdk does after a room initialSync), waiting up to the timeout for one.
        Tokens are ``t{pos}``, as /messages and /initialSync give them."""
        first = parse_stream_token(from_token) if from_token else None
        pos = first
        deadline = trio.current_time() + min(max(timeout_ms, 0) / 1000, MAX_TIMEOUT_S)
        while True:
            changed = self.notifier.change_event()
            # Each pass reads one bounded slice; a slice of events the user may not see
            # moves on without waiting.
            for _ in range(100):
                start, end, chunk, upto = await self.db.read(self._stream_now, requester, pos, room_id)
                first = start if first is None else first
                pos = end
                if chunk or end >= upto:
                    break
            remaining = deadline - trio.current_time()
            if chunk or remaining <= 0 or end < upto:
                return {"start": f"t{first}", "end": f"t{pos}", "chunk": chunk}
            await self.notifier.wait_for_change(remaining, changed)

    def _stream_now(
        self, conn: Conn, requester: Requester, start: int | None, room_id: str | None
    ) -> tuple[int, int, list[JsonDict], int]:
        """(start, end, events in (start, end], position now): ``end`` is short of now
        when more than a slice of events arrived."""
        upto = current_stream_pos(conn)
        if start is None:
            start = upto
        user_id = requester.user_id
        if room_id is not None:
            checker = VisibilityChecker(conn, room_id, user_id)
            if ev_store.get_room(conn, room_id) is None or (
                checker.current_membership is None and not checker.world_readable_now
            ):
                raise Forbidden("You are not in this room and it is not world-readable")
            rooms = {room_id}
        else:
            # Rooms left before ``start`` have nothing more to show; one left since, its
            # events up to the leave.
            rooms = {
                rid
                for rid, (m, mpos) in state_store.rooms_for_user(
                    conn, user_id, ("join", "invite", "leave", "ban")
                ).items()
                if m in ("join", "invite") or mpos > start
            }
        changed = ev_store.rooms_with_events_between(conn, rooms, start, upto) if start < upto else set()
        ignored = ignored_users(conn, user_id)
        picked: list[EventRecord] = []
        end = upto
        for rid in changed:
            checker = VisibilityChecker(conn, rid, user_id)
            page = ev_store.room_timeline(
                conn, rid, from_pos=start, to_pos=upto, backwards=False, limit=EVENT_STREAM_LIMIT
            )
            if len(page) == EVENT_STREAM_LIMIT and page[-1].stream_pos is not None:
                end = min(end, page[-1].stream_pos)  # this room may have more: stop there
            picked.extend(r for r in page if checker.can_see(r) and not is_hidden(r, ignored))
        picked = sorted((r for r in picked if (r.stream_pos or 0) <= end), key=lambda r: r.stream_pos or 0)
        if len(picked) > EVENT_STREAM_LIMIT:
            picked = picked[:EVENT_STREAM_LIMIT]
            end = picked[-1].stream_pos or end
        chunk = serialize_events(
            conn, picked, user_id=user_id, device_id=requester.device_id, now_ms=self.clock.time_ms()
        )
        return start, end, chunk, upto

    # -- one pass, inside one read transaction ---------------------------------------------

    def _build_now(
        self,
        conn: Conn,
        requester: Requester,
        token: SyncToken | None,
        typing_serial: int,
        filt: Filter,
        full_state: bool,
        state_after_key: str | None,
    ) -> tuple[int, JsonDict]:
        """The answer up to the stream position this transaction sees, and that position."""
        upto = current_stream_pos(conn)
        return upto, self._build(
            conn, requester, token, upto, typing_serial, filt, full_state, state_after_key
        )

    def _build(
        self,
        conn: Conn,
        requester: Requester,
        token: SyncToken | None,
        upto: int,
        typing_serial: int,
        filt: Filter,
        full_state: bool,
        state_after_key: str | None = None,
    ) -> JsonDict:
        user_id = requester.user_id
        now = self.clock.time_ms()
        since = token.pos if token is not None else None
        rooms_join: JsonDict = {}
        rooms_invite: JsonDict = {}
        rooms_leave: JsonDict = {}
        rooms_knock: JsonDict = {}

        memberships = state_store.rooms_for_user(
            conn, user_id, ("join", "invite", "leave", "ban", "knock")
        )
        changed_rooms = (
            ev_store.rooms_with_events_between(conn, memberships.keys(), since, upto)
            if since is not None
            else set()
        )
        receipts = room_store.receipts_since(
            conn,
            [r for r, (m, _) in memberships.items() if m == "join"],
            since if since is not None else 0,
            upto,
            user_id,
        )
        account = ad_store.get_account_data_since(conn, user_id, since or 0, upto)

        for room_id, (membership, mpos) in memberships.items():
            if not filt.room.matches_room(room_id):
                continue
            if mpos > upto:
                continue
            newly = since is None or mpos > since
            if membership == "join":
                typing_users = self.typing.typing_since(
                    room_id, token.typing if (token is not None and not newly) else None
                )
                has_news = (
                    newly
                    or full_state
                    or room_id in changed_rooms
                    or room_id in receipts
                    or room_id in account.rooms
                    or typing_users is not None
                )
                if not has_news:
                    continue
                room = self._joined_room(
                    conn, requester, room_id, None if (newly or full_state) else since, upto, filt,
                    now, state_after_key,
                )
                eph: list[JsonDict] = []
                if typing_users is not None and (typing_users or token is not None):
                    eph.append({"type": "m.typing", "content": {"user_ids": typing_users}})
                if room_id in receipts:
                    eph.append(_receipt_event(receipts[room_id]))
                room["ephemeral"] = {"events": eph}
                room["account_data"] = {
                    "events": ad_store.to_events(account.rooms.get(room_id, {}))
                    if since is not None
                    else self._all_room_account_data(conn, user_id, room_id)
                }
                if not (newly or full_state) and not _room_has_news(room):
                    # Everything new was filtered out (an ignored user's messages, types
                    # the filter leaves out): the room has nothing to report.
                    continue
                rooms_join[room_id] = room
            elif membership == "invite" and newly:
                if self._invited_by_ignored(conn, room_id, user_id):
                    continue
                rooms_invite[room_id] = {"invite_state": {"events": self._stripped(conn, room_id, user_id)}}
            elif membership == "knock" and newly:
                rooms_knock[room_id] = {"knock_state": {"events": self._stripped(conn, room_id, user_id)}}
            elif membership in ("leave", "ban") and since is not None and newly:
                rooms_leave[room_id] = self._left_room(
                    conn, requester, room_id, since, mpos, filt, now, state_after_key
                )
            elif membership in ("leave", "ban") and since is None and filt.room.include_leave:
                rooms_leave[room_id] = self._left_room(
                    conn, requester, room_id, None, mpos, filt, now, state_after_key
                )

        presence_events = [
            presence_event(p, now)
            for p in presence_store.get_presence_changes_since(conn, user_id, since or 0, upto)
        ]

        return {
            "account_data": {"events": _filter_account_data(filt, ad_store.to_events(account.global_))},
            "presence": {"events": presence_events},
            "rooms": {
                "join": rooms_join,
                "invite": rooms_invite,
                "leave": rooms_leave,
                "knock": rooms_knock,
            },
        }

    def _invited_by_ignored(self, conn: Conn, room_id: str, user_id: str) -> bool:
        """Invites from ignored users are not delivered ("Ignoring Users")."""
        ignored = ignored_users(conn, user_id)
        if not ignored:
            return False
        m = state_store.get_membership(conn, room_id, user_id)
        invite = ev_store.get_event(conn, m[1]) if m is not None else None
        return invite is not None and invite.event.sender in ignored

    def _all_room_account_data(self, conn: Conn, user_id: str, room_id: str) -> list[JsonDict]:
        changes = ad_store.get_account_data_since(conn, user_id, 0, None)
        return ad_store.to_events(changes.rooms.get(room_id, {}))

    def _timeline(
        self,
        conn: Conn,
        requester: Requester,
        room_id: str,
        since: int | None,
        upto: int,
        filt: Filter,
    ) -> tuple[list[EventRecord], bool, int]:
        """(events oldest first, limited, position before the first event)."""
        limit = filt.room.timeline.limit
        if limit is None:
            limit = DEFAULT_TIMELINE_LIMIT
        limit = min(limit, MAX_TIMELINE_LIMIT)
        checker = VisibilityChecker(conn, room_id, requester.user_id)
        ignored = ignored_users(conn, requester.user_id)
        picked: list[EventRecord] = []
        limited = False
        cursor = upto + 1
        # Walk back in pages until the limit is filled with visible, filter-passing events.
        for _ in range(20):
            page = ev_store.room_timeline(
                conn, room_id, from_pos=cursor, to_pos=since, backwards=True, limit=max(limit * 2, 20)
            )
            if not page:
                break
            for rec in page:
                cursor = rec.stream_pos if rec.stream_pos is not None else cursor
                if not checker.can_see(rec) or is_hidden(rec, ignored):
                    continue
                if not filt.room.timeline.matches(_filter_view(rec)):
                    continue
                if len(picked) >= limit:
                    limited = True
                    break
                picked.append(rec)
            if limited:
                break
            if len(page) < max(limit * 2, 20):
                break
        if limit == 0 and since is not None:
            limited = ev_store.room_timeline(conn, room_id, from_pos=upto + 1, to_pos=since, backwards=True, limit=1) != []
        if since is None and not limited and picked:
            # An initial sync that reached the room's start is not limited, unless
            # older events exist that the user cannot see.
            older = ev_store.room_timeline(
                conn, room_id, from_pos=picked[-1].stream_pos, to_pos=None, backwards=True, limit=1
            )
            limited = bool(older)
        picked.reverse()
        first_pos = picked[0].stream_pos if picked and picked[0].stream_pos is not None else cursor
        return picked, limited, first_pos

    def _joined_room(
        self,
        conn: Conn,
        requester: Requester,
        room_id: str,
        since: int | None,
        upto: int,
        filt: Filter,
        now: int,
        state_after_key: str | None = None,
    ) -> JsonDict:
        user_id = requester.user_id
        timeline, limited, first_pos = self._timeline(conn, requester, room_id, since, upto, filt)
        # Lazy loading trims the members a client has not met yet (their IDs are never
        # even looked up: in a big room that is nearly all of the state); but an
        # incremental state_after is the list of every state change up to the end of
        # the timeline (clients take state from it alone), so a join, invite or leave
        # of someone who sent nothing stays in it: without it a client encrypting for
        # the room never learns who is in it.
        keep: Callable[[str, str], bool] | None = None
        if filt.lazy_load_members and (state_after_key is None or since is None):
            senders = {r.event.sender for r in timeline} | {user_id}

            def keep(etype: str, state_key: str) -> bool:
                return etype != "m.room.member" or state_key in senders

        if state_after_key is None:
            state_ids = self._state_for_timeline(conn, room_id, since, timeline, limited, keep=keep)
        else:
            state_ids = self._state_after_timeline(conn, room_id, since, timeline, keep=keep)
        state_recs = ev_store.get_events(conn, state_ids.values())
        state_events = serialize_events(
            conn,
            [
                state_recs[e]
                for e in state_ids.values()
                if e in state_recs and filt.room.state.matches(_filter_view(state_recs[e]))
            ],
            user_id=user_id, device_id=requester.device_id, now_ms=now,
        )
        events = [
            filt.project(e)
            for e in serialize_events(
                conn, timeline, user_id=user_id, device_id=requester.device_id, now_ms=now
            )
        ]
        notif, highlight = self.unread_counter(conn, user_id, room_id)
        room: JsonDict = {
            "timeline": {
                "events": events,
                "limited": limited,
                "prev_batch": f"t{first_pos - 1}",
            },
            state_after_key or "state": {"events": state_events},
            "unread_notifications": {"notification_count": notif, "highlight_count": highlight},
            "summary": self._summary(conn, room_id, user_id) if since is None or limited else {},
        }
        return room

    def _state_for_timeline(
        self,
        conn: Conn,
        room_id: str,
        since: int | None,
        timeline: list[EventRecord],
        limited: bool,
        end_state: dict[tuple[str, str], str] | None = None,
        *,
        keep: Callable[[str, str], bool] | None = None,
    ) -> dict[tuple[str, str], str]:
        """State at the start of the timeline that the client does not have yet.
        ``end_state`` is the state at the end of the timeline when that is not the
        room's current state (a room the user left); ``keep(type, state_key)``, when
        given, the only keys wanted."""
        if since is not None and not limited:
            return {}
        has_state_in_timeline = any(r.event.state_key is not None for r in timeline)
        if timeline and has_state_in_timeline:
            state = state_store.state_before_event(conn, timeline[0].event.event_id, keep) or {}
        elif end_state is not None:
            state = end_state
        else:
            state = state_store.get_current_state_ids(conn, room_id, keep=keep)
        if keep is not None:
            state = {k: v for k, v in state.items() if keep(*k)}
        if since is not None:
            # Incremental and limited: only what changed after the client's token.
            fresh = state_store.current_state_since(conn, room_id, since)
            fresh_ids = set(fresh.values())
            state = {k: v for k, v in state.items() if v in fresh_ids or k in fresh}
        in_timeline = {r.event.event_id for r in timeline}
        return {k: v for k, v in state.items() if v not in in_timeline}

    def _state_after_timeline(
        self,
        conn: Conn,
        room_id: str,
        since: int | None,
        timeline: list[EventRecord],
        end_state: dict[tuple[str, str], str] | None = None,
        *,
        keep: Callable[[str, str], bool] | None = None,
    ) -> dict[tuple[str, str], str]:
        """State at the end of the timeline that the client does not have yet
        (``use_state_after``): all of it on an initial sync, else the keys that changed
        after the client's token. Timeline events are not left out: with ``state_after``
        clients take state from this list only. ``keep`` as for ``_state_for_timeline``."""
        state: dict[tuple[str, str], str] | None = end_state
        if state is None and timeline:
            state = state_store.state_after_event(conn, timeline[-1].event.event_id, keep)
        if state is None:
            state = state_store.get_current_state_ids(conn, room_id, keep=keep)
        if keep is not None:
            state = {k: v for k, v in state.items() if keep(*k)}
        if since is None:
            return state
        fresh = state_store.current_state_since(conn, room_id, since)
        fresh_ids = set(fresh.values())
        changed = {r.event.event_id for r in timeline if r.event.state_key is not None}
        return {
            k: v for k, v in state.items() if v in fresh_ids or k in fresh or v in changed
        }

    def _summary(self, conn: Conn, room_id: str, user_id: str) -> JsonDict:
        # Counted, not listed: the member lists are read only for a room without a
        # name, whose heroes name it.
        summary: JsonDict = {
            "m.joined_member_count": state_store.count_members(conn, room_id, "join"),
            "m.invited_member_count": state_store.count_members(conn, room_id, "invite"),
        }
        named = state_store.get_current_state_ids(
            conn, room_id, [("m.room.name", ""), ("m.room.canonical_alias", "")]
        )
        if not named:
            joined = state_store.room_members(conn, room_id, "join")
            invited = state_store.room_members(conn, room_id, "invite")
            heroes = sorted(u for u in joined + invited if u != user_id)[:5]
            summary["m.heroes"] = heroes
        return summary

    def _stripped(self, conn: Conn, room_id: str, user_id: str) -> list[JsonDict]:
        keys = [(t, "") for t in INVITE_STATE_TYPES] + [("m.room.member", user_id)]
        ids = state_store.get_current_state_ids(conn, room_id, keys)
        recs = ev_store.get_events(conn, ids.values())
        return [stripped_state(recs[e]) for e in ids.values() if e in recs]

    def _left_room(
        self,
        conn: Conn,
        requester: Requester,
        room_id: str,
        since: int | None,
        leave_pos: int,
        filt: Filter,
        now: int,
        state_after_key: str | None = None,
    ) -> JsonDict:
        """A room the user left, was kicked or banned from: its timeline up to (and with)
        their own membership event, and the state as of that event, never later."""
        user_id = requester.user_id
        timeline, limited, first_pos = self._timeline(conn, requester, room_id, since, leave_pos, filt)
        m = state_store.get_membership(conn, room_id, user_id)
        end_state = state_store.state_after_event(conn, m[1]) if m is not None else None
        if end_state is None:
            state_ids: dict[tuple[str, str], str] = {}
        elif state_after_key is None:
            state_ids = self._state_for_timeline(conn, room_id, since, timeline, limited, end_state)
        else:
            state_ids = self._state_after_timeline(conn, room_id, since, timeline, end_state)
        state_recs = ev_store.get_events(conn, state_ids.values())
        state_events = serialize_events(
            conn,
            [
                state_recs[e]
                for e in state_ids.values()
                if e in state_recs and filt.room.state.matches(_filter_view(state_recs[e]))
            ],
            user_id=user_id, device_id=requester.device_id, now_ms=now,
        )
        events = serialize_events(
            conn, timeline, user_id=user_id, device_id=requester.device_id, now_ms=now
        )
        return {
            "timeline": {"events": events, "limited": limited, "prev_batch": f"t{first_pos - 1}"},
            state_after_key or "state": {"events": state_events},
            "account_data": {"events": []},
        }


def presence_event(p: presence_store.Presence, now: int) -> JsonDict:
    content: JsonDict = {
        "presence": p.state,
        "last_active_ago": max(0, now - p.last_active_ts),
        "currently_active": p.currently_active,
    }
    if p.status_msg is not None:
        content["status_msg"] = p.status_msg
    return {"type": "m.presence", "sender": p.user_id, "content": content}


def _filter_view(rec: EventRecord) -> JsonDict:
    ev = rec.event
    return {"type": ev.type, "sender": ev.sender, "room_id": ev.room_id, "content": ev.content}


def _filter_account_data(filt: Filter, events: list[JsonDict]) -> list[JsonDict]:
    return [e for e in events if filt.account_data.matches(e)]


def _receipt_event(rows: list[tuple[str, str, str, str, JsonDict]]) -> JsonDict:
    content: JsonDict = {}
    for event_id, rtype, user_id, _thread, data in rows:
        content.setdefault(event_id, {}).setdefault(rtype, {})[user_id] = data
    return {"type": "m.receipt", "content": content}


def _has_content(resp: JsonDict) -> bool:
    rooms = resp.get("rooms", {})
    if any(rooms.get(k) for k in ("join", "invite", "leave", "knock")):
        return True
    for key in ("account_data", "presence", "to_device"):
        if resp.get(key, {}).get("events"):
            return True
    dl = resp.get("device_lists", {})
    return bool(dl.get("changed") or dl.get("left"))


def default_unread_counts(conn: Conn, user_id: str, room_id: str) -> tuple[int, int]:
    """Messages from others after the user's read receipt (push rules refine this)."""
    read = room_store.get_receipt(conn, room_id, "m.read", user_id) or room_store.get_receipt(
        conn, room_id, "m.read.private", user_id
    )
    after = None
    if read is not None:
        where = ev_store.event_position(conn, read)
        after = where[1] if where else None
    recs = ev_store.room_timeline(conn, room_id, from_pos=None, to_pos=after, backwards=True, limit=100)
    count = sum(
        1
        for r in recs
        if r.event.sender != user_id
        and r.event.type in ("m.room.message", "m.room.encrypted")
        and r.redacted_by is None
    )
    return count, 0


def e2ee_extension(e2ee: Any) -> SyncExtension:
    """The end-to-end encryption sections: to-device, device lists, key counts."""

    async def extension(
        requester: Requester, token: SyncToken | None, upto: int, response: JsonDict
    ) -> int | None:
        sections, reached = await e2ee.sync_sections(
            requester.user_id,
            requester.device_id,
            token.pos if token is not None else None,
            token.to_device if token is not None else 0,
            upto,
        )
        response.update(sections)
        return None if reached is None else int(reached)

    return extension


def _room_has_news(room: JsonDict) -> bool:
    """Whether an incremental joined-room entry carries anything for the client."""
    return any(
        section.get("events")
        for key, section in room.items()
        if key != "unread_notifications" and isinstance(section, dict)
    )
