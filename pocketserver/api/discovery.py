"""Discovery: spec versions and .well-known delegation."""

from __future__ import annotations

from quart import Blueprint, Response

from pocketserver.api.common import json_response, services

bp = Blueprint("discovery", __name__)

# Versions of the client-server spec this server implements. Clients (Element) turn
# features on by these, so a version is listed only when its server-side client-server
# features are served (OAuth 2.0 login, application services, third-party identifiers
# and federation aside: see README "Not yet").
SPEC_VERSIONS = [
    "r0.0.1", "r0.1.0", "r0.2.0", "r0.3.0", "r0.4.0", "r0.5.0", "r0.6.0", "r0.6.1",
    "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10",
    "v1.11", "v1.12",
    # v1.13: room reports (api/client/rooms.py), M_USER_SUSPENDED (services/auth.py Requester), oldest one-time key claimed first (storage/e2e_keys.py)
    "v1.13",
    # v1.14: user reports (api/client/account.py, storage user_reports), room initialSync for peeking (services/room_reader.py)
    "v1.14",
    # v1.15: /room_summary and /hierarchy's allowed_room_ids, encryption, room_version (services/hierarchy.py); /auth_metadata 404 M_UNRECOGNIZED (no OAuth API)
    "v1.15",
    # v1.16: use_state_after (services/sync.py), room v12 and additional_creators (protocol/room_versions.py, services/upgrade.py), profile fields and m.profile_fields (services/accounts.py), GET state ?format=event, m.room.create in invite/knock stripped state
    "v1.16",
    # v1.17: nothing server-side outside application services and OAuth
    "v1.17",
    # v1.18: /admin/lock and /admin/suspend with m.account_moderation (services/accounts.py), invite blocking (services/invite_permission.py), redactions through /send (api/client/rooms.py)
    "v1.18",
    # v1.19: /mutual_rooms (services/user_directory.py), unsigned.replaces_state (services/client_events.py)
    "v1.19",
]  # fmt: skip


@bp.route("/_matrix/client/versions", methods=["GET"])
async def versions() -> Response:
    """GET /_matrix/client/versions"""
    return json_response({"versions": SPEC_VERSIONS, "unstable_features": {"org.matrix.simplified_msc3575": True}})


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
