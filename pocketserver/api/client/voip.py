"""VoIP: TURN server credentials."""

from __future__ import annotations

from quart import Blueprint, Response

from pocketserver.api.client.routing import client_route
from pocketserver.api.common import json_response, require_auth, services

bp = Blueprint("client_voip", __name__)


@client_route(bp, "/voip/turnServer", ["GET"])
async def turn_server() -> Response:
    """GET /_matrix/client/v3/voip/turnServer"""
    requester = await require_auth(allow_guest=True)
    return json_response(services().voip.turn_server(requester.user_id))
