"""Single sign-on: which account an identity at an SSO provider is
(``user_external_ids``), and the one-time login tokens the SSO callback hands to
clients for ``m.login.token`` (``login_tokens``, only their SHA-256 kept).
"""

from __future__ import annotations

from pocketserver.storage.database import Conn


def get_user_by_external_id(conn: Conn, auth_provider: str, external_id: str) -> str | None:
    row = conn.execute(
        "SELECT user_id FROM user_external_ids WHERE auth_provider = ? AND external_id = ?",
        (auth_provider, external_id),
    ).fetchone()
    return str(row[0]) if row else None


def insert_external_id(
    conn: Conn, auth_provider: str, external_id: str, user_id: str, now_ms: int
) -> bool:
    """Link an external identity to a user; False if it is linked already."""
    conn.execute(
        "INSERT OR IGNORE INTO user_external_ids (auth_provider, external_id, user_id, created_ts)"
        " VALUES (?, ?, ?, ?)",
        (auth_provider, external_id, user_id, now_ms),
    )
    return conn.changes() > 0


def user_has_external_id(conn: Conn, user_id: str, auth_provider: str | None = None) -> bool:
    if auth_provider is None:
        row = conn.execute(
            "SELECT 1 FROM user_external_ids WHERE user_id = ? LIMIT 1", (user_id,)
        ).fetchone()
    else:
        row = conn.execute(
            "SELECT 1 FROM user_external_ids WHERE user_id = ? AND auth_provider = ? LIMIT 1",
            (user_id, auth_provider),
        ).fetchone()
    return row is not None


def list_external_ids(conn: Conn, user_id: str) -> list[tuple[str, str]]:
    """(auth_provider, external_id) of every identity linked to ``user_id``."""
    return [
        (str(r[0]), str(r[1]))
        for r in conn.execute(
            "SELECT auth_provider, external_id FROM user_external_ids WHERE user_id = ?"
            " ORDER BY auth_provider, external_id",
            (user_id,),
        )
    ]


def insert_login_token(
    conn: Conn, token_hash: bytes, user_id: str, auth_provider: str, now_ms: int, expires_ms: int
) -> None:
    """Store a new login token (and drop the expired ones: the table stays small)."""
    conn.execute("DELETE FROM login_tokens WHERE expires_ts <= ?", (now_ms,))
    conn.execute(
        "INSERT INTO login_tokens (token_hash, user_id, auth_provider, created_ts, expires_ts)"
        " VALUES (?, ?, ?, ?, ?)",
        (token_hash, user_id, auth_provider, now_ms, expires_ms),
    )


def consume_login_token(conn: Conn, token_hash: bytes, now_ms: int) -> str | None:
    """The user a live token logs in, deleting it (a token is used once); None for an
    unknown, used or expired token."""
    row = conn.execute(
        "SELECT user_id, expires_ts FROM login_tokens WHERE token_hash = ?", (token_hash,)
    ).fetchone()
    if row is None:
        return None
    conn.execute("DELETE FROM login_tokens WHERE token_hash = ?", (token_hash,))
    if int(row[1]) <= now_ms:
        return None
    return str(row[0])
