"""GET /sync."""

from __future__ import annotations

from quart import Blueprint, Response, request

from pocketserver.api.client.routing import client_route
from pocketserver.api.common import json_response, query_bool, query_int, require_auth, services
from pocketserver.errors import InvalidParam
from pocketserver.services.filtering import Filter

bp = Blueprint("client_sync", __name__)


@client_route(bp, "/sync", ["GET"])
async def sync() -> Response:
    """GET /_matrix/client/v3/sync"""
    requester = await require_auth(allow_guest=True)
    svc = services()
    timeout = query_int("timeout", 0, minimum=0) or 0
    full_state = query_bool("full_state", False)
    set_presence = request.args.get("set_presence")
    if set_presence not in (None, "online", "offline", "unavailable"):
        raise InvalidParam("set_presence must be online, offline or unavailable")
    raw_filter = request.args.get("filter")
    filt = await svc.accounts.load_filter(requester.user_id, raw_filter) if raw_filter else Filter()
    await svc.presence.touch(requester.user_id, set_presence or "online")
    body = await svc.sync.sync(
        requester,
        since=request.args.get("since"),
        timeout_ms=timeout,
        filt=filt,
        full_state=full_state,
    )
    return json_response(body)
