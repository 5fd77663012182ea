"""Sliding sync's connection store: bounded per device and in all (least recently used
first), the positions a connection keeps, and how little a connection holds."""

from __future__ import annotations

import sys
import tracemalloc

from pocketserver.protocol.sliding_sync import RequiredState, RoomConfig
from pocketserver.services.sliding_sync import (
    MAX_STATES_PER_CONNECTION,
    Connection,
    ConnectionStore,
    ConnState,
    SentRoom,
)


def test_connections_are_bounded_per_device_least_recently_used_first() -> None:
    store = ConnectionStore(max_connections=100, per_device=3)
    first = store.new(("@a:x", "DEV", "c0"))
    for i in range(1, 3):
        store.new(("@a:x", "DEV", f"c{i}"))
    assert store.get(("@a:x", "DEV", "c0")) is first  # used: now the most recent
    store.new(("@a:x", "DEV", "c3"))
    assert store.get(("@a:x", "DEV", "c1")) is None  # the least recently used went
    assert store.get(("@a:x", "DEV", "c0")) is first
    # Other devices are not counted against this one.
    store.new(("@a:x", "OTHER", "c0"))
    assert store.statistics()["connections"] == 4


def test_connections_are_bounded_in_all() -> None:
    store = ConnectionStore(max_connections=5, per_device=10)
    for i in range(8):
        store.new((f"@u{i}:x", "DEV", ""))
    assert store.statistics()["connections"] == 5
    assert store.get(("@u0:x", "DEV", "")) is None and store.get(("@u7:x", "DEV", "")) is not None


def test_a_new_connection_with_the_same_id_replaces_the_old_one() -> None:
    store = ConnectionStore()
    old = store.new(("@a:x", "DEV", "main"))
    new = store.new(("@a:x", "DEV", "main"))
    assert old.number != new.number and store.get(("@a:x", "DEV", "main")) is new


def test_positions_kept_by_a_connection() -> None:
    conn = Connection(1)
    seqs = [conn.issue(ConnState(i, 0), None) for i in range(3)]
    # Confirming a position forgets those before it, keeps those after it (a retry).
    assert conn.confirm(seqs[1]) is not None
    assert seqs[0] not in conn.states and seqs[2] in conn.states
    for i in range(10):
        conn.issue(ConnState(10 + i, 0), seqs[1])
    assert len(conn.states) == MAX_STATES_PER_CONNECTION and seqs[1] in conn.states
    assert conn.confirm(999) is None


def test_a_connection_of_twenty_rooms_holds_a_few_kilobytes() -> None:
    config = RoomConfig(1, (RequiredState(frozenset({("m.room.name", ""), ("m.room.member", "$ME")}), lazy_members=True),))
    room_ids = [f"!room{i:04d}abcdefghijklmnopqrstuvwxyz:example.org" for i in range(20)]
    for r in room_ids:
        sys.intern(r)  # room IDs are interned: shared with the rest of the server
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    conn = Connection(1)
    state = ConnState(123456, 7, {sys.intern(r): SentRoom(123456, conn.intern(config), "join") for r in room_ids},
                      {"all_rooms": 200})
    conn.issue(state, None)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert grown < 6 * 1024, grown
