"""Push rules, pushers and notifications (pushrules.yaml, pusher.yaml, notifications.yaml)."""

from __future__ import annotations

from quart import Blueprint, Response, request

from pocketserver.api.client.account import client_route
from pocketserver.api.common import json_body, json_response, query_int, require_auth, services
from pocketserver.errors import InvalidParam, MissingParam, Unrecognized
from pocketserver.protocol.push_rules import KINDS

bp = Blueprint("client_push", __name__)

DEFAULT_NOTIFICATIONS_LIMIT = 20
MAX_NOTIFICATIONS_LIMIT = 100


@client_route(bp, "/pushrules/", ["GET", "PUT", "DELETE"])
async def pushrules_root() -> Response:
    """GET /_matrix/client/v3/pushrules/"""
    requester = await require_auth()
    if not request.path.endswith("/"):
        # The spec's path is ``/pushrules/``; without the slash it is no endpoint.
        raise Unrecognized()
    if request.method != "GET":
        raise MissingParam("The push rule scope is missing from the path")
    ruleset = await services().push.get_ruleset(requester.user_id)
    return json_response({"global": ruleset.to_json()})


@client_route(bp, "/pushrules/<path:rest>", ["GET", "PUT", "DELETE"])
async def pushrules_path(rest: str) -> Response:
    """GET /_matrix/client/v3/pushrules/global/
    GET, PUT, DELETE /_matrix/client/v3/pushrules/global/{kind}/{ruleId}
    GET, PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/enabled
    GET, PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/actions

    One parser for every path under ``/pushrules/``, so that a missing or unknown part
    (scope, kind, rule ID, attribute) is a 400 naming it rather than an unknown
    endpoint. ``GET /pushrules/global/{kind}/`` (the rules of one kind, as a list) is
    not in the spec; other servers serve it and SyTest reads it.
    """
    requester = await require_auth()
    user_id = requester.user_id
    push = services().push
    method = request.method
    parts = rest.split("/")
    if parts[0] != "global":
        raise InvalidParam(f"Unknown push rule scope {parts[0]!r}: the only scope is 'global'")
    if len(parts) == 1:
        raise MissingParam("The push rule kind is missing from the path")
    kind = parts[1]
    if kind == "" and len(parts) == 2:
        if method != "GET":
            raise MissingParam("The push rule kind is missing from the path")
        ruleset = await push.get_ruleset(user_id)
        return json_response(ruleset.to_json())
    if kind not in KINDS:
        raise InvalidParam(f"Unknown push rule kind {kind!r}")
    if len(parts) == 2 or (parts[2] == "" and (len(parts) > 3 or method != "GET")):
        raise MissingParam("The push rule ID is missing from the path")
    rule_id = parts[2]
    if rule_id == "" and len(parts) == 3:
        ruleset = await push.get_ruleset(user_id)
        return json_response([r.to_json() for r in ruleset.by_kind[kind]])
    if len(parts) == 3:
        return await _rule(user_id, kind, rule_id)
    if len(parts) > 4:
        raise InvalidParam("Push rule IDs may not contain slashes")
    attr = parts[3]
    if attr == "enabled":
        return await _rule_enabled(user_id, kind, rule_id)
    if attr == "actions":
        return await _rule_actions(user_id, kind, rule_id)
    raise InvalidParam(f"Unknown push rule attribute {attr!r}: 'enabled' or 'actions'")


async def _rule(user_id: str, kind: str, rule_id: str) -> Response:
    push = services().push
    if request.method == "GET":
        rule = await push.get_rule(user_id, kind, rule_id)
        return json_response(rule.to_json())
    if request.method == "DELETE":
        await push.delete_rule(user_id, kind, rule_id)
        return json_response({})
    body = await json_body()
    await push.put_rule(
        user_id, kind, rule_id, body, request.args.get("before") or None, request.args.get("after") or None
    )
    return json_response({})


async def _rule_enabled(user_id: str, kind: str, rule_id: str) -> Response:
    push = services().push
    if request.method == "GET":
        rule = await push.get_rule(user_id, kind, rule_id)
        return json_response({"enabled": rule.enabled})
    if request.method != "PUT":
        raise Unrecognized("Method not allowed", status=405)
    body = await json_body()
    if "enabled" not in body:
        raise MissingParam("Missing 'enabled'")
    await push.set_enabled(user_id, kind, rule_id, body["enabled"])
    return json_response({})


async def _rule_actions(user_id: str, kind: str, rule_id: str) -> Response:
    push = services().push
    if request.method == "GET":
        rule = await push.get_rule(user_id, kind, rule_id)
        return json_response({"actions": rule.to_json()["actions"]})
    if request.method != "PUT":
        raise Unrecognized("Method not allowed", status=405)
    body = await json_body()
    if "actions" not in body:
        raise MissingParam("Missing 'actions'")
    await push.set_actions(user_id, kind, rule_id, body["actions"])
    return json_response({})


@client_route(bp, "/pushers", ["GET"])
async def get_pushers() -> Response:
    """GET /_matrix/client/v3/pushers"""
    requester = await require_auth()
    return json_response({"pushers": await services().push.get_pushers(requester.user_id)})


@client_route(bp, "/pushers/set", ["POST"])
async def set_pusher() -> Response:
    """POST /_matrix/client/v3/pushers/set"""
    requester = await require_auth()
    body = await json_body()
    await services().push.set_pusher(requester, body)
    return json_response({})


@client_route(bp, "/notifications", ["GET"])
async def get_notifications() -> Response:
    """GET /_matrix/client/v3/notifications"""
    requester = await require_auth()
    limit = query_int("limit", DEFAULT_NOTIFICATIONS_LIMIT, minimum=0, maximum=MAX_NOTIFICATIONS_LIMIT)
    assert limit is not None
    only = request.args.get("only")
    if only is not None and only not in ("highlight", ""):
        raise InvalidParam("'only' must be 'highlight'")
    body = await services().push.get_notifications(
        requester, request.args.get("from"), limit, only or None
    )
    return json_response(body)
