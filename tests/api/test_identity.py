"""The built-in identity service over plain HTTP, with its mail read from a real SMTP
server on loopback: an account by OpenID, terms, e-mail validation by the mailed link,
binding, lookups (sha256 and none), invitations, key checks and unbinding; and the
errors for invalid addresses, wrong, reused and expired tokens, and mail floods."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import trio
from signedjson.key import decode_verify_key_bytes, generate_signing_key, get_verify_key
from signedjson.sign import verify_signed_json
from unpaddedbase64 import decode_base64, encode_base64

from pocketserver.config import Config
from pocketserver.protocol.identity import lookup_hash
from pocketserver.server import RunningServer, run_server
from pocketserver.services.clock import Clock
from tests.api.helpers import V3, auth_headers, register
from tests.conftest import make_config
from tests.mailbox import Mailbox, links_in, smtp_server, text_of

IS = "/_matrix/identity/v2"
BROWSER = {"Accept": "text/html,application/xhtml+xml"}
TERMS_URL = "https://example.org/privacy-1.0.html"


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    with smtp_server() as box:
        yield box


@pytest.fixture
def config(tmp_path: Path, mailbox: Mailbox) -> Config:
    return make_config(tmp_path, {
        "email": {"smtp_host": "127.0.0.1", "smtp_port": mailbox.port, "tls": "none"},
        "identity": {"enabled": True, "mails_per_address_per_hour": 3,
                     "terms": [{"id": "privacy", "version": "1.0", "name": "Privacy", "url": TERMS_URL}]},
    })


async def is_token(http: httpx.AsyncClient, user: str, token: str, *, accept: bool = True) -> str:
    """An identity-service token for ``user``, by an OpenID token of the homeserver."""
    r = await http.post(f"{V3}/user/{user}/openid/request_token", json={}, headers=auth_headers(token))
    assert r.status_code == 200, r.text
    r = await http.post(f"{IS}/account/register", json=r.json())
    assert r.status_code == 200, r.text
    ours = str(r.json()["token"])
    if accept:
        r = await http.post(f"{IS}/terms", json={"user_accepts": [TERMS_URL]}, headers=auth_headers(ours))
        assert r.status_code == 200, r.text
    return ours


async def validate(http: httpx.AsyncClient, box: Mailbox, tok: str, address: str, secret: str) -> tuple[str, str]:
    """requestToken, then the mailed link followed: (sid, the link)."""
    r = await http.post(f"{IS}/validate/email/requestToken", headers=auth_headers(tok),
                        json={"client_secret": secret, "email": address, "send_attempt": 1})
    assert r.status_code == 200, r.text
    sid = r.json()["sid"]
    mail = await box.wait_for(address.split("@")[0] + "@" + address.split("@")[1].lower())
    [link] = [u for u in links_in(mail) if "submitToken" in u]
    parts = urlsplit(link)
    r = await http.get(f"{parts.path}?{parts.query}", headers=BROWSER)
    assert r.status_code == 200, r.text
    assert "confirmed" in r.text
    return sid, link


async def _started(nursery: trio.Nursery, config: Config) -> RunningServer:
    running: RunningServer = await nursery.start(partial(run_server, config, out=None, handle_signals=False))
    return running


async def test_off_by_default(nursery: trio.Nursery, tmp_path: Path) -> None:
    running = await _started(nursery, make_config(tmp_path))
    async with httpx.AsyncClient(base_url=running.urls[0], timeout=30) as http:
        for path in (IS, f"{IS}/hash_details", "/_matrix/identity/versions"):
            r = await http.get(path)
            assert r.status_code == 404 and r.json()["errcode"] == "M_UNRECOGNIZED"
    running.stop.set()


async def test_account_terms_validation_bind_lookup_unbind(
    server: RunningServer, http: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    assert (await http.get(IS)).json() == {}
    assert "v1.19" in (await http.get("/_matrix/identity/versions")).json()["versions"]
    alice, atok, _ = await register(http)
    tok = await is_token(http, alice, atok, accept=False)
    r = await http.get(f"{IS}/account", headers=auth_headers(tok))
    assert r.json() == {"user_id": alice}

    # Terms first.
    r = await http.get(f"{IS}/terms")
    assert r.json() == {"policies": {"privacy": {"version": "1.0", "en": {"name": "Privacy", "url": TERMS_URL}}}}
    r = await http.get(f"{IS}/hash_details", headers=auth_headers(tok))
    assert r.status_code == 403 and r.json()["errcode"] == "M_TERMS_NOT_SIGNED"
    r = await http.post(f"{IS}/terms", json={"user_accepts": [TERMS_URL]}, headers=auth_headers(tok))
    assert r.status_code == 200
    r = await http.get(f"{IS}/hash_details", headers=auth_headers(tok))
    assert r.status_code == 200 and set(r.json()["algorithms"]) == {"sha256", "none"}
    pepper = r.json()["lookup_pepper"]

    # Validation by the mailed link, as a person would.
    sid, link = await validate(http, mailbox, tok, "alice@Example.ORG", "s3cret")
    mail = mailbox.to("alice@example.org")[0]
    assert "Confirm your email address" in mail["Subject"] and "s3cret" in link
    r = await http.get(f"{IS}/3pid/getValidated3pid", params={"sid": sid, "client_secret": "s3cret"},
                       headers=auth_headers(tok))
    assert r.status_code == 200, r.text
    assert r.json()["address"] == "alice@example.org" and r.json()["medium"] == "email"
    # The link works once.
    parts = urlsplit(link)
    r = await http.get(f"{parts.path}?{parts.query}", headers=BROWSER)
    assert r.status_code == 400 and "used already" in r.text
    r = await http.get(f"{parts.path}?{parts.query}")  # not a browser: the JSON error
    assert r.status_code == 400 and r.json()["errcode"] == "M_TOKEN_INCORRECT"

    # Bind: a signed association, found by both lookup algorithms.
    r = await http.post(f"{IS}/3pid/bind", json={"sid": sid, "client_secret": "s3cret", "mxid": alice},
                        headers=auth_headers(tok))
    assert r.status_code == 200, r.text
    assoc = r.json()
    assert assoc["mxid"] == alice and assoc["address"] == "alice@example.org"
    [(origin, sigs)] = assoc["signatures"].items()
    [key_id] = sigs
    r = await http.get(f"{IS}/pubkey/{key_id}")
    verify_signed_json(assoc, origin, decode_verify_key_bytes(key_id, decode_base64(r.json()["public_key"])))
    r = await http.get(f"{IS}/pubkey/isvalid", params={"public_key": r.json()["public_key"]})
    assert r.json() == {"valid": True}
    r = await http.get(f"{IS}/pubkey/ed25519:nope")
    assert r.status_code == 404 and r.json()["errcode"] == "M_NOT_FOUND"

    hashed = lookup_hash("alice@example.org", "email", pepper)
    r = await http.post(f"{IS}/lookup", headers=auth_headers(tok),
                        json={"algorithm": "sha256", "pepper": pepper, "addresses": [hashed, "nope"]})
    assert r.json() == {"mappings": {hashed: alice}}
    r = await http.post(f"{IS}/lookup", headers=auth_headers(tok),
                        json={"algorithm": "none", "pepper": pepper, "addresses": ["alice@example.org email"]})
    assert r.json() == {"mappings": {"alice@example.org email": alice}}
    r = await http.post(f"{IS}/lookup", headers=auth_headers(tok),
                        json={"algorithm": "sha256", "pepper": "old", "addresses": [hashed]})
    assert r.status_code == 400 and r.json()["errcode"] == "M_INVALID_PEPPER"
    r = await http.post(f"{IS}/lookup", headers=auth_headers(tok),
                        json={"algorithm": "md5", "pepper": pepper, "addresses": [hashed]})
    assert r.status_code == 400 and r.json()["errcode"] == "M_INVALID_PARAM"

    # Someone else cannot unbind it; its owner can.
    bob, btok, _ = await register(http)
    bob_is = await is_token(http, bob, btok)
    unbind = {"mxid": alice, "threepid": {"medium": "email", "address": "alice@example.org"}}
    r = await http.post(f"{IS}/3pid/unbind", json=unbind, headers=auth_headers(bob_is))
    assert r.status_code == 403
    r = await http.post(f"{IS}/3pid/unbind", json=unbind, headers=auth_headers(tok))
    assert r.status_code == 200, r.text
    r = await http.post(f"{IS}/lookup", headers=auth_headers(tok),
                        json={"algorithm": "sha256", "pepper": pepper, "addresses": [hashed]})
    assert r.json() == {"mappings": {}}

    # Logged out, the token is worthless.
    r = await http.post(f"{IS}/account/logout", headers=auth_headers(tok))
    assert r.status_code == 200
    r = await http.get(f"{IS}/account", headers=auth_headers(tok))
    assert r.status_code == 401 and r.json()["errcode"] == "M_UNAUTHORIZED"


async def test_bad_tokens_addresses_and_floods(
    server: RunningServer, http: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    alice, atok, _ = await register(http)
    tok = await is_token(http, alice, atok)
    h = auth_headers(tok)
    # OpenID tokens the homeserver does not know, and bodies that are not one.
    r = await http.post(f"{IS}/account/register", json={"access_token": "nope", "token_type": "Bearer",
                                                      "matrix_server_name": "test.local", "expires_in": 3600})
    assert r.status_code == 401 and r.json()["errcode"] == "M_UNAUTHORIZED"
    r = await http.post(f"{IS}/account/register", json={"token_type": "Bearer"})
    assert r.status_code == 400 and r.json()["errcode"] == "M_MISSING_PARAM"
    r = await http.get(f"{IS}/hash_details")
    assert r.status_code == 401 and r.json()["errcode"] == "M_UNAUTHORIZED"

    for bad in ("not-an-address", "two@@example.org", "a@b", "a b@example.org", "@example.org"):
        r = await http.post(f"{IS}/validate/email/requestToken", headers=h,
                            json={"client_secret": "x", "email": bad, "send_attempt": 1})
        assert r.status_code == 400 and r.json()["errcode"] == "M_INVALID_EMAIL", bad
    r = await http.post(f"{IS}/validate/email/requestToken", headers=h,
                        json={"client_secret": "bad secret!", "email": "a@example.org", "send_attempt": 1})
    assert r.status_code == 400 and r.json()["errcode"] == "M_INVALID_PARAM"

    # A wrong token, then the right one; then it is spent.
    body = {"client_secret": "c1", "email": "carol@example.org", "send_attempt": 1}
    r = await http.post(f"{IS}/validate/email/requestToken", headers=h, json=body)
    sid = r.json()["sid"]
    # The same send_attempt again (a retried request): no second mail.
    r = await http.post(f"{IS}/validate/email/requestToken", headers=h, json=body)
    assert r.json()["sid"] == sid
    mail = await mailbox.wait_for("carol@example.org")
    token = [line.strip() for line in text_of(mail).splitlines() if line.strip()][-2]
    assert token in links_in(mail)[0]
    submit = {"sid": sid, "client_secret": "c1", "token": token}
    r = await http.post(f"{IS}/validate/email/submitToken", headers=h, json={**submit, "token": "wrong"})
    assert r.status_code == 400 and r.json()["errcode"] == "M_TOKEN_INCORRECT"
    r = await http.get(f"{IS}/3pid/getValidated3pid", params={"sid": sid, "client_secret": "c1"}, headers=h)
    assert r.status_code == 400 and r.json()["errcode"] == "M_SESSION_NOT_VALIDATED"
    r = await http.post(f"{IS}/validate/email/submitToken", headers=h, json={**submit, "client_secret": "c2"})
    assert r.status_code == 404 and r.json()["errcode"] == "M_NO_VALID_SESSION"
    r = await http.post(f"{IS}/validate/email/submitToken", headers=h, json=submit)
    assert r.status_code == 200 and r.json() == {"success": True}
    r = await http.post(f"{IS}/validate/email/submitToken", headers=h, json=submit)
    assert r.status_code == 400 and r.json()["errcode"] == "M_TOKEN_INCORRECT"
    # Someone else's user ID cannot be bound.
    r = await http.post(f"{IS}/3pid/bind", headers=h, json={"sid": sid, "client_secret": "c1", "mxid": "@x:test.local"})
    assert r.status_code == 403

    # An expired session: a day later, the mailed token no longer works.
    body = {"client_secret": "c3", "email": "dave@example.org", "send_attempt": 1}
    sid = (await http.post(f"{IS}/validate/email/requestToken", headers=h, json=body)).json()["sid"]
    mail = await mailbox.wait_for("dave@example.org")
    parts = urlsplit(links_in(mail)[0])

    class Later(Clock):
        def time_ms(self) -> int:
            return super().time_ms() + 86_400_000 + 1000

    server.services.identity.clock = Later()
    r = await http.get(f"{parts.path}?{parts.query}", headers=BROWSER)
    assert r.status_code == 400 and "expired" in r.text
    server.services.identity.clock = Clock()

    # A flood of requests for one address: three mails an hour, then M_LIMIT_EXCEEDED.
    codes = []
    for attempt in range(1, 6):
        r = await http.post(f"{IS}/validate/email/requestToken", headers=h,
                            json={"client_secret": "c4", "email": "erin@example.org", "send_attempt": attempt})
        codes.append(r.status_code)
    assert codes == [200, 200, 200, 429, 429]
    assert r.json()["errcode"] == "M_LIMIT_EXCEEDED"
    assert len(mailbox.to("erin@example.org")) == 3


async def test_store_invite_keys_and_signing(server: RunningServer, http: httpx.AsyncClient, mailbox: Mailbox) -> None:
    alice, atok, _ = await register(http, "alice")
    tok = await is_token(http, alice, atok)
    h = auth_headers(tok)
    invite = {"medium": "email", "address": "frank@example.org", "room_id": "!room:test.local", "sender": alice,
              "room_name": "Lemurs", "sender_display_name": "Alice"}
    r = await http.post(f"{IS}/store-invite", headers=h, json=invite)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["display_name"] == "f...@exa..." and answer["token"]
    mail = await mailbox.wait_for("frank@example.org")
    assert "Alice" in mail["Subject"] and "Lemurs" in text_of(mail)
    long_term, ephemeral = answer["public_keys"]
    for key in (long_term, ephemeral):
        path = urlsplit(key["key_validity_url"]).path
        r = await http.get(path, params={"public_key": key["public_key"]})
        assert r.json() == {"valid": True}, path
    r = await http.get(f"{IS}/pubkey/ephemeral/isvalid", params={"public_key": long_term["public_key"]})
    assert r.json() == {"valid": False}

    # Refused: another medium, a bad address, someone else's invitation, a bound address.
    for change, code in (({"medium": "msisdn"}, "M_UNRECOGNIZED"), ({"address": "nope"}, "M_INVALID_EMAIL"),
                         ({"sender": "@x:test.local"}, "M_FORBIDDEN")):
        r = await http.post(f"{IS}/store-invite", headers=h, json={**invite, **change})
        assert r.json()["errcode"] == code, change

    # sign-ed25519 signs mxid, sender and token with the key handed in.
    key = generate_signing_key("0")
    r = await http.post(f"{IS}/sign-ed25519", headers=h, json={
        "mxid": "@frank:test.local", "token": answer["token"], "private_key": encode_base64(key.encode())})
    assert r.status_code == 200, r.text
    signed = r.json()
    assert signed["sender"] == alice and signed["mxid"] == "@frank:test.local"
    [origin] = signed["signatures"]
    verify_signed_json(signed, origin, get_verify_key(key))
    r = await http.post(f"{IS}/sign-ed25519", headers=h, json={
        "mxid": "@frank:test.local", "token": "unknown", "private_key": encode_base64(key.encode())})
    assert r.status_code == 404 and r.json()["errcode"] == "M_UNRECOGNIZED"
    r = await http.post(f"{IS}/sign-ed25519", headers=h, json={
        "mxid": "@frank:test.local", "token": answer["token"], "private_key": "short"})
    assert r.status_code == 400


async def test_no_mail_server_is_a_send_error(nursery: trio.Nursery, tmp_path: Path) -> None:
    running = await _started(nursery, make_config(tmp_path, {"identity": {"enabled": True}}))
    async with httpx.AsyncClient(base_url=running.urls[0], timeout=30) as http:
        alice, atok, _ = await register(http)
        tok = await is_token(http, alice, atok, accept=False)
        r = await http.post(f"{IS}/validate/email/requestToken", headers=auth_headers(tok),
                            json={"client_secret": "x", "email": "a@example.org", "send_attempt": 1})
        assert r.status_code == 400 and r.json()["errcode"] == "M_EMAIL_SEND_ERROR"
    running.stop.set()
