"""Benchmark: the federation PDU intake of pocketserver (no Synapse counterpart here:
it measures this server's inbound path on its own).

An in-process pocketserver hosts a room created by a local user; a second "server"
(tests/federation/remote.py: events built and signed with the protocol core and its
own key) joins it through make_join / send_join, then sends messages in transactions
of 50 PDUs. Measured:

- throughput: PDUs accepted per second through ``on_transaction`` (each PDU checked:
  format, signatures, hash, auth events, state before, current state; one write each);
- delivery: time from handing a one-PDU transaction to a waiting /sync answering it
  (median of N);
- a 20-event gap closed by /get_missing_events (the fake answers instantly), and
- the process's RSS before and after.

Usage: ``python benchmarks/bench_fed_intake.py [--messages 1000] [--rounds 20]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pocketserver.federation.hosting import build_room_federation  # noqa: E402
from pocketserver.protocol.events import Event  # noqa: E402
from pocketserver.protocol.room_versions import KNOWN_ROOM_VERSIONS  # noqa: E402
from pocketserver.protocol.signing import sign_event  # noqa: E402
from pocketserver.server import run_server  # noqa: E402
from tests.api.helpers import create_room, register, sync  # noqa: E402
from tests.conftest import make_config  # noqa: E402
from tests.federation.remote import FakeKeys, FakeRequester, RemoteRoom, key_for  # noqa: E402

REMOTE = "remote.test"
BOB = "@bob:remote.test"


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def main(messages: int, rounds: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-fed-"))
    config = make_config(tmp)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(run_server, config, out=None, handle_signals=False))
        async with httpx.AsyncClient(base_url=server.urls[0], timeout=60) as http:
            s = server.services
            requester = FakeRequester()
            fed = build_room_federation(s, requester, FakeKeys((REMOTE, key_for(REMOTE))))
            _, token, _ = await register(http)
            room_id = await create_room(http, token, preset="public_chat")
            made = await fed.hosting.make_join(REMOTE, room_id, BOB, ["12"])
            rv = KNOWN_ROOM_VERSIONS["12"]
            pdu = sign_event(dict(made["event"]), REMOTE, key_for(REMOTE), rv)
            answer = await fed.hosting.send_join(REMOTE, room_id, Event.from_pdu(pdu, rv).event_id, pdu)
            remote = RemoteRoom(REMOTE, room_id, rv)
            remote.learn(answer["auth_chain"])
            remote.learn(answer["state"], state=True)
            remote.learn_timeline(answer["event"])
            requester.rooms[room_id] = remote
            rss0 = rss_mb()

            pdus = [remote.build(BOB, "m.room.message", {"msgtype": "m.text", "body": f"m{i}"}) for i in range(messages)]
            t0 = time.perf_counter()
            for i in range(0, len(pdus), 50):
                out = await fed.transactions.on_transaction(REMOTE, f"bulk{i}", {"pdus": pdus[i : i + 50]})
                assert all(v == {} for v in out["pdus"].values()), out
            bulk_s = time.perf_counter() - t0

            latencies: list[float] = []
            since = (await sync(http, token))["next_batch"]
            for r in range(rounds):
                one = remote.build(BOB, "m.room.message", {"msgtype": "m.text", "body": f"live{r}"})
                done = trio.Event()
                got: dict[str, float] = {}

                async def waiter(since: str = since, got: dict[str, float] = got, done: trio.Event = done) -> None:
                    resp = await sync(http, token, since=since, timeout=10_000)
                    got["t"] = time.perf_counter()
                    got["next"] = resp["next_batch"]  # type: ignore[assignment]
                    done.set()

                nursery.start_soon(waiter)
                await trio.sleep(0.05)  # let the /sync start waiting (measurement, not a test)
                t1 = time.perf_counter()
                await fed.transactions.on_transaction(REMOTE, f"live{r}", {"pdus": [one]})
                with trio.fail_after(15):
                    await done.wait()
                latencies.append((got["t"] - t1) * 1000)
                since = str(got["next"])

            gap = [remote.build(BOB, "m.room.message", {"body": f"gap{i}"}) for i in range(21)]
            t2 = time.perf_counter()
            out = await fed.transactions.on_transaction(REMOTE, "gap", {"pdus": [gap[-1]]})
            gap_ms = (time.perf_counter() - t2) * 1000
            assert out["pdus"][remote.event_id(gap[-1])] == {}
            rss1 = rss_mb()
        server.stop.set()
    print(f"intake throughput: {messages} PDUs in {bulk_s:.2f} s = {messages / bulk_s:.0f} PDUs/s (transactions of 50)")
    print(f"delivery transaction -> waiting /sync: p50 {statistics.median(latencies):.1f} ms, max {max(latencies):.1f} ms ({rounds} rounds)")
    print(f"20-event gap closed by get_missing_events: {gap_ms:.0f} ms")
    print(f"RSS: {rss0:.1f} MB after the join, {rss1:.1f} MB after {messages + rounds + 21} remote events")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--messages", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=20)
    args = p.parse_args()
    trio.run(main, args.messages, args.rounds)
