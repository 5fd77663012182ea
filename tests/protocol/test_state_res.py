"""State resolution v1, v2 and v2.1 on small room DAGs with known answers.

Each scenario builds a room: every event gets, as its ``auth_events``, the auth events
selection from the state before it (the resolution of its prev events' states), so the
DAG is what real servers would produce. The final state is the resolution at a merge
event. Scenarios follow the classic races (in the spirit of Synapse's tests/state/test_v2.py,
written from scratch): a ban against a power-levels change, a topic reset by a banned
user, join-rule evasion, power-level races, mainline topic fights, concurrent
membership, and the v2 / v2.1 difference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from pocketserver.protocol.auth_rules import auth_types_for_event
from pocketserver.protocol.events import Event, StateKey
from pocketserver.protocol.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from pocketserver.protocol.state_res import (
    _conflicted_subgraph,
    _Graph,
    resolve_state,
    separate,
)

ALICE, BOB, CHARLIE, DAVE, ZARA = (
    "@alice:a.example",
    "@bob:b.example",
    "@charlie:c.example",
    "@dave:d.example",
    "@zara:z.example",
)
V2_VERSIONS = [str(v) for v in range(2, 12)]


class Room:
    """A room DAG built event by event; state is tracked per event."""

    def __init__(self, rv: RoomVersion) -> None:
        self.rv = rv
        self.events: dict[str, Event] = {}
        self.by_name: dict[str, Event] = {}
        self.state_after: dict[str, dict[StateKey, str]] = {}
        self.ts = 0

    def eid(self, name: str) -> str:
        return f"${name}:test" if self.rv.uses_event_id_in_pdu else f"${name}"

    @property
    def room_id(self) -> str:
        if self.rv.room_id_is_create_event_hash:
            return "!" + self.eid("CREATE")[1:]
        return "!room:a.example"

    def resolve(self, prev_names: Sequence[str]) -> dict[StateKey, str]:
        sets = [self.state_after[self.eid(p)] for p in prev_names]
        return resolve_state(self.rv, sets, self.events)

    def add(
        self,
        name: str,
        etype: str,
        sender: str,
        prev: Sequence[str],
        state_key: str | None = None,
        content: Mapping[str, Any] | None = None,
        ts: int | None = None,
    ) -> Event:
        rv = self.rv
        eid = self.eid(name)
        before = self.resolve(prev) if prev else {}
        fields = {"type": etype, "sender": sender, "state_key": state_key, "content": content or {}}
        auth = sorted(before[k] for k in auth_types_for_event(fields, rv) if k in before)
        prev_ids = [self.eid(p) for p in prev]
        depth = 1 + max((self.events[p].depth for p in prev_ids), default=0)
        self.ts += 1
        pdu: dict[str, Any] = {
            "type": etype,
            "sender": sender,
            "content": dict(content or {}),
            "prev_events": [[p, {}] for p in prev_ids] if rv.uses_event_id_in_pdu else prev_ids,
            "auth_events": [[a, {}] for a in auth] if rv.uses_event_id_in_pdu else auth,
            "depth": depth,
            "origin_server_ts": self.ts if ts is None else ts,
        }
        if etype == "m.room.create" and not rv.implicit_room_creator:
            pdu["content"]["creator"] = sender
        if not (etype == "m.room.create" and rv.room_id_is_create_event_hash):
            pdu["room_id"] = self.room_id
        if state_key is not None:
            pdu["state_key"] = state_key
        if rv.uses_event_id_in_pdu:
            pdu["event_id"] = eid
        ev = Event.from_pdu(pdu, rv, event_id=eid)
        self.events[eid] = ev
        self.by_name[name] = ev
        after = dict(before)
        if state_key is not None:
            after[(etype, state_key)] = eid
        self.state_after[eid] = after
        return ev

    # -- shorthands --------------------------------------------------------------------

    def member(
        self,
        name: str,
        user: str,
        membership: str,
        prev: Sequence[str],
        sender: str | None = None,
        **kw: Any,
    ) -> Event:
        return self.add(
            name, "m.room.member", sender or user, prev, user, {"membership": membership}, **kw
        )

    def power(
        self, name: str, sender: str, users: Mapping[str, int], prev: Sequence[str], **kw: Any
    ) -> Event:
        if self.rv.privileged_creators:
            users = {u: v for u, v in users.items() if u != ALICE}
        return self.add(name, "m.room.power_levels", sender, prev, "", {"users": dict(users)}, **kw)

    def topic(self, name: str, sender: str, prev: Sequence[str], **kw: Any) -> Event:
        return self.add(name, "m.room.topic", sender, prev, "", {"topic": name}, **kw)

    def named_state(self, state: Mapping[StateKey, str]) -> dict[StateKey, str]:
        names = {ev.event_id: n for n, ev in self.by_name.items()}
        return {k: names[v] for k, v in state.items()}


def initial_room(rv: RoomVersion) -> Room:
    """create, alice joins, power levels (alice 100), public join rules, bob, charlie and
    zara join."""
    r = Room(rv)
    r.add("CREATE", "m.room.create", ALICE, [], "", {})
    r.member("IMA", ALICE, "join", ["CREATE"])
    r.power("IPOWER", ALICE, {ALICE: 100}, ["IMA"])
    r.add("IJR", "m.room.join_rules", ALICE, ["IPOWER"], "", {"join_rule": "public"})
    r.member("IMB", BOB, "join", ["IJR"])
    r.member("IMC", CHARLIE, "join", ["IMB"])
    r.member("IMZ", ZARA, "join", ["IMC"])
    return r


def final_state(r: Room, heads: Sequence[str]) -> dict[StateKey, str]:
    return r.named_state(r.resolve(heads))


M = "m.room.member"
PL = ("m.room.power_levels", "")
TOPIC = ("m.room.topic", "")
JR = ("m.room.join_rules", "")


# -- v2 / v2.1 scenarios ---------------------------------------------------------------------


@pytest.mark.parametrize("version", V2_VERSIONS + ["12"])
def test_ban_vs_power_levels(version: str) -> None:
    """Alice bans bob while bob, concurrently, rewrites the power levels: the ban (by the
    more powerful sender) sorts first, so bob's change fails."""
    r = initial_room(KNOWN_ROOM_VERSIONS[version])
    r.power("PA", ALICE, {ALICE: 100, BOB: 50}, ["IMZ"])
    r.member("MB", BOB, "ban", ["PA"], sender=ALICE)
    r.power("PB", BOB, {ALICE: 100, BOB: 50, CHARLIE: 50}, ["PA"])
    s = final_state(r, ["MB", "PB"])
    assert s[PL] == "PA"
    assert s[(M, BOB)] == "MB"


@pytest.mark.parametrize("version", V2_VERSIONS + ["12"])
def test_topic_reset_by_banned_user(version: str) -> None:
    """Bob changes the topic while alice bans him: the topic falls back to alice's."""
    r = initial_room(KNOWN_ROOM_VERSIONS[version])
    r.topic("T1", ALICE, ["IMZ"])
    r.power("PA", ALICE, {ALICE: 100, BOB: 50}, ["T1"])
    r.topic("T2", BOB, ["PA"])
    r.member("MB", BOB, "ban", ["PA"], sender=ALICE)
    s = final_state(r, ["T2", "MB"])
    assert s[TOPIC] == "T1"
    assert s[(M, BOB)] == "MB"
    assert s[PL] == "PA"


@pytest.mark.parametrize("version", V2_VERSIONS + ["12"])
def test_join_rule_evasion(version: str) -> None:
    """Dave joins a public room while alice makes it invite-only: the join rules win and
    dave's join does not survive."""
    r = initial_room(KNOWN_ROOM_VERSIONS[version])
    r.add("JR", "m.room.join_rules", ALICE, ["IMZ"], "", {"join_rule": "invite"})
    r.member("MD", DAVE, "join", ["IMZ"])
    s = final_state(r, ["JR", "MD"])
    assert s[JR] == "JR"
    assert (M, DAVE) not in s


@pytest.mark.parametrize("version", V2_VERSIONS + ["12"])
def test_power_level_race(version: str) -> None:
    """Alice demotes bob while bob promotes charlie: alice's change sorts first and bob's
    then fails; the other way round both would stand."""
    r = initial_room(KNOWN_ROOM_VERSIONS[version])
    r.power("PA", ALICE, {ALICE: 100, BOB: 50}, ["IMZ"])
    r.power("PB", BOB, {ALICE: 100, BOB: 50, CHARLIE: 50}, ["PA"], ts=10)
    r.power("PC", ALICE, {ALICE: 100, BOB: 0}, ["PA"], ts=20)
    s = final_state(r, ["PB", "PC"])
    assert s[PL] == "PC"


@pytest.mark.parametrize("version", V2_VERSIONS + ["12"])
def test_power_level_change_that_still_passes_is_applied_last(version: str) -> None:
    """Bob's change sorts after alice's (lower power) and still passes against it."""
    r = initial_room(KNOWN_ROOM_VERSIONS[version])
    r.power("PA", ALICE, {ALICE: 100, BOB: 50}, ["IMZ"])
    r.power("PB", BOB, {ALICE: 100, BOB: 50, CHARLIE: 50}, ["PA"], ts=10)
    r.power("PC", ALICE, {ALICE: 100, BOB: 50, CHARLIE: 0}, ["PA"], ts=20)
    s = final_state(r, ["PB", "PC"])
    assert s[PL] == "PB"


@pytest.mark.parametrize("version", V2_VERSIONS + ["12"])
def test_mainline_topic_fight(version: str) -> None:
    """Charlie's topic, authorised by the newer power levels, beats bob's later-timestamped
    topic based on an older point of the mainline."""
    r = initial_room(KNOWN_ROOM_VERSIONS[version])
    r.power("PA", ALICE, {ALICE: 100, BOB: 50}, ["IMZ"])
    r.topic("T1", BOB, ["PA"])
    r.power("PB", ALICE, {ALICE: 100, BOB: 50, CHARLIE: 50}, ["T1"])
    r.topic("T2", CHARLIE, ["PB"], ts=100)
    r.topic("T3", BOB, ["T1"], ts=200)
    s = final_state(r, ["T2", "T3"])
    assert s[TOPIC] == "T2"
    assert s[PL] == "PB"


@pytest.mark.parametrize("version", V2_VERSIONS + ["12"])
def test_same_mainline_topics_by_timestamp(version: str) -> None:
    r = initial_room(KNOWN_ROOM_VERSIONS[version])
    r.power("PA", ALICE, {ALICE: 100, BOB: 50, CHARLIE: 50}, ["IMZ"])
    r.topic("T1", BOB, ["PA"], ts=300)
    r.topic("T2", CHARLIE, ["PA"], ts=200)
    assert final_state(r, ["T1", "T2"])[TOPIC] == "T1"
    r.topic("T3", CHARLIE, ["PA"], ts=400)
    assert final_state(r, ["T1", "T3"])[TOPIC] == "T3"


@pytest.mark.parametrize("version", V2_VERSIONS + ["12"])
def test_ban_beats_concurrent_join(version: str) -> None:
    """Dave is invited; he accepts while alice bans him on another branch."""
    r = initial_room(KNOWN_ROOM_VERSIONS[version])
    r.add("JR", "m.room.join_rules", ALICE, ["IMZ"], "", {"join_rule": "invite"})
    r.member("ID", DAVE, "invite", ["JR"], sender=ALICE)
    r.member("MD", DAVE, "join", ["ID"])
    r.member("BD", DAVE, "ban", ["ID"], sender=ALICE)
    r.add("MSG", "m.room.message", DAVE, ["MD"], None, {"body": "hi"})
    s = final_state(r, ["MSG", "BD"])
    assert s[(M, DAVE)] == "BD"


@pytest.mark.parametrize("version", V2_VERSIONS + ["12"])
def test_concurrent_memberships(version: str) -> None:
    """Unrelated membership changes on two branches all survive; a self-leave and a kick of
    the same user resolve to the kick (a power event, applied first, then the leave fails
    because charlie is no longer joined)."""
    r = initial_room(KNOWN_ROOM_VERSIONS[version])
    r.member("MD", DAVE, "join", ["IMZ"])
    r.member("LC", CHARLIE, "leave", ["MD"])
    r.member("KC", CHARLIE, "leave", ["IMZ"], sender=ALICE)
    r.member("LZ", ZARA, "leave", ["KC"])
    s = final_state(r, ["LC", "LZ"])
    assert s[(M, DAVE)] == "MD"
    assert s[(M, ZARA)] == "LZ"
    assert s[(M, CHARLIE)] == "KC"


@pytest.mark.parametrize("version", V2_VERSIONS + ["12"])
def test_unconflicted_state_is_kept(version: str) -> None:
    r = initial_room(KNOWN_ROOM_VERSIONS[version])
    r.topic("T1", ALICE, ["IMZ"])
    r.add("N1", "m.room.name", ALICE, ["T1"], "", {"name": "n"})
    r.topic("T2", ALICE, ["T1"])
    s = final_state(r, ["N1", "T2"])
    assert s[("m.room.name", "")] == "N1"
    assert s[TOPIC] == "T2"
    assert s[("m.room.create", "")] == "CREATE"
    assert len(s) == 9


# -- v2 versus v2.1 ----------------------------------------------------------------------------


def _ban_with_stale_power(version: str) -> tuple[Room, list[dict[StateKey, str]]]:
    """Bob (50) bans charlie under the old power levels PA; alice's PB demotes bob to 0.
    Both forks already carry PB (so it is unconflicted); only charlie's membership
    differs."""
    r = initial_room(KNOWN_ROOM_VERSIONS[version])
    r.power("PA", ALICE, {ALICE: 100, BOB: 50}, ["IMZ"])
    r.member("BC", CHARLIE, "ban", ["PA"], sender=BOB)
    r.power("PB", ALICE, {ALICE: 100, BOB: 0}, ["PA"])
    with_ban = dict(r.state_after[r.eid("PB")])
    with_ban[(M, CHARLIE)] = r.eid("BC")
    without = dict(r.state_after[r.eid("PB")])
    return r, [with_ban, without]


@pytest.mark.parametrize("version", ["11", "12"])
def test_v21_iterative_checks_start_from_empty_state(version: str) -> None:
    """v2 checks bob's ban against the unconflicted state (where bob has 0) and drops it;
    v2.1 starts from an empty state, so the ban is checked against its own auth events
    (bob 50) and stands, and charlie's older join then loses to it."""
    r, sets = _ban_with_stale_power(version)
    s = r.named_state(resolve_state(r.rv, sets, r.events))
    assert s[PL] == "PB"
    assert s[(M, CHARLIE)] == ("IMC" if version == "11" else "BC")


def test_v21_conflicted_subgraph() -> None:
    """Events on auth paths between conflicted events join the full conflicted set."""
    r = initial_room(KNOWN_ROOM_VERSIONS["12"])
    r.power("PA", ALICE, {ALICE: 100, BOB: 50}, ["IMZ"])
    r.member("MD", DAVE, "join", ["PA"])
    r.power("PB", BOB, {ALICE: 100, BOB: 50, DAVE: 10}, ["MD"])
    g = _Graph(r.rv, r.events.get)
    conflicted = [g.intern(r.eid("PA")), g.intern(r.eid("PB"))]
    sub = {g.events[i].event_id for i in _conflicted_subgraph(g, conflicted)}  # type: ignore[union-attr]
    # PB cites PA directly and bob's membership (which cites IPOWER, not PA): the
    # subgraph is exactly the two endpoints; dave's join is not on a path to PA from PB.
    assert sub == {r.eid("PA"), r.eid("PB")}
    r.power("PC", ALICE, {ALICE: 100, BOB: 50, DAVE: 20}, ["PB"])
    r.topic("T", DAVE, ["PC"])
    g = _Graph(r.rv, r.events.get)
    conflicted = [g.intern(r.eid("T")), g.intern(r.eid("PA"))]
    sub = {g.events[i].event_id for i in _conflicted_subgraph(g, conflicted)}  # type: ignore[union-attr]
    # T -> PC -> PB -> PA and T -> MD(dave's join) -> PA
    assert sub == {r.eid(n) for n in ("T", "PC", "PB", "PA", "MD")}


def test_separate_counts_missing_keys_as_conflicted() -> None:
    a = {("t", ""): "$1", ("u", ""): "$2"}
    b = {("t", ""): "$1", ("v", ""): "$3"}
    unconflicted, conflicted = separate([a, b])
    assert unconflicted == {("t", ""): "$1"}
    assert conflicted == {("u", ""): {"$2"}, ("v", ""): {"$3"}}


def test_auth_difference_callable_is_used() -> None:
    r = initial_room(KNOWN_ROOM_VERSIONS["10"])
    r.power("PA", ALICE, {ALICE: 100, BOB: 50}, ["IMZ"])
    r.member("MB", BOB, "ban", ["PA"], sender=ALICE)
    r.power("PB", BOB, {ALICE: 100, BOB: 50, CHARLIE: 50}, ["PA"])
    calls: list[Any] = []

    def diff(sets: Any, conflicted: Any) -> set[str]:
        calls.append((sets, conflicted))
        return set()

    sets = [r.state_after[r.eid("MB")], r.state_after[r.eid("PB")]]
    s = resolve_state(r.rv, sets, r.events, auth_difference=diff)
    assert calls and calls[0][1] is None
    assert r.named_state(s)[PL] == "PA"


def test_fetch_callable_and_trivial_inputs() -> None:
    r = initial_room(KNOWN_ROOM_VERSIONS["10"])
    r.topic("T1", ALICE, ["IMZ"])
    r.topic("T2", ALICE, ["IMZ"])
    sets = [r.state_after[r.eid("T1")], r.state_after[r.eid("T2")]]
    assert resolve_state(r.rv, sets, r.events.get) == resolve_state(r.rv, sets, r.events)
    assert resolve_state(r.rv, [], r.events) == {}
    assert resolve_state(r.rv, sets[:1], r.events) == sets[0]


# -- v1 -----------------------------------------------------------------------------------------


def test_v1_topic_conflict_prefers_depth_not_timestamp() -> None:
    """v1 picks the deepest event that passes auth; v2 orders by mainline then timestamp."""
    results = {}
    for version in ("1", "2"):
        r = initial_room(KNOWN_ROOM_VERSIONS[version])
        r.topic("T1", ALICE, ["IMZ"], ts=500)
        r.topic("T2", ALICE, ["T1"], ts=100)  # deeper, older timestamp
        r.topic("T3", ALICE, ["IMZ"], ts=900)
        results[version] = final_state(r, ["T2", "T3"])[TOPIC]
    assert results == {"1": "T2", "2": "T3"}


def test_v1_ban_vs_power_levels() -> None:
    """v1 resolves the power levels first (ascending depth: PA, then PB if allowed)
    against auth events taken from the *unconflicted* state only; bob's membership is
    conflicted (joined / banned), so his PB has no membership to stand on and fails.
    The ban then stands against PA."""
    r = initial_room(KNOWN_ROOM_VERSIONS["1"])
    r.power("PA", ALICE, {ALICE: 100, BOB: 50}, ["IMZ"])
    r.member("MB", BOB, "ban", ["PA"], sender=ALICE)
    r.power("PB", BOB, {ALICE: 100, BOB: 50, CHARLIE: 50}, ["PA"])
    s = final_state(r, ["MB", "PB"])
    assert s[(M, BOB)] == "MB"
    assert s[PL] == "PA"


def test_v1_power_level_conflict_stops_at_first_failure() -> None:
    r = initial_room(KNOWN_ROOM_VERSIONS["1"])
    r.power("PA", ALICE, {ALICE: 100, BOB: 50}, ["IMZ"])
    r.power("PC", ALICE, {ALICE: 100, BOB: 0}, ["PA"])
    r.power("PB", BOB, {ALICE: 100, BOB: 50, CHARLIE: 50}, ["PA"])
    r.power("PB2", BOB, {ALICE: 100, BOB: 50, CHARLIE: 40}, ["PB"])
    s = final_state(r, ["PC", "PB2"])
    # ascending depth: PC (depth 10) then PB2 (depth 11) checked against PC: bob has 0.
    assert s[PL] == "PC"


def test_v1_keys_in_one_set_only_are_not_conflicts() -> None:
    r = initial_room(KNOWN_ROOM_VERSIONS["1"])
    r.topic("T1", ALICE, ["IMZ"])
    r.add("N1", "m.room.name", ALICE, ["IMZ"], "", {"name": "n"})
    s = final_state(r, ["T1", "N1"])
    assert s[TOPIC] == "T1" and s[("m.room.name", "")] == "N1"
