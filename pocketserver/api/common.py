"""What every route module needs: the services, JSON in and out, the requester.

Route handlers stay thin: parse with these helpers, call one service, answer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import orjson
from quart import Response, current_app, g, request

from pocketserver import limits
from pocketserver.errors import BadJson, InvalidParam, NotJson, TooLarge
from pocketserver.protocol.canonical_json import CanonicalJsonError, JsonParseError, parse_json
from pocketserver.services import Services
from pocketserver.services.auth import Requester
from pocketserver.services.params import (  # noqa: F401 - the body helpers routes use
    MIN_INT,
    get_bool,
    get_choice,
    get_dict,
    get_int,
    get_list,
    get_str,
    parse_int,
)

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, HEAD, POST, PUT, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "X-Requested-With, Content-Type, Authorization, Date",
    "Access-Control-Expose-Headers": "Content-Disposition",
}


# Where a body read before the route (by api/federation/auth.py) waits for read_body.
KEPT_BODY = "pocketserver_request_body"


def services() -> Services:
    return current_app.extensions["pocketserver"]  # type: ignore[no-any-return]


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    try:
        # orjson writes the same compact UTF-8 JSON an order of magnitude faster (a big
        # room's /members is 150 KB); what it refuses (integers beyond 64 bits,
        # non-string keys) json writes, or fails on, as before.
        data = orjson.dumps(body)
    except TypeError:
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    resp = Response(data, status=status, content_type="application/json")
    if headers:
        for k, v in headers.items():
            resp.headers[k] = v
    return resp


def body_limit(path: str) -> int | None:
    """The most bytes a request body on ``path`` may have; None for media uploads,
    which stream their bodies under their own limit (``media.max_upload_size``)."""
    if path.startswith("/_matrix/media/"):
        return None
    if "/room_keys/keys" in path:
        return limits.MAX_KEY_BACKUP_BODY
    if "/sendToDevice/" in path:
        return limits.MAX_TO_DEVICE_BODY
    return limits.MAX_JSON_BODY


class BodyLimit:
    """ASGI wrapper: a request body past its path's :func:`body_limit` is refused with
    413 ``M_TOO_LARGE`` before it is read whole into memory.

    Quart buffers a body as it arrives, whether or not the route reads it yet, so the
    limit is applied here, in front of Quart: a declared ``Content-Length`` over the
    limit is answered at once without reading the body; a chunked body is handed on
    only up to the first piece that passes the limit (``read_body`` then refuses it),
    and the rest is read and dropped, never kept.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        limit = body_limit(scope.get("path", "")) if scope.get("type") == "http" else None
        if limit is None:
            await self.app(scope, receive, send)
            return
        declared = None
        for k, v in scope.get("headers", ()):
            if k.lower() == b"content-length" and v.strip().isdigit():
                declared = int(v)
        if declared is not None and declared > limit:
            body = json.dumps({"errcode": "M_TOO_LARGE", "error": f"Request body is over {limit} bytes"}).encode()
            await send({
                "type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *((k.lower().encode(), v.encode()) for k, v in CORS_HEADERS.items())],
            })  # fmt: skip
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return
        seen = 0
        over = False

        async def limited_receive() -> dict[str, Any]:
            nonlocal seen, over
            while over:
                msg = await receive()
                if msg["type"] != "http.request":
                    return dict(msg)
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit and msg.get("more_body", False):
                    over = True
                    return dict(msg, more_body=False)
            return dict(msg)

        await self.app(scope, limited_receive, send)


async def read_body(limit: int | None = None) -> bytes:
    """The request body, refusing with M_TOO_LARGE once it passes ``limit`` bytes
    (default: the path's :func:`body_limit`)."""
    if limit is None:
        limit = body_limit(request.path) or limits.MAX_JSON_BODY
    kept = g.get(KEPT_BODY)
    if kept is not None:  # read already, by the federation request check
        if len(kept) > limit:
            raise TooLarge()
        return bytes(kept)
    length = request.content_length
    if length is not None and length > limit:
        raise TooLarge()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.body:
        size += len(chunk)
        if size > limit:
            raise TooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


async def json_body(*, allow_empty: bool = False, limit: int | None = None) -> dict[str, Any]:
    """The request body as a JSON object, or M_NOT_JSON / M_BAD_JSON."""
    raw = await read_body(limit)
    if not raw.strip():
        if allow_empty:
            return {}
        raise NotJson("Request body is empty; expected a JSON object")
    try:
        value = parse_json(raw)
    except (JsonParseError, CanonicalJsonError) as e:
        raise NotJson(f"Content not JSON: {e}") from None
    if not isinstance(value, dict):
        raise BadJson("Expected a JSON object")
    return value


def query_int(
    name: str, default: int | None = None, *, minimum: int = MIN_INT, maximum: int | None = None
) -> int | None:
    """An integer query parameter: M_INVALID_PARAM unless ASCII digits in
    ``[minimum, 2**53-1]``; a ``maximum`` caps it (a ``limit`` above the cap is served
    as the cap)."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    v = parse_int(raw, repr(name), minimum=minimum)
    if maximum is not None:
        v = min(v, maximum)
    return v


def query_bool(name: str, default: bool = False) -> bool:
    raw = request.args.get(name)
    if raw is None:
        return default
    if raw in ("true", "1"):
        return True
    if raw in ("false", "0"):
        return False
    raise InvalidParam(f"{name!r} must be true or false")


def access_token_from_request() -> str | None:
    auth = request.headers.get("Authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None
    return request.args.get("access_token") or None


async def require_auth(*, allow_guest: bool = False, allow_locked: bool = False) -> Requester:
    """The authenticated requester, or M_MISSING_TOKEN / M_UNKNOWN_TOKEN."""
    svc = services()
    return await svc.auth.authenticate(
        access_token_from_request(),
        allow_guest=allow_guest,
        allow_locked=allow_locked,
        ip=request.remote_addr,
        user_agent=request.headers.get("User-Agent"),
        as_user_id=request.args.get("user_id"),
        as_device_id=request.args.get("device_id") or request.args.get("org.matrix.msc3202.device_id"),
    )


async def optional_auth() -> Requester | None:
    if access_token_from_request() is None:
        return None
    return await require_auth(allow_guest=True)
