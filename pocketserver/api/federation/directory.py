"""This server's published room directory (server-server public_rooms.yaml: the client
endpoint's answer, with its filter, limit and since) and its spaces' hierarchy
(space_hierarchy.yaml), for other servers. A server the room's ACL denies gets 403
``M_FORBIDDEN`` for its hierarchy, as for the room's other federation routes."""

from __future__ import annotations

from quart import Blueprint, Response, request

from pocketserver.api.common import json_body, json_response, query_bool, query_int, services
from pocketserver.api.federation.auth import authenticated_origin, check_server_acl
from pocketserver.errors import BadJson
from pocketserver.services.params import get_dict, get_int, get_str

bp = Blueprint("federation_directory", __name__)


@bp.route("/_matrix/federation/v1/publicRooms", methods=["GET", "POST"])
async def public_rooms() -> Response:
    """GET|POST /_matrix/federation/v1/publicRooms"""
    await authenticated_origin()
    term: str | None = None
    if request.method == "POST":
        body = await json_body(allow_empty=True)
        limit = get_int(body, "limit", minimum=0)
        since = get_str(body, "since")
        flt = get_dict(body, "filter") or {}
        term = get_str(flt, "generic_search_term")
        if not isinstance(body.get("include_all_networks", False), bool):
            raise BadJson("'include_all_networks' must be a boolean")
    else:
        limit = query_int("limit", None, minimum=0)
        since = request.args.get("since") or None
    out = await services().reader.public_rooms(limit=limit, since=since, search=term)
    return json_response(out)


@bp.route("/_matrix/federation/v1/hierarchy/<room_id>", methods=["GET"])
async def hierarchy(room_id: str) -> Response:
    """GET /_matrix/federation/v1/hierarchy/{roomId}?suggested_only="""
    origin = await authenticated_origin()
    await check_server_acl(room_id, origin)
    suggested_only = query_bool("suggested_only")
    return json_response(await services().hierarchy.federation_hierarchy(origin, room_id, suggested_only=suggested_only))
