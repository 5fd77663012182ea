"""End-to-end encryption keys: device keys, one-time and fallback keys, cross-signing keys
and the signatures users upload over them.

Spec: shared/spec/content/client-server-api/modules/end_to_end_encryption.md, "Key
management API", "Cross-signing". Keys are kept as the compact JSON the client uploaded
(never re-serialised with changes: their signatures cover those bytes' canonical form).
Signatures uploaded later through /keys/signatures/upload live in ``key_signatures`` and
are merged in when keys are read, so an uploaded key object itself never changes.

This module knows nothing of validation or of who may see what; services/e2ee.py does.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from pocketserver.storage.database import Conn

JsonDict = dict[str, Any]


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


# -- device keys -------------------------------------------------------------------------


def get_device_keys(conn: Conn, user_id: str, device_id: str) -> JsonDict | None:
    row = conn.execute(
        "SELECT keys_json FROM device_keys WHERE user_id = ? AND device_id = ?",
        (user_id, device_id),
    ).fetchone()
    return json.loads(row[0]) if row else None


def set_device_keys(conn: Conn, user_id: str, device_id: str, keys: JsonDict) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO device_keys (user_id, device_id, keys_json) VALUES (?, ?, ?)",
        (user_id, device_id, _dumps(keys)),
    )


def query_device_keys(
    conn: Conn, user_id: str, device_ids: Iterable[str] | None
) -> dict[str, tuple[JsonDict, str | None]]:
    """Existing devices of ``user_id`` that have keys: device ID -> (keys, display name).

    ``device_ids`` None means all devices. Keys of a device row that no longer exists
    (deleted) are never returned.
    """
    sql = (
        "SELECT k.device_id, k.keys_json, d.display_name FROM device_keys k"
        " JOIN devices d ON d.user_id = k.user_id AND d.device_id = k.device_id"
        " WHERE k.user_id = ?"
    )
    out: dict[str, tuple[JsonDict, str | None]] = {}
    if device_ids is None:
        rows = conn.execute(sql, (user_id,))
        for device_id, keys_json, name in rows:
            out[device_id] = (json.loads(keys_json), name)
        return out
    for device_id in dict.fromkeys(device_ids):
        row = conn.execute(sql + " AND k.device_id = ?", (user_id, device_id)).fetchone()
        if row:
            out[row[0]] = (json.loads(row[1]), row[2])
    return out


def device_exists(conn: Conn, user_id: str, device_id: str) -> bool:
    return (
        conn.execute(
            "SELECT 1 FROM devices WHERE user_id = ? AND device_id = ?", (user_id, device_id)
        ).fetchone()
        is not None
    )


def delete_device_e2e(conn: Conn, user_id: str, device_id: str) -> bool:
    """Forget every key of a deleted device; True if it had published device keys."""
    conn.execute(
        "DELETE FROM device_keys WHERE user_id = ? AND device_id = ?", (user_id, device_id)
    )
    had_keys = conn.changes() > 0
    conn.execute(
        "DELETE FROM one_time_keys WHERE user_id = ? AND device_id = ?", (user_id, device_id)
    )
    conn.execute(
        "DELETE FROM fallback_keys WHERE user_id = ? AND device_id = ?", (user_id, device_id)
    )
    conn.execute(
        "DELETE FROM key_signatures WHERE target_user_id = ? AND target_key_id = ?",
        (user_id, device_id),
    )
    return had_keys


# -- one-time keys ---------------------------------------------------------------------------


def get_one_time_keys(
    conn: Conn, user_id: str, device_id: str, algo_key_ids: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], str]:
    """The stored JSON of those (algorithm, key_id) pairs that already exist."""
    out: dict[tuple[str, str], str] = {}
    for algorithm, key_id in algo_key_ids:
        row = conn.execute(
            "SELECT key_json FROM one_time_keys WHERE user_id = ? AND device_id = ?"
            " AND algorithm = ? AND key_id = ?",
            (user_id, device_id, algorithm, key_id),
        ).fetchone()
        if row:
            out[(algorithm, key_id)] = row[0]
    return out


def insert_one_time_keys(
    conn: Conn, user_id: str, device_id: str, keys: Iterable[tuple[str, str, Any]]
) -> None:
    """Insert (algorithm, key_id, key) rows; existing identical ones are left alone."""
    conn.executemany(
        "INSERT OR IGNORE INTO one_time_keys (user_id, device_id, algorithm, key_id, key_json)"
        " VALUES (?, ?, ?, ?, ?)",
        [(user_id, device_id, a, k, _dumps(v)) for a, k, v in keys],
    )


def count_one_time_keys(conn: Conn, user_id: str, device_id: str) -> dict[str, int]:
    rows = conn.execute(
        "SELECT algorithm, COUNT(*) FROM one_time_keys WHERE user_id = ? AND device_id = ?"
        " GROUP BY algorithm",
        (user_id, device_id),
    )
    return {a: int(n) for a, n in rows}


def claim_one_time_key(
    conn: Conn, user_id: str, device_id: str, algorithm: str
) -> tuple[str, JsonDict | str] | None:
    """Remove and return the oldest one-time key (key_id, key), or None if none is left.

    Runs in the single write transaction, so no two claims can ever get the same key.
    """
    row = conn.execute(
        "DELETE FROM one_time_keys WHERE id = (SELECT id FROM one_time_keys"
        " WHERE user_id = ? AND device_id = ? AND algorithm = ? ORDER BY id LIMIT 1)"
        " RETURNING key_id, key_json",
        (user_id, device_id, algorithm),
    ).fetchone()
    return (row[0], json.loads(row[1])) if row else None


# -- fallback keys ---------------------------------------------------------------------


def get_fallback_key(
    conn: Conn, user_id: str, device_id: str, algorithm: str
) -> tuple[str, str, bool] | None:
    """(key_id, key JSON text, used) of the device's fallback key for ``algorithm``."""
    row = conn.execute(
        "SELECT key_id, key_json, used FROM fallback_keys WHERE user_id = ? AND device_id = ?"
        " AND algorithm = ?",
        (user_id, device_id, algorithm),
    ).fetchone()
    return (row[0], row[1], bool(row[2])) if row else None


def set_fallback_key(
    conn: Conn, user_id: str, device_id: str, algorithm: str, key_id: str, key: Any
) -> None:
    """Replace the device's fallback key for ``algorithm`` (one per algorithm), unused."""
    conn.execute(
        "INSERT OR REPLACE INTO fallback_keys (user_id, device_id, algorithm, key_id, key_json,"
        " used) VALUES (?, ?, ?, ?, ?, 0)",
        (user_id, device_id, algorithm, key_id, _dumps(key)),
    )


def count_fallback_keys(conn: Conn, user_id: str, device_id: str) -> int:
    """How many algorithms the device has a fallback key for."""
    (n,) = conn.execute(
        "SELECT COUNT(*) FROM fallback_keys WHERE user_id = ? AND device_id = ?",
        (user_id, device_id),
    ).fetchone()
    return int(n)


def claim_fallback_key(
    conn: Conn, user_id: str, device_id: str, algorithm: str
) -> tuple[str, JsonDict | str] | None:
    """Mark the fallback key used and return it (it stays until replaced)."""
    row = conn.execute(
        "UPDATE fallback_keys SET used = 1 WHERE user_id = ? AND device_id = ? AND algorithm = ?"
        " RETURNING key_id, key_json",
        (user_id, device_id, algorithm),
    ).fetchone()
    return (row[0], json.loads(row[1])) if row else None


def unused_fallback_key_types(conn: Conn, user_id: str, device_id: str) -> list[str]:
    rows = conn.execute(
        "SELECT algorithm FROM fallback_keys WHERE user_id = ? AND device_id = ? AND used = 0"
        " ORDER BY algorithm",
        (user_id, device_id),
    )
    return [r[0] for r in rows]


# -- cross-signing keys ----------------------------------------------------------------


def get_cross_signing_key(conn: Conn, user_id: str, key_type: str) -> JsonDict | None:
    row = conn.execute(
        "SELECT keys_json FROM cross_signing_keys WHERE user_id = ? AND key_type = ?",
        (user_id, key_type),
    ).fetchone()
    return json.loads(row[0]) if row else None


def set_cross_signing_key(
    conn: Conn, user_id: str, key_type: str, key: JsonDict, stream_pos: int
) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO cross_signing_keys (user_id, key_type, keys_json, stream_pos)"
        " VALUES (?, ?, ?, ?)",
        (user_id, key_type, _dumps(key), stream_pos),
    )


# -- signatures ----------------------------------------------------------------------------


def insert_signature(
    conn: Conn,
    signer_user_id: str,
    signer_key_id: str,
    target_user_id: str,
    target_key_id: str,
    signature: str,
) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO key_signatures (signer_user_id, signer_key_id, target_user_id,"
        " target_key_id, signature) VALUES (?, ?, ?, ?, ?)",
        (signer_user_id, signer_key_id, target_user_id, target_key_id, signature),
    )


def delete_signatures_by(conn: Conn, signer_user_id: str, signer_key_id: str) -> None:
    """Drop the signatures a replaced cross-signing key made."""
    conn.execute(
        "DELETE FROM key_signatures WHERE signer_user_id = ? AND signer_key_id = ?",
        (signer_user_id, signer_key_id),
    )


def delete_signatures_on(conn: Conn, target_user_id: str, target_key_id: str) -> None:
    """Drop the signatures over a replaced key."""
    conn.execute(
        "DELETE FROM key_signatures WHERE target_user_id = ? AND target_key_id = ?",
        (target_user_id, target_key_id),
    )


def get_signatures_on(
    conn: Conn, target_user_id: str, target_key_id: str, signers: Iterable[str]
) -> dict[str, dict[str, str]]:
    """Uploaded signatures over one key by the given signer users: user -> key ID -> sig."""
    out: dict[str, dict[str, str]] = {}
    for signer in dict.fromkeys(signers):
        rows = conn.execute(
            "SELECT signer_key_id, signature FROM key_signatures WHERE target_user_id = ?"
            " AND target_key_id = ? AND signer_user_id = ?",
            (target_user_id, target_key_id, signer),
        )
        for key_id, sig in rows:
            out.setdefault(signer, {})[key_id] = sig
    return out


def get_signatures_by_target(
    conn: Conn, target_user_id: str, signer_user_id: str
) -> dict[str, dict[str, str]]:
    """All of one signer's uploaded signatures over a user's keys: target key ID ->
    signer key ID -> signature (one query for all of a user's devices)."""
    out: dict[str, dict[str, str]] = {}
    rows = conn.execute(
        "SELECT target_key_id, signer_key_id, signature FROM key_signatures"
        " WHERE target_user_id = ? AND signer_user_id = ?",
        (target_user_id, signer_user_id),
    )
    for target, key_id, sig in rows:
        out.setdefault(target, {})[key_id] = sig
    return out
