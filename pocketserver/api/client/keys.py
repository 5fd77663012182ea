"""End-to-end encryption keys over HTTP: /keys/upload, /keys/query, /keys/claim,
/keys/changes, /keys/device_signing/upload and /keys/signatures/upload.

Thin: parse, call :class:`~pocketserver.services.e2ee.E2eeService`, answer. Every path
is served under ``/_matrix/client/v3``; the two cross-signing uploads also under
``/_matrix/client/unstable``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from quart import Blueprint, Response, request

from pocketserver.api.common import json_body, json_response, require_auth, services
from pocketserver.errors import MatrixError, MissingParam

bp = Blueprint("client_keys", __name__)

PREFIXES = ("/_matrix/client/v3",)


# Cross-signing was served under the unstable prefix before Matrix 1.1 (MSC1756), and
# clients of that time still call it there.
UNSTABLE = "/_matrix/client/unstable"


def client_route(
    path: str, methods: list[str], prefixes: tuple[str, ...] = PREFIXES
) -> Callable[[Any], Any]:
    def deco(fn: Any) -> Any:
        for i, prefix in enumerate(prefixes):
            bp.add_url_rule(
                prefix + path, endpoint=f"{fn.__name__}_{i}", view_func=fn, methods=methods
            )
        return fn

    return deco


def _device_of(device_id: str | None) -> str:
    if device_id is None:
        raise MatrixError(400, "M_UNKNOWN", "This access token has no device")
    return device_id


@client_route("/keys/upload", ["POST"])
async def keys_upload() -> Response:
    """POST /_matrix/client/v3/keys/upload"""
    req = await require_auth()
    body = await json_body()
    out = await services().e2ee.upload_keys(req.user_id, _device_of(req.device_id), body)
    return json_response(out)


@client_route("/keys/query", ["POST"])
async def keys_query() -> Response:
    """POST /_matrix/client/v3/keys/query"""
    req = await require_auth(allow_guest=True)
    body = await json_body()
    if "device_keys" not in body:
        raise MissingParam("Missing 'device_keys'")
    return json_response(
        await services().e2ee.query_keys(req.user_id, body["device_keys"], body.get("timeout"))
    )


@client_route("/keys/claim", ["POST"])
async def keys_claim() -> Response:
    """POST /_matrix/client/v3/keys/claim"""
    await require_auth(allow_guest=True)
    body = await json_body()
    if "one_time_keys" not in body:
        raise MissingParam("Missing 'one_time_keys'")
    return json_response(
        await services().e2ee.claim_keys(body["one_time_keys"], body.get("timeout"))
    )


@client_route("/keys/changes", ["GET"])
async def keys_changes() -> Response:
    """GET /_matrix/client/v3/keys/changes?from=&to="""
    req = await require_auth(allow_guest=True)
    from_token = request.args.get("from")
    to_token = request.args.get("to")
    if not from_token:
        raise MissingParam("Missing 'from'")
    if not to_token:
        raise MissingParam("Missing 'to'")
    return json_response(await services().e2ee.key_changes(req.user_id, from_token, to_token))


@client_route("/keys/device_signing/upload", ["POST"], (*PREFIXES, UNSTABLE))
async def device_signing_upload() -> Response:
    """POST /_matrix/client/v3/keys/device_signing/upload

    User-interactive auth (password) unless the user has no master key yet or the
    request re-uploads exactly the stored keys.
    """
    req = await require_auth()
    body = await json_body()
    svc = services()
    result = None
    # Application service API, "Cross-signing": never user-interactive auth for an AS.
    if req.appservice is None and await svc.e2ee.cross_signing_needs_auth(req.user_id, body):
        auth = body.get("auth")
        result = await svc.uia.authenticate(
            auth if isinstance(auth, dict) else None,
            flows=await svc.uia.reauth_flows(req.user_id),
            request_key="POST /keys/device_signing/upload",
            user_id=req.user_id,
        )
    keys = {k: v for k, v in body.items() if k != "auth"}
    await svc.e2ee.upload_cross_signing(req.user_id, keys)
    if result is not None:
        await svc.uia.finish(result)
    return json_response({})


@client_route("/keys/signatures/upload", ["POST"], (*PREFIXES, UNSTABLE))
async def signatures_upload() -> Response:
    """POST /_matrix/client/v3/keys/signatures/upload"""
    req = await require_auth()
    body = await json_body()
    return json_response(await services().e2ee.upload_signatures(req.user_id, body))
