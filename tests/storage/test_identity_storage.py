"""The identity service's tables on an in-memory database: a session's token is spent
once and dropped after too many wrong ones, bindings have one owner, invitations are
delivered once, expired rows are cleared."""

from __future__ import annotations

from pocketserver.storage import identity as store
from pocketserver.storage.database import open_memory


def _session(sid: str, secret: str = "s", at: int = 1000) -> store.Session:
    return store.Session(sid, secret, "email", "a@example.org", "tok", 1, None, at, at, None, 0)


def test_a_session_is_validated_once_and_its_token_spent() -> None:
    conn = open_memory()
    store.insert_session(conn, _session("sid1"), expired_before_ms=0)
    assert store.find_session(conn, "s", "email", "a@example.org", since_ms=0).sid == "sid1"
    assert store.find_session(conn, "other", "email", "a@example.org", since_ms=0) is None
    store.mark_validated(conn, "sid1", 2000)
    got = store.get_session(conn, "sid1")
    assert got is not None and got.validated_ts == 2000 and got.token is None and got.modified_ts == 2000


def test_too_many_wrong_tokens_drop_the_token() -> None:
    conn = open_memory()
    store.insert_session(conn, _session("sid1"), expired_before_ms=0)
    for _ in range(2):
        store.count_failed_attempt(conn, "sid1", max_attempts=3)
    assert store.get_session(conn, "sid1").token == "tok"
    store.count_failed_attempt(conn, "sid1", max_attempts=3)
    assert store.get_session(conn, "sid1").token is None


def test_expired_unvalidated_sessions_are_cleared() -> None:
    conn = open_memory()
    store.insert_session(conn, _session("old", at=100), expired_before_ms=0)
    store.insert_session(conn, _session("done", at=100), expired_before_ms=0)
    store.mark_validated(conn, "done", 150)
    store.insert_session(conn, _session("new", at=5000), expired_before_ms=1000)
    assert store.get_session(conn, "old") is None
    assert store.get_session(conn, "done") is not None and store.get_session(conn, "new") is not None


def test_bindings_have_one_owner() -> None:
    conn = open_memory()
    store.upsert_binding(conn, store.Binding("email", "a@example.org", "@a:x", 1, 1, 9))
    store.upsert_binding(conn, store.Binding("email", "a@example.org", "@b:x", 2, 2, 9))
    assert store.get_binding(conn, "email", "a@example.org").mxid == "@b:x"
    assert store.all_bindings(conn) == [("email", "a@example.org", "@b:x")]
    assert not store.delete_binding(conn, "email", "a@example.org", "@a:x")
    assert store.delete_binding(conn, "email", "a@example.org", "@b:x")
    assert store.get_binding(conn, "email", "a@example.org") is None


def test_invitations_are_delivered_once_and_expire() -> None:
    conn = open_memory()
    for token, at in (("t1", 100), ("t2", 200)):
        store.insert_invite(conn, store.Invite(token, "email", "a@example.org", "!r:x", "@a:x", f"pk{token}",
                                               "sk", at, None), expired_before_ms=0)
    assert [i.token for i in store.pending_invites(conn, "email", "a@example.org", since_ms=0)] == ["t1", "t2"]
    assert [i.token for i in store.pending_invites(conn, "email", "a@example.org", since_ms=150)] == ["t2"]
    assert store.ephemeral_key_valid(conn, ["pkt1"], since_ms=0)
    assert not store.ephemeral_key_valid(conn, ["pkt1"], since_ms=150)
    store.mark_delivered(conn, ["t1", "t2"], 300)
    assert store.pending_invites(conn, "email", "a@example.org", since_ms=0) == []
    # A new invitation clears those past their lifetime.
    store.insert_invite(conn, store.Invite("t3", "email", "b@example.org", "!r:x", "@a:x", "pk3", "sk", 500, None),
                        expired_before_ms=150)
    assert store.get_invite(conn, "t1") is None and store.get_invite(conn, "t2") is not None


def test_tokens_and_the_pepper() -> None:
    conn = open_memory()
    for i in range(5):
        store.insert_token(conn, bytes([i]) * 32, "@a:x", i)
    store.delete_oldest_tokens(conn, "@a:x", keep=2)
    assert store.count_user_tokens(conn, "@a:x") == 2
    assert store.get_token_user(conn, bytes([4]) * 32) == "@a:x"
    assert store.get_token_user(conn, bytes([0]) * 32) is None
    assert store.delete_token(conn, bytes([4]) * 32) and not store.delete_token(conn, bytes([4]) * 32)
    assert store.get_or_set_meta(conn, "lookup_pepper", "p1") == "p1"
    assert store.get_or_set_meta(conn, "lookup_pepper", "p2") == "p1"
