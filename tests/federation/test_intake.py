"""federation/intake.py: PDUs from a second server into a room this server hosts, as a
local user's /sync shows them."""

from __future__ import annotations

from typing import Any

from pocketserver.storage import events as ev_store
from pocketserver.storage import state as state_store
from tests.api.helpers import V3, auth_headers, sync
from tests.federation.conftest import Fed
from tests.federation.remote import key_for

BOB = "@bob:remote.test"


def bodies(resp: dict[str, Any], room_id: str) -> list[str]:
    room = resp["rooms"]["join"].get(room_id, {})
    return [e["content"].get("body") for e in room.get("timeline", {}).get("events", []) if e["type"] == "m.room.message"]


async def _joined(fed: Fed, **body: Any) -> tuple[str, str, Any]:
    room_id, _alice, token = await fed.local_room(**body)
    remote = await fed.mirror(room_id)
    join = remote.build(BOB, "m.room.member", {"membership": "join"}, state_key=BOB)
    assert await fed.intake.receive_pdu("remote.test", join) is None
    return room_id, token, remote


async def _stored(fed: Fed, event_id: str) -> Any:
    return await fed.services.db.read(ev_store.get_event, event_id)


async def test_remote_join_and_messages_reach_local_sync(fed: Fed) -> None:
    room_id, token, remote = await _joined(fed)
    first = await sync(fed.http, token)
    msg = remote.build(BOB, "m.room.message", {"msgtype": "m.text", "body": "hello from afar"})
    assert await fed.intake.receive_pdu("remote.test", msg) is None
    resp = await sync(fed.http, token, since=first["next_batch"], timeout=5000)
    assert bodies(resp, room_id) == ["hello from afar"]
    members = await fed.services.db.read(state_store.room_members, room_id)
    assert BOB in members
    # the same PDU again changes nothing
    assert await fed.intake.receive_pdu("remote.test", msg) is None
    again = await sync(fed.http, token, since=resp["next_batch"], timeout=0)
    assert bodies(again, room_id) == []


async def test_forged_signature_is_dropped(fed: Fed) -> None:
    room_id, token, remote = await _joined(fed)
    forger = key_for("evil.test")
    msg = remote.build(BOB, "m.room.message", {"body": "forged"}, advance=False)
    from pocketserver.protocol.signing import sign_event

    bad = sign_event({k: v for k, v in msg.items() if k != "signatures"}, "remote.test", forger, remote.rv)
    bad["signatures"] = {"remote.test": {remote.key.key_id: bad["signatures"]["remote.test"][forger.key_id]}}
    err = await fed.intake.receive_pdu("remote.test", bad)
    assert err is not None and "signature" in err
    assert await _stored(fed, remote.event_id(bad)) is None
    # unsigned by the sender's server at all
    unsigned = dict(msg, signatures={})
    assert await fed.intake.receive_pdu("remote.test", unsigned) is not None


async def test_bad_content_hash_stores_the_redacted_event(fed: Fed) -> None:
    room_id, token, remote = await _joined(fed)
    msg = remote.build(BOB, "m.room.message", {"body": "original"})
    msg["content"] = {"body": "tampered"}
    assert await fed.intake.receive_pdu("remote.test", msg) is None
    rec = await _stored(fed, remote.event_id(msg))
    assert rec is not None and rec.event.content == {}
    resp = await sync(fed.http, token)
    assert "tampered" not in str(resp["rooms"]["join"][room_id]["timeline"])


async def test_auth_failing_event_is_rejected(fed: Fed) -> None:
    room_id, token, remote = await _joined(fed)
    first = await sync(fed.http, token)
    # a user of remote.test who never joined
    stranger = remote.build("@eve:remote.test", "m.room.message", {"body": "let me in"}, advance=False)
    assert await fed.intake.receive_pdu("remote.test", stranger) is None  # a rejection is no error
    rec = await _stored(fed, remote.event_id(stranger))
    assert rec is not None and rec.rejected_reason is not None
    # bob may not change the power levels
    pl = remote.build(BOB, "m.room.power_levels", {"users": {BOB: 100}}, state_key="", advance=False)
    assert await fed.intake.receive_pdu("remote.test", pl) is None
    rec = await _stored(fed, remote.event_id(pl))
    assert rec.rejected_reason is not None
    current = await fed.services.db.read(state_store.get_current_state_ids, room_id)
    assert current[("m.room.power_levels", "")] != remote.event_id(pl)
    resp = await sync(fed.http, token, since=first["next_batch"], timeout=0)
    assert "let me in" not in str(resp)


async def test_banned_users_old_branch_is_soft_failed(fed: Fed) -> None:
    room_id, token, remote = await _joined(fed)
    before_ban = dict(remote.state)
    fork = list(remote.extremities)
    r = await fed.http.post(
        f"{V3}/rooms/{room_id}/ban", json={"user_id": BOB}, headers=auth_headers(token)
    )
    assert r.status_code == 200, r.text
    first = await sync(fed.http, token)
    evading = remote.build(BOB, "m.room.message", {"body": "evading"}, prev_events=fork, auth_state=before_ban, advance=False)
    assert await fed.intake.receive_pdu("remote.test", evading) is None
    rec = await _stored(fed, remote.event_id(evading))
    assert rec is not None and rec.rejected_reason is None and rec.stream_pos is None
    resp = await sync(fed.http, token, since=first["next_batch"], timeout=0)
    assert bodies(resp, room_id) == []
    extremities = await fed.services.db.read(ev_store.forward_extremities, room_id)
    assert remote.event_id(evading) not in [e for e, _ in extremities]


async def test_gap_filled_with_get_missing_events(fed: Fed) -> None:
    room_id, token, remote = await _joined(fed)
    first = await sync(fed.http, token)
    a = remote.build(BOB, "m.room.message", {"body": "a"})
    b = remote.build(BOB, "m.room.message", {"body": "b"})
    c = remote.build(BOB, "m.room.message", {"body": "c"})
    assert await fed.intake.receive_pdu("remote.test", c) is None
    assert any(p[0] == "POST" and "get_missing_events" in p[2] for p in fed.requester.requests)
    resp = await sync(fed.http, token, since=first["next_batch"], timeout=0)
    assert bodies(resp, room_id) == ["a", "b", "c"]
    for pdu in (a, b):
        rec = await _stored(fed, remote.event_id(pdu))
        assert rec.stream_pos is not None


async def test_pushed_event_whose_prev_events_are_not_divulged_is_refused(fed: Fed) -> None:
    """An event pushed in a transaction whose prev_events its sender will not hand over
    (/get_missing_events fails) is refused and not stored, and the state at its
    missing prev_events is not asked for."""
    room_id, token, remote = await _joined(fed)
    fed.requester.answer_missing_events = False
    first = await sync(fed.http, token)
    hidden = remote.build(BOB, "m.room.message", {"body": "never sent to us"})
    c = remote.build(BOB, "m.room.message", {"body": "after the gap"})
    error = await fed.intake.receive_pdu("remote.test", c)
    assert error is not None and "prev_events" in error
    assert not any("state_ids" in p[2] for p in fed.requester.requests)
    assert await _stored(fed, remote.event_id(c)) is None
    assert await _stored(fed, remote.event_id(hidden)) is None
    resp = await sync(fed.http, token, since=first["next_batch"], timeout=0)
    assert bodies(resp, room_id) == []
    # once the sender hands the gap over, the next event brings both in
    fed.requester.answer_missing_events = True
    d = remote.build(BOB, "m.room.message", {"body": "and again"})
    assert await fed.intake.receive_pdu("remote.test", d) is None
    resp = await sync(fed.http, token, since=first["next_batch"], timeout=0)
    assert bodies(resp, room_id) == ["never sent to us", "after the gap", "and again"]


async def test_gap_filled_with_state_ids(fed: Fed) -> None:
    """A gap larger than /get_missing_events brings: the oldest event it brought gets
    the state at its own missing prev_events from /state_ids."""
    room_id, token, remote = await _joined(fed)
    fed.intake.max_gap = 1
    first = await sync(fed.http, token)
    remote.build(BOB, "m.room.topic", {"topic": "unseen topic"}, state_key="")
    carol = "@carol:remote.test"
    join = remote.build(carol, "m.room.member", {"membership": "join"}, state_key=carol)
    hidden = remote.build(carol, "m.room.message", {"body": "brought by get_missing_events"})
    c = remote.build(carol, "m.room.message", {"body": "after the gap"})
    # The topic is in the state the remote reports, but bob may not set it
    # (state_default 50): this server rejects it and keeps it out of the room's state.
    assert await fed.intake.receive_pdu("remote.test", c) is None
    assert any("state_ids" in p[2] for p in fed.requester.requests)
    resp = await sync(fed.http, token, since=first["next_batch"], timeout=0)
    assert bodies(resp, room_id) == ["brought by get_missing_events", "after the gap"]
    prev = await _stored(fed, remote.event_id(join))
    assert prev is not None and prev.outlier
    backward = await fed.services.db.read(
        lambda c: [r[0] for r in c.execute("SELECT event_id FROM backward_extremities")]
    )
    assert remote.event_id(join) in backward
    assert remote.event_id(hidden) not in backward
    current = await fed.services.db.read(state_store.get_current_state_ids, room_id)
    assert ("m.room.topic", "") not in current
    # carol's join came only through the state at the gap: she is a member now
    assert carol in await fed.services.db.read(state_store.room_members, room_id)


async def test_remote_redactions_apply_only_when_allowed(fed: Fed) -> None:
    room_id, token, remote = await _joined(fed)
    mine = remote.build(BOB, "m.room.message", {"body": "oops"})
    assert await fed.intake.receive_pdu("remote.test", mine) is None
    r = await fed.http.put(
        f"{V3}/rooms/{room_id}/send/m.room.message/alice1", json={"body": "alice's"}, headers=auth_headers(token)
    )
    alices = r.json()["event_id"]
    # bob (power 0) may not redact alice's message; his own, yes
    for target in (alices, remote.event_id(mine)):
        red = remote.build(BOB, "m.room.redaction", {"redacts": target})
        assert await fed.intake.receive_pdu("remote.test", red) is None
    assert (await _stored(fed, alices)).event.content == {"body": "alice's"}
    assert (await _stored(fed, remote.event_id(mine))).event.content == {}
    r = await fed.http.get(f"{V3}/rooms/{room_id}/event/{remote.event_id(mine)}", headers=auth_headers(token))
    assert r.status_code == 200 and r.json()["content"] == {}


async def test_missing_auth_events_are_fetched(fed: Fed) -> None:
    """Carol's join reaches us only as the auth event of her message (and through the
    gap): /event_auth brings it, stored as an outlier."""
    room_id, token, remote = await _joined(fed)
    first = await sync(fed.http, token)
    carol = "@carol:remote.test"
    join = remote.build(carol, "m.room.member", {"membership": "join"}, state_key=carol)
    msg = remote.build(carol, "m.room.message", {"body": "carol here"})
    assert await fed.intake.receive_pdu("remote.test", msg) is None
    assert any("event_auth" in p[2] for p in fed.requester.requests)
    resp = await sync(fed.http, token, since=first["next_batch"], timeout=0)
    assert bodies(resp, room_id) == ["carol here"]
    assert (await _stored(fed, remote.event_id(join))).stream_pos is not None  # then joined the graph


async def test_redaction_of_an_event_in_another_room_is_ignored(fed: Fed) -> None:
    """A remote redaction in one room naming bob's message of another room redacts
    nothing and does not reach the timeline of its own room; the room goes on."""
    room_1, token_1, remote_1 = await _joined(fed)
    room_2, token_2, remote_2 = await _joined(fed)
    msg = remote_1.build(BOB, "m.room.message", {"body": "hi"})
    assert await fed.intake.receive_pdu("remote.test", msg) is None
    first = await sync(fed.http, token_2)
    red = remote_2.build(BOB, "m.room.redaction", {"redacts": remote_1.event_id(msg)})
    assert await fed.intake.receive_pdu("remote.test", red) is None
    after = remote_2.build(BOB, "m.room.message", {"body": "sentinel"})
    assert await fed.intake.receive_pdu("remote.test", after) is None
    resp = await sync(fed.http, token_2, since=first["next_batch"], timeout=0)
    timeline = resp["rooms"]["join"][room_2]["timeline"]["events"]
    assert [e["type"] for e in timeline] == ["m.room.message"]
    assert bodies(resp, room_2) == ["sentinel"]
    r = await fed.http.get(f"{V3}/rooms/{room_1}/event/{remote_1.event_id(msg)}", headers=auth_headers(token_1))
    assert r.status_code == 200 and r.json()["content"] == {"body": "hi"}
    assert "redacted_by" not in r.json().get("unsigned", {})
