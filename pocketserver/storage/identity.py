"""The built-in identity service's tables (schema.py ``SCHEMA_IDENTITY``).

- ``identity_meta``: the lookup pepper.
- ``identity_tokens``: the service's access tokens (hashes only), one per
  ``/account/register``.
- ``identity_accepted_terms``: the policy URLs each user accepted.
- ``identity_sessions``: e-mail validation sessions; ``token`` is the mailed token,
  cleared once used (single use); ``validated_ts`` is set by a correct submission.
- ``identity_bindings``: published associations, one user per (medium, address).
- ``identity_invites``: pending invitations (``/store-invite``) with their ephemeral
  key pair; ``delivered_ts`` once ``/3pid/onbind`` took them.
"""

from __future__ import annotations

from dataclasses import dataclass

from pocketserver.storage.database import Conn


@dataclass(frozen=True, slots=True)
class Session:
    sid: str
    client_secret: str
    medium: str
    address: str
    token: str | None
    send_attempt: int
    next_link: str | None
    created_ts: int
    modified_ts: int
    validated_ts: int | None
    failed_attempts: int


@dataclass(frozen=True, slots=True)
class Binding:
    medium: str
    address: str
    mxid: str
    ts: int
    not_before: int
    not_after: int


@dataclass(frozen=True, slots=True)
class Invite:
    token: str
    medium: str
    address: str
    room_id: str
    sender: str
    ephemeral_public_key: str
    ephemeral_private_key: str
    created_ts: int
    delivered_ts: int | None


# -- meta ----------------------------------------------------------------------------------


def get_or_set_meta(conn: Conn, key: str, value: str) -> str:
    """The stored value of ``key``, storing ``value`` first if there is none."""
    conn.execute("INSERT OR IGNORE INTO identity_meta (key, value) VALUES (?, ?)", (key, value))
    row = conn.execute("SELECT value FROM identity_meta WHERE key = ?", (key,)).fetchone()
    return str(row[0])


# -- access tokens and terms -------------------------------------------------------------


def insert_token(conn: Conn, token_hash: bytes, user_id: str, now_ms: int) -> None:
    conn.execute(
        "INSERT INTO identity_tokens (token_hash, user_id, created_ts) VALUES (?, ?, ?)",
        (token_hash, user_id, now_ms),
    )


def get_token_user(conn: Conn, token_hash: bytes) -> str | None:
    row = conn.execute("SELECT user_id FROM identity_tokens WHERE token_hash = ?", (token_hash,)).fetchone()
    return None if row is None else str(row[0])


def delete_token(conn: Conn, token_hash: bytes) -> bool:
    conn.execute("DELETE FROM identity_tokens WHERE token_hash = ?", (token_hash,))
    return conn.changes() > 0


def count_user_tokens(conn: Conn, user_id: str) -> int:
    row = conn.execute("SELECT count(*) FROM identity_tokens WHERE user_id = ?", (user_id,)).fetchone()
    return int(row[0])


def delete_oldest_tokens(conn: Conn, user_id: str, keep: int) -> None:
    conn.execute(
        "DELETE FROM identity_tokens WHERE user_id = ? AND token_hash NOT IN"
        " (SELECT token_hash FROM identity_tokens WHERE user_id = ? ORDER BY created_ts DESC LIMIT ?)",
        (user_id, user_id, keep),
    )


def add_accepted_terms(conn: Conn, user_id: str, urls: list[str]) -> None:
    for url in urls:
        conn.execute(
            "INSERT OR IGNORE INTO identity_accepted_terms (user_id, url) VALUES (?, ?)", (user_id, url)
        )


def get_accepted_terms(conn: Conn, user_id: str) -> set[str]:
    rows = conn.execute("SELECT url FROM identity_accepted_terms WHERE user_id = ?", (user_id,))
    return {str(r[0]) for r in rows}


# -- validation sessions -------------------------------------------------------------------

_SESSION_COLS = (
    "sid, client_secret, medium, address, token, send_attempt, next_link, created_ts,"
    " modified_ts, validated_ts, failed_attempts"
)


def _session(row: tuple[object, ...] | None) -> Session | None:
    return None if row is None else Session(*row)  # type: ignore[arg-type]


def get_session(conn: Conn, sid: str) -> Session | None:
    return _session(conn.execute(f"SELECT {_SESSION_COLS} FROM identity_sessions WHERE sid = ?", (sid,)).fetchone())


def find_session(conn: Conn, client_secret: str, medium: str, address: str, since_ms: int) -> Session | None:
    """The newest live session of this client secret for this address."""
    return _session(conn.execute(
        f"SELECT {_SESSION_COLS} FROM identity_sessions WHERE client_secret = ? AND medium = ?"
        " AND address = ? AND modified_ts > ? ORDER BY created_ts DESC LIMIT 1",
        (client_secret, medium, address, since_ms),
    ).fetchone())


def insert_session(conn: Conn, s: Session, expired_before_ms: int) -> None:
    """Store a new session, and forget the ones that have expired unvalidated."""
    conn.execute(
        "DELETE FROM identity_sessions WHERE modified_ts <= ? AND validated_ts IS NULL", (expired_before_ms,)
    )
    conn.execute(
        f"INSERT INTO identity_sessions ({_SESSION_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (s.sid, s.client_secret, s.medium, s.address, s.token, s.send_attempt, s.next_link,
         s.created_ts, s.modified_ts, s.validated_ts, s.failed_attempts),
    )


def set_send_attempt(conn: Conn, sid: str, send_attempt: int, token: str | None, now_ms: int) -> None:
    conn.execute(
        "UPDATE identity_sessions SET send_attempt = ?, token = coalesce(?, token), modified_ts = ? WHERE sid = ?",
        (send_attempt, token, now_ms, sid),
    )


def mark_validated(conn: Conn, sid: str, now_ms: int) -> None:
    """The session's token was right: validated now, and the token is spent."""
    conn.execute(
        "UPDATE identity_sessions SET validated_ts = ?, modified_ts = ?, token = NULL WHERE sid = ?",
        (now_ms, now_ms, sid),
    )


def count_failed_attempt(conn: Conn, sid: str, max_attempts: int) -> None:
    """One more wrong token; the session's token is dropped at ``max_attempts``."""
    conn.execute(
        "UPDATE identity_sessions SET failed_attempts = failed_attempts + 1,"
        " token = CASE WHEN failed_attempts + 1 >= ? THEN NULL ELSE token END WHERE sid = ?",
        (max_attempts, sid),
    )


# -- bindings ------------------------------------------------------------------------------


def upsert_binding(conn: Conn, b: Binding) -> None:
    conn.execute(
        "INSERT INTO identity_bindings (medium, address, mxid, ts, not_before, not_after)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (medium, address) DO UPDATE SET"
        " mxid = excluded.mxid, ts = excluded.ts, not_before = excluded.not_before,"
        " not_after = excluded.not_after",
        (b.medium, b.address, b.mxid, b.ts, b.not_before, b.not_after),
    )


def get_binding(conn: Conn, medium: str, address: str) -> Binding | None:
    row = conn.execute(
        "SELECT medium, address, mxid, ts, not_before, not_after FROM identity_bindings"
        " WHERE medium = ? AND address = ?",
        (medium, address),
    ).fetchone()
    return None if row is None else Binding(*row)


def delete_binding(conn: Conn, medium: str, address: str, mxid: str) -> bool:
    conn.execute(
        "DELETE FROM identity_bindings WHERE medium = ? AND address = ? AND mxid = ?", (medium, address, mxid)
    )
    return conn.changes() > 0


def all_bindings(conn: Conn) -> list[tuple[str, str, str]]:
    """(medium, address, mxid) of every binding, for hashed lookups."""
    rows = conn.execute("SELECT medium, address, mxid FROM identity_bindings")
    return [(str(m), str(a), str(x)) for m, a, x in rows]


# -- invitations ---------------------------------------------------------------------------

_INVITE_COLS = (
    "token, medium, address, room_id, sender, ephemeral_public_key, ephemeral_private_key,"
    " created_ts, delivered_ts"
)


def insert_invite(conn: Conn, inv: Invite, expired_before_ms: int) -> None:
    """Store an invitation, and forget the ones that expired or were delivered long ago."""
    conn.execute("DELETE FROM identity_invites WHERE created_ts <= ?", (expired_before_ms,))
    conn.execute(
        f"INSERT INTO identity_invites ({_INVITE_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (inv.token, inv.medium, inv.address, inv.room_id, inv.sender, inv.ephemeral_public_key,
         inv.ephemeral_private_key, inv.created_ts, inv.delivered_ts),
    )


def get_invite(conn: Conn, token: str) -> Invite | None:
    row = conn.execute(f"SELECT {_INVITE_COLS} FROM identity_invites WHERE token = ?", (token,)).fetchone()
    return None if row is None else Invite(*row)


def pending_invites(conn: Conn, medium: str, address: str, since_ms: int) -> list[Invite]:
    rows = conn.execute(
        f"SELECT {_INVITE_COLS} FROM identity_invites WHERE medium = ? AND address = ?"
        " AND delivered_ts IS NULL AND created_ts > ? ORDER BY created_ts",
        (medium, address, since_ms),
    )
    return [Invite(*r) for r in rows]


def mark_delivered(conn: Conn, tokens: list[str], now_ms: int) -> None:
    for token in tokens:
        conn.execute("UPDATE identity_invites SET delivered_ts = ? WHERE token = ?", (now_ms, token))


def ephemeral_key_valid(conn: Conn, public_keys: list[str], since_ms: int) -> bool:
    """Whether an unexpired invitation has one of these ephemeral public keys."""
    for key in public_keys:
        row = conn.execute(
            "SELECT 1 FROM identity_invites WHERE ephemeral_public_key = ? AND created_ts > ?", (key, since_ms)
        ).fetchone()
        if row is not None:
            return True
    return False
