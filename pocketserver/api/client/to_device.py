"""Send-to-device messaging over HTTP: PUT /sendToDevice/{eventType}/{txnId}.

Delivery is through /sync (services/e2ee.py ``to_device_for_sync``).
"""

from __future__ import annotations

from quart import Blueprint, Response

from pocketserver.api.common import json_body, json_response, require_auth, services
from pocketserver.errors import MissingParam

bp = Blueprint("client_to_device", __name__)


async def send_to_device(event_type: str, txn_id: str) -> Response:
    """PUT /_matrix/client/v3/sendToDevice/{eventType}/{txnId}"""
    req = await require_auth(allow_guest=True)
    body = await json_body()
    if "messages" not in body:
        raise MissingParam("Missing 'messages'")
    await services().e2ee.send_to_device(
        req.user_id, req.device_id or "", event_type, txn_id, body["messages"]
    )
    return json_response({})


for _i, _prefix in enumerate(("/_matrix/client/v3",)):
    bp.add_url_rule(
        _prefix + "/sendToDevice/<event_type>/<txn_id>",
        endpoint=f"send_to_device_{_i}",
        view_func=send_to_device,
        methods=["PUT"],
    )
