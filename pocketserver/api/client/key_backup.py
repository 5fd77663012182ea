"""Server-side key backups over HTTP: /room_keys/version[/{version}] and
/room_keys/keys[/{roomId}[/{sessionId}]].

Thin: parse, call :class:`~pocketserver.services.key_backup.KeyBackupService`, answer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from quart import Blueprint, Response, request

from pocketserver.api.common import json_body, json_response, require_auth, services

bp = Blueprint("client_key_backup", __name__)

PREFIXES = ("/_matrix/client/v3", "/_matrix/client/unstable")


def client_route(path: str, methods: list[str]) -> Callable[[Any], Any]:
    def deco(fn: Any) -> Any:
        for i, prefix in enumerate(PREFIXES):
            bp.add_url_rule(
                prefix + path, endpoint=f"{fn.__name__}_{i}", view_func=fn, methods=methods
            )
        return fn

    return deco


@client_route("/room_keys/version", ["POST"])
async def create_version() -> Response:
    """POST /_matrix/client/v3/room_keys/version"""
    req = await require_auth()
    body = await json_body()
    version = await services().key_backup.create_version(req.user_id, body)
    return json_response({"version": version})


@client_route("/room_keys/version", ["GET"])
async def get_current_version() -> Response:
    """GET /_matrix/client/v3/room_keys/version"""
    req = await require_auth()
    return json_response(await services().key_backup.get_version(req.user_id, None))


@client_route("/room_keys/version/<version>", ["GET"])
async def get_version(version: str) -> Response:
    """GET /_matrix/client/v3/room_keys/version/{version}"""
    req = await require_auth()
    return json_response(await services().key_backup.get_version(req.user_id, version))


@client_route("/room_keys/version/<version>", ["PUT"])
async def update_version(version: str) -> Response:
    """PUT /_matrix/client/v3/room_keys/version/{version}"""
    req = await require_auth()
    body = await json_body()
    await services().key_backup.update_version(req.user_id, version, body)
    return json_response({})


@client_route("/room_keys/version/<version>", ["DELETE"])
async def delete_version(version: str) -> Response:
    """DELETE /_matrix/client/v3/room_keys/version/{version}"""
    req = await require_auth()
    await services().key_backup.delete_version(req.user_id, version)
    return json_response({})


@client_route("/room_keys/keys", ["PUT"])
async def put_all_keys() -> Response:
    """PUT /_matrix/client/v3/room_keys/keys?version="""
    req = await require_auth()
    body = await json_body()
    out = await services().key_backup.put_keys(
        req.user_id, request.args.get("version"), body.get("rooms")
    )
    return json_response(out)


@client_route("/room_keys/keys/<room_id>", ["PUT"])
async def put_room_keys(room_id: str) -> Response:
    """PUT /_matrix/client/v3/room_keys/keys/{roomId}?version="""
    req = await require_auth()
    body = await json_body()
    out = await services().key_backup.put_keys(
        req.user_id, request.args.get("version"), {room_id: body}
    )
    return json_response(out)


@client_route("/room_keys/keys/<room_id>/<session_id>", ["PUT"])
async def put_session_key(room_id: str, session_id: str) -> Response:
    """PUT /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}?version="""
    req = await require_auth()
    body = await json_body()
    out = await services().key_backup.put_keys(
        req.user_id, request.args.get("version"), {room_id: {"sessions": {session_id: body}}}
    )
    return json_response(out)


@client_route("/room_keys/keys", ["GET"])
async def get_all_keys() -> Response:
    """GET /_matrix/client/v3/room_keys/keys?version="""
    req = await require_auth()
    kb = services().key_backup
    return json_response(await kb.get_keys(req.user_id, request.args.get("version")))


@client_route("/room_keys/keys/<room_id>", ["GET"])
async def get_room_keys(room_id: str) -> Response:
    """GET /_matrix/client/v3/room_keys/keys/{roomId}?version="""
    req = await require_auth()
    kb = services().key_backup
    return json_response(await kb.get_keys(req.user_id, request.args.get("version"), room_id))


@client_route("/room_keys/keys/<room_id>/<session_id>", ["GET"])
async def get_session_key(room_id: str, session_id: str) -> Response:
    """GET /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}?version="""
    req = await require_auth()
    out = await services().key_backup.get_keys(
        req.user_id, request.args.get("version"), room_id, session_id
    )
    return json_response(out)


@client_route("/room_keys/keys", ["DELETE"])
async def delete_all_keys() -> Response:
    """DELETE /_matrix/client/v3/room_keys/keys?version="""
    req = await require_auth()
    kb = services().key_backup
    return json_response(await kb.delete_keys(req.user_id, request.args.get("version")))


@client_route("/room_keys/keys/<room_id>", ["DELETE"])
async def delete_room_keys(room_id: str) -> Response:
    """DELETE /_matrix/client/v3/room_keys/keys/{roomId}?version="""
    req = await require_auth()
    kb = services().key_backup
    out = await kb.delete_keys(req.user_id, request.args.get("version"), room_id)
    return json_response(out)


@client_route("/room_keys/keys/<room_id>/<session_id>", ["DELETE"])
async def delete_session_key(room_id: str, session_id: str) -> Response:
    """DELETE /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}?version="""
    req = await require_auth()
    out = await services().key_backup.delete_keys(
        req.user_id, request.args.get("version"), room_id, session_id
    )
    return json_response(out)
