"""Benchmark: a pocketserver user joining a big room hosted on another server.

An in-process pocketserver; the other server is tests/federation/remote.py's
HostingRequester serving a room of ``--members`` members (each join signed by the
remote's key), built before the measurement. The send_join answer is handed over as
a fresh structure decoded from its JSON (as the transport would), so its size is
what the joiner really holds. Measured:

- time from ``POST /join`` to its answer (make_join, send_join, every state and
  auth-chain event checked: format, signatures, hashes, auth; one write transaction);
- the process's RSS before the join, its peak during the join (sampled every 10 ms
  in a thread), and after;
- the size of the send_join answer's JSON and the database's growth;
- the joiner's first /sync of the room (lazy-loaded members).

Usage: ``python benchmarks/bench_fed_join.py [--members 20000]``
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import orjson
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pocketserver.federation.hosting import build_room_federation  # noqa: E402
from pocketserver.server import run_server  # noqa: E402
from tests.api.helpers import V3, auth_headers, register, sync  # noqa: E402
from tests.conftest import make_config  # noqa: E402
from tests.federation.remote import FakeKeys, HostingRequester, RemoteRoom, key_for, room_version  # noqa: E402

REMOTE = "remote.test"
BOB = "@bob:remote.test"


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def big_room(members: int) -> RemoteRoom:
    room = RemoteRoom.create(REMOTE, BOB, room_version("10"))
    base = {k: room.state[k] for k in (("m.room.create", ""), ("m.room.power_levels", ""), ("m.room.join_rules", ""))}
    for i in range(members - 1):
        user = f"@u{i}:{REMOTE}"
        pdu = room.build(user, "m.room.member", {"membership": "join", "displayname": f"User {i}"},
                         state_key=user, auth_state=base, advance=False)
        eid = room.event_id(pdu)
        room.state[("m.room.member", user)] = eid
        room.extremities = [eid]
        room.state_before.pop(eid, None)
    return room


class WireRequester(HostingRequester):
    """Answers send_join as bytes decoded again: a fresh structure, like the wire's."""

    async def put_json(self, destination: str, path: str, body: Any, query: Any = None, *, timeout_s: float = 60.0) -> Any:
        answer = await super().put_json(destination, path, body, query, timeout_s=timeout_s)
        if "/send_join/" in path:
            raw = orjson.dumps(answer)
            self.answer_bytes = len(raw)
            del answer
            return orjson.loads(raw)
        return answer


async def main(members: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-fed-join-"))
    config = make_config(tmp)
    t0 = time.perf_counter()
    room = big_room(members)
    build_s = time.perf_counter() - t0
    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(run_server, config, out=None, handle_signals=False))
        async with httpx.AsyncClient(base_url=server.urls[0], timeout=600) as http:
            s = server.services
            requester = WireRequester(room)
            build_room_federation(s, requester, FakeKeys((REMOTE, key_for(REMOTE))))
            _, token, _ = await register(http)
            db_file = config.path("database")
            size0 = sum(f.stat().st_size for f in db_file.parent.glob(db_file.name + "*"))
            rss0 = rss_mb()
            peak = [rss0]
            stop = threading.Event()

            def sample() -> None:
                while not stop.wait(0.01):
                    peak[0] = max(peak[0], rss_mb())

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            t1 = time.perf_counter()
            r = await http.post(f"{V3}/join/{room.room_id}", json={}, headers=auth_headers(token))
            join_s = time.perf_counter() - t1
            stop.set()
            sampler.join()
            assert r.status_code == 200, r.text
            rss1 = rss_mb()
            size1 = sum(f.stat().st_size for f in db_file.parent.glob(db_file.name + "*"))
            t2 = time.perf_counter()
            resp = await sync(http, token, filter='{"room":{"state":{"lazy_load_members":true}}}')
            sync_ms = (time.perf_counter() - t2) * 1000
            assert room.room_id in resp["rooms"]["join"]
            count = await s.db.read(lambda c: c.execute(
                "SELECT COUNT(*) FROM room_memberships m JOIN rooms r ON r.room_nid = m.room_nid"
                " WHERE r.room_id = ? AND m.membership = 'join'", (room.room_id,)).fetchone()[0])
            assert count == members + 1, count
        server.stop.set()
    print(f"room: {members} members, {len(room.state)} state events (built in {build_s:.1f} s, not measured)")
    print(f"send_join answer: {requester.answer_bytes / 1e6:.1f} MB of JSON")
    print(f"join (POST /join -> 200, full state stored): {join_s:.2f} s")
    print(f"RSS: {rss0:.1f} MB before, peak {peak[0]:.1f} MB during (+{peak[0] - rss0:.1f}), {rss1:.1f} MB after")
    print(f"database growth: {(size1 - size0) / 1e6:.1f} MB (with WAL)")
    print(f"first /sync of the room (lazy-loaded members): {sync_ms:.0f} ms")
    print(f"pid {os.getpid()}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--members", type=int, default=20000)
    args = p.parse_args()
    trio.run(main, args.members)
