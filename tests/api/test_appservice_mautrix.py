"""A bridge written with mautrix-python (the library heisenbridge and the mautrix
bridges are built on) against the real app: ping, ghost registration, joining,
masqueraded sends, and the homeserver's transactions parsed by mautrix."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from pocketserver.server import RunningServer, run_server
from tests.api.appservice_helpers import write_registration
from tests.api.helpers import V3, auth_headers, create_room, register, send
from tests.conftest import make_config

pytest.importorskip("mautrix")

HS = "test.local"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_mautrix_bridge(tmp_path: Path, nursery: trio.Nursery) -> None:
    port = _free_port()
    reg = write_registration(tmp_path, f"http://127.0.0.1:{port}")
    config = make_config(tmp_path, {"appservices": {"registration_files": [str(reg)]}})
    running: RunningServer = await nursery.start(partial(run_server, config, out=None, handle_signals=False))
    async with httpx.AsyncClient(base_url=running.urls[0], timeout=30) as http:
        user, token, _ = await register(http)
        room = await create_room(http, token, preset="public_chat")
        script = Path(__file__).with_name("mautrix_bridge.py")
        proc = await trio.lowlevel.open_process(
            [sys.executable, str(script), running.urls[0], HS, str(port), room],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
        assert proc.stdout is not None
        buffer = b""

        async def next_line() -> dict[str, Any]:
            nonlocal buffer
            with trio.fail_after(60):
                while b"\n" not in buffer:
                    chunk = await proc.stdout.receive_some(4096)  # type: ignore[union-attr]
                    assert chunk, "the bridge stopped"
                    buffer += chunk
            line, buffer = buffer.split(b"\n", 1)
            return dict(json.loads(line))

        try:
            assert isinstance((await next_line())["ping_ms"], int)
            assert (await next_line())["ready"]
            # The ghost's message is in the room, sent as the ghost.
            r = await http.get(f"{V3}/rooms/{room}/messages", params={"dir": "b", "limit": 5}, headers=auth_headers(token))
            bodies = [(e["sender"], e["content"].get("body")) for e in r.json()["chunk"] if e["type"] == "m.room.message"]
            assert (f"@_fake_mx:{HS}", "hello from mautrix") in bodies
            # And what the user says reaches the bridge through a transaction.
            await send(http, token, room, {"msgtype": "m.text", "body": "hello from matrix"})
            seen = []
            while not any(m["body"] == "hello from matrix" for m in seen):
                seen.append(await next_line())
            got = next(m for m in seen if m["body"] == "hello from matrix")
            assert got == {"sender": user, "body": "hello from matrix", "room_id": room}
            await send(http, token, room, {"msgtype": "m.text", "body": "bye"})
            with trio.fail_after(30):
                assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    running.stop.set()
