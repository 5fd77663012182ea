"""Single sign-on through a CAS server (client-server-api "SSO client login/authentication").

Login (``m.login.sso``, and the deprecated ``m.login.cas`` that is the same process):

1. ``/login/sso/redirect?redirectUrl=C`` answers with a redirect to the CAS server's
   ``/login?service=S``, where S is this server's ticket callback
   (``<service_url>/_matrix/client/r0/login/cas/ticket?redirectUrl=C``; the r0 path is
   the one Synapse registers at CAS servers, so their service lists work unchanged).
2. The CAS server signs the user in and sends the browser to S with ``&ticket=T``.
3. :meth:`CasService.login_callback` validates T at the CAS server's ``/proxyValidate``
   for S (protocol/cas.py reads the XML), checks the required attributes, finds the
   account linked to the CAS user (or links the account of the same localpart, or
   creates one), and stores a one-time, short-lived login token for it, all in one
   write.
4. The browser goes to C with ``loginToken`` added: straight away for the clients the
   operator trusts (``trusted_client_urls``), else through a page where the user
   confirms that site may sign in to their account (the spec's security
   considerations: a login token must not go to a site the user did not choose).
5. The client logs in with ``m.login.token`` (AccountsService.login_with_token).

User-interactive auth (``m.login.sso``, offered to users with a CAS identity): the
fallback page names the operation and links to the CAS server with the callback
``...?session=ID``; :meth:`CasService.uia_callback` validates the ticket the same way and
completes the stage for that session only if the CAS user is the session's user (any
other user marks the session refused: the request it protects then answers 403).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

from pocketserver.config import Config
from pocketserver.errors import Forbidden, InvalidParam, MatrixError, MissingParam, NotFound
from pocketserver.protocol.cas import (
    CasAnswer,
    CasResponseError,
    has_required_attributes,
    localpart_from_external_name,
    parse_service_response,
)
from pocketserver.services.accounts import AccountsService
from pocketserver.services.auth import hash_token, new_token
from pocketserver.services.clock import Clock
from pocketserver.services.outbound import OUTBOUND_ERRORS, Outbound
from pocketserver.services.uia import SSO, UIAService, describe_operation
from pocketserver.storage import accounts as accounts_store
from pocketserver.storage import sso as sso_store
from pocketserver.storage.database import Conn, Database

log = logging.getLogger("pocketserver.sso")

PROVIDER = "cas"
TICKET_PATH = "_matrix/client/r0/login/cas/ticket"
MAX_REDIRECT_URL = 2048
MAX_TICKET = 1024
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
# Schemes that would run in the page that offers the link instead of leaving it.
_REFUSED_SCHEMES = ("javascript", "data", "vbscript", "file", "blob")


@dataclass(frozen=True, slots=True)
class LoginOutcome:
    user_id: str
    # redirectUrl with the login token added.
    redirect: str
    # The client is one the operator trusts: redirect without asking.
    trusted: bool
    created: bool


@dataclass(frozen=True, slots=True)
class UiaPage:
    """What the m.login.sso fallback page shows: the operation and where to sign in."""

    operation: str
    cas_login_url: str


def check_redirect_url(url: str | None) -> str:
    """The client's ``redirectUrl``: an absolute URI, of a scheme that leaves the page."""
    if not url:
        raise MissingParam("Missing 'redirectUrl'")
    if len(url) > MAX_REDIRECT_URL or any(ord(c) < 0x21 or c == "\x7f" for c in url):
        raise InvalidParam("'redirectUrl' is not a URL")
    m = _SCHEME.match(url)
    if m is None or m.group()[:-1].lower() in _REFUSED_SCHEMES:
        raise InvalidParam("'redirectUrl' is not a URL a browser can be sent to")
    return url


def with_login_token(redirect_url: str, token: str) -> str:
    """``redirect_url`` with ``loginToken`` added (any it had removed); the rest of its
    query is kept byte for byte."""
    base, hash_sign, fragment = redirect_url.partition("#")
    path, _q, query = base.partition("?")
    kept = [p for p in query.split("&") if p and unquote(p.split("=", 1)[0]) != "loginToken"]
    kept.append("loginToken=" + quote(token, safe=""))
    return f"{path}?{'&'.join(kept)}" + (f"#{fragment}" if hash_sign else "")


class CasService:
    def __init__(
        self,
        config: Config,
        db: Database,
        clock: Clock,
        outbound: Outbound,
        uia: UIAService,
        accounts: AccountsService,
    ) -> None:
        self.cfg = config.cas
        self.server_name = config.server_name
        self.db = db
        self.clock = clock
        self.outbound = outbound
        self.uia = uia
        self.accounts = accounts
        base = self.cfg.service_url or config.base_url
        self.callback_url = base.rstrip("/") + "/" + TICKET_PATH
        self.cas_url = self.cfg.server_url.rstrip("/")

    @property
    def enabled(self) -> bool:
        return self.cfg.enabled

    def login_flows(self) -> list[dict[str, object]]:
        """The GET /login flows single sign-on adds."""
        return [
            {"type": "m.login.sso", "identity_providers": [{"id": PROVIDER, "name": self.cfg.idp_name}]},
            {"type": "m.login.cas"},
            {"type": "m.login.token"},
        ]

    def _require_enabled(self) -> None:
        if not self.enabled:
            raise MatrixError(404, "M_UNRECOGNIZED", "Single sign-on is not configured on this server")

    def _login_url(self, service: str) -> str:
        return f"{self.cas_url}/login?service={quote(service, safe='')}"

    # -- login ---------------------------------------------------------------------

    def login_redirect(self, redirect_url: str | None, idp_id: str | None = None) -> str:
        """GET /login/sso/redirect[/{idpId}] and /login/cas/redirect: where to send the browser."""
        self._require_enabled()
        if idp_id is not None and idp_id != PROVIDER:
            raise NotFound(f"Unknown identity provider {idp_id!r}")
        url = check_redirect_url(redirect_url)
        return self._login_url(f"{self.callback_url}?redirectUrl={quote(url, safe='')}")

    async def login_callback(self, ticket: str | None, redirect_url: str | None) -> LoginOutcome:
        """The ticket callback of a login: the account, and where the browser goes next."""
        self._require_enabled()
        url = check_redirect_url(redirect_url)
        answer = await self._validate(ticket, f"{self.callback_url}?redirectUrl={quote(url, safe='')}")
        assert answer.user is not None
        cas_user = answer.user
        localpart = localpart_from_external_name(cas_user)
        # M_INVALID_USERNAME / M_EXCLUSIVE for a name no account may have here.
        user_id = self.accounts.check_localpart(localpart)
        display = None
        if self.cfg.displayname_attribute:
            values = answer.attributes.get(self.cfg.displayname_attribute) or []
            display = next((v for v in values if v), None)
        token = new_token("psl")
        now = self.clock.time_ms()
        expires = now + self.cfg.login_token_lifetime_seconds * 1000

        def txn(conn: Conn) -> tuple[str, bool]:
            created = False
            uid = sso_store.get_user_by_external_id(conn, PROVIDER, cas_user)
            if uid is None:
                # First sign-in of this CAS user: the account of the same name (the CAS
                # server is the operator's directory of users), or a new one.
                uid = user_id
                if accounts_store.get_user(conn, uid) is None:
                    accounts_store.insert_user(conn, uid, None, now, displayname=display)
                    created = True
                sso_store.insert_external_id(conn, PROVIDER, cas_user, uid, now)
            user = accounts_store.get_user(conn, uid)
            if user is None or user["deactivated"]:
                raise MatrixError(403, "M_USER_DEACTIVATED", "This account has been deactivated")
            sso_store.insert_login_token(conn, hash_token(token), uid, PROVIDER, now, expires)
            return uid, created

        uid, created = await self.db.write(txn)
        if created:
            log.info("registered %s through CAS (%s)", uid, cas_user)
        trusted = any(url.startswith(prefix) for prefix in self.cfg.trusted_client_urls if prefix)
        return LoginOutcome(uid, with_login_token(url, token), trusted, created)

    # -- user-interactive auth -----------------------------------------------------

    async def uia_page(self, session_id: str | None) -> UiaPage:
        """The m.login.sso fallback page of a session: what it confirms, where to go."""
        self._require_enabled()
        if not session_id:
            raise MissingParam("Missing 'session'")
        session = await self.uia.live_session(session_id)
        if session is None or session.user_id is None:
            raise NotFound("Unknown or expired session")
        if not await self.db.read(sso_store.user_has_external_id, session.user_id, PROVIDER):
            raise Forbidden("This account has no single sign-on identity")
        service = f"{self.callback_url}?session={quote(session_id, safe='')}"
        return UiaPage(describe_operation(session.request_hash), self._login_url(service))

    async def uia_callback(self, ticket: str | None, session_id: str) -> bool:
        """The ticket callback of a user-interactive auth session: True if the stage is
        complete, False if the CAS user is not the session's user (or it is gone)."""
        self._require_enabled()
        answer = await self._validate(ticket, f"{self.callback_url}?session={quote(session_id, safe='')}")
        assert answer.user is not None
        uid = await self.db.read(sso_store.get_user_by_external_id, PROVIDER, answer.user)
        # A CAS user linked to no account is nobody here: the session is refused.
        done = await self.uia.complete_stage(session_id, SSO, as_user=uid or f"cas:{answer.user}")
        if not done:
            log.warning("CAS user %s did not complete session %s", answer.user, session_id)
        return done

    # -- the CAS server ------------------------------------------------------------

    async def _validate(self, ticket: str | None, service: str) -> CasAnswer:
        if not ticket:
            raise MissingParam("Missing 'ticket'")
        if len(ticket) > MAX_TICKET:
            raise InvalidParam("'ticket' is too long")
        url = f"{self.cas_url}/proxyValidate?ticket={quote(ticket, safe='')}&service={quote(service, safe='')}"
        try:
            reply = await self.outbound.request(
                "GET", url, policy=None, max_bytes=64 * 1024, timeout_s=self.cfg.timeout_seconds
            )
        except OUTBOUND_ERRORS as e:
            log.warning("CAS server %s: %s", self.cas_url, e)
            raise MatrixError(502, "M_UNKNOWN", "The CAS server could not be reached") from None
        if reply.status != 200:
            log.warning("CAS server %s answered HTTP %d", self.cas_url, reply.status)
            raise MatrixError(502, "M_UNKNOWN", "The CAS server failed")
        try:
            answer = parse_service_response(reply.body)
        except CasResponseError as e:
            log.warning("CAS server %s: %s", self.cas_url, e)
            raise MatrixError(502, "M_UNKNOWN", "The CAS server's answer could not be read") from None
        if answer.user is None:
            raise Forbidden(f"The CAS server did not accept the ticket ({answer.failure})")
        if not has_required_attributes(answer.attributes, self.cfg.required_attributes):
            raise Forbidden("This CAS account may not sign in here")
        return answer
