"""Registration with tokens, closed registration, guests and rate limits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from pocketserver.config import Config
from pocketserver.server import RunningServer
from pocketserver.storage import accounts
from tests.api.helpers import auth_headers
from tests.conftest import make_config

V3 = "/_matrix/client/v3"
VALIDITY = "/_matrix/client/v1/register/m.login.registration_token/validity"


@pytest.fixture
def config_extra() -> dict[str, Any] | None:
    return None


@pytest.fixture
def config(tmp_path: Path, config_extra: dict[str, Any] | None) -> Config:
    return make_config(tmp_path, config_extra)


@pytest.mark.parametrize("config_extra", [{"registration": {"mode": "token"}}])
async def test_registration_token(http: httpx.AsyncClient, server: RunningServer) -> None:
    await server.services.db.write(accounts.insert_registration_token, "tok-1", 1, None)
    r = await http.get(VALIDITY, params={"token": "tok-1"})
    assert r.json() == {"valid": True}
    r = await http.get(VALIDITY, params={"token": "nope"})
    assert r.json() == {"valid": False}

    body = {"username": "ann", "password": "pw"}
    r = await http.post(f"{V3}/register", json=body)
    assert r.status_code == 401
    assert r.json()["flows"] == [{"stages": ["m.login.registration_token"]}]
    session = r.json()["session"]
    # Dummy auth is not a way around the token.
    r = await http.post(f"{V3}/register", json={**body, "auth": {"type": "m.login.dummy", "session": session}})
    assert r.status_code == 401 and r.json()["errcode"] == "M_FORBIDDEN"
    r = await http.post(
        f"{V3}/register",
        json={**body, "auth": {"type": "m.login.registration_token", "token": "bad", "session": session}},
    )
    assert r.status_code == 401 and r.json()["errcode"] == "M_FORBIDDEN"
    r = await http.post(
        f"{V3}/register",
        json={**body, "auth": {"type": "m.login.registration_token", "token": "tok-1", "session": session}},
    )
    assert r.status_code == 200, r.text
    tok = await server.services.db.read(accounts.get_registration_token, "tok-1")
    assert tok is not None and (tok.pending, tok.completed) == (0, 1)
    # One use only: now invalid.
    r = await http.get(VALIDITY, params={"token": "tok-1"})
    assert r.json() == {"valid": False}
    r = await http.post(
        f"{V3}/register",
        json={"username": "ben", "password": "pw",
              "auth": {"type": "m.login.registration_token", "token": "tok-1"}},
    )
    assert r.status_code == 401 and r.json()["errcode"] == "M_FORBIDDEN"


@pytest.mark.parametrize("config_extra", [{"registration": {"mode": "closed"}}])
async def test_registration_closed(http: httpx.AsyncClient) -> None:
    r = await http.post(f"{V3}/register", json={"username": "x", "password": "pw"})
    assert r.status_code == 403 and r.json()["errcode"] == "M_FORBIDDEN"
    r = await http.post(f"{V3}/register?kind=guest", json={})
    assert r.status_code == 403
    r = await http.get(VALIDITY, params={"token": "x"})
    assert r.status_code == 403


@pytest.mark.parametrize("config_extra", [{"registration": {"allow_guests": True}}])
async def test_guests(http: httpx.AsyncClient) -> None:
    r = await http.post(
        f"{V3}/register?kind=guest",
        json={"username": "ignored", "initial_device_display_name": "Guest phone"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert not body["user_id"].startswith("@ignored")
    r = await http.get(f"{V3}/account/whoami", headers=auth_headers(body["access_token"]))
    assert r.json()["is_guest"] is True
    # Guests may not change passwords (or use other non-guest endpoints).
    r = await http.post(f"{V3}/account/password", json={"new_password": "x"},
                        headers=auth_headers(body["access_token"]))
    assert r.status_code == 403 and r.json()["errcode"] == "M_GUEST_ACCESS_FORBIDDEN"


async def test_guests_disabled_by_default(http: httpx.AsyncClient) -> None:
    r = await http.post(f"{V3}/register?kind=guest", json={})
    assert r.status_code == 403 and r.json()["errcode"] == "M_FORBIDDEN"


@pytest.mark.parametrize("config_extra", [{"rate_limits": {"enabled": True, "login": {"per_second": 0.01, "burst": 3}}}])
async def test_login_rate_limited(http: httpx.AsyncClient) -> None:
    statuses = []
    for _ in range(5):
        r = await http.post(
            f"{V3}/login",
            json={"type": "m.login.password", "user": "ghost", "password": "x"},
        )
        statuses.append(r.status_code)
    assert statuses[:3] == [403, 403, 403]
    assert statuses[-1] == 429
    assert r.json()["errcode"] == "M_LIMIT_EXCEEDED" and r.json()["retry_after_ms"] > 0


@pytest.mark.parametrize("config_extra", [{"registration": {"allow_guests": True}}])
async def test_guest_upgrades_to_full_account(http: httpx.AsyncClient) -> None:
    r = await http.post(f"{V3}/register?kind=guest", json={})
    guest = r.json()
    local = guest["user_id"][1:].split(":")[0]
    r = await http.post(f"{V3}/register?kind=guest", json={})
    other_guest = r.json()
    body = {"username": local, "password": "pw-upgraded"}
    # Another guest's token cannot claim this account.
    r = await http.post(
        f"{V3}/register", json={**body, "guest_access_token": other_guest["access_token"],
                                "auth": {"type": "m.login.dummy"}})
    assert r.status_code == 403 and r.json()["errcode"] == "M_FORBIDDEN"
    r = await http.post(
        f"{V3}/register", json={**body, "guest_access_token": guest["access_token"],
                                "auth": {"type": "m.login.dummy"}})
    assert r.status_code == 200, r.text
    assert r.json()["user_id"] == guest["user_id"]
    r = await http.get(f"{V3}/account/whoami", headers=auth_headers(r.json()["access_token"]))
    assert r.json()["is_guest"] is False
    # A full account now: it logs in with its new password, and its name is taken.
    r = await http.post(f"{V3}/login", json={"type": "m.login.password", "user": local,
                                              "password": "pw-upgraded"})
    assert r.status_code == 200, r.text
    r = await http.post(f"{V3}/register", json=body)
    assert r.status_code == 400 and r.json()["errcode"] == "M_USER_IN_USE"


@pytest.mark.parametrize("config_extra", [{"registration": {"allow_guests": True}}])
async def test_guests_join_only_can_join_rooms_and_leave_when_revoked(
    http: httpx.AsyncClient,
) -> None:
    r = await http.post(f"{V3}/register", json={"username": "host", "password": "pw",
                                                 "auth": {"type": "m.login.dummy"}})
    h = auth_headers(r.json()["access_token"])
    r = await http.post(f"{V3}/register?kind=guest", json={})
    guest, gh = r.json()["user_id"], auth_headers(r.json()["access_token"])
    r = await http.post(f"{V3}/createRoom", json={"preset": "public_chat"}, headers=h)
    room = r.json()["room_id"]
    r = await http.post(f"{V3}/join/{room}", json={}, headers=gh)
    assert r.status_code == 403 and r.json()["errcode"] == "M_GUEST_ACCESS_FORBIDDEN"
    r = await http.put(f"{V3}/rooms/{room}/state/m.room.guest_access",
                       json={"guest_access": "can_join"}, headers=h)
    assert r.status_code == 200
    r = await http.post(f"{V3}/rooms/{room}/join", json={}, headers=gh)
    assert r.status_code == 200, r.text
    r = await http.put(f"{V3}/rooms/{room}/send/m.room.message/g1",
                       json={"msgtype": "m.text", "body": "hi from a guest"}, headers=gh)
    assert r.status_code == 200
    r = await http.put(f"{V3}/rooms/{room}/state/m.room.guest_access",
                       json={"guest_access": "forbidden"}, headers=h)
    assert r.status_code == 200
    r = await http.get(f"{V3}/rooms/{room}/state/m.room.member/{guest}", headers=h)
    assert r.json()["membership"] == "leave"


@pytest.mark.parametrize("config_extra", [{"registration": {"allow_guests": True}}])
async def test_guest_has_a_display_name_and_can_change_it(http: httpx.AsyncClient) -> None:
    """A guest starts with its localpart as display name, like any account, and a
    new one it sets shows in the rooms it is in."""
    r = await http.post(f"{V3}/register", json={"username": "hostess", "password": "pw",
                                                 "auth": {"type": "m.login.dummy"}})
    h = auth_headers(r.json()["access_token"])
    r = await http.post(f"{V3}/register?kind=guest", json={})
    guest, gh = r.json()["user_id"], auth_headers(r.json()["access_token"])
    r = await http.get(f"{V3}/profile/{guest}/displayname", headers=gh)
    assert r.status_code == 200, r.text
    assert r.json() == {"displayname": guest[1:].split(":")[0]}
    r = await http.post(f"{V3}/createRoom", json={"preset": "public_chat",
                        "initial_state": [{"type": "m.room.guest_access", "state_key": "",
                                           "content": {"guest_access": "can_join"}}]}, headers=h)
    room = r.json()["room_id"]
    r = await http.post(f"{V3}/rooms/{room}/join", json={}, headers=gh)
    assert r.status_code == 200, r.text
    r = await http.put(f"{V3}/profile/{guest}/displayname", json={"displayname": "creeper"}, headers=gh)
    assert r.status_code == 200, r.text
    r = await http.get(f"{V3}/profile/{guest}/displayname", headers=gh)
    assert r.json() == {"displayname": "creeper"}
    r = await http.get(f"{V3}/rooms/{room}/state/m.room.member/{guest}", headers=h)
    assert r.json()["displayname"] == "creeper"
