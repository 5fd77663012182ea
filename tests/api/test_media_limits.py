"""Upload limits over HTTP: the size limit (declared and streamed) and per-user quotas."""

from __future__ import annotations

import os
from typing import Any

import httpx
import pytest

from pocketserver.storage import media as store
from tests.api.helpers_media import auth, make_user
from tests.api.test_media import UPLOAD, _raw_request, _upload
from tests.conftest import make_config


@pytest.fixture
def config(tmp_path: Any) -> Any:
    return make_config(tmp_path, {"media": {"max_upload_size": 1_000_000, "per_user_quota": 2_500_000}})


async def test_oversized_uploads_are_refused_before_the_body_is_read(server: Any, http: httpx.AsyncClient) -> None:
    _, token = await make_user(server)
    # Declared too large: answered without sending a byte of the body.
    head = (
        f"POST {UPLOAD} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: application/zip\r\nContent-Length: 5000000\r\n\r\n"
    ).encode()
    reply = await _raw_request(server.urls[0], head, b"")
    assert reply.startswith(b"HTTP/1.1 413")
    assert b"M_TOO_LARGE" in reply

    # Not declared (chunked): refused once the stream passes the limit.
    async def chunks() -> Any:
        for _ in range(20):
            yield b"z" * 100_000

    r = await http.post(UPLOAD, content=chunks(), headers=auth(token))
    assert r.status_code == 413 and r.json()["errcode"] == "M_TOO_LARGE"
    counts = await server.services.db.read(store.count_rows, ["media", "media_content", "media_chunks"])
    assert counts == {"media": 0, "media_content": 0, "media_chunks": 0}


async def test_quota_is_enforced_per_user(server: Any, http: httpx.AsyncClient) -> None:
    _, token = await make_user(server)
    _, other = await make_user(server)
    await _upload(http, token, os.urandom(900_000))
    await _upload(http, token, os.urandom(900_000))
    r = await http.post(UPLOAD, content=os.urandom(900_000), headers=auth(token))
    assert r.status_code == 403 and r.json()["errcode"] == "M_FORBIDDEN"
    await _upload(http, other, os.urandom(900_000))


