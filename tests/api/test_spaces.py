"""Spaces and room-level extras over HTTP: /hierarchy's v1.15 fields, /room_summary
(v1.15) and /mutual_rooms (v1.19), the features /versions advertises them by."""

from __future__ import annotations

import httpx

from tests.api.helpers import V3, auth_headers, create_room, join, register

V1 = "/_matrix/client/v1"
MEGOLM = "m.megolm.v1.aes-sha2"


async def test_hierarchy_and_summary_carry_version_encryption_and_allowed_rooms(
    http: httpx.AsyncClient,
) -> None:
    alice, atok, _ = await register(http)
    _bob, btok, _ = await register(http)
    h = auth_headers(atok)
    space = await create_room(
        http, atok, preset="public_chat", name="Space", creation_content={"type": "m.space"}
    )
    child = await create_room(
        http,
        atok,
        room_version="11",
        name="Members only",
        initial_state=[
            {"type": "m.room.encryption", "content": {"algorithm": MEGOLM}},
            {
                "type": "m.room.join_rules",
                "content": {"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": space}]},
            },
        ],
    )
    r = await http.put(
        f"{V3}/rooms/{space}/state/m.space.child/{child}", json={"via": ["localhost"]}, headers=h
    )
    assert r.status_code == 200, r.text

    r = await http.get(f"{V1}/rooms/{space}/hierarchy", headers=h)
    assert r.status_code == 200, r.text
    rooms = {x["room_id"]: x for x in r.json()["rooms"]}
    assert rooms[space]["room_type"] == "m.space" and rooms[space]["room_version"] == "12"
    assert "encryption" not in rooms[space] and "allowed_room_ids" not in rooms[space]
    assert rooms[child]["room_version"] == "11"
    assert rooms[child]["encryption"] == MEGOLM
    assert rooms[child]["allowed_room_ids"] == [space]

    # The summary: for a space member who may join the restricted room, and not for
    # someone outside it.
    r = await http.get(f"{V1}/room_summary/{child}", headers=auth_headers(btok))
    assert (r.status_code, r.json()["errcode"]) == (404, "M_NOT_FOUND")
    await join(http, btok, space)
    r = await http.get(f"{V1}/room_summary/{child}", headers=auth_headers(btok))
    assert r.status_code == 200, r.text
    summary = r.json()
    assert summary["name"] == "Members only" and summary["join_rule"] == "restricted"
    assert summary["encryption"] == MEGOLM and summary["allowed_room_ids"] == [space]
    assert "membership" not in summary
    r = await http.get(f"{V1}/room_summary/{space}", headers=h)
    assert r.json()["membership"] == "join" and r.json()["num_joined_members"] == 2
    r = await http.get(f"{V1}/room_summary/{space}")  # a public room needs no token
    assert r.status_code == 200 and "membership" not in r.json()
    assert alice


async def test_mutual_rooms(http: httpx.AsyncClient) -> None:
    alice, atok, _ = await register(http)
    bob, btok, _ = await register(http)
    shared = await create_room(http, atok, preset="public_chat")
    await create_room(http, atok, preset="public_chat")  # bob is not in this one
    await join(http, btok, shared)
    r = await http.get(f"{V1}/mutual_rooms", params={"user_id": bob}, headers=auth_headers(atok))
    assert r.status_code == 200 and r.json() == {"joined": [shared], "count": 1}
    r = await http.get(f"{V1}/mutual_rooms", params={"user_id": alice}, headers=auth_headers(atok))
    assert (r.status_code, r.json()["errcode"]) == (400, "M_INVALID_PARAM")
    r = await http.get(f"{V1}/mutual_rooms", params={"user_id": "@nobody:localhost"}, headers=auth_headers(atok))
    assert r.status_code == 200 and r.json() == {"joined": [], "count": 0}
