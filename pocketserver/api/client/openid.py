"""OpenID token requests (client-server openid.yaml)."""

from __future__ import annotations

from quart import Blueprint, Response

from pocketserver.api.client.account import client_route
from pocketserver.api.common import json_body, json_response, require_auth, services

bp = Blueprint("client_openid", __name__)


@client_route(bp, "/user/<user_id>/openid/request_token", ["POST"])
async def request_token(user_id: str) -> Response:
    """POST /_matrix/client/v3/user/{userId}/openid/request_token"""
    requester = await require_auth()
    await json_body()  # an empty object, "reserved for future expansion"
    return json_response(await services().openid.request_token(requester, user_id))
