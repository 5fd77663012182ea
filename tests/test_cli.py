"""The ``pocketserver`` command as a user runs it: zero-config start, init, register-user,
configuration errors."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.interop.conftest import (
    ServerProcess,
    free_port,
    port_free,
    start_pocketserver,
    wait_for,
)

REPO = Path(__file__).resolve().parents[1]


def _cli(*args: str, env: dict[str, str] | None = None, input: str | None = None,
         cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pocketserver", *args],
        capture_output=True, text=True, timeout=120, env=env or dict(os.environ),
        input=input, cwd=cwd,
    )


def _start_default(env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "pocketserver"], stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=env, cwd=cwd,
        )


def _server_key(base: str) -> dict[str, object]:
    r = httpx.get(f"{base}/_matrix/key/v2/server", verify=False, timeout=5)
    r.raise_for_status()
    keys = r.json()["verify_keys"]
    assert isinstance(keys, dict)
    return keys


def test_zero_config_start_restart_and_sigterm(tmp_path: Path) -> None:
    if not (port_free(8008) and port_free(8448)):
        pytest.skip("ports 8008/8448 are taken on this machine")
    home = tmp_path / "home"
    xdg = tmp_path / "xdg"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "XDG_DATA_HOME": str(xdg), "PYTHONUNBUFFERED": "1"}
    data_dir = xdg / "pocketserver"
    keys = []
    for run in range(2):
        log = tmp_path / f"run{run}.log"
        proc = _start_default(env, log, tmp_path)
        try:
            wait_for(
                lambda: httpx.get("http://127.0.0.1:8008/_matrix/client/versions", timeout=2).status_code == 200,
                "the client API", proc, log,
            )
            wait_for(lambda log=log: "data folder" in log.read_text(), "the banner", proc, log)
            banner = log.read_text()
            assert "http://127.0.0.1:8008" in banner
            assert str(data_dir) in banner
            keys.append(_server_key("https://127.0.0.1:8448"))
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
                pytest.fail("pocketserver did not stop on SIGTERM")
        assert code == 0, log.read_text()
        assert "Traceback" not in log.read_text()
    assert (data_dir / "homeserver.db").exists()
    assert keys[0] == keys[1] and keys[0], "the signing key must survive a restart"


def test_init_writes_a_config_that_loads(tmp_path: Path) -> None:
    target = tmp_path / "pocketserver.toml"
    r = _cli("init", str(target))
    assert r.returncode == 0, r.stderr
    assert target.exists() and str(target) in r.stdout
    r = _cli("init", str(target))
    assert r.returncode == 1 and "exists" in r.stderr
    r = _cli("init", str(target), "--force")
    assert r.returncode == 0
    from pocketserver.config import load_config

    cfg = load_config(target)
    assert cfg.server_name == "localhost"


def test_register_user_then_login(tmp_path: Path) -> None:
    with start_pocketserver(tmp_path) as sp:
        _register(sp, "admin", "s3cret", "--admin")
        r = httpx.post(
            f"{sp.base_url}/_matrix/client/v3/login",
            json={"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "admin"},
                  "password": "s3cret"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        token = r.json()["access_token"]
        # An admin may look at other users.
        _register(sp, "@plain:localhost", "pw2")
        r = httpx.get(
            f"{sp.base_url}/_matrix/client/v3/admin/whois/@plain:localhost",
            headers={"Authorization": f"Bearer {token}"}, timeout=30,
        )
        assert r.status_code == 200, r.text
        # The same name twice is refused with a message, not a traceback.
        r = _cli("--config", str(sp.config_path), "register-user", "admin", "--password-file", "-",
                 input="x\n")
        assert r.returncode == 1 and "already exists" in r.stderr and "Traceback" not in r.stderr


def _register(sp: ServerProcess, name: str, password: str, *flags: str) -> None:
    r = _cli("--config", str(sp.config_path), "register-user", name, "--password-file", "-", *flags,
             input=password + "\n")
    assert r.returncode == 0, r.stderr
    assert "created @" in r.stdout


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("srver_name = 'x'\n", "srver_name"),
        ("[[listeners]]\nport = 'eighty'\n", "listeners[0].port"),
        ("[registration]\nmode = 'sometimes'\n", "registration.mode"),
        ("[accounts]\nrefreshable_access_token_lifetime_ms = 5\n", "accounts.refreshable_access_token_lifetime_ms"),
        ("server_name = \n", "not valid TOML"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, toml: str, key: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(toml)
    r = _cli("--config", str(cfg), "serve")
    assert r.returncode == 2
    assert key in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_config_file(tmp_path: Path) -> None:
    r = _cli("--config", str(tmp_path / "nope.toml"))
    assert r.returncode == 2 and "nope.toml" in r.stderr and "Traceback" not in r.stderr


def test_serves_from_an_optimised_interpreter_where_bytecode_can_be_cached(tmp_path: Path) -> None:
    """Where Python may cache bytecode, `pocketserver` re-executes itself under -OO (no
    docstrings in memory): same pid, and the server works as usual, asserts stripped."""
    client, fed = (socket.socket() for _ in range(2))
    for s in (client, fed):
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in (client, fed)]
    for s in (client, fed):
        s.close()
    config = tmp_path / "c.toml"
    config.write_text(
        f'server_name = "test.local"\ndata_dir = "{tmp_path / "data"}"\n'
        f'[[listeners]]\naddress = "127.0.0.1"\nport = {ports[0]}\nresources = ["client"]\n'
        f'[[listeners]]\naddress = "127.0.0.1"\nport = {ports[1]}\ntls = true\nresources = ["federation"]\n'
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(tmp_path / "pycache")  # keep .opt-2.pyc out of the tree
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pocketserver", "--config", str(config)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=tmp_path,
        )
    base = f"http://127.0.0.1:{ports[0]}"
    try:
        wait_for(
            lambda: httpx.get(f"{base}/_matrix/client/versions", timeout=2).status_code == 200,
            "the client API", proc, log, deadline_s=120,
        )
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert b"-OO" in cmdline, cmdline
        r = httpx.post(f"{base}/_matrix/client/v3/register", json={"username": "oo", "password": "pw-oo-1", "auth": {"type": "m.login.dummy"}})
        assert r.status_code == 200, r.text
        h = {"Authorization": f"Bearer {r.json()['access_token']}"}
        room = httpx.post(f"{base}/_matrix/client/v3/createRoom", json={"name": "OO"}, headers=h).json()["room_id"]
        r = httpx.put(f"{base}/_matrix/client/v3/rooms/{room}/send/m.room.message/1", json={"msgtype": "m.text", "body": "hi"}, headers=h)
        assert r.status_code == 200, r.text
        assert httpx.get(f"{base}/_matrix/client/v3/sync", headers=h, timeout=10).json()["rooms"]["join"][room]
        r = httpx.post(f"{base}/_matrix/client/v3/createRoom", json={"name": 5}, headers=h)
        assert r.status_code == 400 and r.json()["errcode"] in ("M_BAD_JSON", "M_INVALID_PARAM"), r.text
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
    assert "Traceback" not in log.read_text()


@pytest.mark.parametrize("taken", ["client + federation", "federation"])
def test_a_port_in_use_is_one_line_and_a_non_zero_exit(tmp_path: Path, taken: str) -> None:
    """Another program on a listener's port: the operator reads which listener and which
    port could not be had, the command exits 1, and nothing is created or left running."""
    ports = {"client + federation": free_port(), "federation": free_port()}
    data_dir = tmp_path / "data"
    config = tmp_path / "c.toml"
    config.write_text(
        f'data_dir = "{data_dir}"\n'
        f'[[listeners]]\naddress = "127.0.0.1"\nport = {ports["client + federation"]}\n'
        'resources = ["client", "federation"]\n'
        f'[[listeners]]\naddress = "127.0.0.1"\nport = {ports["federation"]}\ntls = true\n'
        'resources = ["federation"]\n'
    )
    with socket.socket() as other:
        other.bind(("127.0.0.1", ports[taken]))
        other.listen()
        r = _cli("--config", str(config))
    assert r.returncode == 1, r.stderr
    assert r.stderr.splitlines() == [
        f"pocketserver: cannot listen on 127.0.0.1:{ports[taken]} ({taken}): address already in use"
    ]
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    assert not data_dir.exists()


@pytest.mark.parametrize("content", [None, "not a certificate\n"])
def test_an_unusable_tls_certificate_is_one_line_naming_it(tmp_path: Path, content: str | None) -> None:
    cert = tmp_path / "server.crt"
    if content is not None:
        cert.write_text(content)
    config = tmp_path / "c.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\n'
        '[[listeners]]\naddress = "127.0.0.1"\nport = 0\n'
        f'[[listeners]]\naddress = "127.0.0.1"\nport = 0\ntls = true\ntls_cert = "{cert}"\n'
        f'tls_key = "{cert}"\nresources = ["federation"]\n'
    )
    r = _cli("--config", str(config))
    assert r.returncode == 1, r.stderr
    why = "no such file or directory" if content is None else "not a PEM certificate and its private key"
    assert r.stderr.splitlines() == [
        f"pocketserver: cannot listen on 127.0.0.1:0 (federation): TLS certificate {cert} "
        f"with key {cert}: {why}"
    ]
    assert "Traceback" not in r.stdout
    assert not (tmp_path / "data").exists()


def test_check_federation_against_a_loopback_server(tmp_path: Path) -> None:
    fed_port = free_port()
    toml = '[federation]\nverify_tls = false\nallowed_ip_ranges = ["127.0.0.0/8"]\n'
    with start_pocketserver(
        tmp_path, server_name=f"localhost:{fed_port}", fed_port=fed_port, extra_toml=toml
    ) as sp:
        r = _cli("--config", str(sp.config_path), "check-federation", sp.server_name)
        assert r.returncode == 0, r.stdout + r.stderr
        lines = r.stdout.strip().splitlines()
        assert lines[-1] == f"federation with {sp.server_name}: working"
        assert any("step 2: explicit port" in line for line in lines)
        assert any("certificate NOT valid" in line for line in lines)  # self-signed
        assert any(line.startswith("Keys: ed25519:") for line in lines)
        assert "Version: pocketserver 0.1.0" in lines
        # With certificates verified (the default), a self-signed server does not work.
        strict = tmp_path / "strict.toml"
        strict.write_text(
            f'data_dir = "{tmp_path / "strict"}"\n[federation]\nallowed_ip_ranges = ["127.0.0.0/8"]\n',
            encoding="utf-8",
        )
        r = _cli("--config", str(strict), "check-federation", sp.server_name)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "NOT working" in r.stdout.strip().splitlines()[-1]
    r = _cli("check-federation", "not a name")
    assert r.returncode == 1
    assert r.stdout.strip().splitlines()[-1] == "federation with not a name: NOT working"


@pytest.mark.parametrize(
    ("yaml_text", "field"),
    [
        ("id: x\nurl: null\nhs_token: h\nsender_localpart: bot\nnamespaces: {}\n", "as_token"),
        ("id: x\nurl: null\nas_token: a\nhs_token: h\nsender_localpart: bot\n"
         "namespaces:\n  users:\n    - regex: '@x('\n      exclusive: true\n", "namespaces.users[0].regex"),
        ("id: [unclosed\n", "not valid YAML"),
    ],
)
def test_a_bad_appservice_registration_is_one_line_and_exit_1(tmp_path: Path, yaml_text: str, field: str) -> None:
    (tmp_path / "bridge.yaml").write_text(yaml_text)
    cfg = tmp_path / "pocketserver.toml"
    # A relative path is relative to the configuration file's folder, not the cwd.
    cfg.write_text(f'data_dir = "{tmp_path}/data"\n[appservices]\nregistration_files = ["bridge.yaml"]\n')
    r = _cli("--config", str(cfg), "serve")
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "bridge.yaml" in lines[0] and field in lines[0], r.stderr
