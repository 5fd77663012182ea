"""Message latency across federation: pocketserver -> Synapse and back, against
Synapse -> Synapse in the same run.

    python3 benchmarks/bench_fed_latency.py [--messages N]

Each pair of servers federates on loopback (TLS, self-signed; the settings of
tests/interop/synapse.py). A room is created on the first server (the host) and a user
of the second joins it. Then, one message at a time, the host's user sends and the time
until the other user's long-polling ``/sync`` returns it is measured (out), then the
other way round (back). Medians and 90th percentiles of N messages each way.
The machine is shared and noisy: compare the two pairs from the same run only.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
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

SYNC_TIMEOUT_MS = 30_000
MAX_POLLS = 50


class User:
    def __init__(self, base: str, name: str) -> None:
        self.base = base
        self.user_id, self.token = register(base, name)
        self.http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {self.token}"}, timeout=60)
        self.since: str | None = None

    def call(self, method: str, path: str, body: Any = None, **params: str) -> Any:
        r = self.http.request(method, f"/_matrix/client/v3{path}", json=body, params=params or None)
        r.raise_for_status()
        return r.json()

    def catch_up(self) -> None:
        params = {"timeout": "0"}
        if self.since:
            params["since"] = self.since
        self.since = self.call("GET", "/sync", **params)["next_batch"]

    def wait_for(self, room_id: str, body: str) -> None:
        for _ in range(MAX_POLLS):
            params = {"timeout": str(SYNC_TIMEOUT_MS)}
            if self.since:
                params["since"] = self.since
            answer = self.call("GET", "/sync", **params)
            self.since = answer["next_batch"]
            events = answer.get("rooms", {}).get("join", {}).get(room_id, {}).get("timeline", {}).get("events", [])
            if any(e.get("content", {}).get("body") == body for e in events):
                return
        raise RuntimeError(f"{self.user_id} never received {body!r}")


def one_way(sender: User, receiver: User, room_id: str, text: str) -> float:
    receiver.catch_up()
    t0 = time.perf_counter()
    sender.call("PUT", f"/rooms/{quote(room_id)}/send/m.room.message/{quote(text)}", {"msgtype": "m.text", "body": text})
    receiver.wait_for(room_id, text)
    return (time.perf_counter() - t0) * 1000


def measure(host_base: str, host_name: str, guest_base: str, tag: str, n: int) -> tuple[list[float], list[float]]:
    host, guest = User(host_base, f"host{tag}"), User(guest_base, f"guest{tag}")
    room_id = host.call("POST", "/createRoom", {"preset": "public_chat"})["room_id"]
    guest.call("POST", f"/join/{quote(room_id)}", {}, server_name=host_name)
    # Warm-up: keys fetched, connections open.
    one_way(host, guest, room_id, f"warm-out-{tag}")
    one_way(guest, host, room_id, f"warm-back-{tag}")
    out = [one_way(host, guest, room_id, f"out-{tag}-{i}") for i in range(n)]
    back = [one_way(guest, host, room_id, f"back-{tag}-{i}") for i in range(n)]
    return out, back


def p90(xs: list[float]) -> float:
    return sorted(xs)[max(0, int(len(xs) * 0.9) - 1)]


@contextlib.contextmanager
def servers(tmp: Path) -> Iterator[tuple[Any, Any, Any]]:
    with start_federating_synapse(tmp / "synapse-a") as syn_a, start_federating_synapse(tmp / "synapse-b") as syn_b:
        with start_federating_pocketserver(tmp / "pocket") as pocket:
            yield pocket, syn_a, syn_b


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-fed-latency-") as d, servers(Path(d)) as (pocket, syn_a, syn_b):
        p_out, p_back = measure(pocket.base_url, pocket.server_name, syn_a.base_url, "p", args.messages)
        s_out, s_back = measure(syn_b.base_url, syn_b.server_name, syn_a.base_url, "s", args.messages)
    print(f"{args.messages} messages each way; one-way latency send -> other side's /sync, ms")
    print("pair                                | out median | out p90 | back median | back p90")
    for name, out, back in (
        ("pocketserver host <-> Synapse guest", p_out, p_back),
        ("Synapse host <-> Synapse guest", s_out, s_back),
    ):
        print(
            f"{name:<36}| {statistics.median(out):>10.1f} | {p90(out):>7.1f} | "
            f"{statistics.median(back):>11.1f} | {p90(back):>8.1f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
