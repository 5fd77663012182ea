"""User-interactive authentication (client-server-api "User-Interactive Authentication API").

An endpoint protected by UIA calls :meth:`UIAService.authenticate` with the flows it
offers. Until one flow's stages are all completed, in order, this raises
:class:`AuthRequired`: HTTP 401 whose body holds ``flows``, ``params``, ``session`` and
``completed`` (plus ``errcode``/``error`` when a stage attempt failed). Once a flow is
complete it returns an :class:`AuthResult`; the endpoint does its work and then ends the
session (:func:`finish_in_txn` inside its own write, or :meth:`UIAService.finish`).

Stages implemented: ``m.login.dummy``, ``m.login.password`` (identifier ``m.id.user`` or
the deprecated ``user``), ``m.login.registration_token`` (``/register`` only: a pending
use of the token is counted when the stage succeeds and turned into a completed use
when the registration commits; an abandoned session gives its pending use back when it
expires), ``m.login.email.identity`` (checked by :attr:`UIAService.email_identity`, the
third-party identifier service: the address it validated is kept in the session and
handed to the endpoint as :attr:`AuthResult.threepid`), ``m.login.recaptcha`` (checked by
:attr:`UIAService.recaptcha`, a siteverify call; also through its fallback page), and
``m.login.sso``, which is only ever completed out of band: the SSO callback calls
:meth:`UIAService.complete_stage` for the session, and if single sign-on identified
someone other than the session's user the session is refused (403) from then on.

``optional`` stages (a CAPTCHA an operator checks when offered but does not demand)
may be completed before a flow's stages; they are reported in ``completed`` but are
not needed to finish a flow.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pocketserver.errors import MatrixError
from pocketserver.services.clock import Clock
from pocketserver.services.passwords import PasswordHasher
from pocketserver.storage import accounts
from pocketserver.storage import sso as sso_store
from pocketserver.storage import uia as uia_store
from pocketserver.storage.database import Conn, Database

DUMMY = "m.login.dummy"
PASSWORD = "m.login.password"
REGISTRATION_TOKEN = "m.login.registration_token"
EMAIL_IDENTITY = "m.login.email.identity"
RECAPTCHA = "m.login.recaptcha"
SSO = "m.login.sso"

# What a re-authentication protects, for the SSO confirmation page.
_OPERATIONS = (
    ("POST /account/deactivate", "deactivate your account"),
    ("POST /account/password", "change your password"),
    ("DELETE /devices/", "sign out one of your devices"),
    ("POST /delete_devices", "sign out some of your devices"),
    ("POST /account/3pid/add", "add an e-mail address to your account"),
    ("POST /keys/device_signing/upload", "replace your cross-signing keys"),
)


def describe_operation(request_key: str) -> str:
    """Words for what a session's request does (``"deactivate your account"``)."""
    for prefix, words in _OPERATIONS:
        if request_key.startswith(prefix):
            return words
    return "make a change to your account"

# (auth dict, request key) -> {"medium", "address", "validated_at"}; MatrixError if not.
EmailIdentityCheck = Callable[[Mapping[str, Any], str], Awaitable[dict[str, Any]]]
# A CAPTCHA answer -> True if the verifier accepts it (MatrixError if it cannot tell).
CaptchaCheck = Callable[[str], Awaitable[bool]]

SESSION_LIFETIME_MS = 6 * 60 * 60 * 1000


class AuthRequired(MatrixError):
    """401 with the UIA body; ``errcode`` only when a stage attempt failed."""

    def __init__(self, body: dict[str, Any], errcode: str | None = None, error: str = "") -> None:
        super().__init__(401, errcode or "M_UNAUTHORIZED", error or "Authentication required")
        self.body = body
        self.has_error = errcode is not None

    def to_json(self) -> dict[str, Any]:
        if self.has_error:
            return {"errcode": self.errcode, "error": self.message, **self.body}
        return dict(self.body)


@dataclass(frozen=True, slots=True)
class AuthResult:
    session_id: str
    completed: list[str]
    # The registration token this session holds a pending use of, if any.
    registration_token: str | None = None
    # The address an m.login.email.identity stage validated: medium, address, validated_at.
    threepid: dict[str, Any] | None = None


def finish_in_txn(conn: Conn, result: AuthResult) -> None:
    """End the session inside the caller's write transaction (and use its token)."""
    if result.registration_token is not None:
        accounts.complete_registration_token(conn, result.registration_token)
    uia_store.delete_session(conn, result.session_id)


def finish_registration_in_txn(conn: Conn, result: AuthResult, user_id: str) -> None:
    """End a ``/register`` session inside the registration's write: its token use is
    completed, and the session remembers whom it registered, so that the same completed
    session sent again answers for that user instead of failing (registration is
    idempotent for a client whose first answer was lost). It expires as any other."""
    if result.registration_token is not None:
        accounts.complete_registration_token(conn, result.registration_token)
        uia_store.set_session_param(conn, result.session_id, "registration_token", None)
    uia_store.set_session_param(conn, result.session_id, "registered_user_id", user_id)


def _expire_sessions(conn: Conn, older_than_ms: int) -> int:
    expired = uia_store.pop_expired_sessions(conn, older_than_ms)
    for s in expired:
        token = s.params.get("registration_token")
        if isinstance(token, str):
            accounts.release_registration_token(conn, token)
    return len(expired)


def _create_session(conn: Conn, session_id: str, now_ms: int, request_key: str, user_id: str | None) -> None:
    _expire_sessions(conn, now_ms - SESSION_LIFETIME_MS)
    uia_store.insert_session(conn, session_id, now_ms, request_key, user_id)


def _complete_token_stage(conn: Conn, session_id: str, token: str, now_ms: int) -> list[str] | None:
    if not accounts.reserve_registration_token(conn, token, now_ms):
        return None
    uia_store.set_session_param(conn, session_id, "registration_token", token)
    return uia_store.add_completed_stage(conn, session_id, REGISTRATION_TOKEN)


def password_identifier_user(auth: Mapping[str, Any], server_name: str) -> str | None:
    """The user ID an ``m.login.password`` dict names (``identifier`` or ``user``)."""
    ident = auth.get("identifier")
    user: Any = None
    if isinstance(ident, dict):
        if ident.get("type") != "m.id.user":
            return None
        user = ident.get("user")
    else:
        user = auth.get("user")
    if not isinstance(user, str) or not user:
        return None
    if user.startswith("@"):
        local, sep, domain = user[1:].partition(":")
        if not sep:
            return None
        return f"@{local.lower()}:{domain}"
    return f"@{user.lower()}:{server_name}"


class UIAService:
    def __init__(
        self, db: Database, clock: Clock, server_name: str, passwords: PasswordHasher
    ) -> None:
        self.db = db
        self.passwords = passwords
        self.clock = clock
        self.server_name = server_name
        self.email_identity: EmailIdentityCheck | None = None
        self.recaptcha: CaptchaCheck | None = None
        # Whether the m.login.sso stage is offered (single sign-on is configured).
        self.sso_enabled = False

    async def reauth_flows(self, user_id: str) -> list[list[str]]:
        """The flows that prove a signed-in user is who they are: their password if
        they have one, single sign-on if they have an identity there."""
        def read(conn: Conn) -> tuple[bool, bool]:
            user = accounts.get_user(conn, user_id)
            has_password = bool(user and user.get("password_hash"))
            return has_password, self.sso_enabled and sso_store.user_has_external_id(conn, user_id)

        has_password, has_sso = await self.db.read(read)
        flows = [[PASSWORD]] if has_password else []
        if has_sso:
            flows.append([SSO])
        return flows or [[PASSWORD]]

    async def live_session(self, session_id: str) -> uia_store.UIASession | None:
        """A session that exists and has not expired."""
        found = await self.db.read(uia_store.get_session, session_id)
        if found is None or found.created_ts < self.clock.time_ms() - SESSION_LIFETIME_MS:
            return None
        return found

    async def complete_stage(self, session_id: str, stage: str, *, as_user: str | None) -> bool:
        """Complete ``stage`` of a session out of band (a fallback page, the SSO
        callback). ``as_user``: whom the stage identified, which must be the session's
        user; if not, the session is marked so that the request it protects is refused.
        False if the session is unknown, expired, or for someone else."""
        session = await self.live_session(session_id)
        if session is None:
            return False
        if as_user is not None and session.user_id != as_user:

            def refuse(conn: Conn) -> None:
                uia_store.set_session_param(conn, session_id, "refused", as_user)

            await self.db.write(refuse)
            return False
        await self.db.write(uia_store.add_completed_stage, session_id, stage)
        return True

    def _body(
        self, flows: Sequence[Sequence[str]], params: Mapping[str, Any], session: str, completed: list[str]
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "flows": [{"stages": list(f)} for f in flows],
            "params": dict(params),
            "session": session,
            # Always present (also empty): clients read it to see which stages remain.
            "completed": list(completed),
        }
        return body

    async def session_params(self, session_id: str, request_key: str) -> dict[str, Any]:
        """The parameters a live session of ``request_key`` remembers ({} if none)."""
        found = await self.db.read(uia_store.get_session, session_id)
        if (
            found is None
            or found.request_hash != request_key
            or found.created_ts < self.clock.time_ms() - SESSION_LIFETIME_MS
        ):
            return {}
        return dict(found.params)

    async def remember(self, session_id: str, key: str, value: Any) -> None:
        """Store one parameter in a session (e.g. the request it was started with)."""
        await self.db.write(uia_store.set_session_param, session_id, key, value)

    async def authenticate(
        self,
        auth: Mapping[str, Any] | None,
        *,
        flows: Sequence[Sequence[str]],
        request_key: str,
        user_id: str | None = None,
        params: Mapping[str, Any] | None = None,
        optional: Sequence[str] = (),
    ) -> AuthResult:
        """Check ``auth`` (the request's ``auth`` dict) against ``flows``.

        ``request_key`` names the operation (e.g. ``"POST /register"``): a session
        cannot be carried over to another one. ``user_id`` is the authenticated
        requester, whom an ``m.login.password`` stage must prove to be.
        """
        params = params or {}
        now = self.clock.time_ms()
        if auth is not None and not isinstance(auth, Mapping):
            raise MatrixError(400, "M_BAD_JSON", "'auth' must be an object")
        session_id = auth.get("session") if auth else None
        if session_id is not None and not isinstance(session_id, str):
            raise MatrixError(400, "M_BAD_JSON", "'session' must be a string")

        if session_id is None:
            session_id = secrets.token_urlsafe(24)
            await self.db.write(_create_session, session_id, now, request_key, user_id)
            session = uia_store.UIASession(session_id, now, request_key, [], {}, user_id)
        else:
            found = await self.db.read(uia_store.get_session, session_id)
            if found is None or found.created_ts < now - SESSION_LIFETIME_MS:
                raise MatrixError(400, "M_UNKNOWN", f"Unknown session ID: {session_id}")
            if found.request_hash != request_key:
                raise MatrixError(
                    403, "M_FORBIDDEN", "This session was started for a different request"
                )
            if found.user_id != user_id:
                raise MatrixError(403, "M_FORBIDDEN", "This session belongs to another user")
            if found.params.get("refused") is not None:
                # Single sign-on during this session identified someone else.
                raise MatrixError(403, "M_FORBIDDEN", "This session was authenticated as another user")
            session = found

        completed = list(session.completed)

        def fail(errcode: str | None = None, error: str = "") -> AuthRequired:
            return AuthRequired(self._body(flows, params, session_id, completed), errcode, error)

        if not auth:
            raise fail()
        stage = auth.get("type")
        if stage is not None:
            if not isinstance(stage, str):
                raise MatrixError(400, "M_BAD_JSON", "'auth.type' must be a string")
            if stage not in completed:
                core = [s for s in completed if s not in optional]
                if stage not in optional and not any(
                    list(f[: len(core) + 1]) == core + [stage] for f in flows
                ):
                    raise fail("M_FORBIDDEN", f"Auth type {stage!r} is not expected now")
                completed = await self._attempt(
                    stage, auth, session_id, user_id, now, fail, session.request_hash
                )

        core = [s for s in completed if s not in optional]
        for f in flows:
            if list(f) == core:
                final = await self.db.read(uia_store.get_session, session_id)
                token = final.params.get("registration_token") if final else None
                threepid = final.params.get("threepid") if final else None
                return AuthResult(
                    session_id, completed, token if isinstance(token, str) else None,
                    threepid if isinstance(threepid, dict) else None,
                )
        raise fail()

    async def _attempt(
        self,
        stage: str,
        auth: Mapping[str, Any],
        session_id: str,
        user_id: str | None,
        now: int,
        fail: Any,
        request_key: str,
    ) -> list[str]:
        if stage == DUMMY:
            return await self.db.write(uia_store.add_completed_stage, session_id, DUMMY)
        if stage == PASSWORD:
            password = auth.get("password")
            named = password_identifier_user(auth, self.server_name)
            if not isinstance(password, str) or named is None:
                raise fail("M_BAD_JSON", "m.login.password needs an identifier and a password")
            if user_id is not None and named != user_id:
                # Not a failed attempt at the stage but a request for someone else's
                # account (a stolen access token with the thief's own password): refused
                # outright, as the session's owner check is.
                raise MatrixError(403, "M_FORBIDDEN", "You can only authenticate as yourself")
            user = await self.db.read(accounts.get_user, named)
            stored = user["password_hash"] if user and not user["deactivated"] else None
            if not await self.passwords.check(password, stored if isinstance(stored, str) else None):
                raise fail("M_FORBIDDEN", "Invalid password")
            return await self.db.write(uia_store.add_completed_stage, session_id, PASSWORD)
        if stage == REGISTRATION_TOKEN:
            token = auth.get("token")
            if not isinstance(token, str) or not token:
                raise fail("M_BAD_JSON", "m.login.registration_token needs a token")
            done = await self.db.write(_complete_token_stage, session_id, token, now)
            if done is None:
                raise fail("M_FORBIDDEN", "Invalid registration token")
            return done
        if stage == EMAIL_IDENTITY and self.email_identity is not None:
            try:
                threepid = await self.email_identity(auth, request_key)
            except MatrixError as e:
                raise fail(e.errcode, e.message) from None

            def complete(conn: Conn) -> list[str]:
                uia_store.set_session_param(conn, session_id, "threepid", threepid)
                return uia_store.add_completed_stage(conn, session_id, EMAIL_IDENTITY)

            return await self.db.write(complete)
        if stage == RECAPTCHA and self.recaptcha is not None:
            answer = auth.get("response")
            if not isinstance(answer, str) or not answer:
                raise fail("M_BAD_JSON", "m.login.recaptcha needs a 'response'")
            if not await self.recaptcha(answer):
                raise fail("M_FORBIDDEN", "The CAPTCHA was not solved")
            return await self.db.write(uia_store.add_completed_stage, session_id, RECAPTCHA)
        if stage == SSO and self.sso_enabled:
            raise fail(
                "M_FORBIDDEN",
                "Complete m.login.sso in a browser at /_matrix/client/v3/auth/m.login.sso/fallback/web",
            )
        raise fail("M_UNRECOGNIZED", f"Unsupported auth type {stage!r}")

    async def finish(self, result: AuthResult) -> None:
        await self.db.write(finish_in_txn, result)
