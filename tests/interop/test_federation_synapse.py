"""pocketserver and a real Synapse federating on loopback: the transport and trust layer.

Both directions of a profile look-up (Synapse -> pocketserver exercises our key serving
and inbound request checks; pocketserver -> Synapse our discovery, request signing and
key fetching), our notary answering for Synapse's keys, Synapse's notary accepting ours,
and ``check-federation``.
"""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.interop.conftest import REPO
from tests.interop.synapse import (
    Pair,
    register,
    restart_federating_synapse,
)

pytestmark = pytest.mark.interop


def _set_displayname(base: str, user_id: str, token: str, name: str) -> None:
    r = httpx.put(
        f"{base}/_matrix/client/v3/profile/{quote(user_id)}/displayname",
        json={"displayname": name}, headers={"Authorization": f"Bearer {token}"}, timeout=30,
    )
    assert r.status_code == 200, r.text


def test_synapse_user_reads_a_pocketserver_profile(pair: Pair) -> None:
    alice, alice_token = register(pair.pocket.base_url, "alice")
    _set_displayname(pair.pocket.base_url, alice, alice_token, "Alice on pocketserver")
    _, bob_token = register(pair.synapse.base_url, "bob")
    r = httpx.get(
        f"{pair.synapse.base_url}/_matrix/client/v3/profile/{quote(alice)}",
        headers={"Authorization": f"Bearer {bob_token}"}, timeout=60,
    )
    assert r.status_code == 200, r.text + pair.pocket.log()[-3000:]
    assert r.json()["displayname"] == "Alice on pocketserver"
    # An unknown user of ours is a 404 on Synapse too.
    r = httpx.get(
        f"{pair.synapse.base_url}/_matrix/client/v3/profile/{quote('@nobody:' + pair.pocket.server_name)}",
        headers={"Authorization": f"Bearer {bob_token}"}, timeout=60,
    )
    assert r.status_code == 404, r.text


def test_pocketserver_user_reads_a_synapse_profile(pair: Pair) -> None:
    carol, carol_token = register(pair.synapse.base_url, "carol")
    _set_displayname(pair.synapse.base_url, carol, carol_token, "Carol on Synapse")
    _, dave_token = register(pair.pocket.base_url, "dave")
    r = httpx.get(
        f"{pair.pocket.base_url}/_matrix/client/v3/profile/{quote(carol)}",
        headers={"Authorization": f"Bearer {dave_token}"}, timeout=60,
    )
    assert r.status_code == 200, r.text + pair.pocket.log()[-3000:]
    assert r.json()["displayname"] == "Carol on Synapse"
    r = httpx.get(
        f"{pair.pocket.base_url}/_matrix/client/v3/profile/{quote(carol)}/displayname", timeout=60
    )
    assert r.json() == {"displayname": "Carol on Synapse"}
    missing = "@nobody:" + pair.synapse.server_name
    r = httpx.get(f"{pair.pocket.base_url}/_matrix/client/v3/profile/{quote(missing)}", timeout=60)
    assert r.status_code == 404 and r.json()["errcode"] == "M_NOT_FOUND", r.text


def test_our_notary_answers_for_synapse_keys(pair: Pair) -> None:
    from pocketserver.protocol.signing import decode_verify_key_base64, verify_json

    synapse_name = pair.synapse.server_name
    r = httpx.post(
        f"{pair.pocket.federation_url}/_matrix/key/v2/query",
        json={"server_keys": {synapse_name: {}}}, verify=False, timeout=60,
    )
    assert r.status_code == 200, r.text
    (response,) = r.json()["server_keys"]
    assert response["server_name"] == synapse_name
    # Signed by Synapse with the key it lists, and by us with ours.
    for key_id, entry in response["verify_keys"].items():
        verify_json(response, synapse_name, key_id, decode_verify_key_base64(entry["key"]))
    ours = httpx.get(f"{pair.pocket.federation_url}/_matrix/key/v2/server", verify=False, timeout=30).json()
    for key_id, entry in ours["verify_keys"].items():
        verify_json(response, pair.pocket.server_name, key_id, decode_verify_key_base64(entry["key"]))
    # The GET form.
    r = httpx.get(
        f"{pair.pocket.federation_url}/_matrix/key/v2/query/{synapse_name}", verify=False, timeout=60
    )
    assert [k["server_name"] for k in r.json()["server_keys"]] == [synapse_name]


def test_synapse_as_notary_accepts_our_keys(pair: Pair) -> None:
    from pocketserver.protocol.signing import decode_verify_key_base64, verify_json

    synapse_fed = f"https://127.0.0.1:{pair.synapse.extra['federation_port']}"
    r = httpx.post(
        f"{synapse_fed}/_matrix/key/v2/query",
        json={"server_keys": {pair.pocket.server_name: {}}}, verify=False, timeout=60,
    )
    assert r.status_code == 200, r.text
    (response,) = r.json()["server_keys"]
    ours = httpx.get(f"{pair.pocket.federation_url}/_matrix/key/v2/server", verify=False, timeout=30).json()
    assert response["verify_keys"] == ours["verify_keys"]
    synapse_keys = httpx.get(f"{synapse_fed}/_matrix/key/v2/server", verify=False, timeout=30).json()
    for key_id, entry in synapse_keys["verify_keys"].items():
        verify_json(response, pair.synapse.server_name, key_id, decode_verify_key_base64(entry["key"]))


def test_check_federation_says_synapse_works(pair: Pair) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "pocketserver", "--config", str(pair.pocket.config_path),
         "check-federation", pair.synapse.server_name],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    last = r.stdout.strip().splitlines()[-1]
    assert last == f"federation with {pair.synapse.server_name}: working"
    assert "Synapse" in r.stdout  # its /version


def test_check_federation_says_when_it_does_not_work(pair: Pair, tmp_path: Path) -> None:
    # Without loopback in allowed_ip_ranges, this configuration may not reach Synapse.
    config = tmp_path / "strict.toml"
    config.write_text(f'server_name = "check.local"\ndata_dir = "{tmp_path}"\n', encoding="utf-8")
    r = subprocess.run(
        [sys.executable, "-m", "pocketserver", "--config", str(config),
         "check-federation", pair.synapse.server_name],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert r.returncode == 1, r.stdout + r.stderr
    assert "refused by federation.allowed_ip_ranges" in r.stdout
    assert r.stdout.strip().splitlines()[-1].startswith(
        f"federation with {pair.synapse.server_name}: NOT working"
    )


# -- rooms hosted by pocketserver, joined from Synapse -----------------------------------

WAIT_S = 60.0


def _api(base: str, method: str, path: str, token: str, body: object = None, **params: str) -> httpx.Response:
    return httpx.request(
        method, f"{base}/_matrix/client/v3{path}", json=body, params=params or None,
        headers={"Authorization": f"Bearer {token}"}, timeout=60,
    )


def _ok(r: httpx.Response, *logs: str) -> dict:
    assert r.status_code == 200, f"{r.status_code} {r.text}\n" + "\n".join(x[-4000:] for x in logs)
    return r.json()


class Syncer:
    """One user's /sync, incrementally: polls until a predicate over the room's
    timeline (or the whole answer) holds, bounded in time and rounds."""

    def __init__(self, base: str, token: str) -> None:
        self.base, self.token = base, token
        self.since: str | None = None
        self.events: dict[str, list[dict]] = {}
        self.ephemeral: dict[str, list[dict]] = {}
        self.to_device: list[dict] = []
        self.changed: set[str] = set()
        self.invites: set[str] = set()

    def once(self, timeout_ms: int = 2000) -> None:
        params = {"timeout": str(timeout_ms)}
        if self.since:
            params["since"] = self.since
        body = _ok(_api(self.base, "GET", "/sync", self.token, **params))
        self.since = body["next_batch"]
        for room_id, room in body.get("rooms", {}).get("join", {}).items():
            self.events.setdefault(room_id, []).extend(room.get("timeline", {}).get("events", []))
            self.ephemeral.setdefault(room_id, []).extend(room.get("ephemeral", {}).get("events", []))
        self.invites |= set(body.get("rooms", {}).get("invite", {}))
        self.to_device.extend(body.get("to_device", {}).get("events", []))
        self.changed |= set(body.get("device_lists", {}).get("changed", []))

    def wait(self, pred: Any, what: str, *logs: Any) -> None:
        deadline = time.monotonic() + WAIT_S
        for _ in range(200):
            if pred(self):
                return
            if time.monotonic() > deadline:
                break
            self.once()
        raise AssertionError(f"never saw {what}\n" + "\n".join(str(x)[-5000:] for x in logs))

    def bodies(self, room_id: str) -> list[str]:
        return [
            e["content"]["body"] for e in self.events.get(room_id, [])
            if e.get("type") == "m.room.message" and isinstance(e.get("content", {}).get("body"), str)
        ]


@dataclass
class Hosted:
    room_id: str
    alias: str
    alice: str
    alice_token: str
    bob: str
    bob_token: str
    alice_sync: Syncer
    bob_sync: Syncer


def _logs(pair: Pair) -> list[str]:
    synapse_log = ""
    with contextlib.suppress(Exception):
        synapse_log = pair.synapse.log_tail(80)
    return [pair.pocket.log(), synapse_log]


@pytest.fixture(scope="module")
def hosted(pair: Pair) -> Hosted:
    """A public room on pocketserver (alice) that bob on Synapse joined by its alias."""
    p, s = pair.pocket.base_url, pair.synapse.base_url
    alice, alice_token = register(p, "hostalice")
    bob, bob_token = register(s, "hostbob")
    alias_local = "fedroom"
    room_id = _ok(_api(p, "POST", "/createRoom", alice_token, {
        "preset": "public_chat", "room_alias_name": alias_local, "name": "Federated",
    }))["room_id"]
    alias = f"#{alias_local}:{pair.pocket.server_name}"
    _ok(_api(p, "PUT", f"/rooms/{quote(room_id)}/send/m.room.message/t0", alice_token,
             {"msgtype": "m.text", "body": "before bob"}))
    r = _api(s, "POST", f"/join/{quote(alias)}", bob_token, {})
    assert _ok(r, *_logs(pair))["room_id"] == room_id
    return Hosted(room_id, alias, alice, alice_token, bob, bob_token, Syncer(p, alice_token), Syncer(s, bob_token))


def test_synapse_user_joins_our_room_by_alias_and_they_talk(pair: Pair, hosted: Hosted) -> None:
    h = hosted
    h.alice_sync.wait(
        lambda sy: any(e.get("type") == "m.room.member" and e.get("state_key") == h.bob
                       and e["content"].get("membership") == "join" for e in sy.events.get(h.room_id, [])),
        "bob's join on pocketserver", *_logs(pair),
    )
    _ok(_api(pair.synapse.base_url, "PUT", f"/rooms/{quote(h.room_id)}/send/m.room.message/b1", h.bob_token,
             {"msgtype": "m.text", "body": "hello from synapse"}))
    h.alice_sync.wait(lambda sy: "hello from synapse" in sy.bodies(h.room_id), "bob's message", *_logs(pair))
    _ok(_api(pair.pocket.base_url, "PUT", f"/rooms/{quote(h.room_id)}/send/m.room.message/a1", h.alice_token,
             {"msgtype": "m.text", "body": "hello from pocketserver"}))
    h.bob_sync.wait(lambda sy: "hello from pocketserver" in sy.bodies(h.room_id), "alice's message", *_logs(pair))
    _ok(_api(pair.pocket.base_url, "PUT", f"/rooms/{quote(h.room_id)}/state/m.room.topic/", h.alice_token,
             {"topic": "federated topic"}))
    h.bob_sync.wait(
        lambda sy: any(e.get("type") == "m.room.topic" and e["content"].get("topic") == "federated topic"
                       for e in sy.events.get(h.room_id, [])), "the topic on Synapse", *_logs(pair),
    )


def _send(base: str, token: str, room_id: str, body: str) -> str:
    txn = f"t{time.monotonic_ns()}"
    r = _api(base, "PUT", f"/rooms/{quote(room_id)}/send/m.room.message/{txn}", token, {"msgtype": "m.text", "body": body})
    return str(_ok(r)["event_id"])


def _membership_seen(sy: Syncer, room_id: str, user: str, membership: str) -> bool:
    return any(
        e.get("type") == "m.room.member" and e.get("state_key") == user
        and e["content"].get("membership") == membership for e in sy.events.get(room_id, [])
    )


def test_synapse_user_joins_by_room_id_and_paginates_history_from_before(pair: Pair, hosted: Hosted) -> None:
    h = hosted
    p, s = pair.pocket.base_url, pair.synapse.base_url
    early = [f"history {i}" for i in range(15)]
    for text in early:
        _send(p, h.alice_token, h.room_id, text)
    # Bob's server is already in the room: a second Synapse user joins by ID and reads
    # back; a server that was not (the room below) must backfill from us.
    room2 = _ok(_api(p, "POST", "/createRoom", h.alice_token, {"preset": "public_chat"}))["room_id"]
    for text in early:
        _send(p, h.alice_token, room2, text)
    erin, erin_token = register(s, "lateerin")
    r = _api(s, "POST", f"/join/{quote(room2)}", erin_token, {}, server_name=pair.pocket.server_name)
    assert _ok(r, *_logs(pair))["room_id"] == room2
    seen: list[str] = []
    sy = Syncer(s, erin_token)
    sy.once(0)
    token = None
    deadline = time.monotonic() + WAIT_S
    for _ in range(20):
        params = {"dir": "b", "limit": "10"}
        if token:
            params["from"] = token
        page = _ok(_api(s, "GET", f"/rooms/{quote(room2)}/messages", erin_token, **params), *_logs(pair))
        seen += [e["content"].get("body") for e in page.get("chunk", []) if e.get("type") == "m.room.message"]
        if all(t in seen for t in early) or "end" not in page or time.monotonic() > deadline:
            break
        token = page["end"]
    assert [t for t in reversed(seen) if t in early] == early, (seen, _logs(pair))
    del erin


def test_typing_and_receipts_each_way(pair: Pair, hosted: Hosted) -> None:
    h = hosted
    p, s = pair.pocket.base_url, pair.synapse.base_url
    _ok(_api(p, "PUT", f"/rooms/{quote(h.room_id)}/typing/{quote(h.alice)}", h.alice_token, {"typing": True, "timeout": 30000}))
    h.bob_sync.wait(
        lambda sy: any(e.get("type") == "m.typing" and h.alice in e["content"].get("user_ids", [])
                       for e in sy.ephemeral.get(h.room_id, [])), "alice typing on Synapse", *_logs(pair),
    )
    _ok(_api(s, "PUT", f"/rooms/{quote(h.room_id)}/typing/{quote(h.bob)}", h.bob_token, {"typing": True, "timeout": 30000}))
    h.alice_sync.wait(
        lambda sy: any(e.get("type") == "m.typing" and h.bob in e["content"].get("user_ids", [])
                       for e in sy.ephemeral.get(h.room_id, [])), "bob typing on pocketserver", *_logs(pair),
    )
    a_ev = _send(p, h.alice_token, h.room_id, "read me, bob")
    b_ev = _send(s, h.bob_token, h.room_id, "read me, alice")
    h.bob_sync.wait(lambda sy: "read me, bob" in sy.bodies(h.room_id), "alice's message", *_logs(pair))
    h.alice_sync.wait(lambda sy: "read me, alice" in sy.bodies(h.room_id), "bob's message", *_logs(pair))
    _ok(_api(s, "POST", f"/rooms/{quote(h.room_id)}/receipt/m.read/{quote(a_ev)}", h.bob_token, {}))
    _ok(_api(p, "POST", f"/rooms/{quote(h.room_id)}/receipt/m.read/{quote(b_ev)}", h.alice_token, {}))

    def receipt(sy: Syncer, event_id: str, user: str) -> bool:
        return any(
            e.get("type") == "m.receipt" and user in e["content"].get(event_id, {}).get("m.read", {})
            for e in sy.ephemeral.get(h.room_id, [])
        )

    h.alice_sync.wait(lambda sy: receipt(sy, a_ev, h.bob), "bob's receipt on pocketserver", *_logs(pair))
    h.bob_sync.wait(lambda sy: receipt(sy, b_ev, h.alice), "alice's receipt on Synapse", *_logs(pair))


def test_bob_leaves_and_rejoins(pair: Pair, hosted: Hosted) -> None:
    h = hosted
    s = pair.synapse.base_url
    _ok(_api(s, "POST", f"/rooms/{quote(h.room_id)}/leave", h.bob_token, {}), *_logs(pair))
    h.alice_sync.wait(lambda sy: _membership_seen(sy, h.room_id, h.bob, "leave"), "bob's leave", *_logs(pair))
    r = _api(s, "POST", f"/join/{quote(h.room_id)}", h.bob_token, {}, server_name=pair.pocket.server_name)
    _ok(r, *_logs(pair))
    n = sum(1 for e in h.alice_sync.events.get(h.room_id, []) if e.get("state_key") == h.bob)
    h.alice_sync.wait(
        lambda sy: sum(1 for e in sy.events.get(h.room_id, []) if e.get("state_key") == h.bob) > n
        and _membership_seen(sy, h.room_id, h.bob, "join"), "bob's rejoin", *_logs(pair),
    )
    _send(pair.pocket.base_url, h.alice_token, h.room_id, "welcome back")
    h.bob_sync.wait(lambda sy: "welcome back" in sy.bodies(h.room_id), "a message after the rejoin", *_logs(pair))


def test_our_user_invites_a_synapse_user_who_accepts(pair: Pair, hosted: Hosted) -> None:
    h = hosted
    p, s = pair.pocket.base_url, pair.synapse.base_url
    frank, frank_token = register(s, "invitedfrank")
    room = _ok(_api(p, "POST", "/createRoom", h.alice_token, {"preset": "private_chat"}))["room_id"]
    _ok(_api(p, "POST", f"/rooms/{quote(room)}/invite", h.alice_token, {"user_id": frank}), *_logs(pair))
    fs = Syncer(s, frank_token)
    fs.wait(lambda sy: room in sy.invites, "the invite on Synapse", *_logs(pair))
    _ok(_api(s, "POST", f"/rooms/{quote(room)}/join", frank_token, {}), *_logs(pair))
    _send(p, h.alice_token, room, "you made it")
    fs.wait(lambda sy: "you made it" in sy.bodies(room), "a message in the invited room", *_logs(pair))


def _upload_keys(base: str, token: str, user: str, device: str) -> None:
    body = {
        "device_keys": {
            "user_id": user, "device_id": device, "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
            "keys": {f"curve25519:{device}": "c" * 43, f"ed25519:{device}": "e" * 43},
            "signatures": {user: {f"ed25519:{device}": "s" * 86}},
        },
        "one_time_keys": {f"signed_curve25519:{device}AAA": {"key": "k" * 43, "signatures": {user: {f"ed25519:{device}": "s" * 86}}}},
    }
    _ok(_api(base, "POST", "/keys/upload", token, body))


def _whoami_device(base: str, token: str) -> str:
    return str(_ok(_api(base, "GET", "/account/whoami", token))["device_id"])


def test_keys_query_claim_and_to_device_each_way(pair: Pair, hosted: Hosted) -> None:
    h = hosted
    p, s = pair.pocket.base_url, pair.synapse.base_url
    a_dev, b_dev = _whoami_device(p, h.alice_token), _whoami_device(s, h.bob_token)
    _upload_keys(p, h.alice_token, h.alice, a_dev)
    _upload_keys(s, h.bob_token, h.bob, b_dev)
    for base, token, user, dev in ((p, h.alice_token, h.bob, b_dev), (s, h.bob_token, h.alice, a_dev)):
        q = _ok(_api(base, "POST", "/keys/query", token, {"device_keys": {user: []}}), *_logs(pair))
        assert dev in q["device_keys"].get(user, {}), (q, _logs(pair))
        c = _ok(_api(base, "POST", "/keys/claim", token, {"one_time_keys": {user: {dev: "signed_curve25519"}}}), *_logs(pair))
        assert list(c["one_time_keys"][user][dev]) == [f"signed_curve25519:{dev}AAA"], c
    _ok(_api(p, "PUT", "/sendToDevice/m.test/td1", h.alice_token, {"messages": {h.bob: {b_dev: {"n": "to bob"}}}}))
    _ok(_api(s, "PUT", "/sendToDevice/m.test/td2", h.bob_token, {"messages": {h.alice: {a_dev: {"n": "to alice"}}}}))
    h.bob_sync.wait(lambda sy: any(e["content"].get("n") == "to bob" and e["sender"] == h.alice for e in sy.to_device),
                    "alice's to-device message", *_logs(pair))
    h.alice_sync.wait(lambda sy: any(e["content"].get("n") == "to alice" and e["sender"] == h.bob for e in sy.to_device),
                      "bob's to-device message", *_logs(pair))


def test_a_new_synapse_device_shows_in_device_lists_changed(pair: Pair, hosted: Hosted) -> None:
    h = hosted
    h.alice_sync.once(0)
    h.alice_sync.changed.clear()
    r = httpx.post(f"{pair.synapse.base_url}/_matrix/client/v3/login", json={
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "hostbob"},
        "password": "pw-hostbob-0123456789",
    }, timeout=60)
    body = _ok(r)
    _upload_keys(pair.synapse.base_url, body["access_token"], h.bob, body["device_id"])
    h.alice_sync.wait(lambda sy: h.bob in sy.changed, "bob in device_lists.changed", *_logs(pair))
    q = _ok(_api(pair.pocket.base_url, "POST", "/keys/query", h.alice_token, {"device_keys": {h.bob: []}}))
    assert body["device_id"] in q["device_keys"][h.bob], (q, _logs(pair))


async def nio_conversation(
    pair: Pair, tmp: Path, *, synapse_hosts: bool, names: tuple[str, str], texts: tuple[str, str]
) -> None:
    """Two matrix-nio users, one on each server, in an encrypted room the host's user
    creates and the other joins over federation: each decrypts the other's message."""
    import nio

    from tests.interop.test_e2ee_nio import ENCRYPTION, MAX_ROUNDS, _client, _step, _texts
    from tests.interop.test_e2ee_nio import _send as _nio_send

    host_srv, guest_srv = (pair.synapse, pair.pocket) if synapse_hosts else (pair.pocket, pair.synapse)
    clients = []
    for base, name in ((host_srv.base_url, names[0]), (guest_srv.base_url, names[1])):
        user, token = register(base, name)
        c = _client(base, user, tmp / name)
        c.restore_login(user, _whoami_device(base, token), token)
        clients.append(c)
    host, guest = clients
    try:
        await _step(host)
        await _step(guest)
        r = await host.room_create(initial_state=[ENCRYPTION], preset=nio.RoomPreset.public_chat)
        assert isinstance(r, nio.RoomCreateResponse), r
        room_id = r.room_id
        r = _api(guest_srv.base_url, "POST", f"/join/{quote(room_id)}", guest.access_token, {},
                 server_name=host_srv.server_name)
        _ok(r, *_logs(pair))
        for _ in range(MAX_ROUNDS):
            await _step(host, 300)
            await _step(guest, 300)
            if room_id in host.rooms and guest.user_id in host.rooms[room_id].users and room_id in guest.rooms:
                break
        assert host.rooms[room_id].encrypted and guest.rooms[room_id].encrypted
        await _nio_send(host, room_id, texts[0])
        assert (await _texts(guest, room_id, texts[0])).decrypted
        await _nio_send(guest, room_id, texts[1])
        assert (await _texts(host, room_id, texts[1])).decrypted
    finally:
        for c in clients:
            await c.close()


# -- media across servers -----------------------------------------------------------------


def _upload(base: str, token: str, data: bytes, ctype: str) -> str:
    r = httpx.post(
        f"{base}/_matrix/media/v3/upload", content=data, params={"filename": "f.bin"},
        headers={"Authorization": f"Bearer {token}", "Content-Type": ctype}, timeout=120,
    )
    assert r.status_code == 200, r.text
    return str(r.json()["content_uri"])


def _media(base: str, token: str, kind: str, mxc: str, **params: str) -> httpx.Response:
    server, media_id = mxc[len("mxc://"):].split("/")
    return httpx.get(
        f"{base}/_matrix/client/v1/media/{kind}/{server}/{media_id}", params=params or None,
        headers={"Authorization": f"Bearer {token}"}, timeout=120,
    )


def _png(width: int, height: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), (40, 120, 200)).save(buf, "PNG")
    return buf.getvalue()


def _thumbnail_ok(r: httpx.Response, *logs: str) -> None:
    import io

    from PIL import Image

    assert r.status_code == 200, f"{r.status_code} {r.text[:500]}\n" + "\n".join(x[-4000:] for x in logs)
    img = Image.open(io.BytesIO(r.content))
    assert 32 <= max(img.size) < 640


def test_media_uploaded_on_synapse_is_downloaded_through_pocketserver(pair: Pair) -> None:
    import os

    _, s_token = register(pair.synapse.base_url, "mediasyn")
    _, p_token = register(pair.pocket.base_url, "mediapocket")
    data = os.urandom(2 * 1024 * 1024 + 3)
    mxc = _upload(pair.synapse.base_url, s_token, data, "application/octet-stream")
    r = _media(pair.pocket.base_url, p_token, "download", mxc)
    assert r.status_code == 200, r.text[:500] + "\n".join(x[-4000:] for x in _logs(pair))
    assert r.content == data
    png_mxc = _upload(pair.synapse.base_url, s_token, _png(640, 480), "image/png")
    _thumbnail_ok(_media(pair.pocket.base_url, p_token, "thumbnail", png_mxc, width="64", height="64",
                         method="scale"), *_logs(pair))
    # Unknown media on Synapse: 404 here too.
    r = _media(pair.pocket.base_url, p_token, "download", f"mxc://{pair.synapse.server_name}/NoSuchMediaHere")
    assert (r.status_code, r.json()["errcode"]) == (404, "M_NOT_FOUND"), r.text


def test_media_uploaded_on_pocketserver_is_downloaded_through_synapse(pair: Pair) -> None:
    import os

    _, s_token = register(pair.synapse.base_url, "mediasyn2")
    _, p_token = register(pair.pocket.base_url, "mediapocket2")
    data = os.urandom(3 * 1024 * 1024 + 11)
    mxc = _upload(pair.pocket.base_url, p_token, data, "application/octet-stream")
    r = _media(pair.synapse.base_url, s_token, "download", mxc)
    assert r.status_code == 200, r.text[:500] + "\n".join(x[-4000:] for x in _logs(pair))
    assert r.content == data
    png_mxc = _upload(pair.pocket.base_url, p_token, _png(800, 600), "image/png")
    _thumbnail_ok(_media(pair.synapse.base_url, s_token, "thumbnail", png_mxc, width="64", height="64",
                         method="crop"), *_logs(pair))


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def test_a_20_mb_remote_download_keeps_pocketserver_memory_flat(pair: Pair) -> None:
    """Copying a 20 MB file from Synapse and serving it streams: pocketserver's peak RSS
    (VmHWM, reset first) rises by much less than the file's size."""
    import os

    _, s_token = register(pair.synapse.base_url, "mediabig")
    _, p_token = register(pair.pocket.base_url, "mediabigp")
    data = os.urandom(20 * 1024 * 1024)
    mxc = _upload(pair.synapse.base_url, s_token, data, "application/octet-stream")
    pid = pair.pocket.proc.pid
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before = _status_kb(pid, "VmRSS")
    server, media_id = mxc[len("mxc://"):].split("/")
    got = 0
    digest = hashlib.sha256()
    started = time.monotonic()
    with httpx.stream(
        "GET", f"{pair.pocket.base_url}/_matrix/client/v1/media/download/{server}/{media_id}",
        headers={"Authorization": f"Bearer {p_token}"}, timeout=300,
    ) as r:
        assert r.status_code == 200
        for piece in r.iter_bytes():
            got += len(piece)
            digest.update(piece)
    assert got == len(data) and digest.digest() == hashlib.sha256(data).digest()
    elapsed = time.monotonic() - started
    peak = _status_kb(pid, "VmHWM")
    rise_mb = (peak - before) / 1024
    print(f"\n20 MB from Synapse through pocketserver: {elapsed:.1f} s; pocketserver RSS "
          f"{before / 1024:.1f} MB before, peak {peak / 1024:.1f} MB (+{rise_mb:.1f} MB)")
    assert rise_mb < 16, f"peak RSS rose by {rise_mb:.1f} MB for a 20 MB file"
    # Serving: Synapse copies a 20 MB file of ours over federation.
    ours = _upload(pair.pocket.base_url, p_token, data[::-1], "application/octet-stream")
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    before = _status_kb(pid, "VmRSS")
    started = time.monotonic()
    r = _media(pair.synapse.base_url, s_token, "download", ours)
    elapsed = time.monotonic() - started
    assert r.status_code == 200 and r.content == data[::-1]
    peak = _status_kb(pid, "VmHWM")
    rise_mb = (peak - before) / 1024
    print(f"20 MB from pocketserver through Synapse: {elapsed:.1f} s; pocketserver RSS "
          f"{before / 1024:.1f} MB before, peak {peak / 1024:.1f} MB (+{rise_mb:.1f} MB)")
    assert rise_mb < 16, f"peak RSS rose by {rise_mb:.1f} MB serving a 20 MB file"


def test_nio_encrypted_conversation_across_servers(pair: Pair, tmp_path: Path) -> None:
    import asyncio

    asyncio.run(nio_conversation(
        pair, tmp_path, synapse_hosts=False, names=("nioalice", "niobob"),
        texts=("secret from pocketserver 🔐", "secret from Synapse ✓"),
    ))


def test_zz_messages_sent_while_synapse_is_down_arrive_in_order(pair: Pair, hosted: Hosted) -> None:
    """Recovery (last in the module: it restarts Synapse): our sender keeps what Synapse
    could not take and sends it, in order, once Synapse is back."""
    h = hosted
    p = pair.pocket.base_url
    h.bob_sync.once(0)
    pair.synapse.stop()
    texts = [f"while you were away {i}" for i in range(8)]
    for text in texts:
        _send(p, h.alice_token, h.room_id, text)  # our users keep talking
    restart_federating_synapse(pair.synapse)
    bob_sync = Syncer(pair.synapse.base_url, h.bob_token)
    bob_sync.since = h.bob_sync.since
    bob_sync.wait(lambda sy: all(t in sy.bodies(h.room_id) for t in texts), "the messages sent while down", *_logs(pair))
    assert [b for b in bob_sync.bodies(h.room_id) if b in texts] == texts
