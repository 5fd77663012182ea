"""The Identity Service API v2 (/_matrix/identity), thin over
:class:`~pocketserver.services.identity.IdentityService`; served on the client listeners
when ``[identity] enabled = true``, else not routed at all
(every path answers 404 ``M_UNRECOGNIZED``).

Access tokens come in ``Authorization: Bearer`` (or, as v1.19 still allows, the
``access_token`` query parameter). ``GET /validate/email/submitToken`` is the link in
the validation mail, opened in a browser: it needs no token and answers a page to a
browser (the JSON of the POST to anything else), or a redirect to the session's
``next_link``. ``/3pid/unbind`` also takes a request signed
by the user's homeserver (``Authorization: X-Matrix``).
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from quart import Blueprint, Response, redirect, request

from pocketserver.api.common import json_body, json_response, services
from pocketserver.api.federation.auth import authenticated_origin
from pocketserver.errors import MatrixError, Unrecognized
from pocketserver.protocol.request_auth import is_x_matrix

if TYPE_CHECKING:
    from pocketserver.services.identity import IdentityService

bp = Blueprint("identity", __name__)

V2 = "/_matrix/identity/v2"
VERSIONS = ["v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10",
            "v1.11", "v1.12", "v1.13", "v1.14", "v1.15", "v1.16", "v1.17", "v1.18", "v1.19"]


def _service() -> IdentityService:
    svc = services().identity
    if svc is None:
        raise Unrecognized("This server runs no identity service")
    return svc


def _token() -> str | None:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return request.args.get("access_token") or None


async def _user(*, terms: bool = True) -> str:
    return await _service().authenticate(_token(), terms=terms)


@bp.route("/_matrix/identity/versions", methods=["GET"])
async def versions() -> Response:
    """GET /_matrix/identity/versions"""
    _service()
    return json_response({"versions": VERSIONS})


@bp.route(V2, methods=["GET"])
async def status() -> Response:
    """GET /_matrix/identity/v2"""
    _service()
    return json_response({})


@bp.route(f"{V2}/account/register", methods=["POST"])
async def register() -> Response:
    """POST /_matrix/identity/v2/account/register"""
    svc = _service()
    return json_response(await svc.register(await json_body()))


@bp.route(f"{V2}/account", methods=["GET"])
async def account() -> Response:
    """GET /_matrix/identity/v2/account"""
    return json_response({"user_id": await _user(terms=False)})


@bp.route(f"{V2}/account/logout", methods=["POST"])
async def logout() -> Response:
    """POST /_matrix/identity/v2/account/logout"""
    await _service().logout(_token())
    return json_response({})


@bp.route(f"{V2}/terms", methods=["GET"])
async def terms() -> Response:
    """GET /_matrix/identity/v2/terms"""
    return json_response(_service().terms())


@bp.route(f"{V2}/terms", methods=["POST"])
async def accept_terms() -> Response:
    """POST /_matrix/identity/v2/terms"""
    user_id = await _user(terms=False)
    await _service().accept_terms(user_id, await json_body())
    return json_response({})


@bp.route(f"{V2}/hash_details", methods=["GET"])
async def hash_details() -> Response:
    """GET /_matrix/identity/v2/hash_details"""
    await _user()
    return json_response(await _service().hash_details())


@bp.route(f"{V2}/lookup", methods=["POST"])
async def lookup() -> Response:
    """POST /_matrix/identity/v2/lookup"""
    await _user()
    return json_response(await _service().lookup(await json_body()))


@bp.route(f"{V2}/validate/email/requestToken", methods=["POST"])
async def request_email_token() -> Response:
    """POST /_matrix/identity/v2/validate/email/requestToken"""
    await _user()
    return json_response(await _service().request_email_token(await json_body()))


@bp.route(f"{V2}/validate/email/submitToken", methods=["POST"])
async def submit_email_token() -> Response:
    """POST /_matrix/identity/v2/validate/email/submitToken"""
    await _user()
    await _service().submit_email_token(await json_body())
    return json_response({"success": True})


def _page(status: int, title: str, text: str) -> Response:
    body = (
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>"
        f"{html.escape(title)}</title></head><body><h1>{html.escape(title)}</h1>"
        f"<p>{html.escape(text)}</p></body></html>"
    )
    return Response(body, status, content_type="text/html; charset=utf-8")


@bp.route(f"{V2}/validate/email/submitToken", methods=["GET"])
async def submit_email_token_link() -> Response:
    """GET /_matrix/identity/v2/validate/email/submitToken (the mailed link)"""
    svc = _service()
    # A browser (which asks for HTML) gets a page; anything else the JSON error contract.
    browser = "text/html" in request.headers.get("Accept", "")
    try:
        next_link = await svc.submit_email_token(request.args.to_dict())
    except MatrixError as e:
        if not browser:
            raise
        return _page(e.status, "Not confirmed", e.message)
    if next_link:
        return redirect(next_link, 302)  # type: ignore[return-value]
    if not browser:
        return json_response({"success": True})
    return _page(200, "Email address confirmed", "You can close this page and go back to your Matrix client.")


@bp.route(f"{V2}/3pid/getValidated3pid", methods=["GET"])
async def get_validated() -> Response:
    """GET /_matrix/identity/v2/3pid/getValidated3pid"""
    await _user()
    return json_response(await _service().get_validated(request.args.to_dict()))


@bp.route(f"{V2}/3pid/bind", methods=["POST"])
async def bind() -> Response:
    """POST /_matrix/identity/v2/3pid/bind"""
    user_id = await _user()
    return json_response(await _service().bind(user_id, await json_body()))


@bp.route(f"{V2}/3pid/unbind", methods=["POST"])
async def unbind() -> Response:
    """POST /_matrix/identity/v2/3pid/unbind"""
    svc = _service()
    origin = user_id = None
    if any(is_x_matrix(v) for v in request.headers.getlist("Authorization")):
        origin = await authenticated_origin()
    elif _token() is not None:
        user_id = await _user()
    await svc.unbind(await json_body(), user_id=user_id, origin=origin)
    return json_response({})


@bp.route(f"{V2}/store-invite", methods=["POST"])
async def store_invite() -> Response:
    """POST /_matrix/identity/v2/store-invite"""
    user_id = await _user()
    return json_response(await _service().store_invite(user_id, await json_body()))


@bp.route(f"{V2}/sign-ed25519", methods=["POST"])
async def sign_ed25519() -> Response:
    """POST /_matrix/identity/v2/sign-ed25519"""
    await _user()
    return json_response(await _service().sign_ed25519(await json_body()))


def _public_key_param() -> str:
    value = request.args.get("public_key")
    if not value:
        raise MatrixError(400, "M_MISSING_PARAM", "Missing 'public_key'")
    if len(value) > 256:
        raise MatrixError(400, "M_INVALID_PARAM", "'public_key' is too long")
    return value


@bp.route(f"{V2}/pubkey/isvalid", methods=["GET"])
async def key_is_valid() -> Response:
    """GET /_matrix/identity/v2/pubkey/isvalid"""
    return json_response(_service().key_is_valid(_public_key_param()))


@bp.route(f"{V2}/pubkey/ephemeral/isvalid", methods=["GET"])
async def ephemeral_key_is_valid() -> Response:
    """GET /_matrix/identity/v2/pubkey/ephemeral/isvalid"""
    return json_response(await _service().ephemeral_key_is_valid(_public_key_param()))


@bp.route(f"{V2}/pubkey/<key_id>", methods=["GET"])
async def public_key(key_id: str) -> Response:
    """GET /_matrix/identity/v2/pubkey/{keyId}"""
    return json_response(_service().public_key(key_id))
