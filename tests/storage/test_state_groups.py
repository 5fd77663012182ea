"""State snapshots plus deltas: correct state at every group, and compact storage."""

from __future__ import annotations

from pocketserver.protocol.events import Event
from pocketserver.protocol.room_versions import KNOWN_ROOM_VERSIONS
from pocketserver.storage import events as ev_store
from pocketserver.storage import state as st
from pocketserver.storage.database import open_memory

RV = KNOWN_ROOM_VERSIONS["10"]
ROOM = "!room:test"


def _event(n: int, etype: str, state_key: str | None, content: dict[str, object]) -> Event:
    pdu: dict[str, object] = {
        "type": etype,
        "sender": "@a:test",
        "room_id": ROOM,
        "content": content,
        "depth": n,
        "origin_server_ts": n,
        "prev_events": [],
        "auth_events": [],
    }
    if state_key is not None:
        pdu["state_key"] = state_key
    return Event.from_pdu(pdu, RV, event_id=f"$e{n}")


def _store(conn, ev: Event, pos: int) -> None:  # type: ignore[no-untyped-def]
    ev_store.insert_event(conn, ev_store.NewEvent(ev, pos), 0)


def test_deltas_give_the_right_state_and_stay_small() -> None:
    conn = open_memory()
    ev_store.insert_room(conn, ROOM, "10", "@a:test", 0)
    create = _event(0, "m.room.create", "", {"creator": "@a:test"})
    _store(conn, create, 1)
    group = st.create_state_group(conn, ROOM, None, {("m.room.create", ""): "$e0"})
    expected = {("m.room.create", ""): "$e0"}
    groups = [(group, dict(expected))]
    n_members = 2000
    for i in range(1, n_members + 1):
        ev = _event(i, "m.room.member", f"@u{i}:test", {"membership": "join"})
        _store(conn, ev, i + 1)
        group = st.create_state_group(conn, ROOM, group, {("m.room.member", f"@u{i}:test"): ev.event_id})
        expected[("m.room.member", f"@u{i}:test")] = ev.event_id
        if i % 250 == 0:
            groups.append((group, dict(expected)))
    # A user leaves: the key is replaced; a key is removed entirely.
    ev = _event(n_members + 1, "m.room.member", "@u1:test", {"membership": "leave"})
    _store(conn, ev, n_members + 2)
    group = st.create_state_group(conn, ROOM, group, {("m.room.member", "@u1:test"): ev.event_id})
    expected[("m.room.member", "@u1:test")] = ev.event_id
    group = st.create_state_group(conn, ROOM, group, {("m.room.member", "@u2:test"): None})
    del expected[("m.room.member", "@u2:test")]
    groups.append((group, dict(expected)))
    for g, want in groups:
        assert st.load_state_group(conn, g) == want
    # Compactness: rows stay within a small constant factor of the number of state
    # events, instead of one full copy per event (which would be ~2,000,000 rows).
    (rows,) = conn.execute("SELECT COUNT(*) FROM state_group_entries").fetchone()
    assert rows < 4 * (n_members + 3)


def test_state_before_event_undoes_the_event() -> None:
    conn = open_memory()
    ev_store.insert_room(conn, ROOM, "10", "@a:test", 0)
    first = _event(1, "m.room.topic", "", {"topic": "one"})
    second = _event(2, "m.room.topic", "", {"topic": "two"})
    _store(conn, first, 1)
    g1 = st.create_state_group(conn, ROOM, None, {("m.room.topic", ""): "$e1"})
    st.set_event_state(conn, "$e1", g1, None)
    _store(conn, second, 2)
    g2 = st.create_state_group(conn, ROOM, g1, {("m.room.topic", ""): "$e2"})
    st.set_event_state(conn, "$e2", g2, "$e1")
    assert st.state_before_event(conn, "$e2") == {("m.room.topic", ""): "$e1"}
    assert st.state_before_event(conn, "$e1") == {}
    assert st.state_after_event(conn, "$e2") == {("m.room.topic", ""): "$e2"}


def test_event_json_is_stored_once_and_compressed() -> None:
    conn = open_memory()
    ev_store.insert_room(conn, ROOM, "10", "@a:test", 0)
    body = "log line repeated " * 200
    ev = _event(1, "m.room.message", None, {"msgtype": "m.text", "body": body})
    _store(conn, ev, 1)
    (blob,) = conn.execute("SELECT json FROM events WHERE event_id = '$e1'").fetchone()
    assert len(blob) < len(body) // 4
    rec = ev_store.get_event(conn, "$e1")
    assert rec is not None and rec.event.content["body"] == body
