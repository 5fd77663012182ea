"""A burst of logins waits for the password hasher's threads instead of running every
hash at once (each argon2id hash holds 32 MiB), and every attempt is still answered."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import trio

from pocketserver.server import RunningServer
from pocketserver.services import passwords
from tests.api.helpers import login, register
from tests.conftest import make_config
from tests.services.test_passwords import CountingCheck, wait_until


@pytest.fixture
def config(tmp_path: Any) -> Any:
    return make_config(tmp_path, {"accounts": {"password_hash_threads": 2}})


async def test_concurrent_logins_hash_two_at_a_time(
    server: RunningServer, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    await register(http, "hasher", "right")
    fake = CountingCheck()
    monkeypatch.setattr(passwords, "check_password_sync", fake)
    hasher = server.services.accounts.passwords
    statuses: list[tuple[int, str]] = []

    async def attempt(i: int) -> None:
        r = await http.post(
            "/_matrix/client/v3/login",
            json={
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": "hasher"},
                "password": f"wrong{i}",
            },
        )
        statuses.append((r.status_code, r.json().get("errcode")))

    async with trio.open_nursery() as nursery:
        for i in range(10):
            nursery.start_soon(attempt, i)
        await wait_until(lambda: fake.active == 2 and hasher.statistics()["waiting"] == 8)
        fake.release.set()
    assert fake.peak == 2
    assert statuses == [(403, "M_FORBIDDEN")] * 10
    assert "access_token" in await login(http, "hasher", "right")
