"""This server's media for other servers (server-server content_repository.yaml).

Spec: server-server-api.md, "Content Repository". Both routes need a signed request
and serve only this server's own media (never a copy of a third server's: a remote
server asks the origin itself). The answer is ``multipart/mixed``: a JSON metadata
part ``{}``, then the bytes with their ``Content-Type`` and ``Content-Disposition``
(:mod:`pocketserver.federation.multipart`), streamed from the chunk store, so a large
file is never whole in memory. Unknown, expired and quarantined media -> 404
``M_NOT_FOUND``.
"""

from __future__ import annotations

from quart import Blueprint, Response

from pocketserver.api.client.media import thumbnail_params
from pocketserver.api.common import query_int, services
from pocketserver.api.federation.auth import authenticated_origin
from pocketserver.federation.multipart import (
    content_disposition,
    media_head,
    media_parts,
    media_tail,
    new_boundary,
)
from pocketserver.services.media import Download, is_inline_type

bp = Blueprint("federation_media", __name__)


def _multipart(dl: Download, disposition: str) -> Response:
    svc = services().media
    boundary = new_boundary()
    ctype = dl.content_type
    head = media_head(boundary, ctype, disposition)
    length = len(head) + dl.size + len(media_tail(boundary))
    resp = Response(
        media_parts(boundary, ctype, disposition, svc.stream(dl)),
        status=200,
        headers={
            "Content-Type": f"multipart/mixed; boundary={boundary}",
            "Content-Length": str(length),
        },
    )
    # A large file may take longer than Quart's default response timeout.
    resp.timeout = None
    return resp


@bp.route("/_matrix/federation/v1/media/download/<media_id>", methods=["GET"])
async def download(media_id: str) -> Response:
    """GET /_matrix/federation/v1/media/download/{mediaId}"""
    await authenticated_origin()
    svc = services()
    timeout_ms = query_int("timeout_ms", None, minimum=0)
    dl = await svc.media.download(svc.config.server_name, media_id, timeout_ms, allow_remote=False)
    kind = "inline" if is_inline_type(dl.content_type) else "attachment"
    return _multipart(dl, content_disposition(kind, dl.filename))


@bp.route("/_matrix/federation/v1/media/thumbnail/<media_id>", methods=["GET"])
async def thumbnail(media_id: str) -> Response:
    """GET /_matrix/federation/v1/media/thumbnail/{mediaId}?width&height&method&animated"""
    await authenticated_origin()
    svc = services()
    width, height, method, animated, timeout_ms = thumbnail_params()
    dl = await svc.media.thumbnail(
        svc.config.server_name, media_id, width, height, method, animated, timeout_ms,
        allow_remote=False,
    )
    ext = dl.content_type.split("/", 1)[1] if "/" in dl.content_type else "bin"
    return _multipart(dl, content_disposition("inline", f"thumbnail.{ext}"))
