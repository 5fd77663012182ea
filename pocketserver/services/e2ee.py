"""End-to-end encryption, the server's part: key distribution, cross-signing, device-list
tracking and send-to-device messaging.

Spec: shared/spec/content/client-server-api/modules/end_to_end_encryption.md ("Key
management API", "Cross-signing", "Tracking the device list for a user", "Extensions to
/sync") and send_to_device.md. Key backup lives in services/key_backup.py.

The server never sees plaintext: it stores what devices publish (device keys and
one-time keys are checked for shape and owner; their self-signatures are the
downloading clients' to verify, as the spec asks of them), checks cross-signing keys
and uploaded signatures against the key that must have made them, gives each one-time
key out once, and queues to-device messages until the target device acknowledges them.

What /sync calls: :meth:`E2eeService.sync_sections`, every encryption section of one
answer (``device_lists``, ``to_device``, ``device_one_time_keys_count``,
``device_unused_fallback_key_types``) in one read transaction; its to-device part is
:meth:`E2eeService.to_device_for_sync` (acknowledge, then fetch one device's messages).

Hooks for the accounts service: :meth:`on_device_created`, :meth:`on_device_deleted` and
:meth:`on_device_updated`; each writes a device-list change, so that everyone sharing a
room with the user re-queries their devices (a new login, a device gone, a new name).

Remote users: /keys/query and /keys/claim hand remote users to :attr:`remote_keys`
(federation/e2e.py), and without one report their servers in ``failures`` (as the spec
says for unreachable servers). Key and device changes, and to-device messages for remote
users, are handed to :attr:`federation` (federation/edus.py) inside the transaction that
makes them, so other servers hear of them even across a crash.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from pocketserver import limits
from pocketserver.errors import (
    BadJson,
    Forbidden,
    InvalidParam,
    MatrixError,
    MissingParam,
    TooLarge,
)
from pocketserver.protocol.canonical_json import CanonicalJsonError, encode_canonical_json
from pocketserver.protocol.identifiers import InvalidIdentifier, UserID
from pocketserver.protocol.signing import (
    KeyFormatError,
    SignatureError,
    decode_verify_key_base64,
    verify_json,
)
from pocketserver.services.clock import Clock
from pocketserver.services.notifier import Notifier
from pocketserver.storage import device_lists, e2e_keys, to_device
from pocketserver.storage.database import Conn, Database
from pocketserver.storage.streams import next_stream_pos

JsonDict = dict[str, Any]

#: The algorithm whose count clients expect to see even when it is zero.
SIGNED_CURVE25519 = "signed_curve25519"
CROSS_SIGNING_TYPES = ("master", "self_signing", "user_signing")

MAX_KEYS_PER_UPLOAD = 1000  # one-time keys in one /keys/upload
MAX_QUERY_USERS = 10_000  # users in one /keys/query or /keys/claim
MAX_TO_DEVICE_MESSAGES = 10_000  # target devices of one /sendToDevice, after "*"


def invalid_signature(message: str = "Invalid signature") -> MatrixError:
    return MatrixError(400, "M_INVALID_SIGNATURE", message)


def parse_stream_token(token: str) -> int:
    """The main-stream position of a /sync ``next_batch`` token.

    Accepts the forms this server hands out: a position optionally prefixed with ``s``
    and optionally followed by ``_`` or ``.`` and further components; a sliding sync
    ``pos`` (``ss`` prefix) too.
    """
    m = re.fullmatch(r"(?:ss|s)?([0-9]{1,16})(?:[_.~].*)?", token)
    if m is None:
        raise InvalidParam(f"Invalid stream token {token!r}")
    return int(m.group(1))


def _user_domain(user_id: Any, where: str) -> str:
    if not isinstance(user_id, str):
        raise BadJson(f"{where}: user IDs must be strings")
    try:
        return UserID.parse(user_id).domain
    except InvalidIdentifier:
        raise InvalidParam(f"{where}: invalid user ID {user_id!r}") from None


def _strip(obj: Mapping[str, Any]) -> JsonDict:
    return {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}


def _check_canonical(obj: Any, where: str) -> None:
    try:
        encode_canonical_json(obj)
    except CanonicalJsonError as e:
        raise BadJson(f"{where}: {e}") from None


def _verify(obj: Mapping[str, Any], signer: str, key_id: str, public_key_b64: str) -> bool:
    try:
        verify_json(obj, signer, key_id, decode_verify_key_base64(public_key_b64), strict=True)
    except (SignatureError, KeyFormatError):
        return False
    return True


def _ed25519_of(keys: Mapping[str, Any], key_id: str) -> str | None:
    k = keys.get("keys")
    v = k.get(key_id) if isinstance(k, Mapping) else None
    return v if isinstance(v, str) else None


def _cross_signing_pubkey(key: Mapping[str, Any]) -> str:
    """The single ``ed25519:<pub>`` -> ``<pub>`` entry of a cross-signing key."""
    keys = key.get("keys")
    if not isinstance(keys, Mapping) or len(keys) != 1:
        raise InvalidParam("A cross-signing key must have exactly one key")
    ((key_id, value),) = keys.items()
    if not isinstance(key_id, str) or not isinstance(value, str):
        raise BadJson("Cross-signing key IDs and keys must be strings")
    if key_id != f"ed25519:{value}":
        raise InvalidParam("A cross-signing key's ID must be ed25519:<its public key>")
    try:
        decode_verify_key_base64(value)
    except KeyFormatError:
        raise InvalidParam("Malformed cross-signing public key") from None
    return value


@dataclass(frozen=True, slots=True)
class _OneTimeKey:
    algorithm: str
    key_id: str
    key: Any


def _parse_key_map(obj: Any, where: str) -> list[_OneTimeKey]:
    """Check a ``{"<algorithm>:<key_id>": key}`` map (one-time or fallback keys)."""
    if not isinstance(obj, dict):
        raise BadJson(f"{where!r} must be an object")
    out: list[_OneTimeKey] = []
    for name, key in obj.items():
        algorithm, sep, key_id = name.partition(":")
        if not sep or not algorithm or not key_id:
            raise InvalidParam(f"{where}: key names must be <algorithm>:<key_id>, not {name!r}")
        if isinstance(key, str):
            if algorithm.startswith("signed_"):
                raise InvalidParam(f"{where}: {name} must be a signed key object")
        elif isinstance(key, dict):
            if not isinstance(key.get("key"), str):
                raise BadJson(f"{where}: {name} needs a 'key' string")
            if not isinstance(key.get("signatures"), dict):
                raise BadJson(f"{where}: {name} needs 'signatures'")
        else:
            raise BadJson(f"{where}: {name} must be a string or an object")
        _check_canonical(key, f"{where}.{name}")
        if len(name.encode("utf-8")) + limits.json_size(key) > limits.MAX_ONE_TIME_KEY_BYTES:
            raise TooLarge(f"{where}: a key is at most {limits.MAX_ONE_TIME_KEY_BYTES} bytes")
        out.append(_OneTimeKey(algorithm, key_id, key))
    return out


def _check_device_keys(dk: Any, user_id: str, device_id: str) -> JsonDict:
    if not isinstance(dk, dict):
        raise BadJson("'device_keys' must be an object")
    if dk.get("user_id") != user_id:
        raise InvalidParam("device_keys.user_id does not match the logged-in user")
    if dk.get("device_id") != device_id:
        raise InvalidParam("device_keys.device_id does not match the logged-in device")
    algorithms = dk.get("algorithms")
    if not isinstance(algorithms, list) or not all(isinstance(a, str) for a in algorithms):
        raise BadJson("device_keys.algorithms must be a list of strings")
    keys = dk.get("keys")
    if not isinstance(keys, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in keys.items()
    ):
        raise BadJson("device_keys.keys must map key IDs to strings")
    if not isinstance(dk.get("signatures"), dict):
        raise BadJson("device_keys.signatures must be an object")
    _check_canonical(dk, "device_keys")
    if limits.json_size(dk) > limits.MAX_DEVICE_KEYS_BYTES:
        raise TooLarge(f"device_keys are at most {limits.MAX_DEVICE_KEYS_BYTES} bytes")
    # The shape and the owner are checked, not the cryptography: the spec leaves
    # verifying a device's self-signature to the clients that download it (which must,
    # end_to_end_encryption.md "Downloading keys"), and a server that refused keys it
    # cannot parse would stand between a client and its peers on a question of format.
    return dk


class RemoteKeys(Protocol):
    """Keys of other servers' users (federation/e2e.py)."""

    async def query(
        self, requester: str, users: Mapping[str, list[str] | None], timeout_s: float | None = None
    ) -> tuple[JsonDict, JsonDict]: ...

    async def claim(
        self, wanted: Mapping[str, Mapping[str, str]], timeout_s: float | None = None
    ) -> tuple[JsonDict, JsonDict]: ...


class KeyChangeOutbox(Protocol):
    """What other servers must hear of (federation/edus.py); called inside the write."""

    def device_list_update_in_txn(
        self, conn: Conn, stream_id: int, user_id: str, device_id: str, *, deleted: bool = False
    ) -> None: ...

    def signing_key_update_in_txn(
        self,
        conn: Conn,
        user_id: str,
        master_key: Mapping[str, Any] | None,
        self_signing_key: Mapping[str, Any] | None,
    ) -> None: ...

    def to_device_in_txn(
        self,
        conn: Conn,
        destination: str,
        sender: str,
        event_type: str,
        message_id: str,
        messages: Mapping[str, Any],
    ) -> None: ...


def _timeout_s(timeout_ms: Any) -> float | None:
    if timeout_ms is None:
        return None
    if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int | float) or timeout_ms < 0:
        raise BadJson("'timeout' must be a non-negative integer (milliseconds)")
    return timeout_ms / 1000


class E2eeService:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        notifier: Notifier,
        server_name: str,
        ratelimiter: Any = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.notifier = notifier
        self.server_name = server_name
        # A RateLimiter (services/ratelimit.py) or None; "to_device" costs one token per
        # target device.
        self.ratelimiter = ratelimiter
        self.remote_keys: RemoteKeys | None = None
        self.federation: KeyChangeOutbox | None = None

    # -- /keys/upload ------------------------------------------------------------------

    async def upload_keys(self, user_id: str, device_id: str, body: JsonDict) -> JsonDict:
        """POST /keys/upload: store device, one-time and fallback keys; return counts.

        Re-uploading an identical key is a no-op; a different one-time or fallback key
        under an existing key ID is refused with 400 and nothing is stored. New device
        keys replace the device's old ones and are announced as a device-list change.
        """
        dk = body.get("device_keys")
        device_keys = _check_device_keys(dk, user_id, device_id) if dk is not None else None
        otks = (
            _parse_key_map(body["one_time_keys"], "one_time_keys")
            if body.get("one_time_keys") is not None
            else []
        )
        fbks = (
            _parse_key_map(body["fallback_keys"], "fallback_keys")
            if body.get("fallback_keys") is not None
            else []
        )
        if len(otks) > MAX_KEYS_PER_UPLOAD:
            raise InvalidParam(f"At most {MAX_KEYS_PER_UPLOAD} one-time keys per upload")
        if len({k.algorithm for k in fbks}) != len(fbks):
            raise InvalidParam("At most one fallback key per algorithm")

        def txn(conn: Conn) -> tuple[dict[str, int], int | None]:
            if not e2e_keys.device_exists(conn, user_id, device_id):
                raise MatrixError(400, "M_UNKNOWN", "This device does not exist")
            stored = e2e_keys.get_device_keys(conn, user_id, device_id)
            changed = False
            if device_keys is not None:
                # New identity keys for a device replace the old ones (a client that
                # lost its keys re-uploads): the change reaches every user and server
                # sharing a room, who re-query and see the new keys.
                if stored != device_keys:
                    e2e_keys.set_device_keys(conn, user_id, device_id, device_keys)
                    changed = True
            existing = e2e_keys.get_one_time_keys(
                conn, user_id, device_id, [(k.algorithm, k.key_id) for k in otks]
            )
            new_otks = []
            for k in otks:
                old = existing.get((k.algorithm, k.key_id))
                if old is None:
                    new_otks.append((k.algorithm, k.key_id, k.key))
                elif json.loads(old) != k.key:
                    raise InvalidParam(
                        f"One-time key {k.algorithm}:{k.key_id} already exists with a"
                        " different value"
                    )
            if new_otks:
                counts = e2e_keys.count_one_time_keys(conn, user_id, device_id)
                if sum(counts.values()) + len(new_otks) > limits.MAX_ONE_TIME_KEYS:
                    raise TooLarge(
                        f"A device stores at most {limits.MAX_ONE_TIME_KEYS} one-time keys"
                    )
                e2e_keys.insert_one_time_keys(conn, user_id, device_id, new_otks)
            for k in fbks:
                old_fb = e2e_keys.get_fallback_key(conn, user_id, device_id, k.algorithm)
                if old_fb is not None and old_fb[0] == k.key_id:
                    if json.loads(old_fb[1]) != k.key:
                        raise InvalidParam(
                            f"Fallback key {k.algorithm}:{k.key_id} already exists with a"
                            " different value"
                        )
                    continue
                if old_fb is None and (
                    e2e_keys.count_fallback_keys(conn, user_id, device_id) >= limits.MAX_FALLBACK_KEYS
                ):
                    raise TooLarge(f"A device has at most {limits.MAX_FALLBACK_KEYS} fallback keys")
                e2e_keys.set_fallback_key(conn, user_id, device_id, k.algorithm, k.key_id, k.key)
            pos = None
            if changed:
                pos = next_stream_pos(conn)
                device_lists.add_change(conn, pos, user_id)
                if self.federation is not None:
                    self.federation.device_list_update_in_txn(conn, pos, user_id, device_id)
            return e2e_keys.count_one_time_keys(conn, user_id, device_id), pos

        counts, pos = await self.db.write(txn)
        if pos is not None:
            self.notifier.notify(pos)
        counts.setdefault(SIGNED_CURVE25519, 0)
        return {"one_time_key_counts": counts}

    # -- /keys/query ------------------------------------------------------------------------

    async def query_keys(
        self, requester: str, device_keys: Any, timeout_ms: Any = None
    ) -> JsonDict:
        """POST /keys/query; remote users through :attr:`remote_keys` (their servers
        listed in ``failures`` when they cannot be asked or do not answer).

        Visible to everyone: device keys (with the owner's self-signing signatures),
        master and self-signing keys. The user-signing key only to its owner. Signatures
        over a master key only those by its owner and by the requester.
        """
        if not isinstance(device_keys, dict):
            raise BadJson("'device_keys' must be an object")
        if len(device_keys) > MAX_QUERY_USERS:
            raise InvalidParam(f"At most {MAX_QUERY_USERS} users per query")
        timeout_s = _timeout_s(timeout_ms)
        local: dict[str, list[str] | None] = {}
        remote: dict[str, list[str] | None] = {}
        failures: JsonDict = {}
        for user_id, devices in device_keys.items():
            domain = _user_domain(user_id, "device_keys")
            if devices is None:
                devices = []
            if not isinstance(devices, list) or not all(isinstance(d, str) for d in devices):
                raise BadJson("device_keys values must be lists of device IDs")
            if domain != self.server_name:
                if self.remote_keys is not None:
                    remote[user_id] = devices or None
                    continue
                failures[domain] = {
                    "status": 503,
                    "message": "Querying keys of other servers is not available",
                }
                continue
            local[user_id] = devices or None

        def read(conn: Conn) -> JsonDict:
            out: JsonDict = {
                "device_keys": {},
                "master_keys": {},
                "self_signing_keys": {},
                "user_signing_keys": {},
            }
            for user_id, devices in local.items():
                self._query_user(conn, requester, user_id, devices, out)
            return out

        result = await self.db.read(read)
        if remote and self.remote_keys is not None:
            found, remote_failures = await self.remote_keys.query(requester, remote, timeout_s)
            for section in ("device_keys", "master_keys", "self_signing_keys"):
                result[section].update(found.get(section, {}))
            failures.update(remote_failures)
        result["failures"] = failures
        return result

    @staticmethod
    def _query_user(
        conn: Conn, requester: str, user_id: str, devices: list[str] | None, out: JsonDict
    ) -> None:
        master = e2e_keys.get_cross_signing_key(conn, user_id, "master")
        ssk = e2e_keys.get_cross_signing_key(conn, user_id, "self_signing")
        found = e2e_keys.query_device_keys(conn, user_id, devices)
        if not found and master is None and not _user_known(conn, user_id):
            return
        result: JsonDict = {}
        extra_sigs = e2e_keys.get_signatures_by_target(conn, user_id, user_id) if found else {}
        for device_id, (keys, display_name) in found.items():
            extra = extra_sigs.get(device_id)
            if extra:
                keys = _merge_signatures(keys, {user_id: extra})
            unsigned = dict(keys.get("unsigned") or {})
            if display_name is not None:
                unsigned["device_display_name"] = display_name
            keys["unsigned"] = unsigned
            result[device_id] = keys
        out["device_keys"][user_id] = result
        if master is not None:
            pub = _ed25519_value(master)
            master_sigs = e2e_keys.get_signatures_on(conn, user_id, pub, [user_id, requester])
            out["master_keys"][user_id] = _merge_signatures(master, master_sigs)
        if ssk is not None:
            out["self_signing_keys"][user_id] = ssk
        if user_id == requester:
            usk = e2e_keys.get_cross_signing_key(conn, user_id, "user_signing")
            if usk is not None:
                out["user_signing_keys"][user_id] = usk

    # -- /keys/claim -----------------------------------------------------------------------

    async def claim_keys(self, one_time_keys: Any, timeout_ms: Any = None) -> JsonDict:
        """POST /keys/claim: each one-time key is given out once; then the fallback key.
        Remote users' keys are claimed through :attr:`remote_keys`."""
        if not isinstance(one_time_keys, dict):
            raise BadJson("'one_time_keys' must be an object")
        timeout_s = _timeout_s(timeout_ms)
        wanted: list[tuple[str, str, str]] = []
        remote: dict[str, dict[str, str]] = {}
        failures: JsonDict = {}
        for user_id, devices in one_time_keys.items():
            domain = _user_domain(user_id, "one_time_keys")
            if not isinstance(devices, dict) or not all(
                isinstance(d, str) and isinstance(a, str) for d, a in devices.items()
            ):
                raise BadJson("one_time_keys values must map device IDs to algorithms")
            if domain != self.server_name:
                if self.remote_keys is not None:
                    remote[user_id] = devices
                    continue
                failures[domain] = {
                    "status": 503,
                    "message": "Claiming keys of other servers is not available",
                }
                continue
            wanted.extend((user_id, d, a) for d, a in devices.items())
        if len(wanted) + sum(len(d) for d in remote.values()) > MAX_QUERY_USERS:
            raise InvalidParam(f"At most {MAX_QUERY_USERS} keys per claim")

        def txn(conn: Conn) -> JsonDict:
            out: JsonDict = {}
            for user_id, device_id, algorithm in wanted:
                got = e2e_keys.claim_one_time_key(conn, user_id, device_id, algorithm)
                if got is None:
                    got = e2e_keys.claim_fallback_key(conn, user_id, device_id, algorithm)
                if got is not None:
                    out.setdefault(user_id, {})[device_id] = {f"{algorithm}:{got[0]}": got[1]}
            return out

        claimed = await self.db.write(txn) if wanted else {}
        if remote and self.remote_keys is not None:
            remote_claimed, remote_failures = await self.remote_keys.claim(remote, timeout_s)
            claimed.update(remote_claimed)
            failures.update(remote_failures)
        return {"one_time_keys": claimed, "failures": failures}

    # -- /keys/changes --------------------------------------------------------------------

    async def key_changes(self, user_id: str, from_token: str, to_token: str) -> JsonDict:
        """GET /keys/changes between two /sync tokens."""
        since = parse_stream_token(from_token)
        upto = parse_stream_token(to_token)
        if upto < since:
            since, upto = upto, since
        changed, left = await self.db.read(device_lists.device_list_delta, user_id, since, upto)
        return {"changed": changed, "left": left}

    # -- cross-signing -----------------------------------------------------------------

    async def cross_signing_needs_auth(self, user_id: str, body: JsonDict) -> bool:
        """Whether /keys/device_signing/upload must be behind user-interactive auth:
        yes unless the user has no master key yet or the request re-uploads exactly the
        keys already stored (cross_signing.yaml)."""

        def read(conn: Conn) -> bool:
            master = e2e_keys.get_cross_signing_key(conn, user_id, "master")
            if master is None:
                return False
            for key_type in CROSS_SIGNING_TYPES:
                new = body.get(f"{key_type}_key")
                if new is None:
                    continue
                if new != e2e_keys.get_cross_signing_key(conn, user_id, key_type):
                    return True
            return False

        return await self.db.read(read)

    async def upload_cross_signing(self, user_id: str, body: JsonDict) -> None:
        """POST /keys/device_signing/upload (after any user-interactive auth)."""
        new: dict[str, JsonDict] = {}
        for key_type in CROSS_SIGNING_TYPES:
            key = body.get(f"{key_type}_key")
            if key is None:
                continue
            if not isinstance(key, dict):
                raise BadJson(f"'{key_type}_key' must be an object")
            if key.get("user_id") != user_id:
                raise InvalidParam(f"{key_type}_key.user_id must be your user ID")
            usage = key.get("usage")
            if not isinstance(usage, list) or key_type not in usage:
                raise InvalidParam(f"{key_type}_key.usage must include {key_type!r}")
            sigs = key.get("signatures")
            if sigs is not None and not isinstance(sigs, dict):
                raise BadJson(f"{key_type}_key.signatures must be an object")
            _cross_signing_pubkey(key)
            _check_canonical(key, f"{key_type}_key")
            if limits.json_size(key) > limits.MAX_DEVICE_KEYS_BYTES:
                raise TooLarge(f"A cross-signing key is at most {limits.MAX_DEVICE_KEYS_BYTES} bytes")
            new[key_type] = key

        def txn(conn: Conn) -> int | None:
            master = new.get("master") or e2e_keys.get_cross_signing_key(conn, user_id, "master")
            if master is None:
                raise MissingParam("No master signing key is available")
            master_pub = _cross_signing_pubkey(master)
            for key_type in ("self_signing", "user_signing"):
                key = new.get(key_type)
                if key is not None and not _verify(
                    key, user_id, f"ed25519:{master_pub}", master_pub
                ):
                    raise invalid_signature(
                        f"The {key_type} key is not signed by the master key"
                    )
            changed = False
            public_change = False
            pos = 0
            for key_type, key in new.items():
                pub = _cross_signing_pubkey(key)
                if e2e_keys.device_exists(conn, user_id, pub):
                    raise Forbidden("Key ID in use")
                old = e2e_keys.get_cross_signing_key(conn, user_id, key_type)
                if old == key:
                    continue
                if not changed:
                    pos = next_stream_pos(conn)
                    changed = True
                if key_type != "user_signing":
                    public_change = True
                if old is not None:
                    old_pub = _ed25519_value(old)
                    if key_type == "master":
                        e2e_keys.delete_signatures_on(conn, user_id, old_pub)
                    elif old_pub != pub:
                        e2e_keys.delete_signatures_by(conn, user_id, f"ed25519:{old_pub}")
                e2e_keys.set_cross_signing_key(conn, user_id, key_type, key, pos)
            if not changed:
                return None
            # Only the owner ever sees a user-signing key (/keys/query), so a change to it
            # alone is news to the owner's other devices, not to everyone sharing a room.
            device_lists.add_change(conn, pos, user_id, None if public_change else user_id)
            if public_change and self.federation is not None:
                self.federation.signing_key_update_in_txn(
                    conn,
                    user_id,
                    e2e_keys.get_cross_signing_key(conn, user_id, "master"),
                    e2e_keys.get_cross_signing_key(conn, user_id, "self_signing"),
                )
            return pos

        pos = await self.db.write(txn)
        if pos is not None:
            self.notifier.notify(pos)

    async def upload_signatures(self, user_id: str, body: JsonDict) -> JsonDict:
        """POST /keys/signatures/upload: keep each valid signature, report the others.

        Own keys: a device is signed by the self-signing key, the master key by one of
        the user's devices. Another user's master key is signed by the user-signing key
        (and only the signer will see that signature).
        """
        items: list[tuple[str, str, JsonDict]] = []
        for target_user, keys in body.items():
            _user_domain(target_user, "signatures")
            if not isinstance(keys, dict):
                raise BadJson("Each user must map key IDs to signed objects")
            for key_id, obj in keys.items():
                if not isinstance(obj, dict):
                    raise BadJson("Signed keys must be objects")
                items.append((target_user, key_id, obj))
        if len(items) > MAX_QUERY_USERS:
            raise InvalidParam(f"At most {MAX_QUERY_USERS} signed keys per upload")

        def txn(conn: Conn) -> tuple[JsonDict, int | None]:
            failures: JsonDict = {}
            changes: set[tuple[str, str | None]] = set()
            signed_devices: list[str] = []
            for target_user, key_id, obj in items:
                try:
                    stored, only_for = self._store_signature(
                        conn, user_id, target_user, key_id, obj
                    )
                except MatrixError as e:
                    failures.setdefault(target_user, {})[key_id] = {
                        "errcode": e.errcode,
                        "error": e.message,
                    }
                    continue
                if stored:
                    changes.add((target_user, only_for))
                    if target_user == user_id and e2e_keys.device_exists(conn, user_id, key_id):
                        signed_devices.append(key_id)
            pos = None
            if changes:
                pos = next_stream_pos(conn)
                for target_user, only_for in sorted(changes, key=str):
                    device_lists.add_change(conn, pos, target_user, only_for)
            if self.federation is not None:
                # Other servers hear of each newly signed device as its own update.
                for i, device in enumerate(dict.fromkeys(signed_devices)):
                    if i:
                        pos = next_stream_pos(conn)
                        device_lists.add_change(conn, pos, user_id)
                    assert pos is not None
                    self.federation.device_list_update_in_txn(conn, pos, user_id, device)
            return failures, pos

        failures, pos = await self.db.write(txn)
        if pos is not None:
            self.notifier.notify(pos)
        return {"failures": failures}

    @staticmethod
    def _store_signature(
        conn: Conn, signer: str, target_user: str, key_id: str, obj: JsonDict
    ) -> tuple[bool, str | None]:
        """Verify and store the signer's new signatures on one key.

        Returns whether anything new was stored and who must be told (None: everyone
        sharing a room with the target; a user ID: only that user).
        """
        sigs = obj.get("signatures")
        mine = sigs.get(signer) if isinstance(sigs, dict) else None
        if not isinstance(mine, dict) or not mine:
            raise invalid_signature("No signature by you on this key")
        try:
            encode_canonical_json(obj)
        except CanonicalJsonError:
            raise BadJson("Signed object is not canonical JSON") from None
        # The allowed signing key IDs -> their public keys.
        verifiers: dict[str, str] = {}
        only_for: str | None = None
        stored: JsonDict | None
        if target_user == signer:
            stored = e2e_keys.get_device_keys(conn, signer, key_id)
            if stored is not None and e2e_keys.device_exists(conn, signer, key_id):
                ssk = e2e_keys.get_cross_signing_key(conn, signer, "self_signing")
                if ssk is None:
                    raise invalid_signature("You have no self-signing key")
                ssk_pub = _ed25519_value(ssk)
                verifiers[f"ed25519:{ssk_pub}"] = ssk_pub
            else:
                stored = e2e_keys.get_cross_signing_key(conn, signer, "master")
                if stored is None or _ed25519_value(stored) != key_id:
                    raise MatrixError(404, "M_NOT_FOUND", "Unknown key")
                for dev_id, (dev_keys, _) in e2e_keys.query_device_keys(
                    conn, signer, [k[len("ed25519:"):] for k in mine if k.startswith("ed25519:")]
                ).items():
                    dev_pub = _ed25519_of(dev_keys, f"ed25519:{dev_id}")
                    if dev_pub is not None:
                        verifiers[f"ed25519:{dev_id}"] = dev_pub
        else:
            stored = e2e_keys.get_cross_signing_key(conn, target_user, "master")
            if stored is None or _ed25519_value(stored) != key_id:
                raise MatrixError(404, "M_NOT_FOUND", "Unknown key")
            usk = e2e_keys.get_cross_signing_key(conn, signer, "user_signing")
            if usk is None:
                raise invalid_signature("You have no user-signing key")
            usk_pub = _ed25519_value(usk)
            verifiers[f"ed25519:{usk_pub}"] = usk_pub
            only_for = signer
        if stored is None or _strip(obj) != _strip(stored):
            raise invalid_signature("The signed object does not match the stored key")
        existing = (stored.get("signatures") or {}).get(signer) or {}
        stored_any = False
        for sig_key_id, sig in mine.items():
            if sig_key_id in existing and existing[sig_key_id] == sig:
                continue  # the key's own self-signature, already there
            pub = verifiers.get(sig_key_id)
            if pub is None or not isinstance(sig, str):
                raise invalid_signature(f"{sig_key_id} may not sign this key")
            if not _verify(obj, signer, sig_key_id, pub):
                raise invalid_signature(f"Bad signature by {sig_key_id}")
            e2e_keys.insert_signature(conn, signer, sig_key_id, target_user, key_id, sig)
            stored_any = True
        return stored_any, only_for

    # -- send-to-device ------------------------------------------------------------------

    async def send_to_device(
        self, user_id: str, device_id: str, event_type: str, txn_id: str, messages: Any
    ) -> None:
        """PUT /sendToDevice/{eventType}/{txnId}: queue one message per target device.

        ``*`` means every device the user has now. Unknown local users and devices are
        skipped (as for /keys/claim, they are simply absent). The transaction ID makes a
        retry a no-op.
        """
        if not isinstance(messages, dict):
            raise BadJson("'messages' must be an object")
        local: list[tuple[str, str, str]] = []
        wildcard: list[tuple[str, str]] = []
        remote: dict[str, JsonDict] = {}
        count = 0
        for target, devices in messages.items():
            domain = _user_domain(target, "messages")
            if not isinstance(devices, dict):
                raise BadJson("Each user must map device IDs to message contents")
            for target_device, content in devices.items():
                if not isinstance(content, dict):
                    raise BadJson("Message contents must be objects")
                # Stored as compact JSON (not canonical: nothing signs it, and the C
                # encoder keeps a fan-out to hundreds of devices cheap).
                encoded = json.dumps(content, ensure_ascii=False, separators=(",", ":"))
                cap = limits.MAX_TO_DEVICE_CONTENT
                if len(encoded) > cap // 4 and len(encoded.encode("utf-8")) > cap:
                    raise TooLarge(f"A to-device message is at most {cap} bytes")
                count += 1
                if domain != self.server_name:
                    remote.setdefault(domain, {}).setdefault(target, {})[target_device] = content
                elif target_device == "*":
                    wildcard.append((target, encoded))
                else:
                    local.append((target, target_device, encoded))
        if count > MAX_TO_DEVICE_MESSAGES:
            raise TooLarge(f"At most {MAX_TO_DEVICE_MESSAGES} messages per request")
        endpoint = f"sendToDevice/{event_type}"
        done = await self.db.read(to_device.get_txn_response, user_id, device_id, endpoint, txn_id)
        if done is not None:
            return
        if self.ratelimiter is not None:
            self.ratelimiter.check("to_device", f"{user_id}/{device_id}", max(1, count) / 10)
        now = self.clock.time_ms()
        message_id = secrets.token_urlsafe(12)

        def txn(conn: Conn) -> int | None:
            if to_device.get_txn_response(conn, user_id, device_id, endpoint, txn_id) is not None:
                return None
            targets: dict[tuple[str, str], str] = {}
            for target, content in wildcard:
                for dev in to_device.list_device_ids(conn, target):
                    targets[(target, dev)] = content
            for target, dev, content in local:
                if e2e_keys.device_exists(conn, target, dev):
                    targets[(target, dev)] = content
            if len(targets) > MAX_TO_DEVICE_MESSAGES:
                raise TooLarge(f"At most {MAX_TO_DEVICE_MESSAGES} messages per request")
            pos = None
            if targets:
                pos = next_stream_pos(conn)
                to_device.insert_messages(
                    conn,
                    pos,
                    user_id,
                    event_type,
                    ((u, d, c) for (u, d), c in targets.items()),
                    message_id,
                )
            for destination, per_user in remote.items():
                if self.federation is not None:
                    self.federation.to_device_in_txn(
                        conn, destination, user_id, event_type, message_id, per_user
                    )
                else:
                    _queue_remote_to_device(
                        conn, destination, user_id, event_type, message_id, per_user, now
                    )
            to_device.put_txn_response(conn, user_id, device_id, endpoint, txn_id, {}, now)
            return pos

        pos = await self.db.write(txn)
        if pos is not None:
            self.notifier.notify(pos)

    # -- for /sync -----------------------------------------------------------------------

    async def to_device_for_sync(
        self, user_id: str, device_id: str, since_pos: int, upto_pos: int, limit: int = 100
    ) -> tuple[list[JsonDict], int]:
        """Acknowledge and fetch one device's to-device messages.

        Deletes the device's messages at positions <= ``since_pos`` (the client has
        them: it synced from a token at or past them), then returns up to ``limit``
        messages in (since_pos, upto_pos], oldest first, and the position up to which
        this batch is complete: ``upto_pos`` when everything fitted, otherwise the
        position of the last message returned (pass it as the next ``since_pos`` to
        continue).
        """
        pending = await self.db.read(_pending_messages, user_id, device_id, since_pos, upto_pos, limit)
        return await self._acknowledge(user_id, device_id, since_pos, upto_pos, limit, pending)

    async def _acknowledge(
        self,
        user_id: str,
        device_id: str,
        since_pos: int,
        upto_pos: int,
        limit: int,
        pending: tuple[list[tuple[int, JsonDict]], bool],
    ) -> tuple[list[JsonDict], int]:
        """Delete what the device acknowledged; (messages, position the batch reaches)."""
        rows, acked = pending
        if acked:
            await self.db.write(to_device.delete_acknowledged, user_id, device_id, since_pos)
        reached = rows[-1][0] if len(rows) >= limit else upto_pos
        return [e for _, e in rows], reached

    async def sync_sections(
        self,
        user_id: str,
        device_id: str | None,
        since_pos: int | None,
        to_device_since: int,
        upto_pos: int,
        limit: int = 100,
    ) -> tuple[JsonDict, int | None]:
        """Every encryption section of one /sync answer, read in one transaction:
        ``device_lists`` (incremental syncs, its non-empty lists), ``to_device``, the one-time-key counts and
        the unused fallback key types. Returns (sections, the to-device position this
        answer is complete up to; None without a device). Acknowledged to-device
        messages are deleted as in :meth:`to_device_for_sync`."""

        def read(conn: Conn) -> tuple[Any, ...]:
            lists = None
            if since_pos is not None and upto_pos > since_pos:
                lists = device_lists.device_list_delta(conn, user_id, since_pos, upto_pos)
            if device_id is None:
                return lists, None, None, None
            pending = _pending_messages(conn, user_id, device_id, to_device_since, upto_pos, limit)
            counts = e2e_keys.count_one_time_keys(conn, user_id, device_id)
            fallback = e2e_keys.unused_fallback_key_types(conn, user_id, device_id)
            return lists, pending, counts, fallback

        lists, pending, counts, fallback = await self.db.read(read)
        out: JsonDict = {}
        if since_pos is not None:
            changed, left = lists if lists is not None else ([], [])
            # Only the lists with someone in them: both are optional, and Synapse leaves
            # an empty one out too (a client may take a present ``changed`` as news).
            section = {k: v for k, v in (("changed", changed), ("left", left)) if v}
            if section:
                out["device_lists"] = section
        if device_id is None:
            return out, None
        events, reached = await self._acknowledge(
            user_id, device_id, to_device_since, upto_pos, limit, pending
        )
        out["to_device"] = {"events": events}
        counts.setdefault(SIGNED_CURVE25519, 0)
        out["device_one_time_keys_count"] = counts
        out["device_unused_fallback_key_types"] = fallback
        return out, reached

    async def unused_fallback_key_types(self, user_id: str, device_id: str) -> list[str]:
        """``device_unused_fallback_key_types``."""
        return await self.db.read(e2e_keys.unused_fallback_key_types, user_id, device_id)

    # -- hooks for the accounts service -----------------------------------------------------

    async def on_device_created(self, user_id: str, device_id: str) -> None:
        """A new login: others' clients re-query the user's devices (as Synapse tells
        them, before the device has uploaded keys; the upload tells them again)."""
        pos = await self.db.write(self._device_txn, device_created_in_txn, user_id, device_id)
        self.notifier.notify(pos)

    async def on_device_deleted(self, user_id: str, device_id: str) -> None:
        """Forget a deleted device's keys and pending messages; tell those who track it."""
        pos = await self.db.write(self._device_txn, device_deleted_in_txn, user_id, device_id)
        self.notifier.notify(pos)

    async def on_device_updated(self, user_id: str, device_id: str) -> None:
        """A device's display name changed: others see it in /keys/query's unsigned."""
        pos = await self.db.write(self._device_txn, device_updated_in_txn, user_id, device_id)
        self.notifier.notify(pos)

    def _device_txn(self, conn: Conn, fn: Any, user_id: str, device_id: str) -> int:
        pos: int = fn(conn, user_id, device_id)
        if self.federation is not None:
            self.federation.device_list_update_in_txn(
                conn, pos, user_id, device_id, deleted=fn is device_deleted_in_txn
            )
        return pos


def device_created_in_txn(conn: Conn, user_id: str, device_id: str) -> int:
    pos = next_stream_pos(conn)
    device_lists.add_change(conn, pos, user_id)
    return pos


def device_deleted_in_txn(conn: Conn, user_id: str, device_id: str) -> int:
    """The deletion hook's work, callable inside the accounts service's own transaction.

    Returns the stream position to notify. The change is written even for a device
    that never uploaded keys: a client that saw the login re-queries and finds it gone.
    """
    e2e_keys.delete_device_e2e(conn, user_id, device_id)
    to_device.delete_device_messages(conn, user_id, device_id)
    pos = next_stream_pos(conn)
    device_lists.add_change(conn, pos, user_id)
    return pos


def device_updated_in_txn(conn: Conn, user_id: str, device_id: str) -> int:
    """A device's new name shows in others' /keys/query (``unsigned.device_display_name``)."""
    pos = next_stream_pos(conn)
    device_lists.add_change(conn, pos, user_id)
    return pos


def _pending_messages(
    conn: Conn, user_id: str, device_id: str, since_pos: int, upto_pos: int, limit: int
) -> tuple[list[tuple[int, JsonDict]], bool]:
    rows = to_device.get_messages(conn, user_id, device_id, since_pos, upto_pos, limit)
    return rows, to_device.has_acknowledged(conn, user_id, device_id, since_pos)


def _queue_remote_to_device(
    conn: Conn,
    destination: str,
    sender: str,
    event_type: str,
    message_id: str,
    messages: JsonDict,
    now_ms: int,
) -> None:
    to_device.queue_federation_edu(
        conn,
        destination,
        {
            "edu_type": "m.direct_to_device",
            "content": {
                "sender": sender,
                "type": event_type,
                "message_id": message_id,
                "messages": messages,
            },
        },
        now_ms,
    )


def _user_known(conn: Conn, user_id: str) -> bool:
    from pocketserver.storage import accounts

    return accounts.user_exists(conn, user_id)


def _ed25519_value(key: Mapping[str, Any]) -> str:
    keys = key.get("keys") or {}
    for key_id, value in keys.items():
        if key_id.startswith("ed25519:"):
            return str(value)
    return ""


def _merge_signatures(obj: JsonDict, extra: Mapping[str, Mapping[str, str]]) -> JsonDict:
    if not extra:
        return dict(obj)
    sigs: dict[str, dict[str, str]] = {
        u: dict(s) for u, s in (obj.get("signatures") or {}).items()
    }
    for user, by_key in extra.items():
        sigs.setdefault(user, {}).update(by_key)
    return {**obj, "signatures": sigs}
