"""Invite blocking (v1.18, modules/invite_permission.md) over HTTP: a user whose
m.invite_permission_config says "block" is not invited, and the invites already
stored do not reach their clients' sync endpoints."""

from __future__ import annotations

from typing import Any

import httpx

from tests.api.helpers import V3, auth_headers, create_room, register, sync

CONFIG = "m.invite_permission_config"


async def _set_config(http: httpx.AsyncClient, uid: str, token: str, content: dict[str, Any]) -> None:
    r = await http.put(f"{V3}/user/{uid}/account_data/{CONFIG}", json=content, headers=auth_headers(token))
    assert r.status_code == 200, r.text


async def _members(http: httpx.AsyncClient, token: str, room: str) -> dict[str, str]:
    r = await http.get(f"{V3}/rooms/{room}/state", headers=auth_headers(token))
    assert r.status_code == 200, r.text
    return {e["state_key"]: e["content"]["membership"] for e in r.json() if e["type"] == "m.room.member"}


async def test_inviting_a_blocking_user_is_refused_everywhere(http: httpx.AsyncClient) -> None:
    alice, atok, _ = await register(http)
    bob, btok, _ = await register(http)
    carol, _ctok, _ = await register(http)
    await _set_config(http, bob, btok, {"default_action": "block"})
    room = await create_room(http, atok)
    h = auth_headers(atok)

    r = await http.post(f"{V3}/rooms/{room}/invite", json={"user_id": bob}, headers=h)
    assert (r.status_code, r.json()["errcode"]) == (403, "M_INVITE_BLOCKED")
    r = await http.put(
        f"{V3}/rooms/{room}/state/m.room.member/{bob}", json={"membership": "invite"}, headers=h
    )
    assert (r.status_code, r.json()["errcode"]) == (403, "M_INVITE_BLOCKED")
    # createRoom still makes the room, with everyone else's invites.
    r = await http.post(f"{V3}/createRoom", json={"invite": [bob, carol]}, headers=h)
    assert r.status_code == 200, r.text
    made = r.json()["room_id"]
    assert await _members(http, atok, made) == {alice: "join", carol: "invite"}
    assert bob not in await _members(http, atok, room)

    # Another value, or none, lets invites through again.
    await _set_config(http, bob, btok, {"default_action": "allow"})
    r = await http.post(f"{V3}/rooms/{room}/invite", json={"user_id": bob}, headers=h)
    assert r.status_code == 200, r.text
    assert (await _members(http, atok, room))[bob] == "invite"


async def test_stored_invites_are_not_served_while_blocked(http: httpx.AsyncClient) -> None:
    alice, atok, _ = await register(http)
    bob, btok, _ = await register(http)
    bh = auth_headers(btok)
    before = await sync(http, btok)
    r = await http.get(f"{V3}/initialSync", headers=bh)
    stream_from = r.json()["end"]
    room = await create_room(http, atok, name="Blocked later")
    r = await http.post(f"{V3}/rooms/{room}/invite", json={"user_id": bob}, headers=auth_headers(atok))
    assert r.status_code == 200, r.text
    assert room in (await sync(http, btok))["rooms"]["invite"]

    await _set_config(http, bob, btok, {"default_action": "block"})
    # Neither an initial nor an incremental /sync, /initialSync or /events shows it ...
    assert room not in (await sync(http, btok))["rooms"]["invite"]
    assert room not in (await sync(http, btok, since=before["next_batch"]))["rooms"]["invite"]
    r = await http.get(f"{V3}/initialSync", headers=bh)
    assert room not in [x["room_id"] for x in r.json()["rooms"]]
    r = await http.get(f"{V3}/events", params={"from": stream_from, "timeout": 0}, headers=bh)
    assert r.status_code == 200, r.text
    assert [e for e in r.json()["chunk"] if e.get("room_id") == room] == []
    # ... while the room's state still holds it.
    assert (await _members(http, atok, room))[bob] == "invite"

    # Unblocked: an initial sync shows the invite again, with the create event in its
    # stripped state (v1.16).
    await _set_config(http, bob, btok, {})
    invite = (await sync(http, btok))["rooms"]["invite"][room]
    types = {e["type"] for e in invite["invite_state"]["events"]}
    assert {"m.room.create", "m.room.name", "m.room.member"} <= types
    assert alice
