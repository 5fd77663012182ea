"""Sliding sync's reads: a user's rooms with their newest event, bump stamps, and the
current state for a list of keys in one query."""

from __future__ import annotations

from typing import Any

from pocketserver.protocol.events import Event
from pocketserver.protocol.room_versions import KNOWN_ROOM_VERSIONS
from pocketserver.protocol.sliding_sync import BUMP_EVENT_TYPES
from pocketserver.storage import events as ev_store
from pocketserver.storage import sliding_sync as ss_store
from pocketserver.storage import state as st
from pocketserver.storage.database import open_memory

RV = KNOWN_ROOM_VERSIONS["10"]
ME = "@me:test"


def _event(room: str, n: int, etype: str, state_key: str | None, content: dict[str, Any], sender: str = ME) -> Event:
    pdu: dict[str, Any] = {
        "type": etype, "sender": sender, "room_id": room, "content": content, "depth": n,
        "origin_server_ts": n, "prev_events": [], "auth_events": [],
    }
    if state_key is not None:
        pdu["state_key"] = state_key
    return Event.from_pdu(pdu, RV, event_id=f"${room[1:3]}{n}")


def test_user_rooms_bump_stamps_and_keyed_state() -> None:
    conn = open_memory()
    pos = 0
    state: dict[str, dict[tuple[str, str], str]] = {}

    def put(room: str, etype: str, state_key: str | None, content: dict[str, Any], sender: str = ME) -> int:
        nonlocal pos
        pos += 1
        ev = _event(room, pos, etype, state_key, content, sender)
        ev_store.insert_event(conn, ev_store.NewEvent(ev, pos), 0)
        if state_key is not None:
            state.setdefault(room, {})[(etype, state_key)] = ev.event_id
            group = st.create_state_group(conn, room, None, dict(state[room]))
            st.set_current_state(conn, room, group, dict(state[room]))
            if etype == "m.room.member":
                st.set_membership(conn, room, state_key, content["membership"], ev.event_id, pos, True)
        return pos

    for room in ("!aa:test", "!bb:test", "!cc:test"):
        ev_store.insert_room(conn, room, "10", ME, 0)
        put(room, "m.room.create", "", {"creator": ME})
        put(room, "m.room.member", ME, {"membership": "join"})
    msg = put("!aa:test", "m.room.message", None, {"body": "hi"})
    reaction = put("!aa:test", "m.reaction", None, {})
    put("!bb:test", "m.room.name", "", {"name": "B"})
    kick = put("!cc:test", "m.room.member", ME, {"membership": "leave"}, sender="@admin:test")

    rooms = {r.room_id: r for r in ss_store.user_rooms(conn, ME, ("join", "leave"))}
    assert rooms["!aa:test"].latest_pos == reaction and rooms["!aa:test"].membership == "join"
    assert rooms["!cc:test"].membership == "leave" and rooms["!cc:test"].membership_sender == "@admin:test"
    assert rooms["!cc:test"].membership_pos == kick
    assert set(ss_store.user_rooms(conn, ME, ("join",))) == {rooms["!aa:test"], rooms["!bb:test"]}

    # A reaction does not bump; a message does; the create event does in a quiet room.
    assert ss_store.bump_stamp(conn, "!aa:test", BUMP_EVENT_TYPES) == msg
    assert ss_store.bump_stamp(conn, "!aa:test", BUMP_EVENT_TYPES, upto=msg - 1) == 1
    assert ss_store.bump_stamp(conn, "!nosuch:test", BUMP_EVENT_TYPES) is None

    keys = [("m.room.name", ""), ("m.room.create", ""), ("m.room.topic", ""), ("m.room.member", ME)]
    assert ss_store.current_state_ids(conn, "!bb:test", keys) == st.get_current_state_ids(conn, "!bb:test", keys)
    assert ("m.room.topic", "") not in ss_store.current_state_ids(conn, "!bb:test", keys)
    assert ss_store.has_state(conn, "!bb:test", "m.room.name", "")
    assert not ss_store.has_state(conn, "!aa:test", "m.room.name", "")
