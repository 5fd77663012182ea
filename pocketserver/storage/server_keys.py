"""Other servers' signing keys (``server_keys``), as fetched by the key ring.

A current key (``verify_keys``) is stored with the response's ``valid_until_ts``; an
old one (``old_verify_keys``) with ``expired_ts`` and ``valid_until_ts = expired_ts``,
so "valid at time T" is always ``valid_until_ts >= T``.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from pocketserver.storage.database import Conn

# (key_id, raw verify key, valid_until_ts, expired_ts or None for a current key)
KeyRow = tuple[str, bytes, int, int | None]


def upsert_keys(conn: Conn, server_name: str, rows: Iterable[KeyRow], fetched_ts: int) -> None:
    """Store keys from a checked key response. A current key that is known already
    keeps the later of its two validities; an old key takes its ``expired_ts``; a key
    ID whose key bytes changed takes the new key."""
    for key_id, raw, valid_until_ts, expired_ts in rows:
        conn.execute(
            "INSERT INTO server_keys (server_name, key_id, verify_key, valid_until_ts, expired_ts, fetched_ts)"
            " VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (server_name, key_id) DO UPDATE SET"
            "  valid_until_ts = CASE"
            "   WHEN excluded.verify_key != server_keys.verify_key OR excluded.expired_ts IS NOT NULL"
            "   THEN excluded.valid_until_ts"
            "   ELSE max(server_keys.valid_until_ts, excluded.valid_until_ts) END,"
            "  expired_ts = CASE"
            "   WHEN excluded.verify_key != server_keys.verify_key OR excluded.expired_ts IS NOT NULL"
            "   THEN excluded.expired_ts ELSE server_keys.expired_ts END,"
            "  verify_key = excluded.verify_key,"
            "  fetched_ts = excluded.fetched_ts",
            (server_name, key_id, raw, valid_until_ts, expired_ts, fetched_ts),
        )


def get_keys(
    conn: Conn, server_name: str, key_ids: Collection[str]
) -> dict[str, tuple[bytes, int]]:
    """key ID -> (raw verify key, valid_until_ts) for the known ones of ``key_ids``."""
    out: dict[str, tuple[bytes, int]] = {}
    for key_id in key_ids:
        row = conn.execute(
            "SELECT verify_key, valid_until_ts FROM server_keys WHERE server_name = ? AND key_id = ?",
            (server_name, key_id),
        ).fetchone()
        if row is not None:
            out[key_id] = (bytes(row[0]), int(row[1]))
    return out


def get_server_keys(conn: Conn, server_name: str) -> list[KeyRow]:
    """Every stored key of ``server_name``."""
    return [
        (str(r[0]), bytes(r[1]), int(r[2]), None if r[3] is None else int(r[3]))
        for r in conn.execute(
            "SELECT key_id, verify_key, valid_until_ts, expired_ts FROM server_keys"
            " WHERE server_name = ? ORDER BY key_id",
            (server_name,),
        )
    ]
