"""Outbound federation: 1,000 messages to a room with members on 5 other servers.

    python3 benchmarks/bench_fed_outbound.py [--messages N] [--servers S] [--latency-ms L]

In one process: pocketserver's services (the real event pipeline, outbox and sender) over
a fresh database, with the other servers played by an in-process requester that answers
each transaction after ``--latency-ms``. Measures the send rate, how the sender batched
the PDUs (transactions per server, PDUs per transaction), the time until every server has
every message, the resident memory before and after (it should stay flat: the backlog is
read in batches), and a catch-up: one server down for half the messages, then back.
Issue 12's target: 1,000 messages to 5 remote servers batched, RSS flat.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pocketserver.federation.interfaces import FederationUnreachable  # noqa: E402
from pocketserver.storage import outbox  # noqa: E402
from tests.federation.fakes import local_user, remote_join, running_services  # noqa: E402


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class CountingServers:
    """Other servers that acknowledge transactions after a delay, keeping only counts."""

    def __init__(self, latency_s: float) -> None:
        self.latency_s = latency_s
        self.down: set[str] = set()
        self.txns: dict[str, int] = {}
        self.pdus: dict[str, int] = {}
        self.max_pdus = 0

    async def put_json(self, destination: str, path: str, body: Any, *a: Any, **k: Any) -> Any:
        await trio.sleep(self.latency_s)
        if destination in self.down:
            raise FederationUnreachable(destination)
        self.txns[destination] = self.txns.get(destination, 0) + 1
        self.pdus[destination] = self.pdus.get(destination, 0) + len(body["pdus"])
        self.max_pdus = max(self.max_pdus, len(body["pdus"]))
        return {"pdus": {}}

    async def get_json(self, destination: str, *a: Any, **k: Any) -> Any:
        raise FederationUnreachable(destination)

    post_json = get_json


async def run(messages: int, servers: int, latency_ms: float) -> None:
    remotes = CountingServers(latency_ms / 1000)
    names = [f"s{i}.remote" for i in range(servers)]
    with tempfile.TemporaryDirectory(prefix="pocketbench-fedout-") as tmp:
        async with running_services(Path(tmp), remotes) as svc:  # type: ignore[arg-type]
            alice = await local_user(svc, "alice")
            room_id, _ = await svc.rooms.create_room(alice, {"preset": "public_chat"})
            for name in names:
                for m in range(20):
                    await remote_join(svc, room_id, f"@u{m}:{name}")

            async def backlog() -> int:
                return sum([await svc.db.read(outbox.count_queued, n) for n in names])

            async def drained(deadline_s: float = 300) -> None:
                with trio.fail_after(deadline_s):
                    while await backlog():
                        await trio.sleep(0.01)

            async def send(n: int, tag: str) -> float:
                t0 = time.perf_counter()
                for i in range(n):
                    await svc.rooms.send_event(alice, room_id, "m.room.message", {"body": f"{tag} {i}"})
                return time.perf_counter() - t0

            await send(20, "warm-up")
            await drained()
            for n in names:
                remotes.txns[n] = remotes.pdus[n] = 0
            remotes.max_pdus = 0
            rss0 = rss_mb()
            t0 = time.perf_counter()
            send_s = await send(messages, "msg")
            await drained()
            total_s = time.perf_counter() - t0
            rss1 = rss_mb()
            txns = [remotes.txns[n] for n in names]
            assert all(remotes.pdus[n] == messages for n in names), remotes.pdus

            # Catch-up: one server down for half the messages, then back. (With
            # --servers 0, the same sends to a local-only room: the baseline.)
            remotes.down.update(names[:1])
            await send(messages // 2, "while down")
            queued = await svc.db.read(outbox.count_queued, names[0]) if names else 0
            remotes.down.clear()
            t1 = time.perf_counter()
            assert svc.federation_sender is not None
            for name in names[:1]:
                svc.federation_sender.mark_alive(name)
            await drained()
            catch_up_s = time.perf_counter() - t1
            rss2 = rss_mb()

    print(f"{messages} messages to a room with members on {servers} servers ({latency_ms:g} ms per answer)")
    rows = [
        ("send rate (msg/s)", f"{messages / send_s:.0f}"),
        ("all delivered to every server after (s)", f"{total_s:.2f}"),
        ("transactions per server (min-max)", f"{min(txns, default=0)}-{max(txns, default=0)}"),
        ("PDUs per transaction (mean / max)", f"{messages * len(txns) / max(1, sum(txns)):.1f} / {remotes.max_pdus}"),
        ("RSS before / after / after catch-up (MB)", f"{rss0:.1f} / {rss1:.1f} / {rss2:.1f}"),
        (f"catch-up of {queued} queued PDUs after an outage (s)", f"{catch_up_s:.2f}"),
    ]
    width = max(len(r[0]) for r in rows)
    for label, value in rows:
        print(f"{label.ljust(width)} | {value}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--servers", type=int, default=5)
    ap.add_argument("--latency-ms", type=float, default=20.0)
    args = ap.parse_args()
    trio.run(run, args.messages, args.servers, args.latency_ms)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
