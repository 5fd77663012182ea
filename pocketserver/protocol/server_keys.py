"""Checking a server's published keys (``/_matrix/key/v2/server`` responses).

Spec: shared/spec/content/server-server-api.md, "Retrieving server keys" ("Publishing
Keys", "Querying Keys Through Another Server"); shapes in
data/api/server-server/definitions/keys.yaml.

A key response is accepted for ``server_name`` when, in order:

1. it is an object whose ``server_name`` is the server asked about;
2. ``valid_until_ts`` is an integer;
3. ``verify_keys`` maps key IDs to ``{"key": <unpadded base64>}`` (ed25519 keys are
   kept, other algorithms ignored); ``old_verify_keys`` likewise, each with an
   integer ``expired_ts``;
4. it carries at least one signature of ``server_name``, every such ed25519 signature
   is by a key listed in ``verify_keys``, and each one verifies (self-signed).

A notary's copy must in addition carry the notary's own signature, checked by the
caller with the notary's configured key (:func:`pocketserver.protocol.signing.verify_json`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pocketserver.protocol.signing import (
    ED25519,
    KeyFormatError,
    SignatureError,
    decode_verify_key_base64,
    signature_key_ids,
    verify_json,
)


class KeyResponseError(ValueError):
    """A key response is malformed, for another server, or not self-signed."""


@dataclass(frozen=True, slots=True)
class ServerKeys:
    server_name: str
    valid_until_ts: int
    verify_keys: dict[str, bytes] = field(default_factory=dict)
    # key ID -> (raw key, expired_ts)
    old_verify_keys: dict[str, tuple[bytes, int]] = field(default_factory=dict)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _keys(obj: Any, what: str, *, old: bool) -> dict[str, tuple[bytes, int]]:
    if obj is None:
        return {}
    if not isinstance(obj, Mapping):
        raise KeyResponseError(f"{what} is not an object")
    out: dict[str, tuple[bytes, int]] = {}
    for key_id, entry in obj.items():
        if not isinstance(key_id, str) or not key_id.startswith(ED25519 + ":"):
            continue
        if not isinstance(entry, Mapping) or not isinstance(entry.get("key"), str):
            raise KeyResponseError(f"{what}[{key_id}] has no key")
        try:
            raw = bytes(decode_verify_key_base64(entry["key"]))
        except KeyFormatError as e:
            raise KeyResponseError(f"{what}[{key_id}]: {e}") from None
        expired = entry.get("expired_ts", 0) if old else 0
        if old and not _is_int(expired):
            raise KeyResponseError(f"{what}[{key_id}].expired_ts is not an integer")
        out[key_id] = (raw, expired)
    return out


def parse_key_response(obj: Any, server_name: str) -> ServerKeys:
    """Check ``obj`` as ``server_name``'s key response (steps 1-4 above)."""
    if not isinstance(obj, Mapping):
        raise KeyResponseError("key response is not an object")
    if obj.get("server_name") != server_name:  # 1
        raise KeyResponseError(f"key response is for {obj.get('server_name')!r}, not {server_name!r}")
    valid_until = obj.get("valid_until_ts")
    if not _is_int(valid_until):  # 2
        raise KeyResponseError("valid_until_ts is not an integer")
    current = _keys(obj.get("verify_keys"), "verify_keys", old=False)  # 3
    old = _keys(obj.get("old_verify_keys"), "old_verify_keys", old=True)
    sig_ids = signature_key_ids(obj, server_name)  # 4
    if not sig_ids:
        raise KeyResponseError(f"key response is not signed by {server_name}")
    for key_id in sig_ids:
        if key_id not in current:
            raise KeyResponseError(f"signed with {key_id}, which verify_keys does not list")
        try:
            verify_json(obj, server_name, key_id, decode_verify_key_base64(obj["verify_keys"][key_id]["key"]))
        except SignatureError as e:
            raise KeyResponseError(str(e)) from None
    return ServerKeys(
        server_name=server_name,
        valid_until_ts=int(valid_until),  # type: ignore[arg-type]
        verify_keys={k: raw for k, (raw, _) in current.items()},
        old_verify_keys=old,
    )
