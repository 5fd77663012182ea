"""federation/joining.py: this server's users in rooms another server hosts, through
the client API, with the other server played by tests/federation/remote.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from pocketserver.federation.hosting import RoomHosting, build_room_federation
from pocketserver.federation.interfaces import FederationError
from pocketserver.federation.transactions import TransactionHandler
from pocketserver.server import RunningServer
from pocketserver.storage import events as ev_store
from pocketserver.storage import outbox
from pocketserver.storage import state as state_store
from tests.api.helpers import V3, auth_headers, create_room, register, send, sync
from tests.federation.fakes import poll
from tests.federation.remote import FakeKeys, HostingRequester, RemoteRoom, key_for, room_version

REMOTE = "remote.test"
BOB = "@bob:remote.test"


@dataclass
class Host:
    server: RunningServer
    http: httpx.AsyncClient
    requester: HostingRequester
    transactions: TransactionHandler
    hosting: RoomHosting

    @property
    def services(self) -> Any:
        return self.server.services

    def room(self, version: str = "10", join_rule: str = "public", server: str = REMOTE) -> RemoteRoom:
        room = RemoteRoom.create(server, f"@bob:{server}", room_version(version), join_rule=join_rule)
        self.requester.rooms[room.room_id] = room
        return room

    async def user(self) -> tuple[str, str]:
        user, token, _ = await register(self.http)
        return user, token

    async def deliver(self, *pdus: dict[str, Any], origin: str = REMOTE) -> None:
        self._txn = getattr(self, "_txn", 0) + 1
        body = {"origin": origin, "origin_server_ts": 0, "pdus": list(pdus), "edus": []}
        answer = await self.transactions.on_transaction(origin, f"t{self._txn}", body)
        assert all(not r.get("error") for r in answer["pdus"].values()), answer


@pytest.fixture
async def host(server: RunningServer, http: httpx.AsyncClient) -> Host:
    s = server.services
    keys = FakeKeys(*((name, key_for(name)) for name in (REMOTE, "other.test", "down.test")))
    requester = HostingRequester()
    built = build_room_federation(s, requester, keys)
    assert s.federation_sender is not None
    s.federation_sender.requester = requester
    return Host(server, http, requester, built.transactions, built.hosting)


def timeline(resp: dict[str, Any], room_id: str, section: str = "join") -> list[dict[str, Any]]:
    return list(resp["rooms"][section].get(room_id, {}).get("timeline", {}).get("events", []))


def bodies(events: list[dict[str, Any]]) -> list[str]:
    return [e["content"]["body"] for e in events if e["type"] == "m.room.message"]


async def _join(host: Host, token: str, target: str, *via: str) -> httpx.Response:
    params = [("via", v) for v in via]
    return await host.http.post(f"{V3}/join/{target}", params=params, json={}, headers=auth_headers(token))


async def test_join_by_remote_alias_then_messages_both_ways(host: Host) -> None:
    room = host.room()
    host.requester.aliases["#chat:remote.test"] = (room.room_id, [REMOTE])
    room.build(BOB, "m.room.name", {"name": "Far away"}, state_key="")
    alice, token = await host.user()
    r = await _join(host, token, "%23chat:remote.test")
    assert r.status_code == 200, r.text
    assert r.json() == {"room_id": room.room_id}
    # the remote server now has our signed join in its room
    assert room.state[("m.room.member", alice)] in room.events
    first = await sync(host.http, token)
    joined = first["rooms"]["join"][room.room_id]
    assert [e["type"] for e in timeline(first, room.room_id)][-1] == "m.room.member"
    state = {(e["type"], e["state_key"]): e["content"] for e in joined["state"]["events"] + timeline(first, room.room_id)}
    assert state[("m.room.name", "")] == {"name": "Far away"}
    assert state[("m.room.member", BOB)]["membership"] == "join"
    assert state[("m.room.member", alice)]["membership"] == "join"
    # ours goes out to the remote server through the sender
    eid = await send(host.http, token, room.room_id, {"msgtype": "m.text", "body": "hello Bob"})
    await poll(lambda: any(p.get("content", {}).get("body") == "hello Bob" for p in host.requester.sent_pdus(REMOTE)))
    # theirs, by a transaction, reaches our /sync after ours
    room.learn_timeline(next(p for p in host.requester.sent_pdus(REMOTE) if room.event_id(p) == eid))
    reply = room.build(BOB, "m.room.message", {"msgtype": "m.text", "body": "hello Alice"})
    await host.deliver(reply)
    resp = await sync(host.http, token, since=first["next_batch"], timeout=5000)
    assert bodies(timeline(resp, room.room_id)) == ["hello Bob", "hello Alice"]
    # what arrived by /send is not sent back
    assert not any(room.event_id(p) == room.event_id(reply) for p in host.requester.sent_pdus(REMOTE))


async def test_join_by_id_through_the_second_via_when_the_first_is_down(host: Host) -> None:
    room = host.room("6")
    host.requester.down.add("down.test")
    alice, token = await host.user()
    r = await _join(host, token, room.room_id.replace("!", "%21"), "down.test", REMOTE)
    assert r.status_code == 200, r.text
    assert host.requester.asked("GET", "make_join") == ["down.test", REMOTE]
    assert await host.services.rooms.membership(room.room_id, alice) == "join"
    members = await host.services.db.read(state_store.room_members, room.room_id)
    assert set(members) == {alice, BOB}


async def test_join_errors(host: Host) -> None:
    _alice, token = await host.user()
    r = await _join(host, token, "%23nothing:remote.test")
    assert r.status_code == 404 and r.json()["errcode"] == "M_NOT_FOUND"
    room = host.room(join_rule="invite")
    r = await _join(host, token, room.room_id.replace("!", "%21"), REMOTE, "other.test")
    assert r.status_code == 403 and r.json()["errcode"] == "M_FORBIDDEN", r.text
    assert host.requester.asked("GET", "make_join") == [REMOTE]  # a refusal is final
    host.requester.down.add(REMOTE)
    open_room = host.room()
    r = await _join(host, token, open_room.room_id.replace("!", "%21"))
    assert r.status_code == 502 and r.json()["errcode"] == "M_UNKNOWN"
    r = await _join(host, token, "%21unknown:nowhere.test", "bad/server")
    assert r.status_code == 400 and r.json()["errcode"] == "M_INVALID_PARAM"


async def test_a_forged_event_in_the_send_join_answer_is_dropped(host: Host) -> None:
    # A PDU that fails its signature check is dropped, as any is; the join goes on.
    room = host.room()
    topic = room.build(BOB, "m.room.topic", {"topic": "real"}, state_key="")
    forged_id = room.event_id(topic)

    def forge(answer: dict[str, Any]) -> None:
        for i, pdu in enumerate(answer["state"]):
            if room.event_id(pdu) == forged_id:
                answer["state"][i] = dict(pdu, signatures={REMOTE: {room.key.key_id: "A" * 86}})

    host.requester.tamper_send_join = forge
    alice, token = await host.user()
    r = await _join(host, token, room.room_id.replace("!", "%21"))
    assert r.status_code == 200, r.text
    db = host.services.db
    assert await host.services.rooms.membership(room.room_id, alice) == "join"
    assert await db.read(ev_store.get_event, forged_id) is None
    state = await db.read(state_store.get_current_state_ids, room.room_id)
    assert ("m.room.topic", "") not in state


async def test_a_send_join_answer_without_its_create_event_is_refused(host: Host) -> None:
    room = host.room()

    def drop_create(answer: dict[str, Any]) -> None:
        for key in ("state", "auth_chain"):
            answer[key] = [p for p in answer[key] if p["type"] != "m.room.create"]

    host.requester.tamper_send_join = drop_create
    _alice, token = await host.user()
    r = await _join(host, token, room.room_id.replace("!", "%21"))
    assert r.status_code == 502, r.text
    assert await host.services.db.read(ev_store.get_room, room.room_id) is None


async def test_join_falls_back_to_v1_send_join(host: Host) -> None:
    room = host.room()
    host.requester.v1_send_join_only.add(REMOTE)
    alice, token = await host.user()
    r = await _join(host, token, room.room_id.replace("!", "%21"))
    assert r.status_code == 200, r.text
    assert [p.split("/")[3] for m, _, p in host.requester.requests if "/send_join/" in p] == ["v2", "v1"]
    assert await host.services.rooms.membership(room.room_id, alice) == "join"


async def test_a_room_of_a_version_we_lack_is_m_incompatible_room_version(host: Host) -> None:
    room = host.room()
    host.requester.make_join_answer[REMOTE] = FederationError(
        400, "M_INCOMPATIBLE_ROOM_VERSION", "upgrade", room_version="future-ver"
    )
    alice, token = await host.user()
    r = await _join(host, token, room.room_id.replace("!", "%21"))
    assert (r.status_code, r.json()) == (400, {
        "errcode": "M_INCOMPATIBLE_ROOM_VERSION",
        "error": "The room's version is not supported here",
        "room_version": "future-ver",
    })
    # A make_join template of a version we do not know: the same.
    host.requester.make_join_answer[REMOTE] = {"event": {}, "room_version": "future-ver"}
    r = await _join(host, token, room.room_id.replace("!", "%21"))
    assert r.status_code == 400 and r.json()["errcode"] == "M_INCOMPATIBLE_ROOM_VERSION"
    assert r.json()["room_version"] == "future-ver"
    # A template that names no version is of version 1 or 2 (joins-v1); one in a later
    # version's format then is no valid event: refused at once, no send_join sent, and
    # the client told the room's server answered something unusable (not "unreachable").
    host.requester.make_join_answer[REMOTE] = {"event": {
        "type": "m.room.member", "room_id": room.room_id, "sender": alice, "state_key": alice,
        "content": {"membership": "join"}, "depth": 5, "origin_server_ts": 1,
        "prev_events": ["$later-format"], "auth_events": ["$later-format"],
    }}
    r = await _join(host, token, room.room_id.replace("!", "%21"))
    assert (r.status_code, r.json()["errcode"]) == (502, "M_UNKNOWN"), r.text
    assert "cannot use" in r.json()["error"] and "room version 1" in r.json()["error"]
    assert host.requester.asked("PUT", "send_join") == []


async def test_invite_a_remote_user_is_countersigned_and_kept(host: Host) -> None:
    alice, token = await host.user()
    room_id = await create_room(host.http, token, preset="private_chat")
    carol = "@carol:remote.test"
    r = await host.http.post(f"{V3}/rooms/{room_id}/invite", json={"user_id": carol}, headers=auth_headers(token))
    assert r.status_code == 200, r.text
    invite_req = host.requester.invites[-1]
    assert {e["type"] for e in invite_req["invite_room_state"]} >= {"m.room.create", "m.room.join_rules"}
    m = await host.services.db.read(state_store.get_membership, room_id, carol)
    assert m is not None and m[0] == "invite"
    rec = await host.services.db.read(ev_store.get_event, m[1])
    assert set(rec.event.pdu["signatures"]) == {"test.local", REMOTE}
    # createRoom's invite list too
    r = await host.http.post(
        f"{V3}/createRoom", json={"invite": ["@dave:other.test"]}, headers=auth_headers(token)
    )
    assert r.status_code == 200, r.text
    assert "other.test" in host.requester.asked("PUT", "invite")
    # an invitee's server that refuses: nothing is stored
    host.requester.down.add("down.test")
    r = await host.http.post(
        f"{V3}/rooms/{room_id}/invite", json={"user_id": "@x:down.test"}, headers=auth_headers(token)
    )
    assert r.status_code == 502
    assert await host.services.db.read(state_store.get_membership, room_id, "@x:down.test") is None


async def test_an_invite_answered_with_invalid_json_is_refused(host: Host) -> None:
    """rooms/v6 "Canonical JSON": the invitee's server answers the invite with a float
    in the event: the client's invite fails with 400 M_BAD_JSON and nothing is kept."""
    _, token = await host.user()
    room_id = await create_room(host.http, token, preset="private_chat", room_version="6")
    host.requester.tamper_invite = lambda pdu: pdu.__setitem__("bad_val", 1.1)
    carol = "@carol:remote.test"
    r = await host.http.post(f"{V3}/rooms/{room_id}/invite", json={"user_id": carol}, headers=auth_headers(token))
    assert r.status_code == 400 and r.json()["errcode"] == "M_BAD_JSON"
    assert await host.services.db.read(state_store.get_membership, room_id, carol) is None


async def test_invite_falls_back_to_v1_for_a_server_without_v2(host: Host) -> None:
    """A server that does not know /v2/invite gets the v1 form for a room of version
    1 or 2; the invite is countersigned and kept. A newer room version does not fall
    back (v1 cannot carry it)."""
    _, token = await host.user()
    host.requester.v1_invites_only.add(REMOTE)
    room_id = await create_room(host.http, token, preset="private_chat", room_version="1")
    carol = "@carol:remote.test"
    r = await host.http.post(f"{V3}/rooms/{room_id}/invite", json={"user_id": carol}, headers=auth_headers(token))
    assert r.status_code == 200, r.text
    assert any("/v1/invite/" in p[2] for p in host.requester.requests)
    m = await host.services.db.read(state_store.get_membership, room_id, carol)
    assert m is not None and m[0] == "invite"
    newer = await create_room(host.http, token, preset="private_chat", room_version="10")
    r = await host.http.post(f"{V3}/rooms/{newer}/invite", json={"user_id": carol}, headers=auth_headers(token))
    assert r.status_code >= 400
    assert await host.services.db.read(state_store.get_membership, newer, carol) is None


async def _invited(host: Host, room: RemoteRoom, user: str) -> None:
    invite = room.build(BOB, "m.room.member", {"membership": "invite"}, state_key=user)
    create = room.events[room.state[("m.room.create", "")]].pdu
    await host.hosting.on_invite(
        REMOTE, room.room_id, room.event_id(invite),
        {"event": invite, "room_version": room.rv.identifier, "invite_room_state": [create]},
    )


async def test_accepting_a_remote_invite_joins_through_the_inviter(host: Host) -> None:
    room = host.room(join_rule="invite")
    alice, token = await host.user()
    await _invited(host, room, alice)
    first = await sync(host.http, token)
    assert room.room_id in first["rooms"]["invite"]
    r = await host.http.post(f"{V3}/rooms/{room.room_id}/join", json={}, headers=auth_headers(token))
    assert r.status_code == 200, r.text
    resp = await sync(host.http, token, since=first["next_batch"], timeout=5000)
    assert room.room_id in resp["rooms"]["join"]
    assert room.state[("m.room.member", alice)] in room.events


async def test_rejecting_a_remote_invite(host: Host) -> None:
    room = host.room(join_rule="invite")
    alice, token = await host.user()
    await _invited(host, room, alice)
    first = await sync(host.http, token)
    r = await host.http.post(f"{V3}/rooms/{room.room_id}/leave", json={}, headers=auth_headers(token))
    assert r.status_code == 200, r.text
    assert host.requester.asked("PUT", "send_leave") == [REMOTE]
    left = room.events[room.state[("m.room.member", alice)]]
    assert left.content["membership"] == "leave"
    resp = await sync(host.http, token, since=first["next_batch"], timeout=5000)
    assert room.room_id in resp["rooms"]["leave"]
    assert room.room_id not in resp["rooms"].get("invite", {})


async def test_rejecting_a_remote_invite_when_its_server_is_down(host: Host) -> None:
    """The inviting server cannot be reached: the invite is still rejected here (our
    own leave on the invite), and the user's /sync shows the room under leave with it."""
    room = host.room(join_rule="invite")
    alice, token = await host.user()
    await _invited(host, room, alice)
    first = await sync(host.http, token)
    host.requester.down.add(REMOTE)
    r = await host.http.post(f"{V3}/rooms/{room.room_id}/leave", json={}, headers=auth_headers(token))
    assert r.status_code == 200, r.text
    resp = await sync(host.http, token, since=first["next_batch"], timeout=5000)
    assert room.room_id not in resp["rooms"].get("invite", {})
    timeline = resp["rooms"]["leave"][room.room_id]["timeline"]["events"]
    leave = timeline[-1]
    assert (leave["type"], leave["state_key"], leave["sender"]) == ("m.room.member", alice, alice)
    assert leave["content"]["membership"] == "leave"
    # a second leave is a no-op, not an error
    r = await host.http.post(f"{V3}/rooms/{room.room_id}/leave", json={}, headers=auth_headers(token))
    assert r.status_code == 200, r.text


async def test_leaving_a_remote_room(host: Host) -> None:
    room = host.room()
    alice, token = await host.user()
    assert (await _join(host, token, room.room_id.replace("!", "%21"))).status_code == 200
    r = await host.http.post(f"{V3}/rooms/{room.room_id}/leave", json={}, headers=auth_headers(token))
    assert r.status_code == 200, r.text
    await poll(lambda: any(
        p.get("type") == "m.room.member" and p.get("state_key") == alice and p["content"]["membership"] == "leave"
        for p in host.requester.sent_pdus(REMOTE)
    ))
    db = host.services.db
    assert "test.local" not in await db.read(state_store.servers_in_room, room.room_id)
    # nothing more goes to a room we are no longer in
    assert await db.read(outbox.remote_servers_in_room, room.room_id) == {REMOTE}
    msg = room.build(BOB, "m.room.message", {"body": "still there?"})
    body = {"origin": REMOTE, "origin_server_ts": 0, "pdus": [msg], "edus": []}
    answer = await host.transactions.on_transaction(REMOTE, "late", body)
    assert "not in room" in answer["pdus"][room.event_id(msg)]["error"]
    assert await db.read(ev_store.get_event, room.event_id(msg)) is None
    # and back: a rejoin goes through the room's server again, and sees what was said
    assert (await _join(host, token, room.room_id.replace("!", "%21"))).status_code == 200
    assert host.requester.asked("GET", "make_join") == [REMOTE, REMOTE]
    assert await host.services.rooms.membership(room.room_id, alice) == "join"
    reply = room.build(BOB, "m.room.message", {"body": "welcome back"})
    await host.deliver(reply)
    assert (await db.read(ev_store.get_event, room.event_id(reply))).stream_pos is not None


async def test_knocking_on_a_remote_room(host: Host) -> None:
    room = host.room("7", join_rule="knock")
    room.build(BOB, "m.room.name", {"name": "Knock here"}, state_key="")
    alice, token = await host.user()
    first = await sync(host.http, token)
    r = await host.http.post(
        f"{V3}/knock/{room.room_id}", params={"via": REMOTE}, json={"reason": "hi"}, headers=auth_headers(token)
    )
    assert r.status_code == 200, r.text
    knock = room.events[room.state[("m.room.member", alice)]]
    assert knock.content == {"membership": "knock", "reason": "hi"}
    resp = await sync(host.http, token, since=first["next_batch"], timeout=5000)
    state = resp["rooms"]["knock"][room.room_id]["knock_state"]["events"]
    assert {"type": "m.room.name", "state_key": "", "sender": BOB, "content": {"name": "Knock here"}} in state
    assert any(e["type"] == "m.room.member" and e["state_key"] == alice for e in state)


async def test_messages_backfills_history_the_joiner_never_saw(host: Host) -> None:
    room = host.room()
    for i in range(30):
        room.build(BOB, "m.room.message", {"msgtype": "m.text", "body": f"old {i}"})
    alice, token = await host.user()
    assert (await _join(host, token, room.room_id.replace("!", "%21"))).status_code == 200
    first = await sync(host.http, token, filter='{"room":{"timeline":{"limit":5}}}')
    assert bodies(timeline(first, room.room_id)) == []
    token_from = first["rooms"]["join"][room.room_id]["timeline"]["prev_batch"]
    seen: list[str] = []
    for _ in range(10):
        r = await host.http.get(
            f"{V3}/rooms/{room.room_id}/messages",
            params={"dir": "b", "from": token_from, "limit": "10"},
            headers=auth_headers(token),
        )
        assert r.status_code == 200, r.text
        page = r.json()
        seen += bodies(page["chunk"])
        if "end" not in page:
            break
        token_from = page["end"]
    assert seen == [f"old {i}" for i in reversed(range(30))]
    assert all(len(q) for q in host.requester.asked("GET", "backfill"))


async def test_remote_directory_and_alias(host: Host) -> None:
    _alice, token = await host.user()
    host.requester.public[REMOTE] = [{"room_id": "!pub:remote.test", "num_joined_members": 3,
                                      "world_readable": False, "guest_can_join": False}]
    r = await host.http.get(f"{V3}/publicRooms", params={"server": REMOTE}, headers=auth_headers(token))
    assert r.status_code == 200, r.text
    assert [c["room_id"] for c in r.json()["chunk"]] == ["!pub:remote.test"]
    r = await host.http.post(
        f"{V3}/publicRooms", params={"server": REMOTE}, json={"limit": 5}, headers=auth_headers(token)
    )
    assert r.status_code == 200 and r.json()["chunk"][0]["room_id"] == "!pub:remote.test"
    host.requester.aliases["#pub:remote.test"] = ("!pub:remote.test", [REMOTE, "other.test"])
    r = await host.http.get(f"{V3}/directory/room/%23pub:remote.test")
    assert r.status_code == 200
    assert r.json() == {"room_id": "!pub:remote.test", "servers": [REMOTE, "other.test"]}
    r = await host.http.get(f"{V3}/directory/room/%23none:remote.test")
    assert r.status_code == 404 and r.json()["errcode"] == "M_NOT_FOUND"
    host.requester.down.add("down.test")
    r = await host.http.get(f"{V3}/publicRooms", params={"server": "down.test"}, headers=auth_headers(token))
    assert r.status_code == 502


async def test_joins_we_accept_for_our_room_are_relayed_to_its_other_servers(host: Host) -> None:
    alice, token = await host.user()
    room_id = await create_room(host.http, token, preset="public_chat")
    info = await host.services.db.read(ev_store.get_room, room_id)
    recs = await host.services.db.read(
        lambda c: ev_store.room_timeline(c, room_id, from_pos=None, to_pos=None, backwards=False, limit=100)
    )
    view = RemoteRoom(REMOTE, room_id, info.room_version)
    for rec in recs:
        view.learn_timeline(rec.event.pdu)
    host.requester.rooms[room_id] = view
    bob_join = view.build(BOB, "m.room.member", {"membership": "join"}, state_key=BOB)
    await host.deliver(bob_join)
    # carol of other.test joins through our send_join
    carol = "@carol:other.test"
    template = (await host.hosting.make_join("other.test", room_id, carol, [info.room_version.identifier]))["event"]
    from pocketserver.protocol.signing import sign_event

    signed = sign_event(dict(template), "other.test", key_for("other.test"), info.room_version)
    join_id = view.event_id(signed)
    await host.hosting.send_join("other.test", room_id, join_id, signed)
    await poll(lambda: any(view.event_id(p) == join_id for p in host.requester.sent_pdus(REMOTE)))
    # the joiner's server has it; what arrived by /send goes back to no one
    assert not any(view.event_id(p) == join_id for p in host.requester.sent_pdus("other.test"))
    await send(host.http, token, room_id, {"body": "hi all"})
    await poll(lambda: any(p.get("content", {}).get("body") == "hi all" for p in host.requester.sent_pdus("other.test")))
    assert not any(view.event_id(p) == view.event_id(bob_join) for d in (REMOTE, "other.test")
                   for p in host.requester.sent_pdus(d))


async def test_event_we_lack_is_fetched_from_the_room(host: Host) -> None:
    room = host.room()
    old = room.build(BOB, "m.room.message", {"msgtype": "m.text", "body": "before you came"})
    _alice, token = await host.user()
    assert (await _join(host, token, room.room_id.replace("!", "%21"))).status_code == 200
    old_id = room.event_id(old)
    r = await host.http.get(f"{V3}/rooms/{room.room_id}/event/{old_id}", headers=auth_headers(token))
    assert r.status_code == 200, r.text
    assert r.json()["content"]["body"] == "before you came"
    assert host.requester.asked("GET", "event") == [REMOTE]
    # an event the room's server does not have either
    r = await host.http.get(f"{V3}/rooms/{room.room_id}/event/$nothing:remote.test", headers=auth_headers(token))
    assert r.status_code == 404 and r.json()["errcode"] == "M_NOT_FOUND"
    # someone outside the room learns nothing, and makes us fetch nothing
    _eve, eve_token = await host.user()
    asked = len(host.requester.requests)
    r = await host.http.get(f"{V3}/rooms/{room.room_id}/event/$other:remote.test", headers=auth_headers(eve_token))
    assert r.status_code == 404
    assert len(host.requester.requests) == asked


@pytest.mark.parametrize("version", ["1", "3", "11", "12"])
async def test_join_and_talk_in_each_event_format(host: Host, version: str) -> None:
    room = host.room(version)
    alice, token = await host.user()
    r = await _join(host, token, room.room_id.replace("!", "%21"), REMOTE)
    assert r.status_code == 200, r.text
    first = await sync(host.http, token)
    assert room.room_id in first["rooms"]["join"]
    join_pdu = room.events[room.state[("m.room.member", alice)]].pdu
    assert set(join_pdu["signatures"]) == {"test.local"}
    eid = await send(host.http, token, room.room_id, {"msgtype": "m.text", "body": f"v{version}"})
    await poll(lambda: any(room.event_id(p) == eid for p in host.requester.sent_pdus(REMOTE)))
    room.learn_timeline(next(p for p in host.requester.sent_pdus(REMOTE) if room.event_id(p) == eid))
    await host.deliver(room.build(BOB, "m.room.message", {"msgtype": "m.text", "body": "reply"}))
    resp = await sync(host.http, token, since=first["next_batch"], timeout=5000)
    assert bodies(timeline(resp, room.room_id)) == [f"v{version}", "reply"]


async def test_send_join_answer_that_is_not_json_or_too_big_is_refused_and_nothing_kept(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pocketserver.federation import joining

    room = host.room()
    _alice, token = await host.user()
    db = host.services.db
    # cut short in the middle of the state: the join fails, clearly, and nothing is kept
    host.requester.raw_answer = lambda raw: raw[: len(raw) // 2]
    r = await _join(host, token, room.room_id.replace("!", "%21"))
    assert r.status_code == 502, r.text
    assert await db.read(ev_store.get_room, room.room_id) is None
    # bigger than the answer's size limit
    host.requester.raw_answer = None
    monkeypatch.setattr(joining, "SEND_JOIN_MAX_BYTES", 512)
    r = await _join(host, token, room.room_id.replace("!", "%21"))
    assert r.status_code == 502, r.text
    assert await db.read(ev_store.get_room, room.room_id) is None
    for eid in room.events:
        assert await db.read(ev_store.get_event, eid) is None


async def test_join_stores_a_big_answer_in_batches_in_auth_order(host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    """The answer's events come newest first and are stored a few per transaction: each
    is still stored after its auth events, none is rejected, every member is in."""
    from pocketserver.federation import joining

    monkeypatch.setattr(joining, "STORE_BATCH", 3)
    room = host.room()
    members = [f"@m{i}:{REMOTE}" for i in range(12)]
    for user in members:
        room.build(user, "m.room.member", {"membership": "join"}, state_key=user)
    room.build(BOB, "m.room.topic", {"topic": "batched"}, state_key="")

    def newest_first(answer: dict[str, Any]) -> None:
        answer["state"].sort(key=lambda p: -p["depth"])
        answer["auth_chain"].sort(key=lambda p: -p["depth"])

    host.requester.tamper_send_join = newest_first
    alice, token = await host.user()
    r = await _join(host, token, room.room_id.replace("!", "%21"))
    assert r.status_code == 200, r.text
    r = await host.http.get(f"{V3}/rooms/{room.room_id}/joined_members", headers=auth_headers(token))
    assert r.status_code == 200, r.text
    assert set(r.json()["joined"]) == {BOB, alice, *members}
    r = await host.http.get(f"{V3}/rooms/{room.room_id}/state/m.room.topic", headers=auth_headers(token))
    assert r.json() == {"topic": "batched"}
    db = host.services.db
    for eid in room.events:
        rec = await db.read(ev_store.get_event, eid)
        assert rec is not None and rec.rejected_reason is None, eid
