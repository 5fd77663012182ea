"""End-to-end encryption endpoints under load: /keys/query and /keys/claim over 100
devices, and to-device fan-out to 200 devices, pocketserver and Synapse side by side.

    python3 benchmarks/bench_e2ee.py [--rounds N] [--only pocketserver|synapse]

Setup per server: 20 users with 10 devices each (register + 9 logins), every device
publishing signed device keys (real Ed25519 signatures, tests/api/e2ee_helpers.py) and
enough one-time keys for every claim round. Then one request at a time, alternating
between the two servers so that both see the same machine load:

* ``/keys/query`` for 10 users (100 devices);
* ``/keys/claim`` of one signed_curve25519 key from each of those 100 devices;
* ``/sendToDevice`` with a ~1 KiB message to each of the 200 devices (explicit IDs);
* delivery: all 200 devices then sync once, concurrently, and must each find the last
  message (time until every device has it).

RSS (process tree) is taken after setup and again after the rounds plus a settle pause:
the run must not leave memory behind. Timing uses medians; ratio = pocketserver / synapse
(below 1 is faster). Both servers are started fresh in a temporary folder and stopped by
pid at the end.
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import MatrixClient, User, print_table, servers  # noqa: E402

from tests.api.e2ee_helpers import FakeDevice  # noqa: E402

USERS = 20
DEVICES_PER_USER = 10
QUERY_USERS = 10  # 100 devices
PASSWORD = "bench-password-123"


async def _gather(n_parallel: int, fns: list[Any]) -> list[Any]:
    out: list[Any] = [None] * len(fns)
    sem = trio.Semaphore(n_parallel)

    async def run(i: int, fn: Any) -> None:
        async with sem:
            out[i] = await fn()

    async with trio.open_nursery() as nursery:
        for i, fn in enumerate(fns):
            nursery.start_soon(run, i, fn)
    return out


async def _login(mc: MatrixClient, user_id: str) -> User:
    _, data = await mc.request(
        "POST",
        "/login",
        json_body={
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user_id},
            "password": PASSWORD,
        },
    )
    return User(data["user_id"], data["access_token"], data["device_id"])


async def setup(mc: MatrixClient, tag: str, rounds: int) -> tuple[list[list[User]], User]:
    owners = await _gather(
        8, [lambda i=i: mc.register(f"e2e{tag}{i}", PASSWORD) for i in range(USERS)]
    )
    extra = await _gather(
        8,
        [
            lambda u=u: _login(mc, u.user_id)
            for u in owners
            for _ in range(DEVICES_PER_USER - 1)
        ],
    )
    devices: list[list[User]] = [[u] for u in owners]
    for i in range(len(owners)):
        devices[i].extend(extra[i * (DEVICES_PER_USER - 1) : (i + 1) * (DEVICES_PER_USER - 1)])

    async def upload(u: User) -> None:
        fake = FakeDevice(u.user_id, u.device_id)
        body = {"device_keys": fake.device_keys(), "one_time_keys": fake.one_time_keys(rounds + 2)}
        await mc.request("POST", "/keys/upload", u, json_body=body)

    await _gather(8, [lambda u=u: upload(u) for row in devices for u in row])
    querier = await mc.register(f"e2equerier{tag}", PASSWORD)
    return devices, querier


async def timed(fn: Any) -> float:
    t0 = time.perf_counter()
    await fn()
    return time.perf_counter() - t0


class Bench:
    """One server's fixture: 200 devices with keys, a querier, sync positions."""

    def __init__(self, name: str, base_url: str, rss: Any) -> None:
        self.name = name
        self.mc = MatrixClient(base_url)
        self.rss = rss
        self.tag = base64.b32encode(os.urandom(5)).decode().lower()
        self.times: dict[str, list[float]] = {"query": [], "claim": [], "send": []}
        self.tokens: dict[str, str] = {}

    async def setup(self, rounds: int) -> None:
        self.devices, self.querier = await setup(self.mc, self.tag, rounds)
        self.all = [u for row in self.devices for u in row]
        self.query_body = {
            "device_keys": {row[0].user_id: [] for row in self.devices[:QUERY_USERS]}
        }
        self.claim_body = {
            "one_time_keys": {
                row[0].user_id: {u.device_id: "signed_curve25519" for u in row}
                for row in self.devices[:QUERY_USERS]
            }
        }
        payload = {"algorithm": "m.olm.v1.curve25519-aes-sha2", "ciphertext": "x" * 1000}
        self.messages = {row[0].user_id: {u.device_id: payload for u in row} for row in self.devices}

        async def first_sync(u: User) -> None:
            data = await self.mc.sync(u)
            self.tokens[u.device_id] = data["next_batch"]

        await _gather(16, [lambda u=u: first_sync(u) for u in self.all])
        # One warm-up of each request, then memory after setup.
        await self.mc.request("POST", "/keys/query", self.querier, json_body=self.query_body)
        self.rss_before = self.rss()

    async def query(self) -> None:
        _, data = await self.mc.request(
            "POST", "/keys/query", self.querier, json_body=self.query_body
        )
        n = sum(len(v) for v in data["device_keys"].values())
        assert n == QUERY_USERS * DEVICES_PER_USER, n

    async def claim(self) -> None:
        _, data = await self.mc.request(
            "POST", "/keys/claim", self.querier, json_body=self.claim_body
        )
        n = sum(len(v) for v in data["one_time_keys"].values())
        assert n == QUERY_USERS * DEVICES_PER_USER, n

    async def send(self) -> None:
        await self.mc.request(
            "PUT",
            f"/sendToDevice/m.room.encrypted/bench{self.tag}{self.mc.next_txn()}",
            self.querier,
            json_body={"messages": self.messages},
        )

    async def deliver(self, rounds: int) -> None:
        received: dict[str, int] = {}

        async def one(u: User) -> None:
            for _ in range(20):
                data = await self.mc.sync(u, self.tokens[u.device_id], timeout_ms=0)
                self.tokens[u.device_id] = data["next_batch"]
                got = len(data.get("to_device", {}).get("events", []))
                received[u.device_id] = received.get(u.device_id, 0) + got
                if received[u.device_id] >= rounds:
                    return

        t0 = time.perf_counter()
        await _gather(32, [lambda u=u: one(u) for u in self.all])
        self.delivery = time.perf_counter() - t0
        assert all(received.get(u.device_id) == rounds for u in self.all), received


async def run_all(running: list[Any], rounds: int, settle_s: float) -> list[Bench]:
    benches = [Bench(s.name, s.base_url, s.rss_mb) for s in running]
    for b in benches:
        print(f"{b.name}: setting up {USERS * DEVICES_PER_USER} devices ...", flush=True)
        await b.setup(rounds)
    # Interleaved, one request at a time: both servers see the same machine load.
    for kind in ("query", "claim", "send"):
        for _ in range(rounds):
            for b in benches:
                b.times[kind].append(await timed(getattr(b, kind)))
    for b in benches:
        await b.deliver(rounds)
    await trio.sleep(settle_s)
    for b in benches:
        b.rss_after = b.rss()
        await b.mc.aclose()
        print(
            f"{b.name}: query {statistics.median(b.times['query']) * 1000:.1f} ms, "
            f"claim {statistics.median(b.times['claim']) * 1000:.1f} ms, "
            f"send {statistics.median(b.times['send']) * 1000:.1f} ms, "
            f"delivery {b.delivery:.2f} s, RSS {b.rss_before:.1f} -> {b.rss_after:.1f} MB",
            flush=True,
        )
    return benches


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--settle", type=float, default=5.0)
    ap.add_argument("--only", choices=["pocketserver", "synapse"])
    args = ap.parse_args()
    names = (args.only,) if args.only else ("pocketserver", "synapse")
    with servers(names) as running:
        benches = trio.run(run_all, running, args.rounds, args.settle)
    results: dict[str, dict[str, Any]] = {
        b.name: {**b.times, "delivery": b.delivery, "rss_before": b.rss_before,
                 "rss_after": b.rss_after}
        for b in benches
    }

    def cell(name: str, key: str, scale: float = 1000.0) -> float:
        if name not in results:
            return float("nan")
        v = results[name][key]
        return (statistics.median(v) if isinstance(v, list) else v) * scale

    rows = []
    for label, key, scale in [
        ("/keys/query, 100 devices (ms, median)", "query", 1000.0),
        ("/keys/claim, 100 devices (ms, median)", "claim", 1000.0),
        ("/sendToDevice to 200 devices (ms, median)", "send", 1000.0),
        (f"deliver {args.rounds} msgs to 200 devices via /sync (s)", "delivery", 1.0),
        ("RSS after setup (MB)", "rss_before", 1.0),
        (f"RSS after run + {args.settle:g} s (MB)", "rss_after", 1.0),
    ]:
        p, s = cell("pocketserver", key, scale), cell("synapse", key, scale)
        ratio = f"{p / s:.2f}x" if p == p and s == s and s else "-"
        target = "<= 1.00x" if key in ("query", "claim", "send", "delivery") else ""
        if target and p == p and s == s:
            target += " ok" if p <= s else " MISSED"
        rows.append((label, f"{p:.2f}", f"{s:.2f}", ratio, target))
    print()
    print(f"{args.rounds} rounds each; ratio = pocketserver / synapse")
    print_table(rows)
    if "pocketserver" in results:
        r = results["pocketserver"]
        grew = r["rss_after"] - r["rss_before"]
        print(f"pocketserver RSS change over the run: {grew:+.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
