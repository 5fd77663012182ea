"""Account locking and suspension by a server admin (v1.18 /admin/lock, /admin/suspend),
and user reports (v1.14 POST /users/{userId}/report), over HTTP."""

from __future__ import annotations

from typing import Any

import httpx

from pocketserver.server import RunningServer
from pocketserver.storage import rooms as room_store
from tests.api.helpers import V3, auth_headers, create_room, join, register, send, sync

V1 = "/_matrix/client/v1"


async def _admin(server: RunningServer, http: httpx.AsyncClient, name: str) -> tuple[str, str]:
    """A user made a server admin (what `pocketserver register-user --admin` stores)."""
    uid, token, _dev = await register(http, name)
    await server.services.db.write(
        lambda c: c.execute("UPDATE users SET is_admin = 1 WHERE user_id = ?", (uid,))
    )
    return uid, token


async def _set(http: httpx.AsyncClient, token: str, what: str, uid: str, value: Any) -> httpx.Response:
    flag = {"lock": "locked", "suspend": "suspended"}[what]
    return await http.put(f"{V1}/admin/{what}/{uid}", json={flag: value}, headers=auth_headers(token))


async def test_only_admins_moderate_and_only_local_active_non_admins(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    _admin_id, admin = await _admin(server, http, "root")
    other_admin_id, _ = await _admin(server, http, "root2")
    uid, token, _ = await register(http, "eve")
    nobody = "@nobody:" + uid.split(":", 1)[1]
    for what, flag in (("lock", "locked"), ("suspend", "suspended")):
        # Not an admin: refused before any lookup, also for users that do not exist.
        for target in (uid, nobody):
            r = await http.get(f"{V1}/admin/{what}/{target}", headers=auth_headers(token))
            assert (r.status_code, r.json()["errcode"]) == (403, "M_FORBIDDEN")
            r = await _set(http, token, what, target, True)
            assert (r.status_code, r.json()["errcode"]) == (403, "M_FORBIDDEN")
        r = await http.get(f"{V1}/admin/{what}/{uid}", headers=auth_headers(admin))
        assert r.status_code == 200 and r.json() == {flag: False}
        r = await http.get(f"{V1}/admin/{what}/{nobody}", headers=auth_headers(admin))
        assert (r.status_code, r.json()["errcode"]) == (404, "M_NOT_FOUND")
        r = await http.get(f"{V1}/admin/{what}/@someone:elsewhere.example", headers=auth_headers(admin))
        assert (r.status_code, r.json()["errcode"]) == (400, "M_INVALID_PARAM")
        r = await _set(http, admin, what, other_admin_id, True)
        assert (r.status_code, r.json()["errcode"]) == (403, "M_FORBIDDEN")
        r = await _set(http, admin, what, uid, "yes")
        assert (r.status_code, r.json()["errcode"]) == (400, "M_BAD_JSON")
        r = await http.put(f"{V1}/admin/{what}/{uid}", json={}, headers=auth_headers(admin))
        assert (r.status_code, r.json()["errcode"]) == (400, "M_MISSING_PARAM")
    # The capability is there for admins only.
    r = await http.get(f"{V3}/capabilities", headers=auth_headers(admin))
    assert r.json()["capabilities"]["m.account_moderation"] == {"suspend": True, "lock": True}
    r = await http.get(f"{V3}/capabilities", headers=auth_headers(token))
    assert "m.account_moderation" not in r.json()["capabilities"]


async def test_locked_user_is_soft_logged_out_until_unlocked(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    _aid, admin = await _admin(server, http, "lockadmin")
    uid, token, _ = await register(http, "lena")
    _uid2, token2, _ = await register(http, "lena2")
    r = await _set(http, admin, "lock", uid, True)
    assert r.status_code == 200 and r.json() == {"locked": True}
    r = await http.get(f"{V1}/admin/lock/{uid}", headers=auth_headers(admin))
    assert r.json() == {"locked": True}
    for method, path in (("GET", f"{V3}/sync"), ("GET", f"{V3}/account/whoami"), ("POST", f"{V3}/createRoom")):
        r = await http.request(method, path, json={} if method == "POST" else None, headers=auth_headers(token))
        assert r.status_code == 401, path
        assert r.json()["errcode"] == "M_USER_LOCKED" and r.json()["soft_logout"] is True
    # Nor can a new session be made with the password.
    r = await http.post(
        f"{V3}/login",
        json={"type": "m.login.password", "identifier": {"type": "m.id.user", "user": uid}, "password": "pw-lena"},
    )
    assert (r.status_code, r.json()["errcode"]) == (401, "M_USER_LOCKED")
    # The session is kept: unlocking gives it back.
    r = await _set(http, admin, "lock", uid, False)
    assert r.json() == {"locked": False}
    r = await http.get(f"{V3}/account/whoami", headers=auth_headers(token))
    assert r.status_code == 200 and r.json()["user_id"] == uid
    # Locked again, the user may still log out (the only endpoints left to them).
    await _set(http, admin, "lock", uid, True)
    r = await http.post(f"{V3}/logout", json={}, headers=auth_headers(token))
    assert r.status_code == 200
    await _set(http, admin, "lock", uid, False)
    r = await http.get(f"{V3}/account/whoami", headers=auth_headers(token))
    assert r.json()["errcode"] == "M_UNKNOWN_TOKEN"
    r = await http.get(f"{V3}/account/whoami", headers=auth_headers(token2))
    assert r.status_code == 200  # someone else was never affected


async def test_suspended_user_reads_but_cannot_act(server: RunningServer, http: httpx.AsyncClient) -> None:
    _aid, admin = await _admin(server, http, "susadmin")
    uid, token, _ = await register(http, "sam")
    _friend_id, friend, _ = await register(http, "sue")
    stranger, _stranger_token, _ = await register(http, "stan")
    room = await create_room(http, friend, preset="public_chat")
    await join(http, token, room)
    own = await send(http, token, room, {"msgtype": "m.text", "body": "before"})
    others = await send(http, friend, room, {"msgtype": "m.text", "body": "friend's"})
    other_room = await create_room(http, friend, preset="public_chat")

    r = await _set(http, admin, "suspend", uid, True)
    assert r.status_code == 200 and r.json() == {"suspended": True}
    r = await http.get(f"{V1}/admin/suspend/{uid}", headers=auth_headers(admin))
    assert r.json() == {"suspended": True}
    await send(http, friend, room, {"msgtype": "m.text", "body": "while suspended"})
    h = auth_headers(token)
    refused = [
        ("PUT", f"{V3}/rooms/{room}/send/m.room.message/s1", {"msgtype": "m.text", "body": "no"}),
        ("PUT", f"{V3}/rooms/{room}/state/m.room.topic", {"topic": "no"}),
        ("POST", f"{V3}/join/{other_room}", {}),
        ("POST", f"{V3}/knock/{other_room}", {}),
        ("POST", f"{V3}/rooms/{room}/invite", {"user_id": stranger}),
        ("POST", f"{V3}/createRoom", {}),
        ("PUT", f"{V3}/profile/{uid}/displayname", {"displayname": "new name"}),
        ("PUT", f"{V3}/rooms/{room}/redact/{others}/r1", {}),
    ]
    for method, path, body in refused:
        r = await http.request(method, path, json=body, headers=h)
        assert (r.status_code, r.json()["errcode"]) == (403, "M_USER_SUSPENDED"), (path, r.text)
    # Reading still works: sync and /messages show the friend's new message.
    body = await sync(http, token)
    timeline = body["rooms"]["join"][room]["timeline"]["events"]
    assert "while suspended" in [e["content"].get("body") for e in timeline]
    r = await http.get(f"{V3}/rooms/{room}/messages", params={"dir": "b"}, headers=h)
    assert r.status_code == 200 and any(e["content"].get("body") == "while suspended" for e in r.json()["chunk"])
    # Their own events can be redacted, and they can leave.
    r = await http.put(f"{V3}/rooms/{room}/redact/{own}/r2", json={}, headers=h)
    assert r.status_code == 200, r.text
    r = await http.post(f"{V3}/rooms/{room}/leave", json={}, headers=h)
    assert r.status_code == 200, r.text
    # Lifted: they act again.
    r = await _set(http, admin, "suspend", uid, False)
    assert r.json() == {"suspended": False}
    r = await http.post(f"{V3}/join/{other_room}", json={}, headers=h)
    assert r.status_code == 200, r.text


async def test_user_report_is_stored(server: RunningServer, http: httpx.AsyncClient) -> None:
    uid, token, _ = await register(http, "rita")
    bad, _bad_token, _ = await register(http, "troll")
    h = auth_headers(token)
    r = await http.post(f"{V3}/users/{bad}/report", json={"reason": "spam in my DMs"}, headers=h)
    assert r.status_code == 200 and r.json() == {}
    reports = await server.services.db.read(room_store.get_user_reports, bad)
    assert [(who, why) for who, why, _ts in reports] == [(uid, "spam in my DMs")]
    nobody = "@nobody:" + uid.split(":", 1)[1]
    r = await http.post(f"{V3}/users/{nobody}/report", json={"reason": "x"}, headers=h)
    assert (r.status_code, r.json()["errcode"]) == (404, "M_NOT_FOUND")
    r = await http.post(f"{V3}/users/{bad}/report", json={}, headers=h)
    assert (r.status_code, r.json()["errcode"]) == (400, "M_MISSING_PARAM")
    r = await http.post(f"{V3}/users/{bad}/report", json={"reason": 5}, headers=h)
    assert (r.status_code, r.json()["errcode"]) == (400, "M_BAD_JSON")
    r = await http.post(f"{V3}/users/{bad}/report", json={"reason": "x"})
    assert r.status_code == 401
    assert len(await server.services.db.read(room_store.get_user_reports, bad)) == 1
