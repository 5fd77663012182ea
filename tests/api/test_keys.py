"""Device keys, one-time and fallback keys, cross-signing and signatures over HTTP."""

from __future__ import annotations

from typing import Any

import httpx
import trio

from tests.api.e2ee_helpers import CrossSigning, FakeDevice, sign
from tests.api.helpers import register

UPLOAD = "/_matrix/client/v3/keys/upload"
QUERY = "/_matrix/client/v3/keys/query"
CLAIM = "/_matrix/client/v3/keys/claim"
XSIGN = "/_matrix/client/v3/keys/device_signing/upload"
SIGS = "/_matrix/client/v3/keys/signatures/upload"


async def device(http: httpx.AsyncClient, name: str | None = None) -> FakeDevice:
    user_id, token, device_id = await register(http, name)
    return FakeDevice(user_id, device_id, token)


async def post(http: httpx.AsyncClient, dev: FakeDevice, path: str, body: Any) -> httpx.Response:
    return await http.post(path, json=body, headers=dev.headers())


async def test_upload_counts_and_idempotent_reupload(http: httpx.AsyncClient) -> None:
    alice = await device(http)
    otks = alice.one_time_keys(5)
    body = {"device_keys": alice.device_keys(), "one_time_keys": otks}
    r = await post(http, alice, UPLOAD, body)
    assert r.status_code == 200, r.text
    assert r.json()["one_time_key_counts"] == {"signed_curve25519": 5}
    # The same request again (a retry after a lost response) changes nothing.
    r = await post(http, alice, UPLOAD, body)
    assert r.status_code == 200
    assert r.json()["one_time_key_counts"] == {"signed_curve25519": 5}
    # An empty upload reports the counts.
    r = await post(http, alice, UPLOAD, {})
    assert r.json()["one_time_key_counts"] == {"signed_curve25519": 5}


async def test_conflicting_one_time_key_is_refused_and_nothing_stored(http: httpx.AsyncClient) -> None:
    alice = await device(http)
    otks = alice.one_time_keys(2)
    await post(http, alice, UPLOAD, {"device_keys": alice.device_keys(), "one_time_keys": otks})
    name = next(iter(otks))
    other = dict([alice.signed_key()])
    conflicting = {name: next(iter(other.values())), **alice.one_time_keys(3)}
    r = await post(http, alice, UPLOAD, {"one_time_keys": conflicting})
    assert r.status_code == 400
    assert r.json()["errcode"] == "M_INVALID_PARAM"
    r = await post(http, alice, UPLOAD, {})
    assert r.json()["one_time_key_counts"]["signed_curve25519"] == 2


async def test_new_device_keys_replace_the_old_ones_and_are_announced(
    server: Any, http: httpx.AsyncClient
) -> None:
    # A client that lost its keys uploads new ones for the same device: the new keys
    # are what others see, and a room member is told to re-query.
    alice = await device(http, "rekey_alice")
    bob = await device(http, "rekey_bob")
    r = await post(http, alice, "/_matrix/client/v3/createRoom", {"preset": "public_chat"})
    await post(http, bob, f"/_matrix/client/v3/join/{r.json()['room_id']}", {})
    await alice.upload(http)
    pos0 = server.services.notifier.position
    fresh = FakeDevice(alice.user_id, alice.device_id, alice.token)
    r = await post(http, alice, UPLOAD, {"device_keys": fresh.device_keys()})
    assert r.status_code == 200, r.text
    r = await post(http, bob, QUERY, {"device_keys": {alice.user_id: []}})
    keys = r.json()["device_keys"][alice.user_id][alice.device_id]["keys"]
    assert keys[alice.ed_key_id] == fresh.ed_pub
    params = {"from": str(pos0), "to": str(server.services.notifier.position)}
    r = await http.get("/_matrix/client/v3/keys/changes", params=params, headers=bob.headers())
    assert r.json()["changed"] == [alice.user_id]


async def test_malformed_keys_are_refused(http: httpx.AsyncClient) -> None:
    alice = await device(http)
    good = alice.device_keys()
    cases: list[tuple[Any, int, str]] = [
        ({"device_keys": "nope"}, 400, "M_BAD_JSON"),
        ({"device_keys": {**good, "keys": ["x"]}}, 400, "M_BAD_JSON"),
        ({"device_keys": {**good, "user_id": "@mallory:test.local"}}, 400, "M_INVALID_PARAM"),
        ({"device_keys": {**good, "device_id": "OTHER"}}, 400, "M_INVALID_PARAM"),
        ({"device_keys": {**good, "signatures": []}}, 400, "M_BAD_JSON"),
        ({"one_time_keys": {"no_colon": "abc"}}, 400, "M_INVALID_PARAM"),
        ({"one_time_keys": {"signed_curve25519:A": "unsigned"}}, 400, "M_INVALID_PARAM"),
        ({"one_time_keys": {"curve25519:A": 5}}, 400, "M_BAD_JSON"),
        ({"one_time_keys": {"curve25519:A": 1.5}}, 400, "M_BAD_JSON"),
    ]
    for body, status, errcode in cases:
        r = await post(http, alice, UPLOAD, body)
        assert (r.status_code, r.json()["errcode"]) == (status, errcode), body
    r = await http.post(UPLOAD, content=b"{not json", headers=alice.headers())
    assert r.json()["errcode"] == "M_NOT_JSON"
    r = await post(http, alice, UPLOAD, {})
    assert r.json()["one_time_key_counts"] == {"signed_curve25519": 0}


async def test_keys_are_stored_as_uploaded_without_verifying_signatures(
    http: httpx.AsyncClient,
) -> None:
    # The server checks shape and owner; verifying the self-signatures is the job of the
    # clients that download the keys, so keys in formats it cannot verify are kept.
    alice = await device(http)
    dk = {
        "user_id": alice.user_id, "device_id": alice.device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
        "keys": {f"curve25519:{alice.device_id}": "curve+key",
                 f"ed25519:{alice.device_id}": "ed25519+key"},
        "signatures": {alice.user_id: {f"ed25519:{alice.device_id}": "self+signature"}},
    }
    forged = sign({"key": "AAAA"}, alice.user_id, alice.ed_key_id, FakeDevice("@x:y", "X").ed)
    r = await post(http, alice, UPLOAD, {"device_keys": dk, "one_time_keys": {
        "my_algorithm:one": "opaque", "signed_curve25519:Z": forged}})
    assert r.status_code == 200, r.text
    assert r.json()["one_time_key_counts"]["my_algorithm"] == 1
    bob = await device(http)
    r = await post(http, bob, QUERY, {"device_keys": {alice.user_id: [alice.device_id]}})
    got = r.json()["device_keys"][alice.user_id][alice.device_id]
    assert got["keys"] == dk["keys"] and got["signatures"] == dk["signatures"]
    r = await post(http, bob, "/_matrix/client/v3/keys/claim",
                   {"one_time_keys": {alice.user_id: {alice.device_id: "signed_curve25519"}}})
    assert r.json()["one_time_keys"][alice.user_id][alice.device_id] == {
        "signed_curve25519:Z": forged}


async def test_query_shows_devices_with_display_names(http: httpx.AsyncClient) -> None:
    alice = await device(http)
    bob = await device(http)
    await alice.upload(http)
    r = await http.put(
        f"/_matrix/client/v3/devices/{alice.device_id}",
        json={"display_name": "Alice's phone"},
        headers=alice.headers(),
    )
    assert r.status_code == 200
    r = await post(
        http,
        bob,
        QUERY,
        {"device_keys": {alice.user_id: [], "@nobody:test.local": [], "@x:remote.example": []}},
    )
    assert r.status_code == 200
    body = r.json()
    got = body["device_keys"][alice.user_id][alice.device_id]
    assert got["keys"] == alice.device_keys()["keys"]
    assert got["signatures"] == alice.device_keys()["signatures"]
    assert got["unsigned"]["device_display_name"] == "Alice's phone"
    assert "@nobody:test.local" not in body["device_keys"]
    assert "remote.example" in body["failures"]
    # Asking for one unknown device of a known user gives an empty map.
    r = await post(http, bob, QUERY, {"device_keys": {alice.user_id: ["NOPE"]}})
    assert r.json()["device_keys"][alice.user_id] == {}


async def test_query_bad_input(http: httpx.AsyncClient) -> None:
    alice = await device(http)
    for body, errcode in [
        ({}, "M_MISSING_PARAM"),
        ({"device_keys": []}, "M_BAD_JSON"),
        ({"device_keys": {"not-a-user": []}}, "M_INVALID_PARAM"),
        ({"device_keys": {alice.user_id: "DEVICE"}}, "M_BAD_JSON"),
    ]:
        r = await post(http, alice, QUERY, body)
        assert r.status_code == 400 and r.json()["errcode"] == errcode, body
    r = await http.post(QUERY, json={"device_keys": {}})
    assert r.status_code == 401


async def test_each_one_time_key_is_claimed_once_then_fallback(http: httpx.AsyncClient) -> None:
    alice = await device(http)
    bob = await device(http)
    otks = alice.one_time_keys(10)
    fb_name, fb = alice.signed_key(fallback=True)
    r = await post(
        http,
        alice,
        UPLOAD,
        {"device_keys": alice.device_keys(), "one_time_keys": otks, "fallback_keys": {fb_name: fb}},
    )
    assert r.status_code == 200
    claimed: list[dict[str, Any]] = []

    async def claim_one() -> None:
        r = await post(
            http, bob, CLAIM, {"one_time_keys": {alice.user_id: {alice.device_id: "signed_curve25519"}}}
        )
        assert r.status_code == 200
        claimed.append(r.json()["one_time_keys"][alice.user_id][alice.device_id])

    async with trio.open_nursery() as n:
        for _ in range(14):
            n.start_soon(claim_one)
    names = [next(iter(c)) for c in claimed]
    one_time = [x for x in names if x != fb_name]
    assert sorted(one_time) == sorted(otks)  # every key exactly once
    assert names.count(fb_name) == 4  # then the fallback key, again and again
    for c in claimed:
        ((name, key),) = c.items()
        assert key == (fb if name == fb_name else otks[name])
    r = await post(http, alice, UPLOAD, {})
    assert r.json()["one_time_key_counts"] == {"signed_curve25519": 0}


async def test_claim_unknown_users_and_bad_input(http: httpx.AsyncClient) -> None:
    alice = await device(http)
    r = await post(
        http,
        alice,
        CLAIM,
        {
            "one_time_keys": {
                "@ghost:test.local": {"DEV": "signed_curve25519"},
                alice.user_id: {"NODEVICE": "signed_curve25519"},
                "@x:elsewhere.example": {"D": "signed_curve25519"},
            }
        },
    )
    assert r.status_code == 200
    assert r.json()["one_time_keys"] == {}
    assert "elsewhere.example" in r.json()["failures"]
    for body in ({"one_time_keys": {alice.user_id: ["x"]}}, {"one_time_keys": 3}):
        r = await post(http, alice, CLAIM, body)
        assert r.status_code == 400 and r.json()["errcode"] == "M_BAD_JSON"
    r = await post(http, alice, CLAIM, {})
    assert r.json()["errcode"] == "M_MISSING_PARAM"


async def test_fallback_key_replacement_and_unused_types(server: Any, http: httpx.AsyncClient) -> None:
    alice = await device(http)
    e2ee = server.services.e2ee
    await alice.upload(http, fallback=True)
    assert await e2ee.unused_fallback_key_types(alice.user_id, alice.device_id) == [
        "signed_curve25519"
    ]
    bob = await device(http)
    req = {"one_time_keys": {alice.user_id: {alice.device_id: "signed_curve25519"}}}
    r = await post(http, bob, CLAIM, req)
    first = r.json()["one_time_keys"][alice.user_id][alice.device_id]
    assert await e2ee.unused_fallback_key_types(alice.user_id, alice.device_id) == []
    # A new fallback key replaces the used one.
    name, fb = alice.signed_key(fallback=True)
    r = await post(http, alice, UPLOAD, {"fallback_keys": {name: fb}})
    assert r.status_code == 200
    assert await e2ee.unused_fallback_key_types(alice.user_id, alice.device_id) == [
        "signed_curve25519"
    ]
    r = await post(http, bob, CLAIM, req)
    assert r.json()["one_time_keys"][alice.user_id][alice.device_id] == {name: fb}
    assert first != {name: fb}
    # Two fallback keys of one algorithm in one upload are refused.
    two = dict([alice.signed_key(fallback=True), alice.signed_key(fallback=True)])
    r = await post(http, alice, UPLOAD, {"fallback_keys": two})
    assert r.status_code == 400


async def test_cross_signing_upload_and_visibility(http: httpx.AsyncClient) -> None:
    alice = await device(http)
    bob = await device(http)
    await alice.upload(http)
    xs = CrossSigning(alice.user_id)
    # No master key anywhere: refused.
    r = await post(http, alice, XSIGN, {"self_signing_key": xs.self_signing_key()})
    assert (r.status_code, r.json()["errcode"]) == (400, "M_MISSING_PARAM")
    # A self-signing key not signed by the master key.
    bad = {**xs.upload_body(), "self_signing_key": xs.key_obj("self_signing", xs.ssk)}
    r = await post(http, alice, XSIGN, bad)
    assert (r.status_code, r.json()["errcode"]) == (400, "M_INVALID_SIGNATURE")
    # The first upload needs no user-interactive auth; an identical retry neither.
    for _ in range(2):
        r = await post(http, alice, XSIGN, xs.upload_body())
        assert r.status_code == 200, r.text

    r = await post(http, alice, QUERY, {"device_keys": {alice.user_id: []}})
    body = r.json()
    assert body["master_keys"][alice.user_id]["keys"] == xs.master_key()["keys"]
    assert body["self_signing_keys"][alice.user_id] == xs.self_signing_key()
    assert body["user_signing_keys"][alice.user_id] == xs.user_signing_key()
    r = await post(http, bob, QUERY, {"device_keys": {alice.user_id: []}})
    body = r.json()
    assert alice.user_id in body["master_keys"]
    assert alice.user_id in body["self_signing_keys"]
    assert alice.user_id not in body["user_signing_keys"]  # only for its owner


async def test_replacing_cross_signing_keys_needs_password(http: httpx.AsyncClient) -> None:
    user_id, token, device_id = await register(http, "crossalice", "secret-pw")
    alice = FakeDevice(user_id, device_id, token)
    await post(http, alice, XSIGN, CrossSigning(user_id).upload_body())
    new = CrossSigning(user_id).upload_body()
    r = await post(http, alice, XSIGN, new)
    assert r.status_code == 401
    flows = r.json()["flows"]
    assert {"stages": ["m.login.password"]} in flows
    session = r.json()["session"]
    wrong = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user_id},
             "password": "nope", "session": session}
    r = await post(http, alice, XSIGN, {**new, "auth": wrong})
    assert r.status_code == 401 and r.json()["errcode"] == "M_FORBIDDEN"
    right = {**wrong, "password": "secret-pw"}
    r = await post(http, alice, XSIGN, {**new, "auth": right})
    assert r.status_code == 200, r.text
    r = await post(http, alice, QUERY, {"device_keys": {user_id: []}})
    assert r.json()["master_keys"][user_id]["keys"] == new["master_key"]["keys"]


async def test_cross_signing_key_cannot_take_a_device_id(http: httpx.AsyncClient) -> None:
    alice = await device(http)
    xs = CrossSigning(alice.user_id)
    body = xs.upload_body()
    # A master key whose public key equals a device ID of the user.
    pub = xs.pub(xs.master)
    r = await http.post(
        "/_matrix/client/v3/login",
        json={"type": "m.login.password", "identifier": {"type": "m.id.user", "user": alice.user_id},
              "password": f"pw-{alice.user_id[1:].split(':')[0]}", "device_id": pub},
    )
    assert r.status_code == 200, r.text
    r = await post(http, alice, XSIGN, body)
    assert (r.status_code, r.json()["errcode"]) == (403, "M_FORBIDDEN")


async def test_signatures_upload_validates_and_shows_to_the_right_users(http: httpx.AsyncClient) -> None:
    alice = await device(http)
    bob = await device(http)
    carol = await device(http)
    for d in (alice, bob, carol):
        await d.upload(http)
    axs, bxs = CrossSigning(alice.user_id), CrossSigning(bob.user_id)
    assert (await post(http, alice, XSIGN, axs.upload_body())).status_code == 200
    assert (await post(http, bob, XSIGN, bxs.upload_body())).status_code == 200

    # Alice signs her device with her self-signing key, and the master with her device.
    signed_dev = axs.sign_device(alice.device_keys())
    master = axs.master_key()
    signed_master = sign(master, alice.user_id, alice.ed_key_id, alice.ed)
    forged = sign(bob.device_keys(), alice.user_id, f"ed25519:{axs.pub(axs.ssk)}", bxs.ssk)
    r = await post(
        http,
        alice,
        SIGS,
        {alice.user_id: {alice.device_id: signed_dev, axs.pub(axs.master): signed_master}},
    )
    assert r.status_code == 200 and r.json()["failures"] == {}, r.text
    r = await post(http, alice, SIGS, {bob.user_id: {bob.device_id: forged}})
    assert r.json()["failures"][bob.user_id][bob.device_id]["errcode"] in (
        "M_INVALID_SIGNATURE",
        "M_NOT_FOUND",
    )
    # A signature that does not verify.
    tampered = axs.sign_device(alice.device_keys())
    tampered["signatures"][alice.user_id][f"ed25519:{axs.pub(axs.ssk)}"] = "A" * 86
    r = await post(http, alice, SIGS, {alice.user_id: {alice.device_id: tampered}})
    assert r.json()["failures"][alice.user_id][alice.device_id]["errcode"] == "M_INVALID_SIGNATURE"

    r = await post(http, carol, QUERY, {"device_keys": {alice.user_id: []}})
    body = r.json()
    dev_sigs = body["device_keys"][alice.user_id][alice.device_id]["signatures"][alice.user_id]
    assert f"ed25519:{axs.pub(axs.ssk)}" in dev_sigs
    assert alice.ed_key_id in body["master_keys"][alice.user_id]["signatures"][alice.user_id]

    # Alice verifies Bob: her user-signing key signs his master key.
    r = await post(http, alice, QUERY, {"device_keys": {bob.user_id: []}})
    bob_master = r.json()["master_keys"][bob.user_id]
    r = await post(
        http, alice, SIGS, {bob.user_id: {bxs.pub(bxs.master): axs.sign_other_master(bob_master)}}
    )
    assert r.json()["failures"] == {}
    usk_id = f"ed25519:{axs.pub(axs.usk)}"
    r = await post(http, alice, QUERY, {"device_keys": {bob.user_id: []}})
    assert usk_id in r.json()["master_keys"][bob.user_id]["signatures"][alice.user_id]
    for viewer in (bob, carol):
        r = await post(http, viewer, QUERY, {"device_keys": {bob.user_id: []}})
        assert alice.user_id not in r.json()["master_keys"][bob.user_id].get("signatures", {})
    # Signing Bob's master key with something other than the user-signing key fails.
    wrong = sign(bob_master, alice.user_id, alice.ed_key_id, alice.ed)
    r = await post(http, alice, SIGS, {bob.user_id: {bxs.pub(bxs.master): wrong}})
    assert r.json()["failures"][bob.user_id][bxs.pub(bxs.master)]["errcode"] == "M_INVALID_SIGNATURE"


async def test_deleted_device_keys_disappear(http: httpx.AsyncClient) -> None:
    alice = await device(http)
    bob = await device(http)
    await alice.upload(http, otks=3)
    r = await http.post("/_matrix/client/v3/logout", headers=alice.headers())
    assert r.status_code == 200
    r = await post(http, bob, QUERY, {"device_keys": {alice.user_id: []}})
    assert r.json()["device_keys"][alice.user_id] == {}
    r = await post(
        http, bob, CLAIM, {"one_time_keys": {alice.user_id: {alice.device_id: "signed_curve25519"}}}
    )
    assert r.json()["one_time_keys"] == {}


async def test_key_changes_include_own_new_device(server: Any, http: httpx.AsyncClient) -> None:
    alice = await device(http, "changes_alice")
    pos0 = server.services.notifier.position
    r = await http.get(
        "/_matrix/client/v3/keys/changes",
        params={"from": str(pos0), "to": str(pos0)},
        headers=alice.headers(),
    )
    assert r.json() == {"changed": [], "left": []}
    await alice.upload(http)
    pos1 = server.services.notifier.position
    assert pos1 > pos0
    r = await http.get(
        "/_matrix/client/v3/keys/changes",
        params={"from": str(pos0), "to": str(pos1)},
        headers=alice.headers(),
    )
    assert r.json() == {"changed": [alice.user_id], "left": []}
    r = await http.get("/_matrix/client/v3/keys/changes", params={"from": "x"}, headers=alice.headers())
    assert r.status_code == 400


async def test_cross_signing_upload_under_the_unstable_prefix(http: httpx.AsyncClient) -> None:
    # Clients from before Matrix 1.1 upload cross-signing keys under /unstable.
    alice = await device(http)
    xs = CrossSigning(alice.user_id)
    r = await post(http, alice, XSIGN.replace("/v3/", "/unstable/"),
                   {"master_key": xs.master_key()})
    assert r.status_code == 200, r.text
    r = await post(http, alice, QUERY, {"device_keys": {alice.user_id: []}})
    assert r.json()["master_keys"][alice.user_id]["keys"] == xs.master_key()["keys"]


async def test_user_signing_key_change_is_news_to_its_owner_only(
    server: Any, http: httpx.AsyncClient
) -> None:
    alice = await device(http, "usk_alice")
    bob = await device(http, "usk_bob")
    r = await post(http, alice, "/_matrix/client/v3/createRoom", {"preset": "public_chat"})
    room = r.json()["room_id"]
    await post(http, bob, f"/_matrix/client/v3/join/{room}", {})
    xs = CrossSigning(alice.user_id)
    r = await post(http, alice, XSIGN, {"master_key": xs.master_key(),
                                        "self_signing_key": xs.self_signing_key()})
    assert r.status_code == 200, r.text
    pos0 = server.services.notifier.position
    auth = {"type": "m.login.password", "password": "pw-usk_alice",
            "identifier": {"type": "m.id.user", "user": alice.user_id}}
    r = await post(http, alice, XSIGN, {"user_signing_key": xs.user_signing_key(), "auth": auth})
    assert r.status_code == 200, r.text
    pos1 = server.services.notifier.position
    params = {"from": str(pos0), "to": str(pos1)}
    r = await http.get("/_matrix/client/v3/keys/changes", params=params, headers=bob.headers())
    assert r.json()["changed"] == []
    r = await http.get("/_matrix/client/v3/keys/changes", params=params, headers=alice.headers())
    assert r.json()["changed"] == [alice.user_id]


async def test_oldest_one_time_keys_are_claimed_first(http: httpx.AsyncClient) -> None:
    """v1.13 (MSC4225): keys are handed out in the order they were uploaded, so a
    client that drops its oldest private keys never has them claimed."""
    alice = await device(http)
    bob = await device(http)
    first, second = alice.one_time_keys(3), alice.one_time_keys(3)
    r = await post(http, alice, UPLOAD, {"device_keys": alice.device_keys(), "one_time_keys": first})
    assert r.status_code == 200
    r = await post(http, alice, UPLOAD, {"one_time_keys": second})
    assert r.status_code == 200
    names = []
    for _ in range(6):
        r = await post(
            http, bob, CLAIM, {"one_time_keys": {alice.user_id: {alice.device_id: "signed_curve25519"}}}
        )
        names.append(next(iter(r.json()["one_time_keys"][alice.user_id][alice.device_id])))
    assert set(names[:3]) == set(first) and set(names[3:]) == set(second)
