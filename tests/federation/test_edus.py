"""What local activity other servers hear of (federation/edus.py through the sender),
and only the servers that should: PDUs, typing, receipts, presence, to-device, device
lists and cross-signing keys. A server whose rooms have no remote members queues nothing
and runs no sender task."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import trio

from pocketserver.services import Services
from pocketserver.storage import accounts, outbox
from tests.api.e2ee_helpers import CrossSigning, FakeDevice
from tests.api.helpers import V3, auth_headers, create_room, register, sync
from tests.federation.fakes import FakeRemotes, local_user, poll, remote_join, running_services
from tests.federation.servers import start_federating_server


async def _all_sent(svc: Services) -> bool:
    def read(conn: object) -> int:
        return int(conn.execute("SELECT count(*) FROM federation_outbox").fetchone()[0])  # type: ignore[attr-defined]

    return await svc.db.read(read) == 0


async def _flush(svc: Services) -> None:
    await poll(lambda: _all_sent(svc))


async def test_a_local_only_server_queues_nothing_and_runs_no_task(tmp_path: Path) -> None:
    remotes = FakeRemotes()
    async with running_services(tmp_path, remotes) as svc:
        alice = await local_user(svc, "alice")
        bob = await local_user(svc, "bob")
        room_id, _ = await svc.rooms.create_room(alice, {"preset": "public_chat"})
        await svc.rooms.join(bob, room_id)
        sent = await svc.rooms.send_event(alice, room_id, "m.room.message", {"body": "hi"})
        await svc.typing.update(room_id, alice.user_id, True, 30_000)
        await svc.receipts.send_receipt(bob.user_id, room_id, "m.read", sent.record.event.event_id, None)
        await svc.presence.set_status(alice.user_id, alice.user_id, {"presence": "unavailable"})
        await svc.e2ee.upload_keys(alice.user_id, "DEV", {"device_keys": FakeDevice(alice.user_id, "DEV").device_keys()})
        assert await _all_sent(svc)
        assert svc.federation_sender is not None
        assert svc.federation_sender.statistics()["active_destinations"] == 0
    assert remotes.requests == []


async def test_room_activity_goes_to_the_servers_in_the_room_only(tmp_path: Path) -> None:
    remotes = FakeRemotes()
    async with running_services(tmp_path, remotes) as svc:
        alice = await local_user(svc, "alice")
        room_id, _ = await svc.rooms.create_room(alice, {"preset": "public_chat"})
        other_room, _ = await svc.rooms.create_room(alice, {"preset": "public_chat"})
        await remote_join(svc, room_id, "@bob:a.remote")
        await remote_join(svc, room_id, "@carl:a.remote")
        await remote_join(svc, other_room, "@dan:b.remote")

        sent = await svc.rooms.send_event(alice, room_id, "m.room.message", {"body": "hi"})
        event_id = sent.record.event.event_id
        await svc.typing.update(room_id, alice.user_id, True, 30_000)
        await svc.receipts.send_receipt(alice.user_id, room_id, "m.read", event_id, None)
        await svc.receipts.send_receipt(alice.user_id, room_id, "m.read.private", event_id, None)
        await _flush(svc)
        await remotes.wait_until(lambda: bool(remotes.edus("a.remote", "m.typing")))

        pdus = remotes.pdus("a.remote")
        assert [p["content"].get("body") for p in pdus] == ["hi"]  # once, not per member
        assert pdus[0]["sender"] == alice.user_id and "event_id" not in pdus[0]  # v12 PDU
        assert all(p["content"].get("body") != "hi" for p in remotes.pdus("b.remote"))
        typing = remotes.edus("a.remote", "m.typing")
        assert typing[-1]["content"] == {"room_id": room_id, "user_id": alice.user_id, "typing": True}
        receipts = remotes.edus("a.remote", "m.receipt")
        assert len(receipts) == 1
        read = receipts[0]["content"][room_id]
        assert list(read) == ["m.read"]  # the private receipt stays here
        assert read["m.read"][alice.user_id]["event_ids"] == [event_id]
        assert remotes.edus("b.remote", "m.typing") == []
        assert remotes.edus("b.remote", "m.receipt") == []


async def test_membership_changes_reach_the_servers_they_concern(tmp_path: Path) -> None:
    remotes = FakeRemotes()
    async with running_services(tmp_path, remotes) as svc:
        alice = await local_user(svc, "alice")
        room_id, _ = await svc.rooms.create_room(alice, {"preset": "public_chat"})
        await remote_join(svc, room_id, "@bob:a.remote")
        # An invite to a server not in the room: /invite delivers it, not a transaction
        # (the exchange itself is tests/federation/test_joining.py's: here it is the
        # invitee's server handing the event back as it came).
        async def handed_back(event: Any) -> Any:
            return event

        assert svc.rooms.remote is not None
        svc.rooms.remote.exchange_invite = handed_back  # type: ignore[method-assign]
        await svc.rooms.update_membership(alice, room_id, "@carol:c.remote", "invite")
        # A kick of a.remote's only member: a.remote hears of it although it left.
        await svc.rooms.update_membership(alice, room_id, "@bob:a.remote", "leave")
        await _flush(svc)
        assert remotes.transactions("c.remote") == []
        members = [(p["state_key"], p["content"]["membership"]) for p in remotes.pdus("a.remote")]
        assert members == [("@carol:c.remote", "invite"), ("@bob:a.remote", "leave")]
        # Nobody of a.remote is left: the next message goes nowhere.
        await svc.rooms.send_event(alice, room_id, "m.room.message", {"body": "alone"})
        assert await _all_sent(svc)


async def test_presence_goes_out_when_it_changes(tmp_path: Path) -> None:
    remotes = FakeRemotes()
    async with running_services(tmp_path, remotes) as svc:
        alice = await local_user(svc, "alice")
        room_id, _ = await svc.rooms.create_room(alice, {"preset": "public_chat"})
        await remote_join(svc, room_id, "@bob:a.remote")
        await svc.presence.set_status(alice.user_id, alice.user_id, {"presence": "online", "status_msg": "here"})
        await svc.presence.touch(alice.user_id, "online")  # nothing changed
        await svc.presence.set_status(alice.user_id, alice.user_id, {"presence": "online", "status_msg": "here"})
        await svc.presence.set_status(alice.user_id, alice.user_id, {"presence": "unavailable"})
        await _flush(svc)
        pushes = [p for e in remotes.edus("a.remote", "m.presence") for p in e["content"]["push"]]
        assert [(p["user_id"], p["presence"], p.get("status_msg")) for p in pushes] == [
            (alice.user_id, "online", "here"),
            (alice.user_id, "unavailable", None),
        ]
        # Online and unchanged for 26 minutes: sent again, so other servers keep it.
        await svc.presence.set_status(alice.user_id, alice.user_id, {"presence": "online"})
        real = svc.clock.time_ms
        svc.clock.time_ms = lambda: real() + 26 * 60_000  # type: ignore[method-assign]
        await svc.presence.touch(alice.user_id, "online")
        await _flush(svc)
        pushes = [p for e in remotes.edus("a.remote", "m.presence") for p in e["content"]["push"]]
        assert [p["presence"] for p in pushes] == ["online", "unavailable", "online", "online"]


async def test_to_device_messages_for_remote_users_are_sent_once_with_an_id(tmp_path: Path) -> None:
    remotes = FakeRemotes()
    async with running_services(tmp_path, remotes) as svc:
        alice = await local_user(svc, "alice")
        messages = {"@bob:a.remote": {"BOBDEV": {"ciphertext": "x"}}, "@eve:e.remote": {"*": {"c": 1}}}
        await svc.e2ee.send_to_device(alice.user_id, "DEV", "m.room.encrypted", "txn1", messages)
        await svc.e2ee.send_to_device(alice.user_id, "DEV", "m.room.encrypted", "txn1", messages)
        await _flush(svc)
        [edu] = remotes.edus("a.remote", "m.direct_to_device")
        assert edu["content"]["sender"] == alice.user_id
        assert edu["content"]["type"] == "m.room.encrypted"
        assert edu["content"]["messages"] == {"@bob:a.remote": {"BOBDEV": {"ciphertext": "x"}}}
        assert edu["content"]["message_id"]
        [other] = remotes.edus("e.remote", "m.direct_to_device")
        assert other["content"]["messages"] == {"@eve:e.remote": {"*": {"c": 1}}}


async def test_device_changes_go_to_servers_sharing_a_room_with_stream_ids(tmp_path: Path) -> None:
    remotes = FakeRemotes()
    async with running_services(tmp_path, remotes) as svc:
        alice = await local_user(svc, "alice")
        room_id, _ = await svc.rooms.create_room(alice, {"preset": "public_chat"})
        await remote_join(svc, room_id, "@bob:a.remote")
        device = FakeDevice(alice.user_id, "DEV")
        await svc.e2ee.upload_keys(alice.user_id, "DEV", {"device_keys": device.device_keys()})
        await svc.accounts.update_device(alice.user_id, "DEV", {"display_name": "laptop"})
        await svc.db.write(accounts.upsert_device, alice.user_id, "NEW", None, 0)
        await svc.e2ee.on_device_created(alice.user_id, "NEW")
        await svc.db.write(accounts.delete_devices, alice.user_id, ["NEW"])
        await svc.e2ee.on_device_deleted(alice.user_id, "NEW")
        cs = CrossSigning(alice.user_id)
        await svc.e2ee.upload_cross_signing(alice.user_id, cs.upload_body())
        await _flush(svc)

        updates = [e["content"] for e in remotes.edus("a.remote", "m.device_list_update")]
        assert [(u["device_id"], bool(u.get("deleted"))) for u in updates] == [
            ("DEV", False), ("DEV", False), ("NEW", False), ("NEW", True),
        ]
        assert updates[0]["keys"]["keys"] == device.device_keys()["keys"]
        assert updates[1]["device_display_name"] == "laptop"
        ids = [u["stream_id"] for u in updates]
        assert ids == sorted(ids) and len(set(ids)) == 4
        # Each names the one before, so a server that missed one sees the gap.
        assert [u["prev_id"] for u in updates[1:]] == [[i] for i in ids[:-1]]
        [signing] = [e["content"] for e in remotes.edus("a.remote", "m.signing_key_update")]
        assert signing["user_id"] == alice.user_id
        assert signing["master_key"] == cs.master_key()
        assert signing["self_signing_key"] == cs.self_signing_key()
        assert "user_signing_key" not in signing  # only its owner ever sees that


async def test_the_outbox_is_written_with_what_it_describes(tmp_path: Path) -> None:
    """Queued in the event's own transaction: a stopped sender finds it queued."""
    remotes = FakeRemotes(down={"a.remote"})
    async with running_services(tmp_path, remotes) as svc:
        alice = await local_user(svc, "alice")
        room_id, _ = await svc.rooms.create_room(alice, {"preset": "public_chat"})
        await remote_join(svc, room_id, "@bob:a.remote")
        await svc.rooms.send_event(alice, room_id, "m.room.message", {"body": "kept"})
        assert await svc.db.read(outbox.count_queued, "a.remote", outbox.PDU) == 1


async def test_a_new_federated_chat_brings_both_users_presence(nursery: trio.Nursery, tmp_path: Path) -> None:
    """alice (on a) invites bob (on b) to a private room; once he joins, each sees the
    other's presence without either changing it (SyTest's SYN-115): each server sends
    its members' presence to the other as the join is made."""
    a = await start_federating_server(nursery, tmp_path / "a")
    b = await start_federating_server(nursery, tmp_path / "b")
    async with httpx.AsyncClient(base_url=a.urls[0], timeout=30) as ha, httpx.AsyncClient(
        base_url=b.urls[0], timeout=30
    ) as hb:
        alice, atok, _ = await register(ha, "alice")
        bob, btok, _ = await register(hb, "bob")
        for http, token, user in ((ha, atok, alice), (hb, btok, bob)):
            r = await http.put(f"{V3}/presence/{user}/status", json={"presence": "online"}, headers=auth_headers(token))
            assert r.status_code == 200, r.text
        room = await create_room(ha, atok, preset="private_chat", invite=[bob])

        async def invited() -> bool:
            return room in (await sync(hb, btok, timeout=0))["rooms"]["invite"]

        await poll(invited)
        r = await hb.post(f"{V3}/join/{room}", json={}, headers=auth_headers(btok))
        assert r.status_code == 200, r.text

        def sees(http: httpx.AsyncClient, token: str, other: str) -> Any:
            async def check() -> bool:
                events = (await sync(http, token, timeout=0))["presence"]["events"]
                return any(e["sender"] == other and e["content"]["presence"] == "online" for e in events)

            return check

        await poll(sees(ha, atok, bob))
        await poll(sees(hb, btok, alice))


async def test_an_invite_reaches_the_invitees_server_when_it_is_in_the_room(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """b is in alice's private room through bob; alice invites carol of b: b's copy of
    the room must hold the invite too, or carol's join (made by b itself) is refused."""
    a = await start_federating_server(nursery, tmp_path / "a")
    b = await start_federating_server(nursery, tmp_path / "b")
    async with httpx.AsyncClient(base_url=a.urls[0], timeout=30) as ha, httpx.AsyncClient(
        base_url=b.urls[0], timeout=30
    ) as hb:
        _, atok, _ = await register(ha, "alice")
        bob, btok, _ = await register(hb, "bob")
        carol, ctok, _ = await register(hb, "carol")
        room = await create_room(ha, atok, preset="private_chat", invite=[bob])

        def invited(token: str) -> Any:
            async def check() -> bool:
                return room in (await sync(hb, token, timeout=0))["rooms"]["invite"]

            return check

        await poll(invited(btok))
        r = await hb.post(f"{V3}/join/{room}", json={}, headers=auth_headers(btok))
        assert r.status_code == 200, r.text
        r = await ha.post(f"{V3}/rooms/{room}/invite", json={"user_id": carol}, headers=auth_headers(atok))
        assert r.status_code == 200, r.text
        await poll(invited(ctok))

        async def joined() -> bool:
            r = await hb.post(f"{V3}/join/{room}", json={}, headers=auth_headers(ctok))
            return r.status_code == 200

        await poll(joined)
