"""Users, devices, access and refresh tokens, registration tokens.

Tokens are stored only as SHA-256 hashes: a stolen database file gives no sessions.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pocketserver.storage.database import Conn
from pocketserver.storage.streams import current_stream_pos


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
    """Create a user; False if the ID is taken.

    A new account's display name is its localpart unless one is given, guests' too, as
    other servers do: clients otherwise show the full user ID everywhere, and a guest
    reading its own ``displayname`` before setting one gets a value, not a 404.
    """
    if displayname is None:
        displayname = user_id[1:].split(":", 1)[0]
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


def set_moderation_flag(conn: Conn, user_id: str, flag: str, value: bool) -> None:
    """Set ``locked`` or ``suspended`` on a user (the auth generation trigger drops the
    cached tokens, so the next request sees it)."""
    if flag not in ("locked", "suspended"):
        raise ValueError(flag)
    conn.execute(f"UPDATE users SET {flag} = ? WHERE user_id = ?", (int(value), user_id))


def upgrade_guest(conn: Conn, user_id: str, password_hash: str) -> bool:
    """Turn a guest account into a full one with this password; False if not a guest."""
    conn.execute(
        "UPDATE users SET is_guest = 0, password_hash = ? WHERE user_id = ? AND is_guest = 1"
        " AND deactivated = 0",
        (password_hash, user_id),
    )
    return bool(conn.changes() > 0)


def user_exists(conn: Conn, user_id: str) -> bool:
    return conn.execute("SELECT 1 FROM users WHERE user_id = ?", (user_id,)).fetchone() is not None


def count_users(conn: Conn) -> int:
    row = conn.execute("SELECT COUNT(*) FROM users").fetchone()
    return int(row[0]) if row else 0


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


# -- users ---------------------------------------------------------------------


def set_password_hash(conn: Conn, user_id: str, password_hash: str | None) -> None:
    conn.execute("UPDATE users SET password_hash = ? WHERE user_id = ?", (password_hash, user_id))


def set_displayname(conn: Conn, user_id: str, displayname: str | None) -> None:
    conn.execute("UPDATE users SET displayname = ? WHERE user_id = ?", (displayname, user_id))


def set_avatar_url(conn: Conn, user_id: str, avatar_url: str | None) -> None:
    conn.execute("UPDATE users SET avatar_url = ? WHERE user_id = ?", (avatar_url, user_id))


def get_profile(conn: Conn, user_id: str) -> tuple[str | None, str | None] | None:
    """(displayname, avatar_url) of a local user that is not deactivated, or None."""
    row = conn.execute(
        "SELECT displayname, avatar_url FROM users WHERE user_id = ? AND deactivated = 0",
        (user_id,),
    ).fetchone()
    return None if row is None else (row[0], row[1])


def get_profile_fields(conn: Conn, user_id: str) -> dict[str, str]:
    """Custom profile fields as ``{key: value_json}``."""
    return {
        k: v
        for k, v in conn.execute(
            "SELECT key, value_json FROM profile_fields WHERE user_id = ? ORDER BY key", (user_id,)
        )
    }


def set_profile_field(conn: Conn, user_id: str, key: str, value_json: str | None) -> None:
    """Set (or with None delete) one custom profile field."""
    if value_json is None:
        conn.execute("DELETE FROM profile_fields WHERE user_id = ? AND key = ?", (user_id, key))
    else:
        conn.execute(
            "INSERT INTO profile_fields (user_id, key, value_json) VALUES (?, ?, ?)"
            " ON CONFLICT (user_id, key) DO UPDATE SET value_json = excluded.value_json",
            (user_id, key, value_json),
        )


def deactivate_user(conn: Conn, user_id: str, *, erase: bool = False) -> list[str]:
    """Mark the user deactivated and remove every credential; return the removed device IDs.

    The user row stays (a user ID is never reused). Account data goes too: it can hold
    secrets (SSSS keys) and nothing can read it any more. ``erase`` also clears the
    profile and records the erasure's stream position (see :func:`erased_since`).
    """
    devices = [r[0] for r in conn.execute("SELECT device_id FROM devices WHERE user_id = ?", (user_id,))]
    conn.execute(
        "UPDATE users SET deactivated = 1, password_hash = NULL WHERE user_id = ?", (user_id,)
    )
    if erase:
        conn.execute(
            "UPDATE users SET displayname = NULL, avatar_url = NULL WHERE user_id = ?", (user_id,)
        )
        conn.execute("DELETE FROM profile_fields WHERE user_id = ?", (user_id,))
        conn.execute(
            "INSERT OR IGNORE INTO erased_users (user_id, stream_pos) VALUES (?, ?)",
            (user_id, current_stream_pos(conn)),
        )
    conn.execute("DELETE FROM access_tokens WHERE user_id = ?", (user_id,))
    conn.execute("DELETE FROM refresh_tokens WHERE user_id = ?", (user_id,))
    conn.execute("DELETE FROM devices WHERE user_id = ?", (user_id,))
    conn.execute("DELETE FROM account_data WHERE user_id = ?", (user_id,))
    conn.execute("DELETE FROM filters WHERE user_id = ?", (user_id,))
    conn.execute("DELETE FROM user_threepids WHERE user_id = ?", (user_id,))
    return devices


def erased_since(conn: Conn, user_ids: Iterable[str]) -> dict[str, int]:
    """{user_id: stream position of the erasure} for those of ``user_ids`` who were
    deactivated with ``erase: true``."""
    ids = list(set(user_ids))
    out: dict[str, int] = {}
    for i in range(0, len(ids), 500):
        part = ids[i : i + 500]
        marks = ",".join("?" * len(part))
        for uid, pos in conn.execute(
            f"SELECT user_id, stream_pos FROM erased_users WHERE user_id IN ({marks})", part
        ):
            out[uid] = int(pos)
    return out


# -- devices -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Device:
    device_id: str
    display_name: str | None
    last_seen_ts: int | None
    last_seen_ip: str | None
    last_seen_user_agent: str | None


_DEVICE_COLS = "device_id, display_name, last_seen_ts, last_seen_ip, last_seen_user_agent"


def list_devices(conn: Conn, user_id: str) -> list[Device]:
    """The user's visible devices (hidden pseudo-devices excluded), by device ID."""
    return [
        Device(*row)
        for row in conn.execute(
            f"SELECT {_DEVICE_COLS} FROM devices WHERE user_id = ? AND hidden = 0"
            " ORDER BY device_id",
            (user_id,),
        )
    ]


def get_device(conn: Conn, user_id: str, device_id: str) -> Device | None:
    row = conn.execute(
        f"SELECT {_DEVICE_COLS} FROM devices WHERE user_id = ? AND device_id = ? AND hidden = 0",
        (user_id, device_id),
    ).fetchone()
    return None if row is None else Device(*row)


def update_device_display_name(
    conn: Conn, user_id: str, device_id: str, display_name: str | None
) -> bool:
    conn.execute(
        "UPDATE devices SET display_name = ? WHERE user_id = ? AND device_id = ? AND hidden = 0",
        (display_name, user_id, device_id),
    )
    return conn.changes() > 0


def touch_device(
    conn: Conn, user_id: str, device_id: str, ts: int, ip: str | None, user_agent: str | None
) -> None:
    conn.execute(
        "UPDATE devices SET last_seen_ts = ?, last_seen_ip = ?, last_seen_user_agent = ?"
        " WHERE user_id = ? AND device_id = ?",
        (ts, ip, user_agent, user_id, device_id),
    )


def delete_devices(conn: Conn, user_id: str, device_ids: list[str]) -> list[str]:
    """Delete devices with their access and refresh tokens; return those that existed."""
    deleted: list[str] = []
    for device_id in dict.fromkeys(device_ids):
        conn.execute(
            "DELETE FROM devices WHERE user_id = ? AND device_id = ?", (user_id, device_id)
        )
        if conn.changes() > 0:
            deleted.append(device_id)
        conn.execute(
            "DELETE FROM access_tokens WHERE user_id = ? AND device_id = ?", (user_id, device_id)
        )
        conn.execute(
            "DELETE FROM refresh_tokens WHERE user_id = ? AND device_id = ?", (user_id, device_id)
        )
    return deleted


def delete_device_tokens(conn: Conn, user_id: str, device_id: str) -> None:
    conn.execute(
        "DELETE FROM access_tokens WHERE user_id = ? AND device_id = ?", (user_id, device_id)
    )
    conn.execute(
        "DELETE FROM refresh_tokens WHERE user_id = ? AND device_id = ?", (user_id, device_id)
    )


def list_device_ids(conn: Conn, user_id: str) -> list[str]:
    return [r[0] for r in conn.execute("SELECT device_id FROM devices WHERE user_id = ?", (user_id,))]


# -- access and refresh tokens -------------------------------------------------


def delete_access_tokens_except(conn: Conn, user_id: str, keep_hash: bytes | None) -> None:
    conn.execute(
        "DELETE FROM access_tokens WHERE user_id = ? AND token_hash IS NOT ?", (user_id, keep_hash)
    )


def insert_refresh_token(
    conn: Conn, token_hash: bytes, user_id: str, device_id: str, now_ms: int
) -> None:
    conn.execute(
        "INSERT INTO refresh_tokens (token_hash, user_id, device_id, created_ts)"
        " VALUES (?, ?, ?, ?)",
        (token_hash, user_id, device_id, now_ms),
    )


@dataclass(frozen=True, slots=True)
class RefreshToken:
    user_id: str
    device_id: str
    next_token_hash: bytes | None
    # True once the token this one was exchanged for has itself been exchanged.
    next_used: bool


def get_refresh_token(conn: Conn, token_hash: bytes) -> RefreshToken | None:
    row = conn.execute(
        "SELECT r.user_id, r.device_id, r.next_token_hash, n.next_token_hash IS NOT NULL"
        " FROM refresh_tokens r LEFT JOIN refresh_tokens n ON n.token_hash = r.next_token_hash"
        " WHERE r.token_hash = ?",
        (token_hash,),
    ).fetchone()
    if row is None:
        return None
    return RefreshToken(row[0], row[1], row[2], bool(row[3]))


def exchange_refresh_token(
    conn: Conn,
    old_hash: bytes,
    new_refresh_hash: bytes,
    new_access_hash: bytes,
    user_id: str,
    device_id: str,
    now_ms: int,
    valid_until_ms: int,
) -> None:
    """Replace what ``old_hash`` last produced with a new access/refresh token pair.

    The old refresh token stays usable until its successor is used (refresh.yaml), so a
    client that lost the answer can retry; a retry replaces the unused successor.
    """
    row = conn.execute(
        "SELECT next_token_hash FROM refresh_tokens WHERE token_hash = ?", (old_hash,)
    ).fetchone()
    if row is not None and row[0] is not None:
        conn.execute("DELETE FROM refresh_tokens WHERE token_hash = ?", (row[0],))
        conn.execute("DELETE FROM access_tokens WHERE refresh_token_hash = ?", (row[0],))
    # The access tokens minted with the old refresh token end now.
    conn.execute("DELETE FROM access_tokens WHERE refresh_token_hash = ?", (old_hash,))
    insert_refresh_token(conn, new_refresh_hash, user_id, device_id, now_ms)
    conn.execute(
        "UPDATE refresh_tokens SET next_token_hash = ? WHERE token_hash = ?",
        (new_refresh_hash, old_hash),
    )
    # The old token's own predecessor is finished now that its successor was used.
    conn.execute("DELETE FROM refresh_tokens WHERE next_token_hash = ?", (old_hash,))
    insert_access_token(
        conn, new_access_hash, user_id, device_id, now_ms, valid_until_ms, new_refresh_hash
    )


def get_access_token_count(conn: Conn, user_id: str) -> int:
    row = conn.execute("SELECT COUNT(*) FROM access_tokens WHERE user_id = ?", (user_id,)).fetchone()
    return int(row[0]) if row else 0


# -- registration tokens -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegistrationToken:
    token: str
    uses_allowed: int | None
    pending: int
    completed: int
    expiry_time: int | None

    def is_valid(self, now_ms: int) -> bool:
        if self.expiry_time is not None and self.expiry_time <= now_ms:
            return False
        return self.uses_allowed is None or self.pending + self.completed < self.uses_allowed


def get_registration_token(conn: Conn, token: str) -> RegistrationToken | None:
    row = conn.execute(
        "SELECT token, uses_allowed, pending, completed, expiry_time FROM registration_tokens"
        " WHERE token = ?",
        (token,),
    ).fetchone()
    return None if row is None else RegistrationToken(*row)


def reserve_registration_token(conn: Conn, token: str, now_ms: int) -> bool:
    """Count one pending use of a valid token (the UIA stage succeeded); False if invalid."""
    info = get_registration_token(conn, token)
    if info is None or not info.is_valid(now_ms):
        return False
    conn.execute("UPDATE registration_tokens SET pending = pending + 1 WHERE token = ?", (token,))
    return True


def release_registration_token(conn: Conn, token: str) -> None:
    """A pending use that will never complete (its UIA session expired)."""
    conn.execute(
        "UPDATE registration_tokens SET pending = MAX(pending - 1, 0) WHERE token = ?", (token,)
    )


def complete_registration_token(conn: Conn, token: str) -> None:
    """A pending use became a registration."""
    conn.execute(
        "UPDATE registration_tokens SET pending = MAX(pending - 1, 0), completed = completed + 1"
        " WHERE token = ?",
        (token,),
    )


# -- filters -------------------------------------------------------------------


def insert_filter(conn: Conn, user_id: str, filter_json: str) -> int:
    """Store a filter (the same JSON gets the same ID back); return its ID."""
    row = conn.execute(
        "SELECT filter_id FROM filters WHERE user_id = ? AND filter_json = ?",
        (user_id, filter_json),
    ).fetchone()
    if row is not None:
        return int(row[0])
    top = conn.execute(
        "SELECT COALESCE(MAX(filter_id), -1) + 1 FROM filters WHERE user_id = ?", (user_id,)
    ).fetchone()
    next_id = int(top[0]) if top else 0
    conn.execute(
        "INSERT INTO filters (user_id, filter_id, filter_json) VALUES (?, ?, ?)",
        (user_id, next_id, filter_json),
    )
    return int(next_id)


def find_filter(conn: Conn, user_id: str, filter_json: str) -> int | None:
    """The ID of this user's filter with exactly this JSON, if any."""
    row = conn.execute(
        "SELECT filter_id FROM filters WHERE user_id = ? AND filter_json = ?",
        (user_id, filter_json),
    ).fetchone()
    return None if row is None else int(row[0])


def count_filters(conn: Conn, user_id: str) -> int:
    (n,) = conn.execute("SELECT COUNT(*) FROM filters WHERE user_id = ?", (user_id,)).fetchone()
    return int(n)


def get_filter(conn: Conn, user_id: str, filter_id: int) -> str | None:
    row = conn.execute(
        "SELECT filter_json FROM filters WHERE user_id = ? AND filter_id = ?", (user_id, filter_id)
    ).fetchone()
    return None if row is None else str(row[0])
