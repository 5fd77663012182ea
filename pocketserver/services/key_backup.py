"""Server-side key backups (/room_keys/...).

Spec: shared/spec/content/client-server-api/modules/end_to_end_encryption.md,
"Server-side key backups"; data/api/client-server/key_backup.yaml. The server stores
encrypted session keys it cannot read. Keys may only be written to the current (newest
live) version. When a session is uploaded again the server keeps the better copy:

1. the one with ``is_verified`` true, if they differ; else
2. the one with the lower ``first_message_index``; else
3. the one with the lower ``forwarded_count`` (on a tie the stored copy stays).

``etag`` changes whenever the keys of a version change; ``count`` is the number of keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pocketserver import limits
from pocketserver.errors import BadJson, InvalidParam, MatrixError, MissingParam, NotFound, TooLarge
from pocketserver.protocol.canonical_json import CanonicalJsonError, encode_canonical_json
from pocketserver.services.params import digits
from pocketserver.storage import key_backup as store
from pocketserver.storage.database import Conn, Database
from pocketserver.storage.key_backup import BackedUpKey

JsonDict = dict[str, Any]

MAX_KEYS_PER_REQUEST = 100_000


def _parse_version(version: str | None) -> int | None:
    """A version string as this server issues it, or None if it cannot be one."""
    return None if version is None else digits(version)


def _check_algorithm_and_auth(body: Mapping[str, Any]) -> tuple[str, JsonDict]:
    algorithm = body.get("algorithm")
    if algorithm is None:
        raise MissingParam("Missing 'algorithm'")
    if not isinstance(algorithm, str) or not algorithm:
        raise BadJson("'algorithm' must be a string")
    auth_data = body.get("auth_data")
    if auth_data is None:
        raise MissingParam("Missing 'auth_data'")
    if not isinstance(auth_data, dict):
        raise BadJson("'auth_data' must be an object")
    try:
        encode_canonical_json(auth_data)
    except CanonicalJsonError as e:
        raise BadJson(f"auth_data: {e}") from None
    if limits.json_size(auth_data) > limits.MAX_BACKUP_AUTH_DATA_BYTES:
        raise TooLarge(f"auth_data is at most {limits.MAX_BACKUP_AUTH_DATA_BYTES} bytes")
    return algorithm, auth_data


def _parse_key(room_id: str, session_id: str, data: Any) -> BackedUpKey:
    if not isinstance(data, dict):
        raise BadJson("Key backup data must be an object")
    fmi = data.get("first_message_index")
    fc = data.get("forwarded_count")
    verified = data.get("is_verified")
    session_data = data.get("session_data")
    for name, value in (("first_message_index", fmi), ("forwarded_count", fc)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise BadJson(f"'{name}' must be a non-negative integer")
    if not isinstance(verified, bool):
        raise BadJson("'is_verified' must be a boolean")
    if not isinstance(session_data, dict):
        raise BadJson("'session_data' must be an object")
    try:
        encode_canonical_json(session_data)
    except CanonicalJsonError as e:
        raise BadJson(f"session_data: {e}") from None
    if limits.json_size(data) > limits.MAX_BACKUP_SESSION_BYTES:
        raise TooLarge(f"A backed-up session is at most {limits.MAX_BACKUP_SESSION_BYTES} bytes")
    assert isinstance(fmi, int) and isinstance(fc, int)
    return BackedUpKey(room_id, session_id, fmi, fc, verified, session_data)


def should_replace(old: BackedUpKey, new: BackedUpKey) -> bool:
    """Whether ``new`` is the better copy of the same session (the spec's three rules)."""
    if old.is_verified != new.is_verified:
        return new.is_verified
    if old.first_message_index != new.first_message_index:
        return new.first_message_index < old.first_message_index
    return new.forwarded_count < old.forwarded_count


def _version_info(conn: Conn, user_id: str, v: store.BackupVersion) -> JsonDict:
    return {
        "algorithm": v.algorithm,
        "auth_data": v.auth_data,
        "count": store.count_keys(conn, user_id, v.version),
        "etag": str(v.etag),
        "version": str(v.version),
    }


def _writable_version(conn: Conn, user_id: str, version: str) -> int:
    current = store.get_version(conn, user_id, None)
    if current is None:
        raise NotFound("No current backup version")
    if _parse_version(version) != current.version:
        raise MatrixError(
            403,
            "M_WRONG_ROOM_KEYS_VERSION",
            "Wrong backup version.",
            current_version=str(current.version),
        )
    return current.version


def _existing_version(conn: Conn, user_id: str, version: str) -> int:
    v = _parse_version(version)
    if v is None or store.get_version(conn, user_id, v) is None:
        raise NotFound("Unknown backup version")
    return v


def _update_response(conn: Conn, user_id: str, version: int, count: int | None = None) -> JsonDict:
    v = store.get_version(conn, user_id, version)
    return {
        "etag": str(v.etag if v else 0),
        "count": store.count_keys(conn, user_id, version) if count is None else count,
    }


class KeyBackupService:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- versions -------------------------------------------------------------------------

    async def create_version(self, user_id: str, body: JsonDict) -> str:
        algorithm, auth_data = _check_algorithm_and_auth(body)

        def txn(conn: Conn) -> int:
            if store.count_live_versions(conn, user_id) >= limits.MAX_BACKUP_VERSIONS:
                raise TooLarge(
                    f"A user keeps at most {limits.MAX_BACKUP_VERSIONS} backup versions; delete old ones"
                )
            return store.create_version(conn, user_id, algorithm, auth_data)

        return str(await self.db.write(txn))

    async def get_version(self, user_id: str, version: str | None) -> JsonDict:
        """The given version, or the current one for None; 404 if there is none."""

        def read(conn: Conn) -> JsonDict:
            if version is None:
                v = store.get_version(conn, user_id, None)
                if v is None:
                    raise NotFound("No current backup version")
            else:
                n = _parse_version(version)
                v = store.get_version(conn, user_id, n) if n is not None else None
                if v is None:
                    raise NotFound("Unknown backup version")
            return _version_info(conn, user_id, v)

        return await self.db.read(read)

    async def update_version(self, user_id: str, version: str, body: JsonDict) -> None:
        algorithm, auth_data = _check_algorithm_and_auth(body)
        body_version = body.get("version")
        if body_version is not None and body_version != version:
            raise InvalidParam("The version in the body does not match the path")

        def txn(conn: Conn) -> None:
            n = _parse_version(version)
            v = store.get_version(conn, user_id, n) if n is not None else None
            if v is None:
                raise NotFound("Unknown backup version")
            if v.algorithm != algorithm:
                raise InvalidParam("Algorithm does not match")
            store.update_auth_data(conn, user_id, v.version, auth_data)

        await self.db.write(txn)

    async def delete_version(self, user_id: str, version: str) -> None:
        def txn(conn: Conn) -> None:
            n = _parse_version(version)
            if n is None or not store.delete_version(conn, user_id, n):
                raise NotFound("Unknown backup version")

        await self.db.write(txn)

    # -- keys ---------------------------------------------------------------------------

    async def put_keys(self, user_id: str, version: str | None, rooms: Any) -> JsonDict:
        """Store ``{room_id: {"sessions": {session_id: KeyBackupData}}}``."""
        if version is None:
            raise MissingParam("Missing 'version' query parameter")
        if not isinstance(rooms, dict):
            raise BadJson("'rooms' must be an object")
        keys: list[BackedUpKey] = []
        for room_id, room in rooms.items():
            if not isinstance(room, dict) or not isinstance(room.get("sessions"), dict):
                raise BadJson("Each room must have a 'sessions' object")
            for session_id, data in room["sessions"].items():
                keys.append(_parse_key(room_id, session_id, data))
        if len(keys) > MAX_KEYS_PER_REQUEST:
            raise InvalidParam(f"At most {MAX_KEYS_PER_REQUEST} keys per request")

        def txn(conn: Conn) -> JsonDict:
            v = _writable_version(conn, user_id, version)
            changed = added = False
            for key in keys:
                old = store.get_key(conn, user_id, v, key.room_id, key.session_id)
                if old is None or should_replace(old, key):
                    store.put_key(conn, user_id, v, key)
                    changed = True
                    added = added or old is None
            count = store.count_keys(conn, user_id, v)
            if added and count > limits.MAX_BACKUP_SESSIONS:
                # Raising rolls the whole request back: nothing of it is stored.
                raise TooLarge(f"A backup version holds at most {limits.MAX_BACKUP_SESSIONS} sessions")
            if changed:
                store.bump_etag(conn, user_id, v)
            return _update_response(conn, user_id, v, count)

        return await self.db.write(txn)

    async def get_keys(
        self,
        user_id: str,
        version: str | None,
        room_id: str | None = None,
        session_id: str | None = None,
    ) -> JsonDict:
        """All keys ({"rooms": ...}), one room's ({"sessions": ...}) or one session's."""
        if version is None:
            raise MissingParam("Missing 'version' query parameter")

        def read(conn: Conn) -> JsonDict:
            v = _existing_version(conn, user_id, version)
            if session_id is not None:
                assert room_id is not None
                key = store.get_key(conn, user_id, v, room_id, session_id)
                if key is None:
                    raise NotFound("No key found for this session")
                return key.to_json()
            found = store.get_keys(conn, user_id, v, room_id)
            if room_id is not None:
                return {"sessions": {k.session_id: k.to_json() for k in found}}
            out: dict[str, JsonDict] = {}
            for k in found:
                out.setdefault(k.room_id, {"sessions": {}})["sessions"][k.session_id] = k.to_json()
            return {"rooms": out}

        return await self.db.read(read)

    async def delete_keys(
        self,
        user_id: str,
        version: str | None,
        room_id: str | None = None,
        session_id: str | None = None,
    ) -> JsonDict:
        if version is None:
            raise MissingParam("Missing 'version' query parameter")

        def txn(conn: Conn) -> JsonDict:
            v = _existing_version(conn, user_id, version)
            n = store.delete_keys(
                conn, user_id, v, room_id, [session_id] if session_id is not None else None
            )
            if n:
                store.bump_etag(conn, user_id, v)
            return _update_response(conn, user_id, v)

        return await self.db.write(txn)
