"""Guests and guest access (modules/guest_access.md): a revocation of guest access that
was stored but not yet acted on (the server stopped in between) still makes the room's
guests leave, once the server is back."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import trio

from pocketserver.server import run_server
from tests.api.helpers import auth_headers, create_room, register
from tests.conftest import make_config

C = "/_matrix/client/v3"
WAIT_S = 30.0


async def test_a_revocation_stored_before_a_stop_removes_the_guests_after_the_restart(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config(tmp_path, {"registration": {"allow_guests": True}})
    async with trio.open_nursery() as first:
        running = await first.start(partial(run_server, config, out=None, handle_signals=False))
        async with httpx.AsyncClient(base_url=running.urls[0], timeout=30) as http:
            _, token, _ = await register(http, "alice")
            room_id = await create_room(http, token, preset="private_chat")  # guests can join
            r = await http.post(f"{C}/register", params={"kind": "guest"}, json={})
            guest, guest_token = r.json()["user_id"], r.json()["access_token"]
            r = await http.put(f"{C}/rooms/{quote(room_id)}/state/m.room.join_rules/",
                               json={"join_rule": "public"}, headers=auth_headers(token))
            assert r.status_code == 200, r.text
            r = await http.post(f"{C}/rooms/{quote(room_id)}/join", json={}, headers=auth_headers(guest_token))
            assert r.status_code == 200, r.text

            # The revocation is stored, and the server stops before the guests leave.
            async def interrupted(room_id: str) -> None:
                return None

            monkeypatch.setattr(running.services.rooms, "_remove_guests_unless_allowed", interrupted)
            r = await http.put(f"{C}/rooms/{quote(room_id)}/state/m.room.guest_access/",
                               json={"guest_access": "forbidden"}, headers=auth_headers(token))
            assert r.status_code == 200, r.text
            r = await http.get(f"{C}/rooms/{quote(room_id)}/state/m.room.member/{quote(guest)}",
                               headers=auth_headers(token))
            assert r.json()["membership"] == "join"
        running.stop.set()

    running = await nursery.start(partial(run_server, config, out=None, handle_signals=False))
    try:
        async with httpx.AsyncClient(base_url=running.urls[0], timeout=30) as http:
            deadline = trio.current_time() + WAIT_S
            membership = None
            for _ in range(600):
                r = await http.get(f"{C}/rooms/{quote(room_id)}/state/m.room.member/{quote(guest)}",
                                   headers=auth_headers(token))
                membership = r.json().get("membership")
                if membership == "leave" or trio.current_time() > deadline:
                    break
                await trio.sleep(0.05)
            assert membership == "leave"
    finally:
        running.stop.set()
