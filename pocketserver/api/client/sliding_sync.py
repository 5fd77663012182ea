"""POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync (MSC4186)."""

from __future__ import annotations

from quart import Blueprint, Response, request

from pocketserver.api.client.routing import client_route
from pocketserver.api.common import json_body, json_response, query_int, require_auth, services
from pocketserver.errors import BadJson, InvalidParam
from pocketserver.protocol.sliding_sync import SlidingSyncRequestError, parse_request

bp = Blueprint("client_sliding_sync", __name__)

PREFIX = "/_matrix/client/unstable/org.matrix.simplified_msc3575"


@client_route(bp, "/sync", ["POST"], prefixes=(PREFIX,))
async def sliding_sync() -> Response:
    """POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync

    ``pos`` and ``timeout`` may come in the query string (matrix-js-sdk, Synapse's
    experimental dialect) or in the body (the proposal's text)."""
    requester = await require_auth()
    svc = services()
    body = await json_body(allow_empty=True)
    timeout = query_int("timeout", None, minimum=0)
    try:
        req = parse_request(body, pos=request.args.get("pos"), timeout_ms=timeout)
    except SlidingSyncRequestError as e:
        raise (BadJson(str(e)) if e.bad_json else InvalidParam(str(e))) from None
    set_presence = request.args.get("set_presence", req.set_presence)
    if set_presence not in (None, "online", "offline", "unavailable"):
        raise InvalidParam("set_presence must be online, offline or unavailable")
    await svc.presence.touch(requester.user_id, set_presence or "online")
    # A connection's first answer may be as big as an initial /sync: it takes one of
    # the same slots until it is encoded.
    async with svc.sync.slot(req.pos, False):
        return json_response(await svc.sliding_sync.sync_rooms(requester, req))
