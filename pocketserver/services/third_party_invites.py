"""Third-party invites (client-server-api modules/third_party_invites.md): inviting
someone by an e-mail address through an identity server, and joining with the signed
proof the identity server hands the invitee.

``POST /rooms/{roomId}/invite`` with ``id_server``, ``id_access_token``, ``medium`` and
``address``:

1. look the address up (identity-service ``GET /v2/hash_details``, then
   ``POST /v2/lookup``, hashed with sha256 and the server's pepper when offered);
2. a Matrix user ID bound to it gets an ordinary invite;
3. otherwise ``POST /v2/store-invite`` stores the invitation, and its token and public
   keys go into an ``m.room.third_party_invite`` state event (key: the token).

``POST /join`` with ``third_party_signed`` (``mxid``, ``sender``, ``token`` and the
identity server's signatures): the signature must verify with one of the invite
event's public keys, and that key must still be valid at its ``key_validity_url``
(the server already in the room checks it: "MUST validate that the public key used for
signing is still valid"). The invite is then exchanged for an ``m.room.member`` invite
with ``content.third_party_invite``, sent as the original inviter, which auth rule
5.4.1 checks again; the join follows as usual. When the inviter is on another server,
that server makes the exchange (``PUT /_matrix/federation/v1/exchange_third_party_invite``).

Completed by the identity server (server-server-api.md, "Third-party invites"):

- ``PUT /_matrix/federation/v1/3pid/onbind`` (:meth:`ThirdPartyInviteService.on_bind`):
  an identity server tells us that one of our users bound an address that had pending
  invites, each with the ``signed`` object the room's keys verify. Each invite is
  exchanged for an ``m.room.member`` invite: here when the inviter is our user or this
  server is in the room (built here in the inviter's name; the room's other servers
  get it in a transaction), else by ``exchange_third_party_invite`` on the inviter's
  server. One invite that fails (a bad
  signature, a revoked key, an unreachable server) does not stop the rest; the answer
  is then the last failure's error, so the identity server knows.
- ``PUT /_matrix/federation/v1/exchange_third_party_invite/{roomId}``
  (:meth:`ThirdPartyInviteService.on_exchange`): another server asks us, the inviter's
  server, to issue that invite. The same checks as a local exchange (the invite event,
  its sender, a signature by one of its keys, that key still valid), then the invite is
  sent as the inviter and reaches the invitee's server as an ordinary federated invite.

The identity server is named by the client, so every address it resolves to must be
public (or in ``federation.allowed_ip_ranges``): no client can make this server call
into its own network.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from unpaddedbase64 import encode_base64

from pocketserver.config import Config
from pocketserver.errors import (
    BadJson,
    Forbidden,
    InvalidParam,
    MatrixError,
    MissingParam,
    NotFound,
)
from pocketserver.federation.interfaces import (
    FederationError,
    FederationRequester,
    FederationUnreachable,
)
from pocketserver.protocol.auth_rules import verify_third_party_signed
from pocketserver.protocol.identifiers import is_valid_user_id
from pocketserver.services.auth import Requester
from pocketserver.services.outbound import OUTBOUND_ERRORS, IpPolicy, Outbound
from pocketserver.services.rooms import RoomService
from pocketserver.storage import accounts as accounts_store
from pocketserver.storage import events as ev_store

log = logging.getLogger("pocketserver.third_party_invites")

JsonDict = dict[str, Any]

IDENTITY_TIMEOUT_S = 15
MAX_IDENTITY_RESPONSE = 64 * 1024


class IdentityServerError(Exception):
    """The identity server could not be reached or gave no usable answer."""


def _upstream_error(what: str) -> MatrixError:
    return MatrixError(502, "M_UNKNOWN", f"The identity server failed: {what}")


class IdentityClient:
    """JSON over HTTPS to identity servers, at public addresses only."""

    def __init__(self, outbound: Outbound, allowed_ip_ranges: tuple[str, ...]) -> None:
        self.outbound = outbound
        self.policy = IpPolicy(allowed_ip_ranges)

    async def request(
        self,
        method: str,
        url: str,
        *,
        token: str | None = None,
        body: JsonDict | None = None,
        authorization: str | None = None,
    ) -> tuple[int, Any]:
        """(status, decoded JSON body or None); fails with :class:`IdentityServerError`.
        ``token`` is sent as a bearer token, ``authorization`` as the whole header."""
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise IdentityServerError("not an https URL")
        payload = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = []
        if body is not None:
            headers.append(("Content-Type", "application/json"))
        if token is not None:
            headers.append(("Authorization", f"Bearer {token}"))
        elif authorization is not None:
            headers.append(("Authorization", authorization))
        try:
            answer = await self.outbound.request(
                method, url, body=payload, headers=headers, policy=self.policy,
                max_bytes=MAX_IDENTITY_RESPONSE, timeout_s=IDENTITY_TIMEOUT_S,
            )
        except OUTBOUND_ERRORS as e:  # getaddrinfo's failures are OSErrors too
            raise IdentityServerError(f"{parts.hostname}: {e}") from None
        status, raw = answer.status, answer.body
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, None


def identity_url(id_server: str, path: str) -> str:
    # id_server is a host name with an optional port ("matrix.org", "localhost:8090").
    if not id_server or any(c in id_server for c in "/?#@ \\"):
        raise MatrixError(400, "M_INVALID_PARAM", "'id_server' must be a host name")
    return f"https://{id_server}{path}"


def _hashed(address: str, medium: str, pepper: str) -> str:
    digest = hashlib.sha256(f"{address} {medium} {pepper}".encode()).digest()
    return encode_base64(digest, urlsafe=True)


def _domain(identifier: str) -> str:
    return identifier.split(":", 1)[1] if ":" in identifier else ""


# At most this many invites are taken from one onbind notification.
MAX_ONBIND_INVITES = 100
EXCHANGE_TIMEOUT_S = 30.0


def check_signed(signed: Any, where: str) -> dict[str, Any]:
    """A ``signed`` object of a third-party invite (signed_third_party_invite.yaml):
    ``mxid``, ``token`` and ``signatures`` (``sender`` is optional)."""
    if not isinstance(signed, dict):
        raise BadJson(f"'{where}' must be an object")
    for key in ("mxid", "token"):
        if key not in signed:
            raise MissingParam(f"Missing '{where}.{key}'")
        if not isinstance(signed[key], str) or not signed[key]:
            raise BadJson(f"'{where}.{key}' must be a non-empty string")
    if not isinstance(signed.get("signatures"), dict):
        raise BadJson(f"'{where}.signatures' must be an object")
    if "sender" in signed and not isinstance(signed["sender"], str):
        raise BadJson(f"'{where}.sender' must be a string")
    return signed


def _user_field(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if value is None:
        raise MissingParam(f"Missing '{where}{key}'")
    if not isinstance(value, str) or not is_valid_user_id(value):
        raise BadJson(f"'{where}{key}' must be a user ID")
    return value


class ThirdPartyInviteService:
    def __init__(self, config: Config, rooms: RoomService, client: IdentityClient) -> None:
        self.server_name = config.server_name
        self.rooms = rooms
        self.client = client
        # Signed requests to other servers (set when federation is on).
        self.federation: FederationRequester | None = None

    # -- inviting ----------------------------------------------------------------------

    @staticmethod
    def check_invite_body(body: Any) -> dict[str, str]:
        """The four fields of an invite by third-party identifier (invite_3pid.yaml)."""
        if not isinstance(body, Mapping):
            raise BadJson("A third-party invite must be an object")
        fields: dict[str, str] = {}
        for key in ("id_server", "id_access_token", "medium", "address"):
            value = body.get(key)
            if value is None:
                raise MissingParam(f"Missing {key!r}")
            if not isinstance(value, str) or not value:
                raise BadJson(f"{key!r} must be a non-empty string")
            fields[key] = value
        identity_url(fields["id_server"], "/")
        return fields

    async def invite(self, requester: Requester, room_id: str, body: Mapping[str, Any]) -> None:
        fields = self.check_invite_body(body)
        if await self.rooms.membership(room_id, requester.user_id) != "join":
            raise Forbidden("You are not in this room")
        id_server, token = fields["id_server"], fields["id_access_token"]
        medium, address = fields["medium"], fields["address"]
        mxid = await self._lookup(id_server, token, medium, address)
        if mxid is not None:
            if await self.rooms.membership(room_id, mxid) == "join":
                raise Forbidden("That user is already in the room")
            await self.rooms.update_membership(requester, room_id, mxid, "invite")
            return
        stored = await self._store_invite(requester, room_id, id_server, token, medium, address)
        await self.rooms.send_state(
            requester, room_id, "m.room.third_party_invite", stored.pop("token"), stored
        )

    async def _call(self, method: str, url: str, token: str, body: JsonDict | None = None) -> JsonDict:
        try:
            status, answer = await self.client.request(method, url, token=token, body=body)
        except IdentityServerError as e:
            log.info("identity server request %s failed: %s", url, e)
            raise _upstream_error("it could not be reached") from None
        if status in (401, 403):
            raise Forbidden("The identity server refused the id_access_token")
        if not 200 <= status < 300 or not isinstance(answer, dict):
            raise _upstream_error(f"HTTP {status}")
        return answer

    async def _lookup(self, id_server: str, token: str, medium: str, address: str) -> str | None:
        details = await self._call("GET", identity_url(id_server, "/_matrix/identity/v2/hash_details"), token)
        algorithms = details.get("algorithms")
        pepper = details.get("lookup_pepper")
        if not isinstance(algorithms, list) or not isinstance(pepper, str):
            raise _upstream_error("bad hash_details")
        if "sha256" in algorithms:
            query, algorithm = _hashed(address, medium, pepper), "sha256"
        elif "none" in algorithms:
            query, algorithm = f"{address} {medium}", "none"
        else:
            raise _upstream_error("no lookup algorithm this server knows")
        answer = await self._call(
            "POST", identity_url(id_server, "/_matrix/identity/v2/lookup"), token,
            {"addresses": [query], "algorithm": algorithm, "pepper": pepper},
        )
        mappings = answer.get("mappings")
        mxid = mappings.get(query) if isinstance(mappings, dict) else None
        return mxid if isinstance(mxid, str) and mxid.startswith("@") else None

    async def _store_invite(
        self, requester: Requester, room_id: str, id_server: str, token: str, medium: str, address: str
    ) -> JsonDict:
        """The ``m.room.third_party_invite`` content, plus its ``token``."""
        request: JsonDict = {
            "medium": medium, "address": address, "room_id": room_id, "sender": requester.user_id,
        }
        for state_type, key, field in (
            ("m.room.name", "name", "room_name"),
            ("m.room.avatar", "url", "room_avatar_url"),
            ("m.room.join_rules", "join_rule", "room_join_rules"),
            ("m.room.canonical_alias", "alias", "room_alias"),
        ):
            content = await self.rooms.current_state_event(room_id, state_type) or {}
            if isinstance(content.get(key), str):
                request[field] = content[key]
        profile = await self.rooms.db.read(accounts_store.get_user, requester.user_id) or {}
        if isinstance(profile.get("displayname"), str):
            request["sender_display_name"] = profile["displayname"]
        if isinstance(profile.get("avatar_url"), str):
            request["sender_avatar_url"] = profile["avatar_url"]
        answer = await self._call(
            "POST", identity_url(id_server, "/_matrix/identity/v2/store-invite"), token, request
        )
        invite_token = answer.get("token")
        public_keys = answer.get("public_keys")
        display_name = answer.get("display_name")
        if (
            not isinstance(invite_token, str) or not invite_token
            or not isinstance(display_name, str)
            or not isinstance(public_keys, list) or not public_keys
            or not all(
                isinstance(k, dict) and isinstance(k.get("public_key"), str)
                and isinstance(k.get("key_validity_url"), str)
                for k in public_keys
            )
        ):
            raise _upstream_error("bad store-invite answer")
        first = public_keys[0]
        return {
            "token": invite_token,
            "display_name": display_name,
            "key_validity_url": first["key_validity_url"],
            "public_key": first["public_key"],
            "public_keys": [
                {"public_key": k["public_key"], "key_validity_url": k["key_validity_url"]}
                for k in public_keys
            ],
        }

    # -- accepting ---------------------------------------------------------------------

    async def accept(self, requester: Requester, room_id: str, signed: Any) -> None:
        """Exchange the invite ``signed`` proves for an invite membership of the
        requester (nothing to do when the requester is invited or joined already)."""
        signed = check_signed(signed, "third_party_signed")
        if not isinstance(signed.get("sender"), str):
            raise BadJson("'third_party_signed.sender' must be a string")
        if signed["mxid"] != requester.user_id:
            raise Forbidden("This third-party invite is for someone else")
        if await self.rooms.membership(room_id, requester.user_id) in ("join", "invite"):
            return
        await self.exchange(room_id, signed["sender"], requester.user_id, signed)

    async def exchange(self, room_id: str, sender: str, mxid: str, signed: Mapping[str, Any]) -> None:
        """Turn a third-party invite into ``mxid``'s invite membership: here when the
        inviter ``sender`` is ours or this server is in the room (the event is then
        built here in the inviter's name, as the spec allows the invitee's server: auth
        rule 5.4.1 checks it by the invite's keys, not by who signed it), else on the
        inviter's server."""
        if _domain(sender) == self.server_name or await self.rooms.held_here(room_id):
            await self.issue(room_id, sender, mxid, signed)
            return
        if self.federation is None:
            raise Forbidden("Third-party invites from other servers need federation")
        event = {
            "type": "m.room.member",
            "room_id": room_id,
            "sender": sender,
            "state_key": mxid,
            "content": {"membership": "invite", "third_party_invite": {"display_name": "", "signed": dict(signed)}},
        }
        path = f"/_matrix/federation/v1/exchange_third_party_invite/{quote(room_id, safe='')}"
        try:
            await self.federation.put_json(_domain(sender), path, event, timeout_s=EXCHANGE_TIMEOUT_S)
        except FederationError as e:
            log.info("exchange_third_party_invite at %s refused: %s", _domain(sender), e)
            if e.status in (400, 403, 404):
                raise MatrixError(e.status, e.errcode if e.errcode.startswith("M_") else "M_UNKNOWN",
                                  "The inviter's server refused the third-party invite") from None
            raise MatrixError(502, "M_UNKNOWN", "The inviter's server failed") from None
        except FederationUnreachable as e:
            log.info("exchange_third_party_invite at %s failed: %s", _domain(sender), e)
            raise MatrixError(502, "M_UNKNOWN", "The inviter's server could not be reached") from None

    async def issue(self, room_id: str, sender: str, mxid: str, signed: Mapping[str, Any]) -> None:
        """Send ``mxid``'s invite as ``sender``, who issued the room's
        ``m.room.third_party_invite`` for ``signed.token``: its signature must verify
        with one of that event's keys, which its identity server still vouches for."""
        if signed.get("mxid") != mxid:
            raise Forbidden("The signed third-party invite is for someone else")
        if await self.rooms.membership(room_id, mxid) in ("join", "invite"):
            return
        record = await self.rooms.current_state_record(room_id, "m.room.third_party_invite", signed["token"])
        if record is None:
            raise Forbidden("No such third-party invite in this room")
        if record.event.sender != sender:
            raise Forbidden("This third-party invite was sent by someone else")
        await self._check_signature(signed, record.event.content)
        display_name = record.event.content.get("display_name")
        tpi = {"display_name": display_name if isinstance(display_name, str) else "", "signed": dict(signed)}
        await self.rooms.update_membership(
            Requester(sender, None), room_id, mxid, "invite", content={"third_party_invite": tpi},
        )

    # -- completed by the identity server ---------------------------------------------------

    @staticmethod
    def check_onbind_body(body: Any) -> tuple[str, list[dict[str, Any]]]:
        """The bound user ID and the pending invites of an onbind notification."""
        if not isinstance(body, Mapping):
            raise BadJson("The body must be an object")
        for key in ("medium", "address"):
            if key not in body:
                raise MissingParam(f"Missing {key!r}")
            if not isinstance(body[key], str):
                raise BadJson(f"{key!r} must be a string")
        mxid = _user_field(body, "mxid", "")
        invites = body.get("invites", [])
        if not isinstance(invites, list):
            raise BadJson("'invites' must be a list")
        if len(invites) > MAX_ONBIND_INVITES:
            raise MatrixError(400, "M_TOO_LARGE", f"At most {MAX_ONBIND_INVITES} invites")
        out: list[dict[str, Any]] = []
        for i, invite in enumerate(invites):
            where = f"invites[{i}]."
            if not isinstance(invite, Mapping):
                raise BadJson(f"'invites[{i}]' must be an object")
            room_id = invite.get("room_id")
            if not isinstance(room_id, str) or not room_id.startswith("!"):
                raise BadJson(f"'{where}room_id' must be a room ID")
            sender = _user_field(invite, "sender", where)
            invitee = _user_field(invite, "mxid", where) if "mxid" in invite else mxid
            signed = check_signed(invite.get("signed"), f"{where}signed")
            out.append({"room_id": room_id, "sender": sender, "mxid": invitee, "signed": signed})
        return mxid, out

    async def on_bind(self, body: Any) -> None:
        """``PUT /_matrix/federation/v1/3pid/onbind``: exchange each pending invite of
        one of our users; the last failure, if any, is the answer."""
        _, invites = self.check_onbind_body(body)
        failed: MatrixError | None = None
        for invite in invites:
            mxid = invite["mxid"]
            try:
                if _domain(mxid) != self.server_name:
                    raise InvalidParam(f"{mxid} is not a user of this server")
                if invite["signed"]["mxid"] != mxid:
                    raise Forbidden("The signed invite is for someone else")
                await self.exchange(invite["room_id"], invite["sender"], mxid, invite["signed"])
                log.info("onbind: %s invited to %s by %s", mxid, invite["room_id"], invite["sender"])
            except MatrixError as e:
                log.info("onbind: the invite of %s to %s failed: %s", mxid, invite["room_id"], e.message)
                failed = e
        if failed is not None:
            # The identity server learns that not every invite went through.
            raise failed

    async def on_exchange(self, origin: str, room_id: str, body: Any) -> None:
        """``PUT /_matrix/federation/v1/exchange_third_party_invite/{roomId}``: the
        invitee's server asks us, the inviter's, to issue the invite."""
        if not isinstance(body, Mapping):
            raise BadJson("The body must be an object")
        for key in ("type", "room_id", "sender", "state_key", "content"):
            if key not in body:
                raise MissingParam(f"Missing {key!r}")
        if body["type"] != "m.room.member":
            raise InvalidParam("'type' must be m.room.member")
        if body["room_id"] != room_id:
            raise InvalidParam("'room_id' does not match the path")
        sender = _user_field(body, "sender", "")
        mxid = _user_field(body, "state_key", "")
        content = body["content"]
        if not isinstance(content, Mapping):
            raise BadJson("'content' must be an object")
        if content.get("membership") != "invite":
            raise InvalidParam("'content.membership' must be invite")
        tpi = content.get("third_party_invite")
        if not isinstance(tpi, Mapping):
            raise BadJson("'content.third_party_invite' must be an object")
        signed = check_signed(tpi.get("signed"), "content.third_party_invite.signed")
        if _domain(sender) != self.server_name:
            raise Forbidden("The inviter is not a user of this server")
        if _domain(mxid) != origin:
            raise Forbidden("The invitee is not a user of the requesting server")
        if await self.rooms.db.read(ev_store.get_room, room_id) is None:
            raise NotFound("Unknown room")
        await self.issue(room_id, sender, mxid, signed)
        log.info("exchange_third_party_invite: %s invited %s to %s for %s", sender, mxid, room_id, origin)

    async def _check_signature(self, signed: Mapping[str, Any], content: Mapping[str, Any]) -> None:
        """A public key of the invite that verifies ``signed`` and that its identity
        server still holds valid."""
        entries: list[tuple[str, str | None]] = []
        more = content.get("public_keys")
        if isinstance(more, list):
            for item in more:
                if isinstance(item, Mapping) and isinstance(item.get("public_key"), str):
                    url = item.get("key_validity_url")
                    entries.append((item["public_key"], url if isinstance(url, str) else None))
        pk = content.get("public_key")
        if isinstance(pk, str) and all(k != pk for k, _ in entries):
            url = content.get("key_validity_url")
            entries.append((pk, url if isinstance(url, str) else None))
        verified = [(k, url) for k, url in entries if verify_third_party_signed(signed, [k])]
        if not verified:
            raise Forbidden("The third-party invite's signature does not verify")
        for key, url in verified:
            if url is None:
                continue
            sep = "&" if "?" in url else "?"
            try:
                status, answer = await self.client.request("GET", f"{url}{sep}{urlencode({'public_key': key})}")
            except IdentityServerError as e:
                log.info("key validity check %s failed: %s", url, e)
                continue
            if 200 <= status < 300 and isinstance(answer, dict) and answer.get("valid") is True:
                return
        raise Forbidden("The identity server no longer vouches for the invite's key")

