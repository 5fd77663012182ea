"""protocol/pdu_checks.py: the checks on receipt of a PDU, table-driven over room
versions and malformed variants, with the spec's signing test vector."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from pocketserver.protocol import pdu_checks as pc
from pocketserver.protocol.events import Event
from pocketserver.protocol.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from pocketserver.protocol.signing import decode_signing_key, sign_event
from tests.federation.remote import RemoteRoom, key_for

VERSIONS = [KNOWN_ROOM_VERSIONS[str(v)] for v in range(1, 13)]
VECTORS = json.loads((Path(__file__).parent / "fixtures" / "spec_signing_vectors.json").read_text())


def _room(rv: RoomVersion) -> RemoteRoom:
    return RemoteRoom.create("remote.test", "@alice:remote.test", rv)


def _message(room: RemoteRoom, **extra: Any) -> dict[str, Any]:
    return room.build("@alice:remote.test", "m.room.message", {"body": "hi"}, advance=False, extra=extra or None)


@pytest.mark.parametrize("rv", VERSIONS, ids=lambda r: f"v{r.identifier}")
def test_a_well_formed_event_passes_every_step(rv: RoomVersion) -> None:
    room = _room(rv)
    pdu = _message(room)
    ev = pc.check_format(copy.deepcopy(pdu), rv)
    assert ev.event_id == room.event_id(pdu)
    assert pc.required_signers(ev) == {"remote.test"}
    pc.verify_signatures(ev, {"remote.test": {room.key.key_id: room.key.verify_key}})
    used, ok = pc.check_hashes(ev)
    assert ok and used is ev
    auth = [room.events[a] for a in ev.auth_event_ids]
    create = room.events[room.state[("m.room.create", "")]]
    pc.check_auth_events(ev, auth, create)
    state = {k: room.events[v] for k, v in room.state.items()}
    pc.check_state_before(ev, state)
    pc.check_current_state(ev, state)


def _drop(key: str) -> Any:
    return lambda pdu: pdu.pop(key)


def _set(key: str, value: Any) -> Any:
    return lambda pdu: pdu.__setitem__(key, value)


MALFORMED = [
    ("no type", _drop("type")),
    ("no sender", _drop("sender")),
    ("no content", _drop("content")),
    ("no depth", _drop("depth")),
    ("no hashes", _drop("hashes")),
    ("no signatures", _drop("signatures")),
    ("no prev_events", _drop("prev_events")),
    ("no auth_events", _drop("auth_events")),
    ("no room_id", _drop("room_id")),
    ("type not a string", _set("type", 5)),
    ("type too long", _set("type", "t" * 256)),
    ("state_key too long", _set("state_key", "s" * 256)),
    ("state_key not a string", _set("state_key", 1)),
    ("sender not a user ID", _set("sender", "alice")),
    ("sender too long", _set("sender", "@" + "a" * 250 + ":remote.test")),
    ("content not an object", _set("content", [])),
    ("depth negative", _set("depth", -1)),
    ("depth beyond 2^63-1", _set("depth", 2**63)),
    ("depth a string", _set("depth", "3")),
    ("timestamp a float", _set("origin_server_ts", 1.5)),
    ("room_id not a room ID", _set("room_id", "room")),
    ("prev_events not a list", _set("prev_events", "x")),
    ("prev_events junk", _set("prev_events", [1])),
    ("unsigned a list", _set("unsigned", [])),
    ("signatures not objects", _set("signatures", {"remote.test": "sig"})),
    ("too large", lambda pdu: pdu["content"].__setitem__("body", "x" * 65536)),
]


@pytest.mark.parametrize("rv", [VERSIONS[0], VERSIONS[3], VERSIONS[9], VERSIONS[11]], ids=lambda r: f"v{r.identifier}")
@pytest.mark.parametrize(("name", "mutate"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_events_are_dropped(rv: RoomVersion, name: str, mutate: Any) -> None:
    pdu = _message(_room(rv))
    mutate(pdu)
    with pytest.raises(pc.PduFormatError):
        pc.check_format(pdu, rv)


def test_event_id_only_in_v1_and_v2() -> None:
    for rv in VERSIONS:
        pdu = _message(_room(rv))
        if rv.uses_event_id_in_pdu:
            pc.check_format(copy.deepcopy(pdu), rv)
            del pdu["event_id"]
        else:
            pdu["event_id"] = "$abc:remote.test"
        with pytest.raises(pc.PduFormatError):
            pc.check_format(pdu, rv)


def test_v12_create_event_has_no_room_id() -> None:
    rv = KNOWN_ROOM_VERSIONS["12"]
    room = _room(rv)
    create = dict(room.events[room.state[("m.room.create", "")]].pdu)
    ev = pc.check_format(copy.deepcopy(create), rv)
    assert ev.room_id == "!" + ev.event_id[1:] == room.room_id
    create["room_id"] = room.room_id
    with pytest.raises(pc.PduFormatError):
        pc.check_format(create, rv)
    # before v12 a create event carries its room_id
    rv11 = KNOWN_ROOM_VERSIONS["11"]
    r11 = _room(rv11)
    c11 = dict(r11.events[r11.state[("m.room.create", "")]].pdu)
    pc.check_format(copy.deepcopy(c11), rv11)
    del c11["room_id"]
    with pytest.raises(pc.PduFormatError):
        pc.check_format(c11, rv11)


def test_event_ids_are_the_reference_hash() -> None:
    rv = KNOWN_ROOM_VERSIONS["10"]
    room = _room(rv)
    pdu = _message(room)
    first = pc.check_format(copy.deepcopy(pdu), rv).event_id
    pdu["content"]["body"] = "changed"  # unsigned change of content: the hash check fails
    second = pc.check_format(copy.deepcopy(pdu), rv)
    # content is redacted away from message events: same reference hash, same ID
    assert second.event_id == first
    pdu["origin_server_ts"] += 1  # a covered field: another ID
    assert pc.check_format(pdu, rv).event_id != first


def test_spec_vector_signature_and_hash() -> None:
    vector = VECTORS["events"][0]
    key = decode_signing_key(f"ed25519 1 {VECTORS['signing_key_seed']}")
    rv = KNOWN_ROOM_VERSIONS["4"]
    ev = Event.from_pdu(vector["signed"], rv)
    pc.verify_signatures(ev, {"domain": {"ed25519:1": key.verify_key}})
    assert pc.check_hashes(ev)[1]
    forged = copy.deepcopy(vector["signed"])
    forged["depth"] = 4
    with pytest.raises(pc.SignatureError):
        pc.verify_signatures(Event.from_pdu(forged, rv), {"domain": {"ed25519:1": key.verify_key}})


@pytest.mark.parametrize("rv", [VERSIONS[1], VERSIONS[5], VERSIONS[11]], ids=lambda r: f"v{r.identifier}")
def test_signature_cases(rv: RoomVersion) -> None:
    room = _room(rv)
    keys = {"remote.test": {room.key.key_id: room.key.verify_key}}
    pdu = _message(room)
    ev = pc.check_format(copy.deepcopy(pdu), rv)
    # unsigned by the sender's server
    bare = copy.deepcopy(pdu)
    bare["signatures"] = {}
    with pytest.raises(pc.SignatureError):
        pc.verify_signatures(pc.check_format(bare, rv), keys)
    # signed, but only by keys we do not know
    with pytest.raises(pc.SignatureError):
        pc.verify_signatures(ev, {})
    # a forged signature by a known key
    other = key_for("evil.test")
    forged = sign_event({k: v for k, v in pdu.items() if k != "signatures"}, "remote.test", other, rv)
    forged["signatures"]["remote.test"] = {room.key.key_id: forged["signatures"]["remote.test"][other.key_id]}
    with pytest.raises(pc.SignatureError):
        pc.verify_signatures(pc.check_format(forged, rv), keys)
    # content changed after signing: signatures still verify (they cover the redacted
    # event), the hash does not, and the redacted copy is used
    edited = copy.deepcopy(pdu)
    edited["content"]["body"] = "edited"
    ev2 = pc.check_format(edited, rv)
    pc.verify_signatures(ev2, keys)
    used, ok = pc.check_hashes(ev2)
    assert not ok and used.content == {} and used.event_id == ev2.event_id


def test_required_signers() -> None:
    rv1 = KNOWN_ROOM_VERSIONS["1"]
    room = _room(rv1)
    pdu = _message(room)
    pdu["event_id"] = "$other:elsewhere.test"
    assert pc.required_signers(pc.check_format(pdu, rv1)) == {"remote.test", "elsewhere.test"}
    rv10 = KNOWN_ROOM_VERSIONS["10"]
    r10 = _room(rv10)
    join = r10.build(
        "@bob:joiner.test",
        "m.room.member",
        {"membership": "join", "join_authorised_via_users_server": "@alice:remote.test"},
        state_key="@bob:joiner.test",
        advance=False,
    )
    assert pc.required_signers(pc.check_format(join, rv10)) == {"joiner.test", "remote.test"}
    tpi = r10.build(
        "@carol:third.test",
        "m.room.member",
        {"membership": "invite", "third_party_invite": {"signed": {"mxid": "@d:x.test", "token": "t"}}},
        state_key="@d:x.test",
        advance=False,
    )
    assert pc.required_signers(pc.check_format(tpi, rv10)) == set()


@pytest.mark.parametrize("rv", [VERSIONS[0], VERSIONS[5], VERSIONS[11]], ids=lambda r: f"v{r.identifier}")
def test_auth_steps(rv: RoomVersion) -> None:
    room = _room(rv)
    create = room.events[room.state[("m.room.create", "")]]
    # a stranger's message: its own auth events do not make it joined -> rejected
    stranger = room.build("@eve:remote.test", "m.room.message", {"body": "x"}, advance=False)
    ev = pc.check_format(stranger, rv)
    with pytest.raises(pc.AuthError):
        pc.check_auth_events(ev, [room.events[a] for a in ev.auth_event_ids], create)
    # an auth event of the wrong type -> rejected (rule 3.2)
    msg = pc.check_format(_message(room), rv)
    extra = room.events[room.state[("m.room.join_rules", "")]]
    with pytest.raises(pc.AuthError):
        pc.check_auth_events(msg, [room.events[a] for a in msg.auth_event_ids] + [extra], create)
    # bob joins; then alice bans bob; bob's message citing the old state is allowed
    # by its auth events and the state before it, and soft-failed by the current state
    bob = "@bob:remote.test"
    room.build(bob, "m.room.member", {"membership": "join"}, state_key=bob)
    before_ban = dict(room.state)
    fork_point = list(room.extremities)
    room.build("@alice:remote.test", "m.room.member", {"membership": "ban"}, state_key=bob)
    evading = room.build(bob, "m.room.message", {"body": "ha"}, prev_events=fork_point, auth_state=before_ban, advance=False)
    ev = pc.check_format(evading, rv)
    pc.check_auth_events(ev, [room.events[a] for a in ev.auth_event_ids], create)
    pc.check_state_before(ev, {k: room.events[v] for k, v in before_ban.items()})
    current = {k: room.events[v] for k, v in room.state.items()}
    with pytest.raises(pc.AuthError):
        pc.check_current_state(ev, current)
    assert pc.passes(pc.check_current_state, ev, current) is not None
    assert pc.passes(pc.check_state_before, ev, {k: room.events[v] for k, v in before_ban.items()}) is None
