"""Spaces and room-level extras: the space hierarchy, room summaries, room upgrades,
mutual rooms."""

from __future__ import annotations

from quart import Blueprint, Response, request

from pocketserver.api.client.routing import client_route
from pocketserver.api.common import (
    json_body,
    json_response,
    optional_auth,
    query_bool,
    query_int,
    require_auth,
    services,
)
from pocketserver.errors import BadJson, InvalidParam, MissingParam
from pocketserver.protocol.identifiers import is_valid_room_id

bp = Blueprint("client_spaces", __name__)

V1 = ("/_matrix/client/v1",)


def _room_id(room_id: str) -> str:
    if not room_id.startswith("!") or not is_valid_room_id(room_id):
        raise InvalidParam("Invalid room ID")
    return room_id


@client_route(bp, "/rooms/<room_id>/hierarchy", ["GET"], prefixes=V1)
async def hierarchy(room_id: str) -> Response:
    """GET /_matrix/client/v1/rooms/{roomId}/hierarchy"""
    requester = await require_auth(allow_guest=True)
    limit = query_int("limit", None, minimum=1)
    max_depth = query_int("max_depth", None, minimum=0)
    out = await services().hierarchy.hierarchy(
        requester,
        _room_id(room_id),
        suggested_only=query_bool("suggested_only"),
        max_depth=max_depth,
        limit=limit,
        from_token=request.args.get("from") or None,
    )
    return json_response(out)


@client_route(bp, "/room_summary/<room_id_or_alias>", ["GET"], prefixes=V1)
async def room_summary(room_id_or_alias: str) -> Response:
    """GET /_matrix/client/v1/room_summary/{roomIdOrAlias}"""
    requester = await optional_auth()
    svc = services()
    room_id = await svc.rooms.resolve_room_id_or_alias(room_id_or_alias)
    out = await svc.hierarchy.room_summary(requester.user_id if requester else None, room_id)
    return json_response(out)


@client_route(bp, "/rooms/<room_id>/upgrade", ["POST"])
async def upgrade(room_id: str) -> Response:
    """POST /_matrix/client/v3/rooms/{roomId}/upgrade"""
    requester = await require_auth()
    body = await json_body()
    new_version = body.get("new_version")
    if new_version is None:
        raise MissingParam("new_version is required")
    if not isinstance(new_version, str):
        raise BadJson("new_version must be a string")
    extra = body.get("additional_creators")
    if extra is not None and (not isinstance(extra, list) or not all(isinstance(u, str) for u in extra)):
        raise BadJson("additional_creators must be a list of user IDs")
    svc = services()
    svc.ratelimiter.check("messages", requester.user_id)
    new_room = await svc.upgrades.upgrade(requester, _room_id(room_id), new_version, extra)
    return json_response({"replacement_room": new_room})


@client_route(bp, "/mutual_rooms", ["GET"], prefixes=V1)
async def mutual_rooms() -> Response:
    """GET /_matrix/client/v1/mutual_rooms"""
    requester = await require_auth()
    user_id = request.args.get("user_id")
    if not user_id:
        raise MissingParam("user_id is required")
    out = await services().user_directory.mutual_rooms(requester, user_id, request.args.get("from") or None)
    return json_response(out)
