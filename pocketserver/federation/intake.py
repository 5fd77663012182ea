"""The PDU intake: events other servers send into rooms this server is in.

Every PDU goes through the checks of "Checks performed on receipt of a PDU"
(server-server-api.md; the rules themselves are :mod:`pocketserver.protocol.pdu_checks`):

1. format for the room version, else dropped;
2. signatures of every server that must sign it, else dropped;
3. content hash, else the redacted copy is used;
4. its own auth events (fetched with ``/event_auth`` when missing, stored as outliers),
   else rejected;
5. the state before it: the states after its prev_events, resolved with the room
   version's algorithm when they differ. A prev_event this server lacks is fetched with
   ``/get_missing_events`` (at most :attr:`PduIntake.max_gap` events, from the room's
   forward extremities down to their depth); a pushed event whose prev_events that
   does not bring is refused (not stored). The oldest events it brings may lack their
   own prev_events: the state at those comes from ``/state_ids`` and ``/event``
   (stored as outliers). Fails: rejected.
6. the room's current state, else soft failed: stored, with its state, but neither
   shown to clients nor made a forward extremity.

Persisting is one write transaction per event (storage: the event, its state group,
current state, memberships, forward and backward extremities), under the room's lock
that the local event pipeline also takes, so local and remote events never interleave
half-way. Sync waiters are woken through the notifier.

Memory: state maps are of event IDs; events are read from the store as the checks and
state resolution need them (a per-call dict, dropped afterwards), never a whole room's
events at once.

What it must never know: how requests are signed or routed (a
:class:`~pocketserver.federation.interfaces.FederationRequester`), where keys come from
(a :class:`~pocketserver.federation.interfaces.KeyLookup`), or HTTP.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Awaitable, Callable, Container, Iterable, Mapping
from typing import Any

import nacl.signing
import trio

from pocketserver.federation.interfaces import (
    FederationError,
    FederationRequester,
    FederationUnreachable,
    KeyLookup,
)
from pocketserver.protocol import pdu_checks as pc
from pocketserver.protocol.auth_rules import CREATE, POWER_LEVELS, auth_types_for_event
from pocketserver.protocol.events import Event, StateKey
from pocketserver.protocol.power_levels import PowerLevels
from pocketserver.protocol.redaction import redact
from pocketserver.protocol.room_versions import RoomVersion
from pocketserver.protocol.signing import SigningKey
from pocketserver.protocol.state_res import StateResolutionError, resolve_state
from pocketserver.services.clock import Clock
from pocketserver.services.notifier import Notifier
from pocketserver.storage import event_graph as graph
from pocketserver.storage import events as ev_store
from pocketserver.storage import state as state_store
from pocketserver.storage.database import Conn, Database
from pocketserver.storage.events import EventRecord, NewEvent, RoomInfo
from pocketserver.storage.streams import next_stream_pos

log = logging.getLogger(__name__)

StateMap = dict[StateKey, str]
PersistedHook = Callable[[EventRecord], Awaitable[None]]
# (rejected reason, soft failed, the state before the event (all of it, or only the keys
# the checks read when it equals a stored state group), that group)
Verdict = tuple[str | None, bool, StateMap | None, int | None]

# Bounds on what one PDU may make this server fetch.
MAX_GAP_EVENTS = 20
MAX_AUTH_EVENTS = 10  # auth events selection names at most a handful
MAX_STATE_FETCHES = 5  # prev_events whose state is asked for with /state_ids
FETCH_CONCURRENCY = 8  # /event requests in flight at once
MAX_STATE_IDS = 100_000
FETCH_TIMEOUT_S = 30.0


def _q(s: str) -> str:
    return urllib.parse.quote(s, safe="")


class IntakeError(Exception):
    """The PDU was dropped (not stored); the text goes into the transaction's answer."""


class NonCanonicalPdu(IntakeError):
    """Step 1 failed as the PDU is not canonical JSON for its room version (a float,
    from v6): endpoints that take one event answer 400 M_BAD_JSON (rooms/v6)."""


class BadlySigned(IntakeError):
    """Step 2 failed: a server whose signature the event needs did not sign it, or its
    signature does not verify. Endpoints that take one event from its sender's server
    answer 403 M_FORBIDDEN: the event is not that server's to send."""


class PduIntake:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        notifier: Notifier,
        requester: FederationRequester,
        keys: KeyLookup,
        server_name: str,
        signing_key: SigningKey,
        *,
        room_lock: Callable[[str], trio.Lock] | None = None,
        forget_cached: Callable[[str], Any] | None = None,
        max_gap: int = MAX_GAP_EVENTS,
    ) -> None:
        self.db = db
        self.clock = clock
        self.notifier = notifier
        self.requester = requester
        self.keys = keys
        self.server_name = server_name
        self.signing_key = signing_key
        self.max_gap = max_gap
        self._locks: dict[str, trio.Lock] = {}
        self._room_lock = room_lock or self._own_lock
        # The local pipeline's event cache: an event this intake redacts is dropped from it.
        self._forget_cached = forget_cached
        # Called after each event that entered a room's timeline (push, ...).
        self.on_persisted: list[PersistedHook] = []
        # Called inside the transaction that puts an event into a room's timeline.
        self.in_persist_txn: list[Callable[[Conn, Event], None]] = []

    def _own_lock(self, room_id: str) -> trio.Lock:
        lock = self._locks.get(room_id)
        if lock is None:
            lock = self._locks[room_id] = trio.Lock()
        return lock

    # -- entry points --------------------------------------------------------------------

    async def receive_pdu(self, origin: str, pdu_json: Any, info: RoomInfo | None = None) -> str | None:
        """Check and store one PDU of a transaction. None when accepted (which includes
        rejected and soft-failed events: the sender did nothing wrong by sending them),
        else the error for the transaction's per-PDU result. ``info``: the room, when
        the caller has read it already."""
        if not isinstance(pdu_json, dict):
            return "PDU is not an object"
        room_id = pdu_json.get("room_id")
        if not isinstance(room_id, str):
            return "PDU has no room_id"
        if info is None or info.room_id != room_id:
            info = await self.db.read(ev_store.get_room, room_id)
        if info is None or not info.has_state:
            return f"this server is not in room {room_id}"
        try:
            event = await self.check_event(pdu_json, info.room_version)
        except IntakeError as e:
            return str(e)
        async with self._room_lock(room_id):
            try:
                await self._handle(origin, info, event, fetch_gaps=True)
            except IntakeError as e:
                return str(e)
        return None

    async def accept(self, origin: str, info: RoomInfo, event: Event) -> EventRecord | None:
        """An event already through steps 1-3 that a server handed over directly
        (send_join, send_leave, send_knock): steps 4-6 and persisting under the room's
        lock, with no gap filling (it must follow events this server has). The stored
        record (check ``rejected_reason`` / ``stream_pos``). Raises :class:`IntakeError`."""
        async with self._room_lock(info.room_id):
            known = (await self.db.read(graph.known_events, [event.event_id])).get(event.event_id)
            if known is None or known.outlier:
                await self._handle(origin, info, event, fetch_gaps=False)
        return await self.db.read(ev_store.get_event, event.event_id)

    async def check_event(self, pdu_json: Any, rv: RoomVersion) -> Event:
        """Steps 1-3: format, signatures, hashes. Raises :class:`IntakeError`."""
        try:
            event = pc.check_format(pdu_json, rv)
        except pc.NonCanonicalJsonError as e:
            raise NonCanonicalPdu(f"invalid event: {e}") from None
        except pc.PduFormatError as e:
            raise IntakeError(f"invalid event: {e}") from None
        await self.verify_signatures(event)
        used, _ok = pc.check_hashes(event)
        return used

    async def verify_keys_of(
        self, server: str, key_ids: list[str], event: Event
    ) -> dict[str, dict[str, nacl.signing.VerifyKey]]:
        """``server``'s verify keys among ``key_ids`` valid when ``event`` was sent."""
        if server == self.server_name:
            k = self.signing_key
            return {server: {k.key_id: k.verify_key} if k.key_id in key_ids else {}}
        at = event.origin_server_ts if event.room_version.enforce_key_validity else 0
        try:
            raw = await self.keys.verify_keys(server, key_ids, minimum_valid_until_ts=at)
        except (FederationError, FederationUnreachable) as e:
            raise IntakeError(f"could not get the keys of {server}: {e}") from None
        out: dict[str, nacl.signing.VerifyKey] = {}
        for kid, vk in raw.items():
            try:
                out[kid] = nacl.signing.VerifyKey(vk)
            except (ValueError, TypeError):
                continue
        return {server: out}

    async def verify_signatures(self, event: Event) -> None:
        rv = event.room_version
        sigs = event.pdu.get("signatures") or {}
        keys: dict[str, dict[str, nacl.signing.VerifyKey]] = {}
        for server in pc.required_signers(event):
            mine = sigs.get(server)
            key_ids = list(mine) if isinstance(mine, dict) else []
            if not key_ids:
                raise BadlySigned(f"event is not signed by {server}")
            if server == self.server_name:
                k = self.signing_key
                keys[server] = {k.key_id: k.verify_key} if k.key_id in key_ids else {}
                continue
            at = event.origin_server_ts if rv.enforce_key_validity else 0
            try:
                raw = await self.keys.verify_keys(server, key_ids, minimum_valid_until_ts=at)
            except (FederationError, FederationUnreachable) as e:
                raise IntakeError(f"could not get the keys of {server}: {e}") from None
            keys[server] = {}
            for kid, vk in raw.items():
                try:
                    keys[server][kid] = nacl.signing.VerifyKey(vk)
                except (ValueError, TypeError):
                    continue
        try:
            pc.verify_signatures(event, keys)
        except pc.SignatureError as e:
            raise BadlySigned(f"signature check failed: {e}") from None

    # -- one event, under the room's lock ----------------------------------------------

    async def _handle(self, origin: str, info: RoomInfo, event: Event, *, fetch_gaps: bool) -> None:
        rv = info.room_version
        # The usual case in one read: nothing missing, the checks decided at once.
        first = await self.db.read(self._try_decide, event, rv)
        if first is None:
            return  # stored already
        if isinstance(first, tuple):
            await self._store(origin, event, rv, first, [])
            return
        known = first
        # 4. Its auth events: fetched as outliers if any is unknown.
        if any(a not in known for a in event.auth_event_ids):
            await self._fetch_auth_chain(origin, info, event)
            known = await self.db.read(graph.known_events, event.auth_event_ids)
            lacking = [a for a in event.auth_event_ids if a not in known]
            if lacking:  # no /event_auth answer: the auth events one by one
                fetched = [await self._fetch_event(origin, info.room_id, a) for a in lacking[:MAX_AUTH_EVENTS]]
                await self.store_outliers(info, [p for p in fetched if p is not None])
            known = await self.db.read(
                graph.known_events, list(event.auth_event_ids) + list(event.prev_event_ids)
            )
            if any(a not in known for a in event.auth_event_ids):
                raise IntakeError("the event's auth events could not be fetched")
        # 5. The state before it: missing prev_events first.
        missing = [p for p in event.prev_event_ids if not (p in known and known[p].has_state)]
        if missing and fetch_gaps:
            await self._fill_gap(origin, info, event)
            known = await self.db.read(graph.known_events, event.prev_event_ids)
            missing = [p for p in event.prev_event_ids if not (p in known and known[p].has_state)]
            if missing:
                # A pushed event whose sender will not hand over its prev_events is
                # refused: taking the state at them on the sender's word could make it
                # the room's only forward extremity on state nobody can check. (Events
                # pulled to fill a gap may still have their state fetched below.)
                raise IntakeError(f"{len(missing)} prev_events were not divulged by {origin}")
        if len(missing) > MAX_STATE_FETCHES:
            raise IntakeError(f"{len(missing)} prev_events are unknown here; at most {MAX_STATE_FETCHES} are fetched")
        fetched_states: list[StateMap] = []
        for p in missing:
            fetched_states.append(await self._state_after_remote(origin, info, p))
        verdict = await self.db.read(self._decide, event, rv, missing, fetched_states)
        await self._store(origin, event, rv, verdict, missing)

    def _try_decide(self, conn: Conn, event: Event, rv: RoomVersion) -> Verdict | dict[str, graph.Known] | None:
        """None if the event is in the graph already; its verdict when its auth events
        and the state at its prev_events are all known here; else what is known."""
        known = graph.known_events(conn, [event.event_id, *event.auth_event_ids, *event.prev_event_ids])
        mine = known.get(event.event_id)
        if mine is not None and not mine.outlier:
            return None
        if all(a in known for a in event.auth_event_ids) and all(
            p in known and known[p].has_state for p in event.prev_event_ids
        ):
            return self._decide(conn, event, rv, [], [])
        return known

    async def _store(
        self, origin: str, event: Event, rv: RoomVersion, verdict: Verdict, missing: list[str]
    ) -> None:
        rejected, soft_failed, before, before_group = verdict
        if rejected is not None:
            log.info("rejected %s from %s: %s", event.event_id, origin, rejected)
        elif soft_failed:
            log.info("soft-failed %s from %s", event.event_id, origin)
        pos = await self.db.write(
            self._persist, event, rv, rejected, soft_failed, before, before_group, missing
        )
        if self._forget_cached is not None:
            self._forget_cached(event.event_id)  # an outlier read before is one no more
        if pos is not None:
            self.notifier.notify(pos)
            if self._forget_cached is not None and event.redacts is not None:
                self._forget_cached(event.redacts)
            record = EventRecord(event, pos, False, None, None, None, None)
            for hook in self.on_persisted:
                try:
                    await hook(record)
                except Exception:
                    log.exception("intake hook failed for %s", event.event_id)

    def _decide(
        self,
        conn: Conn,
        event: Event,
        rv: RoomVersion,
        missing: list[str],
        fetched_states: list[StateMap],
    ) -> Verdict:
        """Steps 4-6 (read transaction): (rejected reason, soft failed, the state before
        the event when it had to be computed, or the state group it equals)."""
        cache: dict[str, Event | None] = {}

        def get(eid: str) -> Event | None:
            if eid not in cache:
                rec = ev_store.get_event(conn, eid)
                cache[eid] = _with_rejection(rec) if rec is not None else None
            return cache[eid]

        create = get("$" + event.room_id[1:]) if rv.room_id_is_create_event_hash else None
        # 4. Against its own auth events.
        auth_events = [e for e in (get(a) for a in event.auth_event_ids) if e is not None]
        rejected = pc.passes(pc.check_auth_events, event, auth_events, create)
        # 5. The state before it. When every prev_event has the same state group (one
        # prev, or several messages on one state) it is that group, and only the keys the
        # checks read are loaded; otherwise the states are resolved.
        wanted = auth_types_for_event(event, rv) | {CREATE}
        if event.state_key is not None:
            wanted.add(event.state_tuple)
        known_prevs = [p for p in event.prev_event_ids if p not in missing]
        groups = {state_store.event_state_group(conn, p) for p in known_prevs}
        before_group: int | None = None
        before: StateMap
        only = next(iter(groups)) if len(groups) == 1 else None
        if only is not None and not fetched_states:
            before_group = only
            before = state_store.load_state_group(conn, only, lambda t, k: (t, k) in wanted)
        else:
            sets: list[StateMap] = []
            for p in known_prevs:
                s = state_store.state_after_event(conn, p)
                if s is not None:
                    sets.append(s)
            sets.extend(fetched_states)
            try:
                before = resolve_state(rv, sets, get) if sets else {}
            except StateResolutionError as e:
                raise IntakeError(f"could not resolve the state before the event: {e}") from None
        if rejected is None and event.type != "m.room.create":
            state_events = {
                k: ev_
                for k in wanted
                if k in before and (ev_ := get(before[k])) is not None
            }
            rejected = pc.passes(pc.check_state_before, event, state_events, create)
        # 6. Against the current state. An event on every forward extremity is checked
        # against the state before it (step 5) already. Otherwise, as the state of the
        # room once the event is an extremity too: the current state and the state
        # before the event, resolved (a join that came through a gap counts).
        soft_failed = False
        extremities = {e for e, _ in ev_store.forward_extremities(conn, event.room_id)}
        current_group = state_store.current_state_group(conn, event.room_id)
        if rejected is None and not extremities <= set(event.prev_event_ids) and current_group != before_group:
            current_ids = state_store.get_current_state_ids(conn, event.room_id)
            full_before = before if before_group is None else state_store.load_state_group(conn, before_group)
            try:
                resolved = resolve_state(rv, [current_ids, full_before], get)
            except StateResolutionError:
                resolved = current_ids
            del current_ids, full_before
            current = {k: ev_ for k in wanted if k in resolved and (ev_ := get(resolved[k])) is not None}
            soft_failed = pc.passes(pc.check_current_state, event, current, create) is not None
        if rejected is None and not soft_failed and event.redacts is not None:
            # A redaction naming an event of another room passes the auth rules (they
            # do not look at the target) but redacts nothing and means nothing here:
            # kept out of clients' timelines, as a soft-failed event is.
            target = get(event.redacts)
            soft_failed = target is not None and target.room_id != event.room_id
        return rejected, soft_failed, before, before_group

    # -- persisting (one write transaction) ----------------------------------------------

    def _persist(
        self,
        conn: Conn,
        event: Event,
        rv: RoomVersion,
        rejected: str | None,
        soft_failed: bool,
        before: StateMap | None,
        before_group: int | None,
        missing_prevs: list[str],
    ) -> int | None:
        """Store the event with its state; the stream position when it entered the
        timeline, else None."""
        room_id = event.room_id
        now = self.clock.time_ms()
        known = graph.known_events(conn, [event.event_id]).get(event.event_id)
        if known is not None and not known.outlier:
            return None  # stored meanwhile
        timeline = rejected is None and not soft_failed
        pos = next_stream_pos(conn) if timeline else None
        if known is None:
            ev_store.insert_event(
                conn, NewEvent(event, pos, rejected_reason=rejected, received_ts=now), now
            )
        else:
            graph.promote_outlier(conn, event.event_id, pos, rejected)
        state_before = before or {}
        if before_group is None:
            before_group = self._group_for(conn, room_id, event, state_before)
        is_state = event.state_key is not None and rejected is None
        after_group = before_group
        replaces: str | None = None
        if is_state:
            key = event.state_tuple
            replaces = state_before.get(key)
            after_group = state_store.create_state_group(conn, room_id, before_group, {key: event.event_id})
        state_store.set_event_state(conn, event.event_id, after_group, replaces)
        if not timeline:
            return None
        assert pos is not None
        ev_store.set_forward_extremities(conn, room_id, event.event_id)
        graph.update_backward_extremities(conn, room_id, event.event_id, missing_prevs)
        self._update_current_state(conn, event, rv, after_group, before_group, pos)
        if event.type == "m.room.redaction":
            self._apply_redaction(conn, event, rv)
        for hook in self.in_persist_txn:
            hook(conn, event)
        return pos

    def _group_for(self, conn: Conn, room_id: str, event: Event, state: StateMap) -> int:
        """A state group holding ``state``: a delta on a prev_event's group when there is
        one, else a snapshot."""
        parent: int | None = None
        for p in event.prev_event_ids:
            parent = state_store.event_state_group(conn, p)
            if parent is not None:
                break
        if parent is None:
            return state_store.create_state_group(conn, room_id, None, state)
        base = state_store.load_state_group(conn, parent)
        changes: dict[StateKey, str | None] = {k: v for k, v in state.items() if base.get(k) != v}
        changes.update({k: None for k in base if k not in state})
        if not changes:
            return parent
        return state_store.create_state_group(conn, room_id, parent, changes)

    def _update_current_state(
        self, conn: Conn, event: Event, rv: RoomVersion, after_group: int, before_group: int, pos: int
    ) -> None:
        room_id = event.room_id
        old_group = state_store.current_state_group(conn, room_id)
        extremities = [e for e, _ in ev_store.forward_extremities(conn, room_id)]
        changes: dict[StateKey, str | None]
        if old_group == before_group:
            # The usual case: the event extends the current state.
            if after_group == before_group:
                return
            assert event.state_key is not None
            changes = {event.state_tuple: event.event_id}
            new_group = after_group
        else:
            old = state_store.get_current_state_ids(conn, room_id)
            after = state_store.load_state_group(conn, after_group)
            if extremities == [event.event_id]:
                new = after
                new_group = after_group
            else:
                cache: dict[str, Event | None] = {}

                def get(eid: str) -> Event | None:
                    if eid not in cache:
                        rec = ev_store.get_event(conn, eid)
                        cache[eid] = _with_rejection(rec) if rec is not None else None
                    return cache[eid]

                try:
                    new = resolve_state(rv, [old, after], get)
                except StateResolutionError:
                    log.warning("current state of %s not resolved after %s", room_id, event.event_id)
                    return
                new_group = -1
            changes = {k: v for k, v in new.items() if old.get(k) != v}
            changes.update({k: None for k in old if k not in new})
            if new_group == -1:
                if old_group is None:
                    new_group = state_store.create_state_group(conn, room_id, None, new)
                else:
                    new_group = state_store.create_state_group(conn, room_id, old_group, changes)
            del old, after
        state_store.set_current_state(conn, room_id, new_group, changes)
        for (etype, skey), eid in changes.items():
            if etype != "m.room.member" or eid is None:
                continue
            rec = ev_store.get_event(conn, eid)
            membership = rec.event.membership if rec is not None else None
            if membership is not None:
                state_store.set_membership(
                    conn, room_id, skey, membership, eid, pos, skey.endswith(":" + self.server_name)
                )

    def _apply_redaction(self, conn: Conn, redaction: Event, rv: RoomVersion) -> None:
        """Redact the target if the redaction may (v3+ "Handling redactions": the same
        server as the target's sender, or the redact level in the current state)."""
        target_id = redaction.redacts
        if target_id is None:
            return
        target = ev_store.get_event(conn, target_id)
        if target is None or target.event.room_id != redaction.room_id or target.redacted_by is not None:
            return
        if target.event.origin != redaction.origin:
            ids = state_store.get_current_state_ids(
                conn, redaction.room_id, [CREATE, POWER_LEVELS]
            )
            recs = ev_store.get_events(conn, ids.values())
            create = recs.get(ids.get(CREATE, ""))
            if create is None and rv.room_id_is_create_event_hash:
                create = ev_store.get_event(conn, "$" + redaction.room_id[1:])
            plrec = recs.get(ids.get(POWER_LEVELS, ""))
            pl = PowerLevels.from_events(
                create.event if create else None, plrec.event if plrec else None, rv
            )
            if pl.user_level(redaction.sender) < pl.redact:
                return
        ev_store.apply_redaction(conn, target_id, redaction.event_id, redact(target.event.pdu, rv))

    # -- fetching what is missing ---------------------------------------------------------

    async def _fetch_auth_chain(self, origin: str, info: RoomInfo, event: Event) -> None:
        path = f"/_matrix/federation/v1/event_auth/{_q(info.room_id)}/{_q(event.event_id)}"
        try:
            body = await self.requester.get_json(origin, path, timeout_s=FETCH_TIMEOUT_S)
        except (FederationError, FederationUnreachable) as e:
            log.info("event_auth from %s failed: %s", origin, e)
            return
        chain = body.get("auth_chain") if isinstance(body, dict) else None
        if isinstance(chain, list):
            await self.store_outliers(info, chain[:MAX_STATE_IDS])

    async def _fill_gap(self, origin: str, info: RoomInfo, event: Event) -> None:
        """``/get_missing_events`` from the room's forward extremities to the event;
        each event it brings is handled in order (their own gaps through /state_ids)."""
        extremities = await self.db.read(ev_store.forward_extremities, info.room_id)
        min_depth = min((d for _, d in extremities), default=0)
        path = f"/_matrix/federation/v1/get_missing_events/{_q(info.room_id)}"
        body = {
            "earliest_events": [e for e, _ in extremities],
            "latest_events": [event.event_id],
            "limit": self.max_gap,
            "min_depth": min_depth,
        }
        try:
            answer = await self.requester.post_json(origin, path, body, timeout_s=FETCH_TIMEOUT_S)
        except (FederationError, FederationUnreachable) as e:
            log.info("get_missing_events from %s failed: %s", origin, e)
            return
        pdus = answer.get("events") if isinstance(answer, dict) else None
        if not isinstance(pdus, list):
            return
        events: list[Event] = []
        for pdu in pdus[: self.max_gap]:
            try:
                ev = await self.check_event(pdu, info.room_version)
            except IntakeError as e:
                log.info("missing event from %s dropped: %s", origin, e)
                continue
            if ev.room_id == info.room_id and ev.event_id != event.event_id:
                events.append(ev)
        events.sort(key=lambda e: (e.depth, e.origin_server_ts))
        log.info("get_missing_events from %s: %d events before %s", origin, len(events), event.event_id)
        for ev in events:
            k = (await self.db.read(graph.known_events, [ev.event_id])).get(ev.event_id)
            if k is not None and not k.outlier:
                continue
            try:
                await self._handle(origin, info, ev, fetch_gaps=False)
            except IntakeError as e:
                log.info("missing event %s not stored: %s", ev.event_id, e)

    async def _state_after_remote(self, origin: str, info: RoomInfo, prev_id: str) -> StateMap:
        """The state after an event this server lacks: ``/state_ids`` at it, the events
        of that state and their auth chain fetched by ``/event`` as outliers, and the
        event itself."""
        room_id = info.room_id
        path = f"/_matrix/federation/v1/state_ids/{_q(room_id)}"
        try:
            body = await self.requester.get_json(
                origin, path, {"event_id": prev_id}, timeout_s=FETCH_TIMEOUT_S
            )
        except (FederationError, FederationUnreachable) as e:
            raise IntakeError(f"could not get the state at {prev_id}: {e}") from None
        pdu_ids = body.get("pdu_ids") if isinstance(body, dict) else None
        chain_ids = body.get("auth_chain_ids") if isinstance(body, dict) else None
        if not (
            isinstance(pdu_ids, list)
            and isinstance(chain_ids, list)
            and all(isinstance(i, str) for i in pdu_ids + chain_ids)
            and len(pdu_ids) + len(chain_ids) <= MAX_STATE_IDS
        ):
            raise IntakeError(f"bad /state_ids answer for {prev_id}")
        wanted = list(dict.fromkeys([*chain_ids, *pdu_ids, prev_id]))
        known = await self.db.read(graph.known_events, wanted)
        fetched: list[Any] = []
        todo = iter([eid for eid in wanted if eid not in known])

        async def worker() -> None:  # a few workers, not a task per event
            for eid in todo:
                pdu = await self._fetch_event(origin, room_id, eid)
                if pdu is not None:
                    fetched.append(pdu)

        async with trio.open_nursery() as nursery:
            for _ in range(FETCH_CONCURRENCY):
                nursery.start_soon(worker)
        if fetched:
            await self.store_outliers(info, fetched)

        def read(conn: Conn) -> StateMap:
            recs = ev_store.get_events(conn, [*pdu_ids, prev_id])
            state: StateMap = {}
            for eid in pdu_ids:
                rec = recs.get(eid)
                if rec is None or rec.event.state_key is None:
                    raise IntakeError(f"the state at {prev_id} names {eid}, which could not be fetched")
                if rec.rejected_reason is None:  # what this server rejected is no state here
                    state[rec.event.state_tuple] = eid
            prev = recs.get(prev_id)
            if prev is None:
                raise IntakeError(f"could not fetch {prev_id}")
            if prev.event.state_key is not None and prev.rejected_reason is None:
                state[prev.event.state_tuple] = prev_id
            return state

        return await self.db.read(read)

    async def _fetch_event(self, origin: str, room_id: str, event_id: str) -> Any | None:
        try:
            body = await self.requester.get_json(
                origin, f"/_matrix/federation/v1/event/{_q(event_id)}", timeout_s=FETCH_TIMEOUT_S
            )
        except (FederationError, FederationUnreachable) as e:
            log.info("/event/%s from %s failed: %s", event_id, origin, e)
            return None
        pdus = body.get("pdus") if isinstance(body, dict) else None
        if isinstance(pdus, list) and len(pdus) == 1:
            return pdus[0]
        return None

    async def store_outliers(self, info: RoomInfo, pdus: Iterable[Any]) -> list[str]:
        """Check events outside the timeline (auth chains, state) and store them as
        outliers: dropped when malformed or badly signed, rejected when their own auth
        events do not allow them. Returns the IDs stored."""
        checked: dict[str, Event] = {}
        for pdu in pdus:
            try:
                ev = await self.check_event(pdu, info.room_version)
            except IntakeError as e:
                log.info("outlier dropped: %s", e)
                continue
            if ev.room_id == info.room_id:
                checked[ev.event_id] = ev
        if not checked:
            return []
        return await self.db.write(self._persist_outliers, info, checked)

    def _persist_outliers(self, conn: Conn, info: RoomInfo, checked: Mapping[str, Event]) -> list[str]:
        return list(self.persist_outliers(conn, info.room_version, info.room_id, checked))

    def persist_outliers(
        self,
        conn: Conn,
        rv: RoomVersion,
        room_id: str,
        checked: Mapping[str, Event],
        carry: tuple[dict[str, Event], Container[str], int] | None = None,
    ) -> dict[str, str | None]:
        """Store checked events (steps 1-3 done) as outliers inside the caller's write
        transaction, each against its own auth events (step 4): {event ID: rejected
        reason or None} of those stored now (known ones are skipped).

        ``carry``, for a caller storing many events in several calls (a big join):
        ``(kept, wanted, cap)``; the events stored here whose IDs are in ``wanted`` are
        added to ``kept`` (as the auth rules must see them, up to ``cap``), and auth
        events are looked up there before the database."""
        now = self.clock.time_ms()
        known = graph.known_events(conn, checked)
        batch: dict[str, Event] = {}
        kept, wanted, cap = carry if carry is not None else ({}, (), 0)

        def get(eid: str) -> Event | None:
            if eid in batch:
                return batch[eid]
            if eid in kept:
                return kept[eid]
            rec = ev_store.get_event(conn, eid)
            return _with_rejection(rec) if rec is not None else None

        stored: dict[str, str | None] = {}
        # Auth events come before the events they authorise: by depth (events whose
        # auth events are nowhere are stored as rejected).
        order = sorted(checked.values(), key=lambda e: (e.depth, e.origin_server_ts))
        create_id = "$" + room_id[1:] if rv.room_id_is_create_event_hash else None
        for ev in order:
            if ev.event_id in known:
                continue
            auth = [get(a) for a in ev.auth_event_ids]
            create = get(create_id) if create_id is not None else None
            if any(a is None for a in auth) or (create_id is not None and create is None and ev.type != "m.room.create"):
                reason: str | None = "auth events unknown"
            else:
                reason = pc.passes(pc.check_auth_events, ev, [a for a in auth if a is not None], create)
            ev_store.insert_event(
                conn, NewEvent(ev, None, outlier=True, rejected_reason=reason, received_ts=now), now
            )
            if reason is not None:
                ev = _rejected_copy(ev, reason)
            batch[ev.event_id] = ev
            stored[ev.event_id] = reason
            if ev.event_id in wanted and len(kept) < cap:
                kept[ev.event_id] = ev
        return stored


def _with_rejection(rec: EventRecord) -> Event:
    """The event as the auth rules must see it: marked when it was rejected."""
    if rec.rejected_reason is None:
        return rec.event
    return _rejected_copy(rec.event, rec.rejected_reason)


def _rejected_copy(ev: Event, reason: str) -> Event:
    # Decoded events are shared through the storage cache: mark a copy, never the original.
    copy = Event.from_stored(ev.pdu, ev.room_version, ev.event_id)
    copy.rejected_reason = reason
    return copy
