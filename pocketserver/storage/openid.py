"""OpenID tokens: (token hash, user, expiry), for the userinfo exchange only."""

from __future__ import annotations

from pocketserver.storage.database import Conn


def insert_token(conn: Conn, token_hash: bytes, user_id: str, expires_ts: int, now_ms: int) -> None:
    """Store a new token, and forget the ones that have expired (the table stays small)."""
    conn.execute("DELETE FROM openid_tokens WHERE expires_ts <= ?", (now_ms,))
    conn.execute(
        "INSERT INTO openid_tokens (token_hash, user_id, expires_ts) VALUES (?, ?, ?)",
        (token_hash, user_id, expires_ts),
    )


def get_token_user(conn: Conn, token_hash: bytes, now_ms: int) -> str | None:
    """The owner of an unexpired token whose account is still active, else None."""
    row = conn.execute(
        "SELECT t.user_id FROM openid_tokens t JOIN users u ON u.user_id = t.user_id"
        " WHERE t.token_hash = ? AND t.expires_ts > ? AND u.deactivated = 0",
        (token_hash, now_ms),
    ).fetchone()
    return None if row is None else str(row[0])
