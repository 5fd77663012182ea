"""Simplified sliding sync (MSC4186) as a client written from the proposal's text sees it:
lists, ranges, filters, room fields, connections and positions, long polling, and the
extensions (to-device, e2ee, account data, receipts, typing)."""

from __future__ import annotations

import itertools
from typing import Any

import httpx
import trio

from tests.api.e2ee_helpers import FakeDevice
from tests.api.helpers import V3, auth_headers, create_room, join, login, register, send, sync

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


async def test_incremental_answers_carry_only_what_changed(http: httpx.AsyncClient) -> None:
    alice, atok, _ = await register(http)
    bob, btok, _ = await register(http)
    quiet = await create_room(http, atok, name="quiet", preset="public_chat")
    busy = await create_room(http, atok, name="busy", preset="public_chat")
    first = await ss(http, atok, all_rooms(limit=3))
    assert set(first["rooms"]) == {quiet, busy}

    # Nothing new: an empty answer at once without a timeout.
    again = await ss(http, atok, all_rooms(limit=3), pos=first["pos"])
    assert again["rooms"] == {}
    assert again["pos"] != first["pos"]

    await send(http, atok, busy, {"msgtype": "m.text", "body": "one"})
    await send(http, atok, busy, {"msgtype": "m.text", "body": "two"})
    nxt = await ss(http, atok, all_rooms(limit=3), pos=again["pos"])
    assert set(nxt["rooms"]) == {busy}
    room = nxt["rooms"][busy]
    assert "initial" not in room
    assert [e["content"]["body"] for e in room["timeline"]] == ["one", "two"]
    assert room["num_live"] == 2
    assert room["limited"] is False
    assert "name" not in room and "required_state" not in room  # unchanged
    assert "joined_count" not in room

    # A rename and a join: the name, the new state and the counts come again.
    await put_state(http, atok, busy, "m.room.name", {"name": "busier"})
    await join(http, btok, busy)
    later = await ss(http, atok, all_rooms(limit=3), pos=nxt["pos"])
    room = later["rooms"][busy]
    assert room["name"] == "busier"
    assert [(e["type"], e["state_key"]) for e in room["required_state"]] == [("m.room.name", "")]
    assert room["joined_count"] == 2
    # More events than the timeline limit: limited, with a prev_batch to paginate from.
    for i in range(5):
        await send(http, btok, busy, {"msgtype": "m.text", "body": f"m{i}"})
    gappy = await ss(http, atok, all_rooms(limit=3), pos=later["pos"])
    room = gappy["rooms"][busy]
    assert room["limited"] is True and room["num_live"] == 3
    r = await http.get(f"{V3}/rooms/{busy}/messages", params={"from": room["prev_batch"], "dir": "b", "limit": 2},
                       headers=auth_headers(atok))
    assert [e["content"]["body"] for e in r.json()["chunk"]] == ["m1", "m0"]


async def test_a_retried_pos_gives_the_same_rooms_again(http: httpx.AsyncClient) -> None:
    """The server cannot know the client got an answer until it sends its pos: a retry
    with the old pos gets what the lost answer carried."""
    _, atok, _ = await register(http)
    room = await create_room(http, atok)
    first = await ss(http, atok, all_rooms())
    await send(http, atok, room, {"msgtype": "m.text", "body": "hi"})
    lost = await ss(http, atok, all_rooms(), pos=first["pos"])
    retry = await ss(http, atok, all_rooms(), pos=first["pos"])
    assert [e["event_id"] for e in lost["rooms"][room]["timeline"]] == [
        e["event_id"] for e in retry["rooms"][room]["timeline"]
    ]
    # Either answer's pos goes on.
    assert (await ss(http, atok, all_rooms(), pos=retry["pos"]))["rooms"] == {}


async def test_unknown_pos(http: httpx.AsyncClient) -> None:
    _, atok, _ = await register(http)
    _, btok, _ = await register(http)
    await create_room(http, atok)
    first = await ss(http, atok, {**all_rooms(), "conn_id": "main"})
    assert await ss_error(http, atok, {**all_rooms(), "conn_id": "main"}, pos="garbage") == (400, "M_UNKNOWN_POS")
    # Another user's (or another connection's) pos is refused.
    assert await ss_error(http, btok, {**all_rooms(), "conn_id": "main"}, pos=first["pos"]) == (400, "M_UNKNOWN_POS")
    assert await ss_error(http, atok, {**all_rooms(), "conn_id": "other"}, pos=first["pos"]) == (400, "M_UNKNOWN_POS")
    # The proposal's dialect: pos in the body.
    ok = await ss(http, atok, {**all_rooms(), "conn_id": "main", "pos": first["pos"]})
    # Starting the connection over forgets its positions.
    await ss(http, atok, {**all_rooms(), "conn_id": "main"})
    assert await ss_error(http, atok, {**all_rooms(), "conn_id": "main"}, pos=ok["pos"]) == (400, "M_UNKNOWN_POS")


async def test_bad_requests_get_the_spec_errors(http: httpx.AsyncClient) -> None:
    _, atok, _ = await register(http)
    assert await ss_error(http, atok, {"lists": []}) == (400, "M_BAD_JSON")
    assert await ss_error(http, atok, {"lists": {"a": {"ranges": [[3, 1]], "timeline_limit": 1}}}) == (400, "M_INVALID_PARAM")
    assert await ss_error(http, atok, {"lists": {f"l{i}": {"timeline_limit": 1} for i in range(101)}}) == (400, "M_INVALID_PARAM")
    assert await ss_error(http, atok, {}, timeout="soon") == (400, "M_INVALID_PARAM")
    assert await ss_error(http, atok, {"set_presence": "away"}) == (400, "M_INVALID_PARAM")
    r = await http.post(SS, content=b"{not json", headers=auth_headers(atok))
    assert (r.status_code, r.json()["errcode"]) == (400, "M_NOT_JSON")
    r = await http.post(SS, json={})
    assert (r.status_code, r.json()["errcode"]) == (401, "M_MISSING_TOKEN")


async def test_long_poll_wakes_on_a_new_message(http: httpx.AsyncClient, server: Any) -> None:
    alice, atok, _ = await register(http)
    room = await create_room(http, atok)
    first = await ss(http, atok, all_rooms())
    got: dict[str, Any] = {}

    async def poll() -> None:
        got.update(await ss(http, atok, all_rooms(), pos=first["pos"], timeout=60_000))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(poll)
        # Wait until the request is parked on the notifier, then send.
        await _wait_for_waiter(server)
        await send(http, atok, room, {"msgtype": "m.text", "body": "wake up"})
    assert got["rooms"][room]["timeline"][-1]["content"]["body"] == "wake up"


async def _wait_for_waiter(server: Any) -> None:
    """Until a request waits on the notifier (polled, with a deadline)."""
    notifier = server.services.notifier
    with trio.fail_after(30):
        while notifier.waiters == 0:
            await trio.sleep(0.01)


async def test_heroes_and_counts_for_an_unnamed_room(http: httpx.AsyncClient) -> None:
    alice, atok, _ = await register(http)
    bob, btok, _ = await register(http)
    carol, _, _ = await register(http)
    r = await http.put(f"{V3}/profile/{bob}/displayname", json={"displayname": "Bobby"}, headers=auth_headers(btok))
    assert r.status_code == 200
    room = await create_room(http, atok, invite=[carol], preset="public_chat")
    await join(http, btok, room)
    resp = await ss(http, atok, all_rooms())
    entry = resp["rooms"][room]
    assert "name" not in entry
    assert [h["user_id"] for h in entry["heroes"]] == [bob, carol]
    assert entry["heroes"][0]["displayname"] == "Bobby"
    assert entry["joined_count"] == 2 and entry["invited_count"] == 1


async def test_required_state_lazy_me_and_wildcards(http: httpx.AsyncClient) -> None:
    alice, atok, _ = await register(http)
    bob, btok, _ = await register(http)
    carol, ctok, _ = await register(http)
    room = await create_room(http, atok, preset="public_chat", topic="t")
    await join(http, btok, room)
    await join(http, ctok, room)
    await send(http, btok, room, {"msgtype": "m.text", "body": "from bob"})

    def keys(resp: dict[str, Any]) -> set[tuple[str, str]]:
        return {(e["type"], e["state_key"]) for e in resp["rooms"][room]["required_state"]}

    lazy = {"lists": {"l": {"ranges": [[0, 0]], "timeline_limit": 1,
                            "required_state": [["m.room.topic", ""], ["m.room.member", "$LAZY"]]}}}
    resp = await ss(http, atok, lazy)
    # Only the sender of the one timeline event, not carol, not alice herself.
    assert keys(resp) == {("m.room.topic", ""), ("m.room.member", bob)}

    me = {"lists": {"l": {"ranges": [[0, 0]], "timeline_limit": 1, "required_state": [["m.room.member", "$ME"]]}}}
    assert keys(await ss(http, atok, me)) == {("m.room.member", alice)}

    everything = {"lists": {"l": {"ranges": [[0, 0]], "timeline_limit": 1, "required_state": [["*", "*"]]}}}
    got = keys(await ss(http, atok, everything))
    assert {("m.room.member", alice), ("m.room.member", bob), ("m.room.member", carol), ("m.room.create", "")} <= got
    assert ("m.room.topic", "") in got and ("m.room.power_levels", "") in got

    all_members = {"lists": {"l": {"ranges": [[0, 0]], "timeline_limit": 1, "required_state": [["m.room.member", "*"]]}}}
    assert keys(await ss(http, atok, all_members)) == {("m.room.member", u) for u in (alice, bob, carol)}

    # The proposal's own dialect.
    new = {"lists": {"l": {"range": [0, 0], "timeline_limit": 1,
                           "required_state": {"include": [{}], "exclude": [{"type": "m.room.member"}]}}}}
    got = keys(await ss(http, atok, new))
    assert ("m.room.topic", "") in got and not any(t == "m.room.member" for t, _ in got)

    # Growing required_state on a live connection sends the newly wanted state only.
    first = await ss(http, atok, me)
    grown = await ss(http, atok, everything, pos=first["pos"])
    assert ("m.room.topic", "") in keys(grown) and ("m.room.member", alice) not in keys(grown)


async def test_timeline_limit_growth_gives_an_expanded_timeline(http: httpx.AsyncClient) -> None:
    _, atok, _ = await register(http)
    room = await create_room(http, atok)
    for i in range(4):
        await send(http, atok, room, {"msgtype": "m.text", "body": f"m{i}"})
    first = await ss(http, atok, all_rooms(limit=1))
    assert [e["content"]["body"] for e in first["rooms"][room]["timeline"]] == ["m3"]
    grown = await ss(http, atok, all_rooms(limit=3), pos=first["pos"])
    entry = grown["rooms"][room]
    assert entry["expanded_timeline"] is True
    assert [e["content"]["body"] for e in entry["timeline"]] == ["m1", "m2", "m3"]
    assert entry["num_live"] == 0
    same = await ss(http, atok, all_rooms(limit=3), pos=grown["pos"])
    assert same["rooms"] == {}


async def test_room_subscriptions(http: httpx.AsyncClient) -> None:
    alice, atok, _ = await register(http)
    bob, btok, _ = await register(http)
    old = await create_room(http, atok, name="old")
    for i in range(3):
        await create_room(http, atok, name=f"new {i}")
    foreign = await create_room(http, btok)  # alice is not in it
    body = {
        **all_rooms([[0, 0]]),
        "room_subscriptions": {
            old: {"timeline_limit": 2, "required_state": [["m.room.name", ""]]},
            foreign: {"timeline_limit": 2, "required_state": [["*", "*"]]},
            "!nosuch:test.local": {"timeline_limit": 1, "required_state": []},
        },
    }
    resp = await ss(http, atok, body)
    assert old in resp["rooms"] and foreign not in resp["rooms"] and "!nosuch:test.local" not in resp["rooms"]
    assert resp["rooms"][old]["name"] == "old"
    assert "lists" not in resp["rooms"][old]  # only there through the subscription
    assert len(resp["rooms"]) == 2
    await send(http, atok, old, {"msgtype": "m.text", "body": "news"})
    nxt = await ss(http, atok, body, pos=resp["pos"])
    assert nxt["rooms"][old]["timeline"][-1]["content"]["body"] == "news"
    # The subscribed room's message moved it to the top: now it is in the list's range.
    assert nxt["rooms"][old]["lists"] == ["all"]


async def test_filters_over_the_room_list(http: httpx.AsyncClient) -> None:
    alice, atok, _ = await register(http)
    bob, btok, _ = await register(http)
    plain = await create_room(http, atok, name="plain")
    dm = await create_room(http, atok, is_direct=True, invite=[bob], preset="trusted_private_chat")
    await put_account_data(http, atok, alice, "m.direct", {bob: [dm]})
    encrypted = await create_room(
        http, atok, initial_state=[{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}]
    )
    space = await create_room(http, atok, creation_content={"type": "m.space"}, name="space")
    await put_state(http, atok, space, "m.space.child", {"via": ["test.local"]}, key=plain)
    invited_to = await create_room(http, btok, invite=[alice])
    r = await http.put(f"{V3}/user/{alice}/rooms/{plain}/tags/m.favourite", json={}, headers=auth_headers(atok))
    assert r.status_code == 200

    async def listed(filters: dict[str, Any]) -> set[str]:
        resp = await ss(http, atok, all_rooms(filters=filters))
        return set(resp["rooms"]) if resp["lists"]["all"]["count"] == len(resp["rooms"]) else {"count mismatch"}

    every = {plain, dm, encrypted, space, invited_to}
    assert await listed({}) == every
    assert await listed({"is_dm": True}) == {dm}
    assert await listed({"is_dm": False}) == every - {dm}
    assert await listed({"is_encrypted": True}) == {encrypted}
    assert await listed({"is_invite": True}) == {invited_to}
    assert await listed({"is_invited": False}) == every - {invited_to}
    assert await listed({"room_types": ["m.space"]}) == {space}
    assert await listed({"not_room_types": ["m.space"]}) == every - {space}
    assert await listed({"room_types": [None]}) == every - {space}
    assert await listed({"spaces": [space]}) == {plain}
    assert await listed({"tags": ["m.favourite"]}) == {plain}
    assert await listed({"not_tags": ["m.favourite"]}) == every - {plain}


async def test_invites_knocks_and_kicks(http: httpx.AsyncClient) -> None:
    alice, atok, _ = await register(http)
    bob, btok, _ = await register(http)
    invited = await create_room(http, btok, name="come in", invite=[alice])
    knockable = await create_room(http, btok, room_version="10", initial_state=[
        {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}])
    r = await http.post(f"{V3}/knock/{knockable}", json={}, headers=auth_headers(atok))
    assert r.status_code == 200, r.text
    kicked_from = await create_room(http, btok, preset="public_chat")
    await join(http, atok, kicked_from)
    r = await http.post(f"{V3}/rooms/{kicked_from}/kick", json={"user_id": alice, "reason": "bye"}, headers=auth_headers(btok))
    assert r.status_code == 200, r.text
    left_myself = await create_room(http, btok, preset="public_chat")
    await join(http, atok, left_myself)
    r = await http.post(f"{V3}/rooms/{left_myself}/leave", json={}, headers=auth_headers(atok))
    assert r.status_code == 200

    resp = await ss(http, atok, all_rooms(limit=5))
    assert set(resp["rooms"]) == {invited, knockable, kicked_from}  # not the room alice left herself
    inv = resp["rooms"][invited]
    assert inv["membership"] == "invite"
    names = [e["content"].get("name") for e in inv["invite_state"] if e["type"] == "m.room.name"]
    assert names == ["come in"] and inv["stripped_state"] == inv["invite_state"]
    assert "timeline" not in inv
    assert resp["rooms"][knockable]["membership"] == "knock"
    assert any(e["type"] == "m.room.member" for e in resp["rooms"][knockable]["knock_state"])
    kicked = resp["rooms"][kicked_from]
    assert kicked["membership"] == "leave"
    last = kicked["timeline"][-1]
    assert (last["type"], last["state_key"], last["content"]["membership"]) == ("m.room.member", alice, "leave")

    # Joining the invited room: the room comes again, whole.
    await join(http, atok, invited)
    nxt = await ss(http, atok, all_rooms(limit=5), pos=resp["pos"])
    entry = nxt["rooms"][invited]
    assert entry["initial"] is True and entry["membership"] == "join" and entry["name"] == "come in"
    # A room this connection had, left since: the leave comes down.
    await send(http, btok, invited, {"msgtype": "m.text", "body": "welcome"})
    r = await http.post(f"{V3}/rooms/{invited}/leave", json={}, headers=auth_headers(atok))
    later = await ss(http, atok, all_rooms(limit=5), pos=nxt["pos"])
    assert later["rooms"][invited]["membership"] == "leave"
    assert later["rooms"][invited]["timeline"][-1]["content"]["membership"] == "leave"


def extensions(**overrides: Any) -> dict[str, Any]:
    ext: dict[str, Any] = {
        "to_device": {"enabled": True},
        "e2ee": {"enabled": True},
        "account_data": {"enabled": True},
        "receipts": {"enabled": True},
        "typing": {"enabled": True},
    }
    ext.update(overrides)
    return {"extensions": ext}


async def test_to_device_extension_delivers_each_message_once(http: httpx.AsyncClient) -> None:
    alice, atok, adev = await register(http)
    bob, btok, _ = await register(http)
    for i in range(5):
        r = await http.put(f"{V3}/sendToDevice/m.test/td{next(_txn)}", json={"messages": {alice: {adev: {"n": i}}}},
                           headers=auth_headers(btok))
        assert r.status_code == 200
    def body(since: str | None) -> dict[str, Any]:
        return {**all_rooms(), **extensions(to_device={"enabled": True, "limit": 2, "since": since})}

    got: list[int] = []
    resp = await ss(http, atok, body(None))
    for _ in range(10):  # bounded: five messages in batches of two
        td = resp["extensions"]["to_device"]
        got += [e["content"]["n"] for e in td["events"]]
        assert all(e["sender"] == bob and e["type"] == "m.test" for e in td["events"])
        if not td["events"]:
            break
        nxt = await ss(http, atok, body(td["next_batch"]), pos=resp["pos"])
        # A lost answer: the same since again gives the same batch; nothing is skipped.
        retry = await ss(http, atok, body(td["next_batch"]), pos=resp["pos"])
        assert retry["extensions"]["to_device"]["events"] == nxt["extensions"]["to_device"]["events"]
        resp = nxt
    assert got == [0, 1, 2, 3, 4]


async def test_e2ee_extension_counts_keys_and_tracks_device_lists(http: httpx.AsyncClient) -> None:
    alice, atok, adev = await register(http)
    bob, btok, _ = await register(http)
    me = FakeDevice(alice, adev, atok)
    await me.upload(http, otks=3)
    room = await create_room(http, atok, preset="public_chat")
    await join(http, btok, room)
    first = await ss(http, atok, {**all_rooms(), **extensions()})
    e2ee = first["extensions"]["e2ee"]
    assert e2ee["device_one_time_keys_count"]["signed_curve25519"] == 3
    assert isinstance(e2ee["device_unused_fallback_key_types"], list)
    assert "device_lists" not in e2ee  # nothing to compare with on a first answer
    # Bob's new device: alice's client must re-query him.
    await login_device_named(http, bob, "BOBPHONE")
    nxt = await ss(http, atok, {**all_rooms(), **extensions()}, pos=first["pos"])
    assert bob in nxt["extensions"]["e2ee"]["device_lists"]["changed"]


async def test_account_data_receipts_and_typing_extensions(http: httpx.AsyncClient) -> None:
    alice, atok, _ = await register(http)
    bob, btok, _ = await register(http)
    room = await create_room(http, atok, preset="public_chat")
    other = await create_room(http, atok, preset="public_chat")
    await join(http, btok, room)
    await put_account_data(http, atok, alice, "org.example.global", {"a": 1})
    await put_account_data(http, atok, alice, "org.example.room", {"b": 2}, room=room)
    event = await send(http, btok, room, {"msgtype": "m.text", "body": "read me"})
    r = await http.post(f"{V3}/rooms/{room}/receipt/m.read/{event}", json={}, headers=auth_headers(btok))
    assert r.status_code == 200

    first = await ss(http, atok, {**all_rooms(), **extensions()})
    ad = first["extensions"]["account_data"]
    types = {e["type"] for e in ad["global"]}
    assert {"org.example.global", "m.push_rules"} <= types
    assert ad["rooms"][room] == [{"type": "org.example.room", "content": {"b": 2}}]
    receipts = first["extensions"]["receipts"]["rooms"][room]
    assert receipts["type"] == "m.receipt" and bob in receipts["content"][event]["m.read"]
    assert first["extensions"]["typing"]["rooms"] == {}

    # Scoped to one room by ID: nothing about the other.
    await put_account_data(http, atok, alice, "org.example.room", {"c": 3}, room=other)
    await put_account_data(http, atok, alice, "org.example.room", {"b": 4}, room=room)
    scoped = {**all_rooms(), **extensions(account_data={"enabled": True, "lists": [], "rooms": [room]})}
    nxt = await ss(http, atok, scoped, pos=first["pos"])
    assert nxt["extensions"]["account_data"]["rooms"] == {room: [{"type": "org.example.room", "content": {"b": 4}}]}
    assert nxt["extensions"]["account_data"]["global"] == []

    # Typing and a new receipt come as they happen.
    r = await http.put(f"{V3}/rooms/{room}/typing/{bob}", json={"typing": True, "timeout": 30000}, headers=auth_headers(btok))
    assert r.status_code == 200
    event2 = await send(http, btok, room, {"msgtype": "m.text", "body": "again"})
    r = await http.post(f"{V3}/rooms/{room}/receipt/m.read/{event2}", json={}, headers=auth_headers(btok))
    later = await ss(http, atok, {**all_rooms(), **extensions()}, pos=nxt["pos"])
    assert later["extensions"]["typing"]["rooms"][room]["content"]["user_ids"] == [bob]
    assert list(later["extensions"]["receipts"]["rooms"][room]["content"]) == [event2]
    # Stopping is news too.
    r = await http.put(f"{V3}/rooms/{room}/typing/{bob}", json={"typing": False}, headers=auth_headers(btok))
    stopped = await ss(http, atok, {**all_rooms(), **extensions()}, pos=later["pos"])
    assert stopped["extensions"]["typing"]["rooms"][room]["content"]["user_ids"] == []


async def test_is_dm_changes_and_unread_counts(http: httpx.AsyncClient) -> None:
    alice, atok, _ = await register(http)
    bob, btok, _ = await register(http)
    room = await create_room(http, atok, preset="public_chat")
    await join(http, btok, room)
    first = await ss(http, atok, all_rooms())
    assert "is_dm" not in first["rooms"][room]
    # Marked as a DM, nothing else new: the room comes again for its is_dm alone.
    await put_account_data(http, atok, alice, "m.direct", {bob: [room]})
    marked = await ss(http, atok, all_rooms(), pos=first["pos"])
    assert marked["rooms"][room]["is_dm"] is True and marked["rooms"][room]["timeline"] == []
    first = marked
    event = await send(http, btok, room, {"msgtype": "m.text", "body": "hey", "m.mentions": {"user_ids": [alice]}})
    nxt = await ss(http, atok, all_rooms(), pos=first["pos"])
    entry = nxt["rooms"][room]
    assert "is_dm" not in entry  # unchanged since
    assert entry["notification_count"] == 1 and entry["highlight_count"] == 1
    r = await http.post(f"{V3}/rooms/{room}/receipt/m.read/{event}", json={}, headers=auth_headers(atok))
    assert r.status_code == 200
    # Read (on any device): the room comes again with its counts, nothing else.
    read = await ss(http, atok, all_rooms(), pos=nxt["pos"])
    assert read["rooms"][room]["notification_count"] == 0 and read["rooms"][room]["timeline"] == []
    await send(http, btok, room, {"msgtype": "m.text", "body": "more"})
    later = await ss(http, atok, all_rooms(), pos=read["pos"])
    assert later["rooms"][room]["notification_count"] == 1 and later["rooms"][room]["highlight_count"] == 0
    # Unmarked: is_dm false comes down.
    await put_account_data(http, atok, alice, "m.direct", {})
    unmarked = await ss(http, atok, all_rooms(), pos=later["pos"])
    assert unmarked["rooms"][room]["is_dm"] is False


async def test_sliding_sync_and_v2_sync_of_one_user_see_the_same(http: httpx.AsyncClient) -> None:
    """One user, two devices: one syncs with sliding sync, the other with /v3/sync. Both
    see the same messages, each device gets the to-device messages sent to it exactly
    once, and both learn of the same device-list changes."""
    alice, atok, adev = await register(http)
    session = await login_device_named(http, alice, "V2DEVICE")
    vtok, vdev = str(session["access_token"]), str(session["device_id"])
    bob, btok, _ = await register(http)
    rooms = [await create_room(http, atok, preset="public_chat") for _ in range(3)]
    for room in rooms:
        await join(http, btok, room)

    body_ss = {**all_rooms([[0, 9]], limit=50), **extensions(to_device={"enabled": True, "limit": 3})}
    resp = await ss(http, atok, body_ss)
    v2 = await sync(http, vtok, filter='{"room": {"timeline": {"limit": 50}}}')
    seen_ss: dict[str, list[str]] = {}
    seen_v2: dict[str, list[str]] = {}
    td_ss: list[Any] = []
    td_v2: list[Any] = []
    lists_ss: set[str] = set()
    lists_v2: set[str] = set()

    def take_ss(r: dict[str, Any]) -> None:
        for rid, entry in r["rooms"].items():
            seen_ss.setdefault(rid, []).extend(e["event_id"] for e in entry.get("timeline", []))
        td_ss.extend(r["extensions"]["to_device"]["events"])
        lists_ss.update(r["extensions"]["e2ee"].get("device_lists", {}).get("changed", []))

    def take_v2(r: dict[str, Any]) -> None:
        for rid, entry in r["rooms"]["join"].items():
            seen_v2.setdefault(rid, []).extend(e["event_id"] for e in entry["timeline"]["events"])
        td_v2.extend(r.get("to_device", {}).get("events", []))
        lists_v2.update(r.get("device_lists", {}).get("changed", []))

    take_ss(resp)
    take_v2(v2)
    sent: list[str] = []
    for round_ in range(3):
        for i, room in enumerate(rooms):
            sent.append(await send(http, btok, room, {"msgtype": "m.text", "body": f"r{round_} m{i}"}))
        for n in range(4):
            r = await http.put(
                f"{V3}/sendToDevice/m.test/p{next(_txn)}",
                json={"messages": {alice: {adev: {"n": f"{round_}.{n}"}, vdev: {"n": f"{round_}.{n}"}}}},
                headers=auth_headers(btok),
            )
            assert r.status_code == 200
        if round_ == 1:
            await login_device_named(http, bob, f"BOB{round_}")  # a device-list change
        # Each side syncs until it has nothing more (bounded).
        for _ in range(10):
            since = resp["extensions"]["to_device"]["next_batch"]
            body = {**body_ss, **extensions(to_device={"enabled": True, "limit": 3, "since": since})}
            resp = await ss(http, atok, body, pos=resp["pos"])
            take_ss(resp)
            if not resp["rooms"] and not resp["extensions"]["to_device"]["events"]:
                break
        for _ in range(10):
            v2 = await sync(http, vtok, since=v2["next_batch"], filter='{"room": {"timeline": {"limit": 50}}}')
            take_v2(v2)
            if not v2["rooms"]["join"] and not v2.get("to_device", {}).get("events"):
                break

    for room in rooms:
        assert seen_ss[room] == seen_v2[room]
    assert set(sent) <= {e for ids in seen_ss.values() for e in ids}
    expected = [f"{r}.{n}" for r in range(3) for n in range(4)]
    assert [e["content"]["n"] for e in td_ss] == expected
    assert [e["content"]["n"] for e in td_v2] == expected
    assert bob in lists_ss and bob in lists_v2
    assert lists_ss == lists_v2


async def login_device_named(http: httpx.AsyncClient, user: str, device_id: str) -> dict[str, object]:
    return await login(http, user.split(":")[0][1:], device_id=device_id)


async def test_an_extensions_only_connection_long_polls_for_to_device(http: httpx.AsyncClient, server: Any) -> None:
    """Element X keeps a second connection with only the to-device and e2ee extensions."""
    alice, atok, adev = await register(http)
    bob, btok, _ = await register(http)
    await create_room(http, atok)
    body = {"conn_id": "encryption", **extensions(to_device={"enabled": True}, e2ee={"enabled": True})}
    del body["extensions"]["account_data"], body["extensions"]["receipts"], body["extensions"]["typing"]
    first = await ss(http, atok, body)
    assert first["rooms"] == {} and first["lists"] == {}
    since = first["extensions"]["to_device"]["next_batch"]
    got: dict[str, Any] = {}

    async def poll() -> None:
        got.update(await ss(http, atok, {**body, "extensions": {**body["extensions"], "to_device": {
            "enabled": True, "since": since}}}, pos=first["pos"], timeout=60_000))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(poll)
        await _wait_for_waiter(server)
        r = await http.put(f"{V3}/sendToDevice/m.test/w{next(_txn)}", json={"messages": {alice: {adev: {"k": 1}}}},
                           headers=auth_headers(btok))
        assert r.status_code == 200
    assert [e["content"] for e in got["extensions"]["to_device"]["events"]] == [{"k": 1}]


async def test_pos_works_as_a_token_of_other_endpoints(http: httpx.AsyncClient) -> None:
    alice, atok, _ = await register(http)
    bob, btok, _ = await register(http)
    room = await create_room(http, atok, preset="public_chat")
    await join(http, btok, room)
    first = await ss(http, atok, all_rooms())
    await login_device_named(http, bob, "NEWPHONE")
    nxt = await ss(http, atok, all_rooms(), pos=first["pos"])
    r = await http.get(f"{V3}/keys/changes", params={"from": first["pos"], "to": nxt["pos"]}, headers=auth_headers(atok))
    assert r.status_code == 200, r.text
    assert bob in r.json()["changed"]
    r = await http.get(f"{V3}/rooms/{room}/messages", params={"from": "ss1_zz_1", "dir": "b"}, headers=auth_headers(atok))
    assert (r.status_code, r.json()["errcode"]) == (400, "M_INVALID_PARAM")
