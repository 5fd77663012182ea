"""User-interactive authentication sessions (table ``ui_auth_sessions``).

A session remembers which stages a client completed for one request (``request_hash``
names the endpoint it was started for) and small per-session parameters, e.g. the
registration token a pending use was counted for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pocketserver.storage.database import Conn


@dataclass(frozen=True, slots=True)
class UIASession:
    session_id: str
    created_ts: int
    request_hash: str
    completed: list[str]
    params: dict[str, Any]
    user_id: str | None


def insert_session(
    conn: Conn, session_id: str, now_ms: int, request_hash: str, user_id: str | None
) -> None:
    conn.execute(
        "INSERT INTO ui_auth_sessions (session_id, created_ts, request_hash, user_id)"
        " VALUES (?, ?, ?, ?)",
        (session_id, now_ms, request_hash, user_id),
    )


def get_session(conn: Conn, session_id: str) -> UIASession | None:
    row = conn.execute(
        "SELECT session_id, created_ts, request_hash, completed_json, params_json, user_id"
        " FROM ui_auth_sessions WHERE session_id = ?",
        (session_id,),
    ).fetchone()
    if row is None:
        return None
    return UIASession(row[0], row[1], row[2], json.loads(row[3]), json.loads(row[4]), row[5])


def add_completed_stage(conn: Conn, session_id: str, stage: str) -> list[str]:
    """Record a completed stage (once); return the completed list."""
    row = conn.execute(
        "SELECT completed_json FROM ui_auth_sessions WHERE session_id = ?", (session_id,)
    ).fetchone()
    if row is None:
        return []
    completed: list[str] = json.loads(str(row[0]))
    if stage not in completed:
        completed.append(stage)
        conn.execute(
            "UPDATE ui_auth_sessions SET completed_json = ? WHERE session_id = ?",
            (json.dumps(completed), session_id),
        )
    return completed


def set_session_param(conn: Conn, session_id: str, key: str, value: Any) -> None:
    row = conn.execute(
        "SELECT params_json FROM ui_auth_sessions WHERE session_id = ?", (session_id,)
    ).fetchone()
    if row is None:
        return
    params = json.loads(str(row[0]))
    params[key] = value
    conn.execute(
        "UPDATE ui_auth_sessions SET params_json = ? WHERE session_id = ?",
        (json.dumps(params), session_id),
    )


def delete_session(conn: Conn, session_id: str) -> None:
    conn.execute("DELETE FROM ui_auth_sessions WHERE session_id = ?", (session_id,))


def pop_expired_sessions(conn: Conn, older_than_ms: int) -> list[UIASession]:
    """Delete sessions created before ``older_than_ms`` and return them."""
    expired = [
        UIASession(r[0], r[1], r[2], json.loads(r[3]), json.loads(r[4]), r[5])
        for r in conn.execute(
            "SELECT session_id, created_ts, request_hash, completed_json, params_json, user_id"
            " FROM ui_auth_sessions WHERE created_ts < ?",
            (older_than_ms,),
        )
    ]
    conn.execute("DELETE FROM ui_auth_sessions WHERE created_ts < ?", (older_than_ms,))
    return expired
