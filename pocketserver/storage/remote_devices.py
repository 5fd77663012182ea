"""Remote users' device lists and cross-signing keys, cached (federation/e2e.py).

A remote user's list is cached only while they share a room with a local user (their
server then tells us of every change with ``m.device_list_update``). ``stale = 1`` means
the cache cannot be trusted (a gap in the updates): the next query resyncs it with
``GET /user/devices``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pocketserver.storage.database import Conn

JsonDict = dict[str, Any]


@dataclass(frozen=True, slots=True)
class RemoteList:
    stream_id: int | None
    stale: bool
    master_key: JsonDict | None
    self_signing_key: JsonDict | None
    fetched_ts: int


def _dump(obj: Mapping[str, Any] | None) -> str | None:
    return None if obj is None else json.dumps(obj, separators=(",", ":"))


def _load(text: str | None) -> JsonDict | None:
    return None if text is None else json.loads(text)


def is_tracked(conn: Conn, user_id: str) -> bool:
    """Whether ``user_id`` shares a room with a local user (we hear of their changes)."""
    row = conn.execute(
        "SELECT 1 FROM room_memberships a JOIN room_memberships b ON b.room_nid = a.room_nid"
        " WHERE a.user_id = ? AND a.membership = 'join' AND b.is_local = 1"
        " AND b.membership = 'join' LIMIT 1",
        (user_id,),
    ).fetchone()
    return row is not None


def get_list(conn: Conn, user_id: str) -> RemoteList | None:
    row = conn.execute(
        "SELECT stream_id, stale, master_key_json, self_signing_key_json, fetched_ts"
        " FROM remote_device_lists WHERE user_id = ?",
        (user_id,),
    ).fetchone()
    if row is None:
        return None
    return RemoteList(
        None if row[0] is None else int(row[0]),
        bool(row[1]),
        _load(row[2]),
        _load(row[3]),
        int(row[4]),
    )


def tracked_since(conn: Conn, user_id: str, ts_ms: int) -> bool:
    """Whether ``user_id`` and a local user have both been in one room since before
    ``ts_ms`` (both current joins arrived by then): then their server told us of every
    change since. Otherwise they, or this server, left and came back, and a list cached
    before may have missed some."""
    row = conn.execute(
        "SELECT 1 FROM room_memberships m JOIN events e ON e.event_nid = m.event_nid"
        " JOIN room_memberships l ON l.room_nid = m.room_nid"
        " JOIN events le ON le.event_nid = l.event_nid"
        " WHERE m.user_id = ? AND m.membership = 'join' AND e.received_ts <= ?"
        " AND l.is_local = 1 AND l.membership = 'join' AND le.received_ts <= ? LIMIT 1",
        (user_id, ts_ms, ts_ms),
    ).fetchone()
    return row is not None


def get_devices(
    conn: Conn, user_id: str, device_ids: Iterable[str] | None = None
) -> dict[str, tuple[JsonDict | None, str | None]]:
    """device ID -> (keys or None, display name) of the cached devices."""
    wanted = None if device_ids is None else set(device_ids)
    out: dict[str, tuple[JsonDict | None, str | None]] = {}
    for device_id, keys_json, name in conn.execute(
        "SELECT device_id, keys_json, display_name FROM remote_devices WHERE user_id = ?",
        (user_id,),
    ):
        if wanted is None or device_id in wanted:
            out[device_id] = (_load(keys_json), name)
    return out


def replace_list(
    conn: Conn,
    user_id: str,
    stream_id: int | None,
    devices: Mapping[str, tuple[Mapping[str, Any] | None, str | None]],
    master_key: Mapping[str, Any] | None,
    self_signing_key: Mapping[str, Any] | None,
    now_ms: int,
) -> None:
    """Store a user's whole device list (a resync), marking it current."""
    conn.execute("DELETE FROM remote_devices WHERE user_id = ?", (user_id,))
    conn.executemany(
        "INSERT INTO remote_devices (user_id, device_id, keys_json, display_name)"
        " VALUES (?, ?, ?, ?)",
        ((user_id, d, _dump(k), n) for d, (k, n) in devices.items()),
    )
    conn.execute(
        "INSERT INTO remote_device_lists (user_id, stream_id, stale, master_key_json,"
        " self_signing_key_json, fetched_ts) VALUES (?, ?, 0, ?, ?, ?)"
        " ON CONFLICT (user_id) DO UPDATE SET stream_id = excluded.stream_id, stale = 0,"
        " master_key_json = excluded.master_key_json,"
        " self_signing_key_json = excluded.self_signing_key_json,"
        " fetched_ts = excluded.fetched_ts",
        (user_id, stream_id, _dump(master_key), _dump(self_signing_key), now_ms),
    )


def upsert_device(
    conn: Conn, user_id: str, device_id: str, keys: Mapping[str, Any] | None, name: str | None
) -> None:
    conn.execute(
        "INSERT INTO remote_devices (user_id, device_id, keys_json, display_name)"
        " VALUES (?, ?, ?, ?) ON CONFLICT (user_id, device_id) DO UPDATE SET"
        " keys_json = coalesce(excluded.keys_json, keys_json),"
        " display_name = coalesce(excluded.display_name, display_name)",
        (user_id, device_id, _dump(keys), name),
    )


def delete_device(conn: Conn, user_id: str, device_id: str) -> None:
    conn.execute(
        "DELETE FROM remote_devices WHERE user_id = ? AND device_id = ?", (user_id, device_id)
    )


def set_stream_id(conn: Conn, user_id: str, stream_id: int) -> None:
    conn.execute(
        "UPDATE remote_device_lists SET stream_id = ? WHERE user_id = ?", (stream_id, user_id)
    )


def mark_stale(conn: Conn, user_id: str) -> None:
    conn.execute(
        "INSERT INTO remote_device_lists (user_id, stale) VALUES (?, 1)"
        " ON CONFLICT (user_id) DO UPDATE SET stale = 1",
        (user_id,),
    )


def set_cross_signing(
    conn: Conn,
    user_id: str,
    master_key: Mapping[str, Any] | None,
    self_signing_key: Mapping[str, Any] | None,
) -> None:
    conn.execute(
        "UPDATE remote_device_lists SET"
        " master_key_json = coalesce(?, master_key_json),"
        " self_signing_key_json = coalesce(?, self_signing_key_json) WHERE user_id = ?",
        (_dump(master_key), _dump(self_signing_key), user_id),
    )


def forget(conn: Conn, user_id: str) -> None:
    conn.execute("DELETE FROM remote_devices WHERE user_id = ?", (user_id,))
    conn.execute("DELETE FROM remote_device_lists WHERE user_id = ?", (user_id,))
