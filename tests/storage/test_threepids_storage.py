"""Third-party identifiers on an in-memory database: one owner per address, sessions
used once, expired sessions cleared, bindings remembered per identity server."""

from __future__ import annotations

import pytest

from pocketserver.services.threepids import ThreepidAuthFailed, use_validated_session_in_txn
from pocketserver.storage import accounts, threepids
from pocketserver.storage.database import open_memory


def _session(sid: str, expires: int = 10_000, purpose: str = "add") -> threepids.ValidationSession:
    return threepids.ValidationSession(
        sid, "secret", "email", "a@example.org", purpose, b"h" * 32, 1, 1000, expires, None, None
    )


def test_an_address_has_one_owner_and_goes_with_deactivation() -> None:
    conn = open_memory()
    accounts.insert_user(conn, "@a:x", None, 1)
    assert threepids.insert_user_threepid(conn, "@a:x", "email", "a@example.org", 5, 6)
    assert threepids.insert_user_threepid(conn, "@a:x", "email", "a@example.org", 7, 8)  # again: no change
    assert not threepids.insert_user_threepid(conn, "@b:x", "email", "a@example.org", 5, 6)
    assert threepids.get_threepid_owner(conn, "email", "a@example.org") == "@a:x"
    [t] = threepids.list_user_threepids(conn, "@a:x")
    assert (t.validated_at, t.added_at) == (5, 6)
    accounts.deactivate_user(conn, "@a:x")
    assert threepids.get_threepid_owner(conn, "email", "a@example.org") is None


def test_a_validated_session_is_used_once_and_expires() -> None:
    conn = open_memory()
    threepids.insert_session(conn, _session("s1"))
    with pytest.raises(ThreepidAuthFailed, match="not been confirmed"):
        use_validated_session_in_txn(conn, "s1", "secret", "add", 2000)
    threepids.mark_validated(conn, "s1", 1500)
    with pytest.raises(ThreepidAuthFailed):
        use_validated_session_in_txn(conn, "s1", "other", "add", 2000)
    with pytest.raises(ThreepidAuthFailed):
        use_validated_session_in_txn(conn, "s1", "secret", "register", 2000)
    v = use_validated_session_in_txn(conn, "s1", "secret", "add", 2000)
    assert (v.address, v.validated_at) == ("a@example.org", 1500)
    with pytest.raises(ThreepidAuthFailed, match="used already"):
        use_validated_session_in_txn(conn, "s1", "secret", "add", 2000)

    threepids.insert_session(conn, _session("s2", expires=3000))
    threepids.mark_validated(conn, "s2", 2500)
    with pytest.raises(ThreepidAuthFailed, match="expired"):
        use_validated_session_in_txn(conn, "s2", "secret", "add", 3001)
    # Clean-up: expired ones at once, used ones after a while.
    assert threepids.delete_expired_sessions(conn, 3001, keep_consumed_ms=10**9) == 1
    assert threepids.get_session(conn, "s1") is not None
    assert threepids.delete_expired_sessions(conn, 5000, keep_consumed_ms=1000) == 1
    assert threepids.get_session(conn, "s1") is None


def test_bindings_are_remembered_per_identity_server() -> None:
    conn = open_memory()
    threepids.add_binding(conn, "@a:x", "email", "a@example.org", "is1")
    threepids.add_binding(conn, "@a:x", "email", "a@example.org", "is2")
    threepids.add_binding(conn, "@a:x", "email", "a@example.org", "is2")
    threepids.add_binding(conn, "@a:x", "email", "b@example.org", "is1")
    assert sorted(s for _, _, s in threepids.list_bindings(conn, "@a:x", "email", "a@example.org")) == ["is1", "is2"]
    threepids.remove_binding(conn, "@a:x", "email", "a@example.org", "is1")
    assert len(threepids.list_bindings(conn, "@a:x")) == 2
