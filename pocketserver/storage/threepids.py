"""Third-party identifiers: addresses on accounts (``user_threepids``), e-mail
validation sessions (``threepid_validation_sessions``) and the bindings this server
made at identity servers (``user_threepid_id_servers``).

Addresses are stored as given to these functions; the service lowercases e-mail
addresses before they get here.
"""

from __future__ import annotations

from dataclasses import dataclass

from pocketserver.storage.database import Conn


@dataclass(frozen=True, slots=True)
class Threepid:
    user_id: str
    medium: str
    address: str
    validated_at: int
    added_at: int


@dataclass(frozen=True, slots=True)
class ValidationSession:
    session_id: str
    client_secret: str
    medium: str
    address: str
    purpose: str
    token_hash: bytes
    send_attempt: int
    created_ts: int
    expires_ts: int
    validated_ts: int | None
    consumed_ts: int | None
    next_link: str | None = None


_SESSION_COLUMNS = (
    "session_id, client_secret, medium, address, purpose, token_hash, send_attempt,"
    " created_ts, expires_ts, validated_ts, consumed_ts, next_link"
)


def _session(row: tuple[object, ...] | None) -> ValidationSession | None:
    if row is None:
        return None
    return ValidationSession(*row)  # type: ignore[arg-type]


# -- addresses on accounts ------------------------------------------------------------


def list_user_threepids(conn: Conn, user_id: str) -> list[Threepid]:
    return [
        Threepid(*r)
        for r in conn.execute(
            "SELECT user_id, medium, address, validated_at, added_at FROM user_threepids"
            " WHERE user_id = ? ORDER BY added_at, medium, address",
            (user_id,),
        )
    ]


def get_threepid_owner(conn: Conn, medium: str, address: str) -> str | None:
    row = conn.execute(
        "SELECT user_id FROM user_threepids WHERE medium = ? AND address = ?", (medium, address)
    ).fetchone()
    return None if row is None else str(row[0])


def insert_user_threepid(
    conn: Conn, user_id: str, medium: str, address: str, validated_at: int, added_at: int
) -> bool:
    """Add the address to ``user_id``; False if another account has it already (the
    same account again is a success that changes nothing)."""
    owner = get_threepid_owner(conn, medium, address)
    if owner is not None:
        return owner == user_id
    conn.execute(
        "INSERT INTO user_threepids (user_id, medium, address, validated_at, added_at)"
        " VALUES (?, ?, ?, ?, ?)",
        (user_id, medium, address, validated_at, added_at),
    )
    return True


def delete_user_threepid(conn: Conn, user_id: str, medium: str, address: str) -> bool:
    conn.execute(
        "DELETE FROM user_threepids WHERE user_id = ? AND medium = ? AND address = ?",
        (user_id, medium, address),
    )
    return conn.changes() > 0


# -- validation sessions ---------------------------------------------------------------


def find_session(
    conn: Conn, client_secret: str, medium: str, address: str, purpose: str
) -> ValidationSession | None:
    """The newest live session for this (client_secret, address, purpose)."""
    return _session(
        conn.execute(
            f"SELECT {_SESSION_COLUMNS} FROM threepid_validation_sessions"
            " WHERE client_secret = ? AND medium = ? AND address = ? AND purpose = ?"
            " AND consumed_ts IS NULL ORDER BY created_ts DESC LIMIT 1",
            (client_secret, medium, address, purpose),
        ).fetchone()
    )


def get_session(conn: Conn, session_id: str) -> ValidationSession | None:
    return _session(
        conn.execute(
            f"SELECT {_SESSION_COLUMNS} FROM threepid_validation_sessions WHERE session_id = ?",
            (session_id,),
        ).fetchone()
    )


def insert_session(conn: Conn, s: ValidationSession) -> None:
    conn.execute(
        f"INSERT INTO threepid_validation_sessions ({_SESSION_COLUMNS})"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            s.session_id, s.client_secret, s.medium, s.address, s.purpose, s.token_hash,
            s.send_attempt, s.created_ts, s.expires_ts, s.validated_ts, s.consumed_ts,
            s.next_link,
        ),
    )


def update_session_token(
    conn: Conn, session_id: str, token_hash: bytes, send_attempt: int, expires_ts: int
) -> None:
    """A new send attempt: a fresh token (the old one stops working)."""
    conn.execute(
        "UPDATE threepid_validation_sessions SET token_hash = ?, send_attempt = ?, expires_ts = ?"
        " WHERE session_id = ?",
        (token_hash, send_attempt, expires_ts, session_id),
    )


def mark_validated(conn: Conn, session_id: str, now_ms: int) -> None:
    conn.execute(
        "UPDATE threepid_validation_sessions SET validated_ts = ? WHERE session_id = ?"
        " AND validated_ts IS NULL",
        (now_ms, session_id),
    )


def mark_consumed(conn: Conn, session_id: str, now_ms: int) -> bool:
    """Use a validated session up; False if it was used already."""
    conn.execute(
        "UPDATE threepid_validation_sessions SET consumed_ts = ? WHERE session_id = ?"
        " AND consumed_ts IS NULL",
        (now_ms, session_id),
    )
    return conn.changes() > 0


def delete_expired_sessions(conn: Conn, now_ms: int, keep_consumed_ms: int) -> int:
    """Drop sessions past their expiry, and used ones older than ``keep_consumed_ms``."""
    conn.execute(
        "DELETE FROM threepid_validation_sessions WHERE expires_ts < ?"
        " OR (consumed_ts IS NOT NULL AND consumed_ts < ?)",
        (now_ms, now_ms - keep_consumed_ms),
    )
    return conn.changes()


# -- bindings at identity servers ---------------------------------------------------------


def add_binding(conn: Conn, user_id: str, medium: str, address: str, id_server: str) -> None:
    conn.execute(
        "INSERT OR IGNORE INTO user_threepid_id_servers (user_id, medium, address, id_server)"
        " VALUES (?, ?, ?, ?)",
        (user_id, medium, address, id_server),
    )


def list_bindings(
    conn: Conn, user_id: str, medium: str | None = None, address: str | None = None
) -> list[tuple[str, str, str]]:
    """(medium, address, id_server) for the user (one address when given)."""
    if medium is None or address is None:
        rows = conn.execute(
            "SELECT medium, address, id_server FROM user_threepid_id_servers WHERE user_id = ?",
            (user_id,),
        )
    else:
        rows = conn.execute(
            "SELECT medium, address, id_server FROM user_threepid_id_servers"
            " WHERE user_id = ? AND medium = ? AND address = ?",
            (user_id, medium, address),
        )
    return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]


def remove_binding(conn: Conn, user_id: str, medium: str, address: str, id_server: str) -> None:
    conn.execute(
        "DELETE FROM user_threepid_id_servers"
        " WHERE user_id = ? AND medium = ? AND address = ? AND id_server = ?",
        (user_id, medium, address, id_server),
    )
