"""Simplified sliding sync (MSC4186) on top of /sync's machinery.

shared/spec/proposals/4186-simplified-sliding-sync.md; its extensions: to-device
(MSC3885), end-to-end encryption (MSC3884), account data (MSC3959), receipts (MSC3960)
and typing (MSC3961). The pure rules (request shapes, combining room configs,
``required_state`` matching, filters, ordering, ranges, the ``pos`` token) live in
``protocol/sliding_sync.py``; timelines, state serialisation, heroes, unread counts and
stripped state are :class:`SyncService`'s, reused here.

One answer, inside one read transaction:

1. the user's rooms (joined, invited, knocked, kicked or banned, and left ones this
   connection has already been sent), each with its latest activity, in one query;
2. each list: its filters, the rooms ordered newest first, its ``count`` and the
   rooms its ranges select; subscriptions add rooms by ID;
3. for each selected room, its config combined over the rules it matched; it is sent
   when this connection never had it, when it changed after the position it was last
   sent at, or when its config grew (``expanded_timeline``, new ``required_state``).
   Only those rooms' state is read: a room outside every range costs one index probe.

Connections are kept in memory, keyed by (user, device, ``conn_id``): what each room
was last sent at and with which config, per answer that the client may still build on
(the one it confirmed by sending its ``pos``, and the ones issued after it). A few
hundred bytes per room sent; at most :data:`MAX_CONNECTIONS_PER_DEVICE` per device and
:data:`MAX_CONNECTIONS` in all, the least recently used forgotten first. A forgotten
connection, or a restart, answers ``M_UNKNOWN_POS`` and the client starts over, which
the proposal allows.
"""

from __future__ import annotations

import itertools
import secrets
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import trio

from pocketserver.errors import MatrixError
from pocketserver.protocol import sliding_sync as ss
from pocketserver.protocol.sliding_sync import (
    ExtensionConfig,
    Pos,
    RoomConfig,
    RoomFacts,
)
from pocketserver.services.auth import Requester
from pocketserver.services.client_events import serialize_events
from pocketserver.services.e2ee import SIGNED_CURVE25519, E2eeService
from pocketserver.services.ephemeral import TypingSnapshot
from pocketserver.services.filtering import Filter
from pocketserver.services.ignored_users import ignored_users
from pocketserver.services.invite_permission import blocks_invites
from pocketserver.services.lru import LruCache
from pocketserver.services.params import parse_int
from pocketserver.services.sync import (
    MAX_TIMELINE_LIMIT,
    MAX_TIMEOUT_S,
    SyncService,
    receipt_event,
    room_heroes,
)
from pocketserver.storage import account_data as ad_store
from pocketserver.storage import device_lists, e2e_keys
from pocketserver.storage import events as ev_store
from pocketserver.storage import rooms as room_store
from pocketserver.storage import sliding_sync as ss_store
from pocketserver.storage import state as state_store
from pocketserver.storage.database import Conn
from pocketserver.storage.streams import current_stream_pos

JsonDict = dict[str, Any]

MAX_CONNECTIONS_PER_DEVICE = 10
MAX_CONNECTIONS = 2000
# Answers of one connection the client may still send the ``pos`` of.
MAX_STATES_PER_CONNECTION = 4
ROOM_TYPE_CACHE_SIZE = 10_000
TO_DEVICE_DEFAULT_LIMIT = 100
TO_DEVICE_MAX_LIMIT = 1000
_NO_FILTER = Filter()


# The membership strings a SentRoom holds (one shared object each).
_MEMBERSHIPS = {m: m for m in ("join", "invite", "knock", "leave", "ban")}


class UnknownPos(MatrixError):
    def __init__(self, message: str = "Unknown or expired position; start a new connection") -> None:
        super().__init__(400, "M_UNKNOWN_POS", message)


@dataclass(frozen=True, slots=True)
class SentRoom:
    """What a connection was sent of a room: everything up to ``upto``, with ``config``
    (shared between rooms: configs are interned), while the user's membership was
    ``membership`` (an invite or knock: only its stripped state)."""

    upto: int
    config: RoomConfig
    membership: str = "join"
    is_dm: bool = False


@dataclass(slots=True)
class ConnState:
    """A connection as of one answer: the stream and typing positions it reached, each
    room it was sent, and its lists' counts."""

    stream: int
    typing: int
    rooms: dict[str, SentRoom] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


class Connection:
    def __init__(self, number: int) -> None:
        self.number = number
        self.states: OrderedDict[int, ConnState] = OrderedDict()
        self.next_seq = 1
        self.configs: dict[RoomConfig, RoomConfig] = {}

    def confirm(self, seq: int) -> ConnState | None:
        """The state the client builds on; those before it are no longer needed."""
        state = self.states.get(seq)
        if state is None:
            return None
        for old in [s for s in self.states if s < seq]:
            del self.states[old]
        return state

    def issue(self, state: ConnState, keep: int | None) -> int:
        seq = self.next_seq
        self.next_seq += 1
        self.states[seq] = state
        while len(self.states) > MAX_STATES_PER_CONNECTION:
            oldest = next(s for s in self.states if s != keep)
            del self.states[oldest]
        return seq

    def intern(self, config: RoomConfig) -> RoomConfig:
        if len(self.configs) > 256:
            self.configs.clear()
        return self.configs.setdefault(config, config)

    def size(self) -> int:
        return sum(len(s.rooms) for s in self.states.values())


class ConnectionStore:
    """Connections by (user, device, conn_id), bounded per device and in all (LRU)."""

    def __init__(self, max_connections: int = MAX_CONNECTIONS, per_device: int = MAX_CONNECTIONS_PER_DEVICE) -> None:
        self._lru: OrderedDict[tuple[str, str | None, str], Connection] = OrderedDict()
        self._per_device = per_device
        self._max = max_connections
        # Process-unique connection numbers, starting at a random point so that a
        # ``pos`` from before a restart never names a connection of this run.
        self._numbers = itertools.count(secrets.randbits(40))
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str | None, str]) -> Connection | None:
        with self._lock:
            conn = self._lru.get(key)
            if conn is not None:
                self._lru.move_to_end(key)
            return conn

    def new(self, key: tuple[str, str | None, str]) -> Connection:
        with self._lock:
            conn = Connection(next(self._numbers))
            self._lru.pop(key, None)
            self._lru[key] = conn
            same_device = [k for k in self._lru if k[:2] == key[:2]]
            for k in same_device[: max(0, len(same_device) - self._per_device)]:
                del self._lru[k]
            while len(self._lru) > self._max:
                self._lru.popitem(last=False)
            return conn

    def statistics(self) -> dict[str, int]:
        with self._lock:
            return {
                "connections": len(self._lru),
                "rooms_tracked": sum(c.size() for c in self._lru.values()),
            }


@dataclass(slots=True)
class _Built:
    """One pass's answer and what the connection records of it."""

    response: JsonDict
    state: ConnState
    has_news: bool


@dataclass(slots=True)
class _Candidate:
    room: ss_store.UserRoom
    stamp: int


class SlidingSyncService:
    def __init__(self, sync: SyncService, e2ee: E2eeService, push: Any = None) -> None:
        self.sync = sync
        self.db = sync.db
        self.clock = sync.clock
        self.notifier = sync.notifier
        self.typing = sync.typing
        self.e2ee = e2ee
        self.push = push
        self.connections = ConnectionStore()
        self._room_types: LruCache[str, tuple[str | None]] = LruCache(ROOM_TYPE_CACHE_SIZE)
        self._room_types_lock = threading.Lock()

    async def sync_rooms(self, requester: Requester, req: ss.Request) -> JsonDict:
        """One answer of a connection (POST .../org.matrix.simplified_msc3575/sync)."""
        key = (requester.user_id, requester.device_id, req.conn_id)
        prev: ConnState | None = None
        prev_seq: int | None = None
        if req.pos is None:
            conn = self.connections.new(key)
        else:
            pos = Pos.parse(req.pos)
            found = self.connections.get(key)
            if pos is None or found is None or found.number != pos.connection:
                raise UnknownPos()
            prev = found.confirm(pos.seq)
            if prev is None or prev.stream != pos.stream:
                raise UnknownPos()
            conn, prev_seq = found, pos.seq
        to_device = req.extensions.get("to_device")
        td_since = 0
        td_limit = TO_DEVICE_DEFAULT_LIMIT
        if to_device is not None and to_device.enabled:
            if to_device.since:
                td_since = parse_int(to_device.since, "extensions.to_device.since", minimum=0)
            if to_device.limit is not None:
                td_limit = max(1, min(to_device.limit, TO_DEVICE_MAX_LIMIT))
        timeout_s = min(req.timeout_ms / 1000, MAX_TIMEOUT_S) if prev is not None else 0.0
        deadline = trio.current_time() + timeout_s
        for _ in range(100_000):
            self.typing.expire()
            changed = self.notifier.change_event()
            typing = self.typing.snapshot()
            typing_serial = self.notifier.ephemeral_serial
            built = await self.db.read(self._build, requester, req, conn, prev, typing, typing_serial)
            has_news = built.has_news
            extensions = built.response["extensions"]
            if to_device is not None and to_device.enabled and requester.device_id is not None:
                events, reached = await self.e2ee.to_device_for_sync(
                    requester.user_id, requester.device_id, td_since, built.state.stream, td_limit
                )
                extensions["to_device"] = {"next_batch": str(reached), "events": events}
                has_news = has_news or bool(events)
            account = extensions.get("account_data")
            if account is not None and prev is None and self.push is not None:
                # The push rules, for a user who never changed one, as /sync gives them.
                if not any(e.get("type") == "m.push_rules" for e in account["global"]):
                    ruleset = await self.push.get_ruleset(requester.user_id)
                    account["global"].append({"type": "m.push_rules", "content": {"global": ruleset.to_json()}})
            remaining = deadline - trio.current_time()
            if has_news or prev is None or remaining <= 0:
                break
            expiry = self.typing.next_expiry_in()
            if expiry is not None:
                remaining = min(remaining, expiry + 0.05)
            await self.notifier.wait_for_change(remaining, changed)
        seq = conn.issue(built.state, prev_seq)
        built.response["pos"] = str(Pos(built.state.stream, conn.number, seq))
        return built.response

    # -- one pass, inside one read transaction -----------------------------------------------

    def _build(
        self,
        db: Conn,
        requester: Requester,
        req: ss.Request,
        conn: Connection,
        prev: ConnState | None,
        typing: TypingSnapshot,
        typing_serial: int,
    ) -> _Built:
        user_id = requester.user_id
        upto = current_stream_pos(db)
        now = self.clock.time_ms()
        # A connection of extensions only (a client's to-device and key loop) never
        # reads the room list.
        all_rooms = (
            {r.room_id: r for r in ss_store.user_rooms(db, user_id, ("join", "invite", "knock", "leave", "ban"))}
            if req.lists or req.subscriptions
            else {}
        )
        candidates = self._room_list(db, user_id, all_rooms, prev)
        ordered = ss.sort_rooms({rid: c.stamp for rid, c in candidates.items()})
        facts = _Facts(self, db, user_id, upto)

        # Which rooms each rule selects, and with what config.
        room_lists: dict[str, list[str]] = {}
        configs: dict[str, list[RoomConfig]] = {}
        counts: dict[str, int] = {}
        for key, lst in req.lists.items():
            if lst.filters == ss.RoomFilters():
                matching = ordered
            else:
                children = facts.space_children(lst.filters.spaces) if lst.filters.spaces is not None else None
                matching = [
                    rid
                    for rid in ordered
                    if ss.filter_matches(lst.filters, facts.of(candidates[rid].room, lst.filters), children)
                ]
            counts[key] = len(matching)
            for rid in ss.select_ranges(matching, lst.ranges):
                room_lists.setdefault(rid, []).append(key)
                configs.setdefault(rid, []).append(lst.config)
        subscribed: set[str] = set()
        for rid, cfg in req.subscriptions.items():
            if rid in all_rooms:
                subscribed.add(rid)
                configs.setdefault(rid, []).append(cfg)

        new_rooms = dict(prev.rooms) if prev is not None else {}
        # Rooms whose unread counts the user's own read receipts changed (read on
        # another device): sent again for their counts.
        reread: set[str] = set()
        if prev is not None and upto > prev.stream:
            mine = room_store.receipts_since(db, [r for r in configs if r in prev.rooms], prev.stream, upto, user_id)
            reread = {rid for rid, rows in mine.items() if any(row[2] == user_id for row in rows)}
        rooms_out: JsonDict = {}
        initial_rooms: set[str] = set()
        for rid, cfgs in configs.items():
            info = all_rooms[rid]
            combined = ss.combine(cfgs)
            config = conn.intern(RoomConfig(min(combined.timeline_limit, MAX_TIMELINE_LIMIT), combined.required_state))
            sent = prev.rooms.get(rid) if prev is not None else None
            stripped = info.membership in ("invite", "knock")
            key = sys.intern(rid)
            if sent is not None and sent.membership != "join" and info.membership == "join":
                sent = None  # joined since (an invite accepted, a room rejoined): all of it again
            elif sent is not None and sent.membership in ("invite", "knock") and not stripped:
                sent = None  # the client had only the stripped state
            if sent is None:
                rooms_out[rid] = self._room(db, requester, info, config, None, None, prev, upto, now, facts)
                initial_rooms.add(rid)
            else:
                activity = info.latest_pos if info.membership == "join" else info.membership_pos
                changed = (activity or 0) > sent.upto or info.membership_pos > sent.upto
                expanded = not stripped and config.timeline_limit > sent.config.timeline_limit
                grew = not stripped and config.required_state != sent.config.required_state
                # A room marked or unmarked as a DM (m.direct) comes again for its is_dm.
                dm_flipped = not stripped and sent.is_dm != facts.is_dm(rid)
                if changed or expanded or grew or dm_flipped or rid in reread:
                    room = self._room(
                        db, requester, info, config, sent, expanded, prev, upto, now, facts,
                        rid in reread or dm_flipped,
                    )
                    if room is not None:
                        rooms_out[rid] = room
            new_rooms[key] = SentRoom(upto, config, _MEMBERSHIPS.get(info.membership, "leave"), facts.is_dm(rid))
            if rid in rooms_out and room_lists.get(rid):
                rooms_out[rid]["lists"] = room_lists[rid]

        extensions: JsonDict = {}
        in_scope = [rid for rid in configs if rid in all_rooms]
        ext_news = self._extensions(
            db, requester, req, prev, upto, typing, typing_serial, in_scope, room_lists, subscribed,
            initial_rooms, rooms_out, extensions,
        )
        counts_changed = prev is None or counts != prev.counts
        response: JsonDict = {
            "lists": {k: {"count": n} for k, n in counts.items()},
            "rooms": rooms_out,
            "extensions": extensions,
        }
        state = ConnState(upto, typing_serial, new_rooms, counts)
        return _Built(response, state, bool(rooms_out) or counts_changed or ext_news)

    def _room_list(
        self, db: Conn, user_id: str, all_rooms: dict[str, ss_store.UserRoom], prev: ConnState | None
    ) -> dict[str, _Candidate]:
        """The rooms lists are cut from, each with its place in the activity order:
        joined, invited (unless blocked or from an ignored user), knocked, kicked or
        banned after having joined, and left ones this connection was already sent."""
        out: dict[str, _Candidate] = {}
        blocked: bool | None = None
        ignored: frozenset[str] | None = None
        for rid, r in all_rooms.items():
            if r.membership == "invite":
                if blocked is None:
                    blocked = blocks_invites(db, user_id)
                    ignored = frozenset(ignored_users(db, user_id))
                if blocked or r.membership_sender in (ignored or ()):
                    continue
            elif r.membership in ("leave", "ban"):
                sent_before = prev is not None and rid in prev.rooms
                if not sent_before:
                    if r.membership_sender == user_id:
                        continue  # left (or rejected an invite) by themselves
                    if r.membership == "ban" and not any(
                        m == "join" for _, m in state_store.user_membership_history(db, rid, user_id)
                    ):
                        continue  # banned without ever having joined
            if r.membership == "join" and r.latest_pos is not None:
                stamp = r.latest_pos
            else:
                stamp = r.membership_pos
            out[rid] = _Candidate(r, stamp)
        return out

    # -- one room ------------------------------------------------------------------------

    def _room(
        self,
        db: Conn,
        requester: Requester,
        info: ss_store.UserRoom,
        config: RoomConfig,
        sent: SentRoom | None,
        expanded: bool | None,
        prev: ConnState | None,
        upto: int,
        now: int,
        facts: _Facts,
        force: bool = False,
    ) -> JsonDict | None:
        """A room's entry: whole when ``sent`` is None, else what changed after
        ``sent.upto`` (or, ``expanded``, the newest events of a grown timeline); None
        when nothing the client is shown changed. ``force``: something outside the room
        changed what it shows (the user's read receipt moved the counts; m.direct)."""
        user_id = requester.user_id
        rid = info.room_id
        out: JsonDict = {"membership": info.membership}
        if sent is None:
            out["initial"] = True
        if info.membership in ("invite", "knock"):
            stripped = self.sync._stripped(db, rid, user_id)
            out["stripped_state"] = stripped
            out["invite_state" if info.membership == "invite" else "knock_state"] = stripped
            out["bump_stamp"] = info.membership_pos
            if facts.is_dm(rid) or _invite_is_direct(db, rid, user_id):
                out["is_dm"] = True
            return out

        joined = info.membership == "join"
        room_upto = upto if joined else info.membership_pos
        since = None if sent is None or expanded else sent.upto
        timeline, limited, first_pos = self.sync._timeline(
            db, requester, rid, since, room_upto, _NO_FILTER, limit=config.timeline_limit
        )
        if expanded and sent is not None:
            if all((r.stream_pos or 0) > sent.upto for r in timeline):
                expanded = False  # nothing the client had before: an ordinary update
            else:
                out["expanded_timeline"] = True
                out["unstable_expanded_timeline"] = True
        live_from = prev.stream if prev is not None else None
        out["num_live"] = (
            sum(1 for r in timeline if (r.stream_pos or 0) > live_from) if live_from is not None else 0
        )
        out["limited"] = limited
        out["prev_batch"] = f"t{first_pos - 1}"

        # State: all that the config asks for, or what changed after ``sent.upto``.
        end_state: dict[tuple[str, str], str] | None = None
        if not joined:
            m = state_store.get_membership(db, rid, user_id)
            end_state = (state_store.state_after_event(db, m[1]) if m is not None else None) or {}
        changes: dict[tuple[str, str], str] | None = None
        if sent is not None:
            changes = state_store.current_state_since(db, rid, sent.upto)
            if end_state is not None:
                changes = {k: v for k, v in changes.items() if end_state.get(k) == v}
        state_ids = self._required_state(db, rid, user_id, config, sent, changes, end_state)
        lazy = {r.event.sender for r in timeline} | {
            r.event.state_key for r in timeline if r.event.type == ss.MEMBER and r.event.state_key
        }
        if config.lazy_members and lazy:
            keys = [(ss.MEMBER, u) for u in sorted(lazy) if (ss.MEMBER, u) not in state_ids]
            if end_state is None:
                state_ids.update(ss_store.current_state_ids(db, rid, keys))
            else:
                state_ids.update({k: end_state[k] for k in keys if k in end_state})
            if changes is not None and not limited:
                # Every membership change since (the proposal's third lazy rule).
                state_ids.update({k: v for k, v in changes.items() if k[0] == ss.MEMBER})
        # Timeline and state serialised as one page: relations, redactions and erasures
        # are looked up once for both.
        state_recs = ev_store.get_events(db, state_ids.values())
        state_list = [state_recs[e] for e in state_ids.values() if e in state_recs]
        page = serialize_events(
            db, [*timeline, *state_list], user_id=user_id, device_id=requester.device_id, now_ms=now
        )
        out["timeline"] = page[: len(timeline)]
        if state_ids or sent is None:
            out["required_state"] = page[len(timeline) :]
        if sent is not None and not timeline and not state_ids and not expanded and not force:
            return None  # nothing the client is shown changed (an event it may not see)

        # Name, avatar, heroes and counts: on the first sending, and when they change.
        name_key, avatar_key = ("m.room.name", ""), ("m.room.avatar", "")
        looked_up: dict[tuple[str, str], JsonDict | None] = {}

        def current(key: tuple[str, str]) -> JsonDict | None:
            if not looked_up:
                # Name and avatar in one look-up (the answer usually needs both).
                keys = [name_key, avatar_key]
                if end_state is not None:
                    ids = {k: end_state[k] for k in keys if k in end_state}
                else:
                    ids = ss_store.current_state_ids(db, rid, keys)
                recs = ev_store.get_events(db, ids.values())
                for k in keys:
                    rec = recs.get(ids[k]) if k in ids else None
                    looked_up[k] = dict(rec.event.content) if rec is not None else None
            return looked_up.get(key)

        changed_keys = set(changes) if changes is not None else None
        name_changed = changed_keys is None or name_key in changed_keys
        if name_changed:
            name = _name(current(name_key))
            if name is not None or changed_keys is not None:
                out["name"] = name
        if changed_keys is None or avatar_key in changed_keys:
            avatar = current(avatar_key)
            url = avatar.get("url") if isinstance(avatar, dict) else None
            url = url if isinstance(url, str) and url else None
            if url is not None or changed_keys is not None:
                out["avatar"] = url
        members_changed = changed_keys is None or any(k[0] == ss.MEMBER for k in changed_keys)
        if members_changed:
            out["joined_count"] = state_store.count_members(db, rid, "join")
            out["invited_count"] = state_store.count_members(db, rid, "invite")
        if (members_changed or name_changed) and _name(current(name_key)) is None:
            out["heroes"] = _heroes(db, rid, user_id)
        if sent is None:
            if facts.is_dm(rid):
                out["is_dm"] = True
        elif sent.is_dm != facts.is_dm(rid):
            out["is_dm"] = facts.is_dm(rid)
        if joined:
            notif, highlight = self.sync.unread_counter(db, user_id, rid)
            out["notification_count"] = notif
            out["highlight_count"] = highlight
            bump = ss_store.bump_stamp(db, rid, ss.BUMP_EVENT_TYPES, upto)
            out["bump_stamp"] = bump if bump is not None else info.membership_pos
        else:
            out["bump_stamp"] = info.membership_pos
        return out

    def _required_state(
        self,
        db: Conn,
        rid: str,
        user_id: str,
        config: RoomConfig,
        sent: SentRoom | None,
        changes: dict[tuple[str, str], str] | None,
        end_state: dict[tuple[str, str], str] | None,
    ) -> dict[tuple[str, str], str]:
        """The state the config asks for: all of it on a first sending; else what
        changed after the room was last sent, plus what a grown config newly asks for."""
        if not config.required_state:
            return {}

        def wanted(t: str, s: str) -> bool:
            return config.wants_state(t, s, user_id)

        if sent is None or (sent.config.required_state != config.required_state):
            old = sent.config if sent is not None else None

            def keep(t: str, s: str) -> bool:
                return wanted(t, s) and (old is None or not old.wants_state(t, s, user_id))

            if end_state is not None:
                picked = {k: v for k, v in end_state.items() if keep(*k)}
            else:
                plan = config.key_plan(user_id)
                if plan is not None:
                    exact, types = plan
                    picked = ss_store.current_state_ids(db, rid, [k for k in exact if keep(*k)])
                    for t in types:
                        picked.update(state_store.get_current_state_ids(db, rid, etype=t, keep=keep))
                else:
                    picked = state_store.get_current_state_ids(db, rid, keep=keep)
        else:
            picked = {}
        if changes is not None:
            picked.update({k: v for k, v in changes.items() if wanted(*k)})
        return picked

    # -- extensions ----------------------------------------------------------------------

    def _extensions(
        self,
        db: Conn,
        requester: Requester,
        req: ss.Request,
        prev: ConnState | None,
        upto: int,
        typing: TypingSnapshot,
        typing_serial: int,
        in_scope: list[str],
        room_lists: dict[str, list[str]],
        subscribed: set[str],
        initial_rooms: set[str],
        rooms_out: JsonDict,
        out: JsonDict,
    ) -> bool:
        """Every enabled extension but to-device (which writes); whether any has news."""
        user_id = requester.user_id
        device_id = requester.device_id
        news = False
        since = prev.stream if prev is not None else None

        def scoped(ext: ExtensionConfig) -> list[str]:
            return [r for r in in_scope if ext.in_scope(r, room_lists.get(r, ()), r in subscribed)]

        e2ee = req.extensions.get("e2ee")
        if e2ee is not None and e2ee.enabled:
            section: JsonDict = {}
            if since is not None:
                changed, left = (
                    device_lists.device_list_delta(db, user_id, since, upto) if upto > since else ([], [])
                )
                section["device_lists"] = {"changed": changed, "left": left}
                news = news or bool(changed or left)
            if device_id is not None:
                counts = e2e_keys.count_one_time_keys(db, user_id, device_id)
                counts.setdefault(SIGNED_CURVE25519, 0)
                section["device_one_time_keys_count"] = counts
                section["device_unused_fallback_key_types"] = e2e_keys.unused_fallback_key_types(
                    db, user_id, device_id
                )
            out["e2ee"] = section

        account = req.extensions.get("account_data")
        if account is not None and account.enabled:
            changes = ad_store.get_account_data_since(db, user_id, since or 0, upto)
            rooms = scoped(account)
            fresh = [r for r in rooms if since is None or r in initial_rooms]
            everything = ad_store.get_account_data_since(db, user_id, 0, upto) if fresh and since is not None else changes
            by_room: JsonDict = {}
            for rid in rooms:
                source = everything if rid in fresh else changes
                events = ad_store.to_events(source.rooms.get(rid, {}))
                if events:
                    by_room[rid] = events
            global_events = ad_store.to_events(changes.global_)
            out["account_data"] = {"global": global_events, "rooms": by_room}
            news = news or bool(global_events or by_room)

        receipts = req.extensions.get("receipts")
        if receipts is not None and receipts.enabled:
            rooms = scoped(receipts)
            fresh = [r for r in rooms if since is None or r in initial_rooms]
            rest = [r for r in rooms if r not in fresh]
            rows = ss_store.receipts_in_rooms(db, fresh, user_id)
            for rid in fresh:
                # A room new to the client: the receipts of the events it is sent, and
                # the user's own (the rest of a big room's would be most of the answer).
                shown = {e.get("event_id") for e in rooms_out.get(rid, {}).get("timeline", ())}
                rows[rid] = [row for row in rows.get(rid, ()) if row[0] in shown or row[2] == user_id]
            if rest and since is not None:
                rows.update(room_store.receipts_since(db, rest, since, upto, user_id))
            by_room = {rid: receipt_event(r) for rid, r in sorted(rows.items()) if r}
            out["receipts"] = {"rooms": by_room}
            news = news or bool(by_room)

        typing_ext = req.extensions.get("typing")
        if typing_ext is not None and typing_ext.enabled:
            by_room = {}
            for rid in scoped(typing_ext):
                is_new = prev is None or rid in initial_rooms
                users = typing.typing_since(rid, None if is_new or prev is None else prev.typing)
                if users is None or (is_new and not users):
                    continue
                by_room[rid] = {"type": "m.typing", "content": {"user_ids": users}}
            out["typing"] = {"rooms": by_room}
            news = news or bool(by_room)
        return news

    # -- facts the filters ask about ---------------------------------------------------------

    def room_type(self, db: Conn, room_id: str, user_id: str, membership: str) -> str | None:
        """The ``type`` of a room's create event (cached: it never changes)."""
        with self._room_types_lock:
            cached = self._room_types.get(room_id)
        if cached is not None:
            return cached[0]
        content: Any = None
        ids = state_store.get_current_state_ids(db, room_id, [("m.room.create", "")])
        eid = ids.get(("m.room.create", ""))
        if eid is not None:
            rec = ev_store.get_event(db, eid)
            content = rec.event.content if rec is not None else None
        elif membership in ("invite", "knock"):
            for ev in self.sync._stripped(db, room_id, user_id):
                if ev.get("type") == "m.room.create":
                    content = ev.get("content")
            if content is None:
                return None  # not known yet: not cached, a later join will tell
        rtype = content.get("type") if isinstance(content, dict) else None
        rtype = rtype if isinstance(rtype, str) else None
        with self._room_types_lock:
            self._room_types.put(room_id, (rtype,))
        return rtype

    def statistics(self) -> dict[str, int]:
        return self.connections.statistics()


class _Facts:
    """The facts about rooms that filters and room entries ask for, each looked up at
    most once per answer."""

    def __init__(self, svc: SlidingSyncService, db: Conn, user_id: str, upto: int) -> None:
        self.svc = svc
        self.db = db
        self.user_id = user_id
        self.upto = upto
        self._direct: frozenset[str] | None = None
        self._tags: dict[str, frozenset[str]] | None = None

    def direct(self) -> frozenset[str]:
        if self._direct is None:
            content = ad_store.get_account_data(self.db, self.user_id, ad_store.GLOBAL, "m.direct")
            rooms: set[str] = set()
            if isinstance(content, dict):
                for ids in content.values():
                    if isinstance(ids, list):
                        rooms.update(r for r in ids if isinstance(r, str))
            self._direct = frozenset(rooms)
        return self._direct

    def is_dm(self, room_id: str) -> bool:
        return room_id in self.direct()

    def tags(self, room_id: str) -> frozenset[str]:
        if self._tags is None:
            everything = ad_store.get_account_data_since(self.db, self.user_id, 0, None)
            tags: dict[str, frozenset[str]] = {}
            for rid, by_type in everything.rooms.items():
                content = by_type.get("m.tag")
                inner = content.get("tags") if isinstance(content, dict) else None
                if isinstance(inner, dict) and inner:
                    tags[rid] = frozenset(inner)
            self._tags = tags
        return self._tags.get(room_id, frozenset())

    def of(self, room: ss_store.UserRoom, f: ss.RoomFilters) -> RoomFacts:
        """The facts ``f`` asks about (the others left at their defaults, unread)."""
        rid = room.room_id
        types = f.room_types is not None or f.not_room_types is not None
        return RoomFacts(
            room_id=rid,
            membership=room.membership,
            is_dm=self.is_dm(rid) if f.is_dm is not None else False,
            is_encrypted=(
                ss_store.has_state(self.db, rid, "m.room.encryption", "") if f.is_encrypted is not None else False
            ),
            room_type=self.svc.room_type(self.db, rid, self.user_id, room.membership) if types else None,
            tags=self.tags(rid) if f.tags is not None or f.not_tags is not None else frozenset(),
        )

    def space_children(self, spaces: tuple[str, ...]) -> frozenset[str]:
        """Rooms named by a valid ``m.space.child`` (one with ``via``) of the spaces the
        user is joined to; subspaces are not followed."""
        out: set[str] = set()
        for space in spaces:
            m = state_store.get_membership(self.db, space, self.user_id)
            if m is None or m[0] != "join":
                continue
            ids = state_store.get_current_state_ids(self.db, space, etype="m.space.child")
            recs = ev_store.get_events(self.db, ids.values())
            for (_, child), eid in ids.items():
                rec = recs.get(eid)
                via = rec.event.content.get("via") if rec is not None else None
                if isinstance(via, list) and via:
                    out.add(child)
        return frozenset(out)


def _name(content: JsonDict | None) -> str | None:
    name = content.get("name") if isinstance(content, dict) else None
    return name if isinstance(name, str) and name else None


def _heroes(db: Conn, room_id: str, user_id: str) -> list[JsonDict]:
    """``heroes`` with the display name and avatar of each one's membership event."""
    ids = room_heroes(db, room_id, user_id, include_left=True)
    keys = [(ss.MEMBER, u) for u in ids]
    state = state_store.get_current_state_ids(db, room_id, keys)
    recs = ev_store.get_events(db, state.values())
    out: list[JsonDict] = []
    for u in ids:
        hero: JsonDict = {"user_id": u}
        eid = state.get((ss.MEMBER, u))
        rec = recs.get(eid) if eid is not None else None
        if rec is not None:
            for src, dst in (("displayname", "displayname"), ("avatar_url", "avatar_url")):
                v = rec.event.content.get(src)
                if isinstance(v, str) and v:
                    hero[dst] = v
        out.append(hero)
    return out


def _invite_is_direct(db: Conn, room_id: str, user_id: str) -> bool:
    """An invite marked ``is_direct`` is a DM before the client records it in m.direct."""
    m = state_store.get_membership(db, room_id, user_id)
    rec = ev_store.get_event(db, m[1]) if m is not None else None
    return rec is not None and rec.event.content.get("is_direct") is True

