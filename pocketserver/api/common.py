"""What every route module needs: the services, JSON in and out, the requester.

Route handlers stay thin: parse with these helpers, call one service, answer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from quart import Response, current_app, request

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

MAX_JSON_BODY = 8 * 1024 * 1024


def services() -> Services:
    return current_app.extensions["pocketserver"]  # type: ignore[no-any-return]


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    resp = Response(data, status=status, content_type="application/json")
    if headers:
        for k, v in headers.items():
            resp.headers[k] = v
    return resp


async def read_body(limit: int = MAX_JSON_BODY) -> bytes:
    """The request body, refusing with M_TOO_LARGE once it passes ``limit`` bytes."""
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


async def json_body(*, allow_empty: bool = False, limit: int = MAX_JSON_BODY) -> dict[str, Any]:
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
        ip=request.remote_addr,
        user_agent=request.headers.get("User-Agent"),
    )


async def optional_auth() -> Requester | None:
    if access_token_from_request() is None:
        return None
    return await require_auth(allow_guest=True)
