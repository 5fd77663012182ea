"""Third-party networks (bridges): ``/thirdparty/...``.

Protocols come from application services, and pocketserver has none: the protocol list is
empty, every protocol is unknown, and no Matrix user or alias is bridged. Element asks for
the list at start-up and retries on an error, so these answer as the spec says for a
server without bridges rather than M_UNRECOGNIZED.
"""

from __future__ import annotations

from quart import Blueprint, Response, request

from pocketserver.api.client.routing import client_route
from pocketserver.api.common import json_response, require_auth
from pocketserver.errors import MatrixError, NotFound

bp = Blueprint("client_thirdparty", __name__)


@client_route(bp, "/thirdparty/protocols", ["GET"])
async def protocols() -> Response:
    """GET /_matrix/client/v3/thirdparty/protocols"""
    await require_auth(allow_guest=True)
    return json_response({})


@client_route(bp, "/thirdparty/protocol/<protocol>", ["GET"])
@client_route(bp, "/thirdparty/location/<protocol>", ["GET"])
@client_route(bp, "/thirdparty/user/<protocol>", ["GET"])
async def by_protocol(protocol: str) -> Response:
    """GET /_matrix/client/v3/thirdparty/{protocol,location,user}/{protocol}"""
    await require_auth(allow_guest=True)
    raise NotFound(f"Unknown protocol {protocol!r}: this server has no bridges")


@client_route(bp, "/thirdparty/location", ["GET"])
@client_route(bp, "/thirdparty/user", ["GET"])
async def reverse_lookup() -> Response:
    """GET /_matrix/client/v3/thirdparty/location?alias= and /thirdparty/user?userid="""
    await require_auth(allow_guest=True)
    param = "alias" if request.path.endswith("/location") else "userid"
    if not request.args.get(param):
        raise MatrixError(400, "M_MISSING_PARAM", f"{param} is required")
    return json_response([])
