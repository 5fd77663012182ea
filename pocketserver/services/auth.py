"""Access tokens: minting, hashing, and turning a request's token into a Requester."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from pocketserver.errors import (
    Forbidden,
    MatrixError,
    MissingToken,
    UnknownToken,
    UserLocked,
    UserSuspended,
)
from pocketserver.protocol.appservice import AppserviceRegistry, Registration
from pocketserver.services.clock import Clock
from pocketserver.services.lru import LruCache
from pocketserver.storage import accounts
from pocketserver.storage.database import Database

# Access tokens whose lookup is kept in memory (a few hundred bytes each).
TOKEN_CACHE_SIZE = 1024


@dataclass(frozen=True, slots=True)
class Requester:
    user_id: str
    device_id: str | None
    is_guest: bool = False
    is_admin: bool = False
    token_hash: bytes = b""
    is_suspended: bool = False
    # Set when an application service makes the request (with its as_token), acting
    # as its own user or as ``user_id`` of its namespace.
    appservice: Registration | None = None

    def refuse_if_suspended(self) -> None:
        """403 M_USER_SUSPENDED ("Account suspension"): a suspended account reads, leaves,
        redacts its own events and manages its devices and keys, but does not join, knock,
        invite, send, change state or its profile, or redact others' events."""
        if self.is_suspended:
            raise UserSuspended()


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def new_token(prefix: str) -> str:
    """A random opaque token; the prefix only helps people reading logs."""
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def new_device_id() -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return "".join(secrets.choice(alphabet) for _ in range(10))


class AuthService:
    """Turns access tokens into requesters.

    Every request needs its token's row, so known tokens are kept in an LRU cache. It
    is dropped whole whenever a committed write changes a token or a user's flags
    (the database's "auth" generation), and a lookup that raced such a write is not
    kept: a logout, a device deletion or a deactivation takes effect before its
    request answers. Expiry is checked against the clock at every use.
    """

    def __init__(self, db: Database, clock: Clock, appservices: AppserviceRegistry | None = None) -> None:
        self.db = db
        self.clock = clock
        self.appservices = appservices or AppserviceRegistry()
        self._tokens: LruCache[bytes, accounts.TokenInfo] = LruCache(TOKEN_CACHE_SIZE)
        self._tokens_generation = db.generation("auth")

    async def _token_info(self, token_hash: bytes) -> accounts.TokenInfo | None:
        generation = self.db.generation("auth")
        if generation != self._tokens_generation:
            self._tokens.clear()
            self._tokens_generation = generation
        info = self._tokens.get(token_hash)
        if info is not None:
            return info
        info = await self.db.read(accounts.get_token_info, token_hash)
        if info is not None and self.db.generation("auth") == self._tokens_generation == generation:
            self._tokens.put(token_hash, info)
        return info

    async def authenticate(
        self,
        token: str | None,
        *,
        allow_guest: bool = False,
        allow_locked: bool = False,
        ip: str | None = None,
        user_agent: str | None = None,
        as_user_id: str | None = None,
        as_device_id: str | None = None,
    ) -> Requester:
        if token is None:
            raise MissingToken()
        reg = self.appservices.by_as_token(token) if self.appservices else None
        if reg is not None:
            return await self._appservice_requester(reg, as_user_id, as_device_id)
        th = hash_token(token)
        info = await self._token_info(th)
        if info is None or info.deactivated:
            raise UnknownToken()
        if info.valid_until_ms is not None and info.valid_until_ms <= self.clock.time_ms():
            raise UnknownToken("Access token has expired", soft_logout=True)
        # "Account locking": every API but /logout and /logout/all answers 401
        # M_USER_LOCKED with soft_logout; the tokens stay valid for when the lock lifts.
        if info.locked and not allow_locked:
            raise UserLocked()
        if info.is_guest and not allow_guest:
            raise MatrixError(403, "M_GUEST_ACCESS_FORBIDDEN", "Guest access not allowed")
        return Requester(
            info.user_id, info.device_id, info.is_guest, info.is_admin, th, info.suspended
        )

    async def _appservice_requester(
        self, reg: Registration, user_id: str | None, device_id: str | None
    ) -> Requester:
        """Application service API, "Identity assertion": the AS acts as its own user,
        or as ``user_id`` when that is a local user of its namespaces who exists (a
        ghost registers first); ``device_id`` (v1.17) must be one of that user's."""
        if not user_id:
            user_id = reg.sender
        elif user_id != reg.sender:
            if not reg.is_interested_in_user(user_id):
                raise Forbidden("Application service cannot masquerade as this user")
            info = await self.db.read(accounts.get_user, user_id)
            if info is None:
                raise Forbidden("Application service has not registered this user")
            if info["deactivated"]:
                raise Forbidden("This account has been deactivated")
        if device_id:
            if device_id not in await self.db.read(accounts.list_device_ids, user_id):
                raise MatrixError(400, "M_UNKNOWN_DEVICE", "Unknown device for this user")
        return Requester(user_id, device_id or None, appservice=reg)
