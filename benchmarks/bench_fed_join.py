"""Benchmark: a pocketserver user joining a very large room hosted on another server.

Two processes besides this one, talking real federation over HTTPS on loopback:

- the synthetic peer (benchmarks/fed_peer.py), hosting a signed room of ``--members``
  members and ``--state-events`` state events in all (the rest: other state events of
  the creator with distinct state keys), built before anything is measured; it checks
  the X-Matrix signature of every request;
- pocketserver (``python3 -m pocketserver --config ...``, its own process) with a TLS
  federation listener, ``allowed_ip_ranges`` allowing loopback and ``verify_tls =
  false`` (self-signed certificates), logging at warning.

A registered user joins the room (``POST /join/{roomId}?server_name=...``): make_join,
send_join, every state and auth-chain event checked (format, signatures, hashes, auth
against the auth chain) and stored. Measured on pocketserver's process alone (its CPU
time during the join from /proc/<pid>/stat, the honest figure on a shared machine; memory from
/proc/<pid>/status, sampled every 20 ms in a thread): VmRSS before the join, its peak
during the join, after; VmHWM (the kernel's own peak) before and after. Also the time
from the request to its answer (pocketserver answers once the full state is stored),
the size of the send_join answer, the database folder's growth, and a check that the
room's state and members are all there.

Usage::

    python3 benchmarks/bench_fed_join.py [--members 20000] [--state-events 50000]
        [--pocketserver-src DIR]   # run another checkout's pocketserver (a baseline)
        [--profile FILE]           # py-spy (pip install py-spy) records the join
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.harness import ServerProcess, cpu_seconds, free_port, wait_ready  # noqa: E402
from tests.interop.synapse import POCKETSERVER_FEDERATION_TOML, register  # noqa: E402

PEER_READY_DEADLINE_S = 900.0
JOIN_TIMEOUT_S = 900.0


def status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def stop_pid(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process we started, then SIGKILL if it lingers (by pid)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@contextlib.contextmanager
def peer_process(tmp: Path, members: int, state_events: int, room_version: str) -> Iterator[tuple[str, str, str]]:
    """The synthetic peer, stopped by pid on exit: (server name, room ID, ready line)."""
    port = free_port()
    log = (tmp / "peer.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "benchmarks" / "fed_peer.py"), "--port", str(port),
         "--members", str(members), "--state-events", str(state_events), "--room-version", room_version],
        stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + PEER_READY_DEADLINE_S
        line = b""
        while time.monotonic() < deadline and proc.poll() is None:
            line = proc.stdout.readline()
            if line.startswith(b"ready "):
                break
        if not line.startswith(b"ready "):
            raise RuntimeError("the peer did not start: " + (tmp / "peer.log").read_text()[-2000:])
        text = line.decode().strip()
        yield f"localhost:{port}", text.split()[1], text
    finally:
        stop_pid(proc)
        log.close()


@contextlib.contextmanager
def pocketserver_process(tmp: Path, src: Path) -> Iterator[ServerProcess]:
    client_port, fed_port = free_port(), free_port()
    workdir = tmp / "pocketserver"
    workdir.mkdir()
    config = workdir / "pocketserver.toml"
    config.write_text(
        f'server_name = "localhost:{fed_port}"\n'
        f'data_dir = "{workdir / "data"}"\n'
        'log_level = "warning"\n'
        "[[listeners]]\n"
        f'address = "127.0.0.1"\nport = {client_port}\nresources = ["client"]\n'
        "[[listeners]]\n"
        f'address = "127.0.0.1"\nport = {fed_port}\ntls = true\nresources = ["federation"]\n'
        "[rate_limits]\nenabled = false\n"
        "[registration]\nmode = \"open\"\n" + POCKETSERVER_FEDERATION_TOML,
        encoding="utf-8",
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = str(src)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    log_path = workdir / "pocketserver.log"
    with log_path.open("wb") as log:
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "pocketserver", "--config", str(config)],
            cwd=src, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = ServerProcess("pocketserver", f"localhost:{fed_port}", f"http://127.0.0.1:{client_port}",
                           proc, workdir, t0, log_path=log_path)
    try:
        wait_ready(server)
        yield server
    finally:
        server.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=20000)
    ap.add_argument("--state-events", type=int, default=50000)
    ap.add_argument("--room-version", default="10")
    ap.add_argument("--pocketserver-src", type=Path, default=REPO,
                    help="the checkout whose pocketserver runs (default: this one)")
    ap.add_argument("--profile", type=Path,
                    help="record pocketserver during the join with py-spy (collapsed stacks, all threads)")
    args = ap.parse_args()
    src = args.pocketserver_src.resolve()
    with tempfile.TemporaryDirectory(prefix="bench-fed-join-") as d:
        tmp = Path(d)
        t0 = time.perf_counter()
        with peer_process(tmp, args.members, args.state_events, args.room_version) as (peer, room_id, ready):
            peer_s = time.perf_counter() - t0
            with pocketserver_process(tmp, src) as pocket:
                pid = pocket.pid
                _alice, token = register(pocket.base_url, "alice")
                data = pocket.workdir / "data"
                size0 = dir_bytes(data)
                rss0, hwm0 = status_kb(pid, "VmRSS"), status_kb(pid, "VmHWM")
                cpu0 = cpu_seconds(pid)
                peak = [rss0]
                stop = threading.Event()

                def sample() -> None:
                    while not stop.wait(0.02):
                        peak[0] = max(peak[0], status_kb(pid, "VmRSS"))

                sampler = threading.Thread(target=sample, daemon=True)
                sampler.start()
                spy = None
                if args.profile is not None:
                    spy = subprocess.Popen(
                        ["py-spy", "record", "--pid", str(pid), "--threads", "--format", "raw",
                         "--rate", "50", "--output", str(args.profile)],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    )
                headers = {"Authorization": f"Bearer {token}"}
                with httpx.Client(base_url=pocket.base_url, headers=headers, timeout=JOIN_TIMEOUT_S) as http:
                    t1 = time.perf_counter()
                    r = http.post(f"/_matrix/client/v3/join/{quote(room_id)}", params={"server_name": peer}, json={})
                    join_s = time.perf_counter() - t1
                    stop.set()
                    sampler.join()
                    if spy is not None:
                        spy.send_signal(signal.SIGINT)
                        spy.wait(timeout=60)
                    if r.status_code != 200:
                        print(pocket.log_tail(40), file=sys.stderr)
                        raise SystemExit(f"join failed: {r.status_code} {r.text}")
                    rss1, hwm1 = status_kb(pid, "VmRSS"), status_kb(pid, "VmHWM")
                    cpu1 = cpu_seconds(pid)
                    size1 = dir_bytes(data)
                    files = sorted(((f.stat().st_size, f.name) for f in data.rglob("*") if f.is_file()), reverse=True)
                    state = http.get(f"/_matrix/client/v3/rooms/{quote(room_id)}/state").json()
                    members = http.get(f"/_matrix/client/v3/rooms/{quote(room_id)}/joined_members").json()
                n_state, n_joined = len(state), len(members["joined"])
    print(f"peer: {ready} (its own process; started in {peer_s:.1f} s, not measured)")
    print(f"pocketserver from {src}, pid {pid}")
    print(f"join (POST /join -> 200, full state stored): {join_s:.2f} s")
    print(f"pocketserver CPU time during the join (user + system, all threads): {cpu1 - cpu0:.1f} s"
          f" (wall time minus this is waiting: the peer, the network, a busy machine)")
    print(f"room state seen by the joiner: {n_state} state events, {n_joined} joined members")
    print(f"pocketserver VmRSS: {rss0 / 1024:.1f} MB before, peak {peak[0] / 1024:.1f} MB during "
          f"(+{(peak[0] - rss0) / 1024:.1f}), {rss1 / 1024:.1f} MB after")
    print(f"pocketserver VmHWM: {hwm0 / 1024:.1f} MB before, {hwm1 / 1024:.1f} MB after")
    print(f"data folder growth: {(size1 - size0) / 1e6:.1f} MB; largest files: "
          + ", ".join(f"{name} {size / 1e6:.1f} MB" for size, name in files[:3]))
    expected_state = max(args.state_events, args.members + 3)
    ok = n_state == expected_state + 1 and n_joined == args.members + 1
    print("complete" if ok else f"INCOMPLETE: expected {expected_state + 1} state events, {args.members + 1} members")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
