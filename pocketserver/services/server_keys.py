"""This server's ed25519 signing key: created on first start, kept in a file.

The file uses the format Synapse uses (``ed25519 <version> <unpadded base64 seed>``), so
an operator can move a key between the two.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from pocketserver.protocol.signing import (
    KeyFormatError,
    SigningKey,
    decode_signing_keys,
    encode_signing_key,
    signing_key_from_seed,
)

# The key type services use; the protocol core owns its format.
ServerSigningKey = SigningKey


def load_or_create_signing_key(path: Path) -> tuple[SigningKey, bool]:
    """Read the key at ``path``; create one (mode 0600) if there is none.

    Returns the key and whether it was created now.
    """
    if path.exists():
        try:
            keys = decode_signing_keys(path.read_text(encoding="ascii"))
        except (KeyFormatError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not a signing key file: {e}") from None
        if not keys:
            raise ValueError(f"{path}: no key in file")
        return keys[0], False
    path.parent.mkdir(parents=True, exist_ok=True)
    version = "a_" + "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(4))
    key = signing_key_from_seed(secrets.token_bytes(32), version)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(encode_signing_key(key) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return key, True
