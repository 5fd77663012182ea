"""State resolution: v1 (room v1), v2 (rooms v2-v11) and v2.1 (room v12).

Spec: shared/spec/content/rooms/v1.md "State resolution" (v1);
rooms/fragments/v2-state-res.md (v2); rooms/v12.md "State resolution" (v2.1, whose
``added-in``/``changed-in v=12`` markers are the two differences below).

v2 / v2.1, given state sets S1..Sn (:func:`resolve_state`):

0. Split into the *unconflicted state map* (a key present in every set with the same
   event) and the *conflicted state set* (everything else).
   The *full conflicted set* is the conflicted state set plus the *auth difference*
   (events in some but not all of the sets' full auth chains) plus, v2.1 only, the
   *conflicted state subgraph* (every event on an auth-events path between two
   conflicted events).
1. Take the *power events* of the full conflicted set (power levels, join rules,
   kicks and bans, the create event) and the events of their auth chains that are in
   the full conflicted set; sort them by the *reverse topological power ordering*
   (Kahn's algorithm; ties: higher sender power first, then earlier
   ``origin_server_ts``, then smaller event ID).
2. Apply the *iterative auth checks* to them, starting from the unconflicted state
   map (v2) or from an **empty** state map (v2.1).
3. Order the remaining events of the full conflicted set by the *mainline ordering*
   of the power levels event resolved in step 2.
4. Apply the iterative auth checks to them, starting from the result of step 2.
5. Overwrite the result with the unconflicted state map.

Performance: resolutions over rooms with tens of thousands of state events must stay
cheap, so events are interned to consecutive integers on first sight and every graph
walk (auth chains, auth difference, subgraph, Kahn's sort) runs iteratively over lists
of integers; each event's sender power level is computed once, and mainline depths
are memoised along the power-levels chain. The big state maps are touched only by
C-level passes (finding the differing keys, the first level of the unconflicted auth
chain walk) and never copied: the iterative auth checks write their changes over the
unconflicted map, which step 5 then extends.

Room version 12 events never cite the create event (the room ID is its hash), so it
is added as an implicit auth event wherever the algorithm follows ``auth_events``
(the same convention as Synapse, so that both compute the same auth chains).

Pure: no I/O. Events come from a mapping or a fetch callable supplied by the caller.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from itertools import chain, compress, filterfalse
from operator import attrgetter, ne

from pocketserver.protocol.auth_rules import (
    CREATE,
    POWER_LEVELS,
    AuthError,
    auth_types_for_event,
    check_auth,
)
from pocketserver.protocol.events import Event, StateKey
from pocketserver.protocol.power_levels import PowerLevels
from pocketserver.protocol.room_versions import RoomVersion, StateResAlgorithm

StateMap = Mapping[StateKey, str]
EventSource = Mapping[str, Event] | Callable[[str], Event | None]

#: ``auth_difference(state_sets, conflicted)``: the auth difference of the state sets
#: (given as collections of event IDs), plus, when ``conflicted`` is not None (v2.1),
#: the conflicted state subgraph of those conflicted event IDs. Lets a store with an
#: auth-chain index answer without walking the graph in Python.
AuthDifferenceFn = Callable[[Sequence[Collection[str]], Collection[str] | None], set[str]]


class StateResolutionError(Exception):
    """An event the algorithm needs is unknown."""


def _getter(event_map: EventSource) -> Callable[[str], Event | None]:
    if isinstance(event_map, Mapping):
        return event_map.get
    return event_map


def resolve_state(
    rv: RoomVersion,
    state_sets: Sequence[StateMap],
    event_map: EventSource,
    auth_difference: AuthDifferenceFn | None = None,
) -> dict[StateKey, str]:
    """Resolve ``state_sets`` ((type, state_key) -> event ID maps) into one state.

    ``event_map`` maps event IDs to events or is a callable returning an event or None;
    it must reach every event of the sets and of their auth chains.
    """
    if not state_sets:
        return {}
    if len(state_sets) == 1:
        return dict(state_sets[0])
    get = _getter(event_map)
    if rv.state_res is StateResAlgorithm.V1:
        return _resolve_v1(rv, state_sets, get)
    return _resolve_v2(rv, state_sets, get, auth_difference)


# =====================================================================================
# v2 and v2.1
# =====================================================================================


def separate(
    state_sets: Sequence[StateMap],
) -> tuple[dict[StateKey, str], dict[StateKey, set[str]]]:
    """The unconflicted state map and the conflicted state set (by key).

    A key missing from some set is conflicted (v2: "present in every S_i with the same
    value"). The sets share almost all of their entries, so the keys that differ from
    the first set are found by C-level passes (no per-entry Python code and no hashing
    of whole items); only those few keys are then handled one by one.
    """
    first = state_sets[0]
    differing: set[StateKey] = set()
    for s in state_sets[1:]:
        # keys of `first` whose event differs in `s` (or that `s` lacks) ...
        diff = list(compress(first, map(ne, first.values(), map(s.get, first))))
        differing.update(diff)
        # ... and keys only `s` has, if its size says there are any
        if len(s) > len(first) - sum(1 for key in diff if key not in s):
            differing.update(filterfalse(first.__contains__, s))
    unconflicted = dict(first)
    conflicted: dict[StateKey, set[str]] = {}
    for key in differing:
        unconflicted.pop(key, None)
        conflicted[key] = {s[key] for s in state_sets if key in s}
    return unconflicted, conflicted


def is_power_event(event: Event) -> bool:
    """A *power event*: power levels, join rules, a kick or ban (membership leave/ban
    whose sender is not the target), and (as Synapse and ruma also count it) the create
    event. Like them, the power-levels / join-rules / create state key must be ``""``.
    """
    etype = event.type
    if etype in ("m.room.power_levels", "m.room.join_rules", "m.room.create"):
        return event.state_key == ""
    if etype == "m.room.member":
        return (
            event.content.get("membership") in ("leave", "ban") and event.sender != event.state_key
        )
    return False


class _Graph:
    """Events interned to integers, with auth edges as integer lists."""

    __slots__ = ("rv", "get", "index", "events", "auth", "implicit_create")

    def __init__(self, rv: RoomVersion, get: Callable[[str], Event | None]) -> None:
        self.rv = rv
        self.get = get
        self.index: dict[str, int] = {}
        self.events: list[Event | None] = []
        self.auth: list[list[int] | None] = []
        self.implicit_create = rv.room_id_is_create_event_hash

    def intern(self, event_id: str) -> int:
        i = self.index.get(event_id)
        if i is None:
            i = len(self.events)
            self.index[event_id] = i
            self.events.append(self.get(event_id))
            self.auth.append(None)
        return i

    def auth_of(self, i: int) -> list[int]:
        edges = self.auth[i]
        if edges is None:
            ev = self.events[i]
            if ev is None:
                edges = []
            else:
                intern = self.intern
                edges = [intern(a) for a in ev.auth_event_ids]
                if self.implicit_create and ev.type != "m.room.create":
                    # v12: the room ID stands for the create event.
                    edges.append(intern("$" + ev.room_id[1:]))
            self.auth[i] = edges
        return edges

    def auth_event_ids(self, ev: Event) -> Iterable[str]:
        if self.implicit_create and ev.type != "m.room.create":
            return (*ev.auth_event_ids, "$" + ev.room_id[1:])
        return ev.auth_event_ids


def auth_difference_in_memory(
    get: Callable[[str], Event | None],
    state_sets: Sequence[StateMap],
    unconflicted: Mapping[StateKey, str],
    conflicted: Mapping[StateKey, set[str]],
) -> set[str]:
    """The auth difference of ``state_sets``, by walking the auth graph in memory.

    A state set's full auth chain C_i is U | X_i, where U is the chain of the
    unconflicted events (shared by every set) and X_i the chain of the set's conflicted
    events. So the difference is (union X_i - intersection X_i) - U, and the walks from
    the conflicted events can stop at any event of U: everything below it is in U too.
    The one full walk is U's, a tight loop over strings; the per-set walks only cover
    what happened since the sets diverged. (As in Synapse, a set's chain counts the set's
    own events; that only ever adds conflicted events, which are in the full conflicted
    set anyway.)
    """
    # U's walk goes level by level with C-level set operations: the next level is the
    # auth events of this one that are not in U yet.
    # (The first level is read in the map's order, not the set's hash order: that
    # visits the events far more cache-friendly.)
    in_u = set(unconflicted.values())
    level: Iterable[str] = unconflicted.values()
    auth_ids = attrgetter("auth_event_ids")
    while True:
        new = set(chain.from_iterable(map(auth_ids, filter(None, map(get, level)))))
        new -= in_u
        if not new:
            break
        in_u |= new
        level = new
    stack: list[str] = []
    reach: list[set[str]] = []
    for s in state_sets:
        r: set[str] = set()
        for key in conflicted:
            eid = s.get(key)
            if eid is not None and eid not in r:
                r.add(eid)
                stack.append(eid)
        while stack:
            ev = get(stack.pop())
            if ev is None:
                continue
            for a in ev.auth_event_ids:
                if a not in r and a not in in_u:
                    r.add(a)
                    stack.append(a)
        reach.append(r)
    return set().union(*reach) - reach[0].intersection(*reach[1:])


def _conflicted_subgraph(graph: _Graph, conflicted: list[int]) -> set[int]:
    """v2.1: events on any auth-events path between two conflicted events, endpoints
    included: those reachable from a conflicted event that also reach one."""
    auth_of = graph.auth_of
    # Walk down from the conflicted events, remembering reverse edges.
    down: set[int] = set(conflicted)
    parents: dict[int, list[int]] = {}
    stack = list(conflicted)
    while stack:
        i = stack.pop()
        for a in auth_of(i):
            p = parents.get(a)
            if p is None:
                parents[a] = [i]
            else:
                p.append(i)
            if a not in down:
                down.add(a)
                stack.append(a)
    # Walk back up from the conflicted events within that region.
    up: set[int] = set(conflicted)
    stack = list(conflicted)
    while stack:
        i = stack.pop()
        for p_i in parents.get(i, ()):
            if p_i not in up:
                up.add(p_i)
                stack.append(p_i)
    return up  # every node of `up` lies below some conflicted event by construction


def _sender_power(
    graph: _Graph,
    ev: Event,
    cache: dict[str, Event | None],
    pl_cache: dict[tuple[str | None, str | None], PowerLevels],
) -> int:
    """The sender's power level "when looking at their respective auth_events"."""
    rv = graph.rv
    pl_ev: Event | None = None
    create: Event | None = None
    get = graph.get
    for aid in graph.auth_event_ids(ev):
        if aid in cache:
            a = cache[aid]
        else:
            a = cache[aid] = get(aid)
        if a is None:
            continue
        if a.state_key == "":
            if a.type == "m.room.power_levels":
                pl_ev = a
            elif a.type == "m.room.create":
                create = a
    if ev.type == "m.room.create":
        create = ev
    # Most events cite one of a few power-levels events: build each view once.
    pl_key = (
        create.event_id if create is not None else None,
        pl_ev.event_id if pl_ev is not None else None,
    )
    pl = pl_cache.get(pl_key)
    if pl is None:
        pl = pl_cache[pl_key] = PowerLevels.from_events(create, pl_ev, rv)
    return pl.user_level(ev.sender)


def reverse_topological_power_sort(
    graph: _Graph, power_events: Iterable[int], full_conflicted: set[int]
) -> list[int]:
    """Step 1: the power events plus their auth chains within the full conflicted set,
    in reverse topological power ordering (Kahn's algorithm over a heap).

    As Synapse and ruma do, the auth chain is followed only through events of the full
    conflicted set."""
    auth_of = graph.auth_of
    # out-edges (to auth events inside the set) and their reverse
    out_deg: dict[int, int] = {}
    children: dict[int, list[int]] = {}
    stack = list(power_events)
    seen = set(stack)
    while stack:
        i = stack.pop()
        deg = 0
        for a in auth_of(i):
            if a in full_conflicted:
                deg += 1
                c = children.get(a)
                if c is None:
                    children[a] = [i]
                else:
                    c.append(i)
                if a not in seen:
                    seen.add(a)
                    stack.append(a)
        out_deg[i] = deg

    events = graph.events
    cache: dict[str, Event | None] = {}
    pl_cache: dict[tuple[str | None, str | None], PowerLevels] = {}
    keys: dict[int, tuple[int, int, str, int]] = {}
    for i in out_deg:
        ev = events[i]
        assert ev is not None
        keys[i] = (-_sender_power(graph, ev, cache, pl_cache), ev.origin_server_ts, ev.event_id, i)

    heap = [keys[i] for i, d in out_deg.items() if d == 0]
    heapq.heapify(heap)
    order: list[int] = []
    while heap:
        i = heapq.heappop(heap)[3]
        order.append(i)
        for child in children.get(i, ()):
            d = out_deg[child] - 1
            out_deg[child] = d
            if d == 0:
                heapq.heappush(heap, keys[child])
    return order


def iterative_auth_checks(
    rv: RoomVersion,
    events: Iterable[Event],
    state: dict[StateKey, str],
    get: Callable[[str], Event | None],
    base: Mapping[StateKey, str] | None = None,
) -> dict[StateKey, str]:
    """Apply each event to ``state`` (updated in place and returned) if the auth rules
    allow it against that state, falling back to the event's own (non-rejected) auth
    events for keys the state lacks. Reuses :func:`~auth_rules.check_auth`.

    With ``base``, the state is ``base`` overlaid with ``state``: keys ``state`` lacks
    are read from ``base``, and only ``state`` is written (so a big base map need not
    be copied).

    :func:`~auth_rules.check_auth` reads only the keys of
    :func:`~auth_rules.auth_types_for_event` and the create event, so only those are
    looked up; the event's own auth events are read only when the state lacks one.
    """
    implicit_create = rv.room_id_is_create_event_hash
    for ev in events:
        keys = auth_types_for_event(ev, rv)
        keys.add(CREATE)
        auth_map: dict[StateKey, Event] = {}
        own: dict[StateKey, Event] | None = None
        for key in keys:
            sid = state.get(key)
            if sid is None and base is not None:
                sid = base.get(key)
            s_ev = get(sid) if sid is not None else None
            if s_ev is None:
                if own is None:
                    own = _own_auth_events(ev, get, implicit_create)
                s_ev = own.get(key)
                if s_ev is None:
                    continue
            auth_map[key] = s_ev
        try:
            check_auth(ev, auth_map)
        except AuthError:
            continue
        assert ev.state_key is not None
        state[(ev.type, ev.state_key)] = ev.event_id
    return state


def _own_auth_events(
    ev: Event, get: Callable[[str], Event | None], implicit_create: bool
) -> dict[StateKey, Event]:
    """The event's own non-rejected auth events, by key."""
    ids: Iterable[str] = ev.auth_event_ids
    if implicit_create and ev.type != "m.room.create":
        ids = (*ev.auth_event_ids, "$" + ev.room_id[1:])
    out: dict[StateKey, Event] = {}
    for aid in ids:
        a = get(aid)
        if a is not None and a.rejected_reason is None and a.state_key is not None:
            out[(a.type, a.state_key)] = a
    return out


def mainline_sort(graph: _Graph, event_ids: list[int], power_levels_id: str | None) -> list[int]:
    """Step 3: order by mainline position of the resolved power levels event (events
    whose power-levels chain meets the mainline earlier come first), then
    ``origin_server_ts``, then event ID."""
    get = graph.get
    events = graph.events

    def pl_parent(ev: Event) -> Event | None:
        for aid in ev.auth_event_ids:
            a = get(aid)
            if a is not None and a.type == "m.room.power_levels" and a.state_key == "":
                return a
        return None

    mainline: list[str] = []
    p = get(power_levels_id) if power_levels_id is not None else None
    while p is not None:
        mainline.append(p.event_id)
        p = pl_parent(p)
    # Position counted from the oldest (the root) = 1 .. len; 0 = not on the mainline
    # ("infinite" position in the spec's terms, which sorts first).
    depth_of: dict[str, int] = {eid: len(mainline) - k for k, eid in enumerate(mainline)}

    def mainline_depth(ev: Event) -> int:
        path: list[str] = []
        cur: Event | None = ev
        result = 0
        while cur is not None:
            d = depth_of.get(cur.event_id)
            if d is not None:
                result = d
                break
            path.append(cur.event_id)
            cur = pl_parent(cur)
        for eid in path[1:]:  # PL events walked through share the answer
            depth_of[eid] = result
        return result

    keyed = []
    for i in event_ids:
        ev = events[i]
        assert ev is not None
        keyed.append((mainline_depth(ev), ev.origin_server_ts, ev.event_id, i))
    keyed.sort()
    return [k[3] for k in keyed]


def _ev(events: list[Event | None], i: int) -> Event:
    ev = events[i]
    assert ev is not None
    return ev


def _resolve_v2(
    rv: RoomVersion,
    state_sets: Sequence[StateMap],
    get: Callable[[str], Event | None],
    auth_difference: AuthDifferenceFn | None,
) -> dict[StateKey, str]:
    v21 = rv.state_res is StateResAlgorithm.V2_1
    unconflicted, conflicted = separate(state_sets)
    if not conflicted:
        return unconflicted

    graph = _Graph(rv, get)
    conflicted_ids: set[str] = set()
    for ids in conflicted.values():
        conflicted_ids |= ids

    if auth_difference is not None:
        extra_ids = auth_difference(
            [set(s.values()) for s in state_sets], conflicted_ids if v21 else None
        )
        full = {graph.intern(e) for e in extra_ids | conflicted_ids}
    else:
        diff = auth_difference_in_memory(get, state_sets, unconflicted, conflicted)
        full = {graph.intern(e) for e in diff | conflicted_ids}
        if v21:
            full |= _conflicted_subgraph(graph, [graph.intern(e) for e in conflicted_ids])
    events = graph.events
    # Only events we actually have take part (as in every implementation).
    full = {i for i in full if events[i] is not None}

    power = [i for i in full if is_power_event(_ev(events, i))]
    sorted_power = reverse_topological_power_sort(graph, power, full)

    # Step 2: v2 starts from the unconflicted state map; v2.1 from an empty one.
    # `changes` holds what the checks write, over the unconflicted map as a base (v2).
    base = None if v21 else unconflicted
    changes: dict[StateKey, str] = {}
    iterative_auth_checks(rv, [_ev(events, i) for i in sorted_power], changes, get, base)

    # Step 3: mainline ordering of everything else.
    done = set(sorted_power)
    leftover = [i for i in full if i not in done]
    pl_id = changes.get(POWER_LEVELS)
    if pl_id is None and base is not None:
        pl_id = base.get(POWER_LEVELS)
    ordered = mainline_sort(graph, leftover, pl_id)

    # Step 4.
    iterative_auth_checks(rv, [_ev(events, i) for i in ordered], changes, get, base)

    # Step 5: the unconflicted state map wins over the changes (`unconflicted` is ours
    # to extend).
    unconflicted.update({k: v for k, v in changes.items() if k not in unconflicted})
    return unconflicted


# =====================================================================================
# v1
# =====================================================================================


def _separate_v1(
    state_sets: Sequence[StateMap],
) -> tuple[dict[StateKey, str], dict[StateKey, set[str]]]:
    """v1: a *conflict* is a key with different event IDs in different sets; a key
    present in only some sets is not conflicted."""
    unconflicted: dict[StateKey, str] = dict(state_sets[0])
    conflicted: dict[StateKey, set[str]] = {}
    for s in state_sets[1:]:
        for key, eid in s.items():
            cur = unconflicted.get(key)
            if cur is None:
                c = conflicted.get(key)
                if c is None:
                    unconflicted[key] = eid
                else:
                    c.add(eid)
            elif cur != eid:
                conflicted[key] = {cur, eid}
                del unconflicted[key]
    return unconflicted, conflicted


def _sha1(event_id: str) -> str:
    return hashlib.sha1(event_id.encode("utf-8")).hexdigest()


def _resolve_v1(
    rv: RoomVersion, state_sets: Sequence[StateMap], get: Callable[[str], Event | None]
) -> dict[StateKey, str]:
    """Room version 1 (rooms/v1.md "State resolution"):

    - R = the union of the states without the conflicting keys;
    - power levels, then join rules, then each membership key: sort the conflicting
      events by ascending depth then descending sha1(event_id); take the first, then
      each following one while it passes the auth rules in R;
    - any other key: the event with highest depth and lowest sha1(event_id) that
      passes the auth rules in R (the last one if none does).
    """
    unconflicted, conflicted_ids = _separate_v1(state_sets)
    conflicted: dict[StateKey, list[Event]] = {}
    for key, ids in conflicted_ids.items():
        evs = [e for e in map(get, ids) if e is not None]
        if len(evs) > 1:
            conflicted[key] = evs
        elif evs:
            unconflicted[key] = evs[0].event_id

    # R: auth-relevant events of the unconflicted state.
    r: dict[StateKey, Event] = {}
    for evs in conflicted.values():
        for ev in evs:
            for key in auth_types_for_event(ev, rv):
                if key not in r:
                    eid = unconflicted.get(key)
                    if eid is not None:
                        a = get(eid)
                        if a is not None:
                            r[key] = a

    def ordered(evs: list[Event]) -> list[Event]:
        # highest depth first, then lowest sha1
        return sorted(evs, key=lambda e: (-e.depth, _sha1(e.event_id)))

    def resolve_auth_key(evs: list[Event]) -> Event:
        ascending = list(reversed(ordered(evs)))
        keys: set[StateKey] = set()
        for e in evs:
            keys |= auth_types_for_event(e, rv)
        auth = {k: r[k] for k in keys if k in r}
        prev = ascending[0]
        for ev in ascending[1:]:
            assert prev.state_key is not None
            auth[(prev.type, prev.state_key)] = prev
            try:
                check_auth(ev, auth)
            except AuthError:
                return prev
            prev = ev
        return prev

    resolved: dict[StateKey, Event] = {}
    if POWER_LEVELS in conflicted:
        resolved[POWER_LEVELS] = resolve_auth_key(conflicted[POWER_LEVELS])
    r.update(resolved)
    for key, evs in conflicted.items():
        if key[0] == "m.room.join_rules":
            resolved[key] = resolve_auth_key(evs)
    r.update(resolved)
    for key, evs in conflicted.items():
        if key[0] == "m.room.member":
            resolved[key] = resolve_auth_key(evs)
    r.update(resolved)
    for key, evs in conflicted.items():
        if key in resolved:
            continue
        chosen = None
        candidates = ordered(evs)
        for ev in candidates:
            try:
                check_auth(ev, r)
            except AuthError:
                continue
            chosen = ev
            break
        resolved[key] = chosen if chosen is not None else candidates[-1]

    out = dict(unconflicted)
    for key, ev in resolved.items():
        out[key] = ev.event_id
    return out
