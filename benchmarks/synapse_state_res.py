"""Synapse's own v2 / v2.1 state resolver on a room written by bench_state_res.py.

Run with Synapse's python (``bash benchmarks/synapse_venv.sh`` prints it), from a
directory other than Synapse's package (its ``synapse/types`` would shadow the stdlib
``types``). Prints JSON: best wall time and peak extra RSS of
``synapse.state.v2.resolve_events_with_store`` (or v1's for room version 1), end to
end and with the auth difference answered from a cache, plus the resolved state.

The store is in memory: ``get_events`` serves the parsed events; the auth chain
difference (and, for v2.1, the conflicted state subgraph) is a plain walk of the
auth graph, like Synapse's own test store. Synapse's production store answers that
from its chain cover index in SQL instead, hence the second, cached, measurement.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from typing import Any

import synapse.event_auth  # noqa: F401  (first: breaks an import cycle in synapse.state)
from synapse.api.room_versions import (
    KNOWN_ROOM_VERSIONS,
    EventFormatVersions,
    StateResolutionVersions,
)
from synapse.events import make_event_from_dict
from synapse.state import v1 as v1_state
from synapse.state import v2 as v2_state
from synapse.storage.databases.main.event_federation import StateDifference


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


class Clock:
    async def sleep(self, duration: Any) -> None:
        return None


class Store:
    def __init__(self, events: dict[str, Any]) -> None:
        self.events = events
        self.cache: dict[Any, StateDifference] | None = None

    async def get_events(self, event_ids: Any, allow_rejected: bool = False) -> dict[str, Any]:
        ev = self.events
        return {e: ev[e] for e in event_ids if e in ev}

    def _chain(self, start: Any) -> set[str]:
        ev = self.events
        seen: set[str] = set()
        stack = list(start)
        while stack:
            e = stack.pop()
            if e in seen:
                continue
            seen.add(e)
            event = ev.get(e)
            if event is not None:
                stack.extend(event.auth_event_ids())
        return seen

    def _difference(self, state_sets: list[set[str]], conflicted: set[str] | None) -> StateDifference:
        chains = [self._chain(s) for s in state_sets]
        union = set().union(*chains)
        inter = set(chains[0]).intersection(*chains[1:])
        subgraph = None
        if conflicted is not None:
            down = self._chain(conflicted)
            parents: dict[str, list[str]] = {}
            for e in down:
                event = self.events.get(e)
                if event is not None:
                    for a in event.auth_event_ids():
                        parents.setdefault(a, []).append(e)
            up = set(conflicted)
            stack = list(conflicted)
            while stack:
                e = stack.pop()
                for p in parents.get(e, ()):
                    if p not in up:
                        up.add(p)
                        stack.append(p)
            subgraph = up
        return StateDifference(auth_difference=union - inter, conflicted_subgraph=subgraph)

    async def get_auth_chain_difference(
        self,
        room_id: str,
        state_sets: list[set[str]],
        conflicted_state: set[str] | None,
        additional_backwards_reachable_conflicted_events: set[str] | None,
    ) -> StateDifference:
        if self.cache is not None:
            key = (tuple(frozenset(s) for s in state_sets), frozenset(conflicted_state or ()))
            hit = self.cache.get(key)
            if hit is None:
                hit = self.cache[key] = self._difference(state_sets, conflicted_state)
            # a fresh copy: the caller updates the sets in place
            return StateDifference(
                auth_difference=set(hit.auth_difference),
                conflicted_subgraph=None
                if hit.conflicted_subgraph is None
                else set(hit.conflicted_subgraph),
            )
        return self._difference(state_sets, conflicted_state)


def _drive(coro: Any) -> Any:
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    raise RuntimeError("the resolver awaited something that did not complete")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with open(args.path) as f:
        data = json.load(f)
    rv = KNOWN_ROOM_VERSIONS[data["room_version"]]
    room_id = data["room_id"]
    events = {}
    for eid, pdu in zip(data["event_ids"], data["pdus"], strict=True):
        if rv.event_format == EventFormatVersions.ROOM_V1_V2:
            pdu = dict(pdu, event_id=eid)
        ev = make_event_from_dict(pdu, rv)
        assert ev.event_id == eid, (ev.event_id, eid)
        events[eid] = ev
    state_sets = [{(t, sk): e for t, sk, e in s} for s in data["state_sets"]]
    del data
    store = Store(events)

    def resolve() -> Any:
        if rv.state_res == StateResolutionVersions.V1:

            async def factory(ids: Any) -> dict[str, Any]:
                return await store.get_events(ids)

            return _drive(v1_state.resolve_events_with_store(room_id, rv, state_sets, None, factory))
        return _drive(
            v2_state.resolve_events_with_store(Clock(), room_id, rv, state_sets, None, store)
        )

    out: dict[str, Any] = {}
    result: Any = None
    for label, cached in (("e2e", False), ("cached", True)):
        store.cache = {} if cached else None
        if cached:
            resolve()  # fill the cache outside the measurement
        times = []
        peak = 0
        for n in range(args.runs):
            gc.collect()
            _reset_peak()
            base = _status("VmRSS")
            t0 = time.perf_counter()
            result = resolve()
            times.append(time.perf_counter() - t0)
            if n == 0:
                peak = _status("VmHWM") - base
        out[label] = {"time": min(times), "times": times, "extra_rss": peak}
    out["resolved"] = sorted([t, sk, e] for (t, sk), e in dict(result).items())
    diff = store._difference(
        [set(s.values()) for s in state_sets], None
    ).auth_difference
    out["auth_difference_size"] = len(diff)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
