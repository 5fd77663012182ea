"""The outbound queue: everything this server sends to other servers, kept until they
have it.

Spec: shared/spec/content/server-server-api.md, "Transactions" (``PUT
/_matrix/federation/v1/send/{txnId}``, at most 50 PDUs and 100 EDUs each) and "Retry
and back-off" of the same document's transaction section.

Durability: PDUs and persistent EDUs are written to ``federation_outbox`` in the same
transaction as whatever produced them (the event, the receipt, the to-device message,
the device change), so a restart or a kill never loses an accepted item; a row is
deleted only once the destination answered 200 to the transaction carrying it. Typing
notifications are ephemeral and only kept in memory (``queue_ephemeral``).

Tasks: one per destination *with work*. A destination's task starts when something is
queued for it (or at start-up, when its outbox is not empty), sends transactions in
queue order until the outbox is empty, then ends: a server that shares rooms but is idle
costs no task and no memory. The task reads its outbox in batches of one transaction,
never the whole backlog, and through the database's writer, so a read always comes after
the commit of the write that queued the item.

Failure: a destination that cannot be reached or answers 5xx or 429 is retried with
exponential back-off (5 s doubling to 1 h, +/-20% jitter), recorded in ``destinations``
so that a restart keeps it. A transaction refused with another 4xx is retried a few
times and then dropped (the remote will not take it; it fetches missing PDUs itself). When
the server comes back (its back-off ends, or it contacts us: :meth:`mark_alive`), the
queue is sent in order (catch-up). A failing destination keeps at most
``backlog_cap`` PDUs (oldest dropped first, the remote fills the gap with
``get_missing_events`` / backfill); EDUs are small and kept.

What this module must never know: how requests are signed or routed (that is the
:class:`~pocketserver.federation.interfaces.FederationRequester`'s business).
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson
import trio

from pocketserver.federation.interfaces import (
    FederationError,
    FederationRequester,
    FederationUnreachable,
)
from pocketserver.storage import outbox
from pocketserver.storage.database import Conn, Database

if TYPE_CHECKING:
    from pocketserver.services.clock import Clock

log = logging.getLogger(__name__)

MAX_PDUS_PER_TXN = 50
MAX_EDUS_PER_TXN = 100
BACKLOG_CAP = 10_000
FIRST_RETRY_MS = 5_000
MAX_RETRY_MS = 3_600_000
JITTER = 0.2
# A transaction refused with a 4xx (not 429) this many times in a row is dropped.
MAX_REJECTIONS = 3
# In-memory (typing) EDUs kept per destination; older ones are dropped first.
MAX_EPHEMERAL = 100
TXN_TIMEOUT_S = 60.0


@dataclass
class _Queue:
    """One destination's live state while its task runs."""

    pending: bool = True  # something was queued since the task last read the outbox
    wakeup: trio.Event = field(default_factory=trio.Event)  # ends a back-off wait early
    ephemeral: list[dict[str, Any]] = field(default_factory=list)
    attempt: tuple[tuple[int, ...], str] | None = None  # (item ids, txn_id) last tried
    rejections: int = 0


class FederationSender:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        requester: FederationRequester,
        server_name: str,
        *,
        backlog_cap: int = BACKLOG_CAP,
        first_retry_ms: int = FIRST_RETRY_MS,
        max_retry_ms: int = MAX_RETRY_MS,
        rng: random.Random | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.requester = requester
        self.server_name = server_name
        self.backlog_cap = backlog_cap
        self.first_retry_ms = first_retry_ms
        self.max_retry_ms = max_retry_ms
        self._rng = rng or random.Random()
        self._queues: dict[str, _Queue] = {}
        # Failing destinations: destination -> (wall ms of the next try, interval ms).
        self._retry: dict[str, tuple[int, int]] = {}
        # Destinations with a back-off recorded in the database (cleared by a success;
        # mark_alive() ends the wait in memory only).
        self._failing: set[str] = set()
        self._nursery: trio.Nursery | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._txn_seq = 0
        self._txn_base = 0
        # Wake-ups handed over from database worker threads (see wake()).
        self._handover: set[str] = set()
        self._handover_lock = threading.Lock()
        self.sent_transactions = 0

    # -- lifecycle ---------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Start a task for each destination with queued items, then serve wake-ups."""
        async with trio.open_nursery() as nursery:
            self._txn_base = self.clock.time_ms()
            # From here on, every queued item wakes its destination; the read below (on
            # the writer, so after any write in flight) finds what was queued before.
            self._nursery = nursery
            self._token = trio.lowlevel.current_trio_token()
            work, backoffs = await self.db.write(_startup)
            for dest, (last_ts, interval) in backoffs.items():
                self._retry.setdefault(dest, (last_ts + interval, interval))
                self._failing.add(dest)
            for dest in work:
                if dest not in self._queues:
                    self._start(dest)
            task_status.started()
            await trio.sleep_forever()

    def statistics(self) -> dict[str, int]:
        return {
            "active_destinations": len(self._queues),
            "backing_off": len(self._retry),
            "sent_transactions": self.sent_transactions,
        }

    # -- what producers call ---------------------------------------------------------------

    def queue_in_txn(
        self, conn: Conn, destinations: Iterable[str], kind: str, payload: Any
    ) -> None:
        """Queue ``payload`` (a PDU or ``{"edu_type", "content"}``) for ``destinations``
        inside the producer's write transaction, and wake their tasks once it commits
        (the task's first read waits for the writer, so it sees the rows)."""
        dests = [d for d in destinations if d and d != self.server_name]
        if not dests:
            return
        outbox.enqueue(conn, dests, kind, orjson.dumps(payload), self.clock.time_ms())
        self.wake(dests)

    def wake(self, destinations: Iterable[str]) -> None:
        """Tell the destinations' tasks there is new work; callable from any thread."""
        token = self._token
        if token is None:
            return  # not running yet: run() starts every destination with work
        with self._handover_lock:
            was_empty = not self._handover
            self._handover.update(destinations)
        if not was_empty:
            return  # a hand-over is already scheduled
        try:
            if _on_loop():
                self._take_handover()
            else:
                token.run_sync_soon(self._take_handover)
        except trio.RunFinishedError:
            pass

    def queue_ephemeral(self, destinations: Iterable[str], edu: dict[str, Any]) -> None:
        """Send ``edu`` with the next transaction to each destination, kept in memory
        only (typing). On the event loop."""
        for dest in destinations:
            if not dest or dest == self.server_name:
                continue
            q = self._queues.get(dest)
            if q is None:
                if self._nursery is None:
                    continue
                q = self._start(dest)
            q.ephemeral.append(edu)
            del q.ephemeral[:-MAX_EPHEMERAL]
            q.pending = True
            if dest not in self._retry:
                q.wakeup.set()

    def mark_alive(self, server_name: str) -> None:
        """``server_name`` just contacted us: end its back-off and send what is queued.
        For the inbound side (transactions and other requests from that server)."""
        if self._retry.pop(server_name, None) is None:
            return
        q = self._queues.get(server_name)
        if q is not None:
            q.wakeup.set()
        elif self._nursery is not None:
            self._start(server_name)  # it may have a backlog; an empty one ends at once

    # -- the destination tasks -------------------------------------------------------------

    def _take_handover(self) -> None:
        with self._handover_lock:
            dests, self._handover = self._handover, set()
        for dest in dests:
            q = self._queues.get(dest)
            if q is None:
                if self._nursery is not None:
                    self._start(dest)
            else:
                q.pending = True
                if dest not in self._retry:
                    q.wakeup.set()

    def _start(self, dest: str) -> _Queue:
        assert self._nursery is not None
        q = self._queues[dest] = _Queue()
        self._nursery.start_soon(self._run_destination, dest, q, name=f"federation-send {dest}")
        return q

    def _next_txn_id(self) -> str:
        # Unique per destination across restarts: the start time (ms) and a counter.
        self._txn_seq += 1
        return f"{self._txn_base}.{self._txn_seq}"

    async def _run_destination(self, dest: str, q: _Queue) -> None:
        acked: list[int] = []
        try:
            while True:
                await self._wait_backoff(dest, q)
                q.pending = False
                rows = await self.db.write(
                    outbox.ack_and_read, dest, acked, MAX_PDUS_PER_TXN + MAX_EDUS_PER_TXN
                )
                acked = []
                ids, pdus, edus = _take_batch(rows)
                ephemeral = q.ephemeral[: max(0, MAX_EDUS_PER_TXN - len(edus))]
                if not ids and not ephemeral:
                    if q.pending:
                        continue
                    return
                if q.attempt is not None and q.attempt[0] == tuple(ids) and not ephemeral:
                    txn_id = q.attempt[1]  # the same transaction again: the same ID
                else:
                    txn_id = self._next_txn_id()
                q.attempt = (tuple(ids), txn_id)
                ok = await self._send(dest, q, txn_id, pdus, edus + ephemeral)
                del q.ephemeral[: len(ephemeral)]  # sent, or stale by the next try
                if ok:
                    acked = ids
                    q.attempt = None
                    q.rejections = 0
                elif q.rejections >= MAX_REJECTIONS:
                    log.warning(
                        "%s refused a transaction %d times; dropping its %d items",
                        dest, q.rejections, len(ids),
                    )
                    acked = ids
                    q.attempt = None
                    q.rejections = 0
        finally:
            if self._queues.get(dest) is q:
                del self._queues[dest]
            if acked:
                with trio.CancelScope(shield=True):
                    await self.db.write(outbox.ack_and_read, dest, acked, 0)

    async def _wait_backoff(self, dest: str, q: _Queue) -> None:
        retry = self._retry.get(dest)
        if retry is None:
            return
        delay_s = (retry[0] - self.clock.time_ms()) / 1000
        if delay_s > 0:
            q.wakeup = trio.Event()
            with trio.move_on_after(delay_s):
                await q.wakeup.wait()

    async def _send(
        self,
        dest: str,
        q: _Queue,
        txn_id: str,
        pdus: list[Any],
        edus: list[Any],
    ) -> bool:
        body = {
            "origin": self.server_name,
            "origin_server_ts": self.clock.time_ms(),
            "pdus": pdus,
            "edus": edus,
        }
        path = "/_matrix/federation/v1/send/" + quote(txn_id, safe="")
        try:
            answer = await self.requester.put_json(dest, path, body, timeout_s=TXN_TIMEOUT_S)
        except FederationError as e:
            if e.status == 429 or e.status >= 500:
                await self._failed(dest, f"{e.status} {e.errcode}")
            else:
                q.rejections += 1
                await self._failed(dest, f"refused: {e.status} {e.errcode}")
            return False
        except FederationUnreachable as e:
            await self._failed(dest, str(e))
            return False
        self.sent_transactions += 1
        if isinstance(answer, dict) and isinstance(answer.get("pdus"), dict):
            for event_id, result in answer["pdus"].items():
                if isinstance(result, dict) and result.get("error"):
                    log.info("%s rejected %s: %s", dest, event_id, result.get("error"))
        if dest in self._failing:
            self._retry.pop(dest, None)
            self._failing.discard(dest)
            await self.db.write(outbox.clear_backoff, dest)
        return True

    async def _failed(self, dest: str, why: str) -> None:
        previous = self._retry.get(dest)
        interval = (
            self.first_retry_ms if previous is None else min(previous[1] * 2, self.max_retry_ms)
        )
        interval = int(interval * self._rng.uniform(1 - JITTER, 1 + JITTER))
        now = self.clock.time_ms()
        self._retry[dest] = (now + interval, interval)
        self._failing.add(dest)
        log.info("sending to %s failed (%s); next try in %.1f s", dest, why, interval / 1000)
        await self.db.write(_record_failure, dest, now, interval, self.backlog_cap)


def _on_loop() -> bool:
    try:
        trio.lowlevel.current_trio_token()
    except RuntimeError:
        return False
    return True


def _startup(conn: Conn) -> tuple[list[str], dict[str, tuple[int, int]]]:
    return outbox.destinations_with_work(conn), outbox.backoffs(conn)


def _record_failure(conn: Conn, dest: str, now_ms: int, interval_ms: int, cap: int) -> None:
    outbox.set_backoff(conn, dest, now_ms, interval_ms)
    dropped = outbox.trim_pdus(conn, dest, cap)
    if dropped:
        log.warning("%s is failing: dropped its %d oldest queued PDUs", dest, dropped)


def _take_batch(rows: list[tuple[int, str, bytes]]) -> tuple[list[int], list[Any], list[Any]]:
    """The longest prefix of ``rows`` within one transaction's limits, in queue order."""
    ids: list[int] = []
    pdus: list[Any] = []
    edus: list[Any] = []
    for item_id, kind, payload in rows:
        if kind == outbox.PDU:
            if len(pdus) >= MAX_PDUS_PER_TXN:
                break
            target = pdus
        else:
            if len(edus) >= MAX_EDUS_PER_TXN:
                break
            target = edus
        try:
            target.append(orjson.loads(payload))
        except orjson.JSONDecodeError:
            log.error("dropping an undecodable outbox item %d", item_id)
        ids.append(item_id)
    return ids, pdus, _merge_receipts(edus)


def _merge_receipts(edus: list[Any]) -> list[Any]:
    """One ``m.receipt`` per transaction: its receipts merged room by room (a later
    receipt of the same user and type replaces the earlier one)."""
    merged: dict[str, Any] | None = None
    out: list[Any] = []
    for edu in edus:
        content = edu.get("content") if isinstance(edu, dict) else None
        if not isinstance(content, dict) or edu.get("edu_type") != "m.receipt":
            out.append(edu)
            continue
        if merged is None:
            merged = {"edu_type": "m.receipt", "content": {}}
            out.append(merged)
        for room_id, by_type in content.items():
            room = merged["content"].setdefault(room_id, {})
            for receipt_type, by_user in by_type.items():
                room.setdefault(receipt_type, {}).update(by_user)
    return out
