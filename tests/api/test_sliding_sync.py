"""Simplified sliding sync (MSC4186) as a client written from the proposal's text sees it:
lists, ranges, filters, room fields, connections and positions, long polling, and the
extensions (to-device, e2ee, account data, receipts, typing)."""

from __future__ import annotations

import itertools
from typing import Any

import httpx

from tests.api.helpers import V3, auth_headers, create_room, join, register, send

SS = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
_txn = itertools.count()


async def ss(http: httpx.AsyncClient, token: str, body: dict[str, Any], **params: Any) -> dict[str, Any]:
    r = await http.post(SS, json=body, params=params, headers=auth_headers(token))
    assert r.status_code == 200, r.text
    return dict(r.json())


async def ss_error(http: httpx.AsyncClient, token: str, body: Any, **params: Any) -> tuple[int, str]:
    r = await http.post(SS, json=body, params=params, headers=auth_headers(token))
    return r.status_code, r.json().get("errcode", "")


def all_rooms(ranges: list[list[int]] | None = None, limit: int = 1, **extra: Any) -> dict[str, Any]:
    lst: dict[str, Any] = {
        "ranges": ranges or [[0, 19]],
        "timeline_limit": limit,
        "required_state": [["m.room.create", ""], ["m.room.name", ""]],
    }
    lst.update(extra)
    return {"lists": {"all": lst}}


async def put_state(http: httpx.AsyncClient, token: str, room: str, etype: str, content: dict[str, Any], key: str = "") -> None:
    r = await http.put(f"{V3}/rooms/{room}/state/{etype}/{key}", json=content, headers=auth_headers(token))
    assert r.status_code == 200, r.text


async def put_account_data(http: httpx.AsyncClient, token: str, user: str, etype: str, content: dict[str, Any], room: str | None = None) -> None:
    path = f"{V3}/user/{user}/rooms/{room}/account_data/{etype}" if room else f"{V3}/user/{user}/account_data/{etype}"
    r = await http.put(path, json=content, headers=auth_headers(token))
    assert r.status_code == 200, r.text


async def test_versions_advertise_simplified_sliding_sync(http: httpx.AsyncClient) -> None:
    r = await http.get("/_matrix/client/versions")
    assert r.json()["unstable_features"]["org.matrix.simplified_msc3575"] is True


async def test_first_answer_lists_newest_rooms_with_their_fields(http: httpx.AsyncClient) -> None:
    alice, atok, _ = await register(http)
    bob, btok, _ = await register(http)
    rooms = [await create_room(http, atok, name=f"room {i}", preset="public_chat") for i in range(5)]
    await join(http, btok, rooms[1])
    await send(http, btok, rooms[1], {"msgtype": "m.text", "body": "bump"})  # rooms[1] is now newest
    await send(http, atok, rooms[3], {"msgtype": "m.text", "body": "older"})
    await send(http, btok, rooms[1], {"msgtype": "m.text", "body": "newest"})

    resp = await ss(http, atok, all_rooms([[0, 2]], limit=2))
    assert resp["lists"]["all"]["count"] == 5
    assert set(resp["rooms"]) == {rooms[1], rooms[3], rooms[4]}
    room = resp["rooms"][rooms[1]]
    assert room["initial"] is True
    assert room["membership"] == "join"
    assert room["lists"] == ["all"]
    assert room["name"] == "room 1"
    assert room["joined_count"] == 2 and room["invited_count"] == 0
    assert [e["content"]["body"] for e in room["timeline"]] == ["bump", "newest"]
    assert room["limited"] is True
    assert room["num_live"] == 0
    assert room["prev_batch"]
    assert {(e["type"], e["state_key"]) for e in room["required_state"]} == {("m.room.create", ""), ("m.room.name", "")}
    assert room["notification_count"] == 2 and room["highlight_count"] == 0
    assert "heroes" not in room  # named rooms have no heroes
    # bump_stamp orders by the last message; the pos token works with /messages.
    assert room["bump_stamp"] > resp["rooms"][rooms[3]]["bump_stamp"] > resp["rooms"][rooms[4]]["bump_stamp"]
    r = await http.get(
        f"{V3}/rooms/{rooms[1]}/messages", params={"from": resp["pos"], "dir": "b", "limit": 1}, headers=auth_headers(atok)
    )
    assert r.status_code == 200, r.text
    assert r.json()["chunk"][0]["content"]["body"] == "newest"
