"""A server killed (SIGKILL) in the middle of an upload: after the restart no partial
media is visible and the space the partial upload took is free again."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import apsw
import httpx

from tests.interop.conftest import start_pocketserver


def _register(base_url: str) -> str:
    body: dict[str, Any] = {"username": "crash", "password": "crash-pw-1", "auth": {"type": "m.login.dummy"}}
    r = httpx.post(f"{base_url}/_matrix/client/v3/register", json=body)
    if r.status_code == 401:
        body["auth"]["session"] = r.json()["session"]
        r = httpx.post(f"{base_url}/_matrix/client/v3/register", json=body)
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


def _login(base_url: str) -> str:
    r = httpx.post(
        f"{base_url}/_matrix/client/v3/login",
        json={"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "crash"}, "password": "crash-pw-1"},
    )
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


def _query(db: Path, sql: str) -> Any:
    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        conn.setbusytimeout(5000)
        return conn.execute(sql).fetchone()
    finally:
        conn.close()


def _counts(db: Path) -> tuple[int, int, int]:
    row = _query(
        db,
        "SELECT (SELECT COUNT(*) FROM media), (SELECT COUNT(*) FROM media_content),"
        " (SELECT COUNT(*) FROM media_chunks)",
    )
    return int(row[0]), int(row[1]), int(row[2])


def test_killed_during_upload_leaves_no_partial_media_and_no_leaked_space(tmp_path: Path) -> None:
    partial = os.urandom(12 * 1024 * 1024)
    with start_pocketserver(tmp_path, server_name="test.local") as sp:
        db = sp.data_dir / "homeserver.db"
        token = _register(sp.base_url)
        host, port = sp.base_url.split("//")[1].split(":")
        sock = socket.create_connection((host, int(port)))
        try:
            sock.sendall(
                (
                    "POST /_matrix/media/v3/upload?filename=big.bin HTTP/1.1\r\nHost: x\r\n"
                    f"Authorization: Bearer {token}\r\nContent-Type: application/octet-stream\r\n"
                    f"Content-Length: {30 * 1024 * 1024}\r\n\r\n"
                ).encode()
            )
            sock.sendall(partial)
            # Wait (bounded) until the server has stored part of it, then kill it.
            deadline = time.monotonic() + 60
            while _counts(db)[2] < 8:
                assert time.monotonic() < deadline, "the server never stored the chunks"
                time.sleep(0.05)
            assert _counts(db)[0] == 0  # never visible as media, even before the restart
            sp.proc.kill()
            sp.proc.wait(timeout=20)
        finally:
            sock.close()

    with start_pocketserver(tmp_path, server_name="test.local") as sp:
        assert _counts(db) == (0, 0, 0)
        page_size, pages, free = _query(
            db, "SELECT * FROM pragma_page_size, pragma_page_count, pragma_freelist_count"
        )
        # The partial upload's pages are free for reuse ...
        assert free * page_size >= 8 * 1024 * 1024
        # (The database's own size, pages in use or free, wherever they are: the WAL
        # is only copied back once the writes pause, and it is reused, not shrunk.)
        size_before = pages * page_size
        # ... and are reused: uploading the same amount again barely grows the file.
        token = _login(sp.base_url)
        r = httpx.post(
            f"{sp.base_url}/_matrix/media/v3/upload",
            content=partial[: 8 * 1024 * 1024],
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )
        assert r.status_code == 200
        (pages_after,) = _query(db, "SELECT * FROM pragma_page_count")
        assert pages_after * page_size - size_before < 4 * 1024 * 1024
