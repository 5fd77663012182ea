"""The packaged executable: build time, size, time to ready and idle memory.

    python3 benchmarks/bench_packaged.py [--exe dist/pocketserver] [--runs N] [--settle S]

Without ``--exe`` it builds ``pyinstaller.spec`` from this tree into a temporary folder
first (tests/packaged.py, as the test suite does) and reports how long that took (wall
and CPU). Each run then starts the executable and, for comparison, ``python3 -m
pocketserver`` from this tree, one at a time, each on a fresh data folder (first start)
and again on the same folder (restart), with the same configuration
(benchmarks/harness.py), and measures: the time from spawn to the first 200 from
/_matrix/client/versions; the CPU time (user + system) the process tree spent by then,
which a busy machine disturbs less than the time; and the resident memory of the process
tree (the executable's is its bootloader plus the server it unpacks and runs) after
``--settle`` seconds idle. Medians over the runs.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import rss_kb, start_pocketserver, wait_ready  # noqa: E402

from tests.packaged import build_executable, descendants  # noqa: E402


def measure(workdir: Path, exe: Path | None, settle_s: float) -> dict[str, float]:
    server = start_pocketserver(workdir, executable=exe)
    try:
        ready = wait_ready(server)
        cpu = server.cpu_s()
        time.sleep(settle_s)
        server_only = max((rss_kb(p) for p in descendants(server.pid)), default=0) / 1024
        return {
            "ready_s": ready,
            "cpu_s": cpu,
            "rss": server.rss_mb(),
            "rss_server": server_only or server.rss_mb(),
        }
    finally:
        server.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exe", type=Path, help="a built executable (default: build one now)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--settle", type=float, default=5.0, help="seconds idle before measuring RSS")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="pocketbench-packaged-") as tmp:
        exe = args.exe
        if exe is None:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            exe, build_s = build_executable(Path(tmp) / "build")
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            print(f"built {exe} in {build_s:.0f} s ({cpu:.0f} s of CPU)", flush=True)
        size = exe.stat().st_size
        print(f"size: {size / 1e6:.1f} MB ({size / 2**20:.1f} MiB)", flush=True)

        acc: dict[str, dict[str, list[float]]] = {"executable": {}, "python -m": {}}
        for run in range(args.runs):
            for name, which in (("executable", exe), ("python -m", None)):
                workdir = Path(tmp) / f"{run}-{name.replace(' ', '')}"
                first = measure(workdir, which, args.settle)
                again = measure(workdir, which, args.settle)
                for k, v in first.items():
                    acc[name].setdefault(k, []).append(v)
                for k, v in again.items():
                    acc[name].setdefault("restart_" + k, []).append(v)
                print(
                    f"{name} run {run + 1}: ready {first['ready_s']:.2f} s (restart "
                    f"{again['ready_s']:.2f} s), idle RSS {first['rss']:.1f} MB (restart "
                    f"{again['rss']:.1f} MB)",
                    flush=True,
                )

    labels = [
        ("time to ready, first start (s)", "ready_s"),
        ("time to ready, restart (s)", "restart_ready_s"),
        ("CPU time to ready, first start (s)", "cpu_s"),
        ("CPU time to ready, restart (s)", "restart_cpu_s"),
        (f"idle RSS after {args.settle:g} s, process tree (MB)", "rss"),
        (f"idle RSS after {args.settle:g} s, the server process (MB)", "rss_server"),
        ("idle RSS after restart, process tree (MB)", "restart_rss"),
    ]
    print(f"\nmedian of {args.runs} runs; executable {size / 1e6:.1f} MB")
    width = max(len(label) for label, _ in labels)
    print(f"{'metric'.ljust(width)} | executable | python -m")
    for label, key in labels:
        e, p = (statistics.median(acc[n][key]) for n in ("executable", "python -m"))
        print(f"{label.ljust(width)} | {e:10.2f} | {p:9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
