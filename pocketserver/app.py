"""The QuartTrio application: routing, the JSON error contract, CORS.

Route modules under ``api/`` are thin: each registers a blueprint and calls services.
Everything that is not a :class:`MatrixError` becomes 500 ``M_UNKNOWN`` with the
traceback logged, never shown.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import unquote

import trio
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from pocketserver.api.client.media import STREAMED_BODY_SCOPE_KEY
from pocketserver.api.common import CORS_HEADERS, BodyLimit, json_response
from pocketserver.errors import MatrixError
from pocketserver.services import Services

log = logging.getLogger("pocketserver.app")

# An encoded slash (%2F) inside one path segment (a v3 event ID, a state key) must not
# split the segment: the ASGI wrapper below carries it through routing as this
# private-use character, and the url_value_preprocessor turns it back into "/".
_SLASH = "\ue000"


_R0 = "/_matrix/client/r0/"
_V3 = "/_matrix/client/v3/"


class _PathMiddleware:
    """Carries encoded slashes through routing, and serves r0 client paths as v3."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") == "http":
            path = scope["path"]
            raw = scope.get("raw_path")
            if raw and b"%2" in raw:
                raw_path = raw.split(b"?", 1)[0].decode("latin-1")
                raw_path = raw_path.replace("%2F", _SLASH).replace("%2f", _SLASH)
                path = unquote(raw_path, errors="replace")
            if path.startswith(_R0):
                path = _V3 + path[len(_R0) :]
            if path is not scope["path"]:
                scope = dict(scope, path=path)
        await self.app(scope, receive, send)


# Request bodies larger than this are read one request at a time (see _LargeBodies).
LARGE_BODY = 1024 * 1024
# The largest body any JSON route accepts (key backup uploads: api/client/key_backup.py);
# Quart stops buffering a body past it. Each route refuses what is over its own limit.
MAX_BUFFERED_BODY = 64 * 1024 * 1024


class _LargeBodies:
    """Requests with a large body are served one at a time.

    Quart reads a JSON request's body whole, and parsing it makes several times its
    size in Python objects while the handler runs, so the memory of concurrent large
    requests (to-device bursts, key backup uploads, up to tens of MiB) would add up.
    A request whose declared Content-Length is over :data:`LARGE_BODY`, or that has a
    chunked body of unknown length, waits for this server-wide limiter before Quart
    sees it, and holds it until it is answered; until then its body stays in the
    socket and hypercorn's small bounded queue. Everything else, and the media uploads
    that stream their bodies (api/client/media.py), passes at once.
    """

    def __init__(self, app: Any, slots: int = 1) -> None:
        self.app = app
        self.limiter = trio.CapacityLimiter(slots)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") == "http" and STREAMED_BODY_SCOPE_KEY not in scope and _is_large(scope):
            async with self.limiter:
                await self.app(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _is_large(scope: dict[str, Any]) -> bool:
    for name, value in scope.get("headers", ()):
        name = name.lower()
        if name == b"content-length":
            try:
                return int(value) > LARGE_BODY
            except ValueError:
                return True
        if name == b"transfer-encoding":
            return True
    return False


def create_app(services: Services) -> QuartTrio:
    app = QuartTrio("pocketserver")
    # Quart buffers a body as fast as it arrives: never more than this (media uploads
    # stream theirs, and each JSON route refuses what is over its own limit).
    app.config["MAX_CONTENT_LENGTH"] = MAX_BUFFERED_BODY
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = True
    app.config["JSON_SORT_KEYS"] = False
    app.url_map.strict_slashes = False
    app.url_map.merge_slashes = False
    app.extensions["pocketserver"] = services

    @app.url_value_preprocessor
    def _restore_slashes(endpoint: str | None, values: dict[str, Any] | None) -> None:
        if values:
            for k, v in values.items():
                if isinstance(v, str) and _SLASH in v:
                    values[k] = v.replace(_SLASH, "/")

    @app.errorhandler(MatrixError)
    async def _matrix_error(err: MatrixError) -> Response:
        return json_response(err.to_json(), err.status)

    @app.errorhandler(HTTPException)
    async def _http_error(err: HTTPException) -> Response:
        code = err.code or 500
        if code == 404:
            return json_response({"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"}, 404)
        if code == 405:
            return json_response({"errcode": "M_UNRECOGNIZED", "error": "Method not allowed"}, 405)
        if code == 413:
            return json_response({"errcode": "M_TOO_LARGE", "error": "Request too large"}, 413)
        if code == 400:
            return json_response({"errcode": "M_BAD_JSON", "error": "Bad request"}, 400)
        return json_response({"errcode": "M_UNKNOWN", "error": err.name}, code)

    @app.errorhandler(Exception)
    async def _unexpected(err: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return json_response({"errcode": "M_UNKNOWN", "error": "Internal server error"}, 500)

    @app.before_request
    async def _preflight() -> Response | None:
        # A browser sends a CORS preflight before any cross-origin call with an
        # Authorization header; a 404 on it turns the real call (even one that would
        # answer M_UNRECOGNIZED, which clients handle) into a network error. So every
        # path answers OPTIONS, routed or not. before_request runs before the routing
        # error is raised.
        if request.method == "OPTIONS":
            return Response("", 200)
        return None

    @app.after_request
    async def _cors(resp: Response) -> Response:
        for k, v in CORS_HEADERS.items():
            resp.headers.setdefault(k, v)
        return resp

    from pocketserver.api import register_blueprints

    # Inside the media module's streaming of uploads, which marks the scopes it streams.
    app.asgi_app = _LargeBodies(app.asgi_app)  # type: ignore[method-assign,assignment]
    app.extensions["pocketserver.large_bodies"] = app.asgi_app
    register_blueprints(app)
    app.asgi_app = BodyLimit(_PathMiddleware(app.asgi_app))  # type: ignore[method-assign,assignment]
    return app
