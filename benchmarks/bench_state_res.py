"""Benchmark: state resolution of a forked big room, pocketserver against Synapse.

Builds a room with 10,000 members and about 20,000 state events, then forks it: two
branches of a few hundred events each with conflicting power-levels changes, kicks,
bans, leaves, joins, topics and custom state. Every event is authorised against its
branch's state when built, so the DAG is what honest servers would produce; event IDs
are real reference hashes so that Synapse accepts the same events.

The two branch states are resolved

- by ``pocketserver.protocol.state_res.resolve_state`` (in a fresh subprocess), and
- by Synapse's ``synapse.state.v2.resolve_events_with_store`` (in Synapse's own venv,
  ``benchmarks/synapse_state_res.py``, with an in-memory store),

each measured for wall time (best of N runs) and peak extra RSS (VmHWM after the first
resolution minus VmRSS before it, with the high-water mark reset through
/proc/self/clear_refs). Both results must be identical.

Synapse computes the auth chain difference in its database (chain cover index); its
in-memory store here does the same graph walk in Python, so Synapse is timed twice:
end to end, and with the auth difference answered from a precomputed cache (its
best case). pocketserver is timed end to end.

Usage::

    python benchmarks/bench_state_res.py [--room-version 10] [--members 10000]
        [--state 20000] [--branch 300] [--runs 3] [--keep FILE]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pocketserver.protocol.auth_rules import auth_types_for_event, check_auth  # noqa: E402
from pocketserver.protocol.events import Event, StateKey  # noqa: E402
from pocketserver.protocol.hashes import compute_content_hash, compute_event_id  # noqa: E402
from pocketserver.protocol.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion  # noqa: E402
from pocketserver.protocol.state_res import resolve_state  # noqa: E402

ADMIN = "@admin:hs0.example"


def mod(i: int) -> str:
    return f"@mod{i}:hs{i}.example"


def user(i: int) -> str:
    return f"@u{i}:hs{i % 50}.example"


class RoomBuilder:
    """Builds events on a linear chain, tracking the state incrementally."""

    def __init__(self, rv: RoomVersion) -> None:
        self.rv = rv
        self.events: dict[str, Event] = {}
        self.pdus: list[dict[str, Any]] = []
        self.ts = 1_700_000_000_000
        self.room_id = "!bench:hs0.example"

    def build(
        self,
        state: dict[StateKey, str],
        prev: list[str],
        etype: str,
        sender: str,
        state_key: str | None,
        content: dict[str, Any],
        ts_step: int = 1,
    ) -> Event:
        rv = self.rv
        fields = {"type": etype, "sender": sender, "state_key": state_key, "content": content}
        auth = sorted(state[k] for k in auth_types_for_event(fields, rv) if k in state)
        depth = 1 + max((self.events[p].depth for p in prev), default=0)
        self.ts += ts_step
        pdu: dict[str, Any] = {
            "type": etype,
            "sender": sender,
            "content": content,
            "prev_events": list(prev),
            "auth_events": auth,
            "depth": depth,
            "origin_server_ts": self.ts,
            "signatures": {},
        }
        if state_key is not None:
            pdu["state_key"] = state_key
        if not (etype == "m.room.create" and rv.room_id_is_create_event_hash):
            pdu["room_id"] = self.room_id
        pdu["hashes"] = compute_content_hash(pdu, rv)
        eid = compute_event_id(pdu, rv)
        ev = Event.from_pdu(pdu, rv, event_id=eid)
        if etype == "m.room.create" and rv.room_id_is_create_event_hash:
            self.room_id = "!" + eid[1:]
        else:
            # An honest server only sends events that pass the auth rules.
            keys = auth_types_for_event(ev, rv) | {("m.room.create", "")}
            create_id = "$" + self.room_id[1:] if rv.room_id_is_create_event_hash else None
            auth_state = {k: self.events[state[k]] for k in keys if k in state}
            if create_id is not None:
                auth_state[("m.room.create", "")] = self.events[create_id]
            check_auth(ev, auth_state)
        self.events[eid] = ev
        self.pdus.append(pdu)
        if state_key is not None:
            state[(etype, state_key)] = eid
        prev[:] = [eid]
        return ev


def build_room(
    rv: RoomVersion, n_members: int, n_state: int, branch_len: int
) -> tuple[RoomBuilder, dict[StateKey, str], dict[StateKey, str]]:
    b = RoomBuilder(rv)
    state: dict[StateKey, str] = {}
    prev: list[str] = []
    mods = [mod(i) for i in range(10)]

    def pl_content(extra: dict[str, int] | None = None) -> dict[str, Any]:
        users = {m: 50 for m in mods}
        if not rv.privileged_creators:
            users[ADMIN] = 100
        users.update(extra or {})
        return {
            "users": users,
            "users_default": 0,
            "events_default": 0,
            "state_default": 50,
            "ban": 50,
            "kick": 50,
            "redact": 50,
            "invite": 0,
            "events": {"m.room.power_levels": 50, "m.room.topic": 10},
        }

    create_content: dict[str, Any] = {"room_version": rv.identifier}
    if not rv.implicit_room_creator:
        create_content["creator"] = ADMIN
    b.build(state, prev, "m.room.create", ADMIN, "", create_content)
    b.build(state, prev, "m.room.member", ADMIN, ADMIN, {"membership": "join"})
    b.build(state, prev, "m.room.power_levels", ADMIN, "", pl_content())
    b.build(state, prev, "m.room.join_rules", ADMIN, "", {"join_rule": "public"})
    b.build(state, prev, "m.room.history_visibility", ADMIN, "", {"history_visibility": "shared"})
    b.build(state, prev, "m.room.name", ADMIN, "", {"name": "Big room"})
    for m in mods:
        b.build(state, prev, "m.room.member", m, m, {"membership": "join"})
    promoted: dict[str, int] = {}
    for i in range(n_members):
        u = user(i)
        b.build(state, prev, "m.room.member", u, u, {"membership": "join", "displayname": f"U{i}"})
        if i % 1000 == 999:
            # Power-levels changes along the way make a long mainline.
            promoted[u] = 10
            b.build(state, prev, "m.room.power_levels", ADMIN, "", pl_content(promoted))
    i = 0
    while len(state) < n_state:
        sender = ADMIN if i % 2 else mods[i % 10]
        b.build(state, prev, "org.example.setting", sender, f"key{i}", {"value": i})
        i += 1

    fork_state, fork_prev = state, prev
    # -- branch A: the admin demotes mod0, promotes mod1; mod1 kicks and bans --------
    sa, pa = dict(fork_state), list(fork_prev)
    # -- branch B: mod0 (still a moderator there) bans, edits the same keys ----------
    sb, pb = dict(fork_state), list(fork_prev)
    demoted = pl_content({**promoted, mods[0]: 0, mods[1]: 75})
    b.build(sa, pa, "m.room.power_levels", ADMIN, "", demoted)
    b.build(sb, pb, "m.room.power_levels", mods[0], "", pl_content({**promoted, user(n_members // 2): 40}))
    k = 0
    new_users = 0
    while k < branch_len:
        step = k % 6
        if step == 0:
            b.build(sa, pa, "m.room.member", mods[1], user(k), {"membership": "leave"}, 3)
            b.build(sb, pb, "m.room.member", mods[0], user(k + 50), {"membership": "ban"}, 2)
        elif step == 1:
            b.build(sa, pa, "m.room.member", mods[1], user(k + 60), {"membership": "ban"}, 3)
            b.build(sb, pb, "m.room.topic", mods[0], "", {"topic": f"B{k}"}, 2)
        elif step == 2:
            b.build(sa, pa, "m.room.topic", mods[1], "", {"topic": f"A{k}"}, 3)
            b.build(sb, pb, "org.example.setting", mods[0], f"key{k}", {"value": -k}, 2)
        elif step == 3:
            b.build(sa, pa, "org.example.setting", ADMIN, f"key{k - 1}", {"value": k}, 3)
            u = user(n_members // 5 + k)
            b.build(sb, pb, "m.room.member", u, u, {"membership": "leave"}, 2)
        elif step == 4:
            u = user(n_members // 5 + k + 1)
            b.build(sa, pa, "m.room.member", u, u, {"membership": "leave"}, 3)
            nu = f"@new{new_users}:hs9.example"
            new_users += 1
            b.build(sb, pb, "m.room.member", nu, nu, {"membership": "join"}, 2)
        else:
            nu = f"@new{new_users}:hs8.example"
            new_users += 1
            b.build(sa, pa, "m.room.member", nu, nu, {"membership": "join"}, 3)
            b.build(sb, pb, "m.room.member", mods[0], user(k + 3 * n_members // 10), {"membership": "leave"}, 2)
        k += 1
    return b, sa, sb


# -- measurement ---------------------------------------------------------------------------


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def run_pocketserver(path: str, runs: int) -> dict[str, Any]:
    data = json.loads(Path(path).read_text())
    rv = KNOWN_ROOM_VERSIONS[data["room_version"]]
    events = {
        eid: Event.from_pdu(pdu, rv, event_id=eid)
        for eid, pdu in zip(data["event_ids"], data["pdus"], strict=True)
    }
    sets = [{(t, sk): e for t, sk, e in s} for s in data["state_sets"]]
    del data
    gc.collect()
    times = []
    peak = 0
    result: dict[StateKey, str] = {}
    for n in range(runs):
        gc.collect()
        reset_peak()
        base = _status("VmRSS")
        t0 = time.perf_counter()
        result = resolve_state(rv, sets, events)
        times.append(time.perf_counter() - t0)
        if n == 0:
            peak = _status("VmHWM") - base
        del result
        result = {}
    result = resolve_state(rv, sets, events)
    return {
        "time": min(times),
        "times": times,
        "extra_rss": peak,
        "resolved": sorted([t, sk, e] for (t, sk), e in result.items()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--room-version", default="10")
    ap.add_argument("--members", type=int, default=10_000)
    ap.add_argument("--state", type=int, default=20_000)
    ap.add_argument("--branch", type=int, default=300, help="events per branch")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--keep", help="write the room JSON here and keep it")
    ap.add_argument("--run-pocketserver", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.run_pocketserver:
        print(json.dumps(run_pocketserver(args.run_pocketserver, args.runs)))
        return 0

    rv = KNOWN_ROOM_VERSIONS[args.room_version]
    t0 = time.perf_counter()
    b, sa, sb = build_room(rv, args.members, args.state, args.branch)
    conflicted = sum(1 for k in sa.keys() | sb.keys() if sa.get(k) != sb.get(k))
    print(
        f"room v{rv.identifier}: {len(b.pdus)} events, {len(sa)} / {len(sb)} state entries, "
        f"{conflicted} conflicted keys (built in {time.perf_counter() - t0:.1f}s)"
    )
    ids = list(b.events)
    payload = {
        "room_version": rv.identifier,
        "room_id": b.room_id,
        "event_ids": ids,
        "pdus": b.pdus,
        "state_sets": [[[t, sk, e] for (t, sk), e in s.items()] for s in (sa, sb)],
    }
    path = args.keep or tempfile.mkstemp(suffix=".json", prefix="stateres-")[1]
    Path(path).write_text(json.dumps(payload))
    del payload
    try:
        ours = json.loads(
            subprocess.run(
                [sys.executable, __file__, "--run-pocketserver", path, "--runs", str(args.runs)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
        synapse_python = subprocess.run(
            ["bash", str(REPO / "benchmarks/synapse_venv.sh")],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        theirs = json.loads(
            subprocess.run(
                [
                    synapse_python,
                    str(REPO / "benchmarks/synapse_state_res.py"),
                    path,
                    "--runs",
                    str(args.runs),
                ],
                check=True,
                capture_output=True,
                text=True,
                cwd=tempfile.gettempdir(),  # keep Synapse's `synapse/types` off sys.path[0]
            ).stdout
        )
    finally:
        if not args.keep:
            os.unlink(path)

    same = ours["resolved"] == theirs["resolved"]
    mb = 1024 * 1024
    print(f"pocketserver:          {ours['time'] * 1000:8.1f} ms   peak extra RSS {ours['extra_rss'] / mb:6.1f} MB")
    for label, key in (("synapse (end to end)", "e2e"), ("synapse (cached diff)", "cached")):
        r = theirs[key]
        print(
            f"{label + ':':22} {r['time'] * 1000:8.1f} ms   peak extra RSS {r['extra_rss'] / mb:6.1f} MB"
            f"   ratio {r['time'] / ours['time']:5.1f}x"
        )
    print(f"auth difference (synapse store): {theirs['auth_difference_size']} events")
    print(f"identical resolved state: {same} ({len(ours['resolved'])} entries)")
    if not same:
        a = {(t, sk): e for t, sk, e in ours["resolved"]}
        s = {(t, sk): e for t, sk, e in theirs["resolved"]}
        diff = [k for k in a.keys() | s.keys() if a.get(k) != s.get(k)]
        print(f"  {len(diff)} differing keys, e.g. {diff[:5]}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
