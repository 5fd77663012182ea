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
    # use_state_after (v1.16); clients that predate it ask with MSC4222's name and read
    # the answer under MSC4222's field name.
    state_after_key: str | None = None
    if query_bool("use_state_after", False):
        state_after_key = "state_after"
    elif query_bool("org.matrix.msc4222.use_state_after", False):
        state_after_key = "org.matrix.msc4222.state_after"
    await svc.presence.touch(requester.user_id, set_presence or "online")
    since = request.args.get("since")
    async with svc.sync.slot(since, full_state):
        body = await svc.sync.sync(
            requester,
            since=since,
            timeout_ms=timeout,
            filt=filt,
            full_state=full_state,
            state_after_key=state_after_key,
        )
        return json_response(body)
