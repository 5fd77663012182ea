"""The packaged executable (``pyinstaller pyinstaller.spec``) as a user runs it.

Built once for this module from this tree into a temporary folder (tests/packaged.py),
then started with no configuration in an empty folder with a fresh home: register, chat,
upload a picture and get its thumbnail, stop with SIGTERM, start again and find the
message and the picture, and create a user with ``register-user``. A dependency the
spec misses (a hidden import, a data file) breaks the executable and this test, not a
user's first start.

Zero-config means no configuration at all when the default ports (8008, 8448) are free;
where they are taken, a configuration that names only the two listeners' ports.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.interop.conftest import free_port, port_free, wait_for
from tests.packaged import build_executable, descendants

pytestmark = pytest.mark.packaged

START_DEADLINE_S = 120.0  # a one-file executable unpacks itself first; the machine may be busy
STOP_DEADLINE_S = 30.0
MESSAGE = "hello from the packaged server"


@pytest.fixture(scope="module")
def executable(tmp_path_factory: pytest.TempPathFactory) -> Path:
    exe, _secs = build_executable(tmp_path_factory.mktemp("packaged"))
    return exe


def _start(exe: Path, args: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [str(exe), *args], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=cwd,
        )


def _stop(proc: subprocess.Popen[bytes], log: Path) -> int:
    """SIGTERM (the bootloader passes it on to the server); if the server has not stopped
    by the deadline, kill both by pid and fail."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=STOP_DEADLINE_S)
    except subprocess.TimeoutExpired:
        for pid in [*descendants(proc.pid), proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=STOP_DEADLINE_S)
        pytest.fail(f"the packaged server did not stop on SIGTERM:\n{log.read_text()}")


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (200, 150), (200, 40, 40)).save(buf, format="PNG")
    return buf.getvalue()


def _sync_bodies(client: httpx.Client, token: str, room: str) -> list[str]:
    r = client.get("/_matrix/client/v3/sync", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    events = r.json()["rooms"]["join"][room]["timeline"]["events"]
    return [e["content"].get("body") for e in events if e["type"] == "m.room.message"]


def test_zero_config_start_chat_stop_and_start_again(executable: Path, tmp_path: Path) -> None:
    home, folder, tmp = tmp_path / "home", tmp_path / "empty", tmp_path / "tmp"
    for d in (home, folder, tmp):
        d.mkdir()
    # A user's environment: nothing of this test run's Python settings; TMPDIR where the
    # executable unpacks itself, to see that it cleans up.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "XDG_DATA_HOME"}
    env.update(HOME=str(home), TMPDIR=str(tmp))
    if port_free(8008) and port_free(8448):
        args: list[str] = []
        ports = (8008, 8448)
    else:
        ports = (free_port(), free_port())
        config = tmp_path / "ports.toml"
        config.write_text(
            f"[[listeners]]\nport = {ports[0]}\n"
            f'[[listeners]]\nport = {ports[1]}\ntls = true\nresources = ["federation"]\n'
        )
        args = ["--config", str(config)]
    base, federation = f"http://127.0.0.1:{ports[0]}", f"https://127.0.0.1:{ports[1]}"
    data_dir = home / ".local" / "share" / "pocketserver"
    picture = _png()

    log = tmp_path / "run1.log"
    proc = _start(executable, args, env, folder, log)
    try:
        wait_for(lambda: "Connect a Matrix client" in log.read_text(), "the banner", proc, log,
                 deadline_s=START_DEADLINE_S)
        banner = log.read_text()
        assert base in banner and str(data_dir) in banner, banner
        # Served by the executable itself, never a re-exec into `-OO -m pocketserver`.
        for pid in [proc.pid, *descendants(proc.pid)]:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            assert cmdline[0] == str(executable).encode() and b"-OO" not in cmdline, cmdline
        # The TLS listener serves the self-signed certificate the first start made.
        r = httpx.get(f"{federation}/_matrix/key/v2/server", verify=False, timeout=10)
        assert r.status_code == 200 and r.json()["server_name"] == "localhost", r.text
        with httpx.Client(base_url=base, timeout=30) as client:
            r = client.post("/_matrix/client/v3/register", json={
                "username": "alice", "password": "pw-alice-1", "auth": {"type": "m.login.dummy"}})
            assert r.status_code == 200, r.text
            token = r.json()["access_token"]
            auth = {"Authorization": f"Bearer {token}"}
            r = client.post("/_matrix/client/v3/createRoom", json={"name": "packaged"}, headers=auth)
            assert r.status_code == 200, r.text
            room = r.json()["room_id"]
            r = client.put(f"/_matrix/client/v3/rooms/{room}/send/m.room.message/t1",
                           json={"msgtype": "m.text", "body": MESSAGE}, headers=auth)
            assert r.status_code == 200, r.text
            assert MESSAGE in _sync_bodies(client, token, room)
            r = client.post("/_matrix/media/v3/upload?filename=red.png", content=picture,
                            headers={**auth, "Content-Type": "image/png"})
            assert r.status_code == 200, r.text
            media = r.json()["content_uri"][len("mxc://"):]
            r = client.get(f"/_matrix/client/v1/media/thumbnail/{media}?width=32&height=32&method=crop",
                           headers=auth)
            assert r.status_code == 200, r.text
            from PIL import Image

            assert Image.open(io.BytesIO(r.content)).size == (32, 32)
    finally:
        code = _stop(proc, log)
    assert code == 0, log.read_text()
    assert "Traceback" not in log.read_text()
    assert (data_dir / "homeserver.db").exists()
    assert list(tmp.iterdir()) == [], "the executable left its unpacked files behind"

    log = tmp_path / "run2.log"
    proc = _start(executable, args, env, folder, log)
    try:
        wait_for(lambda: httpx.get(f"{base}/_matrix/client/versions", timeout=2).status_code == 200,
                 "the client API after the restart", proc, log, deadline_s=START_DEADLINE_S)
        with httpx.Client(base_url=base, timeout=30) as client:
            r = client.post("/_matrix/client/v3/login", json={
                "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"},
                "password": "pw-alice-1"})
            assert r.status_code == 200, r.text
            token = r.json()["access_token"]
            assert MESSAGE in _sync_bodies(client, token, room)
            r = client.get(f"/_matrix/client/v1/media/download/{media}",
                           headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200 and r.content == picture
            # The banner's advice: create a user with the same executable, then log in.
            made = subprocess.run(
                [str(executable), *args, "register-user", "bob", "--password-file", "-"],
                input="pw-bob-1\n", capture_output=True, text=True, env=env, cwd=folder,
                timeout=START_DEADLINE_S,
            )
            assert made.returncode == 0 and "@bob:localhost" in made.stdout, made.stderr
            r = client.post("/_matrix/client/v3/login", json={
                "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "bob"},
                "password": "pw-bob-1"})
            assert r.status_code == 200, r.text
    finally:
        code = _stop(proc, log)
    assert code == 0, log.read_text()
    assert "Traceback" not in log.read_text()
