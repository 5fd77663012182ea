"""Application services: loading their registrations, pushing events to them, asking them.

Spec: shared/spec/content/application-service-api.md ("Pushing events", "Pushing
ephemeral data", "Pinging", "Querying", "Third-party networks").

**Pushing.** One task per AS that has a ``url``. It follows the main event stream from
the position stored for the AS, picks the events the AS is interested in
(protocol/appservice.py's rules, with each room's aliases and joined members read once
per batch), adds queued ephemeral items (receipts, typing, presence) when the
registration asks for them, and stores the result as the next transaction in the same
write that moves the position (storage/appservices.py). It then PUTs that transaction
to ``{url}/_matrix/app/v1/transactions/{txnId}`` with ``Authorization: Bearer
<hs_token>`` until the AS answers 2xx, with exponential back-off (1 s doubling to 5 min)
on errors, timeouts and non-2xx answers. Only then is the next one built: transactions
arrive in order, one at a time, and a retry sends the very same body. Everything is in
the database, so neither a restart nor an AS that is down for hours loses an event; a
backlog costs rows already stored (the events), not memory: a batch is at most
``MAX_EVENTS_PER_TXN`` events.

Local users never wait for an AS: sending an event only notifies the stream; the
pusher tasks read it later. Answers from an AS are bounded in size
(``MAX_RESPONSE_BYTES``) and time (``timeout_s`` per request).

**Queries.** When a user ID or room alias of an AS's namespace is unknown, the AS is
asked (``GET /_matrix/app/v1/users/{userId}``, ``/rooms/{roomAlias}``) and given the
chance to create it before the request that needed it goes on.

What this module must never know: HTTP routes (api/client/appservice.py), SQL.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import orjson
import trio

from pocketserver.config import Config, ConfigError
from pocketserver.errors import InvalidParam, MatrixError, NotFound
from pocketserver.protocol.appservice import (
    AppserviceRegistry,
    EventFacts,
    Registration,
    RegistrationError,
    is_interested,
    parse_registration,
)
from pocketserver.services.client_events import serialize_events
from pocketserver.services.clock import Clock
from pocketserver.services.notifier import Notifier
from pocketserver.services.outbound import OUTBOUND_ERRORS, Outbound
from pocketserver.storage import appservices as store
from pocketserver.storage import events as ev_store
from pocketserver.storage import rooms as room_store
from pocketserver.storage import state as state_store
from pocketserver.storage.database import Conn, Database
from pocketserver.storage.streams import current_stream_pos

log = logging.getLogger("pocketserver.appservices")

JsonDict = dict[str, Any]

MAX_EVENTS_PER_TXN = 100
MAX_EPHEMERAL_PER_TXN = 100
# Events read from the stream per step while looking for interesting ones.
SCAN_BATCH = 500
# ... and at most this many per read (one read transaction stays short).
MAX_SCAN_PER_STEP = 2000
# Ephemeral items kept per AS while it is down (the oldest go first).
MAX_QUEUED_EPHEMERAL = 1000
MAX_RESPONSE_BYTES = 1024 * 1024
TXN_TIMEOUT_S = 30.0
QUERY_TIMEOUT_S = 10.0
FIRST_RETRY_S = 1.0
MAX_RETRY_S = 300.0
# The backlog and last success are logged this often while an AS is failing.
LOG_EVERY_S = 60.0
MAX_CACHED_PROTOCOLS = 256
PERSIST_SKIPPED_POSITIONS = 1000
PERSIST_SKIPPED_SECONDS = 30.0


class AppserviceConfigError(ConfigError):
    """A registration file is missing or wrong; the message names the file and field."""


def load_registrations(config: Config) -> AppserviceRegistry:
    """Read and check every ``[appservices] registration_files`` entry."""
    if not config.appservices.registration_files:
        return AppserviceRegistry([])
    import yaml  # only a server with bridges pays for the YAML parser

    regs: list[Registration] = []
    seen_ids: dict[str, str] = {}
    seen_tokens: dict[str, str] = {}
    for name in config.appservices.registration_files:
        path = Path(name).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise AppserviceConfigError(f"appservice registration {path}: cannot read it ({e})") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise AppserviceConfigError(f"appservice registration {path}: not valid YAML{where}") from None
        try:
            reg = parse_registration(data, config.server_name)
        except RegistrationError as e:
            raise AppserviceConfigError(f"appservice registration {path}: {e}") from None
        if reg.id in seen_ids:
            raise AppserviceConfigError(
                f"appservice registration {path}: id: {reg.id!r} is also used by {seen_ids[reg.id]}"
            )
        if reg.as_token in seen_tokens:
            raise AppserviceConfigError(
                f"appservice registration {path}: as_token: also used by {seen_tokens[reg.as_token]}"
            )
        seen_ids[reg.id] = seen_tokens[reg.as_token] = str(path)
        regs.append(reg)
    return AppserviceRegistry(regs)


# -- HTTP to the AS ------------------------------------------------------------------------


class AppserviceUnreachable(Exception):
    """The AS could not be reached, timed out, or spoke no acceptable HTTP."""


@dataclass(slots=True)
class AsResponse:
    status: int
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"{}")
        except ValueError:
            return None


async def as_request(
    outbound: Outbound,
    reg: Registration,
    method: str,
    path: str,
    *,
    query: Mapping[str, str] | None = None,
    body: bytes | None = None,
    timeout_s: float,
) -> AsResponse:
    """One request to the AS (``hs_token`` as a bearer token), bounded in time and
    size; :class:`AppserviceUnreachable` for any failure to get an answer."""
    assert reg.url is not None
    url = reg.url.rstrip("/") + path
    if query:
        url += "?" + urlencode(query)
    headers = [("Authorization", f"Bearer {reg.hs_token}")]
    if body is not None:
        headers.append(("Content-Type", "application/json"))
    try:
        answer = await outbound.request(
            method, url, body=body, headers=headers, policy=None,
            max_bytes=MAX_RESPONSE_BYTES, timeout_s=timeout_s,
        )
    except OUTBOUND_ERRORS as e:
        raise AppserviceUnreachable(f"{type(e).__name__}: {e}") from None
    return AsResponse(answer.status, answer.body)


# -- the service ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Built:
    body: bytes | None
    n_events: int
    after: int
    reached: int
    last_queued: int
    more: bool
    typing: list[JsonDict]


@dataclass
class _AsQueue:
    """One AS's pusher state in memory (the durable part is in the database)."""

    reg: Registration
    wake: trio.Event = field(default_factory=trio.Event)
    # Set when the AS contacts us while we back off from it: it is up again.
    alive: trio.Event = field(default_factory=trio.Event)
    typing: list[JsonDict] = field(default_factory=list)
    backlog_txns: int = 0
    sent_txns: int = 0
    sent_events: int = 0
    failures: int = 0
    last_success_ms: int | None = None
    failing: bool = False
    # How far the pusher has read past events of no interest to the AS. Stored only
    # now and then (PERSIST_SKIPPED_*): a restart re-reads those, and a busy server
    # does not pay a write per event per AS for rooms the AS has nothing to do with.
    scanned_pos: int = 0
    persisted_pos: int = 0
    persisted_at: float = 0.0


class AppserviceService:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        notifier: Notifier,
        outbound: Outbound,
        registry: AppserviceRegistry,
        server_name: str,
        *,
        timeout_s: float = TXN_TIMEOUT_S,
        query_timeout_s: float = QUERY_TIMEOUT_S,
        first_retry_s: float = FIRST_RETRY_S,
        max_retry_s: float = MAX_RETRY_S,
    ) -> None:
        self.db = db
        self.clock = clock
        self.notifier = notifier
        self.outbound = outbound
        self.registry = registry
        self.server_name = server_name
        self.timeout_s = timeout_s
        self.query_timeout_s = query_timeout_s
        self.first_retry_s = first_retry_s
        self.max_retry_s = max_retry_s
        self._queues = {r.id: _AsQueue(r) for r in registry.all if r.url}
        # Set by build_services: creates each AS's own user at start.
        self.ensure_user: Any = None
        self._running = False
        self._protocol_cache: dict[tuple[str, str], JsonDict] = {}
        # Who is typing in a room now (set by build_services from the typing tracker).
        self.typing_users: Callable[[str], list[str]] | None = None

    def statistics(self) -> dict[str, Any]:
        return {
            q.reg.id: {
                "backlog_txns": q.backlog_txns,
                "sent_txns": q.sent_txns,
                "sent_events": q.sent_events,
                "failures": q.failures,
                "last_success_ms": q.last_success_ms,
            }
            for q in self._queues.values()
        }

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        if self.ensure_user is not None:
            for reg in self.registry.all:
                await self.ensure_user(reg)

        def start(conn: Conn) -> dict[str, tuple[store.AsState, int]]:
            pos = current_stream_pos(conn)
            return {
                as_id: (store.ensure_state(conn, as_id, pos), store.count_txns(conn, as_id))
                for as_id in self._queues
            }

        states = await self.db.write(start)
        async with trio.open_nursery() as nursery:
            for as_id, q in self._queues.items():
                state, backlog = states[as_id]
                q.backlog_txns = backlog
                q.last_success_ms = state.last_success_ts
                q.scanned_pos = q.persisted_pos = state.stream_pos
                log.info(
                    "application service %s: pushing to %s from stream position %d (%d transactions queued)",
                    as_id, q.reg.url, state.stream_pos, backlog,
                )
                nursery.start_soon(self._pusher, q)
            self._running = True
            task_status.started()
            await trio.sleep_forever()

    # -- producers of ephemeral data ---------------------------------------------------------

    def _ephemeral_targets(self, conn: Conn, room_id: str, user_id: str | None = None) -> list[_AsQueue]:
        queues = [q for q in self._queues.values() if q.reg.receive_ephemeral]
        if not queues:
            return []
        members = state_store.local_members(conn, room_id)
        aliases = _room_aliases(conn, room_id)
        facts = EventFacts(room_id, user_id or "", "")
        return [q for q in queues if is_interested(q.reg, facts, aliases, members)]

    def receipt_in_txn(
        self, conn: Conn, room_id: str, receipt_type: str, user_id: str, event_id: str, data: Mapping[str, Any]
    ) -> None:
        """A local receipt: queued (durably, in the receipt's transaction) for each AS
        that asked for ephemeral data and is interested in the room. Private receipts
        only for users of the AS's namespaces."""
        for q in self._ephemeral_targets(conn, room_id, user_id):
            if receipt_type == "m.read.private" and not q.reg.is_interested_in_user(user_id):
                continue
            edu = {
                "type": "m.receipt",
                "room_id": room_id,
                "content": {event_id: {receipt_type: {user_id: dict(data)}}},
            }
            store.enqueue(conn, q.reg.id, "ephemeral", orjson.dumps(edu))
            store.trim_queue(conn, q.reg.id, MAX_QUEUED_EPHEMERAL)
            self._wake_soon(q)

    def presence_in_txn(self, conn: Conn, user_id: str, content: dict[str, Any], changed: bool) -> None:
        if not changed:
            return
        queues = [q for q in self._queues.values() if q.reg.receive_ephemeral]
        if not queues:
            return
        sharing = state_store.users_sharing_rooms(conn, user_id) | {user_id}
        edu = {"type": "m.presence", "sender": user_id, "content": {**content, "user_id": user_id}}
        for q in queues:
            if any(q.reg.is_interested_in_user(u) for u in sharing):
                store.enqueue(conn, q.reg.id, "ephemeral", orjson.dumps(edu))
                store.trim_queue(conn, q.reg.id, MAX_QUEUED_EPHEMERAL)
                self._wake_soon(q)

    async def on_typing(self, room_id: str, user_id: str, typing: bool) -> None:
        """Typing is kept in memory only (worth nothing after a restart)."""
        if not any(q.reg.receive_ephemeral for q in self._queues.values()):
            return
        targets = await self.db.read(self._ephemeral_targets, room_id, user_id)
        users = self.typing_users(room_id) if self.typing_users is not None else ([user_id] if typing else [])
        for q in targets:
            # The AS gets the room's typing set as clients do; the newest replaces older.
            q.typing = [t for t in q.typing if t["room_id"] != room_id]
            q.typing.append({"type": "m.typing", "room_id": room_id, "content": {"user_ids": users}})
            del q.typing[:-MAX_EPHEMERAL_PER_TXN]
            q.wake.set()


    def mark_alive(self, as_id: str) -> None:
        """The AS just made a request with its token: if we are backing off from it,
        retry now (a bridge that restarts is back long before a 5-minute back-off
        ends). On the event loop."""
        q = self._queues.get(as_id)
        if q is not None and q.failing:
            q.alive.set()

    def _wake_soon(self, q: _AsQueue) -> None:
        """From a database worker thread: wake the pusher on the loop."""
        self.notifier.notify()

    # -- the pusher ---------------------------------------------------------------------------

    async def _pusher(self, q: _AsQueue) -> None:
        attempts = 0  # failed tries of the current transaction
        last_log = 0.0
        while True:
            changed = self.notifier.change_event()
            wake = q.wake
            txn, more = await self._next_txn(q)
            if txn is None and more:
                await trio.sleep(0)
                continue
            if txn is None:
                await self.notifier.wait_for_change_or(changed, wake, 60)
                if wake.is_set():
                    q.wake = trio.Event()
                continue
            ok = await self._send(q, txn)
            if ok:
                attempts = 0
                now = self.clock.time_ms()
                await self.db.write(store.complete_txn, q.reg.id, txn.txn_id, now)
                q.sent_txns += 1
                q.sent_events += txn.n_events
                q.last_success_ms = now
                q.backlog_txns = max(0, q.backlog_txns - 1)
                if q.failing:
                    q.failing = False
                    log.info("application service %s is reachable again", q.reg.id)
                continue
            attempts += 1
            q.failures += 1
            backoff = min(self.first_retry_s * 2 ** min(attempts - 1, 30), self.max_retry_s)
            if not q.failing:
                q.failing = True
                await self.db.write(store.set_failing, q.reg.id, self.clock.time_ms())
            if time.monotonic() - last_log >= LOG_EVERY_S:
                last_log = time.monotonic()
                behind = await self.db.read(_backlog_events, q.reg.id)
                log.warning(
                    "application service %s: transaction %d not accepted; about %d events behind,"
                    " last success %s; retrying in %.0f s",
                    q.reg.id, txn.txn_id, behind, _ago(q.last_success_ms, self.clock.time_ms()), backoff,
                )
            q.alive = trio.Event()
            with trio.move_on_after(backoff):
                await q.alive.wait()
                log.info("application service %s contacted us: retrying now", q.reg.id)
                attempts = 0

    async def _next_txn(self, q: _AsQueue) -> tuple[store.AsTxn | None, bool]:
        """The oldest stored transaction, or a new one built from the stream and the
        ephemeral queue (read first, then stored in one write); (None, more) when there
        is nothing to send yet, ``more`` when the scan stopped early."""
        txn = await self.db.read(store.oldest_txn, q.reg.id)
        if txn is not None:
            return txn, False
        built = await self.db.read(self._build, q)
        if built.body is None:
            q.scanned_pos = max(q.scanned_pos, built.reached)
            now_s = time.monotonic()
            if q.scanned_pos > q.persisted_pos and (
                q.scanned_pos - q.persisted_pos >= PERSIST_SKIPPED_POSITIONS
                or now_s - q.persisted_at >= PERSIST_SKIPPED_SECONDS
            ):
                await self.db.write(store.set_stream_pos, q.reg.id, q.scanned_pos)
                q.persisted_pos, q.persisted_at = q.scanned_pos, now_s
            return None, built.more
        now = self.clock.time_ms()

        def write(conn: Conn) -> int:
            if built.last_queued:
                store.delete_queued_upto(conn, q.reg.id, built.last_queued)
            return store.insert_txn(conn, q.reg.id, built.body or b"", built.n_events, now, built.reached)

        txn_id = await self.db.write(write)
        q.scanned_pos = q.persisted_pos = max(q.scanned_pos, built.reached)
        q.typing = [t for t in q.typing if t not in built.typing]
        q.backlog_txns += 1
        return store.AsTxn(txn_id, built.body, built.n_events, now), False

    def _build(self, conn: Conn, q: _AsQueue) -> _Built:
        reg = q.reg
        state = store.get_state(conn, reg.id)
        assert state is not None
        upto = current_stream_pos(conn)
        after = reached = max(state.stream_pos, q.scanned_pos)
        events: list[Any] = []
        facts_cache: dict[str, tuple[list[str], list[str]]] = {}
        scanned = 0
        more = False
        while reached < upto and len(events) < MAX_EVENTS_PER_TXN:
            if scanned >= MAX_SCAN_PER_STEP:
                more = True
                break
            rows = store.stream_page(conn, reached, upto, SCAN_BATCH)
            scanned += len(rows)
            if not rows:
                reached = upto
                break
            recs = ev_store.get_events(conn, [r[0] for r in rows])
            for event_id, pos in rows:
                rec = recs.get(event_id)
                reached = pos
                if rec is None:
                    continue
                ev = rec.event
                cached = facts_cache.get(ev.room_id)
                if cached is None:
                    cached = facts_cache[ev.room_id] = (
                        _room_aliases(conn, ev.room_id),
                        state_store.local_members(conn, ev.room_id),
                    )
                if is_interested(reg, EventFacts(ev.room_id, ev.sender, ev.type, ev.state_key), *cached):
                    events.append(rec)
                    if len(events) >= MAX_EVENTS_PER_TXN:
                        break
            if len(rows) < SCAN_BATCH and len(events) < MAX_EVENTS_PER_TXN:
                reached = upto
        if len(events) >= MAX_EVENTS_PER_TXN and reached < upto:
            more = True
        ephemeral: list[Any] = []
        last_queued = 0
        typing = list(q.typing) if reg.receive_ephemeral else []
        if reg.receive_ephemeral:
            for item_id, kind, payload in store.queued(conn, reg.id, MAX_EPHEMERAL_PER_TXN):
                last_queued = item_id
                if kind == "ephemeral":
                    ephemeral.append(orjson.loads(payload))
            ephemeral.extend(typing)
        if not events and not ephemeral:
            return _Built(None, 0, after, reached, 0, more, [])
        now = self.clock.time_ms()
        body: JsonDict = {
            "events": serialize_events(conn, events, user_id=None, device_id=None, now_ms=now, bundle=False)
        }
        if ephemeral:
            body["ephemeral"] = ephemeral
            # MSC2409's name, which mautrix-based bridges read.
            body["de.sorunome.msc2409.ephemeral"] = ephemeral
        return _Built(orjson.dumps(body), len(events), after, reached, last_queued, more, typing)

    async def _send(self, q: _AsQueue, txn: store.AsTxn) -> bool:
        try:
            resp = await as_request(
                self.outbound, q.reg, "PUT", f"/_matrix/app/v1/transactions/{txn.txn_id}",
                body=txn.body, timeout_s=self.timeout_s,
            )
        except AppserviceUnreachable as e:
            log.info("application service %s: transaction %d failed: %s", q.reg.id, txn.txn_id, e)
            return False
        if 200 <= resp.status < 300:
            return True
        log.info("application service %s answered transaction %d with HTTP %d", q.reg.id, txn.txn_id, resp.status)
        return False

    # -- queries ------------------------------------------------------------------------------------

    async def query_user(self, user_id: str) -> bool:
        """Ask the ASes whose namespaces hold ``user_id`` (a local user not known here);
        True when one answered that it exists now (it will have registered it)."""
        regs = [r for r in self.registry.interested_in_user(user_id) if user_id != r.sender]
        return await self._query(regs, "users", user_id)

    async def query_alias(self, alias: str) -> bool:
        """Ask the ASes whose namespaces hold ``alias``; True when one says it made it."""
        return await self._query(self.registry.interested_in_alias(alias), "rooms", alias)

    async def _query(self, regs: Iterable[Registration], kind: str, name: str) -> bool:
        """``GET /_matrix/app/v1/{kind}/{name}`` to each AS in turn, until one answers 200."""
        for reg in regs:
            if not reg.url:
                continue
            try:
                resp = await as_request(
                    self.outbound, reg, "GET", f"/_matrix/app/v1/{kind}/" + quote(name, safe=""),
                    timeout_s=self.query_timeout_s,
                )
            except AppserviceUnreachable as e:
                log.info("application service %s: %s query for %s failed: %s", reg.id, kind, name, e)
                continue
            if resp.status == 200:
                return True
        return False

    # -- third-party networks -------------------------------------------------------------------------

    async def protocols(self) -> JsonDict:
        """GET /thirdparty/protocols: each protocol's metadata from an AS that has it,
        with ``instances`` from every AS that has it."""
        out: JsonDict = {}
        for protocol in self.registry.protocols():
            info = await self._protocol_from_all(protocol)
            if info is not None:
                out[protocol] = info
        return out

    async def protocol(self, protocol: str) -> JsonDict:
        if not self.registry.for_protocol(protocol):
            raise NotFound(f"Unknown protocol {protocol!r}")
        info = await self._protocol_from_all(protocol)
        if info is None:
            raise NotFound(f"No application service answered for protocol {protocol!r}")
        return info

    async def _protocol_from_all(self, protocol: str) -> JsonDict | None:
        merged: JsonDict | None = None
        for reg in self.registry.for_protocol(protocol):
            got = await self._get_json(reg, "/_matrix/app/v1/thirdparty/protocol/" + quote(protocol, safe=""), {})
            # The last good answer stands in while an AS is down or answers nonsense
            # (a protocol's metadata rarely changes; clients ask at every start).
            key = (reg.id, protocol)
            if isinstance(got, dict):
                if len(self._protocol_cache) >= MAX_CACHED_PROTOCOLS and key not in self._protocol_cache:
                    self._protocol_cache.pop(next(iter(self._protocol_cache)))
                self._protocol_cache[key] = got
            else:
                got = self._protocol_cache.get(key)
            if not isinstance(got, dict):
                continue
            instances = got.get("instances")
            instances = [_instance(reg, i) for i in instances if isinstance(i, dict)] if isinstance(instances, list) else []
            if merged is None:
                merged = dict(got, instances=instances)
            else:
                merged["instances"].extend(instances)
        return merged

    async def lookup(self, kind: str, protocol: str | None, query: Mapping[str, str]) -> list[JsonDict]:
        """``kind`` is ``location`` or ``user``: the answers of the ASes of ``protocol``
        (every AS with protocols for a reverse look-up, ``protocol`` None), concatenated."""
        if protocol is not None:
            regs = self.registry.for_protocol(protocol)
            if not regs:
                raise NotFound(f"Unknown protocol {protocol!r}")
            path = f"/_matrix/app/v1/thirdparty/{kind}/" + quote(protocol, safe="")
        else:
            regs = [r for r in self.registry.all if r.protocols]
            path = f"/_matrix/app/v1/thirdparty/{kind}"
        out: list[JsonDict] = []
        for reg in regs:
            got = await self._get_json(reg, path, query)
            if isinstance(got, list):
                out.extend(x for x in got if isinstance(x, dict))
        return out

    async def _get_json(self, reg: Registration, path: str, query: Mapping[str, str]) -> Any:
        if not reg.url:
            return None
        try:
            resp = await as_request(self.outbound, reg, "GET", path, query=query, timeout_s=self.query_timeout_s)
        except AppserviceUnreachable as e:
            log.info("application service %s: %s failed: %s", reg.id, path, e)
            return None
        if resp.status != 200:
            return None
        return resp.json()

    # -- published room directories ----------------------------------------------------------------

    async def publish_room(self, reg: Registration, network_id: str, room_id: str, public: bool) -> None:
        """PUT /directory/list/appservice/{networkId}/{roomId}: the room in (or out of)
        the AS's directory for that network, which ``/publicRooms`` shows with
        ``third_party_instance_id`` "{AS ID}|{network ID}" or ``include_all_networks``."""
        if not network_id or len(network_id) > 255:
            raise InvalidParam("Invalid network ID")
        if public and await self.db.read(ev_store.get_room, room_id) is None:
            raise NotFound("Unknown room")
        await self.db.write(store.set_room_published, reg.id, network_id, room_id, public)

    # -- ping ----------------------------------------------------------------------------------------

    async def ping(self, reg: Registration, transaction_id: str | None) -> int:
        """POST /_matrix/app/v1/ping to the AS; the round trip in ms, or 502 errors as
        the spec's "Pinging" section draws them."""
        if not reg.url:
            raise MatrixError(400, "M_URL_NOT_SET", "The application service has no URL")
        body: JsonDict = {}
        if transaction_id is not None:
            body["transaction_id"] = transaction_id
        started = time.monotonic()
        try:
            resp = await as_request(
                self.outbound, reg, "POST", "/_matrix/app/v1/ping",
                body=orjson.dumps(body), timeout_s=self.query_timeout_s,
            )
        except AppserviceUnreachable as e:
            if "TooSlow" in str(e):
                raise MatrixError(504, "M_CONNECTION_TIMEOUT", "The application service did not answer in time") from None
            raise MatrixError(502, "M_CONNECTION_FAILED", "The application service could not be reached") from None
        if not 200 <= resp.status < 300:
            err = MatrixError(502, "M_BAD_STATUS", "The application service answered with an error")
            err.extra = {"status": resp.status, "body": resp.body[:4096].decode("utf-8", "replace")}
            raise err
        return int((time.monotonic() - started) * 1000)


def _instance(reg: Registration, instance: Mapping[str, Any]) -> JsonDict:
    """A protocol instance as clients see it: ``instance_id`` "{AS ID}|{network ID}",
    the ``third_party_instance_id`` that selects the AS's published rooms."""
    out = dict(instance)
    network_id = instance.get("network_id")
    if isinstance(network_id, str):
        out["instance_id"] = f"{reg.id}|{network_id}"
    return out


def _room_aliases(conn: Conn, room_id: str) -> list[str]:
    """The room's aliases: published in this server's directory, and in its
    ``m.room.canonical_alias`` state."""
    aliases = list(room_store.aliases_for_room(conn, room_id))
    ids = state_store.get_current_state_ids(conn, room_id, [("m.room.canonical_alias", "")])
    eid = ids.get(("m.room.canonical_alias", ""))
    if eid is not None:
        rec = ev_store.get_events(conn, [eid]).get(eid)
        if rec is not None:
            content = rec.event.content
            if isinstance(content.get("alias"), str):
                aliases.append(content["alias"])
            alt = content.get("alt_aliases")
            if isinstance(alt, list):
                aliases.extend(a for a in alt if isinstance(a, str))
    return aliases


def _backlog_events(conn: Conn, as_id: str) -> int:
    """Roughly how many events the AS is behind (stored transactions and unread stream)."""
    state = store.get_state(conn, as_id)
    if state is None:
        return 0
    return store.queued_events(conn, as_id) + max(0, current_stream_pos(conn) - state.stream_pos)


def _ago(ms: int | None, now: int) -> str:
    if ms is None:
        return "never"
    return f"{(now - ms) / 1000:.0f} s ago"
