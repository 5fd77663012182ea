"""Building, authorising and persisting this server's own events.

One room at a time (a per-room lock): read the room's forward extremities and the state
the auth rules need, build the PDU (prev_events, auth_events, depth, hashes, signature,
event ID per the room version), check it against the auth rules of the room version,
and persist it in ONE write transaction that also moves the room's state (a new state
group holding only the delta), current state, memberships and forward extremities.
Only then do listeners (sync waiters, federation sender, pushers) hear of it.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import trio

from pocketserver.errors import Forbidden, MatrixError, NotFound, TooLarge
from pocketserver.protocol.auth_rules import AuthError, auth_types_for_event, check_auth
from pocketserver.protocol.canonical_json import CanonicalJsonError, encode_canonical_json
from pocketserver.protocol.events import Event, EventFormatError
from pocketserver.protocol.redaction import redact
from pocketserver.protocol.room_versions import RoomVersion
from pocketserver.protocol.signing import SigningKey, sign_event
from pocketserver.services.clock import Clock
from pocketserver.services.lru import LruCache
from pocketserver.services.notifier import Notifier
from pocketserver.storage import events as ev_store
from pocketserver.storage import state as state_store
from pocketserver.storage.database import Conn, Database
from pocketserver.storage.events import EventRecord, NewEvent
from pocketserver.storage.streams import next_stream_pos

log = logging.getLogger(__name__)

# How many forward extremities a new event points at.
MAX_PREV_EVENTS = 10
MAX_DEPTH = 2**63 - 1

PersistedHook = Callable[[EventRecord], Awaitable[None]]
# Called inside the write transaction that persists a local timeline event (the
# federation sender queues it there, so a crash cannot keep it from other servers).
PersistTxnHook = Callable[[Conn, Event], None]


@dataclass(frozen=True, slots=True)
class Persisted:
    record: EventRecord
    stream_pos: int


class EventPipeline:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        notifier: Notifier,
        server_name: str,
        signing_key: SigningKey,
        *,
        max_event_size: int = 65536,
        cache_size: int = 2000,
    ) -> None:
        self.db = db
        self.clock = clock
        self.notifier = notifier
        self.server_name = server_name
        self.signing_key = signing_key
        self.max_event_size = max_event_size
        self._locks: dict[str, trio.Lock] = {}
        self.cache: LruCache[str, EventRecord] = LruCache(cache_size)
        # Called after each persisted timeline event (push, federation, ...).
        self.on_persisted: list[PersistedHook] = []
        self.in_persist_txn: list[PersistTxnHook] = []

    def room_lock(self, room_id: str) -> trio.Lock:
        lock = self._locks.get(room_id)
        if lock is None:
            lock = self._locks[room_id] = trio.Lock()
        return lock

    # -- reading, cached ---------------------------------------------------------------

    async def get_event(self, event_id: str) -> EventRecord | None:
        rec = self.cache.get(event_id)
        if rec is not None:
            return rec
        rec = await self.db.read(ev_store.get_event, event_id)
        if rec is not None:
            self.cache.put(event_id, rec)
        return rec

    # -- building ----------------------------------------------------------------------

    async def create_room_event(
        self,
        room_id: str,
        rv: RoomVersion,
        sender: str,
        etype: str,
        content: Mapping[str, Any],
        *,
        state_key: str | None = None,
        txn_key: str | None = None,
        redacts: str | None = None,
        before_persist: Callable[[str], Awaitable[None]] | None = None,
        exchange: Callable[[Event], Awaitable[Event]] | None = None,
        origin_server_ts: int | None = None,
    ) -> Persisted:
        """Build, authorise and persist one event in an existing room.

        ``before_persist(event_id)`` runs once the event is built and authorised, before
        it is stored (still under the room's lock, so it must not send to this room); if
        it raises, the event is dropped. A room upgrade uses it to name the tombstone in
        the new room's create event before the tombstone is visible.

        ``exchange(event)`` likewise, and returns the event to persist instead (an
        invite of a remote user, countersigned by the invitee's server); if it raises,
        the event is dropped.
        """
        async with self.room_lock(room_id):
            pdu_base: dict[str, Any] = {
                "type": etype,
                "sender": sender,
                "content": dict(content),
                "room_id": room_id,
            }
            if state_key is not None:
                pdu_base["state_key"] = state_key
            if redacts is not None and not rv.updated_redaction_rules:
                pdu_base["redacts"] = redacts
            if origin_server_ts is not None:
                pdu_base["origin_server_ts"] = origin_server_ts
            prepared = await self.db.read(self._prepare, pdu_base, rv, txn_key)
            if isinstance(prepared, str):  # the transaction was sent before: its event
                rec = await self.get_event(prepared)
                assert rec is not None
                return Persisted(rec, rec.stream_pos or 0)
            event, auth_map = prepared
            try:
                check_auth(event, auth_map)
            except AuthError as e:
                raise Forbidden(str(e)) from None
            if before_persist is not None:
                await before_persist(event.event_id)
            if exchange is not None:
                event = await exchange(event)
            record = EventRecord(event, None, False, None, None, None, txn_key)
            pos, replaces = await self.db.write(self._persist_local, event, txn_key)
            record.stream_pos = pos
            record.replaces_event_id = replaces
        self.cache.put(event.event_id, record)
        self.notifier.notify(pos)
        await self._run_hooks(record)
        return Persisted(record, pos)

    async def create_create_event(
        self, rv: RoomVersion, sender: str, content: Mapping[str, Any], room_id: str | None
    ) -> Persisted:
        """The m.room.create event of a new room; the room row is made with it.

        ``room_id`` is chosen by the caller for rooms v1-v11 and derived from the event
        ID in v12.
        """
        pdu: dict[str, Any] = {
            "type": "m.room.create",
            "sender": sender,
            "state_key": "",
            "content": dict(content),
            "origin_server_ts": self.clock.time_ms(),
            "depth": 1,
            "prev_events": [],
            "auth_events": [],
        }
        if not rv.room_id_is_create_event_hash:
            assert room_id is not None
            pdu["room_id"] = room_id
        # In v12 the room ID is the create event's hash: one user creating two rooms
        # with the same content in the same millisecond would get the same room ID.
        # The later one moves its timestamp on by a millisecond until its ID is free.
        for _attempt in range(1000):
            event = self._finish(dict(pdu), rv)
            try:
                check_auth(event, {})
            except AuthError as e:
                raise Forbidden(str(e)) from None
            persisted = await self.db.write(self._persist_create, event)
            if persisted is not None:
                break
            if not rv.room_id_is_create_event_hash:
                raise MatrixError(400, "M_ROOM_IN_USE", "Room ID already in use")
            pdu["origin_server_ts"] += 1
        else:
            raise MatrixError(500, "M_UNKNOWN", "Could not choose a free room ID")
        pos, _ = persisted
        record = EventRecord(event, pos, False, None, None, None, None)
        self.cache.put(event.event_id, record)
        self.notifier.notify(pos)
        await self._run_hooks(record)
        return Persisted(record, pos)

    def _finish(self, pdu: dict[str, Any], rv: RoomVersion) -> Event:
        if not rv.updated_redaction_rules:
            pdu["origin"] = self.server_name
        if rv.uses_event_id_in_pdu:
            pdu["event_id"] = f"${secrets.token_urlsafe(18)}:{self.server_name}"
        try:
            signed = sign_event(pdu, self.server_name, self.signing_key, rv)
            size = len(encode_canonical_json(signed))
        except CanonicalJsonError as e:
            raise MatrixError(400, "M_BAD_JSON", f"Event is not canonical JSON: {e}") from None
        if size > self.max_event_size:
            raise TooLarge(f"Event is {size} bytes; the limit is {self.max_event_size}")
        try:
            return Event.from_pdu(signed, rv)
        except EventFormatError as e:
            raise MatrixError(400, "M_BAD_JSON", str(e)) from None

    def _prepare(
        self, conn: Conn, pdu: dict[str, Any], rv: RoomVersion, txn_key: str | None = None
    ) -> tuple[Event, dict[tuple[str, str], Event]] | str:
        """Fill prev_events/auth_events/depth from the room (read transaction); or, when
        ``txn_key`` was used before, the ID of the event it made."""
        if txn_key is not None:
            existing = ev_store.get_txn_event_id(conn, txn_key)
            if existing is not None:
                return existing
        room_id = pdu["room_id"]
        extremities = ev_store.forward_extremities(conn, room_id)
        if not extremities:
            raise NotFound("Unknown room")
        prevs = extremities[:MAX_PREV_EVENTS]
        depth = min(max(d for _, d in prevs) + 1, MAX_DEPTH)
        # Which state the auth rules need for this event.
        probe = Event.from_pdu(
            {**pdu, "prev_events": [], "auth_events": [], "depth": depth}, rv, event_id="$probe"
        )
        wanted = auth_types_for_event(probe, rv)
        if not rv.room_id_is_create_event_hash:
            wanted = set(wanted) | {("m.room.create", "")}
        state_ids = state_store.get_current_state_ids(conn, room_id, wanted)
        create_id = None
        if rv.room_id_is_create_event_hash:
            create_id = "$" + room_id[1:]
            state_ids.pop(("m.room.create", ""), None)
        records = ev_store.get_events(conn, list(state_ids.values()) + ([create_id] if create_id else []))
        auth_map = {k: records[eid].event for k, eid in state_ids.items() if eid in records}
        if create_id is not None and create_id in records:
            # v12: not listed in auth_events, but the rules read it.
            auth_map[("m.room.create", "")] = records[create_id].event
        auth_ids = sorted(state_ids.values())
        pdu = dict(pdu)
        # An application service's ``ts=`` ("Timestamp massaging") is given in the base.
        if not isinstance(pdu.get("origin_server_ts"), int):
            pdu["origin_server_ts"] = self.clock.time_ms()
        pdu["depth"] = depth
        if rv.uses_event_id_in_pdu:
            prev_recs = ev_store.get_events(conn, [e for e, _ in prevs])
            pdu["prev_events"] = [[e, prev_recs[e].event.pdu.get("hashes", {})] for e, _ in prevs]
            pdu["auth_events"] = [[e, records[e].event.pdu.get("hashes", {})] for e in auth_ids]
        else:
            pdu["prev_events"] = [e for e, _ in prevs]
            pdu["auth_events"] = auth_ids
        return self._finish(pdu, rv), auth_map

    # -- persisting (write transactions) --------------------------------------------------

    def _persist_create(self, conn: Conn, event: Event) -> tuple[int, None] | None:
        """Store a new room's create event; None (nothing written) if the room ID is taken."""
        if ev_store.room_nid(conn, event.room_id) is not None:
            return None
        creator = event.sender
        ev_store.insert_room(conn, event.room_id, event.room_version.identifier, creator, self.clock.time_ms())
        pos = next_stream_pos(conn)
        ev_store.insert_event(conn, NewEvent(event, pos), self.clock.time_ms())
        group = state_store.create_state_group(conn, event.room_id, None, {event.state_tuple: event.event_id})
        state_store.set_event_state(conn, event.event_id, group, None)
        state_store.set_current_state(conn, event.room_id, group, {event.state_tuple: event.event_id})
        ev_store.set_forward_extremities(conn, event.room_id, event.event_id)
        return pos, None

    def _persist_local(self, conn: Conn, event: Event, txn_key: str | None) -> tuple[int, str | None]:
        now = self.clock.time_ms()
        pos = next_stream_pos(conn)
        ev_store.insert_event(conn, NewEvent(event, pos, txn_key=txn_key), now)
        group = state_store.current_state_group(conn, event.room_id)
        replaces: str | None = None
        if event.state_key is not None:
            key = event.state_tuple
            replaces = state_store.get_current_state_ids(conn, event.room_id, [key]).get(key)
            group = state_store.create_state_group(conn, event.room_id, group, {key: event.event_id})
            state_store.set_event_state(conn, event.event_id, group, replaces)
            state_store.set_current_state(conn, event.room_id, group, {key: event.event_id})
            if event.type == "m.room.member" and event.membership is not None:
                state_store.set_membership(
                    conn,
                    event.room_id,
                    event.state_key,
                    event.membership,
                    event.event_id,
                    pos,
                    event.state_key.endswith(":" + self.server_name),
                )
        else:
            state_store.set_event_state(conn, event.event_id, group, None)
        ev_store.set_forward_extremities(conn, event.room_id, event.event_id)
        if event.type == "m.room.redaction":
            self._apply_redaction(conn, event)
        for hook in self.in_persist_txn:
            hook(conn, event)
        return pos, replaces

    def _apply_redaction(self, conn: Conn, redaction: Event) -> None:
        target_id = redaction.redacts
        if target_id is None:
            return
        target = ev_store.get_event(conn, target_id)
        if target is None or target.event.room_id != redaction.room_id:
            return
        if target.redacted_by is not None:
            return
        redacted = redact(target.event.pdu, target.event.room_version)
        ev_store.apply_redaction(conn, target_id, redaction.event_id, redacted)
        self.cache.pop(target_id)

    async def _run_hooks(self, record: EventRecord) -> None:
        for hook in self.on_persisted:
            try:
                await hook(record)
            except Exception:  # a hook's failure must not fail the send that succeeded
                log.exception("event hook failed for %s", record.event.event_id)
