"""Other servers' keys on an in-memory database: validity kept, old keys, changed keys."""

from __future__ import annotations

from pocketserver.storage import server_keys
from pocketserver.storage.database import open_memory


def test_current_old_and_changed_keys() -> None:
    conn = open_memory()
    server_keys.upsert_keys(conn, "a.org", [("ed25519:k", b"K" * 32, 5000, None)], 1)
    # A later answer with an earlier validity (a notary's stale copy) does not shorten it.
    server_keys.upsert_keys(conn, "a.org", [("ed25519:k", b"K" * 32, 3000, None)], 2)
    assert server_keys.get_keys(conn, "a.org", ["ed25519:k", "ed25519:x"]) == {"ed25519:k": (b"K" * 32, 5000)}
    # Retired: its validity becomes its expired_ts.
    server_keys.upsert_keys(conn, "a.org", [("ed25519:k", b"K" * 32, 4000, 4000)], 3)
    assert server_keys.get_server_keys(conn, "a.org") == [("ed25519:k", b"K" * 32, 4000, 4000)]
    # The same key ID with other key bytes: the new key replaces the old one.
    server_keys.upsert_keys(conn, "a.org", [("ed25519:k", b"N" * 32, 2000, None)], 4)
    assert server_keys.get_server_keys(conn, "a.org") == [("ed25519:k", b"N" * 32, 2000, None)]
    assert server_keys.get_keys(conn, "b.org", ["ed25519:k"]) == {}
