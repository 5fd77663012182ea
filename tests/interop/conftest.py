"""The real ``pocketserver`` command, started as a subprocess, for interop tests.

``pocketserver_url`` starts ``python3 -m pocketserver --config <tmp>/pocketserver.toml``
on free loopback ports with its data in the test's tmp_path, waits (bounded) until it
answers ``/_matrix/client/versions``, yields its client base URL, and stops it by pid:
SIGTERM, then SIGKILL after a deadline. Interop tests are plain sync functions marked
``@pytest.mark.interop`` that drive asyncio clients with ``asyncio.run(...)``.

Other interop modules may call :func:`start_pocketserver` directly for extra config
(federation between two servers, other registration modes).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
START_DEADLINE_S = 60.0
STOP_DEADLINE_S = 20.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_free(port: int) -> bool:
    """Whether ``port`` on 127.0.0.1 can be bound now (for tests of the default ports)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_for(
    predicate: Callable[[], bool], what: str, proc: subprocess.Popen[bytes], log: Path,
    deadline_s: float = START_DEADLINE_S,
) -> None:
    """Poll ``predicate`` (HTTP errors count as not yet) until it holds; fail the test,
    with the server's log, if the process exits first or the deadline passes."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"pocketserver exited ({proc.returncode}) before {what}:\n{log.read_text()}")
        try:
            if predicate():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}:\n{log.read_text()}")


@dataclass
class ServerProcess:
    base_url: str
    federation_url: str
    server_name: str
    data_dir: Path
    config_path: Path
    log_path: Path
    proc: subprocess.Popen[bytes]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _wait_until_up(sp: ServerProcess) -> None:
    deadline = time.monotonic() + START_DEADLINE_S
    last_error = ""
    while time.monotonic() < deadline:
        if sp.proc.poll() is not None:
            raise RuntimeError(f"pocketserver exited with {sp.proc.returncode}:\n{sp.log()}")
        try:
            r = httpx.get(f"{sp.base_url}/_matrix/client/versions", timeout=2.0)
            if r.status_code == 200:
                return
            last_error = f"HTTP {r.status_code}"
        except httpx.HTTPError as e:
            last_error = repr(e)
        time.sleep(0.1)
    raise RuntimeError(f"pocketserver did not answer within {START_DEADLINE_S}s ({last_error}):\n{sp.log()}")


def stop_process(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM the process we started; SIGKILL it if it has not exited by the deadline."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_DEADLINE_S)
    return proc.returncode


@contextlib.contextmanager
def start_pocketserver(
    tmp_path: Path, *, server_name: str = "localhost", extra_toml: str = "",
    fed_port: int | None = None,
) -> Iterator[ServerProcess]:
    """``fed_port``: the TLS federation listener's port, when the caller needs it before
    the start (a server name ``localhost:PORT`` that other servers resolve)."""
    client_port, fed_port = free_port(), fed_port or free_port()
    data_dir = tmp_path / "pocketserver-data"
    config_path = tmp_path / "pocketserver.toml"
    config_path.write_text(
        f'server_name = "{server_name}"\n'
        f'data_dir = "{data_dir}"\n'
        'log_level = "info"\n'
        "[[listeners]]\n"
        f'address = "127.0.0.1"\nport = {client_port}\nresources = ["client", "federation"]\n'
        "[[listeners]]\n"
        f'address = "127.0.0.1"\nport = {fed_port}\ntls = true\nresources = ["federation"]\n'
        "[rate_limits]\nenabled = false\n" + extra_toml,
        encoding="utf-8",
    )
    log_path = tmp_path / "pocketserver.log"
    proc = _spawn(config_path, log_path, "wb")
    sp = ServerProcess(
        base_url=f"http://127.0.0.1:{client_port}",
        federation_url=f"https://127.0.0.1:{fed_port}",
        server_name=server_name,
        data_dir=data_dir,
        config_path=config_path,
        log_path=log_path,
        proc=proc,
    )
    try:
        _wait_until_up(sp)
        yield sp
    finally:
        stop_process(sp.proc)  # the process now running (restart_pocketserver replaces it)


def _spawn(config_path: Path, log_path: Path, mode: str) -> subprocess.Popen[bytes]:
    with open(log_path, mode) as log:
        return subprocess.Popen(
            [sys.executable, "-m", "pocketserver", "--config", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def restart_pocketserver(sp: ServerProcess) -> None:
    """Start a stopped server again with the same configuration (ports, database); its
    log goes on in the same file. ``start_pocketserver``'s exit stops the new process."""
    assert sp.proc.poll() is not None, "stop the server first"
    sp.proc = _spawn(sp.config_path, sp.log_path, "ab")
    _wait_until_up(sp)


@pytest.fixture
def pocketserver_process(tmp_path: Path) -> Iterator[ServerProcess]:
    with start_pocketserver(tmp_path) as sp:
        yield sp


@pytest.fixture
def pocketserver_url(pocketserver_process: ServerProcess) -> str:
    return pocketserver_process.base_url


@pytest.fixture(scope="session")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real Synapse and a pocketserver federating on loopback (tests/interop/synapse.py),
    shared by the federation modules: Synapse takes seconds to start, so once a session."""
    from tests.interop.synapse import Pair, start_federating_pocketserver, start_federating_synapse

    tmp = tmp_path_factory.mktemp("federation-synapse")
    with start_federating_synapse(tmp / "synapse") as synapse:
        with start_federating_pocketserver(tmp / "pocket") as pocket:
            yield Pair(synapse, pocket)
