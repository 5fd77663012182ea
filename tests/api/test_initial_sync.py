"""The deprecated snapshots and event stream that Element and bots still call:
GET /rooms/{roomId}/initialSync (Element's room preview), /initialSync, /events and
/events/{eventId}."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from pocketserver.config import Config
from tests.api.helpers import V3, auth_headers, create_room, join, register, send, sync
from tests.conftest import make_config


@pytest.fixture
def config_extra() -> dict[str, Any] | None:
    return None


@pytest.fixture
def config(tmp_path: Path, config_extra: dict[str, Any] | None) -> Config:
    return make_config(tmp_path, config_extra)


async def test_room_initial_sync_for_a_member(http: httpx.AsyncClient) -> None:
    alice, atok, _ = await register(http)
    room = await create_room(http, atok, name="Snap", preset="public_chat")
    for i in range(3):
        await send(http, atok, room, {"msgtype": "m.text", "body": f"m{i}"})
    r = await http.put(f"{V3}/user/{alice}/rooms/{room}/tags/work", json={"order": 0.5}, headers=auth_headers(atok))
    assert r.status_code == 200, r.text
    r = await http.get(f"{V3}/rooms/{room}/initialSync", params={"limit": 2}, headers=auth_headers(atok))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["room_id"] == room and body["membership"] == "join"
    assert body["visibility"] == "private"
    assert [e["content"]["body"] for e in body["messages"]["chunk"]] == ["m1", "m2"]
    assert "start" in body["messages"] and "end" in body["messages"]
    names = [e["content"]["name"] for e in body["state"] if e["type"] == "m.room.name"]
    assert names == ["Snap"]
    assert {e["type"] for e in body["account_data"]} == {"m.tag"}
    # The start token pages further back through /messages.
    r = await http.get(
        f"{V3}/rooms/{room}/messages",
        params={"dir": "b", "from": body["messages"]["start"], "limit": 1},
        headers=auth_headers(atok),
    )
    assert [e["content"].get("body") for e in r.json()["chunk"]] == ["m0"]


async def test_room_initial_sync_refuses_non_members_with_forbidden(http: httpx.AsyncClient) -> None:
    """Element previews a room it has not joined with this call and takes only
    M_FORBIDDEN (or M_GUEST_ACCESS_FORBIDDEN) as "you may join, but not peek"."""
    _, atok, _ = await register(http)
    _, btok, _ = await register(http)
    room = await create_room(http, atok, preset="public_chat")
    await send(http, atok, room, {"msgtype": "m.text", "body": "secret"})
    r = await http.get(f"{V3}/rooms/{room}/initialSync", headers=auth_headers(btok))
    assert r.status_code == 403 and r.json()["errcode"] == "M_FORBIDDEN"
    r = await http.get(f"{V3}/rooms/!nowhere:test.local/initialSync", headers=auth_headers(btok))
    assert r.status_code == 403 and r.json()["errcode"] == "M_FORBIDDEN"
    r = await http.get(f"{V3}/rooms/not-a-room/initialSync", headers=auth_headers(btok))
    assert r.status_code == 400 and r.json()["errcode"] == "M_INVALID_PARAM"
    r = await http.get(f"{V3}/rooms/{room}/initialSync", params={"limit": "x"}, headers=auth_headers(atok))
    assert r.status_code == 400 and r.json()["errcode"] == "M_INVALID_PARAM"
    r = await http.get(f"{V3}/rooms/{room}/initialSync")
    assert r.status_code == 401 and r.json()["errcode"] == "M_MISSING_TOKEN"


async def test_peek_into_a_world_readable_room_and_follow_it(http: httpx.AsyncClient) -> None:
    """matrix-js-sdk's peek: a room initialSync, then /events?room_id= from its end."""
    _, atok, _ = await register(http)
    _, btok, _ = await register(http)
    room = await create_room(
        http, atok, preset="public_chat",
        initial_state=[{"type": "m.room.history_visibility", "content": {"history_visibility": "world_readable"}}],
    )
    await send(http, atok, room, {"msgtype": "m.text", "body": "visible"})
    r = await http.get(f"{V3}/rooms/{room}/initialSync", headers=auth_headers(btok))
    assert r.status_code == 200, r.text
    peek = r.json()
    assert "membership" not in peek
    assert [e["content"].get("body") for e in peek["messages"]["chunk"] if e["type"] == "m.room.message"] == ["visible"]

    got: list[dict[str, object]] = []

    async def poll() -> None:
        r = await http.get(
            f"{V3}/events",
            params={"room_id": room, "from": peek["messages"]["end"], "timeout": 20000},
            headers=auth_headers(btok),
            timeout=30,
        )
        assert r.status_code == 200, r.text
        got.append(r.json())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(poll)  # its token predates "live": no race whichever runs first
        await send(http, atok, room, {"msgtype": "m.text", "body": "live"})
    assert [e["content"]["body"] for e in got[0]["chunk"]] == ["live"]  # type: ignore[index]
    # Nothing new: the stream answers an empty chunk at the timeout, with the same end.
    r = await http.get(
        f"{V3}/events", params={"room_id": room, "from": got[0]["end"], "timeout": 0}, headers=auth_headers(btok)
    )
    assert r.json()["chunk"] == [] and r.json()["end"] == got[0]["end"]

    # A room that is not world-readable cannot be peeked at this way.
    private = await create_room(http, atok)
    r = await http.get(f"{V3}/events", params={"room_id": private, "timeout": 0}, headers=auth_headers(btok))
    assert r.status_code == 403 and r.json()["errcode"] == "M_FORBIDDEN"
    r = await http.get(f"{V3}/events", params={"from": "junk", "timeout": 0}, headers=auth_headers(btok))
    assert r.status_code == 400 and r.json()["errcode"] == "M_INVALID_PARAM"


async def test_global_initial_sync_and_event_stream(http: httpx.AsyncClient) -> None:
    alice, atok, _ = await register(http)
    bob, btok, _ = await register(http)
    room = await create_room(http, atok, name="Both")
    r = await http.post(f"{V3}/rooms/{room}/invite", json={"user_id": bob}, headers=auth_headers(atok))
    assert r.status_code == 200, r.text
    gone = await create_room(http, btok, name="Left")
    r = await http.post(f"{V3}/rooms/{gone}/leave", json={}, headers=auth_headers(btok))
    assert r.status_code == 200, r.text

    r = await http.get(f"{V3}/initialSync", params={"limit": 5}, headers=auth_headers(btok))
    assert r.status_code == 200, r.text
    snap = r.json()
    by_room = {x["room_id"]: x for x in snap["rooms"]}
    assert set(by_room) == {room}
    assert by_room[room]["membership"] == "invite"
    assert by_room[room]["invite"]["sender"] == alice
    assert isinstance(snap["presence"], list) and isinstance(snap["account_data"], list)
    r = await http.get(f"{V3}/initialSync", params={"archived": "true"}, headers=auth_headers(btok))
    by_room = {x["room_id"]: x for x in r.json()["rooms"]}
    assert by_room[gone]["membership"] == "leave"
    assert by_room[gone]["messages"]["chunk"][-1]["type"] == "m.room.member"

    await join(http, btok, room)
    r = await http.get(f"{V3}/events", params={"from": snap["end"], "timeout": 0}, headers=auth_headers(btok))
    assert r.status_code == 200, r.text
    chunk = r.json()["chunk"]
    assert [(e["type"], e["state_key"], e["content"]["membership"]) for e in chunk] == [
        ("m.room.member", bob, "join")
    ]
    eid = await send(http, atok, room, {"msgtype": "m.text", "body": "hello"})
    r = await http.get(f"{V3}/events", params={"from": r.json()["end"], "timeout": 0}, headers=auth_headers(btok))
    assert [e["event_id"] for e in r.json()["chunk"]] == [eid]

    r = await http.get(f"{V3}/events/{eid}", headers=auth_headers(btok))
    assert r.status_code == 200 and r.json()["content"]["body"] == "hello"
    stranger, stok, _ = await register(http)
    r = await http.get(f"{V3}/events/{eid}", headers=auth_headers(stok))
    assert r.status_code == 403 and r.json()["errcode"] == "M_FORBIDDEN"
    r = await http.get(f"{V3}/events/$nope", headers=auth_headers(stok))
    assert r.status_code == 404 and r.json()["errcode"] == "M_NOT_FOUND"
    del stranger


async def test_thirdparty_without_bridges(http: httpx.AsyncClient) -> None:
    """No application services, so no protocols: Element's start-up query gets an empty
    list instead of an error it retries."""
    _, tok, _ = await register(http)
    h = auth_headers(tok)
    r = await http.get(f"{V3}/thirdparty/protocols", headers=h)
    assert r.status_code == 200 and r.json() == {}
    for path in ("protocol/irc", "location/irc", "user/irc"):
        r = await http.get(f"{V3}/thirdparty/{path}", headers=h)
        assert r.status_code == 404 and r.json()["errcode"] == "M_NOT_FOUND"
    r = await http.get(f"{V3}/thirdparty/location", params={"alias": "#a:test.local"}, headers=h)
    assert r.status_code == 200 and r.json() == []
    r = await http.get(f"{V3}/thirdparty/user", headers=h)
    assert r.status_code == 400 and r.json()["errcode"] == "M_MISSING_PARAM"
    r = await http.get(f"{V3}/thirdparty/protocols")
    assert r.status_code == 401


async def test_event_stream_shows_a_kick_to_its_target_and_nothing_after(http: httpx.AsyncClient) -> None:
    _, atok, _ = await register(http)
    bob, btok, _ = await register(http)
    room = await create_room(http, atok, preset="public_chat")
    await join(http, btok, room)
    r = await http.get(f"{V3}/events", params={"timeout": 0}, headers=auth_headers(btok))
    start = r.json()["end"]
    r = await http.post(f"{V3}/rooms/{room}/kick", json={"user_id": bob, "reason": "spam"}, headers=auth_headers(atok))
    assert r.status_code == 200, r.text
    await send(http, atok, room, {"msgtype": "m.text", "body": "after the kick"})
    r = await http.get(f"{V3}/events", params={"from": start, "timeout": 0}, headers=auth_headers(btok))
    chunk = r.json()["chunk"]
    assert [(e["type"], e["content"].get("membership"), e["content"].get("reason")) for e in chunk] == [
        ("m.room.member", "leave", "spam")
    ]
    r = await http.get(f"{V3}/events", params={"from": r.json()["end"], "timeout": 0}, headers=auth_headers(btok))
    assert r.json()["chunk"] == []


async def test_event_stream_limit_pages_through_the_events(http: httpx.AsyncClient) -> None:
    """A ``limit`` gives at most that many events, and ``end`` picks up the rest; a
    limit that is not a positive integer is M_INVALID_PARAM."""
    _, atok, _ = await register(http)
    room = await create_room(http, atok)
    r = await http.get(f"{V3}/events", params={"timeout": 0}, headers=auth_headers(atok))
    start = r.json()["end"]
    for i in range(3):
        await send(http, atok, room, {"msgtype": "m.text", "body": f"m{i}"})
    r = await http.get(f"{V3}/events", params={"from": start, "timeout": 0, "limit": 2}, headers=auth_headers(atok))
    assert r.status_code == 200, r.text
    assert [e["content"].get("body") for e in r.json()["chunk"]] == ["m0", "m1"]
    r = await http.get(
        f"{V3}/events", params={"from": r.json()["end"], "timeout": 0, "limit": 2}, headers=auth_headers(atok)
    )
    assert [e["content"].get("body") for e in r.json()["chunk"] if e["type"] == "m.room.message"] == ["m2"]
    for bad in ("hello", "-2", "0"):
        r = await http.get(f"{V3}/events", params={"from": start, "timeout": 0, "limit": bad}, headers=auth_headers(atok))
        assert r.status_code == 400 and r.json()["errcode"] == "M_INVALID_PARAM", (bad, r.text)


async def _events(http: httpx.AsyncClient, token: str, **params: object) -> dict[str, object]:
    r = await http.get(f"{V3}/events", params={"timeout": 0, **params}, headers=auth_headers(token))
    assert r.status_code == 200, r.text
    return dict(r.json())


async def test_event_stream_carries_typing_receipts_and_account_data(http: httpx.AsyncClient) -> None:
    """/events gives what /sync gives beside room events: typing and receipts (with
    their room_id), account data and tags; each once."""
    alice, atok, _ = await register(http)
    room = await create_room(http, atok)
    eid = await send(http, atok, room, {"msgtype": "m.text", "body": "hi"})
    start = await _events(http, atok)
    r = await http.put(f"{V3}/rooms/{room}/typing/{alice}", json={"typing": True, "timeout": 30000}, headers=auth_headers(atok))
    assert r.status_code == 200, r.text
    r = await http.post(f"{V3}/rooms/{room}/receipt/m.read/{eid}", json={}, headers=auth_headers(atok))
    assert r.status_code == 200, r.text
    r = await http.put(f"{V3}/user/{alice}/account_data/my.test.type", json={"cats": 1}, headers=auth_headers(atok))
    assert r.status_code == 200, r.text
    r = await http.put(f"{V3}/user/{alice}/rooms/{room}/tags/work", json={}, headers=auth_headers(atok))
    assert r.status_code == 200, r.text
    got = await _events(http, atok, **{"from": start["end"]})
    chunk = got["chunk"]
    assert isinstance(chunk, list)
    by_type = {e["type"]: e for e in chunk}
    assert by_type["m.typing"]["room_id"] == room and by_type["m.typing"]["content"]["user_ids"] == [alice]
    assert by_type["m.receipt"]["room_id"] == room and alice in by_type["m.receipt"]["content"][eid]["m.read"]
    assert by_type["my.test.type"]["content"] == {"cats": 1}
    assert by_type["m.tag"]["room_id"] == room and "work" in by_type["m.tag"]["content"]["tags"]
    again = await _events(http, atok, **{"from": got["end"]})
    assert again["chunk"] == []


async def test_initial_sync_receipts_and_a_departed_rooms_snapshot(http: httpx.AsyncClient) -> None:
    alice, atok, _ = await register(http)
    _, btok, _ = await register(http)
    room = await create_room(http, atok, preset="public_chat")
    await join(http, btok, room)
    first = await send(http, atok, room, {"msgtype": "m.text", "body": "1"})
    second = await send(http, atok, room, {"msgtype": "m.text", "body": "2"})
    for eid in (second, first):  # a receipt never moves back
        r = await http.post(f"{V3}/rooms/{room}/receipt/m.read/{eid}", json={}, headers=auth_headers(atok))
        assert r.status_code == 200, r.text
    r = await http.get(f"{V3}/initialSync", headers=auth_headers(atok))
    assert r.status_code == 200, r.text
    receipts = [e for e in r.json()["receipts"] if e["room_id"] == room]
    assert len(receipts) == 1 and alice in receipts[0]["content"][second]["m.read"]

    r = await http.post(f"{V3}/rooms/{room}/leave", json={}, headers=auth_headers(btok))
    assert r.status_code == 200, r.text
    await send(http, atok, room, {"msgtype": "m.text", "body": "after"})
    r = await http.get(f"{V3}/rooms/{room}/initialSync", headers=auth_headers(btok))
    assert r.status_code == 200, r.text
    snap = r.json()
    assert snap["membership"] == "leave" and snap["presence"] == [] and snap["receipts"] == []
    assert "after" not in [e["content"].get("body") for e in snap["messages"]["chunk"]]
    assert "start" in snap["messages"]


async def test_non_member_room_initial_sync_shows_only_world_readable_history(http: httpx.AsyncClient) -> None:
    _, atok, _ = await register(http)
    _, btok, _ = await register(http)
    room = await create_room(http, atok, preset="public_chat")
    await send(http, atok, room, {"msgtype": "m.text", "body": "private"})
    r = await http.put(
        f"{V3}/rooms/{room}/state/m.room.history_visibility", json={"history_visibility": "world_readable"},
        headers=auth_headers(atok),
    )
    assert r.status_code == 200, r.text
    await send(http, atok, room, {"msgtype": "m.text", "body": "public"})
    r = await http.get(f"{V3}/rooms/{room}/initialSync", headers=auth_headers(btok))
    assert r.status_code == 200, r.text
    messages = r.json()["messages"]
    assert [(e["type"], e["content"].get("body")) for e in messages["chunk"]] == [
        ("m.room.history_visibility", None), ("m.room.message", "public"),
    ]
    assert {"start", "end"} <= set(messages)


@pytest.mark.parametrize("config_extra", [{"registration": {"allow_guests": True}}])
async def test_guests_follow_rooms_not_a_global_stream_and_presence_names_its_user(
    http: httpx.AsyncClient,
) -> None:
    r = await http.post(f"{V3}/register", params={"kind": "guest"}, json={})
    assert r.status_code == 200, r.text
    guest = r.json()["access_token"]
    r = await http.get(f"{V3}/events", params={"timeout": 0}, headers=auth_headers(guest))
    assert r.status_code == 403 and r.json()["errcode"] == "M_GUEST_ACCESS_FORBIDDEN"

    alice, atok, _ = await register(http)
    r = await http.put(f"{V3}/presence/{alice}/status", json={"presence": "online"}, headers=auth_headers(atok))
    assert r.status_code == 200, r.text
    r = await http.get(f"{V3}/initialSync", headers=auth_headers(atok))
    assert r.status_code == 200, r.text
    mine = [e for e in r.json()["presence"] if e["sender"] == alice]
    assert mine and mine[0]["content"]["user_id"] == alice and mine[0]["content"]["presence"] == "online"


async def test_deprecated_endpoints_give_events_in_the_old_format(http: httpx.AsyncClient) -> None:
    """Bots written against /initialSync and /events read ``user_id`` (the sender) and a
    top-level ``age`` and ``prev_content``, as these endpoints have always given them
    (SyTest 30rooms/01state 'Room initialSync')."""
    alice, atok, _ = await register(http)
    room = await create_room(http, atok, name="Old", preset="public_chat")
    r = await http.put(f"{V3}/rooms/{room}/state/m.room.name", json={"name": "Older"}, headers=auth_headers(atok))
    assert r.status_code == 200, r.text
    eid = await send(http, atok, room, {"msgtype": "m.text", "body": "hi"})

    r = await http.get(f"{V3}/rooms/{room}/initialSync", headers=auth_headers(atok))
    assert r.status_code == 200, r.text
    body = r.json()
    mine = [e for e in body["state"] if e["type"] == "m.room.member" and e["state_key"] == alice]
    assert mine and mine[0]["user_id"] == alice and mine[0]["content"]["membership"] == "join"
    name = next(e for e in body["state"] if e["type"] == "m.room.name")
    assert name["content"] == {"name": "Older"} and name["prev_content"] == {"name": "Old"}
    assert name["unsigned"]["prev_content"] == {"name": "Old"}  # the ClientEvent shape stays
    assert all(e["user_id"] == e["sender"] and "age" in e for e in body["messages"]["chunk"])

    r = await http.get(f"{V3}/initialSync", headers=auth_headers(atok))
    snap = next(x for x in r.json()["rooms"] if x["room_id"] == room)
    assert all(e["user_id"] == e["sender"] for e in snap["state"] + snap["messages"]["chunk"])

    r = await http.get(f"{V3}/events/{eid}", headers=auth_headers(atok))
    assert r.json()["user_id"] == alice and r.json()["content"]["body"] == "hi"

    r = await http.get(f"{V3}/events", params={"timeout": 0}, headers=auth_headers(atok))
    end = r.json()["end"]
    eid2 = await send(http, atok, room, {"msgtype": "m.text", "body": "again"})
    r = await http.get(f"{V3}/events", params={"from": end, "timeout": 0}, headers=auth_headers(atok))
    [ev] = [e for e in r.json()["chunk"] if e.get("event_id") == eid2]
    assert ev["user_id"] == alice and ev["sender"] == alice
    # /sync keeps the spec's ClientEvent without the old fields.
    timeline = (await sync(http, atok))["rooms"]["join"][room]["timeline"]["events"]
    assert all("user_id" not in e for e in timeline)
