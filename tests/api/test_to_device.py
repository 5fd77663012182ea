"""Send-to-device messages over HTTP, delivered through E2eeService's /sync interface:
exactly once, deleted only once acknowledged, surviving a restart."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio

from pocketserver.config import Config
from pocketserver.server import run_server
from pocketserver.storage.streams import current_stream_pos
from tests.api.helpers import login, register
from tests.conftest import make_config

SEND = "/_matrix/client/v3/sendToDevice"


def h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def send(http: httpx.AsyncClient, token: str, txn: str, messages: Any, etype: str = "m.test") -> httpx.Response:
    return await http.put(f"{SEND}/{etype}/{txn}", json={"messages": messages}, headers=h(token))


async def test_message_delivered_once_and_deleted_after_ack(server: Any, http: httpx.AsyncClient) -> None:
    e2ee = server.services.e2ee
    alice, atok, _ = await register(http)
    bob, _, bdev = await register(http)
    r = await send(http, atok, "t1", {bob: {bdev: {"n": 1}}})
    assert r.status_code == 200 and r.json() == {}
    upto = server.services.notifier.position
    events, reached = await e2ee.to_device_for_sync(bob, bdev, 0, upto)
    assert events == [{"sender": alice, "type": "m.test", "content": {"n": 1}}]
    assert reached == upto
    # Not acknowledged yet (the client retried the same since token): delivered again.
    again, _ = await e2ee.to_device_for_sync(bob, bdev, 0, upto)
    assert again == events
    # Acknowledged by the next token: gone for good.
    after, _ = await e2ee.to_device_for_sync(bob, bdev, upto, server.services.notifier.position)
    assert after == []
    gone, _ = await e2ee.to_device_for_sync(bob, bdev, 0, server.services.notifier.position)
    assert gone == []


async def test_wildcard_reaches_every_device_and_txn_is_idempotent(server: Any, http: httpx.AsyncClient) -> None:
    e2ee = server.services.e2ee
    alice, atok, _ = await register(http, "tdalice")
    bob, _, bdev1 = await register(http, "tdbob")
    bdev2 = str((await login(http, "tdbob"))["device_id"])
    for _ in range(2):  # a retry with the same transaction ID is a no-op
        r = await send(http, atok, "same", {bob: {"*": {"hello": "all"}}})
        assert r.status_code == 200
    upto = server.services.notifier.position
    for dev in (bdev1, bdev2):
        events, _ = await e2ee.to_device_for_sync(bob, dev, 0, upto)
        assert events == [{"sender": alice, "type": "m.test", "content": {"hello": "all"}}]
    # The same transaction ID with another event type is another request.
    r = await send(http, atok, "same", {bob: {bdev1: {"x": 1}}}, etype="m.other")
    assert r.status_code == 200
    events, _ = await e2ee.to_device_for_sync(bob, bdev1, 0, server.services.notifier.position)
    assert [e["type"] for e in events] == ["m.test", "m.other"]


async def test_limited_batches_continue_in_order(server: Any, http: httpx.AsyncClient) -> None:
    e2ee = server.services.e2ee
    _, atok, _ = await register(http)
    bob, _, bdev = await register(http)
    for i in range(7):
        assert (await send(http, atok, f"b{i}", {bob: {bdev: {"i": i}}})).status_code == 200
    upto = server.services.notifier.position
    seen: list[int] = []
    since = 0
    for _ in range(10):
        events, reached = await e2ee.to_device_for_sync(bob, bdev, since, upto, limit=3)
        seen += [e["content"]["i"] for e in events]
        if reached == upto and len(events) < 3:
            break
        since = reached
    assert seen == list(range(7))


async def test_unknown_targets_and_bad_input(server: Any, http: httpx.AsyncClient) -> None:
    _, atok, _ = await register(http)
    bob, _, bdev = await register(http)
    r = await send(http, atok, "u1", {"@ghost:test.local": {"X": {}}, bob: {"NODEV": {"a": 1}}})
    assert r.status_code == 200
    events, _ = await server.services.e2ee.to_device_for_sync(bob, bdev, 0, server.services.notifier.position)
    assert events == []
    cases: list[tuple[Any, int, str]] = [
        ("nope", 400, "M_BAD_JSON"),
        ({bob: ["x"]}, 400, "M_BAD_JSON"),
        ({bob: {bdev: "text"}}, 400, "M_BAD_JSON"),
        ({"not-a-user": {bdev: {}}}, 400, "M_INVALID_PARAM"),
        ({bob: {bdev: {"big": "x" * 70_000}}}, 413, "M_TOO_LARGE"),
    ]
    for i, (messages, status, errcode) in enumerate(cases):
        r = await send(http, atok, f"bad{i}", messages)
        assert (r.status_code, r.json()["errcode"]) == (status, errcode), messages
    r = await http.put(f"{SEND}/m.test/nobody", json={}, headers=h(atok))
    assert r.json()["errcode"] == "M_MISSING_PARAM"
    r = await http.put(f"{SEND}/m.test/anon", json={"messages": {}})
    assert r.status_code == 401


async def test_remote_targets_are_queued_for_federation(server: Any, http: httpx.AsyncClient) -> None:
    alice, atok, _ = await register(http)
    r = await send(http, atok, "r1", {"@bob:remote.example": {"D": {"k": "v"}}})
    assert r.status_code == 200

    def outbox(conn: Any) -> list[tuple[str, bytes]]:
        return list(conn.execute("SELECT destination, payload FROM federation_outbox"))

    rows = await server.services.db.read(outbox)
    assert len(rows) == 1 and rows[0][0] == "remote.example"
    assert b'"m.direct_to_device"' in rows[0][1] and alice.encode() in rows[0][1]


async def test_flood_is_rate_limited(tmp_path: Path, nursery: trio.Nursery) -> None:
    cfg = make_config(
        tmp_path,
        {"rate_limits": {"enabled": True, "to_device": {"per_second": 0.1, "burst": 2},
                         "registration": {"per_second": 100, "burst": 100}}},
    )
    running = await nursery.start(partial(run_server, cfg, out=None, handle_signals=False))
    try:
        async with httpx.AsyncClient(base_url=running.urls[0]) as http:
            _, atok, _ = await register(http)
            bob, _, bdev = await register(http)
            statuses = []
            for i in range(30):
                r = await send(http, atok, f"f{i}", {bob: {bdev: {"i": i}}})
                statuses.append(r.status_code)
                if r.status_code == 429:
                    assert r.json()["errcode"] == "M_LIMIT_EXCEEDED"
                    assert r.json()["retry_after_ms"] > 0
                    break
            assert statuses[-1] == 429 and statuses[0] == 200
    finally:
        running.stop.set()


async def test_pending_messages_survive_a_restart(config: Config, nursery: trio.Nursery) -> None:
    async with trio.open_nursery() as first:
        running = await first.start(partial(run_server, config, out=None, handle_signals=False))
        async with httpx.AsyncClient(base_url=running.urls[0]) as http:
            _, atok, _ = await register(http)
            bob, _, bdev = await register(http)
            assert (await send(http, atok, "p1", {bob: {bdev: {"keep": True}}})).status_code == 200
        running.stop.set()
    # The first server has shut down completely; a new one opens the same database.
    running = await nursery.start(partial(run_server, config, out=None, handle_signals=False))
    try:
        upto = await running.services.db.read(current_stream_pos)
        events, _ = await running.services.e2ee.to_device_for_sync(bob, bdev, 0, upto)
        assert [e["content"] for e in events] == [{"keep": True}]
    finally:
        running.stop.set()
