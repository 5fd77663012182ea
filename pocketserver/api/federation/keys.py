"""The server's signing keys, and the notary (server-server keys_server.yaml, keys_query.yaml).

``GET /_matrix/key/v2/server`` publishes our key; ``/_matrix/key/v2/query`` answers
for any server's keys (ours, or others' fetched and kept by the key ring), each
response signed by its server and by us. Neither needs a signed request.
"""

from __future__ import annotations

from typing import Any

import trio
from quart import Blueprint, Response

from pocketserver.api.common import json_body, json_response, query_int, services
from pocketserver.errors import BadJson, InvalidParam
from pocketserver.protocol.identifiers import is_valid_server_name

bp = Blueprint("federation_keys", __name__)

# At most this many servers in one notary query (each may cost a fetch).
MAX_QUERIED_SERVERS = 100
CONCURRENT_FETCHES = 8


@bp.route("/_matrix/key/v2/server", methods=["GET"])
@bp.route("/_matrix/key/v2/server/<key_id>", methods=["GET"])
async def server_keys(key_id: str | None = None) -> Response:
    """GET /_matrix/key/v2/server"""
    return json_response(services().keyring.own_key_response())


@bp.route("/_matrix/key/v2/query/<server_name>", methods=["GET"])
@bp.route("/_matrix/key/v2/query/<server_name>/<key_id>", methods=["GET"])
async def query_one(server_name: str, key_id: str | None = None) -> Response:
    """GET /_matrix/key/v2/query/{serverName} (and the form with a key ID that older
    servers send, which the spec dropped: all the server's keys answer it too)"""
    svc = services()
    if not is_valid_server_name(server_name):
        raise InvalidParam("Not a server name")
    minimum = query_int("minimum_valid_until_ts", svc.clock.time_ms(), minimum=0)
    assert minimum is not None
    key_ids = [key_id] if key_id else []
    return json_response({"server_keys": await svc.keyring.notary_responses(server_name, minimum, key_ids)})


@bp.route("/_matrix/key/v2/query", methods=["POST"])
async def query_many() -> Response:
    """POST /_matrix/key/v2/query"""
    svc = services()
    body = await json_body()
    criteria = body.get("server_keys")
    if not isinstance(criteria, dict):
        raise BadJson("'server_keys' must be an object")
    if len(criteria) > MAX_QUERIED_SERVERS:
        raise InvalidParam(f"At most {MAX_QUERIED_SERVERS} servers per query")
    now = svc.clock.time_ms()
    wanted: list[tuple[str, int, list[str]]] = []
    for server_name, key_criteria in criteria.items():
        if not isinstance(key_criteria, dict):
            raise BadJson(f"server_keys.{server_name} must be an object")
        # The latest time any of the keys asked about must be valid at (now if none says).
        asked: list[int] = []
        for key_id, c in key_criteria.items():
            if not isinstance(c, dict):
                raise BadJson(f"server_keys.{server_name}.{key_id} must be an object")
            ts = c.get("minimum_valid_until_ts")
            if ts is not None:
                if not isinstance(ts, int) or isinstance(ts, bool):
                    raise BadJson("minimum_valid_until_ts must be an integer")
                asked.append(ts)
        minimum = max(asked) if asked else now
        if is_valid_server_name(server_name):
            wanted.append((server_name, minimum, list(key_criteria)[:MAX_QUERIED_SERVERS]))
    # Asked of the servers a few at a time: one that does not answer holds up only its slot.
    results: dict[int, list[dict[str, Any]]] = {}
    limiter = trio.CapacityLimiter(CONCURRENT_FETCHES)

    async def one(i: int, server_name: str, minimum: int, key_ids: list[str]) -> None:
        async with limiter:
            results[i] = await svc.keyring.notary_responses(server_name, minimum, key_ids)

    async with trio.open_nursery() as nursery:
        for i, (server_name, minimum, key_ids) in enumerate(wanted):
            nursery.start_soon(one, i, server_name, minimum, key_ids)
    out = [r for i in range(len(wanted)) for r in results.get(i, [])]
    return json_response({"server_keys": out})
