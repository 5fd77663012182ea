"""The client API's application service extensions (application-service-api.md,
"Client-Server API Extensions"): ``/appservice/{appserviceId}/ping`` and the
application services' published room directories. Only an AS's ``as_token`` may call
them. Thin: parse, call :class:`~pocketserver.services.appservices.AppserviceService`.
"""

from __future__ import annotations

from quart import Blueprint, Response

from pocketserver.api.client.routing import client_route
from pocketserver.api.common import (
    get_choice,
    get_str,
    json_body,
    json_response,
    require_auth,
    services,
)
from pocketserver.errors import Forbidden, InvalidParam, MissingParam
from pocketserver.protocol.appservice import Registration
from pocketserver.protocol.identifiers import is_valid_room_id
from pocketserver.services.auth import Requester

bp = Blueprint("client_appservice", __name__)


def _appservice(requester: Requester) -> Registration:
    if requester.appservice is None:
        raise Forbidden("Only application services may use this endpoint")
    return requester.appservice


@client_route(bp, "/appservice/<appservice_id>/ping", ["POST"], ("/_matrix/client/v1",))
async def ping(appservice_id: str) -> Response:
    """POST /_matrix/client/v1/appservice/{appserviceId}/ping"""
    reg = _appservice(await require_auth())
    body = await json_body(allow_empty=True)
    txn_id = get_str(body, "transaction_id")
    if reg.id != appservice_id:
        raise Forbidden("This is not your application service")
    duration = await services().appservices.ping(reg, txn_id)
    return json_response({"duration_ms": duration})


@client_route(bp, "/directory/list/appservice/<network_id>/<room_id>", ["PUT"])
async def publish(network_id: str, room_id: str) -> Response:
    """PUT /_matrix/client/v3/directory/list/appservice/{networkId}/{roomId}"""
    reg = _appservice(await require_auth())
    _check_room_id(room_id)
    body = await json_body()
    visibility = get_choice(body, "visibility", ("public", "private"))
    if visibility is None:
        raise MissingParam("Missing 'visibility'")
    await services().appservices.publish_room(reg, network_id, room_id, visibility == "public")
    return json_response({})


@client_route(bp, "/directory/list/appservice/<network_id>/<room_id>", ["DELETE"])
async def unpublish(network_id: str, room_id: str) -> Response:
    """DELETE /_matrix/client/v3/directory/list/appservice/{networkId}/{roomId}

    Not in the spec (PUT with ``private`` does it); Synapse serves it and SyTest uses it."""
    reg = _appservice(await require_auth())
    _check_room_id(room_id)
    await services().appservices.publish_room(reg, network_id, room_id, False)
    return json_response({})


def _check_room_id(room_id: str) -> None:
    if not is_valid_room_id(room_id):
        raise InvalidParam("Invalid room ID")
