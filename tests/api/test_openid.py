"""OpenID: a token for a third party, exchanged at the federation userinfo endpoint."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import httpx
import trio

from pocketserver.server import run_server
from tests.api.helpers import V3, auth_headers, register
from tests.conftest import make_config

USERINFO = "/_matrix/federation/v1/openid/userinfo"


async def test_a_token_names_its_user_and_nothing_more(http: httpx.AsyncClient) -> None:
    alice, atok, _ = await register(http)
    bob, _, _ = await register(http)
    r = await http.post(f"{V3}/user/{alice}/openid/request_token", json={}, headers=auth_headers(atok))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "Bearer" and body["matrix_server_name"] == "test.local"
    assert isinstance(body["expires_in"], int) and body["expires_in"] > 0
    token = body["access_token"]
    r = await http.get(USERINFO, params={"access_token": token})
    assert r.status_code == 200 and r.json() == {"sub": alice}
    # It is no access token.
    r = await http.get(f"{V3}/account/whoami", headers=auth_headers(token))
    assert r.status_code == 401 and r.json()["errcode"] == "M_UNKNOWN_TOKEN"
    # Only for oneself.
    r = await http.post(f"{V3}/user/{bob}/openid/request_token", json={}, headers=auth_headers(atok))
    assert r.status_code == 403 and r.json()["errcode"] == "M_FORBIDDEN"
    r = await http.post(f"{V3}/user/{alice}/openid/request_token", json={})
    assert r.status_code == 401 and r.json()["errcode"] == "M_MISSING_TOKEN"
    r = await http.post(f"{V3}/user/{alice}/openid/request_token", content=b"[]", headers=auth_headers(atok))
    assert r.status_code == 400 and r.json()["errcode"] == "M_BAD_JSON"
    # Unknown and missing tokens.
    r = await http.get(USERINFO, params={"access_token": "an/invalid/token"})
    assert r.status_code == 401 and r.json()["errcode"] == "M_UNKNOWN_TOKEN"
    r = await http.get(USERINFO)
    assert r.status_code == 401 and r.json()["errcode"] == "M_MISSING_TOKEN"


async def test_userinfo_is_served_on_client_only_and_federation_only_listeners(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    cfg = make_config(
        tmp_path,
        {
            "listeners": [
                {"address": "127.0.0.1", "port": 0, "resources": ["client"]},
                {"address": "127.0.0.1", "port": 0, "resources": ["federation"]},
            ]
        },
    )
    running = await nursery.start(partial(run_server, cfg, out=None, handle_signals=False))
    try:
        client_url, federation_url = running.urls
        async with httpx.AsyncClient(base_url=client_url, timeout=30) as http:
            alice, atok, _ = await register(http)
            r = await http.post(f"{V3}/user/{alice}/openid/request_token", json={}, headers=auth_headers(atok))
            token = r.json()["access_token"]
            r = await http.get(USERINFO, params={"access_token": token})
            assert r.status_code == 200 and r.json() == {"sub": alice}
            # Other federation paths stay off the client listener.
            assert (await http.get("/_matrix/key/v2/server")).status_code == 404
        async with httpx.AsyncClient(base_url=federation_url, timeout=30) as fed:
            r = await fed.get(USERINFO, params={"access_token": token})
            assert r.status_code == 200 and r.json() == {"sub": alice}
            r = await fed.post(f"{V3}/user/{alice}/openid/request_token", json={}, headers=auth_headers(atok))
            assert r.status_code == 404
    finally:
        running.stop.set()
