"""federation/hosting.py: a second server joins, leaves, knocks on and reads rooms this
server hosts, and invites this server's users to its own rooms."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from pocketserver.errors import MatrixError
from pocketserver.protocol.events import Event
from pocketserver.protocol.room_versions import KNOWN_ROOM_VERSIONS
from pocketserver.protocol.signing import sign_event, verify_event_signature
from pocketserver.storage import accounts as accounts_store
from pocketserver.storage import state as state_store
from tests.api.helpers import V3, auth_headers, create_room, register, sync
from tests.federation.conftest import Fed
from tests.federation.fakes import poll
from tests.federation.remote import RemoteRoom, key_for
from tests.federation.servers import start_federating_server
from tests.federation.test_intake import BOB, bodies

REMOTE = "remote.test"


def _sign(template: dict[str, Any], rv: Any, server: str = REMOTE) -> dict[str, Any]:
    pdu = dict(template)
    pdu["origin_server_ts"] += 1
    if not rv.updated_redaction_rules:
        pdu["origin"] = server
    if rv.uses_event_id_in_pdu:
        pdu["event_id"] = f"$join{pdu['origin_server_ts']}:{server}"
    return sign_event(pdu, server, key_for(server), rv)


async def remote_join(fed: Fed, room_id: str, user: str = BOB, *, omit: bool = False) -> tuple[RemoteRoom, dict[str, Any]]:
    """make_join + send_join as remote.test does it; the remote's view of the room."""
    made = await fed.hosting.make_join(REMOTE, room_id, user, [str(v) for v in range(1, 13)])
    rv = KNOWN_ROOM_VERSIONS[made["room_version"]]
    pdu = _sign(made["event"], rv)
    eid = Event.from_pdu(pdu, rv).event_id
    answer = await fed.hosting.send_join(REMOTE, room_id, eid, pdu, omit_members=omit)
    remote = RemoteRoom(REMOTE, room_id, rv)
    remote.learn(answer["auth_chain"])
    remote.learn(answer["state"], state=True)
    remote.learn_timeline(answer["event"])
    fed.requester.rooms[room_id] = remote
    return remote, answer


async def test_remote_join_then_chat(fed: Fed) -> None:
    room_id, alice, token = await fed.local_room(name="chat")
    first = await sync(fed.http, token)
    remote, answer = await remote_join(fed, room_id)
    # oldest first: a joiner applying the lists in order ends on the newest state
    for key in ("state", "auth_chain"):
        depths = [e["depth"] for e in answer[key]]
        assert depths == sorted(depths)
    assert answer["members_omitted"] is False
    state_types = {(e["type"], e.get("state_key")) for e in answer["state"]}
    assert ("m.room.member", alice) in state_types and ("m.room.name", "") in state_types
    assert BOB in await fed.services.db.read(state_store.room_members, room_id)
    msg = remote.build(BOB, "m.room.message", {"msgtype": "m.text", "body": "joined over federation"})
    answer = await fed.transactions.on_transaction(REMOTE, "after-join", {"pdus": [msg]})
    assert answer["pdus"][remote.event_id(msg)] == {}
    resp = await sync(fed.http, token, since=first["next_batch"], timeout=0)
    timeline = resp["rooms"]["join"][room_id]["timeline"]["events"]
    assert any(e["type"] == "m.room.member" and e["state_key"] == BOB for e in timeline)
    assert bodies(resp, room_id) == ["joined over federation"]


async def test_make_join_errors(fed: Fed) -> None:
    room_id, alice, token = await fed.local_room()
    with pytest.raises(MatrixError) as e:
        await fed.hosting.make_join(REMOTE, room_id, BOB, ["1", "2"])
    assert e.value.errcode == "M_INCOMPATIBLE_ROOM_VERSION"
    assert e.value.to_json()["room_version"] == "12"
    with pytest.raises(MatrixError) as e:
        await fed.hosting.make_join(REMOTE, room_id, "@bob:other.test", ["12"])
    assert e.value.status == 403
    with pytest.raises(MatrixError) as e:
        await fed.hosting.make_join(REMOTE, "!unknown:test.local", BOB, ["12"])
    assert e.value.status == 404
    private, _, _ = await fed.local_room(preset="private_chat")
    with pytest.raises(MatrixError) as e:
        await fed.hosting.make_join(REMOTE, private, BOB, ["12"])
    assert e.value.status == 403 and e.value.errcode == "M_FORBIDDEN"


async def test_send_join_checks_the_event(fed: Fed) -> None:
    room_id, _, _ = await fed.local_room()
    made = await fed.hosting.make_join(REMOTE, room_id, BOB, ["12"])
    rv = KNOWN_ROOM_VERSIONS["12"]
    pdu = _sign(made["event"], rv)
    eid = Event.from_pdu(pdu, rv).event_id
    with pytest.raises(MatrixError) as e:  # wrong event ID in the path
        await fed.hosting.send_join(REMOTE, room_id, "$nope", pdu)
    assert e.value.errcode == "M_INVALID_PARAM"
    with pytest.raises(MatrixError) as e:  # sent by another server
        await fed.hosting.send_join("other.test", room_id, eid, pdu)
    assert e.value.status == 403 and e.value.errcode == "M_FORBIDDEN"
    forged = _sign(made["event"], rv, server="other.test")
    forged["signatures"] = {REMOTE: forged["signatures"]["other.test"]}
    with pytest.raises(MatrixError) as e:  # signed with another server's key
        await fed.hosting.send_join(REMOTE, room_id, Event.from_pdu(forged, rv).event_id, forged)
    assert e.value.status == 403 and e.value.errcode == "M_FORBIDDEN"
    # The template sent back unsigned, and one with a made-up signature: not REMOTE's.
    unsigned = dict(made["event"])
    with pytest.raises(MatrixError) as e:
        await fed.hosting.send_join(REMOTE, room_id, eid, unsigned)
    assert e.value.status == 403 and e.value.errcode == "M_FORBIDDEN"
    fake = dict(pdu, signatures={REMOTE: {key_for(REMOTE).key_id: "a" * 86}})
    with pytest.raises(MatrixError) as e:
        await fed.hosting.send_join(REMOTE, room_id, eid, fake)
    assert e.value.status == 403 and e.value.errcode == "M_FORBIDDEN"
    with pytest.raises(MatrixError) as e:  # the same without hashes
        await fed.hosting.send_join(REMOTE, room_id, eid, dict(unsigned, signatures=fake["signatures"]))
    assert e.value.status == 403 and e.value.errcode == "M_FORBIDDEN"
    assert BOB not in await fed.services.db.read(state_store.room_members, room_id)


async def test_omit_members_for_partial_state_joiners(fed: Fed) -> None:
    room_id, alice, token = await fed.local_room(name="big room")
    _, answer = await remote_join(fed, room_id, omit=True)
    assert answer["members_omitted"] is True
    assert REMOTE not in answer["servers_in_room"] and "test.local" in answer["servers_in_room"]
    assert not [e for e in answer["state"] if e["type"] == "m.room.member"]
    assert {e["type"] for e in answer["state"]} >= {"m.room.power_levels", "m.room.join_rules", "m.room.name"}
    # an unnamed room keeps its heroes' memberships
    unnamed, alice2, _ = await fed.local_room()
    _, answer = await remote_join(fed, unnamed, omit=True)
    assert [e["state_key"] for e in answer["state"] if e["type"] == "m.room.member"] == [alice2]


async def test_restricted_join_is_authorised_and_signed_by_us(fed: Fed) -> None:
    space, alice, token = await fed.local_room(room_version="10")
    await remote_join(fed, space)
    r = await fed.http.post(
        f"{V3}/createRoom",
        json={
            "room_version": "10",
            "preset": "private_chat",
            "initial_state": [
                {
                    "type": "m.room.join_rules",
                    "state_key": "",
                    "content": {"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": space}]},
                }
            ],
        },
        headers=auth_headers(token),
    )
    assert r.status_code == 200, r.text
    restricted = r.json()["room_id"]
    # a user in no allowed room is refused
    with pytest.raises(MatrixError) as e:
        await fed.hosting.make_join(REMOTE, restricted, "@carol:remote.test", ["10"])
    assert e.value.status == 403
    made = await fed.hosting.make_join(REMOTE, restricted, BOB, ["10"])
    assert made["event"]["content"]["join_authorised_via_users_server"] == alice
    _, answer = await remote_join(fed, restricted)
    ours = fed.services.signing_key
    verify_event_signature(answer["event"], "test.local", ours.key_id, ours.verify_key, KNOWN_ROOM_VERSIONS["10"])
    assert BOB in await fed.services.db.read(state_store.room_members, restricted)


async def test_leave_and_knock(fed: Fed) -> None:
    room_id, alice, token = await fed.local_room()
    await remote_join(fed, room_id)
    rv = KNOWN_ROOM_VERSIONS["12"]
    made = await fed.hosting.make_leave(REMOTE, room_id, BOB)
    pdu = _sign(made["event"], rv)
    assert await fed.hosting.send_leave(REMOTE, room_id, Event.from_pdu(pdu, rv).event_id, pdu) == {}
    assert (await fed.services.db.read(state_store.get_membership, room_id, BOB))[0] == "leave"

    knocky, _, ktoken = await fed.local_room(
        initial_state=[{"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}],
        preset="private_chat",
        name="knock knock",
    )
    made = await fed.hosting.make_knock(REMOTE, knocky, BOB, ["12"])
    pdu = _sign(made["event"], rv)
    answer = await fed.hosting.send_knock(REMOTE, knocky, Event.from_pdu(pdu, rv).event_id, pdu)
    assert {"type": "m.room.name", "content": {"name": "knock knock"}, "sender": _sender(answer), "state_key": ""} in answer["knock_room_state"]
    assert (await fed.services.db.read(state_store.get_membership, knocky, BOB))[0] == "knock"
    with pytest.raises(MatrixError) as e:  # a public room takes no knocks
        await fed.hosting.make_knock(REMOTE, room_id, BOB, ["12"])
    assert e.value.status == 403


def _sender(answer: dict[str, Any]) -> str:
    return next(e["sender"] for e in answer["knock_room_state"] if e["type"] == "m.room.name")


async def test_readers_serve_only_servers_in_the_room(fed: Fed) -> None:
    room_id, alice, token = await fed.local_room()
    r = await fed.http.put(
        f"{V3}/rooms/{room_id}/state/m.room.history_visibility/",
        json={"history_visibility": "joined"},
        headers=auth_headers(token),
    )
    assert r.status_code == 200
    r = await fed.http.put(
        f"{V3}/rooms/{room_id}/send/m.room.message/secret", json={"msgtype": "m.text", "body": "before you came"},
        headers=auth_headers(token),
    )
    secret_id = r.json()["event_id"]
    # nobody of remote.test is in the room yet
    for call in (
        fed.hosting.backfill(REMOTE, room_id, [secret_id], 10),
        fed.hosting.get_event(REMOTE, secret_id),
        fed.hosting.get_state_ids(REMOTE, room_id, secret_id),
        fed.hosting.get_missing_events(REMOTE, room_id, {"earliest_events": [], "latest_events": [secret_id]}),
    ):
        with pytest.raises(MatrixError) as e:
            await call
        assert e.value.status == 403
    remote, _ = await remote_join(fed, room_id)
    join_id = remote.extremities[0]
    back = await fed.hosting.backfill(REMOTE, room_id, [join_id], 50)
    by_id = {Event.from_pdu(p, remote.rv).event_id: p for p in back["pdus"]}
    assert join_id in by_id and secret_id in by_id
    assert by_id[secret_id]["content"] == {}  # before bob joined, with history "joined"
    assert by_id[join_id]["content"]["membership"] == "join"
    assert len(back["pdus"]) <= 50
    assert len((await fed.hosting.backfill(REMOTE, room_id, [join_id], 2))["pdus"]) == 2
    ids = await fed.hosting.get_state_ids(REMOTE, room_id, join_id)
    assert ids["pdu_ids"] and set(ids["auth_chain_ids"]) <= set(remote.events) | set(ids["pdu_ids"])
    auth = await fed.hosting.get_event_auth(REMOTE, room_id, join_id)
    assert {Event.from_pdu(p, remote.rv).event_id for p in auth["auth_chain"]} >= set(remote.events[join_id].auth_event_ids)
    missing = await fed.hosting.get_missing_events(
        REMOTE, room_id, {"earliest_events": [secret_id], "latest_events": [join_id], "limit": 10}
    )
    assert missing["events"] == []  # bob's join follows the secret directly
    with pytest.raises(MatrixError) as e:
        await fed.hosting.get_event(REMOTE, "$doesnotexist")
    assert e.value.status == 404
    ts = await fed.hosting.timestamp_to_event(REMOTE, room_id, 0, "f")
    assert ts["event_id"] == "$" + room_id[1:]


async def test_invite_v2_signed_and_shown_in_sync(fed: Fed) -> None:
    user, token, _ = await register(fed.http)
    first = await sync(fed.http, token)
    remote = RemoteRoom.create(REMOTE, BOB, KNOWN_ROOM_VERSIONS["11"])
    remote.build(BOB, "m.room.name", {"name": "Remote party"}, state_key="")
    invite = remote.build(BOB, "m.room.member", {"membership": "invite"}, state_key=user, advance=False)
    eid = remote.event_id(invite)
    body = {
        "room_version": "11",
        "event": invite,
        "invite_room_state": [{"type": "m.room.name", "state_key": "", "sender": BOB, "content": {"name": "Remote party"}}],
    }
    answer = await fed.hosting.on_invite(REMOTE, remote.room_id, eid, body)
    ours = fed.services.signing_key
    verify_event_signature(answer["event"], "test.local", ours.key_id, ours.verify_key, remote.rv)
    verify_event_signature(answer["event"], REMOTE, remote.key.key_id, remote.key.verify_key, remote.rv)
    resp = await sync(fed.http, token, since=first["next_batch"], timeout=0)
    invite_state = resp["rooms"]["invite"][remote.room_id]["invite_state"]["events"]
    assert {"type": "m.room.name", "state_key": "", "sender": BOB, "content": {"name": "Remote party"}} in invite_state
    assert any(e["type"] == "m.room.member" and e["state_key"] == user for e in invite_state)
    # errors: unknown room version, invitee of another server, bad signature
    with pytest.raises(MatrixError) as e:
        await fed.hosting.on_invite(REMOTE, remote.room_id, eid, dict(body, room_version="99"))
    assert e.value.errcode == "M_INCOMPATIBLE_ROOM_VERSION"
    other = remote.build(BOB, "m.room.member", {"membership": "invite"}, state_key="@z:other.test", advance=False)
    with pytest.raises(MatrixError):
        await fed.hosting.on_invite(REMOTE, remote.room_id, remote.event_id(other), dict(body, event=other))


async def test_invite_to_a_user_who_blocks_invites_is_refused_and_not_kept(fed: Fed) -> None:
    user, token, _ = await register(fed.http)
    r = await fed.http.put(
        f"{V3}/user/{user}/account_data/m.invite_permission_config",
        json={"default_action": "block"}, headers=auth_headers(token),
    )
    assert r.status_code == 200, r.text
    first = await sync(fed.http, token)
    remote = RemoteRoom.create(REMOTE, BOB, KNOWN_ROOM_VERSIONS["11"])
    invite = remote.build(BOB, "m.room.member", {"membership": "invite"}, state_key=user, advance=False)
    body = {"room_version": "11", "event": invite, "invite_room_state": []}
    with pytest.raises(MatrixError) as e:
        await fed.hosting.on_invite(REMOTE, remote.room_id, remote.event_id(invite), body)
    assert (e.value.status, e.value.errcode) == (403, "M_INVITE_BLOCKED")
    resp = await sync(fed.http, token, since=first["next_batch"], timeout=0)
    assert remote.room_id not in resp.get("rooms", {}).get("invite", {})


@pytest.mark.parametrize("version", ["1", "2", "3", "5", "6", "8", "10", "11", "12"])
async def test_join_and_chat_in_every_room_version(fed: Fed, version: str) -> None:
    room_id, alice, token = await fed.local_room(room_version=version)
    first = await sync(fed.http, token)
    remote, _ = await remote_join(fed, room_id)
    msg = remote.build(BOB, "m.room.message", {"msgtype": "m.text", "body": f"v{version}"})
    answer = await fed.transactions.on_transaction(REMOTE, f"v{version}", {"pdus": [msg]})
    assert answer == {"pdus": {remote.event_id(msg): {}}}
    resp = await sync(fed.http, token, since=first["next_batch"], timeout=0)
    assert bodies(resp, room_id) == [f"v{version}"]
    # a local message now follows the remote one, and the remote server can fetch it
    r = await fed.http.put(
        f"{V3}/rooms/{room_id}/send/m.room.message/after{version}",
        json={"msgtype": "m.text", "body": "reply"},
        headers=auth_headers(token),
    )
    reply = await fed.hosting.get_event(REMOTE, r.json()["event_id"])
    assert remote.event_id(msg) in str(reply["pdus"][0]["prev_events"])


async def test_concurrent_branches_are_merged(fed: Fed) -> None:
    """A remote event on an older part of the graph forks the room; both branches stay
    (two forward extremities), the state is resolved, and the next local event merges
    them."""
    room_id, alice, token = await fed.local_room()
    remote, _ = await remote_join(fed, room_id)
    fork = list(remote.extremities)
    state_at_fork = dict(remote.state)
    r = await fed.http.put(
        f"{V3}/rooms/{room_id}/state/m.room.topic/", json={"topic": "local topic"}, headers=auth_headers(token)
    )
    assert r.status_code == 200
    first = await sync(fed.http, token)
    msg = remote.build(BOB, "m.room.message", {"body": "from the old branch"}, prev_events=fork, auth_state=state_at_fork)
    assert await fed.intake.receive_pdu(REMOTE, msg) is None
    from pocketserver.storage import events as ev_store

    extremities = {e for e, _ in await fed.services.db.read(ev_store.forward_extremities, room_id)}
    assert remote.event_id(msg) in extremities and len(extremities) == 2
    topic = await fed.services.rooms.current_state_event(room_id, "m.room.topic")
    assert topic["topic"] == "local topic"
    resp = await sync(fed.http, token, since=first["next_batch"], timeout=0)
    assert bodies(resp, room_id) == ["from the old branch"]
    r = await fed.http.put(
        f"{V3}/rooms/{room_id}/send/m.room.message/merge", json={"body": "merged"}, headers=auth_headers(token)
    )
    merged = await fed.hosting.get_event(REMOTE, r.json()["event_id"])
    assert set(merged["pdus"][0]["prev_events"]) == extremities


async def test_server_acl_denies_a_server(fed: Fed) -> None:
    room_id, alice, token = await fed.local_room()
    remote, _ = await remote_join(fed, room_id)
    r = await fed.http.put(
        f"{V3}/rooms/{room_id}/state/m.room.server_acl/",
        json={"allow": ["*"], "deny": ["remote.test"]},
        headers=auth_headers(token),
    )
    assert r.status_code == 200, r.text
    first = await sync(fed.http, token)
    msg = remote.build(BOB, "m.room.message", {"body": "denied"})
    typing = {"edu_type": "m.typing", "content": {"room_id": room_id, "user_id": BOB, "typing": True}}
    answer = await fed.transactions.on_transaction(REMOTE, "acl", {"pdus": [msg], "edus": [typing]})
    assert "error" in answer["pdus"][remote.event_id(msg)]
    resp = await sync(fed.http, token, since=first["next_batch"], timeout=0)
    room = resp["rooms"]["join"].get(room_id, {})
    assert "denied" not in str(room) and BOB not in str(room.get("ephemeral", {}))
    for call in (
        fed.hosting.backfill(REMOTE, room_id, [remote.extremities[0]], 10),
        fed.hosting.make_join(REMOTE, room_id, "@carol:remote.test", ["12"]),
        fed.hosting.make_leave(REMOTE, room_id, BOB),
        fed.hosting.get_state_ids(REMOTE, room_id, remote.extremities[0]),
    ):
        with pytest.raises(MatrixError) as e:
            await call
        assert e.value.status == 403 and e.value.errcode == "M_FORBIDDEN"


async def test_invite_v2_room_state_of_a_v12_room(fed: Fed) -> None:
    user, token, _ = await register(fed.http)
    first = await sync(fed.http, token)
    remote = RemoteRoom.create(REMOTE, BOB, KNOWN_ROOM_VERSIONS["12"])
    remote.build(BOB, "m.room.name", {"name": "Twelve"}, state_key="")
    invite = remote.build(BOB, "m.room.member", {"membership": "invite"}, state_key=user, advance=False)
    eid = remote.event_id(invite)
    full_state = [remote.events[remote.state[k]].pdu for k in (("m.room.create", ""), ("m.room.name", ""))]
    no_create = {"room_version": "12", "event": invite, "invite_room_state": full_state[1:]}
    with pytest.raises(MatrixError) as e:
        await fed.hosting.on_invite(REMOTE, remote.room_id, eid, no_create)
    assert e.value.errcode == "M_INVALID_PARAM"
    tampered = dict(full_state[1], content={"name": "forged"})
    tampered["origin_server_ts"] += 1  # changes the signed part: the signature fails
    with pytest.raises(MatrixError) as e:
        await fed.hosting.on_invite(
            REMOTE, remote.room_id, eid, {"room_version": "12", "event": invite, "invite_room_state": [full_state[0], tampered]}
        )
    assert e.value.errcode == "M_INVALID_PARAM"
    await fed.hosting.on_invite(
        REMOTE, remote.room_id, eid, {"room_version": "12", "event": invite, "invite_room_state": full_state}
    )
    resp = await sync(fed.http, token, since=first["next_batch"], timeout=0)
    shown = resp["rooms"]["invite"][remote.room_id]["invite_state"]["events"]
    assert {"type": "m.room.name", "state_key": "", "sender": BOB, "content": {"name": "Twelve"}} in shown
    assert any(e["type"] == "m.room.create" and "signatures" not in e for e in shown)


async def test_no_state_at_a_rejected_event(fed: Fed) -> None:
    """/state and /state_ids at an event this server rejected answer 404 M_NOT_FOUND:
    a rejected event is no part of the room, so there is no state at it to give."""
    room_id, _, _ = await fed.local_room()
    remote, _ = await remote_join(fed, room_id)
    for etype, state_key in (("m.room.message", None), ("m.room.topic", "")):
        # sent by a user who never joined: rejected against its own auth events
        bad = remote.build("@stranger:remote.test", etype, {"body": "Rejected"}, state_key=state_key)
        await fed.transactions.on_transaction(REMOTE, f"rejected-{etype}", {"pdus": [bad]})
        bad_id = remote.event_id(bad)
        for call in (fed.hosting.get_state, fed.hosting.get_state_ids):
            with pytest.raises(MatrixError) as e:
                await call(REMOTE, room_id, bad_id)
            assert e.value.status == 404 and e.value.errcode == "M_NOT_FOUND"
    # the join before them still has its state
    ids = await fed.hosting.get_state_ids(REMOTE, room_id, remote.timeline[0])
    assert ids["pdu_ids"]


@pytest.mark.parametrize("version", ["1", "3", "11"])
async def test_a_remote_users_redaction_of_their_message(fed: Fed, version: str) -> None:
    """A remote user redacts their own message: local clients see the redaction, and
    the message emptied with ``unsigned.redacted_by`` and ``redacted_because``."""
    room_id, _, token = await fed.local_room(room_version=version)
    remote, _ = await remote_join(fed, room_id)
    msg = remote.build(BOB, "m.room.message", {"msgtype": "m.text", "body": "oops"})
    msg_id = remote.event_id(msg)
    rv = KNOWN_ROOM_VERSIONS[version]
    if rv.updated_redaction_rules:
        redaction = remote.build(BOB, "m.room.redaction", {"redacts": msg_id})
    else:
        redaction = remote.build(BOB, "m.room.redaction", {}, extra={"redacts": msg_id})
    red_id = remote.event_id(redaction)
    answer = await fed.transactions.on_transaction(REMOTE, f"redact-{version}", {"pdus": [msg, redaction]})
    assert answer == {"pdus": {msg_id: {}, red_id: {}}}
    r = await fed.http.get(
        f"{V3}/rooms/{room_id}/messages", params={"dir": "b", "limit": "2"}, headers=auth_headers(token)
    )
    assert r.status_code == 200, r.text
    first, second = r.json()["chunk"]
    assert first["event_id"] == red_id and first["redacts"] == msg_id
    assert second["event_id"] == msg_id and second["content"] == {}
    assert second["unsigned"]["redacted_by"] == red_id
    assert second["unsigned"]["redacted_because"]["event_id"] == red_id


async def test_send_leave_refuses_a_leave_of_another_servers_user(fed: Fed) -> None:
    """A leave replayed by a server other than the leaver's: 403 M_FORBIDDEN, and the
    user stays joined."""
    room_id, _, _ = await fed.local_room()
    await remote_join(fed, room_id)
    rv = KNOWN_ROOM_VERSIONS["12"]
    made = await fed.hosting.make_leave(REMOTE, room_id, BOB)
    pdu = _sign(made["event"], rv)
    with pytest.raises(MatrixError) as e:
        await fed.hosting.send_leave("other.test", room_id, Event.from_pdu(pdu, rv).event_id, pdu)
    assert e.value.status == 403 and e.value.errcode == "M_FORBIDDEN"
    assert (await fed.services.db.read(state_store.get_membership, room_id, BOB))[0] == "join"


async def test_float_in_a_v6_invite_or_leave_is_bad_json(fed: Fed) -> None:
    """rooms/v6 "Canonical JSON": an invite or a leave holding a float answers 400
    M_BAD_JSON, and nothing is kept."""
    user, token, _ = await register(fed.http)
    rv = KNOWN_ROOM_VERSIONS["6"]
    remote = RemoteRoom.create(REMOTE, BOB, rv)
    invite = remote.build(BOB, "m.room.member", {"membership": "invite"}, state_key=user, advance=False)
    invite_id = remote.event_id(invite)
    invite["content"]["bad_val"] = 1.1  # (signing refuses floats: added afterwards)
    body = {"room_version": "6", "event": invite, "invite_room_state": []}
    with pytest.raises(MatrixError) as e:
        await fed.hosting.on_invite(REMOTE, remote.room_id, invite_id, body)
    assert e.value.status == 400 and e.value.errcode == "M_BAD_JSON"
    resp = await sync(fed.http, token)
    assert remote.room_id not in resp.get("rooms", {}).get("invite", {})

    room_id, _, _ = await fed.local_room(room_version="6")
    await remote_join(fed, room_id)
    made = await fed.hosting.make_leave(REMOTE, room_id, BOB)
    pdu = _sign(made["event"], rv)
    leave_id = Event.from_pdu(pdu, rv).event_id
    pdu["content"] = {**pdu["content"], "bad_val": 1.1}
    with pytest.raises(MatrixError) as e:
        await fed.hosting.send_leave(REMOTE, room_id, leave_id, pdu)
    assert e.value.status == 400 and e.value.errcode == "M_BAD_JSON"
    assert (await fed.services.db.read(state_store.get_membership, room_id, BOB))[0] == "join"


async def test_an_invite_to_a_room_our_users_all_left_can_be_accepted(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """bob (on b) left a's room, so b is no longer sent its events; a's new invite for
    him arrives by /invite only, and is what his /sync shows and his join follows."""
    a = await start_federating_server(nursery, tmp_path / "a")
    b = await start_federating_server(nursery, tmp_path / "b")
    async with httpx.AsyncClient(base_url=a.urls[0], timeout=30) as ha, httpx.AsyncClient(
        base_url=b.urls[0], timeout=30
    ) as hb:
        _, atok, _ = await register(ha, "alice")
        bob, btok, _ = await register(hb, "bob")
        room = await create_room(ha, atok, invite=[bob])

        async def invited() -> bool:
            return room in (await sync(hb, btok, timeout=0))["rooms"]["invite"]

        await poll(invited)
        r = await hb.post(f"{V3}/join/{room}", json={}, headers=auth_headers(btok))
        assert r.status_code == 200, r.text
        r = await hb.post(f"{V3}/rooms/{room}/leave", json={}, headers=auth_headers(btok))
        assert r.status_code == 200, r.text

        async def invite_again() -> bool:  # once a has bob's leave
            r = await ha.post(f"{V3}/rooms/{room}/invite", json={"user_id": bob}, headers=auth_headers(atok))
            return r.status_code == 200

        await poll(invite_again)
        await poll(invited)
        r = await hb.post(f"{V3}/join/{room}", json={}, headers=auth_headers(btok))
        assert r.status_code == 200, r.text
        assert room in (await sync(hb, btok, timeout=0))["rooms"]["join"]


async def test_events_of_an_erased_user_are_served_redacted(fed: Fed) -> None:
    room_id, alice, token = await fed.local_room()
    await remote_join(fed, room_id)
    r = await fed.http.put(
        f"{V3}/rooms/{room_id}/send/m.room.message/e1", json={"msgtype": "m.text", "body": "forget me"},
        headers=auth_headers(token),
    )
    msg_id = r.json()["event_id"]
    (pdu,) = (await fed.hosting.get_event(REMOTE, msg_id))["pdus"]
    assert pdu["content"]["body"] == "forget me"
    await fed.services.db.write(lambda conn: accounts_store.deactivate_user(conn, alice, erase=True))
    (pdu,) = (await fed.hosting.get_event(REMOTE, msg_id))["pdus"]
    assert pdu["content"] == {}
    back = await fed.hosting.backfill(REMOTE, room_id, [msg_id], 1)
    assert back["pdus"][0]["content"] == {}
