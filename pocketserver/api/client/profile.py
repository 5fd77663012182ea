"""Profiles: GET /profile/{userId}, GET/PUT/DELETE /profile/{userId}/{keyName}.

Reading a profile needs no access token (profile.yaml gives the GETs no security
requirement: clients show names and avatars of users before logging in); a token that
is sent is still checked.
A user of another server's profile is asked of that server (federation query).
A change to ``displayname`` or ``avatar_url`` is propagated into the user's rooms by the
hooks the rooms service registers on the accounts service.
"""

from __future__ import annotations

from quart import Blueprint, Response

from pocketserver.api.client.account import client_route
from pocketserver.api.common import json_body, json_response, optional_auth, require_auth, services
from pocketserver.protocol.identifiers import InvalidIdentifier, UserID

bp = Blueprint("client_profile", __name__)


def _is_remote(user_id: str) -> bool:
    """A well-formed user ID of another server (its profile is asked over federation)."""
    try:
        return UserID.parse(user_id).domain != services().config.server_name
    except InvalidIdentifier:
        return False


@client_route(bp, "/profile/<user_id>", ["GET"])
async def get_profile(user_id: str) -> Response:
    """GET /_matrix/client/v3/profile/{userId}"""
    await optional_auth()
    svc = services()
    if _is_remote(user_id):
        return json_response(await svc.remote_profiles.get_profile(user_id))
    return json_response(await svc.accounts.get_profile(user_id))


@client_route(bp, "/profile/<user_id>/<key>", ["GET"])
async def get_profile_field(user_id: str, key: str) -> Response:
    """GET /_matrix/client/v3/profile/{userId}/{keyName}"""
    await optional_auth()
    svc = services()
    if _is_remote(user_id):
        return json_response(await svc.remote_profiles.get_profile_field(user_id, key))
    return json_response(await svc.accounts.get_profile_field(user_id, key))


@client_route(bp, "/profile/<user_id>/<key>", ["PUT"])
async def set_profile_field(user_id: str, key: str) -> Response:
    """PUT /_matrix/client/v3/profile/{userId}/{keyName}"""
    requester = await require_auth(allow_guest=True)
    body = await json_body()
    await services().accounts.set_profile_field(requester, user_id, key, body)
    return json_response({})


@client_route(bp, "/profile/<user_id>/<key>", ["DELETE"])
async def delete_profile_field(user_id: str, key: str) -> Response:
    """DELETE /_matrix/client/v3/profile/{userId}/{keyName}"""
    requester = await require_auth(allow_guest=True)
    await services().accounts.delete_profile_field(requester, user_id, key)
    return json_response({})
