"""Typing notifications (in memory) and receipts / read markers (stored).

Typing is ephemeral by nature: a restart forgets who was typing, which is what every
client expects. Each room keeps the serial of its last change so /sync sends m.typing
only for rooms whose typing set changed since the client's token.

Expiry runs on the event loop only (it wakes the notifier); /sync's read transaction,
on a database worker thread, only reads. One lock guards the tracker's state.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pocketserver.errors import BadJson, Forbidden, NotFound
from pocketserver.services.clock import Clock
from pocketserver.services.notifier import Notifier
from pocketserver.storage import rooms as room_store
from pocketserver.storage import state as state_store
from pocketserver.storage.database import Conn, Database
from pocketserver.storage.events import event_position
from pocketserver.storage.streams import next_stream_pos

MAX_TYPING_TIMEOUT_MS = 120_000
RECEIPT_TYPES = ("m.read", "m.read.private", "m.fully_read")


@dataclass
class _RoomTyping:
    users: dict[str, float] = field(default_factory=dict)  # user -> monotonic expiry
    serial: int = 0


@dataclass(frozen=True)
class TypingSnapshot:
    rooms: dict[str, tuple[int, tuple[str, ...]]]

    def typing_since(self, room_id: str, since_serial: int | None) -> list[str] | None:
        """As :meth:`TypingTracker.typing_since`, at the time of the snapshot."""
        room = self.rooms.get(room_id)
        if room is None:
            return [] if since_serial is None else None
        if since_serial is not None and room[0] <= since_serial:
            return None
        return list(room[1])


class TypingTracker:
    def __init__(self, clock: Clock, notifier: Notifier) -> None:
        self.clock = clock
        self.notifier = notifier
        self._rooms: dict[str, _RoomTyping] = {}
        self._lock = threading.Lock()
        # Told of each local typing call that others should hear of (room, user,
        # typing): the federation sender.
        self.on_typing: list[Callable[[str, str, bool], Awaitable[None]]] = []

    async def update(self, room_id: str, user_id: str, typing: bool, timeout_ms: int) -> None:
        """PUT /rooms/{roomId}/typing/{userId}: :meth:`set_typing`, then tell the
        listeners (a renewed ``typing: true`` too: other servers expire it themselves)."""
        changed = self.set_typing(room_id, user_id, typing, timeout_ms)
        if typing or changed:
            for hook in self.on_typing:
                await hook(room_id, user_id, typing)

    def set_typing(self, room_id: str, user_id: str, typing: bool, timeout_ms: int) -> bool:
        """Whether the room's typing set changed."""
        self.expire()
        with self._lock:
            changed = self._set_typing(room_id, user_id, typing, timeout_ms)
        if changed:
            self.notifier.notify()
        return changed

    def _set_typing(self, room_id: str, user_id: str, typing: bool, timeout_ms: int) -> bool:
        room = self._rooms.setdefault(room_id, _RoomTyping())
        changed = False
        if typing:
            timeout = min(max(timeout_ms, 0), MAX_TYPING_TIMEOUT_MS) / 1000
            changed = user_id not in room.users
            room.users[user_id] = self.clock.monotonic() + timeout
        elif user_id in room.users:
            del room.users[user_id]
            changed = True
        if changed:
            self.notifier.ephemeral_serial += 1
            room.serial = self.notifier.ephemeral_serial
        return changed

    def expire(self) -> None:
        """Drop typing users whose timeout passed and wake /sync for their rooms. On the
        event loop only: it notifies, and it changes what :meth:`typing_since` reads."""
        now = self.clock.monotonic()
        expired_any = False
        with self._lock:
            expired_any = self._expire_locked(now)
        if expired_any:
            self.notifier.notify()

    def _expire_locked(self, now: float) -> bool:
        expired_any = False
        for room_id, room in list(self._rooms.items()):
            gone = [u for u, exp in room.users.items() if exp <= now]
            for u in gone:
                del room.users[u]
            if gone:
                expired_any = True
                self.notifier.ephemeral_serial += 1
                room.serial = self.notifier.ephemeral_serial
            if not room.users and not gone and room.serial < self.notifier.ephemeral_serial - 1000:
                del self._rooms[room_id]
        return expired_any

    def typing_since(self, room_id: str, since_serial: int | None) -> list[str] | None:
        """The room's typing users if they changed after ``since_serial`` (None: unchanged).

        Called by /sync inside its read transaction, on a worker thread: it only reads
        (the caller runs :meth:`expire` on the event loop first), and leaves out users
        whose timeout passed since.
        """
        now = self.clock.monotonic()
        with self._lock:
            room = self._rooms.get(room_id)
            if room is None:
                return [] if since_serial is None else None
            if since_serial is not None and room.serial <= since_serial:
                return None
            return sorted(u for u, exp in room.users.items() if exp > now)

    def snapshot(self) -> TypingSnapshot:
        """A frozen copy of who is typing where, for readers that run off the event loop
        (a /sync transaction in a worker thread): expiring timeouts notifies waiters,
        which must happen here, on the trio thread."""
        self.expire()
        with self._lock:
            return TypingSnapshot(
                {rid: (room.serial, tuple(sorted(room.users))) for rid, room in self._rooms.items()}
            )

    def next_expiry_in(self) -> float | None:
        soonest = None
        with self._lock:
            for room in self._rooms.values():
                for exp in room.users.values():
                    if soonest is None or exp < soonest:
                        soonest = exp
        return None if soonest is None else max(0.0, soonest - self.clock.monotonic())


class ReceiptService:
    def __init__(self, db: Database, clock: Clock, notifier: Notifier) -> None:
        self.db = db
        self.clock = clock
        self.notifier = notifier
        # Called inside the receipt's write transaction (room, type, user, event, data):
        # the federation sender queues public receipts there.
        self.in_receipt_txn: list[
            Callable[[Conn, str, str, str, str, Mapping[str, Any]], None]
        ] = []

    async def send_receipt(
        self, user_id: str, room_id: str, receipt_type: str, event_id: str, thread_id: str | None
    ) -> None:
        if receipt_type not in RECEIPT_TYPES:
            raise BadJson(f"Unknown receipt type {receipt_type}")
        if thread_id is not None and (not isinstance(thread_id, str) or not thread_id):
            raise BadJson("thread_id must be a non-empty string")
        if receipt_type == "m.fully_read" and thread_id is not None:
            raise BadJson("m.fully_read cannot be threaded")
        pos = await self.db.write(
            self._write, user_id, room_id, receipt_type, event_id, thread_id or ""
        )
        self.notifier.notify(pos)

    def _write(
        self, conn: Conn, user_id: str, room_id: str, receipt_type: str, event_id: str, thread_id: str
    ) -> int:
        m = state_store.get_membership(conn, room_id, user_id)
        if m is None or m[0] != "join":
            raise Forbidden("You are not joined to this room")
        where = event_position(conn, event_id)
        if where is None or where[0] != room_id:
            raise NotFound("Unknown event")
        if receipt_type == "m.fully_read":
            from pocketserver.storage import account_data

            return account_data.put_account_data(
                conn, user_id, room_id, "m.fully_read", {"event_id": event_id}
            )
        pos = next_stream_pos(conn)
        data: dict[str, object] = {"ts": self.clock.time_ms()}
        if thread_id:
            data["thread_id"] = thread_id
        room_store.upsert_receipt(conn, room_id, receipt_type, user_id, thread_id, event_id, data, pos)
        for hook in self.in_receipt_txn:
            hook(conn, room_id, receipt_type, user_id, event_id, data)
        return pos
