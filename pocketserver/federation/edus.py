"""What this server tells other servers: its users' PDUs and EDUs, handed to the sender.

Spec: shared/spec/content/server-server-api.md, "Transactions" (PDUs go to every server
in the room), "Typing Notifications" (``m.typing``), "Receipts" (``m.receipt``),
"Presence" (``m.presence``), "Device Management" (``m.device_list_update``,
``m.signing_key_update``) and "Send-to-device messaging" (``m.direct_to_device``, queued
by services/e2ee.py itself).

Each producer is a small function the local service calls *inside its own write
transaction* (``*_in_txn``), so the outbox row commits or rolls back with what it
describes: nothing accepted is lost to a crash between the two. Typing is the exception:
it is ephemeral and goes through the sender's in-memory queue.

Cost on a server whose rooms have no remote members: one empty probe of the partial index
over remote joined members per event / receipt / presence or device change, no row, no
task.

What it must never know: how a transaction is sent (sender.py), how an inbound EDU is
handled (the transaction handler's business).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pocketserver.federation.sender import FederationSender
from pocketserver.protocol.events import Event
from pocketserver.services.presence import presence_content
from pocketserver.storage import e2e_keys, outbox
from pocketserver.storage import presence as presence_store
from pocketserver.storage import state as state_store
from pocketserver.storage.database import Conn, Database

JsonDict = dict[str, Any]

# An online user's unchanged presence is sent again this often: other servers mark a
# remote user offline when they have heard nothing for a while (Synapse: 30 minutes).
PRESENCE_REFRESH_MS = 25 * 60_000
PRESENCE_MEMORY = 10_000

# Receipt types other servers hear of (private receipts and read markers stay here).
FEDERATED_RECEIPTS = ("m.read",)


def _server_of(user_id: str) -> str:
    return user_id.split(":", 1)[1] if ":" in user_id else ""


class FederationEdus:
    def __init__(self, db: Database, sender: FederationSender, server_name: str) -> None:
        self.db = db
        self.sender = sender
        self.server_name = server_name
        # user -> when their presence last went out (ms); bounded, a loss only means an
        # early refresh.
        self._presence_sent: dict[str, int] = {}

    def attach(self, pipeline: Any, typing: Any, receipts: Any, presence: Any, e2ee: Any) -> None:
        """Hook into the local services that produce what other servers must hear of."""
        pipeline.in_persist_txn.append(self.pdu_in_txn)
        typing.on_typing.append(self.on_typing)
        receipts.in_receipt_txn.append(self.receipt_in_txn)
        presence.in_presence_txn.append(self.presence_in_txn)
        e2ee.federation = self

    # -- PDUs -----------------------------------------------------------------------------

    def pdu_in_txn(self, conn: Conn, event: Event) -> None:
        """A local event was persisted: queue it for every other server in the room.

        So does an invite of one of our users that this server built in another
        server's user's name from a third-party invite (third_party_invites.py).
        A membership event also goes to its target's server when that server leaves the
        room by it (a kick or ban: it must learn of it). An invite goes to the invitee's
        server through ``/invite`` (joins/invites' business), and in a transaction only
        when that server is in the room: it kept the ``/invite`` copy as an outlier, which
        the transaction makes part of its room.
        """
        if not event.sender.endswith(":" + self.server_name) and not _third_party_invite_of_ours(event, self.server_name):
            return
        self.presence_on_join_in_txn(conn, event)
        servers = outbox.remote_servers_in_room(conn, event.room_id)
        if event.type == "m.room.member" and event.state_key:
            target = _server_of(event.state_key)
            if target != self.server_name:
                if event.membership in ("leave", "ban"):
                    servers.add(target)
        if servers:
            self.sender.queue_in_txn(conn, sorted(servers), outbox.PDU, event.pdu)

    # -- typing ---------------------------------------------------------------------------

    async def on_typing(self, room_id: str, user_id: str, typing: bool) -> None:
        """A local user started or stopped typing: tell the room's other servers (in
        memory only; a typing notification is worth nothing after a restart)."""
        if not user_id.endswith(":" + self.server_name):
            return
        servers = await self.db.read(outbox.remote_servers_in_room, room_id)
        if servers:
            self.sender.queue_ephemeral(
                sorted(servers),
                {
                    "edu_type": "m.typing",
                    "content": {"room_id": room_id, "user_id": user_id, "typing": typing},
                },
            )

    # -- receipts -------------------------------------------------------------------------

    def receipt_in_txn(
        self,
        conn: Conn,
        room_id: str,
        receipt_type: str,
        user_id: str,
        event_id: str,
        data: Mapping[str, Any],
    ) -> None:
        """A local user's public read receipt: to the room's other servers. The sender
        merges a transaction's receipts into one ``m.receipt`` per transaction."""
        if receipt_type not in FEDERATED_RECEIPTS:
            return
        servers = outbox.remote_servers_in_room(conn, room_id)
        if not servers:
            return
        edu = {
            "edu_type": "m.receipt",
            "content": {
                room_id: {receipt_type: {user_id: {"event_ids": [event_id], "data": dict(data)}}}
            },
        }
        self.sender.queue_in_txn(conn, sorted(servers), outbox.EDU, edu)

    # -- presence -------------------------------------------------------------------------

    def presence_in_txn(
        self, conn: Conn, user_id: str, content: Mapping[str, Any], changed: bool
    ) -> None:
        """A local user's presence changed (``changed``: state or status, not only the
        last-active time): to the servers sharing a room with them. An unchanged online
        presence goes again every :data:`PRESENCE_REFRESH_MS`, so they keep it."""
        now = self.sender.clock.time_ms()
        if not changed and (
            content.get("presence") != "online"
            or now - self._presence_sent.get(user_id, 0) < PRESENCE_REFRESH_MS
        ):
            return
        servers = outbox.remote_servers_sharing_rooms(conn, user_id)
        if not servers:
            return
        if len(self._presence_sent) >= PRESENCE_MEMORY:
            self._presence_sent.clear()
        self._presence_sent[user_id] = now
        push = {"user_id": user_id, **content}
        self.sender.queue_in_txn(
            conn, sorted(servers), outbox.EDU, {"edu_type": "m.presence", "content": {"push": [push]}}
        )

    def presence_on_join_in_txn(self, conn: Conn, event: Event) -> None:
        """A join (ours or another server's) makes users share a room who may not have
        before: a local user who joined has their presence sent to the room's other
        servers; a remote user who joined has their server sent the presence of the
        room's local members. Otherwise they would only hear of it at the next change
        or refresh ("Presence": servers send presence to those sharing a room)."""
        if event.type != "m.room.member" or event.membership != "join" or not event.state_key:
            return
        joiner = event.state_key
        if _server_of(joiner) == self.server_name:
            servers = outbox.remote_servers_in_room(conn, event.room_id)
            users = [joiner]
        else:
            servers = {_server_of(joiner)}
            users = state_store.local_members(conn, event.room_id)
        if not servers or not users:
            return
        now = self.sender.clock.time_ms()
        push = [
            {"user_id": p.user_id, **presence_content(p, now)}
            for p in presence_store.get_presences(conn, sorted(users))
        ]
        if push:
            self.sender.queue_in_txn(
                conn, sorted(servers), outbox.EDU, {"edu_type": "m.presence", "content": {"push": push}}
            )

    async def on_remote_join(self, record: Any) -> None:
        """A join another server sent us was stored (``record`` an EventRecord)."""
        event = record.event
        joiner = event.state_key
        if event.type != "m.room.member" or event.membership != "join" or not joiner:
            return

        def txn(conn: Conn) -> None:
            # Only a join that made it into the room's state (not a rejected or
            # soft-failed one).
            if state_store.get_membership(conn, event.room_id, joiner) == ("join", event.event_id):
                self.presence_on_join_in_txn(conn, event)

        await self.db.write(txn)

    # -- device lists and cross-signing ---------------------------------------------------

    def device_list_update_in_txn(
        self,
        conn: Conn,
        stream_id: int,
        user_id: str,
        device_id: str,
        *,
        deleted: bool = False,
    ) -> None:
        """A local user's device was added, renamed, deleted or published new keys (the
        change row at ``stream_id`` is written): ``m.device_list_update`` to every
        server sharing a room with them. ``prev_id`` names the user's previous change,
        so a server that missed one sees the gap and resyncs with /user/devices."""
        servers = outbox.remote_servers_sharing_rooms(conn, user_id)
        if not servers:
            return
        row = conn.execute(
            "SELECT max(stream_pos) FROM device_list_changes"
            " WHERE user_id = ? AND stream_pos < ? AND only_for IS NULL",
            (user_id, stream_id),
        ).fetchone()
        content: JsonDict = {
            "user_id": user_id,
            "device_id": device_id,
            "stream_id": stream_id,
            "prev_id": [row[0]] if row and row[0] is not None else [],
        }
        device = None if deleted else conn.execute(
            "SELECT display_name FROM devices WHERE user_id = ? AND device_id = ?",
            (user_id, device_id),
        ).fetchone()
        if device is None:
            content["deleted"] = True
        else:
            keys = e2e_keys.get_device_keys(conn, user_id, device_id)
            if keys is not None:
                # With the signatures uploaded over it since (the self-signing key's).
                extra = e2e_keys.get_signatures_by_target(conn, user_id, user_id).get(device_id)
                if extra:
                    sigs = {u: dict(v) for u, v in (keys.get("signatures") or {}).items()}
                    sigs.setdefault(user_id, {}).update(extra)
                    keys["signatures"] = sigs
                content["keys"] = keys
            if device[0] is not None:
                content["device_display_name"] = device[0]
        self.sender.queue_in_txn(
            conn, sorted(servers), outbox.EDU, {"edu_type": "m.device_list_update", "content": content}
        )

    def signing_key_update_in_txn(
        self,
        conn: Conn,
        user_id: str,
        master_key: Mapping[str, Any] | None,
        self_signing_key: Mapping[str, Any] | None,
    ) -> None:
        """A local user's public cross-signing keys changed: ``m.signing_key_update``."""
        if master_key is None and self_signing_key is None:
            return
        servers = outbox.remote_servers_sharing_rooms(conn, user_id)
        if not servers:
            return
        content: JsonDict = {"user_id": user_id}
        if master_key is not None:
            content["master_key"] = dict(master_key)
        if self_signing_key is not None:
            content["self_signing_key"] = dict(self_signing_key)
        self.sender.queue_in_txn(
            conn, sorted(servers), outbox.EDU, {"edu_type": "m.signing_key_update", "content": content}
        )

    # -- send-to-device -------------------------------------------------------------------

    def to_device_in_txn(
        self,
        conn: Conn,
        destination: str,
        sender: str,
        event_type: str,
        message_id: str,
        messages: Mapping[str, Any],
    ) -> None:
        """To-device messages for users of ``destination`` (``m.direct_to_device``)."""
        edu = {
            "edu_type": "m.direct_to_device",
            "content": {
                "sender": sender,
                "type": event_type,
                "message_id": message_id,
                "messages": dict(messages),
            },
        }
        self.sender.queue_in_txn(conn, [destination], outbox.EDU, edu)


def _third_party_invite_of_ours(event: Event, server_name: str) -> bool:
    return (
        event.type == "m.room.member"
        and event.membership == "invite"
        and "third_party_invite" in event.content
        and isinstance(event.state_key, str)
        and event.state_key.endswith(":" + server_name)
    )
