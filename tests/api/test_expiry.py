"""Self-destructing messages (MSC2228 ``org.matrix.self_destruct_after``, behind
``[experimental] msc2228_self_destruct``): what a reader sees once a message's time is
up, that nothing else is touched, that it is off by default, and that a restart loses
no expiry."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import trio

from pocketserver.config import Config
from pocketserver.server import RunningServer, run_server
from pocketserver.services.clock import Clock
from tests.api.helpers import V3, auth_headers, create_room, register, send
from tests.conftest import make_config

ON = {"experimental": {"msc2228_self_destruct": True}}
FIELD = "org.matrix.self_destruct_after"


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path, ON)


def now_ms() -> int:
    return int(time.time() * 1000)


async def content_of(http: httpx.AsyncClient, token: str, room: str, event_id: str) -> dict[str, Any]:
    r = await http.get(f"{V3}/rooms/{quote(room)}/event/{quote(event_id)}", headers=auth_headers(token))
    assert r.status_code == 200, r.text
    return dict(r.json()["content"])


async def wait_until_destroyed(http: httpx.AsyncClient, token: str, room: str, event_id: str) -> None:
    """Until the server serves the event with no content (404 meanwhile: it may still
    be on its way over federation)."""
    with trio.fail_after(30):
        while True:
            r = await http.get(f"{V3}/rooms/{quote(room)}/event/{quote(event_id)}", headers=auth_headers(token))
            assert r.status_code in (200, 404), r.text
            if r.status_code == 200 and r.json()["content"] == {}:
                return
            await trio.sleep(0.05)


async def test_a_message_loses_its_content_when_its_time_is_up(http: httpx.AsyncClient) -> None:
    _, atok, _ = await register(http)
    room = await create_room(http, atok)
    soon = await send(http, atok, room, {"msgtype": "m.text", "body": "secret words", FIELD: now_ms() + 500})
    later = await send(http, atok, room, {"msgtype": "m.text", "body": "for an hour", FIELD: now_ms() + 3_600_000})
    plain = await send(http, atok, room, {"msgtype": "m.text", "body": "plain words"})
    # A state event's content is the room's state: the field does nothing there.
    r = await http.put(
        f"{V3}/rooms/{quote(room)}/state/m.room.topic", json={"topic": "t", FIELD: now_ms()}, headers=auth_headers(atok)
    )
    assert r.status_code == 200, r.text
    topic = r.json()["event_id"]
    await wait_until_destroyed(http, atok, room, soon)
    # Everywhere a client reads it: the event keeps its place, not its content.
    r = await http.get(
        f"{V3}/rooms/{quote(room)}/messages",
        params={"dir": "b", "limit": 20, "filter": '{"types":["m.room.message"]}'},
        headers=auth_headers(atok),
    )
    assert r.status_code == 200, r.text
    chunk = {e["event_id"]: e["content"] for e in r.json()["chunk"]}
    assert chunk[soon] == {}
    assert chunk[later]["body"] == "for an hour" and chunk[plain]["body"] == "plain words"
    r = await http.post(
        f"{V3}/search", json={"search_categories": {"room_events": {"search_term": "secret"}}}, headers=auth_headers(atok)
    )
    assert r.status_code == 200, r.text
    assert r.json()["search_categories"]["room_events"]["results"] == []
    assert (await content_of(http, atok, room, topic))["topic"] == "t"


async def test_off_by_default(tmp_path: Path, nursery: trio.Nursery) -> None:
    running: RunningServer = await nursery.start(
        partial(run_server, make_config(tmp_path), out=None, handle_signals=False)
    )
    assert running.services.expiry is None
    async with httpx.AsyncClient(base_url=running.urls[0], timeout=30) as http:
        _, atok, _ = await register(http)
        room = await create_room(http, atok)
        ev = await send(http, atok, room, {"msgtype": "m.text", "body": "kept", FIELD: now_ms() - 1000})
        assert (await content_of(http, atok, room, ev))["body"] == "kept"
    running.stop.set()


class StoppedClock(Clock):
    """A clock that stands still: while it runs the server, nothing falls due."""

    def __init__(self, at_ms: int) -> None:
        self.at_ms = at_ms

    def time_ms(self) -> int:
        return self.at_ms


async def test_an_expiry_survives_a_restart(tmp_path: Path) -> None:
    config = make_config(tmp_path, ON)

    def stop_the_expiry_clock(services: Any) -> None:
        services.expiry.clock = StoppedClock(now_ms())

    async with trio.open_nursery() as first:
        running: RunningServer = await first.start(
            partial(run_server, config, out=None, handle_signals=False, services_hook=stop_the_expiry_clock)
        )
        async with httpx.AsyncClient(base_url=running.urls[0], timeout=30) as http:
            _, atok, _ = await register(http, "alice", "a-password-1")
            room = await create_room(http, atok)
            ev = await send(http, atok, room, {"msgtype": "m.text", "body": "gone soon", FIELD: now_ms() + 200})
            assert (await content_of(http, atok, room, ev))["body"] == "gone soon"
        running.stop.set()
    async with trio.open_nursery() as second:
        running = await second.start(partial(run_server, config, out=None, handle_signals=False))
        async with httpx.AsyncClient(base_url=running.urls[0], timeout=30) as http:
            await wait_until_destroyed(http, atok, room, ev)
        running.stop.set()


async def test_a_copy_that_came_over_federation_is_destroyed_too(nursery: trio.Nursery, tmp_path: Path) -> None:
    """Carol's server knows nothing of self-destructing messages; Alice's does, and
    destroys its own copy of Carol's message when its time is up."""
    from tests.federation.servers import start_federating_server

    here = await start_federating_server(nursery, tmp_path / "here", extra=ON)
    there = await start_federating_server(nursery, tmp_path / "there")
    async with httpx.AsyncClient(base_url=here.urls[0], timeout=30) as h, httpx.AsyncClient(
        base_url=there.urls[0], timeout=30
    ) as t:
        alice, atok, _ = await register(h, "alice")
        _, ctok, _ = await register(t, "carol")
        room = await create_room(t, ctok, preset="private_chat", invite=[alice])
        with trio.fail_after(30):
            while True:
                r = await h.post(f"{V3}/join/{quote(room)}", json={}, headers=auth_headers(atok))
                if r.status_code == 200:
                    break
                await trio.sleep(0.05)  # the invite is still on its way
        ev = await send(t, ctok, room, {"msgtype": "m.text", "body": "from afar", FIELD: now_ms() + 500})
        await wait_until_destroyed(h, atok, room, ev)
        # Carol's own server keeps it: the feature is off there.
        assert (await content_of(t, ctok, room, ev))["body"] == "from afar"
