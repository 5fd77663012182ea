"""Server-side search."""

from __future__ import annotations

from quart import Blueprint, Response, request

from pocketserver.api.client.routing import client_route
from pocketserver.api.common import json_body, json_response, require_auth, services

bp = Blueprint("client_search", __name__)


@client_route(bp, "/search", ["POST"])
async def search() -> Response:
    """POST /_matrix/client/v3/search"""
    requester = await require_auth()
    body = await json_body()
    out = await services().search.search(requester, body, request.args.get("next_batch") or None)
    return json_response(out)
