"""The server's published signing keys (server-server API, "Publishing Keys")."""

from __future__ import annotations

from quart import Blueprint, Response

from pocketserver.api.common import json_response, services
from pocketserver.protocol.signing import sign_json

bp = Blueprint("federation_keys", __name__)

# How long other servers may cache our key response.
KEY_VALIDITY_MS = 7 * 24 * 3600 * 1000


@bp.route("/_matrix/key/v2/server", methods=["GET"])
@bp.route("/_matrix/key/v2/server/<key_id>", methods=["GET"])
async def server_keys(key_id: str | None = None) -> Response:
    """GET /_matrix/key/v2/server"""
    svc = services()
    key = svc.signing_key
    body = {
        "server_name": svc.config.server_name,
        "verify_keys": {key.key_id: {"key": key.verify_key_base64}},
        "old_verify_keys": {},
        "valid_until_ts": svc.clock.time_ms() + KEY_VALIDITY_MS,
    }
    return json_response(sign_json(body, svc.config.server_name, key))
