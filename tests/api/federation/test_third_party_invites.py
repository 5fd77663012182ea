"""Third-party invites completed across servers: an identity server's onbind reaches
the invitee's server, which has the inviter's server exchange each pending invite
(``exchange_third_party_invite``); bad signatures and revoked keys issue no invite."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from signedjson.key import generate_signing_key
from signedjson.sign import sign_json

from pocketserver.server import RunningServer
from tests.api.helpers import V3, auth_headers, create_room, register, sync
from tests.api.test_third_party_invites import IdentityServer, ids, invite_body
from tests.federation.servers import start_federating_server

__all__ = ["ids"]  # the identity server fixture

ONBIND = "/_matrix/federation/v1/3pid/onbind"


def _name(server: RunningServer) -> str:
    return str(server.services.config.server_name)


async def _started(nursery: trio.Nursery, tmp_path: Path) -> RunningServer:
    # The test identity server's certificate is the tests' shared one, on 127.0.0.1.
    return await start_federating_server(nursery, tmp_path)


def onbind_body(ids: IdentityServer, address: str, mxid: str, invites: list[dict[str, Any]],
                key: Any = None) -> dict[str, Any]:
    out = []
    for inv in invites:
        signed = sign_json({"mxid": mxid, "token": inv["token"]}, ids.name, key or ids.key)
        out.append({"medium": "email", "address": address, "mxid": mxid, "room_id": inv["room_id"],
                    "sender": inv["sender"], "signed": signed})
    return sign_json({"medium": "email", "address": address, "mxid": mxid, "invites": out}, ids.name, ids.key)


async def _wait_membership(http: httpx.AsyncClient, token: str, room: str, user: str, want: str) -> dict[str, Any]:
    with trio.fail_after(20):
        for _ in range(400):
            r = await http.get(f"{V3}/rooms/{room}/state/m.room.member/{user}", headers=auth_headers(token))
            if r.status_code == 200 and r.json().get("membership") == want:
                return dict(r.json())
            await trio.sleep(0.05)
    raise AssertionError(f"{user} never became {want}")


async def _wait_invite(http: httpx.AsyncClient, token: str, room: str) -> dict[str, Any]:
    with trio.fail_after(20):
        for _ in range(400):
            resp = await sync(http, token, timeout=0)
            if room in resp.get("rooms", {}).get("invite", {}):
                return resp
            await trio.sleep(0.05)
    raise AssertionError(f"no invite to {room}")


@pytest.fixture
async def two(nursery: trio.Nursery, tmp_path: Path) -> tuple[RunningServer, RunningServer]:
    a = await _started(nursery, tmp_path / "a")
    b = await _started(nursery, tmp_path / "b")
    return a, b


async def test_invite_completed_by_onbind_on_the_invitees_server(
    two: tuple[RunningServer, RunningServer], ids: IdentityServer
) -> None:
    a, b = two
    async with httpx.AsyncClient(base_url=a.urls[0], timeout=30) as ha, \
            httpx.AsyncClient(base_url=b.urls[0], timeout=30) as hb:
        alice, atok, _ = await register(ha, "alice")
        carol, ctok, _ = await register(hb, "carol")  # a member on the invitee's server
        bob, btok, _ = await register(hb, "bob")
        room = await create_room(ha, atok, preset="private_chat", name="Lemurs")
        r = await ha.post(f"{V3}/rooms/{room}/invite", json={"user_id": carol}, headers=auth_headers(atok))
        assert r.status_code == 200, r.text
        r = await hb.post(f"{V3}/join/{room}", json={}, headers=auth_headers(ctok))
        assert r.status_code == 200, r.text
        r = await ha.post(f"{V3}/rooms/{room}/invite", json=invite_body(ids, "bob@example.org"),
                          headers=auth_headers(atok))
        assert r.status_code == 200, r.text
        stored = {"token": "tok1", "room_id": room, "sender": alice}
        # The invitee's server learns of the third-party invite through the room.
        with trio.fail_after(20):
            while (await hb.get(f"{V3}/rooms/{room}/state/m.room.third_party_invite/tok1",
                                headers=auth_headers(ctok))).status_code != 200:
                await trio.sleep(0.05)

        # Signed by a key the room does not know: refused, and nobody is invited.
        forged = onbind_body(ids, "bob@example.org", bob, [stored], key=generate_signing_key("0"))
        r = await hb.put(ONBIND, json=forged)
        assert r.status_code == 403 and r.json()["errcode"] == "M_FORBIDDEN"
        r = await ha.get(f"{V3}/rooms/{room}/state/m.room.member/{bob}", headers=auth_headers(atok))
        assert r.status_code == 404

        # The real one (as SyTest's identity server sends it: POST, no sender in signed).
        r = await hb.post(ONBIND, json=onbind_body(ids, "bob@example.org", bob, [stored]))
        assert r.status_code == 200, r.text
        member = await _wait_membership(ha, atok, room, bob, "invite")
        assert member["third_party_invite"]["display_name"] == "B...@e..."
        # Bob sees the invite, from alice, and joins.
        resp = await _wait_invite(hb, btok, room)
        invite_state = resp["rooms"]["invite"][room]["invite_state"]["events"]
        assert any(e["type"] == "m.room.member" and e["state_key"] == alice for e in invite_state)
        r = await hb.post(f"{V3}/join/{room}", json={}, headers=auth_headers(btok))
        assert r.status_code == 200, r.text
        await _wait_membership(ha, atok, room, bob, "join")


async def test_onbind_for_a_remote_room_the_invitees_server_is_not_in(
    two: tuple[RunningServer, RunningServer], ids: IdentityServer
) -> None:
    a, b = two
    async with httpx.AsyncClient(base_url=a.urls[0], timeout=30) as ha, \
            httpx.AsyncClient(base_url=b.urls[0], timeout=30) as hb:
        alice, atok, _ = await register(ha, "alice")
        bob, btok, _ = await register(hb, "bob")
        room = await create_room(ha, atok, preset="private_chat")
        r = await ha.post(f"{V3}/rooms/{room}/invite", json=invite_body(ids, "bob@example.org"),
                          headers=auth_headers(atok))
        assert r.status_code == 200, r.text
        # A revoked key: the inviter's server refuses the exchange.
        ids.revoked.add(ids.public_key)
        body = onbind_body(ids, "bob@example.org", bob, [{"token": "tok1", "room_id": room, "sender": alice}])
        r = await hb.put(ONBIND, json=body)
        assert r.status_code == 403, r.text
        ids.revoked.clear()
        r = await hb.put(ONBIND, json=body)
        assert r.status_code == 200, r.text
        await _wait_membership(ha, atok, room, bob, "invite")
        await _wait_invite(hb, btok, room)
        r = await hb.post(f"{V3}/join/{room}", json={}, headers=auth_headers(btok))
        assert r.status_code == 200, r.text
        await _wait_membership(ha, atok, room, bob, "join")


async def test_bad_onbind_and_exchange_requests(two: tuple[RunningServer, RunningServer]) -> None:
    _, b = two
    async with httpx.AsyncClient(base_url=b.urls[0], timeout=30) as hb:
        r = await hb.put(ONBIND, content=b"{nope")
        assert r.status_code == 400 and r.json()["errcode"] == "M_NOT_JSON"
        r = await hb.put(ONBIND, json={"medium": "email", "address": "x@example.org"})
        assert r.status_code == 400 and r.json()["errcode"] == "M_MISSING_PARAM"
        base = {"medium": "email", "address": "x@example.org", "mxid": f"@bob:{_name(b)}"}
        for invites in ("x", [1], [{"room_id": "!r:x", "sender": "nope", "signed": {}}],
                        [{"room_id": "!r:x", "sender": "@a:x", "signed": {"mxid": "@bob:x"}}]):
            r = await hb.put(ONBIND, json={**base, "invites": invites})
            assert r.status_code == 400, (invites, r.text)
            assert r.json()["errcode"] in ("M_BAD_JSON", "M_MISSING_PARAM")
        # No invites at all: nothing to do.
        r = await hb.put(ONBIND, json={**base, "invites": []})
        assert r.status_code == 200
        # exchange_third_party_invite needs a signed request.
        r = await hb.put("/_matrix/federation/v1/exchange_third_party_invite/!r:x", json={})
        assert r.status_code == 401 and r.json()["errcode"] == "M_UNAUTHORIZED"
