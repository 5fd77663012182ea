"""/sync (v2): everything that happened to a user since their last token.

Client-server API "Syncing". A token is ``s{pos}_{typing}_{to_device}``: the global
stream position everything stored is ordered by, the in-memory typing serial, and how
far to-device messages were handed out (they are delivered in batches and deleted only
when the next token acknowledges them).

Per joined room the timeline is the newest ``limit`` events after the token (``limited``
with a ``prev_batch`` when more were skipped); ``state`` is what the client needs to
know about the state at the start of that timeline and does not know yet. A sync with
nothing to say waits on the :class:`Notifier` until something arrives or the timeout.

Memory: an initial (or ``full_state``) sync holds every room's state and timeline as
Python objects until its answer is encoded, a megabyte or more for a user in a large
room, so at most :data:`FULL_SYNCS_AT_ONCE` are built at once (:meth:`SyncService.slot`;
the route holds it until its answer is encoded). Incremental syncs, small, never wait.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from pocketserver.errors import Forbidden, InvalidParam
from pocketserver.protocol.sliding_sync import Pos
from pocketserver.services.auth import Requester
from pocketserver.services.client_events import (
    federation_format,
    serialize_events,
    stripped_state,
    v1_format,
)
from pocketserver.services.clock import Clock
from pocketserver.services.ephemeral import TypingSnapshot, TypingTracker
from pocketserver.services.filtering import Filter
from pocketserver.services.ignored_users import ignored_users, is_hidden
from pocketserver.services.invite_permission import blocks_invites
from pocketserver.services.lru import LruCache
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
FULL_SYNCS_AT_ONCE = 2
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
    """A /messages-style token: a sync token or ``t{pos}``/``b{pos}``. Positions of
    ``t`` tokens may be negative: history backfilled from other servers lies before
    position 0."""
    if raw.startswith("t"):
        return parse_int(raw[1:], "pagination token")
    if raw.startswith("b"):
        return parse_int(raw[1:], "pagination token", minimum=0)
    if raw.startswith("ss"):
        # A sliding sync ``pos`` (MSC4186: usable wherever a ``next_batch`` is).
        pos = Pos.parse(raw)
        if pos is None:
            raise InvalidParam("Invalid pagination token")
        return pos.stream
    return SyncToken.parse(raw).pos


# Extensions other services plug in for the top-level sections (to-device, device
# lists, key counts). Each gets (requester, since token or None, upto pos) and fills
# ``response``; the to-device one returns the to-device position it reached.
SyncExtension = Callable[[Requester, SyncToken | None, int, JsonDict], Awaitable[int | None]]
UnreadCounter = Callable[[Conn, str, str], tuple[int, int]]


# (user, device, room) entries of MembersSent; each holds at most MAX_MEMBERS_PER_ENTRY.
MEMBERS_SENT_CACHE_SIZE = 4096
MAX_MEMBERS_PER_ENTRY = 2000


class MembersSent:
    """Which membership events each device was sent under lazy loading, so an
    incremental sync need not repeat them ("Lazy-loading room members": servers may
    skip members the client already has, unless ``include_redundant_members``).

    An entry remembers the sync position of the answer that carried it, and counts only
    once the client syncs from that position or later: an answer that never arrived (a
    dropped connection, a retry with the old token) is not taken as delivered. A
    forgotten entry (bounded LRU; a restart) costs only a redundant member event.
    Written from the read threads, hence the lock.
    """

    def __init__(self, max_size: int) -> None:
        self._cache: LruCache[tuple[str, str | None, str], dict[str, tuple[str, int]]] = LruCache(max_size)
        self._lock = threading.Lock()

    def was_sent(self, requester: Requester, room_id: str, member: str, event_id: str, since: int) -> bool:
        with self._lock:
            entry = self._cache.get((requester.user_id, requester.device_id, room_id))
            got = entry.get(member) if entry is not None else None
        return got is not None and got[0] == event_id and got[1] <= since

    def record(self, requester: Requester, room_id: str, members: dict[str, str], upto: int) -> None:
        if not members:
            return
        key = (requester.user_id, requester.device_id, room_id)
        with self._lock:
            entry = self._cache.get(key)
            if entry is None or len(entry) + len(members) > MAX_MEMBERS_PER_ENTRY:
                entry = {}
                self._cache.put(key, entry)
            for member, event_id in members.items():
                old = entry.get(member)
                # Keep the earliest answer that carried this very event.
                if old is None or old[0] != event_id:
                    entry[member] = (event_id, upto)

    def statistics(self) -> dict[str, int]:
        with self._lock:
            return self._cache.statistics()


class SyncService:
    def __init__(
        self, db: Database, clock: Clock, notifier: Notifier, typing: TypingTracker
    ) -> None:
        self.db = db
        self.clock = clock
        self.notifier = notifier
        self.typing = typing
        self.full_syncs = trio.CapacityLimiter(FULL_SYNCS_AT_ONCE)
        self.extensions: list[SyncExtension] = []
        # (conn, user_id, room_id) -> (notification_count, highlight_count)
        self.unread_counter: UnreadCounter = default_unread_counts
        self.members_sent = MembersSent(MEMBERS_SENT_CACHE_SIZE)

    def slot(self, since: str | None, full_state: bool) -> contextlib.AbstractAsyncContextManager[Any]:
        """What a /sync request holds while its answer is built and encoded: one of the
        :data:`FULL_SYNCS_AT_ONCE` slots for an initial or ``full_state`` sync."""
        if not since or full_state:
            return self.full_syncs
        return contextlib.nullcontext()

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
            self.typing.expire()  # here, on the event loop: the read below runs in a thread
            changed = self.notifier.change_event()
            typing = self.typing.snapshot()
            typing_serial = self.notifier.ephemeral_serial
            upto, response = await self.db.read(
                self._build_now, requester, token, typing, typing_serial, filt, full_state,
                state_after_key,
            )
            td_pos: int | None = upto
            for ext in self.extensions:
                reached = await ext(requester, token, upto, response)
                if reached is not None:
                    td_pos = min(td_pos, reached) if td_pos is not None else reached
            # Extensions add account data too (the push rules): filter once, at the end.
            account_data = response.get("account_data")
            if account_data is not None:
                account_data["events"] = _filter_account_data(filt, account_data["events"])
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
        self,
        requester: Requester,
        *,
        from_token: str | None,
        timeout_ms: int,
        room_id: str | None,
        limit: int = EVENT_STREAM_LIMIT,
    ) -> JsonDict:
        """GET /events: what happened after ``from`` (now, when absent) in the user's
        rooms, or in one room the user may see (a peek into a world-readable room, as
        matrix-js-sdk does after a room initialSync), waiting up to the timeout for
        something. Room events, then the same ephemeral and account data /sync gives:
        presence, receipts and typing (with their ``room_id``), account data and tags.

        At most ``limit`` room events come in one answer (``end`` then stops after the
        last one given, so the next call picks up the rest).

        Tokens are sync tokens ``s{pos}_{typing}_0``, so that typing changes, which live
        in memory, are not given twice; ``t{pos}`` tokens from /messages and
        /initialSync are accepted too (typing then counts from this call on)."""
        typing_from: int | None = None
        if from_token is not None and from_token.startswith("s"):
            parsed = SyncToken.parse(from_token)
            first: int | None = parsed.pos
            typing_from = parsed.typing
        else:
            first = parse_stream_token(from_token) if from_token else None
        if typing_from is None:
            typing_from = self.notifier.ephemeral_serial
        pos = first
        deadline = trio.current_time() + min(max(timeout_ms, 0) / 1000, MAX_TIMEOUT_S)
        while True:
            changed = self.notifier.change_event()
            typing = self.typing.snapshot()
            typing_now = self.notifier.ephemeral_serial
            # Each pass reads one bounded slice; a slice of events the user may not see
            # moves on without waiting.
            for _ in range(100):
                start, end, chunk, upto = await self.db.read(
                    self._stream_now, requester, pos, room_id, typing, typing_from, limit
                )
                first = start if first is None else first
                pos = end
                if chunk or end >= upto:
                    break
            remaining = deadline - trio.current_time()
            if chunk or remaining <= 0 or end < upto:
                assert first is not None and pos is not None
                return {
                    "start": str(SyncToken(first, typing_from, 0)),
                    "end": str(SyncToken(pos, typing_now, 0)),
                    "chunk": chunk,
                }
            await self.notifier.wait_for_change(remaining, changed)

    def _stream_now(
        self,
        conn: Conn,
        requester: Requester,
        start: int | None,
        room_id: str | None,
        typing: TypingSnapshot,
        typing_from: int,
        limit: int = EVENT_STREAM_LIMIT,
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
            joined = [room_id]
        else:
            # Rooms left before ``start`` have nothing more to show; one left since, its
            # events up to the leave.
            mine = state_store.rooms_for_user(conn, user_id, ("join", "invite", "leave", "ban"))
            # Invites are left out while the user blocks them (invite_permission.md).
            blocked = blocks_invites(conn, user_id)
            rooms = {
                rid
                for rid, (m, mpos) in mine.items()
                if m == "join" or (m == "invite" and not blocked) or (m in ("leave", "ban") and mpos > start)
            }
            joined = [rid for rid, (m, _) in mine.items() if m == "join"]
        changed = ev_store.rooms_with_events_between(conn, rooms, start, upto) if start < upto else set()
        ignored = ignored_users(conn, user_id)
        picked: list[EventRecord] = []
        end = upto
        for rid in changed:
            checker = VisibilityChecker(conn, rid, user_id)
            page = ev_store.room_timeline(
                conn, rid, from_pos=start, to_pos=upto, backwards=False, limit=limit
            )
            if len(page) == limit and page[-1].stream_pos is not None:
                end = min(end, page[-1].stream_pos)  # this room may have more: stop there
            picked.extend(r for r in page if checker.can_see(r) and not is_hidden(r, ignored))
        picked = sorted((r for r in picked if (r.stream_pos or 0) <= end), key=lambda r: r.stream_pos or 0)
        if len(picked) > limit:
            picked = picked[:limit]
            end = picked[-1].stream_pos or end
        now = self.clock.time_ms()
        chunk = [
            v1_format(e)
            for e in serialize_events(conn, picked, user_id=user_id, device_id=requester.device_id, now_ms=now)
        ]
        chunk.extend(_stream_extras(conn, user_id, room_id, joined, start, end, typing, typing_from, now))
        return start, end, chunk, upto

    # -- one pass, inside one read transaction ---------------------------------------------

    def _build_now(
        self,
        conn: Conn,
        requester: Requester,
        token: SyncToken | None,
        typing: TypingSnapshot,
        typing_serial: int,
        filt: Filter,
        full_state: bool,
        state_after_key: str | None,
    ) -> tuple[int, JsonDict]:
        """The answer up to the stream position this transaction sees, and that position."""
        upto = current_stream_pos(conn)
        return upto, self._build(
            conn, requester, token, upto, typing, filt, full_state, state_after_key
        )

    def _build(
        self,
        conn: Conn,
        requester: Requester,
        token: SyncToken | None,
        upto: int,
        typing: TypingSnapshot,
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
        invites_blocked = blocks_invites(conn, user_id)

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

        newly_joined: list[str] = []
        for room_id, (membership, mpos) in memberships.items():
            if not filt.room.matches_room(room_id):
                continue
            if mpos > upto:
                continue
            changed = since is None or mpos > since
            # A membership event after the token is not always a new membership: a
            # displayname change is a join after a join. What the client knows
            # depends on whether the user was joined at its token.
            joined_at_since = (
                changed and since is not None and _membership_at(conn, room_id, user_id, since) == "join"
            )
            newly = changed and not joined_at_since
            if membership == "join":
                if newly:
                    newly_joined.append(room_id)
                typing_users = typing.typing_since(
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
                    now, state_after_key, newly and since is not None,
                )
                eph: list[JsonDict] = []
                # An empty typing list tells a client that typing stopped: after its
                # token, or, in an initial sync, since the server started (a client
                # that restarts its sync must not keep showing someone typing). A room
                # it has just joined has nothing to stop.
                if typing_users is not None and (
                    typing_users
                    or (token is not None and not newly)
                    or (token is None and room_id in typing.rooms)
                ):
                    eph.append({"type": "m.typing", "content": {"user_ids": typing_users}})
                if room_id in receipts:
                    eph.append(receipt_event(receipts[room_id]))
                room["ephemeral"] = {"events": [e for e in eph if filt.room.ephemeral.matches(e)]}
                room_account_data = (
                    ad_store.to_events(account.rooms.get(room_id, {}))
                    if since is not None and not newly
                    else self._all_room_account_data(conn, user_id, room_id)
                )
                room["account_data"] = {
                    "events": [e for e in room_account_data if filt.room.account_data.matches(e)]
                }
                if since is not None and not (newly or full_state) and not _room_has_news(room):
                    # Everything new was filtered out (an ignored user's messages, types
                    # the filter leaves out): the room has nothing to report (Synapse too).
                    continue
                rooms_join[room_id] = room
            elif membership == "invite" and newly:
                if invites_blocked or self._invited_by_ignored(conn, room_id, user_id):
                    continue
                rooms_invite[room_id] = {"invite_state": {"events": self._stripped(conn, room_id, user_id)}}
            elif membership == "knock" and newly:
                rooms_knock[room_id] = {"knock_state": {"events": self._stripped(conn, room_id, user_id)}}
            elif membership in ("leave", "ban") and since is not None and changed:
                # Joined and left again since the token: the client never had this
                # room's state, so it gets all of it (as of the leave).
                full = not joined_at_since and _joined_between(conn, room_id, user_id, since, mpos)
                rooms_leave[room_id] = self._left_room(
                    conn, requester, room_id, None if full else since, mpos, filt, now, state_after_key
                )
            elif membership in ("leave", "ban") and since is None and filt.room.include_leave:
                rooms_leave[room_id] = self._left_room(
                    conn, requester, room_id, None, mpos, filt, now, state_after_key
                )

        changes = presence_store.get_presence_changes_since(conn, user_id, since or 0, upto)
        if since is not None and newly_joined:
            # A room joined since the token brings its members' presence, changed or not.
            seen = {p.user_id for p in changes}
            members = {m for rid in newly_joined for m in state_store.room_members(conn, rid, "join")}
            changes += presence_store.get_presences(conn, sorted(members - seen), upto)
        presence_events = [
            e for e in (presence_event(p, now) for p in changes) if filt.presence.matches(e)
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
        newly_joined: bool = False,
        *,
        limit: int | None = None,
    ) -> tuple[list[EventRecord], bool, int]:
        """(events oldest first, limited, position before the first event). ``limit``
        overrides the filter's (sliding sync's ``timeline_limit``)."""
        if limit is None:
            limit = filt.room.timeline.limit
        if limit is None:
            limit = DEFAULT_TIMELINE_LIMIT
        limit = min(limit, MAX_TIMELINE_LIMIT)
        checker = VisibilityChecker(conn, room_id, requester.user_id)
        ignored = ignored_users(conn, requester.user_id)
        picked: list[EventRecord] = []
        limited = False
        cursor = upto + 1
        page_size = max(limit * 2, 20)
        # Walk back in pages until the limit is filled with visible, filter-passing
        # events; ``limited`` says that more of those exist before the first one.
        for _ in range(20):
            page = ev_store.room_timeline(
                conn, room_id, from_pos=cursor, to_pos=since, backwards=True, limit=page_size
            )
            for rec in page:
                cursor = rec.stream_pos if rec.stream_pos is not None else cursor
                if not checker.can_see(rec):
                    # The room's current state is the member's to read anyway, so a
                    # state event still in it is shown where it happened, even from a
                    # stretch of history the user may not see (a join while they were
                    # away from a "joined" room).
                    if rec.event.state_key is None or checker.current_membership != "join":
                        continue
                    key = (rec.event.type, rec.event.state_key)
                    if state_store.get_current_state_ids(conn, room_id, [key]).get(key) != rec.event.event_id:
                        continue
                if is_hidden(rec, ignored):
                    continue
                if not filt.room.timeline.matches(_filter_view(rec)):
                    continue
                if len(picked) >= limit:
                    limited = True
                    break
                picked.append(rec)
            if limited or len(page) < page_size:
                break
        else:
            limited = True  # the walk's bound ran out before the room's start
        if limit == 0 and since is not None:
            limited = ev_store.room_timeline(conn, room_id, from_pos=upto + 1, to_pos=since, backwards=True, limit=1) != []
        if newly_joined and not limited and picked:
            # A room joined since the client's token: it has none of the history, so
            # any older event means there is more to paginate.
            limited = bool(
                ev_store.room_timeline(
                    conn, room_id, from_pos=picked[-1].stream_pos, to_pos=None, backwards=True, limit=1
                )
            )
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
        newly_joined: bool = False,
    ) -> JsonDict:
        user_id = requester.user_id
        timeline, limited, first_pos = self._timeline(
            conn, requester, room_id, since, upto, filt, newly_joined
        )
        # Lazy loading trims the members a client has not met yet. An initial sync
        # never even looks up the others (in a big room that is nearly all of the
        # state). An incremental state_after is the list of every state change up to
        # the end of the timeline (clients take state from it alone), so a join,
        # invite or leave of someone who sent nothing stays in it: without it a client
        # encrypting for the room never learns who is in it.
        lazy = filt.lazy_load_members and (state_after_key is None or since is None)
        keep: Callable[[str, str], bool] | None = None
        if lazy and since is None:
            senders = {r.event.sender for r in timeline} | {user_id}

            def keep(etype: str, state_key: str) -> bool:
                return etype != "m.room.member" or state_key in senders

        if state_after_key is None:
            state_ids = self._state_for_timeline(conn, room_id, since, timeline, limited, keep=keep)
        else:
            state_ids = self._state_after_timeline(conn, room_id, since, timeline, keep=keep)
        if lazy and since is not None:
            # Incremental: every membership change since the token stays (someone who
            # joined or left in a gap), and each sender in the timeline comes with their
            # membership unless this device was already sent it.
            state_ids = dict(state_ids)
            in_timeline = {r.event.event_id for r in timeline}
            wanted = [
                ("m.room.member", s)
                for s in sorted({r.event.sender for r in timeline})
                if ("m.room.member", s) not in state_ids
            ]
            redundant = filt.room.state.include_redundant_members
            for key, eid in state_store.get_current_state_ids(conn, room_id, wanted).items():
                if eid in in_timeline:
                    continue
                if not redundant and self.members_sent.was_sent(requester, room_id, key[1], eid, since):
                    continue
                state_ids[key] = eid
        state_events = self._state_events(conn, requester, filt, state_ids, now)
        events = self._timeline_events(conn, requester, filt, timeline, now)
        if filt.lazy_load_members:
            sent = {e["state_key"]: e["event_id"] for e in state_events if e["type"] == "m.room.member"}
            sent.update(
                (r.event.state_key, r.event.event_id)
                for r in timeline
                if r.event.type == "m.room.member" and r.event.state_key is not None
            )
            self.members_sent.record(requester, room_id, sent, upto)
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

    @staticmethod
    def _timeline_events(
        conn: Conn, requester: Requester, filt: Filter, timeline: list[EventRecord], now: int
    ) -> list[JsonDict]:
        """A room's timeline serialised as one page, in the filter's format and fields."""
        out = serialize_events(
            conn, timeline, user_id=requester.user_id, device_id=requester.device_id, now_ms=now
        )
        return [filt.project(_formatted(filt, rec, e)) for rec, e in zip(timeline, out, strict=True)]

    @staticmethod
    def _state_events(
        conn: Conn, requester: Requester, filt: Filter, state_ids: dict[tuple[str, str], str], now: int
    ) -> list[JsonDict]:
        """The state events a room's entry carries, serialised as one page (bundled
        relations and redactions looked up once), in the filter's event format."""
        state_recs = ev_store.get_events(conn, state_ids.values())
        recs = [
            state_recs[e]
            for e in state_ids.values()
            if e in state_recs and filt.room.state.matches(_filter_view(state_recs[e]))
        ]
        out = serialize_events(
            conn, recs, user_id=requester.user_id, device_id=requester.device_id, now_ms=now
        )
        return [_formatted(filt, rec, e) for rec, e in zip(recs, out, strict=True)]

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
            summary["m.heroes"] = room_heroes(conn, room_id, user_id)
        return summary

    def _stripped(self, conn: Conn, room_id: str, user_id: str) -> list[JsonDict]:
        if state_store.current_state_group(conn, room_id) is None:
            # An invite over federation to a room this server is not in: the state the
            # inviting server sent with it (server-server "Inviting to a room").
            m = state_store.get_membership(conn, room_id, user_id)
            rec = ev_store.get_event(conn, m[1]) if m is not None else None
            if rec is None:
                return []
            unsigned = rec.event.pdu.get("unsigned") or {}
            # What the inviting server sent, or what the room's server answered a knock.
            sent = unsigned.get("invite_room_state", unsigned.get("knock_room_state"))
            extra = [s for s in sent if isinstance(s, dict)] if isinstance(sent, list) else []
            return [*extra, stripped_state(rec)]
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
        state_events = self._state_events(conn, requester, filt, state_ids, now)
        if not timeline and m is not None:
            # A room known only by the user's own leave, kept apart from any timeline
            # (a rejected remote invite, a rescinded knock): that leave is the timeline.
            own = ev_store.get_event(conn, m[1])
            if own is not None and own.outlier and filt.room.timeline.matches(_filter_view(own)):
                timeline = [own]
        events = self._timeline_events(conn, requester, filt, timeline, now)
        return {
            "timeline": {"events": events, "limited": limited, "prev_batch": f"t{first_pos - 1}"},
            state_after_key or "state": {"events": state_events},
            "account_data": {"events": []},
        }


def _stream_extras(
    conn: Conn,
    user_id: str,
    room_id: str | None,
    joined: list[str],
    start: int,
    end: int,
    typing: TypingSnapshot,
    typing_from: int,
    now: int,
) -> list[JsonDict]:
    """/events' non-room events in (start, end]: presence (with the old
    ``content.user_id``), receipts and typing of the rooms, and, outside a peek, the
    user's account data."""
    out: list[JsonDict] = []
    if start < end:
        if room_id is None:
            presences = presence_store.get_presence_changes_since(conn, user_id, start, end)
        else:
            members = state_store.room_members(conn, room_id, "join")
            presences = [
                p for p in presence_store.get_presences(conn, sorted(members), end) if p.stream_pos > start
            ]
        for p in presences:
            event = presence_event(p, now)
            event["content"]["user_id"] = p.user_id
            out.append(event)
        for rid, rows in sorted(room_store.receipts_since(conn, joined, start, end, user_id).items()):
            out.append({**receipt_event(rows), "room_id": rid})
        if room_id is None:
            account = ad_store.get_account_data_since(conn, user_id, start, end)
            out.extend(ad_store.to_events(account.global_))
            for rid, by_type in sorted(account.rooms.items()):
                out.extend({**e, "room_id": rid} for e in ad_store.to_events(by_type))
    for rid in joined:
        users = typing.typing_since(rid, typing_from)
        if users is not None:
            out.append({"type": "m.typing", "room_id": rid, "content": {"user_ids": users}})
    return out


def room_heroes(conn: Conn, room_id: str, user_id: str, *, include_left: bool = False) -> list[str]:
    """Up to five members who name a room that has no name ("Calculating the display
    name for a room"): joined and invited ones; ``include_left`` fills up with those who
    left when fewer are in the room (sliding sync's ``heroes``)."""
    joined = state_store.room_members(conn, room_id, "join")
    invited = state_store.room_members(conn, room_id, "invite")
    heroes = sorted(u for u in joined + invited if u != user_id)[:5]
    if include_left and len(heroes) < 5:
        left = state_store.room_members(conn, room_id, "leave") + state_store.room_members(conn, room_id, "ban")
        heroes += sorted(u for u in left if u != user_id)[: 5 - len(heroes)]
    return heroes


def presence_event(p: presence_store.Presence, now: int) -> JsonDict:
    content: JsonDict = {
        "presence": p.state,
        "last_active_ago": max(0, now - p.last_active_ts),
        "currently_active": p.currently_active,
    }
    if p.status_msg is not None:
        content["status_msg"] = p.status_msg
    return {"type": "m.presence", "sender": p.user_id, "content": content}


def _formatted(filt: Filter, rec: EventRecord, client_event: JsonDict) -> JsonDict:
    return federation_format(rec, client_event) if filt.event_format == "federation" else client_event


def _filter_view(rec: EventRecord) -> JsonDict:
    ev = rec.event
    return {"type": ev.type, "sender": ev.sender, "room_id": ev.room_id, "content": ev.content}


def _filter_account_data(filt: Filter, events: list[JsonDict]) -> list[JsonDict]:
    return [e for e in events if filt.account_data.matches(e)]


def receipt_event(rows: list[tuple[str, str, str, str, JsonDict]]) -> JsonDict:
    content: JsonDict = {}
    for event_id, rtype, user_id, _thread, data in rows:
        content.setdefault(event_id, {}).setdefault(rtype, {})[user_id] = data
    return {"type": "m.receipt", "content": content}


def _membership_at(conn: Conn, room_id: str, user_id: str, pos: int) -> str | None:
    """The user's membership in the room just after stream position ``pos``."""
    found = None
    for p, m in state_store.user_membership_history(conn, room_id, user_id):
        if p > pos:
            break
        found = m
    return found


def _joined_between(conn: Conn, room_id: str, user_id: str, since: int, upto: int) -> bool:
    return any(
        since < p <= upto and m == "join"
        for p, m in state_store.user_membership_history(conn, room_id, user_id)
    )


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
