"""Push rules, pushers and notifications (pushrules.yaml, pusher.yaml, notifications.yaml)."""

from __future__ import annotations

from quart import Blueprint, Response, request

from pocketserver.api.client.account import client_route
from pocketserver.api.common import json_body, json_response, query_int, require_auth, services
from pocketserver.errors import InvalidParam, MissingParam

bp = Blueprint("client_push", __name__)

DEFAULT_NOTIFICATIONS_LIMIT = 20
MAX_NOTIFICATIONS_LIMIT = 100


@client_route(bp, "/pushrules/", ["GET"])
async def get_all() -> Response:
    """GET /_matrix/client/v3/pushrules/"""
    requester = await require_auth()
    ruleset = await services().push.get_ruleset(requester.user_id)
    return json_response({"global": ruleset.to_json()})


@client_route(bp, "/pushrules/global/", ["GET"])
async def get_global() -> Response:
    """GET /_matrix/client/v3/pushrules/global/"""
    requester = await require_auth()
    ruleset = await services().push.get_ruleset(requester.user_id)
    return json_response(ruleset.to_json())


@client_route(bp, "/pushrules/global/<kind>/<rule_id>", ["GET"])
async def get_rule(kind: str, rule_id: str) -> Response:
    """GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}"""
    requester = await require_auth()
    rule = await services().push.get_rule(requester.user_id, kind, rule_id)
    return json_response(rule.to_json())


@client_route(bp, "/pushrules/global/<kind>/<rule_id>", ["PUT"])
async def put_rule(kind: str, rule_id: str) -> Response:
    """PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}"""
    requester = await require_auth()
    body = await json_body()
    await services().push.put_rule(
        requester.user_id,
        kind,
        rule_id,
        body,
        request.args.get("before") or None,
        request.args.get("after") or None,
    )
    return json_response({})


@client_route(bp, "/pushrules/global/<kind>/<rule_id>", ["DELETE"])
async def delete_rule(kind: str, rule_id: str) -> Response:
    """DELETE /_matrix/client/v3/pushrules/global/{kind}/{ruleId}"""
    requester = await require_auth()
    await services().push.delete_rule(requester.user_id, kind, rule_id)
    return json_response({})


@client_route(bp, "/pushrules/global/<kind>/<rule_id>/enabled", ["GET"])
async def get_enabled(kind: str, rule_id: str) -> Response:
    """GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/enabled"""
    requester = await require_auth()
    rule = await services().push.get_rule(requester.user_id, kind, rule_id)
    return json_response({"enabled": rule.enabled})


@client_route(bp, "/pushrules/global/<kind>/<rule_id>/enabled", ["PUT"])
async def put_enabled(kind: str, rule_id: str) -> Response:
    """PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/enabled"""
    requester = await require_auth()
    body = await json_body()
    if "enabled" not in body:
        raise MissingParam("Missing 'enabled'")
    await services().push.set_enabled(requester.user_id, kind, rule_id, body["enabled"])
    return json_response({})


@client_route(bp, "/pushrules/global/<kind>/<rule_id>/actions", ["GET"])
async def get_actions(kind: str, rule_id: str) -> Response:
    """GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/actions"""
    requester = await require_auth()
    rule = await services().push.get_rule(requester.user_id, kind, rule_id)
    return json_response({"actions": rule.to_json()["actions"]})


@client_route(bp, "/pushrules/global/<kind>/<rule_id>/actions", ["PUT"])
async def put_actions(kind: str, rule_id: str) -> Response:
    """PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/actions"""
    requester = await require_auth()
    body = await json_body()
    if "actions" not in body:
        raise MissingParam("Missing 'actions'")
    await services().push.set_actions(requester.user_id, kind, rule_id, body["actions"])
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
