"""Accounts: registration, login and sessions, passwords, deactivation, devices,
profiles, account data, filters.

What other services need to hear about is announced through hook lists, each called
after the change has committed (the rooms service registers member-event propagation
and leaving rooms; the end-to-end encryption service registers key clean-up):

* ``on_device_created(user_id, device_id)``
* ``on_device_updated(user_id, device_id)`` (a new display name)
* ``on_device_deleted(user_id, device_id)`` (logout, device deletion, password change
  with ``logout_devices``, deactivation)
* ``on_profile_changed(user_id)``
* ``on_deactivate(user_id)``

This module knows nothing of HTTP; the route modules translate requests into calls.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pocketserver import limits
from pocketserver.config import Config
from pocketserver.errors import (
    BadJson,
    Forbidden,
    InvalidParam,
    MatrixError,
    MissingParam,
    NotFound,
    TooLarge,
    UserLocked,
)
from pocketserver.protocol.appservice import AppserviceRegistry, Registration
from pocketserver.protocol.canonical_json import JsonParseError, parse_json
from pocketserver.protocol.identifiers import (
    MAX_IDENTIFIER_BYTES,
    is_valid_localpart,
    is_valid_user_id,
)
from pocketserver.services import filtering
from pocketserver.services.auth import Requester, hash_token, new_device_id, new_token
from pocketserver.services.clock import Clock
from pocketserver.services.notifier import Notifier
from pocketserver.services.params import digits
from pocketserver.services.passwords import PasswordHasher
from pocketserver.services.ratelimit import RateLimiter
from pocketserver.services.uia import (
    DUMMY,
    EMAIL_IDENTITY,
    RECAPTCHA,
    REGISTRATION_TOKEN,
    AuthRequired,
    AuthResult,
    UIAService,
    finish_in_txn,
    finish_registration_in_txn,
    password_identifier_user,
)
from pocketserver.storage import account_data as ad_store
from pocketserver.storage import accounts
from pocketserver.storage import rooms as room_store
from pocketserver.storage import sso as sso_store
from pocketserver.storage import state as state_store
from pocketserver.storage import threepids as threepid_store
from pocketserver.storage.database import Conn, Database

log = logging.getLogger("pocketserver.accounts")

UserHook = Callable[[str], Awaitable[None]]
DeviceHook = Callable[[str, str], Awaitable[None]]

MAX_DEVICE_ID = 255
PROFILE_KEY = re.compile(r"avatar_url|displayname|m\.tz|[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")

# What a /register session remembers of the request that started it (and the password,
# as its hash; a guest's access token is not kept).
REMEMBERED_REGISTER_PARAMS = (
    "username", "device_id", "initial_device_display_name", "inhibit_login",
    "refresh_token",
)

# Account data types a client may not write directly (account-data.yaml).
SERVER_MANAGED_ACCOUNT_DATA = ("m.fully_read", "m.push_rules")


def _check_device_name(name: str | None) -> None:
    if name is not None and len(name) > limits.MAX_DEVICE_NAME_CHARS:
        raise TooLarge(f"A device display name is at most {limits.MAX_DEVICE_NAME_CHARS} characters")


@dataclass(frozen=True, slots=True)
class Session:
    """What /login, /register and /refresh hand to the client."""

    user_id: str
    device_id: str
    access_token: str
    refresh_token: str | None = None
    expires_in_ms: int | None = None

    def to_json(self, server_name: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "user_id": self.user_id,
            "access_token": self.access_token,
            "device_id": self.device_id,
            "home_server": server_name,
        }
        if self.refresh_token is not None:
            out["refresh_token"] = self.refresh_token
        if self.expires_in_ms is not None:
            out["expires_in_ms"] = self.expires_in_ms
        return out


def _create_session_txn(
    conn: Conn,
    user_id: str,
    device_id: str,
    display_name: str | None,
    now: int,
    access_hash: bytes,
    refresh_hash: bytes | None,
    valid_until: int | None,
    ip: str | None,
    user_agent: str | None,
) -> bool:
    """Create the device if new, drop its earlier tokens, mint the new ones."""
    created = accounts.upsert_device(conn, user_id, device_id, display_name, now)
    accounts.touch_device(conn, user_id, device_id, now, ip, user_agent)
    if not created:
        # Logging in again on a known device: its earlier tokens end (client-server-api,
        # "Relationship between access tokens and devices"); its name and keys stay.
        accounts.delete_device_tokens(conn, user_id, device_id)
    if refresh_hash is not None:
        accounts.insert_refresh_token(conn, refresh_hash, user_id, device_id, now)
    accounts.insert_access_token(
        conn, access_hash, user_id, device_id, now, valid_until, refresh_hash
    )
    return created


def _register_txn(
    conn: Conn,
    user_id: str,
    password_hash: str | None,
    now: int,
    is_guest: bool,
    auth: AuthResult | None,
    session_args: tuple[Any, ...] | None,
    upgrade_guest: bool = False,
) -> bool:
    if upgrade_guest:
        if password_hash is None or not accounts.upgrade_guest(conn, user_id, password_hash):
            return False
    elif not accounts.insert_user(conn, user_id, password_hash, now, is_guest=is_guest):
        return False
    if auth is not None:
        if auth.threepid is not None:
            tp = auth.threepid
            if not threepid_store.insert_user_threepid(
                conn, user_id, tp["medium"], tp["address"], tp["validated_at"], now
            ):
                raise MatrixError(400, "M_THREEPID_IN_USE", "This e-mail address is already in use")
        finish_registration_in_txn(conn, auth, user_id)
    if session_args is not None:
        _create_session_txn(conn, user_id, *session_args)
    return True


def _set_password_txn(
    conn: Conn, user_id: str, pw_hash: str, keep_device: str | None, keep_token: bytes,
    logout: bool, auth: AuthResult,
) -> list[str]:
    accounts.set_password_hash(conn, user_id, pw_hash)
    finish_in_txn(conn, auth)
    if not logout:
        return []
    others = [d for d in accounts.list_device_ids(conn, user_id) if d != keep_device]
    deleted = accounts.delete_devices(conn, user_id, others)
    accounts.delete_access_tokens_except(conn, user_id, keep_token)
    return deleted


def _delete_devices_txn(
    conn: Conn, user_id: str, device_ids: list[str], auth: AuthResult | None
) -> list[str]:
    if auth is not None:
        finish_in_txn(conn, auth)
    return accounts.delete_devices(conn, user_id, device_ids)


def _deactivate_txn(conn: Conn, user_id: str, erase: bool, auth: AuthResult | None) -> list[str]:
    if auth is not None:
        finish_in_txn(conn, auth)
    return accounts.deactivate_user(conn, user_id, erase=erase)


def _set_profile_txn(conn: Conn, user_id: str, key: str, value: Any, delete: bool) -> None:
    if key == "displayname":
        accounts.set_displayname(conn, user_id, value or None)
    elif key == "avatar_url":
        accounts.set_avatar_url(conn, user_id, value or None)
    else:
        text = None if delete else json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        accounts.set_profile_field(conn, user_id, key, text)


def _logout_txn(conn: Conn, requester_token: bytes, user_id: str, device_id: str | None) -> list[str]:
    conn.execute("DELETE FROM access_tokens WHERE token_hash = ?", (requester_token,))
    if device_id is None:
        return []
    return accounts.delete_devices(conn, user_id, [device_id])


def _logout_all_txn(conn: Conn, user_id: str) -> list[str]:
    devices = accounts.list_device_ids(conn, user_id)
    deleted = accounts.delete_devices(conn, user_id, devices)
    conn.execute("DELETE FROM access_tokens WHERE user_id = ?", (user_id,))
    return deleted


def _login_threepid(ident: Mapping[str, Any]) -> tuple[str, str]:
    medium, address = ident.get("medium"), ident.get("address")
    if not isinstance(medium, str) or not isinstance(address, str):
        raise MissingParam("An m.id.thirdparty identifier needs 'medium' and 'address'")
    if medium == "email":
        return medium, address.strip().lower()
    return medium, address.strip()


class AccountsService:
    def __init__(
        self,
        config: Config,
        db: Database,
        clock: Clock,
        notifier: Notifier,
        uia: UIAService,
        ratelimiter: RateLimiter,
        passwords: PasswordHasher,
    ) -> None:
        self.config = config
        self.passwords = passwords
        self.db = db
        self.clock = clock
        self.notifier = notifier
        self.uia = uia
        self.ratelimiter = ratelimiter
        self.server_name = config.server_name
        self.on_device_created: list[DeviceHook] = []
        self.on_device_deleted: list[DeviceHook] = []
        self.on_device_updated: list[DeviceHook] = []
        self.on_profile_changed: list[UserHook] = []
        self.on_deactivate: list[UserHook] = []
        self.appservices = AppserviceRegistry()
        self.query_user: Callable[[str], Awaitable[bool]] | None = None
        # Login types other services add to GET /login (single sign-on's).
        self.extra_login_flows: list[dict[str, Any]] = []

    # -- hooks ---------------------------------------------------------------------

    async def _run_hooks(self, hooks: list[Any], *args: Any) -> None:
        for hook in list(hooks):
            try:
                await hook(*args)
            except MatrixError:
                log.warning("hook %r failed for %r", hook, args, exc_info=True)
            except Exception:
                log.exception("hook %r failed for %r", hook, args)

    async def _devices_deleted(self, user_id: str, device_ids: list[str]) -> None:
        for d in device_ids:
            await self._run_hooks(self.on_device_deleted, user_id, d)

    # -- sessions ------------------------------------------------------------------

    def _mint(self, want_refresh: bool) -> tuple[str, bytes, str | None, bytes | None, int | None]:
        access = new_token("psat")
        if not want_refresh:
            return access, hash_token(access), None, None, None
        refresh = new_token("psrt")
        lifetime = self.config.accounts.refreshable_access_token_lifetime_ms
        return access, hash_token(access), refresh, hash_token(refresh), lifetime

    def _session_args(
        self,
        device_id: str,
        display_name: str | None,
        want_refresh: bool,
        ip: str | None = None,
        user_agent: str | None = None,
    ) -> tuple[Session, tuple[Any, ...], Callable[[str], Session]]:
        now = self.clock.time_ms()
        access, ah, refresh, rh, lifetime = self._mint(want_refresh)
        valid_until = now + lifetime if lifetime is not None else None
        args = (device_id, display_name, now, ah, rh, valid_until, ip, user_agent)

        def session(user_id: str) -> Session:
            return Session(user_id, device_id, access, refresh, lifetime)

        return session(""), args, session

    # -- registration --------------------------------------------------------------

    def registration_flows(self) -> list[list[str]]:
        mode = self.config.registration_mode
        email = self.config.email
        reg = self.config.registration
        captcha = [RECAPTCHA] if reg.recaptcha_enabled and reg.require_recaptcha else []
        first = [REGISTRATION_TOKEN] if mode == "token" else []
        if email.enabled and email.require_for_registration:
            return [captcha + first + [EMAIL_IDENTITY]]
        flows = [captcha + (first or [DUMMY])]
        if email.enabled and email.enable_registration_by_email:
            flows.append(captcha + first + [EMAIL_IDENTITY])
        return flows

    def optional_registration_stages(self) -> list[str]:
        """Stages checked when a client offers them but not required (a CAPTCHA the
        operator set up with ``require_recaptcha = false``)."""
        reg = self.config.registration
        return [RECAPTCHA] if reg.recaptcha_enabled and not reg.require_recaptcha else []

    def check_localpart(self, username: str) -> str:
        """The user ID for a requested username, or M_INVALID_USERNAME."""
        localpart = username.lower()
        if is_valid_localpart(localpart):
            self.refuse_exclusive_user(f"@{localpart}:{self.server_name}")
        if not is_valid_localpart(localpart) or localpart.startswith("_"):
            raise MatrixError(
                400,
                "M_INVALID_USERNAME",
                "User names may contain only a-z, 0-9, and . _ = - / + (and not start with _)",
            )
        user_id = f"@{localpart}:{self.server_name}"
        if len(user_id.encode("utf-8")) > MAX_IDENTIFIER_BYTES:
            raise MatrixError(400, "M_INVALID_USERNAME", "User name too long")
        return user_id

    def refuse_exclusive_user(self, user_id: str) -> None:
        """400 M_EXCLUSIVE for a user ID in an application service's exclusive
        namespace (application-service-api.md, "Server admin style permissions")."""
        if self.appservices.exclusive_owner_of_user(user_id) is not None:
            raise MatrixError(400, "M_EXCLUSIVE", "This user ID is reserved by an application service")

    async def username_available(self, username: str) -> bool:
        user_id = self.check_localpart(username)
        if await self.db.read(accounts.user_exists, user_id):
            raise MatrixError(400, "M_USER_IN_USE", "User ID already taken.")
        return True

    async def registration_token_valid(self, token: str) -> bool:
        info = await self.db.read(accounts.get_registration_token, token)
        return info is not None and info.is_valid(self.clock.time_ms())

    async def register(
        self,
        body: Mapping[str, Any],
        *,
        kind: str,
        ip: str | None,
        user_agent: str | None = None,
    ) -> dict[str, Any]:
        """POST /register; ``body`` is the request JSON object."""
        if kind not in ("user", "guest"):
            raise MatrixError(400, "M_INVALID_PARAM", "kind must be 'user' or 'guest'")
        self.ratelimiter.check("registration", ip or "?")
        display = body.get("initial_device_display_name")
        if display is not None and not isinstance(display, str):
            raise BadJson("'initial_device_display_name' must be a string")
        _check_device_name(display)
        if kind == "guest":
            return await self._register_guest(display, ip, user_agent)

        mode = self.config.registration_mode
        if mode == "closed":
            raise Forbidden("Registration is disabled on this server")
        auth = body.get("auth")
        if auth is not None and not isinstance(auth, dict):
            raise BadJson("'auth' must be an object")
        session_id = auth.get("session") if auth else None
        # A session remembers the request that started it (client-server-api, "User-
        # interactive authentication": later requests may carry only ``auth``), and,
        # once it registered someone, whom: the same session sent again answers for
        # that user rather than failing, so a client whose answer was lost can retry.
        remembered: dict[str, Any] = {}
        if isinstance(session_id, str):
            remembered = await self.uia.session_params(session_id, "POST /register")
        earlier = remembered.get("request")
        earlier = dict(earlier) if isinstance(earlier, dict) else {}

        def param(key: str, default: Any = None) -> Any:
            return body[key] if key in body else earlier.get(key, default)

        if "initial_device_display_name" not in body:
            display = earlier.get("initial_device_display_name")
        username = param("username")
        password = body.get("password")
        device_id = param("device_id")
        inhibit = param("inhibit_login", False)
        want_refresh = param("refresh_token", False)
        guest_token = param("guest_access_token")
        if username is not None and not isinstance(username, str):
            raise BadJson("'username' must be a string")
        if password is not None and not isinstance(password, str):
            raise BadJson("'password' must be a string")
        if device_id is not None and (not isinstance(device_id, str) or not device_id):
            raise BadJson("'device_id' must be a non-empty string")
        if isinstance(device_id, str) and len(device_id) > MAX_DEVICE_ID:
            raise MatrixError(400, "M_INVALID_PARAM", "device_id too long")
        if not isinstance(inhibit, bool) or not isinstance(want_refresh, bool):
            raise BadJson("'inhibit_login' and 'refresh_token' must be booleans")
        if guest_token is not None and not isinstance(guest_token, str):
            raise BadJson("'guest_access_token' must be a string")
        registered = remembered.get("registered_user_id")
        # The spec asks for the user name checks before user-interactive auth.
        user_id: str | None = None
        upgrading = False
        if username and not isinstance(registered, str):
            user_id = self.check_localpart(username)
            if guest_token is not None:
                # Guest access: a guest upgrades its own account by naming its localpart
                # and passing its access token (modules/guest_access.md).
                info = await self.db.read(accounts.get_token_info, hash_token(guest_token))
                if info is None or not info.is_guest or info.deactivated or info.user_id != user_id:
                    raise Forbidden("This guest access token cannot register that user")
                upgrading = True
            elif await self.db.read(accounts.user_exists, user_id):
                raise MatrixError(400, "M_USER_IN_USE", "User ID already taken.")
        elif guest_token is not None and not isinstance(registered, str):
            raise MissingParam("A guest upgrading its account must give its 'username'")

        pw_hash: str | None = None
        if password:
            pw_hash = await self.passwords.hash(password)
        elif isinstance(earlier.get("password_hash"), str):
            pw_hash = earlier["password_hash"]
        try:
            result = await self.uia.authenticate(
                auth, flows=self.registration_flows(), request_key="POST /register",
                optional=self.optional_registration_stages(),
            )
        except AuthRequired as exc:
            started = exc.body.get("session")
            if isinstance(started, str):
                keep = {
                    k: v for k, v in {**earlier, **body}.items()
                    if k in REMEMBERED_REGISTER_PARAMS
                }
                keep.pop("password_hash", None)
                if pw_hash is not None:
                    keep["password_hash"] = pw_hash
                await self.uia.remember(started, "request", keep)
            raise
        now = self.clock.time_ms()
        args: tuple[Any, ...] | None = None
        make: Callable[[str], Session] | None = None
        if not inhibit:
            _s, args, make = self._session_args(
                device_id or new_device_id(), display, want_refresh, ip, user_agent
            )
        if isinstance(registered, str):
            # The same completed session again: log in the user it registered.
            uid = registered
            if args is not None:
                await self.db.write(_create_session_txn, uid, *args)
        else:
            if pw_hash is None:
                raise MissingParam("Missing 'password'")
            for _attempt in range(5):
                uid = user_id or self._generated_user_id()
                ok = await self.db.write(
                    _register_txn, uid, pw_hash, now, False, result, args, upgrading
                )
                if ok:
                    break
                if user_id is not None:
                    raise MatrixError(400, "M_USER_IN_USE", "User ID already taken.")
            else:  # pragma: no cover - five random collisions
                raise MatrixError(500, "M_UNKNOWN", "Could not pick a user ID")
            log.info("%s %s", "upgraded guest" if upgrading else "registered", uid)
        if make is None:
            return {"user_id": uid, "home_server": self.server_name}
        session = make(uid)
        await self._run_hooks(self.on_device_created, uid, session.device_id)
        return session.to_json(self.server_name)

    async def register_appservice_user(
        self,
        reg: Registration,
        body: Mapping[str, Any],
        *,
        ip: str | None,
        user_agent: str | None = None,
    ) -> dict[str, Any]:
        """POST /register with ``type: m.login.application_service`` and the AS's token:
        a user of its namespace, with no password and no user-interactive auth; a
        device and access token only unless ``inhibit_login``."""
        username = body.get("username")
        if username is None:
            raise MissingParam("Missing 'username'")
        if not isinstance(username, str) or not username:
            raise BadJson("'username' must be a non-empty string")
        inhibit = body.get("inhibit_login", False)
        if not isinstance(inhibit, bool):
            raise BadJson("'inhibit_login' must be a boolean")
        device_id, display, want_refresh = self._session_params(body)
        if username.startswith("@"):
            user_id = username
            if not is_valid_user_id(user_id) or not user_id.endswith(":" + self.server_name):
                raise MatrixError(400, "M_INVALID_USERNAME", "Not a user ID of this server")
        else:
            localpart = username.lower()
            if not is_valid_localpart(localpart):
                raise MatrixError(400, "M_INVALID_USERNAME", "User names may contain only a-z, 0-9, and . _ = - / +")
            user_id = f"@{localpart}:{self.server_name}"
        if len(user_id.encode("utf-8")) > MAX_IDENTIFIER_BYTES:
            raise MatrixError(400, "M_INVALID_USERNAME", "User name too long")
        if not reg.is_interested_in_user(user_id):
            raise MatrixError(400, "M_EXCLUSIVE", "This user ID is not in the application service's namespace")
        owner = self.appservices.exclusive_owner_of_user(user_id)
        if owner is not None and owner.id != reg.id:
            raise MatrixError(400, "M_EXCLUSIVE", "This user ID is reserved by another application service")
        args: tuple[Any, ...] | None = None
        make: Callable[[str], Session] | None = None
        if not inhibit:
            _s, args, make = self._session_args(
                device_id or new_device_id(), display, want_refresh, ip, user_agent
            )
        ok = await self.db.write(_register_txn, user_id, None, self.clock.time_ms(), False, None, args)
        if not ok:
            raise MatrixError(400, "M_USER_IN_USE", "User ID already taken.")
        log.info("application service %s registered %s", reg.id, user_id)
        if make is None:
            return {"user_id": user_id, "home_server": self.server_name}
        session = make(user_id)
        await self._run_hooks(self.on_device_created, user_id, session.device_id)
        return session.to_json(self.server_name)

    async def ensure_appservice_user(self, reg: Registration) -> None:
        """The AS's own user (``sender_localpart``) exists: it joins rooms and sends."""
        await self.db.write(accounts.insert_user, reg.sender, None, self.clock.time_ms())

    async def login_appservice(
        self, reg: Registration, body: Mapping[str, Any], *, ip: str | None, user_agent: str | None = None
    ) -> dict[str, Any]:
        """POST /login with ``type: m.login.application_service``: a session for a user
        of the AS's namespace, without a password."""
        ident = body.get("identifier")
        if ident is not None and (not isinstance(ident, dict) or ident.get("type") != "m.id.user"):
            raise BadJson("'identifier' must be an m.id.user identifier")
        user_id = password_identifier_user(body, self.server_name)
        if user_id is None:
            raise MissingParam("Missing user identifier")
        if not reg.is_interested_in_user(user_id):
            raise MatrixError(400, "M_EXCLUSIVE", "This user is not in the application service's namespace")
        device_id, display, want_refresh = self._session_params(body)
        user = await self.db.read(accounts.get_user, user_id)
        if user is None:
            raise Forbidden("Unknown user")
        if user["deactivated"]:
            raise MatrixError(403, "M_USER_DEACTIVATED", "This account has been deactivated")
        device = device_id or new_device_id()
        _s, args, make = self._session_args(device, display, want_refresh, ip, user_agent)
        created = await self.db.write(_create_session_txn, user_id, *args)
        if created:
            await self._run_hooks(self.on_device_created, user_id, device)
        return make(user_id).to_json(self.server_name)

    def _generated_user_id(self) -> str:
        return f"@{secrets.randbelow(10**10):010d}:{self.server_name}"

    async def _register_guest(
        self, display: str | None, ip: str | None, user_agent: str | None
    ) -> dict[str, Any]:
        if not self.config.registration.allow_guests:
            raise Forbidden("Guest access is disabled")
        _s, args, make = self._session_args(new_device_id(), display, False, ip, user_agent)
        now = self.clock.time_ms()
        for _attempt in range(5):
            uid = self._generated_user_id()
            if await self.db.write(_register_txn, uid, None, now, True, None, args):
                break
        else:  # pragma: no cover
            raise MatrixError(500, "M_UNKNOWN", "Could not pick a user ID")
        session = make(uid)
        await self._run_hooks(self.on_device_created, uid, session.device_id)
        return session.to_json(self.server_name)

    # -- login / logout / refresh ----------------------------------------------------

    def login_flows(self) -> list[dict[str, Any]]:
        flows: list[dict[str, Any]] = [{"type": "m.login.password"}]
        flows.extend(self.extra_login_flows)
        if self.appservices:
            flows.append({"type": "m.login.application_service"})
        return flows

    def _session_params(self, body: Mapping[str, Any]) -> tuple[str | None, str | None, bool]:
        """``device_id``, ``initial_device_display_name`` and ``refresh_token`` of a
        /login body, checked."""
        device_id = body.get("device_id")
        display = body.get("initial_device_display_name")
        want_refresh = body.get("refresh_token", False)
        if device_id is not None and (not isinstance(device_id, str) or not device_id):
            raise BadJson("'device_id' must be a non-empty string")
        if isinstance(device_id, str) and len(device_id) > MAX_DEVICE_ID:
            raise InvalidParam("device_id too long")
        if display is not None and not isinstance(display, str):
            raise BadJson("'initial_device_display_name' must be a string")
        _check_device_name(display)
        if not isinstance(want_refresh, bool):
            raise BadJson("'refresh_token' must be a boolean")
        return device_id, display, want_refresh

    async def login_with_token(
        self, body: Mapping[str, Any], *, ip: str | None, user_agent: str | None = None
    ) -> dict[str, Any]:
        """POST /login with ``type: m.login.token``: a one-time token from single
        sign-on, used up by this login (in the same write as the new session)."""
        token = body.get("token")
        if token is None:
            raise MissingParam("Missing 'token'")
        if not isinstance(token, str):
            raise BadJson("'token' must be a string")
        device_id, display, want_refresh = self._session_params(body)
        device = device_id or new_device_id()
        _s, args, make = self._session_args(device, display, want_refresh, ip, user_agent)
        now = self.clock.time_ms()

        def txn(conn: Conn) -> tuple[str, bool]:
            user_id = sso_store.consume_login_token(conn, hash_token(token), now)
            if user_id is None:
                raise Forbidden("Invalid or expired login token")
            user = accounts.get_user(conn, user_id)
            if user is None or user["deactivated"]:
                raise MatrixError(403, "M_USER_DEACTIVATED", "This account has been deactivated")
            if user["locked"]:
                raise UserLocked()
            return user_id, _create_session_txn(conn, user_id, *args)

        # A refusal rolls the write back: the token stays unused until it expires.
        user_id, created = await self.db.write(txn)
        if created:
            await self._run_hooks(self.on_device_created, user_id, device)
        return make(user_id).to_json(self.server_name)

    async def login(
        self, body: Mapping[str, Any], *, ip: str | None, user_agent: str | None = None
    ) -> dict[str, Any]:
        login_type = body.get("type")
        if not isinstance(login_type, str):
            raise MissingParam("Missing 'type'")
        if login_type == "m.login.token":
            self.ratelimiter.check("login", ip or "?")
            return await self.login_with_token(body, ip=ip, user_agent=user_agent)
        if login_type != "m.login.password":
            raise MatrixError(400, "M_UNKNOWN", f"Unknown login type {login_type!r}")
        self.ratelimiter.check("login", ip or "?")
        ident = body.get("identifier")
        threepid: tuple[str, str] | None = None
        if ident is not None:
            if not isinstance(ident, dict):
                raise BadJson("'identifier' must be an object")
            if ident.get("type") == "m.id.thirdparty":
                threepid = _login_threepid(ident)
            elif ident.get("type") != "m.id.user":
                raise Forbidden("Only m.id.user and m.id.thirdparty identifiers are supported")
        elif "medium" in body or "address" in body:
            threepid = _login_threepid(body)  # the deprecated top-level form
        if threepid is not None:
            # An unknown address answers as a wrong password does (below): no
            # account enumeration through login.
            self.ratelimiter.check("login", f"{threepid[0]}:{threepid[1]}")
            user_id = await self.db.read(threepid_store.get_threepid_owner, *threepid)
        else:
            user_id = password_identifier_user(body, self.server_name)
            if user_id is None:
                raise MissingParam("Missing user identifier")
        password = body.get("password")
        if not isinstance(password, str):
            raise MissingParam("Missing 'password'")
        device_id, display, want_refresh = self._session_params(body)
        # A second, per-account bucket stops password guessing spread over addresses.
        if user_id is not None:
            self.ratelimiter.check("login", user_id)
        user = await self.db.read(accounts.get_user, user_id) if user_id is not None else None
        stored = user.get("password_hash") if user else None
        if user is None or not await self.passwords.check(password, stored if isinstance(stored, str) else None):
            if user is not None and user["deactivated"]:
                raise MatrixError(403, "M_USER_DEACTIVATED", "This account has been deactivated")
            raise Forbidden("Invalid username or password")
        if user["deactivated"]:
            raise MatrixError(403, "M_USER_DEACTIVATED", "This account has been deactivated")
        if user["locked"]:
            raise UserLocked()
        assert user_id is not None
        device = device_id or new_device_id()
        _s, args, make = self._session_args(device, display, want_refresh, ip, user_agent)
        created = await self.db.write(_create_session_txn, user_id, *args)
        if created:
            await self._run_hooks(self.on_device_created, user_id, device)
        return make(user_id).to_json(self.server_name)

    async def logout(self, requester: Requester) -> None:
        deleted = await self.db.write(
            _logout_txn, requester.token_hash, requester.user_id, requester.device_id
        )
        await self._devices_deleted(requester.user_id, deleted)

    async def logout_all(self, requester: Requester) -> None:
        deleted = await self.db.write(_logout_all_txn, requester.user_id)
        await self._devices_deleted(requester.user_id, deleted)

    async def refresh(self, refresh_token: str) -> dict[str, Any]:
        old = hash_token(refresh_token)
        info = await self.db.read(accounts.get_refresh_token, old)
        if info is None or info.next_used:
            raise MatrixError(401, "M_UNKNOWN_TOKEN", "Unknown refresh token", soft_logout=False)
        user = await self.db.read(accounts.get_user, info.user_id)
        if user is None or user["deactivated"]:
            raise MatrixError(401, "M_UNKNOWN_TOKEN", "Unknown refresh token", soft_logout=False)
        if user["locked"]:
            raise UserLocked()  # the refresh token stays valid for when the lock lifts
        access, ah, refresh, rh, lifetime = self._mint(True)
        assert refresh is not None and rh is not None and lifetime is not None
        now = self.clock.time_ms()
        await self.db.write(
            accounts.exchange_refresh_token, old, rh, ah, info.user_id, info.device_id, now,
            now + lifetime,
        )
        return {"access_token": access, "refresh_token": refresh, "expires_in_ms": lifetime}

    # -- password and deactivation -----------------------------------------------------

    def password_reset_enabled(self) -> bool:
        """Whether ``/account/password`` without an access token (a reset through a
        validated e-mail address) is offered."""
        return self.config.email.enabled

    async def change_password(
        self, requester: Requester | None, body: Mapping[str, Any]
    ) -> None:
        """``POST /account/password``: with an access token, the password stage; without
        one (a forgotten password), the e-mail stage, for the account the validated
        address is on."""
        new_password = body.get("new_password")
        logout_devices = body.get("logout_devices", True)
        if new_password is not None and not isinstance(new_password, str):
            raise BadJson("'new_password' must be a string")
        if not isinstance(logout_devices, bool):
            raise BadJson("'logout_devices' must be a boolean")
        auth = body.get("auth")
        if auth is not None and not isinstance(auth, dict):
            raise BadJson("'auth' must be an object")
        result = await self.uia.authenticate(
            auth,
            flows=await self.uia.reauth_flows(requester.user_id) if requester is not None else [[EMAIL_IDENTITY]],
            request_key="POST /account/password",
            user_id=requester.user_id if requester is not None else None,
        )
        if not new_password:
            raise MissingParam("Missing 'new_password'")
        if requester is not None:
            user_id, keep_device, keep_token = requester.user_id, requester.device_id, requester.token_hash
        else:
            tp = result.threepid or {}
            owner = await self.db.read(
                threepid_store.get_threepid_owner, str(tp.get("medium")), str(tp.get("address"))
            )
            user = await self.db.read(accounts.get_user, owner) if owner is not None else None
            if owner is None or user is None or user["deactivated"]:
                raise MatrixError(400, "M_THREEPID_NOT_FOUND", "No account has this e-mail address")
            user_id, keep_device, keep_token = owner, None, b""
        pw_hash = await self.passwords.hash(new_password)
        deleted = await self.db.write(
            _set_password_txn, user_id, pw_hash, keep_device, keep_token, logout_devices, result,
        )
        if requester is None:
            log.info("password of %s reset through its e-mail address", user_id)
        await self._devices_deleted(user_id, deleted)

    async def deactivate(self, requester: Requester, body: Mapping[str, Any]) -> None:
        erase = body.get("erase", False)
        if not isinstance(erase, bool):
            raise BadJson("'erase' must be a boolean")
        auth = body.get("auth")
        if auth is not None and not isinstance(auth, dict):
            raise BadJson("'auth' must be an object")
        result: AuthResult | None = None
        # Application service API, "Server admin style permissions": an AS manages its
        # users without their passwords.
        if requester.appservice is None:
            result = await self.uia.authenticate(
                auth, flows=await self.uia.reauth_flows(requester.user_id),
                request_key="POST /account/deactivate",
                user_id=requester.user_id,
            )
        deleted = await self.db.write(_deactivate_txn, requester.user_id, erase, result)
        log.info("deactivated %s", requester.user_id)
        await self._devices_deleted(requester.user_id, deleted)
        await self._run_hooks(self.on_deactivate, requester.user_id)
        if erase:
            await self._run_hooks(self.on_profile_changed, requester.user_id)

    # -- devices -------------------------------------------------------------------------

    @staticmethod
    def device_json(d: accounts.Device) -> dict[str, Any]:
        # Unknown values are null rather than absent, as Synapse does: several clients
        # (matrix-nio) validate these keys as required.
        return {
            "device_id": d.device_id,
            "display_name": d.display_name,
            "last_seen_ip": d.last_seen_ip,
            "last_seen_ts": d.last_seen_ts,
        }

    async def list_devices(self, user_id: str) -> list[dict[str, Any]]:
        return [self.device_json(d) for d in await self.db.read(accounts.list_devices, user_id)]

    async def get_device(self, user_id: str, device_id: str) -> dict[str, Any]:
        d = await self.db.read(accounts.get_device, user_id, device_id)
        if d is None:
            raise NotFound("No device with that ID")
        return self.device_json(d)

    async def update_device(self, user_id: str, device_id: str, body: Mapping[str, Any]) -> None:
        name = body.get("display_name")
        if name is not None and not isinstance(name, str):
            raise BadJson("'display_name' must be a string")
        _check_device_name(name)
        if "display_name" not in body:
            if await self.db.read(accounts.get_device, user_id, device_id) is None:
                raise NotFound("No device with that ID")
            return
        if not await self.db.write(accounts.update_device_display_name, user_id, device_id, name):
            raise NotFound("No device with that ID")
        await self._run_hooks(self.on_device_updated, user_id, device_id)

    async def ensure_device(self, user_id: str, device_id: str, body: Mapping[str, Any]) -> None:
        """PUT /devices/{deviceId} by an application service: the device is created
        (with no access token) if the user does not have it, else renamed."""
        name = body.get("display_name")
        if name is not None and not isinstance(name, str):
            raise BadJson("'display_name' must be a string")
        _check_device_name(name)
        if not device_id or len(device_id) > MAX_DEVICE_ID:
            raise InvalidParam("Invalid device ID")
        created = await self.db.write(accounts.upsert_device, user_id, device_id, name, self.clock.time_ms())
        if created:
            await self._run_hooks(self.on_device_created, user_id, device_id)
        elif "display_name" in body:
            await self.update_device(user_id, device_id, body)

    async def delete_devices(
        self, requester: Requester, device_ids: list[str], auth: Any, request_key: str
    ) -> None:
        if auth is not None and not isinstance(auth, dict):
            raise BadJson("'auth' must be an object")
        result: AuthResult | None = None
        # "Deleting devices": no user-interactive auth for an application service.
        if requester.appservice is None:
            result = await self.uia.authenticate(
                auth, flows=await self.uia.reauth_flows(requester.user_id), request_key=request_key,
                user_id=requester.user_id,
            )
        deleted = await self.db.write(_delete_devices_txn, requester.user_id, device_ids, result)
        await self._devices_deleted(requester.user_id, deleted)

    # -- profile -------------------------------------------------------------------------

    async def get_profile(self, user_id: str) -> dict[str, Any]:
        """GET /profile/{userId}: every field; M_NOT_FOUND for unknown users."""

        def read(conn: Conn) -> tuple[tuple[str | None, str | None] | None, dict[str, str]]:
            return accounts.get_profile(conn, user_id), accounts.get_profile_fields(conn, user_id)

        prof, custom = await self.db.read(read)
        if prof is None and self.query_user is not None and self.appservices.interested_in_user(user_id):
            # An unknown user of an application service's namespace: the AS may create
            # it now (application-service-api.md, "Querying").
            if await self.query_user(user_id):
                prof, custom = await self.db.read(read)
        if prof is None:
            raise NotFound("Profile not found")
        out: dict[str, Any] = {k: json.loads(v) for k, v in custom.items()}
        if prof[0] is not None:
            out["displayname"] = prof[0]
        if prof[1] is not None:
            out["avatar_url"] = prof[1]
        return out

    async def get_profile_field(self, user_id: str, key: str) -> dict[str, Any]:
        profile = await self.get_profile(user_id)
        if key not in profile:
            raise NotFound(f"No {key} in this profile")
        return {key: profile[key]}

    def _check_profile_key(self, key: str) -> None:
        if len(key.encode("utf-8")) > 255:
            raise MatrixError(400, "M_KEY_TOO_LARGE", "Profile keys are at most 255 bytes")
        if not PROFILE_KEY.fullmatch(key):
            raise MatrixError(400, "M_INVALID_PARAM", "Invalid profile key")

    async def set_profile_field(
        self, requester: Requester, user_id: str, key: str, body: Mapping[str, Any]
    ) -> None:
        """PUT /profile/{userId}/{keyName} with ``body`` holding ``keyName``."""
        if requester.user_id != user_id and not requester.is_admin:
            raise Forbidden("You can only change your own profile")
        requester.refuse_if_suspended()
        self._check_profile_key(key)
        if key not in body:
            raise MissingParam(f"Missing {key!r}")
        value = body[key]
        if key == "displayname":
            if value is not None and not isinstance(value, str):
                raise BadJson("'displayname' must be a string")
            if value is not None and len(value) > limits.MAX_DISPLAYNAME_CHARS:
                raise TooLarge(f"A display name is at most {limits.MAX_DISPLAYNAME_CHARS} characters")
        elif key == "avatar_url":
            if value is not None and not isinstance(value, str):
                raise BadJson("'avatar_url' must be a string")
            if value and len(value) > limits.MAX_AVATAR_URL_CHARS:
                raise TooLarge(f"avatar_url is at most {limits.MAX_AVATAR_URL_CHARS} characters")
            # The spec wants an MXC URI. An application service's ghosts are let off:
            # bridges (and SyTest's appservice tests, which Synapse passes) set their
            # users' avatars to the remote network's URLs, and an AS is trusted by the
            # server's admin ("Server admin style permissions").
            if value and not value.startswith("mxc://") and requester.appservice is None:
                raise MatrixError(400, "M_INVALID_PARAM", "avatar_url must be an mxc:// URI")
        elif key == "m.tz" and not isinstance(value, str):
            raise BadJson("'m.tz' must be a string")
        current = await self.get_profile(user_id)
        current[key] = value
        if limits.json_size(current) > limits.MAX_PROFILE_BYTES:
            raise MatrixError(
                400, "M_PROFILE_TOO_LARGE", f"The profile would exceed {limits.MAX_PROFILE_BYTES} bytes"
            )
        await self.db.write(_set_profile_txn, user_id, key, value, False)
        if key in ("displayname", "avatar_url"):
            await self._run_hooks(self.on_profile_changed, user_id)

    async def delete_profile_field(self, requester: Requester, user_id: str, key: str) -> None:
        """DELETE /profile/{userId}/{keyName}"""
        if requester.user_id != user_id and not requester.is_admin:
            raise Forbidden("You can only change your own profile")
        requester.refuse_if_suspended()
        self._check_profile_key(key)
        await self.get_profile(user_id)  # M_NOT_FOUND for unknown users
        await self.db.write(_set_profile_txn, user_id, key, None, True)
        if key in ("displayname", "avatar_url"):
            await self._run_hooks(self.on_profile_changed, user_id)

    # -- account data ------------------------------------------------------------------

    async def put_account_data(
        self, requester: Requester, user_id: str, room_id: str, data_type: str, content: Any
    ) -> None:
        if requester.user_id != user_id:
            raise Forbidden("Cannot add account data for other users")
        if not isinstance(content, dict):
            raise BadJson("Account data content must be a JSON object")
        if data_type in SERVER_MANAGED_ACCOUNT_DATA:
            raise MatrixError(
                405, "M_BAD_JSON", f"Cannot set {data_type} through this API"
            )
        if len(data_type.encode("utf-8")) > limits.MAX_ACCOUNT_DATA_TYPE_BYTES:
            raise TooLarge(f"An account data type is at most {limits.MAX_ACCOUNT_DATA_TYPE_BYTES} bytes")
        await self._put_account_data(user_id, room_id, data_type, content, capped=True)

    async def _put_account_data(
        self, user_id: str, room_id: str, data_type: str, content: dict[str, Any], *, capped: bool = False
    ) -> None:
        """Store one entry; ``capped``: a client's own write, held to the size caps (the
        server's writes, read markers, are bounded by the rooms a user is in)."""
        size = ad_store.entry_bytes(room_id, data_type, content)
        if capped and size - len(room_id.encode()) - len(data_type.encode()) > limits.MAX_ACCOUNT_DATA_BYTES:
            raise TooLarge(f"Account data content is at most {limits.MAX_ACCOUNT_DATA_BYTES} bytes")

        def txn(conn: Conn) -> int:
            if capped:
                old = ad_store.entry_size(conn, user_id, room_id, data_type)
                if size > old and ad_store.total_size(conn, user_id) - old + size > limits.MAX_ACCOUNT_DATA_TOTAL:
                    raise TooLarge(
                        f"A user's account data is at most {limits.MAX_ACCOUNT_DATA_TOTAL} bytes in all"
                    )
            return ad_store.put_account_data(conn, user_id, room_id, data_type, content)

        pos = await self.db.write(txn)
        self.notifier.notify(pos)

    async def get_account_data(
        self, requester: Requester, user_id: str, room_id: str, data_type: str
    ) -> dict[str, Any]:
        if requester.user_id != user_id:
            raise Forbidden("Cannot get account data for other users")
        content = await self.db.read(ad_store.get_account_data, user_id, room_id, data_type)
        if content is None:
            raise NotFound("Account data not found")
        return content

    async def get_tags(self, requester: Requester, user_id: str, room_id: str) -> dict[str, Any]:
        if requester.user_id != user_id:
            raise Forbidden("Cannot get tags for other users")
        content = await self.db.read(ad_store.get_account_data, user_id, room_id, "m.tag")
        tags = (content or {}).get("tags")
        return tags if isinstance(tags, dict) else {}

    async def set_tag(
        self, requester: Requester, user_id: str, room_id: str, tag: str, body: Any
    ) -> None:
        if requester.user_id != user_id:
            raise Forbidden("Cannot add tags for other users")
        if not isinstance(body, dict):
            raise BadJson("Tag content must be a JSON object")
        order = body.get("order")
        if order is not None and (isinstance(order, bool) or not isinstance(order, int | float)):
            raise BadJson("'order' must be a number")
        if len(tag.encode("utf-8")) > limits.MAX_ACCOUNT_DATA_TYPE_BYTES:
            raise TooLarge(f"A tag is at most {limits.MAX_ACCOUNT_DATA_TYPE_BYTES} bytes")
        tags = await self.get_tags(requester, user_id, room_id)
        if tag not in tags and len(tags) >= limits.MAX_TAGS_PER_ROOM:
            raise TooLarge(f"A room has at most {limits.MAX_TAGS_PER_ROOM} tags")
        tags[tag] = dict(body)
        await self._put_account_data(user_id, room_id, "m.tag", {"tags": tags}, capped=True)

    async def delete_tag(self, requester: Requester, user_id: str, room_id: str, tag: str) -> None:
        if requester.user_id != user_id:
            raise Forbidden("Cannot delete tags for other users")
        tags = await self.get_tags(requester, user_id, room_id)
        if tags.pop(tag, None) is not None:
            await self._put_account_data(user_id, room_id, "m.tag", {"tags": tags})

    # -- filters -------------------------------------------------------------------------

    async def create_filter(self, requester: Requester, user_id: str, body: Any) -> str:
        if requester.user_id != user_id:
            raise Forbidden("Cannot create filters for other users")
        try:
            filtering.Filter.parse(body)
        except filtering.InvalidFilter as e:
            raise BadJson(f"Invalid filter: {e}") from None
        text = json.dumps(body, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
        if len(text.encode("utf-8")) > limits.MAX_FILTER_BYTES:
            raise TooLarge(f"A filter is at most {limits.MAX_FILTER_BYTES} bytes")

        def txn(conn: Conn) -> int:
            known = accounts.find_filter(conn, user_id, text)
            if known is not None:
                return known
            if accounts.count_filters(conn, user_id) >= limits.MAX_FILTERS:
                raise TooLarge(f"A user has at most {limits.MAX_FILTERS} filters")
            return accounts.insert_filter(conn, user_id, text)

        return str(await self.db.write(txn))

    async def get_filter(self, requester: Requester, user_id: str, filter_id: str) -> dict[str, Any]:
        if requester.user_id != user_id:
            raise Forbidden("Cannot get filters of other users")
        row_id = digits(filter_id)
        if row_id is None:
            raise NotFound("Unknown filter")
        text = await self.db.read(accounts.get_filter, user_id, row_id)
        if text is None:
            raise NotFound("Unknown filter")
        value: dict[str, Any] = json.loads(text)
        return value

    async def load_filter(self, user_id: str, filter_ref: str) -> filtering.Filter:
        """A /sync ``filter`` parameter: a filter ID or inline JSON; M_BAD_JSON/M_NOT_FOUND."""
        if filter_ref.lstrip().startswith("{"):
            try:
                obj = parse_json(filter_ref)
            except JsonParseError:
                raise MatrixError(400, "M_NOT_JSON", "filter is not JSON") from None
        else:
            row_id = digits(filter_ref)
            if row_id is None:
                raise NotFound("Unknown filter")
            text = await self.db.read(accounts.get_filter, user_id, row_id)
            if text is None:
                raise NotFound("Unknown filter")
            obj = json.loads(text)
        try:
            return filtering.Filter.parse(obj)
        except filtering.InvalidFilter as e:
            raise BadJson(f"Invalid filter: {e}") from None

    # -- admin ---------------------------------------------------------------------------

    async def whois(self, requester: Requester, user_id: str) -> dict[str, Any]:
        if requester.user_id != user_id and not requester.is_admin:
            raise Forbidden("You are not a server admin")
        if await self.db.read(accounts.get_user, user_id) is None:
            raise NotFound("Unknown user")
        devices = await self.db.read(accounts.list_devices, user_id)
        out: dict[str, Any] = {}
        for d in devices:
            connections = []
            if d.last_seen_ts is not None:
                conn: dict[str, Any] = {"last_seen": d.last_seen_ts}
                if d.last_seen_ip is not None:
                    conn["ip"] = d.last_seen_ip
                if d.last_seen_user_agent is not None:
                    conn["user_agent"] = d.last_seen_user_agent
                connections.append(conn)
            out[d.device_id] = {"sessions": [{"connections": connections}]}
        return {"user_id": user_id, "devices": out}

    # -- account moderation (v1.18 "Account locking", "Account suspension") ------------

    async def _moderation_target(self, requester: Requester, user_id: str) -> dict[str, Any]:
        """The local, active, non-admin account an admin moderates; the requester is
        checked first so that non-admins learn nothing about who exists."""
        if not requester.is_admin:
            raise Forbidden("Requesting user is not a server administrator")
        if not is_valid_user_id(user_id) or user_id.split(":", 1)[1] != self.server_name:
            raise InvalidParam("User does not belong to the local server")
        user = await self.db.read(accounts.get_user, user_id)
        if user is None or user["deactivated"]:
            raise NotFound("User not found")
        if user["is_admin"]:
            raise Forbidden("Server administrators cannot be locked or suspended")
        return user

    async def get_moderation_flag(self, requester: Requester, user_id: str, flag: str) -> bool:
        """GET /admin/lock/{userId} or /admin/suspend/{userId}: ``flag`` is locked or suspended."""
        user = await self._moderation_target(requester, user_id)
        return bool(user[flag])

    async def set_moderation_flag(self, requester: Requester, user_id: str, flag: str, value: bool) -> bool:
        """PUT /admin/lock/{userId} or /admin/suspend/{userId}."""
        await self._moderation_target(requester, user_id)
        await self.db.write(accounts.set_moderation_flag, user_id, flag, value)
        log.info("%s set %s=%s on %s", requester.user_id, flag, value, user_id)
        return value

    # -- reports (v1.14 "Reporting content") ---------------------------------------------

    async def report_user(self, requester: Requester, user_id: str, reason: str) -> None:
        """POST /users/{userId}/report: kept for the server's admins. 404 for a user this
        server has never seen (no account here, and in no room with anyone here)."""
        if not is_valid_user_id(user_id):
            raise InvalidParam("Invalid user ID")
        if len(reason) > limits.MAX_REPORT_REASON_CHARS:
            raise TooLarge(f"A reason is at most {limits.MAX_REPORT_REASON_CHARS} characters")

        def run(conn: Conn) -> None:
            known = accounts.user_exists(conn, user_id) or bool(
                state_store.rooms_for_user(
                    conn, user_id, ("join", "invite", "leave", "ban", "knock"), include_forgotten=True
                )
            )
            if not known:
                raise NotFound("The user was not found")
            room_store.insert_user_report(conn, user_id, requester.user_id, reason, self.clock.time_ms())

        await self.db.write(run)
