"""Password hashing with argon2id (PyNaCl), run in worker threads of its own.

The cost is chosen for a Raspberry Pi: 32 MiB and 3 passes (above OWASP's minimum of
19 MiB / 2), hashed once per registration and once per login attempt.

Memory: each hash in progress holds its own 32 MiB (libsodium maps it for the hash and
unmaps it after, so nothing stays). On trio's default thread limiter 40 hashes could
run at once: 100 concurrent wrong-password logins took the server from 57 MB to over
500 MB. :class:`PasswordHasher` runs them on a :class:`trio.CapacityLimiter` of their
own (``accounts.password_hash_threads``, default 1), so hashing never holds more than
that many times 32 MiB; further requests wait their turn, holding only their request.
One thread uses one core for hashes and leaves the other cores to everything else; a
hash takes about 0.1 s, so a burst of 100 logins is answered within about 10 s.
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


class PasswordHasher:
    """Hashes and checks passwords, at most ``threads`` at a time."""

    def __init__(self, threads: int = 1) -> None:
        self.limiter = trio.CapacityLimiter(threads)

    async def hash(self, password: str) -> str:
        return await trio.to_thread.run_sync(hash_password_sync, password, limiter=self.limiter)

    async def check(self, password: str, stored: str | None) -> bool:
        """Whether ``password`` matches the ``stored`` hash (False if there is none,
        answered without hashing)."""
        if not stored:
            return False
        return await trio.to_thread.run_sync(
            check_password_sync, password, stored, limiter=self.limiter
        )

    def statistics(self) -> dict[str, int]:
        stats = self.limiter.statistics()
        return {
            "threads": int(stats.total_tokens),
            "hashing": stats.borrowed_tokens,
            "waiting": stats.tasks_waiting,
        }
