"""Events that arrive over federation reach the application services of the server
they arrive at, like local ones: two real pocketservers on loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import trio

from tests.api.appservice_helpers import FakeAppservice, write_registration
from tests.api.helpers import V3, auth_headers, create_room, register, send
from tests.federation.servers import start_federating_server

AS_AUTH = auth_headers("as-token-fake")


async def test_a_remote_users_message_reaches_the_as(nursery: trio.Nursery, tmp_path: Path) -> None:
    fake = FakeAppservice()
    await fake.start(nursery)
    (tmp_path / "host").mkdir()
    reg = write_registration(tmp_path / "host", fake.url)
    host = await start_federating_server(
        nursery, tmp_path / "host", extra={"appservices": {"registration_files": [str(reg)]}}
    )
    remote = await start_federating_server(nursery, tmp_path / "remote")
    host_name = host.services.config.server_name
    async with httpx.AsyncClient(base_url=host.urls[0], timeout=30) as h, \
            httpx.AsyncClient(base_url=remote.urls[0], timeout=30) as r:
        # A portal room on the host, made by the bridge's bot.
        room = await create_room(h, "as-token-fake", preset="public_chat")
        bob, bob_token, _ = await register(r, "bob")
        resp = await r.post(
            f"{V3}/join/{quote(room, safe='')}", params={"server_name": host_name}, json={},
            headers=auth_headers(bob_token),
        )
        assert resp.status_code == 200, resp.text
        await send(r, bob_token, room, {"msgtype": "m.text", "body": "from afar"})

        def arrived() -> list[dict[str, Any]]:
            return [e for e in fake.events() if e["type"] == "m.room.message" and e["sender"] == bob]

        got = await fake.wait_for(arrived, timeout=60)
        assert got[0]["content"]["body"] == "from afar" and got[0]["room_id"] == room
        # Bob's join came the same way.
        assert any(e["type"] == "m.room.member" and e["state_key"] == bob for e in fake.events())
