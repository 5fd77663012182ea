"""Event.from_pdu across the event formats (rooms/fragments/v1-event-ids.md,
v4-event-format.md, v11-event-format.md, v12-event-format.md)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from pocketserver.protocol.events import Event, EventFormatError
from pocketserver.protocol.hashes import compute_event_id, make_room_id_from_create_event_id
from pocketserver.protocol.identifiers import is_valid_event_id, is_valid_room_id
from pocketserver.protocol.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from pocketserver.protocol.signing import (
    sign_event,
    signing_key_from_seed,
    verify_event_signature,
)

KEY = signing_key_from_seed(bytes(range(32)), "t")
SERVER = "example.org"


def rv(v: str) -> RoomVersion:
    return KNOWN_ROOM_VERSIONS[v]


def finish(pdu: dict[str, Any], version: str) -> dict[str, Any]:
    return sign_event(pdu, SERVER, KEY, rv(version))


def v1_pdu(**extra: Any) -> dict[str, Any]:
    """Room versions 1-2: event_id inside the PDU; references are [id, hashes] pairs."""
    pdu: dict[str, Any] = {
        "event_id": "$abc123:example.org",
        "room_id": "!room:example.org",
        "sender": "@alice:example.org",
        "origin": "example.org",
        "origin_server_ts": 1_500_000_000_000,
        "type": "m.room.member",
        "state_key": "@alice:example.org",
        "content": {"membership": "join"},
        "depth": 3,
        "prev_events": [["$prev:example.org", {"sha256": "aGFzaA"}]],
        "auth_events": [
            ["$create:example.org", {"sha256": "aGFzaA"}],
            ["$pl:example.org", {"sha256": "aGFzaA"}],
        ],
        "prev_state": [],
    }
    pdu.update(extra)
    return finish(pdu, "1")


def v3_pdu(version: str = "3", **extra: Any) -> dict[str, Any]:
    """Room versions 3-10: no event_id; references are plain IDs."""
    pdu: dict[str, Any] = {
        "room_id": "!room:example.org",
        "sender": "@alice:example.org",
        "origin": "example.org",
        "origin_server_ts": 1_600_000_000_000,
        "type": "m.room.redaction",
        "redacts": "$target",
        "content": {"reason": "spam"},
        "depth": 9,
        "prev_events": ["$prev"],
        "auth_events": ["$create", "$pl", "$member"],
    }
    pdu.update(extra)
    return finish(pdu, version)


def v11_pdu(**extra: Any) -> dict[str, Any]:
    """Room version 11: redacts in content; no origin needed."""
    pdu: dict[str, Any] = {
        "room_id": "!room:example.org",
        "sender": "@alice:example.org",
        "origin_server_ts": 1_700_000_000_000,
        "type": "m.room.redaction",
        "content": {"redacts": "$target11", "reason": "spam"},
        "depth": 20,
        "prev_events": ["$prev"],
        "auth_events": ["$create", "$pl", "$member"],
    }
    pdu.update(extra)
    return finish(pdu, "11")


def v12_create_pdu() -> dict[str, Any]:
    """Room version 12: the create event has no room_id."""
    return finish(
        {
            "sender": "@alice:example.org",
            "origin_server_ts": 1_750_000_000_000,
            "type": "m.room.create",
            "state_key": "",
            "content": {"room_version": "12"},
            "depth": 1,
            "prev_events": [],
            "auth_events": [],
        },
        "12",
    )


# -- v1 ---------------------------------------------------------------------------


def test_v1_event() -> None:
    pdu = v1_pdu()
    ev = Event.from_pdu(pdu, rv("1"))
    assert ev.event_id == "$abc123:example.org"
    assert is_valid_event_id(ev.event_id, rv("1"))
    assert ev.room_id == "!room:example.org"
    assert ev.sender == "@alice:example.org"
    assert ev.origin == "example.org"
    assert ev.type == "m.room.member"
    assert ev.state_key == "@alice:example.org"
    assert ev.is_state and ev.state_tuple == ("m.room.member", "@alice:example.org")
    assert ev.membership == "join"
    assert ev.prev_event_ids == ("$prev:example.org",)
    assert ev.auth_event_ids == ("$create:example.org", "$pl:example.org")
    assert ev.depth == 3
    assert ev.origin_server_ts == 1_500_000_000_000
    assert ev.room_version is rv("1")
    assert ev.pdu is pdu
    assert ev.rejected_reason is None
    verify_event_signature(ev.pdu, SERVER, KEY.key_id, KEY.verify_key, rv("1"))


def test_v1_requires_event_id_in_pdu() -> None:
    pdu = v1_pdu()
    del pdu["event_id"]
    with pytest.raises(EventFormatError, match="event_id"):
        Event.from_pdu(pdu, rv("2"))


def test_v1_rejects_v3_style_references() -> None:
    with pytest.raises(EventFormatError):
        Event.from_pdu(v1_pdu(prev_events=["$prev:example.org"]), rv("1"))


# -- v3 / v4 -------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["3", "4", "10"])
def test_v3_v4_event_id_is_reference_hash(version: str) -> None:
    pdu = v3_pdu(version)
    ev = Event.from_pdu(pdu, rv(version))
    assert ev.event_id == compute_event_id(pdu, rv(version))
    assert is_valid_event_id(ev.event_id, rv(version))
    assert ev.prev_event_ids == ("$prev",)
    assert ev.auth_event_ids == ("$create", "$pl", "$member")
    assert ev.state_key is None and not ev.is_state
    # Pre-v11 redactions target the top-level "redacts".
    assert ev.redacts == "$target"
    assert "event_id" not in pdu


def test_v3_and_v4_ids_differ_only_in_alphabet() -> None:
    pdu = v3_pdu("3")
    id3 = Event.from_pdu(pdu, rv("3")).event_id
    id4 = Event.from_pdu(pdu, rv("4")).event_id
    assert id4 == id3.replace("+", "-").replace("/", "_")


def test_known_event_id_is_trusted() -> None:
    pdu = v3_pdu("4")
    ev = Event.from_pdu(pdu, rv("4"), event_id="$given")
    assert ev.event_id == "$given"


def test_event_id_ignores_unsigned_and_signatures() -> None:
    pdu = v3_pdu("4")
    other = copy.deepcopy(pdu)
    other["unsigned"] = {"age": 1234}
    other["signatures"]["other.org"] = {"ed25519:x": "sig"}
    assert Event.from_pdu(other, rv("4")) == Event.from_pdu(pdu, rv("4"))


def test_v4_rejects_v1_style_references() -> None:
    with pytest.raises(EventFormatError):
        Event.from_pdu(v3_pdu("4", prev_events=[["$p", {"sha256": "x"}]]), rv("4"))


# -- v11 -----------------------------------------------------------------------------


def test_v11_redacts_in_content() -> None:
    pdu = v11_pdu()
    ev = Event.from_pdu(pdu, rv("11"))
    assert ev.redacts == "$target11"
    assert ev.event_id == compute_event_id(pdu, rv("11"))
    # A top-level "redacts" is not the target any more.
    ev2 = Event.from_pdu(v11_pdu(redacts="$toplevel", content={}), rv("11"))
    assert ev2.redacts is None


def test_non_redaction_has_no_redacts() -> None:
    ev = Event.from_pdu(v11_pdu(type="m.room.message", content={"redacts": "$x"}), rv("11"))
    assert ev.redacts is None


# -- v12 -----------------------------------------------------------------------------


def test_v12_create_event_room_id_is_derived() -> None:
    pdu = v12_create_pdu()
    assert "room_id" not in pdu
    ev = Event.from_pdu(pdu, rv("12"))
    assert is_valid_event_id(ev.event_id, rv("12"))
    assert ev.room_id == make_room_id_from_create_event_id(ev.event_id)
    assert is_valid_room_id(ev.room_id, rv("12"))
    assert ev.auth_event_ids == () and ev.prev_event_ids == ()


def test_v12_non_create_events_need_room_id() -> None:
    create = Event.from_pdu(v12_create_pdu(), rv("12"))
    member = finish(
        {
            "room_id": create.room_id,
            "sender": "@alice:example.org",
            "origin_server_ts": 1_750_000_000_001,
            "type": "m.room.member",
            "state_key": "@alice:example.org",
            "content": {"membership": "join"},
            "depth": 2,
            "prev_events": [create.event_id],
            # v12: the create event is not listed in auth_events.
            "auth_events": [],
        },
        "12",
    )
    ev = Event.from_pdu(member, rv("12"))
    assert ev.room_id == create.room_id
    del member["room_id"]
    with pytest.raises(EventFormatError, match="room_id"):
        Event.from_pdu(member, rv("12"))


def test_pre_v12_create_event_needs_room_id() -> None:
    pdu = v12_create_pdu()
    with pytest.raises(EventFormatError, match="room_id"):
        Event.from_pdu(pdu, rv("11"))


# -- malformed PDUs -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"type": 5}, "type and sender"),
        ({"sender": None}, "type and sender"),
        ({"content": []}, "content"),
        ({"state_key": 1}, "state_key"),
        ({"depth": "3"}, "integers"),
        ({"depth": True}, "integers"),
        ({"origin_server_ts": 1.5}, "integers"),
        ({"prev_events": "x"}, "prev_events"),
        ({"auth_events": [1]}, "auth_events"),
        ({"room_id": 5}, "room_id"),
    ],
)
def test_malformed(change: dict[str, Any], message: str) -> None:
    pdu = {**v3_pdu("10"), **change}
    with pytest.raises(EventFormatError, match=message):
        Event.from_pdu(pdu, rv("10"), event_id="$x")


@pytest.mark.parametrize("missing", ["type", "sender", "room_id"])
def test_missing_required_keys(missing: str) -> None:
    pdu = v3_pdu("10")
    del pdu[missing]
    with pytest.raises(EventFormatError, match=missing):
        Event.from_pdu(pdu, rv("10"), event_id="$x")


def test_event_identity_is_event_id() -> None:
    a = Event.from_pdu(v3_pdu("4"), rv("4"))
    b = Event.from_pdu(v3_pdu("4"), rv("4"))
    c = Event.from_pdu(v3_pdu("4", depth=10), rv("4"))
    assert a == b and hash(a) == hash(b)
    assert a != c
    assert len({a, b, c}) == 2
    assert a.get_pdu_json() == a.pdu and a.get_pdu_json() is not a.pdu
