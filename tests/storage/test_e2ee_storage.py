"""The end-to-end encryption tables: claim order and exclusivity, to-device queues,
device-list deltas computed against room memberships."""

from __future__ import annotations

from typing import Any

from pocketserver.storage import device_lists, e2e_keys, to_device
from pocketserver.storage.database import open_memory
from pocketserver.storage.streams import next_stream_pos


def _device(conn: Any, user: str, device: str) -> None:
    conn.execute(
        "INSERT INTO devices (user_id, device_id, created_ts) VALUES (?, ?, 0)", (user, device)
    )


def _member(conn: Any, room: int, user: str, membership: str, pos: int) -> None:
    # The rooms engine maintains room_memberships; here rows are written directly.
    conn.execute(
        "INSERT OR REPLACE INTO room_memberships (room_nid, user_id, membership, event_nid,"
        " stream_pos, is_local) VALUES (?, ?, ?, 0, ?, 1)",
        (room, user, membership, pos),
    )


def test_one_time_keys_are_claimed_oldest_first_and_once() -> None:
    conn = open_memory()
    e2e_keys.insert_one_time_keys(conn, "@a:x", "D", [("signed_curve25519", "k2", {"key": "2"})])
    e2e_keys.insert_one_time_keys(conn, "@a:x", "D", [("signed_curve25519", "k1", {"key": "1"})])
    e2e_keys.insert_one_time_keys(conn, "@a:x", "D", [("curve25519", "c", "raw")])
    assert e2e_keys.count_one_time_keys(conn, "@a:x", "D") == {"signed_curve25519": 2, "curve25519": 1}
    assert e2e_keys.claim_one_time_key(conn, "@a:x", "D", "signed_curve25519") == ("k2", {"key": "2"})
    assert e2e_keys.claim_one_time_key(conn, "@a:x", "D", "signed_curve25519") == ("k1", {"key": "1"})
    assert e2e_keys.claim_one_time_key(conn, "@a:x", "D", "signed_curve25519") is None
    assert e2e_keys.claim_one_time_key(conn, "@a:x", "D", "curve25519") == ("c", "raw")


def test_fallback_key_stays_after_use_until_replaced() -> None:
    conn = open_memory()
    e2e_keys.set_fallback_key(conn, "@a:x", "D", "signed_curve25519", "f1", {"key": "f"})
    assert e2e_keys.unused_fallback_key_types(conn, "@a:x", "D") == ["signed_curve25519"]
    for _ in range(2):
        assert e2e_keys.claim_fallback_key(conn, "@a:x", "D", "signed_curve25519") == ("f1", {"key": "f"})
    assert e2e_keys.unused_fallback_key_types(conn, "@a:x", "D") == []
    e2e_keys.set_fallback_key(conn, "@a:x", "D", "signed_curve25519", "f2", {"key": "g"})
    assert e2e_keys.unused_fallback_key_types(conn, "@a:x", "D") == ["signed_curve25519"]


def test_deleting_a_device_forgets_its_keys() -> None:
    conn = open_memory()
    _device(conn, "@a:x", "D")
    e2e_keys.set_device_keys(conn, "@a:x", "D", {"keys": {}})
    e2e_keys.insert_one_time_keys(conn, "@a:x", "D", [("signed_curve25519", "k", {"key": "1"})])
    e2e_keys.set_fallback_key(conn, "@a:x", "D", "signed_curve25519", "f", {"key": "f"})
    assert set(e2e_keys.query_device_keys(conn, "@a:x", None)) == {"D"}
    assert e2e_keys.delete_device_e2e(conn, "@a:x", "D") is True
    assert e2e_keys.query_device_keys(conn, "@a:x", None) == {}
    assert e2e_keys.count_one_time_keys(conn, "@a:x", "D") == {}
    assert e2e_keys.unused_fallback_key_types(conn, "@a:x", "D") == []
    assert e2e_keys.delete_device_e2e(conn, "@a:x", "D") is False


def test_to_device_queue_range_and_acknowledgement() -> None:
    conn = open_memory()
    for i in range(5):
        pos = next_stream_pos(conn)
        to_device.insert_messages(conn, pos, "@s:x", "m.t", [("@a:x", "D", f'{{"i":{i}}}')])
    rows = to_device.get_messages(conn, "@a:x", "D", 0, 10, 3)
    assert [e["content"]["i"] for _, e in rows] == [0, 1, 2]
    assert [p for p, _ in rows] == [1, 2, 3]
    assert to_device.delete_acknowledged(conn, "@a:x", "D", 3) == 3
    rows = to_device.get_messages(conn, "@a:x", "D", 0, 10, 100)
    assert [e["content"]["i"] for _, e in rows] == [3, 4]
    assert to_device.get_messages(conn, "@a:x", "OTHER", 0, 10, 100) == []


def test_device_list_delta_follows_shared_rooms() -> None:
    conn = open_memory()
    me, bob, carol, dave = "@me:x", "@bob:x", "@carol:x", "@dave:x"
    _member(conn, 1, me, "join", 1)
    _member(conn, 1, bob, "join", 2)
    _member(conn, 2, carol, "join", 3)  # a room I am not in
    device_lists.add_change(conn, 4, bob)
    device_lists.add_change(conn, 5, carol)
    device_lists.add_change(conn, 6, me)
    # Bob shares a room; Carol does not; my own changes are always mine to see.
    assert device_lists.device_list_delta(conn, me, 3, 6) == ([bob, me], [])
    assert device_lists.device_list_delta(conn, me, 6, 6) == ([], [])
    # I join Carol's room: she is new to me.
    _member(conn, 2, me, "join", 7)
    assert device_lists.device_list_delta(conn, me, 6, 7) == ([carol], [])
    # Dave joins my room.
    _member(conn, 1, dave, "join", 8)
    assert device_lists.device_list_delta(conn, me, 7, 8) == ([dave], [])
    # Bob leaves: no other shared room, so he is "left"; Carol leaves room 2, which I
    # share with nobody else.
    _member(conn, 1, bob, "leave", 9)
    assert device_lists.device_list_delta(conn, me, 8, 9) == ([], [bob])
    # Dave joins room 2 too, then I leave room 1: Dave still shares room 2 with me.
    _member(conn, 2, dave, "join", 10)
    _member(conn, 1, me, "leave", 11)
    changed, left = device_lists.device_list_delta(conn, me, 10, 11)
    assert dave not in left
    # A signature only one user may see is only in their delta.
    device_lists.add_change(conn, 12, carol, only_for=dave)
    assert carol in device_lists.device_list_delta(conn, dave, 11, 12)[0]
    assert device_lists.device_list_delta(conn, me, 11, 12) == ([], [])
