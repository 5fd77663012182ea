"""Users, devices, access and refresh tokens, registration tokens.

Tokens are stored only as SHA-256 hashes: a stolen database file gives no sessions.
"""

from __future__ import annotations

from dataclasses import dataclass

from pocketserver.storage.database import Conn


@dataclass(frozen=True, slots=True)
class TokenInfo:
    user_id: str
    device_id: str | None
    valid_until_ms: int | None
    is_guest: bool
    deactivated: bool
    locked: bool
    suspended: bool
    is_admin: bool


def insert_user(
    conn: Conn,
    user_id: str,
    password_hash: str | None,
    now_ms: int,
    *,
    is_admin: bool = False,
    is_guest: bool = False,
    displayname: str | None = None,
) -> bool:
    """Create a user; False if the ID is taken."""
    cur = conn.execute(
        "INSERT OR IGNORE INTO users (user_id, password_hash, created_ts, is_admin, is_guest,"
        " displayname) VALUES (?, ?, ?, ?, ?, ?)",
        (user_id, password_hash, now_ms, int(is_admin), int(is_guest), displayname),
    )
    return conn.changes() > 0 if cur is not None else False


def get_user(conn: Conn, user_id: str) -> dict[str, object] | None:
    row = conn.execute(
        "SELECT user_id, password_hash, created_ts, is_admin, is_guest, deactivated,"
        " displayname, avatar_url, user_type, locked, suspended FROM users WHERE user_id = ?",
        (user_id,),
    ).fetchone()
    if row is None:
        return None
    keys = (
        "user_id password_hash created_ts is_admin is_guest deactivated displayname"
        " avatar_url user_type locked suspended"
    ).split()
    return dict(zip(keys, row, strict=True))


def user_exists(conn: Conn, user_id: str) -> bool:
    return conn.execute("SELECT 1 FROM users WHERE user_id = ?", (user_id,)).fetchone() is not None


def count_users(conn: Conn) -> int:
    (n,) = conn.execute("SELECT COUNT(*) FROM users").fetchone()
    return int(n)


def get_token_info(conn: Conn, token_hash: bytes) -> TokenInfo | None:
    row = conn.execute(
        "SELECT t.user_id, t.device_id, t.valid_until_ms, u.is_guest, u.deactivated, u.locked,"
        " u.suspended, u.is_admin FROM access_tokens t JOIN users u ON u.user_id = t.user_id"
        " WHERE t.token_hash = ?",
        (token_hash,),
    ).fetchone()
    if row is None:
        return None
    return TokenInfo(
        user_id=row[0],
        device_id=row[1],
        valid_until_ms=row[2],
        is_guest=bool(row[3]),
        deactivated=bool(row[4]),
        locked=bool(row[5]),
        suspended=bool(row[6]),
        is_admin=bool(row[7]),
    )


def insert_access_token(
    conn: Conn,
    token_hash: bytes,
    user_id: str,
    device_id: str | None,
    now_ms: int,
    valid_until_ms: int | None = None,
    refresh_token_hash: bytes | None = None,
) -> None:
    conn.execute(
        "INSERT INTO access_tokens (token_hash, user_id, device_id, created_ts, valid_until_ms,"
        " refresh_token_hash) VALUES (?, ?, ?, ?, ?, ?)",
        (token_hash, user_id, device_id, now_ms, valid_until_ms, refresh_token_hash),
    )


def upsert_device(
    conn: Conn, user_id: str, device_id: str, display_name: str | None, now_ms: int
) -> bool:
    """Create the device if new (True), else leave it (False; display name kept)."""
    conn.execute(
        "INSERT OR IGNORE INTO devices (user_id, device_id, display_name, created_ts)"
        " VALUES (?, ?, ?, ?)",
        (user_id, device_id, display_name, now_ms),
    )
    return conn.changes() > 0


def insert_registration_token(
    conn: Conn, token: str, uses_allowed: int | None, expiry_time: int | None
) -> bool:
    conn.execute(
        "INSERT OR IGNORE INTO registration_tokens (token, uses_allowed, expiry_time)"
        " VALUES (?, ?, ?)",
        (token, uses_allowed, expiry_time),
    )
    return conn.changes() > 0
