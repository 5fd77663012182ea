"""Memory under load: peaks and creep of pocketserver and a real Synapse, same run.

    python3 benchmarks/bench_robustness.py                    # load, logins, 30-minute soak
    python3 benchmarks/bench_robustness.py --soak-minutes 6   # a short soak
    python3 benchmarks/bench_robustness.py --phases load,logins --only pocketserver

Memory is the server's process tree, read from /proc: the peak of each phase is the
kernel's VmHWM, reset before the phase (``echo 5 > /proc/PID/clear_refs``) and summed
over the tree, beside the highest VmRSS sampled every 20 ms. Phases, for each server:

1. load (one server at a time, the other idle): register 500 users from 8 concurrent
   clients (a password hash each), fill a 500-member room (joins 8 at a time), send
   4,000 messages into it from 8 concurrent senders, 8 concurrent initial /syncs of
   members (the room's full state each), then four 20 MB files uploaded and downloaded
   two at a time (each download checked). Peak RSS across the phase.
2. logins (one server at a time): 100 concurrent POST /login with a wrong password for
   one user (a bot retrying, or someone guessing). Peak RSS during the burst; every
   answer must be 403 M_FORBIDDEN.
3. soak (both servers at once, each with its own client tasks, so each sees the other's
   load on the machine): 50 of the users in 20 new rooms of 10 members, about 100
   requests a second per server: sends, incremental /syncs, typing, read receipts,
   profile and account-data reads and writes, with 10 users in long-poll /sync. RSS
   sampled every 10 s; growth is the last minute's mean minus the mean of the minute
   at the start of the last 20 minutes (the last two thirds of a shorter soak).

Targets (issue 10): load peak <= 120 MB; wrong-password logins peak <= 150 MB; soak
growth <= 5 MB over its last 20 minutes. Ratios are pocketserver / Synapse.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import trio
from bench_client import client_cpu_s, pool, settle
from harness import (
    MatrixClient,
    MatrixHTTPError,
    ServerProcess,
    User,
    print_table,
    process_tree,
    servers,
)

MB = 1024 * 1024
PASSWORD_PREFIX = "bench-password-"


@dataclass
class Scale:
    users: int = 500
    concurrency: int = 8
    room_members: int = 500
    messages: int = 4000
    initial_syncs: int = 8
    file_mb: int = 20
    files: int = 4
    wrong_logins: int = 100
    soak_users: int = 50
    soak_rooms: int = 20
    soak_room_members: int = 10
    soak_rate: float = 100.0
    soak_long_pollers: int = 10


QUICK = Scale(users=100, room_members=100, messages=500, files=2, wrong_logins=100)


# -- memory of a process tree ----------------------------------------------------------


def _status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_kb(pid: int, key: str) -> int:
    return sum(_status_kb(p, key) for p in process_tree(pid))


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS for every process of the tree (Linux >= 4.0)."""
    ok = True
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/clear_refs", "w", encoding="ascii") as f:
                f.write("5")
        except OSError:
            ok = False
    return ok


class PeakRss:
    """Peak memory of a server's tree over a ``with`` block: VmHWM (reset on entry) and
    the highest VmRSS sampled every ``interval`` seconds (a thread)."""

    def __init__(self, server: ServerProcess, interval: float = 0.02) -> None:
        self.pid = server.pid
        self.interval = interval
        self.sampled_kb = 0
        self.hwm_kb = 0
        self.start_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sampled_kb = max(self.sampled_kb, tree_kb(self.pid, "VmRSS:"))

    def __enter__(self) -> PeakRss:
        self.hwm_ok = reset_peak(self.pid)
        self.start_kb = tree_kb(self.pid, "VmRSS:")
        self.sampled_kb = self.start_kb
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sampled_kb = max(self.sampled_kb, tree_kb(self.pid, "VmRSS:"))
        self.hwm_kb = tree_kb(self.pid, "VmHWM:") if self.hwm_ok else 0

    @property
    def peak_mb(self) -> float:
        return max(self.hwm_kb, self.sampled_kb) / 1024

    @property
    def start_mb(self) -> float:
        return self.start_kb / 1024


# -- the workload ----------------------------------------------------------------------


@dataclass
class Result:
    name: str
    figures: dict[str, float] = field(default_factory=dict)
    series: list[tuple[float, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Setup:
    users: list[User]
    room: str = ""


async def upload(c: MatrixClient, user: User, data: bytes, name: str) -> str:
    r = await c.http.post(
        "/_matrix/media/v3/upload",
        params={"filename": name},
        content=data,
        headers={"Authorization": f"Bearer {user.access_token}", "Content-Type": "application/octet-stream"},
    )
    if r.status_code != 200:
        raise MatrixHTTPError("POST", "/upload", r.status_code, r.text)
    return str(r.json()["content_uri"])


async def download_sha(c: MatrixClient, user: User, mxc: str) -> str:
    server, media_id = mxc[len("mxc://") :].split("/", 1)
    h = hashlib.sha256()
    async with c.http.stream(
        "GET",
        f"/_matrix/client/v1/media/download/{server}/{media_id}",
        headers={"Authorization": f"Bearer {user.access_token}"},
    ) as r:
        if r.status_code != 200:
            raise MatrixHTTPError("GET", "/download", r.status_code, (await r.aread()).decode())
        async for piece in r.aiter_bytes():
            h.update(piece)
    return h.hexdigest()


async def load_phase(
    server: ServerProcess, sc: Scale, res: Result, log: Callable[[str], None]
) -> Setup:
    fig = res.figures
    rnd = random.Random(10)
    async with MatrixClient(server.base_url, max_connections=sc.concurrency * 2 + 4) as c:
        await settle(server)
        fig["load_idle_mb"] = server.rss_mb()
        with PeakRss(server) as total:
            with PeakRss(server) as reg:
                t = time.monotonic()
                names = [f"user{i}" for i in range(sc.users)]
                users: list[User] = await pool(
                    sc.concurrency, names, lambda n: c.register(n, PASSWORD_PREFIX + n)
                )
                fig["register_s"] = time.monotonic() - t
            fig["register_peak_mb"] = reg.peak_mb
            log(f"registered {len(users)} users in {fig['register_s']:.1f} s, peak {reg.peak_mb:.1f} MB")

            with PeakRss(server) as ph:
                t = time.monotonic()
                room = await c.create_room(users[0], preset="public_chat", name="big room")
                await pool(sc.concurrency, users[1 : sc.room_members], lambda u: c.join(u, room))
                fig["join_s"] = time.monotonic() - t
            fig["join_peak_mb"] = ph.peak_mb
            log(f"{sc.room_members}-member room in {fig['join_s']:.1f} s, peak {ph.peak_mb:.1f} MB")

            members = users[: sc.room_members]
            plan = [(rnd.choice(members), k) for k in range(sc.messages)]
            with PeakRss(server) as ph:
                t = time.monotonic()
                await pool(
                    sc.concurrency,
                    plan,
                    lambda p: c.send_text(p[0], room, f"message {p[1]} " + "x" * (p[1] % 200)),
                )
                fig["send_s"] = time.monotonic() - t
            fig["send_peak_mb"] = ph.peak_mb
            log(f"{len(plan)} messages in {fig['send_s']:.1f} s, peak {ph.peak_mb:.1f} MB")

            with PeakRss(server) as ph:
                syncers = members[1 : 1 + sc.initial_syncs]
                got = await pool(len(syncers), syncers, lambda u: c.sync(u))
                for data in got:
                    if room not in data.get("rooms", {}).get("join", {}):
                        res.notes.append("an initial sync did not list the big room")
            fig["sync_peak_mb"] = ph.peak_mb
            log(f"{len(syncers)} concurrent initial syncs, peak {ph.peak_mb:.1f} MB")

            with PeakRss(server) as ph:
                t = time.monotonic()
                files = [os.urandom(sc.file_mb * MB) for _ in range(sc.files)]
                digests = [hashlib.sha256(f).hexdigest() for f in files]
                uris = await pool(
                    2, list(range(sc.files)), lambda i: upload(c, users[i], files[i], f"f{i}.bin")
                )
                files.clear()
                back = await pool(2, list(range(sc.files)), lambda i: download_sha(c, users[i], uris[i]))
                if back != digests:
                    res.notes.append("a downloaded file differs from its upload")
                fig["files_s"] = time.monotonic() - t
            fig["files_peak_mb"] = ph.peak_mb
            log(f"{sc.files} x {sc.file_mb} MB up and down in {fig['files_s']:.1f} s, peak {ph.peak_mb:.1f} MB")
        fig["load_peak_mb"] = total.peak_mb
        fig["load_peak_sampled_mb"] = total.sampled_kb / 1024
        await settle(server)
        fig["load_after_mb"] = server.rss_mb()
        log(f"load peak {total.peak_mb:.1f} MB, after {fig['load_after_mb']:.1f} MB")
    return Setup(users=users, room=room)


async def logins_phase(
    server: ServerProcess, sc: Scale, setup: Setup, res: Result, log: Callable[[str], None]
) -> None:
    fig = res.figures
    user = setup.users[1]
    localpart = user.user_id[1:].split(":", 1)[0]
    statuses: list[tuple[int, str]] = []
    async with MatrixClient(server.base_url, max_connections=sc.wrong_logins + 4) as c:
        await settle(server)
        fig["logins_idle_mb"] = server.rss_mb()

        async def attempt(i: int) -> None:
            body = {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": localpart},
                "password": f"wrong-{i}",
            }
            r = await c.http.post("/_matrix/client/v3/login", json=body)
            try:
                err = str(r.json().get("errcode"))
            except ValueError:
                err = r.text[:40]
            statuses.append((r.status_code, err))

        with PeakRss(server) as ph:
            t = time.monotonic()
            async with trio.open_nursery() as nursery:
                for i in range(sc.wrong_logins):
                    nursery.start_soon(attempt, i)
            fig["logins_s"] = time.monotonic() - t
        fig["logins_peak_mb"] = ph.peak_mb
        await settle(server)
        fig["logins_after_mb"] = server.rss_mb()
    wrong = [s for s in statuses if s != (403, "M_FORBIDDEN")]
    if wrong:
        res.notes.append(f"{len(wrong)} wrong-password logins answered otherwise: {wrong[:3]}")
    log(
        f"{sc.wrong_logins} wrong-password logins in {fig['logins_s']:.1f} s: "
        f"{fig['logins_idle_mb']:.1f} -> peak {fig['logins_peak_mb']:.1f} MB"
    )


async def soak_setup(c: MatrixClient, sc: Scale, setup: Setup) -> dict[str, list[User]]:
    users = setup.users[: sc.soak_users]
    rooms: list[str] = await pool(
        sc.concurrency,
        list(range(sc.soak_rooms)),
        lambda i: c.create_room(users[i % len(users)], preset="public_chat", name=f"soak {i}"),
    )
    members: dict[str, list[User]] = {}
    joins: list[tuple[User, str]] = []
    for i, room in enumerate(rooms):
        owner = users[i % len(users)]
        picked = {owner.user_id: owner}
        for j in range(1, len(users)):
            if len(picked) >= sc.soak_room_members:
                break
            u = users[(i * 7 + j) % len(users)]
            picked.setdefault(u.user_id, u)
        ms = list(picked.values())[1:]
        members[room] = [owner, *ms]
        joins.extend((u, room) for u in ms)
    await pool(sc.concurrency, joins, lambda j: c.join(j[0], j[1]))
    return members


async def soak_phase(
    server: ServerProcess,
    sc: Scale,
    setup: Setup,
    minutes: float,
    res: Result,
    log: Callable[[str], None],
) -> None:
    """About ``sc.soak_rate`` requests a second for ``minutes``; RSS every 10 s."""
    fig = res.figures
    rnd = random.Random(hash(server.name) & 0xFFFF)
    async with MatrixClient(server.base_url, max_connections=64) as c:
        members = await soak_setup(c, sc, setup)
        rooms = list(members)
        room_of: dict[str, list[str]] = {}
        for room, ms in members.items():
            for u in ms:
                room_of.setdefault(u.user_id, []).append(room)
        soakers = [u for u in setup.users[: sc.soak_users] if u.user_id in room_of]
        since: dict[str, str] = {}
        last_event: dict[str, str] = {}
        counts: dict[str, int] = {}
        errors: list[str] = []
        for u in soakers:  # a first sync each, so that later ones are incremental
            data = await c.sync(u, filter_='{"room":{"timeline":{"limit":5}}}')
            since[u.user_id] = str(data["next_batch"])
        log(f"soak: {len(soakers)} users in {len(rooms)} rooms, {sc.soak_rate:.0f} requests/s")

        async def op(k: int) -> None:
            u = rnd.choice(soakers)
            room = rnd.choice(room_of[u.user_id])
            kind = rnd.choices(
                ["send", "sync", "typing", "receipt", "profile", "account_data_get", "account_data_put"],
                weights=[25, 25, 15, 10, 10, 10, 5],
            )[0]
            counts[kind] = counts.get(kind, 0) + 1
            if kind == "send":
                last_event[room] = await c.send_text(u, room, f"soak {k} " + "y" * (k % 120))
            elif kind == "sync":
                data = await c.sync(u, since=since[u.user_id])
                since[u.user_id] = str(data["next_batch"])
            elif kind == "typing":
                await c.request(
                    "PUT", f"/rooms/{room}/typing/{u.user_id}", u,
                    json_body={"typing": k % 2 == 0, "timeout": 20000},
                )
            elif kind == "receipt":
                ev = last_event.get(room)
                if ev is not None:
                    await c.request("POST", f"/rooms/{room}/receipt/m.read/{ev}", u, json_body={})
            elif kind == "profile":
                other = rnd.choice(members[room])
                await c.request("GET", f"/profile/{other.user_id}", u)
            elif kind == "account_data_get":
                await c.request(
                    "GET", f"/user/{u.user_id}/account_data/org.example.soak", u, ok=(200, 404)
                )
            else:
                await c.request(
                    "PUT", f"/user/{u.user_id}/account_data/org.example.soak", u,
                    json_body={"k": k, "pad": "z" * (k % 300)},
                )

        async def long_poller(u: User, end: float) -> None:
            token = since[u.user_id]
            for _ in range(100_000):  # bounded; each round is one long-poll
                if time.monotonic() >= end:
                    return
                try:
                    data = await c.sync(u, since=token, timeout_ms=10_000)
                except (MatrixHTTPError, httpx.HTTPError) as e:
                    if len(errors) < 20:
                        errors.append(str(e)[:200])
                    counts["error"] = counts.get("error", 0) + 1
                    await trio.sleep(1.0)  # not a tight loop against a failing server
                    continue
                token = str(data["next_batch"])
                counts["long_poll"] = counts.get("long_poll", 0) + 1

        async def paced(end: float) -> None:
            """Start one op every 1/rate s (at most 32 in flight)."""
            sem = trio.Semaphore(32)
            interval = 1.0 / sc.soak_rate

            async def one(k: int) -> None:
                try:
                    await op(k)
                except (MatrixHTTPError, httpx.HTTPError) as e:
                    if len(errors) < 20:
                        errors.append(str(e)[:200])
                    counts["error"] = counts.get("error", 0) + 1
                finally:
                    sem.release()

            async with trio.open_nursery() as nursery:
                k = 0
                next_at = time.monotonic()
                while next_at < end and time.monotonic() < end:
                    await trio.sleep_until(trio.current_time() + max(0.0, next_at - time.monotonic()))
                    await sem.acquire()
                    nursery.start_soon(one, k)
                    k += 1
                    # Behind schedule (a slow server): no burst to catch up.
                    next_at = max(next_at + interval, time.monotonic() - 1.0)

        async def sampler(end: float) -> None:
            t0 = time.monotonic()
            while True:
                res.series.append((time.monotonic() - t0, server.rss_mb()))
                if time.monotonic() >= end:
                    return
                await trio.sleep(min(10.0, max(0.0, end - time.monotonic())))

        t0 = time.monotonic()
        cpu0 = client_cpu_s()
        end = t0 + minutes * 60
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sampler, end)
            for u in soakers[: sc.soak_long_pollers]:
                nursery.start_soon(long_poller, u, end)
            nursery.start_soon(paced, end)
        wall = time.monotonic() - t0
        fig["soak_client_cpu"] = (client_cpu_s() - cpu0) / wall
    total = sum(v for k, v in counts.items() if k != "error")
    fig["soak_req_per_s"] = total / wall
    fig["soak_errors"] = counts.get("error", 0)
    for e in errors[:3]:
        res.notes.append(f"soak error: {e}")
    fig.update(growth(res.series, minutes))
    log(
        f"soak: {total} requests in {wall:.0f} s ({fig['soak_req_per_s']:.0f}/s), "
        f"RSS {fig['soak_start_mb']:.1f} -> {fig['soak_end_mb']:.1f} MB, "
        f"growth over the window {fig['soak_growth_mb']:+.1f} MB; client CPU "
        f"{fig['soak_client_cpu']:.0%} of a core (both servers' drivers); counts {counts}"
    )


def growth(series: list[tuple[float, float]], minutes: float) -> dict[str, float]:
    """Growth over the last 20 minutes (the last two thirds of a shorter soak): the
    mean of the last minute's samples minus the mean of the window's first minute."""
    total_s = minutes * 60
    window_s = min(20 * 60.0, total_s * 2 / 3)
    start = total_s - window_s

    def mean_between(a: float, b: float) -> float:
        vals = [r for t, r in series if a <= t <= b]
        return statistics.mean(vals) if vals else float("nan")

    first = mean_between(start, start + 60)
    last = mean_between(total_s - 60, total_s + 1)
    return {
        "soak_start_mb": series[0][1] if series else float("nan"),
        "soak_window_start_min": start / 60,
        "soak_window_first_mb": first,
        "soak_end_mb": last,
        "soak_growth_mb": last - first,
        "soak_max_mb": max((r for _, r in series), default=float("nan")),
    }


# -- report ----------------------------------------------------------------------------

ROWS: list[tuple[str, str, str, str, Callable[[float], bool] | None]] = [
    ("idle before the load (MB)", "load_idle_mb", "{:.1f}", "", None),
    ("peak RSS across the load run (MB)", "load_peak_mb", "{:.1f}", "<= 120", lambda p: p <= 120),
    ("  peak: 500 registrations, 8 clients (MB)", "register_peak_mb", "{:.1f}", "", None),
    ("  peak: filling the 500-member room (MB)", "join_peak_mb", "{:.1f}", "", None),
    ("  peak: 4,000 messages (MB)", "send_peak_mb", "{:.1f}", "", None),
    ("  peak: 8 initial syncs (MB)", "sync_peak_mb", "{:.1f}", "", None),
    ("  peak: 20 MB files up and down (MB)", "files_peak_mb", "{:.1f}", "", None),
    ("  registration time (s)", "register_s", "{:.1f}", "", None),
    ("RSS after the load run, settled (MB)", "load_after_mb", "{:.1f}", "", None),
    ("idle before the logins (MB)", "logins_idle_mb", "{:.1f}", "", None),
    ("peak RSS, 100 concurrent wrong-password logins (MB)", "logins_peak_mb", "{:.1f}", "<= 150",
     lambda p: p <= 150),
    ("  time for the 100 answers (s)", "logins_s", "{:.1f}", "", None),
    ("soak: requests per second", "soak_req_per_s", "{:.0f}", "", None),
    ("soak: RSS at start (MB)", "soak_start_mb", "{:.1f}", "", None),
    ("soak: RSS, first minute of the window (MB)", "soak_window_first_mb", "{:.1f}", "", None),
    ("soak: RSS, last minute (MB)", "soak_end_mb", "{:.1f}", "", None),
    ("soak: growth over the window (MB)", "soak_growth_mb", "{:+.1f}", "<= 5", lambda p: p <= 5),
    ("soak: failed requests", "soak_errors", "{:.0f}", "", None),
]


def report(results: dict[str, Result], minutes: float) -> None:
    p, s = results.get("pocketserver"), results.get("synapse")
    rows = []
    for label, key, fmt, target, check in ROWS:
        pv = p.figures.get(key, float("nan")) if p else float("nan")
        sv = s.figures.get(key, float("nan")) if s else float("nan")
        if pv != pv and sv != sv:
            continue
        ratio = f"{pv / sv:.2f}" if p and s and sv and pv == pv and sv == sv else "-"
        verdict = ""
        if check is not None and p and pv == pv:
            verdict = " ok" if check(pv) else " MISSED"
        rows.append((label, fmt.format(pv), fmt.format(sv), ratio, (target + verdict).strip()))
    print()
    print_table(rows)
    for r in results.values():
        if r.series:
            per_min = [f"{rss:.1f}" for t, rss in r.series if int(t) % 60 < 10]
            print(f"{r.name} soak RSS by minute ({minutes:g} min): {' '.join(per_min)}")
        for note in r.notes:
            print(f"NOTE {r.name}: {note}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["pocketserver", "synapse"], help="run one server")
    ap.add_argument("--phases", default="load,logins,soak", help="comma-separated subset")
    ap.add_argument("--soak-minutes", type=float, default=30.0)
    ap.add_argument("--quick", action="store_true", help="a smaller load phase")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = ap.parse_args()
    sc = QUICK if args.quick else Scale()
    phases = set(args.phases.split(","))
    which = (args.only,) if args.only else ("pocketserver", "synapse")
    started = time.monotonic()
    results: dict[str, Result] = {}
    setups: dict[str, Setup] = {}

    def logger(name: str) -> Callable[[str], None]:
        def log(msg: str) -> None:
            print(f"  [{time.monotonic() - started:7.1f} s] {name}: {msg}", flush=True)

        return log

    with servers(which) as running:
        for server in running:
            print(f"== {server.name} (ready in {server.ready_after_s:.2f} s, pid {server.pid})")
            res = results[server.name] = Result(server.name)
            log = logger(server.name)
            if "load" in phases:
                setups[server.name] = trio.run(load_phase, server, sc, res, log)
            else:
                small = Scale(users=max(sc.soak_users, 2), room_members=2, messages=0, files=0)
                setups[server.name] = trio.run(load_phase, server, small, res, log)
            if "logins" in phases:
                trio.run(logins_phase, server, sc, setups[server.name], res, log)
        if "soak" in phases:
            print(f"== soak, {args.soak_minutes:g} minutes, both servers at once")

            async def soak_all() -> None:
                async with trio.open_nursery() as nursery:
                    for server in running:
                        nursery.start_soon(
                            soak_phase, server, sc, setups[server.name], args.soak_minutes,
                            results[server.name], logger(server.name),
                        )

            trio.run(soak_all)
    report(results, args.soak_minutes)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(
                {k: {"figures": v.figures, "series": v.series, "notes": v.notes} for k, v in results.items()},
                f,
                indent=1,
            )
    print(f"\nwhole run: {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
