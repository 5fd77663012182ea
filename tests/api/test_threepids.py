"""E-mail addresses on accounts, end to end: a real SMTP server on loopback (aiosmtpd)
receives the validation mails, and the tests follow the link in them, or type the
code, as a person would. Bindings go to a small identity server on loopback (HTTPS)."""

from __future__ import annotations

import email
import email.policy
import json
import re
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from email.message import EmailMessage
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from aiosmtpd.controller import Controller

from pocketserver.config import Config
from pocketserver.server import RunningServer
from tests.api.helpers import V3, auth_headers, register
from tests.api.test_third_party_invites import ID_TOKEN, IdentityServer
from tests.conftest import make_config, shared_certificate


class MailBox:
    """aiosmtpd handler: keeps every mail it is given (and with ``spool``, writes each
    one's text to ``spool/<recipient>.txt`` for a program outside this process)."""

    def __init__(self, spool: Path | None = None) -> None:
        self.mails: list[tuple[list[str], EmailMessage]] = []
        self.spool = spool

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        self.mails.append((list(envelope.rcpt_tos), msg))
        if self.spool is not None:
            for rcpt in envelope.rcpt_tos:
                part = self.spool / f"{rcpt}.part"
                part.write_text(msg.get_content(), encoding="utf-8")
                part.rename(self.spool / f"{rcpt}.txt")  # whole or not at all
        return "250 OK"

    def last_to(self, address: str) -> EmailMessage:
        """The newest mail to ``address`` (the server answers requestToken only once
        the SMTP server took the mail, so it is here already)."""
        found = [m for rcpt, m in self.mails if address in rcpt]
        assert found, f"no mail to {address}: {[r for r, _ in self.mails]}"
        return found[-1]

    def count_to(self, address: str) -> int:
        return sum(1 for rcpt, _ in self.mails if address in rcpt)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_smtp(spool: Path | None = None, **kwargs: Any) -> Iterator[tuple[MailBox, int]]:
    """An SMTP server on a free loopback port while the generator is open."""
    box = MailBox(spool)
    port = _free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    try:
        yield box, port
    finally:
        controller.stop()


@pytest.fixture
def smtp() -> Iterator[tuple[MailBox, int]]:
    yield from start_smtp()


@pytest.fixture
def mailbox(smtp: tuple[MailBox, int]) -> MailBox:
    return smtp[0]


def email_config(tmp_path: Path, port: int, **extra: Any) -> Config:
    cert, _ = shared_certificate()
    data: dict[str, Any] = {
        "email": {"smtp_host": "127.0.0.1", "smtp_port": port, "tls": "none"},
        "federation": {"extra_ca_file": cert, "verify_tls": True, "allowed_ip_ranges": ["127.0.0.0/8"]},
    }
    for k, v in extra.items():
        data[k] = {**data.get(k, {}), **v}
    return make_config(tmp_path, data)


@pytest.fixture
def config(tmp_path: Path, smtp: tuple[MailBox, int], request: pytest.FixtureRequest) -> Config:
    return email_config(tmp_path, smtp[1], **getattr(request, "param", {}))


def link_and_code(msg: EmailMessage) -> tuple[str, str]:
    body = msg.get_content()
    link = re.search(r"(http\S*)", body)
    code = re.search(r"enter this one:\s+(\S+)", body)
    assert link and code, body
    return link.group(1), code.group(1)


async def request_token(
    http: httpx.AsyncClient, path: str, address: str, secret: str = "s3cret", attempt: int = 1
) -> httpx.Response:
    return await http.post(
        f"{V3}{path}", json={"client_secret": secret, "email": address, "send_attempt": attempt}
    )


async def validated_sid(
    http: httpx.AsyncClient, mailbox: MailBox, path: str, address: str, secret: str = "s3cret"
) -> str:
    """Ask for a mail, follow its link like a person; the session ID."""
    r = await request_token(http, path, address, secret)
    assert r.status_code == 200, r.text
    link, _ = link_and_code(mailbox.last_to(address.lower()))
    async with httpx.AsyncClient() as browser:
        page = await browser.get(link)
    assert page.status_code == 200 and "confirmed" in page.text, page.text
    return str(r.json()["sid"])


def password_auth(user_id: str, password: str, session: str | None = None) -> dict[str, Any]:
    auth: dict[str, Any] = {
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": user_id}, "password": password,
    }
    if session:
        auth["session"] = session
    return auth


async def add_email(http: httpx.AsyncClient, mailbox: MailBox, token: str, user: str, address: str) -> None:
    sid = await validated_sid(http, mailbox, "/account/3pid/email/requestToken", address)
    r = await http.post(
        f"{V3}/account/3pid/add",
        json={"sid": sid, "client_secret": "s3cret", "auth": password_auth(user, f"pw-{user.split(':')[0][1:]}")},
        headers=auth_headers(token),
    )
    assert r.status_code == 200, r.text


async def login_by_email(http: httpx.AsyncClient, address: str, password: str) -> httpx.Response:
    return await http.post(f"{V3}/login", json={
        "type": "m.login.password", "password": password,
        "identifier": {"type": "m.id.thirdparty", "medium": "email", "address": address},
    })


async def test_add_an_address_by_following_the_mailed_link(http: httpx.AsyncClient, mailbox: MailBox) -> None:
    alice, token, _ = await register(http, "alice")
    caps = (await http.get(f"{V3}/capabilities", headers=auth_headers(token))).json()["capabilities"]
    assert caps["m.3pid_changes"] == {"enabled": True}

    r = await request_token(http, "/account/3pid/email/requestToken", "Alice@Example.org")
    assert r.status_code == 200, r.text
    sid = r.json()["sid"]
    mail = mailbox.last_to("alice@example.org")
    assert "Confirm your e-mail address" in mail["Subject"]
    link, code = link_and_code(mail)
    assert code in link and "add this e-mail address" in mail.get_content()

    # Adding before the link was followed: refused, the session stays usable.
    r = await http.post(
        f"{V3}/account/3pid/add",
        json={"sid": sid, "client_secret": "s3cret", "auth": password_auth(alice, "pw-alice")},
        headers=auth_headers(token),
    )
    assert r.status_code == 400 and r.json()["errcode"] == "M_THREEPID_AUTH_FAILED"

    async with httpx.AsyncClient() as browser:
        page = await browser.get(link)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "E-mail address confirmed" in page.text

    # User-interactive auth: the password first.
    r = await http.post(f"{V3}/account/3pid/add", json={"sid": sid, "client_secret": "s3cret"}, headers=auth_headers(token))
    assert r.status_code == 401 and {"stages": ["m.login.password"]} in r.json()["flows"]
    session = r.json()["session"]
    r = await http.post(
        f"{V3}/account/3pid/add",
        json={"sid": sid, "client_secret": "s3cret", "auth": password_auth(alice, "pw-alice", session)},
        headers=auth_headers(token),
    )
    assert r.status_code == 200, r.text
    [tp] = (await http.get(f"{V3}/account/3pid", headers=auth_headers(token))).json()["threepids"]
    assert tp["medium"] == "email" and tp["address"] == "alice@example.org"
    assert tp["validated_at"] <= tp["added_at"]

    # The session was used: neither it nor the link works again.
    r = await http.post(
        f"{V3}/account/3pid/add",
        json={"sid": sid, "client_secret": "s3cret", "auth": password_auth(alice, "pw-alice")},
        headers=auth_headers(token),
    )
    assert r.status_code == 400 and r.json()["errcode"] == "M_THREEPID_AUTH_FAILED"
    async with httpx.AsyncClient() as browser:
        again = await browser.get(link)
    assert again.status_code == 400 and "does not work" in again.text

    # Nobody else can take the address.
    _bob, btok, _ = await register(http, "bob")
    r = await request_token(http, "/account/3pid/email/requestToken", "alice@example.org", "other")
    assert r.status_code == 400 and r.json()["errcode"] == "M_THREEPID_IN_USE"


async def test_log_in_by_address_then_remove_it(http: httpx.AsyncClient, mailbox: MailBox) -> None:
    carol, token, _ = await register(http, "carol")
    await add_email(http, mailbox, token, carol, "carol@example.org")
    r = await login_by_email(http, "CAROL@example.org", "pw-carol")
    assert r.status_code == 200 and r.json()["user_id"] == carol
    # The deprecated top-level form (SyTest's, older clients').
    r = await http.post(f"{V3}/login", json={
        "type": "m.login.password", "medium": "email", "address": "carol@example.org", "password": "pw-carol",
    })
    assert r.status_code == 200 and r.json()["user_id"] == carol

    # A wrong password and an unknown address answer alike.
    wrong = await login_by_email(http, "carol@example.org", "nope")
    unknown = await login_by_email(http, "nobody@example.org", "pw-carol")
    assert wrong.status_code == unknown.status_code == 403
    assert wrong.json() == unknown.json()

    r = await http.post(
        f"{V3}/account/3pid/delete", json={"medium": "email", "address": "carol@example.org"},
        headers=auth_headers(token),
    )
    assert r.status_code == 200 and r.json() == {"id_server_unbind_result": "no-support"}
    assert (await http.get(f"{V3}/account/3pid", headers=auth_headers(token))).json() == {"threepids": []}
    assert (await login_by_email(http, "carol@example.org", "pw-carol")).status_code == 403


async def test_register_with_an_email_address(http: httpx.AsyncClient, mailbox: MailBox) -> None:
    r = await http.post(f"{V3}/register", json={"username": "dave", "password": "pw-dave"})
    assert r.status_code == 401
    flows = r.json()["flows"]
    assert {"stages": ["m.login.email.identity"]} in flows and {"stages": ["m.login.dummy"]} in flows
    session = r.json()["session"]
    token_body = {"client_secret": "regsecret", "email": "dave@example.org", "send_attempt": 1,
                  "next_link": "javascript:alert(1)"}
    r = await http.post(f"{V3}/register/email/requestToken", json=token_body)
    assert r.status_code == 400 and r.json()["errcode"] == "M_INVALID_PARAM"
    token_body["next_link"] = "https://app.example/#/register?a=1&b=<2>"
    r = await http.post(f"{V3}/register/email/requestToken", json=token_body)
    sid = r.json()["sid"]
    auth = {"type": "m.login.email.identity", "session": session,
            "threepid_creds": {"sid": sid, "client_secret": "regsecret"}}
    # Not confirmed yet: the stage fails, the flows are offered again.
    r = await http.post(f"{V3}/register", json={"username": "dave", "password": "pw-dave", "auth": auth})
    assert r.status_code == 401 and r.json()["errcode"] == "M_THREEPID_AUTH_FAILED"
    assert r.json()["completed"] == []

    link, _ = link_and_code(mailbox.last_to("dave@example.org"))
    assert "create an account" in mailbox.last_to("dave@example.org").get_content()
    async with httpx.AsyncClient() as browser:
        page = await browser.get(link)
    # The page offers the app's next_link (escaped), and does not redirect to it.
    assert page.status_code == 200
    assert '<a href="https://app.example/#/register?a=1&amp;b=&lt;2&gt;">Continue</a>' in page.text
    r = await http.post(f"{V3}/register", json={"username": "dave", "password": "pw-dave", "auth": auth})
    assert r.status_code == 200, r.text
    dave, token = r.json()["user_id"], r.json()["access_token"]
    [tp] = (await http.get(f"{V3}/account/3pid", headers=auth_headers(token))).json()["threepids"]
    assert tp["address"] == "dave@example.org"
    assert (await login_by_email(http, "dave@example.org", "pw-dave")).json()["user_id"] == dave

    # The spec's one allowed disclosure: registration says the address is taken.
    r = await request_token(http, "/register/email/requestToken", "dave@example.org", "another")
    assert r.status_code == 400 and r.json()["errcode"] == "M_THREEPID_IN_USE"


async def test_reset_a_forgotten_password_with_the_mailed_code(http: httpx.AsyncClient, mailbox: MailBox) -> None:
    erin, token, _ = await register(http, "erin")
    await add_email(http, mailbox, token, erin, "erin@example.org")

    r = await request_token(http, "/account/password/email/requestToken", "stranger@example.org")
    assert r.status_code == 400 and r.json()["errcode"] == "M_THREEPID_NOT_FOUND"
    r = await request_token(http, "/account/password/email/requestToken", "erin@example.org", "reset")
    assert r.status_code == 200, r.text
    sid, submit_url = r.json()["sid"], r.json()["submit_url"]
    mail = mailbox.last_to("erin@example.org")
    assert "Reset your password" in mail["Subject"]
    _, code = link_and_code(mail)

    # The person types the code into their app, which posts it to submit_url.
    async with httpx.AsyncClient() as app:
        wrong = await app.post(submit_url, json={"sid": sid, "client_secret": "reset", "token": "guess"})
        assert wrong.status_code == 200 and wrong.json() == {"success": False}
        ok = await app.post(submit_url, json={"sid": sid, "client_secret": "reset", "token": code})
        assert ok.json() == {"success": True}

    auth = {"type": "m.login.email.identity", "threepid_creds": {"sid": sid, "client_secret": "reset"}}
    r = await http.post(f"{V3}/account/password", json={"new_password": "new-pw"})
    assert r.status_code == 401 and r.json()["flows"] == [{"stages": ["m.login.email.identity"]}]
    auth["session"] = r.json()["session"]
    r = await http.post(f"{V3}/account/password", json={"new_password": "new-pw", "auth": auth})
    assert r.status_code == 200, r.text

    # Every device was logged out; the new password works, the old one not.
    assert (await http.get(f"{V3}/account/whoami", headers=auth_headers(token))).status_code == 401
    assert (await login_by_email(http, "erin@example.org", "new-pw")).status_code == 200
    assert (await login_by_email(http, "erin@example.org", "pw-erin")).status_code == 403


async def test_expired_wrong_and_malformed(
    http: httpx.AsyncClient, mailbox: MailBox, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for bad in ("no-at-sign", "two@@example.org", "a b@example.org", "x@localhost", "<x@example.org>", "x" * 250 + "@example.org"):
        r = await request_token(http, "/account/3pid/email/requestToken", bad)
        assert r.status_code == 400 and r.json()["errcode"] == "M_INVALID_PARAM", bad
    for body, errcode in (
        ({"client_secret": "a b", "email": "f@example.org", "send_attempt": 1}, "M_INVALID_PARAM"),
        ({"client_secret": "ok", "email": "f@example.org", "send_attempt": "1"}, "M_BAD_JSON"),
        ({"client_secret": "ok", "email": "f@example.org"}, "M_MISSING_PARAM"),
        ({"client_secret": "ok", "email": 5, "send_attempt": 1}, "M_BAD_JSON"),
    ):
        r = await http.post(f"{V3}/account/3pid/email/requestToken", json=body)
        assert r.status_code == 400 and r.json()["errcode"] == errcode, (body, r.text)
    assert mailbox.mails == []

    # The same send_attempt again sends no second mail and answers the same session.
    first = await request_token(http, "/account/3pid/email/requestToken", "f@example.org")
    again = await request_token(http, "/account/3pid/email/requestToken", "f@example.org")
    assert first.json()["sid"] == again.json()["sid"] and mailbox.count_to("f@example.org") == 1
    link, _ = link_and_code(mailbox.last_to("f@example.org"))
    async with httpx.AsyncClient() as browser:
        tampered = await browser.get(link.replace("token=", "token=x"))
        assert tampered.status_code == 400
        assert (await browser.get(link.split("?")[0])).status_code == 400
        # Two hours later the link has expired.
        clock = server.services.clock
        now = clock.time_ms()
        monkeypatch.setattr(clock, "time_ms", lambda: now + 2 * 3600 * 1000)
        late = await browser.get(link)
    assert late.status_code == 400 and "expired" in late.text

    r = await http.post(f"{V3}/account/3pid/msisdn/requestToken", json={
        "client_secret": "ok", "country_code": "GB", "phone_number": "07700900001", "send_attempt": 1})
    assert r.status_code == 400 and r.json()["errcode"] == "M_THREEPID_MEDIUM_NOT_SUPPORTED"


@pytest.mark.parametrize("config", [{"rate_limits": {"enabled": True, "threepid_request": {"per_second": 0.001, "burst": 3}}}], indirect=True)
async def test_a_flood_of_requests_is_limited(http: httpx.AsyncClient, mailbox: MailBox) -> None:
    answers = []
    for i in range(5):
        r = await request_token(http, "/account/3pid/email/requestToken", f"flood{i}@example.org", attempt=1)
        answers.append(r.status_code)
    assert answers[:3] == [200, 200, 200] and answers[3:] == [429, 429]
    assert r.json()["errcode"] == "M_LIMIT_EXCEEDED" and r.json()["retry_after_ms"] > 0
    assert len(mailbox.mails) == 3


async def test_without_smtp_email_is_not_offered(tmp_path: Path, nursery: trio.Nursery) -> None:
    from pocketserver.server import run_server

    running: RunningServer = await nursery.start(partial(run_server, make_config(tmp_path), out=None, handle_signals=False))
    async with httpx.AsyncClient(base_url=running.urls[0]) as http:
        _u, token, _ = await register(http, "frank")
        caps = (await http.get(f"{V3}/capabilities", headers=auth_headers(token))).json()["capabilities"]
        assert caps["m.3pid_changes"] == {"enabled": False}
        r = await request_token(http, "/account/3pid/email/requestToken", "frank@example.org")
        assert r.status_code == 400 and r.json()["errcode"] == "M_THREEPID_MEDIUM_NOT_SUPPORTED"
        r = await http.post(f"{V3}/register", json={"username": "gina", "password": "x"})
        assert r.json()["flows"] == [{"stages": ["m.login.dummy"]}]
        # No reset without SMTP: /account/password still wants an access token.
        r = await http.post(f"{V3}/account/password", json={"new_password": "x"})
        assert r.status_code == 401 and r.json()["errcode"] == "M_MISSING_TOKEN"
    running.stop.set()


async def test_mail_over_starttls(tmp_path: Path, nursery: trio.Nursery) -> None:
    from pocketserver.server import run_server

    cert, key = shared_certificate()
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    smtp = start_smtp(tls_context=tls, require_starttls=True)
    box, port = next(smtp)
    try:
        cfg = email_config(tmp_path, port, email={"tls": "starttls"})
        running: RunningServer = await nursery.start(partial(run_server, cfg, out=None, handle_signals=False))
        async with httpx.AsyncClient(base_url=running.urls[0]) as http:
            r = await request_token(http, "/register/email/requestToken", "tls@example.org")
            assert r.status_code == 200, r.text
        assert box.count_to("tls@example.org") == 1
        running.stop.set()
    finally:
        smtp.close()


# -- identity servers ------------------------------------------------------------------


class BindingIdentityServer(IdentityServer):
    """The invite identity server, plus validated sessions, /3pid/bind and /unbind."""

    def __init__(self) -> None:
        super().__init__()
        self.sessions: dict[str, str] = {}
        self.unbinds: list[tuple[dict[str, Any], str]] = []

    def answer(self, method: str, target: str, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
        if target == "/_matrix/identity/v2/3pid/unbind":
            req = json.loads(body)
            self.unbinds.append((req, headers.get("authorization", "")))
            address = req["threepid"]["address"]
            if self.bindings.get(address) != req["mxid"]:
                return 404, {"errcode": "M_NO_VALID_SESSION", "error": "not bound"}
            del self.bindings[address]
            return 200, {}
        if target == "/_matrix/identity/v2/3pid/bind" and headers.get("authorization") == f"Bearer {ID_TOKEN}":
            req = json.loads(body)
            address = self.sessions.get(req["sid"])
            if address is None:
                return 400, {"errcode": "M_SESSION_NOT_VALIDATED", "error": "no"}
            self.bindings[address] = req["mxid"]
            return 200, {"medium": "email", "address": address, "mxid": req["mxid"], "signatures": {}}
        return super().answer(method, target, headers, body)


@pytest.fixture
async def ids(nursery: trio.Nursery) -> AsyncIterator[BindingIdentityServer]:
    cert, key = shared_certificate()
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    server = BindingIdentityServer()
    listeners = await nursery.start(partial(trio.serve_ssl_over_tcp, server.handle, 0, tls, host="127.0.0.1"))
    server.name = f"127.0.0.1:{listeners[0].transport_listener.socket.getsockname()[1]}"
    yield server


async def test_bind_and_unbind_at_an_identity_server(http: httpx.AsyncClient, ids: BindingIdentityServer) -> None:
    hank, token, _ = await register(http, "hank")
    ids.sessions["is-sid"] = "hank@example.org"
    body = {"id_server": ids.name, "id_access_token": ID_TOKEN, "sid": "is-sid", "client_secret": "c"}
    r = await http.post(f"{V3}/account/3pid/bind", json=body, headers=auth_headers(token))
    assert r.status_code == 200, r.text
    assert ids.bindings["hank@example.org"] == hank
    # An identity server's refusal reaches the client as an error, not a 500.
    r = await http.post(f"{V3}/account/3pid/bind", json={**body, "sid": "unknown"}, headers=auth_headers(token))
    assert r.status_code == 400 and r.json()["errcode"] == "M_SESSION_NOT_VALIDATED"

    # Unbinding without naming the identity server: the server remembers where it bound.
    r = await http.post(f"{V3}/account/3pid/unbind", json={"medium": "email", "address": "hank@example.org"}, headers=auth_headers(token))
    assert r.json() == {"id_server_unbind_result": "success"}
    assert "hank@example.org" not in ids.bindings
    req, authorization = ids.unbinds[-1]
    assert req == {"mxid": hank, "threepid": {"medium": "email", "address": "hank@example.org"}}
    assert authorization.startswith("X-Matrix ") and f'destination="{ids.name}"' in authorization
    # Nothing bound any more, no identity server named: nothing to do.
    r = await http.post(f"{V3}/account/3pid/unbind", json={"medium": "email", "address": "hank@example.org"}, headers=auth_headers(token))
    assert r.json() == {"id_server_unbind_result": "no-support"}

    # Bound again, then the account is deactivated: the binding goes too.
    assert (await http.post(f"{V3}/account/3pid/bind", json=body, headers=auth_headers(token))).status_code == 200
    r = await http.post(f"{V3}/account/deactivate", json={"auth": password_auth(hank, "pw-hank")}, headers=auth_headers(token))
    assert r.status_code == 200 and r.json() == {"id_server_unbind_result": "success"}
    assert "hank@example.org" not in ids.bindings


async def test_delete_unbinds_where_it_was_bound(http: httpx.AsyncClient, ids: BindingIdentityServer) -> None:
    ivy, token, _ = await register(http, "ivy")
    ids.bindings["ivy@example.org"] = ivy  # bound out of band
    r = await http.post(
        f"{V3}/account/3pid/delete", json={"medium": "email", "address": "ivy@example.org", "id_server": ids.name},
        headers=auth_headers(token),
    )
    assert r.json() == {"id_server_unbind_result": "success"} and "ivy@example.org" not in ids.bindings
    for bad in ({"medium": "fax", "address": "x"}, {"medium": "email"}, {"medium": "email", "address": "a@b.c", "id_server": "a/b"}):
        r = await http.post(f"{V3}/account/3pid/delete", json=bad, headers=auth_headers(token))
        assert r.status_code == 400 and r.json()["errcode"] in ("M_INVALID_PARAM", "M_MISSING_PARAM"), bad


async def test_a_mail_that_cannot_be_sent_is_an_upstream_error(
    tmp_path: Path, nursery: trio.Nursery, smtp: tuple[MailBox, int]
) -> None:
    """No SMTP server listening, or one that does not offer the STARTTLS the config
    asks for: 502, and the same request again really tries again."""
    from pocketserver.server import run_server

    box, port = smtp
    for name, cfg in (
        ("closed", email_config(tmp_path / "a", _free_port())),
        ("no-starttls", email_config(tmp_path / "b", port, email={"tls": "starttls"})),
    ):
        running: RunningServer = await nursery.start(partial(run_server, cfg, out=None, handle_signals=False))
        async with httpx.AsyncClient(base_url=running.urls[0]) as http:
            for _ in range(2):
                r = await request_token(http, "/account/3pid/email/requestToken", f"{name}@example.org")
                assert r.status_code == 502 and r.json()["errcode"] == "M_UNKNOWN", r.text
        running.stop.set()
    assert box.mails == []  # nothing went out in the clear
