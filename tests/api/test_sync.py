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


def _put_state(http: httpx.AsyncClient, token: str, room: str, etype: str, key: str, content: dict[str, Any]) -> Any:
    return http.put(f"{V3}/rooms/{room}/state/{etype}/{key}", json=content, headers=auth_headers(token))


async def test_displayname_change_is_not_a_new_join(http: httpx.AsyncClient) -> None:
    """A displayname change is a join after a join: the next sync shows it in the
    timeline, not the whole room again; and with everything filtered out, nothing."""
    alice, atok, _ = await register(http)
    room = await create_room(http, atok)
    first = await sync(http, atok)
    r = await _put_state(http, atok, room, "m.room.member", alice, {"membership": "join", "displayname": "boris"})
    assert r.status_code == 200, r.text
    renamed = r.json()["event_id"]
    msg = await send(http, atok, room, {"msgtype": "m.text", "body": "hi"})
    nxt = await sync(http, atok, since=first["next_batch"])
    joined = nxt["rooms"]["join"][room]
    assert [e["event_id"] for e in joined["timeline"]["events"]] == [renamed, msg]
    assert joined["timeline"]["limited"] is False
    assert joined["state"]["events"] == []

    quiet = json.dumps({
        "room": {"timeline": {"types": []}, "state": {"types": ["a.madeup.test.state"]}, "ephemeral": {"types": []}},
        "presence": {"types": []},
    })
    base = await sync(http, atok, filter=quiet)
    r = await _put_state(http, atok, room, "m.room.member", alice, {"membership": "join", "displayname": "natasha"})
    assert r.status_code == 200, r.text
    await send(http, atok, room, {"msgtype": "m.text", "body": "again"})
    after = await sync(http, atok, since=base["next_batch"], filter=quiet)
    assert room not in after["rooms"]["join"]


async def test_room_joined_since_the_token_brings_presence_and_no_typing(http: httpx.AsyncClient) -> None:
    alice, atok, _ = await register(http)
    _, btok, _ = await register(http)
    r = await http.put(f"{V3}/presence/{alice}/status", json={"presence": "online"}, headers=auth_headers(atok))
    assert r.status_code == 200, r.text
    room = await create_room(http, atok, preset="public_chat")
    first = await sync(http, btok)
    await join(http, btok, room)
    nxt = await sync(http, btok, since=first["next_batch"])
    assert alice in {e["sender"] for e in nxt["presence"]["events"]}
    assert nxt["rooms"]["join"][room]["ephemeral"]["events"] == []
    again = await sync(http, btok, since=nxt["next_batch"])
    assert alice not in {e["sender"] for e in again["presence"]["events"]}


async def test_filtered_timeline_is_not_limited_when_nothing_more_matches(http: httpx.AsyncClient) -> None:
    _, atok, _ = await register(http)
    room = await create_room(http, atok)
    msg = await send(http, atok, room, {"msgtype": "m.text", "body": "My message"})
    for i in range(12):
        await send(http, atok, room, {"filler": i}, etype="a.made.up.filler.type")
    flt = json.dumps({"room": {"timeline": {"limit": 1, "types": ["m.room.message"]}, "state": {"types": []}}})
    body = await sync(http, atok, filter=flt)
    timeline = body["rooms"]["join"][room]["timeline"]
    assert [e["event_id"] for e in timeline["events"]] == [msg]
    assert timeline["limited"] is False
    # With two messages and room for one, it is limited.
    await send(http, atok, room, {"msgtype": "m.text", "body": "second"})
    body = await sync(http, atok, filter=flt)
    assert body["rooms"]["join"][room]["timeline"]["limited"] is True


async def test_join_and_leave_between_two_syncs_gives_the_rooms_state(http: httpx.AsyncClient) -> None:
    _, atok, _ = await register(http)
    bob, btok, _ = await register(http)
    room = await create_room(http, atok)
    r = await _put_state(http, atok, room, "a.madeup.test.state", "", {"my_key": 1})
    assert r.status_code == 200, r.text
    r = await http.post(f"{V3}/rooms/{room}/invite", json={"user_id": bob}, headers=auth_headers(atok))
    assert r.status_code == 200, r.text
    flt = json.dumps({"room": {"timeline": {"types": []}, "state": {"types": ["a.madeup.test.state"]}, "include_leave": True}})
    first = await sync(http, btok, filter=flt)
    await join(http, btok, room)
    r = await http.post(f"{V3}/rooms/{room}/leave", json={}, headers=auth_headers(btok))
    assert r.status_code == 200, r.text
    nxt = await sync(http, btok, since=first["next_batch"], filter=flt)
    state = nxt["rooms"]["leave"][room]["state"]["events"]
    assert [(e["type"], e["content"]) for e in state] == [("a.madeup.test.state", {"my_key": 1})]


async def test_current_state_shows_in_the_timeline_even_from_hidden_history(http: httpx.AsyncClient) -> None:
    """A join that happened while the syncing user was out of a "joined"-visibility room
    is current state, which the member may read anyway: it shows in the timeline."""
    _, atok, _ = await register(http)
    _, stok, _ = await register(http)
    invitee, itok, _ = await register(http)
    room = await create_room(http, atok, preset="public_chat")
    await join(http, stok, room)
    r = await _put_state(http, atok, room, "m.room.history_visibility", "", {"history_visibility": "joined"})
    assert r.status_code == 200, r.text
    first = await sync(http, stok)
    r = await http.post(f"{V3}/rooms/{room}/leave", json={}, headers=auth_headers(stok))
    assert r.status_code == 200, r.text
    await join(http, itok, room)
    await send(http, atok, room, {"msgtype": "m.text", "body": "hidden"})
    await join(http, stok, room)
    nxt = await sync(http, stok, since=first["next_batch"])
    events = nxt["rooms"]["join"][room]["timeline"]["events"]
    assert any(e["type"] == "m.room.member" and e["state_key"] == invitee for e in events)
    assert not any(e.get("content", {}).get("body") == "hidden" for e in events)


async def test_history_visibility_changes_are_seen_on_their_boundaries(http: httpx.AsyncClient) -> None:
    """A history_visibility event is visible when the visibility before or after it
    allows (history_visibility.md), so a later joiner sees joined -> ... -> shared."""
    _, atok, _ = await register(http)
    _, btok, _ = await register(http)
    room = await create_room(http, atok, preset="public_chat")
    for vis, body in (("joined", "1"), ("invited", "2"), ("shared", "3")):
        r = await _put_state(http, atok, room, "m.room.history_visibility", "", {"history_visibility": vis})
        assert r.status_code == 200, r.text
        await send(http, atok, room, {"msgtype": "m.text", "body": body})
    await join(http, btok, room)
    events = (await sync(http, btok))["rooms"]["join"][room]["timeline"]["events"]
    seen = [
        e["content"].get("history_visibility") or e["content"].get("body") or e["content"].get("membership")
        for e in events[-4:]
    ]
    assert seen == ["joined", "shared", "3", "join"]


async def test_account_data_filter_applies_to_every_event(http: httpx.AsyncClient) -> None:
    """The push rules an initial sync adds are filtered like any account data."""
    alice, atok, _ = await register(http)
    room = await create_room(http, atok)
    r = await http.put(f"{V3}/user/{alice}/account_data/my.test.type", json={"a": 1}, headers=auth_headers(atok))
    assert r.status_code == 200, r.text
    r = await http.put(
        f"{V3}/user/{alice}/rooms/{room}/account_data/other.type", json={"b": 2}, headers=auth_headers(atok)
    )
    assert r.status_code == 200, r.text
    flt = json.dumps({"account_data": {"types": ["my.test.type"]}, "room": {"account_data": {"types": []}}})
    body = await sync(http, atok, filter=flt)
    assert [e["type"] for e in body["account_data"]["events"]] == ["my.test.type"]
    assert body["rooms"]["join"][room]["account_data"]["events"] == []


async def test_next_batch_pages_forwards_through_messages(http: httpx.AsyncClient) -> None:
    _, atok, _ = await register(http)
    room = await create_room(http, atok)
    await send(http, atok, room, {"msgtype": "m.text", "body": "1"})
    body = await sync(http, atok)
    second = await send(http, atok, room, {"msgtype": "m.text", "body": "2"})
    r = await http.get(
        f"{V3}/rooms/{room}/messages", params={"from": body["next_batch"], "dir": "f"}, headers=auth_headers(atok)
    )
    assert r.status_code == 200, r.text
    page = r.json()
    assert [e["event_id"] for e in page["chunk"]] == [second]
    # The end token continues: a later message is found from it.
    third = await send(http, atok, room, {"msgtype": "m.text", "body": "3"})
    r = await http.get(f"{V3}/rooms/{room}/messages", params={"from": page["end"], "dir": "f"}, headers=auth_headers(atok))
    assert [e["event_id"] for e in r.json()["chunk"]] == [third]


def _members(body: dict[str, Any], room: str) -> dict[str, str]:
    state = body["rooms"]["join"].get(room, {}).get("state", {}).get("events", [])
    return {e["state_key"]: e["content"]["membership"] for e in state if e["type"] == "m.room.member"}


async def test_lazy_loaded_incremental_syncs_send_each_member_once(http: httpx.AsyncClient) -> None:
    """Lazy loading: a sender the client has not met comes with their membership, one it
    was already sent does not (unless include_redundant_members), and a gappy sync
    carries every membership change of the gap, spoken or not."""
    alice, atok, _ = await register(http)
    bob, btok, _ = await register(http)
    carol, ctok, _ = await register(http)
    dave, dtok, _ = await register(http)
    room = await create_room(http, atok, preset="public_chat")
    for tok in (btok, ctok):
        await join(http, tok, room)
    for i in range(10):
        await send(http, btok, room, {"filler": i}, etype="a.made.up.filler.type")
    ten = json.dumps({"room": {"state": {"lazy_load_members": True}, "timeline": {"limit": 10}}})
    first = await sync(http, atok, filter=ten)
    assert _members(first, room) == {alice: "join", bob: "join"}

    await send(http, ctok, room, {"msgtype": "m.text", "body": "carol speaks"})
    await send(http, btok, room, {"msgtype": "m.text", "body": "bob again"})
    nxt = await sync(http, atok, since=first["next_batch"], filter=ten)
    assert _members(nxt, room) == {carol: "join"}
    redundant = json.dumps({
        "room": {"state": {"lazy_load_members": True, "include_redundant_members": True}, "timeline": {"limit": 10}}
    })
    again = await sync(http, atok, since=first["next_batch"], filter=redundant)
    assert _members(again, room) == {carol: "join", bob: "join"}

    # A gap: dave joins and leaves without a word; bob fills the timeline.
    await join(http, dtok, room)
    r = await http.post(f"{V3}/rooms/{room}/leave", json={}, headers=auth_headers(dtok))
    assert r.status_code == 200, r.text
    small = json.dumps({"room": {"state": {"lazy_load_members": True}, "timeline": {"limit": 3}}})
    for i in range(6):
        await send(http, btok, room, {"filler": i}, etype="a.made.up.filler.type")
    gappy = await sync(http, atok, since=nxt["next_batch"], filter=small)
    assert gappy["rooms"]["join"][room]["timeline"]["limited"] is True
    assert _members(gappy, room) == {dave: "leave"}


async def test_federation_event_format(http: httpx.AsyncClient) -> None:
    _, atok, _ = await register(http)
    room = await create_room(http, atok)
    eid = await send(http, atok, room, {"msgtype": "m.text", "body": "Test message"})
    flt = json.dumps({"event_format": "federation", "room": {"timeline": {"limit": 1}}})
    body = await sync(http, atok, filter=flt)
    joined = body["rooms"]["join"][room]
    [event] = joined["timeline"]["events"]
    assert event["event_id"] == eid and event["content"]["body"] == "Test message"
    assert {"prev_events", "auth_events", "depth", "hashes", "signatures", "room_id", "sender"} <= set(event)
    assert all("signatures" in e for e in joined["state"]["events"])


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


async def test_an_initial_sync_tells_that_typing_stopped(http: httpx.AsyncClient) -> None:
    """A client that starts its sync over (no token) after someone stopped typing learns
    that no one types, instead of nothing (SyTest 30rooms/20typing 'Typing can be
    explicitly stopped'); a room where no one ever typed carries no typing at all."""
    alice, atok, _ = await register(http)
    _, btok, _ = await register(http)
    room = await create_room(http, atok, preset="public_chat")
    quiet = await create_room(http, atok, preset="public_chat")
    await join(http, btok, room)
    await join(http, btok, quiet)
    typing_url = f"{V3}/rooms/{room}/typing/{alice}"
    r = await http.put(typing_url, json={"typing": True, "timeout": 30000}, headers=auth_headers(atok))
    assert r.status_code == 200, r.text
    eph = (await sync(http, btok))["rooms"]["join"][room]["ephemeral"]["events"]
    assert eph == [{"type": "m.typing", "content": {"user_ids": [alice]}}]
    r = await http.put(typing_url, json={"typing": False}, headers=auth_headers(atok))
    assert r.status_code == 200, r.text
    body = await sync(http, btok)
    assert body["rooms"]["join"][room]["ephemeral"]["events"] == [{"type": "m.typing", "content": {"user_ids": []}}]
    assert body["rooms"]["join"][quiet]["ephemeral"]["events"] == []
