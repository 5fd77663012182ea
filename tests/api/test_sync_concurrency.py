"""/sync under concurrency: initial syncs are built a few at a time."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import trio

from pocketserver.server import RunningServer
from pocketserver.services.sync import FULL_SYNCS_AT_ONCE
from tests.api.helpers import V3, auth_headers, create_room, register, sync
from tests.services.test_passwords import wait_until


async def test_initial_syncs_wait_for_a_slot_and_incremental_ones_do_not(
    server: RunningServer, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    users = [await register(http) for _ in range(FULL_SYNCS_AT_ONCE + 2)]
    room = await create_room(http, users[0][1], preset="public_chat")
    since = (await sync(http, users[0][1]))["next_batch"]
    svc = server.services.sync
    original = svc.sync
    building = 0
    peak = 0
    release = trio.Event()

    async def held(requester: Any, **kw: Any) -> Any:
        nonlocal building, peak
        if kw["since"] is None:
            building += 1
            peak = max(peak, building)
            await release.wait()
            building -= 1
        return await original(requester, **kw)

    monkeypatch.setattr(svc, "sync", held)
    answers: list[int] = []

    async def initial(token: str) -> None:
        r = await http.get(f"{V3}/sync", headers=auth_headers(token))
        answers.append(len(r.json()["rooms"]["join"]) if r.status_code == 200 else -r.status_code)

    async with trio.open_nursery() as nursery:
        for _, token, _ in users:
            nursery.start_soon(initial, token)
        await wait_until(
            lambda: building == FULL_SYNCS_AT_ONCE and svc.full_syncs.statistics().tasks_waiting == 2
        )
        # An incremental sync is answered meanwhile.
        r = await http.get(
            f"{V3}/sync", params={"since": since, "timeout": 0}, headers=auth_headers(users[0][1])
        )
        assert r.status_code == 200
        release.set()
    assert peak == FULL_SYNCS_AT_ONCE
    assert sorted(answers) == [0] * (len(users) - 1) + [1]
    assert room
