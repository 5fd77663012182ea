"""Benchmark harness: pocketserver and a real Synapse side by side on loopback.

Both servers run as real subprocesses (``python3 -m pocketserver --config <toml>`` and
``python -m synapse.app.homeserver -c homeserver.yaml`` from the venv that
``benchmarks/synapse_venv.sh`` prints) on free loopback ports, with their data in a
temporary folder, registration open and rate limits off (pocketserver) or raised out of
reach (Synapse). The harness measures readiness (spawn -> first /versions answer),
resident memory (VmRSS, summed over the process tree) and CPU time (utime + stime of the
tree), and stops every process it started by pid, also when a benchmark fails or is
interrupted (``servers()`` is a context manager; ``stop()`` sends SIGTERM, then SIGKILL).

``MatrixClient`` is an async httpx client (trio) speaking only the Matrix client-server
API, so the same benchmark code drives either server.

The benchmarks are run by hand, never in CI; the test-suite reuses only the Synapse
start-up (``start_synapse``, ``wait_ready``, ``ServerProcess.stop``) for the federation
interop tests (tests/interop/synapse.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
READY_DEADLINE_S = 120.0


# -- processes -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc/<pid>/task/*/children)."""
    kids: list[int] = []
    task_dir = Path(f"/proc/{pid}/task")
    try:
        for task in task_dir.iterdir():
            try:
                kids.extend(int(x) for x in (task / "children").read_text().split())
            except OSError:
                pass
    except OSError:
        pass
    return kids


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(_children(p))
    return out


def rss_kb(pid: int) -> int:
    """VmRSS of one process in KiB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_mb(pid: int) -> float:
    return sum(rss_kb(p) for p in process_tree(pid)) / 1024.0


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (its reaped children not included)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def tree_cpu_seconds(pid: int) -> float:
    return sum(cpu_seconds(p) for p in process_tree(pid))


@dataclass
class ServerProcess:
    """One running homeserver subprocess."""

    name: str
    server_name: str
    base_url: str
    proc: subprocess.Popen[bytes]
    workdir: Path
    spawned_at: float
    ready_after_s: float = 0.0
    log_path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_mb(self) -> float:
        return tree_rss_mb(self.pid)

    def cpu_s(self) -> float:
        return tree_cpu_seconds(self.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM the tree, wait, then SIGKILL whatever is left (by pid)."""
        pids = process_tree(self.pid) if self.alive() else []
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)

    def log_tail(self, n: int = 30) -> str:
        lines: list[str] = []
        for path in (self.log_path, self.extra.get("log")):
            if isinstance(path, Path) and path.exists():
                lines.extend(path.read_text(errors="replace").splitlines()[-n:])
        return "\n".join(lines)


def wait_ready(server: ServerProcess, deadline_s: float = READY_DEADLINE_S) -> float:
    """Poll GET /_matrix/client/versions until it answers 200; return seconds since spawn."""
    url = server.base_url + "/_matrix/client/versions"
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if not server.alive():
            raise RuntimeError(
                f"{server.name} exited with {server.proc.returncode} before it was ready:\n"
                + server.log_tail()
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    server.ready_after_s = time.monotonic() - server.spawned_at
                    return server.ready_after_s
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.005)
    raise RuntimeError(f"{server.name} not ready within {deadline_s} s:\n" + server.log_tail())


def server_env() -> dict[str, str]:
    """The environment both servers run in: this one, but with Python's bytecode cache
    on (as on a user's machine) even where the shell disables it, so that neither
    server recompiles its modules at every start."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def start_pocketserver(
    workdir: Path,
    server_name: str = "pocket.test",
    media_toml: str = "",
    executable: Path | None = None,
    extra_toml: str = "",
    federation: bool = False,
) -> ServerProcess:
    """Start (or restart, on the same data) pocketserver in ``workdir``; ``media_toml``
    adds lines to its ``[media]`` table, ``extra_toml`` more tables at the end;
    ``federation`` turns the federation services on (no federation listener).
    ``executable``: a packaged pocketserver (pyinstaller.spec) to run instead of
    ``python3 -m pocketserver`` from this tree."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = workdir / "pocketserver.toml"
    config.write_text(
        f"""\
server_name = "{server_name}"
data_dir = "{workdir / "data"}"
log_level = "warning"

[[listeners]]
address = "127.0.0.1"
port = {port}
tls = false
resources = ["client"]

[registration]
mode = "open"

[rate_limits]
enabled = false

[federation]
enabled = {"true" if federation else "false"}

[media]
url_preview_enabled = false
{media_toml}
{extra_toml}""",
        encoding="utf-8",
    )
    log_path = workdir / "pocketserver.log"
    env = server_env()
    if executable is None:
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        cmd = [sys.executable, "-m", "pocketserver", "--config", str(config)]
    else:
        cmd = [str(executable), "--config", str(config)]
    with log_path.open("wb") as log:
        t0 = time.monotonic()
        proc = subprocess.Popen(
            cmd,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return ServerProcess(
        name="pocketserver",
        server_name=server_name,
        base_url=f"http://127.0.0.1:{port}",
        proc=proc,
        workdir=workdir,
        spawned_at=t0,
        log_path=log_path,
    )


def synapse_python() -> str:
    out = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "synapse_venv.sh")],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip().splitlines()[-1]


_HIGH = {"per_second": 100000, "burst_count": 1000000}


def synapse_config(workdir: Path, server_name: str, port: int) -> dict[str, Any]:
    """homeserver.yaml for a loopback-only Synapse with rate limits out of reach."""
    secret = os.urandom(24).hex()
    return {
        "server_name": server_name,
        "pid_file": str(workdir / "homeserver.pid"),
        "listeners": [
            {
                "port": port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": False,
                "x_forwarded": False,
                "resources": [{"names": ["client"], "compress": False}],
            }
        ],
        "database": {"name": "sqlite3", "args": {"database": str(workdir / "homeserver.db")}},
        "log_config": str(workdir / "log.yaml"),
        "media_store_path": str(workdir / "media_store"),
        "signing_key_path": str(workdir / "signing.key"),
        "registration_shared_secret": secret,
        "macaroon_secret_key": secret + "m",
        "form_secret": secret + "f",
        "report_stats": False,
        "enable_metrics": False,
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        "federation_domain_whitelist": [],
        "enable_registration": True,
        "enable_registration_without_verification": True,
        "url_preview_enabled": False,
        "rc_message": _HIGH,
        "rc_registration": _HIGH,
        "rc_registration_token_validity": _HIGH,
        "rc_login": {"address": _HIGH, "account": _HIGH, "failed_attempts": _HIGH},
        "rc_admin_redaction": _HIGH,
        "rc_joins": {"local": _HIGH, "remote": _HIGH},
        "rc_joins_per_room": _HIGH,
        "rc_3pid_validation": _HIGH,
        "rc_invites": {"per_room": _HIGH, "per_user": _HIGH, "per_issuer": _HIGH},
        "rc_third_party_invite": _HIGH,
        "rc_federation": {"window_size": 1000, "sleep_limit": 100000, "reject_limit": 100000},
        "rc_presence": {"per_user": _HIGH},
        "rc_delayed_event_mgmt": _HIGH,
        "rc_reports": _HIGH,
        "rc_room_creation": _HIGH,
        "rc_send_to_device": _HIGH,
        "rc_key_requests": _HIGH,
        "rc_media_create": _HIGH,
    }


_SYNAPSE_LOG_CONFIG = {
    "version": 1,
    "formatters": {"precise": {"format": "%(asctime)s %(name)s %(levelname)s %(message)s"}},
    "handlers": {
        "file": {"class": "logging.FileHandler", "formatter": "precise", "filename": "PLACEHOLDER"}
    },
    "root": {"level": "WARNING", "handlers": ["file"]},
    "disable_existing_loggers": False,
}


def start_synapse(
    workdir: Path,
    server_name: str = "synapse.test",
    extra_config: dict[str, Any] | None = None,
    *,
    federation_port: int | None = None,
    tls_files: tuple[Path, Path] | None = None,
) -> ServerProcess:
    """Spawn Synapse (not waited for: ``wait_ready``). With ``federation_port`` it also
    serves federation over TLS on that loopback port with ``tls_files`` (cert, key)."""
    workdir.mkdir(parents=True, exist_ok=True)
    python = synapse_python()
    port = free_port()
    log_path = workdir / "homeserver.log"
    log_cfg = json.loads(json.dumps(_SYNAPSE_LOG_CONFIG))
    log_cfg["handlers"]["file"]["filename"] = str(log_path)
    # JSON is YAML: no YAML library needed on pocketserver's side.
    (workdir / "log.yaml").write_text(json.dumps(log_cfg), encoding="utf-8")
    config = workdir / "homeserver.yaml"
    settings = synapse_config(workdir, server_name, port)
    if federation_port is not None:
        assert tls_files is not None, "a federation listener needs a certificate"
        settings["listeners"].append(
            {
                "port": federation_port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": True,
                "x_forwarded": False,
                "resources": [{"names": ["federation"], "compress": False}],
            }
        )
        settings["tls_certificate_path"] = str(tls_files[0])
        settings["tls_private_key_path"] = str(tls_files[1])
    config.write_text(json.dumps({**settings, **(extra_config or {})}, indent=1))
    subprocess.run(
        [python, "-m", "synapse.app.homeserver", "-c", str(config), "--generate-keys"],
        cwd=workdir,
        check=True,
        capture_output=True,
        timeout=120,
    )
    out_path = workdir / "stdout.log"
    with out_path.open("wb") as out:
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [python, "-m", "synapse.app.homeserver", "-c", str(config)],
            cwd=workdir,
            env=server_env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return ServerProcess(
        name="synapse",
        server_name=server_name,
        base_url=f"http://127.0.0.1:{port}",
        proc=proc,
        workdir=workdir,
        spawned_at=t0,
        log_path=out_path,
        extra={"python": python, "log": log_path},
    )


@contextlib.contextmanager
def _terminate_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt so that ``finally`` blocks stop the servers."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def servers(
    which: tuple[str, ...] = ("pocketserver", "synapse"),
    synapse_config_extra: dict[str, Any] | None = None,
) -> Iterator[list[ServerProcess]]:
    """Start the named servers one after the other (each waited ready), stop them all on exit.

    Started one at a time so that each one's time to ready is measured on a quiet machine.
    """
    started: list[ServerProcess] = []
    with tempfile.TemporaryDirectory(prefix="pocketbench-") as tmp, _terminate_on_sigterm():
        try:
            for name in which:
                if name == "pocketserver":
                    s = start_pocketserver(Path(tmp) / "pocketserver")
                elif name == "synapse":
                    s = start_synapse(Path(tmp) / "synapse", extra_config=synapse_config_extra)
                else:
                    raise ValueError(name)
                started.append(s)
                wait_ready(s)
            try:
                yield started
            except BaseException:
                for s in started:  # what the servers said, before their folder goes
                    print(f"--- {s.name} log tail ---\n{s.log_tail(60)}", file=sys.stderr)
                raise
        finally:
            for s in started:
                s.stop()


# -- a Matrix client for either server ----------------------------------------------------


class MatrixHTTPError(RuntimeError):
    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path} -> {status}: {body[:300]}")
        self.status = status


@dataclass
class User:
    user_id: str
    access_token: str
    device_id: str


class MatrixClient:
    """A thin async Matrix client (httpx on trio) for one server; one user per call."""

    def __init__(self, base_url: str, *, max_connections: int = 64, timeout_s: float = 120) -> None:
        self.base_url = base_url
        self.http = httpx.AsyncClient(
            base_url=base_url,
            timeout=timeout_s,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )
        self._txn = 0

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> MatrixClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def request(
        self,
        method: str,
        path: str,
        user: User | None = None,
        *,
        json_body: Any = None,
        params: dict[str, Any] | None = None,
        ok: tuple[int, ...] = (200,),
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {user.access_token}"} if user else None
        resp = await self.http.request(
            method, "/_matrix/client/v3" + path, json=json_body, params=params, headers=headers
        )
        if resp.status_code not in ok:
            raise MatrixHTTPError(method, path, resp.status_code, resp.text)
        return resp.status_code, resp.json()

    def next_txn(self) -> str:
        self._txn += 1
        return f"b{os.getpid()}t{self._txn}"

    async def register(self, localpart: str, password: str) -> User:
        """POST /register with the m.login.dummy stage (two steps if the server asks)."""
        body: dict[str, Any] = {
            "username": localpart,
            "password": password,
            "initial_device_display_name": "bench",
            "auth": {"type": "m.login.dummy"},
        }
        status, data = await self.request("POST", "/register", json_body=body, ok=(200, 401))
        if status == 401:
            body["auth"] = {"type": "m.login.dummy", "session": data["session"]}
            status, data = await self.request("POST", "/register", json_body=body)
        return User(data["user_id"], data["access_token"], data["device_id"])

    async def create_room(self, user: User, **body: Any) -> str:
        _, data = await self.request("POST", "/createRoom", user, json_body=body)
        return str(data["room_id"])

    async def join(self, user: User, room_id: str) -> None:
        await self.request("POST", f"/rooms/{room_id}/join", user, json_body={})

    async def send_text(self, user: User, room_id: str, text: str) -> str:
        _, data = await self.request(
            "PUT",
            f"/rooms/{room_id}/send/m.room.message/{self.next_txn()}",
            user,
            json_body={"msgtype": "m.text", "body": text},
        )
        return str(data["event_id"])

    async def sync(
        self,
        user: User,
        since: str | None = None,
        timeout_ms: int = 0,
        filter_: str | None = None,
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"timeout": timeout_ms}
        if since:
            params["since"] = since
        if filter_:
            params["filter"] = filter_
        _, data = await self.request("GET", "/sync", user, params=params)
        assert isinstance(data, dict)
        return data


# -- report helpers -------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def print_table(rows: list[tuple[str, str, str, str, str]]) -> None:
    """Rows of (metric, pocketserver, synapse, ratio, target)."""
    header = ("metric", "pocketserver", "synapse", "ratio", "target")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]
    line = " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    print(line)
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
