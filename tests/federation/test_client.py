"""The signing federation client against a real pocketserver on loopback."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import httpx
import orjson
import pytest
import trio

from pocketserver.config import FederationConfig
from pocketserver.federation.client import FederationClient, _decode
from pocketserver.federation.http import HttpResponse
from pocketserver.federation.interfaces import FederationError, FederationUnreachable
from pocketserver.protocol.signing import signing_key_from_seed
from pocketserver.server import RunningServer
from pocketserver.services.outbound import Outbound
from tests.api.helpers import auth_headers, register
from tests.federation.servers import start_federating_server

PROFILE = "/_matrix/federation/v1/query/profile"


@pytest.fixture
async def pair(nursery: trio.Nursery, tmp_path: Path) -> tuple[RunningServer, RunningServer]:
    a = await start_federating_server(nursery, tmp_path / "a")
    b = await start_federating_server(nursery, tmp_path / "b")
    return a, b


def name(server: RunningServer) -> str:
    return str(server.services.config.server_name)


async def test_a_signed_request_is_accepted_and_answered(pair: tuple[RunningServer, RunningServer]) -> None:
    a, b = pair
    async with httpx.AsyncClient(base_url=b.urls[0]) as http:
        bob, token, _ = await register(http, "bob")
        r = await http.put(
            f"/_matrix/client/v3/profile/{quote(bob)}/displayname",
            json={"displayname": "Bob"}, headers=auth_headers(token),
        )
        assert r.status_code == 200
    client = a.services.federation_client
    assert await client.get_json(name(b), PROFILE, {"user_id": bob}) == {"displayname": "Bob"}
    assert await client.get_json(name(b), PROFILE, {"user_id": bob, "field": "displayname"}) == {
        "displayname": "Bob"
    }
    # The second request went over the same kept-alive connection.
    assert client.statistics()["pooled_connections"] == 1


async def test_error_answers_raise_federation_error(pair: tuple[RunningServer, RunningServer]) -> None:
    a, b = pair
    client = a.services.federation_client
    with pytest.raises(FederationError) as e:
        await client.get_json(name(b), PROFILE, {"user_id": f"@nobody:{name(b)}"})
    assert (e.value.status, e.value.errcode) == (404, "M_NOT_FOUND")
    assert not e.value.unknown_endpoint  # a real answer: no such user
    with pytest.raises(FederationError) as e:
        await client.get_json(name(b), "/_matrix/federation/v1/no_such_thing")
    assert e.value.errcode == "M_UNRECOGNIZED" and e.value.unknown_endpoint
    # Unsigned, where a signature is needed: refused with the spec's 401.
    with pytest.raises(FederationError) as e:
        await client.get_json(name(b), PROFILE, {"user_id": f"@bob:{name(b)}"}, signed=False)
    assert (e.value.status, e.value.errcode) == (401, "M_UNAUTHORIZED")


async def test_size_limit_and_bad_names(pair: tuple[RunningServer, RunningServer]) -> None:
    a, b = pair
    client = a.services.federation_client
    with pytest.raises(FederationUnreachable, match="over 100 bytes"):
        await client.get_json(name(b), "/_matrix/key/v2/server", max_size=100, signed=False)
    with pytest.raises(FederationUnreachable, match="not a server name"):
        await client.get_json("not a name", "/_matrix/key/v2/server")


async def test_a_put_answer_streamed_to_a_file(pair: tuple[RunningServer, RunningServer], tmp_path: Path) -> None:
    """put_json_to_file (send_join's transport): the 2xx answer's bytes land in the file;
    an error status is a FederationError, a too big answer is refused."""
    import io

    a, b = pair
    client = a.services.federation_client
    body = {"origin": name(a), "origin_server_ts": 1, "pdus": [], "edus": []}
    sink = io.BytesIO()
    n = await client.put_json_to_file(name(b), "/_matrix/federation/v1/send/t1", body, sink)
    assert n == len(sink.getvalue()) and orjson.loads(sink.getvalue()) == {"pdus": {}}
    with pytest.raises(FederationError) as e:
        await client.put_json_to_file(name(b), "/_matrix/federation/v1/no_such_thing", {}, io.BytesIO())
    assert e.value.errcode == "M_UNRECOGNIZED"
    with pytest.raises(FederationUnreachable, match="over 5 bytes"):
        await client.put_json_to_file(name(b), "/_matrix/federation/v1/send/t2", body, io.BytesIO(), max_size=5)
    # the connection is still good for the next request
    sink = io.BytesIO()
    await client.put_json_to_file(name(b), "/_matrix/federation/v1/send/t3", body, sink)
    assert orjson.loads(sink.getvalue()) == {"pdus": {}}


def _client(**federation: object) -> FederationClient:
    cfg = FederationConfig(**federation)  # type: ignore[arg-type]
    return FederationClient("me.test", signing_key_from_seed(b"\x05" * 32, "x"), Outbound(cfg), cfg)


async def test_private_addresses_are_refused_unless_allowed(pair: tuple[RunningServer, RunningServer]) -> None:
    _, b = pair
    port = name(b).rsplit(":", 1)[1]
    strict = _client(verify_tls=False)
    for destination in (name(b), f"127.0.0.1:{port}", f"[::1]:{port}"):
        with pytest.raises(FederationUnreachable, match="allowed_ip_ranges"):
            await strict.get_json(destination, "/_matrix/federation/v1/version", signed=False)
    allowed = _client(verify_tls=False, allowed_ip_ranges=("127.0.0.1/32",))
    answer = await allowed.get_json(f"127.0.0.1:{port}", "/_matrix/federation/v1/version", signed=False)
    assert answer["server"]["name"] == "pocketserver"


async def test_tls_is_verified_by_default(pair: tuple[RunningServer, RunningServer]) -> None:
    _, b = pair
    verifying = _client(allowed_ip_ranges=("127.0.0.0/8",))
    with pytest.raises(FederationUnreachable, match="TLS"):
        await verifying.get_json(name(b), "/_matrix/federation/v1/version", signed=False)


async def test_a_server_that_never_answers_times_out(nursery: trio.Nursery) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    held: list[trio.SocketStream] = []

    async def hold(stream: trio.SocketStream) -> None:
        held.append(stream)
        await trio.sleep_forever()

    nursery.start_soon(trio.serve_listeners, hold, listeners)
    client = _client(verify_tls=False, allowed_ip_ranges=("127.0.0.0/8",))
    with pytest.raises(FederationUnreachable, match="timed out"):
        await client.get_json(f"127.0.0.1:{port}", "/_matrix/federation/v1/version", timeout_s=0.5)
    assert held  # it did connect
    nursery.cancel_scope.cancel()


async def test_federation_turned_off_refuses_both_ways(nursery: trio.Nursery, tmp_path: Path) -> None:
    on = await start_federating_server(nursery, tmp_path / "on")
    off = await start_federating_server(nursery, tmp_path / "off", {"enabled": False})
    with pytest.raises(FederationUnreachable, match="turned off"):
        await off.services.federation_client.get_json(name(on), "/_matrix/federation/v1/version")
    with pytest.raises(FederationError) as e:
        await on.services.federation_client.get_json(name(off), PROFILE, {"user_id": f"@a:{name(off)}"})
    assert (e.value.status, e.value.errcode) == (403, "M_FORBIDDEN")


def test_a_bare_404_reads_as_an_unknown_endpoint() -> None:
    """An older server answers an endpoint it lacks with a 404 and no errcode: callers
    that have an older endpoint to fall back on (v1 invites) can tell."""
    with pytest.raises(FederationError) as e:
        _decode(HttpResponse(404, {}, b""), "old.test", "PUT", "/_matrix/federation/v2/invite/x/y")
    assert e.value.errcode == "M_UNKNOWN" and e.value.unknown_endpoint
    with pytest.raises(FederationError) as e:
        _decode(HttpResponse(404, {}, b'{"errcode": "M_NOT_FOUND", "error": "no"}'), "new.test", "GET", "/x")
    assert not e.value.unknown_endpoint
