"""Server discovery: the spec's decisions table-tested, then the whole resolution against
a DNS server and an HTTPS well-known on loopback (TLS verified with the test CA)."""

from __future__ import annotations

import email.utils
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest

from pocketserver.config import FederationConfig
from pocketserver.federation.client import FederationClient
from pocketserver.federation.discovery import (
    WELL_KNOWN_DEFAULT_CACHE_S,
    WELL_KNOWN_ERROR_CACHE_S,
    WELL_KNOWN_MAX_CACHE_S,
    WELL_KNOWN_MIN_CACHE_S,
    SrvRecord,
    Target,
    default_target,
    literal_target,
    parse_well_known,
    srv_targets,
    well_known_lifetime_s,
)
from pocketserver.protocol.identifiers import InvalidIdentifier
from pocketserver.protocol.signing import signing_key_from_seed
from pocketserver.services.outbound import Outbound
from tests.conftest import shared_certificate
from tests.federation.loopback import LoopbackDns, LoopbackHttps, Route, dns_server, https_server

# -- the pure decisions ------------------------------------------------------------------

LITERAL = [
    ("1.2.3.4", Target("1.2.3.4", 8448, "1.2.3.4", "1.2.3.4")),
    ("1.2.3.4:443", Target("1.2.3.4", 443, "1.2.3.4:443", "1.2.3.4")),
    ("[::1]", Target("::1", 8448, "[::1]", "::1")),
    ("[2001:db8::1]:8449", Target("2001:db8::1", 8449, "[2001:db8::1]:8449", "2001:db8::1")),
    ("example.org:443", Target("example.org", 443, "example.org:443", "example.org")),
    ("example.org", None),
]


@pytest.mark.parametrize(("name", "expected"), LITERAL)
def test_steps_1_and_2(name: str, expected: Target | None) -> None:
    assert literal_target(name) == expected


@pytest.mark.parametrize("name", ["", "exa mple.org", "a.org:99999", "[::1", "1.2.3.4:x"])
def test_not_a_server_name(name: str) -> None:
    with pytest.raises(InvalidIdentifier):
        literal_target(name)


WELL_KNOWN = [
    (200, b'{"m.server": "delegated.org:443"}', "delegated.org:443"),
    (200, b'{"m.server": "delegated.org"}', "delegated.org"),
    (200, b'{"m.server": "[::1]:8448"}', "[::1]:8448"),
    (404, b'{"m.server": "delegated.org"}', None),
    (500, b"", None),
    (200, b"not json", None),
    (200, b"[]", None),
    (200, b"{}", None),
    (200, b'{"m.server": 5}', None),
    (200, b'{"m.server": "bad name"}', None),
    (200, b'{"m.server": "a.org:70000"}', None),
    (200, b"\xff\xfe", None),
]


@pytest.mark.parametrize(("status", "body", "expected"), WELL_KNOWN)
def test_well_known_answer(status: int, body: bytes, expected: str | None) -> None:
    assert parse_well_known(status, body) == expected


def test_srv_order_and_host_header() -> None:
    records = [
        SrvRecord(20, 0, 1, "c.example"),
        SrvRecord(10, 5, 2, "b.example"),
        SrvRecord(10, 50, 3, "a.example"),
    ]
    assert srv_targets(records, "name.org") == [
        Target("a.example", 3, "name.org", "name.org"),
        Target("b.example", 2, "name.org", "name.org"),
        Target("c.example", 1, "name.org", "name.org"),
    ]
    assert srv_targets([SrvRecord(0, 0, 0, ".")], "name.org") == []
    assert default_target("name.org") == Target("name.org", 8448, "name.org", "name.org")


NOW = 1_700_000_000.0
LIFETIMES = [
    ({}, True, WELL_KNOWN_DEFAULT_CACHE_S),
    ({"cache-control": "max-age=3600"}, True, 3600.0),
    ({"cache-control": "public, max-age=7200"}, True, 7200.0),
    ({"cache-control": "max-age=10"}, True, WELL_KNOWN_MIN_CACHE_S),
    ({"cache-control": "max-age=99999999"}, True, WELL_KNOWN_MAX_CACHE_S),
    ({"cache-control": "no-store"}, True, WELL_KNOWN_MIN_CACHE_S),
    ({"expires": email.utils.formatdate(NOW + 7200, usegmt=True)}, True, 7200.0),
    ({"expires": "garbage"}, True, WELL_KNOWN_MIN_CACHE_S),
    ({"cache-control": "max-age=3600", "expires": email.utils.formatdate(NOW + 60)}, True, 3600.0),
    ({}, False, WELL_KNOWN_ERROR_CACHE_S),
    ({"cache-control": "max-age=100000"}, False, WELL_KNOWN_ERROR_CACHE_S),
]


@pytest.mark.parametrize(("headers", "ok", "expected"), LIFETIMES)
def test_well_known_lifetime(headers: dict[str, str], ok: bool, expected: float) -> None:
    assert well_known_lifetime_s(headers, ok, NOW) == pytest.approx(expected, abs=1.0)


# -- over the network, on loopback ---------------------------------------------------------


@dataclass
class Net:
    dns: LoopbackDns
    https: LoopbackHttps
    client: FederationClient


@asynccontextmanager
async def network(records: dict[tuple[str, str], list[str]], routes: dict[str, Route]) -> AsyncIterator[Net]:
    """A federation client that asks the loopback DNS server and finds the well-known on
    the loopback HTTPS server (certificate for test.local / localhost, trusted as a CA)."""
    cert, _ = shared_certificate()
    cfg = FederationConfig(
        verify_tls=True, extra_ca_file=cert, allowed_ip_ranges=("127.0.0.0/8",), dns_servers=()
    )
    async with dns_server(records) as dns, https_server(routes) as https:
        cfg = FederationConfig(
            verify_tls=True, extra_ca_file=cert, allowed_ip_ranges=("127.0.0.0/8",),
            dns_servers=(dns.nameserver,),
        )
        key = signing_key_from_seed(b"\x00" * 32, "t")
        client = FederationClient("origin.test", key, Outbound(cfg), cfg)
        client.resolver.well_known_port = https.port
        yield Net(dns, https, client)


def well_known(server: str, headers: list[tuple[str, str]] | None = None) -> dict[str, Route]:
    return {"/.well-known/matrix/server": (200, headers or [], json.dumps({"m.server": server}).encode())}


async def test_step_4_srv_for_the_hostname_when_there_is_no_well_known() -> None:
    records = {
        ("test.local", "A"): ["127.0.0.1"],
        ("_matrix-fed._tcp.test.local", "SRV"): ["10 5 8449 host.example."],
    }
    async with network(records, {}) as net:
        res = await net.client.resolver.resolve("test.local")
    assert res.targets == [Target("host.example", 8449, "test.local", "test.local")]
    assert net.https.requests["/.well-known/matrix/server"] == 1
    assert net.https.hosts == [f"test.local:{net.https.port}"]
    assert any("HTTP 404" in s for s in res.steps)


async def test_step_5_legacy_srv_then_step_6_default_port() -> None:
    records = {
        ("test.local", "A"): ["127.0.0.1"],
        ("_matrix._tcp.test.local", "SRV"): ["0 0 1234 legacy.example."],
    }
    async with network(records, {}) as net:
        res = await net.client.resolver.resolve("test.local")
        assert res.targets == [Target("legacy.example", 1234, "test.local", "test.local")]
        assert net.dns.queries[("_matrix-fed._tcp.test.local", "SRV")] == 1
    async with network({("test.local", "A"): ["127.0.0.1"]}, {}) as net:
        res = await net.client.resolver.resolve("test.local")
        assert res.targets == [Target("test.local", 8448, "test.local", "test.local")]
        assert net.dns.queries[("_matrix._tcp.test.local", "SRV")] == 1


async def test_step_3_delegation_to_a_name_with_a_port() -> None:
    async with network({("test.local", "A"): ["127.0.0.1"]}, well_known("matrix.example:443")) as net:
        res = await net.client.resolver.resolve("test.local")
        assert res.targets == [Target("matrix.example", 443, "matrix.example:443", "matrix.example")]
        # No SRV asked: step 3.2 is final.
        assert not any(t == "SRV" for _, t in net.dns.queries)


async def test_step_3_3_delegated_srv_uses_the_delegated_name() -> None:
    records = {
        ("test.local", "A"): ["127.0.0.1"],
        ("_matrix-fed._tcp.deleg.example", "SRV"): ["5 0 9000 box.example."],
        # An SRV for the original name must not be used once delegated.
        ("_matrix-fed._tcp.test.local", "SRV"): ["5 0 1 wrong.example."],
    }
    async with network(records, well_known("deleg.example")) as net:
        res = await net.client.resolver.resolve("test.local")
    assert res.targets == [Target("box.example", 9000, "deleg.example", "deleg.example")]


async def test_step_3_1_delegated_ip_literal_and_3_5_default() -> None:
    async with network({("test.local", "A"): ["127.0.0.1"]}, well_known("10.1.2.3")) as net:
        res = await net.client.resolver.resolve("test.local")
        assert res.targets == [Target("10.1.2.3", 8448, "10.1.2.3", "10.1.2.3")]
    async with network({("test.local", "A"): ["127.0.0.1"]}, well_known("deleg.example")) as net:
        res = await net.client.resolver.resolve("test.local")
        assert res.targets == [Target("deleg.example", 8448, "deleg.example", "deleg.example")]


async def test_redirects_are_followed_and_loops_stopped() -> None:
    routes: dict[str, Route] = {
        "/.well-known/matrix/server": (301, [("Location", "/moved")], b""),
        "/moved": (302, [("Location", "/final")], b""),
        "/final": (200, [], b'{"m.server": "final.example:8448"}'),
    }
    async with network({("test.local", "A"): ["127.0.0.1"]}, routes) as net:
        res = await net.client.resolver.resolve("test.local")
        assert res.targets[0].host_header == "final.example:8448"
    loop: dict[str, Route] = {
        "/.well-known/matrix/server": (302, [("Location", "/a")], b""),
        "/a": (302, [("Location", "/.well-known/matrix/server")], b""),
    }
    async with network({("test.local", "A"): ["127.0.0.1"]}, loop) as net:
        res = await net.client.resolver.resolve("test.local")
        assert res.targets == [Target("test.local", 8448, "test.local", "test.local")]
        assert any("redirect loop" in s for s in res.steps)
        assert net.https.requests["/a"] == 1


async def test_a_too_large_well_known_is_an_error() -> None:
    body = json.dumps({"m.server": "big.example:1", "pad": "x" * 60_000}).encode()
    async with network({("test.local", "A"): ["127.0.0.1"]}, {"/.well-known/matrix/server": (200, [], body)}) as net:
        res = await net.client.resolver.resolve("test.local")
    assert res.targets == [Target("test.local", 8448, "test.local", "test.local")]


async def test_a_certificate_not_valid_for_the_name_means_no_well_known() -> None:
    # other.example resolves to the loopback server, whose certificate is for test.local.
    async with network({("other.example", "A"): ["127.0.0.1"]}, well_known("evil.example:1")) as net:
        res = await net.client.resolver.resolve("other.example")
    assert res.targets == [Target("other.example", 8448, "other.example", "other.example")]
    assert net.https.requests["/.well-known/matrix/server"] == 0


async def test_well_known_answers_and_errors_are_cached() -> None:
    headers = [("Cache-Control", "max-age=3600")]
    async with network({("test.local", "A"): ["127.0.0.1"]}, well_known("deleg.example:1", headers)) as net:
        for _ in range(3):
            delegated, _note = await net.client.resolver.well_known("test.local")
            assert delegated == "deleg.example:1"
        assert net.https.requests["/.well-known/matrix/server"] == 1
    async with network({("test.local", "A"): ["127.0.0.1"]}, {}) as net:
        for _ in range(3):
            assert (await net.client.resolver.well_known("test.local"))[0] is None
        assert net.https.requests["/.well-known/matrix/server"] == 1


async def test_a_request_follows_srv_to_a_real_server(nursery: object, tmp_path: object) -> None:
    """End to end: test.local's SRV points at a pocketserver's TLS listener, whose
    certificate is for test.local: GET /version answers, TLS verified."""
    from functools import partial

    from pocketserver.server import run_server
    from tests.conftest import make_config

    config = make_config(tmp_path)  # type: ignore[arg-type]
    running = await nursery.start(partial(run_server, config, out=None, handle_signals=False))  # type: ignore[attr-defined]
    tls_port = int(running.urls[1].rsplit(":", 1)[1].rstrip("/"))
    records = {
        ("test.local", "A"): ["127.0.0.1"],
        ("_matrix-fed._tcp.test.local", "SRV"): [f"10 0 {tls_port} box.example."],
        ("box.example", "A"): ["127.0.0.1"],
    }
    async with network(records, {}) as net:
        answer = await net.client.get_json("test.local", "/_matrix/federation/v1/version", signed=False)
    assert answer["server"]["name"] == "pocketserver"
    running.stop.set()
