"""Helpers every API test uses: register a user over HTTP, and auth headers."""

from __future__ import annotations

import itertools
from typing import Any

import httpx

_counter = itertools.count()
_txn = itertools.count()
V3 = "/_matrix/client/v3"


def auth_headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def register(
    http: httpx.AsyncClient,
    name: str | None = None,
    password: str | None = None,
    *,
    device_id: str | None = None,
) -> tuple[str, str, str]:
    """Register ``name`` (a fresh one when None) with m.login.dummy; return
    (user_id, access_token, device_id). The password defaults to ``pw-<name>``."""
    if name is None:
        name = f"user{next(_counter)}"
    body: dict[str, object] = {
        "username": name,
        "password": password if password is not None else f"pw-{name}",
        "auth": {"type": "m.login.dummy"},
    }
    if device_id is not None:
        body["device_id"] = device_id
    r = await http.post("/_matrix/client/v3/register", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    return out["user_id"], out["access_token"], out["device_id"]


async def login(
    http: httpx.AsyncClient, name: str, password: str | None = None, **extra: object
) -> dict[str, object]:
    """Log in with m.login.password; return the response body."""
    r = await http.post(
        "/_matrix/client/v3/login",
        json={
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": name},
            "password": password if password is not None else f"pw-{name}",
            **extra,
        },
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


async def create_room(http: httpx.AsyncClient, token: str, **body: Any) -> str:
    r = await http.post(f"{V3}/createRoom", json=body, headers=auth_headers(token))
    assert r.status_code == 200, r.text
    return str(r.json()["room_id"])


async def join(http: httpx.AsyncClient, token: str, room: str) -> None:
    r = await http.post(f"{V3}/join/{room}", json={}, headers=auth_headers(token))
    assert r.status_code == 200, r.text


async def send(
    http: httpx.AsyncClient,
    token: str,
    room_id: str,
    content: dict[str, Any],
    etype: str = "m.room.message",
) -> str:
    """Send one event with a fresh transaction ID; return its event ID."""
    r = await http.put(
        f"{V3}/rooms/{room_id}/send/{etype}/t{next(_txn)}", json=content, headers=auth_headers(token)
    )
    assert r.status_code == 200, r.text
    return str(r.json()["event_id"])


async def sync(http: httpx.AsyncClient, token: str, **params: Any) -> dict[str, Any]:
    r = await http.get(f"{V3}/sync", params=params, headers=auth_headers(token))
    assert r.status_code == 200, r.text
    return dict(r.json())
