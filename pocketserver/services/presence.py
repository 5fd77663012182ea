"""Presence of local users (client-server-api modules/presence.md).

A user's presence is ``online``, ``unavailable`` or ``offline`` with an optional status
message. Each change takes a global stream position and wakes /sync; /sync itself calls
:meth:`PresenceService.touch` for its ``set_presence`` parameter, which writes only when
something a client would see changed (or the last-active time is stale), so an idle
client's long-polls cost no writes.

Who may see whom: a user sees their own presence and that of users they share a joined
room with.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pocketserver.errors import BadJson, Forbidden, MatrixError, NotFound
from pocketserver.services.clock import Clock
from pocketserver.services.notifier import Notifier
from pocketserver.storage import accounts
from pocketserver.storage import presence as store
from pocketserver.storage.database import Conn, Database

STATES = ("online", "unavailable", "offline")
MAX_STATUS_MSG = 1024
# A client counts as currently active if it was active this recently.
ACTIVE_WINDOW_MS = 60_000
# touch() refreshes last_active_ts at most this often while nothing else changes.
TOUCH_INTERVAL_MS = 5 * 60_000


def presence_content(p: store.Presence, now_ms: int) -> dict[str, Any]:
    content: dict[str, Any] = {
        "presence": p.state,
        "last_active_ago": max(0, now_ms - p.last_active_ts),
        "currently_active": p.currently_active
        and p.state == "online"
        and now_ms - p.last_active_ts < ACTIVE_WINDOW_MS * 5,
    }
    if p.status_msg is not None:
        content["status_msg"] = p.status_msg
    return content


def presence_event(p: store.Presence, now_ms: int) -> dict[str, Any]:
    """The ``m.presence`` event /sync puts in ``presence.events``."""
    return {"type": "m.presence", "sender": p.user_id, "content": presence_content(p, now_ms)}


# How many users' last writes touch() remembers (a personal server has far fewer).
TOUCH_MEMORY = 10_000


class PresenceService:
    def __init__(self, db: Database, clock: Clock, notifier: Notifier) -> None:
        self.db = db
        self.clock = clock
        self.notifier = notifier
        # user_id -> (state, ms) of the last write made here: every presence write goes
        # through _write, so a /sync whose set_presence changes nothing needs no read.
        self._written: dict[str, tuple[str, int]] = {}
        # Called inside each presence write (user, content, whether the state or status
        # changed rather than only the last-active time): the federation sender.
        self.in_presence_txn: list[Callable[[Conn, str, dict[str, Any], bool], None]] = []

    async def set_status(
        self, requester_user_id: str, user_id: str, body: dict[str, Any]
    ) -> None:
        """PUT /presence/{userId}/status"""
        if requester_user_id != user_id:
            raise Forbidden("You cannot set the presence of another user")
        state = body.get("presence")
        if state is None:
            raise MatrixError(400, "M_MISSING_PARAM", "Missing 'presence'")
        if state not in STATES:
            raise MatrixError(
                400, "M_INVALID_PARAM", "presence must be online, unavailable or offline"
            )
        status_msg = body.get("status_msg")
        if status_msg is not None and not isinstance(status_msg, str):
            raise BadJson("'status_msg' must be a string")
        if status_msg is not None and len(status_msg) > MAX_STATUS_MSG:
            raise MatrixError(400, "M_INVALID_PARAM", "status_msg too long")
        await self._write(user_id, state, status_msg)

    async def _write(self, user_id: str, state: str, status_msg: str | None) -> None:
        now = self.clock.time_ms()
        self._written.pop(user_id, None)
        pos = await self.db.write(self._write_txn, user_id, state, status_msg, now)
        self._remember(user_id, state, now)
        self.notifier.notify(pos)

    def _remember(self, user_id: str, state: str, ms: int) -> None:
        if len(self._written) >= TOUCH_MEMORY:
            self._written.clear()
        self._written[user_id] = (state, ms)

    def _write_txn(
        self, conn: Conn, user_id: str, state: str, status_msg: str | None, now: int
    ) -> int:
        before = store.get_presence(conn, user_id) if self.in_presence_txn else None
        pos = store.set_presence(conn, user_id, state, status_msg, now, state == "online")
        if self.in_presence_txn:
            after = store.get_presence(conn, user_id)
            assert after is not None
            changed = (
                before is None
                or before.state != state
                or before.status_msg != status_msg
                or before.currently_active != after.currently_active
            )
            content = presence_content(after, now)
            for hook in self.in_presence_txn:
                hook(conn, user_id, content, changed)
        return pos

    async def touch(self, user_id: str, state: str) -> None:
        """/sync's ``set_presence``: keep the status message, write only on a change.

        ``offline`` changes no presence the user has: sync.yaml has it mean the client
        "is not marked as being online" by polling, so a bot or a background sync that
        asks for it leaves what the user set (``unavailable``, a status message) as it
        was. A user with no presence yet gets a stored ``offline`` (what they already
        count as), so the people they share rooms with are told of them."""
        if state not in STATES:
            raise MatrixError(400, "M_INVALID_PARAM", "set_presence must be online, unavailable or offline")
        now = self.clock.time_ms()
        known = self._written.get(user_id)
        if state == "offline" and known is not None:
            return
        if known is not None and known[0] == state and (
            state != "online" or now - known[1] < TOUCH_INTERVAL_MS
        ):
            return
        current = await self.db.read(store.get_presence, user_id)
        if state == "offline" and current is not None:
            self._remember(user_id, current.state, current.last_active_ts)
            return
        if current is not None and current.state == state and (
            state != "online" or now - current.last_active_ts < TOUCH_INTERVAL_MS
        ):
            return
        await self._write(user_id, state, current.status_msg if current else None)

    async def get_status(self, requester_user_id: str, user_id: str) -> dict[str, Any]:
        """GET /presence/{userId}/status"""

        def read(conn: Any) -> tuple[bool, bool, store.Presence | None]:
            exists = accounts.get_profile(conn, user_id) is not None
            visible = store.shares_room(conn, requester_user_id, user_id)
            return exists, visible, store.get_presence(conn, user_id)

        exists, visible, p = await self.db.read(read)
        if not exists:
            raise NotFound("Unknown user")
        if not visible:
            raise Forbidden("You do not share a room with this user")
        if p is None:
            return {"presence": "offline"}
        return presence_content(p, self.clock.time_ms())
