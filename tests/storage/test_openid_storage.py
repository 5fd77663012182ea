"""OpenID tokens on an in-memory database: expiry, deactivation, clean-up."""

from __future__ import annotations

from pocketserver.storage import accounts, openid
from pocketserver.storage.database import open_memory


def test_tokens_expire_and_die_with_their_account() -> None:
    conn = open_memory()
    accounts.insert_user(conn, "@a:x", None, 1)
    accounts.insert_user(conn, "@b:x", None, 1)
    openid.insert_token(conn, b"ta", "@a:x", 2000, 1000)
    openid.insert_token(conn, b"tb", "@b:x", 2000, 1000)
    assert openid.get_token_user(conn, b"ta", 1999) == "@a:x"
    assert openid.get_token_user(conn, b"ta", 2000) is None  # expired
    assert openid.get_token_user(conn, b"nope", 1000) is None
    accounts.deactivate_user(conn, "@b:x")
    assert openid.get_token_user(conn, b"tb", 1000) is None
    # A new token clears the expired ones.
    openid.insert_token(conn, b"tc", "@a:x", 9000, 5000)
    (n,) = conn.execute("SELECT COUNT(*) FROM openid_tokens").fetchone()
    assert n == 1
