"""Inbound request authentication for federation routes, and server ACLs.

Spec: shared/spec/content/server-server-api.md, "Request Authentication" and "Server
Access Control Lists (ACLs)".

:func:`authenticated_origin`, called first by every route that needs a signed request
(403 ``M_FORBIDDEN`` at once when ``[federation] enabled = false``):

1. collect the ``Authorization: X-Matrix ...`` headers (several are several
   signatures; one that verifies is enough); none -> 401 ``M_UNAUTHORIZED``;
2. parse each (:func:`pocketserver.protocol.request_auth.parse_header`); a malformed
   one -> 401 ``M_UNAUTHORIZED``; headers naming different origins -> 401;
3. a ``destination`` that is not this server -> 401 ``M_UNAUTHORIZED`` (the spec
   says 401 here, not 403);
4. read the body: a non-empty body must be JSON (else ``M_NOT_JSON``); it is kept for
   the route (:func:`pocketserver.api.common.read_body` hands it on);
5. rebuild ``{method, uri, origin, destination, content?}`` from the request as it
   arrived (the raw path, percent-encoding untouched, and the raw query string) and
   verify the signature with the origin's key, fetched by the key ring and valid now;
   no key or a bad signature -> 401 ``M_UNAUTHORIZED``.

:func:`check_server_acl` is for the room routes (``make_join``, ``send_join``,
``/state``, ``/backfill``, ...): 403 ``M_FORBIDDEN`` when the room's
``m.room.server_acl`` denies the origin (:mod:`pocketserver.protocol.server_acl`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from quart import g, request

from pocketserver.api.common import KEPT_BODY, read_body, services
from pocketserver.errors import Forbidden, InvalidParam, MatrixError, NotJson
from pocketserver.protocol.canonical_json import CanonicalJsonError, JsonParseError, parse_json
from pocketserver.protocol.identifiers import is_valid_server_name
from pocketserver.protocol.request_auth import (
    AuthHeaderError,
    XMatrixAuth,
    is_x_matrix,
    parse_header,
    signing_object,
)
from pocketserver.protocol.server_acl import server_allowed
from pocketserver.protocol.signing import SignatureError, verify_json

if TYPE_CHECKING:
    from pocketserver.federation.e2e import FederatedKeys
    from pocketserver.federation.hosting import RoomFederation


class Unauthorized(MatrixError):
    def __init__(self, message: str) -> None:
        super().__init__(401, "M_UNAUTHORIZED", message)


def request_uri() -> str:
    """The request target as the sender signed it: raw path and raw query string."""
    scope = request.scope
    raw_path = scope.get("raw_path")
    path = raw_path.decode("latin-1") if raw_path else request.path
    path = path.split("?", 1)[0]
    query = scope.get("query_string", b"")
    return f"{path}?{query.decode('latin-1')}" if query else path


async def authenticated_origin() -> str:
    """The origin server of this request, its X-Matrix signature verified (steps 1-5)."""
    svc = services()
    if not svc.config.federation.enabled:
        raise Forbidden("Federation is turned off on this server")
    values = [v for v in request.headers.getlist("Authorization") if is_x_matrix(v)]
    if not values:  # 1
        raise Unauthorized("Missing X-Matrix authorization")
    parsed: list[XMatrixAuth] = []
    for value in values:  # 2
        try:
            parsed.append(parse_header(value))
        except AuthHeaderError as e:
            raise Unauthorized(f"Malformed X-Matrix authorization: {e}") from None
    origin = parsed[0].origin
    if any(p.origin != origin for p in parsed):
        raise Unauthorized("Invalid origin in X-Matrix authorization")
    if not is_valid_server_name(origin):
        # Not a server name at all ("localhost:http"): bad input, not a failed check.
        raise InvalidParam("The X-Matrix origin is not a valid server name")
    me = svc.config.server_name
    for p in parsed:  # 3
        if p.destination is not None and p.destination != me:
            raise Unauthorized(f"This request is for {p.destination}, this server is {me}")
    raw = await read_body()  # 4
    g.setdefault(KEPT_BODY, raw)
    content = None
    if raw.strip():
        try:
            content = parse_json(raw)
        except (JsonParseError, CanonicalJsonError) as e:
            raise NotJson(f"Content not JSON: {e}") from None
    uri = request_uri()  # 5
    now = svc.clock.time_ms()
    for p in parsed:
        obj = signing_object(request.method, uri, origin, me, content)
        obj["signatures"] = {origin: {p.key: p.sig}}
        keys = await svc.keyring.verify_keys(origin, [p.key], minimum_valid_until_ts=now)
        raw_key = keys.get(p.key)
        if raw_key is None:
            continue
        import nacl.signing

        try:
            verify_json(obj, origin, p.key, nacl.signing.VerifyKey(raw_key))
        except SignatureError:
            continue
        if svc.federation_sender is not None:  # it reached us: end its back-off now
            svc.federation_sender.mark_alive(origin)
        return origin
    raise Unauthorized(f"No valid signature from {origin}")


async def check_server_acl(room_id: str, origin: str) -> None:
    """403 M_FORBIDDEN when the room's server ACL denies ``origin``."""
    acl = await services().rooms.current_state_event(room_id, "m.room.server_acl", "")
    if not server_allowed(acl, origin):
        raise Forbidden(f"Server {origin} is denied by the room's server ACL")


def room_federation() -> RoomFederation:
    """The inbound room services (built whenever federation is on)."""
    rf = services().room_federation
    if rf is None:
        raise Forbidden("Federation is turned off on this server")
    return rf


def federation_keys() -> FederatedKeys:
    """End-to-end keys across servers (built whenever federation is on)."""
    keys = services().federation_keys
    if keys is None:
        raise Forbidden("Federation is turned off on this server")
    return keys
