"""Access tokens: minting, hashing, and turning a request's token into a Requester."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from pocketserver.errors import MatrixError, MissingToken, UnknownToken
from pocketserver.services.clock import Clock
from pocketserver.storage import accounts
from pocketserver.storage.database import Database


@dataclass(frozen=True, slots=True)
class Requester:
    user_id: str
    device_id: str | None
    is_guest: bool = False
    is_admin: bool = False
    token_hash: bytes = b""


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def new_token(prefix: str) -> str:
    """A random opaque token; the prefix only helps people reading logs."""
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def new_device_id() -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return "".join(secrets.choice(alphabet) for _ in range(10))


class AuthService:
    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock

    async def authenticate(
        self,
        token: str | None,
        *,
        allow_guest: bool = False,
        ip: str | None = None,
        user_agent: str | None = None,
    ) -> Requester:
        if token is None:
            raise MissingToken()
        th = hash_token(token)
        info = await self.db.read(accounts.get_token_info, th)
        if info is None or info.deactivated:
            raise UnknownToken()
        if info.valid_until_ms is not None and info.valid_until_ms <= self.clock.time_ms():
            raise UnknownToken("Access token has expired", soft_logout=True)
        if info.locked:
            raise MatrixError(401, "M_USER_LOCKED", "This account has been locked", soft_logout=True)
        if info.is_guest and not allow_guest:
            raise MatrixError(403, "M_GUEST_ACCESS_FORBIDDEN", "Guest access not allowed")
        return Requester(info.user_id, info.device_id, info.is_guest, info.is_admin, th)
