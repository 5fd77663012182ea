"""Self-destructing messages (MSC2228's ``org.matrix.self_destruct_after``), behind
``[experimental] msc2228_self_destruct`` (off by default).

A message event whose content holds ``org.matrix.self_destruct_after`` (a timestamp in
milliseconds) loses its content at that time, on this server, whether it was sent here
or arrived over federation (each server in the room destroys its own copy). The content
is removed as a redaction removes it (protocol/redaction.py), without a redaction
event: clients reading the event after that time get it with the content the
redaction algorithm keeps (``{}`` for a message).

Durability: the expiry is written in the transaction that stores the event, so an
event is never kept without its expiry; a background task destroys what is due, and
after a restart it first destroys whatever fell due while the server was down. Only
non-state events count (a state event's content is the room's state), and only an
integer timestamp.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import trio

from pocketserver.protocol.events import Event
from pocketserver.protocol.redaction import redact
from pocketserver.services.clock import Clock
from pocketserver.storage import events as ev_store
from pocketserver.storage import expiry as store
from pocketserver.storage.database import Conn, Database
from pocketserver.storage.events import EventRecord

log = logging.getLogger(__name__)

SELF_DESTRUCT_AFTER = "org.matrix.self_destruct_after"
# Events destroyed per transaction; the longest the task sleeps between looks (a clock
# that jumps is caught up with at least this often).
BATCH = 100
MAX_SLEEP_S = 300.0
RETRY_S = 30.0
_MAX_TS = 2**53 - 1


def expiry_of(event: Event) -> int | None:
    """The time ``event`` self-destructs, or None."""
    if event.state_key is not None:
        return None
    ts = event.content.get(SELF_DESTRUCT_AFTER)
    if type(ts) is not int or not 0 <= ts <= _MAX_TS:
        return None
    return ts


class EventExpiry:
    def __init__(self, db: Database, clock: Clock, forget_cached: Callable[[str], Any]) -> None:
        self.db = db
        self.clock = clock
        # The event pipeline's cache of records: an event destroyed is dropped from it.
        self._forget_cached = forget_cached
        self._wake = trio.Event()
        self.expired = 0

    def statistics(self) -> dict[str, int]:
        return {"expired": self.expired}

    def in_persist_txn(self, conn: Conn, event: Event) -> None:
        """Inside the transaction that puts ``event`` into a room's timeline."""
        ts = expiry_of(event)
        if ts is not None:
            store.insert_expiry(conn, event.event_id, ts)

    async def on_persisted(self, record: EventRecord) -> None:
        """After that transaction: the task looks again (this one may be the soonest)."""
        if expiry_of(record.event) is not None:
            self._wake.set()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            self._wake = trio.Event()
            due = await self.db.read(store.next_expiry_ts)
            now = self.clock.time_ms()
            if due is not None and due <= now:
                try:
                    await self.expire_due(now)
                except Exception:  # the database, say: try again later, keep serving
                    log.exception("expiring self-destructing events failed")
                    await trio.sleep(RETRY_S)
                continue
            wait_s = MAX_SLEEP_S if due is None else min(MAX_SLEEP_S, (due - now) / 1000)
            with trio.move_on_after(wait_s):
                await self._wake.wait()

    async def expire_due(self, now_ms: int) -> int:
        """Destroy the content of events due at ``now_ms`` (one batch); how many."""
        done = await self.db.write(self._expire_txn, now_ms)
        for event_id in done:
            self._forget_cached(event_id)
        self.expired += len(done)
        if done:
            log.info("%d self-destructing event(s) expired", len(done))
        return len(done)

    @staticmethod
    def _expire_txn(conn: Conn, now_ms: int) -> list[str]:
        done: list[str] = []
        for row, event_id in store.due_expiries(conn, now_ms, BATCH):
            rec = ev_store.get_event(conn, event_id) if event_id is not None else None
            if rec is None or rec.redacted_by is not None:
                store.delete_expiry(conn, row)  # gone, or its content already is
                continue
            store.expire_event(conn, rec.event.event_id, redact(rec.event.pdu, rec.event.room_version), now_ms)
            done.append(rec.event.event_id)
        return done
