"""Request authentication between servers: the ``X-Matrix`` Authorization header.

Spec: shared/spec/content/server-server-api.md, "Request Authentication".

Signing a request (the sender):

1. build ``{"method", "uri", "origin", "destination", "content"?}`` where ``uri`` is
   the request target as sent (path and query string, no scheme or host) and
   ``content`` the parsed JSON body, present only when there is one;
2. sign it with the JSON signing algorithm;
3. send ``Authorization: X-Matrix origin="..",destination="..",key="..",sig=".."``
   (one space after the scheme, lower-case names, quoted values, no spaces around
   commas: what older servers parse).

Parsing (the receiver): the scheme, one or more spaces, then comma-separated
``name=value`` pairs with optional spaces or tabs around the commas; names are
case-insensitive; a value is a token or a quoted string whose backslash escapes are
undone; an unquoted value may hold more than token characters (colons from older
servers, base64's ``/``) and ends at a comma or a space; unknown
names are ignored. ``origin``, ``key`` and ``sig`` are required, ``destination`` is
optional (added in v1.3). Several headers carry several signatures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

JsonDict = dict[str, Any]

SCHEME = "X-Matrix"


class AuthHeaderError(ValueError):
    """The Authorization header is not a well-formed X-Matrix header."""


@dataclass(frozen=True, slots=True)
class XMatrixAuth:
    origin: str
    destination: str | None
    key: str
    sig: str


def signing_object(
    method: str, uri: str, origin: str, destination: str, content: Any = None
) -> JsonDict:
    """Step 1: the JSON object whose signature authenticates a request."""
    obj: JsonDict = {"method": method, "uri": uri, "origin": origin, "destination": destination}
    if content is not None:
        obj["content"] = content
    return obj


def format_header(origin: str, destination: str, key_id: str, sig: str) -> str:
    """Step 3: the header value, in the form older servers parse."""
    return f'{SCHEME} origin="{origin}",destination="{destination}",key="{key_id}",sig="{sig}"'


# RFC 9110 token characters (parameter names).
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
# An unquoted value runs to the next comma or space: tokens, and more (":" from older
# servers, unpadded base64's "/").
_VALUE_END = frozenset(', \t"')


def _params(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in " \t":
            i += 1
        if i >= n:
            raise AuthHeaderError("expected a parameter")
        start = i
        while i < n and text[i] in _TOKEN:
            i += 1
        name = text[start:i].lower()
        if not name or i >= n or text[i] != "=":
            raise AuthHeaderError("expected name=value")
        i += 1
        if i < n and text[i] == '"':
            i += 1
            chars: list[str] = []
            while True:
                if i >= n:
                    raise AuthHeaderError("unterminated quoted value")
                c = text[i]
                if c == "\\":
                    if i + 1 >= n:
                        raise AuthHeaderError("unterminated escape")
                    chars.append(text[i + 1])
                    i += 2
                elif c == '"':
                    i += 1
                    break
                else:
                    chars.append(c)
                    i += 1
            value = "".join(chars)
        else:
            start = i
            while i < n and text[i] not in _VALUE_END:
                i += 1
            value = text[start:i]
            if not value:
                raise AuthHeaderError(f"empty value for {name!r}")
        out.setdefault(name, value)
        while i < n and text[i] in " \t":
            i += 1
        if i >= n:
            return out
        if text[i] != ",":
            raise AuthHeaderError("expected ',' between parameters")
        i += 1


def parse_header(value: str) -> XMatrixAuth:
    """Parse one Authorization header value; raise :class:`AuthHeaderError`."""
    scheme, sep, rest = value.partition(" ")
    if scheme.lower() != SCHEME.lower() or not sep:
        raise AuthHeaderError("not an X-Matrix authorization")
    params = _params(rest.lstrip(" "))
    try:
        origin, key, sig = params["origin"], params["key"], params["sig"]
    except KeyError as e:
        raise AuthHeaderError(f"missing {e.args[0]!r}") from None
    return XMatrixAuth(origin=origin, destination=params.get("destination"), key=key, sig=sig)


def is_x_matrix(value: str) -> bool:
    return value[: len(SCHEME) + 1].lower() == SCHEME.lower() + " "
