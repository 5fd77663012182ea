"""Identifier grammars (appendices, "Identifier Grammar")."""

from __future__ import annotations

import dataclasses

import pytest

from pocketserver.protocol.hashes import make_room_id_from_create_event_id
from pocketserver.protocol.identifiers import (
    MAX_IDENTIFIER_BYTES,
    InvalidIdentifier,
    RoomAlias,
    UserID,
    get_domain_from_id,
    is_valid_event_id,
    is_valid_localpart,
    is_valid_namespaced_identifier,
    is_valid_opaque_identifier,
    is_valid_room_alias,
    is_valid_room_id,
    is_valid_server_name,
    is_valid_user_id,
    parse_server_name,
)
from pocketserver.protocol.room_versions import KNOWN_ROOM_VERSIONS

V1, V3, V4, V11, V12 = (KNOWN_ROOM_VERSIONS[v] for v in ("1", "3", "4", "11", "12"))

# A real reference hash spelled both ways (43 characters, canonical last character).
URLSAFE_HASH = "Rqnc-F-dvnEYJTyHq_iKxU2bZ1CI92-kuZq3a5lr5Zg"
STANDARD_HASH = "Rqnc+F+dvnEYJTyHq/iKxU2bZ1CI92+kuZq3a5lr5Zg"

# -- server names --------------------------------------------------------------

VALID_SERVER_NAMES = [
    # The spec's examples.
    ("matrix.org", ("matrix.org", None)),
    ("matrix.org:8888", ("matrix.org", 8888)),
    ("1.2.3.4", ("1.2.3.4", None)),
    ("1.2.3.4:1234", ("1.2.3.4", 1234)),
    ("[1234:5678::abcd]", ("[1234:5678::abcd]", None)),
    ("[1234:5678::abcd]:5678", ("[1234:5678::abcd]", 5678)),
    # More.
    ("[::1]:8448", ("[::1]", 8448)),
    ("[::1]", ("[::1]", None)),
    ("[::ffff:1.2.3.4]", ("[::ffff:1.2.3.4]", None)),
    ("[ABCD::1]", ("[ABCD::1]", None)),
    ("localhost", ("localhost", None)),
    ("localhost:0", ("localhost", 0)),
    ("a:65535", ("a", 65535)),
    ("MATRIX.ORG", ("MATRIX.ORG", None)),  # case-sensitive, not lowered
    ("x-y.example", ("x-y.example", None)),
    ("1.2.3", ("1.2.3", None)),  # not a dotted quad: a (numeric) DNS name
    ("a" * 255, ("a" * 255, None)),
]

INVALID_SERVER_NAMES = [
    "",
    ":8448",
    "matrix.org:",
    "matrix.org:abc",
    "matrix.org:123456",  # six digits
    "matrix.org:65536",
    "matrix.org:-1",
    "matrix.org:80:80",
    "matrix org",
    "matrix_org",
    "mätrix.org",
    "1.2.3.256",
    "999.1.1.1:80",
    "[::1",
    "::1",
    "[::1]x",
    "[::1]:",
    "[g::1]",
    "[1:2:3:4:5:6:7:8:9]",
    "[:]",
    "[fe80::1%eth0]",
    "a" * 256,
]


@pytest.mark.parametrize(("name", "expected"), VALID_SERVER_NAMES)
def test_parse_server_name(name: str, expected: tuple[str, int | None]) -> None:
    assert parse_server_name(name) == expected
    assert is_valid_server_name(name)


@pytest.mark.parametrize("name", INVALID_SERVER_NAMES)
def test_invalid_server_names(name: str) -> None:
    with pytest.raises(InvalidIdentifier):
        parse_server_name(name)
    assert not is_valid_server_name(name)


def test_invalid_identifier_is_value_error() -> None:
    assert issubclass(InvalidIdentifier, ValueError)


# -- user IDs -------------------------------------------------------------------


@pytest.mark.parametrize(
    "localpart",
    ["a", "alice", "0", "a.b_c=d-e/f+g", "a" * 200],
)
def test_valid_localparts(localpart: str) -> None:
    assert is_valid_localpart(localpart)


@pytest.mark.parametrize(
    "localpart", ["", "Alice", "a b", "a:b", "a*", "é", "a\x00", "@a", "#a", "a!"]
)
def test_invalid_localparts(localpart: str) -> None:
    assert not is_valid_localpart(localpart)


@pytest.mark.parametrize(
    ("s", "localpart", "domain"),
    [
        ("@alice:example.org", "alice", "example.org"),
        ("@a.b_c=d-e/f+g:example.org:8448", "a.b_c=d-e/f+g", "example.org:8448"),
        ("@bob:[::1]:8448", "bob", "[::1]:8448"),
        ("@bob:1.2.3.4", "bob", "1.2.3.4"),
    ],
)
def test_user_id_parse_strict(s: str, localpart: str, domain: str) -> None:
    for strict in (False, True):
        uid = UserID.parse(s, strict=strict)
        assert (uid.localpart, uid.domain) == (localpart, domain)
        assert uid.to_string() == s
        assert str(uid) == s
        assert uid.is_compliant


@pytest.mark.parametrize(
    ("s", "compliant"),
    [
        # Upper case is outside the current grammar but inside U+0021-U+007E.
        ("@Alice:example.org", True),
        ("@:example.org", False),  # empty localpart
        ("@ali ce:example.org", False),
        ("@日本:example.org", False),
        ("@a\x01:example.org", False),
    ],
)
def test_historical_user_ids_accepted_only_when_not_strict(s: str, compliant: bool) -> None:
    uid = UserID.parse(s)
    assert uid.to_string() == s
    assert uid.is_compliant is compliant
    assert is_valid_user_id(s)
    assert not is_valid_user_id(s, strict=True)
    with pytest.raises(InvalidIdentifier):
        UserID.parse(s, strict=True)


@pytest.mark.parametrize(
    "s",
    [
        "",
        "alice:example.org",
        "#alice:example.org",
        "@alice",
        "@alice:",
        "@alice:bad_server",
        "@a\x00b:example.org",
        "@a\ud800:example.org",
        "@alice:example.org:99999",
        "@" + "a" * (MAX_IDENTIFIER_BYTES - len("@:example.org") + 1) + ":example.org",
    ],
)
def test_invalid_user_ids(s: str) -> None:
    assert not is_valid_user_id(s)
    with pytest.raises(InvalidIdentifier):
        UserID.parse(s)


def test_user_id_length_limit_is_bytes() -> None:
    domain = "example.org"
    fits = "@" + "a" * (MAX_IDENTIFIER_BYTES - len(domain) - 2) + ":" + domain
    assert len(fits.encode()) == 255
    assert is_valid_user_id(fits, strict=True)
    # 2-byte characters count double: 127 of them plus sigil/domain exceed 255 bytes.
    wide = "@" + "é" * 122 + ":" + domain
    assert len(wide) < 255 < len(wide.encode())
    assert not is_valid_user_id(wide)


def test_user_id_from_parts() -> None:
    assert UserID.from_parts("alice", "example.org") == UserID("alice", "example.org")
    with pytest.raises(InvalidIdentifier):
        UserID.from_parts("Alice", "example.org")
    assert UserID.from_parts("Alice", "example.org", strict=False).localpart == "Alice"
    # A ":" in the localpart must not silently shift into the domain.
    with pytest.raises(InvalidIdentifier):
        UserID.from_parts("a:b", "8448", strict=False)


def test_user_id_is_a_frozen_slotted_value() -> None:
    uid = UserID.parse("@alice:example.org")
    with pytest.raises(dataclasses.FrozenInstanceError):
        uid.localpart = "bob"  # type: ignore[misc]
    assert not hasattr(uid, "__dict__")
    assert uid == UserID("alice", "example.org")
    assert len({uid, UserID("alice", "example.org")}) == 1


# -- room aliases --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("s", "localpart", "domain"),
    [
        ("#a:server", "a", "server"),
        ("#Room Name!:example.org:8448", "Room Name!", "example.org:8448"),
        ("#日本語:[::1]", "日本語", "[::1]"),
    ],
)
def test_room_alias_parse(s: str, localpart: str, domain: str) -> None:
    alias = RoomAlias.parse(s)
    assert (alias.localpart, alias.domain) == (localpart, domain)
    assert alias.to_string() == s == str(alias)
    assert is_valid_room_alias(s)
    assert RoomAlias.from_parts(localpart, domain) == alias


@pytest.mark.parametrize(
    "s",
    [
        "a:server",
        "#a",
        "#:server",
        "#a\x00:server",
        "#a:bad server",
        "@a:server",
        "#" + "a" * 250 + ":server",
    ],
)
def test_invalid_room_aliases(s: str) -> None:
    assert not is_valid_room_alias(s)
    with pytest.raises(InvalidIdentifier):
        RoomAlias.parse(s)


def test_room_alias_from_parts_refuses_colon() -> None:
    with pytest.raises(InvalidIdentifier):
        RoomAlias.from_parts("a:b", "80")


# -- room IDs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("room_id", "v1", "v11", "v12"),
    [
        ("!abc:example.org", True, True, False),
        ("!abc:example.org:8448", True, True, False),
        ("!a b\x01:[::1]", True, True, False),
        ("!" + URLSAFE_HASH, False, False, True),
        ("!" + STANDARD_HASH, False, False, False),  # v12 uses the URL-safe alphabet
        ("!" + URLSAFE_HASH[:-1] + "h", False, False, False),  # non-canonical last char
        ("!" + URLSAFE_HASH[:-1], False, False, False),  # 42 characters
        ("!" + URLSAFE_HASH + "A", False, False, False),  # 44 characters
        ("!:example.org", False, False, False),
        ("!abc", False, False, False),
        ("!abc:", False, False, False),
        ("!a\x00:example.org", False, False, False),
        ("$abc:example.org", False, False, False),
        ("", False, False, False),
        ("!" + "a" * 250 + ":example.org", False, False, False),
    ],
)
def test_room_ids(room_id: str, v1: bool, v11: bool, v12: bool) -> None:
    assert is_valid_room_id(room_id, KNOWN_ROOM_VERSIONS["1"]) is v1
    assert is_valid_room_id(room_id, V11) is v11
    assert is_valid_room_id(room_id, V12) is v12
    assert is_valid_room_id(room_id) is (v1 or v12)


def test_v12_room_id_from_create_event_id() -> None:
    room_id = make_room_id_from_create_event_id("$" + URLSAFE_HASH)
    assert room_id == "!" + URLSAFE_HASH
    assert is_valid_room_id(room_id, V12)


# -- event IDs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event_id", "v1", "v3", "v4"),
    [
        ("$0:domain", True, False, False),
        ("$abc:example.org:8448", True, False, False),
        ("$" + STANDARD_HASH, False, True, False),
        ("$" + URLSAFE_HASH, False, False, True),
        # Only letters and digits: the same string is valid in both alphabets.
        ("$acR1l0raoZnm60CBwAVgqbZqoO/mYU81xysh1u7XcJk".replace("/", "A"), False, True, True),
        ("$" + URLSAFE_HASH[:-1], False, False, False),
        ("$abc", False, False, False),
        ("$:domain", False, False, False),
        ("abc:domain", False, False, False),
        ("$" + "a" * 250 + ":domain", False, False, False),
    ],
)
def test_event_ids(event_id: str, v1: bool, v3: bool, v4: bool) -> None:
    assert is_valid_event_id(event_id, V1) is v1
    assert is_valid_event_id(event_id, V3) is v3
    assert is_valid_event_id(event_id, V4) is v4
    assert is_valid_event_id(event_id, V12) is v4
    assert is_valid_event_id(event_id) is (v1 or v3 or v4)


# -- other grammars -------------------------------------------------------------------------


def test_get_domain_from_id() -> None:
    assert get_domain_from_id("@a:example.org:8448") == "example.org:8448"
    assert get_domain_from_id("!r:[::1]") == "[::1]"
    with pytest.raises(InvalidIdentifier):
        get_domain_from_id("$" + URLSAFE_HASH)


@pytest.mark.parametrize(
    ("s", "ok"),
    [
        ("m.room.message", True),
        ("com.example.thing-1_2", True),
        ("a", True),
        ("a" * 255, True),
        ("a" * 256, False),
        ("", False),
        ("M.room", False),
        ("1abc", False),
        ("m.room/x", False),
    ],
)
def test_namespaced_identifier(s: str, ok: bool) -> None:
    assert is_valid_namespaced_identifier(s) is ok


@pytest.mark.parametrize(
    ("s", "ok"),
    [("AbC-._~09", True), ("x" * 255, True), ("x" * 256, False), ("", False), ("a/b", False)],
)
def test_opaque_identifier(s: str, ok: bool) -> None:
    assert is_valid_opaque_identifier(s) is ok
