"""Accounts, account data, presence and UIA storage on an in-memory database."""

from __future__ import annotations

from pocketserver.storage import account_data, accounts, presence, uia
from pocketserver.storage.database import open_memory


def test_devices_and_tokens() -> None:
    conn = open_memory()
    assert accounts.insert_user(conn, "@a:x", "hash", 1)
    assert not accounts.insert_user(conn, "@a:x", "hash", 1)
    accounts.upsert_device(conn, "@a:x", "D1", "Phone", 1)
    accounts.upsert_device(conn, "@a:x", "D2", None, 1)
    accounts.insert_access_token(conn, b"t1", "@a:x", "D1", 1)
    accounts.insert_access_token(conn, b"t2", "@a:x", "D2", 1)
    assert [d.device_id for d in accounts.list_devices(conn, "@a:x")] == ["D1", "D2"]
    assert accounts.delete_devices(conn, "@a:x", ["D2", "D2", "NOPE"]) == ["D2"]
    assert accounts.get_token_info(conn, b"t2") is None
    assert accounts.get_token_info(conn, b"t1") is not None
    assert accounts.deactivate_user(conn, "@a:x") == ["D1"]
    assert accounts.get_token_info(conn, b"t1") is None
    user = accounts.get_user(conn, "@a:x")
    assert user is not None and user["deactivated"] == 1 and user["password_hash"] is None
    assert accounts.get_profile(conn, "@a:x") is None


def test_refresh_token_rotation() -> None:
    conn = open_memory()
    accounts.insert_user(conn, "@a:x", None, 1)
    accounts.insert_refresh_token(conn, b"r1", "@a:x", "D", 1)
    accounts.insert_access_token(conn, b"a1", "@a:x", "D", 1, 100, b"r1")
    accounts.exchange_refresh_token(conn, b"r1", b"r2", b"a2", "@a:x", "D", 2, 200)
    assert accounts.get_token_info(conn, b"a1") is None
    assert accounts.get_token_info(conn, b"a2") is not None
    # Retrying r1 (answer lost) replaces the unused r2/a2.
    accounts.exchange_refresh_token(conn, b"r1", b"r2b", b"a2b", "@a:x", "D", 3, 300)
    assert accounts.get_refresh_token(conn, b"r2") is None
    assert accounts.get_token_info(conn, b"a2") is None
    # Using r2b ends r1.
    accounts.exchange_refresh_token(conn, b"r2b", b"r3", b"a3", "@a:x", "D", 4, 400)
    assert accounts.get_refresh_token(conn, b"r1") is None


def test_registration_token_counts() -> None:
    conn = open_memory()
    accounts.insert_registration_token(conn, "t", 2, None)
    assert accounts.reserve_registration_token(conn, "t", 0)
    assert accounts.reserve_registration_token(conn, "t", 0)
    assert not accounts.reserve_registration_token(conn, "t", 0)  # 2 pending = 2 allowed
    accounts.release_registration_token(conn, "t")
    accounts.complete_registration_token(conn, "t")
    tok = accounts.get_registration_token(conn, "t")
    assert tok is not None and (tok.pending, tok.completed) == (0, 1)
    accounts.insert_registration_token(conn, "old", None, 50)
    assert not accounts.reserve_registration_token(conn, "old", 60)


def test_filters_dedupe() -> None:
    conn = open_memory()
    assert accounts.insert_filter(conn, "@a:x", "{}") == 0
    assert accounts.insert_filter(conn, "@a:x", '{"a":1}') == 1
    assert accounts.insert_filter(conn, "@a:x", "{}") == 0
    assert accounts.insert_filter(conn, "@b:x", '{"a":1}') == 0
    assert accounts.get_filter(conn, "@a:x", 1) == '{"a":1}'
    assert accounts.get_filter(conn, "@a:x", 7) is None


def test_account_data_since() -> None:
    conn = open_memory()
    p1 = account_data.put_account_data(conn, "@a:x", "", "m.direct", {"x": 1})
    p2 = account_data.put_account_data(conn, "@a:x", "!r:x", "m.tag", {"tags": {}})
    account_data.put_account_data(conn, "@b:x", "", "m.direct", {"other": 1})
    p3 = account_data.put_account_data(conn, "@a:x", "", "m.direct", {"x": 2})
    assert p1 < p2 < p3
    all_ = account_data.get_account_data_since(conn, "@a:x", 0)
    assert all_.global_ == {"m.direct": {"x": 2}}
    assert all_.rooms == {"!r:x": {"m.tag": {"tags": {}}}}
    assert all_.max_pos == p3
    later = account_data.get_account_data_since(conn, "@a:x", p2)
    assert later.global_ == {"m.direct": {"x": 2}} and later.rooms == {}
    bounded = account_data.get_account_data_since(conn, "@a:x", 0, p2)
    assert bounded.global_ == {} and "!r:x" in bounded.rooms
    assert account_data.to_events({"t": {"a": 1}}) == [{"type": "t", "content": {"a": 1}}]


def test_presence_changes_for_room_sharers() -> None:
    conn = open_memory()
    for user, room in (("@a:x", 1), ("@b:x", 1), ("@c:x", 2)):
        conn.execute(
            "INSERT INTO room_memberships (room_nid, user_id, membership, event_nid, stream_pos,"
            " is_local) VALUES (?, ?, 'join', 1, 1, 1)",
            (room, user),
        )
    pa = presence.set_presence(conn, "@a:x", "online", None, 10, True)
    presence.set_presence(conn, "@b:x", "unavailable", "away", 10, False)
    presence.set_presence(conn, "@c:x", "online", None, 10, True)
    seen = [p.user_id for p in presence.get_presence_changes_since(conn, "@a:x", 0)]
    assert seen == ["@a:x", "@b:x"]
    seen = [p.user_id for p in presence.get_presence_changes_since(conn, "@a:x", pa)]
    assert seen == ["@b:x"]
    assert presence.shares_room(conn, "@a:x", "@b:x")
    assert not presence.shares_room(conn, "@a:x", "@c:x")


def test_uia_sessions() -> None:
    conn = open_memory()
    uia.insert_session(conn, "s1", 100, "POST /register", None)
    assert uia.add_completed_stage(conn, "s1", "m.login.dummy") == ["m.login.dummy"]
    assert uia.add_completed_stage(conn, "s1", "m.login.dummy") == ["m.login.dummy"]
    uia.set_session_param(conn, "s1", "registration_token", "t")
    s = uia.get_session(conn, "s1")
    assert s is not None and s.params == {"registration_token": "t"}
    assert [x.session_id for x in uia.pop_expired_sessions(conn, 200)] == ["s1"]
    assert uia.get_session(conn, "s1") is None
