"""GET /_matrix/federation/v1/version (server-server version.yaml): no signature needed."""

from __future__ import annotations

from quart import Blueprint, Response

from pocketserver import __version__
from pocketserver.api.common import json_response

bp = Blueprint("federation_version", __name__)


@bp.route("/_matrix/federation/v1/version", methods=["GET"])
async def version() -> Response:
    """GET /_matrix/federation/v1/version"""
    return json_response({"server": {"name": "pocketserver", "version": __version__}})
