"""Idle footprint: time to ready and resident memory of pocketserver and Synapse.

    python3 benchmarks/bench_idle.py [--runs N] [--settle S] [--no-federation]

Each run starts each server on a fresh data folder (first start: database and keys are
created), measures the time from spawn to the first 200 from /_matrix/client/versions,
the RSS (VmRSS of the process tree) right then and after ``--settle`` seconds idle, then
stops it. Servers are started one at a time so neither competes with the other's start.
A second start on the same data folder (the usual restart) is measured too.
pocketserver runs with its federation services on (``[federation] enabled``, as a
default install; ``--no-federation`` turns them off), like Synapse.
Targets (issues 2 and 12): pocketserver idle RSS <= 55 MB with federation on, ready
within 1 s.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from harness import (
    ServerProcess,
    print_table,
    start_pocketserver,
    start_synapse,
    wait_ready,
)

STARTERS = {"pocketserver": start_pocketserver, "synapse": start_synapse}


def measure(name: str, workdir: Path, settle_s: float, federation: bool = True) -> dict[str, float]:
    server: ServerProcess | None = None
    try:
        if name == "pocketserver":
            server = start_pocketserver(workdir, federation=federation)
        else:
            server = STARTERS[name](workdir)
        ready = wait_ready(server)
        rss_ready = server.rss_mb()
        time.sleep(settle_s)
        rss_idle = server.rss_mb()
        return {"ready_s": ready, "rss_ready": rss_ready, "rss_idle": rss_idle}
    finally:
        if server is not None:
            server.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--settle", type=float, default=5.0, help="seconds idle before the 2nd RSS")
    ap.add_argument("--only", choices=sorted(STARTERS), help="measure one server")
    ap.add_argument("--no-federation", action="store_true", help="pocketserver without federation")
    args = ap.parse_args()
    names = [args.only] if args.only else ["pocketserver", "synapse"]

    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="pocketbench-idle-") as tmp:
        for name in names:
            acc: dict[str, list[float]] = {}
            for run in range(args.runs):
                fed = not args.no_federation
                first = measure(name, Path(tmp) / f"{name}-{run}", args.settle, fed)
                again = measure(name, Path(tmp) / f"{name}-{run}", args.settle, fed)
                for k, v in first.items():
                    acc.setdefault(k, []).append(v)
                for k, v in again.items():
                    acc.setdefault("restart_" + k, []).append(v)
                print(
                    f"{name} run {run + 1}: ready {first['ready_s']:.2f} s "
                    f"(restart {again['ready_s']:.2f} s), RSS at ready {first['rss_ready']:.1f} MB, "
                    f"after {args.settle:g} s {first['rss_idle']:.1f} MB "
                    f"(restart {again['rss_idle']:.1f} MB)",
                    flush=True,
                )
            results[name] = acc

    def med(name: str, key: str) -> float:
        return statistics.median(results[name][key])

    rows = []
    specs = [
        ("time to ready, first start (s)", "ready_s", "<= 1 s", 1.0),
        ("time to ready, restart (s)", "restart_ready_s", "<= 1 s", 1.0),
        ("RSS at ready (MB)", "rss_ready", "", None),
        (f"RSS idle after {args.settle:g} s (MB)", "rss_idle", "<= 55 MB", 55.0),
        (f"RSS idle after restart + {args.settle:g} s (MB)", "restart_rss_idle", "<= 55 MB", 55.0),
    ]
    for label, key, target, limit in specs:
        p = med("pocketserver", key) if "pocketserver" in results else float("nan")
        s = med("synapse", key) if "synapse" in results else float("nan")
        ratio = f"{p / s:.2f}x" if s == s and p == p and s else "-"
        verdict = ""
        if limit is not None and p == p:
            verdict = " ok" if p <= limit else " MISSED"
        rows.append((label, f"{p:.2f}", f"{s:.2f}", ratio, target + verdict))
    print()
    print(f"median of {args.runs} runs; ratio = pocketserver / synapse")
    print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
