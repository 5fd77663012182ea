"""Third-party networks (bridges): ``/thirdparty/...``, passed to the application
services that registered each protocol (application-service-api.md, "Third-party
networks"; client-server-api "Application service protocols"). With no application
services the protocol list is empty and every protocol unknown, as the spec says for a
server without bridges (Element asks for the list at start-up).
"""

from __future__ import annotations

from quart import Blueprint, Response, request

from pocketserver.api.client.routing import client_route
from pocketserver.api.common import json_response, require_auth, services
from pocketserver.errors import MatrixError

bp = Blueprint("client_thirdparty", __name__)

# Query parameters of the client's request that are not search fields for the AS.
_NOT_FIELDS = ("access_token", "user_id", "device_id")


def _fields() -> dict[str, str]:
    return {k: v for k, v in request.args.items() if k not in _NOT_FIELDS}


@client_route(bp, "/thirdparty/protocols", ["GET"])
async def protocols() -> Response:
    """GET /_matrix/client/v3/thirdparty/protocols"""
    await require_auth(allow_guest=True)
    return json_response(await services().appservices.protocols())


@client_route(bp, "/thirdparty/protocol/<protocol>", ["GET"])
async def protocol(protocol: str) -> Response:
    """GET /_matrix/client/v3/thirdparty/protocol/{protocol}"""
    await require_auth(allow_guest=True)
    return json_response(await services().appservices.protocol(protocol))


@client_route(bp, "/thirdparty/location/<protocol>", ["GET"])
@client_route(bp, "/thirdparty/user/<protocol>", ["GET"])
async def by_protocol(protocol: str) -> Response:
    """GET /_matrix/client/v3/thirdparty/{location,user}/{protocol}"""
    await require_auth(allow_guest=True)
    kind = "location" if "/thirdparty/location/" in request.path else "user"
    return json_response(await services().appservices.lookup(kind, protocol, _fields()))


@client_route(bp, "/thirdparty/location", ["GET"])
@client_route(bp, "/thirdparty/user", ["GET"])
async def reverse_lookup() -> Response:
    """GET /_matrix/client/v3/thirdparty/location?alias= and /thirdparty/user?userid="""
    await require_auth(allow_guest=True)
    kind = "location" if request.path.endswith("/location") else "user"
    param = "alias" if kind == "location" else "userid"
    value = request.args.get(param)
    if not value:
        raise MatrixError(400, "M_MISSING_PARAM", f"{param} is required")
    return json_response(await services().appservices.lookup(kind, None, {param: value}))
