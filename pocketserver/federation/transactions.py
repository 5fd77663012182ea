"""Inbound transactions: ``PUT /_matrix/federation/v1/send/{txnId}``.

Spec: server-server-api.md "Transactions" (at most 50 PDUs and 100 EDUs), "PDUs",
"EDUs", "Typing Notifications", "Presence", "Receipts", "Send-to-device messaging",
"Device Management" (``m.device_list_update``, ``m.signing_key_update``);
data/api/server-server/transactions.yaml.

- A transaction is answered once per (origin, txn_id): a retry gets the stored answer
  and changes nothing (``received_transactions``). One transaction per origin at a time.
- Each PDU goes through the intake; its result is ``{}`` or ``{"error": ...}``. A PDU
  for a room this server is not in, or sent by an origin with no member in the room
  (other than its own users' membership events), is refused with an error.
- Each EDU is checked (the user it speaks for belongs to the origin) and handed to the
  local services; a bad EDU is dropped, never failing the transaction.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from pocketserver.errors import MatrixError
from pocketserver.federation.intake import PduIntake
from pocketserver.federation.interfaces import (
    FederationError,
    FederationRequester,
    FederationUnreachable,
)
from pocketserver.protocol.events import Event, EventFormatError
from pocketserver.protocol.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from pocketserver.services.clock import Clock
from pocketserver.services.ephemeral import ReceiptService, TypingTracker
from pocketserver.services.notifier import Notifier
from pocketserver.storage import device_lists as dl_store
from pocketserver.storage import e2e_keys as e2e_store
from pocketserver.storage import event_graph as graph
from pocketserver.storage import events as ev_store
from pocketserver.storage import presence as presence_store
from pocketserver.storage import state as state_store
from pocketserver.storage import to_device as td_store
from pocketserver.storage.database import Conn, Database
from pocketserver.storage.events import RoomInfo
from pocketserver.storage.streams import next_stream_pos

log = logging.getLogger(__name__)

MAX_PDUS = 50
MAX_EDUS = 100
# An m.typing EDU does not say for how long: what Synapse assumes.
TYPING_TIMEOUT_MS = 30_000
_PRESENCE_STATES = ("online", "unavailable", "offline")
_FED_TO_DEVICE = "federation_to_device"
# Answers to transactions are kept this long for retries, then pruned (every
# PRUNE_EVERY transactions), so the ledger stays small.
KEEP_TRANSACTIONS_MS = 24 * 3600 * 1000
PRUNE_EVERY = 100


EduHandler = Callable[[str, dict[str, Any]], Awaitable[None]]


def _domain(user_id: str) -> str:
    return user_id.split(":", 1)[1] if isinstance(user_id, str) and ":" in user_id else ""


class TransactionHandler:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        notifier: Notifier,
        intake: PduIntake,
        requester: FederationRequester,
        server_name: str,
        *,
        typing: TypingTracker,
        receipts: ReceiptService,
    ) -> None:
        self.db = db
        self.clock = clock
        self.notifier = notifier
        self.intake = intake
        self.requester = requester
        self.server_name = server_name
        self.typing = typing
        self.receipts = receipts
        self._origin_locks: dict[str, trio.Lock] = {}
        self._since_prune = 0
        # Device-list EDUs go to whoever keeps remote device lists (the wiring sets these
        # to FederatedKeys' handlers); by default the handler's own, simpler ones.
        self.device_list_edu: EduHandler = self._device_list_update
        self.signing_key_edu: EduHandler = self._signing_key_update
        # Whether we are joining a room through ``origin`` (the wiring sets it to
        # RemoteRooms'): its presence for users not in any room here yet is kept, since
        # the resident server sends its members' presence as it accepts our join,
        # before we have stored the room.
        self.joining_through: Callable[[str], bool] = lambda origin: False

    async def on_transaction(self, origin: str, txn_id: str, body: Any) -> dict[str, Any]:
        """``PUT /_matrix/federation/v1/send/{txnId}``: the answer's body
        (``{"pdus": {event_id: {} | {"error": ...}}}``)."""
        if not isinstance(body, dict):
            raise MatrixError(400, "M_NOT_JSON", "The transaction must be a JSON object")
        pdus = body.get("pdus")
        edus = body.get("edus", [])
        if not isinstance(pdus, list):
            raise MatrixError(400, "M_BAD_JSON", "pdus must be a list")
        if not isinstance(edus, list):
            raise MatrixError(400, "M_BAD_JSON", "edus must be a list")
        if len(pdus) > MAX_PDUS or len(edus) > MAX_EDUS:
            raise MatrixError(
                400, "M_BAD_JSON", f"A transaction holds at most {MAX_PDUS} PDUs and {MAX_EDUS} EDUs"
            )
        lock = self._origin_locks.setdefault(origin, trio.Lock())
        try:
            async with lock:
                done = await self.db.read(graph.get_received_transaction, origin, txn_id)
                if done is not None:
                    return done
                results: dict[str, Any] = {}
                for pdu in pdus:
                    eid, error = await self._one_pdu(origin, pdu)
                    if eid is not None:
                        results[eid] = {} if error is None else {"error": error}
                for edu in edus:
                    try:
                        await self._one_edu(origin, edu)
                    except MatrixError as e:
                        log.info("EDU from %s dropped: %s", origin, e)
                answer = {"pdus": results}
                now = self.clock.time_ms()
                self._since_prune += 1
                prune = self._since_prune >= PRUNE_EVERY
                if prune:
                    self._since_prune = 0

                def record(conn: Conn) -> None:
                    graph.put_received_transaction(conn, origin, txn_id, answer, now)
                    if prune:
                        graph.delete_old_received_transactions(conn, now - KEEP_TRANSACTIONS_MS)

                await self.db.write(record)
                return answer
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._origin_locks.pop(origin, None)

    # -- PDUs ---------------------------------------------------------------------------

    async def _one_pdu(self, origin: str, pdu: Any) -> tuple[str | None, str | None]:
        if not isinstance(pdu, dict):
            return None, None
        room_id = pdu.get("room_id")

        def read(conn: Conn) -> tuple[RoomInfo | None, bool, bool]:
            info = ev_store.get_room(conn, room_id) if isinstance(room_id, str) else None
            if info is None or not info.has_state or not state_store.has_local_member(conn, info.room_id):
                # Unknown, or every local user left: this server is not in the room.
                return None, False, False
            allowed = graph.acl_allows(conn, info.room_id, origin)
            # An origin with no member in the room may send only its own users'
            # membership events (joins, leaves, knocks).
            own_member = pdu.get("type") == "m.room.member" and _domain(str(pdu.get("state_key", ""))) == origin
            return info, allowed, own_member or graph.server_in_room(conn, info.room_id, origin)

        info, allowed, in_room = await self.db.read(read)
        rv = info.room_version if info is not None else _guess_version(room_id)
        eid = _event_id(pdu, rv)
        if eid is None:
            return None, None
        if info is None or not info.has_state:
            return eid, f"this server is not in room {room_id}"
        if not allowed:
            return eid, f"{origin} is denied by the server ACL of room {room_id}"
        if not in_room:
            return eid, f"{origin} has no member in room {room_id}"
        try:
            return eid, await self.intake.receive_pdu(origin, pdu, info)
        except Exception:  # one PDU's failure must not fail the others of the transaction
            log.exception("PDU %s from %s failed", eid, origin)
            return eid, "internal error while handling the event"

    # -- EDUs ---------------------------------------------------------------------------

    async def _one_edu(self, origin: str, edu: Any) -> None:
        if not isinstance(edu, dict) or not isinstance(edu.get("content"), dict):
            return
        kind = edu.get("edu_type")
        content: dict[str, Any] = edu["content"]
        if kind == "m.typing":
            await self._typing(origin, content)
        elif kind == "m.receipt":
            await self._receipts(origin, content)
        elif kind == "m.presence":
            await self._presence(origin, content)
        elif kind == "m.direct_to_device":
            await self._to_device(origin, content)
        elif kind == "m.device_list_update":
            await self.device_list_edu(origin, content)
        elif kind == "m.signing_key_update":
            await self.signing_key_edu(origin, content)

    async def _typing(self, origin: str, content: dict[str, Any]) -> None:
        room_id, user_id, typing = content.get("room_id"), content.get("user_id"), content.get("typing")
        if not (isinstance(room_id, str) and isinstance(user_id, str) and isinstance(typing, bool)):
            return
        if _domain(user_id) != origin or not await self.db.read(graph.acl_allows, room_id, origin):
            return
        m = await self.db.read(state_store.get_membership, room_id, user_id)
        if m is None or m[0] != "join":
            return
        self.typing.set_typing(room_id, user_id, typing, TYPING_TIMEOUT_MS)

    async def _receipts(self, origin: str, content: dict[str, Any]) -> None:
        for room_id, by_type in content.items():
            if not isinstance(by_type, dict) or not await self.db.read(graph.acl_allows, room_id, origin):
                continue
            for rtype, by_user in by_type.items():
                if rtype != "m.read" or not isinstance(by_user, dict):
                    continue  # private receipts never travel
                for user_id, receipt in by_user.items():
                    if _domain(user_id) != origin or not isinstance(receipt, dict):
                        continue
                    ids = receipt.get("event_ids")
                    data = receipt.get("data") if isinstance(receipt.get("data"), dict) else {}
                    thread = data.get("thread_id") if isinstance(data, dict) else None
                    if not (isinstance(ids, list) and ids and isinstance(ids[0], str)):
                        continue
                    try:
                        await self.receipts.send_receipt(
                            user_id, room_id, "m.read", ids[0], thread if isinstance(thread, str) else None
                        )
                    except MatrixError as e:
                        log.info("receipt from %s dropped: %s", origin, e)

    async def _presence(self, origin: str, content: dict[str, Any]) -> None:
        push = content.get("push")
        if not isinstance(push, list):
            return
        now = self.clock.time_ms()
        joining = self.joining_through(origin)

        def write(conn: Conn) -> int | None:
            last: int | None = None
            for p in push[:MAX_EDUS]:
                if not isinstance(p, dict):
                    continue
                user_id, state = p.get("user_id"), p.get("presence")
                if not isinstance(user_id, str) or _domain(user_id) != origin or state not in _PRESENCE_STATES:
                    continue
                if not joining and not state_store.rooms_for_user(conn, user_id):
                    continue  # shares no room with anyone here
                msg = p.get("status_msg")
                ago = p.get("last_active_ago")
                last = presence_store.set_presence(
                    conn,
                    user_id,
                    state,
                    msg if isinstance(msg, str) else None,
                    now - ago if type(ago) is int and ago >= 0 else now,
                    p.get("currently_active") is True,
                )
            return last

        pos = await self.db.write(write)
        if pos is not None:
            self.notifier.notify(pos)

    async def _to_device(self, origin: str, content: dict[str, Any]) -> None:
        sender, etype = content.get("sender"), content.get("type")
        message_id, messages = content.get("message_id"), content.get("messages")
        if not (
            isinstance(sender, str)
            and _domain(sender) == origin
            and isinstance(etype, str)
            and isinstance(message_id, str)
            and isinstance(messages, dict)
        ):
            return
        now = self.clock.time_ms()

        def write(conn: Conn) -> int | None:
            # Each message_id is delivered once, however often the origin retries.
            if td_store.get_txn_response(conn, sender, origin, _FED_TO_DEVICE, message_id) is not None:
                return None
            rows: list[tuple[str, str, str]] = []
            for user_id, by_device in messages.items():
                if _domain(user_id) != self.server_name or not isinstance(by_device, dict):
                    continue
                for device_id, body in by_device.items():
                    if not isinstance(body, dict):
                        continue
                    devices = td_store.list_device_ids(conn, user_id) if device_id == "*" else [device_id]
                    text = json.dumps(body)
                    rows.extend((user_id, d, text) for d in devices)
            td_store.put_txn_response(conn, sender, origin, _FED_TO_DEVICE, message_id, {}, now)
            if not rows:
                return None
            pos = next_stream_pos(conn)
            td_store.insert_messages(conn, pos, sender, etype, rows, message_id)
            return pos

        pos = await self.db.write(write)
        if pos is not None:
            self.notifier.notify(pos)

    async def _device_list_update(self, origin: str, content: dict[str, Any]) -> None:
        """Mark the user's device list changed for local users sharing a room; a gap in
        the stream (``prev_id`` unknown) resyncs the whole list with ``/user/devices``."""
        user_id, stream_id = content.get("user_id"), content.get("stream_id")
        if not isinstance(user_id, str) or _domain(user_id) != origin or type(stream_id) is not int:
            return
        prev_ids = content.get("prev_id") or []
        device_id = content.get("device_id")

        def write(conn: Conn) -> tuple[int, bool]:
            row = conn.execute(
                "SELECT stream_id, stale FROM remote_device_lists WHERE user_id = ?", (user_id,)
            ).fetchone()
            known = row[0] if row else None
            gap = row is None or bool(row[1]) or (bool(prev_ids) and known not in prev_ids)
            if not gap and isinstance(device_id, str):
                if content.get("deleted") is True:
                    e2e_store.delete_device_e2e(conn, user_id, device_id)
                elif isinstance(content.get("keys"), dict):
                    e2e_store.set_device_keys(conn, user_id, device_id, content["keys"])
            conn.execute(
                "INSERT INTO remote_device_lists (user_id, stream_id, stale) VALUES (?, ?, ?)"
                " ON CONFLICT (user_id) DO UPDATE SET stream_id = excluded.stream_id,"
                " stale = excluded.stale",
                (user_id, stream_id, int(gap)),
            )
            pos = next_stream_pos(conn)
            dl_store.add_change(conn, pos, user_id)
            return pos, gap

        pos, gap = await self.db.write(write)
        self.notifier.notify(pos)
        if gap:
            await self.resync_device_list(origin, user_id)

    async def resync_device_list(self, origin: str, user_id: str) -> bool:
        """``GET /user/devices/{userId}``: the whole list replaces what is stored."""
        path = f"/_matrix/federation/v1/user/devices/{urllib.parse.quote(user_id, safe='')}"
        try:
            body = await self.requester.get_json(origin, path, timeout_s=30.0)
        except (FederationError, FederationUnreachable) as e:
            log.info("device list resync of %s failed: %s", user_id, e)
            return False
        if not isinstance(body, dict) or body.get("user_id") != user_id or type(body.get("stream_id")) is not int:
            return False
        devices: list[Any] = body["devices"] if isinstance(body.get("devices"), list) else []

        def write(conn: Conn) -> int:
            stored = {
                r[0] for r in conn.execute("SELECT device_id FROM device_keys WHERE user_id = ?", (user_id,))
            }
            seen: set[str] = set()
            for d in devices:
                if isinstance(d, dict) and isinstance(d.get("device_id"), str) and isinstance(d.get("keys"), dict):
                    seen.add(d["device_id"])
                    e2e_store.set_device_keys(conn, user_id, d["device_id"], d["keys"])
            for gone in stored - seen:
                e2e_store.delete_device_e2e(conn, user_id, gone)
            conn.execute(
                "INSERT INTO remote_device_lists (user_id, stream_id, stale) VALUES (?, ?, 0)"
                " ON CONFLICT (user_id) DO UPDATE SET stream_id = excluded.stream_id, stale = 0",
                (user_id, body["stream_id"]),
            )
            pos = next_stream_pos(conn)
            for key_type in ("master", "self_signing"):
                key = body.get(f"{key_type}_key")
                if isinstance(key, dict) and key.get("user_id") == user_id:
                    e2e_store.set_cross_signing_key(conn, user_id, key_type, key, pos)
            dl_store.add_change(conn, pos, user_id)
            return pos

        self.notifier.notify(await self.db.write(write))
        return True

    async def _signing_key_update(self, origin: str, content: dict[str, Any]) -> None:
        user_id = content.get("user_id")
        if not isinstance(user_id, str) or _domain(user_id) != origin:
            return

        def write(conn: Conn) -> int | None:
            pos = next_stream_pos(conn)
            changed = False
            for key_type in ("master", "self_signing"):
                key = content.get(f"{key_type}_key")
                if isinstance(key, dict) and key.get("user_id") == user_id:
                    e2e_store.set_cross_signing_key(conn, user_id, key_type, key, pos)
                    changed = True
            if not changed:
                return None
            dl_store.add_change(conn, pos, user_id)
            return pos

        pos = await self.db.write(write)
        if pos is not None:
            self.notifier.notify(pos)


def _guess_version(room_id: Any) -> RoomVersion:
    # A room this server does not know: its version is unknown; the ID form says
    # whether it is v12 (a hash) and the result's key is then at least well-formed.
    if isinstance(room_id, str) and ":" not in room_id:
        return KNOWN_ROOM_VERSIONS["12"]
    return KNOWN_ROOM_VERSIONS["10"]


def _event_id(pdu: dict[str, Any], rv: RoomVersion) -> str | None:
    if rv.uses_event_id_in_pdu:
        eid = pdu.get("event_id")
        return eid if isinstance(eid, str) else None
    try:
        return Event.from_pdu(pdu, rv).event_id
    except (EventFormatError, ValueError, TypeError):
        return None
