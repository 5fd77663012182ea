"""Media repository: throughput, memory during huge transfers, disk cost, vs Synapse.

    python3 benchmarks/bench_media.py [--only pocketserver|synapse] [--big-mb 200] [--rounds 5]

Both servers run side by side on loopback (benchmarks/harness.py), each with a 300 MB
upload limit. Measured, for each server:

* upload and download throughput (MB/s) for 1 MB files (10 a round) and 50 MB files
  (2 a round), through POST /_matrix/media/v3/upload and the authenticated
  GET /_matrix/client/v1/media/download, and the server's CPU time per MB; every
  download is checked byte for byte (hash). Both servers run at once and take turns,
  round by round in alternating order; each figure is the median over ``--rounds``;
* resident memory of the server's process tree, sampled every 20 ms, during one
  ``--big-mb`` upload and its download, against the idle RSS just before;
* disk: 50 MB of text-like files (logs and JSON) and 50 MB of incompressible files
  (JPEG/MP4-like): growth of the database file (pocketserver, measured after a clean
  stop, which checkpoints the WAL) or of the media store (Synapse, allocated blocks).

Targets (issue 5): throughput >= Synapse's; RSS <= idle + 20 MB during the big transfer;
text-like data <= 1/4 of Synapse's media store; incompressible data <= 1.01 x its size.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import harness
import httpx
from harness import ServerProcess, print_table, start_synapse, wait_ready

MB = 1024 * 1024


# -- servers -----------------------------------------------------------------------------


def _synapse_config(workdir: Path, server_name: str, port: int) -> dict[str, Any]:
    cfg = _base_synapse_config(workdir, server_name, port)
    cfg["max_upload_size"] = "300M"
    return cfg


_base_synapse_config = harness.synapse_config
harness.synapse_config = _synapse_config  # start_synapse reads it at call time


def start_pocketserver(workdir: Path) -> ServerProcess:
    """harness.start_pocketserver with a 300 MB upload limit; restartable in place."""
    return harness.start_pocketserver(workdir, media_toml=f"max_upload_size = {300 * MB}\n")


def register(http: httpx.Client, localpart: str) -> str:
    body: dict[str, Any] = {
        "username": localpart,
        "password": "bench-password-1",
        "auth": {"type": "m.login.dummy"},
    }
    r = http.post("/_matrix/client/v3/register", json=body)
    if r.status_code == 401:
        body["auth"]["session"] = r.json()["session"]
        r = http.post("/_matrix/client/v3/register", json=body)
    r.raise_for_status()
    return str(r.json()["access_token"])


# -- data ------------------------------------------------------------------------------------


def text_like_files(total: int, seed: int = 5) -> list[tuple[str, str, bytes]]:
    """Logs and JSON with realistic entropy (ids, timestamps, numbers), ~5 MB each."""
    rng = random.Random(seed)
    out: list[tuple[str, str, bytes]] = []
    levels = ["INFO"] * 8 + ["DEBUG", "WARNING"]
    paths = ["/_matrix/client/v3/sync", "/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
             "/_matrix/client/v3/keys/query", "/_matrix/media/v3/upload", "/_matrix/client/v3/profile/{}"]
    ts = 1_700_000_000.0
    i = 0
    while sum(len(f[2]) for f in out) < total:
        parts: list[str] = []
        size = 0
        if i % 2 == 0:
            while size < 5 * MB:
                ts += rng.expovariate(50)
                p = rng.choice(paths).format(f"!{rng.getrandbits(48):x}:example.org", rng.getrandbits(32))
                line = (
                    f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(ts))},{int(ts * 1000) % 1000:03d} "
                    f"- synapse.access.http.8008 - {rng.choice(levels)} - GET-{rng.randint(1, 999999)} - "
                    f"::ffff:10.0.{rng.randint(0, 255)}.{rng.randint(0, 255)} - 8008 - "
                    f"{{@user{rng.randint(1, 500)}:example.org}} Processed request: "
                    f"{rng.random():.3f}sec/{rng.random() / 10:.3f}sec ({rng.random() / 100:.3f}sec, "
                    f"{rng.random() / 1000:.3f}sec) ({rng.random() / 100:.3f}sec/{rng.random() / 100:.3f}sec/"
                    f"{rng.randint(0, 20)}) {rng.randint(100, 90000)}B 200 \"GET {p} HTTP/1.1\" "
                    f"\"Element/1.11.{rng.randint(0, 80)}\" [{rng.randint(0, 5)} dbevts]\n"
                )
                parts.append(line)
                size += len(line)
            out.append((f"server-{i}.log", "text/plain", "".join(parts).encode()))
        else:
            events = []
            while size < 5 * MB:
                ts += rng.expovariate(5)
                ev = {
                    "type": "m.room.message",
                    "event_id": "$" + hashlib.sha256(rng.randbytes(16)).hexdigest()[:43],
                    "sender": f"@user{rng.randint(1, 500)}:example.org",
                    "origin_server_ts": int(ts * 1000),
                    "room_id": f"!{rng.getrandbits(64):x}:example.org",
                    "content": {
                        "msgtype": "m.text",
                        "body": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 30))),
                    },
                    "unsigned": {"age": rng.randint(0, 10**7)},
                }
                s = json.dumps(ev)
                events.append(s)
                size += len(s) + 2
            out.append((f"export-{i}.json", "application/json", ("[\n" + ",\n".join(events) + "\n]").encode()))
        i += 1
    return out


WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this have from "
    "or one had by word but not what all were we when your can said there use an each which she "
    "do how their if will up other about out many then them these so some her would make like "
    "meeting tomorrow deploy server matrix room message lunch thanks ok sure link photo"
).split()


def random_files(total: int, each: int) -> list[tuple[str, str, bytes]]:
    return [(f"clip-{i}.mp4", "video/mp4", os.urandom(each)) for i in range(total // each)]


# -- measurements ------------------------------------------------------------------------------


def upload(
    http: httpx.Client, token: str, data: Any, ctype: str, name: str, length: int | None = None
) -> str:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": ctype}
    if length is not None:  # a streamed body with a declared length (Synapse needs one)
        headers["Content-Length"] = str(length)
    r = http.post(
        "/_matrix/media/v3/upload", params={"filename": name}, content=data, headers=headers
    )
    r.raise_for_status()
    return str(r.json()["content_uri"])


def download_hash(http: httpx.Client, token: str, mxc: str) -> tuple[bytes, int]:
    server, media_id = mxc[len("mxc://") :].split("/")
    h = hashlib.sha256()
    n = 0
    with http.stream(
        "GET",
        f"/_matrix/client/v1/media/download/{server}/{media_id}",
        headers={"Authorization": f"Bearer {token}"},
    ) as r:
        r.raise_for_status()
        for piece in r.iter_raw(256 * 1024):
            h.update(piece)
            n += len(piece)
    return h.digest(), n


def throughput(
    server: ServerProcess, http: httpx.Client, token: str, size: int, count: int
) -> dict[str, float]:
    """Upload then download ``count`` distinct files of ``size`` bytes: MB/s each way, and
    the server's CPU time per MB each way (ms)."""
    files = [os.urandom(size) for _ in range(count)]
    mb = size * count / MB
    c0, t0 = server.cpu_s(), time.perf_counter()
    uris = [upload(http, token, f, "application/octet-stream", f"f{i}.bin") for i, f in enumerate(files)]
    up_s, up_cpu = time.perf_counter() - t0, server.cpu_s() - c0
    c0, t0 = server.cpu_s(), time.perf_counter()
    for f, uri in zip(files, uris, strict=True):
        digest, n = download_hash(http, token, uri)
        if digest != hashlib.sha256(f).digest() or n != size:
            raise RuntimeError("download differs from upload")
    down_s, down_cpu = time.perf_counter() - t0, server.cpu_s() - c0
    return {
        "up": mb / up_s,
        "down": mb / down_s,
        "up_cpu": up_cpu * 1000 / mb,
        "down_cpu": down_cpu * 1000 / mb,
    }


def settle(server: ServerProcess, limit_s: float = 10.0) -> None:
    """Wait (bounded) until the server's process tree stops using CPU."""
    deadline = time.monotonic() + limit_s
    last = server.cpu_s()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = server.cpu_s()
        if now - last < 0.015:  # at most one clock tick in 0.2 s
            return
        last = now


def throughput_rounds(
    servers: dict[str, ServerProcess], rounds: int
) -> dict[str, dict[str, float]]:
    """Median figures over ``rounds`` rounds; within a round every server runs the same
    transfers one after the other, in alternating order, so that a slow spell of this
    machine (a shared VM) falls on both servers alike instead of on whichever ran then.
    Between turns each server is left to finish what it deferred (:func:`settle`)."""
    clients = {}
    for name, server in servers.items():
        http = httpx.Client(base_url=server.base_url, timeout=600)
        token = register(http, "speed")
        throughput(server, http, token, MB, 3)  # warm-up (lazy imports, caches)
        clients[name] = (server, http, token)
    samples: dict[str, dict[str, list[float]]] = {n: {} for n in servers}
    try:
        for i in range(rounds):
            order = list(servers) if i % 2 == 0 else list(reversed(servers))
            for name in order:
                server, http, token = clients[name]
                for size, count, tag in ((MB, 10, "1"), (50 * MB, 2, "50")):
                    for k, v in throughput(server, http, token, size, count).items():
                        samples[name].setdefault(f"{k}_{tag}", []).append(v)
                # Work a server left for later (checkpoints, writeback) must not fall
                # on the other server's turn.
                settle(server)
    finally:
        for _, http, _ in clients.values():
            http.close()
    return {n: {k: statistics.median(v) for k, v in s.items()} for n, s in samples.items()}


class RssSampler:
    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.server.rss_mb())
            time.sleep(0.02)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def big_transfer(server: ServerProcess, http: httpx.Client, token: str, size: int) -> dict[str, float]:
    pool = os.urandom(8 * MB)
    h = hashlib.sha256()

    def body() -> Iterator[bytes]:
        sent = 0
        while sent < size:
            off = (sent // (256 * 1024) * 7919 * 1024) % (len(pool) - 256 * 1024)
            piece = pool[off : off + min(256 * 1024, size - sent)]
            h.update(piece)
            sent += len(piece)
            yield piece

    time.sleep(1.0)
    idle = server.rss_mb()
    with RssSampler(server) as up:
        t0 = time.perf_counter()
        uri = upload(http, token, body(), "video/mp4", "big.mp4", size)
        up_s = time.perf_counter() - t0
    with RssSampler(server) as down:
        t0 = time.perf_counter()
        digest, n = download_hash(http, token, uri)
        down_s = time.perf_counter() - t0
    if digest != h.digest() or n != size:
        raise RuntimeError("big download differs from upload")
    return {
        "idle": idle,
        "up_peak": up.peak,
        "down_peak": down.peak,
        "up_mbs": size / MB / up_s,
        "down_mbs": size / MB / down_s,
    }


def dir_blocks(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        if p.is_file():
            total += p.stat().st_blocks * 512
    return total


def db_bytes(workdir: Path) -> int:
    data = workdir / "data"
    return sum(p.stat().st_size for p in data.glob("homeserver.db*"))


def disk_cost(name: str, workdir: Path, files: list[tuple[str, str, bytes]], state: dict[str, Any]) -> int:
    """Bytes the server's storage grew by for ``files`` (pocketserver: restarted around)."""
    if name == "pocketserver":
        server: ServerProcess = state["server"]
        server.stop()
        before = db_bytes(workdir)
        server = start_pocketserver(workdir)
        wait_ready(server)
        state["server"] = server
        with httpx.Client(base_url=server.base_url, timeout=600) as http:
            for fname, ctype, data in files:
                upload(http, state["token"], data, ctype, fname)
        server.stop()
        after = db_bytes(workdir)
        server = start_pocketserver(workdir)
        wait_ready(server)
        state["server"] = server
        return after - before
    store = workdir / "media_store"
    before = dir_blocks(store) if store.exists() else 0
    with httpx.Client(base_url=state["server"].base_url, timeout=600) as http:
        for fname, ctype, data in files:
            upload(http, state["token"], data, ctype, fname)
    return dir_blocks(store) - before


def run(name: str, tmp: Path, big: int, text: list[Any], rand: list[Any]) -> dict[str, float]:
    workdir = tmp / name
    server = start_pocketserver(workdir) if name == "pocketserver" else start_synapse(workdir)
    state: dict[str, Any] = {"server": server}
    try:
        wait_ready(server)
        with httpx.Client(base_url=server.base_url, timeout=600) as http:
            state["token"] = register(http, "bench")
        res: dict[str, float] = {}
        res["disk_text"] = disk_cost(name, workdir, text, state)
        res["disk_random"] = disk_cost(name, workdir, rand, state)
        server = state["server"]
        with httpx.Client(base_url=server.base_url, timeout=600) as http:
            b = big_transfer(server, http, state["token"], big)
        res.update({f"big_{k}": v for k, v in b.items()})
        return res
    finally:
        state["server"].stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["pocketserver", "synapse"])
    ap.add_argument("--big-mb", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5, help="throughput rounds (median)")
    args = ap.parse_args()
    names = [args.only] if args.only else ["pocketserver", "synapse"]
    text = text_like_files(50 * MB)
    rand = random_files(50 * MB, 10 * MB)
    text_size = sum(len(f[2]) for f in text)
    rand_size = sum(len(f[2]) for f in rand)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="pocketbench-media-") as tmp:
        print(f"throughput, {args.rounds} rounds ...", file=sys.stderr, flush=True)
        running: dict[str, ServerProcess] = {}
        try:
            for name in names:
                workdir = Path(tmp) / f"speed-{name}"
                running[name] = (
                    start_pocketserver(workdir) if name == "pocketserver" else start_synapse(workdir)
                )
                wait_ready(running[name])
            speed = throughput_rounds(running, args.rounds)
        finally:
            for server in running.values():
                server.stop()
        for name in names:
            print(f"disk and memory, {name} ...", file=sys.stderr, flush=True)
            results[name] = run(name, Path(tmp), args.big_mb * MB, text, rand)
            results[name].update(speed[name])

    for r in results.values():
        r["big_over_idle"] = max(r["big_up_peak"], r["big_down_peak"]) - r["big_idle"]
        r["random_overhead"] = r["disk_random"] / rand_size
        r["disk_text"] /= MB
        r["disk_random"] /= MB

    def cell(name: str, key: str, fmt: str) -> str:
        v = results.get(name, {}).get(key)
        return fmt.format(v) if v is not None else "-"

    def ratio(key: str) -> str:
        if len(results) < 2:
            return "-"
        a, b = results["pocketserver"][key], results["synapse"][key]
        return f"{a / b:.2f}" if b else "-"

    spec = [
        ("up_1", "upload 1 MB files (MB/s)", "{:.0f}", ">= 1"),
        ("down_1", "download 1 MB files (MB/s)", "{:.0f}", ">= 1"),
        ("up_50", "upload 50 MB files (MB/s)", "{:.0f}", ">= 1"),
        ("down_50", "download 50 MB files (MB/s)", "{:.0f}", ">= 1"),
        ("up_cpu_1", "server CPU per MB, 1 MB uploads (ms)", "{:.1f}", ""),
        ("up_cpu_50", "server CPU per MB, 50 MB uploads (ms)", "{:.1f}", ""),
        ("down_cpu_50", "server CPU per MB, 50 MB downloads (ms)", "{:.1f}", ""),
        ("big_idle", "RSS idle before big transfer (MB)", "{:.1f}", ""),
        ("big_up_peak", f"RSS peak, {args.big_mb} MB upload (MB)", "{:.1f}", ""),
        ("big_down_peak", f"RSS peak, {args.big_mb} MB download (MB)", "{:.1f}", ""),
        ("big_over_idle", "RSS over idle, big transfer (MB)", "{:.1f}", "ps <= 20"),
        ("disk_text", f"disk for {text_size / MB:.0f} MB text-like (MB)", "{:.2f}", "<= 0.25"),
        ("disk_random", f"disk for {rand_size / MB:.0f} MB incompressible (MB)", "{:.2f}", ""),
        ("random_overhead", "incompressible: disk / size", "{:.4f}", "ps <= 1.01"),
    ]
    rows = [
        (label, cell("pocketserver", k, fmt), cell("synapse", k, fmt), ratio(k), target)
        for k, label, fmt, target in spec
    ]
    print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
