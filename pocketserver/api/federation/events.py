"""Reading a room's events and state from another server (server-server events.yaml,
event_auth.yaml, backfill.yaml, timestamp_to_event): thin over
:class:`~pocketserver.federation.hosting.RoomHosting`, which applies history visibility.

``/state``, ``/state_ids``, ``/event_auth``, ``/backfill``, ``/get_missing_events`` and
``/timestamp_to_event`` are protected by the room's server ACL, checked right after the
request's signature and before anything in the request is looked at (a denied server
gets 403 ``M_FORBIDDEN``, whatever else is wrong with its request); ``/event`` by the
ACL of the room the event is in.
"""

from __future__ import annotations

from quart import Blueprint, Response, request

from pocketserver.api.common import json_body, json_response, query_int
from pocketserver.api.federation.auth import authenticated_origin, check_server_acl, room_federation
from pocketserver.errors import InvalidParam, MissingParam

bp = Blueprint("federation_events", __name__)

MAX_BACKFILL_FROM = 20
MAX_BACKFILL_LIMIT = 100


def _required(name: str) -> str:
    value = request.args.get(name)
    if not value:
        raise MissingParam(f"Missing {name!r}")
    return value


@bp.route("/_matrix/federation/v1/event/<event_id>", methods=["GET"])
async def get_event(event_id: str) -> Response:
    """GET /_matrix/federation/v1/event/{eventId}"""
    origin = await authenticated_origin()
    return json_response(await room_federation().hosting.get_event(origin, event_id))


@bp.route("/_matrix/federation/v1/state/<room_id>", methods=["GET"])
async def get_state(room_id: str) -> Response:
    """GET /_matrix/federation/v1/state/{roomId}?event_id="""
    origin = await authenticated_origin()
    await check_server_acl(room_id, origin)
    event_id = _required("event_id")
    return json_response(await room_federation().hosting.get_state(origin, room_id, event_id))


@bp.route("/_matrix/federation/v1/state_ids/<room_id>", methods=["GET"])
async def get_state_ids(room_id: str) -> Response:
    """GET /_matrix/federation/v1/state_ids/{roomId}?event_id="""
    origin = await authenticated_origin()
    await check_server_acl(room_id, origin)
    event_id = _required("event_id")
    return json_response(await room_federation().hosting.get_state_ids(origin, room_id, event_id))


@bp.route("/_matrix/federation/v1/event_auth/<room_id>/<event_id>", methods=["GET"])
async def get_event_auth(room_id: str, event_id: str) -> Response:
    """GET /_matrix/federation/v1/event_auth/{roomId}/{eventId}"""
    origin = await authenticated_origin()
    await check_server_acl(room_id, origin)
    return json_response(await room_federation().hosting.get_event_auth(origin, room_id, event_id))


@bp.route("/_matrix/federation/v1/backfill/<room_id>", methods=["GET"])
async def backfill(room_id: str) -> Response:
    """GET /_matrix/federation/v1/backfill/{roomId}?v=&limit="""
    origin = await authenticated_origin()
    await check_server_acl(room_id, origin)
    from_ids = [v for v in request.args.getlist("v") if v]
    if not from_ids:
        raise MissingParam("Missing 'v'")
    if len(from_ids) > MAX_BACKFILL_FROM:
        raise InvalidParam(f"At most {MAX_BACKFILL_FROM} 'v' parameters")
    limit = query_int("limit", None, minimum=0, maximum=MAX_BACKFILL_LIMIT)
    if limit is None:
        raise MissingParam("Missing 'limit'")
    return json_response(await room_federation().hosting.backfill(origin, room_id, from_ids, limit))


@bp.route("/_matrix/federation/v1/get_missing_events/<room_id>", methods=["POST"])
async def get_missing_events(room_id: str) -> Response:
    """POST /_matrix/federation/v1/get_missing_events/{roomId}"""
    origin = await authenticated_origin()
    await check_server_acl(room_id, origin)
    body = await json_body()
    return json_response(await room_federation().hosting.get_missing_events(origin, room_id, body))


@bp.route("/_matrix/federation/v1/timestamp_to_event/<room_id>", methods=["GET"])
async def timestamp_to_event(room_id: str) -> Response:
    """GET /_matrix/federation/v1/timestamp_to_event/{roomId}?ts=&dir="""
    origin = await authenticated_origin()
    await check_server_acl(room_id, origin)
    ts = query_int("ts", None, minimum=0)
    if ts is None:
        raise MissingParam("Missing 'ts'")
    direction = _required("dir")
    if direction not in ("f", "b"):
        raise InvalidParam("'dir' must be f or b")
    return json_response(await room_federation().hosting.timestamp_to_event(origin, room_id, ts, direction))
