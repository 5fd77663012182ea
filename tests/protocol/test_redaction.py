"""The redaction algorithm of each room version (rooms/fragments/*-redactions.md)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from pocketserver.protocol.redaction import (
    protected_top_level_keys,
    redact,
    redact_client_event,
    redact_content,
)
from pocketserver.protocol.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion

ALL_VERSIONS = list(KNOWN_ROOM_VERSIONS.values())


def rv(v: str) -> RoomVersion:
    return KNOWN_ROOM_VERSIONS[v]


# Every top-level key any version protects, plus some that none does.
FULL_PDU: dict[str, Any] = {
    "event_id": "$e:x",
    "type": "m.room.message",
    "room_id": "!r:x",
    "sender": "@u:x",
    "state_key": "",
    "content": {"body": "hi"},
    "hashes": {"sha256": "abc"},
    "signatures": {"x": {"ed25519:1": "sig"}},
    "depth": 5,
    "prev_events": ["$p"],
    "prev_state": [],
    "auth_events": ["$a"],
    "origin": "x",
    "origin_server_ts": 1234,
    "membership": "join",
    "unsigned": {"age_ts": 1},
    "age_ts": 1,
    "redacts": "$target",
    "user_id": "@u:x",
    "custom": {"a": 1},
}

TOP_V1 = {
    "event_id", "type", "room_id", "sender", "state_key", "content", "hashes",
    "signatures", "depth", "prev_events", "prev_state", "auth_events", "origin",
    "origin_server_ts", "membership",
}  # fmt: skip
TOP_V11 = TOP_V1 - {"origin", "membership", "prev_state"}


@pytest.mark.parametrize("version", ALL_VERSIONS, ids=lambda r: f"v{r.identifier}")
def test_top_level_keys(version: RoomVersion) -> None:
    expected = TOP_V11 if int(version.identifier) >= 11 else TOP_V1
    out = redact(FULL_PDU, version)
    assert set(out) == expected
    assert protected_top_level_keys(version) == expected
    assert out["content"] == {}  # m.room.message keeps nothing
    for key in expected - {"content"}:
        assert out[key] == FULL_PDU[key]


# Every content key any version protects for a type, plus one that none does.
FULL_CONTENT: dict[str, dict[str, Any]] = {
    "m.room.member": {
        "membership": "join",
        "join_authorised_via_users_server": "@admin:x",
        "third_party_invite": {"display_name": "Bob", "signed": {"token": "t"}},
        "displayname": "Alice",
        "avatar_url": "mxc://x/y",
    },
    "m.room.create": {
        "creator": "@u:x",
        "room_version": "1",
        "m.federate": False,
        "predecessor": {"room_id": "!old:x"},
        "additional_creators": ["@v:x"],
    },
    "m.room.join_rules": {
        "join_rule": "restricted",
        "allow": [{"type": "m.room_membership"}],
        "other": 1,
    },
    "m.room.power_levels": {
        "ban": 50,
        "events": {"m.room.name": 50},
        "events_default": 0,
        "invite": 0,
        "kick": 50,
        "redact": 50,
        "state_default": 50,
        "users": {"@u:x": 100},
        "users_default": 0,
        "notifications": {"room": 50},
        "other": 1,
    },  # fmt: skip
    "m.room.aliases": {"aliases": ["#a:x"], "other": 1},
    "m.room.history_visibility": {"history_visibility": "shared", "other": 1},
    "m.room.redaction": {"redacts": "$target", "reason": "spam"},
    "m.room.topic": {"topic": "secret"},
    "m.room.message": {"body": "hi", "msgtype": "m.text"},
    "m.room.canonical_alias": {"alias": "#a:x"},
}

PL_V1 = ["ban", "events", "events_default", "kick", "redact", "state_default", "users",
         "users_default"]  # fmt: skip

# (event type, room versions, content keys that survive)
CONTENT_TABLE: list[tuple[str, list[str], list[str]]] = [
    ("m.room.member", ["1", "2", "3", "4", "5", "6", "7", "8"], ["membership"]),
    ("m.room.member", ["9", "10"], ["membership", "join_authorised_via_users_server"]),
    # v11+: also third_party_invite, reduced to its "signed" key (checked below).
    ("m.room.member", ["11", "12"],
     ["membership", "join_authorised_via_users_server", "third_party_invite"]),
    ("m.room.create", [str(v) for v in range(1, 11)], ["creator"]),
    ("m.room.create", ["11", "12"], list(FULL_CONTENT["m.room.create"])),
    ("m.room.join_rules", ["1", "2", "3", "4", "5", "6", "7"], ["join_rule"]),
    ("m.room.join_rules", ["8", "9", "10", "11", "12"], ["join_rule", "allow"]),
    ("m.room.power_levels", [str(v) for v in range(1, 11)], PL_V1),
    ("m.room.power_levels", ["11", "12"], [*PL_V1, "invite"]),
    ("m.room.aliases", ["1", "2", "3", "4", "5"], ["aliases"]),
    ("m.room.aliases", [str(v) for v in range(6, 13)], []),
    ("m.room.history_visibility", [str(v) for v in range(1, 13)], ["history_visibility"]),
    ("m.room.redaction", [str(v) for v in range(1, 11)], []),
    ("m.room.redaction", ["11", "12"], ["redacts"]),
    ("m.room.topic", [str(v) for v in range(1, 13)], []),
    ("m.room.message", [str(v) for v in range(1, 13)], []),
    ("m.room.canonical_alias", [str(v) for v in range(1, 13)], []),
]  # fmt: skip

CASES = [
    pytest.param(etype, v, kept, id=f"{etype}-v{v}")
    for etype, versions, kept in CONTENT_TABLE
    for v in versions
]


def test_table_covers_every_version_and_type_once() -> None:
    seen = [(etype, v) for etype, versions, _ in CONTENT_TABLE for v in versions]
    assert len(seen) == len(set(seen))
    assert set(seen) == {(t, v) for t in FULL_CONTENT for v in KNOWN_ROOM_VERSIONS}


@pytest.mark.parametrize(("etype", "version", "kept"), CASES)
def test_content_keys(etype: str, version: str, kept: list[str]) -> None:
    pdu = {**FULL_PDU, "type": etype, "content": copy.deepcopy(FULL_CONTENT[etype])}
    out = redact(pdu, rv(version))
    assert set(out["content"]) == set(kept)
    for key in kept:
        if key == "third_party_invite":
            assert out["content"][key] == {"signed": {"token": "t"}}
        else:
            assert out["content"][key] == FULL_CONTENT[etype][key]
    assert redact_content(etype, pdu["content"], rv(version)) == out["content"]


@pytest.mark.parametrize(
    ("tpi", "expected"),
    [
        ({"display_name": "Bob", "signed": {"a": 1}}, {"third_party_invite": {"signed": {"a": 1}}}),
        ({"display_name": "Bob"}, {"third_party_invite": {}}),
        ("not an object", {}),
        (None, {}),
    ],
)
def test_v11_third_party_invite(tpi: Any, expected: dict[str, Any]) -> None:
    content = {"membership": "invite", "third_party_invite": tpi}
    out = redact_content("m.room.member", content, rv("11"))
    assert out == {"membership": "invite", **expected}


def test_missing_protected_keys_are_not_invented() -> None:
    pdu = {"type": "m.room.power_levels", "content": {"ban": 50}, "sender": "@u:x"}
    assert redact(pdu, rv("11")) == {
        "type": "m.room.power_levels",
        "content": {"ban": 50},
        "sender": "@u:x",
    }


@pytest.mark.parametrize("bad_content", [None, "string", [1, 2], 5])
def test_non_object_content_redacts_to_empty(bad_content: Any) -> None:
    pdu = {"type": "m.room.create", "content": bad_content}
    assert redact(pdu, rv("11"))["content"] == {}
    assert redact(pdu, rv("1"))["content"] == {}


def test_absent_content_becomes_empty_object() -> None:
    assert redact({"type": "m.room.message"}, rv("4")) == {"type": "m.room.message", "content": {}}


def test_input_is_not_mutated_and_output_is_new() -> None:
    pdu = copy.deepcopy({**FULL_PDU, "type": "m.room.member",
                         "content": FULL_CONTENT["m.room.member"]})  # fmt: skip
    before = copy.deepcopy(pdu)
    out = redact(pdu, rv("11"))
    assert pdu == before
    assert out is not pdu
    assert out["content"] is not pdu["content"]
    out["content"]["membership"] = "leave"
    assert pdu["content"]["membership"] == "join"


def test_redaction_is_idempotent() -> None:
    for version in ALL_VERSIONS:
        for etype, content in FULL_CONTENT.items():
            pdu = {**FULL_PDU, "type": etype, "content": copy.deepcopy(content)}
            once = redact(pdu, version)
            assert redact(once, version) == once


# -- client format ------------------------------------------------------------------


def test_redact_client_event() -> None:
    client_event = {
        "event_id": "$e",
        "room_id": "!r:x",
        "sender": "@u:x",
        "type": "m.room.member",
        "state_key": "@u:x",
        "origin_server_ts": 5,
        "content": {"membership": "join", "displayname": "Alice"},
        "unsigned": {"age": 10, "prev_content": {"membership": "invite"}, "transaction_id": "t"},
        "user_id": "@u:x",
    }
    because = {"event_id": "$red", "type": "m.room.redaction", "content": {"redacts": "$e"}}
    out = redact_client_event(client_event, rv("10"), because)
    assert out == {
        "event_id": "$e",
        "room_id": "!r:x",
        "sender": "@u:x",
        "type": "m.room.member",
        "state_key": "@u:x",
        "origin_server_ts": 5,
        "content": {"membership": "join"},
        "unsigned": {"redacted_because": because},
    }
    assert client_event["content"] == {"membership": "join", "displayname": "Alice"}


def test_redact_client_event_without_because_and_version_rules() -> None:
    ev = {"event_id": "$e", "type": "m.room.create", "sender": "@u:x", "state_key": "",
          "content": {"creator": "@u:x", "room_version": "11"}}  # fmt: skip
    assert redact_client_event(ev, rv("11"))["content"] == ev["content"]
    assert redact_client_event(ev, rv("10"))["content"] == {"creator": "@u:x"}
    assert redact_client_event(ev, rv("10"))["unsigned"] == {}
