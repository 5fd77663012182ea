"""federation/e2e.py: /keys/query and /keys/claim with remote users through fake servers
(in parallel, failures listed, answers about other servers' users ignored), the cached
device lists of users we share a room with (resync on a gap, device_lists.changed), and
the answers this server gives other servers about its own users."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
import trio.testing

from pocketserver.services import Services
from tests.api.e2ee_helpers import CrossSigning, FakeDevice
from tests.federation.fakes import FakeRemotes, local_user, poll, remote_join, running_services

BOB = "@bob:a.remote"


class RemoteA:
    """a.remote as a Matrix server: bob's devices, his one-time keys, /user/devices."""

    def __init__(self) -> None:
        self.devices = {"B1": FakeDevice(BOB, "B1")}
        self.stream_id = 7
        self.cs = CrossSigning(BOB)

    def __call__(self, method: str, destination: str, path: str, body: Any) -> Any:
        if path == "/_matrix/federation/v1/user/keys/query":
            return {
                "device_keys": {
                    BOB: {d: dev.device_keys() for d, dev in self.devices.items()},
                    # Not a.remote's to answer for: must not reach the client.
                    "@mallory:m.remote": {"M": FakeDevice("@mallory:m.remote", "M").device_keys()},
                },
                "master_keys": {BOB: self.cs.master_key()},
            }
        if path == "/_matrix/federation/v1/user/keys/claim":
            wanted = body["one_time_keys"]
            return {
                "one_time_keys": {
                    u: {d: dict([self.devices[d].signed_key()]) for d in devs if d in self.devices}
                    for u, devs in wanted.items()
                }
            }
        if path == "/_matrix/federation/v1/user/devices/%40bob%3Aa.remote":
            return {
                "user_id": BOB,
                "stream_id": self.stream_id,
                "devices": [
                    {"device_id": d, "keys": dev.device_keys(), "device_display_name": f"bob {d}"}
                    for d, dev in self.devices.items()
                ],
                "master_key": self.cs.master_key(),
                "self_signing_key": self.cs.self_signing_key(),
            }
        raise AssertionError(f"unexpected {method} {path}")


def key_requests(remotes: FakeRemotes) -> list[str]:
    return [r.path for r in remotes.requests if "/user/" in r.path]


async def test_query_and_claim_ask_each_remote_server(tmp_path: Path) -> None:
    a = RemoteA()
    remotes = FakeRemotes(handler=a, down={"b.remote"})
    async with running_services(tmp_path, remotes) as svc:
        alice = await local_user(svc, "alice")
        got = await svc.e2ee.query_keys(
            alice.user_id, {BOB: [], "@zed:b.remote": [], alice.user_id: []}
        )
        assert got["device_keys"][BOB]["B1"]["keys"] == a.devices["B1"].device_keys()["keys"]
        assert "@mallory:m.remote" not in got["device_keys"]
        assert got["master_keys"][BOB] == a.cs.master_key()
        assert alice.user_id in got["device_keys"]  # the local part still answered
        assert list(got["failures"]) == ["b.remote"]
        assert got["failures"]["b.remote"]["status"] == 503

        claimed = await svc.e2ee.claim_keys(
            {BOB: {"B1": "signed_curve25519", "GONE": "signed_curve25519"}, "@zed:b.remote": {"Z": "signed_curve25519"}}
        )
        [(key_id, key)] = claimed["one_time_keys"][BOB]["B1"].items()
        assert key_id.startswith("signed_curve25519:") and "key" in key
        assert list(claimed["failures"]) == ["b.remote"]
        # Users we share no room with are asked every time (their server tells us nothing).
        await svc.e2ee.query_keys(alice.user_id, {BOB: []})
        asked_a = [r.path for r in remotes.requests if r.destination == "a.remote"]
        assert asked_a.count("/_matrix/federation/v1/user/keys/query") == 2


async def test_a_slow_server_is_a_failure_after_the_timeout(tmp_path: Path) -> None:
    remotes = FakeRemotes(handler=RemoteA())
    remotes.hold = trio.Event()  # never answers
    async with running_services(tmp_path, remotes) as svc:
        alice = await local_user(svc, "alice")
        got = await svc.e2ee.query_keys(alice.user_id, {BOB: []}, 50)
        assert got["failures"] == {"a.remote": {"status": 504, "message": "The server did not answer in time"}}
        claimed = await svc.e2ee.claim_keys({BOB: {"B1": "signed_curve25519"}}, 50)
        assert list(claimed["failures"]) == ["a.remote"] and claimed["one_time_keys"] == {}
        remotes.hold.set()


async def _shared_room(svc: Services) -> tuple[Any, str]:
    alice = await local_user(svc, "alice")
    room_id, _ = await svc.rooms.create_room(alice, {"preset": "public_chat"})
    await remote_join(svc, room_id, BOB)
    return alice, room_id


async def _sync_pos(svc: Services) -> int:
    return int(await svc.db.read(lambda conn: conn.execute(
        "SELECT pos FROM stream_positions WHERE name = 'main'").fetchone()[0]))


async def test_a_tracked_users_devices_are_cached_and_patched_by_updates(tmp_path: Path) -> None:
    a = RemoteA()
    remotes = FakeRemotes(handler=a)
    async with running_services(tmp_path, remotes) as svc:
        alice, _ = await _shared_room(svc)
        assert svc.federation_keys is not None
        got = await svc.e2ee.query_keys(alice.user_id, {BOB: []})
        assert got["device_keys"][BOB]["B1"]["unsigned"]["device_display_name"] == "bob B1"
        assert got["self_signing_keys"][BOB] == a.cs.self_signing_key()
        assert key_requests(remotes) == ["/_matrix/federation/v1/user/devices/%40bob%3Aa.remote"]
        await svc.e2ee.query_keys(alice.user_id, {BOB: ["B1"]})
        assert len(key_requests(remotes)) == 1  # from the cache now

        # An update that follows on from stream ID 7: applied without asking.
        before = await _sync_pos(svc)
        b2 = FakeDevice(BOB, "B2")
        await svc.federation_keys.on_device_list_update(
            "a.remote",
            {"user_id": BOB, "device_id": "B2", "stream_id": 8, "prev_id": [7], "keys": b2.device_keys()},
        )
        got = await svc.e2ee.query_keys(alice.user_id, {BOB: []})
        assert sorted(got["device_keys"][BOB]) == ["B1", "B2"]
        assert len(key_requests(remotes)) == 1
        changes = await svc.e2ee.key_changes(alice.user_id, str(before), str(await _sync_pos(svc)))
        assert changes["changed"] == [BOB]  # device_lists.changed in /sync

        # An update from another server about bob is ignored.
        await svc.federation_keys.on_device_list_update(
            "evil.remote", {"user_id": BOB, "device_id": "B1", "stream_id": 9, "deleted": True}
        )
        got = await svc.e2ee.query_keys(alice.user_id, {BOB: []})
        assert sorted(got["device_keys"][BOB]) == ["B1", "B2"]

        # A deletion that follows on: applied.
        await svc.federation_keys.on_device_list_update(
            "a.remote", {"user_id": BOB, "device_id": "B1", "stream_id": 9, "prev_id": [8], "deleted": True}
        )
        got = await svc.e2ee.query_keys(alice.user_id, {BOB: []})
        assert sorted(got["device_keys"][BOB]) == ["B2"]


async def test_a_gap_in_stream_ids_resyncs_the_list(tmp_path: Path) -> None:
    a = RemoteA()
    remotes = FakeRemotes(handler=a)
    async with running_services(tmp_path, remotes) as svc:
        alice, _ = await _shared_room(svc)
        assert svc.federation_keys is not None
        await svc.e2ee.query_keys(alice.user_id, {BOB: []})  # cached at stream ID 7
        # bob's server made changes 8 and 9; we only hear of 9.
        a.devices["B3"] = FakeDevice(BOB, "B3")
        a.devices["B4"] = FakeDevice(BOB, "B4")
        a.stream_id = 9
        await svc.federation_keys.on_device_list_update(
            "a.remote",
            {"user_id": BOB, "device_id": "B4", "stream_id": 9, "prev_id": [8],
             "keys": a.devices["B4"].device_keys()},
        )
        await poll(lambda: len(key_requests(remotes)) == 2)  # GET /user/devices again

        async def has_all() -> bool:
            got = await svc.e2ee.query_keys(alice.user_id, {BOB: []})
            return sorted(got["device_keys"][BOB]) == ["B1", "B3", "B4"]

        await poll(has_all)
        assert all(p.endswith("/user/devices/%40bob%3Aa.remote") for p in key_requests(remotes))


async def test_a_query_during_a_resync_waits_for_it_and_an_update_meanwhile_fetches_again(tmp_path: Path) -> None:
    """A client's /keys/query while the list is being resynced after a gap waits for
    that resync instead of asking bob's server a second time (a server that answers
    once would leave the query with nothing, and it is twice the work); an update that
    arrives while the resync is under way makes it fetch once more, since the answer on
    its way may predate that update."""
    a = RemoteA()
    answers_of_bob: list[Any] = []  # /user/devices as bob's server has it when asked

    def snapshot() -> None:
        answers_of_bob.append(a("GET", "a.remote", "/_matrix/federation/v1/user/devices/%40bob%3Aa.remote", None))

    def handler(method: str, destination: str, path: str, body: Any) -> Any:
        return answers_of_bob.pop(0) if "/user/devices/" in path else a(method, destination, path, body)

    remotes = FakeRemotes(handler=handler)
    async with running_services(tmp_path, remotes) as svc:
        alice, _ = await _shared_room(svc)
        assert svc.federation_keys is not None
        snapshot()
        await svc.e2ee.query_keys(alice.user_id, {BOB: []})  # cached at stream ID 7
        remotes.hold = trio.Event()
        a.devices["B3"] = FakeDevice(BOB, "B3")
        a.stream_id = 9
        snapshot()
        await svc.federation_keys.on_device_list_update(
            "a.remote", {"user_id": BOB, "device_id": "B3", "stream_id": 9, "prev_id": [8],
                         "keys": a.devices["B3"].device_keys()},
        )
        await remotes.wait_until(lambda: len(key_requests(remotes)) == 2)  # the resync, held
        got: list[Any] = []

        async def query() -> None:
            got.append(await svc.e2ee.query_keys(alice.user_id, {BOB: []}))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(query)
            await trio.testing.wait_all_tasks_blocked()
            assert len(key_requests(remotes)) == 2  # the query waits for the resync under way
            # bob adds a device while the answer of stream ID 9 is on its way.
            a.devices["B4"] = FakeDevice(BOB, "B4")
            a.stream_id = 10
            snapshot()
            await svc.federation_keys.on_device_list_update(
                "a.remote", {"user_id": BOB, "device_id": "B4", "stream_id": 10, "prev_id": [9],
                             "keys": a.devices["B4"].device_keys()},
            )
            hold, remotes.hold = remotes.hold, None
            hold.set()
        [answer] = got
        assert sorted(answer["device_keys"][BOB]) == ["B1", "B3", "B4"]
        assert not answer["failures"]
        # The query asked nothing itself: the fetch after the gap, and one after bob's update.
        assert len(key_requests(remotes)) == 3 and not answers_of_bob
        assert all(p.endswith("/user/devices/%40bob%3Aa.remote") for p in key_requests(remotes))


async def test_devices_are_listed_with_the_keys_their_server_published(tmp_path: Path) -> None:
    # The owning server's device list is kept as sent (clients check the signatures),
    # except keys that claim to be another user's or another device's.
    a = RemoteA()
    remotes = FakeRemotes(handler=a)
    async with running_services(tmp_path, remotes) as svc:
        alice, _ = await _shared_room(svc)
        assert svc.federation_keys is not None
        await svc.e2ee.query_keys(alice.user_id, {BOB: []})  # cached at stream ID 7
        await svc.federation_keys.on_device_list_update(
            "a.remote",
            {"user_id": BOB, "device_id": "BARE", "stream_id": 8, "prev_id": [7],
             "device_display_name": "bare", "keys": {"device_keys": {}}},
        )
        await svc.federation_keys.on_device_list_update(
            "a.remote",
            {"user_id": BOB, "device_id": "FORGED", "stream_id": 9, "prev_id": [8],
             "keys": FakeDevice("@carol:a.remote", "FORGED").device_keys()},
        )
        got = await svc.e2ee.query_keys(alice.user_id, {BOB: []})
        assert sorted(got["device_keys"][BOB]) == ["B1", "BARE"]
        assert got["device_keys"][BOB]["BARE"]["unsigned"] == {"device_display_name": "bare"}


async def test_a_signing_key_update_replaces_the_cached_keys(tmp_path: Path) -> None:
    a = RemoteA()
    remotes = FakeRemotes(handler=a)
    async with running_services(tmp_path, remotes) as svc:
        alice, _ = await _shared_room(svc)
        assert svc.federation_keys is not None
        await svc.e2ee.query_keys(alice.user_id, {BOB: []})
        new = CrossSigning(BOB)
        await svc.federation_keys.on_signing_key_update(
            "a.remote", {"user_id": BOB, "master_key": new.master_key(), "self_signing_key": new.self_signing_key()}
        )
        got = await svc.e2ee.query_keys(alice.user_id, {BOB: []})
        assert got["master_keys"][BOB] == new.master_key()
        assert got["self_signing_keys"][BOB] == new.self_signing_key()


async def test_other_servers_get_our_users_devices_and_keys(tmp_path: Path) -> None:
    remotes = FakeRemotes()
    async with running_services(tmp_path, remotes) as svc:
        alice = await local_user(svc, "alice")
        keys = svc.federation_keys
        assert keys is not None
        device = FakeDevice(alice.user_id, "DEV")
        await svc.e2ee.upload_keys(
            alice.user_id, "DEV", {"device_keys": device.device_keys(), "one_time_keys": device.one_time_keys(1)}
        )
        cs = CrossSigning(alice.user_id)
        await svc.e2ee.upload_cross_signing(alice.user_id, cs.upload_body())

        listed = await keys.user_devices("a.remote", alice.user_id)
        assert listed["user_id"] == alice.user_id and listed["stream_id"] > 0
        assert [(d["device_id"], d["device_display_name"]) for d in listed["devices"]] == [("DEV", "alice's phone")]
        assert listed["master_key"] == cs.master_key()
        assert "user_signing_key" not in listed

        queried = await keys.query_local("a.remote", {"device_keys": {alice.user_id: [], BOB: []}})
        assert list(queried["device_keys"]) == [alice.user_id]
        assert queried["self_signing_keys"][alice.user_id] == cs.self_signing_key()
        assert "user_signing_keys" not in queried

        wanted = {"one_time_keys": {alice.user_id: {"DEV": "signed_curve25519"}}}
        first = await keys.claim_local("a.remote", wanted)
        assert first["one_time_keys"][alice.user_id]["DEV"]
        second = await keys.claim_local("a.remote", wanted)
        assert second["one_time_keys"] == {}  # each one-time key is given out once


async def test_a_list_cached_before_the_users_current_join_is_fetched_again(tmp_path: Path) -> None:
    """bob left every room we share (his server stopped telling us of changes) and came
    back: what was cached before cannot be trusted."""
    a = RemoteA()
    remotes = FakeRemotes(handler=a)
    async with running_services(tmp_path, remotes) as svc:
        alice, room_id = await _shared_room(svc)
        await svc.e2ee.query_keys(alice.user_id, {BOB: []})
        await remote_join(svc, room_id, BOB, "leave")
        a.devices["B5"] = FakeDevice(BOB, "B5")  # unheard of: we share no room
        got = await svc.e2ee.query_keys(alice.user_id, {BOB: []})  # asked directly
        assert sorted(got["device_keys"][BOB]) == ["B1", "B5"]
        await svc.rooms.send_event(alice, room_id, "m.room.message", {"body": "welcome back"})
        await remote_join(svc, room_id, BOB)  # his new join arrived after the cached list
        await svc.db.write(lambda conn: conn.execute(
            "UPDATE remote_device_lists SET fetched_ts = fetched_ts - 60000"))
        got = await svc.e2ee.query_keys(alice.user_id, {BOB: []})
        assert sorted(got["device_keys"][BOB]) == ["B1", "B5"]
        assert key_requests(remotes)[-1].startswith("/_matrix/federation/v1/user/devices/")


async def test_a_list_cached_before_this_server_rejoined_is_fetched_again(tmp_path: Path) -> None:
    """Our last user left the room (bob's server stopped telling us of changes) and
    joined again: bob never left, but what was cached before cannot be trusted."""
    a = RemoteA()
    remotes = FakeRemotes(handler=a)
    async with running_services(tmp_path, remotes) as svc:
        alice, room_id = await _shared_room(svc)
        await svc.e2ee.query_keys(alice.user_id, {BOB: []})
        await svc.e2ee.query_keys(alice.user_id, {BOB: []})
        assert len(key_requests(remotes)) == 1  # cached
        a.devices["B6"] = FakeDevice(BOB, "B6")  # while we were away

        def rejoined_later(conn: Any) -> None:
            # alice's current join arrived after the list was fetched.
            conn.execute(
                "UPDATE events SET received_ts = received_ts + 60000 WHERE event_nid ="
                " (SELECT event_nid FROM room_memberships WHERE user_id = ?)",
                (alice.user_id,),
            )

        await svc.db.write(rejoined_later)
        got = await svc.e2ee.query_keys(alice.user_id, {BOB: []})
        assert sorted(got["device_keys"][BOB]) == ["B1", "B6"]
        assert len(key_requests(remotes)) == 2
