"""federation/transactions.py: PUT /send/{txnId} as a second server would use it."""

from __future__ import annotations

from typing import Any

import pytest

from pocketserver.errors import MatrixError
from pocketserver.storage import events as ev_store
from tests.api.helpers import register, sync
from tests.federation.conftest import Fed
from tests.federation.test_intake import BOB, bodies


async def _joined(fed: Fed) -> tuple[str, str, Any]:
    room_id, _alice, token = await fed.local_room()
    remote = await fed.mirror(room_id)
    join = remote.build(BOB, "m.room.member", {"membership": "join"}, state_key=BOB)
    answer = await fed.transactions.on_transaction("remote.test", "t-join", {"pdus": [join]})
    assert answer == {"pdus": {remote.event_id(join): {}}}
    return room_id, token, remote


async def test_transaction_is_idempotent(fed: Fed) -> None:
    room_id, token, remote = await _joined(fed)
    first = await sync(fed.http, token)
    msg = remote.build(BOB, "m.room.message", {"body": "once"})
    a1 = await fed.transactions.on_transaction("remote.test", "t1", {"pdus": [msg], "edus": []})
    # a retry of the same transaction, even with other content, gets the same answer
    other = remote.build(BOB, "m.room.message", {"body": "smuggled"}, advance=False)
    a2 = await fed.transactions.on_transaction("remote.test", "t1", {"pdus": [other]})
    assert a1 == a2 == {"pdus": {remote.event_id(msg): {}}}
    assert await fed.services.db.read(ev_store.get_event, remote.event_id(other)) is None
    resp = await sync(fed.http, token, since=first["next_batch"], timeout=0)
    assert bodies(resp, room_id) == ["once"]


async def test_over_limit_transaction_is_refused(fed: Fed) -> None:
    room_id, token, remote = await _joined(fed)
    msgs = [remote.build(BOB, "m.room.message", {"body": str(i)}, advance=False) for i in range(51)]
    with pytest.raises(MatrixError) as e:
        await fed.transactions.on_transaction("remote.test", "big", {"pdus": msgs})
    assert e.value.status == 400
    with pytest.raises(MatrixError):
        await fed.transactions.on_transaction(
            "remote.test", "big2", {"pdus": [], "edus": [{"edu_type": "m.typing", "content": {}}] * 101}
        )
    with pytest.raises(MatrixError) as e:
        await fed.transactions.on_transaction("remote.test", "bad", {"edus": []})
    assert e.value.errcode == "M_BAD_JSON"
    # nothing of the refused transaction was stored; the ID may be used again
    assert await fed.services.db.read(ev_store.get_event, remote.event_id(msgs[0])) is None
    ok = await fed.transactions.on_transaction("remote.test", "big", {"pdus": msgs[:1]})
    assert ok == {"pdus": {remote.event_id(msgs[0]): {}}}


async def test_pdus_from_servers_not_in_the_room_are_refused(fed: Fed) -> None:
    room_id, token, remote = await _joined(fed)
    msg = remote.build(BOB, "m.room.message", {"body": "relayed"}, advance=False)
    # other.test has no member in the room
    answer = await fed.transactions.on_transaction("other.test", "x1", {"pdus": [msg]})
    assert "error" in answer["pdus"][remote.event_id(msg)]
    assert await fed.services.db.read(ev_store.get_event, remote.event_id(msg)) is None
    # a room this server is not in
    alien = dict(msg, room_id="!nowhere:elsewhere.test")
    answer = await fed.transactions.on_transaction("remote.test", "x2", {"pdus": [alien]})
    (result,) = answer["pdus"].values()
    assert "error" in result


async def test_typing_and_to_device_edus(fed: Fed) -> None:
    room_id, token, remote = await _joined(fed)
    first = await sync(fed.http, token)
    typing = {"edu_type": "m.typing", "content": {"room_id": room_id, "user_id": BOB, "typing": True}}
    # a typing notice for a user of another server is ignored
    forged = {"edu_type": "m.typing", "content": {"room_id": room_id, "user_id": "@x:other.test", "typing": True}}
    await fed.transactions.on_transaction("remote.test", "e1", {"pdus": [], "edus": [typing, forged]})
    resp = await sync(fed.http, token, since=first["next_batch"], timeout=0)
    ephemeral = resp["rooms"]["join"][room_id]["ephemeral"]["events"]
    assert [e["content"]["user_ids"] for e in ephemeral if e["type"] == "m.typing"] == [[BOB]]

    user, utoken, device = await register(fed.http)
    base = await sync(fed.http, utoken)
    edu = {
        "edu_type": "m.direct_to_device",
        "content": {
            "sender": BOB,
            "type": "m.room_key_request",
            "message_id": "m1",
            "messages": {user: {"*": {"hello": "there"}}},
        },
    }
    await fed.transactions.on_transaction("remote.test", "e2", {"pdus": [], "edus": [edu]})
    await fed.transactions.on_transaction("remote.test", "e3", {"pdus": [], "edus": [edu]})  # resent
    resp = await sync(fed.http, utoken, since=base["next_batch"], timeout=0)
    events = resp["to_device"]["events"]
    assert [(e["sender"], e["content"]) for e in events] == [(BOB, {"hello": "there"})]


async def test_receipt_presence_and_device_list_edus(fed: Fed) -> None:
    room_id, token, remote = await _joined(fed)
    msg = remote.build(BOB, "m.room.message", {"body": "read me"})
    await fed.transactions.on_transaction("remote.test", "r0", {"pdus": [msg]})
    first = await sync(fed.http, token)
    receipt = {
        "edu_type": "m.receipt",
        "content": {room_id: {"m.read": {BOB: {"event_ids": [remote.event_id(msg)], "data": {"ts": 1}}}}},
    }
    presence = {
        "edu_type": "m.presence",
        "content": {"push": [{"user_id": BOB, "presence": "online", "last_active_ago": 10, "currently_active": True}]},
    }
    await fed.transactions.on_transaction("remote.test", "r1", {"pdus": [], "edus": [receipt, presence]})
    resp = await sync(fed.http, token, since=first["next_batch"], timeout=0)
    receipts = [e for e in resp["rooms"]["join"][room_id]["ephemeral"]["events"] if e["type"] == "m.receipt"]
    assert BOB in str(receipts) and remote.event_id(msg) in str(receipts)
    assert [p["content"]["presence"] for p in resp["presence"]["events"] if p["sender"] == BOB] == ["online"]

    # A device-list update with a gap (nothing known of bob's list): resync by /user/devices.
    devices = {
        "user_id": BOB,
        "stream_id": 7,
        "devices": [{"device_id": "PHONE", "keys": {"user_id": BOB, "device_id": "PHONE", "keys": {}}}],
    }
    fed.requester.other["/_matrix/federation/v1/user/devices/%40bob%3Aremote.test"] = devices
    update = {"edu_type": "m.device_list_update", "content": {"user_id": BOB, "device_id": "PHONE", "stream_id": 7, "prev_id": [5]}}
    await fed.transactions.on_transaction("remote.test", "d1", {"pdus": [], "edus": [update]})
    assert ("GET", "remote.test", "/_matrix/federation/v1/user/devices/%40bob%3Aremote.test") in fed.requester.requests
    resp2 = await sync(fed.http, token, since=resp["next_batch"], timeout=0)
    assert BOB in resp2["device_lists"]["changed"]
    row = await fed.services.db.read(
        lambda c: c.execute("SELECT stream_id, stale FROM remote_device_lists WHERE user_id = ?", (BOB,)).fetchone()
    )
    assert tuple(row) == (7, 0)
