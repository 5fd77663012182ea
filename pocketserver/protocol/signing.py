"""Ed25519 signing keys, signed JSON and signed events.

Spec: shared/spec/content/appendices.md, "Signing JSON", "Signing Details", "Checking
for a Signature" and "Cryptographic Test Vectors"; server-server-api.md, "Signing
Events" ("Adding hashes and signatures to outgoing events", "Validating hashes and
signatures on received events"); key ID versions match ``[a-zA-Z0-9_]``
(data/api/server-server/definitions/keys.yaml).

Signing JSON:

1. take ``signatures`` and ``unsigned`` off the object;
2. sign the canonical JSON of the rest with the Ed25519 key;
3. add the unpadded-base64 signature under ``signatures[name][key_id]``, keeping any
   existing signatures, and put ``unsigned`` back.

Signing an event: compute the content hash into ``hashes.sha256``, redact the event with
the room version's rules, sign the redacted form, copy the signatures back onto the full
event.  Verifying an event: redact, then check the signature as for JSON.

Keys are *given* to this module: :func:`signing_key_from_seed` takes the 32 seed bytes,
so the randomness (``os.urandom(32)``) stays with the caller outside ``protocol/``.  The
key file format is Synapse's, one key per line: ``ed25519 <version> <base64 seed>``.

Unlike ``signedjson.sign_json`` nothing here mutates its argument.  Signing uses strict
canonical JSON; verification of plain JSON is lenient about numbers (it only checks
bytes another server produced), and event verification follows the room version.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import nacl.exceptions
import nacl.signing

from pocketserver.protocol.canonical_json import CanonicalJsonError, encode_canonical_json
from pocketserver.protocol.hashes import compute_content_hash
from pocketserver.protocol.redaction import redact
from pocketserver.protocol.room_versions import RoomVersion

JsonDict = dict[str, Any]

ED25519 = "ed25519"
SEED_BYTES = 32

_KEY_VERSION = re.compile(r"[a-zA-Z0-9_]+")

VerifyKey = nacl.signing.VerifyKey


class SignatureError(ValueError):
    """A signature is missing, malformed, or does not verify."""


class KeyFormatError(ValueError):
    """A key, key ID or key file line is malformed."""


def _encode_b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def decode_unpadded_base64(s: str) -> bytes:
    """Decode standard or URL-safe base64, with or without padding, refusing junk.

    The spec asks decoders to accept input with or without padding; unlike
    ``base64.b64decode`` this does not silently skip characters outside the alphabet.
    """
    if not isinstance(s, str) or not re.fullmatch(r"[A-Za-z0-9+/\-_]*={0,2}", s):
        raise ValueError("not base64")
    s = s.rstrip("=")
    if len(s) % 4 == 1:
        raise ValueError("impossible base64 length")
    try:
        return base64.b64decode(s + "=" * (-len(s) % 4), altchars=b"-_", validate=True)
    except binascii.Error as e:
        raise ValueError(str(e)) from None


# -- keys ------------------------------------------------------------------


def _check_key_version(version: str) -> None:
    if not isinstance(version, str) or not _KEY_VERSION.fullmatch(version):
        raise KeyFormatError(f"key version must match [a-zA-Z0-9_]+: {version!r}")


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A server's Ed25519 signing key with its key ID ``ed25519:<version>``."""

    version: str
    _nacl_key: nacl.signing.SigningKey = field(repr=False, compare=False)
    algorithm: str = ED25519

    @property
    def key_id(self) -> str:
        return f"{self.algorithm}:{self.version}"

    @property
    def seed(self) -> bytes:
        """The 32 secret seed bytes; handle with care."""
        return bytes(self._nacl_key)

    @property
    def verify_key(self) -> VerifyKey:
        return self._nacl_key.verify_key

    @property
    def verify_key_base64(self) -> str:
        return encode_verify_key_base64(self.verify_key)

    def sign(self, message: bytes) -> bytes:
        """The 64-byte detached Ed25519 signature of ``message``."""
        return bytes(self._nacl_key.sign(message).signature)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, SigningKey)
            and other.version == self.version
            and other.seed == self.seed
        )

    def __hash__(self) -> int:
        return hash((self.version, self.verify_key.encode()))


def signing_key_from_seed(seed: bytes, key_id_version: str) -> SigningKey:
    """Build the signing key ``ed25519:<key_id_version>`` from its 32-byte seed.

    To make a new key, pass ``os.urandom(32)`` (outside ``protocol/``).
    """
    if not isinstance(seed, bytes | bytearray) or len(seed) != SEED_BYTES:
        raise KeyFormatError(f"an ed25519 seed is {SEED_BYTES} bytes")
    _check_key_version(key_id_version)
    return SigningKey(key_id_version, nacl.signing.SigningKey(bytes(seed)))


def encode_signing_key(key: SigningKey) -> str:
    """One line of a Synapse-compatible key file: ``ed25519 <version> <base64 seed>``."""
    return f"{key.algorithm} {key.version} {_encode_b64(key.seed)}"


def decode_signing_key(line: str) -> SigningKey:
    """Parse one ``ed25519 <version> <base64 seed>`` line."""
    parts = line.split()
    if len(parts) != 3:
        raise KeyFormatError("expected 'ed25519 <version> <base64 seed>'")
    algorithm, version, seed_b64 = parts
    if algorithm != ED25519:
        raise KeyFormatError(f"unsupported key algorithm {algorithm!r}")
    try:
        seed = decode_unpadded_base64(seed_b64)
    except ValueError:
        raise KeyFormatError("key seed is not base64") from None
    return signing_key_from_seed(seed, version)


def decode_signing_keys(text: str) -> list[SigningKey]:
    """All keys of a key file (blank lines ignored)."""
    return [decode_signing_key(line) for line in text.splitlines() if line.strip()]


def encode_signing_keys(keys: Iterable[SigningKey]) -> str:
    return "".join(encode_signing_key(k) + "\n" for k in keys)


def encode_verify_key_base64(verify_key: VerifyKey) -> str:
    """The unpadded base64 form published in ``/_matrix/key/v2/server``."""
    return _encode_b64(bytes(verify_key))


def decode_verify_key_base64(key_b64: str) -> VerifyKey:
    """Parse an unpadded-base64 Ed25519 public key (padding tolerated)."""
    try:
        raw = decode_unpadded_base64(key_b64)
    except ValueError:
        raise KeyFormatError("verify key is not base64") from None
    if len(raw) != 32:
        raise KeyFormatError("an ed25519 verify key is 32 bytes")
    return nacl.signing.VerifyKey(raw)


def parse_key_id(key_id: str) -> tuple[str, str]:
    """Split ``algorithm:version``; raise :class:`KeyFormatError` if malformed."""
    algorithm, sep, version = key_id.partition(":") if isinstance(key_id, str) else ("", "", "")
    if not sep or not algorithm:
        raise KeyFormatError(f"bad key ID {key_id!r}")
    _check_key_version(version)
    return algorithm, version


# -- JSON ----------------------------------------------------------------------


def _signing_bytes(obj: Mapping[str, Any], *, strict: bool) -> bytes:
    return encode_canonical_json(
        {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}, strict=strict
    )


def sign_json(
    obj: Mapping[str, Any], server_name: str, key: SigningKey, *, strict: bool = True
) -> JsonDict:
    """A copy of ``obj`` with this server's signature added (appendices, "Signing Details").

    Existing signatures (of any server) are kept; ``unsigned`` is left alone and not
    covered.  The returned dict and its ``signatures`` maps are new; other nested
    values are shared with ``obj``.  Raises ``CanonicalJsonError`` for non-canonical
    input, so this server never signs a float; ``strict=False`` is only for events of
    room versions 1-5 (see :func:`sign_event`).
    """
    signature = key.sign(_signing_bytes(obj, strict=strict))
    old_sigs = obj.get("signatures")
    signatures: dict[str, Any] = (
        {name: dict(s) if isinstance(s, Mapping) else s for name, s in old_sigs.items()}
        if isinstance(old_sigs, Mapping)
        else {}
    )
    mine = signatures.get(server_name)
    if not isinstance(mine, dict):
        mine = signatures[server_name] = {}
    mine[key.key_id] = _encode_b64(signature)
    out = dict(obj)
    out["signatures"] = signatures
    return out


def signature_key_ids(obj: Mapping[str, Any], server_name: str) -> list[str]:
    """Key IDs of ``server_name``'s signatures on ``obj`` whose algorithm we support.

    Steps 1-2 of "Checking for a Signature"; an empty list means the check fails.
    """
    sigs = obj.get("signatures")
    if not isinstance(sigs, Mapping):
        return []
    mine = sigs.get(server_name)
    if not isinstance(mine, Mapping):
        return []
    return [k for k in mine if isinstance(k, str) and k.startswith(ED25519 + ":")]


def verify_json(
    obj: Mapping[str, Any],
    server_name: str,
    key_id: str,
    verify_key: VerifyKey,
    *,
    strict: bool = False,
) -> None:
    """Check ``server_name``'s signature by ``key_id`` on ``obj``.

    Steps 1 and 4-7 of "Checking for a Signature" (the caller has looked up
    ``verify_key``).  Raises :class:`SignatureError`; returns None on success.
    ``strict`` additionally refuses numbers outside canonical JSON's range.
    """
    if not key_id.startswith(ED25519 + ":"):
        raise SignatureError(f"unsupported signing algorithm in {key_id!r}")
    sigs = obj.get("signatures")
    mine = sigs.get(server_name) if isinstance(sigs, Mapping) else None
    sig_b64 = mine.get(key_id) if isinstance(mine, Mapping) else None
    if sig_b64 is None:
        raise SignatureError(f"no signature from {server_name} with key {key_id}")
    if not isinstance(sig_b64, str):
        raise SignatureError("signature is not a string")
    try:
        signature = decode_unpadded_base64(sig_b64)
    except ValueError:
        raise SignatureError("signature is not valid base64") from None
    try:
        message = _signing_bytes(obj, strict=strict)
    except CanonicalJsonError as e:
        raise SignatureError(f"signed object is not canonical JSON: {e}") from None
    try:
        verify_key.verify(message, signature)
    except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
        raise SignatureError(f"bad signature from {server_name} with key {key_id}") from None


# -- events -------------------------------------------------------------------------


def sign_event(
    pdu: Mapping[str, Any], server_name: str, key: SigningKey, rv: RoomVersion
) -> JsonDict:
    """Hash and sign a PDU (server-server "Adding hashes and signatures to outgoing events").

    Returns a new dict: ``hashes.sha256`` set to the content hash (other hash
    algorithms kept), and this server's signature over the *redacted* event added to
    ``signatures``.
    """
    out = dict(pdu)
    old_hashes = pdu.get("hashes")
    hashes = dict(old_hashes) if isinstance(old_hashes, Mapping) else {}
    hashes.update(compute_content_hash(pdu, rv))
    out["hashes"] = hashes
    signed = sign_json(redact(out, rv), server_name, key, strict=rv.strict_canonicaljson)
    out["signatures"] = signed["signatures"]
    return out


def verify_event_signature(
    pdu: Mapping[str, Any],
    server_name: str,
    key_id: str,
    verify_key: VerifyKey,
    rv: RoomVersion,
) -> None:
    """Check ``server_name``'s signature on a PDU, full or already redacted.

    Server-server "Validating hashes and signatures on received events": the event is
    redacted first, so a redacted copy verifies as well as the original.  Which servers
    must have signed (sender's server; v1-v2 also the event ID's) is the caller's rule.
    Raises :class:`SignatureError`.
    """
    verify_json(redact(pdu, rv), server_name, key_id, verify_key, strict=rv.strict_canonicaljson)
