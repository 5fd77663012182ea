"""Values from untrusted requests: one strict parser per kind, used by routes and services.

Integers a client writes as text (query parameters, pagination tokens) go through
:func:`parse_int`; fields of a JSON body through the ``get_*`` functions. Each checks the
type *and* the range before anything is hashed, compared or handed to SQLite, so a
wrong type is ``M_BAD_JSON`` (body) or ``M_INVALID_PARAM`` (query, token), never a
``TypeError`` or ``OverflowError`` deep inside a service.

The integer range is canonical JSON's (``±(2**53 - 1)``): every integer the server
itself hands out (positions, timestamps, counts) lies inside it, it is what JSON
clients can represent exactly, and it is far inside SQLite's 64-bit ``INTEGER``.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any

from pocketserver.errors import BadJson, InvalidParam, MissingParam

MAX_INT = 2**53 - 1
MIN_INT = -MAX_INT

# ASCII digits only: int() also takes "+5", " 5 ", "1_000" and other scripts' digits.
_INT_TEXT = re.compile(r"-?[0-9]{1,16}")


def parse_int(text: str, what: str, *, minimum: int = MIN_INT, maximum: int = MAX_INT) -> int:
    """``text`` as an integer in ``[minimum, maximum]``, else M_INVALID_PARAM."""
    if not _INT_TEXT.fullmatch(text):
        raise InvalidParam(f"{what} must be an integer")
    value = int(text)
    if not minimum <= value <= maximum:
        raise InvalidParam(f"{what} must be between {minimum} and {maximum}")
    return value


def digits(text: str, *, max_digits: int = 15) -> int | None:
    """``text`` as a non-negative integer if it is 1 to ``max_digits`` ASCII digits,
    else None (for IDs the server issued: ``str.isdigit()`` also says yes to "²",
    which ``int()`` refuses)."""
    if 0 < len(text) <= max_digits and text.isascii() and text.isdigit():
        return int(text)
    return None


def check_int(value: Any, what: str, *, minimum: int = MIN_INT, maximum: int = MAX_INT) -> int:
    """A JSON value that must be an integer in ``[minimum, maximum]``, else M_BAD_JSON."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadJson(f"{what} must be an integer")
    if not minimum <= value <= maximum:
        raise BadJson(f"{what} must be between {minimum} and {maximum}")
    return value


def get_str(
    body: Mapping[str, Any], key: str, *, required: bool = False, default: str | None = None
) -> str | None:
    v = body.get(key)
    if v is None:
        if required:
            raise MissingParam(f"Missing {key!r}")
        return default
    if not isinstance(v, str):
        raise BadJson(f"{key!r} must be a string")
    return v


def get_choice(
    body: Mapping[str, Any], key: str, choices: Collection[str], *, default: str | None = None
) -> str | None:
    """A string field that must be one of ``choices`` (absent or null: ``default``)."""
    v = get_str(body, key, default=default)
    if v is not None and v not in choices:
        raise BadJson(f"{key!r} must be one of {', '.join(sorted(choices))}")
    return v


def get_bool(body: Mapping[str, Any], key: str, default: bool = False) -> bool:
    v = body.get(key, default)
    if not isinstance(v, bool):
        raise BadJson(f"{key!r} must be a boolean")
    return v


def get_int(
    body: Mapping[str, Any],
    key: str,
    default: int | None = None,
    *,
    minimum: int = MIN_INT,
    maximum: int = MAX_INT,
) -> int | None:
    v = body.get(key, default)
    if v is None:
        return None
    return check_int(v, repr(key), minimum=minimum, maximum=maximum)


def get_dict(body: Mapping[str, Any], key: str, *, required: bool = False) -> dict[str, Any] | None:
    v = body.get(key)
    if v is None:
        if required:
            raise MissingParam(f"Missing {key!r}")
        return None
    if not isinstance(v, dict):
        raise BadJson(f"{key!r} must be an object")
    return v


def get_list(body: Mapping[str, Any], key: str, *, of: type | None = None) -> list[Any] | None:
    """A list field (absent or null: None); with ``of``, every item must be of that type."""
    v = body.get(key)
    if v is None:
        return None
    if not isinstance(v, list):
        raise BadJson(f"{key!r} must be a list")
    if of is not None and not all(type(x) is of for x in v):  # exact: a bool is no int
        raise BadJson(f"{key!r} must be a list of {of.__name__}")
    return v
