"""Federation queries (server-server query.yaml): profiles of this server's users, and
this server's room aliases."""

from __future__ import annotations

from quart import Blueprint, Response, request

from pocketserver.api.common import json_response, services
from pocketserver.api.federation.auth import authenticated_origin
from pocketserver.errors import InvalidParam, MissingParam, NotFound
from pocketserver.protocol.identifiers import InvalidIdentifier, RoomAlias, UserID

bp = Blueprint("federation_query", __name__)

PROFILE_FIELDS = ("displayname", "avatar_url")


@bp.route("/_matrix/federation/v1/query/profile", methods=["GET"])
async def query_profile() -> Response:
    """GET /_matrix/federation/v1/query/profile?user_id=&field="""
    await authenticated_origin()
    svc = services()
    user_id = request.args.get("user_id")
    if not user_id:
        raise MissingParam("Missing 'user_id'")
    field = request.args.get("field")
    if field is not None and field not in PROFILE_FIELDS:
        raise InvalidParam("'field' must be displayname or avatar_url")
    try:
        user = UserID.parse(user_id)
    except InvalidIdentifier:
        raise InvalidParam("'user_id' is not a user ID") from None
    if user.domain != svc.config.server_name:
        raise NotFound("That user is not on this server")
    profile = await svc.accounts.get_profile(user_id)
    if field is not None:
        return json_response({field: profile[field]} if field in profile else {})
    return json_response({k: profile[k] for k in PROFILE_FIELDS if k in profile})


@bp.route("/_matrix/federation/v1/query/directory", methods=["GET"])
async def query_directory() -> Response:
    """GET /_matrix/federation/v1/query/directory?room_alias="""
    await authenticated_origin()
    svc = services()
    alias = request.args.get("room_alias")
    if not alias:
        raise MissingParam("Missing 'room_alias'")
    try:
        parsed = RoomAlias.parse(alias)
    except InvalidIdentifier:
        raise InvalidParam("'room_alias' is not a room alias") from None
    if parsed.domain != svc.config.server_name:
        raise NotFound("That alias is not on this server")
    room_id, servers = await svc.rooms.get_alias(alias)
    return json_response({"room_id": room_id, "servers": servers})
