"""Third-party invites across servers (server-server third_party_invite.yaml): thin
over :class:`~pocketserver.services.third_party_invites.ThirdPartyInviteService`.

``/3pid/onbind`` is called by identity servers, not by homeservers: no request
signature (what it carries is signed by the identity server, and those signatures are
checked against the room's keys before any invite is issued). It is served on every
listener, since identity servers reach a homeserver where its clients do; ``POST`` is
accepted beside the spec's ``PUT`` (older identity servers, SyTest's, post it).
"""

from __future__ import annotations

from quart import Blueprint, Response

from pocketserver.api.common import json_body, json_response, services
from pocketserver.api.federation.auth import authenticated_origin, check_server_acl

bp = Blueprint("federation_third_party_invites", __name__)

ONBIND_PATH = "/_matrix/federation/v1/3pid/onbind"


@bp.route(ONBIND_PATH, methods=["PUT", "POST"])
async def onbind() -> Response:
    """PUT /_matrix/federation/v1/3pid/onbind"""
    body = await json_body()
    await services().third_party_invites.on_bind(body)
    return json_response({})


@bp.route("/_matrix/federation/v1/exchange_third_party_invite/<room_id>", methods=["PUT"])
async def exchange_third_party_invite(room_id: str) -> Response:
    """PUT /_matrix/federation/v1/exchange_third_party_invite/{roomId}"""
    origin = await authenticated_origin()
    await check_server_acl(room_id, origin)
    body = await json_body()
    await services().third_party_invites.on_exchange(origin, room_id, body)
    return json_response({})
