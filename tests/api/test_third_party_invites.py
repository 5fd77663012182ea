"""Third-party invites over HTTP, against a small identity server on loopback (HTTPS,
with the test certificate): invite by e-mail, join with the signed proof."""

from __future__ import annotations

import hashlib
import json
import ssl
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11
import httpx
import pytest
import trio
from signedjson.key import encode_verify_key_base64, generate_signing_key, get_verify_key
from signedjson.sign import sign_json
from unpaddedbase64 import encode_base64

from pocketserver.config import Config
from tests.api.helpers import V3, auth_headers, create_room, register
from tests.conftest import make_config, shared_certificate

ID_TOKEN = "id-access-token"


class IdentityServer:
    """Enough of the identity service API for invites: hash_details, lookup,
    store-invite and pubkey/isvalid. ``bindings`` maps e-mail addresses to user IDs."""

    def __init__(self) -> None:
        self.key = generate_signing_key("0")
        self.public_key = encode_verify_key_base64(get_verify_key(self.key))
        self.revoked: set[str] = set()
        self.bindings: dict[str, str] = {}
        self.stored: list[dict[str, Any]] = []
        self.name = ""
        self.pepper = "matrixrocks"

    def sign(self, mxid: str, sender: str, token: str, key: Any = None) -> dict[str, Any]:
        return sign_json({"mxid": mxid, "sender": sender, "token": token}, self.name, key or self.key)

    def answer(self, method: str, target: str, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
        parts = urlsplit(target)
        if parts.path == "/_matrix/identity/v2/pubkey/isvalid":
            key = parse_qs(parts.query).get("public_key", [""])[0]
            return 200, {"valid": key == self.public_key and key not in self.revoked}
        if headers.get("authorization") != f"Bearer {ID_TOKEN}":
            return 401, {"errcode": "M_UNAUTHORIZED", "error": "token"}
        if parts.path == "/_matrix/identity/v2/hash_details":
            return 200, {"algorithms": ["none", "sha256"], "lookup_pepper": self.pepper}
        if parts.path == "/_matrix/identity/v2/lookup":
            req = json.loads(body)
            assert req["algorithm"] == "sha256" and req["pepper"] == self.pepper
            hashes = {
                encode_base64(hashlib.sha256(f"{a} email {self.pepper}".encode()).digest(), urlsafe=True): m
                for a, m in self.bindings.items()
            }
            return 200, {"mappings": {h: hashes[h] for h in req["addresses"] if h in hashes}}
        if parts.path == "/_matrix/identity/v2/store-invite":
            req = json.loads(body)
            self.stored.append(req)
            url = f"https://{self.name}/_matrix/identity/v2/pubkey/isvalid"
            return 200, {
                "token": f"tok{len(self.stored)}",
                "display_name": "B...@e...",
                "public_keys": [{"public_key": self.public_key, "key_validity_url": url}],
            }
        return 404, {"errcode": "M_UNRECOGNIZED", "error": "no"}

    async def handle(self, stream: trio.abc.Stream) -> None:
        conn = h11.Connection(h11.SERVER)
        body = bytearray()
        method = target = ""
        headers: dict[str, str] = {}
        try:
            async with stream:
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        data = await stream.receive_some(65536)
                        if not data:
                            return
                        conn.receive_data(data)
                    elif isinstance(event, h11.Request):
                        method, target = event.method.decode(), event.target.decode()
                        headers = {k.decode().lower(): v.decode() for k, v in event.headers}
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
                status, answer = self.answer(method, target, headers, bytes(body))
                payload = json.dumps(answer).encode()
                await stream.send_all(conn.send(h11.Response(status_code=status, headers=[
                    ("Content-Type", "application/json"), ("Content-Length", str(len(payload)))])) or b"")
                await stream.send_all(conn.send(h11.Data(data=payload)) or b"")
                await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
        except trio.BrokenResourceError:
            pass


@pytest.fixture
def config(tmp_path: Path) -> Config:
    cert, _ = shared_certificate()
    return make_config(tmp_path, {"federation": {"extra_ca_file": cert, "verify_tls": True,
                                                 "allowed_ip_ranges": ["127.0.0.0/8"]}})


@pytest.fixture
async def ids(nursery: trio.Nursery) -> AsyncIterator[IdentityServer]:
    cert, key = shared_certificate()  # its SAN has 127.0.0.1
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    server = IdentityServer()
    listeners = await nursery.start(partial(trio.serve_ssl_over_tcp, server.handle, 0, tls, host="127.0.0.1"))
    server.name = f"127.0.0.1:{listeners[0].transport_listener.socket.getsockname()[1]}"
    yield server


def invite_body(ids: IdentityServer, address: str, **change: Any) -> dict[str, Any]:
    body = {"id_server": ids.name, "id_access_token": ID_TOKEN, "medium": "email", "address": address}
    body.update(change)
    return body


async def state(http: httpx.AsyncClient, token: str, room: str) -> list[dict[str, Any]]:
    r = await http.get(f"{V3}/rooms/{room}/state", headers=auth_headers(token))
    assert r.status_code == 200, r.text
    return list(r.json())


async def test_invite_by_email_then_join_with_the_signed_proof(http: httpx.AsyncClient, ids: IdentityServer) -> None:
    alice, atok, _ = await register(http)
    bob, btok, _ = await register(http)
    room = await create_room(http, atok, preset="private_chat", name="Lemurs")
    r = await http.post(f"{V3}/rooms/{room}/invite", json=invite_body(ids, "bob@example.org"), headers=auth_headers(atok))
    assert r.status_code == 200, r.text
    assert ids.stored[0]["room_id"] == room and ids.stored[0]["sender"] == alice
    assert ids.stored[0]["room_name"] == "Lemurs"
    [tpi] = [e for e in await state(http, atok, room) if e["type"] == "m.room.third_party_invite"]
    assert tpi["state_key"] == "tok1" and tpi["content"]["public_key"] == ids.public_key
    assert tpi["content"]["display_name"] == "B...@e..."

    # A private room: bob cannot just join, but can with the identity server's proof.
    r = await http.post(f"{V3}/join/{room}", json={}, headers=auth_headers(btok))
    assert r.status_code == 403
    # Signed by another key: refused.
    forged = ids.sign(bob, alice, "tok1", key=generate_signing_key("0"))
    r = await http.post(f"{V3}/join/{room}", json={"third_party_signed": forged}, headers=auth_headers(btok))
    assert r.status_code == 403 and r.json()["errcode"] == "M_FORBIDDEN"
    # Someone else's proof: refused.
    _, ctok, _ = await register(http)
    r = await http.post(f"{V3}/join/{room}", json={"third_party_signed": ids.sign(bob, alice, "tok1")},
                        headers=auth_headers(ctok))
    assert r.status_code == 403
    r = await http.post(f"{V3}/join/{room}", json={"third_party_signed": ids.sign(bob, alice, "tok1")},
                        headers=auth_headers(btok))
    assert r.status_code == 200, r.text
    r = await http.get(f"{V3}/rooms/{room}/state/m.room.member/{bob}", headers=auth_headers(atok))
    assert r.json()["membership"] == "join"
    r = await http.get(f"{V3}/rooms/{room}/messages", params={"dir": "b", "limit": 5}, headers=auth_headers(atok))
    [invite] = [e for e in r.json()["chunk"]
                if e["type"] == "m.room.member" and e["content"]["membership"] == "invite"]
    assert invite["sender"] == alice and invite["state_key"] == bob
    assert invite["content"]["third_party_invite"]["display_name"] == "B...@e..."


async def test_a_revoked_key_is_refused(http: httpx.AsyncClient, ids: IdentityServer) -> None:
    alice, atok, _ = await register(http)
    bob, btok, _ = await register(http)
    room = await create_room(http, atok, preset="private_chat")
    r = await http.post(f"{V3}/rooms/{room}/invite", json=invite_body(ids, "b@example.org"), headers=auth_headers(atok))
    assert r.status_code == 200, r.text
    ids.revoked.add(ids.public_key)
    r = await http.post(f"{V3}/join/{room}", json={"third_party_signed": ids.sign(bob, alice, "tok1")},
                        headers=auth_headers(btok))
    assert r.status_code == 403 and r.json()["errcode"] == "M_FORBIDDEN"
    r = await http.get(f"{V3}/rooms/{room}/state/m.room.member/{bob}", headers=auth_headers(atok))
    assert r.status_code == 404


async def test_a_bound_address_gets_an_ordinary_invite(http: httpx.AsyncClient, ids: IdentityServer) -> None:
    _, atok, _ = await register(http)
    bob, _, _ = await register(http)
    ids.bindings["bob@example.org"] = bob
    room = await create_room(http, atok)
    r = await http.post(f"{V3}/rooms/{room}/invite", json=invite_body(ids, "bob@example.org"), headers=auth_headers(atok))
    assert r.status_code == 200, r.text
    r = await http.get(f"{V3}/rooms/{room}/state/m.room.member/{bob}", headers=auth_headers(atok))
    assert r.json()["membership"] == "invite"
    assert ids.stored == []


async def test_bad_requests_and_an_unreachable_identity_server(http: httpx.AsyncClient, ids: IdentityServer) -> None:
    _, atok, _ = await register(http)
    _, btok, _ = await register(http)
    room = await create_room(http, atok)
    h = auth_headers(atok)
    body = invite_body(ids, "x@example.org")
    del body["id_access_token"]
    r = await http.post(f"{V3}/rooms/{room}/invite", json=body, headers=h)
    assert r.status_code == 400 and r.json()["errcode"] == "M_MISSING_PARAM"
    r = await http.post(f"{V3}/rooms/{room}/invite", json=invite_body(ids, "x@example.org", id_access_token="no"), headers=h)
    assert r.status_code == 403 and r.json()["errcode"] == "M_FORBIDDEN"
    r = await http.post(f"{V3}/rooms/{room}/invite", json=invite_body(ids, "x@example.org", id_server="a/b"), headers=h)
    assert r.status_code == 400 and r.json()["errcode"] == "M_INVALID_PARAM"
    # Nobody listens on port 1: an upstream failure, not a 500.
    r = await http.post(f"{V3}/rooms/{room}/invite", json=invite_body(ids, "x@example.org", id_server="127.0.0.1:1"), headers=h)
    assert r.status_code == 502 and r.json()["errcode"] == "M_UNKNOWN"
    # Only members invite.
    r = await http.post(f"{V3}/rooms/{room}/invite", json=invite_body(ids, "x@example.org"), headers=auth_headers(btok))
    assert r.status_code == 403
    r = await http.post(f"{V3}/join/{room}", json={"third_party_signed": "x"}, headers=auth_headers(btok))
    assert r.status_code == 400 and r.json()["errcode"] == "M_BAD_JSON"
    r = await http.post(f"{V3}/join/{room}", json={"third_party_signed": {"mxid": "@a:b", "sender": "@c:d", "token": "t",
                                                                          "signatures": {}}}, headers=auth_headers(btok))
    assert r.status_code == 403


async def test_create_room_with_invite_3pid(http: httpx.AsyncClient, ids: IdentityServer) -> None:
    _, atok, _ = await register(http)
    bob, _, _ = await register(http)
    ids.bindings["bob@example.org"] = bob
    r = await http.post(f"{V3}/createRoom", json={"invite_3pid": [invite_body(ids, "bob@example.org"),
                                                                  invite_body(ids, "new@example.org")]},
                        headers=auth_headers(atok))
    assert r.status_code == 200, r.text
    room = r.json()["room_id"]
    events = await state(http, atok, room)
    assert [e["content"]["membership"] for e in events if e["type"] == "m.room.member" and e["state_key"] == bob] == ["invite"]
    assert [e["state_key"] for e in events if e["type"] == "m.room.third_party_invite"] == ["tok1"]
    # A malformed entry is refused before any room is made.
    r = await http.post(f"{V3}/createRoom", json={"invite_3pid": [{"medium": "email"}]}, headers=auth_headers(atok))
    assert r.status_code == 400 and r.json()["errcode"] == "M_MISSING_PARAM"
    r = await http.get(f"{V3}/joined_rooms", headers=auth_headers(atok))
    assert r.json()["joined_rooms"] == [room]


async def test_the_invite_reaches_whoever_binds_the_address_later(
    http: httpx.AsyncClient, ids: IdentityServer, server: Any
) -> None:
    """``/3pid/onbind``: the identity server hands over each invite once the invitee
    bound the address; it becomes an ordinary invite from the original inviter (its
    ``signed`` has no ``sender`` there)."""
    alice, atok, _ = await register(http)
    bob, btok, _ = await register(http)
    room = await create_room(http, atok, preset="private_chat", name="Later")
    r = await http.post(f"{V3}/rooms/{room}/invite", json=invite_body(ids, "later@example.org"), headers=auth_headers(atok))
    assert r.status_code == 200, r.text
    signed = sign_json({"mxid": bob, "token": "tok1"}, ids.name, ids.key)
    r = await http.put("/_matrix/federation/v1/3pid/onbind", json={
        "medium": "email", "address": "later@example.org", "mxid": bob,
        "invites": [{"medium": "email", "address": "later@example.org", "mxid": bob, "room_id": room,
                     "sender": alice, "signed": signed}]})
    assert r.status_code == 200, r.text
    r = await http.get(f"{V3}/sync", headers=auth_headers(btok))
    assert room in r.json()["rooms"]["invite"]
    r = await http.post(f"{V3}/join/{room}", json={}, headers=auth_headers(btok))
    assert r.status_code == 200, r.text
    r = await http.get(f"{V3}/rooms/{room}/state/m.room.member/{bob}", headers=auth_headers(atok))
    assert r.json()["membership"] == "join"
