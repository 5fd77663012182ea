"""The X-Matrix Authorization header: the spec's grammar, parsed and produced."""

from __future__ import annotations

import pytest

from pocketserver.protocol.request_auth import (
    AuthHeaderError,
    XMatrixAuth,
    format_header,
    parse_header,
    signing_object,
)

GOOD = [
    (
        'X-Matrix origin="a.org",destination="b.org",key="ed25519:k1",sig="ABC"',
        XMatrixAuth("a.org", "b.org", "ed25519:k1", "ABC"),
    ),
    # Unquoted token values, several spaces after the scheme, spaces and tabs around commas.
    (
        "X-Matrix   origin=a.org ,\tdestination=b.org , key=ed25519:k1,sig=ABC",
        XMatrixAuth("a.org", "b.org", "ed25519:k1", "ABC"),
    ),
    # Case-insensitive scheme and names; any order; unknown parameters ignored.
    (
        'x-matrix SIG="ABC",Key="ed25519:k1",extra="x",Origin="a.org:8448"',
        XMatrixAuth("a.org:8448", None, "ed25519:k1", "ABC"),
    ),
    # Backslash escapes in quoted values are undone.
    (
        r'X-Matrix origin="a\.org",key="ed25519:k\"1",sig="A\\B"',
        XMatrixAuth("a.org", None, 'ed25519:k"1', "A\\B"),
    ),
    # Colons in unquoted values (older servers).
    ("X-Matrix origin=a.org:8448,key=ed25519:abc,sig=x+/y", XMatrixAuth("a.org:8448", None, "ed25519:abc", "x+/y")),
]

BAD = [
    "Bearer abc",
    "X-Matrix",
    "X-Matrixorigin=a",
    'X-Matrix origin="a.org",key="ed25519:k"',  # no sig
    'X-Matrix key="ed25519:k",sig="x"',  # no origin
    'X-Matrix origin="a.org,key="ed25519:k",sig="x"',  # unterminated quote eats the rest
    'X-Matrix origin="a.org" key="k",sig="x"',  # missing comma
    "X-Matrix origin=,key=k,sig=x",  # empty value
    'X-Matrix =a,key="k",sig="x"',
]


@pytest.mark.parametrize(("header", "expected"), GOOD)
def test_parse(header: str, expected: XMatrixAuth) -> None:
    assert parse_header(header) == expected


@pytest.mark.parametrize("header", BAD)
def test_parse_refuses(header: str) -> None:
    with pytest.raises(AuthHeaderError):
        parse_header(header)


def test_format_is_what_older_servers_parse_and_round_trips() -> None:
    header = format_header("a.org", "b.org:8448", "ed25519:k1", "c2ln")
    assert header == 'X-Matrix origin="a.org",destination="b.org:8448",key="ed25519:k1",sig="c2ln"'
    assert parse_header(header) == XMatrixAuth("a.org", "b.org:8448", "ed25519:k1", "c2ln")


def test_signing_object_has_content_only_when_there_is_a_body() -> None:
    assert signing_object("GET", "/x?a=1", "a", "b") == {
        "method": "GET", "uri": "/x?a=1", "origin": "a", "destination": "b"
    }
    assert signing_object("PUT", "/x", "a", "b", {})["content"] == {}
