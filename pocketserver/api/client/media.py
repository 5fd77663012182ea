"""The content repository's routes: upload, create, download, thumbnail, config, preview.

Spec: client-server-api/modules/content_repo.md; data/api/client-server/content-repo.yaml
(/_matrix/media/v3, v1/create) and authed-content-repo.yaml (/_matrix/client/v1/media).

Request bodies of uploads are *streamed*: Quart buffers a request body without any
back-pressure (a fast client on a slow disk would fill memory), so for the upload paths
:class:`_StreamedUploads` hands Quart an empty body and keeps the ASGI ``receive`` for
the route, which pulls the body at the pace chunks are stored. Hypercorn's bounded
queue then holds the client back. Downloads are async generators over the chunk store.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import trio
from quart import Blueprint, Response, request

from pocketserver.api.common import (
    json_response,
    query_bool,
    query_int,
    require_auth,
    services,
)
from pocketserver.errors import InvalidParam, MatrixError, MissingParam, NotFound
from pocketserver.federation.multipart import content_disposition
from pocketserver.services.media import Download, is_inline_type

bp = Blueprint("media", __name__)

CSP = (
    "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf;"
    " style-src 'unsafe-inline'; object-src 'self';"
)
_UPLOAD_PATH = re.compile(r"^/_matrix/media/(v3|r0)/upload(/[^/]+/[^/]+)?/?$")
_SCOPE_KEY = "pocketserver.streamed_body"
# Marks the scope of a request whose body this module streams (app.py lets it pass).
STREAMED_BODY_SCOPE_KEY = _SCOPE_KEY
DRAIN_SECONDS = 30


# -- streamed request bodies -----------------------------------------------------


class _StreamedBody:
    """The request body of one upload, pulled from ASGI ``receive`` on demand."""

    def __init__(self, receive: Any) -> None:
        self._receive = receive
        self._first = True
        self._complete = False
        self._disconnected = False
        self._handoff = trio.Event()

    async def quart_receive(self) -> dict[str, Any]:
        """What Quart sees: an empty body, then (only) the client's disconnect."""
        if self._first:
            self._first = False
            return {"type": "http.request", "body": b"", "more_body": False}
        await self._handoff.wait()
        if self._disconnected:
            return {"type": "http.disconnect"}
        if not self._complete:
            await trio.sleep_forever()  # wrap_send drains the rest after the answer
        while True:
            msg = await self._receive()
            if msg["type"] == "http.disconnect":
                return dict(msg)

    async def _drain(self, limit: int) -> None:
        """Read and drop what is left of a refused body, so the client, still sending,
        gets to read the answer (HTTP/1.1 clients read only once they have sent)."""
        seen = 0
        while not self._complete and not self._disconnected and seen <= limit:
            msg = await self._receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if not msg.get("more_body", False):
                    self._complete = True
            else:
                self._disconnected = True

    def wrap_send(self, send: Any, declared: int | None, drain_limit: int) -> Any:
        """Before answering a request whose body was not read to the end: read and drop
        the rest (bounded), so an HTTP/1.1 client, which reads only once it has sent,
        sees the answer and the connection stays usable; a body declared larger than
        the limit is not read at all, and the connection is closed after the answer."""

        async def _send(message: dict[str, Any]) -> None:
            if message.get("type") == "http.response.start" and not self._complete:
                if declared is None or declared <= drain_limit:
                    with trio.move_on_after(DRAIN_SECONDS):
                        await self._drain(drain_limit)
                if not self._complete:
                    message = dict(message)
                    message["headers"] = [*message.get("headers", []), (b"connection", b"close")]
            await send(message)

        return _send

    async def pieces(self) -> AsyncIterator[bytes]:
        try:
            while not self._complete:
                msg = await self._receive()
                if msg["type"] == "http.request":
                    if not msg.get("more_body", False):
                        self._complete = True
                    data = msg.get("body", b"")
                    if data:
                        yield data
                elif msg["type"] == "http.disconnect":
                    # Let Quart see the disconnect; it cancels this request, which drops
                    # the partial upload.
                    self._disconnected = True
                    self._handoff.set()
                    await trio.sleep_forever()
        finally:
            self._handoff.set()


class _StreamedUploads:
    def __init__(self, app: Any, quart_app: Any) -> None:
        self.app = app
        self.quart_app = quart_app

    def app_config_limit(self) -> int:
        return int(self.quart_app.extensions["pocketserver"].config.media.max_upload_size)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if (
            scope.get("type") == "http"
            and scope.get("method") in ("POST", "PUT")
            and _UPLOAD_PATH.match(scope.get("path", ""))
        ):
            body = _StreamedBody(receive)
            scope = dict(scope)
            scope[_SCOPE_KEY] = body
            declared = None
            for k, v in scope.get("headers", []):
                if k.lower() == b"content-length" and v.strip().isdigit():
                    declared = int(v)
            send = body.wrap_send(send, declared, self.app_config_limit())
            await self.app(scope, body.quart_receive, send)
            return
        await self.app(scope, receive, send)


@bp.record_once
def _install_streaming(state: Any) -> None:
    state.app.asgi_app = _StreamedUploads(state.app.asgi_app, state.app)


def _body() -> AsyncIterator[bytes]:
    streamed = request.scope.get(_SCOPE_KEY)
    if isinstance(streamed, _StreamedBody):
        return streamed.pieces()
    return _quart_body()


async def _quart_body() -> AsyncIterator[bytes]:
    async for piece in request.body:
        yield piece


def _upload_params() -> tuple[int | None, str | None, str | None]:
    filename = request.args.get("filename")
    if filename is not None and (len(filename) > 1024 or any(ord(c) < 32 for c in filename)):
        raise InvalidParam("filename is too long or contains control characters")
    return request.content_length, request.headers.get("Content-Type"), filename or None


# -- upload ----------------------------------------------------------------------------


@bp.route("/_matrix/media/<any(v3, r0):_v>/upload", methods=["POST"])
async def upload(_v: str) -> Response:
    """POST /_matrix/media/v3/upload"""
    requester = await require_auth()
    length, ctype, filename = _upload_params()
    svc = services().media
    svc.check_declared_length(length)
    mxc = await svc.upload(requester.user_id, _body(), length, ctype, filename)
    return json_response({"content_uri": mxc})


@bp.route("/_matrix/media/<any(v3, r0):_v>/upload/<server_name>/<media_id>", methods=["PUT"])
async def upload_to(_v: str, server_name: str, media_id: str) -> Response:
    """PUT /_matrix/media/v3/upload/{serverName}/{mediaId}"""
    requester = await require_auth()
    length, ctype, filename = _upload_params()
    await services().media.upload_to(
        requester.user_id, server_name, media_id, _body(), length, ctype, filename
    )
    return json_response({})


@bp.route("/_matrix/media/v1/create", methods=["POST"])
async def create() -> Response:
    """POST /_matrix/media/v1/create"""
    requester = await require_auth()
    mxc, expires = await services().media.create(requester.user_id)
    return json_response({"content_uri": mxc, "unused_expires_at": expires})


# -- download ---------------------------------------------------------------------


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None | str:
    """(start, end_exclusive) of a single byte range; None: whole; "unsatisfiable"."""
    if not header or request.headers.get("If-Range"):
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, sep, last = spec.strip().partition("-")
    if not sep:
        return None
    try:
        if first == "":
            n = int(last)
            if n <= 0:
                return "unsatisfiable"
            return max(size - n, 0), size
        start = int(first)
        end = int(last) + 1 if last else size
    except ValueError:
        return None
    if start < 0 or end <= start:
        return "unsatisfiable" if start >= size else None
    if start >= size:
        return "unsatisfiable"
    return start, min(end, size)


async def _serve(dl: Download, disposition: str, filename: str | None) -> Response:
    svc = services().media
    headers = {
        "Content-Type": dl.content_type,
        "Content-Disposition": content_disposition(disposition, filename),
        "Content-Security-Policy": CSP,
        "Cross-Origin-Resource-Policy": "cross-origin",
        "Accept-Ranges": "bytes",
        "Cache-Control": "private, max-age=86400, immutable",
    }
    rng = _parse_range(request.headers.get("Range"), dl.size)
    if rng == "unsatisfiable":
        headers["Content-Range"] = f"bytes */{dl.size}"
        headers["Content-Length"] = "0"
        return Response(b"", status=416, headers=headers)
    status = 200
    start, end = 0, dl.size
    if isinstance(rng, tuple):
        start, end = rng
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{dl.size}"
    headers["Content-Length"] = str(end - start)
    if request.method == "HEAD":
        resp = Response(b"", status=status, headers=headers)
    else:
        resp = Response(svc.stream(dl, start, end), status=status, headers=headers)
    # A large download may take longer than Quart's default response timeout.
    resp.timeout = None
    return resp


async def _download(
    server_name: str, media_id: str, filename: str | None, *, allow_remote: bool = True
) -> Response:
    timeout_ms = query_int("timeout_ms", None, minimum=0)
    dl = await services().media.download(server_name, media_id, timeout_ms, allow_remote=allow_remote)
    disposition = "inline" if is_inline_type(dl.content_type) else "attachment"
    return await _serve(dl, disposition, filename if filename is not None else dl.filename)


def thumbnail_params() -> tuple[int, int, str, bool, int | None]:
    """The query of a thumbnail request: (width, height, method, animated, timeout_ms)."""
    width = query_int("width", None, minimum=1)
    height = query_int("height", None, minimum=1)
    if width is None or height is None:
        raise MissingParam("width and height are required")
    method = request.args.get("method", "scale")
    if method not in ("crop", "scale"):
        raise InvalidParam("method must be crop or scale")
    animated = query_bool("animated", False)
    timeout_ms = query_int("timeout_ms", None, minimum=0)
    return width, height, method, animated, timeout_ms


async def _thumbnail(server_name: str, media_id: str, *, allow_remote: bool = True) -> Response:
    width, height, method, animated, timeout_ms = thumbnail_params()
    dl = await services().media.thumbnail(
        server_name, media_id, width, height, method, animated, timeout_ms, allow_remote=allow_remote
    )
    ext = dl.content_type.split("/", 1)[1] if "/" in dl.content_type else "bin"
    return await _serve(dl, "inline", f"thumbnail.{ext}")


@bp.route("/_matrix/client/v1/media/download/<server_name>/<media_id>", methods=["GET", "HEAD"])
@bp.route(
    "/_matrix/client/v1/media/download/<server_name>/<media_id>/<filename>",
    methods=["GET", "HEAD"],
)
async def download(server_name: str, media_id: str, filename: str | None = None) -> Response:
    """GET /_matrix/client/v1/media/download/{serverName}/{mediaId}[/{fileName}]"""
    await require_auth()
    return await _download(server_name, media_id, filename)


@bp.route("/_matrix/client/v1/media/thumbnail/<server_name>/<media_id>", methods=["GET", "HEAD"])
async def thumbnail(server_name: str, media_id: str) -> Response:
    """GET /_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}"""
    await require_auth()
    return await _thumbnail(server_name, media_id)


def _legacy_allowed() -> None:
    # The spec's freeze: new media is only on the authenticated endpoints. A server that
    # never allowed unauthenticated media holds nothing from before the freeze.
    if not services().config.media.legacy_unauthenticated:
        raise NotFound("Unauthenticated media access is frozen: use /_matrix/client/v1/media")


@bp.route("/_matrix/media/<any(v3, r0):_v>/download/<server_name>/<media_id>", methods=["GET", "HEAD"])
@bp.route(
    "/_matrix/media/<any(v3, r0):_v>/download/<server_name>/<media_id>/<filename>",
    methods=["GET", "HEAD"],
)
async def legacy_download(
    _v: str, server_name: str, media_id: str, filename: str | None = None
) -> Response:
    """GET /_matrix/media/v3/download/{serverName}/{mediaId}[/{fileName}] (deprecated)"""
    _legacy_allowed()
    return await _download(server_name, media_id, filename, allow_remote=query_bool("allow_remote", True))


@bp.route("/_matrix/media/<any(v3, r0):_v>/thumbnail/<server_name>/<media_id>", methods=["GET", "HEAD"])
async def legacy_thumbnail(_v: str, server_name: str, media_id: str) -> Response:
    """GET /_matrix/media/v3/thumbnail/{serverName}/{mediaId} (deprecated)"""
    _legacy_allowed()
    return await _thumbnail(server_name, media_id, allow_remote=query_bool("allow_remote", True))


# -- config and URL previews ----------------------------------------------------------


@bp.route("/_matrix/client/v1/media/config", methods=["GET"])
@bp.route("/_matrix/media/<any(v3, r0):_v>/config", methods=["GET"])
async def media_config(_v: str | None = None) -> Response:
    """GET /_matrix/client/v1/media/config"""
    await require_auth()
    return json_response({"m.upload.size": services().config.media.max_upload_size})


@bp.route("/_matrix/client/v1/media/preview_url", methods=["GET"])
@bp.route("/_matrix/media/<any(v3, r0):_v>/preview_url", methods=["GET"])
async def preview_url(_v: str | None = None) -> Response:
    """GET /_matrix/client/v1/media/preview_url"""
    requester = await require_auth()
    previews = services().media.url_previews
    if previews is None or not services().config.media.url_preview_enabled:
        raise MatrixError(404, "M_UNRECOGNIZED", "URL previews are disabled on this server")
    url = request.args.get("url")
    if not url:
        raise MissingParam("Missing url")
    query_int("ts", None)
    og = await previews.preview(url, requester.user_id)
    return json_response(og)
