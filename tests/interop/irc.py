"""A real IRC network on loopback and a real IRC bridge, for the application-service
interop test (tests/interop/test_irc_bridge.py).

- ``start_ngircd``: Debian's ngIRCd, started in the foreground (``-n``) with its own
  configuration file on a free loopback port (never the system service), stopped by pid.
- ``IrcUser``: a plain-socket IRC client (RFC 1459/2812 lines) that answers PINGs itself
  and waits for lines with a deadline, standing in for a person on IRC.
- ``heisenbridge_python`` / ``Heisenbridge``: heisenbridge from its own virtualenv
  (``tests/interop/heisenbridge_venv.sh``, which ``tests/run`` runs), generating its
  registration with ``--generate`` exactly as a user would.
- ``Gate``: a TCP forwarder between the homeserver and the bridge's listener. Closed, the
  bridge's registered URL refuses connections as a stopped bridge does; the test opens it
  once the restarted bridge has rejoined IRC, because heisenbridge answers transactions
  (and drops their events) while it is still starting up.

Every wait here is bounded by a deadline; every process is stopped by its pid.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.interop.conftest import REPO, free_port, stop_process

IRC_DEADLINE_S = 30.0
BRIDGE_START_DEADLINE_S = 90.0


# -- the IRC server -------------------------------------------------------------------


def ngircd_binary() -> str | None:
    return shutil.which("ngircd") or next(
        (p for p in ("/usr/sbin/ngircd", "/usr/local/sbin/ngircd") if os.access(p, os.X_OK)), None
    )


@dataclass
class IrcServer:
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path, what: str) -> None:
    deadline = time.monotonic() + IRC_DEADLINE_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}):\n{log.read_text(errors='replace')}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} within {IRC_DEADLINE_S}s")


@contextlib.contextmanager
def start_ngircd(workdir: Path) -> Iterator[IrcServer]:
    """ngIRCd on a free loopback port with a configuration of its own; skips the test
    when ngircd is not installed (``tests/run`` installs it with apt-get)."""
    binary = ngircd_binary()
    if binary is None:
        pytest.skip("ngircd is not installed (apt-get install ngircd; tests/run does it)")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = workdir / "ngircd.conf"
    conf.write_text(
        "[Global]\n"
        "Name = irc.localhost\n"
        "Info = pocketserver interop IRC network\n"
        "AdminInfo1 = pocketserver tests\nAdminInfo2 = loopback\nAdminEMail = root@localhost\n"
        "Listen = 127.0.0.1\n"
        f"Ports = {port}\n"
        "MotdPhrase = pocketserver interop\n"
        f"PidFile = {workdir / 'ngircd.pid'}\n"
        "[Limits]\nMaxConnectionsIP = 0\nMaxNickLength = 30\nPingTimeout = 300\nPongTimeout = 120\n"
        "[Options]\nDNS = no\nIdent = no\nPAM = no\n",
        encoding="utf-8",
    )
    log_path = workdir / "ngircd.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [binary, "-n", "-f", str(conf)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=workdir,
        )
    server = IrcServer(port, proc, log_path)
    try:
        _wait_listening(port, proc, log_path, "ngircd")
        yield server
    finally:
        stop_process(proc)


# -- a person on IRC --------------------------------------------------------------------


@dataclass(frozen=True)
class IrcLine:
    prefix: str
    command: str
    params: tuple[str, ...]

    @property
    def nick(self) -> str:
        return self.prefix.split("!", 1)[0]

    @staticmethod
    def parse(raw: str) -> IrcLine:
        prefix = ""
        if raw.startswith(":"):
            prefix, _, raw = raw[1:].partition(" ")
        head, sep, trailing = raw.partition(" :")
        parts = head.split()
        params = [*parts[1:], trailing] if sep else parts[1:]
        return IrcLine(prefix, parts[0].upper() if parts else "", tuple(params))


@dataclass
class IrcUser:
    """One IRC connection. ``seen`` keeps every line received, so a test can wait for a
    line that arrived while it was looking for another one."""

    nick: str
    sock: socket.socket
    seen: list[IrcLine] = field(default_factory=list)
    _buf: bytes = b""
    _read: int = 0

    @classmethod
    def connect(cls, port: int, nick: str) -> IrcUser:
        sock = socket.create_connection(("127.0.0.1", port), timeout=IRC_DEADLINE_S)
        user = cls(nick, sock)
        user.send(f"NICK {nick}")
        user.send(f"USER {nick} 0 * :{nick} on IRC")
        user.wait_for(lambda m: m.command == "001", "the server's welcome")
        return user

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\r\n")

    def say(self, target: str, text: str) -> None:
        self.send(f"PRIVMSG {target} :{text}")

    def join(self, channel: str) -> None:
        self.send(f"JOIN {channel}")
        self.wait_for(
            lambda m: m.command == "JOIN" and m.nick == self.nick and m.params[:1] == (channel,),
            f"joining {channel}",
        )

    def _receive(self, timeout_s: float) -> None:
        self.sock.settimeout(max(timeout_s, 0.01))
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            return
        if not chunk:
            raise ConnectionError(f"the IRC server closed {self.nick}'s connection")
        self._buf += chunk
        while b"\r\n" in self._buf:
            raw, self._buf = self._buf.split(b"\r\n", 1)
            line = IrcLine.parse(raw.decode(errors="replace"))
            if line.command == "PING":
                self.send("PONG :" + (line.params[0] if line.params else ""))
            self.seen.append(line)

    def wait_for(
        self, predicate: Callable[[IrcLine], bool], what: str, deadline_s: float = IRC_DEADLINE_S
    ) -> IrcLine:
        """The first line since the last match (or the start) that satisfies
        ``predicate``; fails with what was received if none comes before the deadline."""
        deadline = time.monotonic() + deadline_s
        while True:
            while self._read < len(self.seen):
                line = self.seen[self._read]
                self._read += 1
                if predicate(line):
                    return line
            left = deadline - time.monotonic()
            if left <= 0:
                got = "\n".join(f"{m.prefix} {m.command} {m.params}" for m in self.seen[-20:])
                raise AssertionError(f"{self.nick} on IRC never saw {what}; last lines:\n{got}")
            self._receive(min(left, 1.0))

    def messages_from(self, nick: str, target: str) -> list[str]:
        """Every PRIVMSG text ``nick`` sent to ``target`` so far (in arrival order)."""
        return [
            m.params[1] for m in self.seen
            if m.command == "PRIVMSG" and m.nick == nick and len(m.params) == 2 and m.params[0] == target
        ]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.send("QUIT :bye")
        self.sock.close()


# -- the bridge -------------------------------------------------------------------------------


def heisenbridge_python() -> str:
    """The virtualenv's python (made once by heisenbridge_venv.sh); skips the test when
    heisenbridge cannot be installed here."""
    try:
        out = subprocess.run(
            ["bash", str(REPO / "tests" / "interop" / "heisenbridge_venv.sh")],
            capture_output=True, text=True, timeout=600, check=True,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"heisenbridge could not be installed into its virtualenv: {e}")
    return out.stdout.strip().splitlines()[-1]


def generate_registration(python: str, path: Path, url_port: int) -> None:
    """``heisenbridge -c FILE --generate``: the registration YAML a user hands their
    homeserver, with the bridge's URL on ``url_port``."""
    subprocess.run(
        [python, "-m", "heisenbridge", "-c", str(path), "--generate", "-l", "127.0.0.1", "-p", str(url_port)],
        check=True, capture_output=True, timeout=120,
    )


@dataclass
class Heisenbridge:
    """The bridge process, started and stopped (by pid) as many times as a test needs;
    its debug log goes on in one file. It listens on ``listen_port``, which may differ
    from the URL in its registration (a ``Gate`` in between)."""

    python: str
    registration: Path
    listen_port: int
    homeserver_url: str
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the bridge and wait until it says it is running (bounded)."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        mark = len(self.log())
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    self.python, "-m", "heisenbridge", "-vv", "-c", str(self.registration),
                    "-l", "127.0.0.1", "-p", str(self.listen_port), self.homeserver_url,
                ],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.registration.parent, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        deadline = time.monotonic() + BRIDGE_START_DEADLINE_S
        while "bridge is now running" not in self.log()[mark:]:
            if self.proc.poll() is not None:
                raise RuntimeError(f"heisenbridge exited ({self.proc.returncode}):\n{self.log()[-6000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"heisenbridge not running after {BRIDGE_START_DEADLINE_S}s:\n{self.log()[-6000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Gate:
    """A TCP forwarder from ``listen_port`` to ``target_port`` on loopback that the test
    opens and closes. Closed, nothing listens (connections are refused) and every
    forwarded connection is cut."""

    def __init__(self, listen_port: int, target_port: int) -> None:
        self.listen_port, self.target_port = listen_port, target_port
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._conns: list[socket.socket] = []
        self._pumps: list[threading.Thread] = []
        self._lock = threading.Lock()

    def open(self) -> None:
        assert self._listener is None, "already open"
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.listen_port))
        listener.listen(64)
        listener.settimeout(0.2)
        self._listener = listener
        self._acceptor = threading.Thread(target=self._accept_loop, args=(listener,), daemon=True)
        self._acceptor.start()

    def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        if self._acceptor is not None:  # no new connection after this
            self._acceptor.join(timeout=5)
            self._acceptor = None
        with self._lock:
            conns, self._conns = self._conns, []
            pumps, self._pumps = self._pumps, []
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()
        for t in pumps:
            t.join(timeout=5)

    def _accept_loop(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()  # the bridge is not listening (yet): the homeserver retries
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            pumps = [
                threading.Thread(target=self._pump, args=(client, upstream), daemon=True),
                threading.Thread(target=self._pump, args=(upstream, client), daemon=True),
            ]
            with self._lock:
                self._conns += [client, upstream]
                self._pumps += pumps
            for t in pumps:
                t.start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
