"""Device lists and end-to-end keys of this server's users, for other servers
(server-server user_devices.yaml, user_keys.yaml): thin over
:class:`~pocketserver.federation.e2e.FederatedKeys`."""

from __future__ import annotations

from quart import Blueprint, Response

from pocketserver.api.common import json_body, json_response
from pocketserver.api.federation.auth import authenticated_origin, federation_keys
from pocketserver.errors import InvalidParam
from pocketserver.protocol.identifiers import is_valid_user_id

bp = Blueprint("federation_devices", __name__)


@bp.route("/_matrix/federation/v1/user/devices/<user_id>", methods=["GET"])
async def user_devices(user_id: str) -> Response:
    """GET /_matrix/federation/v1/user/devices/{userId}"""
    origin = await authenticated_origin()
    if not is_valid_user_id(user_id):
        raise InvalidParam("Not a user ID")
    return json_response(await federation_keys().user_devices(origin, user_id))


@bp.route("/_matrix/federation/v1/user/keys/query", methods=["POST"])
async def keys_query() -> Response:
    """POST /_matrix/federation/v1/user/keys/query"""
    origin = await authenticated_origin()
    body = await json_body()
    return json_response(await federation_keys().query_local(origin, body))


@bp.route("/_matrix/federation/v1/user/keys/claim", methods=["POST"])
async def keys_claim() -> Response:
    """POST /_matrix/federation/v1/user/keys/claim"""
    origin = await authenticated_origin()
    body = await json_body()
    return json_response(await federation_keys().claim_local(origin, body))
