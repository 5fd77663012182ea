"""Profiles across servers through the client API, between two pocketservers on loopback,
and the federation routes that need no signature (/version, the notary)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import trio

from pocketserver.protocol.signing import decode_verify_key_base64, verify_json
from pocketserver.server import RunningServer
from tests.api.helpers import auth_headers, register
from tests.federation.servers import start_federating_server


@pytest.fixture
async def pair(nursery: trio.Nursery, tmp_path: Path) -> tuple[RunningServer, RunningServer]:
    a = await start_federating_server(nursery, tmp_path / "a")
    b = await start_federating_server(nursery, tmp_path / "b")
    return a, b


async def test_a_client_reads_a_remote_profile(pair: tuple[RunningServer, RunningServer]) -> None:
    a, b = pair
    async with httpx.AsyncClient(base_url=b.urls[0]) as hb, httpx.AsyncClient(base_url=a.urls[0]) as ha:
        bob, token, _ = await register(hb, "bob")
        for field, value in (("displayname", "Bob B"), ("avatar_url", "mxc://b/avatar")):
            r = await hb.put(f"/_matrix/client/v3/profile/{quote(bob)}/{field}", json={field: value},
                             headers=auth_headers(token))
            assert r.status_code == 200
        r = await ha.get(f"/_matrix/client/v3/profile/{quote(bob)}")
        assert r.status_code == 200, r.text
        assert r.json() == {"displayname": "Bob B", "avatar_url": "mxc://b/avatar"}
        r = await ha.get(f"/_matrix/client/v3/profile/{quote(bob)}/avatar_url")
        assert r.json() == {"avatar_url": "mxc://b/avatar"}
        r = await ha.get(f"/_matrix/client/v3/profile/{quote(bob)}/m.tz")
        assert r.status_code == 404 and r.json()["errcode"] == "M_NOT_FOUND"
        b_name = b.services.config.server_name
        r = await ha.get(f"/_matrix/client/v3/profile/{quote('@nobody:' + b_name)}")
        assert r.status_code == 404 and r.json()["errcode"] == "M_NOT_FOUND"
        # A server that cannot be reached: an upstream error, not a 500.
        r = await ha.get(f"/_matrix/client/v3/profile/{quote('@x:localhost:1')}")
        assert r.status_code == 502 and r.json()["errcode"] == "M_UNKNOWN"


async def test_version_and_notary(pair: tuple[RunningServer, RunningServer]) -> None:
    a, b = pair
    b_name = b.services.config.server_name
    a_name = a.services.config.server_name
    async with httpx.AsyncClient(base_url=a.urls[0]) as ha:
        r = await ha.get("/_matrix/federation/v1/version")
        assert r.json() == {"server": {"name": "pocketserver", "version": "0.1.0"}}
        r = await ha.post("/_matrix/key/v2/query", json={"server_keys": {b_name: {}, a_name: {}}})
        assert r.status_code == 200, r.text
        by_name = {k["server_name"]: k for k in r.json()["server_keys"]}
        assert set(by_name) == {a_name, b_name}
        a_key = a.services.signing_key
        for served in by_name.values():
            verify_json(served, a_name, a_key.key_id, a_key.verify_key)
        b_served = by_name[b_name]
        ((b_key_id, entry),) = b_served["verify_keys"].items()
        verify_json(b_served, b_name, b_key_id, decode_verify_key_base64(entry["key"]))
        r = await ha.get(f"/_matrix/key/v2/query/{b_name}", params={"minimum_valid_until_ts": "1"})
        assert [k["server_name"] for k in r.json()["server_keys"]] == [b_name]
        # The older form with a key ID (servers still send it).
        r = await ha.get(f"/_matrix/key/v2/query/{b_name}/{b_key_id}")
        assert [k["server_name"] for k in r.json()["server_keys"]] == [b_name]
        # Unreachable servers are left out; malformed queries are refused.
        r = await ha.post("/_matrix/key/v2/query", json={"server_keys": {"localhost:1": {}}})
        assert r.json() == {"server_keys": []}
        for bad in ({}, {"server_keys": []}, {"server_keys": {b_name: []}},
                    {"server_keys": {b_name: {"ed25519:x": {"minimum_valid_until_ts": "soon"}}}}):
            r = await ha.post("/_matrix/key/v2/query", json=bad)
            assert r.status_code == 400 and r.json()["errcode"] == "M_BAD_JSON", (bad, r.text)
        r = await ha.post("/_matrix/key/v2/query", content=b"nope")
        assert r.status_code == 400 and r.json()["errcode"] == "M_NOT_JSON"
        r = await ha.get("/_matrix/key/v2/query/not%20a%20name")
        assert r.status_code == 400 and r.json()["errcode"] == "M_INVALID_PARAM"
