"""This server's ed25519 signing key: created on first start, kept in a file.

The file uses the format Synapse uses (``ed25519 <version> <unpadded base64 seed>``), so
an operator can move a key between the two.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import nacl.signing
from unpaddedbase64 import decode_base64, encode_base64


@dataclass(frozen=True, slots=True)
class ServerSigningKey:
    version: str  # the part after "ed25519:"
    signing_key: nacl.signing.SigningKey

    @property
    def key_id(self) -> str:
        return f"ed25519:{self.version}"

    @property
    def verify_key_base64(self) -> str:
        return encode_base64(bytes(self.signing_key.verify_key))


def _parse(text: str, path: Path) -> ServerSigningKey:
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3 or parts[0] != "ed25519":
            raise ValueError(f"{path}: expected 'ed25519 <version> <base64 seed>'")
        seed = decode_base64(parts[2])
        if len(seed) != 32:
            raise ValueError(f"{path}: the key seed must be 32 bytes")
        return ServerSigningKey(parts[1], nacl.signing.SigningKey(seed))
    raise ValueError(f"{path}: no key in file")


def load_or_create_signing_key(path: Path) -> tuple[ServerSigningKey, bool]:
    """Read the key at ``path``; create one (mode 0600) if there is none.

    Returns the key and whether it was created now.
    """
    if path.exists():
        return _parse(path.read_text(encoding="ascii"), path), False
    path.parent.mkdir(parents=True, exist_ok=True)
    version = "a_" + secrets.token_urlsafe(3).replace("-", "x").replace("_", "y")[:4]
    seed = secrets.token_bytes(32)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(f"ed25519 {version} {encode_base64(seed)}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return ServerSigningKey(version, nacl.signing.SigningKey(seed)), True
