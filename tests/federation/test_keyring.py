"""The key ring with a fake transport: fetching, checking, caching, notaries, no storms."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from pocketserver.config import TrustedKeyServer
from pocketserver.federation.interfaces import FederationUnreachable
from pocketserver.federation.keyring import MAX_VALIDITY_MS, KeyRing
from pocketserver.protocol.signing import SigningKey, sign_json, signing_key_from_seed
from pocketserver.services.clock import Clock
from pocketserver.storage import server_keys as store
from pocketserver.storage.database import Database

ME = signing_key_from_seed(b"\x09" * 32, "me")
REMOTE = signing_key_from_seed(b"\x01" * 32, "k1")
REMOTE_OLD = signing_key_from_seed(b"\x02" * 32, "old")
NOTARY = signing_key_from_seed(b"\x03" * 32, "n")
FORGER = signing_key_from_seed(b"\x04" * 32, "k1")
NOW_MS = 1_800_000_000_000


class FakeClock(Clock):
    def __init__(self) -> None:
        self.ms = NOW_MS
        self.mono = 1000.0

    def time_ms(self) -> int:
        return self.ms

    def monotonic(self) -> float:
        return self.mono


def key_response(
    server: str = "remote.org",
    key: SigningKey = REMOTE,
    valid_until_ts: int = NOW_MS + 3600_000,
    signer: SigningKey | None = None,
    old: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body = {
        "server_name": server,
        "valid_until_ts": valid_until_ts,
        "verify_keys": {key.key_id: {"key": key.verify_key_base64}},
        "old_verify_keys": old or {},
    }
    return sign_json(body, server, signer or key)


class FakeRequester:
    """Answers GET /_matrix/key/v2/server and POST /_matrix/key/v2/query from tables,
    counting the requests; ``gate`` (when set) holds every answer until it is set."""

    def __init__(self) -> None:
        self.direct: dict[str, Callable[[], Any]] = {}
        self.notary: dict[str, Callable[[dict[str, Any]], Any]] = {}
        self.calls: Counter[tuple[str, str]] = Counter()
        self.gate: trio.Event | None = None

    async def get_json(self, destination: str, path: str, query: Any = None, **kw: Any) -> Any:
        self.calls[(destination, path)] += 1
        if self.gate is not None:
            await self.gate.wait()
        if destination not in self.direct:
            raise FederationUnreachable(f"{destination} is down")
        return self.direct[destination]()

    async def post_json(self, destination: str, path: str, body: Any, query: Any = None, **kw: Any) -> Any:
        self.calls[(destination, path)] += 1
        if destination not in self.notary:
            raise FederationUnreachable(f"{destination} is down")
        return self.notary[destination](body)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(tmp_path / "keys.db")
    yield database
    database.close()


def make_ring(db: Database, requester: FakeRequester, trusted: tuple[TrustedKeyServer, ...] = ()) -> tuple[KeyRing, FakeClock]:
    clock = FakeClock()
    return KeyRing(db, clock, "me.org", ME, requester, trusted), clock


async def test_fetches_once_then_answers_from_the_table(db: Database) -> None:
    fake = FakeRequester()
    fake.direct["remote.org"] = key_response
    ring, _ = make_ring(db, fake)
    for _ in range(3):
        keys = await ring.verify_keys("remote.org", ["ed25519:k1"], minimum_valid_until_ts=NOW_MS)
        assert keys == {"ed25519:k1": bytes(REMOTE.verify_key)}
    assert fake.calls[("remote.org", "/_matrix/key/v2/server")] == 1
    # The table keeps it for a new key ring (a restart).
    ring2, _ = make_ring(db, FakeRequester())
    assert await ring2.verify_keys("remote.org", ["ed25519:k1"], minimum_valid_until_ts=NOW_MS)


async def test_our_own_key_is_always_known(db: Database) -> None:
    fake = FakeRequester()
    ring, _ = make_ring(db, fake)
    assert await ring.verify_keys("me.org", [ME.key_id], minimum_valid_until_ts=NOW_MS + 10**9) == {
        ME.key_id: bytes(ME.verify_key)
    }
    assert sum(fake.calls.values()) == 0


async def test_a_forged_or_misaddressed_response_is_refused(db: Database) -> None:
    fake = FakeRequester()
    fake.direct["remote.org"] = lambda: key_response(signer=FORGER)
    fake.direct["other.org"] = lambda: key_response(server="remote.org")
    ring, _ = make_ring(db, fake)
    assert await ring.verify_keys("remote.org", ["ed25519:k1"], minimum_valid_until_ts=NOW_MS) == {}
    assert await ring.verify_keys("other.org", ["ed25519:k1"], minimum_valid_until_ts=NOW_MS) == {}
    assert db.read_sync(store.get_server_keys, "remote.org") == []


async def test_old_keys_are_found_for_their_time_only(db: Database) -> None:
    expired = NOW_MS - 86400_000
    fake = FakeRequester()
    fake.direct["remote.org"] = lambda: key_response(
        old={REMOTE_OLD.key_id: {"key": REMOTE_OLD.verify_key_base64, "expired_ts": expired}}
    )
    ring, _ = make_ring(db, fake)
    assert await ring.verify_keys("remote.org", ["ed25519:old"], minimum_valid_until_ts=expired - 1) == {
        "ed25519:old": bytes(REMOTE_OLD.verify_key)
    }
    assert await ring.verify_keys("remote.org", ["ed25519:old"], minimum_valid_until_ts=expired + 1) == {}


async def test_validity_is_capped_at_seven_days(db: Database) -> None:
    fake = FakeRequester()
    fake.direct["remote.org"] = lambda: key_response(valid_until_ts=NOW_MS + 365 * 86400_000)
    ring, _ = make_ring(db, fake)
    await ring.verify_keys("remote.org", ["ed25519:k1"], minimum_valid_until_ts=NOW_MS)
    ((_, _, valid_until, expired),) = db.read_sync(store.get_server_keys, "remote.org")
    assert valid_until == NOW_MS + MAX_VALIDITY_MS and expired is None


async def test_an_expired_key_is_fetched_again(db: Database) -> None:
    fake = FakeRequester()
    fake.direct["remote.org"] = key_response
    ring, clock = make_ring(db, fake)
    await ring.verify_keys("remote.org", ["ed25519:k1"], minimum_valid_until_ts=NOW_MS)
    clock.ms += 2 * 3600_000
    fake.direct["remote.org"] = lambda: key_response(valid_until_ts=clock.ms + 3600_000)
    assert await ring.verify_keys("remote.org", ["ed25519:k1"], minimum_valid_until_ts=clock.ms)
    assert fake.calls[("remote.org", "/_matrix/key/v2/server")] == 2


async def test_no_refetch_storm(db: Database) -> None:
    fake = FakeRequester()
    fake.direct["remote.org"] = key_response
    ring, clock = make_ring(db, fake)
    # A flood of requests signed with a key the server does not have: one fetch.
    for _ in range(20):
        assert await ring.verify_keys("remote.org", ["ed25519:nope"], minimum_valid_until_ts=NOW_MS) == {}
    assert fake.calls[("remote.org", "/_matrix/key/v2/server")] == 1
    # An unreachable server likewise; after the pause it is asked again.
    for _ in range(5):
        await ring.verify_keys("down.org", ["ed25519:k1"], minimum_valid_until_ts=NOW_MS)
    assert fake.calls[("down.org", "/_matrix/key/v2/server")] == 1
    clock.mono += 60
    await ring.verify_keys("down.org", ["ed25519:k1"], minimum_valid_until_ts=NOW_MS)
    assert fake.calls[("down.org", "/_matrix/key/v2/server")] == 2


async def test_one_fetch_per_server_at_a_time(db: Database) -> None:
    fake = FakeRequester()
    fake.direct["remote.org"] = key_response
    fake.gate = trio.Event()
    ring, _ = make_ring(db, fake)
    results: list[dict[str, bytes]] = []

    async def ask() -> None:
        results.append(await ring.verify_keys("remote.org", ["ed25519:k1"], minimum_valid_until_ts=NOW_MS))

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(ask)
        await trio.testing.wait_all_tasks_blocked()
        fake.gate.set()
    assert len(results) == 10 and all(r == {"ed25519:k1": bytes(REMOTE.verify_key)} for r in results)
    assert fake.calls[("remote.org", "/_matrix/key/v2/server")] == 1


def _notary_answer(signer: SigningKey | None) -> Callable[[dict[str, Any]], Any]:
    def answer(body: dict[str, Any]) -> Any:
        assert set(body["server_keys"]) == {"remote.org"}
        response = key_response()
        if signer is not None:
            response = sign_json(response, "notary.org", signer)
        return {"server_keys": [response]}

    return answer


async def test_keys_through_a_trusted_notary(db: Database) -> None:
    trusted = (TrustedKeyServer("notary.org", {NOTARY.key_id: NOTARY.verify_key_base64}),)
    fake = FakeRequester()  # remote.org itself is down
    fake.notary["notary.org"] = _notary_answer(NOTARY)
    ring, _ = make_ring(db, fake, trusted)
    assert await ring.verify_keys("remote.org", ["ed25519:k1"], minimum_valid_until_ts=NOW_MS) == {
        "ed25519:k1": bytes(REMOTE.verify_key)
    }
    assert fake.calls[("notary.org", "/_matrix/key/v2/query")] == 1


@pytest.mark.parametrize("signer", [None, FORGER], ids=["unsigned by the notary", "signed by another key"])
async def test_a_notary_answer_without_its_signature_is_refused(db: Database, signer: SigningKey | None) -> None:
    trusted = (TrustedKeyServer("notary.org", {NOTARY.key_id: NOTARY.verify_key_base64}),)
    fake = FakeRequester()
    fake.notary["notary.org"] = _notary_answer(signer)
    ring, _ = make_ring(db, fake, trusted)
    assert await ring.verify_keys("remote.org", ["ed25519:k1"], minimum_valid_until_ts=NOW_MS) == {}


async def test_the_notary_side_signs_what_it_serves(db: Database) -> None:
    from pocketserver.protocol.signing import verify_json

    fake = FakeRequester()
    fake.direct["remote.org"] = key_response
    ring, _ = make_ring(db, fake)
    (served,) = await ring.notary_responses("remote.org", NOW_MS)
    verify_json(served, "remote.org", REMOTE.key_id, REMOTE.verify_key)
    verify_json(served, "me.org", ME.key_id, ME.verify_key)
    # Kept: a second query within its validity asks nothing.
    await ring.notary_responses("remote.org", NOW_MS)
    assert fake.calls[("remote.org", "/_matrix/key/v2/server")] == 1
    # Valid until later than it is: fetched again.
    await ring.notary_responses("remote.org", NOW_MS + 10 * 3600_000)
    assert fake.calls[("remote.org", "/_matrix/key/v2/server")] == 2
    assert await ring.notary_responses("down.org", NOW_MS) == []
    assert await ring.notary_responses("down.org", NOW_MS) == []  # not asked again at once
    assert fake.calls[("down.org", "/_matrix/key/v2/server")] == 1
    (own,) = await ring.notary_responses("me.org", NOW_MS)
    verify_json(own, "me.org", ME.key_id, ME.verify_key)


async def test_the_notary_keeps_a_key_its_server_no_longer_serves(db: Database) -> None:
    """A later response without k1 (the server rotated, or is lying) does not make the
    notary forget k1: asked for k1, it still answers with the response that holds it."""
    fake = FakeRequester()
    fake.direct["remote.org"] = key_response
    ring, _ = make_ring(db, fake)
    (first,) = await ring.notary_responses("remote.org", 0, [REMOTE.key_id])
    assert REMOTE.key_id in first["verify_keys"]
    other = signing_key_from_seed(b"\x03" * 32, "k2")
    fake.direct["remote.org"] = lambda: key_response(key=other)
    # Asked for a key it does not hold: fetched again.
    (second,) = await ring.notary_responses("remote.org", 0, ["ed25519:k2"])
    assert list(second["verify_keys"]) == ["ed25519:k2"]
    (again,) = await ring.notary_responses("remote.org", 0, [REMOTE.key_id])
    assert list(again["verify_keys"]) == [REMOTE.key_id]
    assert fake.calls[("remote.org", "/_matrix/key/v2/server")] == 2
