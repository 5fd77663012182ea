"""Inbound X-Matrix request authentication, over HTTP: a real origin server whose keys
are fetched, and every way of getting the header wrong refused with the spec's 401."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import trio

from pocketserver.errors import MatrixError
from pocketserver.protocol.request_auth import format_header, signing_object
from pocketserver.protocol.signing import SigningKey, sign_json, signing_key_from_seed
from pocketserver.server import RunningServer
from tests.api.helpers import auth_headers, create_room, register
from tests.federation.servers import start_federating_server

PROFILE = "/_matrix/federation/v1/query/profile"


class Pair:
    def __init__(self, origin: RunningServer, target: RunningServer, user: str) -> None:
        self.origin, self.target, self.user = origin, target, user
        self.origin_name = str(origin.services.config.server_name)
        self.target_name = str(target.services.config.server_name)
        self.key: SigningKey = origin.services.signing_key

    def uri(self, user: str | None = None) -> str:
        return f"{PROFILE}?user_id={quote(user or self.user)}"

    def header(
        self, method: str = "GET", uri: str | None = None, content: Any = None, *,
        origin: str | None = None, destination: str | None = None, key: SigningKey | None = None,
    ) -> str:
        origin = origin or self.origin_name
        destination = destination or self.target_name
        key = key or self.key
        signed = sign_json(signing_object(method, uri or self.uri(), origin, destination, content), origin, key)
        return format_header(origin, destination, key.key_id, signed["signatures"][origin][key.key_id])

    async def get(self, headers: list[tuple[str, str]], uri: str | None = None, body: bytes | None = None) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.target.urls[0]) as http:
            return await http.request("GET", uri or self.uri(), headers=headers, content=body)


@pytest.fixture
async def pair(nursery: trio.Nursery, tmp_path: Path) -> Pair:
    origin = await start_federating_server(nursery, tmp_path / "origin")
    target = await start_federating_server(nursery, tmp_path / "target")
    async with httpx.AsyncClient(base_url=target.urls[0]) as http:
        user, token, _ = await register(http, "bob")
        r = await http.put(
            f"/_matrix/client/v3/profile/{quote(user)}/displayname",
            json={"displayname": "Bob"}, headers=auth_headers(token),
        )
        assert r.status_code == 200
    return Pair(origin, target, user)


def assert_unauthorized(r: httpx.Response) -> None:
    assert r.status_code == 401, r.text
    assert r.json()["errcode"] == "M_UNAUTHORIZED"


async def test_a_correctly_signed_request_is_answered(pair: Pair) -> None:
    r = await pair.get([("Authorization", pair.header())])
    assert r.status_code == 200, r.text
    assert r.json() == {"displayname": "Bob"}


async def test_without_destination_for_older_servers(pair: Pair) -> None:
    header = pair.header().replace(f',destination="{pair.target_name}"', "")
    assert "destination" not in header
    r = await pair.get([("Authorization", header)])
    assert r.status_code == 200, r.text


async def test_missing_or_malformed_header(pair: Pair) -> None:
    assert_unauthorized(await pair.get([]))
    assert_unauthorized(await pair.get([("Authorization", "Bearer abc")]))
    assert_unauthorized(await pair.get([("Authorization", 'X-Matrix origin="x",key=')]))


async def test_forged_signatures_are_refused(pair: Pair) -> None:
    good = pair.header()
    sig = good.rsplit('sig="', 1)[1].rstrip('"')
    flipped = ("A" if sig[0] != "A" else "B") + sig[1:]
    assert_unauthorized(await pair.get([("Authorization", good.replace(sig, flipped))]))
    assert_unauthorized(await pair.get([("Authorization", good.replace(sig, "not base64!"))]))
    # Signed by another key under the origin's key ID.
    impostor = signing_key_from_seed(b"\x07" * 32, pair.key.key_id.split(":", 1)[1])
    assert_unauthorized(await pair.get([("Authorization", pair.header(key=impostor))]))


async def test_a_key_the_origin_does_not_have(pair: Pair) -> None:
    unknown = signing_key_from_seed(b"\x08" * 32, "unknown")
    assert_unauthorized(await pair.get([("Authorization", pair.header(key=unknown))]))


async def test_claiming_another_origin(pair: Pair) -> None:
    # The origin's key, but the name of a server that does not exist (its keys cannot be had).
    r = await pair.get([("Authorization", pair.header(origin="localhost:1"))])
    assert_unauthorized(r)
    # A target's name as origin: its key is not the one that signed.
    r = await pair.get([("Authorization", pair.header(origin=pair.target_name))])
    assert_unauthorized(r)


async def test_an_origin_that_is_not_a_server_name_is_bad_input(pair: Pair) -> None:
    r = await pair.get([("Authorization", pair.header(origin="localhost:http"))])
    assert (r.status_code, r.json()["errcode"]) == (400, "M_INVALID_PARAM")


async def test_wrong_destination(pair: Pair) -> None:
    r = await pair.get([("Authorization", pair.header(destination="elsewhere.org"))])
    assert_unauthorized(r)
    assert "elsewhere.org" in r.json()["error"]


async def test_a_header_replayed_onto_another_uri_or_body(pair: Pair) -> None:
    header = pair.header()
    other = pair.uri(f"@alice:{pair.target_name}")
    assert_unauthorized(await pair.get([("Authorization", header)], uri=other))
    assert_unauthorized(await pair.get([("Authorization", header)], uri=pair.uri() + "&field=displayname"))
    # Signed with a body: the same body passes, another one does not, nor none.
    content = {"a": 1}
    with_body = pair.header(content=content)
    ok = await pair.get([("Authorization", with_body)], body=json.dumps(content).encode())
    assert ok.status_code == 200, ok.text
    assert_unauthorized(await pair.get([("Authorization", with_body)], body=b'{"a": 2}'))
    assert_unauthorized(await pair.get([("Authorization", with_body)]))
    # Nor onto another method.
    async with httpx.AsyncClient(base_url=pair.target.urls[0]) as http:
        r = await http.get(pair.uri(), headers={"Authorization": pair.header(method="PUT")})
    assert_unauthorized(r)


async def test_several_headers_one_valid_is_enough(pair: Pair) -> None:
    unknown = signing_key_from_seed(b"\x08" * 32, "unknown")
    r = await pair.get([("Authorization", pair.header(key=unknown)), ("Authorization", pair.header())])
    assert r.status_code == 200, r.text
    # Headers naming different origins are refused.
    r = await pair.get([("Authorization", pair.header()), ("Authorization", pair.header(origin="other.org"))])
    assert_unauthorized(r)


async def test_a_body_that_is_not_json(pair: Pair) -> None:
    r = await pair.get([("Authorization", pair.header())], body=b"{nope")
    assert r.status_code == 400 and r.json()["errcode"] == "M_NOT_JSON"


async def test_profile_query_errors(pair: Pair) -> None:
    nobody = f"@nobody:{pair.target_name}"
    r = await pair.get([("Authorization", pair.header(uri=pair.uri(nobody)))], uri=pair.uri(nobody))
    assert r.status_code == 404 and r.json()["errcode"] == "M_NOT_FOUND"
    bad = f"{PROFILE}?user_id={quote(pair.user)}&field=secret"
    r = await pair.get([("Authorization", pair.header(uri=bad))], uri=bad)
    assert r.status_code == 400 and r.json()["errcode"] == "M_INVALID_PARAM"
    missing = PROFILE
    r = await pair.get([("Authorization", pair.header(uri=missing))], uri=missing)
    assert r.status_code == 400 and r.json()["errcode"] == "M_MISSING_PARAM"


async def test_server_acl_check_for_room_routes(pair: Pair) -> None:
    from pocketserver.api.federation.auth import check_server_acl

    async with httpx.AsyncClient(base_url=pair.target.urls[0]) as http:
        _, token, _ = await register(http, "admin")
        room = await create_room(http, token)
        open_room = await create_room(http, token)
        r = await http.put(
            f"/_matrix/client/v3/rooms/{room}/state/m.room.server_acl/",
            json={"allow": ["*"], "deny": ["localhost"], "allow_ip_literals": False},
            headers=auth_headers(token),
        )
        assert r.status_code == 200, r.text
    async with pair.target.app.app_context():
        await check_server_acl(open_room, pair.origin_name)  # no ACL: allowed
        await check_server_acl(room, "good.org:8448")
        for denied in (pair.origin_name, "127.0.0.1:8448"):
            with pytest.raises(MatrixError) as e:
                await check_server_acl(room, denied)
            assert (e.value.status, e.value.errcode) == (403, "M_FORBIDDEN")
