"""The OpenID userinfo exchange (server-server openid.yaml).

Called by third parties (integration managers, widgets), not by servers: no request
signature, the OpenID token is the only credential.
"""

from __future__ import annotations

from quart import Blueprint, Response, request

from pocketserver.api.common import json_response, services
from pocketserver.errors import MissingToken

bp = Blueprint("federation_openid", __name__)

USERINFO_PATH = "/_matrix/federation/v1/openid/userinfo"


@bp.route(USERINFO_PATH, methods=["GET"])
async def userinfo() -> Response:
    """GET /_matrix/federation/v1/openid/userinfo?access_token="""
    token = request.args.get("access_token")
    if not token:
        raise MissingToken("Missing 'access_token' (the OpenID token)")
    return json_response(await services().openid.userinfo(token))
