"""Room rules that play out across two real pocketservers on loopback, seen by their
users through the client API: bans, guest access revoked, history visibility in
backfill, erased users' messages, /messages from a sync's prev_batch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import trio

from pocketserver.server import RunningServer
from tests.api.helpers import auth_headers, create_room, register, send
from tests.federation.servers import start_federating_server

WAIT_S = 30.0
C = "/_matrix/client/v3"


def _q(s: str) -> str:
    return quote(s, safe="")


async def _poll(what: str, check: Any) -> Any:
    """``await check()`` until it returns something truthy; bounded in time and rounds."""
    deadline = trio.current_time() + WAIT_S
    for _ in range(600):
        got = await check()
        if got:
            return got
        if trio.current_time() > deadline:
            break
        await trio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class Pair:
    """``a`` hosts the rooms (alice), ``b`` is the other server (bob)."""

    a: RunningServer
    b: RunningServer
    ha: httpx.AsyncClient
    hb: httpx.AsyncClient
    alice: str
    alice_token: str
    bob: str
    bob_token: str

    @property
    def a_name(self) -> str:
        return str(self.a.services.config.server_name)


@pytest.fixture
async def pair(nursery: trio.Nursery, tmp_path: Path) -> Any:
    guests = {"registration": {"allow_guests": True}}
    a = await start_federating_server(nursery, tmp_path / "a", extra=guests)
    b = await start_federating_server(nursery, tmp_path / "b", extra=guests)
    async with httpx.AsyncClient(base_url=a.urls[0], timeout=30) as ha, \
            httpx.AsyncClient(base_url=b.urls[0], timeout=30) as hb:
        alice, alice_token, _ = await register(ha, "alice")
        bob, bob_token, _ = await register(hb, "bob")
        yield Pair(a, b, ha, hb, alice, alice_token, bob, bob_token)


async def _join_remote(p: Pair, http: httpx.AsyncClient, token: str, room_id: str) -> httpx.Response:
    return await http.post(f"{C}/join/{_q(room_id)}", params={"server_name": p.a_name}, json={},
                           headers=auth_headers(token))


async def _membership_on(http: httpx.AsyncClient, token: str, room_id: str, user: str) -> str | None:
    r = await http.get(f"{C}/rooms/{_q(room_id)}/state/m.room.member/{_q(user)}", headers=auth_headers(token))
    return r.json().get("membership") if r.status_code == 200 else None


async def test_a_remote_banned_user_loses_the_room_on_their_server_until_unbanned(pair: Pair) -> None:
    p = pair
    room_id = await create_room(p.ha, p.alice_token, preset="public_chat")
    r = await _join_remote(p, p.hb, p.bob_token, room_id)
    assert r.status_code == 200, r.text
    r = await p.ha.post(f"{C}/rooms/{_q(room_id)}/ban", json={"user_id": p.bob, "reason": "spam"},
                        headers=auth_headers(p.alice_token))
    assert r.status_code == 200, r.text

    async def bob_shut_out() -> bool:
        r = await p.hb.get(f"{C}/rooms/{_q(room_id)}/state/m.room.member/{_q(p.bob)}",
                           headers=auth_headers(p.bob_token))
        return r.status_code == 403 and r.json()["errcode"] == "M_FORBIDDEN"

    # Bob's own server learns of the ban and no longer shows him the room's state...
    await _poll("bob's server to apply the ban", bob_shut_out)
    r = await p.hb.get(f"{C}/rooms/{_q(room_id)}/state", headers=auth_headers(p.bob_token))
    assert r.status_code == 403 and r.json()["errcode"] == "M_FORBIDDEN"
    # ... he may not come back, nor be invited or kicked, until alice unbans him.
    r = await _join_remote(p, p.hb, p.bob_token, room_id)
    assert r.status_code == 403, r.text
    for action in ("invite", "kick"):
        r = await p.ha.post(f"{C}/rooms/{_q(room_id)}/{action}", json={"user_id": p.bob},
                            headers=auth_headers(p.alice_token))
        assert r.status_code == 403, (action, r.text)
    r = await p.ha.post(f"{C}/rooms/{_q(room_id)}/unban", json={"user_id": p.bob},
                        headers=auth_headers(p.alice_token))
    assert r.status_code == 200, r.text
    r = await _join_remote(p, p.hb, p.bob_token, room_id)
    assert r.status_code == 200, r.text
    assert await _membership_on(p.ha, p.alice_token, room_id, p.bob) == "join"


async def test_a_user_who_left_still_reads_the_state_as_it_was_a_banned_one_does_not(pair: Pair) -> None:
    p = pair
    room_id = await create_room(p.ha, p.alice_token, preset="public_chat", name="before")
    carol, carol_token, _ = await register(p.ha, "carol")
    r = await p.ha.post(f"{C}/join/{_q(room_id)}", json={}, headers=auth_headers(carol_token))
    assert r.status_code == 200, r.text
    r = await p.ha.post(f"{C}/rooms/{_q(room_id)}/leave", json={}, headers=auth_headers(carol_token))
    assert r.status_code == 200, r.text
    r = await p.ha.put(f"{C}/rooms/{_q(room_id)}/state/m.room.name/", json={"name": "after"},
                       headers=auth_headers(p.alice_token))
    assert r.status_code == 200, r.text
    r = await p.ha.get(f"{C}/rooms/{_q(room_id)}/state/m.room.name/", headers=auth_headers(carol_token))
    assert r.status_code == 200 and r.json() == {"name": "before"}
    r = await p.ha.post(f"{C}/rooms/{_q(room_id)}/ban", json={"user_id": carol}, headers=auth_headers(p.alice_token))
    assert r.status_code == 200, r.text
    for path in ("state/m.room.name/", "state", "members"):
        r = await p.ha.get(f"{C}/rooms/{_q(room_id)}/{path}", headers=auth_headers(carol_token))
        assert r.status_code == 403 and r.json()["errcode"] == "M_FORBIDDEN", (path, r.text)


async def test_guests_leave_when_another_server_revokes_guest_access(pair: Pair) -> None:
    """modules/guest_access.md: when guest access is revoked, each guest member's own
    server sets their membership to leave, also when the revocation came from a user
    of another server."""
    p = pair
    room_id = await create_room(p.ha, p.alice_token, preset="public_chat")
    r = await p.ha.put(f"{C}/rooms/{_q(room_id)}/state/m.room.guest_access/", json={"guest_access": "can_join"},
                       headers=auth_headers(p.alice_token))
    assert r.status_code == 200, r.text
    r = await p.ha.get(f"{C}/rooms/{_q(room_id)}/state/m.room.power_levels/", headers=auth_headers(p.alice_token))
    levels = r.json()
    levels["users"][p.bob] = 50
    r = await p.ha.put(f"{C}/rooms/{_q(room_id)}/state/m.room.power_levels/", json=levels,
                       headers=auth_headers(p.alice_token))
    assert r.status_code == 200, r.text
    r = await _join_remote(p, p.hb, p.bob_token, room_id)
    assert r.status_code == 200, r.text
    r = await p.ha.post(f"{C}/register", params={"kind": "guest"}, json={})
    assert r.status_code == 200, r.text
    guest, guest_token = r.json()["user_id"], r.json()["access_token"]
    r = await p.ha.post(f"{C}/rooms/{_q(room_id)}/join", json={}, headers=auth_headers(guest_token))
    assert r.status_code == 200, r.text

    async def bob_revokes() -> bool:  # once bob's server has his power level
        r = await p.hb.put(f"{C}/rooms/{_q(room_id)}/state/m.room.guest_access/",
                           json={"guest_access": "forbidden"}, headers=auth_headers(p.bob_token))
        return r.status_code == 200

    await _poll("bob's revocation of guest access", bob_revokes)

    async def guest_left() -> bool:
        return await _membership_on(p.ha, p.alice_token, room_id, guest) == "leave"

    await _poll("the guest's leave on alice's server", guest_left)
    # The guest's leave reaches bob's server too, and the guest cannot come back.
    await _poll("the guest's leave on bob's server",
                lambda: _is(_membership_on(p.hb, p.bob_token, room_id, guest), "leave"))
    r = await p.ha.post(f"{C}/rooms/{_q(room_id)}/join", json={}, headers=auth_headers(guest_token))
    assert r.status_code == 403, r.text


async def _is(got: Any, want: Any) -> bool:
    return await got == want


async def _remote_history(p: Pair, room_id: str) -> list[dict[str, Any]]:
    """Everything bob's server shows him of the room, newest first: /messages pages of
    10 (each page backfills from alice's server as needed) until there is no ``end``."""
    out: list[dict[str, Any]] = []
    params = {"dir": "b", "limit": "10"}
    for _ in range(50):
        r = await p.hb.get(f"{C}/rooms/{_q(room_id)}/messages", params=params, headers=auth_headers(p.bob_token))
        assert r.status_code == 200, r.text
        out += r.json()["chunk"]
        if "end" not in r.json():
            return out
        params["from"] = r.json()["end"]
    raise AssertionError("no end to the history")


@pytest.mark.parametrize("visibility", ["joined", "shared"])
async def test_history_from_before_a_remote_join_follows_history_visibility(pair: Pair, visibility: str) -> None:
    """Bob joins from another server after messages were sent: with ``joined`` history
    he sees none of them (his server backfills redacted copies and hides them), with
    ``shared`` he reads them all; what follows his join he sees either way."""
    p = pair
    room_id = await create_room(p.ha, p.alice_token, preset="public_chat")
    r = await p.ha.put(f"{C}/rooms/{_q(room_id)}/state/m.room.history_visibility/",
                       json={"history_visibility": visibility}, headers=auth_headers(p.alice_token))
    assert r.status_code == 200, r.text
    for i in range(12):
        if i == 6:  # a state event among them
            carol, carol_token, _ = await register(p.ha, "carol")
            r = await p.ha.post(f"{C}/join/{_q(room_id)}", json={}, headers=auth_headers(carol_token))
            assert r.status_code == 200, r.text
        await send(p.ha, p.alice_token, room_id, {"msgtype": "m.text", "body": f"before {i}"})
    r = await _join_remote(p, p.hb, p.bob_token, room_id)
    assert r.status_code == 200, r.text
    after = await send(p.ha, p.alice_token, room_id, {"msgtype": "m.text", "body": "after"})

    async def seen() -> list[dict[str, Any]] | None:
        history = await _remote_history(p, room_id)
        return history if any(e["event_id"] == after for e in history) else None

    history = await _poll("alice's message after bob's join", seen)
    bodies = [e["content"].get("body") for e in history if e["type"] == "m.room.message"]
    if visibility == "joined":
        assert bodies == ["after"]
    else:
        assert bodies == ["after"] + [f"before {i}" for i in reversed(range(12))]
        assert any(e["type"] == "m.room.member" and e["state_key"] == carol for e in history)
        assert history[-1]["type"] == "m.room.create"  # all the way back to the start
