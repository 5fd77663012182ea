"""storage/event_graph.py on in-memory SQLite: a server's place in a room, walks back
through the graph, auth chains, the received-transactions ledger."""

from __future__ import annotations

from pocketserver.protocol.room_versions import KNOWN_ROOM_VERSIONS
from pocketserver.storage import event_graph as graph
from pocketserver.storage import events as ev_store
from pocketserver.storage import state as state_store
from pocketserver.storage.database import open_memory
from pocketserver.storage.events import NewEvent
from tests.federation.remote import RemoteRoom


def _stored_room() -> tuple[object, RemoteRoom]:
    conn = open_memory()
    rv = KNOWN_ROOM_VERSIONS["10"]
    room = RemoteRoom.create("a.test", "@alice:a.test", rv)
    ev_store.insert_room(conn, room.room_id, "10", "@alice:a.test", 0)
    for i, eid in enumerate(room.timeline):
        ev = room.events[eid]
        ev_store.insert_event(conn, NewEvent(ev, i + 1), 0)
        if ev.membership is not None and ev.state_key is not None:
            state_store.set_membership(conn, room.room_id, ev.state_key, ev.membership, eid, i + 1, False)
    return conn, room


def test_server_in_room_matches_whole_server_names() -> None:
    conn, room = _stored_room()
    assert graph.server_in_room(conn, room.room_id, "a.test")
    assert not graph.server_in_room(conn, room.room_id, "test")  # "@alice:a.test" is not of "test"
    assert not graph.server_in_room(conn, room.room_id, "b.a.test")
    assert graph.joined_users_of_server(conn, room.room_id, "a.test", 5) == 1


def test_walk_back_and_auth_chain() -> None:
    conn, room = _stored_room()
    order = room.timeline
    last = order[-1]
    back = graph.walk_back(conn, room.room_id, [last], limit=10, include_start=True)
    assert back == list(reversed(order))
    assert graph.walk_back(conn, room.room_id, [last], limit=2, include_start=True) == back[:2]
    assert graph.walk_back(conn, room.room_id, [last], limit=10, stop_at=[order[1]], include_start=False) == list(
        reversed(order[2:-1])
    )
    chain = graph.auth_chain_ids(conn, [last])
    assert set(room.events[last].auth_event_ids) <= chain and last not in chain


def test_received_transactions_ledger() -> None:
    conn = open_memory()
    assert graph.get_received_transaction(conn, "a.test", "t1") is None
    graph.put_received_transaction(conn, "a.test", "t1", {"pdus": {}}, 1000)
    assert graph.get_received_transaction(conn, "a.test", "t1") == {"pdus": {}}
    assert graph.get_received_transaction(conn, "b.test", "t1") is None
    assert graph.delete_old_received_transactions(conn, 2000) == 1
    assert graph.get_received_transaction(conn, "a.test", "t1") is None
