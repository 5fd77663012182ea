"""Canonical JSON: the one byte encoding that hashes and signatures are computed over.

Spec: shared/spec/content/appendices.md, "Canonical JSON" (and its "Grammar" and
"Examples"); room-version notes in rooms/fragments/v1-canonical-json.md and
v6-canonical-json.md.

The encoding is the shortest UTF-8 JSON with object keys sorted by code point.  Numbers
must be integers in ``[-(2**53)+1, (2**53)-1]``; floats are not permitted.  The
``canonicaljson`` package does the byte encoding, but it happily encodes floats and
arbitrarily large integers, so every value is validated here first.

Room versions 1-5 predate the strict rules and may carry events with out-of-range
integers or floats; ``strict=False`` lets hashing and signature checks of such events
reproduce the bytes other servers produced (NaN and Infinity are refused in every mode,
they have no JSON form at all).

This module also owns *parsing* untrusted JSON bodies (:func:`parse_json`): strict
UTF-8, no ``NaN``/``Infinity`` constants, no lone surrogates.

It knows nothing about events, rooms or I/O.
"""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal, InvalidOperation
from typing import Any

import canonicaljson
import orjson

JsonDict = dict[str, Any]

#: Largest magnitude an integer may have in canonical JSON (appendices, "Canonical JSON").
MAX_SAFE_INTEGER = 2**53 - 1
MIN_SAFE_INTEGER = -(2**53) + 1

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class CanonicalJsonError(ValueError):
    """A value cannot be encoded as canonical JSON."""


class JsonParseError(ValueError):
    """A byte string is not acceptable JSON."""


def _check_string(s: str, where: str) -> None:
    # A lone surrogate has no UTF-8 encoding; the encoder would fail half way.
    if _LONE_SURROGATE.search(s):
        raise CanonicalJsonError(f"{where}: string contains a lone surrogate")


def validate_json_value(obj: Any, *, strict: bool = True) -> None:
    """Check that ``obj`` is representable as canonical JSON, without encoding it.

    Accepted: ``dict`` with ``str`` keys, ``list``/``tuple``, ``str``, ``int``, ``bool``,
    ``None``.  With ``strict`` (the default, and the rule for room versions 6+), floats
    and integers outside ``±(2**53-1)`` are rejected; without it, finite floats and any
    integer pass.  Raises :class:`CanonicalJsonError` naming the offending path.

    Iterative, so deeply nested input cannot exhaust the Python stack.
    """
    stack: list[tuple[Any, str]] = [(obj, "$")]
    while stack:
        value, path = stack.pop()
        if value is None or value is True or value is False:
            continue
        if isinstance(value, str):
            _check_string(value, path)
        elif isinstance(value, int):
            if strict and not (MIN_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER):
                raise CanonicalJsonError(f"{path}: integer out of range")
        elif isinstance(value, float):
            if strict:
                raise CanonicalJsonError(f"{path}: floats are not allowed")
            if not math.isfinite(value):
                raise CanonicalJsonError(f"{path}: NaN and Infinity are not JSON")
        elif isinstance(value, dict):
            for k, v in value.items():
                if not isinstance(k, str):
                    raise CanonicalJsonError(f"{path}: object key {k!r} is not a string")
                _check_string(k, path)
                stack.append((v, f"{path}.{k}"))
        elif isinstance(value, list | tuple):
            for i, v in enumerate(value):
                stack.append((v, f"{path}[{i}]"))
        else:
            raise CanonicalJsonError(f"{path}: {type(value).__name__} is not a JSON type")


# orjson with sorted keys writes canonical JSON's bytes (shortest escapes, raw UTF-8,
# keys in code point order) and refuses lone surrogates, non-string keys, integers past
# 64 bits (past 2**53 with OPT_STRICT_INTEGER, the strict rule) and, with these options,
# subclasses, dataclasses and datetimes. What it would let through that canonical JSON
# refuses or writes otherwise: floats (orjson writes a '.' or an exponent after the
# digits), NaN and Infinity (written as null). Without whitespace a number follows ':',
# ',' or '[' (or starts the output). An output with none of those marks anywhere (inside
# strings too: a false alarm only costs the slow path) is the answer; otherwise the full
# check and the reference encoder decide. Without a backslash in the output every '"'
# delimits a string, so what lies outside strings is every other piece between quotes:
# there, once "true" and "false" are gone, a '.', 'e' or 'E' is a float's and "null"
# is null (found with bytes operations, faster than the regex that escapes need).
_ORJSON_OPTIONS = (
    orjson.OPT_SORT_KEYS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
)
_NEEDS_CHECK = re.compile(rb"[:,\[]-?[0-9]+[.eE]|null")
_NUMBER_START = frozenset(b"-0123456789")


def encode_canonical_json(obj: Any, *, strict: bool = True) -> bytes:
    """Encode ``obj`` as canonical JSON bytes (appendices, "Canonical JSON").

    Validates first (see :func:`validate_json_value`) and raises
    :class:`CanonicalJsonError` rather than produce bytes another server would refuse.
    Checking a big room's events encodes each several times: most take the fast path
    above (same bytes, a tenth of the time).
    """
    try:
        out = orjson.dumps(obj, option=_ORJSON_OPTIONS | orjson.OPT_STRICT_INTEGER if strict else _ORJSON_OPTIONS)
    except TypeError:
        pass
    else:
        if b"\\" not in out:
            outside = b"".join(out.split(b'"')[0::2]).replace(b"true", b"").replace(b"false", b"")
            if not (b"." in outside or b"e" in outside or b"E" in outside or b"null" in outside):
                return out
        elif out[0] not in _NUMBER_START and _NEEDS_CHECK.search(out) is None:
            return out
    validate_json_value(obj, strict=strict)
    try:
        return canonicaljson.encode_canonical_json(obj)
    except (ValueError, TypeError, RecursionError) as e:  # pragma: no cover - validated
        raise CanonicalJsonError(str(e)) from e


def _reject_constant(name: str) -> Any:
    raise JsonParseError(f"{name} is not valid JSON")


def _parse_float(text: str) -> int | float:
    """Numbers written with a fraction or exponent.

    A number whose *value* is an integer in the safe range becomes an ``int``: the
    appendix's own example canonicalises ``1e10`` to ``10000000000``.  Anything else stays
    a ``float``, which canonical encoding will then refuse in strict mode.
    """
    try:
        d = Decimal(text)
    except InvalidOperation:  # pragma: no cover - the scanner only hands us numbers
        raise JsonParseError(f"bad number {text!r}") from None
    if d.is_zero():
        return 0
    # adjusted() is the exponent of the leading digit; checking it first keeps
    # "1e999999999" from being expanded into a billion-digit int.
    if d.is_finite() and d.adjusted() <= 16 and d == d.to_integral_value():
        as_int = int(d)
        if MIN_SAFE_INTEGER <= as_int <= MAX_SAFE_INTEGER:
            return as_int
    f = float(text)
    if not math.isfinite(f):
        raise JsonParseError(f"number {text!r} overflows")
    return f


def _check_no_surrogates(obj: Any) -> None:
    stack = [obj]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if _LONE_SURROGATE.search(v):
                raise JsonParseError("string contains a lone surrogate escape")
        elif isinstance(v, dict):
            for k, item in v.items():
                if _LONE_SURROGATE.search(k):
                    raise JsonParseError("key contains a lone surrogate escape")
                stack.append(item)
        elif isinstance(v, list):
            stack.extend(v)


def parse_json(body: bytes | str) -> Any:
    """Parse untrusted JSON strictly, raising :class:`JsonParseError`.

    - the bytes must be valid UTF-8 (no BOM, no other encodings);
    - the constants ``NaN``, ``Infinity`` and ``-Infinity`` are refused;
    - ``\\uD800``-style escapes that leave a lone surrogate are refused (they cannot be
      re-encoded as UTF-8);
    - duplicate object keys: the last one wins, as in most JSON parsers;
    - integral numbers written as ``1e10`` or ``2.0`` become ``int`` (see the appendix
      example); other fractional numbers stay ``float`` and are left for the caller's
      canonical-JSON validation to refuse where the room version demands it.
    """
    if isinstance(body, bytes | bytearray | memoryview):
        try:
            text = bytes(body).decode("utf-8")
        except UnicodeDecodeError as e:
            raise JsonParseError(f"body is not valid UTF-8: {e}") from None
    else:
        text = body
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_parse_float)
    except JsonParseError:
        raise
    except (ValueError, RecursionError) as e:
        # ValueError covers json.JSONDecodeError and over-long integer literals.
        raise JsonParseError(f"invalid JSON: {e}") from None
    _check_no_surrogates(value)
    return value
