"""Big rooms: does the cost of an event grow with the number of members? vs Synapse.

    python3 benchmarks/bench_big_room.py [--sizes 500,2000] [--messages 200]
        [--state-events 20] [--late-joiners 4] [--reads 30] [--only pocketserver|synapse]

Per server (both run side by side; the workload drives one at a time):

1. register as many users as the largest size (8 at a time; Synapse with
   ``bcrypt_rounds: 4`` so that setting up 2,000 accounts takes seconds, not minutes;
   pocketserver with its normal argon2id, the registration cost is not measured here);
2. user 0 creates a public room;
3. for each size: joins (8 at a time) until the room has that many members, then,
   one request at a time, ``--messages`` messages by rotating members and
   ``--state-events`` topic changes, each request timed; and the database's logical
   size (``page_count - freelist_count`` through a read-only SQLite connection, which
   sees the committed WAL too) before and after the messages;
4. then ``--late-joiners`` more users join (at 500: a 504-member room), and the servers
   take turns, round by round (interleaved, so that the machine's load falls on both
   alike), answering ``GET /rooms/{roomId}/members`` for the creator and a late
   joiner's lazy-loaded initial ``/sync`` (``lazy_load_members``, the default timeline
   of 10), ``--reads`` rounds; each call timed, and the server's CPU time per call
   (over all the rounds of one kind).

Reported: median time per message and per state event at each size and the growth from
the smallest to the largest (target: at most 1.3x for pocketserver), the database growth
for the messages at the largest size, the database size of the whole room (its
members and events: size after the last phase minus size before the room was made;
target: under a tenth of Synapse's), and the medians of the two reads at each size
(target: at most half of Synapse's).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from bench_client import pool, settle
from harness import MatrixClient, ServerProcess, User, print_table, servers

PASSWORD = "big-room-bench-password"
LAZY_FILTER = json.dumps({"room": {"state": {"lazy_load_members": True}}})


def db_path(server: ServerProcess) -> Path:
    if server.name == "pocketserver":
        return server.workdir / "data" / "homeserver.db"
    return server.workdir / "homeserver.db"


def logical_db_bytes(server: ServerProcess) -> int:
    """Bytes of the database in use, committed WAL included (read-only connection)."""
    conn = sqlite3.connect(f"file:{db_path(server)}?mode=ro", uri=True, timeout=30)
    try:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        return int((pages - free) * page_size)
    finally:
        conn.close()


async def timed(fn: Any, *args: Any, **kwargs: Any) -> float:
    """Milliseconds that one awaited call took."""
    t0 = time.perf_counter()
    await fn(*args, **kwargs)
    return (time.perf_counter() - t0) * 1000


@dataclass
class Bench:
    """One server's side of the run: its client, users and the room."""

    server: ServerProcess
    client: MatrixClient
    users: list[User] = field(default_factory=list)
    late: list[User] = field(default_factory=list)
    room: str = ""
    members: int = 1
    out: dict[str, Any] = field(default_factory=dict)
    before_room: int = 0
    late_rounds: int = 0
    members_total: int = 0

    def log(self, msg: str) -> None:
        print(f"  {self.server.name}: {msg}", flush=True)


async def setup(b: Bench, sizes: list[int], late_joiners: int) -> None:
    names = [f"big{i}" for i in range(max(sizes))]
    names += [f"late{i}" for i in range(late_joiners * len(sizes))]
    t0 = time.perf_counter()
    everyone: list[User] = await pool(8, names, lambda n: b.client.register(n, PASSWORD))
    b.users, b.late = everyone[: max(sizes)], everyone[max(sizes) :]
    b.log(f"registered {len(everyone)} users in {time.perf_counter() - t0:.0f} s")
    await settle(b.server)
    b.before_room = logical_db_bytes(b.server)
    b.room = await b.client.create_room(b.users[0], preset="public_chat", name="big room")


async def grow_and_write(b: Bench, size: int, messages: int, state_events: int) -> None:
    """Joins up to ``size`` members, then the timed messages and state events."""
    c, server, room, creator = b.client, b.server, b.room, b.users[0]
    t0 = time.perf_counter()
    await pool(8, b.users[b.members : size], lambda u: c.join(u, room))
    b.members = size
    b.log(f"{size} members (joins took {time.perf_counter() - t0:.0f} s)")
    await settle(server)
    before = logical_db_bytes(server)
    senders = b.users[:8]
    msg_ms = [
        await timed(c.send_text, senders[i % len(senders)], room, f"message {i} at {size}")
        for i in range(messages)
    ]
    await settle(server)
    grew = logical_db_bytes(server) - before
    state_ms = [
        await timed(
            c.request, "PUT", f"/rooms/{room}/state/m.room.topic", creator,
            json_body={"topic": f"topic {i} at {size}"},
        )
        for i in range(state_events)
    ]
    out = b.out
    out[f"msg_ms_{size}"] = statistics.median(msg_ms)
    out[f"state_ms_{size}"] = statistics.median(state_ms)
    out[f"msg_db_kb_{size}"] = grew / 1024
    b.log(
        f"{size} members: message {out[f'msg_ms_{size}']:.1f} ms, state event "
        f"{out[f'state_ms_{size}']:.1f} ms, {messages} messages grew the database "
        f"by {grew / 1e6:.2f} MB"
    )


async def late_join(b: Bench, size: int, late_joiners: int) -> User:
    """``late_joiners`` more users join (one at a time); the last one is returned."""
    i = b.late_rounds
    joiners = b.late[i * late_joiners : (i + 1) * late_joiners]
    for u in joiners:
        await b.client.join(u, b.room)
    b.late_rounds += 1
    b.members_total = size + late_joiners * b.late_rounds
    await b.client.send_text(b.users[1], b.room, f"welcome at {size}")
    await settle(b.server)
    return joiners[-1]


async def read_rounds(benches: list[Bench], size: int, late_joiners: int, rounds: int) -> None:
    """The two big-room reads, the servers taking turns round by round."""
    lates = [await late_join(b, size, late_joiners) for b in benches]
    times: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], float] = {}
    for b, late in zip(benches, lates, strict=True):
        # One untimed call each: both servers warm, neither timed on a cold cache.
        await b.client.request("GET", f"/rooms/{b.room}/members", b.users[0])
        await b.client.sync(late, timeout_ms=999, filter_=LAZY_FILTER)
        data = await b.client.request("GET", f"/rooms/{b.room}/members", b.users[0])
        b.log(f"/members lists {len(data[1]['chunk'])} members")
    for r in range(rounds):
        for b, late in zip(benches, lates, strict=True):
            name = b.server.name
            c0 = b.server.cpu_s()
            ms = await timed(b.client.request, "GET", f"/rooms/{b.room}/members", b.users[0])
            c1 = b.server.cpu_s()
            times.setdefault((name, "members"), []).append(ms)
            # A different ``timeout`` each round (an initial sync never waits for it):
            # Synapse answers a repeated identical /sync from its response cache (two
            # minutes by default), and a late joiner's first sync is never repeated.
            ms = await timed(b.client.sync, late, timeout_ms=1000 + r, filter_=LAZY_FILTER)
            c2 = b.server.cpu_s()
            times.setdefault((name, "lazy"), []).append(ms)
            cpu[(name, "members")] = cpu.get((name, "members"), 0.0) + c1 - c0
            cpu[(name, "lazy")] = cpu.get((name, "lazy"), 0.0) + c2 - c1
    for b in benches:
        name = b.server.name
        for kind in ("members", "lazy"):
            b.out[f"{kind}_ms_{size}"] = statistics.median(times[(name, kind)])
            b.out[f"{kind}_cpu_ms_{size}"] = cpu[(name, kind)] * 1000 / rounds
        b.log(
            f"{b.members_total} members: /members {b.out[f'members_ms_{size}']:.1f} ms"
            f" ({b.out[f'members_cpu_ms_{size}']:.1f} ms CPU), late joiner's lazy initial"
            f" /sync {b.out[f'lazy_ms_{size}']:.1f} ms ({b.out[f'lazy_cpu_ms_{size}']:.1f} ms CPU)"
        )


async def run(
    running: list[ServerProcess], sizes: list[int], messages: int, state_events: int,
    late_joiners: int, rounds: int,
) -> dict[str, dict[str, Any]]:
    benches = [Bench(s, MatrixClient(s.base_url, max_connections=24)) for s in running]
    try:
        for b in benches:
            print(f"== {b.server.name} (pid {b.server.pid}): setup", flush=True)
            await setup(b, sizes, late_joiners)
        for size in sizes:
            for b in benches:
                print(f"== {b.server.name}: {size} members", flush=True)
                await grow_and_write(b, size, messages, state_events)
            print(f"== reads at {size} members, {rounds} interleaved rounds", flush=True)
            await read_rounds(benches, size, late_joiners, rounds)
        for b in benches:
            await settle(b.server)
            b.out["room_db_mb"] = (logical_db_bytes(b.server) - b.before_room) / 1e6
            b.out["rss_mb"] = b.server.rss_mb()
    finally:
        for b in benches:
            await b.client.aclose()
    return {b.server.name: b.out for b in benches}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="500,2000")
    ap.add_argument("--messages", type=int, default=200)
    ap.add_argument("--state-events", type=int, default=20)
    ap.add_argument("--late-joiners", type=int, default=4, help="at least 1")
    ap.add_argument("--reads", type=int, default=30, help="interleaved rounds of the two reads")
    ap.add_argument("--only", choices=["pocketserver", "synapse"])
    args = ap.parse_args()
    sizes = sorted(int(x) for x in args.sizes.split(","))
    if args.late_joiners < 1 or args.reads < 1:
        ap.error("--late-joiners and --reads must be at least 1")
    lo, hi = sizes[0], sizes[-1]
    which = (args.only,) if args.only else ("pocketserver", "synapse")
    started = time.monotonic()
    with servers(which, synapse_config_extra={"bcrypt_rounds": 4}) as running:
        results = trio.run(
            run, running, sizes, args.messages, args.state_events, args.late_joiners, args.reads
        )

    nan = float("nan")
    p, s = results.get("pocketserver", {}), results.get("synapse", {})

    def row(label: str, key: str, fmt: str, target: str = "") -> tuple[str, str, str, str, str]:
        pv, sv = p.get(key, nan), s.get(key, nan)
        ratio = f"{pv / sv:.2f}x" if p and s and sv else "-"
        return (label, fmt.format(pv), fmt.format(sv), ratio, target)

    for r in (p, s):
        if r:
            r["msg_growth"] = r[f"msg_ms_{hi}"] / r[f"msg_ms_{lo}"]
            r["state_growth"] = r[f"state_ms_{hi}"] / r[f"state_ms_{lo}"]
    rows = []
    for size in sizes:
        rows.append(row(f"message send at {size} members (ms, median)", f"msg_ms_{size}", "{:.1f}"))
    rows.append(row(f"  growth {lo} -> {hi} members", "msg_growth", "{:.2f}x", "ps <= 1.3x"))
    for size in sizes:
        rows.append(row(f"state event at {size} members (ms, median)", f"state_ms_{size}", "{:.1f}"))
    rows.append(row(f"  growth {lo} -> {hi} members", "state_growth", "{:.2f}x", "ps <= 1.3x"))
    rows.append(row(f"database growth, {args.messages} messages at {hi} (KiB)", f"msg_db_kb_{hi}", "{:.0f}"))
    rows.append(row(f"database size of the {hi}-member room (MB)", "room_db_mb", "{:.1f}", "< 0.10x"))
    for i, size in enumerate(sizes):
        n = size + args.late_joiners * (i + 1)
        rows.append(row(f"GET /members at {n} members (ms, median)", f"members_ms_{size}", "{:.1f}", "<= 0.5x"))
        rows.append(row("  server CPU per call (ms)", f"members_cpu_ms_{size}", "{:.1f}"))
        rows.append(row(f"late joiner's lazy initial /sync at {n} (ms, median)", f"lazy_ms_{size}", "{:.1f}", "<= 0.5x"))
        rows.append(row("  server CPU per call (ms)", f"lazy_cpu_ms_{size}", "{:.1f}"))
    rows.append(row("RSS after the run (MB)", "rss_mb", "{:.1f}"))
    print()
    print_table(rows)
    print(f"\nwhole run: {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
