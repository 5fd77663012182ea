"""A running pocketserver (the `server` fixture) with the federation services built
over it, talking to a fake second server ("remote.test") through fakes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from pocketserver.federation.hosting import RoomHosting, build_room_federation
from pocketserver.federation.intake import PduIntake
from pocketserver.federation.transactions import TransactionHandler
from pocketserver.server import RunningServer
from pocketserver.storage import events as ev_store
from tests.api.helpers import create_room, register
from tests.federation.remote import FakeKeys, FakeRequester, RemoteRoom, key_for

REMOTE = "remote.test"


@dataclass
class Fed:
    server: RunningServer
    http: httpx.AsyncClient
    keys: FakeKeys
    requester: FakeRequester
    intake: PduIntake
    transactions: TransactionHandler
    hosting: RoomHosting

    @property
    def services(self) -> Any:
        return self.server.services

    async def local_room(self, **body: Any) -> tuple[str, str, str]:
        """A room created by a fresh local user: (room_id, user_id, token)."""
        user, token, _ = await register(self.http)
        body.setdefault("preset", "public_chat")
        room_id = await create_room(self.http, token, **body)
        return room_id, user, token

    async def mirror(self, room_id: str, server: str = REMOTE) -> RemoteRoom:
        """The remote server's view of one of our rooms: every timeline event so far."""
        db = self.services.db
        info = await db.read(ev_store.get_room, room_id)
        recs = await db.read(
            lambda c: ev_store.room_timeline(c, room_id, from_pos=None, to_pos=None, backwards=False, limit=10_000)
        )
        room = RemoteRoom(server, room_id, info.room_version)
        for rec in recs:
            room.learn_timeline(rec.event.pdu)
        self.requester.rooms[room_id] = room
        return room


@pytest.fixture
async def fed(server: RunningServer, http: httpx.AsyncClient) -> Fed:
    s = server.services
    keys = FakeKeys((REMOTE, key_for(REMOTE)), ("other.test", key_for("other.test")))
    requester = FakeRequester()
    built = build_room_federation(s, requester, keys)
    return Fed(server, http, keys, requester, built.intake, built.transactions, built.hosting)
