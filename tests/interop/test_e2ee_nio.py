"""matrix-nio with its end-to-end encryption (vodozemac) against the real pocketserver:
encrypted messages both ways, a late device, key backup, SAS verification."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tests.interop.conftest import ServerProcess

pytestmark = pytest.mark.interop

ENCRYPTION = {
    "type": "m.room.encryption",
    "state_key": "",
    "content": {"algorithm": "m.megolm.v1.aes-sha2"},
}
MAX_ROUNDS = 40


def _client(base_url: str, user: str, store: Path) -> Any:
    import nio

    store.mkdir(parents=True, exist_ok=True)
    cfg = nio.AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True)
    return nio.AsyncClient(base_url, user, store_path=str(store), config=cfg)


async def _step(c: Any, timeout_ms: int = 0) -> Any:
    """One sync plus the key housekeeping nio's sync_forever would do."""
    import nio

    r = await c.sync(timeout=timeout_ms, full_state=False)
    assert isinstance(r, nio.SyncResponse), r
    if c.should_upload_keys:
        assert isinstance(await c.keys_upload(), nio.KeysUploadResponse)
    if c.should_query_keys:
        assert isinstance(await c.keys_query(), nio.KeysQueryResponse)
    if c.should_claim_keys:
        await c.keys_claim(c.get_users_for_key_claiming())
    await c.send_to_device_messages()
    return r


async def _texts(c: Any, room_id: str, want: str) -> Any:
    """Sync until the room timeline has a decrypted text ``want``; return that event."""
    import nio

    pending: list[Any] = []
    for _ in range(MAX_ROUNDS):
        r = await _step(c, 500)
        room = r.rooms.join.get(room_id)
        events = list(room.timeline.events) if room else []
        for ev in pending + events:
            if isinstance(ev, nio.MegolmEvent):
                dec = c.decrypt_event(ev)
                ev = dec if not isinstance(dec, nio.MegolmEvent) else ev
            if isinstance(ev, nio.RoomMessageText) and ev.body == want:
                return ev
        pending = [e for e in pending + events if isinstance(e, nio.MegolmEvent)]
    raise AssertionError(f"{c.user_id} never decrypted {want!r} (undecrypted: {len(pending)})")


async def _register(c: Any, name: str) -> None:
    import nio

    r = await c.register(name, f"pw-{name}-secret")
    assert isinstance(r, nio.RegisterResponse), r
    await _step(c)


async def _encrypted_room(alice: Any, bob: Any) -> str:
    import nio

    r = await alice.room_create(initial_state=[ENCRYPTION], invite=[bob.user_id], is_direct=True)
    assert isinstance(r, nio.RoomCreateResponse), r
    room_id = r.room_id
    for _ in range(MAX_ROUNDS):
        await _step(bob, 200)
        if room_id in bob.invited_rooms:
            break
    assert isinstance(await bob.join(room_id), nio.JoinResponse)
    for _ in range(MAX_ROUNDS):
        await _step(alice, 200)
        if bob.user_id in alice.rooms[room_id].users:
            break
    await _step(bob)
    assert alice.rooms[room_id].encrypted and bob.rooms[room_id].encrypted
    return room_id


async def _send(c: Any, room_id: str, body: str) -> None:
    import nio

    r = await c.room_send(
        room_id, "m.room.message", {"msgtype": "m.text", "body": body},
        ignore_unverified_devices=True,
    )
    assert isinstance(r, nio.RoomSendResponse), r


async def _messages_scenario(base_url: str, tmp: Path) -> None:
    import nio

    alice = _client(base_url, "alice", tmp / "alice")
    bob = _client(base_url, "bob", tmp / "bob")
    alice2 = _client(base_url, "@alice:localhost", tmp / "alice2")
    alice3 = _client(base_url, "@alice:localhost", tmp / "alice3")
    try:
        await _register(alice, "alice")
        await _register(bob, "bob")
        room_id = await _encrypted_room(alice, bob)

        hello = "Hello Bob — this is secret 🔐"
        await _send(alice, room_id, hello)
        got = await _texts(bob, room_id, hello)
        assert got.decrypted  # it arrived as m.room.encrypted
        assert got.sender == alice.user_id
        reply = "Hi Alice, read you loud and clear ✓"
        await _send(bob, room_id, reply)
        assert (await _texts(alice, room_id, reply)).decrypted

        # The server only ever saw ciphertext.
        resp = await bob.room_messages(room_id, start="", limit=20)
        assert isinstance(resp, nio.RoomMessagesResponse), resp
        raw = json.dumps([e.source for e in resp.chunk])
        assert hello not in raw and reply not in raw

        # A third device logs in later: Bob's sync says Alice's devices changed, his key
        # query finds the new device, and his next message reaches it.
        r = await alice2.login("pw-alice-secret", device_name="late device")
        assert isinstance(r, nio.LoginResponse), r
        await _step(alice2)
        changed: set[str] = set()
        for _ in range(MAX_ROUNDS):
            s = await _step(bob, 500)
            changed |= set(s.device_list.changed)
            if alice.user_id in changed:
                break
        assert alice.user_id in changed
        await _step(bob)
        assert alice2.device_id in bob.device_store[alice.user_id]
        late = "Welcome, new device"
        await _send(bob, room_id, late)
        assert (await _texts(alice2, room_id, late)).decrypted
        assert (await _texts(alice, room_id, late)).decrypted

        await _backup_round_trip(alice, alice3, room_id, hello)
    finally:
        for c in (alice, bob, alice2, alice3):
            await c.close()


async def _backup_round_trip(alice: Any, fresh: Any, room_id: str, plaintext: str) -> None:
    """Alice backs up her room keys (m.megolm_backup.v1.curve25519-aes-sha2); a fresh
    device restores them from the server and decrypts old history to the plaintext."""
    import nio
    import vodozemac

    headers = {"Authorization": f"Bearer {alice.access_token}", "Content-Type": "application/json"}
    backup_key = vodozemac.PkDecryption()
    public = backup_key.public_key.to_base64()
    resp = await alice.send(
        "POST", "/_matrix/client/v3/room_keys/version",
        json.dumps({"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2",
                    "auth_data": {"public_key": public}}),
        headers=headers,
    )
    assert resp.status == 200
    version = (await resp.json())["version"]
    sessions = [s for s in alice.olm.inbound_group_store if s.room_id == room_id]
    assert sessions
    rooms: dict[str, Any] = {room_id: {"sessions": {}}}
    for s in sessions:
        plain = {
            "algorithm": "m.megolm.v1.aes-sha2",
            "sender_key": s.sender_key,
            "sender_claimed_keys": {"ed25519": s.ed25519},
            "forwarding_curve25519_key_chain": [],
            "session_key": s.export_session(s.first_known_index),
        }
        eph, mac, ct = vodozemac.PkEncryption.from_key(
            vodozemac.Curve25519PublicKey.from_base64(public)
        ).encrypt(json.dumps(plain).encode()).to_base64()
        rooms[room_id]["sessions"][s.id] = {
            "first_message_index": s.first_known_index,
            "forwarded_count": 0,
            "is_verified": True,
            "session_data": {"ciphertext": ct, "mac": mac, "ephemeral": eph},
        }
    resp = await alice.send(
        "PUT", f"/_matrix/client/v3/room_keys/keys?version={version}",
        json.dumps({"rooms": rooms}), headers=headers,
    )
    assert resp.status == 200 and (await resp.json())["count"] == len(sessions)

    r = await fresh.login("pw-alice-secret", device_name="restored")
    assert isinstance(r, nio.LoginResponse), r
    fh = {"Authorization": f"Bearer {fresh.access_token}"}
    resp = await fresh.send("GET", "/_matrix/client/v3/room_keys/version", headers=fh)
    info = await resp.json()
    assert info["version"] == version and info["auth_data"]["public_key"] == public
    resp = await fresh.send("GET", f"/_matrix/client/v3/room_keys/keys?version={version}", headers=fh)
    restored = (await resp.json())["rooms"][room_id]["sessions"]
    inbound = {}
    for session_id, data in restored.items():
        sd = data["session_data"]
        msg = vodozemac.Message.from_base64(sd["ciphertext"], sd["mac"], sd["ephemeral"])
        key = json.loads(backup_key.decrypt(msg))
        inbound[session_id] = vodozemac.InboundGroupSession.import_session(
            vodozemac.ExportedSessionKey(key["session_key"])
        )
    history = await fresh.room_messages(room_id, start="", limit=50)
    assert isinstance(history, nio.RoomMessagesResponse), history
    found = []
    for ev in history.chunk:
        content = ev.source.get("content", {})
        if ev.source.get("type") == "m.room.encrypted" and content.get("session_id") in inbound:
            dec = inbound[content["session_id"]].decrypt(
                vodozemac.MegolmMessage.from_base64(content["ciphertext"])
            )
            found.append(json.loads(dec.plaintext)["content"]["body"])
    assert plaintext in found


async def _sas_scenario(base_url: str, tmp: Path) -> None:
    from nio.crypto import SasState

    alice = _client(base_url, "alice", tmp / "alice")
    bob = _client(base_url, "bob", tmp / "bob")
    try:
        await _register(alice, "alice")
        await _register(bob, "bob")
        await _encrypted_room(alice, bob)
        for c in (alice, bob):
            await _step(c)
        bob_device = alice.device_store[bob.user_id][bob.device_id]
        r = await alice.start_key_verification(bob_device)
        assert r.__class__.__name__ == "ToDeviceResponse", r
        (tx,) = alice.key_verifications
        for _ in range(MAX_ROUNDS):
            await _step(bob, 200)
            if tx in bob.key_verifications:
                break
        await bob.accept_key_verification(tx)
        for _ in range(MAX_ROUNDS):
            await _step(alice, 200)
            await _step(bob, 200)
            states = {alice.key_verifications[tx].state, bob.key_verifications[tx].state}
            if states == {SasState.key_received}:
                break
        a_sas, b_sas = alice.key_verifications[tx], bob.key_verifications[tx]
        assert not a_sas.canceled and not b_sas.canceled, (a_sas.cancel_reason, b_sas.cancel_reason)
        assert a_sas.state == b_sas.state == SasState.key_received
        # Both screens show the same emoji: the users confirm.
        assert a_sas.get_emoji() == b_sas.get_emoji()
        await alice.confirm_short_auth_string(tx)
        await bob.confirm_short_auth_string(tx)
        for _ in range(MAX_ROUNDS):
            await _step(alice, 200)
            await _step(bob, 200)
            if a_sas.verified and b_sas.verified:
                break
        assert a_sas.verified and b_sas.verified
        assert alice.device_store[bob.user_id][bob.device_id].verified
        assert bob.device_store[alice.user_id][alice.device_id].verified
    finally:
        for c in (alice, bob):
            await c.close()


def test_nio_encrypted_messages_late_device_and_backup(
    pocketserver_process: ServerProcess, tmp_path: Path
) -> None:
    asyncio.run(_messages_scenario(pocketserver_process.base_url, tmp_path))


def test_nio_sas_verification(pocketserver_process: ServerProcess, tmp_path: Path) -> None:
    asyncio.run(_sas_scenario(pocketserver_process.base_url, tmp_path))


