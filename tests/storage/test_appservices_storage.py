"""Application services' queues on an in-memory database: transactions, positions,
ephemeral items, published rooms."""

from __future__ import annotations

from pocketserver.storage import appservices as store
from pocketserver.storage.database import open_memory


def test_transactions_are_numbered_kept_and_completed_in_order() -> None:
    conn = open_memory()
    state = store.ensure_state(conn, "irc", 10)
    assert (state.stream_pos, state.next_txn_id) == (10, 1)
    # A second ensure keeps what is there (a restart does not reset the position).
    assert store.ensure_state(conn, "irc", 99).stream_pos == 10
    assert store.insert_txn(conn, "irc", b'{"events":[1]}', 1, 1000, 15) == 1
    assert store.insert_txn(conn, "irc", b'{"events":[2]}', 1, 1001, 20) == 2
    assert store.get_state(conn, "irc").stream_pos == 20  # type: ignore[union-attr]
    assert store.count_txns(conn, "irc") == 2 and store.queued_events(conn, "irc") == 2
    oldest = store.oldest_txn(conn, "irc")
    assert oldest is not None and oldest.txn_id == 1 and oldest.body == b'{"events":[1]}'
    store.set_failing(conn, "irc", 1500)
    store.set_failing(conn, "irc", 1600)
    assert store.get_state(conn, "irc").failing_since_ts == 1500  # type: ignore[union-attr]
    store.complete_txn(conn, "irc", 1, 2000)
    state2 = store.get_state(conn, "irc")
    assert state2 is not None and state2.last_success_ts == 2000 and state2.failing_since_ts is None
    assert store.oldest_txn(conn, "irc").txn_id == 2  # type: ignore[union-attr]
    # Another AS has its own numbering.
    store.ensure_state(conn, "tg", 0)
    assert store.insert_txn(conn, "tg", b"{}", 0, 1, 1) == 1


def test_ephemeral_queue_is_bounded_and_drained_in_order() -> None:
    conn = open_memory()
    for i in range(10):
        store.enqueue(conn, "irc", "ephemeral", str(i).encode())
    store.trim_queue(conn, "irc", 4)
    items = store.queued(conn, "irc", 100)
    assert [p for _, _, p in items] == [b"6", b"7", b"8", b"9"]
    store.delete_queued_upto(conn, "irc", items[1][0])
    assert [p for _, _, p in store.queued(conn, "irc", 100)] == [b"8", b"9"]


def test_published_rooms_per_network() -> None:
    conn = open_memory()
    store.set_room_published(conn, "irc", "libera", "!a:x", True)
    store.set_room_published(conn, "irc", "oftc", "!b:x", True)
    store.set_room_published(conn, "tg", "libera", "!c:x", True)
    assert store.published_rooms(conn, "irc", "libera") == ["!a:x"]
    assert sorted(store.published_rooms(conn)) == ["!a:x", "!b:x", "!c:x"]
    store.set_room_published(conn, "irc", "libera", "!a:x", False)
    assert store.published_rooms(conn, "irc", "libera") == []
