"""Single sign-on storage on an in-memory database: login tokens are used once and
expire; external identities link to one account."""

from __future__ import annotations

from pocketserver.storage import accounts, sso
from pocketserver.storage.database import open_memory


def test_login_tokens_are_used_once_and_expire() -> None:
    conn = open_memory()
    accounts.insert_user(conn, "@a:x", None, 1)
    sso.insert_login_token(conn, b"t1", "@a:x", "cas", 1000, 2000)
    sso.insert_login_token(conn, b"t2", "@a:x", "cas", 1000, 2000)
    assert sso.consume_login_token(conn, b"t1", 1999) == "@a:x"
    assert sso.consume_login_token(conn, b"t1", 1999) is None  # used
    assert sso.consume_login_token(conn, b"t2", 2000) is None  # expired
    assert sso.consume_login_token(conn, b"nope", 1000) is None
    # A new token clears the expired ones.
    sso.insert_login_token(conn, b"t3", "@a:x", "cas", 1000, 2000)
    sso.insert_login_token(conn, b"t4", "@a:x", "cas", 5000, 6000)
    (n,) = conn.execute("SELECT COUNT(*) FROM login_tokens").fetchone()
    assert n == 1


def test_external_ids_link_to_one_account() -> None:
    conn = open_memory()
    assert sso.insert_external_id(conn, "cas", "jo", "@jo:x", 1)
    assert not sso.insert_external_id(conn, "cas", "jo", "@other:x", 2)
    assert sso.insert_external_id(conn, "cas", "Jo", "@jo:x", 3)
    assert sso.get_user_by_external_id(conn, "cas", "jo") == "@jo:x"
    assert sso.get_user_by_external_id(conn, "oidc", "jo") is None
    assert sso.user_has_external_id(conn, "@jo:x")
    assert sso.user_has_external_id(conn, "@jo:x", "cas")
    assert not sso.user_has_external_id(conn, "@jo:x", "oidc")
    assert not sso.user_has_external_id(conn, "@other:x")
    assert sso.list_external_ids(conn, "@jo:x") == [("cas", "Jo"), ("cas", "jo")]
