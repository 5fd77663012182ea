"""Push: rules CRUD, lazy unread counts, /notifications, pushers and the HTTP pusher.

Client-server API "Push Notifications" (shared/spec/content/client-server-api/modules/
push.md) and the Push Gateway API (content/push-gateway-api.md).

Why nothing is evaluated per member at send time: in a room of 2,000 members, storing a
notification row per member per message makes every send cost O(members) (Synapse: 200
messages made 400,000 rows). Here sending an event costs nothing extra:

* **Counts** (``unread_notifications`` in /sync) are computed *lazily*, per (user, room),
  when that user syncs: the user's rules are evaluated over the events after their read
  receipt (the further of ``m.read`` / ``m.read.private``; threaded receipts apply to
  their thread). The result is cached (bounded LRU) with the stream position it counted
  to, so the next sync evaluates only newer events. At most ``MAX_COUNT_SCAN`` events
  are evaluated per room and sync; beyond that the count is a lower bound.
* **/notifications** is evaluated on read, walking back through the user's rooms.
* **HTTP pushers**: a background worker follows the event stream and evaluates each
  event only for the users of the room *who have pushers* (a join from pushers to
  memberships: few rows), then hands each notification to that pusher's sender task,
  which POSTs it to the gateway with a timeout and exponential backoff. The worker's
  position is stored, and never ahead of an undelivered notification, so a restart
  re-sends rather than loses (gateways de-duplicate by event ID). An invite from another
  server into a room this server is not in has no place in the event stream (an
  outlier; the invitee's membership moves instead): the worker picks those up by the
  membership's position and names the room from the stripped state sent with it.

Changing rules also writes the ``m.push_rules`` account data (push.md "Push Rules:
Events"), so clients see the new ruleset in their next /sync.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import count
from typing import Any
from urllib.parse import urlsplit

import trio

from pocketserver import limits
from pocketserver.errors import BadJson, InvalidParam, MatrixError, MissingParam, NotFound, TooLarge
from pocketserver.protocol.power_levels import PowerLevels
from pocketserver.protocol.push_rules import (
    KINDS,
    PushContext,
    PushResult,
    PushRule,
    PushRuleError,
    Ruleset,
    event_for_push,
    is_default_rule_id,
    parse_user_rule,
    rule_from_stored,
    validate_actions,
)
from pocketserver.services.auth import Requester
from pocketserver.services.client_events import serialize_event
from pocketserver.services.clock import Clock
from pocketserver.services.lru import LruCache
from pocketserver.services.notifier import Notifier
from pocketserver.services.outbound import BlockedAddress, IpPolicy, Outbound
from pocketserver.services.params import parse_int
from pocketserver.services.visibility import VisibilityChecker
from pocketserver.storage import account_data as ad_store
from pocketserver.storage import events as ev_store
from pocketserver.storage import push as store
from pocketserver.storage import state as state_store
from pocketserver.storage.database import Conn, Database
from pocketserver.storage.events import EventRecord
from pocketserver.storage.streams import current_stream_pos

log = logging.getLogger(__name__)

JsonDict = dict[str, Any]

# Lazy counts: events evaluated per (user, room) per call, at most.
MAX_COUNT_SCAN = 300
# /notifications: events looked at per request, at most.
MAX_NOTIFICATIONS_SCAN = 2000
# How many hops from a related event to find its thread (push.md recommends 3).
MAX_THREAD_HOPS = 3
# The pusher worker: events per batch, pending notifications per pusher.
WORKER_BATCH = 200
MAX_PENDING_PER_PUSHER = 100
PUSH_TIMEOUT_S = 10.0
BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 300.0
MAX_ATTEMPTS = 12  # ~ half an hour of retries with the backoff above
MAX_GATEWAY_RESPONSE = 64 * 1024
MAX_PUSHKEY_BYTES = 512
MAX_APP_ID_CHARS = 64
NOTIFY_PATH = "/_matrix/push/v1/notify"


# -- lazy counts -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Counts:
    """What one (user, room) count was computed from, and the result."""

    generation: int  # of the user's ruleset
    receipts: tuple[tuple[str, int], ...]
    counted_to: int
    # thread_id ('main' for the main timeline) -> [notifications, highlights]
    threads: dict[str, list[int]] = field(default_factory=dict)

    def totals(self) -> tuple[int, int]:
        n = sum(v[0] for v in self.threads.values())
        h = sum(v[1] for v in self.threads.values())
        return n, h


class _RoomFacts:
    """The room facts conditions read, loaded once per room per evaluation pass."""

    def __init__(self, conn: Conn, room_id: str) -> None:
        self.conn = conn
        self.room_id = room_id
        self._members: int | None = None
        self._power: PowerLevels | None = None
        self._names: dict[str, str | None] = {}

    @property
    def member_count(self) -> int:
        if self._members is None:
            self._members = state_store.count_members(self.conn, self.room_id, "join")
        return self._members

    @property
    def power(self) -> PowerLevels:
        if self._power is None:
            info = ev_store.get_room(self.conn, self.room_id)
            ids = state_store.get_current_state_ids(
                self.conn, self.room_id, [("m.room.power_levels", ""), ("m.room.create", "")]
            )
            create_id = ids.get(("m.room.create", ""))
            if create_id is None and info is not None and info.room_version.room_id_is_create_event_hash:
                create_id = "$" + self.room_id[1:]
            recs = ev_store.get_events(
                self.conn, [i for i in (ids.get(("m.room.power_levels", "")), create_id) if i]
            )
            pl = recs.get(ids.get(("m.room.power_levels", ""), ""))
            create = recs.get(create_id or "")
            assert info is not None
            self._power = PowerLevels.from_events(
                create.event if create else None, pl.event if pl else None, info.room_version
            )
        return self._power

    def display_name(self, user_id: str) -> str | None:
        if user_id not in self._names:
            name: str | None = None
            ids = state_store.get_current_state_ids(self.conn, self.room_id, [("m.room.member", user_id)])
            mid = ids.get(("m.room.member", user_id))
            if mid is not None:
                rec = ev_store.get_event(self.conn, mid)
                if rec is not None:
                    dn = rec.event.content.get("displayname")
                    name = dn if isinstance(dn, str) else None
            self._names[user_id] = name
        return self._names[user_id]

    def names(self) -> tuple[str | None, str | None]:
        """(the room's ``m.room.name``, its canonical alias), each None when unset."""
        ids = state_store.get_current_state_ids(
            self.conn, self.room_id, [("m.room.name", ""), ("m.room.canonical_alias", "")]
        )
        recs = ev_store.get_events(self.conn, ids.values())
        name_rec = recs.get(ids.get(("m.room.name", ""), ""))
        alias_rec = recs.get(ids.get(("m.room.canonical_alias", ""), ""))
        name = name_rec.event.content.get("name") if name_rec is not None else None
        alias = alias_rec.event.content.get("alias") if alias_rec is not None else None
        return (name if isinstance(name, str) and name else None, alias if isinstance(alias, str) else None)

    def context(self, ruleset: Ruleset, user_id: str, sender: str) -> PushContext:
        power = self.power
        return PushContext(
            user_id=user_id,
            member_count=self.member_count,
            display_name=self.display_name(user_id) if ruleset.uses_display_name else None,
            sender_power_level=power.user_level(sender),
            notification_level=power.notification_level,
        )


class _InvitedRoomFacts(_RoomFacts):
    """A room this server is not in, known to it only by an invite that came over
    federation: its names and members are those of the stripped state the inviting
    server sent with the invite (server-server "Inviting to a room"), not the state
    this server holds of the room (none, or stale since its users left)."""

    def __init__(self, conn: Conn, invite: EventRecord) -> None:
        super().__init__(conn, invite.event.room_id)
        sent = (invite.event.pdu.get("unsigned") or {}).get("invite_room_state")
        self._stripped: dict[tuple[str, str], Mapping[str, Any]] = {}
        for s in sent if isinstance(sent, list) else ():
            if isinstance(s, Mapping) and isinstance(s.get("type"), str) and isinstance(s.get("state_key"), str) \
                    and isinstance(s.get("content"), Mapping):
                self._stripped[(s["type"], s["state_key"])] = s["content"]
        self._members = sum(
            1 for (t, _), c in self._stripped.items() if t == "m.room.member" and c.get("membership") == "join"
        )

    def display_name(self, user_id: str) -> str | None:
        dn = self._stripped.get(("m.room.member", user_id), {}).get("displayname")
        return dn if isinstance(dn, str) else None

    def names(self) -> tuple[str | None, str | None]:
        name = self._stripped.get(("m.room.name", ""), {}).get("name")
        alias = self._stripped.get(("m.room.canonical_alias", ""), {}).get("alias")
        return (name if isinstance(name, str) and name else None, alias if isinstance(alias, str) else None)


def _push_view(rec: EventRecord) -> JsonDict:
    ev = rec.event
    return event_for_push(
        ev.event_id, ev.room_id, ev.sender, ev.type, ev.content, ev.state_key, ev.origin_server_ts
    )


def _relation(rec: EventRecord) -> tuple[str, str] | None:
    rel = rec.event.content.get("m.relates_to")
    if not isinstance(rel, Mapping):
        return None
    rtype, target = rel.get("rel_type"), rel.get("event_id")
    if isinstance(rtype, str) and isinstance(target, str):
        return rtype, target
    return None


# -- pushers -----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Delivery:
    stream_pos: int
    body: JsonDict
    attempts: int = 0


class PushService:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        notifier: Notifier,
        *,
        ruleset_cache_size: int = 1000,
        counts_cache_size: int = 20000,
        outbound: Outbound | None = None,
        policy: IpPolicy | None = None,
    ) -> None:
        self.db = db
        self.outbound = outbound or Outbound()
        # Gateways are named by users: only public addresses, or the operator's ranges.
        self.policy = policy or IpPolicy()
        self.clock = clock
        self.notifier = notifier
        # Reads run in worker threads; the caches are shared between them.
        self._lock = threading.Lock()
        self._rulesets: LruCache[str, tuple[int, Ruleset]] = LruCache(ruleset_cache_size)
        self._counts: LruCache[tuple[str, str], _Counts] = LruCache(counts_cache_size)
        self._generations = count(1)
        self._invalidations = 0
        # The pusher worker.
        self._wake = trio.Event()
        self._queues: dict[tuple[str, str, str], deque[_Delivery]] = {}
        self._senders: set[tuple[str, str, str]] = set()
        self._nursery: trio.Nursery | None = None
        self.worker_pos = 0
        self._persisted_pos = 0
        self._persisted_at = 0.0
        # Whether any pusher may exist; while not, the worker only follows the stream.
        self._have_pushers = False
        self.deliveries = 0
        self.failures = 0
        # The unread count last queued for each pusher: a read receipt sends the
        # gateway a new badge only when the count changed (one entry per pusher).
        self._badges: dict[tuple[str, str, str], int] = {}

    def statistics(self) -> dict[str, Any]:
        return {
            "rulesets": self._rulesets.statistics(),
            "counts": self._counts.statistics(),
            "pending": sum(len(q) for q in self._queues.values()),
            "deliveries": self.deliveries,
            "failures": self.failures,
            "worker_pos": self.worker_pos,
        }

    # -- rulesets ----------------------------------------------------------------------------

    def ruleset_in(self, conn: Conn, user_id: str) -> tuple[int, Ruleset]:
        """(generation, ruleset) of a user, cached; call inside a read or write."""
        with self._lock:
            cached = self._rulesets.get(user_id)
            seen = self._invalidations
        if cached is not None:
            return cached
        rules = [rule_from_stored(r.kind, r.rule_id, r.data, r.enabled) for r in store.get_user_rules(conn, user_id)]
        ruleset = Ruleset.build(user_id, rules, store.get_default_overrides(conn, user_id))
        with self._lock:
            entry = (next(self._generations), ruleset)
            # A change committed while this was loading must not be cached over.
            if self._invalidations == seen:
                self._rulesets.put(user_id, entry)
        return entry

    def _invalidate(self, user_id: str) -> None:
        with self._lock:
            self._invalidations += 1
            self._rulesets.pop(user_id)

    async def get_ruleset(self, user_id: str) -> Ruleset:
        return (await self.db.read(self.ruleset_in, user_id))[1]

    async def get_rule(self, user_id: str, kind: str, rule_id: str) -> PushRule:
        _check_kind(kind)
        rule = (await self.get_ruleset(user_id)).find(kind, rule_id)
        if rule is None:
            raise NotFound("The push rule was not found.")
        return rule

    async def put_rule(
        self, user_id: str, kind: str, rule_id: str, body: Mapping[str, Any], before: str | None, after: str | None
    ) -> None:
        _check_kind(kind)
        try:
            rule = parse_user_rule(kind, rule_id, body)
        except PushRuleError as e:
            raise MatrixError(400, e.errcode, str(e)) from None
        for anchor in (before, after):
            if anchor is not None and is_default_rule_id(anchor):
                raise MatrixError(400, "M_UNKNOWN", "A rule cannot be placed relative to a server-default rule")
        data: JsonDict = {"actions": list(rule.actions)}
        if rule.conditions is not None:
            data["conditions"] = [dict(c) for c in rule.conditions]
        if rule.pattern is not None:
            data["pattern"] = rule.pattern
        if limits.json_size(data) > limits.MAX_PUSH_RULE_BYTES:
            raise TooLarge(f"A push rule is at most {limits.MAX_PUSH_RULE_BYTES} bytes")
        await self._change(user_id, self._put_rule_txn, user_id, kind, rule_id, data, before, after)

    @staticmethod
    def _put_rule_txn(
        conn: Conn, user_id: str, kind: str, rule_id: str, data: JsonDict, before: str | None, after: str | None
    ) -> None:
        ids = store.get_rule_ids(conn, user_id, kind)
        existed = rule_id in ids
        if existed:
            ids.remove(rule_id)
        elif store.count_user_rules(conn, user_id) >= limits.MAX_PUSH_RULES:
            raise TooLarge(f"A user has at most {limits.MAX_PUSH_RULES} push rules")
        if before is not None:
            if before not in ids:
                raise MatrixError(400, "M_UNKNOWN", f"before/after rule not found: {before}")
            ids.insert(ids.index(before), rule_id)
        elif after is not None:
            if after not in ids:
                raise MatrixError(400, "M_UNKNOWN", f"before/after rule not found: {after}")
            ids.insert(ids.index(after) + 1, rule_id)
        elif existed:
            ids = store.get_rule_ids(conn, user_id, kind)  # keep its place
        else:
            ids.insert(0, rule_id)  # a new rule is the most important of its kind
        store.upsert_rule(conn, user_id, kind, rule_id, 0, data)
        store.set_priorities(conn, user_id, kind, ids)

    async def delete_rule(self, user_id: str, kind: str, rule_id: str) -> None:
        _check_kind(kind)
        if is_default_rule_id(rule_id):
            if (await self.get_ruleset(user_id)).find(kind, rule_id) is None:
                raise NotFound("The push rule was not found.")
            raise MatrixError(400, "M_UNKNOWN", "Server-default rules cannot be deleted")
        await self._change(user_id, _require(store.delete_rule), user_id, kind, rule_id)

    async def set_enabled(self, user_id: str, kind: str, rule_id: str, enabled: Any) -> None:
        _check_kind(kind)
        if not isinstance(enabled, bool):
            raise BadJson("'enabled' must be a boolean")
        if is_default_rule_id(rule_id):
            await self.get_rule(user_id, kind, rule_id)
            await self._change(user_id, store.set_default_enabled, user_id, rule_id, enabled)
        else:
            await self._change(user_id, _require(store.set_rule_enabled), user_id, kind, rule_id, enabled)

    async def set_actions(self, user_id: str, kind: str, rule_id: str, actions: Any) -> None:
        _check_kind(kind)
        try:
            checked = list(validate_actions(actions))
        except PushRuleError as e:
            raise MatrixError(400, e.errcode, str(e)) from None
        if limits.json_size(checked) > limits.MAX_PUSH_RULE_BYTES:
            raise TooLarge(f"A push rule is at most {limits.MAX_PUSH_RULE_BYTES} bytes")
        if is_default_rule_id(rule_id):
            await self.get_rule(user_id, kind, rule_id)
            await self._change(user_id, store.set_default_actions, user_id, rule_id, checked)
        else:
            await self._change(user_id, _require(store.set_rule_actions), user_id, kind, rule_id, checked)

    async def _change(self, user_id: str, fn: Any, *args: Any) -> None:
        """Apply one rule change and publish the new ruleset, in one transaction."""

        def txn(conn: Conn) -> int:
            fn(conn, *args)
            rules = [rule_from_stored(r.kind, r.rule_id, r.data, r.enabled) for r in store.get_user_rules(conn, user_id)]
            ruleset = Ruleset.build(user_id, rules, store.get_default_overrides(conn, user_id))
            return ad_store.put_account_data(conn, user_id, "", "m.push_rules", {"global": ruleset.to_json()})

        pos = await self.db.write(txn)
        self._invalidate(user_id)
        self.notifier.notify(pos)

    def sync_extension(self) -> Any:
        """Initial syncs carry ``m.push_rules`` even for users who never changed a rule."""

        async def extension(requester: Requester, token: Any, upto: int, response: JsonDict) -> None:
            if token is not None:
                return None
            events = response.setdefault("account_data", {}).setdefault("events", [])
            if not any(e.get("type") == "m.push_rules" for e in events):
                ruleset = await self.get_ruleset(requester.user_id)
                events.append({"type": "m.push_rules", "content": {"global": ruleset.to_json()}})
            return None

        return extension

    # -- lazy counts ---------------------------------------------------------------------------

    def unread_counts(self, conn: Conn, user_id: str, room_id: str) -> tuple[int, int]:
        """(notification_count, highlight_count) of a user in a room; the SyncService's
        ``unread_counter``, called inside its read transaction."""
        return self.thread_counts(conn, user_id, room_id).totals()

    def thread_counts(self, conn: Conn, user_id: str, room_id: str) -> _Counts:
        generation, ruleset = self.ruleset_in(conn, user_id)
        reads = store.read_positions(conn, room_id, user_id)
        receipts = tuple(sorted(reads.items()))
        upto = current_stream_pos(conn)
        key = (user_id, room_id)
        with self._lock:
            cached = self._counts.get(key)
        if cached is not None and cached.generation == generation and cached.receipts == receipts:
            if cached.counted_to >= upto:
                return cached
            state = _Counts(generation, receipts, cached.counted_to, {k: list(v) for k, v in cached.threads.items()})
        else:
            # Nothing from before the user joined counts (shared history is readable).
            start = max(reads.get("", 0), _joined_at(conn, room_id, user_id))
            state = _Counts(generation, receipts, start, {})
        recs = ev_store.room_timeline(
            conn, room_id, from_pos=upto + 1, to_pos=state.counted_to, backwards=True, limit=MAX_COUNT_SCAN
        )
        if recs:
            facts = _RoomFacts(conn, room_id)
            threads: dict[str, str] = {}
            for rec in reversed(recs):
                ev = rec.event
                if ev.sender == user_id or rec.redacted_by is not None:
                    continue
                result = ruleset.evaluate(_push_view(rec), facts.context(ruleset, user_id, ev.sender))
                if result is None or not result.notify:
                    continue
                thread = self._thread_of(conn, rec, threads)
                pos = rec.stream_pos or 0
                if pos <= reads.get(thread, 0):
                    continue
                counts = state.threads.setdefault(thread, [0, 0])
                counts[0] += 1
                if result.highlight:
                    counts[1] += 1
        state.counted_to = upto
        with self._lock:
            self._counts.put(key, state)
        return state

    def _thread_of(self, conn: Conn, rec: EventRecord, known: dict[str, str]) -> str:
        """The thread an event belongs to ('main' for the main timeline)."""
        hops = 0
        cur: EventRecord | None = rec
        while cur is not None and hops < MAX_THREAD_HOPS:
            if cur.event.event_id in known:
                return known[cur.event.event_id]
            rel = _relation(cur)
            if rel is None:
                break
            if rel[0] == "m.thread":
                known[rec.event.event_id] = rel[1]
                return rel[1]
            cur = ev_store.get_event(conn, rel[1])
            hops += 1
        known[rec.event.event_id] = "main"
        return "main"

    def total_unread(self, conn: Conn, user_id: str) -> int:
        """Notifications across all the user's joined rooms (the gateway's ``unread``)."""
        rooms = state_store.rooms_for_user(conn, user_id, ("join",))
        return sum(self.unread_counts(conn, user_id, r)[0] for r in rooms)

    # -- /notifications -------------------------------------------------------------------------

    async def get_notifications(
        self, requester: Requester, from_token: str | None, limit: int, only: str | None
    ) -> JsonDict:
        before: int | None = None
        if from_token:
            before = parse_int(from_token, "'from' token", minimum=0)
        return await self.db.read(self._notifications, requester, before, limit, only == "highlight")

    def _notifications(
        self, conn: Conn, requester: Requester, before: int | None, limit: int, only_highlight: bool
    ) -> JsonDict:
        user_id = requester.user_id
        _, ruleset = self.ruleset_in(conn, user_id)
        joined = state_store.rooms_for_user(conn, user_id, ("join",))
        facts: dict[str, _RoomFacts] = {}
        visibility: dict[str, VisibilityChecker] = {}
        reads: dict[str, dict[str, int]] = {}
        threads: dict[str, str] = {}
        now = self.clock.time_ms()
        out: list[JsonDict] = []
        scanned = 0
        cursor = before
        exhausted = False
        while len(out) < limit and scanned < MAX_NOTIFICATIONS_SCAN:
            batch = store.events_in_rooms_before(conn, joined.keys(), cursor, 100, user_id)
            if not batch:
                exhausted = True
                break
            for rec in batch:
                scanned += 1
                pos = rec.stream_pos or 0
                cursor = pos
                room_id = rec.event.room_id
                if rec.redacted_by is not None:
                    continue
                checker = visibility.get(room_id)
                if checker is None:
                    checker = visibility[room_id] = VisibilityChecker(conn, room_id, user_id)
                if not checker.can_see(rec):
                    continue
                f = facts.get(room_id)
                if f is None:
                    f = facts[room_id] = _RoomFacts(conn, room_id)
                result = ruleset.evaluate(_push_view(rec), f.context(ruleset, user_id, rec.event.sender))
                if result is None or not result.notify or (only_highlight and not result.highlight):
                    continue
                if room_id not in reads:
                    reads[room_id] = store.read_positions(conn, room_id, user_id)
                r = reads[room_id]
                read = pos <= max(r.get("", 0), r.get(self._thread_of(conn, rec, threads), 0))
                event = serialize_event(conn, rec, user_id=user_id, device_id=requester.device_id, now_ms=now)
                out.append(
                    {
                        "actions": list(result.actions),
                        "event": event,
                        # "The profile tag of the rule that matched": every rule here is
                        # in the global scope, which has none (the per-device rule sets
                        # that had profile tags are gone from the spec). The key is
                        # sent all the same, as the empty string: Synapse always sends
                        # it (as null, which the spec's schema, a string, does not
                        # allow) and code written against Synapse may read it.
                        "profile_tag": "",
                        "read": read,
                        "room_id": room_id,
                        "ts": rec.event.origin_server_ts,
                    }
                )
                if len(out) >= limit:
                    break
        body: JsonDict = {"notifications": out}
        if not exhausted and cursor is not None:
            body["next_token"] = str(cursor)
        return body

    # -- pushers -----------------------------------------------------------------------------

    async def get_pushers(self, user_id: str) -> list[JsonDict]:
        pushers = await self.db.read(store.get_pushers, user_id)
        return [p.info for p in pushers]

    async def set_pusher(self, requester: Requester, body: Mapping[str, Any]) -> None:
        """POST /pushers/set: create, update (``kind`` given) or delete (``kind`` null)."""
        missing = [k for k in ("kind", "app_id", "pushkey") if k not in body]
        if missing:
            raise MissingParam(f"Missing parameters: {', '.join(missing)}")
        app_id, pushkey, kind = body["app_id"], body["pushkey"], body["kind"]
        if not isinstance(app_id, str) or not isinstance(pushkey, str):
            raise BadJson("'app_id' and 'pushkey' must be strings")
        if kind is not None and not isinstance(kind, str):
            raise BadJson("'kind' must be a string or null")
        if not app_id or len(app_id) > MAX_APP_ID_CHARS:
            raise InvalidParam(f"'app_id' must be 1 to {MAX_APP_ID_CHARS} characters")
        if not pushkey or len(pushkey.encode("utf-8")) > MAX_PUSHKEY_BYTES:
            raise InvalidParam(f"'pushkey' must be 1 to {MAX_PUSHKEY_BYTES} bytes")
        user_id = requester.user_id
        if kind is None:
            await self.db.write(store.delete_pusher, user_id, app_id, pushkey)
            self._queues.pop((app_id, pushkey, user_id), None)
            self._badges.pop((app_id, pushkey, user_id), None)
            return
        missing = [k for k in ("app_display_name", "device_display_name", "lang", "data") if k not in body]
        if missing:
            raise MissingParam(f"Missing parameters: {', '.join(missing)}")
        for k in ("app_display_name", "device_display_name", "lang"):
            if not isinstance(body[k], str):
                raise BadJson(f"{k!r} must be a string")
        profile_tag = body.get("profile_tag")
        if profile_tag is not None and not isinstance(profile_tag, str):
            raise BadJson("'profile_tag' must be a string")
        data = body["data"]
        if not isinstance(data, dict):
            raise BadJson("'data' must be an object")
        append = body.get("append", False)
        if not isinstance(append, bool):
            raise BadJson("'append' must be a boolean")
        if kind == "email":
            raise MatrixError(400, "M_UNRECOGNIZED", "Email pushers are not supported by this server")
        if kind != "http":
            raise InvalidParam(f"Unknown pusher kind {kind!r}")
        url = data.get("url")
        if not isinstance(url, str):
            raise MissingParam("'data.url' is required for http pushers")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path != NOTIFY_PATH:
            raise InvalidParam(f"'data.url' must be an http(s) URL with the path {NOTIFY_PATH}")
        # The spec defines one format, "event_id_only". Any other is sent like no format
        # (every event field) and forwarded in ``data`` for the gateway that asked for it.
        if "format" in data and not isinstance(data["format"], str):
            raise BadJson("'data.format' must be a string")
        info: JsonDict = {
            "pushkey": pushkey,
            "kind": kind,
            "app_id": app_id,
            "app_display_name": body["app_display_name"],
            "device_display_name": body["device_display_name"],
            "lang": body["lang"],
            "data": data,
        }
        if profile_tag is not None:
            info["profile_tag"] = profile_tag
        if limits.json_size(info) > limits.MAX_PUSHER_BYTES:
            raise TooLarge(f"A pusher is at most {limits.MAX_PUSHER_BYTES} bytes")

        def txn(conn: Conn) -> None:
            if (
                not store.has_pusher(conn, user_id, app_id, pushkey)
                and store.count_user_pushers(conn, user_id) >= limits.MAX_PUSHERS
            ):
                raise TooLarge(f"A user has at most {limits.MAX_PUSHERS} pushers")
            pos = current_stream_pos(conn)
            store.upsert_pusher(
                conn, user_id, app_id, pushkey, kind, info, requester.device_id, self.clock.time_ms(), pos
            )
            if not append:
                store.delete_other_users_pushers(conn, app_id, pushkey, user_id)

        await self.db.write(txn)
        self._have_pushers = True
        self._wake.set()

    async def on_device_deleted(self, user_id: str, device_id: str) -> None:
        """A logged-out or deleted device's pushers go with it."""
        await self.db.write(store.delete_device_pushers, user_id, device_id)

    # -- the pusher worker -----------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Follow the event stream and deliver notifications to HTTP pushers."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.worker_pos, n = await self.db.read(self._start_position)
            self._persisted_pos = self.worker_pos
            self._have_pushers = n > 0
            task_status.started()
            while True:
                wake = self._wake = trio.Event()
                changed = self.notifier.change_event()
                progressed = await self._step()
                if progressed:
                    continue
                await self.notifier.wait_for_change_or(changed, wake, 60)


    def _start_position(self, conn: Conn) -> tuple[int, int]:
        stored = store.get_push_position(conn)
        current = current_stream_pos(conn)
        n = store.count_pushers(conn)
        return (current if stored is None else min(stored, current)), n

    async def _step(self) -> bool:
        """Handle one batch of new events; False when there was nothing new."""
        if not self._have_pushers and not any(self._queues.values()):
            # Nothing to evaluate for: follow the stream without reading it.
            self.worker_pos = max(self.worker_pos, self.notifier.position)
            await self._persist_position(self.worker_pos)
            return False
        upto = await self.db.read(current_stream_pos)
        if upto <= self.worker_pos:
            return False
        deliveries, reached = await self.db.read(self._evaluate_batch, self.worker_pos, upto)
        for key, delivery in deliveries:
            q = self._queues.setdefault(key, deque())
            if len(q) >= MAX_PENDING_PER_PUSHER:
                q.popleft()
                self.failures += 1
            q.append(delivery)
            if key not in self._senders and self._nursery is not None:
                self._senders.add(key)
                self._nursery.start_soon(self._sender, key)
        self.worker_pos = reached
        # Never store a position past a notification not yet delivered.
        safe = min([reached] + [q[0].stream_pos - 1 for q in self._queues.values() if q])
        await self._persist_position(safe, force=bool(deliveries))
        return True

    async def _persist_position(self, pos: int, *, force: bool = False) -> None:
        # Stored now and then, not per event: a restart re-reads at most a few seconds of
        # events, and each pusher's own progress keeps it from sending one twice.
        now = trio.current_time()
        if pos == self._persisted_pos or (not force and now - self._persisted_at < 30):
            return
        await self.db.write(store.set_push_position, pos)
        self._persisted_pos = pos
        self._persisted_at = now

    def _evaluate_batch(
        self, conn: Conn, after: int, upto: int
    ) -> tuple[list[tuple[tuple[str, str, str], _Delivery]], int]:
        if store.count_pushers(conn) == 0:
            self._have_pushers = False
            return [], upto
        recs = store.events_after(conn, after, upto, WORKER_BATCH)
        reached = upto if len(recs) < WORKER_BATCH else (recs[-1].stream_pos or upto)
        out: list[tuple[tuple[str, str, str], _Delivery]] = []
        facts: dict[str, _RoomFacts] = {}
        for rec in recs:
            ev = rec.event
            pos = rec.stream_pos or 0
            extra = [ev.state_key] if ev.type == "m.room.member" and ev.state_key else []
            pushers = [p for p in store.pushers_in_room(conn, ev.room_id, extra) if p.last_stream_pos < pos]
            if not pushers:
                continue
            f = facts.get(ev.room_id)
            if f is None:
                f = facts[ev.room_id] = _RoomFacts(conn, ev.room_id)
            out.extend(self._notifications_for(conn, f, rec, pos, pushers))
        # Invites into rooms this server is not in: no timeline event, the invitee's
        # membership instead, and the room known only by the state sent with it.
        for rec, pos in store.invites_from_elsewhere_after(conn, after, reached):
            invitee = rec.event.state_key or ""
            pushers = [p for p in store.get_pushers(conn, invitee) if p.last_stream_pos < pos]
            if pushers:
                out.extend(self._notifications_for(conn, _InvitedRoomFacts(conn, rec), rec, pos, pushers))
        out.extend(self._badge_updates(conn, after, reached))
        out.sort(key=lambda item: item[1].stream_pos)
        return out, reached

    def _notifications_for(
        self, conn: Conn, facts: _RoomFacts, rec: EventRecord, pos: int, pushers: list[store.Pusher]
    ) -> list[tuple[tuple[str, str, str], _Delivery]]:
        """The deliveries one event makes: each pusher's owner's rules decide (the
        sender's own pushers never hear of it, push.md "Push Rules")."""
        ev = rec.event
        by_user: dict[str, list[store.Pusher]] = {}
        for p in pushers:
            if p.kind == "http" and p.user_id != ev.sender:
                by_user.setdefault(p.user_id, []).append(p)
        out: list[tuple[tuple[str, str, str], _Delivery]] = []
        for user_id, ups in by_user.items():
            _, ruleset = self.ruleset_in(conn, user_id)
            result = ruleset.evaluate(_push_view(rec), facts.context(ruleset, user_id, ev.sender))
            if result is None or not result.notify:
                continue
            unread = self.total_unread(conn, user_id)
            for p in ups:
                body = self._notify_body(facts, rec, p, result, unread)
                out.append((p.key, _Delivery(pos, body)))
                self._badges[p.key] = unread
        return out

    def _badge_updates(
        self, conn: Conn, after: int, upto: int
    ) -> list[tuple[tuple[str, str, str], _Delivery]]:
        """A read receipt in (after, upto] changes its user's unread count: the user's
        pushers get a notification with only the new count, so the app's badge follows
        (the Push Gateway API allows these: ``event_id`` "may be omitted for
        notifications that only contain updated badge counts")."""
        out: list[tuple[tuple[str, str, str], _Delivery]] = []
        for user_id, pos in store.read_receipts_of_pusher_users(conn, after, upto):
            unread: int | None = None
            for p in store.get_pushers(conn, user_id):
                if p.kind != "http" or p.last_stream_pos >= pos:
                    continue
                if unread is None:
                    unread = self.total_unread(conn, user_id)
                if self._badges.get(p.key) == unread:
                    continue
                self._badges[p.key] = unread
                out.append((p.key, _Delivery(pos, self._badge_body(p, unread))))
        return out

    @staticmethod
    def _badge_body(pusher: store.Pusher, unread: int) -> JsonDict:
        device = _device_entry(pusher)
        # Zero is sent, although the spec says zero counts "should be omitted": a
        # gateway sets the app's badge only from a count it is given (Sygnal does), so
        # an omitted count would never clear it.
        return {"notification": {"counts": {"unread": unread}, "devices": [device]}}

    def _notify_body(
        self, facts: _RoomFacts, rec: EventRecord, pusher: store.Pusher, result: PushResult, unread: int
    ) -> JsonDict:
        ev = rec.event
        device = {**_device_entry(pusher), "tweaks": dict(result.tweaks)}
        high = result.highlight or "sound" in result.tweaks or ev.type == "m.room.encrypted"
        note: JsonDict = {
            "event_id": ev.event_id,
            # The pre-r0 name of ``event_id``, which Synapse still sends beside it and
            # older gateways read.
            "id": ev.event_id,
            "room_id": ev.room_id,
            "prio": "high" if high else "low",
            "counts": {"unread": unread} if unread else {},
            "devices": [device],
        }
        if device["data"].get("format") != "event_id_only":
            note["type"] = ev.type
            note["sender"] = ev.sender
            note["content"] = dict(ev.content)
            name = facts.display_name(ev.sender)
            if name:
                note["sender_display_name"] = name
            room_name, alias = facts.names()
            if alias is not None:
                note["room_alias"] = alias
            # The room's name as clients show it: its m.room.name, else its canonical
            # alias (client-server API "Calculating the display name for a room").
            if room_name is not None or alias is not None:
                note["room_name"] = room_name if room_name is not None else alias
            if ev.type == "m.room.member":
                note["user_is_target"] = ev.state_key == pusher.user_id
                # Not in the spec's list, but sent by Synapse and read by gateways that
                # word invites differently ("X invited you").
                membership = ev.content.get("membership")
                if isinstance(membership, str):
                    note["membership"] = membership
        return {"notification": note}

    async def _sender(self, key: tuple[str, str, str]) -> None:
        """Deliver one pusher's notifications in order, with backoff on failure."""
        try:
            backoff = BACKOFF_START_S
            while True:
                q = self._queues.get(key)
                if not q:
                    return
                item = q[0]
                pusher = await self._current_pusher(key)
                if pusher is None:
                    self._queues.pop(key, None)
                    self._badges.pop(key, None)
                    return
                url = (pusher.info.get("data") or {}).get("url", "")
                try:
                    rejected = await self._post(url, item.body)
                except BlockedAddress as e:
                    # Retrying cannot help: the notification is dropped, the pusher kept
                    # (the operator may allow the range, or the name may move).
                    self.failures += 1
                    log.warning("push to %s refused: %s (federation.allowed_ip_ranges)", url, e)
                    q.popleft()
                    continue
                except Exception as e:  # any failure of the gateway or the network
                    item.attempts += 1
                    self.failures += 1
                    log.info("push to %s failed (%s); attempt %d", url, e, item.attempts)
                    if item.attempts == 1:
                        await self.db.write(store.set_pusher_failing, key, self.clock.time_ms())
                    if item.attempts >= MAX_ATTEMPTS:
                        q.popleft()
                        backoff = BACKOFF_START_S
                        continue
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX_S)
                    continue
                backoff = BACKOFF_START_S
                self.deliveries += 1
                if q and q[0] is item:
                    q.popleft()
                if pusher.pushkey in rejected:
                    # The gateway says this pushkey is no longer valid: the pusher goes.
                    await self.db.write(store.delete_pusher, pusher.user_id, pusher.app_id, pusher.pushkey)
                    self._queues.pop(key, None)
                    self._badges.pop(key, None)
                    return
                await self.db.write(store.set_pusher_progress, key, item.stream_pos)
        finally:
            self._senders.discard(key)

    async def _current_pusher(self, key: tuple[str, str, str]) -> store.Pusher | None:
        for p in await self.db.read(store.get_pushers, key[2]):
            if p.key == key:
                return p
        return None

    async def _post(self, url: str, body: JsonDict) -> list[str]:
        """POST a notification to a push gateway; its ``rejected`` pushkeys."""
        payload = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        answer = await self.outbound.request(
            "POST",
            url,
            body=payload,
            headers=[("Content-Type", "application/json")],
            policy=self.policy,
            max_bytes=MAX_GATEWAY_RESPONSE,
            timeout_s=PUSH_TIMEOUT_S,
        )
        if not 200 <= answer.status < 300:
            raise ValueError(f"gateway answered HTTP {answer.status}")
        try:
            decoded = json.loads(answer.body or b"{}")
        except ValueError:
            return []
        rejected = decoded.get("rejected") if isinstance(decoded, dict) else None
        return [k for k in rejected if isinstance(k, str)] if isinstance(rejected, list) else []


def _joined_at(conn: Conn, room_id: str, user_id: str) -> int:
    """The stream position of the user's current join (profile changes do not move it)."""
    joined_at = 0
    previous: str | None = None
    for pos, membership in state_store.user_membership_history(conn, room_id, user_id):
        if membership == "join" and previous != "join":
            joined_at = pos
        previous = membership
    return joined_at


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise MatrixError(400, "M_INVALID_PARAM", f"Unknown push rule kind {kind!r}")


def _require(fn: Any) -> Any:
    """A storage update that must have found its rule, else M_NOT_FOUND."""

    def run(conn: Conn, *args: Any) -> None:
        if not fn(conn, *args):
            raise NotFound("The push rule was not found.")

    return run


def _device_entry(pusher: store.Pusher) -> JsonDict:
    """The pusher's entry in a notification's ``devices`` (its data without the URL)."""
    data = {k: v for k, v in (pusher.info.get("data") or {}).items() if k != "url"}
    return {
        "app_id": pusher.app_id,
        "pushkey": pusher.pushkey,
        "pushkey_ts": pusher.pushkey_ts // 1000,
        "data": data,
    }
