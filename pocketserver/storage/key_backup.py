"""Server-side room key backups: backup versions and the encrypted session keys in them.

Spec: shared/spec/content/client-server-api/modules/end_to_end_encryption.md,
"Server-side key backups". Versions are per user, count up and are never reused (a
deleted version keeps its row, marked deleted, so its number is not handed out again);
the current backup is the newest version not deleted. ``etag`` counts the changes to a
version's keys.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pocketserver.storage.database import Conn

JsonDict = dict[str, Any]


@dataclass(frozen=True, slots=True)
class BackupVersion:
    version: int
    algorithm: str
    auth_data: JsonDict
    etag: int


@dataclass(frozen=True, slots=True)
class BackedUpKey:
    room_id: str
    session_id: str
    first_message_index: int
    forwarded_count: int
    is_verified: bool
    session_data: JsonDict

    def to_json(self) -> JsonDict:
        return {
            "first_message_index": self.first_message_index,
            "forwarded_count": self.forwarded_count,
            "is_verified": self.is_verified,
            "session_data": self.session_data,
        }


def create_version(conn: Conn, user_id: str, algorithm: str, auth_data: JsonDict) -> int:
    row = conn.execute(
        "SELECT COALESCE(MAX(version), 0) FROM room_key_backup_versions WHERE user_id = ?",
        (user_id,),
    ).fetchone()
    version = int(row[0] if row else 0) + 1
    conn.execute(
        "INSERT INTO room_key_backup_versions (user_id, version, algorithm, auth_data)"
        " VALUES (?, ?, ?, ?)",
        (user_id, version, algorithm, json.dumps(auth_data, separators=(",", ":"))),
    )
    return version


def count_live_versions(conn: Conn, user_id: str) -> int:
    (n,) = conn.execute(
        "SELECT COUNT(*) FROM room_key_backup_versions WHERE user_id = ? AND deleted = 0",
        (user_id,),
    ).fetchone()
    return int(n)


def get_version(conn: Conn, user_id: str, version: int | None) -> BackupVersion | None:
    """The given live version, or the current (newest live) one for None."""
    if version is None:
        row = conn.execute(
            "SELECT version, algorithm, auth_data, etag FROM room_key_backup_versions"
            " WHERE user_id = ? AND deleted = 0 ORDER BY version DESC LIMIT 1",
            (user_id,),
        ).fetchone()
    else:
        row = conn.execute(
            "SELECT version, algorithm, auth_data, etag FROM room_key_backup_versions"
            " WHERE user_id = ? AND version = ? AND deleted = 0",
            (user_id, version),
        ).fetchone()
    if row is None:
        return None
    return BackupVersion(int(row[0]), row[1], json.loads(row[2]), int(row[3]))


def update_auth_data(conn: Conn, user_id: str, version: int, auth_data: JsonDict) -> None:
    conn.execute(
        "UPDATE room_key_backup_versions SET auth_data = ? WHERE user_id = ? AND version = ?",
        (json.dumps(auth_data, separators=(",", ":")), user_id, version),
    )


def delete_version(conn: Conn, user_id: str, version: int) -> bool:
    """Mark the version deleted and drop its keys; False if it did not exist."""
    conn.execute(
        "UPDATE room_key_backup_versions SET deleted = 1 WHERE user_id = ? AND version = ?"
        " AND deleted = 0",
        (user_id, version),
    )
    if conn.changes() == 0:
        return False
    conn.execute(
        "DELETE FROM room_key_backup_keys WHERE user_id = ? AND version = ?", (user_id, version)
    )
    return True


def bump_etag(conn: Conn, user_id: str, version: int) -> None:
    conn.execute(
        "UPDATE room_key_backup_versions SET etag = etag + 1 WHERE user_id = ? AND version = ?",
        (user_id, version),
    )


def count_keys(conn: Conn, user_id: str, version: int) -> int:
    row = conn.execute(
        "SELECT COUNT(*) FROM room_key_backup_keys WHERE user_id = ? AND version = ?",
        (user_id, version),
    ).fetchone()
    return int(row[0]) if row else 0


def _key_from_row(row: Any) -> BackedUpKey:
    return BackedUpKey(
        room_id=row[0],
        session_id=row[1],
        first_message_index=int(row[2]),
        forwarded_count=int(row[3]),
        is_verified=bool(row[4]),
        session_data=json.loads(row[5]),
    )


_KEY_COLUMNS = (
    "room_id, session_id, first_message_index, forwarded_count, is_verified, session_data"
)


def get_key(
    conn: Conn, user_id: str, version: int, room_id: str, session_id: str
) -> BackedUpKey | None:
    row = conn.execute(
        f"SELECT {_KEY_COLUMNS} FROM room_key_backup_keys WHERE user_id = ? AND version = ?"
        " AND room_id = ? AND session_id = ?",
        (user_id, version, room_id, session_id),
    ).fetchone()
    return _key_from_row(row) if row else None


def get_keys(
    conn: Conn, user_id: str, version: int, room_id: str | None = None
) -> list[BackedUpKey]:
    if room_id is None:
        rows = conn.execute(
            f"SELECT {_KEY_COLUMNS} FROM room_key_backup_keys WHERE user_id = ? AND version = ?"
            " ORDER BY room_id, session_id",
            (user_id, version),
        )
    else:
        rows = conn.execute(
            f"SELECT {_KEY_COLUMNS} FROM room_key_backup_keys WHERE user_id = ? AND version = ?"
            " AND room_id = ? ORDER BY session_id",
            (user_id, version, room_id),
        )
    return [_key_from_row(r) for r in rows]


def put_key(conn: Conn, user_id: str, version: int, key: BackedUpKey) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO room_key_backup_keys (user_id, version, room_id, session_id,"
        " first_message_index, forwarded_count, is_verified, session_data)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            user_id,
            version,
            key.room_id,
            key.session_id,
            key.first_message_index,
            key.forwarded_count,
            int(key.is_verified),
            json.dumps(key.session_data, separators=(",", ":")),
        ),
    )


def delete_keys(
    conn: Conn,
    user_id: str,
    version: int,
    room_id: str | None = None,
    session_ids: Iterable[str] | None = None,
) -> int:
    """Delete all keys, one room's, or some sessions' of one room; the number deleted."""
    if room_id is None:
        conn.execute(
            "DELETE FROM room_key_backup_keys WHERE user_id = ? AND version = ?",
            (user_id, version),
        )
        return conn.changes()
    if session_ids is None:
        conn.execute(
            "DELETE FROM room_key_backup_keys WHERE user_id = ? AND version = ? AND room_id = ?",
            (user_id, version, room_id),
        )
        return conn.changes()
    n = 0
    for sid in session_ids:
        conn.execute(
            "DELETE FROM room_key_backup_keys WHERE user_id = ? AND version = ? AND room_id = ?"
            " AND session_id = ?",
            (user_id, version, room_id, sid),
        )
        n += conn.changes()
    return n
