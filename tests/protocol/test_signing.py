"""Signing keys, signed JSON and signed events, checked against the spec's test vectors
(appendices, "Cryptographic Test Vectors")."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import nacl.signing
import pytest
import signedjson.key
import signedjson.sign

from pocketserver.protocol.canonical_json import CanonicalJsonError
from pocketserver.protocol.hashes import check_content_hash, compute_event_id
from pocketserver.protocol.redaction import redact
from pocketserver.protocol.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from pocketserver.protocol.signing import (
    KeyFormatError,
    SignatureError,
    SigningKey,
    decode_signing_key,
    decode_signing_keys,
    decode_unpadded_base64,
    decode_verify_key_base64,
    encode_signing_key,
    encode_signing_keys,
    encode_verify_key_base64,
    parse_key_id,
    sign_event,
    sign_json,
    signature_key_ids,
    signing_key_from_seed,
    verify_event_signature,
    verify_json,
)

VECTORS = json.loads((Path(__file__).parent / "fixtures" / "spec_signing_vectors.json").read_text())
SERVER = VECTORS["server_name"]
KEY_ID = VECTORS["key_id"]
KEY = decode_signing_key(f"ed25519 1 {VECTORS['signing_key_seed']}")

# Versions whose redaction keeps "origin" (and "event_id"): the spec's event vectors
# predate v11 and are valid for all of them.
PRE_V11 = [KNOWN_ROOM_VERSIONS[str(v)] for v in range(1, 11)]


def rv(v: str) -> RoomVersion:
    return KNOWN_ROOM_VERSIONS[v]


# -- keys ------------------------------------------------------------------------


def test_spec_key() -> None:
    assert KEY.key_id == KEY_ID == "ed25519:1"
    assert KEY.version == "1"
    assert len(KEY.seed) == 32
    # The spec's seed spelling is not canonical base64: its last character carries two
    # non-zero spare bits ("1"); decoding must tolerate that, encoding writes "0".
    seed_b64 = VECTORS["signing_key_seed"]
    assert decode_unpadded_base64(seed_b64) == decode_unpadded_base64(seed_b64[:-1] + "0")
    assert encode_signing_key(KEY) == f"ed25519 1 {seed_b64[:-1]}0"


def test_key_file_roundtrip_and_synapse_compatibility() -> None:
    key = signing_key_from_seed(bytes(range(32)), "a_AbC1")
    text = encode_signing_keys([key, KEY])
    assert text.count("\n") == 2
    assert decode_signing_keys("\n" + text + "\n\n") == [key, KEY]
    # The same file read by signedjson (what Synapse uses) gives the same key.
    (sj_key,) = signedjson.key.read_signing_keys([encode_signing_key(key)])
    assert sj_key.version == "a_AbC1"
    assert bytes(sj_key.verify_key) == bytes(key.verify_key)
    # And a file written by signedjson reads back here.
    line = "ed25519 a_AbC1 " + signedjson.key.encode_signing_key_base64(sj_key)
    assert decode_signing_key(line) == key


@pytest.mark.parametrize(
    "line",
    [
        "",
        "ed25519 1",
        "ed25519 1 AAAA extra",
        "rsa 1 " + "A" * 43,
        "ed25519 1 not*base64",
        "ed25519 1 AAAA",  # 3 bytes, not 32
        "ed25519 bad-version " + "A" * 43,
        "ed25519 bad:version " + "A" * 43,
    ],
)
def test_bad_key_lines(line: str) -> None:
    with pytest.raises(KeyFormatError):
        decode_signing_key(line)


@pytest.mark.parametrize(
    ("seed", "version"), [(b"x" * 31, "1"), (b"x" * 33, "1"), (b"x" * 32, ""), (b"x" * 32, "a.b")]
)
def test_signing_key_from_seed_validates(seed: bytes, version: str) -> None:
    with pytest.raises(KeyFormatError):
        signing_key_from_seed(seed, version)


def test_signing_key_value_semantics() -> None:
    again = signing_key_from_seed(KEY.seed, "1")
    assert again == KEY
    assert hash(again) == hash(KEY)
    assert signing_key_from_seed(KEY.seed, "2") != KEY
    assert signing_key_from_seed(b"\x01" * 32, "1") != KEY
    # The seed never appears in the repr.
    assert VECTORS["signing_key_seed"] not in repr(KEY)
    assert "_nacl_key" not in repr(KEY)


def test_verify_key_roundtrip() -> None:
    b64 = encode_verify_key_base64(KEY.verify_key)
    assert b64 == KEY.verify_key_base64
    assert "=" not in b64 and len(b64) == 43
    assert decode_verify_key_base64(b64) == KEY.verify_key
    assert decode_verify_key_base64(b64 + "=") == KEY.verify_key  # padding tolerated
    assert b64 == signedjson.key.encode_verify_key_base64(KEY.verify_key)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["", "AAAA", "@@@@", "A" * 44 + "A"])
def test_decode_verify_key_rejects(bad: str) -> None:
    with pytest.raises(KeyFormatError):
        decode_verify_key_base64(bad)


@pytest.mark.parametrize(
    ("s", "raw"),
    [("", b""), ("Zg", b"f"), ("Zm8", b"fo"), ("Zm9v", b"foo"), ("Zm9vYg", b"foob"),
     ("Zm9vYmE", b"fooba"), ("Zm9vYmFy", b"foobar"), ("Zg==", b"f"), ("-_8", b"\xfb\xff"),
     ("+/8", b"\xfb\xff")],
)  # fmt: skip
def test_decode_unpadded_base64_spec_examples(s: str, raw: bytes) -> None:
    assert decode_unpadded_base64(s) == raw


@pytest.mark.parametrize("bad", ["Z", "Zm9v Yg", "Zm9v\n", "Z===", "Zm*v"])
def test_decode_unpadded_base64_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        decode_unpadded_base64(bad)


def test_parse_key_id() -> None:
    assert parse_key_id("ed25519:a_1") == ("ed25519", "a_1")
    for bad in ("ed25519", ":1", "ed25519:", "ed25519:a-b"):
        with pytest.raises(KeyFormatError):
            parse_key_id(bad)


# -- JSON signing ------------------------------------------------------------------


@pytest.mark.parametrize("vector", VECTORS["json"], ids=lambda v: v["name"])
def test_sign_json_spec_vectors(vector: dict[str, Any]) -> None:
    original = copy.deepcopy(vector["input"])
    signed = sign_json(vector["input"], SERVER, KEY)
    assert signed == vector["signed"]
    assert vector["input"] == original  # not mutated
    verify_json(vector["signed"], SERVER, KEY_ID, KEY.verify_key)


def test_sign_json_keeps_other_signatures_and_unsigned() -> None:
    other = signing_key_from_seed(b"\x02" * 32, "o")
    obj = {"a": 1, "unsigned": {"age": 5}}
    first = sign_json(obj, "other.org", other)
    both = sign_json(first, SERVER, KEY)
    assert set(both["signatures"]) == {"other.org", SERVER}
    assert both["unsigned"] == {"age": 5}
    assert first["signatures"] == {"other.org": first["signatures"]["other.org"]}  # not mutated
    verify_json(both, "other.org", "ed25519:o", other.verify_key)
    verify_json(both, SERVER, KEY_ID, KEY.verify_key)
    # A second key of the same server adds to that server's entry.
    again = sign_json(both, SERVER, signing_key_from_seed(b"\x03" * 32, "2"))
    assert set(again["signatures"][SERVER]) == {KEY_ID, "ed25519:2"}
    assert set(both["signatures"][SERVER]) == {KEY_ID}


def test_sign_json_refuses_non_canonical_values() -> None:
    with pytest.raises(CanonicalJsonError):
        sign_json({"f": 1.5}, SERVER, KEY)


def test_our_signatures_verify_with_signedjson() -> None:
    signed = sign_json({"one": 1, "nested": {"日本": [True, None]}}, SERVER, KEY)
    signedjson.sign.verify_signed_json(
        signed, SERVER, signedjson.key.get_verify_key(_signedjson_key())
    )


def _signedjson_key() -> Any:
    return signedjson.key.decode_signing_key_base64("ed25519", "1", VECTORS["signing_key_seed"])


def test_signedjson_signatures_verify_here() -> None:
    obj = {"server_name": "x", "valid_until_ts": 5}
    signed = signedjson.sign.sign_json(copy.deepcopy(obj), SERVER, _signedjson_key())
    verify_json(signed, SERVER, KEY_ID, KEY.verify_key)


def test_verify_ignores_unsigned_and_accepts_padding() -> None:
    signed = sign_json({"a": 1}, SERVER, KEY)
    verify_json({**signed, "unsigned": {"anything": True}}, SERVER, KEY_ID, KEY.verify_key)
    padded = copy.deepcopy(signed)
    padded["signatures"][SERVER][KEY_ID] += "=="
    verify_json(padded, SERVER, KEY_ID, KEY.verify_key)


def _tampered(signed: dict[str, Any], how: str) -> dict[str, Any]:
    out = copy.deepcopy(signed)
    if how == "content":
        out["a"] = 2
    elif how == "extra key":
        out["b"] = 1
    elif how == "no signatures":
        del out["signatures"]
    elif how == "signatures not object":
        out["signatures"] = "x"
    elif how == "no entry for server":
        out["signatures"] = {"other": out["signatures"][SERVER]}
    elif how == "server entry not object":
        out["signatures"][SERVER] = ["x"]
    elif how == "signature not string":
        out["signatures"][SERVER][KEY_ID] = 5
    elif how == "signature bad base64":
        out["signatures"][SERVER][KEY_ID] = "***"
    elif how == "signature truncated":
        out["signatures"][SERVER][KEY_ID] = out["signatures"][SERVER][KEY_ID][:-4]
    elif how == "signature of other object":
        out["signatures"] = sign_json({"a": 3}, SERVER, KEY)["signatures"]
    return out


@pytest.mark.parametrize(
    "how",
    ["content", "extra key", "no signatures", "signatures not object", "no entry for server",
     "server entry not object", "signature not string", "signature bad base64",
     "signature truncated", "signature of other object"],
)  # fmt: skip
def test_verify_json_failures(how: str) -> None:
    signed = sign_json({"a": 1}, SERVER, KEY)
    with pytest.raises(SignatureError):
        verify_json(_tampered(signed, how), SERVER, KEY_ID, KEY.verify_key)


def test_verify_json_wrong_key_or_key_id() -> None:
    signed = sign_json({"a": 1}, SERVER, KEY)
    other = signing_key_from_seed(b"\x09" * 32, "1")
    with pytest.raises(SignatureError):
        verify_json(signed, SERVER, KEY_ID, other.verify_key)
    with pytest.raises(SignatureError):
        verify_json(signed, SERVER, "ed25519:2", KEY.verify_key)
    with pytest.raises(SignatureError, match="unsupported"):
        verify_json(signed, SERVER, "curve25519:1", KEY.verify_key)


def test_verify_json_number_strictness() -> None:
    # Verifying bytes another server produced is lenient by default, strict on request.
    obj = {"big": 2**60}
    sig = KEY.sign(b'{"big":1152921504606846976}')
    signed = {**obj, "signatures": {SERVER: {KEY_ID: encode_verify_key_b64(sig)}}}
    verify_json(signed, SERVER, KEY_ID, KEY.verify_key)
    with pytest.raises(SignatureError):
        verify_json(signed, SERVER, KEY_ID, KEY.verify_key, strict=True)


def encode_verify_key_b64(raw: bytes) -> str:
    import base64

    return base64.b64encode(raw).decode().rstrip("=")


def test_signature_key_ids() -> None:
    signed = sign_json({"a": 1}, SERVER, KEY)
    signed["signatures"][SERVER]["curve25519:x"] = "zzz"
    assert signature_key_ids(signed, SERVER) == [KEY_ID]
    assert signature_key_ids(signed, "other") == []
    assert signature_key_ids({"signatures": "x"}, SERVER) == []
    assert signature_key_ids({}, SERVER) == []


# -- event signing ----------------------------------------------------------------------


@pytest.mark.parametrize("version", PRE_V11, ids=lambda r: f"v{r.identifier}")
@pytest.mark.parametrize("vector", VECTORS["events"], ids=lambda v: v["name"])
def test_sign_event_spec_vectors(vector: dict[str, Any], version: RoomVersion) -> None:
    original = copy.deepcopy(vector["input"])
    signed = sign_event(vector["input"], SERVER, KEY, version)
    assert signed == vector["signed"]
    assert vector["input"] == original  # not mutated
    verify_event_signature(vector["signed"], SERVER, KEY_ID, KEY.verify_key, version)
    assert check_content_hash(signed, version)


@pytest.mark.parametrize("vector", VECTORS["events"], ids=lambda v: v["name"])
def test_spec_event_vectors_verify_when_redacted(vector: dict[str, Any]) -> None:
    redacted = redact(vector["signed"], rv("1"))
    verify_event_signature(redacted, SERVER, KEY_ID, KEY.verify_key, rv("1"))
    # ... but the content hash then reveals the redaction (when there was content).
    assert check_content_hash(redacted) is (vector["input"]["content"] == {})


def test_v11_signature_differs_because_origin_is_not_protected() -> None:
    vector = VECTORS["events"][0]
    signed = sign_event(vector["input"], SERVER, KEY, rv("11"))
    assert signed["hashes"] == vector["signed"]["hashes"]
    assert signed["signatures"] != vector["signed"]["signatures"]
    verify_event_signature(signed, SERVER, KEY_ID, KEY.verify_key, rv("11"))
    # The v1 signature does not verify under v11 rules and vice versa.
    with pytest.raises(SignatureError):
        verify_event_signature(vector["signed"], SERVER, KEY_ID, KEY.verify_key, rv("11"))
    with pytest.raises(SignatureError):
        verify_event_signature(signed, SERVER, KEY_ID, KEY.verify_key, rv("10"))


def v11_pdu() -> dict[str, Any]:
    return {
        "auth_events": ["$a", "$b"],
        "content": {"membership": "join", "displayname": "Alice"},
        "depth": 7,
        "origin_server_ts": 1_700_000_000_000,
        "prev_events": ["$p"],
        "room_id": "!r:domain",
        "sender": "@alice:domain",
        "state_key": "@alice:domain",
        "type": "m.room.member",
        "unsigned": {"age": 3},
    }


def test_sign_event_then_verify_and_tamper() -> None:
    signed = sign_event(v11_pdu(), SERVER, KEY, rv("11"))
    assert set(signed) == set(v11_pdu()) | {"hashes", "signatures"}
    assert check_content_hash(signed)
    verify_event_signature(signed, SERVER, KEY_ID, KEY.verify_key, rv("11"))
    # Non-protected content changes keep the signature valid but break the hash.
    changed = {**signed, "content": {**signed["content"], "displayname": "Mallory"}}
    verify_event_signature(changed, SERVER, KEY_ID, KEY.verify_key, rv("11"))
    assert not check_content_hash(changed)
    # Protected changes break the signature.
    for key, value in [("content", {"membership": "leave"}), ("depth", 8), ("sender", "@m:domain")]:
        with pytest.raises(SignatureError):
            verify_event_signature({**signed, key: value}, SERVER, KEY_ID, KEY.verify_key, rv("11"))


def test_sign_event_adds_to_existing_signatures_and_hashes() -> None:
    other = signing_key_from_seed(b"\x05" * 32, "r")
    first = sign_event(v11_pdu(), "other.org", other, rv("11"))
    first["hashes"]["sha512"] = "kept"
    second = sign_event(first, SERVER, KEY, rv("11"))
    assert second["hashes"]["sha512"] == "kept"
    assert second["hashes"]["sha256"] == first["hashes"]["sha256"]
    assert set(second["signatures"]) == {"other.org", SERVER}
    assert "domain" not in first["signatures"]
    # Adding a hash algorithm changed the redacted form, so re-sign to verify.
    verify_event_signature(second, SERVER, KEY_ID, KEY.verify_key, rv("11"))


def test_signing_does_not_change_the_event_id() -> None:
    pdu = sign_event(v11_pdu(), SERVER, KEY, rv("11"))
    resigned = sign_event(pdu, "other.org", signing_key_from_seed(b"\x06" * 32, "x"), rv("11"))
    assert compute_event_id(resigned, rv("11")) == compute_event_id(pdu, rv("11"))


def test_event_verification_strictness_follows_room_version() -> None:
    pdu = {**v11_pdu(), "type": "m.room.power_levels", "state_key": "", "content": {"ban": 2**60}}
    signed = sign_event(pdu, SERVER, KEY, rv("5"))
    verify_event_signature(signed, SERVER, KEY_ID, KEY.verify_key, rv("5"))
    with pytest.raises(CanonicalJsonError):
        sign_event(pdu, SERVER, KEY, rv("6"))
    with pytest.raises(SignatureError):
        verify_event_signature(signed, SERVER, KEY_ID, KEY.verify_key, rv("6"))


def test_signing_key_sign_is_plain_ed25519() -> None:
    sig = KEY.sign(b"message")
    assert len(sig) == 64
    nacl.signing.VerifyKey(bytes(KEY.verify_key)).verify(b"message", sig)
    assert isinstance(KEY, SigningKey)
