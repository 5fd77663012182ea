"""Rooms: create, membership, send, state, redact, read events, aliases, directory."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response, request

from pocketserver.api.client.routing import client_route
from pocketserver.api.common import (
    get_bool,
    get_int,
    get_str,
    json_body,
    json_response,
    query_bool,
    query_int,
    require_auth,
    services,
)
from pocketserver.errors import BadJson, Forbidden, InvalidParam, MatrixError, NotFound
from pocketserver.protocol.identifiers import is_valid_room_id, is_valid_server_name
from pocketserver.services.auth import Requester

bp = Blueprint("client_rooms", __name__)


def _room_id(room_id: str) -> str:
    if not room_id.startswith("!") or not is_valid_room_id(room_id):
        raise InvalidParam("Invalid room ID")
    return room_id


def _reason(body: dict[str, Any]) -> str | None:
    return get_str(body, "reason")


def _via() -> list[str]:
    """The servers to join or knock through: ``via`` (v1.12+) and the older
    ``server_name``, both repeatable query parameters."""
    servers = [*request.args.getlist("via"), *request.args.getlist("server_name")]
    for s in servers:
        if not s or len(s) > 255 or any(c in s for c in "/ @#!$"):
            raise InvalidParam(f"Invalid server name {s!r}")
    return servers


@client_route(bp, "/createRoom", ["POST"])
async def create_room() -> Response:
    """POST /_matrix/client/v3/createRoom"""
    requester = await require_auth()
    body = await json_body()
    svc = services()
    svc.ratelimiter.check("messages", requester.user_id)
    invite_3pid = body.get("invite_3pid")
    if invite_3pid is not None:
        # Checked before the room exists; each invite goes to its identity server after.
        if not isinstance(invite_3pid, list):
            raise BadJson("invite_3pid must be a list")
        for item in invite_3pid:
            svc.third_party_invites.check_invite_body(item)
        body = {k: v for k, v in body.items() if k != "invite_3pid"}
    room_id, alias = await svc.rooms.create_room(requester, body)
    for item in invite_3pid or []:
        await svc.third_party_invites.invite(requester, room_id, item)
    out: dict[str, Any] = {"room_id": room_id}
    if alias:
        out["room_alias"] = alias
    return json_response(out)


# -- membership ---------------------------------------------------------------------------------


@client_route(bp, "/rooms/<room_id>/join", ["POST"])
async def join_room_by_id(room_id: str) -> Response:
    """POST /_matrix/client/v3/rooms/{roomId}/join"""
    requester = await require_auth(allow_guest=True)
    body = await json_body(allow_empty=True)
    rid = await _join(requester, _room_id(room_id), body)
    return json_response({"room_id": rid})


@client_route(bp, "/join/<room_id_or_alias>", ["POST"])
async def join_room(room_id_or_alias: str) -> Response:
    """POST /_matrix/client/v3/join/{roomIdOrAlias}"""
    requester = await require_auth(allow_guest=True)
    body = await json_body(allow_empty=True)
    rid = await _join(requester, room_id_or_alias, body)
    return json_response({"room_id": rid})


async def _join(requester: Requester, room_id_or_alias: str, body: dict[str, Any]) -> str:
    svc = services()
    if body.get("third_party_signed") is not None:
        # Accepting a third-party invite: exchanged for an invite first.
        room_id = await svc.rooms.resolve_room_id_or_alias(room_id_or_alias)
        await svc.third_party_invites.accept(requester, room_id, body["third_party_signed"])
        room_id_or_alias = room_id
    return await svc.rooms.join(
        requester, room_id_or_alias, reason=_reason(body), content=body, via=_via()
    )


@client_route(bp, "/knock/<room_id_or_alias>", ["POST"])
async def knock(room_id_or_alias: str) -> Response:
    """POST /_matrix/client/v3/knock/{roomIdOrAlias}"""
    requester = await require_auth()
    body = await json_body(allow_empty=True)
    rid = await services().rooms.knock(requester, room_id_or_alias, reason=_reason(body), via=_via())
    return json_response({"room_id": rid})


@client_route(bp, "/rooms/<room_id>/leave", ["POST"])
async def leave(room_id: str) -> Response:
    """POST /_matrix/client/v3/rooms/{roomId}/leave"""
    requester = await require_auth(allow_guest=True)
    body = await json_body(allow_empty=True)
    await services().rooms.leave(requester, _room_id(room_id), _reason(body))
    return json_response({})


@client_route(bp, "/rooms/<room_id>/forget", ["POST"])
async def forget(room_id: str) -> Response:
    """POST /_matrix/client/v3/rooms/{roomId}/forget"""
    requester = await require_auth()
    await json_body(allow_empty=True)
    await services().rooms.forget(requester, _room_id(room_id))
    return json_response({})


async def _membership_of_other(room_id: str, membership: str) -> Response:
    requester = await require_auth()
    body = await json_body()
    if membership == "invite" and "user_id" not in body and "medium" in body:
        # By third-party identifier (third_party_membership.yaml).
        await services().third_party_invites.invite(requester, _room_id(room_id), body)
        return json_response({})
    target = get_str(body, "user_id", required=True)
    assert target is not None
    rooms = services().rooms
    rid = _room_id(room_id)
    if membership == "unban":
        if await rooms.membership(rid, target) != "ban":
            raise Forbidden("That user is not banned")
        membership = "leave"
    elif membership == "kick":
        current = await rooms.membership(rid, target)
        if current not in ("join", "invite", "knock"):
            raise Forbidden("That user is not in the room")
        membership = "leave"
    elif membership == "invite":
        current = await rooms.membership(rid, target)
        if current == "join":
            raise Forbidden("That user is already in the room")
    extra: dict[str, Any] = {}
    if membership == "invite" and "is_direct" in body:
        extra["is_direct"] = get_bool(body, "is_direct")
    await rooms.update_membership(requester, rid, target, membership, reason=_reason(body), **extra)
    return json_response({})


@client_route(bp, "/rooms/<room_id>/invite", ["POST"])
async def invite(room_id: str) -> Response:
    """POST /_matrix/client/v3/rooms/{roomId}/invite"""
    return await _membership_of_other(room_id, "invite")


@client_route(bp, "/rooms/<room_id>/kick", ["POST"])
async def kick(room_id: str) -> Response:
    """POST /_matrix/client/v3/rooms/{roomId}/kick"""
    return await _membership_of_other(room_id, "kick")


@client_route(bp, "/rooms/<room_id>/ban", ["POST"])
async def ban(room_id: str) -> Response:
    """POST /_matrix/client/v3/rooms/{roomId}/ban"""
    return await _membership_of_other(room_id, "ban")


@client_route(bp, "/rooms/<room_id>/unban", ["POST"])
async def unban(room_id: str) -> Response:
    """POST /_matrix/client/v3/rooms/{roomId}/unban"""
    return await _membership_of_other(room_id, "unban")


@client_route(bp, "/joined_rooms", ["GET"])
async def joined_rooms() -> Response:
    """GET /_matrix/client/v3/joined_rooms"""
    requester = await require_auth(allow_guest=True)
    rooms = await services().reader.joined_rooms(requester.user_id)
    return json_response({"joined_rooms": rooms})


# -- sending ----------------------------------------------------------------------------------


@client_route(bp, "/rooms/<room_id>/send/<event_type>/<txn_id>", ["PUT"])
@client_route(bp, "/rooms/<room_id>/send/<event_type>", ["POST"])
async def send_event(room_id: str, event_type: str, txn_id: str | None = None) -> Response:
    """PUT /_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}

    Also ``POST .../send/{eventType}`` without a transaction ID (the form before r0 that
    old clients and bots still use): every such request sends a new event.
    """
    requester = await require_auth(allow_guest=True)
    body = await json_body()
    svc = services()
    svc.ratelimiter.check("messages", requester.user_id)
    rid = _room_id(room_id)
    if event_type == "m.room.redaction":
        redacts = get_str(body, "redacts", required=True)
        assert redacts is not None
        persisted = await svc.rooms.redact(requester, rid, redacts, get_str(body, "reason"), txn_id)
    else:
        persisted = await svc.rooms.send_event(
            requester, rid, event_type, body, txn_id=txn_id, ts=_massaged_ts(requester)
        )
    return json_response({"event_id": persisted.record.event.event_id})


@client_route(bp, "/rooms/<room_id>/redact/<event_id>/<txn_id>", ["PUT"])
@client_route(bp, "/rooms/<room_id>/redact/<event_id>", ["POST"])
async def redact(room_id: str, event_id: str, txn_id: str | None = None) -> Response:
    """PUT /_matrix/client/v3/rooms/{roomId}/redact/{eventId}/{txnId}

    Also ``POST .../redact/{eventId}`` without a transaction ID (the older form, as for
    ``send``): every such request sends a new redaction.
    """
    requester = await require_auth()
    body = await json_body(allow_empty=True)
    svc = services()
    svc.ratelimiter.check("messages", requester.user_id)
    persisted = await svc.rooms.redact(requester, _room_id(room_id), event_id, _reason(body), txn_id)
    return json_response({"event_id": persisted.record.event.event_id})


@client_route(bp, "/rooms/<room_id>/state/<event_type>", ["PUT"])
@client_route(bp, "/rooms/<room_id>/state/<event_type>/<path:state_key>", ["PUT"])
async def put_state(room_id: str, event_type: str, state_key: str = "") -> Response:
    """PUT /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}"""
    requester = await require_auth(allow_guest=True)
    body = await json_body()
    svc = services()
    svc.ratelimiter.check("messages", requester.user_id)
    persisted = await svc.rooms.send_state(
        requester, _room_id(room_id), event_type, state_key, body, ts=_massaged_ts(requester)
    )
    return json_response({"event_id": persisted.record.event.event_id})


def _massaged_ts(requester: Requester) -> int | None:
    """Application service API, "Timestamp massaging": an AS may set the event's
    ``origin_server_ts`` with ``ts=`` on send and state; others' ``ts`` is ignored."""
    if requester.appservice is None:
        return None
    return query_int("ts", None, minimum=0)


# -- reading ----------------------------------------------------------------------------------


@client_route(bp, "/rooms/<room_id>/state/<event_type>", ["GET"])
@client_route(bp, "/rooms/<room_id>/state/<event_type>/<path:state_key>", ["GET"])
async def get_state_event(room_id: str, event_type: str, state_key: str = "") -> Response:
    """GET /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}"""
    requester = await require_auth(allow_guest=True)
    fmt = request.args.get("format", "content")
    if fmt not in ("content", "event"):
        raise InvalidParam("format must be content or event")
    event = await services().reader.state_event(requester, _room_id(room_id), event_type, state_key)
    if event is None:
        raise NotFound("Event not found")
    return json_response(event if fmt == "event" else event["content"])


@client_route(bp, "/rooms/<room_id>/state", ["GET"])
async def get_state(room_id: str) -> Response:
    """GET /_matrix/client/v3/rooms/{roomId}/state"""
    requester = await require_auth(allow_guest=True)
    events = await services().reader.room_state(requester, _room_id(room_id))
    return json_response(events)


@client_route(bp, "/rooms/<room_id>/event/<event_id>", ["GET"])
async def get_event(room_id: str, event_id: str) -> Response:
    """GET /_matrix/client/v3/rooms/{roomId}/event/{eventId}"""
    requester = await require_auth(allow_guest=True)
    event = await services().reader.event(requester, _room_id(room_id), event_id)
    return json_response(event)


@client_route(bp, "/rooms/<room_id>/members", ["GET"])
async def members(room_id: str) -> Response:
    """GET /_matrix/client/v3/rooms/{roomId}/members"""
    requester = await require_auth(allow_guest=True)
    membership = request.args.get("membership")
    not_membership = request.args.get("not_membership")
    at = request.args.get("at")
    chunk = await services().reader.members(
        requester, _room_id(room_id), at=at, membership=membership, not_membership=not_membership
    )
    return json_response({"chunk": chunk})


@client_route(bp, "/rooms/<room_id>/joined_members", ["GET"])
async def joined_members(room_id: str) -> Response:
    """GET /_matrix/client/v3/rooms/{roomId}/joined_members"""
    requester = await require_auth(allow_guest=True)
    joined = await services().reader.joined_members(requester, _room_id(room_id))
    return json_response({"joined": joined})


@client_route(bp, "/rooms/<room_id>/messages", ["GET"])
async def messages(room_id: str) -> Response:
    """GET /_matrix/client/v3/rooms/{roomId}/messages"""
    requester = await require_auth(allow_guest=True)
    direction = request.args.get("dir", "b")
    if direction not in ("b", "f"):
        raise InvalidParam("dir must be b or f")
    limit = query_int("limit", 10, minimum=0, maximum=1000)
    raw_filter = request.args.get("filter")
    out = await services().reader.messages(
        requester,
        _room_id(room_id),
        from_token=request.args.get("from"),
        to_token=request.args.get("to"),
        backwards=direction == "b",
        limit=limit or 0,
        raw_filter=raw_filter,
    )
    return json_response(out)


@client_route(bp, "/rooms/<room_id>/context/<event_id>", ["GET"])
async def context(room_id: str, event_id: str) -> Response:
    """GET /_matrix/client/v3/rooms/{roomId}/context/{eventId}"""
    requester = await require_auth(allow_guest=True)
    limit = query_int("limit", 10, minimum=0, maximum=100)
    out = await services().reader.context(
        requester, _room_id(room_id), event_id, limit or 0, request.args.get("filter")
    )
    return json_response(out)


@client_route(bp, "/rooms/<room_id>/timestamp_to_event", ["GET"], prefixes=("/_matrix/client/v1",))
async def timestamp_to_event(room_id: str) -> Response:
    """GET /_matrix/client/v1/rooms/{roomId}/timestamp_to_event"""
    requester = await require_auth(allow_guest=True)
    ts = query_int("ts")
    if ts is None:
        raise MatrixError(400, "M_MISSING_PARAM", "ts is required")
    direction = request.args.get("dir")
    if direction not in ("b", "f"):
        raise InvalidParam("dir must be b or f")
    out = await services().reader.timestamp_to_event(requester, _room_id(room_id), ts, direction == "f")
    return json_response(out)


# -- ephemeral ----------------------------------------------------------------------------------


@client_route(bp, "/rooms/<room_id>/typing/<user_id>", ["PUT"])
async def typing(room_id: str, user_id: str) -> Response:
    """PUT /_matrix/client/v3/rooms/{roomId}/typing/{userId}"""
    requester = await require_auth()
    body = await json_body()
    if user_id != requester.user_id:
        raise Forbidden("You may only set your own typing state")
    is_typing = get_bool(body, "typing")
    if "typing" not in body:
        raise BadJson("typing is required")
    timeout = body.get("timeout", 30000)
    if isinstance(timeout, bool) or not isinstance(timeout, int):
        raise BadJson("timeout must be an integer")
    svc = services()
    await svc.rooms.require_joined(requester, _room_id(room_id))
    await svc.typing.update(room_id, requester.user_id, is_typing, timeout)
    return json_response({})


@client_route(bp, "/rooms/<room_id>/receipt/<receipt_type>/<event_id>", ["POST"])
async def receipt(room_id: str, receipt_type: str, event_id: str) -> Response:
    """POST /_matrix/client/v3/rooms/{roomId}/receipt/{receiptType}/{eventId}"""
    requester = await require_auth()
    body = await json_body(allow_empty=True)
    thread_id = body.get("thread_id")
    if thread_id is not None and not isinstance(thread_id, str):
        raise BadJson("thread_id must be a string")
    await services().receipts.send_receipt(
        requester.user_id, _room_id(room_id), receipt_type, event_id, thread_id
    )
    return json_response({})


@client_route(bp, "/rooms/<room_id>/read_markers", ["POST"])
async def read_markers(room_id: str) -> Response:
    """POST /_matrix/client/v3/rooms/{roomId}/read_markers"""
    requester = await require_auth()
    body = await json_body()
    receipts = services().receipts
    rid = _room_id(room_id)
    for key, rtype in (("m.fully_read", "m.fully_read"), ("m.read", "m.read"), ("m.read.private", "m.read.private")):
        eid = get_str(body, key)
        if eid is not None:
            await receipts.send_receipt(requester.user_id, rid, rtype, eid, None)
    return json_response({})


# -- aliases and directory ------------------------------------------------------------------------


@client_route(bp, "/directory/room/<room_alias>", ["GET"])
async def get_alias(room_alias: str) -> Response:
    """GET /_matrix/client/v3/directory/room/{roomAlias}"""
    room_id, servers = await services().rooms.get_alias(room_alias)
    return json_response({"room_id": room_id, "servers": servers})


@client_route(bp, "/directory/room/<room_alias>", ["PUT"])
async def put_alias(room_alias: str) -> Response:
    """PUT /_matrix/client/v3/directory/room/{roomAlias}"""
    requester = await require_auth()
    body = await json_body()
    room_id = get_str(body, "room_id", required=True)
    assert room_id is not None
    await services().rooms.create_alias(requester, room_alias, room_id)
    return json_response({})


@client_route(bp, "/directory/room/<room_alias>", ["DELETE"])
async def delete_alias(room_alias: str) -> Response:
    """DELETE /_matrix/client/v3/directory/room/{roomAlias}"""
    requester = await require_auth()
    await services().rooms.delete_alias(requester, room_alias)
    return json_response({})


@client_route(bp, "/rooms/<room_id>/aliases", ["GET"])
async def room_aliases(room_id: str) -> Response:
    """GET /_matrix/client/v3/rooms/{roomId}/aliases"""
    requester = await require_auth()
    aliases = await services().reader.room_aliases(requester, _room_id(room_id))
    return json_response({"aliases": aliases})


@client_route(bp, "/directory/list/room/<room_id>", ["GET"])
async def get_visibility(room_id: str) -> Response:
    """GET /_matrix/client/v3/directory/list/room/{roomId}"""
    public = await services().reader.room_is_public(_room_id(room_id))
    return json_response({"visibility": "public" if public else "private"})


@client_route(bp, "/directory/list/room/<room_id>", ["PUT"])
async def set_visibility(room_id: str) -> Response:
    """PUT /_matrix/client/v3/directory/list/room/{roomId}"""
    requester = await require_auth()
    body = await json_body()
    visibility = get_str(body, "visibility", default="public")
    if visibility not in ("public", "private"):
        raise BadJson("visibility must be public or private")
    await services().reader.set_room_public(requester, _room_id(room_id), visibility == "public")
    return json_response({})


@client_route(bp, "/publicRooms", ["GET", "POST"])
async def public_rooms() -> Response:
    """GET|POST /_matrix/client/v3/publicRooms"""
    if request.method == "POST":
        await require_auth()
        body = await json_body(allow_empty=True)
        limit = body.get("limit")
        since = get_str(body, "since")
        flt = body.get("filter") or {}
        if not isinstance(flt, dict):
            raise BadJson("filter must be an object")
        term = flt.get("generic_search_term")
        if term is not None and not isinstance(term, str):
            raise BadJson("generic_search_term must be a string")
        server = request.args.get("server")
        all_networks = body.get("include_all_networks", False)
        if not isinstance(all_networks, bool):
            raise BadJson("include_all_networks must be a boolean")
        instance_id = get_str(body, "third_party_instance_id")
    else:
        limit = query_int("limit", None, minimum=0)
        since = request.args.get("since")
        term = None
        server = request.args.get("server")
        all_networks = query_bool("include_all_networks")
        instance_id = request.args.get("third_party_instance_id")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise BadJson("limit must be a non-negative integer")
    svc = services()
    if server is not None and server != svc.config.server_name:
        if not is_valid_server_name(server):
            raise InvalidParam("server is not a server name")
        if request.method == "POST":
            fed_body: dict[str, Any] = {k: body[k] for k in ("limit", "since", "filter", "include_all_networks",
                                                             "third_party_instance_id") if k in body}
            return json_response(await svc.rooms.remote_public_rooms(server, {}, fed_body))
        query = {k: str(v) for k, v in (("limit", limit), ("since", since)) if v is not None}
        return json_response(await svc.rooms.remote_public_rooms(server, query, None))
    instance: tuple[str, str] | None = None
    if instance_id is not None:
        as_id, sep, network_id = instance_id.partition("|")
        if not sep:
            raise InvalidParam("third_party_instance_id is not an instance of a network")
        instance = (as_id, network_id)
    out = await svc.reader.public_rooms(
        limit=limit, since=since, search=term, instance=instance, include_all_networks=all_networks
    )
    return json_response(out)


@client_route(bp, "/rooms/<room_id>/report/<event_id>", ["POST"])
async def report_event(room_id: str, event_id: str) -> Response:
    """POST /_matrix/client/v3/rooms/{roomId}/report/{eventId}"""
    requester = await require_auth()
    body = await json_body(allow_empty=True)
    score = get_int(body, "score")
    await services().reader.report(requester, _room_id(room_id), event_id, _reason(body), score)
    return json_response({})


@client_route(bp, "/rooms/<room_id>/report", ["POST"])
async def report_room(room_id: str) -> Response:
    """POST /_matrix/client/v3/rooms/{roomId}/report"""
    requester = await require_auth()
    body = await json_body(allow_empty=True)
    await services().reader.report(requester, _room_id(room_id), None, _reason(body), None)
    return json_response({})
