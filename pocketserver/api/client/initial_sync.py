"""The deprecated snapshot and stream endpoints that Element and bots still call:
``GET /rooms/{roomId}/initialSync`` (room previews), ``GET /initialSync``,
``GET /events`` and ``GET /events/{eventId}``."""

from __future__ import annotations

from quart import Blueprint, Response, request

from pocketserver.api.client.routing import client_route
from pocketserver.api.common import json_response, query_bool, query_int, require_auth, services
from pocketserver.errors import InvalidParam, MatrixError
from pocketserver.protocol.identifiers import is_valid_room_id
from pocketserver.services.sync import EVENT_STREAM_LIMIT

bp = Blueprint("client_initial_sync", __name__)

DEFAULT_LIMIT = 10
MAX_LIMIT = 100
# Synapse's default wait for /events, when the client names none.
DEFAULT_EVENTS_TIMEOUT_MS = 30_000


def _room_id(room_id: str) -> str:
    if not room_id.startswith("!") or not is_valid_room_id(room_id):
        raise InvalidParam("Invalid room ID")
    return room_id


@client_route(bp, "/rooms/<room_id>/initialSync", ["GET"])
async def room_initial_sync(room_id: str) -> Response:
    """GET /_matrix/client/v3/rooms/{roomId}/initialSync"""
    requester = await require_auth(allow_guest=True)
    limit = query_int("limit", DEFAULT_LIMIT, minimum=0, maximum=MAX_LIMIT) or 0
    out = await services().reader.room_initial_sync(requester, _room_id(room_id), limit)
    return json_response(out)


@client_route(bp, "/initialSync", ["GET"])
async def initial_sync() -> Response:
    """GET /_matrix/client/v3/initialSync"""
    requester = await require_auth(allow_guest=True)
    limit = query_int("limit", DEFAULT_LIMIT, minimum=0, maximum=MAX_LIMIT) or 0
    archived = query_bool("archived", False)
    return json_response(await services().reader.initial_sync(requester, limit, archived))


@client_route(bp, "/events", ["GET"])
async def events() -> Response:
    """GET /_matrix/client/v3/events"""
    requester = await require_auth(allow_guest=True)
    timeout = query_int("timeout", DEFAULT_EVENTS_TIMEOUT_MS, minimum=0) or 0
    # Not in the spec's /events, but Synapse's clients send it: honoured, up to the cap
    # one answer has anyway.
    limit = query_int("limit", EVENT_STREAM_LIMIT, minimum=1, maximum=EVENT_STREAM_LIMIT)
    assert limit is not None
    room_id = request.args.get("room_id")
    if room_id is None and requester.is_guest:
        # A guest may follow the rooms it peeks into, one at a time, not a global stream.
        raise MatrixError(403, "M_GUEST_ACCESS_FORBIDDEN", "Guests must give a room_id")
    out = await services().sync.event_stream(
        requester,
        from_token=request.args.get("from") or None,
        timeout_ms=timeout,
        room_id=_room_id(room_id) if room_id is not None else None,
        limit=limit,
    )
    return json_response(out)


@client_route(bp, "/events/<event_id>", ["GET"])
async def event(event_id: str) -> Response:
    """GET /_matrix/client/v3/events/{eventId}"""
    requester = await require_auth(allow_guest=True)
    return json_response(await services().reader.event_by_id(requester, event_id))
