"""An application service that is down while its server restarts loses nothing: the
backlog is in the database, and once the AS is back every event arrives, in order."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio

from pocketserver.server import RunningServer, run_server
from tests.api.appservice_helpers import AsRequest, FakeAppservice, write_registration
from tests.api.helpers import V3, auth_headers, create_room, send
from tests.conftest import make_config

AS_TOKEN = "as-token-fake"


async def test_backlog_survives_a_restart(tmp_path: Path, nursery: trio.Nursery) -> None:
    down = True

    async def handler(req: AsRequest) -> tuple[int, Any]:
        if down and req.path.startswith("/_matrix/app/v1/transactions/"):
            return 503, {"errcode": "M_UNKNOWN"}
        return 200, {}

    fake = FakeAppservice(handler)
    await fake.start(nursery)
    config = make_config(tmp_path, {"appservices": {"registration_files": [str(write_registration(tmp_path, fake.url))]}})
    sent: list[str] = []
    async with trio.open_nursery() as first:
        running: RunningServer = await first.start(partial(run_server, config, out=None, handle_signals=False))
        async with httpx.AsyncClient(base_url=running.urls[0], timeout=30) as http:
            room = await create_room(http, AS_TOKEN)
            for i in range(150):  # more than one transaction's worth
                sent.append(await send(http, AS_TOKEN, room, {"msgtype": "m.text", "body": f"m{i}"}))
            # The AS refused at least one transaction: the backlog is queued.
            await fake.wait_for(lambda: fake.transactions())
        running.stop.set()
    refused = len(fake.requests)
    down = False
    async with trio.open_nursery() as second:
        running = await second.start(partial(run_server, config, out=None, handle_signals=False))
        got = await fake.wait_for(
            lambda: [e["event_id"] for e in fake.events() if e["type"] == "m.room.message"] == sent or None,
            timeout=60,
        )
        assert got
        assert len(fake.requests) > refused
        async with httpx.AsyncClient(base_url=running.urls[0], timeout=30) as http:
            # The server carries on as usual afterwards.
            r = await http.get(f"{V3}/account/whoami", headers=auth_headers(AS_TOKEN))
            assert r.status_code == 200
        running.stop.set()
