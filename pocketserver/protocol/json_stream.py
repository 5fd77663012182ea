"""An incremental splitter for one big JSON object whose arrays are too big to decode whole.

A ``send_join`` answer of a big room is tens of MB of JSON: ``{"state": [pdu, ...],
"auth_chain": [pdu, ...], "event": {...}, ...}``. :class:`ObjectSplitter` takes its bytes
in pieces of any size and hands back, as soon as each is complete:

- for a member named in ``streamed`` whose value is an array: each element decoded
  (``Piece(key, index, value, offset, size)``), one at a time;
- for every other member in ``wanted``: its whole value decoded (``index`` None), at most
  ``max_value`` bytes; members not in ``wanted`` are skipped without being kept.

It checks only the structure it walks (the top-level object, its keys, the streamed
arrays' commas and brackets, strings and their escapes, nesting depth); what is inside a
value is for the JSON decoder the caller runs on each piece. An element or value larger
than ``max_value`` raises :class:`JsonStreamError` as soon as that is known, so memory
stays bounded by it whatever the input. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import orjson

_WS = re.compile(rb"[ \t\r\n]*")
# A string from its opening quote: group 1 is the closing quote (absent: the input ends
# inside the string, perhaps right after a backslash).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:(")|\\?\Z)', re.S)
# Inside a value: the next string (skipped whole) or bracket.
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:(")|\\?\Z)|[{}\[\]]', re.S)
_SCALAR = re.compile(rb"[-+0-9.eEa-z]+")
# The likely end of an object element: a brace followed by the array's end, or by a
# comma and the next element's brace (inside an event, a comma is followed by a name).
_CLOSE = re.compile(rb"\}[ \t\r\n]*(?:\]|,[ \t\r\n]*\{)")
# Candidate ends tried before walking the element token by token.
FAST_TRIES = 3
MAX_DEPTH = 128


class JsonStreamError(ValueError):
    """The input is not the JSON object expected, or a value is over the size limit."""


@dataclass(frozen=True, slots=True)
class Piece:
    key: str
    index: int | None  # the element's position in a streamed array; None: a whole value
    value: Any  # decoded
    offset: int  # where its bytes start in the whole input
    size: int  # how many bytes it took


# states of the top-level walk
_START, _KEY, _COLON, _VALUE, _AFTER_VALUE, _ELEMENT, _AFTER_ELEMENT, _END = range(8)


class ObjectSplitter:
    def __init__(self, streamed: Collection[str], wanted: Collection[str], *, max_value: int) -> None:
        self.streamed = frozenset(streamed)
        self.wanted = frozenset(wanted)
        self.max_value = max_value
        self._buf = b""
        self._base = 0  # offset in the whole input of _buf[0]
        self._state = _START
        self._key = ""
        self._index = 0
        self._first = True  # no member (or element) seen yet in the current container
        # the streamed members whose value was an array (perhaps an empty one)
        self.arrays_seen: set[str] = set()

    def feed(self, data: bytes) -> list[Piece]:
        """The pieces completed by ``data``."""
        self._buf = self._buf + data if self._buf else bytes(data)
        out: list[Piece] = []
        pos = self._step(out)
        self._base += pos
        self._buf = self._buf[pos:]
        if self._state != _END and len(self._buf) > self.max_value:
            raise JsonStreamError(f"a value is over {self.max_value} bytes")
        return out

    def close(self) -> None:
        """The input ended: it must have been one whole object."""
        if self._state != _END:
            raise JsonStreamError("the JSON ends before the object does")

    # -- the walk ------------------------------------------------------------------------

    def _err(self, pos: int, what: str) -> JsonStreamError:
        return JsonStreamError(f"{what} at byte {self._base + pos}")

    def _step(self, out: list[Piece]) -> int:
        """Walk as far as the buffer allows; the position of the first byte not used."""
        buf, pos, n = self._buf, 0, len(self._buf)
        while True:
            pos = _WS.match(buf, pos).end()  # type: ignore[union-attr]
            if pos >= n:
                return pos
            c = buf[pos]
            st = self._state
            if st == _START:
                if c != 0x7B:  # {
                    raise self._err(pos, "expected a JSON object")
                self._state, self._first = _KEY, True
                pos += 1
            elif st == _KEY:
                if c == 0x7D and self._first:  # }
                    self._state = _END
                    pos += 1
                    continue
                if c != 0x22:
                    raise self._err(pos, "expected a member name")
                m = _STRING.match(buf, pos)
                assert m is not None
                if m.group(1) is None:
                    return pos  # incomplete
                try:
                    self._key = orjson.loads(m.group(0))
                except orjson.JSONDecodeError:
                    raise self._err(pos, "invalid member name") from None
                self._state, self._first = _COLON, False
                pos = m.end()
            elif st == _COLON:
                if c != 0x3A:
                    raise self._err(pos, "expected ':'")
                self._state = _VALUE
                pos += 1
            elif st == _VALUE:
                if c == 0x5B and self._key in self.streamed:  # [
                    self._state, self._index, self._first = _ELEMENT, 0, True
                    self.arrays_seen.add(self._key)
                    pos += 1
                    continue
                end = self._value_end(buf, pos)
                if end is None:
                    return pos
                if self._key in self.wanted or self._key in self.streamed:
                    out.append(Piece(self._key, None, self._decode(buf, pos, end), self._base + pos, end - pos))
                self._state = _AFTER_VALUE
                pos = end
            elif st == _AFTER_VALUE:
                if c == 0x2C:  # ,
                    self._state = _KEY
                elif c == 0x7D:
                    self._state = _END
                else:
                    raise self._err(pos, "expected ',' or '}'")
                pos += 1
            elif st == _ELEMENT:
                if c == 0x5D and self._first:  # ]
                    self._state = _AFTER_VALUE
                    pos += 1
                    continue
                found = self._element(buf, pos)
                if found is None:
                    return pos
                end, value = found
                out.append(Piece(self._key, self._index, value, self._base + pos, end - pos))
                self._index += 1
                self._state, self._first = _AFTER_ELEMENT, False
                pos = end
            elif st == _AFTER_ELEMENT:
                if c == 0x2C:
                    self._state = _ELEMENT
                elif c == 0x5D:
                    self._state = _AFTER_VALUE
                else:
                    raise self._err(pos, "expected ',' or ']'")
                pos += 1
            else:  # _END: only whitespace may follow
                raise self._err(pos, "data after the object")

    def _decode(self, buf: bytes, start: int, end: int) -> Any:
        try:
            return orjson.loads(buf[start:end])
        except orjson.JSONDecodeError as e:
            raise self._err(start, f"invalid JSON ({e})") from None

    def _element(self, buf: bytes, start: int) -> tuple[int, Any] | None:
        """An array element: (its end, its value), or None while incomplete.

        Fast path for objects: a closing brace followed by ``,`` or ``]`` is tried as
        the end; if the bytes up to it decode as JSON, it is the end (JSON is parsed
        left to right, so a prefix that is a whole value ends where the value does).
        A brace inside a string fails to decode; after a few, the token walk decides.
        """
        if buf[start] == 0x7B:
            stop = min(len(buf), start + self.max_value + 8)
            for tries, m in enumerate(_CLOSE.finditer(buf, start, stop)):
                if tries >= FAST_TRIES:
                    break
                end = m.start() + 1
                try:
                    return end, orjson.loads(buf[start:end])
                except orjson.JSONDecodeError:
                    continue
        end2 = self._value_end(buf, start)
        if end2 is None:
            return None
        return end2, self._decode(buf, start, end2)

    def _value_end(self, buf: bytes, start: int) -> int | None:
        """The end of the value starting at ``start`` (None: not all in ``buf`` yet)."""
        c = buf[start]
        limit = start + self.max_value
        if c == 0x22:
            m = _STRING.match(buf, start)
            assert m is not None
            if m.group(1) is None:
                return None
            end = m.end()
        elif c in (0x7B, 0x5B):
            depth = 0
            end = -1
            for m in _TOKEN.finditer(buf, start, min(len(buf), limit + 1)):
                t = buf[m.start()]
                if t == 0x22:
                    if m.group(1) is None:
                        break
                elif t in (0x7B, 0x5B):
                    depth += 1
                    if depth > MAX_DEPTH:
                        raise self._err(m.start(), "nested too deeply")
                else:
                    depth -= 1
                    if depth == 0:
                        end = m.end()
                        break
            if end < 0:
                if len(buf) > limit:
                    raise self._err(start, f"a value over {self.max_value} bytes")
                return None
        else:
            m = _SCALAR.match(buf, start)
            if m is None:
                raise self._err(start, "invalid value")
            end = m.end()
            if end == len(buf):
                return None  # the number or word may go on
        if end - start > self.max_value:
            raise self._err(start, f"a value over {self.max_value} bytes")
        return end
