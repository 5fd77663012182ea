"""Checking a server's key response: for the right server, self-signed, well-formed."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from pocketserver.protocol.server_keys import KeyResponseError, parse_key_response
from pocketserver.protocol.signing import sign_json, signing_key_from_seed

KEY = signing_key_from_seed(b"\x01" * 32, "k1")
OLD = signing_key_from_seed(b"\x02" * 32, "old")
OTHER = signing_key_from_seed(b"\x03" * 32, "k1")


def response(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "server_name": "a.org",
        "valid_until_ts": 2_000_000_000_000,
        "verify_keys": {KEY.key_id: {"key": KEY.verify_key_base64}},
        "old_verify_keys": {"ed25519:old": {"key": OLD.verify_key_base64, "expired_ts": 1_000}},
    }
    body.update(overrides)
    return sign_json(body, "a.org", KEY)


def test_a_good_response() -> None:
    keys = parse_key_response(response(), "a.org")
    assert keys.valid_until_ts == 2_000_000_000_000
    assert keys.verify_keys == {"ed25519:k1": bytes(KEY.verify_key)}
    assert keys.old_verify_keys == {"ed25519:old": (bytes(OLD.verify_key), 1_000)}


def _tampered() -> dict[str, Any]:
    r = response()
    r["valid_until_ts"] += 1
    return r


def _signed_by_unlisted_key() -> dict[str, Any]:
    body = {k: v for k, v in response().items() if k != "signatures"}
    return sign_json(body, "a.org", OLD)


def _signed_by_other_key_same_id() -> dict[str, Any]:
    body = {k: v for k, v in response().items() if k != "signatures"}
    return sign_json(body, "a.org", OTHER)


def _unsigned() -> dict[str, Any]:
    r = response()
    del r["signatures"]
    return r


def _signed_by_someone_else() -> dict[str, Any]:
    body = {k: v for k, v in response().items() if k != "signatures"}
    return sign_json(body, "b.org", KEY)


BAD = {
    "for another server": lambda: response(server_name="b.org"),
    "tampered after signing": _tampered,
    "signed by a key it does not list": _signed_by_unlisted_key,
    "signature does not verify": _signed_by_other_key_same_id,
    "unsigned": _unsigned,
    "signed by another server only": _signed_by_someone_else,
    "valid_until_ts not an integer": lambda: response(valid_until_ts="soon"),
    "valid_until_ts a boolean": lambda: response(valid_until_ts=True),
    "verify_keys not an object": lambda: response(verify_keys=[]),
    "a key that is not base64": lambda: response(verify_keys={KEY.key_id: {"key": "!!"}}),
    "old key without expired_ts integer": lambda: response(
        old_verify_keys={"ed25519:old": {"key": OLD.verify_key_base64, "expired_ts": "x"}}
    ),
    "not an object": lambda: ["a.org"],
}


@pytest.mark.parametrize("name", list(BAD))
def test_refused(name: str) -> None:
    with pytest.raises(KeyResponseError):
        parse_key_response(copy.deepcopy(BAD[name]()), "a.org")
