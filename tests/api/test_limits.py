"""The caps of pocketserver/limits.py over HTTP: for each store a user writes, a write at
the cap is accepted, one byte or one entry beyond is refused with M_TOO_LARGE (the
spec's M_PROFILE_TOO_LARGE for a profile) and nothing of it is stored; request bodies
past their limit are refused before they are read.

Count and total caps are lowered with monkeypatch (the server runs in-process and reads
``limits`` at call time); single-entry sizes are tested at their real values.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import httpx
import pytest

from pocketserver import limits
from pocketserver.server import RunningServer
from tests.api.e2ee_helpers import FakeDevice, sign
from tests.api.helpers import V3, auth_headers, register
from tests.api.test_key_backup import ALGO, K, V, key, new_backup
from tests.api.test_push import pusher_body

ROOM = "!room:test.local"
PUSH_URL = "https://push.example.org/_matrix/push/v1/notify"


def size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


def padded(n: int, key: str = "v", **rest: Any) -> dict[str, Any]:
    """An object of exactly ``n`` bytes of compact JSON (``rest`` included)."""
    base = {**rest, key: ""}
    return {**rest, key: "x" * (n - size(base))}


def too_large(r: httpx.Response, errcode: str = "M_TOO_LARGE") -> bool:
    return r.status_code in (400, 413) and r.json().get("errcode") == errcode


async def test_account_data_entry_and_type_caps(http: httpx.AsyncClient) -> None:
    uid, tok, _ = await register(http)
    h = auth_headers(tok)
    for path in (f"{V3}/user/{uid}/account_data/org.example.a", f"{V3}/user/{uid}/rooms/{ROOM}/account_data/org.example.a"):
        at_cap = padded(limits.MAX_ACCOUNT_DATA_BYTES)
        assert (await http.put(path, json=at_cap, headers=h)).status_code == 200
        r = await http.put(path, json=padded(limits.MAX_ACCOUNT_DATA_BYTES + 1), headers=h)
        assert too_large(r) and r.status_code == 413, r.text
        assert (await http.get(path, headers=h)).json() == at_cap
        # The case: a 2 MB body.
        r = await http.put(path, json=padded(2_000_000), headers=h)
        assert too_large(r), r.text
        assert (await http.get(path, headers=h)).json() == at_cap
    ok_type = "t" * limits.MAX_ACCOUNT_DATA_TYPE_BYTES
    assert (await http.put(f"{V3}/user/{uid}/account_data/{ok_type}", json={}, headers=h)).status_code == 200
    r = await http.put(f"{V3}/user/{uid}/account_data/{ok_type}t", json={}, headers=h)
    assert too_large(r)
    assert (await http.get(f"{V3}/user/{uid}/account_data/{ok_type}t", headers=h)).status_code == 404


async def test_account_data_total_per_user(http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    uid, tok, _ = await register(http)
    h = auth_headers(tok)
    # Each entry counts content + type + room ID: "org.example.N" is 13 bytes, global.
    monkeypatch.setattr(limits, "MAX_ACCOUNT_DATA_TOTAL", 3 * (13 + 100))
    for i in range(3):
        r = await http.put(f"{V3}/user/{uid}/account_data/org.example.{i}", json=padded(100), headers=h)
        assert r.status_code == 200, r.text
    r = await http.put(f"{V3}/user/{uid}/account_data/org.example.3", json={}, headers=h)
    assert too_large(r)
    assert (await http.get(f"{V3}/user/{uid}/account_data/org.example.3", headers=h)).status_code == 404
    r = await http.put(f"{V3}/user/{uid}/account_data/org.example.0", json=padded(101), headers=h)
    assert too_large(r)
    # Shrinking is always allowed, and makes room again.
    r = await http.put(f"{V3}/user/{uid}/account_data/org.example.0", json=padded(90), headers=h)
    assert r.status_code == 200
    r = await http.put(f"{V3}/user/{uid}/account_data/org.example.1", json=padded(110), headers=h)
    assert r.status_code == 200
    # Another user has a budget of their own.
    other, otok, _ = await register(http)
    r = await http.put(f"{V3}/user/{other}/account_data/org.example.0", json=padded(100), headers=auth_headers(otok))
    assert r.status_code == 200


async def test_tags_per_room(http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    uid, tok, _ = await register(http)
    h = auth_headers(tok)
    monkeypatch.setattr(limits, "MAX_TAGS_PER_ROOM", 3)
    base = f"{V3}/user/{uid}/rooms/{ROOM}/tags"
    for t in ("u.a", "u.b", "u.c"):
        assert (await http.put(f"{base}/{t}", json={}, headers=h)).status_code == 200
    r = await http.put(f"{base}/u.d", json={}, headers=h)
    assert too_large(r)
    assert (await http.put(f"{base}/u.a", json={"order": 0.5}, headers=h)).status_code == 200
    assert (await http.get(base, headers=h)).json() == {"tags": {"u.a": {"order": 0.5}, "u.b": {}, "u.c": {}}}
    r = await http.put(f"{base}/{'t' * (limits.MAX_ACCOUNT_DATA_TYPE_BYTES + 1)}", json={}, headers=h)
    assert too_large(r)


async def test_filters(http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    uid, tok, _ = await register(http)
    h = auth_headers(tok)
    url = f"{V3}/user/{uid}/filter"
    at_cap = padded(limits.MAX_FILTER_BYTES, "event_fields")
    at_cap["event_fields"] = [at_cap["event_fields"][2:]]  # ["..."] is 2 bytes more than "..."
    assert size(at_cap) == limits.MAX_FILTER_BYTES
    r = await http.post(url, json=at_cap, headers=h)
    assert r.status_code == 200, r.text
    big = {"event_fields": [at_cap["event_fields"][0] + "x"]}
    assert too_large(await http.post(url, json=big, headers=h))
    monkeypatch.setattr(limits, "MAX_FILTERS", 3)
    ids = [(await http.post(url, json={"event_fields": [f"f{i}"]}, headers=h)).json()["filter_id"] for i in range(2)]
    # The same filter again is the same filter, not a new one.
    again = await http.post(url, json={"event_fields": ["f0"]}, headers=h)
    assert again.status_code == 200 and again.json()["filter_id"] == ids[0]
    r = await http.post(url, json={"event_fields": ["f9"]}, headers=h)
    assert too_large(r)
    last = str(int(max(ids)) + 1)
    assert (await http.get(f"{url}/{last}", headers=h)).status_code == 404


async def test_profile_and_device_names(http: httpx.AsyncClient) -> None:
    uid, tok, dev = await register(http)
    h = auth_headers(tok)
    name = "n" * limits.MAX_DISPLAYNAME_CHARS
    assert (await http.put(f"{V3}/profile/{uid}/displayname", json={"displayname": name}, headers=h)).status_code == 200
    r = await http.put(f"{V3}/profile/{uid}/displayname", json={"displayname": name + "n"}, headers=h)
    assert too_large(r)
    assert (await http.get(f"{V3}/profile/{uid}/displayname", headers=h)).json() == {"displayname": name}
    # The whole profile: 64 KiB of JSON (bytes, so a two-byte character counts twice).
    profile = (await http.get(f"{V3}/profile/{uid}", headers=h)).json()
    room = limits.MAX_PROFILE_BYTES - size({**profile, "org.example.big": ""})
    value = "é" * (room // 2) + "x" * (room % 2)
    r = await http.put(f"{V3}/profile/{uid}/org.example.big", json={"org.example.big": value}, headers=h)
    assert r.status_code == 200, r.text
    r = await http.put(f"{V3}/profile/{uid}/org.example.big", json={"org.example.big": value + "x"}, headers=h)
    assert too_large(r, "M_PROFILE_TOO_LARGE")
    assert (await http.get(f"{V3}/profile/{uid}/org.example.big", headers=h)).json() == {"org.example.big": value}

    device_name = "d" * limits.MAX_DEVICE_NAME_CHARS
    assert (await http.put(f"{V3}/devices/{dev}", json={"display_name": device_name}, headers=h)).status_code == 200
    r = await http.put(f"{V3}/devices/{dev}", json={"display_name": device_name + "d"}, headers=h)
    assert too_large(r)
    assert (await http.get(f"{V3}/devices/{dev}", headers=h)).json()["display_name"] == device_name
    r = await http.post(f"{V3}/login", json={
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": uid},
        "password": f"pw-{uid[1:].split(':')[0]}", "initial_device_display_name": device_name + "d",
    })  # fmt: skip
    assert too_large(r)
    assert len((await http.get(f"{V3}/devices", headers=h)).json()["devices"]) == 1


async def test_push_rules(http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    _, tok, _ = await register(http)
    h = auth_headers(tok)
    base = f"{V3}/pushrules/global"
    conditions = [{"kind": "event_match", "key": "content.body", "pattern": "p" * 1000} for _ in range(10)]
    rule = {"actions": ["notify"], "conditions": conditions}
    monkeypatch.setattr(limits, "MAX_PUSH_RULE_BYTES", size(rule))
    assert (await http.put(f"{base}/override/big", json=rule, headers=h)).status_code == 200
    conditions[0] = {**conditions[0], "pattern": "p" * 1001}
    r = await http.put(f"{base}/override/bigger", json=rule, headers=h)
    assert too_large(r)
    assert (await http.get(f"{base}/override/bigger", headers=h)).status_code == 404
    monkeypatch.setattr(limits, "MAX_PUSH_RULES", 3)
    for word in ("apple", "pear"):
        r = await http.put(f"{base}/content/{word}", json={"actions": ["notify"], "pattern": word}, headers=h)
        assert r.status_code == 200, r.text
    r = await http.put(f"{base}/content/plum", json={"actions": ["notify"], "pattern": "plum"}, headers=h)
    assert too_large(r)
    assert (await http.get(f"{base}/content/plum", headers=h)).status_code == 404
    # Changing a rule the user has is not a new one.
    r = await http.put(f"{base}/content/apple", json={"actions": [], "pattern": "apples"}, headers=h)
    assert r.status_code == 200
    assert (await http.delete(f"{base}/content/pear", headers=h)).status_code == 200
    r = await http.put(f"{base}/content/plum", json={"actions": ["notify"], "pattern": "plum"}, headers=h)
    assert r.status_code == 200


async def test_pushers(http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    _, tok, _ = await register(http)
    h = auth_headers(tok)
    monkeypatch.setattr(limits, "MAX_PUSHERS", 2)
    for key_ in ("k1", "k2"):
        r = await http.post(f"{V3}/pushers/set", json=pusher_body(PUSH_URL, key_), headers=h)
        assert r.status_code == 200, r.text
    r = await http.post(f"{V3}/pushers/set", json=pusher_body(PUSH_URL, "k3"), headers=h)
    assert too_large(r)
    r = await http.post(f"{V3}/pushers/set", json=pusher_body(PUSH_URL, "k1", lang="fr"), headers=h)
    assert r.status_code == 200
    pushers = (await http.get(f"{V3}/pushers", headers=h)).json()["pushers"]
    assert sorted((p["pushkey"], p["lang"]) for p in pushers) == [("k1", "fr"), ("k2", "en")]
    monkeypatch.setattr(limits, "MAX_PUSHERS", 10)
    body = pusher_body(PUSH_URL, "k4")
    info = {k: body[k] for k in ("pushkey", "kind", "app_id", "app_display_name", "device_display_name", "lang", "data")}
    body["data"] = {**body["data"], "pad": "x" * (limits.MAX_PUSHER_BYTES - size(info) - len(',"pad":""'))}
    assert (await http.post(f"{V3}/pushers/set", json=body, headers=h)).status_code == 200
    body["pushkey"], body["data"]["pad"] = "k5", body["data"]["pad"] + "x"
    assert too_large(await http.post(f"{V3}/pushers/set", json=body, headers=h))
    assert len((await http.get(f"{V3}/pushers", headers=h)).json()["pushers"]) == 3


async def test_key_backup(http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    _, tok, _ = await register(http)
    h = auth_headers(tok)
    monkeypatch.setattr(limits, "MAX_BACKUP_VERSIONS", 2)
    first = await new_backup(http, tok)
    version = await new_backup(http, tok)
    r = await http.post(V, json={"algorithm": ALGO, "auth_data": {"public_key": "p"}}, headers=h)
    assert too_large(r)
    assert (await http.get(V, headers=h)).json()["version"] == version
    assert (await http.delete(f"{V}/{first}", headers=h)).status_code == 200
    version = await new_backup(http, tok)
    r = await http.post(V, json={"algorithm": ALGO, "auth_data": padded(limits.MAX_BACKUP_AUTH_DATA_BYTES + 1)}, headers=h)
    assert too_large(r)

    monkeypatch.setattr(limits, "MAX_BACKUP_SESSIONS", 3)
    sessions = {f"s{i}": key() for i in range(3)}
    r = await http.put(K, params={"version": version}, json={"rooms": {ROOM: {"sessions": sessions}}}, headers=h)
    assert r.status_code == 200 and r.json()["count"] == 3
    # One better copy of a known session and one new session: all or nothing.
    more = {"s0": key(verified=True), "s3": key()}
    r = await http.put(K, params={"version": version}, json={"rooms": {ROOM: {"sessions": more}}}, headers=h)
    assert too_large(r)
    stored = (await http.get(K, params={"version": version}, headers=h)).json()["rooms"][ROOM]["sessions"]
    assert sorted(stored) == ["s0", "s1", "s2"] and stored["s0"]["is_verified"] is False
    r = await http.put(f"{K}/{ROOM}/s0", params={"version": version}, json=key(verified=True), headers=h)
    assert r.status_code == 200 and r.json()["count"] == 3

    one = key()
    one["session_data"] = padded(limits.MAX_BACKUP_SESSION_BYTES - (size(one) - size(one["session_data"])), "ciphertext")
    assert size(one) == limits.MAX_BACKUP_SESSION_BYTES
    r = await http.put(f"{K}/{ROOM}/s1", params={"version": version}, json=one, headers=h)
    assert r.status_code == 200, r.text
    one["session_data"]["ciphertext"] += "x"
    r = await http.put(f"{K}/{ROOM}/s2", params={"version": version}, json=one, headers=h)
    assert too_large(r)


async def test_to_device_message_at_the_cap(http: httpx.AsyncClient) -> None:
    bob, btok, bdev = await register(http)
    _, atok, _ = await register(http)
    h = auth_headers(atok)
    at_cap = padded(limits.MAX_TO_DEVICE_CONTENT)
    r = await http.put(f"{V3}/sendToDevice/m.test/t1", json={"messages": {bob: {bdev: at_cap}}}, headers=h)
    assert r.status_code == 200, r.text
    over = padded(limits.MAX_TO_DEVICE_CONTENT + 1)
    r = await http.put(f"{V3}/sendToDevice/m.test/t2", json={"messages": {bob: {bdev: over}}}, headers=h)
    assert too_large(r)
    got = (await http.get(f"{V3}/sync", headers=auth_headers(btok))).json()["to_device"]["events"]
    assert [e["content"] for e in got] == [at_cap]


def _raw_put(url: str, path: str, token: str, head: str, pieces: list[bytes]) -> bytes:
    """One HTTP/1.1 request on a plain socket; the status line of the answer."""
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(
            f"PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\n{head}\r\n".encode()
        )
        try:
            for piece in pieces:
                s.sendall(piece)
        except OSError:
            pass  # the server answered and closed without reading the rest: as meant
        answer = b""
        while b"\r\n\r\n" not in answer:
            got = s.recv(65536)
            if not got:
                break
            answer += got
    return answer.split(b"\r\n", 1)[0]


async def test_request_bodies_over_the_limit(
    http: httpx.AsyncClient, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import trio

    uid, tok, _ = await register(http)
    h = auth_headers(tok)
    monkeypatch.setattr(limits, "MAX_JSON_BODY", 200_000)
    path = f"{V3}/user/{uid}/account_data/org.example.body"
    # At the limit: accepted.
    body = json.dumps(padded(200_000), separators=(",", ":")).encode()
    assert len(body) == 200_000
    r = await http.put(path, content=body, headers={**h, "Content-Type": "application/json"})
    assert r.status_code == 200
    # Declared over the limit: answered before the body is read.
    r = await http.put(path, content=body + b" ", headers={**h, "Content-Type": "application/json"})
    assert too_large(r) and r.status_code == 413
    # Undeclared (chunked), over the limit: refused once it passes it.
    piece = b" " * 65536
    chunks = [b"%x\r\n%s\r\n" % (len(piece), piece)] * 8 + [b"0\r\n\r\n"]
    status = await trio.to_thread.run_sync(
        _raw_put, server.urls[0], path, tok, "Transfer-Encoding: chunked\r\n", chunks
    )
    assert status.startswith(b"HTTP/1.1 413")
    declared = b"Content-Length: %d\r\n" % (50 * 1024 * 1024)
    status = await trio.to_thread.run_sync(
        _raw_put, server.urls[0], path, tok, declared.decode(), [b"{" + b" " * 1_000_000]
    )
    assert status.startswith(b"HTTP/1.1 413")
    assert (await http.get(path, headers=h)).json() == padded(200_000)
    # The key backup's bulk upload has a limit of its own, above the general one.
    version = await new_backup(http, tok)
    sessions = {f"s{i:04}": key(tag="k" * 100) for i in range(600)}
    payload = {"rooms": {ROOM: {"sessions": sessions}}}
    assert len(json.dumps(payload)) > 200_000
    r = await http.put(K, params={"version": version}, json=payload, headers=h)
    assert r.status_code == 200 and r.json()["count"] == 600


async def test_device_and_one_time_keys(http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    uid, tok, dev = await register(http)
    alice = FakeDevice(uid, dev, tok)
    h = alice.headers()
    upload = f"{V3}/keys/upload"
    dk = alice.device_keys()
    dk["unsigned"] = padded(limits.MAX_DEVICE_KEYS_BYTES - size({**dk, "unsigned": {}}) + 2, "pad")
    assert size(dk) == limits.MAX_DEVICE_KEYS_BYTES
    assert (await http.post(upload, json={"device_keys": dk}, headers=h)).status_code == 200
    dk["unsigned"]["pad"] += "x"
    assert too_large(await http.post(upload, json={"device_keys": dk}, headers=h))

    name, _ = alice.signed_key()
    obj = sign({"key": "k", "pad": ""}, uid, alice.ed_key_id, alice.ed)
    obj = sign({"key": "k", "pad": "x" * (limits.MAX_ONE_TIME_KEY_BYTES - len(name) - size(obj))}, uid, alice.ed_key_id, alice.ed)
    assert len(name) + size(obj) == limits.MAX_ONE_TIME_KEY_BYTES
    r = await http.post(upload, json={"one_time_keys": {name: obj}}, headers=h)
    assert r.status_code == 200, r.text
    name2, _ = alice.signed_key()
    obj = sign({"key": "k", "pad": obj["pad"] + "x"}, uid, alice.ed_key_id, alice.ed)
    assert too_large(await http.post(upload, json={"one_time_keys": {name2: obj}}, headers=h))

    # The count is per device over all algorithms (a made-up algorithm is no way round it).
    monkeypatch.setattr(limits, "MAX_ONE_TIME_KEYS", 4)
    r = await http.post(upload, json={"one_time_keys": alice.one_time_keys(3)}, headers=h)
    assert r.json()["one_time_key_counts"] == {"signed_curve25519": 4}
    r = await http.post(upload, json={"one_time_keys": {"org.example.alg:A1": "x"}}, headers=h)
    assert too_large(r)
    r = await http.post(upload, json={}, headers=h)
    assert r.json()["one_time_key_counts"] == {"signed_curve25519": 4}
    monkeypatch.setattr(limits, "MAX_FALLBACK_KEYS", 1)
    r = await http.post(upload, json={"fallback_keys": dict([alice.signed_key(fallback=True)])}, headers=h)
    assert r.status_code == 200
    name, fb = alice.signed_key(fallback=True)
    r = await http.post(upload, json={"fallback_keys": {name.replace("signed_", "org.example."): fb}}, headers=h)
    assert too_large(r)
    # Replacing the fallback key of an algorithm the device has is not a new one.
    r = await http.post(upload, json={"fallback_keys": dict([alice.signed_key(fallback=True)])}, headers=h)
    assert r.status_code == 200, r.text
