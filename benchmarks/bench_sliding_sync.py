"""Simplified sliding sync (MSC4186) for a user in 200 rooms, pocketserver and Synapse
side by side in one run.

    python3 benchmarks/bench_sliding_sync.py [--rooms 200] [--runs 30] [--only NAME]
    python3 benchmarks/bench_sliding_sync.py --quick     # 40 rooms, 10 runs

Both servers speak ``POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync``
(Synapse 1.163 has it on by default). Setup per server: Alice creates ``--rooms`` rooms,
each with a name and a topic; Bob joins every room; each room gets 5 messages from both
of them. Each server is left to settle, then gets 3 unrecorded warm-up rounds; then
``--runs`` rounds, one request at a time, each measurement below in turn and alternating
between the servers so that both see the same machine load:

* first response: a new connection (its own ``conn_id``, no ``pos``) asking for one list
  with range [0,19], ``required_state`` (create, name, avatar, topic, encryption,
  ``$ME`` and ``$LAZY`` members) and every extension Element X enables (to_device, e2ee,
  account_data, receipts, typing), with ``timeline_limit`` 1 and 10; the answer must
  hold 20 rooms of a list counting every room;
* incremental response: on one long-lived connection, Bob sends a message in a random
  room, then Alice's request with the last ``pos`` (``timeout`` 10 s) must carry that
  event; time from the request to its answer;
* memory per connection: RSS (process tree) before and after opening ``--conns`` more
  connections (distinct ``conn_id``, each an initial and one incremental request;
  100 by default), each side left to settle; reported as KB per connection.

Timings are client wall times over loopback (median and p95). ratio = Synapse /
pocketserver (above 1: pocketserver faster). Targets (issue 14): at least 2x faster than
Synapse, first response under 100 ms. A server without the endpoint is reported as such
(its error), and the other still measured.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import (  # noqa: E402
    MatrixClient,
    ServerProcess,
    User,
    percentile,
    print_table,
    servers,
)

SSS_PATH = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
PASSWORD = "bench-password-123"
MESSAGES_PER_ROOM = 5
WINDOW = 20
WARMUP_ROUNDS = 3
REQUIRED_STATE = [
    ["m.room.create", ""],
    ["m.room.name", ""],
    ["m.room.avatar", ""],
    ["m.room.topic", ""],
    ["m.room.encryption", ""],
    ["m.room.member", "$ME"],
    ["m.room.member", "$LAZY"],
]
EXTENSIONS = {
    "to_device": {"enabled": True},
    "e2ee": {"enabled": True},
    "account_data": {"enabled": True},
    "receipts": {"enabled": True},
    "typing": {"enabled": True},
}


class Unsupported(RuntimeError):
    """The server answered the sliding-sync endpoint with an error (not implemented)."""


def body(conn_id: str, timeline_limit: int) -> dict[str, Any]:
    return {
        "conn_id": conn_id,
        "lists": {
            "all": {
                "ranges": [[0, WINDOW - 1]],
                "timeline_limit": timeline_limit,
                "required_state": REQUIRED_STATE,
            }
        },
        "extensions": EXTENSIONS,
    }


async def pool(n: int, fns: list[Callable[[], Awaitable[Any]]]) -> None:
    it = iter(fns)

    async def worker() -> None:
        for fn in it:
            await fn()

    async with trio.open_nursery() as nursery:
        for _ in range(min(n, len(fns))):
            nursery.start_soon(worker)


@dataclass
class Bench:
    server: ServerProcess
    rooms: int
    mc: MatrixClient = field(init=False)
    alice: User = field(init=False)
    bob: User = field(init=False)
    room_ids: list[str] = field(default_factory=list)
    times: dict[str, list[float]] = field(default_factory=dict)
    sizes: dict[str, list[int]] = field(default_factory=dict)
    kb_per_conn: float = float("nan")
    unsupported: str = ""
    incr_pos: str | None = None
    extra_requests: int = 0

    @property
    def name(self) -> str:
        return self.server.name

    async def setup(self) -> None:
        self.mc = MatrixClient(self.server.base_url, max_connections=16)
        self.alice = await self.mc.register("alice", PASSWORD)
        self.bob = await self.mc.register("bob", PASSWORD)
        ids: list[str] = [""] * self.rooms

        async def make(i: int) -> None:
            rid = await self.mc.create_room(
                self.alice, name=f"Room {i}", topic=f"Topic of room {i}", preset="public_chat"
            )
            await self.mc.join(self.bob, rid)
            for m in range(MESSAGES_PER_ROOM):
                sender = self.alice if m % 2 == 0 else self.bob
                await self.mc.send_text(sender, rid, f"message {m} in room {i}")
            ids[i] = rid

        await pool(8, [functools.partial(make, i) for i in range(self.rooms)])
        self.room_ids = ids

    async def sss(self, payload: dict[str, Any], pos: str | None = None, timeout_ms: int = 0) -> tuple[float, dict[str, Any], int]:
        """One sliding-sync request: (seconds, response, response bytes)."""
        params: dict[str, Any] = {"timeout": timeout_ms}
        if pos is not None:
            params["pos"] = pos
        headers = {"Authorization": f"Bearer {self.alice.access_token}"}
        t0 = time.perf_counter()
        resp = await self.mc.http.post(SSS_PATH, json=payload, params=params, headers=headers)
        elapsed = time.perf_counter() - t0
        if resp.status_code != 200:
            try:
                errcode = resp.json().get("errcode", "")
            except ValueError:
                errcode = resp.text[:40]
            raise Unsupported(f"HTTP {resp.status_code} {errcode}")
        data = resp.json()
        assert isinstance(data, dict)
        return elapsed, data, len(resp.content)

    def record(self, key: str, seconds: float, size: int = 0) -> None:
        self.times.setdefault(key, []).append(seconds)
        self.sizes.setdefault(key, []).append(size)

    async def first(self, timeline_limit: int) -> None:
        conn = f"first-{timeline_limit}-{uuid.uuid4().hex[:8]}"
        seconds, data, size = await self.sss(body(conn, timeline_limit))
        rooms = data.get("rooms", {})
        count = data.get("lists", {}).get("all", {}).get("count")
        if len(rooms) != WINDOW or count != self.rooms:
            raise AssertionError(f"{self.name}: {len(rooms)} rooms, count {count}, wanted {WINDOW} of {self.rooms}")
        for rid, room in rooms.items():
            timeline = room.get("timeline", [])
            if not 1 <= len(timeline) <= timeline_limit:
                raise AssertionError(f"{self.name}: {rid} has {len(timeline)} timeline events")
        self.record(f"first{timeline_limit}", seconds, size)

    async def incremental(self, rnd: random.Random) -> None:
        payload = body("incremental", 10)
        if self.incr_pos is None:
            _, data, _ = await self.sss(payload)
            self.incr_pos = data["pos"]
        rid = rnd.choice(self.room_ids)
        event_id = await self.mc.send_text(self.bob, rid, "a new message")
        total, size = 0.0, 0
        for _ in range(5):  # an answer may carry something else first (a receipt, typing)
            seconds, data, size = await self.sss(payload, self.incr_pos, timeout_ms=10000)
            total += seconds
            self.incr_pos = data["pos"]
            timeline = data.get("rooms", {}).get(rid, {}).get("timeline", [])
            if any(ev.get("event_id") == event_id for ev in timeline):
                self.record("incremental", total, size)
                return
            self.extra_requests += 1
        raise AssertionError(f"{self.name}: the new message in {rid} never came")

    async def connections(self, n: int, settle: Callable[[], Awaitable[None]]) -> None:
        await settle()
        before = self.server.rss_mb()
        for i in range(n):
            payload = body(f"rss-{i}", 10)
            _, data, _ = await self.sss(payload)
            await self.sss(payload, data["pos"])
        await settle()
        after = self.server.rss_mb()
        self.kb_per_conn = (after - before) * 1024 / n
        print(f"{self.name}: RSS {before:.1f} -> {after:.1f} MB over {n} connections", flush=True)


async def settle(server: ServerProcess, *, quiet: float = 0.05, deadline_s: float = 60.0) -> None:
    """Wait (bounded) until the server uses under ``quiet`` of a core over half a second."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        c0, t0 = server.cpu_s(), time.monotonic()
        await trio.sleep(0.5)
        if (server.cpu_s() - c0) / (time.monotonic() - t0) < quiet:
            return


async def run_all(running: list[ServerProcess], args: argparse.Namespace) -> list[Bench]:
    benches = [Bench(s, args.rooms) for s in running]
    for b in benches:
        t0 = time.monotonic()
        print(f"{b.name}: creating {args.rooms} rooms with {MESSAGES_PER_ROOM} messages each ...", flush=True)
        await b.setup()
        print(f"{b.name}: set up in {time.monotonic() - t0:.0f} s", flush=True)
        try:
            await b.sss(body("probe", 1))
        except Unsupported as e:
            b.unsupported = str(e)
            print(f"{b.name}: sliding sync not available: {e}", flush=True)
    live = [b for b in benches if not b.unsupported]
    for b in live:
        await settle(b.server)
    rnd = random.Random(14)
    steps: list[Callable[[Bench], Awaitable[None]]] = [
        lambda b: b.first(1),
        lambda b: b.first(10),
        lambda b: b.incremental(rnd),
    ]
    # Warm-up rounds, not recorded: the servers' caches and code paths, as on a
    # server that has been running for a while.
    for b in live:
        for step in steps * WARMUP_ROUNDS:
            await step(b)
        b.times.clear()
        b.sizes.clear()
        b.extra_requests = 0
    print(f"{args.runs} rounds of: first response (timeline_limit 1, 10), incremental ...", flush=True)
    for _ in range(args.runs):
        for step in steps:
            for b in live:  # interleaved: both servers see the same machine load
                await step(b)
    for b in live:
        await b.connections(args.conns, functools.partial(settle, b.server))
    for b in benches:
        await b.mc.aclose()
    return benches


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rooms", type=int, default=200)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--conns", type=int, default=100)
    ap.add_argument("--quick", action="store_true", help="40 rooms, 10 runs, 20 connections")
    ap.add_argument("--only", choices=["pocketserver", "synapse"])
    ap.add_argument("--json", type=Path, help="also write the raw figures here")
    args = ap.parse_args()
    if args.quick:
        args.rooms, args.runs, args.conns = 40, 10, 20
    if args.rooms < WINDOW:
        ap.error(f"--rooms must be at least {WINDOW}")
    names = (args.only,) if args.only else ("pocketserver", "synapse")
    load_before = os.getloadavg()[0]
    with servers(names) as running:
        benches = trio.run(run_all, running, args)
    load_after = os.getloadavg()[0]
    by_name = {b.name: b for b in benches}

    def stat(name: str, key: str, q: float | None) -> float:
        b = by_name.get(name)
        if b is None or b.unsupported or key not in b.times:
            return float("nan")
        v = [t * 1000 for t in b.times[key]]
        return statistics.median(v) if q is None else percentile(v, q)

    def fmt(name: str, value: float, unit: str = "") -> str:
        b = by_name.get(name)
        if b is not None and b.unsupported:
            return f"n/a ({b.unsupported})"
        return "-" if value != value else f"{value:.1f}{unit}"

    rows: list[tuple[str, str, str, str, str]] = []
    for key, label, limit in (
        ("first1", "first response, timeline_limit 1 (ms)", 100.0),
        ("first10", "first response, timeline_limit 10 (ms)", 100.0),
        ("incremental", "incremental after 1 message (ms)", None),
    ):
        for q, qname in ((None, "median"), (0.95, "p95")):
            p, s = stat("pocketserver", key, q), stat("synapse", key, q)
            ratio = f"{s / p:.2f}x" if p == p and s == s and p else "-"
            target = ">= 2x"
            if limit is not None and q is None:
                target += f", < {limit:g} ms"
            if p == p and s == s:
                ok = s / p >= 2 and (limit is None or q is not None or p < limit)
                target += " ok" if ok else " MISSED"
            rows.append((f"{label} {qname}", fmt("pocketserver", p), fmt("synapse", s), ratio, target))
    for key, label in (("first1", "first response size, tl 1 (KB)"), ("first10", "first response size, tl 10 (KB)")):
        vals = {
            n: (statistics.median(b.sizes[key]) / 1024 if key in b.sizes else float("nan"))
            for n, b in by_name.items()
        }
        p, s = vals.get("pocketserver", float("nan")), vals.get("synapse", float("nan"))
        rows.append((label, fmt("pocketserver", p), fmt("synapse", s), f"{s / p:.2f}x" if p == p and s == s and p else "-", ""))
    p = by_name["pocketserver"].kb_per_conn if "pocketserver" in by_name else float("nan")
    s = by_name["synapse"].kb_per_conn if "synapse" in by_name else float("nan")
    rows.append(
        (f"RSS growth per connection, {args.conns} conns (KB)", fmt("pocketserver", p), fmt("synapse", s), "-",
         "a few KB" + ("" if p != p else (" ok" if p <= 10 else " MISSED")))
    )
    print()
    print(
        f"{args.rooms} rooms x {MESSAGES_PER_ROOM} messages, window [0,{WINDOW - 1}], "
        f"{args.runs} runs each; ratio = synapse / pocketserver; "
        f"machine load average {load_before:.1f} before, {load_after:.1f} after ({os.cpu_count()} cores)"
    )
    print_table(rows)
    for b in benches:
        if b.extra_requests:
            print(f"{b.name}: {b.extra_requests} incremental answers carried something else first")
    if args.json:
        args.json.write_text(
            json.dumps(
                {b.name: {"times": b.times, "sizes": b.sizes, "kb_per_conn": b.kb_per_conn,
                          "unsupported": b.unsupported} for b in benches},
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
