"""/sync as the clients people use call it (Element: use_state_after with lazy-loaded
members), and what a user who left, or was kicked or banned, is told."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.api.helpers import V3, auth_headers, create_room, join, register, send, sync

LAZY = json.dumps({"room": {"state": {"lazy_load_members": True}, "timeline": {"limit": 20}}})


def _state_keys(events: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(e["type"], e.get("state_key", "")) for e in events}


async def test_state_after_keeps_membership_changes_under_lazy_loading(http: httpx.AsyncClient) -> None:
    """Element syncs with use_state_after and lazy-loaded members: an invite, a join and a
    rename by people who sent nothing must all reach it, or it encrypts for no one."""
    alice, atok, _ = await register(http)
    bob, btok, _ = await register(http)
    carol, _, _ = await register(http)
    room = await create_room(http, atok, preset="public_chat")
    first = await sync(http, atok, use_state_after="true", filter=LAZY)
    assert room in first["rooms"]["join"]

    r = await http.post(f"{V3}/rooms/{room}/invite", json={"user_id": carol}, headers=auth_headers(atok))
    assert r.status_code == 200, r.text
    await join(http, btok, room)
    r = await http.put(f"{V3}/rooms/{room}/state/m.room.name", json={"name": "Renamed"}, headers=auth_headers(atok))
    assert r.status_code == 200, r.text
    nxt = await sync(http, atok, since=first["next_batch"], use_state_after="true", filter=LAZY)
    after = nxt["rooms"]["join"][room]["state_after"]["events"]
    assert _state_keys(after) == {("m.room.member", carol), ("m.room.member", bob), ("m.room.name", "")}
    members = {e["state_key"]: e["content"]["membership"] for e in after if e["type"] == "m.room.member"}
    assert members == {carol: "invite", bob: "join"}

    # A limited (gappy) incremental sync keeps them too.
    quiet = nxt["next_batch"]
    dave, dtok, _ = await register(http)
    await join(http, dtok, room)
    for i in range(5):
        await send(http, atok, room, {"msgtype": "m.text", "body": f"m{i}"})
    small = json.dumps({"room": {"state": {"lazy_load_members": True}, "timeline": {"limit": 2}}})
    gappy = await sync(http, atok, since=quiet, use_state_after="true", filter=small)
    joined = gappy["rooms"]["join"][room]
    assert joined["timeline"]["limited"] is True
    assert ("m.room.member", dave) in _state_keys(joined["state_after"]["events"])

    # An initial sync still lazy-loads: only members who sent something, and oneself.
    initial = await sync(http, btok, use_state_after="true", filter=small)
    keys = _state_keys(initial["rooms"]["join"][room]["state_after"]["events"])
    assert {k for k in keys if k[0] == "m.room.member"} == {("m.room.member", alice), ("m.room.member", bob)}


async def _kick_flow(
    http: httpx.AsyncClient, action: str, **params: Any
) -> tuple[str, dict[str, Any], str, str]:
    _, atok, _ = await register(http)
    bob, btok, _ = await register(http)
    room = await create_room(http, atok, preset="public_chat", name="Kicks")
    await join(http, btok, room)
    await send(http, atok, room, {"msgtype": "m.text", "body": "before"})
    before = await sync(http, btok, **params)
    if action == "leave":
        r = await http.post(f"{V3}/rooms/{room}/leave", json={"reason": "bye"}, headers=auth_headers(btok))
    else:
        r = await http.post(
            f"{V3}/rooms/{room}/{action}", json={"user_id": bob, "reason": "too noisy"}, headers=auth_headers(atok)
        )
    assert r.status_code == 200, r.text
    # What happens after the user is out stays hidden from them.
    await send(http, atok, room, {"msgtype": "m.text", "body": "after"})
    r = await http.put(f"{V3}/rooms/{room}/state/m.room.topic", json={"topic": "secret"}, headers=auth_headers(atok))
    assert r.status_code == 200, r.text
    out = await sync(http, btok, since=before["next_batch"], **params)
    return room, out["rooms"]["leave"][room], bob, btok


async def test_kicked_user_sees_the_kick_and_its_reason(http: httpx.AsyncClient) -> None:
    room, left, bob, btok = await _kick_flow(http, "kick")
    events = left["timeline"]["events"]
    mine = [e for e in events if e["type"] == "m.room.member" and e["state_key"] == bob]
    assert [(e["content"]["membership"], e["content"].get("reason")) for e in mine] == [("leave", "too noisy")]
    assert mine[0]["sender"] != bob
    assert "after" not in [e["content"].get("body") for e in events]


async def test_banned_user_sees_the_ban_with_state_after(http: httpx.AsyncClient) -> None:
    room, left, bob, btok = await _kick_flow(http, "ban", use_state_after="true", filter=LAZY)
    mine = [e for e in left["timeline"]["events"] if e["type"] == "m.room.member" and e["state_key"] == bob]
    assert [e["content"]["membership"] for e in mine] == ["ban"]
    state = {(e["type"], e["state_key"]): e["content"] for e in left["state_after"]["events"]}
    assert state[("m.room.member", bob)]["membership"] == "ban"
    assert state[("m.room.member", bob)]["reason"] == "too noisy"
    assert ("m.room.topic", "") not in state  # set after the ban


async def test_user_who_left_sees_their_leave(http: httpx.AsyncClient) -> None:
    room, left, bob, btok = await _kick_flow(http, "leave")
    mine = [e for e in left["timeline"]["events"] if e["type"] == "m.room.member" and e["state_key"] == bob]
    assert [(e["content"]["membership"], e["content"].get("reason")) for e in mine] == [("leave", "bye")]
    r_msgs = [e["content"].get("body") for e in left["timeline"]["events"] if e["type"] == "m.room.message"]
    assert "after" not in r_msgs


async def test_kicked_user_can_fetch_the_kick_event(http: httpx.AsyncClient) -> None:
    """The kick is readable by its target through /event and /messages too."""
    room, left, bob, btok = await _kick_flow(http, "kick")
    kick = next(e for e in left["timeline"]["events"] if e["type"] == "m.room.member" and e["state_key"] == bob)
    r = await http.get(f"{V3}/rooms/{room}/event/{kick['event_id']}", headers=auth_headers(btok))
    assert r.status_code == 200, r.text
    assert r.json()["content"]["reason"] == "too noisy"
    r = await http.get(f"{V3}/rooms/{room}/messages", params={"dir": "b", "limit": 5}, headers=auth_headers(btok))
    assert r.status_code == 200, r.text
    chunk = r.json()["chunk"]
    assert chunk[0]["event_id"] == kick["event_id"]
    assert "after" not in [e["content"].get("body") for e in chunk]


async def test_late_joiner_lazy_loads_only_the_members_who_speak(http: httpx.AsyncClient) -> None:
    """A late joiner's initial sync of a busy room: the state as of its timeline, with
    the memberships of the timeline's senders and its own, not the whole member list;
    a state event it shows carries what it replaced; the summary counts everyone."""
    alice, atok, _ = await register(http)
    room = await create_room(http, atok, preset="public_chat")
    others = [await register(http) for _ in range(6)]
    for _, tok, _ in others:
        await join(http, tok, room)
    bob, btok, _ = others[0]
    invited, _, _ = await register(http)
    r = await http.post(f"{V3}/rooms/{room}/invite", json={"user_id": invited}, headers=auth_headers(atok))
    assert r.status_code == 200, r.text
    for topic in ("first", "second"):
        r = await http.put(f"{V3}/rooms/{room}/state/m.room.topic", json={"topic": topic}, headers=auth_headers(atok))
        assert r.status_code == 200, r.text
    await send(http, btok, room, {"msgtype": "m.text", "body": "hello"})
    late, ltok, _ = await register(http)
    await join(http, ltok, room)
    await send(http, btok, room, {"msgtype": "m.text", "body": "welcome"})

    # The timeline starts at bob's message: the topic is in the state, with its past.
    two = json.dumps({"room": {"state": {"lazy_load_members": True}, "timeline": {"limit": 3}}})
    joined = (await sync(http, ltok, filter=two))["rooms"]["join"][room]
    assert [e["type"] for e in joined["timeline"]["events"]] == ["m.room.message", "m.room.member", "m.room.message"]
    state = joined["state"]["events"]
    assert {k for k in _state_keys(state) if k[0] == "m.room.member"} == {("m.room.member", bob)}
    topic = next(e for e in state if e["type"] == "m.room.topic")
    assert topic["content"] == {"topic": "second"}
    assert topic["unsigned"]["prev_content"] == {"topic": "first"}
    assert joined["summary"]["m.joined_member_count"] == 8
    assert joined["summary"]["m.invited_member_count"] == 1

    # A timeline of one message (no state event in it): the current state, lazily.
    one = json.dumps({"room": {"state": {"lazy_load_members": True}, "timeline": {"limit": 1}}})
    joined = (await sync(http, ltok, filter=one))["rooms"]["join"][room]
    members = {k for k in _state_keys(joined["state"]["events"]) if k[0] == "m.room.member"}
    assert members == {("m.room.member", bob), ("m.room.member", late)}
    # Without lazy loading, everyone.
    full = (await sync(http, ltok, filter=json.dumps({"room": {"timeline": {"limit": 1}}})))["rooms"]["join"][room]
    members = {k[1] for k in _state_keys(full["state"]["events"]) if k[0] == "m.room.member"}
    assert members == {alice, late, invited, *(u for u, _, _ in others)}
    # An unnamed room's heroes are listed from its members.
    assert len(full["summary"]["m.heroes"]) == 5 and late not in full["summary"]["m.heroes"]


async def test_member_list_shows_what_each_membership_replaced(http: httpx.AsyncClient) -> None:
    alice, atok, _ = await register(http)
    room = await create_room(http, atok, preset="public_chat")
    bob, btok, _ = await register(http)
    await join(http, btok, room)
    r = await http.put(
        f"{V3}/rooms/{room}/state/m.room.member/{bob}",
        json={"membership": "join", "displayname": "Bobby"},
        headers=auth_headers(btok),
    )
    assert r.status_code == 200, r.text
    r = await http.get(f"{V3}/rooms/{room}/members", headers=auth_headers(atok))
    assert r.status_code == 200, r.text
    by_user = {e["state_key"]: e for e in r.json()["chunk"]}
    assert set(by_user) == {alice, bob}
    assert by_user[bob]["content"]["displayname"] == "Bobby"
    assert by_user[bob]["unsigned"]["prev_content"]["membership"] == "join"
    assert "prev_content" not in by_user[alice]["unsigned"]


async def test_member_list_filters_and_a_former_members_view(http: httpx.AsyncClient) -> None:
    alice, atok, _ = await register(http)
    room = await create_room(http, atok, preset="public_chat")
    bob, btok, _ = await register(http)
    carol, ctok, _ = await register(http)
    await join(http, btok, room)
    await join(http, ctok, room)
    r = await http.post(f"{V3}/rooms/{room}/leave", json={}, headers=auth_headers(btok))
    assert r.status_code == 200, r.text
    dave, dtok, _ = await register(http)
    await join(http, dtok, room)  # after bob left: not in what bob may see

    async def members(token: str, **params: str) -> dict[str, str]:
        r = await http.get(f"{V3}/rooms/{room}/members", params=params, headers=auth_headers(token))
        assert r.status_code == 200, r.text
        return {e["state_key"]: e["content"]["membership"] for e in r.json()["chunk"]}

    assert await members(atok) == {alice: "join", bob: "leave", carol: "join", dave: "join"}
    assert await members(atok, membership="join") == {alice: "join", carol: "join", dave: "join"}
    assert await members(atok, not_membership="join") == {bob: "leave"}
    assert await members(btok) == {alice: "join", bob: "leave", carol: "join"}
    outsider, otok, _ = await register(http)
    r = await http.get(f"{V3}/rooms/{room}/members", headers=auth_headers(otok))
    assert r.status_code == 403 and r.json()["errcode"] == "M_FORBIDDEN"
