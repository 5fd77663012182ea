"""Application-service delivery: pocketserver and a real Synapse side by side (issue 13).

    python3 benchmarks/bench_appservice.py                      # 1,000 messages, then a 10,000 backlog
    python3 benchmarks/bench_appservice.py --messages 200 --backlog 2000 --only pocketserver

A fake application service (an HTTP server in this process, one thread per connection)
is registered with each server through the registration YAML bridges write (pocketserver:
``[appservices] registration_files``; Synapse: ``app_service_config_files``). It records
the moment each event arrives in ``PUT /_matrix/app/v1/transactions/{txnId}``, checks the
``hs_token`` on every call, and counts transactions, repeated transactions and events
received twice. Its namespaces claim the aliases ``#bridged_.*`` (not exclusively): the room
a client creates with such an alias is the bridged room.

1. Delivery, each server in turn: after one warm-up message has reached the AS, one client
   sends ``--messages`` messages into the bridged room, one at a time (``--concurrency``).
   Reported: events a second at the AS (messages over the time from the first send to the
   last arrival), events per transaction, and the p50/p95 delay from the client's send
   returning to the AS receiving the event (negative when the AS has it before the client
   has the answer). Ratio = pocketserver / Synapse.
2. Outage, pocketserver (``--backlog-synapse`` adds Synapse): the AS stops (its port
   refuses connections), the client sends ``--backlog`` messages (8 at a time), the server's
   RSS is read before, after half of them, at its peak (sampled every 0.2 s) and after (a
   queue kept in memory would grow between the half and the end); then the AS comes back
   and every event must arrive, once, within ``--drain-deadline`` seconds: reported are the
   wait for the first retry (the server's back-off) and the rate once events flow.

Both servers run on loopback with rate limits out of reach; the machine is shared and
noisy: compare the servers of the same run only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import secrets
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import trio
from bench_client import pool, settle
from harness import (
    MatrixClient,
    ServerProcess,
    User,
    free_port,
    percentile,
    print_table,
    start_pocketserver,
    start_synapse,
    wait_ready,
)

ALIAS_LOCALPART = "bridged_bench"
SENDER_LOCALPART = "benchbridge"
WARMUP_DEADLINE_S = 120.0
SEND_CONCURRENCY_BACKLOG = 8
TXN_PATH = re.compile(r"^/(?:_matrix/app/v1/)?transactions/([^/]+)$")


# -- the fake application service ----------------------------------------------------------


@dataclass
class FakeAS:
    """Records when each event arrives; answers every transaction with 200 ``{}``."""

    hs_token: str
    port: int = field(default_factory=free_port)
    arrivals: dict[str, float] = field(default_factory=dict)
    txn_sizes: list[int] = field(default_factory=list)
    repeated_txns: int = 0
    duplicate_events: int = 0
    bad_auth: int = 0
    _seen_txns: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    _connections: set[socket.socket] = field(default_factory=set)
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                with fake._lock:
                    fake._connections.add(self.connection)

            def finish(self) -> None:
                with fake._lock:
                    fake._connections.discard(self.connection)
                super().finish()

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorised(self) -> bool:
                query = parse_qs(urlsplit(self.path).query)
                token = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
                token = token or (query.get("access_token") or [""])[0]
                if token != fake.hs_token:
                    with fake._lock:
                        fake.bad_auth += 1
                    return False
                return True

            def _body(self) -> Any:
                length = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(length) or b"{}")

            def do_PUT(self) -> None:
                now = time.monotonic()
                body = self._body()
                match = TXN_PATH.match(urlsplit(self.path).path)
                if match is None:
                    return self._answer(404, {"errcode": "M_UNRECOGNIZED", "error": self.path})
                if not self._authorised():
                    return self._answer(403, {"errcode": "M_FORBIDDEN", "error": "hs_token"})
                fake.record(match.group(1), body.get("events", []), now)
                self._answer(200, {})

            def do_GET(self) -> None:  # user and alias queries: nothing is provisioned on demand
                self._answer(404 if self._authorised() else 403, {"errcode": "M_NOT_FOUND", "error": "no"})

            def do_POST(self) -> None:  # /_matrix/app/v1/ping
                self._body()
                self._answer(200 if self._authorised() else 403, {})

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Close the listener and cut every kept-alive connection: the homeserver's next
        attempt is refused."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            connections, self._connections = self._connections, set()
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def record(self, txn_id: str, events: list[dict[str, Any]], now: float) -> None:
        with self._lock:
            if txn_id in self._seen_txns:
                self.repeated_txns += 1
                return
            self._seen_txns.add(txn_id)
            self.txn_sizes.append(len(events))
            for event in events:
                event_id = str(event.get("event_id"))
                if event_id in self.arrivals:
                    self.duplicate_events += 1
                else:
                    self.arrivals[event_id] = now

    def has(self, event_ids: list[str]) -> int:
        with self._lock:
            return sum(1 for e in event_ids if e in self.arrivals)

    def registration_yaml(self, as_token: str) -> str:
        """The registration file, in the block YAML bridges write."""
        return (
            "id: bench-appservice\n"
            f'url: "{self.url}"\n'
            f'as_token: "{as_token}"\n'
            f'hs_token: "{self.hs_token}"\n'
            f"sender_localpart: {SENDER_LOCALPART}\n"
            "rate_limited: false\n"
            "namespaces:\n"
            "  users:\n"
            "    - exclusive: true\n"
            '      regex: "@bridge_.*"\n'
            "  aliases:\n"
            "    - exclusive: false\n"
            '      regex: "#bridged_.*"\n'
            "  rooms: []\n"
        )


# -- one server -------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    figures: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


async def wait_arrived(fake: FakeAS, event_ids: list[str], deadline_s: float) -> bool:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if fake.has(event_ids) == len(event_ids):
            return True
        await trio.sleep(0.02)
    return fake.has(event_ids) == len(event_ids)


async def send_all(
    client: MatrixClient, user: User, room_id: str, texts: list[str], concurrency: int
) -> tuple[list[str], dict[str, float]]:
    """Send every text; the event IDs in order and when each send returned."""
    returned: dict[str, float] = {}

    async def one(text: str) -> str:
        event_id = await client.send_text(user, room_id, text)
        returned[event_id] = time.monotonic()
        return event_id

    return await pool(concurrency, texts, one), returned


async def delivery(server: ServerProcess, fake: FakeAS, args: argparse.Namespace, result: Result) -> None:
    async with MatrixClient(server.base_url) as client:
        user = await client.register("benchsender", "bench-password-0123456789")
        room_id = await client.create_room(user, room_alias_name=ALIAS_LOCALPART, preset="private_chat")
        warm = await client.send_text(user, room_id, "warm-up")
        if not await wait_arrived(fake, [warm], WARMUP_DEADLINE_S):
            raise RuntimeError(f"{server.name}: the warm-up message never reached the AS:\n{server.log_tail(40)}")
        await settle(server)
        txns_before = len(fake.txn_sizes)
        t0 = time.monotonic()
        texts = [f"message {i}" for i in range(args.messages)]
        event_ids, returned = await send_all(client, user, room_id, texts, args.concurrency)
        send_s = time.monotonic() - t0
        if not await wait_arrived(fake, event_ids, args.drain_deadline):
            result.notes.append(f"only {fake.has(event_ids)} of {len(event_ids)} events reached the AS")
            return
        last = max(fake.arrivals[e] for e in event_ids)
        delays = [(fake.arrivals[e] - returned[e]) * 1000 for e in event_ids]
        sizes = fake.txn_sizes[txns_before:]
        result.figures.update(
            {
                "events_per_s": len(event_ids) / (last - t0),
                "client_sends_per_s": len(event_ids) / send_s,
                "delay_p50_ms": percentile(delays, 0.50),
                "delay_p95_ms": percentile(delays, 0.95),
                "delay_max_ms": max(delays),
                "transactions": float(len(sizes)),
                "events_per_txn": sum(sizes) / max(len(sizes), 1),
                "duplicate_events": float(fake.duplicate_events),
                "bad_auth": float(fake.bad_auth),
            }
        )

        if args.backlog and (server.name == "pocketserver" or args.backlog_synapse):
            await outage(server, fake, client, user, room_id, args, result)


async def outage(
    server: ServerProcess, fake: FakeAS, client: MatrixClient, user: User, room_id: str,
    args: argparse.Namespace, result: Result,
) -> None:
    await settle(server)
    rss_before = server.rss_mb()
    fake.stop()
    peak = rss_before
    done = trio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, server.rss_mb())
            with trio.move_on_after(0.2):
                await done.wait()

    texts = [f"while the AS is down {i}" for i in range(args.backlog)]
    half = len(texts) // 2
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample)
        t0 = time.monotonic()
        first, _ = await send_all(client, user, room_id, texts[:half], SEND_CONCURRENCY_BACKLOG)
        send_s = time.monotonic() - t0
        await settle(server)
        rss_half = server.rss_mb()
        t0 = time.monotonic()
        second, _ = await send_all(client, user, room_id, texts[half:], SEND_CONCURRENCY_BACKLOG)
        send_s += time.monotonic() - t0
        await settle(server)
        rss_after = server.rss_mb()
        done.set()
    event_ids = first + second
    txns_before = len(fake.txn_sizes)
    fake.start()
    t1 = time.monotonic()
    arrived = await wait_arrived(fake, event_ids, args.drain_deadline)
    drain_s = time.monotonic() - t1
    rss_drained = server.rss_mb()
    sizes = fake.txn_sizes[txns_before:]
    times = [fake.arrivals[e] for e in event_ids if e in fake.arrivals]
    result.figures.update(
        {
            "backlog_sent_per_s": len(event_ids) / send_s,
            "rss_before_mb": rss_before,
            "rss_half_mb": rss_half,
            "rss_peak_mb": peak,
            "rss_after_mb": rss_after,
            "rss_drained_mb": rss_drained,
            "backlog_arrived": float(fake.has(event_ids)),
            "backlog_drain_s": drain_s,
            "backlog_first_s": min(times) - t1 if times else float("nan"),
            "backlog_rate": len(times) / (max(times) - min(times)) if len(times) > 1 else float("nan"),
            "backlog_transactions": float(len(sizes)),
            "backlog_duplicates": float(fake.duplicate_events),
        }
    )
    if not arrived:
        result.notes.append(
            f"only {fake.has(event_ids)} of {len(event_ids)} backlog events arrived in {args.drain_deadline:.0f} s"
        )


def run_one(name: str, workdir: Path, args: argparse.Namespace) -> Result:
    fake = FakeAS(hs_token=secrets.token_hex(24))
    registration = workdir / name / "appservice.yaml"
    registration.parent.mkdir(parents=True, exist_ok=True)
    registration.write_text(fake.registration_yaml(secrets.token_hex(24)), encoding="utf-8")
    if name == "pocketserver":
        server = start_pocketserver(
            workdir / name, extra_toml='[appservices]\nregistration_files = ["appservice.yaml"]\n'
        )
    else:
        server = start_synapse(workdir / name, extra_config={"app_service_config_files": [str(registration)]})
    result = Result(name)
    fake.start()
    try:
        wait_ready(server)
        print(f"== {name} (ready in {server.ready_after_s:.2f} s, pid {server.pid})", flush=True)
        trio.run(delivery, server, fake, args, result)
    except BaseException:
        print(f"--- {name} log tail ---\n{server.log_tail(60)}", file=sys.stderr)
        raise
    finally:
        server.stop()
        fake.stop()
    return result


# -- report ----------------------------------------------------------------------------------


def report(results: dict[str, Result], args: argparse.Namespace) -> None:
    p = results.get("pocketserver", Result("pocketserver")).figures
    s = results.get("synapse", Result("synapse")).figures

    def fmt(v: float | None, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    def ratio(key: str) -> str:
        if key in p and key in s and s[key]:
            return f"{p[key] / s[key]:.2f}"
        return "-"

    rows: list[tuple[str, str, str, str, str]] = []
    for key, label, spec, target in (
        ("events_per_s", f"events/s at the AS ({args.messages} messages)", ".0f", ""),
        ("client_sends_per_s", "client sends/s", ".0f", ""),
        ("delay_p50_ms", "delay send->AS p50 (ms)", ".1f", ""),
        ("delay_p95_ms", "delay send->AS p95 (ms)", ".1f", ""),
        ("delay_max_ms", "delay send->AS max (ms)", ".1f", ""),
        ("transactions", "transactions", ".0f", ""),
        ("events_per_txn", "events per transaction", ".1f", "batched"),
        ("duplicate_events", "events received twice", ".0f", "0"),
        ("rss_before_mb", "RSS before the outage (MB)", ".1f", ""),
        ("backlog_sent_per_s", "client sends/s, AS down (8 in flight)", ".0f", ""),
        ("rss_half_mb", f"RSS after, {args.backlog // 2} queued (MB)", ".1f", "flat"),
        ("rss_peak_mb", f"RSS peak, {args.backlog} queued (MB)", ".1f", "flat"),
        ("rss_after_mb", f"RSS after, {args.backlog} queued (MB)", ".1f", "flat"),
        ("rss_drained_mb", "RSS after the backlog drained (MB)", ".1f", ""),
        ("backlog_arrived", "backlog events arrived", ".0f", str(args.backlog)),
        ("backlog_drain_s", "AS back -> all arrived (s)", ".1f", ""),
        ("backlog_first_s", "AS back -> first arrival (s; retry back-off)", ".1f", ""),
        ("backlog_rate", "backlog events/s once flowing", ".0f", ""),
        ("backlog_transactions", "backlog transactions", ".0f", ""),
        ("backlog_duplicates", "events received twice (all)", ".0f", "0"),
    ):
        if key in p or key in s:
            rows.append((label, fmt(p.get(key), spec), fmt(s.get(key), spec), ratio(key), target))
    print()
    print(f"application-service delivery; ratio = pocketserver / synapse; concurrency {args.concurrency}")
    print_table(rows)
    for r in results.values():
        for note in r.notes:
            print(f"NOTE {r.name}: {note}")


def main() -> int:
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=1, help="sends in flight in phase 1")
    ap.add_argument("--backlog", type=int, default=10000, help="messages sent while the AS is down (0: skip)")
    ap.add_argument("--backlog-synapse", action="store_true", help="run the outage against Synapse too")
    ap.add_argument("--drain-deadline", type=float, default=600.0, help="seconds for events to reach the AS")
    ap.add_argument("--only", choices=["pocketserver", "synapse"])
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = ap.parse_args()
    which = (args.only,) if args.only else ("pocketserver", "synapse")
    started = time.monotonic()
    results: dict[str, Result] = {}
    with tempfile.TemporaryDirectory(prefix="pocketbench-as-") as tmp:
        for name in which:
            results[name] = run_one(name, Path(tmp), args)
    report(results, args)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({k: v.figures for k, v in results.items()}, f, indent=1)
    print(f"\nwhole run: {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
