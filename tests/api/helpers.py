"""Helpers every API test uses: register a user over HTTP, and auth headers."""

from __future__ import annotations

import itertools

import httpx

_counter = itertools.count()


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
