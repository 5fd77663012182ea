"""Password hashing with argon2id (PyNaCl), run in a worker thread.

The cost is chosen for a Raspberry Pi: 32 MiB and 3 passes (above OWASP's minimum of
19 MiB / 2), hashed once per registration and once per login attempt.
"""

from __future__ import annotations

import nacl.exceptions
import nacl.pwhash
import trio

OPSLIMIT = 3
MEMLIMIT = 32 * 1024 * 1024


def hash_password_sync(password: str) -> str:
    return nacl.pwhash.argon2id.str(
        password.encode("utf-8"), opslimit=OPSLIMIT, memlimit=MEMLIMIT
    ).decode("ascii")


def check_password_sync(password: str, stored: str | None) -> bool:
    if not stored:
        return False
    try:
        return bool(nacl.pwhash.verify(stored.encode("ascii"), password.encode("utf-8")))
    except (nacl.exceptions.InvalidkeyError, nacl.exceptions.CryptoError, ValueError):
        return False


async def hash_password(password: str) -> str:
    return await trio.to_thread.run_sync(hash_password_sync, password)


async def check_password(password: str, stored: str | None) -> bool:
    return await trio.to_thread.run_sync(check_password_sync, password, stored)
