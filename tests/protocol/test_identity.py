"""The identity service's pure rules: the spec's lookup hash vectors, addresses,
invitation display names, opaque IDs."""

from __future__ import annotations

import pytest

from pocketserver.protocol.identity import (
    InvalidAddress,
    association,
    invite_signed,
    is_opaque_id,
    lookup_hash,
    lookup_plain,
    normalise_email,
    redacted_display_name,
)


@pytest.mark.parametrize(("query", "expected"), [
    (("alice@example.com", "email"), "4kenr7N9drpCJ4AfalmlGQVsOn3o2RHjkADUpXJWZUc"),
    (("bob@example.com", "email"), "LJwSazmv46n0hlMlsb_iYxI0_HXEqy_yj6Jm636cdT8"),
    (("18005552067", "msisdn"), "nlo35_T5fzSGZzJApqu8lgIudJvmOQtDaHtr-I4rU7I"),
])
def test_the_specs_sha256_examples(query: tuple[str, str], expected: str) -> None:
    assert lookup_hash(*query, "matrixrocks") == expected


def test_none_lookup_form() -> None:
    assert lookup_plain("alice@example.org", "email") == "alice@example.org email"


@pytest.mark.parametrize(("given", "kept"), [
    ("alice@example.org", "alice@example.org"),
    (" Alice@Example.ORG ", "Alice@example.org"),
    ("a.b+tag@sub.example.co.uk", "a.b+tag@sub.example.co.uk"),
    ("δοκιμή@παράδειγμα.δοκιμή", "δοκιμή@παράδειγμα.δοκιμή"),
])
def test_addresses_kept(given: str, kept: str) -> None:
    assert normalise_email(given) == kept


@pytest.mark.parametrize("bad", [
    "", "plain", "a@b", "@example.org", "a@", "a@@example.org", "a b@example.org", "a@exa mple.org",
    ".a@example.org", "a..b@example.org", "a@-example.org", "a@example..org", "x" * 65 + "@example.org",
    "a@" + "b" * 250 + ".org", "a\n@example.org",
])
def test_addresses_refused(bad: str) -> None:
    with pytest.raises(InvalidAddress):
        normalise_email(bad)


def test_display_names_hide_most_of_the_address() -> None:
    assert redacted_display_name("bob.smith@example.org") == "bob...@exa..."
    assert redacted_display_name("b@e.io") == "b...@e..."
    assert "smith" not in redacted_display_name("bob.smith@example.org")


def test_opaque_ids() -> None:
    assert is_opaque_id("monkeys_are_GREAT.=-")
    for bad in ("", "a b", "x" * 256, "é", 5, None):
        assert not is_opaque_id(bad)


def test_signed_shapes() -> None:
    assert invite_signed("@b:x", "@a:y", "t") == {"mxid": "@b:x", "sender": "@a:y", "token": "t"}
    assert set(association("email", "a@x.org", "@a:x", 1, 1, 2)) == {
        "address", "medium", "mxid", "not_before", "not_after", "ts"}
