"""Fakes for the federation services: other servers as a FederationRequester sees them,
and a pocketserver's services with a remote member put into a room (as the PDU intake
would after a remote join)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from pocketserver.federation.interfaces import FederationError, FederationUnreachable, Query
from pocketserver.services import Services, build_services
from pocketserver.services.auth import Requester
from pocketserver.services.server_keys import load_or_create_signing_key
from pocketserver.storage import accounts
from pocketserver.storage import state as state_store
from pocketserver.storage.database import Conn, Database
from pocketserver.storage.streams import next_stream_pos
from tests.conftest import make_config

Handler = Callable[[str, str, str, Any], Any]


@dataclass
class Request:
    method: str
    destination: str
    path: str
    body: Any


@dataclass
class FakeRemotes:
    """Other servers. Each request is recorded; a server in ``down`` is unreachable, one
    in ``refuse`` answers that status; otherwise ``handler(method, destination, path,
    body)`` answers (default: ``{}``). ``hold`` makes requests wait until it is set."""

    requests: list[Request] = field(default_factory=list)
    down: set[str] = field(default_factory=set)
    refuse: dict[str, int] = field(default_factory=dict)
    handler: Handler | None = None
    hold: trio.Event | None = None
    changed: trio.Event = field(default_factory=trio.Event)

    async def _answer(self, method: str, destination: str, path: str, body: Any) -> Any:
        self.requests.append(Request(method, destination, path, body))
        self.changed.set()
        self.changed = trio.Event()
        if self.hold is not None:
            await self.hold.wait()
        if destination in self.down:
            raise FederationUnreachable(f"{destination} is down")
        if destination in self.refuse:
            raise FederationError(self.refuse[destination], "M_FORBIDDEN", "no")
        if self.handler is not None:
            return self.handler(method, destination, path, body)
        return {}

    async def get_json(
        self, destination: str, path: str, query: Query | None = None, *, timeout_s: float = 60.0
    ) -> Any:
        return await self._answer("GET", destination, path, None)

    async def put_json(
        self, destination: str, path: str, body: Any, query: Query | None = None, *, timeout_s: float = 60.0
    ) -> Any:
        return await self._answer("PUT", destination, path, body)

    async def post_json(
        self, destination: str, path: str, body: Any, query: Query | None = None, *, timeout_s: float = 60.0
    ) -> Any:
        return await self._answer("POST", destination, path, body)

    # -- what a test reads --------------------------------------------------------------

    def transactions(self, destination: str | None = None) -> list[Request]:
        return [
            r
            for r in self.requests
            if r.method == "PUT"
            and r.path.startswith("/_matrix/federation/v1/send/")
            and (destination is None or r.destination == destination)
        ]

    def edus(self, destination: str, edu_type: str | None = None) -> list[dict[str, Any]]:
        return [
            e
            for r in self.transactions(destination)
            for e in r.body["edus"]
            if edu_type is None or e["edu_type"] == edu_type
        ]

    def pdus(self, destination: str) -> list[dict[str, Any]]:
        return [p for r in self.transactions(destination) for p in r.body["pdus"]]

    async def wait_until(self, condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
        """Until ``condition()`` holds after some request (fails after ``timeout_s``)."""
        with trio.fail_after(timeout_s):
            while not condition():
                with trio.move_on_after(0.05):  # also re-check what the database did
                    await self.changed.wait()


async def poll(condition: Callable[[], Any], timeout_s: float = 10.0) -> None:
    """Poll an async or sync ``condition`` until it is true, with a deadline."""
    with trio.fail_after(timeout_s):
        while True:
            got = condition()
            if hasattr(got, "__await__"):
                got = await got
            if got:
                return
            await trio.sleep(0.02)


@asynccontextmanager
async def running_services(
    tmp_path: Path, remotes: FakeRemotes
) -> AsyncIterator[Services]:
    """A pocketserver's services (server name test.local) whose federation requests go to
    ``remotes``, with the sender and key service running."""
    config = make_config(tmp_path)
    config.path("database").parent.mkdir(parents=True, exist_ok=True)
    db = Database(config.path("database"))
    key, _ = load_or_create_signing_key(config.path("signing_key"))
    svc = build_services(config, db, key)
    assert svc.federation_sender is not None and svc.federation_keys is not None
    svc.federation_sender.requester = remotes
    svc.federation_keys.requester = remotes
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(svc.federation_sender.run)
            await nursery.start(svc.federation_keys.run)
            yield svc
            nursery.cancel_scope.cancel()
    finally:
        db.close()


async def local_user(svc: Services, name: str, device_id: str = "DEV") -> Requester:
    user_id = f"@{name}:test.local"

    def txn(conn: Conn) -> None:
        accounts.insert_user(conn, user_id, None, 0)
        accounts.upsert_device(conn, user_id, device_id, f"{name}'s phone", 0)

    await svc.db.write(txn)
    return Requester(user_id, device_id)


async def remote_join(svc: Services, room_id: str, user_id: str, membership: str = "join") -> None:
    """Record a remote user's membership as the PDU intake would (the event itself is not
    what these tests are about: the row points at the room's latest event)."""

    def txn(conn: Conn) -> None:
        (event_id,) = conn.execute(
            "SELECT e.event_id FROM events e JOIN rooms r ON r.room_nid = e.room_nid"
            " WHERE r.room_id = ? ORDER BY e.event_nid DESC LIMIT 1",
            (room_id,),
        ).fetchone()
        state_store.set_membership(
            conn, room_id, user_id, membership, event_id, next_stream_pos(conn), False
        )

    await svc.db.write(txn)
