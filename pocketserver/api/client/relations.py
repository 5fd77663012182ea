"""Relationships: child events of an event, and the thread list of a room."""

from __future__ import annotations

from quart import Blueprint, Response, request

from pocketserver.api.client.routing import client_route
from pocketserver.api.common import json_response, query_bool, query_int, require_auth, services
from pocketserver.errors import InvalidParam
from pocketserver.protocol.identifiers import is_valid_room_id
from pocketserver.services.relations import parse_dir

bp = Blueprint("client_relations", __name__)

V1 = ("/_matrix/client/v1",)


def _room_id(room_id: str) -> str:
    if not room_id.startswith("!") or not is_valid_room_id(room_id):
        raise InvalidParam("Invalid room ID")
    return room_id


@client_route(bp, "/rooms/<room_id>/relations/<event_id>", ["GET"], prefixes=V1)
@client_route(bp, "/rooms/<room_id>/relations/<event_id>/<rel_type>", ["GET"], prefixes=V1)
@client_route(bp, "/rooms/<room_id>/relations/<event_id>/<rel_type>/<event_type>", ["GET"], prefixes=V1)
async def relations(
    room_id: str, event_id: str, rel_type: str | None = None, event_type: str | None = None
) -> Response:
    """GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}[/{relType}[/{eventType}]]"""
    requester = await require_auth(allow_guest=True)
    limit = query_int("limit", None, minimum=0)
    recurse = query_bool("recurse") if "recurse" in request.args else None
    out = await services().relations.relations(
        requester,
        _room_id(room_id),
        event_id,
        rel_type=rel_type,
        event_type=event_type,
        from_token=request.args.get("from") or None,
        to_token=request.args.get("to") or None,
        limit=limit,
        backwards=parse_dir(request.args.get("dir")),
        recurse=recurse,
    )
    return json_response(out)


@client_route(bp, "/rooms/<room_id>/threads", ["GET"], prefixes=V1)
async def threads(room_id: str) -> Response:
    """GET /_matrix/client/v1/rooms/{roomId}/threads"""
    requester = await require_auth(allow_guest=True)
    include = request.args.get("include", "all")
    if include not in ("all", "participated"):
        raise InvalidParam("include must be all or participated")
    limit = query_int("limit", None, minimum=1)
    out = await services().relations.threads(
        requester,
        _room_id(room_id),
        include=include,
        limit=limit,
        from_token=request.args.get("from") or None,
    )
    return json_response(out)
