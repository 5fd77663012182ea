"""``earliest_state_before``: what was in force before the first timeline event whose
state is known (a room joined over federation: this server's join, with backfilled
history before it that has no state of its own)."""

from __future__ import annotations

from pocketserver.storage import events as ev_store
from pocketserver.storage import state as st
from pocketserver.storage.database import open_memory
from tests.storage.test_state_groups import ROOM, _event, _store

HV = ("m.room.history_visibility", "")


def test_the_state_before_the_join_not_the_backfilled_events() -> None:
    conn = open_memory()
    ev_store.insert_room(conn, ROOM, "10", "@a:test", 0)
    assert st.earliest_state_before(conn, ROOM, *HV) is None
    # The state given at the join: the visibility event (an outlier in real life).
    hv = _event(1, "m.room.history_visibility", "", {"history_visibility": "joined"})
    _store(conn, hv, 1)
    base = st.create_state_group(conn, ROOM, None, {HV: hv.event_id})
    join = _event(2, "m.room.member", "@b:other", {"membership": "join"})
    _store(conn, join, 5)
    st.set_event_state(conn, join.event_id, st.create_state_group(conn, ROOM, base, {("m.room.member", "@b:other"): join.event_id}), None)
    # Backfilled history sorts before the join, with no state.
    _store(conn, _event(3, "m.room.message", None, {"body": "old"}), -1)
    assert st.has_backfilled_history(conn, ROOM)
    assert st.earliest_state_before(conn, ROOM, *HV) == (5, {"history_visibility": "joined"})
    assert st.earliest_state_before(conn, ROOM, "m.room.member", "@b:other") == (5, None)  # its own change undone


def test_a_state_event_as_the_first_gives_what_it_replaced() -> None:
    conn = open_memory()
    ev_store.insert_room(conn, ROOM, "10", "@a:test", 0)
    old = _event(1, "m.room.history_visibility", "", {"history_visibility": "shared"})
    _store(conn, old, 1)
    base = st.create_state_group(conn, ROOM, None, {HV: old.event_id})
    new = _event(2, "m.room.history_visibility", "", {"history_visibility": "invited"})
    _store(conn, new, 7)
    st.set_event_state(conn, new.event_id, st.create_state_group(conn, ROOM, base, {HV: new.event_id}), old.event_id)
    assert not st.has_backfilled_history(conn, ROOM)
    assert st.earliest_state_before(conn, ROOM, *HV) == (7, {"history_visibility": "shared"})
