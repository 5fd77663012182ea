"""Server-side key backup over HTTP: versions, keys, the replacement rules, etag/count."""

from __future__ import annotations

from typing import Any

import httpx

from tests.api.helpers import register

V = "/_matrix/client/v3/room_keys/version"
K = "/_matrix/client/v3/room_keys/keys"
ALGO = "m.megolm_backup.v1.curve25519-aes-sha2"
ROOM = "!room:test.local"


def h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def key(fmi: int = 0, fc: int = 0, verified: bool = False, tag: str = "a") -> dict[str, Any]:
    return {
        "first_message_index": fmi,
        "forwarded_count": fc,
        "is_verified": verified,
        "session_data": {"ephemeral": tag, "ciphertext": tag * 4, "mac": tag},
    }


async def new_backup(http: httpx.AsyncClient, tok: str, public_key: str = "pub") -> str:
    r = await http.post(V, json={"algorithm": ALGO, "auth_data": {"public_key": public_key}}, headers=h(tok))
    assert r.status_code == 200, r.text
    return str(r.json()["version"])


async def test_version_lifecycle(http: httpx.AsyncClient) -> None:
    _, tok, _ = await register(http)
    r = await http.get(V, headers=h(tok))
    assert (r.status_code, r.json()["errcode"]) == (404, "M_NOT_FOUND")
    v1 = await new_backup(http, tok, "one")
    v2 = await new_backup(http, tok, "two")
    assert int(v2) > int(v1)
    r = await http.get(V, headers=h(tok))
    assert r.json() == {"algorithm": ALGO, "auth_data": {"public_key": "two"}, "count": 0,
                        "etag": r.json()["etag"], "version": v2}
    r = await http.get(f"{V}/{v1}", headers=h(tok))
    assert r.json()["auth_data"] == {"public_key": "one"}
    # Only auth_data can change; the algorithm and version must match.
    r = await http.put(f"{V}/{v2}", json={"algorithm": ALGO, "auth_data": {"public_key": "two",
                       "signatures": {}}, "version": v2}, headers=h(tok))
    assert r.status_code == 200
    r = await http.get(f"{V}/{v2}", headers=h(tok))
    assert r.json()["auth_data"] == {"public_key": "two", "signatures": {}}
    r = await http.put(f"{V}/{v2}", json={"algorithm": "other", "auth_data": {}}, headers=h(tok))
    assert (r.status_code, r.json()["errcode"]) == (400, "M_INVALID_PARAM")
    r = await http.put(f"{V}/{v2}", json={"algorithm": ALGO, "auth_data": {}, "version": v1}, headers=h(tok))
    assert (r.status_code, r.json()["errcode"]) == (400, "M_INVALID_PARAM")
    r = await http.put(f"{V}/999", json={"algorithm": ALGO, "auth_data": {}}, headers=h(tok))
    assert r.status_code == 404
    # Deleting the newest makes the previous one current again; numbers are not reused.
    assert (await http.delete(f"{V}/{v2}", headers=h(tok))).status_code == 200
    r = await http.get(V, headers=h(tok))
    assert r.json()["version"] == v1
    assert (await http.delete(f"{V}/{v2}", headers=h(tok))).status_code == 404
    assert (await http.get(f"{V}/{v2}", headers=h(tok))).status_code == 404
    assert (await http.get(f"{V}/not-a-number", headers=h(tok))).status_code == 404
    v3 = await new_backup(http, tok)
    assert int(v3) > int(v2)


async def test_backups_are_per_user(http: httpx.AsyncClient) -> None:
    _, atok, _ = await register(http)
    _, btok, _ = await register(http)
    v = await new_backup(http, atok)
    assert (await http.get(f"{V}/{v}", headers=h(btok))).status_code == 404
    r = await http.put(f"{K}/{ROOM}/s1", params={"version": v}, json=key(), headers=h(btok))
    assert r.status_code == 404


async def test_keys_round_trip_and_replacement_rules(http: httpx.AsyncClient) -> None:
    _, tok, _ = await register(http)
    v = await new_backup(http, tok)
    r = await http.put(f"{K}/{ROOM}/s1", params={"version": v}, json=key(5, 1, tag="first"), headers=h(tok))
    assert r.status_code == 200
    etag1, count1 = r.json()["etag"], r.json()["count"]
    assert count1 == 1

    async def stored() -> dict[str, Any]:
        r = await http.get(f"{K}/{ROOM}/s1", params={"version": v}, headers=h(tok))
        assert r.status_code == 200
        return dict(r.json())

    # Worse copies never replace a better one; each better one does.
    steps = [
        (key(6, 0, tag="higher-index"), "first"),
        (key(5, 2, tag="more-forwarded"), "first"),
        (key(5, 1, tag="tie"), "first"),
        (key(5, 0, tag="less-forwarded"), "less-forwarded"),
        (key(1, 9, tag="lower-index"), "lower-index"),
        (key(9, 9, verified=True, tag="verified"), "verified"),
        (key(0, 0, verified=False, tag="unverified"), "verified"),
    ]
    for body, expect in steps:
        r = await http.put(f"{K}/{ROOM}/s1", params={"version": v}, json=body, headers=h(tok))
        assert r.status_code == 200
        assert (await stored())["session_data"]["ephemeral"] == expect, body
    assert r.json()["count"] == 1
    assert r.json()["etag"] != etag1

    # An upload that changes nothing keeps the etag.
    r = await http.get(V, headers=h(tok))
    etag = r.json()["etag"]
    r = await http.put(f"{K}/{ROOM}/s1", params={"version": v}, json=key(9, 9, tag="worse"), headers=h(tok))
    assert r.json()["etag"] == etag

    # Several rooms at once; then read all, one room, one session.
    body = {"rooms": {"!b:test.local": {"sessions": {"s2": key(), "s3": key(tag="c")}},
                      ROOM: {"sessions": {"s4": key(tag="d")}}}}
    r = await http.put(K, params={"version": v}, json=body, headers=h(tok))
    assert r.json()["count"] == 4
    r = await http.get(K, params={"version": v}, headers=h(tok))
    rooms = r.json()["rooms"]
    assert set(rooms) == {ROOM, "!b:test.local"}
    assert set(rooms[ROOM]["sessions"]) == {"s1", "s4"}
    assert rooms["!b:test.local"]["sessions"]["s3"] == key(tag="c")
    r = await http.get(f"{K}/!b:test.local", params={"version": v}, headers=h(tok))
    assert set(r.json()["sessions"]) == {"s2", "s3"}
    r = await http.get(f"{K}/!empty:test.local", params={"version": v}, headers=h(tok))
    assert r.json() == {"sessions": {}}
    r = await http.put(f"{K}/!c:test.local", params={"version": v},
                       json={"sessions": {"s5": key()}}, headers=h(tok))
    assert r.json()["count"] == 5

    # Deleting: one session, one room, everything.
    r = await http.delete(f"{K}/{ROOM}/s4", params={"version": v}, headers=h(tok))
    assert r.json()["count"] == 4
    r = await http.delete(f"{K}/!b:test.local", params={"version": v}, headers=h(tok))
    assert r.json()["count"] == 2
    assert (await http.get(f"{K}/{ROOM}/s4", params={"version": v}, headers=h(tok))).status_code == 404
    r = await http.delete(K, params={"version": v}, headers=h(tok))
    assert r.json()["count"] == 0
    r = await http.get(V, headers=h(tok))
    assert r.json()["count"] == 0


async def test_keys_only_go_to_the_current_version(http: httpx.AsyncClient) -> None:
    _, tok, _ = await register(http)
    r = await http.put(f"{K}/{ROOM}/s1", params={"version": "1"}, json=key(), headers=h(tok))
    assert (r.status_code, r.json()["errcode"]) == (404, "M_NOT_FOUND")
    old = await new_backup(http, tok)
    new = await new_backup(http, tok)
    r = await http.put(f"{K}/{ROOM}/s1", params={"version": old}, json=key(), headers=h(tok))
    assert r.status_code == 403
    assert r.json()["errcode"] == "M_WRONG_ROOM_KEYS_VERSION"
    assert r.json()["current_version"] == new
    r = await http.put(f"{K}/{ROOM}/s1", json=key(), headers=h(tok))
    assert (r.status_code, r.json()["errcode"]) == (400, "M_MISSING_PARAM")
    # Deleting the version deletes its keys.
    r = await http.put(f"{K}/{ROOM}/s1", params={"version": new}, json=key(), headers=h(tok))
    assert r.status_code == 200
    assert (await http.delete(f"{V}/{new}", headers=h(tok))).status_code == 200
    r = await http.get(f"{K}/{ROOM}/s1", params={"version": new}, headers=h(tok))
    assert r.status_code == 404


async def test_bad_backup_input(http: httpx.AsyncClient) -> None:
    _, tok, _ = await register(http)
    for body, errcode in [
        ({"auth_data": {}}, "M_MISSING_PARAM"),
        ({"algorithm": ALGO}, "M_MISSING_PARAM"),
        ({"algorithm": 5, "auth_data": {}}, "M_BAD_JSON"),
        ({"algorithm": ALGO, "auth_data": []}, "M_BAD_JSON"),
    ]:
        r = await http.post(V, json=body, headers=h(tok))
        assert (r.status_code, r.json()["errcode"]) == (400, errcode), body
    v = await new_backup(http, tok)
    for body in [
        {"first_message_index": -1, "forwarded_count": 0, "is_verified": False, "session_data": {}},
        {"first_message_index": 0, "forwarded_count": 0, "is_verified": "no", "session_data": {}},
        {"first_message_index": 0, "forwarded_count": 0, "is_verified": False, "session_data": "x"},
        {"first_message_index": 0.5, "forwarded_count": 0, "is_verified": False, "session_data": {}},
    ]:
        r = await http.put(f"{K}/{ROOM}/s1", params={"version": v}, json=body, headers=h(tok))
        assert (r.status_code, r.json()["errcode"]) == (400, "M_BAD_JSON"), body
    r = await http.put(K, params={"version": v}, json={"rooms": {ROOM: {"nosessions": 1}}}, headers=h(tok))
    assert r.json()["errcode"] == "M_BAD_JSON"
    assert (await http.get(V)).status_code == 401


async def test_more_than_ten_versions_newest_is_current(http: httpx.AsyncClient) -> None:
    _, tok, _ = await register(http)
    versions = [await new_backup(http, tok, f"k{i}") for i in range(12)]
    assert len(set(versions)) == 12
    r = await http.get(V, headers=h(tok))
    assert r.json()["version"] == versions[-1] and r.json()["auth_data"] == {"public_key": "k11"}
