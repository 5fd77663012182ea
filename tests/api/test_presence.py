"""Presence reaching the people one shares a room with, through /sync (40presence.pl)."""

from __future__ import annotations

from typing import Any

import httpx
import trio

from tests.api.helpers import V3, auth_headers, create_room, join, register, sync


def presence_of(body: dict[str, Any], user_id: str) -> list[dict[str, Any]]:
    return [e["content"] for e in body.get("presence", {}).get("events", []) if e["sender"] == user_id]


async def wait_for_presence(
    http: httpx.AsyncClient, token: str, since: str, user_id: str, state: str
) -> tuple[str, dict[str, Any]]:
    """Long-poll /sync until ``user_id`` shows ``state``: (next batch token, content)."""
    with trio.fail_after(20):
        while True:
            body = await sync(http, token, since=since, timeout=5000)
            since = body["next_batch"]
            for content in presence_of(body, user_id):
                if content["presence"] == state:
                    return since, content


async def test_a_room_member_sees_presence_set_by_status_and_by_sync(http: httpx.AsyncClient) -> None:
    alice, atok, _ = await register(http)
    _, btok, _ = await register(http)
    _, ctok, _ = await register(http)  # shares no room with alice
    room = await create_room(http, atok, preset="public_chat")
    await join(http, btok, room)
    since = (await sync(http, btok))["next_batch"]
    stranger_since = (await sync(http, ctok))["next_batch"]
    # /sync's set_presence sets it.
    await sync(http, atok, timeout=0, set_presence="unavailable")
    since, _ = await wait_for_presence(http, btok, since, alice, "unavailable")
    # So does PUT /presence/{userId}/status, status message included.
    r = await http.put(
        f"{V3}/presence/{alice}/status", json={"presence": "online", "status_msg": "tea"}, headers=auth_headers(atok)
    )
    assert r.status_code == 200
    _, content = await wait_for_presence(http, btok, since, alice, "online")
    assert content["status_msg"] == "tea"
    assert "last_active_ago" in content
    # Someone who shares no room with alice hears nothing of it.
    assert presence_of(await sync(http, ctok, since=stranger_since, timeout=0), alice) == []


async def test_syncing_with_set_presence_offline_keeps_the_presence_one_set(http: httpx.AsyncClient) -> None:
    """sync.yaml: with set_presence=offline the client "is not marked as being online";
    it does not undo what the user set (SyTest 40presence 'Presence changes to
    UNAVAILABLE are reported to local room members', whose clients sync that way)."""
    alice, atok, _ = await register(http)
    _, btok, _ = await register(http)
    room = await create_room(http, atok, preset="public_chat")
    await join(http, btok, room)
    # A user who never had presence is told of as offline to the people in their rooms.
    since = (await sync(http, btok, set_presence="offline"))["next_batch"]
    await sync(http, atok, set_presence="offline")
    since, _ = await wait_for_presence(http, btok, since, alice, "offline")

    r = await http.put(
        f"{V3}/presence/{alice}/status", json={"presence": "unavailable", "status_msg": "lunch"},
        headers=auth_headers(atok),
    )
    assert r.status_code == 200, r.text
    await sync(http, atok, timeout=0, set_presence="offline")
    since, content = await wait_for_presence(http, btok, since, alice, "unavailable")
    assert content["status_msg"] == "lunch"
    r = await http.get(f"{V3}/presence/{alice}/status", headers=auth_headers(btok))
    assert r.json()["presence"] == "unavailable" and r.json()["status_msg"] == "lunch"
    # Syncing without set_presence still marks the user online.
    await sync(http, atok, timeout=0)
    await wait_for_presence(http, btok, since, alice, "online")
