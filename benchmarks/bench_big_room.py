"""Big rooms: does the cost of an event grow with the number of members? vs Synapse.

    python3 benchmarks/bench_big_room.py [--sizes 500,2000] [--messages 200]
        [--state-events 20] [--only pocketserver|synapse]

Per server (both run side by side; the workload drives one at a time):

1. register as many users as the largest size (8 at a time; Synapse with
   ``bcrypt_rounds: 4`` so that setting up 2,000 accounts takes seconds, not minutes;
   pocketserver with its normal argon2id, the registration cost is not measured here);
2. user 0 creates a public room;
3. for each size: joins (8 at a time) until the room has that many members, then,
   one request at a time, ``--messages`` messages by rotating members and
   ``--state-events`` topic changes, each request timed; and the database's logical
   size (``page_count - freelist_count`` through a read-only SQLite connection, which
   sees the committed WAL too) before and after the messages.

Reported: median time per message and per state event at each size and the growth from
the smallest to the largest (target: at most 1.3x for pocketserver), the database growth
for the messages at the largest size, and the database size of the whole room (its
members and events: size after the last phase minus size before the room was made);
target: under a tenth of Synapse's.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import time
from pathlib import Path
from typing import Any

import trio
from bench_client import pool, settle
from harness import MatrixClient, ServerProcess, User, print_table, servers

PASSWORD = "big-room-bench-password"


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


async def run(server: ServerProcess, sizes: list[int], messages: int, state_events: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    log = lambda msg: print(f"  {server.name}: {msg}", flush=True)  # noqa: E731
    async with MatrixClient(server.base_url, max_connections=24) as c:
        names = [f"big{i}" for i in range(max(sizes))]
        t0 = time.perf_counter()
        users: list[User] = await pool(8, names, lambda n: c.register(n, PASSWORD))
        log(f"registered {len(users)} users in {time.perf_counter() - t0:.0f} s")
        await settle(server)
        before_room = logical_db_bytes(server)
        creator = users[0]
        room = await c.create_room(creator, preset="public_chat", name="big room")
        members = 1
        for size in sizes:
            t0 = time.perf_counter()
            await pool(8, users[members:size], lambda u: c.join(u, room))
            members = size
            log(f"{size} members (joins took {time.perf_counter() - t0:.0f} s)")
            await settle(server)
            before = logical_db_bytes(server)
            senders = users[:8]
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
            out[f"msg_ms_{size}"] = statistics.median(msg_ms)
            out[f"state_ms_{size}"] = statistics.median(state_ms)
            out[f"msg_db_kb_{size}"] = grew / 1024
            log(
                f"{size} members: message {out[f'msg_ms_{size}']:.1f} ms, state event "
                f"{out[f'state_ms_{size}']:.1f} ms, {messages} messages grew the database "
                f"by {grew / 1e6:.2f} MB"
            )
        await settle(server)
        out["room_db_mb"] = (logical_db_bytes(server) - before_room) / 1e6
        out["rss_mb"] = server.rss_mb()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="500,2000")
    ap.add_argument("--messages", type=int, default=200)
    ap.add_argument("--state-events", type=int, default=20)
    ap.add_argument("--only", choices=["pocketserver", "synapse"])
    args = ap.parse_args()
    sizes = sorted(int(x) for x in args.sizes.split(","))
    lo, hi = sizes[0], sizes[-1]
    which = (args.only,) if args.only else ("pocketserver", "synapse")
    started = time.monotonic()
    results: dict[str, dict[str, Any]] = {}
    with servers(which, synapse_config_extra={"bcrypt_rounds": 4}) as running:
        for server in running:
            print(f"== {server.name} (pid {server.pid})", flush=True)
            results[server.name] = trio.run(run, server, sizes, args.messages, args.state_events)

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
    rows.append(row("RSS after the run (MB)", "rss_mb", "{:.1f}"))
    print()
    print_table(rows)
    print(f"\nwhole run: {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
