"""The built-in identity service (shared/spec/content/identity-service-api.md, v2):
off by default, on with ``[identity] enabled = true``, in this process and this database.

What it owns, in the spec's order:

1. Authentication: ``/account/register`` takes an OpenID token (client-server
   ``/openid/request_token``) and checks it with its homeserver's
   ``/_matrix/federation/v1/openid/userinfo`` (this server in process, any other over
   HTTPS); the user ID must belong to ``matrix_server_name``. It answers a token of the
   service's own (kept as a hash), good until ``/account/logout``.
2. Terms: the policies of ``[identity] terms``; until a user accepted each (one URL of
   it), every authenticated endpoint but ``/account``, ``/account/logout`` and
   ``POST /terms`` answers 403 ``M_TERMS_NOT_SIGNED``.
3. Lookups: ``/hash_details`` (a pepper made once and kept) and ``/lookup`` with
   ``sha256`` or ``none`` (:mod:`pocketserver.protocol.identity`).
4. E-mail validation: ``/validate/email/requestToken`` makes a session and mails its
   token and link (a higher ``send_attempt`` mails it again, the same one does not);
   ``/submitToken`` (the link's GET, or POST) validates it once: the token is spent, a
   wrong one counts against ``max_token_attempts``, sessions expire
   ``session_lifetime_seconds`` after their last change (M_SESSION_EXPIRED). At most
   ``mails_per_address_per_hour`` mails go to one address (M_LIMIT_EXCEEDED).
5. Associations: ``/3pid/bind`` publishes a validated session's address for the
   token's own user and answers the association signed with the server's key;
   ``/3pid/unbind`` removes it, for the owner (token), the session's holder
   (``sid`` + ``client_secret``) or the user's homeserver (a signed request).
6. Invitations: ``/store-invite`` keeps an invitation to an address nobody bound, with a
   new ephemeral key pair, and mails the address; when the address is bound, each pending
   invitation goes to the user's homeserver as ``PUT /_matrix/federation/v1/3pid/onbind``
   with a ``signed`` object (``mxid, sender, token``) signed by the server's key (this
   server in process, another over HTTPS). An invitation that could not be delivered
   (the homeserver unreachable) stays pending for the next bind; one the homeserver
   refused is done.
7. ``/sign-ed25519`` signs ``mxid, sender, token`` with the private key the caller
   hands in; ``/pubkey/*`` publish and vouch for the keys.

The service's keys: its long-term key is the server's signing key, and it signs as the
server's name. It never knows about HTTP: routes in ``api/identity.py`` translate.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlencode

import nacl.signing
from unpaddedbase64 import encode_base64

from pocketserver.config import Config
from pocketserver.errors import (
    BadJson,
    Forbidden,
    InvalidParam,
    LimitExceeded,
    MatrixError,
    MissingParam,
    NotFound,
    UnknownToken,
)
from pocketserver.federation.interfaces import FederationError, FederationUnreachable
from pocketserver.protocol import identity as proto
from pocketserver.protocol.identifiers import is_valid_server_name, is_valid_user_id
from pocketserver.protocol.signing import (
    SigningKey,
    decode_unpadded_base64,
    encode_verify_key_base64,
    sign_json,
    signing_key_from_seed,
)
from pocketserver.services.auth import hash_token
from pocketserver.services.clock import Clock
from pocketserver.services.mailer import Mailer, MailError
from pocketserver.services.openid import OpenIdService
from pocketserver.services.params import get_str
from pocketserver.storage import identity as store
from pocketserver.storage.database import Database

log = logging.getLogger("pocketserver.identity")

JsonDict = dict[str, Any]

MAX_LOOKUP_ADDRESSES = 10_000
MAX_TOKENS_PER_USER = 100
MAX_RATE_KEYS = 10_000
# An association is valid for this long after it is made (the spec's example: ~100 years).
ASSOCIATION_VALIDITY_MS = 100 * 365 * 24 * 3600 * 1000
SEND_ERROR = "M_EMAIL_SEND_ERROR"

# (server_name, openid token) -> the user ID, or raises MatrixError.
UserInfo = Callable[[str, str], Awaitable[str]]
# (user's server name, onbind body) -> None; raises MatrixError when refused, or
# IdentityDeliveryError when the server could not be reached.
OnBind = Callable[[str, JsonDict], Awaitable[None]]


class IdentityDeliveryError(Exception):
    """An onbind notification could not be delivered (try again at the next bind)."""


def _unauthorized(message: str) -> MatrixError:
    return MatrixError(401, "M_UNAUTHORIZED", message)


def _opaque(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key)
    if value is None:
        raise MissingParam(f"Missing {key!r}")
    if not proto.is_opaque_id(value):
        raise InvalidParam(f"{key!r} must be 1-255 characters of [0-9a-zA-Z.=_-]")
    return str(value)


def _string(body: Mapping[str, Any], key: str, *, required: bool = True, limit: int = 1024) -> str | None:
    value = get_str(body, key, required=required)
    if value is not None and len(value) > limit:
        raise InvalidParam(f"{key!r} is too long")
    return value


def _email(value: str) -> str:
    try:
        return proto.normalise_email(value)
    except proto.InvalidAddress as e:
        raise MatrixError(400, "M_INVALID_EMAIL", f"The email address is not valid: {e}") from None


class IdentityService:
    def __init__(
        self,
        config: Config,
        db: Database,
        clock: Clock,
        signing_key: SigningKey,
        mailer: Mailer,
        userinfo: UserInfo,
        onbind: OnBind,
    ) -> None:
        self.cfg = config.identity
        self.server_name = config.server_name
        self.base_url = (self.cfg.base_url or f"https://{config.server_name}").rstrip("/")
        self.db = db
        self.clock = clock
        self.key = signing_key
        self.mailer = mailer
        self.userinfo = userinfo
        self.onbind = onbind
        self._mails: OrderedDict[str, list[float]] = OrderedDict()

    # -- 1. authentication ----------------------------------------------------------------

    async def register(self, body: Mapping[str, Any]) -> JsonDict:
        """POST /account/register: an OpenID token for a token of this service."""
        token = _string(body, "access_token")
        server = _string(body, "matrix_server_name", limit=255)
        _string(body, "token_type", required=False)
        assert token is not None and server is not None
        if not token:
            raise InvalidParam("'access_token' is empty")
        if not is_valid_server_name(server):
            raise InvalidParam("'matrix_server_name' is not a server name")
        user_id = await self.userinfo(server, token)
        if not is_valid_user_id(user_id) or user_id.split(":", 1)[1] != server:
            raise _unauthorized("The homeserver vouched for a user of another server")
        ours = secrets.token_urlsafe(32)

        def write(conn: Any) -> None:
            store.insert_token(conn, hash_token(ours), user_id, self.clock.time_ms())
            if store.count_user_tokens(conn, user_id) > MAX_TOKENS_PER_USER:
                store.delete_oldest_tokens(conn, user_id, MAX_TOKENS_PER_USER)

        await self.db.write(write)
        return {"token": ours}

    async def authenticate(self, token: str | None, *, terms: bool = True) -> str:
        """The user of an access token of this service (401 M_UNAUTHORIZED otherwise);
        with ``terms``, 403 M_TERMS_NOT_SIGNED until every policy is accepted."""
        if not token:
            raise _unauthorized("Missing access token")
        user_id = await self.db.read(store.get_token_user, hash_token(token))
        if user_id is None:
            raise _unauthorized("Unrecognised access token")
        if terms and self.cfg.terms:
            accepted = await self.db.read(store.get_accepted_terms, user_id)
            by_policy: dict[str, bool] = {}
            for policy in self.cfg.terms:
                by_policy[policy.id] = by_policy.get(policy.id, False) or policy.url in accepted
            if not all(by_policy.values()):
                raise MatrixError(403, "M_TERMS_NOT_SIGNED", "Please accept the terms of service first")
        return user_id

    async def logout(self, token: str | None) -> None:
        """POST /account/logout"""
        await self.authenticate(token, terms=False)
        assert token is not None
        await self.db.write(store.delete_token, hash_token(token))

    # -- 2. terms -----------------------------------------------------------------------

    def terms(self) -> JsonDict:
        """GET /terms"""
        policies: JsonDict = {}
        for p in self.cfg.terms:
            entry = policies.setdefault(p.id, {"version": p.version})
            entry[p.lang] = {"name": p.name or p.id, "url": p.url}
        return {"policies": policies}

    async def accept_terms(self, user_id: str, body: Mapping[str, Any]) -> None:
        """POST /terms: the URLs are added to what the user accepted."""
        urls = body.get("user_accepts")
        if urls is None:
            raise MissingParam("Missing 'user_accepts'")
        if isinstance(urls, str):
            urls = [urls]
        if not isinstance(urls, list) or not all(isinstance(u, str) and len(u) <= 2048 for u in urls):
            raise BadJson("'user_accepts' must be a list of URLs")
        known = {p.url for p in self.cfg.terms}
        await self.db.write(store.add_accepted_terms, user_id, [u for u in urls[:100] if u in known])

    # -- 3. lookups -----------------------------------------------------------------------

    async def pepper(self) -> str:
        return await self.db.write(store.get_or_set_meta, "lookup_pepper", secrets.token_urlsafe(16))

    async def hash_details(self) -> JsonDict:
        """GET /hash_details"""
        return {"algorithms": list(proto.ALGORITHMS), "lookup_pepper": await self.pepper()}

    async def lookup(self, body: Mapping[str, Any]) -> JsonDict:
        """POST /lookup"""
        algorithm = _string(body, "algorithm")
        pepper = _string(body, "pepper")
        addresses = body.get("addresses")
        if addresses is None:
            raise MissingParam("Missing 'addresses'")
        if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
            raise BadJson("'addresses' must be a list of strings")
        if len(addresses) > MAX_LOOKUP_ADDRESSES:
            raise MatrixError(400, "M_TOO_LARGE", f"At most {MAX_LOOKUP_ADDRESSES} addresses")
        if algorithm not in proto.ALGORITHMS:
            raise InvalidParam(f"Unknown algorithm {algorithm!r}")
        ours = await self.pepper()
        if pepper != ours:
            raise MatrixError(400, "M_INVALID_PEPPER", "Unknown or invalid pepper - has it been rotated?",
                              algorithm="sha256", lookup_pepper=ours)
        bindings = await self.db.read(store.all_bindings)
        if algorithm == "sha256":
            index = {proto.lookup_hash(a, m, ours): x for m, a, x in bindings}
        else:
            index = {proto.lookup_plain(a, m): x for m, a, x in bindings}
        return {"mappings": {q: index[q] for q in addresses if q in index}}

    # -- 4. e-mail validation -----------------------------------------------------------

    def _count_mail(self, address: str) -> None:
        now = time.monotonic()
        recent = [t for t in self._mails.pop(address, []) if now - t < 3600]
        if len(recent) >= self.cfg.mails_per_address_per_hour:
            self._mails[address] = recent
            raise LimitExceeded(int((3600 - (now - recent[0])) * 1000) + 1, "Too many mails to this address")
        recent.append(now)
        self._mails[address] = recent
        while len(self._mails) > MAX_RATE_KEYS:
            self._mails.popitem(last=False)

    async def _mail(self, to: str, subject: str, text: str) -> None:
        try:
            await self.mailer.send(to, subject, text)
        except MailError as e:
            raise MatrixError(400, SEND_ERROR, f"The mail could not be sent: {e}") from None

    def submit_url(self, sid: str, client_secret: str, token: str) -> str:
        query = urlencode({"sid": sid, "client_secret": client_secret, "token": token})
        return f"{self.base_url}/_matrix/identity/v2/validate/email/submitToken?{query}"

    async def request_email_token(self, body: Mapping[str, Any]) -> JsonDict:
        """POST /validate/email/requestToken"""
        client_secret = _opaque(body, "client_secret")
        raw = _string(body, "email", limit=proto.MAX_ADDRESS + 16)
        assert raw is not None
        address = _email(raw)
        attempt = body.get("send_attempt")
        if attempt is None:
            raise MissingParam("Missing 'send_attempt'")
        if isinstance(attempt, bool) or not isinstance(attempt, int) or not 0 <= attempt <= 2**53:
            raise BadJson("'send_attempt' must be a non-negative integer")
        next_link = _string(body, "next_link", required=False, limit=2048)
        if next_link is not None and not next_link.startswith(("https://", "http://")):
            raise InvalidParam("'next_link' must be an http(s) URL")
        now = self.clock.time_ms()
        lifetime = self.cfg.session_lifetime_seconds * 1000
        existing = await self.db.read(store.find_session, client_secret, "email", address, now - lifetime)
        if existing is not None:
            if attempt <= existing.send_attempt or existing.token is None:
                return {"sid": existing.sid}  # a retry: no second mail
            self._count_mail(address)
            await self.db.write(store.set_send_attempt, existing.sid, attempt, None, now)
            await self._send_validation(address, existing.sid, client_secret, existing.token)
            return {"sid": existing.sid}
        self._count_mail(address)
        sid = secrets.token_urlsafe(16)
        token = secrets.token_urlsafe(12)
        session = store.Session(sid, client_secret, "email", address, token, attempt, next_link, now, now, None, 0)
        await self.db.write(store.insert_session, session, now - lifetime)
        await self._send_validation(address, sid, client_secret, token)
        return {"sid": sid}

    async def _send_validation(self, address: str, sid: str, client_secret: str, token: str) -> None:
        text = (
            f"Hello,\n\nsomeone asked to confirm that {address} is yours, to link it to a Matrix "
            f"account through the identity service of {self.server_name}.\n\n"
            f"To confirm, open this link:\n\n{self.submit_url(sid, client_secret, token)}\n\n"
            f"or enter this code where you were asked for it:\n\n{token}\n\n"
            "If this was not you, ignore this mail: nothing happens without the link or the code.\n"
        )
        await self._mail(address, f"Confirm your email address for {self.server_name}", text)

    async def submit_email_token(self, body: Mapping[str, Any]) -> str | None:
        """POST or GET /validate/email/submitToken: the session's ``next_link``."""
        sid = _opaque(body, "sid")
        client_secret = _opaque(body, "client_secret")
        token = _string(body, "token", limit=255)
        assert token is not None
        now = self.clock.time_ms()
        session = await self.db.read(store.get_session, sid)
        if session is None or not secrets.compare_digest(session.client_secret, client_secret):
            raise MatrixError(404, "M_NO_VALID_SESSION", "No valid session was found matching that sid and client secret")
        if session.modified_ts + self.cfg.session_lifetime_seconds * 1000 <= now:
            raise MatrixError(400, "M_SESSION_EXPIRED", "This validation session has expired: start a new one")
        if session.token is None:
            if session.validated_ts is not None:
                raise MatrixError(400, "M_TOKEN_INCORRECT", "This token was used already")
            raise MatrixError(400, "M_TOKEN_INCORRECT", "Too many wrong tokens: start a new session")
        if not secrets.compare_digest(session.token, token):
            await self.db.write(store.count_failed_attempt, sid, self.cfg.max_token_attempts)
            raise MatrixError(400, "M_TOKEN_INCORRECT", "The token is incorrect")
        await self.db.write(store.mark_validated, sid, now)
        return session.next_link

    async def _validated(self, sid: str, client_secret: str) -> store.Session:
        session = await self.db.read(store.get_session, sid)
        if session is None or not secrets.compare_digest(session.client_secret, client_secret):
            raise MatrixError(404, "M_NO_VALID_SESSION", "No valid session was found matching that sid and client secret")
        if session.validated_ts is None:
            raise MatrixError(400, "M_SESSION_NOT_VALIDATED", "This validation session has not yet been completed")
        if session.modified_ts + self.cfg.session_lifetime_seconds * 1000 <= self.clock.time_ms():
            raise MatrixError(400, "M_SESSION_EXPIRED", "This validation session has expired: start a new one")
        return session

    async def get_validated(self, query: Mapping[str, Any]) -> JsonDict:
        """GET /3pid/getValidated3pid"""
        session = await self._validated(_opaque(query, "sid"), _opaque(query, "client_secret"))
        assert session.validated_ts is not None
        return {"medium": session.medium, "address": session.address, "validated_at": session.validated_ts}

    # -- 5. associations ----------------------------------------------------------------

    async def bind(self, user_id: str, body: Mapping[str, Any]) -> JsonDict:
        """POST /3pid/bind"""
        sid = _opaque(body, "sid")
        client_secret = _opaque(body, "client_secret")
        mxid = _string(body, "mxid", limit=255)
        assert mxid is not None
        if not is_valid_user_id(mxid):
            raise InvalidParam("'mxid' is not a user ID")
        if mxid != user_id:
            raise Forbidden("You can bind addresses to your own user ID only")
        session = await self._validated(sid, client_secret)
        now = self.clock.time_ms()
        binding = store.Binding(session.medium, session.address, mxid, now, now, now + ASSOCIATION_VALIDITY_MS)
        await self.db.write(store.upsert_binding, binding)
        log.info("bound %s address to %s", session.medium, mxid)
        await self.deliver_invites(session.medium, session.address, mxid)
        return sign_json(
            proto.association(binding.medium, binding.address, mxid, now, binding.not_before, binding.not_after),
            self.server_name, self.key,
        )

    async def unbind(
        self, body: Mapping[str, Any], *, user_id: str | None = None, origin: str | None = None
    ) -> None:
        """POST /3pid/unbind, authenticated by ``sid`` + ``client_secret``, by the
        user's token (``user_id``) or by the user's homeserver (``origin``)."""
        mxid = _string(body, "mxid", limit=255)
        threepid = body.get("threepid")
        assert mxid is not None
        if threepid is None:
            raise MissingParam("Missing 'threepid'")
        if not isinstance(threepid, Mapping):
            raise BadJson("'threepid' must be an object")
        medium = _string(threepid, "medium", limit=32)
        raw = _string(threepid, "address", limit=proto.MAX_ADDRESS + 16)
        assert medium is not None and raw is not None
        address = _email(raw) if medium == "email" else raw
        allowed = (user_id is not None and user_id == mxid) or (
            origin is not None and is_valid_user_id(mxid) and mxid.split(":", 1)[1] == origin
        )
        if not allowed and body.get("sid") is not None:
            session = await self._validated(_opaque(body, "sid"), _opaque(body, "client_secret"))
            allowed = session.medium == medium and session.address == address
            if not allowed:
                raise Forbidden("The session validated another address")
        if not allowed:
            raise Forbidden("Only the user, their homeserver or the address's owner may unbind it")
        if not await self.db.write(store.delete_binding, medium, address, mxid):
            raise NotFound("No such association")
        log.info("unbound %s address of %s", medium, mxid)

    # -- 6. invitations -----------------------------------------------------------------

    async def store_invite(self, user_id: str, body: Mapping[str, Any]) -> JsonDict:
        """POST /store-invite"""
        medium = _string(body, "medium", limit=32)
        raw = _string(body, "address", limit=proto.MAX_ADDRESS + 16)
        room_id = _string(body, "room_id", limit=255)
        sender = _string(body, "sender", limit=255)
        assert medium is not None and raw is not None and room_id is not None and sender is not None
        if medium != "email":
            raise MatrixError(400, "M_UNRECOGNIZED", "Only invitations to email addresses are supported")
        address = _email(raw)
        if not room_id.startswith("!"):
            raise InvalidParam("'room_id' is not a room ID")
        if not is_valid_user_id(sender):
            raise InvalidParam("'sender' is not a user ID")
        if sender != user_id:
            raise Forbidden("You can store invitations from yourself only")
        extra = {k: body.get(k) for k in ("room_name", "room_alias", "sender_display_name", "room_type")}
        for k, v in extra.items():
            if v is not None and (not isinstance(v, str) or len(v) > 1024):
                raise BadJson(f"{k!r} must be a string")
        bound = await self.db.read(store.get_binding, medium, address)
        if bound is not None:
            raise MatrixError(400, "M_THREEPID_IN_USE", "Binding already known", mxid=bound.mxid)
        self._count_mail(address)
        ephemeral = nacl.signing.SigningKey.generate()
        public = encode_verify_key_base64(ephemeral.verify_key)
        private = encode_base64(bytes(ephemeral))
        now = self.clock.time_ms()
        token = secrets.token_urlsafe(24)
        invite = store.Invite(token, medium, address, room_id, sender, public, private, now, None)
        await self.db.write(store.insert_invite, invite, now - self.cfg.invite_lifetime_days * 86_400_000)
        inviter = extra["sender_display_name"] or sender
        room = extra["room_name"] or extra["room_alias"] or "a room"
        text = (
            f"Hello,\n\n{inviter} ({sender}) invited you to {room} on Matrix.\n\n"
            f"To accept, link {address} to a Matrix account at the identity service "
            f"{self.server_name} (in your Matrix client's settings, add this email address and "
            "share it with that identity server); the invitation then reaches your account.\n"
        )
        try:
            await self._mail(address, f"{inviter} invited you to {room}", text)
        except MatrixError:
            await self.db.write(store.mark_delivered, [token], now)  # never valid
            raise
        return {
            "token": token,
            "display_name": proto.redacted_display_name(address),
            "public_keys": [
                {"public_key": self.key.verify_key_base64,
                 "key_validity_url": f"{self.base_url}/_matrix/identity/v2/pubkey/isvalid"},
                {"public_key": public,
                 "key_validity_url": f"{self.base_url}/_matrix/identity/v2/pubkey/ephemeral/isvalid"},
            ],
        }

    async def deliver_invites(self, medium: str, address: str, mxid: str) -> None:
        """Hand the pending invitations of a newly bound address to the user's homeserver."""
        now = self.clock.time_ms()
        since = now - self.cfg.invite_lifetime_days * 86_400_000
        invites = await self.db.read(store.pending_invites, medium, address, since)
        if not invites:
            return
        body: JsonDict = {
            "medium": medium,
            "address": address,
            "mxid": mxid,
            "invites": [
                {
                    "medium": medium, "address": address, "mxid": mxid, "room_id": inv.room_id,
                    "sender": inv.sender,
                    "signed": sign_json(proto.invite_signed(mxid, inv.sender, inv.token), self.server_name, self.key),
                }
                for inv in invites
            ],
        }
        body = sign_json(body, self.server_name, self.key)
        server = mxid.split(":", 1)[1]
        try:
            await self.onbind(server, body)
        except IdentityDeliveryError as e:
            log.info("onbind to %s not delivered (kept for the next bind): %s", server, e)
            return
        except MatrixError as e:
            if e.status >= 500:  # the inviter's server could not be reached: try again later
                log.info("onbind to %s failed (kept for the next bind): %s", server, e.message)
                return
            log.info("onbind to %s refused: %s %s", server, e.errcode, e.message)
        await self.db.write(store.mark_delivered, [inv.token for inv in invites], self.clock.time_ms())

    # -- 7. keys ----------------------------------------------------------------------------

    async def sign_ed25519(self, body: Mapping[str, Any]) -> JsonDict:
        """POST /sign-ed25519"""
        mxid = _string(body, "mxid", limit=255)
        token = _string(body, "token", limit=255)
        private = _string(body, "private_key", limit=128)
        assert mxid is not None and token is not None and private is not None
        if not is_valid_user_id(mxid):
            raise InvalidParam("'mxid' is not a user ID")
        try:
            seed = decode_unpadded_base64(private)
        except ValueError:
            raise InvalidParam("'private_key' is not base64") from None
        if len(seed) != 32:
            raise InvalidParam("'private_key' is not an ed25519 key")
        invite = await self.db.read(store.get_invite, token)
        if invite is None:
            raise MatrixError(404, "M_UNRECOGNIZED", "Didn't recognize token")
        key = signing_key_from_seed(seed, "0")
        return sign_json(proto.invite_signed(mxid, invite.sender, token), self.server_name, key)

    def public_key(self, key_id: str) -> JsonDict:
        """GET /pubkey/{keyId}"""
        if key_id != self.key.key_id:
            raise NotFound("The public key was not found")
        return {"public_key": self.key.verify_key_base64}

    def key_is_valid(self, public_key: str) -> JsonDict:
        """GET /pubkey/isvalid"""
        return {"valid": _same_key(public_key, self.key.verify_key_base64)}

    async def ephemeral_key_is_valid(self, public_key: str) -> JsonDict:
        """GET /pubkey/ephemeral/isvalid"""
        forms = list(dict.fromkeys([public_key, public_key.replace("-", "+").replace("_", "/")]))
        since = self.clock.time_ms() - self.cfg.invite_lifetime_days * 86_400_000
        return {"valid": await self.db.read(store.ephemeral_key_valid, forms, since)}


USERINFO_PATH = "/_matrix/federation/v1/openid/userinfo"
ONBIND_PATH = "/_matrix/federation/v1/3pid/onbind"


def homeserver_calls(
    server_name: str, openid: OpenIdService, on_bind: Callable[[JsonDict], Awaitable[None]], federation: Any
) -> tuple[UserInfo, OnBind]:
    """The service's two calls to homeservers: this one in process, others over HTTPS
    (``federation``: the FederationClient, unsigned requests; None: this server only)."""

    async def userinfo(server: str, token: str) -> str:
        if server == server_name:
            try:
                answer: Any = await openid.userinfo(token)
            except UnknownToken:
                raise _unauthorized("The homeserver does not know that OpenID token") from None
        else:
            if federation is None:
                raise _unauthorized("Only OpenID tokens of this homeserver are accepted")
            try:
                answer = await federation.get_json(server, USERINFO_PATH, {"access_token": token},
                                                   timeout_s=15.0, signed=False)
            except FederationError as e:
                raise _unauthorized(f"The homeserver refused the OpenID token ({e.status})") from None
            except FederationUnreachable as e:
                log.info("openid userinfo at %s failed: %s", server, e)
                raise MatrixError(502, "M_UNKNOWN", "The homeserver could not be reached") from None
        sub = answer.get("sub") if isinstance(answer, dict) else None
        if not isinstance(sub, str):
            raise _unauthorized("The homeserver gave no user for that OpenID token")
        return sub

    async def onbind(server: str, body: JsonDict) -> None:
        if server == server_name:
            await on_bind(body)
            return
        if federation is None:
            raise IdentityDeliveryError("federation is off")
        try:
            await federation.request_json("PUT", server, ONBIND_PATH, None, body, timeout_s=30.0, signed=False)
        except FederationError as e:
            if 400 <= e.status < 500:
                raise MatrixError(e.status, e.errcode, e.message) from None
            raise IdentityDeliveryError(str(e)) from None
        except FederationUnreachable as e:
            raise IdentityDeliveryError(str(e)) from None

    return userinfo, onbind


def _same_key(given: str, ours: str) -> bool:
    try:
        return decode_unpadded_base64(given) == decode_unpadded_base64(ours)
    except ValueError:
        return False
