"""The Application Service API against the real app, with a fake AS on loopback:
registration and masquerading, exclusive namespaces, transactions (in order, retried
after errors and timeouts, kept across a restart), queries, third-party look-ups,
published room lists, ping."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from pocketserver.config import Config
from pocketserver.server import RunningServer, run_server
from tests.api.appservice_helpers import AsRequest, FakeAppservice, write_registration
from tests.api.helpers import V3, auth_headers, create_room, register, send
from tests.conftest import make_config

AS_TOKEN = "as-token-fake"
AS_AUTH = auth_headers(AS_TOKEN)
HS = "test.local"


@pytest.fixture
async def fake_as(nursery: trio.Nursery) -> FakeAppservice:
    fake = FakeAppservice()
    await fake.start(nursery)
    return fake


@pytest.fixture
def as_config(tmp_path: Path, fake_as: FakeAppservice) -> Config:
    reg = write_registration(tmp_path, fake_as.url)
    return make_config(tmp_path, {"appservices": {"registration_files": [str(reg)]}})


@pytest.fixture
async def as_server(as_config: Config, nursery: trio.Nursery) -> AsyncIterator[RunningServer]:
    running: RunningServer = await nursery.start(partial(run_server, as_config, out=None, handle_signals=False))
    yield running
    running.stop.set()


@pytest.fixture
async def http(as_server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=as_server.urls[0], timeout=30) as client:
        yield client


async def as_register(http: httpx.AsyncClient, username: str, **extra: Any) -> httpx.Response:
    return await http.post(
        f"{V3}/register", json={"type": "m.login.application_service", "username": username, **extra},
        headers=AS_AUTH,
    )


# -- the AS as a client -----------------------------------------------------------------


async def test_as_registers_users_of_its_namespace_without_password(http: httpx.AsyncClient) -> None:
    r = await as_register(http, "_fake_alice")
    assert r.status_code == 200, r.text
    assert r.json()["user_id"] == f"@_fake_alice:{HS}" and r.json()["access_token"]
    r = await as_register(http, "_fake_bob", inhibit_login=True)
    assert r.status_code == 200 and "access_token" not in r.json() and "device_id" not in r.json()
    # No device for a user registered with inhibit_login.
    r = await http.get(f"{V3}/devices", params={"user_id": f"@_fake_bob:{HS}"}, headers=AS_AUTH)
    assert r.status_code == 200 and r.json()["devices"] == []
    # Outside its namespace: M_EXCLUSIVE.
    r = await as_register(http, "alice")
    assert r.status_code == 400 and r.json()["errcode"] == "M_EXCLUSIVE"
    # The AS type without the AS's token: 401.
    r = await http.post(f"{V3}/register", json={"type": "m.login.application_service", "username": "_fake_x"})
    assert r.status_code == 401 and r.json()["errcode"] == "M_MISSING_TOKEN"
    r = await http.post(
        f"{V3}/register", json={"type": "m.login.application_service", "username": "_fake_x"},
        headers=auth_headers("wrong"),
    )
    assert r.status_code == 401 and r.json()["errcode"] == "M_UNKNOWN_TOKEN"
    # And the AS logs its user in without a password.
    r = await http.post(
        f"{V3}/login",
        json={"type": "m.login.application_service", "identifier": {"type": "m.id.user", "user": "_fake_bob"}},
        headers=AS_AUTH,
    )
    assert r.status_code == 200, r.text
    assert r.json()["user_id"] == f"@_fake_bob:{HS}"


async def test_normal_users_cannot_take_exclusive_names(http: httpx.AsyncClient) -> None:
    r = await http.post(
        f"{V3}/register", json={"username": "_fake_eve", "password": "pw", "auth": {"type": "m.login.dummy"}}
    )
    assert r.status_code == 400 and r.json()["errcode"] == "M_EXCLUSIVE"
    _, token, _ = await register(http)
    room = await create_room(http, token)
    r = await http.put(f"{V3}/directory/room/%23_fake_chan:{HS}", json={"room_id": room}, headers=auth_headers(token))
    assert r.status_code == 400 and r.json()["errcode"] == "M_EXCLUSIVE"
    # The AS itself may, without being in the room.
    r = await http.put(f"{V3}/directory/room/%23_fake_chan:{HS}", json={"room_id": room}, headers=AS_AUTH)
    assert r.status_code == 200, r.text
    r = await http.get(f"{V3}/directory/room/%23_fake_chan:{HS}")
    assert r.json()["room_id"] == room
    # Nor delete it, though they created the room.
    r = await http.delete(f"{V3}/directory/room/%23_fake_chan:{HS}", headers=auth_headers(token))
    assert r.status_code == 400 and r.json()["errcode"] == "M_EXCLUSIVE"


async def test_masquerading(http: httpx.AsyncClient) -> None:
    r = await http.get(f"{V3}/account/whoami", headers=AS_AUTH)
    assert r.json()["user_id"] == f"@_fake_bot:{HS}"
    # A ghost must be registered before the AS acts as it.
    r = await http.get(f"{V3}/account/whoami", params={"user_id": f"@_fake_carol:{HS}"}, headers=AS_AUTH)
    assert r.status_code == 403
    body = (await as_register(http, "_fake_carol")).json()
    r = await http.get(f"{V3}/account/whoami", params={"user_id": f"@_fake_carol:{HS}"}, headers=AS_AUTH)
    assert r.json()["user_id"] == f"@_fake_carol:{HS}"
    # With the device it has (v1.17 device masquerading), not another.
    r = await http.get(
        f"{V3}/account/whoami", params={"user_id": f"@_fake_carol:{HS}", "device_id": body["device_id"]},
        headers=AS_AUTH,
    )
    assert r.json()["device_id"] == body["device_id"]
    r = await http.get(
        f"{V3}/account/whoami", params={"user_id": f"@_fake_carol:{HS}", "device_id": "NOPE"}, headers=AS_AUTH
    )
    assert r.status_code == 400 and r.json()["errcode"] == "M_UNKNOWN_DEVICE"
    # Nobody outside its namespace.
    user, _, _ = await register(http)
    r = await http.get(f"{V3}/account/whoami", params={"user_id": user}, headers=AS_AUTH)
    assert r.status_code == 403 and r.json()["errcode"] == "M_FORBIDDEN"


async def test_timestamp_massaging(http: httpx.AsyncClient) -> None:
    room = await create_room(http, AS_TOKEN)
    r = await http.put(
        f"{V3}/rooms/{room}/send/m.room.message/t1", params={"ts": "1234567890"}, json={"body": "old"},
        headers=AS_AUTH,
    )
    assert r.status_code == 200, r.text
    event = (await http.get(f"{V3}/rooms/{room}/event/{r.json()['event_id']}", headers=AS_AUTH)).json()
    assert event["origin_server_ts"] == 1234567890
    r = await http.put(
        f"{V3}/rooms/{room}/send/m.room.message/t2", params={"ts": "soon"}, json={"body": "x"}, headers=AS_AUTH
    )
    assert r.status_code == 400 and r.json()["errcode"] == "M_INVALID_PARAM"


# -- pushing -------------------------------------------------------------------------------------


async def test_events_reach_the_as_in_order_with_its_token(http: httpx.AsyncClient, fake_as: FakeAppservice) -> None:
    await as_register(http, "_fake_dave")
    user, token, _ = await register(http)
    room = await create_room(http, token, preset="public_chat")
    r = await http.post(f"{V3}/join/{room}", params={"user_id": f"@_fake_dave:{HS}"}, json={}, headers=AS_AUTH)
    assert r.status_code == 200, r.text
    sent = [await send(http, token, room, {"msgtype": "m.text", "body": f"m{i}"}) for i in range(30)]
    got = await fake_as.wait_for(
        lambda: [e["event_id"] for e in fake_as.events() if e["type"] == "m.room.message"] == sent or None
    )
    assert got
    first = fake_as.transactions()[0]
    assert first.headers["authorization"] == "Bearer hs-token-fake"
    assert first.method == "PUT"
    txn_ids = [int(t.path.rsplit("/", 1)[1]) for t in fake_as.transactions()]
    assert txn_ids == sorted(txn_ids)
    # A room without any user of the namespace is not the AS's business.
    other = await create_room(http, token)
    await send(http, token, other, {"msgtype": "m.text", "body": "private"})
    await send(http, token, room, {"msgtype": "m.text", "body": "marker"})
    await fake_as.wait_for(lambda: any(e["content"].get("body") == "marker" for e in fake_as.events()))
    assert not any(e["room_id"] == other for e in fake_as.events())


async def test_transactions_retried_after_500_and_timeout(
    http: httpx.AsyncClient, fake_as: FakeAppservice, as_server: RunningServer
) -> None:
    as_server.services.appservices.timeout_s = 1.0
    answers = ["500", "hang", "ok"]

    async def flaky(req: AsRequest) -> tuple[int, Any]:
        if not req.path.startswith("/_matrix/app/v1/transactions/") or not answers:
            return 200, {}
        what = answers.pop(0)
        if what == "500":
            return 500, {"errcode": "M_UNKNOWN"}
        if what == "hang":
            await trio.sleep_forever()
        return 200, {}

    fake_as.handler = flaky
    room = await create_room(http, AS_TOKEN)
    eid = await send(http, AS_TOKEN, room, {"msgtype": "m.text", "body": "persist"})
    await fake_as.wait_for(lambda: any(e["event_id"] == eid for e in fake_as.events()))
    first = fake_as.transactions()[:3]
    # The first transaction was refused (500), then not answered (timeout), then taken:
    # the same transaction ID and body each time; nothing after it went first.
    assert len({t.path for t in first}) == 1
    assert first[0].body == first[1].body == first[2].body
    assert not answers


async def test_user_and_alias_queries(http: httpx.AsyncClient, fake_as: FakeAppservice) -> None:
    _, token, _ = await register(http)
    room = await create_room(http, token, preset="public_chat")
    portal = await create_room(http, AS_TOKEN, preset="public_chat")

    async def create_on_query(req: AsRequest) -> tuple[int, Any]:
        if req.path == f"/_matrix/app/v1/users/@_fake_ghost:{HS}":
            assert (await as_register(http, "_fake_ghost")).status_code == 200
            return 200, {}
        if req.path == f"/_matrix/app/v1/rooms/#_fake_#chan:{HS}":
            r = await http.put(f"{V3}/directory/room/%23_fake_%23chan:{HS}", json={"room_id": portal}, headers=AS_AUTH)
            assert r.status_code == 200
            return 200, {}
        return 404, {"errcode": "M_NOT_FOUND"}

    fake_as.handler = create_on_query
    r = await http.post(f"{V3}/rooms/{room}/invite", json={"user_id": f"@_fake_ghost:{HS}"}, headers=auth_headers(token))
    assert r.status_code == 200, r.text
    assert any(q.path.endswith(f"/users/@_fake_ghost:{HS}") for q in fake_as.requests)
    # Joining an unknown alias of the namespace: the AS creates the portal room.
    r = await http.post(f"{V3}/join/%23_fake_%23chan:{HS}", json={}, headers=auth_headers(token))
    assert r.status_code == 200, r.text
    assert r.json()["room_id"] == portal
    # An alias the AS does not create stays unknown.
    r = await http.get(f"{V3}/directory/room/%23_fake_nothing:{HS}")
    assert r.status_code == 404 and r.json()["errcode"] == "M_NOT_FOUND"


async def test_third_party_lookups_go_to_the_as(http: httpx.AsyncClient, fake_as: FakeAppservice) -> None:
    async def thirdparty(req: AsRequest) -> tuple[int, Any]:
        if req.path == "/_matrix/app/v1/thirdparty/protocol/fakenet":
            return 200, {"user_fields": ["nick"], "location_fields": ["channel"], "icon": "mxc://x/y",
                         "field_types": {}, "instances": [{"desc": "Libera", "network_id": "libera", "fields": {}}]}
        if req.path == "/_matrix/app/v1/thirdparty/user/fakenet":
            return 200, [{"userid": f"@_fake_{req.query['nick']}:{HS}", "protocol": "fakenet", "fields": req.query}]
        return 404, {"errcode": "M_NOT_FOUND"}

    fake_as.handler = thirdparty
    _, token, _ = await register(http)
    r = await http.get(f"{V3}/thirdparty/protocols", headers=auth_headers(token))
    assert r.status_code == 200
    assert r.json()["fakenet"]["instances"][0]["instance_id"] == "fakebridge|libera"
    r = await http.get(f"{V3}/thirdparty/user/fakenet", params={"nick": "zoe"}, headers=auth_headers(token))
    assert r.json() == [{"userid": f"@_fake_zoe:{HS}", "protocol": "fakenet", "fields": {"nick": "zoe"}}]
    assert fake_as.requests[-1].headers["authorization"] == "Bearer hs-token-fake"
    r = await http.get(f"{V3}/thirdparty/protocol/nonet", headers=auth_headers(token))
    assert r.status_code == 404


async def test_published_room_lists_are_per_network(http: httpx.AsyncClient) -> None:
    _, token, _ = await register(http)
    room = await create_room(http, token, preset="public_chat")
    r = await http.put(f"{V3}/directory/list/appservice/libera/{room}", json={"visibility": "public"}, headers=auth_headers(token))
    assert r.status_code == 403  # only an AS
    r = await http.put(f"{V3}/directory/list/appservice/libera/{room}", json={"visibility": "public"}, headers=AS_AUTH)
    assert r.status_code == 200, r.text

    async def listed(body: dict[str, Any]) -> bool:
        r = await http.post(f"{V3}/publicRooms", json=body, headers=auth_headers(token))
        return any(c["room_id"] == room for c in r.json()["chunk"])

    assert not await listed({})
    assert await listed({"third_party_instance_id": "fakebridge|libera"})
    assert await listed({"include_all_networks": True})
    assert not await listed({"third_party_instance_id": "fakebridge|oftc"})
    r = await http.put(f"{V3}/directory/list/appservice/libera/{room}", json={"visibility": "private"}, headers=AS_AUTH)
    assert not await listed({"third_party_instance_id": "fakebridge|libera"})


async def test_ping(http: httpx.AsyncClient, fake_as: FakeAppservice) -> None:
    r = await http.post("/_matrix/client/v1/appservice/fakebridge/ping", json={"transaction_id": "meow"}, headers=AS_AUTH)
    assert r.status_code == 200, r.text
    assert isinstance(r.json()["duration_ms"], int)
    ping = fake_as.requests[-1]
    assert ping.path == "/_matrix/app/v1/ping" and ping.body == {"transaction_id": "meow"}

    async def refuse(req: AsRequest) -> tuple[int, Any]:
        return 403, {"errcode": "M_FORBIDDEN"}

    fake_as.handler = refuse
    r = await http.post("/_matrix/client/v1/appservice/fakebridge/ping", json={}, headers=AS_AUTH)
    assert r.status_code == 502 and r.json()["errcode"] == "M_BAD_STATUS" and r.json()["status"] == 403
    r = await http.post("/_matrix/client/v1/appservice/other/ping", json={}, headers=AS_AUTH)
    assert r.status_code == 403
    _, token, _ = await register(http)
    r = await http.post("/_matrix/client/v1/appservice/fakebridge/ping", json={}, headers=auth_headers(token))
    assert r.status_code == 403


async def test_deactivation_by_the_as(http: httpx.AsyncClient) -> None:
    await as_register(http, "_fake_gone")
    r = await http.post(f"{V3}/account/deactivate", params={"user_id": f"@_fake_gone:{HS}"}, json={}, headers=AS_AUTH)
    assert r.status_code == 200, r.text
    r = await http.get(f"{V3}/account/whoami", params={"user_id": f"@_fake_gone:{HS}"}, headers=AS_AUTH)
    assert r.status_code == 403


async def test_profile_of_an_unknown_ghost_asks_the_as(http: httpx.AsyncClient, fake_as: FakeAppservice) -> None:
    async def create(req: AsRequest) -> tuple[int, Any]:
        if req.path == f"/_matrix/app/v1/users/@_fake_nick:{HS}":
            assert (await as_register(http, "_fake_nick", inhibit_login=True)).status_code == 200
            return 200, {}
        return 404, {"errcode": "M_NOT_FOUND"}

    fake_as.handler = create
    r = await http.get(f"{V3}/profile/@_fake_nick:{HS}")
    assert r.status_code == 200 and r.json()["displayname"] == "_fake_nick"
    r = await http.get(f"{V3}/profile/@_fake_nobody:{HS}")
    assert r.status_code == 404


async def test_ephemeral_data_when_the_registration_asks(
    tmp_path: Path, nursery: trio.Nursery, fake_as: FakeAppservice
) -> None:
    reg = write_registration(tmp_path, fake_as.url, as_id="eph", extra="receive_ephemeral: true\n")
    config = make_config(tmp_path, {"appservices": {"registration_files": [str(reg)]}})
    running: RunningServer = await nursery.start(partial(run_server, config, out=None, handle_signals=False))
    async with httpx.AsyncClient(base_url=running.urls[0], timeout=30) as http:
        user, token, _ = await register(http)
        room = await create_room(http, token, preset="public_chat")
        await as_register(http, "_fake_eph")
        r = await http.post(f"{V3}/join/{room}", params={"user_id": f"@_fake_eph:{HS}"}, json={}, headers=AS_AUTH)
        assert r.status_code == 200
        eid = await send(http, token, room, {"msgtype": "m.text", "body": "hi"})
        r = await http.put(f"{V3}/rooms/{room}/typing/{user}", json={"typing": True, "timeout": 30000}, headers=auth_headers(token))
        assert r.status_code == 200
        r = await http.post(f"{V3}/rooms/{room}/receipt/m.read/{eid}", json={}, headers=auth_headers(token))
        assert r.status_code == 200

        def ephemeral() -> list[dict[str, Any]]:
            return [e for t in fake_as.transactions() for e in t.body.get("ephemeral", [])]

        await fake_as.wait_for(lambda: {"m.typing", "m.receipt"} <= {e["type"] for e in ephemeral()})
        typing = next(e for e in ephemeral() if e["type"] == "m.typing")
        assert typing["room_id"] == room and typing["content"]["user_ids"] == [user]
        receipt = next(e for e in ephemeral() if e["type"] == "m.receipt")
        assert receipt["room_id"] == room and user in receipt["content"][eid]["m.read"]
    running.stop.set()


async def test_as_creates_and_deletes_devices_without_login(http: httpx.AsyncClient) -> None:
    await as_register(http, "_fake_dev", inhibit_login=True)
    ghost = {"user_id": f"@_fake_dev:{HS}"}
    r = await http.put(f"{V3}/devices/BRIDGEDEV", params=ghost, json={"display_name": "bridge"}, headers=AS_AUTH)
    assert r.status_code == 200, r.text
    r = await http.get(f"{V3}/devices", params=ghost, headers=AS_AUTH)
    assert [(d["device_id"], d["display_name"]) for d in r.json()["devices"]] == [("BRIDGEDEV", "bridge")]
    # The AS acts with that device, and deletes it without user-interactive auth.
    r = await http.get(f"{V3}/account/whoami", params={**ghost, "device_id": "BRIDGEDEV"}, headers=AS_AUTH)
    assert r.json()["device_id"] == "BRIDGEDEV"
    r = await http.request("DELETE", f"{V3}/devices/BRIDGEDEV", params=ghost, json={}, headers=AS_AUTH)
    assert r.status_code == 200, r.text
    r = await http.get(f"{V3}/devices", params=ghost, headers=AS_AUTH)
    assert r.json()["devices"] == []
