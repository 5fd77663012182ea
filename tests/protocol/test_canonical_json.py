"""Canonical JSON (appendices, "Canonical JSON") and strict parsing of request bodies."""

from __future__ import annotations

import pytest

from pocketserver.protocol.canonical_json import (
    MAX_SAFE_INTEGER,
    MIN_SAFE_INTEGER,
    CanonicalJsonError,
    JsonParseError,
    encode_canonical_json,
    parse_json,
    validate_json_value,
)

# (input JSON text exactly as in the appendix, expected canonical bytes)
APPENDIX_EXAMPLES = [
    ("{}", "{}"),
    ('{\n    "one": 1,\n    "two": "Two"\n}', '{"one":1,"two":"Two"}'),
    ('{\n    "b": "2",\n    "a": "1"\n}', '{"a":"1","b":"2"}'),
    ('{"b":"2","a":"1"}', '{"a":"1","b":"2"}'),
    (
        """{
    "auth": {
        "success": true,
        "mxid": "@john.doe:example.com",
        "profile": {
            "display_name": "John Doe",
            "three_pids": [
                {
                    "medium": "email",
                    "address": "john.doe@example.org"
                },
                {
                    "medium": "msisdn",
                    "address": "123456789"
                }
            ]
        }
    }
}""",
        '{"auth":{"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe",'
        '"three_pids":[{"address":"john.doe@example.org","medium":"email"},'
        '{"address":"123456789","medium":"msisdn"}]},"success":true}}',
    ),
    ('{\n    "a": "日本語"\n}', '{"a":"日本語"}'),
    ('{\n    "本": 2,\n    "日": 1\n}', '{"日":1,"本":2}'),
    ('{\n    "a": "\\u65E5"\n}', '{"a":"日"}'),
    ('{\n    "a": null\n}', '{"a":null}'),
    ('{\n    "a": -0,\n    "b": 1e10\n}', '{"a":0,"b":10000000000}'),
]


@pytest.mark.parametrize(("given", "expected"), APPENDIX_EXAMPLES)
def test_appendix_examples(given: str, expected: str) -> None:
    assert encode_canonical_json(parse_json(given.encode("utf-8"))) == expected.encode("utf-8")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # Control characters: short escapes where JSON has them, else lower-case \u00XX.
        ("\b\t\n\f\r", '"\\b\\t\\n\\f\\r"'),
        ("\x00\x01\x1f", '"\\u0000\\u0001\\u001f"'),
        ('"\\', '"\\"\\\\"'),
        # DEL, "/" and non-ASCII are not escaped.
        ("\x7f/é😀", '"\x7f/é😀"'),
        (True, "true"),
        (False, "false"),
        ([1, [2, {}]], "[1,[2,{}]]"),
        ((1, 2), "[1,2]"),
        (MAX_SAFE_INTEGER, "9007199254740991"),
        (MIN_SAFE_INTEGER, "-9007199254740991"),
    ],
)
def test_encoding_details(value: object, expected: str) -> None:
    assert encode_canonical_json(value) == expected.encode("utf-8")


def test_keys_sorted_by_code_point_not_utf16() -> None:
    # U+FF61 sorts before U+1F600 by code point, though not by UTF-16 code unit.
    out = encode_canonical_json({"\U0001f600": 1, "\uff61": 2, "B": 3, "a": 4})
    assert out == '{"B":3,"a":4,"｡":2,"😀":1}'.encode()


@pytest.mark.parametrize(
    "bad",
    [
        1.5,
        1.0,
        {"a": [0.1]},
        MAX_SAFE_INTEGER + 1,
        MIN_SAFE_INTEGER - 1,
        {"deep": {"n": 2**63}},
        {1: "int key"},
        {"a": {None: 1}},
        {"a": b"bytes"},
        {"s": {1, 2}},
        object(),
        "lone \ud800 surrogate",
        {"\udc00": 1},
    ],
)
def test_strict_rejects(bad: object) -> None:
    with pytest.raises(CanonicalJsonError):
        validate_json_value(bad)
    with pytest.raises(CanonicalJsonError):
        encode_canonical_json(bad)


def test_error_is_value_error_and_names_path() -> None:
    with pytest.raises(ValueError, match=r"\$\.content\.n"):
        encode_canonical_json({"content": {"n": 2**60}})


def test_non_strict_allows_old_room_numbers() -> None:
    # Room versions 1-5 may carry out-of-range integers and floats.
    assert encode_canonical_json({"n": 2**60, "f": 1.5}, strict=False) == (
        b'{"f":1.5,"n":1152921504606846976}'
    )
    for bad in (float("nan"), float("inf"), {1: 1}, b"x"):
        with pytest.raises(CanonicalJsonError):
            encode_canonical_json(bad, strict=False)


def test_deep_nesting_does_not_overflow_the_stack() -> None:
    value: object = 1
    for _ in range(100_000):
        value = [value]
    validate_json_value(value)  # iterative: no RecursionError


def test_validate_does_not_encode_or_mutate() -> None:
    d = {"b": [1, 2], "a": {"c": None}}
    validate_json_value(d)
    assert d == {"b": [1, 2], "a": {"c": None}}


# -- parse_json ------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"NaN",
        b'{"a": Infinity}',
        b"[-Infinity]",
        b"\xff\xfe{}",  # not UTF-8
        b'{"a": "\xc3"}',  # truncated UTF-8 sequence
        b"\xef\xbb\xbf{}",  # UTF-8 BOM
        '{"a": "x"}'.encode("utf-16"),
        b'"\\ud800"',  # escape producing a lone surrogate
        b'{"\\udc00": 1}',
        b"",
        b"{",
        b"{'a': 1}",
        b"[1,]",
        b"1" * 5000,  # integer literal over Python's digit limit
        b"1e999",
        b"[" * 100_000 + b"]" * 100_000,
    ],
)
def test_parse_rejects(body: bytes) -> None:
    with pytest.raises(JsonParseError):
        parse_json(body)


def test_parse_error_is_value_error() -> None:
    assert issubclass(JsonParseError, ValueError)


def test_parse_accepts_and_takes_last_duplicate() -> None:
    assert parse_json(b'{"a": 1, "a": 2}') == {"a": 2}
    assert parse_json('{"emoji": "\\ud83d\\ude00"}') == {"emoji": "😀"}
    assert parse_json(b' [true, false, null, "x", 12] ') == [True, False, None, "x", 12]


@pytest.mark.parametrize(
    ("body", "value", "kind"),
    [
        (b"1e10", 10000000000, int),
        (b"2.0", 2, int),
        (b"-0.0", 0, int),
        (b"0e999999999", 0, int),
        (b"1.5", 1.5, float),
        (b"1e300", 1e300, float),  # integral but beyond 2**53: left for validation
        (b"12345678901234567890", 12345678901234567890, int),
    ],
)
def test_parse_numbers(body: bytes, value: object, kind: type) -> None:
    parsed = parse_json(body)
    assert parsed == value
    assert type(parsed) is kind


def test_parse_then_strict_encode_refuses_fractions() -> None:
    with pytest.raises(CanonicalJsonError):
        encode_canonical_json(parse_json(b'{"a": 0.5}'))


def test_huge_exponent_is_cheap() -> None:
    # Must not try to build a billion-digit integer.
    with pytest.raises(JsonParseError):
        parse_json(b"1e999999999")


@pytest.mark.parametrize(
    "value",
    [
        {"hashes": {"sha256": "5E9e1.2E3xyz"}, "signatures": {"s": {"ed25519:1": "0e5A+/9.9"}}},
        {"ctl": "".join(chr(i) for i in range(0x80)), "seps": "\u2028\u2029\ufeff", "astral": "\U0001f600"},
        {"\U0001f600": 1, "\ue000": 2, "a": [1, -1, 0, MAX_SAFE_INTEGER, MIN_SAFE_INTEGER], "b": True},
        {"server": "@u:1.2.3.4", "n": None, "t": ("x", 1)},
        {"esc": 'a \\ b "q" \n 1.5 e', "flags": [True, False], "n": 12},
        [[], {}, "", 0],
        "just a string",
        12345,
    ],
)
def test_fast_path_writes_the_reference_bytes(value: object) -> None:
    """encode_canonical_json's orjson path writes exactly what the reference encoder does."""
    import canonicaljson

    assert encode_canonical_json(value) == canonicaljson.encode_canonical_json(value)


@pytest.mark.parametrize(
    "bad",
    [
        1e20, -0.0, [1.5], {"a": [2, 1e-7]}, {"a": 10**16}, [-(10**16)], {"s": "5E", "f": 2.0},
        {"s": 'esc \\ "q" \n', "f": 1e5}, ['"', 0.5], {"t": True, "f": False, "x": [3.0]},
    ],
)
def test_fast_path_never_lets_a_float_or_big_integer_through(bad: object) -> None:
    with pytest.raises(CanonicalJsonError):
        encode_canonical_json(bad)


def test_fast_path_refuses_nan_and_objects_it_could_write() -> None:
    import dataclasses
    import datetime

    @dataclasses.dataclass
    class D:
        x: int = 1

    for bad in ([float("nan")], {"a": float("inf")}, {"d": D()}, {"t": datetime.datetime(2020, 1, 1)}):
        with pytest.raises(CanonicalJsonError):
            encode_canonical_json(bad, strict=False)


def test_fast_path_agrees_with_the_reference_on_random_values() -> None:
    """Random nested values (strings with quotes, backslashes, digits and 'e', numbers of
    every kind, literals): the same bytes as validate + canonicaljson, or the same refusal."""
    import random

    import canonicaljson

    rng = random.Random(12)
    alphabet = ['"', "\\", "e", "E", ".", "1", "-", ":", ",", "[", "n", "u", "l", "\n", "é", "\U0001f600", "a"]

    def value(depth: int) -> object:
        kind = rng.randrange(9 if depth < 4 else 6)
        if kind == 0:
            return "".join(rng.choice(alphabet) for _ in range(rng.randrange(8)))
        if kind == 1:
            return rng.choice([0, -1, 7, 2**53 - 1, -(2**53) + 1, 2**53, 10**17, -(10**16)])
        if kind == 2:
            return rng.choice([1.5, 1e20, -0.0, 2.0])
        if kind in (3, 4, 5):
            return rng.choice([True, False, None])
        if kind in (6, 7):
            return {"".join(rng.choice(alphabet) for _ in range(3)): value(depth + 1) for _ in range(rng.randrange(4))}
        return [value(depth + 1) for _ in range(rng.randrange(4))]

    for _ in range(3000):
        v = value(0)
        for strict in (True, False):
            try:
                validate_json_value(v, strict=strict)
                expected: bytes | None = canonicaljson.encode_canonical_json(v)
            except CanonicalJsonError:
                expected = None
            if expected is None:
                with pytest.raises(CanonicalJsonError):
                    encode_canonical_json(v, strict=strict)
            else:
                assert encode_canonical_json(v, strict=strict) == expected, v
