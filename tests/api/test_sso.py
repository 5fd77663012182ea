"""Single sign-on through CAS, against the real app and a fake CAS server on loopback:
the login flows, the redirect to the CAS server, the ticket callback, the one-time
login token (used once, expiring, kept across a restart), accounts linked to CAS users,
required attributes, and the m.login.sso stage of user-interactive auth."""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest
import trio

from pocketserver.config import Config
from pocketserver.server import RunningServer, run_server
from tests.api.appservice_helpers import AsRequest, FakeAppservice
from tests.api.helpers import V3, auth_headers, register
from tests.conftest import make_config

SERVICE_BASE = "https://matrix.test.local/"
CALLBACK = SERVICE_BASE + "_matrix/client/r0/login/cas/ticket"
CLIENT = "https://client.example/after?state=abc%2Fdef"


def cas_success(user: str, **attributes: str) -> bytes:
    attrs = "".join(f"<cas:{k}>{v}</cas:{k}>" for k, v in attributes.items())
    return (
        "<cas:serviceResponse xmlns:cas='http://www.yale.edu/tp/cas'><cas:authenticationSuccess>"
        f"<cas:user>{user}</cas:user><cas:attributes>{attrs}</cas:attributes>"
        "</cas:authenticationSuccess></cas:serviceResponse>"
    ).encode()


CAS_FAILURE = (
    b"<cas:serviceResponse xmlns:cas='http://www.yale.edu/tp/cas'>"
    b"<cas:authenticationFailure code='INVALID_TICKET'>Ticket ST-1 not recognized"
    b"</cas:authenticationFailure></cas:serviceResponse>"
)


class FakeCas:
    """The CAS server's /proxyValidate: ``tickets`` maps a ticket to its user's answer."""

    def __init__(self) -> None:
        self.tickets: dict[str, bytes] = {}
        self.server = FakeAppservice(self.handle)

    async def handle(self, req: AsRequest) -> tuple[int, Any]:
        if req.path != "/cas/proxyValidate":
            return 404, b"not found"
        return 200, self.tickets.get(req.query.get("ticket", ""), CAS_FAILURE)

    @property
    def url(self) -> str:
        return self.server.url + "/cas"


@pytest.fixture
async def cas(nursery: trio.Nursery) -> FakeCas:
    fake = FakeCas()
    await fake.server.start(nursery)
    return fake


def cas_config(tmp_path: Path, cas: FakeCas, **extra: Any) -> Config:
    return make_config(tmp_path, {"cas": {
        "enabled": True, "server_url": cas.url, "service_url": SERVICE_BASE, **extra,
    }})


@pytest.fixture
def config(tmp_path: Path, cas: FakeCas) -> Config:
    return cas_config(tmp_path, cas, displayname_attribute="name")


async def sso_login(
    http: httpx.AsyncClient, cas: FakeCas, ticket: str, answer: bytes, client: str = CLIENT
) -> httpx.Response:
    """Steps 1-4: the redirect to CAS, then the CAS server sending the browser back."""
    r = await http.get(f"{V3}/login/sso/redirect", params={"redirectUrl": client})
    assert r.status_code == 302, r.text
    location = urlsplit(r.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == cas.url + "/login"
    service = parse_qs(location.query)["service"][0]
    assert service == f"{CALLBACK}?redirectUrl={quote(client, safe='')}"
    cas.tickets[ticket] = answer
    # The CAS server sends the browser to the service URL with the ticket; the test
    # server is at another address than the public one.
    path = urlsplit(service)
    return await http.get(f"{path.path}?{path.query}&ticket={ticket}")


def login_token_of(page: httpx.Response) -> str:
    assert page.status_code == 200, page.text
    m = re.search(r'href="([^"]+)"', page.text)
    assert m, page.text
    link = m.group(1).replace("&amp;", "&")
    assert link.startswith("https://client.example/after?state=abc%2Fdef&loginToken=")
    return parse_qs(urlsplit(link).query)["loginToken"][0]


async def token_login(http: httpx.AsyncClient, token: str, **extra: Any) -> httpx.Response:
    return await http.post(f"{V3}/login", json={"type": "m.login.token", "token": token, **extra})


async def test_login_flows_list_sso_only_when_configured(http: httpx.AsyncClient, tmp_path: Path, nursery: trio.Nursery) -> None:
    r = await http.get(f"{V3}/login")
    types = [f["type"] for f in r.json()["flows"]]
    assert {"m.login.password", "m.login.sso", "m.login.cas", "m.login.token"} <= set(types)
    sso = next(f for f in r.json()["flows"] if f["type"] == "m.login.sso")
    assert sso["identity_providers"] == [{"id": "cas", "name": "CAS"}]
    # A server without [cas]: password only, and the SSO endpoints are not there.
    plain = await nursery.start(partial(run_server, make_config(tmp_path / "plain"), out=None, handle_signals=False))
    async with httpx.AsyncClient(base_url=plain.urls[0], timeout=30) as other:
        r = await other.get(f"{V3}/login")
        assert [f["type"] for f in r.json()["flows"]] == ["m.login.password"]
        r = await other.get(f"{V3}/login/sso/redirect", params={"redirectUrl": CLIENT})
        assert r.status_code == 404 and r.json()["errcode"] == "M_UNRECOGNIZED"
    plain.stop.set()


async def test_login_through_cas_end_to_end(http: httpx.AsyncClient, cas: FakeCas) -> None:
    page = await sso_login(http, cas, "ST-1", cas_success("Jo.Smith!", name="Jo Smith"))
    # The CAS server was asked about that ticket, for the same service URL.
    validate = [r for r in cas.server.requests if r.path == "/cas/proxyValidate"]
    assert validate[-1].query == {
        "ticket": "ST-1", "service": f"{CALLBACK}?redirectUrl={quote(CLIENT, safe='')}",
    }
    # The page asks before sending the token to a site the operator does not trust.
    assert "client.example" in page.text and "Jo.Smith" not in page.text
    token = login_token_of(page)
    r = await token_login(http, token, device_id="SSODEV", initial_device_display_name="phone")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user_id"] == "@jo.smith=21:test.local" and body["device_id"] == "SSODEV"
    h = auth_headers(body["access_token"])
    r = await http.get(f"{V3}/account/whoami", headers=h)
    assert r.json()["user_id"] == "@jo.smith=21:test.local"
    r = await http.get(f"{V3}/profile/@jo.smith=21:test.local/displayname")
    assert r.json() == {"displayname": "Jo Smith"}
    # Signing in again through CAS reaches the same account.
    page = await sso_login(http, cas, "ST-2", cas_success("Jo.Smith!"))
    r = await token_login(http, login_token_of(page))
    assert r.json()["user_id"] == "@jo.smith=21:test.local"


async def test_a_bad_ticket_is_refused(http: httpx.AsyncClient, cas: FakeCas) -> None:
    page = await sso_login(http, cas, "ST-bad", CAS_FAILURE)
    assert page.status_code == 403 and page.json()["errcode"] == "M_FORBIDDEN"
    assert "loginToken" not in page.text
    # A browser is shown a page instead.
    r = await http.get(
        "/_matrix/client/r0/login/cas/ticket",
        params={"redirectUrl": CLIENT, "ticket": "ST-bad"}, headers={"Accept": "text/html"},
    )
    assert r.status_code == 403 and r.headers["Content-Type"].startswith("text/html")
    # Garbage from the CAS server, a CAS server that is down, a missing ticket.
    page = await sso_login(http, cas, "ST-junk", b"<!DOCTYPE x [<!ENTITY a 'b'>]><x>&a;</x>")
    assert page.status_code == 502 and page.json()["errcode"] == "M_UNKNOWN"
    r = await http.get(f"{V3}/login/cas/ticket", params={"redirectUrl": CLIENT})
    assert r.status_code == 400 and r.json()["errcode"] == "M_MISSING_PARAM"
    # A redirectUrl that would run script in the page is refused up front.
    r = await http.get(f"{V3}/login/sso/redirect", params={"redirectUrl": "javascript:alert(1)"})
    assert r.status_code == 400 and r.json()["errcode"] == "M_INVALID_PARAM"
    r = await http.get(f"{V3}/login/sso/redirect/other-idp", params={"redirectUrl": CLIENT})
    assert r.status_code == 404 and r.json()["errcode"] == "M_NOT_FOUND"
    r = await token_login(http, "psl_made-up")
    assert r.status_code == 403 and r.json()["errcode"] == "M_FORBIDDEN"


async def test_a_login_token_works_once(http: httpx.AsyncClient, cas: FakeCas) -> None:
    token = login_token_of(await sso_login(http, cas, "ST-3", cas_success("once")))
    r = await token_login(http, token)
    assert r.status_code == 200, r.text
    r = await token_login(http, token)
    assert r.status_code == 403 and r.json()["errcode"] == "M_FORBIDDEN"


async def test_a_login_token_expires(
    http: httpx.AsyncClient, cas: FakeCas, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = login_token_of(await sso_login(http, cas, "ST-4", cas_success("late")))
    clock = server.services.clock
    later = clock.time_ms() + 121 * 1000  # the default lifetime is 120 s
    monkeypatch.setattr(clock, "time_ms", lambda: later)
    r = await token_login(http, token)
    assert r.status_code == 403 and r.json()["errcode"] == "M_FORBIDDEN"


async def test_trusted_clients_are_redirected_with_the_token(tmp_path: Path, cas: FakeCas, nursery: trio.Nursery) -> None:
    config = cas_config(tmp_path, cas, trusted_client_urls=["https://client.example/"])
    running = await nursery.start(partial(run_server, config, out=None, handle_signals=False))
    async with httpx.AsyncClient(base_url=running.urls[0], timeout=30) as http:
        client = CLIENT + "&loginToken=stale"
        r = await sso_login(http, cas, "ST-5", cas_success("trusted"), client=client)
        assert r.status_code == 302
        target = r.headers["Location"]
        # The client's query is kept as it was; a loginToken it had is replaced.
        assert target.startswith("https://client.example/after?state=abc%2Fdef&loginToken=")
        assert target.count("loginToken") == 1
        r = await token_login(http, parse_qs(urlsplit(target).query)["loginToken"][0])
        assert r.status_code == 200 and r.json()["user_id"] == "@trusted:test.local"
    running.stop.set()


async def test_required_attributes(tmp_path: Path, cas: FakeCas, nursery: trio.Nursery) -> None:
    config = cas_config(tmp_path, cas, required_attributes={"dept": "staff", "mail": ""})
    running = await nursery.start(partial(run_server, config, out=None, handle_signals=False))
    async with httpx.AsyncClient(base_url=running.urls[0], timeout=30) as http:
        r = await sso_login(http, cas, "ST-6", cas_success("visitor", dept="guests", mail="v@x"))
        assert r.status_code == 403 and r.json()["errcode"] == "M_FORBIDDEN"
        r = await sso_login(http, cas, "ST-7", cas_success("nomail", dept="staff"))
        assert r.status_code == 403
        r = await sso_login(http, cas, "ST-8", cas_success("member", dept="staff", mail="m@x"))
        r = await token_login(http, login_token_of(r))
        assert r.json()["user_id"] == "@member:test.local"
    running.stop.set()


async def test_tokens_and_links_survive_a_restart(tmp_path: Path, cas: FakeCas) -> None:
    config = cas_config(tmp_path, cas)
    async with trio.open_nursery() as first:
        running: RunningServer = await first.start(partial(run_server, config, out=None, handle_signals=False))
        async with httpx.AsyncClient(base_url=running.urls[0], timeout=30) as http:
            # An account that existed before CAS: linked to the CAS user of its name.
            await register(http, "alice")
            token = login_token_of(await sso_login(http, cas, "ST-9", cas_success("ALICE")))
        running.stop.set()
    async with trio.open_nursery() as second:
        running = await second.start(partial(run_server, config, out=None, handle_signals=False))
        async with httpx.AsyncClient(base_url=running.urls[0], timeout=30) as http:
            r = await token_login(http, token)
            assert r.status_code == 200 and r.json()["user_id"] == "@alice:test.local"
            # The link is there too: alice is offered single sign-on to confirm it is her.
            h = auth_headers(r.json()["access_token"])
            r = await http.post(f"{V3}/delete_devices", json={"devices": ["X"]}, headers=h)
            flows = [f["stages"] for f in r.json()["flows"]]
            assert flows == [["m.login.password"], ["m.login.sso"]]
        running.stop.set()


async def _sso_user_with_uia_session(http: httpx.AsyncClient, cas: FakeCas) -> tuple[str, str]:
    """A user made through CAS, signed in on two devices, and the session of the
    deletion of the first one it started from the second; (session, access token)."""
    r = await token_login(http, login_token_of(await sso_login(http, cas, "ST-u", cas_success("carol"))), device_id="OLD")
    assert r.status_code == 200, r.text
    r = await token_login(http, login_token_of(await sso_login(http, cas, "ST-v", cas_success("carol"))))
    token = r.json()["access_token"]
    r = await http.delete(f"{V3}/devices/OLD", headers=auth_headers(token))
    assert r.status_code == 401
    # No password on this account: single sign-on is the one way to confirm.
    assert [f["stages"] for f in r.json()["flows"]] == [["m.login.sso"]]
    return r.json()["session"], token


async def test_user_interactive_auth_with_sso(http: httpx.AsyncClient, cas: FakeCas) -> None:
    session, token = await _sso_user_with_uia_session(http, cas)
    h = auth_headers(token)
    # The fallback page says what is being confirmed and links to the CAS server.
    r = await http.get(f"{V3}/auth/m.login.sso/fallback/web", params={"session": session})
    assert r.status_code == 200 and "sign out one of your devices" in r.text
    link = re.search(r'href="([^"]+)"', r.text)
    assert link
    service = parse_qs(urlsplit(link.group(1).replace("&amp;", "&")).query)["service"][0]
    assert service == f"{CALLBACK}?session={session}"
    # Sending m.login.sso as a stage does not complete it.
    r = await http.request("DELETE", f"{V3}/devices/OLD", json={"auth": {"type": "m.login.sso", "session": session}}, headers=h)
    assert r.status_code == 401 and r.json()["completed"] == []
    cas.tickets["ST-w"] = cas_success("carol")
    r = await http.get(f"{urlsplit(service).path}?{urlsplit(service).query}&ticket=ST-w")
    assert r.status_code == 200 and "onAuthDone" in r.text
    r = await http.request("DELETE", f"{V3}/devices/OLD", json={"auth": {"session": session}}, headers=h)
    assert r.status_code == 200, r.text
    r = await http.get(f"{V3}/devices/OLD", headers=h)
    assert r.status_code == 404


async def test_sso_as_someone_else_refuses_the_session(http: httpx.AsyncClient, cas: FakeCas) -> None:
    session, token = await _sso_user_with_uia_session(http, cas)
    h = auth_headers(token)
    # dave signs in at the CAS server for carol's session.
    cas.tickets["ST-x"] = cas_success("dave")
    r = await http.get("/_matrix/client/r0/login/cas/ticket", params={"session": session, "ticket": "ST-x"})
    assert r.status_code == 200 and "onAuthDone" not in r.text
    r = await http.request("DELETE", f"{V3}/devices/OLD", json={"auth": {"session": session}}, headers=h)
    assert r.status_code == 403 and r.json()["errcode"] == "M_FORBIDDEN"
    r = await http.get(f"{V3}/devices/OLD", headers=h)
    assert r.status_code == 200
    # A user without a CAS identity gets no m.login.sso flow and no page.
    _uid, other, _dev = await register(http, "erin")
    r = await http.post(f"{V3}/account/deactivate", json={}, headers=auth_headers(other))
    assert [f["stages"] for f in r.json()["flows"]] == [["m.login.password"]]
    r = await http.get(f"{V3}/auth/m.login.sso/fallback/web", params={"session": r.json()["session"]})
    assert r.status_code == 403 and r.json()["errcode"] == "M_FORBIDDEN"
    r = await http.get(f"{V3}/auth/m.login.sso/fallback/web", params={"session": "nosuch"})
    assert r.status_code == 404 and r.json()["errcode"] == "M_NOT_FOUND"
