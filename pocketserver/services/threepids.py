"""Third-party identifiers on accounts (client-server-api "Adding Account Administrative
Contact Information", administrative_contact.yaml; "Email-based (identity /
homeserver)" in "User-Interactive Authentication"; password_management.yaml).

This server validates e-mail addresses itself: ``…/email/requestToken`` creates a
validation session and mails a link (and the same token for typing in); following the
link (``GET /_pocketserver/client/email/submit_token``) or posting the token to the
``submit_url`` marks the session validated. A validated session is used once, within
its lifetime, by the request it was made for:

* ``add``: ``POST /account/3pid/add`` (user-interactive auth) or the deprecated
  ``POST /account/3pid`` puts the address on the account;
* ``register``: the ``m.login.email.identity`` stage of ``/register``;
* ``password``: the same stage on ``/account/password`` without an access token
  resets the password of the account the address belongs to.

Account enumeration: only what the spec requires. ``requestToken`` for registration
and for adding answers M_THREEPID_IN_USE, for a password reset M_THREEPID_NOT_FOUND;
login by address answers the same "invalid username or password" for an unknown
address as for a wrong password. Every ``requestToken`` counts against the client's
address, and every mail sent against the e-mail address (``rate_limits.threepid_request``).

Bindings at identity servers (``/account/3pid/bind``, ``/unbind``, ``/delete``,
deactivation) go through :class:`~pocketserver.services.third_party_invites.IdentityClient`
with its address policy (public addresses, or ``federation.allowed_ip_ranges``). Unbinds
are signed with the server's key (X-Matrix), as identity-service-api "Unbind" asks.
This module knows nothing of HTTP.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from pocketserver.config import Config
from pocketserver.errors import BadJson, Forbidden, MatrixError, MissingParam
from pocketserver.services.clock import Clock
from pocketserver.services.mailer import Mailer, MailError, validation_mail
from pocketserver.services.params import get_str
from pocketserver.services.ratelimit import RateLimiter
from pocketserver.services.third_party_invites import (
    IdentityClient,
    IdentityServerError,
    identity_url,
)
from pocketserver.services.uia import AuthResult, finish_in_txn
from pocketserver.storage import threepids as store
from pocketserver.storage.database import Conn, Database

log = logging.getLogger("pocketserver.threepids")

SUBMIT_PATH = "_pocketserver/client/email/submit_token"
CLIENT_SECRET = re.compile(r"[0-9a-zA-Z.=_-]{1,255}")
SID = re.compile(r"[0-9a-zA-Z.=_-]{1,255}")
MAX_EMAIL_LENGTH = 254
# A plain, deliberately strict shape: one @, no spaces or controls, a dotted or
# bracketed domain. Anything a mail server would refuse is refused here first.
_EMAIL = re.compile(r"[^\s@\x00-\x1f\x7f<>()\[\],;:\"\\]+@([a-z0-9-]+(\.[a-z0-9-]+)+|\[[0-9a-f:.]+\])")
KEEP_CONSUMED_MS = 24 * 60 * 60 * 1000

PURPOSES = ("register", "add", "password")

Authorizer = Callable[[str, str, str, Any], str]


def canonical_email(address: str) -> str:
    """The stored form of an e-mail address (lowercased, trimmed), or M_INVALID_PARAM."""
    value = address.strip().lower()
    if len(value) > MAX_EMAIL_LENGTH or not _EMAIL.fullmatch(value):
        raise MatrixError(400, "M_INVALID_PARAM", "Not a valid e-mail address")
    return value


def _token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def _client_secret(body: Mapping[str, Any]) -> str:
    secret = get_str(body, "client_secret", required=True)
    assert secret is not None
    if not CLIENT_SECRET.fullmatch(secret):
        raise MatrixError(400, "M_INVALID_PARAM", "client_secret must be 1-255 characters of [0-9a-zA-Z.=_-]")
    return secret


def _sid(body: Mapping[str, Any]) -> str:
    sid = get_str(body, "sid", required=True)
    assert sid is not None
    if not SID.fullmatch(sid):
        raise MatrixError(400, "M_INVALID_PARAM", "sid must be 1-255 characters of [0-9a-zA-Z.=_-]")
    return sid


def _medium_address(body: Mapping[str, Any]) -> tuple[str, str]:
    medium = get_str(body, "medium", required=True)
    address = get_str(body, "address", required=True)
    assert medium is not None and address is not None
    if medium == "email":
        return medium, address.strip().lower()
    if medium == "msisdn":
        return medium, address.strip()
    raise MatrixError(400, "M_INVALID_PARAM", "medium must be 'email' or 'msisdn'")


@dataclass(frozen=True, slots=True)
class Validated:
    medium: str
    address: str
    validated_at: int


class ThreepidAuthFailed(MatrixError):
    def __init__(self, message: str = "No validated session for these credentials") -> None:
        super().__init__(400, "M_THREEPID_AUTH_FAILED", message)


def use_validated_session_in_txn(
    conn: Conn, sid: str, client_secret: str, purpose: str, now_ms: int
) -> Validated:
    """Use up the validated session ``sid`` of ``purpose`` inside the caller's write;
    :class:`ThreepidAuthFailed` if there is none (unknown, other secret, not yet
    validated, expired, used)."""
    s = store.get_session(conn, sid)
    if (
        s is None
        or not hmac.compare_digest(s.client_secret.encode(), client_secret.encode())
        or s.purpose != purpose
    ):
        raise ThreepidAuthFailed()
    if s.validated_ts is None:
        raise ThreepidAuthFailed("This e-mail address has not been confirmed yet: follow the link in the mail")
    if s.expires_ts < now_ms or not store.mark_consumed(conn, sid, now_ms):
        raise ThreepidAuthFailed("This confirmation has expired or was used already")
    return Validated(s.medium, s.address, s.validated_ts)


class ThreepidService:
    def __init__(
        self,
        config: Config,
        db: Database,
        clock: Clock,
        mailer: Mailer,
        ratelimiter: RateLimiter,
        identity: IdentityClient,
        authorize: Authorizer,
    ) -> None:
        self.config = config
        self.db = db
        self.clock = clock
        self.mailer = mailer
        self.ratelimiter = ratelimiter
        self.identity = identity
        self.authorize = authorize
        self.server_name = config.server_name
        self.lifetime_ms = config.email.token_lifetime_minutes * 60 * 1000
        self.base_url = config.base_url
        self._base_learned = False

    @property
    def email_enabled(self) -> bool:
        return self.mailer.enabled

    def learn_base_url(self, url: str) -> None:
        """The first client listener's URL once bound, when its port was ephemeral."""
        if not self._base_learned:
            self.base_url = url.rstrip("/") + "/"
            self._base_learned = True

    def submit_url(self) -> str:
        return self.base_url + SUBMIT_PATH

    # -- requestToken ------------------------------------------------------------------

    async def request_token(self, purpose: str, body: Mapping[str, Any], ip: str | None) -> dict[str, Any]:
        """``POST …/email/requestToken`` for ``purpose`` (register, add, password)."""
        assert purpose in PURPOSES
        client_secret = _client_secret(body)
        email = get_str(body, "email", required=True)
        assert email is not None
        attempt = body.get("send_attempt")
        if attempt is None:
            raise MissingParam("Missing 'send_attempt'")
        if isinstance(attempt, bool) or not isinstance(attempt, int):
            raise BadJson("'send_attempt' must be an integer")
        if not 0 <= attempt < 2**53:
            raise MatrixError(400, "M_INVALID_PARAM", "send_attempt out of range")
        for key in ("id_server", "id_access_token"):
            get_str(body, key)
        next_link = get_str(body, "next_link")
        if next_link is not None and (
            len(next_link) > 2048 or not re.match(r"https?://[^\s]+\Z", next_link)
        ):
            raise MatrixError(400, "M_INVALID_PARAM", "next_link must be an http(s) URL")
        address = canonical_email(email)
        if not self.email_enabled:
            raise MatrixError(
                400, "M_THREEPID_MEDIUM_NOT_SUPPORTED",
                "This server cannot send e-mail: no SMTP server is configured ([email] smtp_host)",
            )
        self.ratelimiter.check("threepid_request", f"ip:{ip or '?'}")
        owner = await self.db.read(store.get_threepid_owner, "email", address)
        if purpose in ("register", "add") and owner is not None:
            raise MatrixError(400, "M_THREEPID_IN_USE", "This e-mail address is already in use")
        if purpose == "password" and owner is None:
            raise MatrixError(400, "M_THREEPID_NOT_FOUND", "No account has this e-mail address")

        now = self.clock.time_ms()
        token = secrets.token_urlsafe(24)
        existing = await self.db.read(store.find_session, client_secret, "email", address, purpose)
        if existing is not None and existing.expires_ts >= now and attempt <= existing.send_attempt:
            # The same attempt again (a retried request): no second mail (spec).
            return {"sid": existing.session_id, "submit_url": self.submit_url()}
        self.ratelimiter.check("threepid_request", f"email:{address}")
        if existing is not None and existing.expires_ts >= now and existing.validated_ts is None:
            sid = existing.session_id
            previous = (existing.token_hash, existing.send_attempt, existing.expires_ts)
            await self.db.write(store.update_session_token, sid, _token_hash(token), attempt, now + self.lifetime_ms)
        else:
            sid = secrets.token_urlsafe(18)
            previous = None
            session = store.ValidationSession(
                sid, client_secret, "email", address, purpose, _token_hash(token), attempt,
                now, now + self.lifetime_ms, None, None, next_link,
            )

            def insert(conn: Conn) -> None:
                store.delete_expired_sessions(conn, now, KEEP_CONSUMED_MS)
                store.insert_session(conn, session)

            await self.db.write(insert)
        link = self.submit_url() + "?" + urlencode({"token": token, "client_secret": client_secret, "sid": sid})
        subject, text = validation_mail(
            purpose, self.server_name, link, token, self.config.email.token_lifetime_minutes
        )
        try:
            await self.mailer.send(address, subject, text)
        except MailError:
            # Not sent: the same send_attempt again must try again, so undo the attempt.
            if previous is None:
                await self.db.write(store.mark_consumed, sid, now)
            else:
                await self.db.write(store.update_session_token, sid, *previous)
            raise MatrixError(502, "M_UNKNOWN", "The mail could not be sent; try again later") from None
        log.info("validation mail for %s (%s) sent, session %s", address, purpose, sid)
        return {"sid": sid, "submit_url": self.submit_url()}

    # -- submitToken -------------------------------------------------------------------

    async def submit_token(self, sid: str, client_secret: str, token: str) -> tuple[bool, str | None]:
        """The mailed token for session ``sid``: (True, the client's ``next_link``) once
        it is validated (also when it was already), (False, None) for a wrong, expired
        or used token."""
        now = self.clock.time_ms()

        def run(conn: Conn) -> tuple[bool, str | None]:
            s = store.get_session(conn, sid)
            if s is None or s.consumed_ts is not None or s.expires_ts < now:
                return False, None
            if not hmac.compare_digest(s.client_secret.encode(), client_secret.encode()):
                return False, None
            if not hmac.compare_digest(s.token_hash, _token_hash(token)):
                return False, None
            store.mark_validated(conn, sid, now)
            return True, s.next_link

        return await self.db.write(run)

    # -- the m.login.email.identity stage ------------------------------------------------

    async def auth_stage(self, auth: Mapping[str, Any], request_key: str) -> dict[str, Any]:
        """Check an ``m.login.email.identity`` auth dict for the UIA request
        ``request_key``; use its session up and return the address as
        ``{"medium", "address", "validated_at"}``."""
        creds = auth.get("threepid_creds", auth.get("threepidCreds"))
        if not isinstance(creds, Mapping):
            raise BadJson("m.login.email.identity needs 'threepid_creds'")
        sid = _sid(creds)
        client_secret = _client_secret(creds)
        purpose = {"POST /register": "register", "POST /account/password": "password"}.get(request_key)
        if purpose is None:
            raise ThreepidAuthFailed("E-mail authentication is not offered for this request")
        v = await self.db.write(use_validated_session_in_txn, sid, client_secret, purpose, self.clock.time_ms())
        return {"medium": v.medium, "address": v.address, "validated_at": v.validated_at}

    # -- addresses on accounts ---------------------------------------------------------

    async def list_threepids(self, user_id: str) -> list[dict[str, Any]]:
        rows = await self.db.read(store.list_user_threepids, user_id)
        return [
            {"medium": t.medium, "address": t.address, "validated_at": t.validated_at, "added_at": t.added_at}
            for t in rows
        ]

    def check_add_body(self, body: Mapping[str, Any]) -> tuple[str, str]:
        """(sid, client_secret) of ``POST /account/3pid/add``."""
        return _sid(body), _client_secret(body)

    def add_in_txn(self, conn: Conn, user_id: str, sid: str, client_secret: str) -> None:
        """Put the address of validated session ``sid`` on ``user_id``'s account."""
        now = self.clock.time_ms()
        v = use_validated_session_in_txn(conn, sid, client_secret, "add", now)
        if not store.insert_user_threepid(conn, user_id, v.medium, v.address, v.validated_at, now):
            raise MatrixError(400, "M_THREEPID_IN_USE", "This e-mail address is already in use")

    async def add(self, user_id: str, sid: str, client_secret: str, auth: AuthResult | None = None) -> None:
        """Add the address (and end the UIA session ``auth`` in the same write)."""

        def run(conn: Conn) -> None:
            self.add_in_txn(conn, user_id, sid, client_secret)
            if auth is not None:
                finish_in_txn(conn, auth)

        await self.db.write(run)
        log.info("%s added an e-mail address", user_id)

    async def add_deprecated(self, user_id: str, body: Mapping[str, Any]) -> None:
        """``POST /account/3pid`` (deprecated): the credentials of a session this server
        validated add the address; others are a bind at the identity server they name."""
        creds = body.get("three_pid_creds", body.get("threePidCreds"))
        if creds is None:
            raise MissingParam("Missing 'three_pid_creds'")
        if not isinstance(creds, Mapping):
            raise BadJson("'three_pid_creds' must be an object")
        sid, client_secret = _sid(creds), _client_secret(creds)
        local = await self.db.read(store.get_session, sid)
        if local is not None or not isinstance(creds.get("id_server"), str):
            await self.add(user_id, sid, client_secret)
            return
        await self.bind(user_id, creds)

    # -- identity servers --------------------------------------------------------------

    async def bind(self, user_id: str, body: Mapping[str, Any]) -> None:
        """``POST /account/3pid/bind``: the identity server binds the address its
        session ``sid`` validated to ``user_id``; the binding is remembered here."""
        client_secret = _client_secret(body)
        sid = _sid(body)
        id_server = get_str(body, "id_server", required=True)
        token = get_str(body, "id_access_token", required=True)
        assert id_server is not None and token is not None
        url = identity_url(id_server, "/_matrix/identity/v2/3pid/bind")
        try:
            status, answer = await self.identity.request(
                "POST", url, token=token, body={"sid": sid, "client_secret": client_secret, "mxid": user_id}
            )
        except IdentityServerError as e:
            log.info("bind at %s failed: %s", id_server, e)
            raise MatrixError(502, "M_UNKNOWN", "The identity server could not be reached") from None
        if not 200 <= status < 300:
            raise _identity_error(status, answer)
        if (
            not isinstance(answer, dict)
            or not isinstance(answer.get("medium"), str)
            or not isinstance(answer.get("address"), str)
        ):
            raise MatrixError(502, "M_UNKNOWN", "The identity server gave no usable answer")
        medium = answer["medium"]
        address = answer["address"].strip().lower() if medium == "email" else answer["address"]
        await self.db.write(store.add_binding, user_id, medium, address, id_server)
        log.info("%s bound a %s at %s", user_id, medium, id_server)

    async def unbind(self, user_id: str, body: Mapping[str, Any]) -> str:
        """``POST /account/3pid/unbind``: ``success`` or ``no-support``."""
        medium, address = _medium_address(body)
        id_server = get_str(body, "id_server")
        if id_server is not None:
            identity_url(id_server, "/")
        return await self._unbind(user_id, medium, address, id_server)

    async def delete(self, user_id: str, body: Mapping[str, Any]) -> str:
        """``POST /account/3pid/delete``: unbind where it is bound, then take the
        address off the account (nothing to take off is no error)."""
        medium, address = _medium_address(body)
        id_server = get_str(body, "id_server")
        if id_server is not None:
            identity_url(id_server, "/")
        result = await self._unbind(user_id, medium, address, id_server)
        await self.db.write(store.delete_user_threepid, user_id, medium, address)
        return result

    async def to_unbind_on_deactivation(self, user_id: str, id_server: str | None) -> set[tuple[str, str]]:
        """What deactivating ``user_id`` unbinds (read before the account's addresses
        go): every address this server bound, and with ``id_server`` the account's
        addresses too."""
        pairs = {(m, a) for m, a, _ in await self.db.read(store.list_bindings, user_id)}
        if id_server is not None:
            identity_url(id_server, "/")
            pairs |= {(t.medium, t.address) for t in await self.db.read(store.list_user_threepids, user_id)}
        return pairs

    async def unbind_all(self, user_id: str, pairs: set[tuple[str, str]], id_server: str | None) -> str:
        """Deactivation: unbind ``pairs``; ``success`` only if every unbind succeeded."""
        result = "success"
        for medium, address in sorted(pairs):
            if await self._unbind(user_id, medium, address, id_server) != "success":
                result = "no-support"
        return result if pairs else "no-support"

    async def _unbind(self, user_id: str, medium: str, address: str, id_server: str | None) -> str:
        if id_server is not None:
            servers = [id_server]
        else:
            servers = [s for _, _, s in await self.db.read(store.list_bindings, user_id, medium, address)]
        if not servers:
            return "no-support"
        result = "success"
        for server in servers:
            if not await self._unbind_at(server, user_id, medium, address):
                result = "no-support"
            await self.db.write(store.remove_binding, user_id, medium, address, server)
        return result

    async def _unbind_at(self, id_server: str, user_id: str, medium: str, address: str) -> bool:
        path = "/_matrix/identity/v2/3pid/unbind"
        body = {"mxid": user_id, "threepid": {"medium": medium, "address": address}}
        auth = self.authorize("POST", id_server, path, body)
        try:
            status, _answer = await self.identity.request(
                "POST", identity_url(id_server, path), body=body, authorization=auth
            )
        except IdentityServerError as e:
            log.info("unbind at %s failed: %s", id_server, e)
            return False
        if not 200 <= status < 300:
            log.info("unbind at %s answered %s", id_server, status)
            return False
        return True


def _identity_error(status: int, answer: Any) -> MatrixError:
    """An identity server's refusal as this server's own error (its errcode kept when
    it is one, its message not passed on)."""
    errcode = answer.get("errcode") if isinstance(answer, dict) else None
    if not isinstance(errcode, str) or not re.fullmatch(r"M_[A-Z_]{1,64}", errcode):
        errcode = "M_UNKNOWN"
    if status in (401, 403):
        return Forbidden("The identity server refused the request")
    if 400 <= status < 500:
        return MatrixError(400, errcode, f"The identity server refused the request ({errcode})")
    return MatrixError(502, "M_UNKNOWN", f"The identity server failed: HTTP {status}")
