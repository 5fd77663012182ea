"""Joining, leaving, knocking and invites across servers (server-server joins-v1/v2,
leaving-v1/v2, knocks, invites-v1/v2): thin over :class:`~pocketserver.federation.hosting.RoomHosting`.

All of these are protected by the room's server ACL (server-server-api.md, "Server Access
Control Lists"). The deprecated v1 send_join and send_leave answer the v2 result wrapped
as ``[200, body]``; so does the deprecated v1 invite, whose body is the invite event
itself (room version 1 or 2, the spec says: the one its ``m.room.create`` in
``invite_room_state`` names, else 1).
"""

from __future__ import annotations

from quart import Blueprint, Response, request

from pocketserver.api.common import json_body, json_response, query_bool
from pocketserver.api.federation.auth import authenticated_origin, check_server_acl, room_federation
from pocketserver.errors import InvalidParam
from pocketserver.protocol.identifiers import is_valid_user_id

bp = Blueprint("federation_membership", __name__)

MAX_VERSIONS = 50


def _versions() -> list[str]:
    vers = request.args.getlist("ver")
    if len(vers) > MAX_VERSIONS:
        raise InvalidParam(f"At most {MAX_VERSIONS} 'ver' parameters")
    return vers


def _user(user_id: str) -> str:
    if not is_valid_user_id(user_id):
        raise InvalidParam("Not a user ID")
    return user_id


@bp.route("/_matrix/federation/v1/make_join/<room_id>/<user_id>", methods=["GET"])
async def make_join(room_id: str, user_id: str) -> Response:
    """GET /_matrix/federation/v1/make_join/{roomId}/{userId}?ver="""
    origin = await authenticated_origin()
    await check_server_acl(room_id, origin)
    hosting = room_federation().hosting
    return json_response(await hosting.make_join(origin, room_id, _user(user_id), _versions()))


@bp.route("/_matrix/federation/v2/send_join/<room_id>/<event_id>", methods=["PUT"])
async def send_join(room_id: str, event_id: str) -> Response:
    """PUT /_matrix/federation/v2/send_join/{roomId}/{eventId}?omit_members="""
    origin = await authenticated_origin()
    await check_server_acl(room_id, origin)
    omit = query_bool("omit_members")
    body = await json_body()
    hosting = room_federation().hosting
    return json_response(await hosting.send_join(origin, room_id, event_id, body, omit_members=omit))


@bp.route("/_matrix/federation/v1/send_join/<room_id>/<event_id>", methods=["PUT"])
async def send_join_v1(room_id: str, event_id: str) -> Response:
    """PUT /_matrix/federation/v1/send_join/{roomId}/{eventId} (deprecated: v2's answer as [200, body])"""
    origin = await authenticated_origin()
    await check_server_acl(room_id, origin)
    body = await json_body()
    answer = await room_federation().hosting.send_join(origin, room_id, event_id, body)
    answer.pop("members_omitted", None)
    answer.pop("servers_in_room", None)
    return json_response([200, answer])


@bp.route("/_matrix/federation/v1/make_leave/<room_id>/<user_id>", methods=["GET"])
async def make_leave(room_id: str, user_id: str) -> Response:
    """GET /_matrix/federation/v1/make_leave/{roomId}/{userId}"""
    origin = await authenticated_origin()
    await check_server_acl(room_id, origin)
    return json_response(await room_federation().hosting.make_leave(origin, room_id, _user(user_id)))


@bp.route("/_matrix/federation/v2/send_leave/<room_id>/<event_id>", methods=["PUT"])
async def send_leave(room_id: str, event_id: str) -> Response:
    """PUT /_matrix/federation/v2/send_leave/{roomId}/{eventId}"""
    origin = await authenticated_origin()
    await check_server_acl(room_id, origin)
    body = await json_body()
    return json_response(await room_federation().hosting.send_leave(origin, room_id, event_id, body))


@bp.route("/_matrix/federation/v1/send_leave/<room_id>/<event_id>", methods=["PUT"])
async def send_leave_v1(room_id: str, event_id: str) -> Response:
    """PUT /_matrix/federation/v1/send_leave/{roomId}/{eventId} (deprecated: [200, {}])"""
    origin = await authenticated_origin()
    await check_server_acl(room_id, origin)
    body = await json_body()
    return json_response([200, await room_federation().hosting.send_leave(origin, room_id, event_id, body)])


@bp.route("/_matrix/federation/v1/make_knock/<room_id>/<user_id>", methods=["GET"])
async def make_knock(room_id: str, user_id: str) -> Response:
    """GET /_matrix/federation/v1/make_knock/{roomId}/{userId}?ver="""
    origin = await authenticated_origin()
    await check_server_acl(room_id, origin)
    hosting = room_federation().hosting
    return json_response(await hosting.make_knock(origin, room_id, _user(user_id), _versions()))


@bp.route("/_matrix/federation/v1/send_knock/<room_id>/<event_id>", methods=["PUT"])
async def send_knock(room_id: str, event_id: str) -> Response:
    """PUT /_matrix/federation/v1/send_knock/{roomId}/{eventId}"""
    origin = await authenticated_origin()
    await check_server_acl(room_id, origin)
    body = await json_body()
    return json_response(await room_federation().hosting.send_knock(origin, room_id, event_id, body))


@bp.route("/_matrix/federation/v2/invite/<room_id>/<event_id>", methods=["PUT"])
async def invite(room_id: str, event_id: str) -> Response:
    """PUT /_matrix/federation/v2/invite/{roomId}/{eventId}"""
    origin = await authenticated_origin()
    await check_server_acl(room_id, origin)
    body = await json_body()
    return json_response(await room_federation().hosting.on_invite(origin, room_id, event_id, body))


@bp.route("/_matrix/federation/v1/invite/<room_id>/<event_id>", methods=["PUT"])
async def invite_v1(room_id: str, event_id: str) -> Response:
    """PUT /_matrix/federation/v1/invite/{roomId}/{eventId} (deprecated: rooms v1 and v2 only)"""
    origin = await authenticated_origin()
    await check_server_acl(room_id, origin)
    pdu = await json_body()
    unsigned = pdu.get("unsigned")
    room_state = unsigned.get("invite_room_state", []) if isinstance(unsigned, dict) else []
    version = "1"
    for entry in room_state if isinstance(room_state, list) else []:
        if isinstance(entry, dict) and entry.get("type") == "m.room.create":
            content = entry.get("content")
            if isinstance(content, dict) and content.get("room_version") == "2":
                version = "2"
    body = {"room_version": version, "event": pdu, "invite_room_state": room_state}
    return json_response([200, await room_federation().hosting.on_invite(origin, room_id, event_id, body)])
