"""Inbound transactions (server-server transactions.yaml): PDUs and EDUs from another server."""

from __future__ import annotations

from quart import Blueprint, Response

from pocketserver.api.common import json_body, json_response
from pocketserver.api.federation.auth import authenticated_origin, room_federation

bp = Blueprint("federation_transactions", __name__)


@bp.route("/_matrix/federation/v1/send/<txn_id>", methods=["PUT"])
async def send_transaction(txn_id: str) -> Response:
    """PUT /_matrix/federation/v1/send/{txnId}

    Server ACLs are applied per PDU and per room-local EDU by the transaction handler."""
    origin = await authenticated_origin()
    body = await json_body()
    return json_response(await room_federation().transactions.on_transaction(origin, txn_id, body))
