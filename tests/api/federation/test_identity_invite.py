"""The issue's end-to-end case: an invite by e-mail from a user on one pocketserver to an
address bound on another pocketserver's identity service, completed when the invitee
binds it. Two pocketservers federate on loopback; the second runs the identity service
(over HTTPS, where the first reaches it), and its mail goes to a real SMTP server on
loopback, read and followed as the invitee would."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import trio

from tests.api.helpers import V3, auth_headers, create_room, register, sync
from tests.federation.servers import start_federating_server
from tests.mailbox import Mailbox, links_in, smtp_server

IS = "/_matrix/identity/v2"
BROWSER = {"Accept": "text/html,application/xhtml+xml"}


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    with smtp_server() as box:
        yield box


async def openid_is_token(hs: httpx.AsyncClient, is_http: httpx.AsyncClient, user: str, token: str) -> str:
    r = await hs.post(f"{V3}/user/{user}/openid/request_token", json={}, headers=auth_headers(token))
    assert r.status_code == 200, r.text
    r = await is_http.post(f"{IS}/account/register", json=r.json())
    assert r.status_code == 200, r.text
    return str(r.json()["token"])


async def test_invite_by_email_completed_when_the_invitee_binds_it(
    nursery: trio.Nursery, tmp_path: Path, mailbox: Mailbox
) -> None:
    a = await start_federating_server(nursery, tmp_path / "a")
    b = await start_federating_server(
        nursery, tmp_path / "b", tls_resources=("client", "federation"),
        extra={"email": {"smtp_host": "127.0.0.1", "smtp_port": mailbox.port, "tls": "none"},
               "identity": {"enabled": True}},
    )
    b_name = str(b.services.config.server_name)
    # The identity service's own address: https://<b's server name> (the TLS listener).
    async with httpx.AsyncClient(base_url=a.urls[0], timeout=30) as ha, \
            httpx.AsyncClient(base_url=b.urls[0], timeout=30) as hb, \
            httpx.AsyncClient(base_url=f"https://{b_name}", timeout=30, verify=False) as ids:
        alice, atok, _ = await register(ha, "alice")
        bob, btok, _ = await register(hb, "bob")
        # Alice (on a) gets a token of b's identity service: b checks her OpenID token with a.
        alice_is = await openid_is_token(ha, ids, alice, atok)
        room = await create_room(ha, atok, preset="private_chat", name="Lemurs")
        r = await ha.post(f"{V3}/rooms/{room}/invite", headers=auth_headers(atok), json={
            "id_server": b_name, "id_access_token": alice_is, "medium": "email", "address": "bob@example.org"})
        assert r.status_code == 200, r.text
        invite_mail = await mailbox.wait_for("bob@example.org")
        assert "Lemurs" in invite_mail["Subject"] or "Lemurs" in invite_mail.get_body().get_content()
        r = await ha.get(f"{V3}/rooms/{room}/state", headers=auth_headers(atok))
        [tpi] = [e for e in r.json() if e["type"] == "m.room.third_party_invite"]
        assert tpi["content"]["display_name"] == "b...@exa..."

        # Bob (on b) validates the address by the mailed link, then binds it.
        bob_is = await openid_is_token(hb, ids, bob, btok)
        r = await ids.post(f"{IS}/validate/email/requestToken", headers=auth_headers(bob_is),
                           json={"client_secret": "bobsecret", "email": "bob@example.org", "send_attempt": 1})
        assert r.status_code == 200, r.text
        sid = r.json()["sid"]
        mail = await mailbox.wait_for("bob@example.org", count=2)
        [link] = [u for u in links_in(mail) if "submitToken" in u]
        assert urlsplit(link).netloc == b_name
        r = await ids.get(link, headers=BROWSER)
        assert r.status_code == 200 and "confirmed" in r.text
        r = await ids.post(f"{IS}/3pid/bind", headers=auth_headers(bob_is),
                           json={"sid": sid, "client_secret": "bobsecret", "mxid": bob})
        assert r.status_code == 200, r.text

        # The bind delivered the pending invite: bob is invited, by alice, and joins.
        with trio.fail_after(30):
            for _ in range(600):
                resp = await sync(hb, btok, timeout=0)
                if room in resp.get("rooms", {}).get("invite", {}):
                    break
                await trio.sleep(0.05)
        events = resp["rooms"]["invite"][room]["invite_state"]["events"]
        [me] = [e for e in events if e["type"] == "m.room.member" and e["state_key"] == bob]
        assert me["content"]["membership"] == "invite" and me["sender"] == alice
        r = await ha.get(f"{V3}/rooms/{room}/state/m.room.member/{bob}", headers=auth_headers(atok))
        assert r.json()["third_party_invite"]["display_name"] == "b...@exa..."
        r = await hb.post(f"{V3}/join/{room}", json={}, headers=auth_headers(btok))
        assert r.status_code == 200, r.text
        with trio.fail_after(30):
            for _ in range(600):
                r = await ha.get(f"{V3}/rooms/{room}/state/m.room.member/{bob}", headers=auth_headers(atok))
                if r.json().get("membership") == "join":
                    break
                await trio.sleep(0.05)
        assert r.json()["membership"] == "join"

        # Alice now finds bob by the address, and a second invitation is refused as bound.
        r = await ids.get(f"{IS}/hash_details", headers=auth_headers(alice_is))
        pepper = r.json()["lookup_pepper"]
        r = await ids.post(f"{IS}/lookup", headers=auth_headers(alice_is),
                           json={"algorithm": "none", "pepper": pepper, "addresses": ["bob@example.org email"]})
        assert r.json()["mappings"] == {"bob@example.org email": bob}
