"""GET/PUT /presence/{userId}/status (presence.yaml)."""

from __future__ import annotations

from quart import Blueprint, Response

from pocketserver.api.client.account import client_route
from pocketserver.api.common import json_body, json_response, require_auth, services

bp = Blueprint("client_presence", __name__)


@client_route(bp, "/presence/<user_id>/status", ["GET"])
async def get_status(user_id: str) -> Response:
    """GET /_matrix/client/v3/presence/{userId}/status"""
    requester = await require_auth(allow_guest=True)
    return json_response(await services().presence.get_status(requester.user_id, user_id))


@client_route(bp, "/presence/<user_id>/status", ["PUT"])
async def set_status(user_id: str) -> Response:
    """PUT /_matrix/client/v3/presence/{userId}/status"""
    requester = await require_auth(allow_guest=True)
    body = await json_body()
    await services().presence.set_status(requester.user_id, user_id, body)
    return json_response({})
