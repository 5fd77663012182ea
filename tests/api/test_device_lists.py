"""device_lists.changed in /sync: how other people's clients learn to encrypt for a new
device and stop encrypting for a deleted one."""

from __future__ import annotations

import httpx

from tests.api.e2ee_helpers import FakeDevice
from tests.api.helpers import V3, auth_headers, create_room, join, login, register, sync


async def _changed(http: httpx.AsyncClient, token: str, since: str) -> tuple[list[str], str]:
    out = await sync(http, token, since=since, timeout=0)
    return out.get("device_lists", {}).get("changed", []), out["next_batch"]


async def test_login_rename_and_delete_reach_room_members(http: httpx.AsyncClient) -> None:
    alice, atok, adev = await register(http, "dl_alice")
    bob, btok, _ = await register(http, "dl_bob")
    outsider, otok, _ = await register(http, "dl_outsider")
    room = await create_room(http, atok)
    r = await http.post(f"{V3}/rooms/{room}/invite", json={"user_id": bob}, headers=auth_headers(atok))
    assert r.status_code == 200, r.text
    await join(http, btok, room)
    since = (await sync(http, btok))["next_batch"]
    osince = (await sync(http, otok))["next_batch"]

    # A new login: Bob's client must re-query Alice's devices.
    session = await login(http, "dl_alice", device_id="PHONE")
    changed, since = await _changed(http, btok, since)
    assert alice in changed
    # ... and the keys it then uploads.
    phone = FakeDevice(alice, "PHONE", str(session["access_token"]))
    await phone.upload(http, otks=1)
    changed, since = await _changed(http, btok, since)
    assert alice in changed

    # A renamed device.
    r = await http.put(f"{V3}/devices/PHONE", json={"display_name": "Alice's phone"}, headers=auth_headers(atok))
    assert r.status_code == 200, r.text
    changed, since = await _changed(http, btok, since)
    assert alice in changed

    # A deleted device.
    r = await http.delete(f"{V3}/devices/PHONE", headers=auth_headers(atok))
    assert r.status_code == 401
    r = await http.request(
        "DELETE",
        f"{V3}/devices/PHONE",
        json={
            "auth": {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": "dl_alice"},
                "password": "pw-dl_alice",
                "session": r.json()["session"],
            }
        },
        headers=auth_headers(atok),
    )
    assert r.status_code == 200, r.text
    changed, since = await _changed(http, btok, since)
    assert alice in changed
    r = await http.post(f"{V3}/keys/query", json={"device_keys": {alice: []}}, headers=auth_headers(btok))
    assert "PHONE" not in r.json()["device_keys"].get(alice, {})

    # Someone who shares no room with Alice hears nothing of it.
    changed, _ = await _changed(http, otok, osince)
    assert alice not in changed
    assert outsider not in changed
    del adev


async def test_an_invited_user_is_news_to_the_room(http: httpx.AsyncClient) -> None:
    # The inviter's client may share the room's keys with an invitee before they join
    # (history sharing), so it must learn to query the invitee's devices.
    alice, atok, _ = await register(http, "dl_inviter")
    bob, _, _ = await register(http, "dl_invitee")
    room = await create_room(http, atok)
    since = (await sync(http, atok))["next_batch"]
    r = await http.post(f"{V3}/rooms/{room}/invite", json={"user_id": bob}, headers=auth_headers(atok))
    assert r.status_code == 200, r.text
    changed, _ = await _changed(http, atok, since)
    assert bob in changed


async def test_device_lists_holds_only_the_lists_with_someone_in_them(http: httpx.AsyncClient) -> None:
    """Both lists are optional: an incremental sync with no device news has no
    ``device_lists``, and one where somebody only left has ``left`` and no ``changed``
    (a client, or SyTest, may take a present ``changed`` as news to look through)."""
    alice, atok, _ = await register(http, "dl_stayer")
    bob, btok, _ = await register(http, "dl_leaver")
    room = await create_room(http, atok, preset="public_chat")
    await join(http, btok, room)
    since = (await sync(http, atok))["next_batch"]
    await http.put(f"{V3}/rooms/{room}/send/m.room.message/t1", json={"msgtype": "m.text", "body": "hi"},
                   headers=auth_headers(atok))
    out = await sync(http, atok, since=since, timeout=0)
    assert out["rooms"]["join"][room]["timeline"]["events"] and "device_lists" not in out
    r = await http.post(f"{V3}/rooms/{room}/leave", json={}, headers=auth_headers(btok))
    assert r.status_code == 200, r.text
    out = await sync(http, atok, since=out["next_batch"], timeout=0)
    assert out["device_lists"] == {"left": [bob]}
    del alice
