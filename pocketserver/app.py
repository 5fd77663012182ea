"""The QuartTrio application: routing, the JSON error contract, CORS.

Route modules under ``api/`` are thin: each registers a blueprint and calls services.
Everything that is not a :class:`MatrixError` becomes 500 ``M_UNKNOWN`` with the
traceback logged, never shown.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import unquote

from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

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


def create_app(services: Services) -> QuartTrio:
    app = QuartTrio("pocketserver")
    app.config["MAX_CONTENT_LENGTH"] = None  # bodies are limited per route (media streams)
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

    register_blueprints(app)
    app.asgi_app = BodyLimit(_PathMiddleware(app.asgi_app))  # type: ignore[method-assign,assignment]
    return app
