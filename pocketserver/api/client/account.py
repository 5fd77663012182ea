"""Accounts over HTTP: registration, login, logout, refresh, whoami, password,
deactivation, devices, capabilities' account parts, /admin/whois, the account moderation
endpoints (/admin/lock, /admin/suspend) and user reports.

Thin: parse, call :class:`~pocketserver.services.accounts.AccountsService`, answer.
Every path is served under ``/_matrix/client/v3`` and the older ``r0`` prefix.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from quart import Blueprint, Response, request

from pocketserver.api.common import (
    access_token_from_request,
    json_body,
    json_response,
    require_auth,
    services,
)
from pocketserver.errors import (
    BadJson,
    Forbidden,
    MatrixError,
    MissingParam,
    MissingToken,
    UnknownToken,
)
from pocketserver.protocol.appservice import Registration

bp = Blueprint("client_account", __name__)

PREFIXES = ("/_matrix/client/v3",)


def client_route(bp: Blueprint, path: str, methods: list[str], prefixes: tuple[str, ...] = PREFIXES) -> Callable[[Any], Any]:
    """Register one handler under each client API prefix."""

    def deco(fn: Any) -> Any:
        for i, prefix in enumerate(prefixes):
            bp.add_url_rule(
                prefix + path, endpoint=f"{fn.__name__}_{i}", view_func=fn, methods=methods
            )
        return fn

    return deco


# -- registration ----------------------------------------------------------------


def _appservice_of_request(body: dict[str, Any]) -> Registration | None:
    """The application service registering or logging in a user: the request names
    ``m.login.application_service`` (401 without a valid as_token), or carries an
    as_token (as Synapse, which takes that as the same request)."""
    token = access_token_from_request()
    reg = services().auth.appservices.by_as_token(token) if token else None
    if body.get("type") == "m.login.application_service":
        if token is None:
            raise MissingToken()
        if reg is None:
            raise UnknownToken()
    return reg


@client_route(bp, "/register", ["POST"])
async def register() -> Response:
    """POST /_matrix/client/v3/register"""
    kind = request.args.get("kind", "user")
    body = await json_body(allow_empty=True)
    reg = _appservice_of_request(body)
    if reg is not None:
        out = await services().accounts.register_appservice_user(
            reg, body, ip=request.remote_addr, user_agent=request.headers.get("User-Agent")
        )
        return json_response(out)
    out = await services().accounts.register(
        body, kind=kind, ip=request.remote_addr, user_agent=request.headers.get("User-Agent")
    )
    return json_response(out)


@client_route(bp, "/register/available", ["GET"])
async def register_available() -> Response:
    """GET /_matrix/client/v3/register/available?username="""
    svc = services()
    username = request.args.get("username")
    if not username:
        raise MissingParam("Missing 'username'")
    svc.ratelimiter.check("registration", request.remote_addr or "?")
    await svc.accounts.username_available(username)
    return json_response({"available": True})


@client_route(
    bp, "/register/m.login.registration_token/validity", ["GET"],
    ("/_matrix/client/v1",),
)
async def registration_token_validity() -> Response:
    """GET /_matrix/client/v1/register/m.login.registration_token/validity?token="""
    svc = services()
    if svc.config.registration_mode != "token":
        raise Forbidden("Registration with tokens is not enabled on this server")
    token = request.args.get("token")
    if token is None:
        raise MissingParam("Missing 'token'")
    svc.ratelimiter.check("registration", request.remote_addr or "?")
    return json_response({"valid": await svc.accounts.registration_token_valid(token)})


# -- login, logout, refresh ---------------------------------------------------------


@client_route(bp, "/login", ["GET"])
async def login_flows() -> Response:
    """GET /_matrix/client/v3/login"""
    return json_response({"flows": services().accounts.login_flows()})


@client_route(bp, "/login", ["POST"])
async def login() -> Response:
    """POST /_matrix/client/v3/login"""
    body = await json_body()
    reg = _appservice_of_request(body)
    if reg is not None:
        out = await services().accounts.login_appservice(
            reg, body, ip=request.remote_addr, user_agent=request.headers.get("User-Agent")
        )
        return json_response(out)
    out = await services().accounts.login(
        body, ip=request.remote_addr, user_agent=request.headers.get("User-Agent")
    )
    return json_response(out)


@client_route(bp, "/logout", ["POST"])
async def logout() -> Response:
    """POST /_matrix/client/v3/logout (a locked account may still log out)"""
    requester = await require_auth(allow_guest=True, allow_locked=True)
    await services().accounts.logout(requester)
    return json_response({})


@client_route(bp, "/logout/all", ["POST"])
async def logout_all() -> Response:
    """POST /_matrix/client/v3/logout/all (a locked account may still log out)"""
    requester = await require_auth(allow_guest=True, allow_locked=True)
    await services().accounts.logout_all(requester)
    return json_response({})


@client_route(bp, "/refresh", ["POST"], ("/_matrix/client/v3", "/_matrix/client/v1"))
async def refresh() -> Response:
    """POST /_matrix/client/v3/refresh"""
    body = await json_body()
    token = body.get("refresh_token")
    if token is None:
        raise MissingParam("Missing 'refresh_token'")
    if not isinstance(token, str):
        raise BadJson("'refresh_token' must be a string")
    return json_response(await services().accounts.refresh(token))


@client_route(bp, "/account/whoami", ["GET"])
async def whoami() -> Response:
    """GET /_matrix/client/v3/account/whoami"""
    requester = await require_auth(allow_guest=True)
    out: dict[str, Any] = {"user_id": requester.user_id, "is_guest": requester.is_guest}
    if requester.device_id is not None:
        out["device_id"] = requester.device_id
    return json_response(out)


# -- password and deactivation --------------------------------------------------------


@client_route(bp, "/account/password", ["POST"])
async def change_password() -> Response:
    """POST /_matrix/client/v3/account/password"""
    requester = await require_auth()
    body = await json_body()
    await services().accounts.change_password(requester, body)
    return json_response({})


@client_route(bp, "/account/deactivate", ["POST"])
async def deactivate() -> Response:
    """POST /_matrix/client/v3/account/deactivate"""
    requester = await require_auth()
    body = await json_body(allow_empty=True)
    await services().accounts.deactivate(requester, body)
    return json_response({"id_server_unbind_result": "no-support"})


# -- devices -------------------------------------------------------------------------


@client_route(bp, "/devices", ["GET"])
async def list_devices() -> Response:
    """GET /_matrix/client/v3/devices"""
    requester = await require_auth(allow_guest=True)
    return json_response({"devices": await services().accounts.list_devices(requester.user_id)})


@client_route(bp, "/devices/<device_id>", ["GET"])
async def get_device(device_id: str) -> Response:
    """GET /_matrix/client/v3/devices/{deviceId}"""
    requester = await require_auth(allow_guest=True)
    return json_response(await services().accounts.get_device(requester.user_id, device_id))


@client_route(bp, "/devices/<device_id>", ["PUT"])
async def update_device(device_id: str) -> Response:
    """PUT /_matrix/client/v3/devices/{deviceId}"""
    requester = await require_auth(allow_guest=True)
    body = await json_body(allow_empty=True)
    if requester.appservice is not None:
        # Application service API, "Creating devices" (v1.17): an AS makes its users'
        # devices here, without /login.
        await services().accounts.ensure_device(requester.user_id, device_id, body)
        return json_response({})
    await services().accounts.update_device(requester.user_id, device_id, body)
    return json_response({})


@client_route(bp, "/devices/<device_id>", ["DELETE"])
async def delete_device(device_id: str) -> Response:
    """DELETE /_matrix/client/v3/devices/{deviceId}"""
    requester = await require_auth()
    body = await json_body(allow_empty=True)
    await services().accounts.delete_devices(
        requester, [device_id], body.get("auth"), f"DELETE /devices/{device_id}"
    )
    return json_response({})


@client_route(bp, "/delete_devices", ["POST"])
async def delete_devices() -> Response:
    """POST /_matrix/client/v3/delete_devices"""
    requester = await require_auth()
    body = await json_body()
    devices = body.get("devices")
    if devices is None:
        raise MissingParam("Missing 'devices'")
    if not isinstance(devices, list) or not all(isinstance(d, str) for d in devices):
        raise BadJson("'devices' must be a list of strings")
    if len(devices) > 1000:
        raise MatrixError(400, "M_INVALID_PARAM", "Too many devices at once")
    await services().accounts.delete_devices(
        requester, devices, body.get("auth"), "POST /delete_devices"
    )
    return json_response({})


# -- admin -----------------------------------------------------------------------------


@client_route(bp, "/admin/whois/<user_id>", ["GET"])
async def whois(user_id: str) -> Response:
    """GET /_matrix/client/v3/admin/whois/{userId}"""
    requester = await require_auth()
    return json_response(await services().accounts.whois(requester, user_id))


V1 = ("/_matrix/client/v1",)


async def _get_moderation(user_id: str, flag: str) -> Response:
    requester = await require_auth()
    value = await services().accounts.get_moderation_flag(requester, user_id, flag)
    return json_response({flag: value})


async def _set_moderation(user_id: str, flag: str) -> Response:
    requester = await require_auth()
    body = await json_body()
    if flag not in body:
        raise MissingParam(f"Missing {flag!r}")
    if not isinstance(body[flag], bool):
        raise BadJson(f"{flag!r} must be a boolean")
    value = await services().accounts.set_moderation_flag(requester, user_id, flag, body[flag])
    return json_response({flag: value})


@client_route(bp, "/admin/lock/<user_id>", ["GET"], V1)
async def get_lock(user_id: str) -> Response:
    """GET /_matrix/client/v1/admin/lock/{userId}"""
    return await _get_moderation(user_id, "locked")


@client_route(bp, "/admin/lock/<user_id>", ["PUT"], V1)
async def set_lock(user_id: str) -> Response:
    """PUT /_matrix/client/v1/admin/lock/{userId}"""
    return await _set_moderation(user_id, "locked")


@client_route(bp, "/admin/suspend/<user_id>", ["GET"], V1)
async def get_suspend(user_id: str) -> Response:
    """GET /_matrix/client/v1/admin/suspend/{userId}"""
    return await _get_moderation(user_id, "suspended")


@client_route(bp, "/admin/suspend/<user_id>", ["PUT"], V1)
async def set_suspend(user_id: str) -> Response:
    """PUT /_matrix/client/v1/admin/suspend/{userId}"""
    return await _set_moderation(user_id, "suspended")


# -- reports ---------------------------------------------------------------------------


@client_route(bp, "/users/<user_id>/report", ["POST"])
async def report_user(user_id: str) -> Response:
    """POST /_matrix/client/v3/users/{userId}/report"""
    requester = await require_auth()
    body = await json_body()
    reason = body.get("reason")
    if reason is None:
        raise MissingParam("Missing 'reason'")
    if not isinstance(reason, str):
        raise BadJson("'reason' must be a string")
    await services().accounts.report_user(requester, user_id, reason)
    return json_response({})


__all__ = ["bp", "client_route"]
