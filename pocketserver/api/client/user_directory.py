"""The user directory."""

from __future__ import annotations

from quart import Blueprint, Response

from pocketserver.api.client.routing import client_route
from pocketserver.api.common import (
    get_int,
    get_str,
    json_body,
    json_response,
    require_auth,
    services,
)
from pocketserver.errors import BadJson

bp = Blueprint("client_user_directory", __name__)


@client_route(bp, "/user_directory/search", ["POST"])
async def search() -> Response:
    """POST /_matrix/client/v3/user_directory/search"""
    requester = await require_auth()
    body = await json_body()
    term = get_str(body, "search_term", required=True)
    assert term is not None
    limit = get_int(body, "limit")
    if limit is not None and limit < 0:
        raise BadJson("limit must not be negative")
    out = await services().user_directory.search(requester, term, limit)
    return json_response(out)
