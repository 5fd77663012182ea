"""Benchmark: joining a room hosted on Synapse with ``--members`` members (1,000), by a
pocketserver user and, in the same run, by a second Synapse's user.

    python3 benchmarks/bench_fed_join_synapse.py [--members 1000] [--concurrency 8]

Three servers federate over TLS on loopback (tests/interop/synapse.py's settings):
Synapse A hosts a public room; ``--members`` users of A register (``bcrypt_rounds: 4``
on A, so that this set-up takes a minute, not an hour) and join it, ``--concurrency``
at a time. Not measured. Then, one after the other:

- a pocketserver user joins (``POST /join/{roomId}?server_name=A``): pocketserver
  answers once the room's full state is stored, so the time to full state is the
  request's time; checked with ``joined_members``;
- a user of Synapse B joins the same way. Synapse 1.163 joins remote rooms with partial
  state (MSC3706: ``/join`` answers before the members are known) and fetches the rest
  in the background; its time to full state is until its ``partial_state_rooms`` table
  (read from its SQLite file) no longer holds the room, and its ``joined_members``
  shows every member.

For each joiner: the time to the ``/join`` answer, the time to full state, and its
resident memory (VmRSS of the server's process tree, sampled every 20 ms) before, at
its peak until full state, and after. Both joiners are fresh servers that have never
talked to A before (keys fetched during the join, as for a first join).
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.interop.synapse import (  # noqa: E402 - after the path set-up
    register,
    start_federating_pocketserver,
    start_federating_synapse,
)

FULL_STATE_DEADLINE_S = 900.0
HOST_SETTINGS: dict[str, Any] = {"bcrypt_rounds": 4}


def call(base: str, token: str, method: str, path: str, body: Any = None, **params: str) -> Any:
    r = httpx.request(
        method, f"{base}/_matrix/client/v3{path}", json=body, params=params or None,
        headers={"Authorization": f"Bearer {token}"}, timeout=300,
    )
    if r.status_code != 200:
        raise RuntimeError(f"{method} {path} -> {r.status_code}: {r.text[:300]}")
    return r.json()


def joined_count(base: str, token: str, room_id: str) -> int:
    return len(call(base, token, "GET", f"/rooms/{quote(room_id)}/joined_members")["joined"])


class RssSampler:
    """The peak of ``rss()`` (MB) while running, sampled every 20 ms in a thread."""

    def __init__(self, rss: Callable[[], float]) -> None:
        self.rss = rss
        self.before = rss()
        self.peak = self.before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.rss())

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        after = self.rss()
        self.peak = max(self.peak, after)
        return after


def pocket_rss(pid: int) -> Callable[[], float]:
    from benchmarks.harness import tree_rss_mb

    return lambda: tree_rss_mb(pid)


def partial_state(db_path: Path, room_id: str) -> bool:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        row = conn.execute("SELECT COUNT(*) FROM partial_state_rooms WHERE room_id = ?", (room_id,)).fetchone()
        return bool(row[0])
    finally:
        conn.close()


def fill_room(base: str, members: int, concurrency: int) -> tuple[str, str]:
    """A public room on ``base`` with ``members`` joined members: (room ID, creator token)."""
    _creator, token = register(base, "creator")
    room_id = call(base, token, "POST", "/createRoom", {"preset": "public_chat", "name": "Big room"})["room_id"]

    def one(i: int) -> None:
        _user, t = register(base, f"member{i}")
        call(base, t, "POST", f"/join/{quote(room_id)}", {})

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(members - 1)))
    return room_id, token


def join_and_measure(
    name: str, base: str, token: str, room_id: str, via: str, rss: Callable[[], float],
    full: Callable[[], bool],
) -> dict[str, float]:
    sampler = RssSampler(rss)
    t0 = time.perf_counter()
    call(base, token, "POST", f"/join/{quote(room_id)}", {}, server_name=via)
    joined_s = time.perf_counter() - t0
    deadline = time.monotonic() + FULL_STATE_DEADLINE_S
    while not full():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not get the full state within {FULL_STATE_DEADLINE_S} s")
        time.sleep(0.05)
    full_s = time.perf_counter() - t0
    after = sampler.stop()
    return {"join": joined_s, "full": full_s, "before": sampler.before, "peak": sampler.peak, "after": after}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-fed-join-synapse-") as d:
        tmp = Path(d)
        with (
            start_federating_synapse(tmp / "synapse-a", HOST_SETTINGS) as host,
            start_federating_synapse(tmp / "synapse-b") as syn_b,
            start_federating_pocketserver(tmp / "pocket") as pocket,
        ):
            t0 = time.perf_counter()
            room_id, host_token = fill_room(host.base_url, args.members, args.concurrency)
            fill_s = time.perf_counter() - t0
            assert joined_count(host.base_url, host_token, room_id) == args.members
            expected = args.members + 1

            _p, p_token = register(pocket.base_url, "joiner")
            p = join_and_measure(
                "pocketserver", pocket.base_url, p_token, room_id, host.server_name,
                pocket_rss(pocket.proc.pid),
                lambda: joined_count(pocket.base_url, p_token, room_id) >= expected,
            )
            p_members = joined_count(pocket.base_url, p_token, room_id)

            expected += 1
            _s, s_token = register(syn_b.base_url, "joiner")
            b_db = syn_b.workdir / "homeserver.db"
            s = join_and_measure(
                "Synapse", syn_b.base_url, s_token, room_id, host.server_name, syn_b.rss_mb,
                lambda: not partial_state(b_db, room_id)
                and joined_count(syn_b.base_url, s_token, room_id) >= expected,
            )
            s_members = joined_count(syn_b.base_url, s_token, room_id)
    print(f"room on Synapse A: {args.members} members (filled in {fill_s:.0f} s, not measured)")
    print("joiner        | /join answer s | full state s | RSS before MB | peak MB (rise) | after MB (rise) | members seen")
    for label, m, seen in (("pocketserver", p, p_members), ("Synapse B", s, s_members)):
        print(
            f"{label:<13} | {m['join']:>14.2f} | {m['full']:>12.2f} | {m['before']:>13.1f} | "
            f"{m['peak']:>7.1f} (+{m['peak'] - m['before']:.1f}) | {m['after']:>8.1f} (+{m['after'] - m['before']:.1f}) | {seen}"
        )
    print(f"time to full state, Synapse / pocketserver: {s['full'] / p['full']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
