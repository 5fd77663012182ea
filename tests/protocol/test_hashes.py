"""Content hashes, reference hashes and event IDs (server-server "Signing Events")."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from pocketserver.protocol.canonical_json import CanonicalJsonError
from pocketserver.protocol.hashes import (
    EventIdError,
    check_content_hash,
    compute_content_hash,
    compute_event_id,
    compute_reference_hash,
    make_room_id_from_create_event_id,
)
from pocketserver.protocol.identifiers import is_valid_event_id, is_valid_room_id
from pocketserver.protocol.redaction import redact
from pocketserver.protocol.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion

VECTORS = json.loads((Path(__file__).parent / "fixtures" / "spec_signing_vectors.json").read_text())
EVENT_VECTORS = VECTORS["events"]


def rv(v: str) -> RoomVersion:
    return KNOWN_ROOM_VERSIONS[v]


def spec_canonical_json(value: Any) -> bytes:
    """The appendix's reference implementation, as an independent oracle."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode(
        "UTF-8"
    )


def message_pdu(**extra: Any) -> dict[str, Any]:
    pdu: dict[str, Any] = {
        "auth_events": ["$create", "$pl", "$member"],
        "content": {"body": "hello", "msgtype": "m.text"},
        "depth": 12,
        "hashes": {"sha256": "placeholder"},
        "origin": "example.org",
        "origin_server_ts": 1_700_000_000_000,
        "prev_events": ["$prev"],
        "room_id": "!room:example.org",
        "sender": "@alice:example.org",
        "signatures": {"example.org": {"ed25519:a": "sig"}},
        "type": "m.room.message",
        "unsigned": {"age_ts": 1_700_000_000_000},
    }
    pdu.update(extra)
    pdu["hashes"] = compute_content_hash(pdu)
    return pdu


# -- content hash ------------------------------------------------------------------


@pytest.mark.parametrize("vector", EVENT_VECTORS, ids=lambda v: v["name"])
def test_content_hash_matches_spec_vectors(vector: dict[str, Any]) -> None:
    assert compute_content_hash(vector["input"]) == vector["signed"]["hashes"]
    assert check_content_hash(vector["signed"])


def test_content_hash_ignores_unsigned_signatures_and_hashes() -> None:
    pdu = message_pdu()
    changed = {**pdu, "unsigned": {"age": 5}, "signatures": {}, "hashes": {"sha256": "x"}}
    assert compute_content_hash(changed) == compute_content_hash(pdu)


def test_content_hash_covers_everything_else() -> None:
    pdu = message_pdu()
    assert compute_content_hash({**pdu, "content": {"body": "other"}}) != pdu["hashes"]
    assert compute_content_hash({**pdu, "origin": "evil.org"}) != pdu["hashes"]


def test_content_hash_is_independently_reproducible() -> None:
    pdu = message_pdu()
    stripped = {k: v for k, v in pdu.items() if k not in ("unsigned", "signatures", "hashes")}
    digest = hashlib.sha256(spec_canonical_json(stripped)).digest()
    assert pdu["hashes"]["sha256"] == base64.b64encode(digest).decode().rstrip("=")


def test_check_content_hash_detects_tampering_and_redaction() -> None:
    pdu = message_pdu()
    assert check_content_hash(pdu)
    assert not check_content_hash({**pdu, "content": {"body": "tampered"}})
    # A redacted copy keeps the original hash, which no longer matches.
    assert not check_content_hash(redact(pdu, rv("10")))


@pytest.mark.parametrize(
    "hashes",
    [None, "str", {}, {"sha256": None}, {"sha256": 5}, {"sha256": "!!!"}, {"sha512": "AAAA"}],
)
def test_check_content_hash_malformed(hashes: Any) -> None:
    pdu = message_pdu()
    if hashes is None:
        del pdu["hashes"]
    else:
        pdu["hashes"] = hashes
    assert check_content_hash(pdu) is False


def test_check_content_hash_accepts_padding() -> None:
    pdu = message_pdu()
    pdu["hashes"] = {"sha256": pdu["hashes"]["sha256"] + "="}
    assert check_content_hash(pdu)


def test_content_hash_strictness_follows_room_version() -> None:
    pdu = {**message_pdu(), "content": {"big": 2**60}}
    with pytest.raises(CanonicalJsonError):
        compute_content_hash(pdu)
    with pytest.raises(CanonicalJsonError):
        compute_content_hash(pdu, rv("6"))
    assert compute_content_hash(pdu, rv("5"))["sha256"]


# -- reference hash and event IDs ----------------------------------------------------


def test_reference_hash_is_sha256_of_redacted_canonical_json() -> None:
    pdu = message_pdu()
    redacted = redact(pdu, rv("4"))
    redacted.pop("signatures")
    expected = hashlib.sha256(spec_canonical_json(redacted)).digest()
    assert compute_reference_hash(pdu, rv("4")) == expected
    assert len(expected) == 32


@pytest.mark.parametrize("version", [str(v) for v in range(3, 13)])
def test_event_id_same_for_full_and_redacted_event(version: str) -> None:
    pdu = message_pdu()
    event_id = compute_event_id(pdu, rv(version))
    assert is_valid_event_id(event_id, rv(version))
    assert compute_event_id(redact(pdu, rv(version)), rv(version)) == event_id


def test_event_id_ignores_signatures_unsigned_and_age_ts() -> None:
    pdu = message_pdu()
    other = {**pdu, "signatures": {"other.org": {"ed25519:x": "y"}}, "unsigned": {}, "age_ts": 9}
    assert compute_event_id(other, rv("10")) == compute_event_id(pdu, rv("10"))


def test_event_id_changes_with_the_content_hash() -> None:
    a = message_pdu()
    b = message_pdu(content={"body": "different"})
    assert compute_event_id(a, rv("10")) != compute_event_id(b, rv("10"))


def test_v3_uses_standard_and_v4_urlsafe_base64() -> None:
    # Search a few events until the hash contains a character where the alphabets differ.
    for depth in range(1, 200):
        pdu = message_pdu(depth=depth)
        digest = compute_reference_hash(pdu, rv("4"))
        std = base64.b64encode(digest).decode().rstrip("=")
        if "+" in std or "/" in std:
            break
    else:  # pragma: no cover
        pytest.fail("no hash with + or / found")
    assert compute_reference_hash(pdu, rv("3")) == digest  # same redaction rules
    assert compute_event_id(pdu, rv("3")) == "$" + std
    assert compute_event_id(pdu, rv("4")) == "$" + std.replace("+", "-").replace("/", "_")


def test_redaction_rules_change_the_event_id() -> None:
    # v11 no longer protects "origin", so the same PDU hashes differently.
    pdu = message_pdu()
    assert compute_event_id(pdu, rv("10")) != compute_event_id(pdu, rv("11"))
    assert compute_event_id(pdu, rv("11")) == compute_event_id(
        {k: v for k, v in pdu.items() if k != "origin"}, rv("11")
    )


@pytest.mark.parametrize("version", ["1", "2"])
def test_v1_v2_event_ids_cannot_be_computed(version: str) -> None:
    with pytest.raises(EventIdError):
        compute_event_id(message_pdu(), rv(version))


def test_event_id_strict_canonical_json_from_v6() -> None:
    # Power levels keep "ban" through redaction, so it is part of the reference hash.
    pl = {
        **message_pdu(),
        "type": "m.room.power_levels",
        "state_key": "",
        "content": {"ban": 2**60},
    }
    assert compute_event_id(pl, rv("5")).startswith("$")
    with pytest.raises(CanonicalJsonError):
        compute_event_id(pl, rv("6"))
    with pytest.raises(CanonicalJsonError):
        compute_event_id({**pl, "content": {"ban": 1.5}}, rv("10"))


# -- v12 room IDs ------------------------------------------------------------------------


def v12_create_pdu() -> dict[str, Any]:
    pdu: dict[str, Any] = {
        "auth_events": [],
        "content": {"room_version": "12", "additional_creators": ["@bob:other.org"]},
        "depth": 1,
        "origin_server_ts": 1_700_000_000_000,
        "prev_events": [],
        "sender": "@alice:example.org",
        "state_key": "",
        "type": "m.room.create",
    }
    pdu["hashes"] = compute_content_hash(pdu)
    return pdu


def test_v12_room_id_is_create_event_hash() -> None:
    create = v12_create_pdu()
    event_id = compute_event_id(create, rv("12"))
    room_id = make_room_id_from_create_event_id(event_id)
    assert room_id == "!" + event_id[1:]
    assert is_valid_room_id(room_id, rv("12"))
    assert len(room_id) == 44


@pytest.mark.parametrize("bad", ["", "$", "!abc", "$abc:example.org", "abc"])
def test_make_room_id_rejects_non_hash_event_ids(bad: str) -> None:
    with pytest.raises(EventIdError):
        make_room_id_from_create_event_id(bad)


def test_hash_functions_do_not_mutate() -> None:
    pdu = message_pdu()
    before = copy.deepcopy(pdu)
    compute_content_hash(pdu)
    check_content_hash(pdu)
    compute_reference_hash(pdu, rv("11"))
    compute_event_id(pdu, rv("4"))
    assert pdu == before
