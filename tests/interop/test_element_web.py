"""Element Web (the shared 1.11.88 build) in a real Chromium against the real pocketserver.

The build lives beside the project in ``../shared/conformance/element-web/`` (see that
folder's README); it is unpacked into the test's tmp_path and served from a small static
file server on loopback, with a ``config.json`` pointing at the pocketserver the
interop fixture started. ``js/element_web.mjs`` drives Chromium (playwright-core) as two
people through Element's own UI; this test asserts on what the pages showed. When a
step fails, the screenshots of both pages are kept and their paths printed.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import zstandard

from tests.api.test_threepids import start_smtp
from tests.interop.conftest import REPO, ServerProcess, start_pocketserver
from tests.interop.test_js_sdk import JS_DIR, NODE

pytestmark = pytest.mark.interop

ELEMENT_TARBALL_NAME = "element-web-1.11.88.tar.zst"
CHROMIUM = Path("/usr/bin/chromium")
DRIVER_TIMEOUT_S = 420.0


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def conformance_dir() -> Path:
    """``../shared/conformance`` beside the repository; from a git worktree, beside the
    main checkout that the worktree belongs to."""
    checkouts = [REPO]
    try:
        common = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--path-format=absolute", "--git-common-dir"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        checkouts.append(Path(common).parent)
    except (OSError, subprocess.SubprocessError):
        pass
    for checkout in checkouts:
        candidate = checkout.parent / "shared" / "conformance"
        if candidate.is_dir():
            return candidate
    return REPO.parent / "shared" / "conformance"


@pytest.fixture
def element_webapp(tmp_path: Path) -> Iterator[Path]:
    """Element Web's build unpacked into tmp_path (never into the repository)."""
    conformance = conformance_dir()
    if not conformance.is_dir():
        pytest.skip(f"no conformance instruments at {conformance} (Element Web lives there)")
    tarball = conformance / "element-web" / ELEMENT_TARBALL_NAME
    if not tarball.is_file():
        pytest.fail(f"{tarball} is missing")
    root = tmp_path / "element"
    root.mkdir()
    with open(tarball, "rb") as raw:
        reader = zstandard.ZstdDecompressor().stream_reader(raw)
        with tarfile.open(fileobj=reader, mode="r|") as tar:
            tar.extractall(root, filter="data")
    try:
        yield root / "webapp"
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def mail_dir(tmp_path: Path) -> Path:
    """Where the test's SMTP server leaves each mail, as ``<recipient>.txt``."""
    path = tmp_path / "mail"
    path.mkdir()
    return path


@pytest.fixture
def pocketserver_process(tmp_path: Path, mail_dir: Path) -> Iterator[ServerProcess]:
    """The real pocketserver, sending its mail to an SMTP server on loopback."""
    smtp = start_smtp(mail_dir)
    _box, port = next(smtp)
    try:
        toml = f'[email]\nsmtp_host = "127.0.0.1"\nsmtp_port = {port}\ntls = "none"\n'
        with start_pocketserver(tmp_path, extra_toml=toml) as sp:
            yield sp
    finally:
        smtp.close()


@pytest.fixture
def element_url(element_webapp: Path, pocketserver_process: ServerProcess) -> Iterator[str]:
    """Element Web served on a loopback port, configured for the started pocketserver."""
    webapp = element_webapp
    (webapp / "config.json").write_text(
        json.dumps(
            {
                "default_server_config": {
                    "m.homeserver": {
                        "base_url": pocketserver_process.base_url,
                        "server_name": pocketserver_process.server_name,
                    }
                },
                "disable_guests": True,
                "disable_custom_urls": True,
            }
        ),
        encoding="utf-8",
    )
    httpd = ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(webapp))
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def test_element_web_two_people(
    element_url: str, pocketserver_process: ServerProcess, tmp_path: Path, mail_dir: Path
) -> None:
    """Sign up through Element's form, create a room with an address, open it by that
    address and join, chat both ways, an image, an encrypted room joined by invite where
    both read each other, a kick whose reason the kicked user sees, and an e-mail
    address added in Settings and confirmed by following the link in the mail."""
    if not (JS_DIR / "node_modules" / "playwright-core").is_dir() or not NODE.exists():
        pytest.fail("tests/interop/js has no playwright-core: run `npm install` there (tests/run does)")
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (tests/run does)")
    shots = tmp_path / "element-screenshots"
    proc = subprocess.run(
        [
            str(NODE),
            str(JS_DIR / "element_web.mjs"),
            element_url,
            pocketserver_process.base_url,
            pocketserver_process.server_name,
            str(shots),
            str(mail_dir),
        ],
        capture_output=True,
        text=True,
        timeout=DRIVER_TIMEOUT_S,
        cwd=JS_DIR,
        stdin=subprocess.DEVNULL,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no result from the driver (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    result = json.loads(lines[-1])
    if not result["ok"]:
        pytest.fail(
            f"Element step failed: {result['step']}\n{result['error']}\n"
            f"screenshots: {result['screenshots']}\n"
            "failed homeserver requests:\n  " + "\n  ".join(result["requests"]) + "\n"
            "browser console errors:\n  " + "\n  ".join(result["console"]) + "\n"
            f"pocketserver log: {pocketserver_process.log_path}"
        )
    seen = result["seen"]
    # A new account is shown by its localpart, not its full user ID.
    assert seen["display_name"].startswith("alice_")
    assert seen["sender_shown_as"] == seen["display_name"]
    assert seen["image_width"] == 64
    assert seen["encrypted_room"] is True
    assert "You were removed from Secret" in seen["kick_text"]
    assert "Reason: too noisy" in seen["kick_text"]
    assert seen["link_page"] == "E-mail address confirmed"
    assert seen["email_listed"] == f"{seen['display_name']}@example.org"
    # Nothing the server answered made the browser drop a request (CORS, no answer).
    assert not [r for r in result["requests"] if " failed: " in r], result["requests"]
    assert "Traceback" not in pocketserver_process.log()
