"""Rooms over real HTTP: create, join, send, sync, paginate, state, redact, errors."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx
import pytest
import trio

from pocketserver.server import RunningServer
from tests.api.helpers import V3, auth_headers, create_room, register, send, sync


def timeline_bodies(resp: dict[str, Any], room_id: str) -> list[str]:
    events = resp["rooms"]["join"][room_id]["timeline"]["events"]
    return [e["content"].get("body") for e in events if e["type"] == "m.room.message"]


@pytest.mark.parametrize("version", ["1", "3", "6", "10", "11", "12"])
async def test_create_room_of_each_version_and_chat(http: httpx.AsyncClient, version: str) -> None:
    alice, atok, _ = await register(http)
    bob, btok, _ = await register(http)
    room = await create_room(http, atok, room_version=version, preset="public_chat", name="Chat")
    if version == "12":
        assert ":" not in room
    r = await http.post(f"{V3}/join/{room}", json={}, headers=auth_headers(btok))
    assert r.status_code == 200, r.text
    await send(http, atok, room, {"msgtype": "m.text", "body": "hello bob"})
    await send(http, btok, room, {"msgtype": "m.text", "body": "hi alice"})
    resp = await sync(http, btok)
    assert timeline_bodies(resp, room) == ["hello bob", "hi alice"]
    joined = resp["rooms"]["join"][room]
    # State before the timeline plus the timeline's state events give the whole state.
    state_types = {e["type"] for e in joined["state"]["events"] + joined["timeline"]["events"]}
    assert {"m.room.create", "m.room.name", "m.room.power_levels"} <= state_types
    name = await http.get(f"{V3}/rooms/{room}/state/m.room.name", headers=auth_headers(btok))
    assert name.json() == {"name": "Chat"}
    members = await http.get(f"{V3}/rooms/{room}/joined_members", headers=auth_headers(atok))
    assert set(members.json()["joined"]) == {alice, bob}


async def test_incremental_sync_and_long_poll_wakes(http: httpx.AsyncClient) -> None:
    _, atok, _ = await register(http)
    _, btok, _ = await register(http)
    room = await create_room(http, atok, preset="public_chat")
    await http.post(f"{V3}/join/{room}", json={}, headers=auth_headers(btok))
    first = await sync(http, btok)
    since = first["next_batch"]
    got: dict[str, Any] = {}

    async def waiter() -> None:
        got.update(await sync(http, btok, since=since, timeout=20000))

    async with trio.open_nursery() as n:
        n.start_soon(waiter)
        await trio.sleep(0.2)  # let the waiter block in its long poll first
        await send(http, atok, room, {"msgtype": "m.text", "body": "wake up"})
    assert timeline_bodies(got, room) == ["wake up"]
    again = await sync(http, btok, since=got["next_batch"], timeout=0)
    assert room not in again["rooms"]["join"]


async def test_gappy_sync_is_limited_and_paginates_back(http: httpx.AsyncClient) -> None:
    _, atok, _ = await register(http)
    room = await create_room(http, atok)
    first = await sync(http, atok)
    for i in range(15):
        await send(http, atok, room, {"msgtype": "m.text", "body": f"m{i}"})
    resp = await sync(http, atok, since=first["next_batch"], filter='{"room":{"timeline":{"limit":5}}}')
    tl = resp["rooms"]["join"][room]["timeline"]
    assert tl["limited"] is True
    assert [e["content"]["body"] for e in tl["events"]] == [f"m{i}" for i in range(10, 15)]
    r = await http.get(
        f"{V3}/rooms/{room}/messages",
        params={"dir": "b", "from": tl["prev_batch"], "limit": 5},
        headers=auth_headers(atok),
    )
    chunk = r.json()["chunk"]
    assert [e["content"]["body"] for e in chunk] == [f"m{i}" for i in range(9, 4, -1)]
    r2 = await http.get(
        f"{V3}/rooms/{room}/messages",
        params={"dir": "f", "from": r.json()["end"], "limit": 3},
        headers=auth_headers(atok),
    )
    # Forwards from the gap before m5 returns m5 again, then onwards.
    assert [e["content"]["body"] for e in r2.json()["chunk"]] == ["m5", "m6", "m7"]


async def test_transaction_id_is_idempotent(http: httpx.AsyncClient) -> None:
    _, atok, _ = await register(http)
    room = await create_room(http, atok)
    url = f"{V3}/rooms/{room}/send/m.room.message/same-txn"
    r1 = await http.put(url, json={"msgtype": "m.text", "body": "once"}, headers=auth_headers(atok))
    r2 = await http.put(url, json={"msgtype": "m.text", "body": "once"}, headers=auth_headers(atok))
    assert r1.json()["event_id"] == r2.json()["event_id"]
    resp = await sync(http, atok)
    events = resp["rooms"]["join"][room]["timeline"]["events"]
    mine = [e for e in events if e["type"] == "m.room.message"]
    assert len(mine) == 1
    assert mine[0]["unsigned"]["transaction_id"] == "same-txn"


async def test_invite_leave_and_private_room_access(http: httpx.AsyncClient) -> None:
    _, atok, _ = await register(http)
    bob, btok, _ = await register(http)
    _, ctok, _ = await register(http)
    room = await create_room(http, atok, preset="private_chat", invite=[bob])
    resp = await sync(http, btok)
    assert room in resp["rooms"]["invite"]
    types = {e["type"] for e in resp["rooms"]["invite"][room]["invite_state"]["events"]}
    assert "m.room.member" in types and "m.room.join_rules" in types
    # Carol was not invited: joining fails, reading fails.
    r = await http.post(f"{V3}/rooms/{room}/join", json={}, headers=auth_headers(ctok))
    assert r.status_code == 403 and r.json()["errcode"] == "M_FORBIDDEN"
    r = await http.get(f"{V3}/rooms/{room}/messages", headers=auth_headers(ctok))
    assert r.status_code == 403
    r = await http.post(f"{V3}/rooms/{room}/join", json={}, headers=auth_headers(btok))
    assert r.status_code == 200
    r = await http.post(f"{V3}/rooms/{room}/leave", json={}, headers=auth_headers(btok))
    assert r.status_code == 200
    r = await http.get(f"{V3}/joined_rooms", headers=auth_headers(btok))
    assert room not in r.json()["joined_rooms"]


async def test_redaction_and_edit_shown_to_clients(http: httpx.AsyncClient) -> None:
    _, atok, _ = await register(http)
    room = await create_room(http, atok)
    original = await send(http, atok, room, {"msgtype": "m.text", "body": "tpyo"})
    await send(
        http,
        atok,
        room,
        {
            "msgtype": "m.text",
            "body": "* typo",
            "m.new_content": {"msgtype": "m.text", "body": "typo"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": original},
        },
    )
    ev = (await http.get(f"{V3}/rooms/{room}/event/{original}", headers=auth_headers(atok))).json()
    edit = ev["unsigned"]["m.relations"]["m.replace"]
    assert edit["content"]["m.new_content"]["body"] == "typo"
    secret = await send(http, atok, room, {"msgtype": "m.text", "body": "secret"})
    r = await http.put(
        f"{V3}/rooms/{room}/redact/{secret}/r1", json={"reason": "oops"}, headers=auth_headers(atok)
    )
    assert r.status_code == 200
    ev = (await http.get(f"{V3}/rooms/{room}/event/{secret}", headers=auth_headers(atok))).json()
    assert ev["content"] == {}
    assert ev["unsigned"]["redacted_because"]["content"]["reason"] == "oops"
    assert ev["unsigned"]["redacted_by"] == r.json()["event_id"]
    # the older form without a transaction ID: each POST redacts
    other = await send(http, atok, room, {"msgtype": "m.text", "body": "also secret"})
    r = await http.post(f"{V3}/rooms/{room}/redact/{quote(other)}", json={}, headers=auth_headers(atok))
    assert r.status_code == 200, r.text
    ev = (await http.get(f"{V3}/rooms/{room}/event/{other}", headers=auth_headers(atok))).json()
    assert ev["content"] == {} and ev["unsigned"]["redacted_by"] == r.json()["event_id"]


async def test_typing_and_receipts_reach_the_other_user(http: httpx.AsyncClient) -> None:
    alice, atok, _ = await register(http)
    _, btok, _ = await register(http)
    room = await create_room(http, atok, preset="public_chat")
    await http.post(f"{V3}/join/{room}", json={}, headers=auth_headers(btok))
    eid = await send(http, atok, room, {"msgtype": "m.text", "body": "read me"})
    since = (await sync(http, btok))["next_batch"]
    r = await http.put(
        f"{V3}/rooms/{room}/typing/{alice}", json={"typing": True, "timeout": 10000}, headers=auth_headers(atok)
    )
    assert r.status_code == 200
    resp = await sync(http, btok, since=since)
    eph = resp["rooms"]["join"][room]["ephemeral"]["events"]
    assert {"type": "m.typing", "content": {"user_ids": [alice]}} in eph
    r = await http.post(f"{V3}/rooms/{room}/receipt/m.read/{eid}", json={}, headers=auth_headers(atok))
    assert r.status_code == 200
    resp = await sync(http, btok, since=resp["next_batch"])
    receipts = [e for e in resp["rooms"]["join"][room]["ephemeral"]["events"] if e["type"] == "m.receipt"]
    assert alice in receipts[0]["content"][eid]["m.read"]


async def test_typing_expiry_wakes_every_long_polling_sync(http: httpx.AsyncClient) -> None:
    """The expiry is found inside /sync's read (a worker thread), which wakes the other
    long-polls; each answers 200 with the typing stopped (it used to be a 500)."""
    alice, atok, _ = await register(http)
    room = await create_room(http, atok, preset="public_chat")
    others = [(await register(http))[1] for _ in range(3)]
    for tok in others:
        await http.post(f"{V3}/join/{room}", json={}, headers=auth_headers(tok))
    r = await http.put(
        f"{V3}/rooms/{room}/typing/{alice}", json={"typing": True, "timeout": 500}, headers=auth_headers(atok)
    )
    assert r.status_code == 200
    tokens = [(await sync(http, tok))["next_batch"] for tok in others]
    seen: list[list[str]] = []

    async def long_poll(tok: str, since: str) -> None:
        for _ in range(10):  # other news (presence) may answer first
            r = await http.get(f"{V3}/sync", params={"since": since, "timeout": 20000}, headers=auth_headers(tok))
            assert r.status_code == 200, r.text
            joined = r.json()["rooms"]["join"].get(room, {})
            typing = [e for e in joined.get("ephemeral", {}).get("events", []) if e["type"] == "m.typing"]
            if typing:
                seen.append(typing[0]["content"]["user_ids"])
                return
            since = r.json()["next_batch"]

    with trio.fail_after(15):
        async with trio.open_nursery() as n:
            for tok, since in zip(others, tokens, strict=True):
                n.start_soon(long_poll, tok, since)
    assert seen == [[], [], []]


async def test_typing_that_times_out_ends_in_the_next_sync(
    server: RunningServer, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A typing notification whose timeout passed is dropped by the next /sync, which
    tells the other member that nobody types any more (it used to answer 500: the
    expiry woke the notifier from the sync's database thread)."""
    alice, atok, _ = await register(http)
    _, btok, _ = await register(http)
    room = await create_room(http, atok, preset="public_chat")
    await http.post(f"{V3}/join/{room}", json={}, headers=auth_headers(btok))
    since = (await sync(http, btok))["next_batch"]
    r = await http.put(
        f"{V3}/rooms/{room}/typing/{alice}", json={"typing": True, "timeout": 1000}, headers=auth_headers(atok)
    )
    assert r.status_code == 200
    resp = await sync(http, btok, since=since)
    assert {"type": "m.typing", "content": {"user_ids": [alice]}} in resp["rooms"]["join"][room]["ephemeral"]["events"]
    clock = server.services.clock
    later = clock.monotonic() + 5.0
    monkeypatch.setattr(clock, "monotonic", lambda: later)
    r = await http.get(
        f"{V3}/sync", params={"since": resp["next_batch"], "timeout": 0}, headers=auth_headers(btok)
    )
    assert r.status_code == 200, r.text
    eph = r.json()["rooms"]["join"][room]["ephemeral"]["events"]
    assert {"type": "m.typing", "content": {"user_ids": []}} in eph


async def test_bad_input_gets_spec_errors(http: httpx.AsyncClient) -> None:
    _, atok, _ = await register(http)
    _, btok, _ = await register(http)
    room = await create_room(http, atok)
    h = auth_headers(atok)
    r = await http.put(f"{V3}/rooms/{room}/send/m.room.message/x1", content=b"{nope", headers=h)
    assert r.status_code == 400 and r.json()["errcode"] == "M_NOT_JSON"
    r = await http.put(f"{V3}/rooms/{room}/send/m.room.message/x2", json=[1, 2], headers=h)
    assert r.status_code == 400 and r.json()["errcode"] == "M_BAD_JSON"
    r = await http.put(
        f"{V3}/rooms/{room}/send/m.room.message/x3", json={"body": "x" * 70000, "msgtype": "m.text"}, headers=h
    )
    assert r.status_code == 413 and r.json()["errcode"] == "M_TOO_LARGE"
    r = await http.put(f"{V3}/rooms/{room}/send/m.room.message/x4", json={"body": "hi"})
    assert r.status_code == 401 and r.json()["errcode"] == "M_MISSING_TOKEN"
    r = await http.put(
        f"{V3}/rooms/{room}/send/m.room.message/x5", json={"body": "hi"}, headers=auth_headers("nope")
    )
    assert r.status_code == 401 and r.json()["errcode"] == "M_UNKNOWN_TOKEN"
    r = await http.put(
        f"{V3}/rooms/{room}/send/m.room.message/x6", json={"body": "hi"}, headers=auth_headers(btok)
    )
    assert r.status_code == 403 and r.json()["errcode"] == "M_FORBIDDEN"
    r = await http.put(f"{V3}/rooms/{room}/send/m.room.message/x7", json={"n": 1.5}, headers=h)
    assert r.status_code == 400 and r.json()["errcode"] in ("M_BAD_JSON", "M_NOT_JSON")
    r = await http.post(f"{V3}/createRoom", json={"room_version": "99"}, headers=h)
    assert r.status_code == 400 and r.json()["errcode"] == "M_UNSUPPORTED_ROOM_VERSION"
    r = await http.get(f"{V3}/rooms/not-a-room/state", headers=h)
    assert r.status_code == 400
    r = await http.get(f"{V3}/rooms/{room}/event/$nope", headers=h)
    assert r.status_code == 404 and r.json()["errcode"] == "M_NOT_FOUND"
    r = await http.get(f"{V3}/sync", params={"since": "garbage"}, headers=h)
    assert r.status_code == 400


async def test_alias_directory_and_public_rooms(http: httpx.AsyncClient, server: Any) -> None:
    _, atok, _ = await register(http)
    _, btok, _ = await register(http)
    room = await create_room(http, atok, preset="public_chat", visibility="public", room_alias_name="lobby", name="Lobby")
    alias = f"#lobby:{server.services.config.server_name}"
    r = await http.get(f"{V3}/directory/room/{quote(alias)}")
    assert r.json()["room_id"] == room
    r = await http.post(f"{V3}/join/{quote(alias)}", json={}, headers=auth_headers(btok))
    assert r.status_code == 200 and r.json()["room_id"] == room
    r = await http.get(f"{V3}/publicRooms")
    chunk = r.json()["chunk"]
    assert chunk[0]["room_id"] == room and chunk[0]["name"] == "Lobby"
    assert chunk[0]["num_joined_members"] == 2
    r = await http.post(f"{V3}/createRoom", json={"room_alias_name": "lobby"}, headers=auth_headers(btok))
    assert r.status_code == 400 and r.json()["errcode"] == "M_ROOM_IN_USE"


async def test_use_state_after_gives_state_at_the_end_of_the_timeline(http: httpx.AsyncClient) -> None:
    """use_state_after (v1.16): state_after holds the state at the end of the timeline,
    timeline state events included, and `state` is left out; MSC4222's names work too."""
    _, tok, _ = await register(http)
    room = await create_room(http, tok, name="Before")
    first = await sync(http, tok, use_state_after="true")
    joined = first["rooms"]["join"][room]
    assert "state" not in joined
    names = [e for e in joined["state_after"]["events"] if e["type"] == "m.room.name"]
    assert [e["content"]["name"] for e in names] == ["Before"]
    assert {e["type"] for e in joined["state_after"]["events"]} >= {"m.room.create", "m.room.member", "m.room.power_levels"}

    r = await http.put(f"{V3}/rooms/{room}/state/m.room.name", json={"name": "After"}, headers=auth_headers(tok))
    assert r.status_code == 200, r.text
    await send(http, tok, room, {"msgtype": "m.text", "body": "hi"})
    nxt = await sync(http, tok, since=first["next_batch"], use_state_after="true")
    joined = nxt["rooms"]["join"][room]
    assert [e["content"]["name"] for e in joined["state_after"]["events"]] == ["After"]
    assert "m.room.name" in {e["type"] for e in joined["timeline"]["events"]}

    # Nothing changed in state: the field is still there, empty.
    await send(http, tok, room, {"msgtype": "m.text", "body": "again"})
    quiet = await sync(http, tok, since=nxt["next_batch"], use_state_after="true")
    assert quiet["rooms"]["join"][room]["state_after"] == {"events": []}

    # The MSC4222 spelling that matrix-js-sdk sends is answered under MSC4222's key.
    legacy = await sync(http, tok, **{"org.matrix.msc4222.use_state_after": "true"})
    assert "org.matrix.msc4222.state_after" in legacy["rooms"]["join"][room]
    # Without the parameter nothing changes.
    plain = await sync(http, tok)
    assert "state" in plain["rooms"]["join"][room] and "state_after" not in plain["rooms"]["join"][room]


async def test_v12_rooms_created_in_the_same_millisecond_get_different_ids(
    http: httpx.AsyncClient, server: Any
) -> None:
    """A v12 room ID is its create event's hash; two identical createRoom calls in one
    millisecond (a bot, a benchmark) must still make two rooms, not a server error."""
    _, tok, _ = await register(http)
    clock = server.services.rooms.pipeline.clock
    frozen = clock.time_ms()
    clock.time_ms = lambda: frozen
    try:
        rooms: list[str] = []

        async def make() -> None:
            rooms.append(await create_room(http, tok, room_version="12"))

        async with trio.open_nursery() as n:
            for _ in range(4):
                n.start_soon(make)
    finally:
        del clock.time_ms
    assert len(set(rooms)) == 4
    r = await http.get(f"{V3}/joined_rooms", headers=auth_headers(tok))
    assert set(r.json()["joined_rooms"]) == set(rooms)


async def test_join_keeps_custom_content_in_the_member_event(http: httpx.AsyncClient) -> None:
    _alice, atok, _ = await register(http)
    bob, btok, _ = await register(http)
    room = await create_room(http, atok, preset="public_chat", room_alias_name="custom")
    for target in (room, "#custom:test.local"):
        r = await http.post(f"{V3}/join/{quote(target)}", headers=auth_headers(btok),
                            json={"foo": "bar", "membership": "leave"})
        assert r.status_code == 200 and r.json()["room_id"] == room
        r = await http.get(f"{V3}/rooms/{room}/state/m.room.member/{bob}", headers=auth_headers(btok))
        assert r.json()["foo"] == "bar" and r.json()["membership"] == "join"
        r = await http.post(f"{V3}/rooms/{room}/leave", json={}, headers=auth_headers(btok))
        assert r.status_code == 200


async def test_post_send_without_transaction_id(http: httpx.AsyncClient) -> None:
    _alice, atok, _ = await register(http)
    room = await create_room(http, atok)
    ids = []
    for _ in range(2):
        r = await http.post(f"{V3}/rooms/{room}/send/m.room.message",
                            json={"msgtype": "m.text", "body": "no txn"}, headers=auth_headers(atok))
        assert r.status_code == 200, r.text
        ids.append(r.json()["event_id"])
    assert ids[0] != ids[1]  # without a transaction ID every request is a new message
    r = await http.get(f"{V3}/rooms/{room}/event/{ids[1]}", headers=auth_headers(atok))
    assert r.json()["content"]["body"] == "no txn"


async def test_setting_identical_state_twice_makes_no_new_event(http: httpx.AsyncClient) -> None:
    _alice, atok, _ = await register(http)
    bob, btok, _ = await register(http)
    room = await create_room(http, atok, preset="public_chat")
    h = auth_headers(atok)
    first = await http.put(f"{V3}/rooms/{room}/state/m.room.topic", json={"topic": "t"}, headers=h)
    again = await http.put(f"{V3}/rooms/{room}/state/m.room.topic", json={"topic": "t"}, headers=h)
    assert first.json()["event_id"] == again.json()["event_id"]
    other = await http.put(f"{V3}/rooms/{room}/state/m.room.topic", json={"topic": "u"}, headers=h)
    assert other.json()["event_id"] != first.json()["event_id"]
    # The same content from another member is a new event (it records who set it).
    await http.post(f"{V3}/join/{room}", json={}, headers=auth_headers(btok))
    r = await http.put(f"{V3}/rooms/{room}/state/m.room.name", json={"name": "n"}, headers=h)
    pl = (await http.get(f"{V3}/rooms/{room}/state/m.room.power_levels", headers=h)).json()
    pl["users"][bob] = 100
    await http.put(f"{V3}/rooms/{room}/state/m.room.power_levels", json=pl, headers=h)
    r2 = await http.put(f"{V3}/rooms/{room}/state/m.room.name", json={"name": "n"},
                        headers=auth_headers(btok))
    assert r2.status_code == 200 and r2.json()["event_id"] != r.json()["event_id"]


async def test_redacting_an_event_of_another_room_is_refused(http: httpx.AsyncClient) -> None:
    _alice, atok, _ = await register(http)
    h = auth_headers(atok)
    room1 = await create_room(http, atok)
    room2 = await create_room(http, atok)
    eid = await send(http, atok, room1, {"msgtype": "m.text", "body": "keep me"})
    r = await http.put(f"{V3}/rooms/{room2}/redact/{quote(eid)}/x1", json={}, headers=h)
    assert r.status_code == 400 and r.json()["errcode"] == "M_INVALID_PARAM"
    r = await http.get(f"{V3}/rooms/{room1}/event/{quote(eid)}", headers=h)
    assert r.json()["content"]["body"] == "keep me"


async def test_deleting_an_alias_removes_it_from_the_canonical_alias(http: httpx.AsyncClient) -> None:
    _alice, atok, _ = await register(http)
    h = auth_headers(atok)
    room = await create_room(http, atok)
    for name in ("#main:test.local", "#alt:test.local"):
        r = await http.put(f"{V3}/directory/room/{quote(name)}", json={"room_id": room}, headers=h)
        assert r.status_code == 200
    r = await http.put(f"{V3}/rooms/{room}/state/m.room.canonical_alias", headers=h,
                       json={"alias": "#main:test.local", "alt_aliases": ["#alt:test.local"]})
    assert r.status_code == 200
    await http.delete(f"{V3}/directory/room/{quote('#main:test.local')}", headers=h)
    r = await http.get(f"{V3}/rooms/{room}/state/m.room.canonical_alias", headers=h)
    assert r.json() == {"alt_aliases": ["#alt:test.local"]}
    await http.delete(f"{V3}/directory/room/{quote('#alt:test.local')}", headers=h)
    r = await http.get(f"{V3}/rooms/{room}/state/m.room.canonical_alias", headers=h)
    assert r.json() == {"alt_aliases": []}


async def test_context_in_a_room_never_joined_is_forbidden(http: httpx.AsyncClient) -> None:
    _alice, atok, _ = await register(http)
    _bob, btok, _ = await register(http)
    room = await create_room(http, atok)
    eid = await send(http, atok, room, {"msgtype": "m.text", "body": "private"})
    r = await http.get(f"{V3}/rooms/{room}/context/{quote(eid)}", headers=auth_headers(btok))
    assert r.status_code == 403 and r.json()["errcode"] == "M_FORBIDDEN"
    r = await http.get(f"{V3}/rooms/{room}/context/{quote(eid)}", headers=auth_headers(atok))
    assert r.status_code == 200 and r.json()["event"]["event_id"] == eid


async def test_out_of_range_numbers_in_events_are_bad_json(http: httpx.AsyncClient) -> None:
    _alice, atok, _ = await register(http)
    h = {**auth_headers(atok), "Content-Type": "application/json"}
    room = await create_room(http, atok, room_version="6")
    url = f"{V3}/rooms/{room}/send/sytest.dummy"
    for raw in (b'{"body": 9007199254740992}', b'{"body": -9007199254740992}', b'{"body": 1.1}'):
        r = await http.post(url, content=raw, headers=h)
        assert (r.status_code, r.json()["errcode"]) == (400, "M_BAD_JSON"), raw
    for raw in (b'{"body": NaN}', b'{"body": Infinity}', b'{"body": -Infinity}'):
        r = await http.post(url, content=raw, headers=h)
        assert r.status_code == 400 and r.json()["errcode"] in ("M_NOT_JSON", "M_BAD_JSON"), raw
    r = await http.post(url, content=b'{"body": 9007199254740991}', headers=h)
    assert r.status_code == 200


async def test_events_over_the_size_limit_are_413(http: httpx.AsyncClient) -> None:
    _alice, atok, _ = await register(http)
    h = auth_headers(atok)
    room = await create_room(http, atok)
    r = await http.post(f"{V3}/rooms/{room}/send/m.room.message",
                        json={"msgtype": "m.text", "body": "A" * 70000}, headers=h)
    assert r.status_code == 413 and r.json()["errcode"] == "M_TOO_LARGE"
    r = await http.put(f"{V3}/rooms/{room}/state/oooooooh", json={"key": "O" * 70000}, headers=h)
    assert r.status_code == 413 and r.json()["errcode"] == "M_TOO_LARGE"


@pytest.mark.parametrize("new_version", ["10", "12"])
async def test_upgrade_links_rooms_through_the_tombstone(
    http: httpx.AsyncClient, new_version: str
) -> None:
    alice, atok, _ = await register(http)
    h = auth_headers(atok)
    old = await create_room(http, atok, preset="public_chat", name="Old", room_version="10")
    # Personal settings for the old room, to be carried over.
    await http.put(f"{V3}/user/{alice}/account_data/m.direct", json={alice: [old]}, headers=h)
    await http.put(f"{V3}/user/{alice}/rooms/{old}/tags/u.work", json={"order": 0.5}, headers=h)
    r = await http.put(f"{V3}/directory/room/{quote('#up:test.local')}", json={"room_id": old}, headers=h)
    assert r.status_code == 200
    r = await http.put(f"{V3}/rooms/{old}/state/m.room.canonical_alias",
                       json={"alias": "#up:test.local"}, headers=h)
    first = await sync(http, atok)
    r = await http.post(f"{V3}/rooms/{old}/upgrade", json={"new_version": new_version}, headers=h)
    assert r.status_code == 200, r.text
    new = r.json()["replacement_room"]
    after = await sync(http, atok, since=first["next_batch"])
    tomb = after["rooms"]["join"][old]["timeline"]["events"][0]
    assert tomb["type"] == "m.room.tombstone" and tomb["content"]["replacement_room"] == new
    create = after["rooms"]["join"][new]["timeline"]["events"][0]
    assert create["type"] == "m.room.create"
    assert create["content"]["room_version"] == new_version
    assert create["content"]["predecessor"]["room_id"] == old
    if new_version != "12":
        assert create["content"]["predecessor"]["event_id"] == tomb["event_id"]
    # The new room got the state and the alias; the old one is closed to ordinary users.
    r = await http.get(f"{V3}/rooms/{new}/state/m.room.name", headers=h)
    assert r.json() == {"name": "Old"}
    # The old public room had no guest_access event (forbidden); the new one says so.
    r = await http.get(f"{V3}/rooms/{new}/state/m.room.guest_access", headers=h)
    assert r.json() == {"guest_access": "forbidden"}
    r = await http.get(f"{V3}/directory/room/{quote('#up:test.local')}", headers=h)
    assert r.json()["room_id"] == new
    r = await http.get(f"{V3}/rooms/{old}/state/m.room.power_levels", headers=h)
    assert r.json()["events_default"] >= 50
    r = await http.get(f"{V3}/user/{alice}/account_data/m.direct", headers=h)
    assert r.json() == {alice: [old, new]}
    r = await http.get(f"{V3}/user/{alice}/rooms/{new}/tags", headers=h)
    assert r.json() == {"tags": {"u.work": {"order": 0.5}}}
    # A room one is not in cannot be upgraded (403); one the server does not know is
    # not found (404), as SyTest's "/upgrade of a bogus room fails gracefully" expects.
    _, btok, _ = await register(http)
    r = await http.post(f"{V3}/rooms/{new}/upgrade", json={"new_version": "10"}, headers=auth_headers(btok))
    assert r.status_code == 403 and r.json()["errcode"] == "M_FORBIDDEN"
    r = await http.post(f"{V3}/rooms/!nope:unknown/upgrade", json={"new_version": "10"}, headers=h)
    assert r.status_code == 404 and r.json()["errcode"] == "M_NOT_FOUND"



async def test_room_with_only_an_ignored_users_news_is_left_out_of_sync(
    http: httpx.AsyncClient,
) -> None:
    alice, atok, _ = await register(http)
    bob, btok, _ = await register(http)
    room = await create_room(http, atok, preset="public_chat")
    await http.post(f"{V3}/join/{room}", json={}, headers=auth_headers(btok))
    r = await http.put(f"{V3}/user/{alice}/account_data/m.ignored_user_list",
                       json={"ignored_users": {bob: {}}}, headers=auth_headers(atok))
    assert r.status_code == 200
    first = await sync(http, atok)
    await send(http, btok, room, {"msgtype": "m.text", "body": "ignored"})
    after = await sync(http, atok, since=first["next_batch"])
    assert room not in after.get("rooms", {}).get("join", {})
    await send(http, atok, room, {"msgtype": "m.text", "body": "seen"})
    after = await sync(http, atok, since=after["next_batch"])
    assert timeline_bodies(after, room) == ["seen"]


async def test_joining_an_upgraded_room_brings_the_users_tags(http: httpx.AsyncClient) -> None:
    """room_upgrades.md: a user joining the new room keeps their tags from the old one."""
    from tests.api.helpers import join

    _, atok, _ = await register(http)
    bob, btok, _ = await register(http)
    room = await create_room(http, atok, preset="public_chat", room_version="10")
    await join(http, btok, room)
    r = await http.put(f"{V3}/user/{bob}/rooms/{room}/tags/test_tag", json={"order": 0.5}, headers=auth_headers(btok))
    assert r.status_code == 200, r.text
    r = await http.post(f"{V3}/rooms/{room}/upgrade", json={"new_version": "11"}, headers=auth_headers(atok))
    assert r.status_code == 200, r.text
    new_room = r.json()["replacement_room"]
    await join(http, btok, new_room)
    r = await http.get(f"{V3}/user/{bob}/rooms/{new_room}/tags", headers=auth_headers(btok))
    assert r.status_code == 200, r.text
    assert r.json()["tags"] == {"test_tag": {"order": 0.5}}


async def test_replaced_state_names_the_event_it_replaced(http: httpx.AsyncClient) -> None:
    """v1.19: a state event that replaced another carries unsigned.replaces_state (and
    prev_content) in /sync, /messages and GET state?format=event."""
    _alice, atok, _ = await register(http)
    room = await create_room(http, atok)
    h = auth_headers(atok)
    first = (await http.put(f"{V3}/rooms/{room}/state/m.room.topic", json={"topic": "one"}, headers=h)).json()
    second = (await http.put(f"{V3}/rooms/{room}/state/m.room.topic", json={"topic": "two"}, headers=h)).json()
    timeline = (await sync(http, atok))["rooms"]["join"][room]["timeline"]["events"]
    topics = {e["event_id"]: e for e in timeline if e["type"] == "m.room.topic"}
    assert "replaces_state" not in topics[first["event_id"]].get("unsigned", {})
    assert topics[second["event_id"]]["unsigned"]["replaces_state"] == first["event_id"]
    assert topics[second["event_id"]]["unsigned"]["prev_content"] == {"topic": "one"}
    r = await http.get(f"{V3}/rooms/{room}/messages", params={"dir": "b", "limit": 1}, headers=h)
    assert r.json()["chunk"][0]["unsigned"]["replaces_state"] == first["event_id"]
    r = await http.get(f"{V3}/rooms/{room}/state/m.room.topic", params={"format": "event"}, headers=h)
    assert r.json()["event_id"] == second["event_id"]
    assert r.json()["unsigned"]["replaces_state"] == first["event_id"]


async def test_presets_set_the_specs_state_and_public_chat_needs_no_guest_access_event(
    http: httpx.AsyncClient,
) -> None:
    """createRoom's presets (create_room.yaml): public_chat's guest_access "forbidden" is
    what a room without m.room.guest_access already has, so no event is sent for it, as
    other servers do (SyTest 31sync/15lazy-members compares the whole state)."""
    _, tok, _ = await register(http)
    h = auth_headers(tok)
    expected = {
        "public_chat": ("public", "shared", None),
        "private_chat": ("invite", "shared", "can_join"),
        "trusted_private_chat": ("invite", "shared", "can_join"),
    }
    for preset, (join_rule, visibility, guest_access) in expected.items():
        room = await create_room(http, tok, preset=preset)
        r = await http.get(f"{V3}/rooms/{room}/state", headers=h)
        assert r.status_code == 200, r.text
        state = {e["type"]: e["content"] for e in r.json() if e["state_key"] == ""}
        assert state["m.room.join_rules"] == {"join_rule": join_rule}
        assert state["m.room.history_visibility"] == {"history_visibility": visibility}
        got = state.get("m.room.guest_access", {}).get("guest_access")
        assert got == guest_access, preset
    # initial_state still wins over the preset, and may set forbidden explicitly.
    room = await create_room(
        http, tok, preset="private_chat",
        initial_state=[{"type": "m.room.guest_access", "content": {"guest_access": "forbidden"}}],
    )
    r = await http.get(f"{V3}/rooms/{room}/state/m.room.guest_access", headers=h)
    assert r.json() == {"guest_access": "forbidden"}


async def test_messages_lazy_loads_the_senders_and_ends_at_the_rooms_start(http: httpx.AsyncClient) -> None:
    """GET /messages with lazy_load_members brings the members who sent the page, and
    no one else; paging back, the page that reaches the room's creation has no ``end``
    (message_pagination.yaml: omitted when no further events are available), and a
    sync timeline holding the whole room gives a ``prev_batch`` before its first event,
    from which nothing earlier comes back (not the timeline again)."""
    from tests.api.helpers import join

    _, atok, _ = await register(http)
    bob, btok, _ = await register(http)
    _, ctok, _ = await register(http)
    room = await create_room(http, atok, preset="public_chat")
    await join(http, btok, room)
    await join(http, ctok, room)
    for i in range(3):
        await send(http, btok, room, {"msgtype": "m.text", "body": f"b{i}"})
    lazy = '{"lazy_load_members": true}'
    r = await http.get(
        f"{V3}/rooms/{room}/messages", params={"dir": "b", "limit": 3, "filter": lazy}, headers=auth_headers(atok)
    )
    assert r.status_code == 200, r.text
    page = r.json()
    assert [e["content"]["body"] for e in page["chunk"]] == ["b2", "b1", "b0"]
    assert [(e["type"], e["state_key"]) for e in page["state"]] == [("m.room.member", bob)]
    assert "end" in page
    # Page back to the start: the last page carries m.room.create and no end.
    token, pages = page["end"], 0
    while True:
        pages += 1
        assert pages < 20
        r = await http.get(
            f"{V3}/rooms/{room}/messages", params={"dir": "b", "limit": 4, "from": token}, headers=auth_headers(atok)
        )
        body = r.json()
        if "end" not in body:
            break
        token = body["end"]
    assert body["chunk"] and body["chunk"][-1]["type"] == "m.room.create"

    timeline = (await sync(http, atok))["rooms"]["join"][room]["timeline"]
    assert timeline["limited"] is False and timeline["events"][0]["type"] == "m.room.create"
    r = await http.get(
        f"{V3}/rooms/{room}/messages", params={"dir": "b", "from": timeline["prev_batch"]}, headers=auth_headers(atok)
    )
    assert r.json()["chunk"] == [] and "end" not in r.json()


async def test_joining_a_room_that_replaced_another_moves_our_aliases_and_listing(
    http: httpx.AsyncClient,
) -> None:
    # The upgrade was made elsewhere (here: by hand, no /upgrade): once a user of ours
    # joins the replacement, our alias and directory listing of the old room follow
    # the old room's tombstone.
    _alice, atok, _ = await register(http, "tomb_alice")
    _bob, btok, _ = await register(http, "tomb_bob")
    h = auth_headers(atok)
    old = await create_room(http, atok, preset="public_chat")
    alias = "#tomb:test.local"
    r = await http.put(f"{V3}/directory/room/{quote(alias)}", json={"room_id": old}, headers=h)
    assert r.status_code == 200, r.text
    r = await http.put(f"{V3}/directory/list/room/{old}", json={"visibility": "public"}, headers=h)
    assert r.status_code == 200, r.text
    new = await create_room(
        http, atok, preset="public_chat", creation_content={"predecessor": {"room_id": old}}
    )
    r = await http.put(f"{V3}/rooms/{old}/state/m.room.tombstone/", json={"body": "moved", "replacement_room": new}, headers=h)
    assert r.status_code == 200, r.text
    r = await http.get(f"{V3}/directory/room/{quote(alias)}")
    assert r.json()["room_id"] == old  # nothing moved by the tombstone alone
    r = await http.post(f"{V3}/join/{new}", json={}, headers=auth_headers(btok))
    assert r.status_code == 200, r.text
    r = await http.get(f"{V3}/directory/room/{quote(alias)}")
    assert r.json()["room_id"] == new
    listed = [c["room_id"] for c in (await http.get(f"{V3}/publicRooms")).json()["chunk"]]
    assert new in listed and old not in listed
