"""Profiles, account data, tags, filters and presence over HTTP."""

from __future__ import annotations

import httpx

from pocketserver.server import RunningServer
from tests.api.helpers import auth_headers, register

V3 = "/_matrix/client/v3"
ROOM = "!abcdef:test.local"


async def test_profile(http: httpx.AsyncClient, server: RunningServer) -> None:
    changed: list[str] = []

    async def hook(user_id: str) -> None:
        changed.append(user_id)

    server.services.accounts.on_profile_changed.append(hook)
    uid, token, _dev = await register(http, "alice")
    _bob, bob_token, _d = await register(http, "bob")
    h = auth_headers(token)
    r = await http.put(f"{V3}/profile/{uid}/displayname", json={"displayname": "Alice"}, headers=h)
    assert r.status_code == 200
    r = await http.put(
        f"{V3}/profile/{uid}/avatar_url", json={"avatar_url": "mxc://test.local/abc"}, headers=h
    )
    assert r.status_code == 200
    assert changed == [uid, uid]
    r = await http.get(f"{V3}/profile/{uid}", headers=auth_headers(bob_token))
    assert r.json() == {"displayname": "Alice", "avatar_url": "mxc://test.local/abc"}
    r = await http.get(f"{V3}/profile/{uid}/displayname", headers=auth_headers(bob_token))
    assert r.json() == {"displayname": "Alice"}
    # Custom fields and m.tz.
    r = await http.put(f"{V3}/profile/{uid}/m.tz", json={"m.tz": "Europe/Paris"}, headers=h)
    assert r.status_code == 200
    r = await http.put(f"{V3}/profile/{uid}/org.example.x", json={"org.example.x": [1]}, headers=h)
    assert r.status_code == 200
    r = await http.get(f"{V3}/profile/{uid}", headers=h)
    assert r.json()["m.tz"] == "Europe/Paris" and r.json()["org.example.x"] == [1]
    r = await http.delete(f"{V3}/profile/{uid}/m.tz", headers=h)
    assert r.status_code == 200
    r = await http.get(f"{V3}/profile/{uid}/m.tz", headers=h)
    assert r.status_code == 404

    # Errors.
    r = await http.put(f"{V3}/profile/{uid}/displayname", json={"displayname": "X"},
                       headers=auth_headers(bob_token))
    assert r.status_code == 403 and r.json()["errcode"] == "M_FORBIDDEN"
    r = await http.put(f"{V3}/profile/{uid}/displayname", json={"other": "X"}, headers=h)
    assert r.status_code == 400 and r.json()["errcode"] == "M_MISSING_PARAM"
    r = await http.put(f"{V3}/profile/{uid}/displayname", json={"displayname": 3}, headers=h)
    assert r.status_code == 400 and r.json()["errcode"] == "M_BAD_JSON"
    # profile.yaml: "For avatar_url, the value MUST be an MXC URI string" (so SyTest's
    # "avatar_url updates affect room member events", which sets "LemurLover", fails).
    for bad in ("http://x", "LemurLover"):
        r = await http.put(f"{V3}/profile/{uid}/avatar_url", json={"avatar_url": bad}, headers=h)
        assert r.status_code == 400 and r.json()["errcode"] == "M_INVALID_PARAM"
    r = await http.get(f"{V3}/profile/{uid}/avatar_url", headers=h)
    assert r.json() == {"avatar_url": "mxc://test.local/abc"}
    r = await http.put(f"{V3}/profile/{uid}/Bad-Key", json={"Bad-Key": 1}, headers=h)
    assert r.status_code == 400 and r.json()["errcode"] == "M_INVALID_PARAM"
    r = await http.put(
        f"{V3}/profile/{uid}/org.example.big", json={"org.example.big": "x" * 70_000}, headers=h
    )
    assert r.status_code == 400 and r.json()["errcode"] == "M_PROFILE_TOO_LARGE"
    r = await http.get(f"{V3}/profile/@nobody:test.local", headers=h)
    assert r.status_code == 404 and r.json()["errcode"] == "M_NOT_FOUND"


async def test_account_data(http: httpx.AsyncClient, server: RunningServer) -> None:
    uid, token, _dev = await register(http, "carol")
    _bob, bob_token, _d = await register(http, "dave")
    h = auth_headers(token)
    before = server.services.notifier.position
    r = await http.put(f"{V3}/user/{uid}/account_data/org.example.cfg", json={"a": 1}, headers=h)
    assert r.status_code == 200
    assert server.services.notifier.position > before
    r = await http.get(f"{V3}/user/{uid}/account_data/org.example.cfg", headers=h)
    assert r.json() == {"a": 1}
    r = await http.put(f"{V3}/user/{uid}/rooms/{ROOM}/account_data/org.example.r", json={"b": 2}, headers=h)
    assert r.status_code == 200
    r = await http.get(f"{V3}/user/{uid}/rooms/{ROOM}/account_data/org.example.r", headers=h)
    assert r.json() == {"b": 2}
    r = await http.get(f"{V3}/user/{uid}/account_data/org.example.r", headers=h)
    assert r.status_code == 404 and r.json()["errcode"] == "M_NOT_FOUND"

    r = await http.get(f"{V3}/user/{uid}/account_data/org.example.cfg", headers=auth_headers(bob_token))
    assert r.status_code == 403
    r = await http.put(f"{V3}/user/{uid}/account_data/x", json={}, headers=auth_headers(bob_token))
    assert r.status_code == 403
    r = await http.put(f"{V3}/user/{uid}/account_data/x", content=b"[1]", headers=h)
    assert r.status_code == 400 and r.json()["errcode"] == "M_BAD_JSON"
    r = await http.put(f"{V3}/user/{uid}/account_data/m.fully_read", json={}, headers=h)
    assert r.status_code == 405 and r.json()["errcode"] == "M_BAD_JSON"
    r = await http.put(f"{V3}/user/{uid}/rooms/notaroom/account_data/x", json={}, headers=h)
    assert r.status_code == 400 and r.json()["errcode"] == "M_INVALID_PARAM"


async def test_tags(http: httpx.AsyncClient) -> None:
    uid, token, _dev = await register(http, "erin")
    h = auth_headers(token)
    base = f"{V3}/user/{uid}/rooms/{ROOM}/tags"
    assert (await http.get(base, headers=h)).json() == {"tags": {}}
    r = await http.put(f"{base}/m.favourite", json={"order": 0.5}, headers=h)
    assert r.status_code == 200
    r = await http.put(f"{base}/u.work", json={}, headers=h)
    assert (await http.get(base, headers=h)).json() == {
        "tags": {"m.favourite": {"order": 0.5}, "u.work": {}}
    }
    # Tags are the m.tag room account data.
    r = await http.get(f"{V3}/user/{uid}/rooms/{ROOM}/account_data/m.tag", headers=h)
    assert r.json()["tags"]["u.work"] == {}
    r = await http.delete(f"{base}/m.favourite", headers=h)
    assert (await http.get(base, headers=h)).json() == {"tags": {"u.work": {}}}
    r = await http.put(f"{base}/x", json={"order": "high"}, headers=h)
    assert r.status_code == 400


async def test_filters(http: httpx.AsyncClient) -> None:
    uid, token, _dev = await register(http, "fay")
    _o, other, _d = await register(http, "gus")
    h = auth_headers(token)
    f = {"room": {"timeline": {"limit": 10, "types": ["m.room.*"]},
                  "state": {"lazy_load_members": True}}, "presence": {"not_types": ["*"]}}
    r = await http.post(f"{V3}/user/{uid}/filter", json=f, headers=h)
    assert r.status_code == 200
    fid = r.json()["filter_id"]
    assert isinstance(fid, str)
    r = await http.get(f"{V3}/user/{uid}/filter/{fid}", headers=h)
    assert r.json() == f
    r = await http.get(f"{V3}/user/{uid}/filter/999", headers=h)
    assert r.status_code == 404 and r.json()["errcode"] == "M_NOT_FOUND"
    r = await http.get(f"{V3}/user/{uid}/filter/{fid}", headers=auth_headers(other))
    assert r.status_code == 403
    r = await http.post(f"{V3}/user/{uid}/filter", json={"room": {"timeline": {"limit": "x"}}}, headers=h)
    assert r.status_code == 400 and r.json()["errcode"] == "M_BAD_JSON"
    r = await http.post(f"{V3}/user/{uid}/filter", json={"event_format": "xml"}, headers=h)
    assert r.status_code == 400


async def test_presence(http: httpx.AsyncClient) -> None:
    uid, token, _dev = await register(http, "hal")
    _o, other, _d = await register(http, "ida")
    h = auth_headers(token)
    r = await http.get(f"{V3}/presence/{uid}/status", headers=h)
    assert r.json()["presence"] == "offline"
    r = await http.put(
        f"{V3}/presence/{uid}/status", json={"presence": "online", "status_msg": "hi"}, headers=h
    )
    assert r.status_code == 200
    r = await http.get(f"{V3}/presence/{uid}/status", headers=h)
    body = r.json()
    assert body["presence"] == "online" and body["status_msg"] == "hi"
    assert body["currently_active"] is True and body["last_active_ago"] >= 0
    r = await http.put(f"{V3}/presence/{uid}/status", json={"presence": "asleep"}, headers=h)
    assert r.status_code == 400
    r = await http.put(f"{V3}/presence/{uid}/status", json={"presence": "online"},
                       headers=auth_headers(other))
    assert r.status_code == 403
    # No shared room: not visible to others.
    r = await http.get(f"{V3}/presence/{uid}/status", headers=auth_headers(other))
    assert r.status_code == 403
    r = await http.get(f"{V3}/presence/@nobody:test.local/status", headers=h)
    assert r.status_code == 404


async def test_new_account_has_its_localpart_as_display_name(http: httpx.AsyncClient) -> None:
    """As on other servers, clients show 'dana', not '@dana:test.local', for a new user."""
    uid, tok, _ = await register(http, "dana")
    r = await http.get(f"{V3}/profile/{uid}", headers=auth_headers(tok))
    assert r.status_code == 200 and r.json().get("displayname") == "dana"
    r = await http.post(f"{V3}/createRoom", json={}, headers=auth_headers(tok))
    room = r.json()["room_id"]
    r = await http.get(f"{V3}/rooms/{room}/state/m.room.member/{uid}", headers=auth_headers(tok))
    assert r.json()["displayname"] == "dana"


async def test_profile_readable_without_token(http: httpx.AsyncClient) -> None:
    uid, token, _dev = await register(http)
    r = await http.put(f"{V3}/profile/{uid}/displayname", json={"displayname": "Public Pat"},
                       headers=auth_headers(token))
    assert r.status_code == 200
    r = await http.get(f"{V3}/profile/{uid}/displayname")
    assert r.status_code == 200 and r.json() == {"displayname": "Public Pat"}
    r = await http.get(f"{V3}/profile/{uid}")
    assert r.status_code == 200 and r.json()["displayname"] == "Public Pat"
    # Writing still needs the owner's token.
    r = await http.put(f"{V3}/profile/{uid}/displayname", json={"displayname": "X"})
    assert r.status_code == 401 and r.json()["errcode"] == "M_MISSING_TOKEN"
