"""Discovery: spec versions and .well-known delegation."""

from __future__ import annotations

from quart import Blueprint, Response

from pocketserver.api.common import json_response, services

bp = Blueprint("discovery", __name__)

# Versions of the client-server spec this server implements.
SPEC_VERSIONS = [
    "r0.0.1", "r0.1.0", "r0.2.0", "r0.3.0", "r0.4.0", "r0.5.0", "r0.6.0", "r0.6.1",
    "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10",
    "v1.11", "v1.12",
]  # fmt: skip


@bp.route("/_matrix/client/versions", methods=["GET"])
async def versions() -> Response:
    """GET /_matrix/client/versions"""
    return json_response({"versions": SPEC_VERSIONS, "unstable_features": {}})


@bp.route("/.well-known/matrix/client", methods=["GET"])
async def well_known_client() -> Response:
    """GET /.well-known/matrix/client"""
    cfg = services().config
    base = cfg.well_known.client_base_url or cfg.base_url
    return json_response({"m.homeserver": {"base_url": base}})


@bp.route("/.well-known/matrix/server", methods=["GET"])
async def well_known_server() -> Response:
    """GET /.well-known/matrix/server (only when delegation is configured)"""
    cfg = services().config
    if not cfg.well_known.server:
        return json_response({"errcode": "M_NOT_FOUND", "error": "No delegation configured"}, 404)
    return json_response({"m.server": cfg.well_known.server})
