"""Third-party identifiers over HTTP (administrative_contact.yaml, the ``requestToken``
endpoints of registration.yaml and password_management.yaml), and the page the
validation mail links to.

Thin: parse, call :class:`~pocketserver.services.threepids.ThreepidService`, answer.
Phone numbers (msisdn) are not supported: their ``requestToken`` answers
M_THREEPID_MEDIUM_NOT_SUPPORTED, as for e-mail on a server without SMTP.
"""

from __future__ import annotations

import html

from quart import Blueprint, Response, request

from pocketserver.api.client.routing import client_route
from pocketserver.api.common import json_body, json_response, require_auth, services
from pocketserver.errors import BadJson, MatrixError
from pocketserver.services.threepids import SUBMIT_PATH

bp = Blueprint("client_threepids", __name__)

# /account/3pid/bind and /unbind were /unstable before r0.6 (SyTest still calls them so).
V3_AND_UNSTABLE = ("/_matrix/client/v3", "/_matrix/client/unstable")


@client_route(bp, "/account/3pid", ["GET"])
async def list_threepids() -> Response:
    """GET /_matrix/client/v3/account/3pid"""
    requester = await require_auth()
    return json_response({"threepids": await services().threepids.list_threepids(requester.user_id)})


@client_route(bp, "/account/3pid", ["POST"])
async def add_threepid_deprecated() -> Response:
    """POST /_matrix/client/v3/account/3pid (deprecated: /3pid/add and /3pid/bind)"""
    requester = await require_auth()
    body = await json_body()
    requester.refuse_if_suspended()
    await services().threepids.add_deprecated(requester.user_id, body)
    return json_response({})


@client_route(bp, "/account/3pid/add", ["POST"])
async def add_threepid() -> Response:
    """POST /_matrix/client/v3/account/3pid/add (user-interactive auth)"""
    requester = await require_auth()
    body = await json_body()
    requester.refuse_if_suspended()
    svc = services()
    sid, client_secret = svc.threepids.check_add_body(body)
    auth = body.get("auth")
    if auth is not None and not isinstance(auth, dict):
        raise BadJson("'auth' must be an object")
    result = await svc.uia.authenticate(
        auth, flows=await svc.uia.reauth_flows(requester.user_id), request_key="POST /account/3pid/add",
        user_id=requester.user_id,
    )
    await svc.threepids.add(requester.user_id, sid, client_secret, result)
    return json_response({})


@client_route(bp, "/account/3pid/delete", ["POST"])
async def delete_threepid() -> Response:
    """POST /_matrix/client/v3/account/3pid/delete"""
    requester = await require_auth()
    body = await json_body()
    result = await services().threepids.delete(requester.user_id, body)
    return json_response({"id_server_unbind_result": result})


@client_route(bp, "/account/3pid/bind", ["POST"], V3_AND_UNSTABLE)
async def bind_threepid() -> Response:
    """POST /_matrix/client/v3/account/3pid/bind"""
    requester = await require_auth()
    body = await json_body()
    await services().threepids.bind(requester.user_id, body)
    return json_response({})


@client_route(bp, "/account/3pid/unbind", ["POST"], V3_AND_UNSTABLE)
async def unbind_threepid() -> Response:
    """POST /_matrix/client/v3/account/3pid/unbind"""
    requester = await require_auth()
    body = await json_body()
    result = await services().threepids.unbind(requester.user_id, body)
    return json_response({"id_server_unbind_result": result})


# -- requestToken ---------------------------------------------------------------------


async def _request_token(purpose: str) -> Response:
    body = await json_body()
    out = await services().threepids.request_token(purpose, body, request.remote_addr)
    return json_response(out)


@client_route(bp, "/register/email/requestToken", ["POST"])
async def register_request_token() -> Response:
    """POST /_matrix/client/v3/register/email/requestToken"""
    if services().config.registration_mode == "closed":
        raise MatrixError(403, "M_FORBIDDEN", "Registration is disabled on this server")
    return await _request_token("register")


@client_route(bp, "/account/3pid/email/requestToken", ["POST"])
async def add_request_token() -> Response:
    """POST /_matrix/client/v3/account/3pid/email/requestToken"""
    return await _request_token("add")


@client_route(bp, "/account/password/email/requestToken", ["POST"])
async def password_request_token() -> Response:
    """POST /_matrix/client/v3/account/password/email/requestToken"""
    return await _request_token("password")


@client_route(bp, "/register/msisdn/requestToken", ["POST"])
@client_route(bp, "/account/3pid/msisdn/requestToken", ["POST"])
@client_route(bp, "/account/password/msisdn/requestToken", ["POST"])
async def msisdn_request_token() -> Response:
    """POST /_matrix/client/v3/{register,account/3pid,account/password}/msisdn/requestToken"""
    await json_body()
    raise MatrixError(
        400, "M_THREEPID_MEDIUM_NOT_SUPPORTED", "This server does not support phone numbers"
    )


# -- the link in the mail -------------------------------------------------------------

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title></head>
<body style="font-family: sans-serif; max-width: 36em; margin: 3em auto; padding: 0 1em">
<h1>{title}</h1>
<p>{text}</p>{more}
</body></html>
"""


def _page(status: int, title: str, text: str, next_link: str | None = None) -> Response:
    # The client's next_link is offered, not followed: no redirect to wherever a
    # requestToken named.
    more = f'\n<p><a href="{html.escape(next_link)}">Continue</a></p>' if next_link else ""
    body = _PAGE.format(title=html.escape(title), text=html.escape(text), more=more)
    return Response(body, status=status, content_type="text/html; charset=utf-8")


def _params(source: dict[str, object]) -> tuple[str, str, str] | None:
    values = [source.get(k) for k in ("sid", "client_secret", "token")]
    if not all(isinstance(v, str) and v for v in values):
        return None
    sid, secret, token = (str(v) for v in values)
    return sid, secret, token


@bp.route("/" + SUBMIT_PATH, methods=["GET"])
async def submit_token_page() -> Response:
    """GET /_pocketserver/client/email/submit_token?sid=&client_secret=&token= (the
    link a person follows from the mail)"""
    params = _params(dict(request.args))
    if params is None:
        # Not a link this server wrote (a person's is whole): the API's error.
        raise MatrixError(400, "M_MISSING_PARAM", "sid, client_secret and token are required")
    ok, next_link = await services().threepids.submit_token(*params)
    if ok:
        return _page(
            200, "E-mail address confirmed",
            "Thank you. Go back to your Matrix app and continue there; you can close this page.",
            next_link,
        )
    return _page(
        400, "This link does not work any more",
        "It has expired or was used already. Ask your Matrix app to send a new mail.",
    )


@bp.route("/" + SUBMIT_PATH, methods=["POST"])
async def submit_token() -> Response:
    """POST /_pocketserver/client/email/submit_token (the ``submit_url``: the token a
    person typed into their app, with the identity service's submitToken shape)"""
    body = await json_body()
    params = _params(body)
    if params is None:
        raise MatrixError(400, "M_MISSING_PARAM", "sid, client_secret and token are required strings")
    ok, _next_link = await services().threepids.submit_token(*params)
    return json_response({"success": ok})
