"""Client-API benchmark: pocketserver against a real Synapse, same workload, one run.

    python3 benchmarks/bench_client.py            # full size (about 10 minutes on 2 cores)
    python3 benchmarks/bench_client.py --quick    # scaled down (about 2 minutes)

Both servers run at once (harness.servers); the workload drives one server at a time,
with the same client code (Matrix client-server API only). Before each timed phase the
harness waits until the server is quiet (its CPU use has settled), so one phase's
background work (Synapse's user directory, say) is counted where it belongs.

Workload per server (full size; --quick divides it):
  1. register 50 users + fillers so that one room reaches 1,000 members (password
     registration, m.login.dummy, 8 at a time): server CPU per registration.
  2. user 0 creates 50 rooms; each gets 9 more of the 50 users (450 joins).
  3. history: 1,200 messages spread over the 50 rooms (8 senders at a time).
  4. send throughput: 8 concurrent senders, 100 messages each, in one room (800).
  5. one room of 1,000 members (joins 8 at a time), then 8 senders x 25 messages in it.
  6. initial /sync of user 0 (in 50 rooms with history): first and median of 5.
  7. delivery latency: user 1 sends in room 0 while user 0 waits in a long-poll /sync
     (since = last token); time from the send to that /sync answering with the event.
  8. RSS of the server (process tree) after the run.

Targets (issue 3): throughput >= 2x Synapse's; latency p50 <= 1/2 of Synapse's; initial
sync >= 2x faster; RSS after the run <= 80 MB and <= 1/2 of Synapse's.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trio
from harness import (
    MatrixClient,
    ServerProcess,
    User,
    percentile,
    print_table,
    servers,
)

T = TypeVar("T")
PASSWORD_PREFIX = "bench-password-"


@dataclass
class Scale:
    users: int = 50
    rooms: int = 50
    members_per_room: int = 10  # user 0 + 9 others
    history_messages: int = 1200
    senders: int = 8
    messages_per_sender: int = 100
    big_room_members: int = 1000
    big_room_messages_per_sender: int = 25
    initial_sync_runs: int = 5
    latency_samples: int = 50
    concurrency: int = 8


QUICK = Scale(
    users=20,
    rooms=10,
    members_per_room=6,
    history_messages=200,
    messages_per_sender=25,
    big_room_members=150,
    big_room_messages_per_sender=10,
    initial_sync_runs=3,
    latency_samples=20,
)


@dataclass
class Result:
    name: str
    figures: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def client_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def pool(n: int, items: Sequence[T], fn: Callable[[T], Awaitable[Any]]) -> list[Any]:
    """Run ``fn(item)`` for every item, ``n`` at a time; results in item order."""
    results: list[Any] = [None] * len(items)
    it = iter(enumerate(items))

    async def worker() -> None:
        for i, item in it:
            results[i] = await fn(item)

    async with trio.open_nursery() as nursery:
        for _ in range(min(n, len(items))):
            nursery.start_soon(worker)
    return results


async def settle(server: ServerProcess, *, quiet: float = 0.05, deadline_s: float = 60.0) -> None:
    """Wait (bounded) until the server uses under ``quiet`` of a core over half a second."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        c0, t0 = server.cpu_s(), time.monotonic()
        await trio.sleep(0.5)
        if (server.cpu_s() - c0) / (time.monotonic() - t0) < quiet:
            return


class Phase:
    """Wall time, server CPU and client CPU of one phase."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server

    def __enter__(self) -> Phase:
        self.t0 = time.perf_counter()
        self.cpu0 = self.server.cpu_s()
        self.client0 = client_cpu_s()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.t0
        self.cpu = self.server.cpu_s() - self.cpu0
        self.client_cpu = client_cpu_s() - self.client0


def joined_rooms(sync: dict[str, Any]) -> dict[str, Any]:
    rooms = sync.get("rooms", {}).get("join", {})
    assert isinstance(rooms, dict)
    return rooms


async def run_workload(server: ServerProcess, sc: Scale, log: Callable[[str], None]) -> Result:
    res = Result(server.name)
    fig = res.figures
    rnd = random.Random(42)
    async with MatrixClient(server.base_url, max_connections=sc.concurrency * 2 + 4) as c:
        # 1. registration -------------------------------------------------------------
        fillers = max(0, sc.big_room_members - (sc.users - 1))
        names = [f"user{i}" for i in range(sc.users)] + [f"filler{i}" for i in range(fillers)]
        await settle(server)
        with Phase(server) as ph:
            registered: list[User] = await pool(
                sc.concurrency, names, lambda n: c.register(n, PASSWORD_PREFIX + n)
            )
            await settle(server)
        users, filler_users = registered[: sc.users], registered[sc.users :]
        fig["register_cpu_ms"] = ph.cpu / len(names) * 1000
        fig["register_per_s"] = len(names) / ph.wall
        log(f"registered {len(names)} users in {ph.wall:.1f} s, server CPU {ph.cpu:.1f} s")

        # 2. user 0's rooms -------------------------------------------------------------
        owner = users[0]
        others = users[1:]
        rooms: list[str] = await pool(
            sc.concurrency,
            list(range(sc.rooms)),
            lambda i: c.create_room(owner, preset="public_chat", name=f"room {i}"),
        )
        members: dict[str, list[User]] = {}
        joins: list[tuple[User, str]] = []
        per_room = sc.members_per_room - 1
        for i, room in enumerate(rooms):
            ms = [others[(i * per_room + j) % len(others)] for j in range(per_room)]
            if i == 0:  # room 0 holds the throughput senders and the latency pair
                ms = others[: max(per_room, sc.senders)]
            members[room] = [owner, *ms]
            joins.extend((u, room) for u in ms)
        await settle(server)
        with Phase(server) as ph:
            await pool(sc.concurrency, joins, lambda j: c.join(j[0], j[1]))
        fig["join_ms"] = ph.wall / len(joins) * 1000
        log(f"created {len(rooms)} rooms, {len(joins)} joins in {ph.wall:.1f} s")

        # 3. history --------------------------------------------------------------------
        plan = [
            (rnd.choice(members[rooms[k % len(rooms)]]), rooms[k % len(rooms)], k)
            for k in range(sc.history_messages)
        ]
        await settle(server)
        with Phase(server) as ph:
            await pool(
                sc.concurrency,
                plan,
                lambda p: c.send_text(p[0], p[1], f"history message {p[2]} " + "x" * (p[2] % 80)),
            )
        fig["history_msgs_per_s"] = len(plan) / ph.wall
        log(f"history: {len(plan)} messages in {ph.wall:.1f} s")

        # 4. send throughput in one room --------------------------------------------------
        room0 = rooms[0]
        senders = others[: sc.senders]
        send_lat: list[float] = []

        async def sender(u: User) -> None:
            for k in range(sc.messages_per_sender):
                t = time.perf_counter()
                await c.send_text(u, room0, f"throughput {u.user_id} {k}")
                send_lat.append(time.perf_counter() - t)

        await settle(server)
        with Phase(server) as ph:
            await pool(len(senders), senders, sender)
        n = len(senders) * sc.messages_per_sender
        fig["send_msgs_per_s"] = n / ph.wall
        fig["send_p50_ms"] = percentile(send_lat, 0.5) * 1000
        fig["send_p95_ms"] = percentile(send_lat, 0.95) * 1000
        fig["send_cpu_ms"] = ph.cpu / n * 1000
        fig["send_client_cpu_ms"] = ph.client_cpu / n * 1000
        log(f"throughput: {n} messages in {ph.wall:.1f} s ({n / ph.wall:.0f}/s)")

        # 5. the big room -----------------------------------------------------------------
        creator = others[0]
        big_joiners = others[1:] + filler_users
        big = await c.create_room(creator, preset="public_chat", name="big room")
        await settle(server)
        with Phase(server) as ph:
            await pool(sc.concurrency, big_joiners, lambda u: c.join(u, big))
        fig["big_join_ms"] = ph.wall / len(big_joiners) * 1000
        fig["big_members"] = 1 + len(big_joiners)
        log(f"big room: {1 + len(big_joiners)} members, joins in {ph.wall:.1f} s")
        big_senders = others[: sc.senders]

        async def big_sender(u: User) -> None:
            for k in range(sc.big_room_messages_per_sender):
                await c.send_text(u, big, f"big room {u.user_id} {k}")

        await settle(server)
        with Phase(server) as ph:
            await pool(len(big_senders), big_senders, big_sender)
        n = len(big_senders) * sc.big_room_messages_per_sender
        fig["big_send_msgs_per_s"] = n / ph.wall
        log(f"big room: {n} messages in {ph.wall:.1f} s")

        # 6. initial sync of user 0 ---------------------------------------------------------
        times: list[float] = []
        last: dict[str, Any] = {}
        for run in range(sc.initial_sync_runs):
            await settle(server)
            t = time.perf_counter()
            # A distinct (meaningless for an initial sync) timeout per run keeps Synapse's
            # sync response cache from answering a repeat from memory.
            last = await c.sync(owner, timeout_ms=run)
            times.append(time.perf_counter() - t)
        got = joined_rooms(last)
        if len(got) != sc.rooms:
            res.notes.append(f"initial sync listed {len(got)} joined rooms, expected {sc.rooms}")
        empty = [r for r, v in got.items() if not v.get("timeline", {}).get("events")]
        if empty:
            res.notes.append(f"initial sync: {len(empty)} rooms with an empty timeline")
        fig["initial_sync_first_ms"] = times[0] * 1000
        fig["initial_sync_ms"] = statistics.median(times) * 1000
        fig["initial_sync_kb"] = len(json.dumps(last)) / 1024
        log(f"initial sync: {', '.join(f'{t * 1000:.0f}' for t in times)} ms")

        # 7. delivery latency ----------------------------------------------------------------
        since = str(last["next_batch"])
        lat_sender = others[0]
        latencies: list[float] = []
        await settle(server)
        for k in range(sc.latency_samples):
            marker = f"latency {k} {os.urandom(4).hex()}"
            arrived = 0.0
            sent_at = 0.0

            async def waiter(marker: str) -> None:
                nonlocal since, arrived
                for _ in range(50):  # bounded: wake-ups for other things re-poll
                    data = await c.sync(owner, since=since, timeout_ms=30_000)
                    since = str(data["next_batch"])
                    events = joined_rooms(data).get(room0, {}).get("timeline", {}).get("events", [])
                    if any(e.get("content", {}).get("body") == marker for e in events):
                        arrived = time.perf_counter()
                        return
                raise RuntimeError("the message never arrived in /sync")

            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(waiter, marker)
                    await trio.sleep(0.1)  # let the long-poll park on the server
                    sent_at = time.perf_counter()
                    await c.send_text(lat_sender, room0, marker)
            latencies.append(arrived - sent_at)
        fig["latency_p50_ms"] = percentile(latencies, 0.5) * 1000
        fig["latency_p90_ms"] = percentile(latencies, 0.9) * 1000
        log(f"latency p50 {fig['latency_p50_ms']:.1f} ms")

    # 8. memory after the run --------------------------------------------------------------
    await settle(server)
    fig["rss_mb"] = server.rss_mb()
    fig["cpu_total_s"] = server.cpu_s()
    fig["messages"] = (
        sc.history_messages
        + sc.senders * sc.messages_per_sender
        + sc.senders * sc.big_room_messages_per_sender
        + sc.latency_samples
    )
    log(f"RSS after the run {fig['rss_mb']:.1f} MB")
    return res


# (metric label, key, unit format, higher is better, target description, target check)
ROWS: list[tuple[str, str, str, bool, str, Callable[[float, float], bool] | None]] = [
    ("send throughput, 8 senders, 1 room (msg/s)", "send_msgs_per_s", "{:.0f}", True,
     ">= 2x synapse", lambda p, s: p >= 2 * s),
    ("  send request p50 (ms)", "send_p50_ms", "{:.1f}", False, "", None),
    ("  send request p95 (ms)", "send_p95_ms", "{:.1f}", False, "", None),
    ("  server CPU per message (ms)", "send_cpu_ms", "{:.2f}", False, "", None),
    ("  client CPU per message (ms)", "send_client_cpu_ms", "{:.2f}", False, "", None),
    ("delivery latency send->/sync p50 (ms)", "latency_p50_ms", "{:.1f}", False,
     "<= 1/2 synapse", lambda p, s: p <= s / 2),
    ("  delivery latency p90 (ms)", "latency_p90_ms", "{:.1f}", False, "", None),
    ("initial /sync, 50 rooms, median (ms)", "initial_sync_ms", "{:.0f}", False,
     ">= 2x faster", lambda p, s: p * 2 <= s),
    ("  initial /sync, first (ms)", "initial_sync_first_ms", "{:.0f}", False, "", None),
    ("  initial /sync response size (KiB)", "initial_sync_kb", "{:.0f}", False, "", None),
    ("RSS after the run (MB)", "rss_mb", "{:.1f}", False, "<= 80, <= 1/2 synapse",
     lambda p, s: p <= 80 and p <= s / 2),
    ("registration: server CPU per user (ms)", "register_cpu_ms", "{:.0f}", False, "", None),
    ("registration rate, 8 at a time (users/s)", "register_per_s", "{:.1f}", True, "", None),
    ("join, small rooms, 8 at a time (ms/join)", "join_ms", "{:.1f}", False, "", None),
    ("join, big room, 8 at a time (ms/join)", "big_join_ms", "{:.1f}", False, "", None),
    ("history sends, 8 rooms at a time (msg/s)", "history_msgs_per_s", "{:.0f}", True, "", None),
    ("send throughput, big room (msg/s)", "big_send_msgs_per_s", "{:.0f}", True, "", None),
    ("server CPU, whole run (s)", "cpu_total_s", "{:.1f}", False, "", None),
]


def report(results: dict[str, Result], sc: Scale) -> None:
    p, s = results.get("pocketserver"), results.get("synapse")
    rows = []
    for label, key, fmt, _higher, target, check in ROWS:
        pv = p.figures.get(key, float("nan")) if p else float("nan")
        sv = s.figures.get(key, float("nan")) if s else float("nan")
        ratio = f"{pv / sv:.2f}x" if p and s and sv else "-"
        verdict = ""
        if check is not None and p and s:
            verdict = " ok" if check(pv, sv) else " MISSED"
        rows.append((label, fmt.format(pv), fmt.format(sv), ratio, (target + verdict).strip()))
    print()
    any_result = p or s
    messages = any_result.figures.get("messages", 0) if any_result else 0
    print(
        f"scale: {sc.users} users, {sc.rooms} rooms, {messages:.0f} messages, "
        f"big room of {sc.big_room_members} members; ratio = pocketserver / synapse"
    )
    print_table(rows)
    for r in results.values():
        for note in r.notes:
            print(f"NOTE {r.name}: {note}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a scaled-down run (about 2 minutes)")
    ap.add_argument("--only", choices=["pocketserver", "synapse"], help="run one server")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = ap.parse_args()
    sc = QUICK if args.quick else Scale()
    which = (args.only,) if args.only else ("pocketserver", "synapse")
    started = time.monotonic()
    results: dict[str, Result] = {}
    with servers(which) as running:
        for server in running:
            print(f"== {server.name} (ready in {server.ready_after_s:.2f} s, pid {server.pid})")

            def log(msg: str, name: str = server.name) -> None:
                print(f"  [{time.monotonic() - started:6.1f} s] {name}: {msg}", flush=True)

            results[server.name] = trio.run(run_workload, server, sc, log)
    report(results, sc)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({k: v.figures for k, v in results.items()}, f, indent=1)
    print(f"\nwhole run: {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
