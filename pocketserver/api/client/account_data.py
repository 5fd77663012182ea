"""Account data, room tags and filters (account-data.yaml, tags.yaml, filter.yaml)."""

from __future__ import annotations

from quart import Blueprint, Response

from pocketserver.api.client.account import client_route
from pocketserver.api.common import json_body, json_response, require_auth, services
from pocketserver.errors import InvalidParam
from pocketserver.protocol.identifiers import is_valid_room_id
from pocketserver.storage.account_data import GLOBAL

bp = Blueprint("client_account_data", __name__)


def _check_room(room_id: str) -> str:
    if not is_valid_room_id(room_id):
        raise InvalidParam(f"{room_id!r} is not a valid room ID")
    return room_id


@client_route(bp, "/user/<user_id>/account_data/<data_type>", ["PUT"])
async def put_global(user_id: str, data_type: str) -> Response:
    """PUT /_matrix/client/v3/user/{userId}/account_data/{type}"""
    requester = await require_auth(allow_guest=True)
    body = await json_body()
    await services().accounts.put_account_data(requester, user_id, GLOBAL, data_type, body)
    return json_response({})


@client_route(bp, "/user/<user_id>/account_data/<data_type>", ["GET"])
async def get_global(user_id: str, data_type: str) -> Response:
    """GET /_matrix/client/v3/user/{userId}/account_data/{type}"""
    requester = await require_auth(allow_guest=True)
    return json_response(
        await services().accounts.get_account_data(requester, user_id, GLOBAL, data_type)
    )


@client_route(bp, "/user/<user_id>/rooms/<room_id>/account_data/<data_type>", ["PUT"])
async def put_room(user_id: str, room_id: str, data_type: str) -> Response:
    """PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}"""
    requester = await require_auth(allow_guest=True)
    _check_room(room_id)
    body = await json_body()
    await services().accounts.put_account_data(requester, user_id, room_id, data_type, body)
    return json_response({})


@client_route(bp, "/user/<user_id>/rooms/<room_id>/account_data/<data_type>", ["GET"])
async def get_room(user_id: str, room_id: str, data_type: str) -> Response:
    """GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}"""
    requester = await require_auth(allow_guest=True)
    _check_room(room_id)
    return json_response(
        await services().accounts.get_account_data(requester, user_id, room_id, data_type)
    )


@client_route(bp, "/user/<user_id>/rooms/<room_id>/tags", ["GET"])
async def get_tags(user_id: str, room_id: str) -> Response:
    """GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags"""
    requester = await require_auth(allow_guest=True)
    _check_room(room_id)
    return json_response({"tags": await services().accounts.get_tags(requester, user_id, room_id)})


@client_route(bp, "/user/<user_id>/rooms/<room_id>/tags/<tag>", ["PUT"])
async def put_tag(user_id: str, room_id: str, tag: str) -> Response:
    """PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}"""
    requester = await require_auth(allow_guest=True)
    _check_room(room_id)
    body = await json_body()
    await services().accounts.set_tag(requester, user_id, room_id, tag, body)
    return json_response({})


@client_route(bp, "/user/<user_id>/rooms/<room_id>/tags/<tag>", ["DELETE"])
async def delete_tag(user_id: str, room_id: str, tag: str) -> Response:
    """DELETE /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}"""
    requester = await require_auth(allow_guest=True)
    _check_room(room_id)
    await services().accounts.delete_tag(requester, user_id, room_id, tag)
    return json_response({})


@client_route(bp, "/user/<user_id>/filter", ["POST"])
async def create_filter(user_id: str) -> Response:
    """POST /_matrix/client/v3/user/{userId}/filter"""
    requester = await require_auth(allow_guest=True)
    body = await json_body()
    filter_id = await services().accounts.create_filter(requester, user_id, body)
    return json_response({"filter_id": filter_id})


@client_route(bp, "/user/<user_id>/filter/<filter_id>", ["GET"])
async def get_filter(user_id: str, filter_id: str) -> Response:
    """GET /_matrix/client/v3/user/{userId}/filter/{filterId}"""
    requester = await require_auth(allow_guest=True)
    return json_response(await services().accounts.get_filter(requester, user_id, filter_id))
