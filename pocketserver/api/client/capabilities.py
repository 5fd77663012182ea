"""GET /capabilities (capabilities.yaml; client-server-api "Capabilities negotiation")."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response

from pocketserver.api.client.account import client_route
from pocketserver.api.common import json_response, require_auth, services
from pocketserver.protocol.room_versions import DEFAULT_ROOM_VERSION, KNOWN_ROOM_VERSIONS

bp = Blueprint("client_capabilities", __name__)


def capabilities(*, is_admin: bool = False, threepid_changes: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "m.change_password": {"enabled": True},
        "m.room_versions": {
            "default": DEFAULT_ROOM_VERSION,
            "available": {v: "stable" for v in KNOWN_ROOM_VERSIONS},
        },
        "m.set_displayname": {"enabled": True},
        "m.set_avatar_url": {"enabled": True},
        # E-mail addresses can be added and removed where the server can send mail.
        "m.3pid_changes": {"enabled": threepid_changes},
        "m.get_login_token": {"enabled": False},
        "m.profile_fields": {"enabled": True},
    }
    if is_admin:
        # v1.18: present only for those who may use /admin/lock and /admin/suspend.
        out["m.account_moderation"] = {"suspend": True, "lock": True}
    return out


@client_route(bp, "/capabilities", ["GET"])
async def get_capabilities() -> Response:
    """GET /_matrix/client/v3/capabilities"""
    requester = await require_auth(allow_guest=True)
    caps = capabilities(
        is_admin=requester.is_admin, threepid_changes=services().threepids.email_enabled
    )
    return json_response({"capabilities": caps})
