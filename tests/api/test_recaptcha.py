"""reCAPTCHA for registration, against the real app and a fake siteverify API on
loopback: the stage in the flows, answers accepted and refused, the fallback page, and
the optional CAPTCHA (``require_recaptcha = false``)."""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import trio

from pocketserver.config import Config
from pocketserver.server import run_server
from tests.api.appservice_helpers import AsRequest, FakeAppservice
from tests.api.helpers import V3
from tests.conftest import make_config

GOOD = "solved-by-a-human"


async def siteverify(req: AsRequest) -> tuple[int, Any]:
    form = parse_qs(req.raw.decode())
    ok = req.path == "/siteverify" and form.get("secret") == ["private-key"] and form.get("response") == [GOOD]
    return 200, {"success": ok}


@pytest.fixture
async def verifier(nursery: trio.Nursery) -> FakeAppservice:
    fake = FakeAppservice(siteverify)
    await fake.start(nursery)
    return fake


def captcha_config(tmp_path: Path, api: str, **extra: Any) -> Config:
    return make_config(tmp_path, {"registration": {
        "recaptcha_public_key": "public-key", "recaptcha_private_key": "private-key",
        "recaptcha_siteverify_api": api, **extra,
    }})


@pytest.fixture
def config(tmp_path: Path, verifier: FakeAppservice) -> Config:
    return captcha_config(tmp_path, verifier.url + "/siteverify")


async def start(http: httpx.AsyncClient, username: str) -> dict[str, Any]:
    r = await http.post(f"{V3}/register", json={"username": username, "password": "pw"})
    assert r.status_code == 401
    return dict(r.json())


async def test_registration_needs_a_solved_captcha(http: httpx.AsyncClient, verifier: FakeAppservice) -> None:
    first = await start(http, "human")
    assert [f["stages"] for f in first["flows"]] == [["m.login.recaptcha", "m.login.dummy"]]
    session = first["session"]
    # Skipping the CAPTCHA is not possible.
    r = await http.post(f"{V3}/register", json={"auth": {"type": "m.login.dummy", "session": session}})
    assert r.status_code == 401 and r.json()["errcode"] == "M_FORBIDDEN"
    # A wrong answer is refused, after asking the verifier.
    r = await http.post(f"{V3}/register", json={"auth": {"type": "m.login.recaptcha", "response": "bot", "session": session}})
    assert r.status_code == 401 and r.json()["errcode"] == "M_FORBIDDEN" and r.json()["completed"] == []
    # The verifier got the private key and the answer as a form.
    assert verifier.requests[-1].method == "POST"
    assert verifier.requests[-1].headers["content-type"] == "application/x-www-form-urlencoded"
    r = await http.post(f"{V3}/register", json={"auth": {"type": "m.login.recaptcha", "response": GOOD, "session": session}})
    assert r.status_code == 401 and r.json()["completed"] == ["m.login.recaptcha"]
    r = await http.post(f"{V3}/register", json={"auth": {"type": "m.login.dummy", "session": session}})
    assert r.status_code == 200, r.text
    assert r.json()["user_id"] == "@human:test.local"


async def test_the_fallback_page(http: httpx.AsyncClient) -> None:
    session = (await start(http, "paged"))["session"]
    url = f"{V3}/auth/m.login.recaptcha/fallback/web"
    r = await http.get(url, params={"session": session})
    assert r.status_code == 200 and 'data-sitekey="public-key"' in r.text
    assert re.search(rf'name="session" value="{re.escape(session)}"', r.text)
    r = await http.post(url, data={"session": session, "g-recaptcha-response": "bot"})
    assert r.status_code == 200 and "did not work" in r.text and "onAuthDone" not in r.text
    r = await http.post(url, data={"session": session, "g-recaptcha-response": GOOD})
    assert r.status_code == 200 and "onAuthDone" in r.text
    # The client goes on with the session only.
    r = await http.post(f"{V3}/register", json={"auth": {"session": session}})
    assert r.status_code == 401 and r.json()["completed"] == ["m.login.recaptcha"]
    r = await http.post(f"{V3}/register", json={"auth": {"type": "m.login.dummy", "session": session}})
    assert r.status_code == 200 and r.json()["user_id"] == "@paged:test.local"
    r = await http.get(url, params={"session": "nosuch"})
    assert r.status_code == 404 and r.json()["errcode"] == "M_NOT_FOUND"
    r = await http.get(f"{V3}/auth/m.login.nosuch/fallback/web", params={"session": session})
    assert r.status_code == 404 and r.json()["errcode"] == "M_UNRECOGNIZED"


async def test_an_optional_captcha_is_checked_when_offered(tmp_path: Path, verifier: FakeAppservice, nursery: trio.Nursery) -> None:
    config = captcha_config(tmp_path, verifier.url + "/siteverify", require_recaptcha=False)
    running = await nursery.start(partial(run_server, config, out=None, handle_signals=False))
    async with httpx.AsyncClient(base_url=running.urls[0], timeout=30) as http:
        first = await start(http, "plain")
        assert [f["stages"] for f in first["flows"]] == [["m.login.dummy"]]
        r = await http.post(f"{V3}/register", json={"username": "offered", "password": "pw", "auth": {"type": "m.login.recaptcha", "response": GOOD}})
        assert r.status_code == 401 and r.json()["completed"] == ["m.login.recaptcha"]
        session = r.json()["session"]
        r = await http.post(f"{V3}/register", json={"auth": {"type": "m.login.dummy", "session": session}})
        assert r.status_code == 200 and r.json()["user_id"] == "@offered:test.local"
        r = await http.post(f"{V3}/register", json={"username": "robot", "password": "pw", "auth": {"type": "m.login.recaptcha", "response": "bot"}})
        assert r.status_code == 401 and r.json()["errcode"] == "M_FORBIDDEN"
    running.stop.set()


async def test_an_unreachable_verifier_is_an_upstream_error(tmp_path: Path, nursery: trio.Nursery) -> None:
    # A port nothing listens on.
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    config = captcha_config(tmp_path, f"http://127.0.0.1:{port}/siteverify")
    running = await nursery.start(partial(run_server, config, out=None, handle_signals=False))
    async with httpx.AsyncClient(base_url=running.urls[0], timeout=30) as http:
        session = (await start(http, "waiting"))["session"]
        r = await http.post(f"{V3}/register", json={"auth": {"type": "m.login.recaptcha", "response": GOOD, "session": session}})
        assert r.status_code == 502 and r.json()["errcode"] == "M_UNKNOWN"
    running.stop.set()
