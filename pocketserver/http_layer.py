"""The HTTP/1.1 connection layer between hypercorn and the application.

What this module owns, and why each part exists:

- :class:`EarlyAnswerGuard`, an ASGI wrapper around the whole application. A route may
  answer before it has read the request body (404, 405, 401, 413 ...). Hypercorn then
  either recycles the connection or closes it, deciding inside the application's last
  ``send``; two things went wrong there. (1) The decision runs in the application's
  task: the ``http.disconnect`` it delivers makes quart-trio cancel that very task, and
  the cancellation lands in the middle of it, so neither the close nor the recycle
  happens and the next request on the connection waits forever. (2) It closes a
  connection whose request body is still arriving without ``Connection: close`` in the
  answer. The guard therefore (a) reads and drops the rest of an unread body before the
  answer starts, up to :data:`DRAIN_BYTES` within :data:`DRAIN_SECONDS`, so the
  connection stays usable (not when the answer itself already closes the connection,
  as a refused oversized upload does), (b) otherwise puts ``Connection: close`` in the
  answer and keeps draining until hypercorn has closed the connection, so no task waits on a full
  body queue, and (c) shields every write of the answer from cancellation (the head
  waits for its first body piece), so an answer is never cut half-way and hypercorn
  always finishes what it does in the last one (before, that cancellation also skipped
  restarting the keep-alive timer after every answer: idle connections were never
  closed).
- :class:`PocketH11Protocol`, hypercorn's HTTP/1.1 protocol with three changes: a
  request head must arrive within :data:`HEAD_TIMEOUT_S` of its first byte (hypercorn
  only has the 75 s keep-alive timeout, which a client dribbling a head byte by byte
  keeps alive); nothing is written once the connection is being closed (hypercorn's
  close shuts the socket down without its send lock, so a response written at that
  moment raised ``trio.BusyResourceError``); and, for speed, a response head goes out
  in one write with its first body piece.
- Two speed patches of private internals: h11's receive buffer keeps a read's
  ``bytes`` (:func:`patch_h11_body_reads`), and hypercorn reads :data:`READ_SIZE` bytes
  at a time. :func:`install` applies them only to the versions in :data:`PINNED`, which
  pyproject.toml pins exactly; tests run every connection shape with and without them.

It knows nothing of Matrix: no route, no errcode.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Awaitable, Callable
from typing import Any

import h11
import trio
from hypercorn.events import Closed, RawData
from hypercorn.protocol.h11 import H11Protocol

# The versions whose private internals this module replaces or subclasses (and that
# pyproject.toml pins): a new release must be read before it is allowed in.
PINNED = {"h11": "0.16.0", "hypercorn": "0.18.0"}

# Bytes hypercorn asks the socket for per read. Its default (64 KiB) makes a 50 MB upload
# 800 trips through h11 and the event loop; 256 KiB quarters that, and a read only
# allocates what actually arrived.
READ_SIZE = 256 * 1024
HYPERCORN_READ_SIZE = 2**16

# An unread request body is read and dropped before an early answer up to this much...
DRAIN_BYTES = 16 * 1024 * 1024
# ... and for at most this long; past either, the answer closes the connection.
DRAIN_SECONDS = 10.0
# A request head must be complete this long after its first byte arrived.
HEAD_TIMEOUT_S = 10.0
# An idle keep-alive connection is closed after this long (hypercorn's setting).
KEEP_ALIVE_S = 75.0

# A response head is written together with a body piece up to this size.
_COALESCE_MAX = 64 * 1024

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def versions_match() -> bool:
    """Whether the installed h11 and hypercorn are the pinned ones."""
    try:
        return all(importlib.metadata.version(n) == v for n, v in PINNED.items())
    except importlib.metadata.PackageNotFoundError:
        return False


# -- early answers: the request body is read to its end, or the connection closed -----


class _Exchange:
    """One HTTP/1.x request and its response, as the guard sees them."""

    def __init__(self, receive: Receive, send: Send, declared: int | None) -> None:
        self._receive = receive
        self._send = send
        self.declared = declared
        self.complete = False  # the last body message was received (by anyone)
        self.disconnected = False
        self.ended = trio.Event()  # complete or disconnected
        self.taken_over = False  # the guard, not the app, reads what is left of the body
        self.final_sent = False
        self._start: Message | None = None
        self._draining: set[trio.CancelScope] = set()
        self.nursery: trio.Nursery | None = None

    def _note(self, message: Message) -> None:
        kind = message.get("type")
        if kind == "http.request" and not message.get("more_body", False):
            self.complete = True
        elif kind == "http.disconnect":
            self.disconnected = True
        else:
            return
        self.ended.set()
        for scope in self._draining:
            scope.cancel()  # a drain waiting for a message that someone else received

    async def receive(self) -> Message:
        """The application's ``receive``. Once the guard has taken the body over, the
        application sees only the end of the exchange."""
        if self.taken_over and not self.ended.is_set():
            await self.ended.wait()
        if self.disconnected:
            return {"type": "http.disconnect"}
        message = await self._receive()
        self._note(message)
        return message

    async def _drain(self, *, limit: float, seconds: float) -> None:
        """Read and drop body messages until the body ends, ``limit`` bytes or
        ``seconds`` have passed. Cancelled as soon as anyone sees the end."""
        seen = 0
        with trio.move_on_after(seconds) as scope:
            self._draining.add(scope)
            try:
                while not self.ended.is_set() and seen <= limit:
                    message = await self._receive()
                    self._note(message)
                    seen += len(message.get("body", b""))
            finally:
                self._draining.discard(scope)

    async def _drain_rest(self) -> None:
        # After an answer that closes the connection: hypercorn's reader may be waiting
        # to queue a body piece, and its close queues a disconnect; both need a reader.
        await self._drain(limit=float("inf"), seconds=DRAIN_SECONDS + 60)

    async def send(self, message: Message) -> None:
        kind = message.get("type")
        if kind == "http.response.start":
            if not self.ended.is_set():
                self.taken_over = True
                # An answer that already closes the connection (a route refusing a
                # body it will not read) is not held up for that body.
                closes = _closes(message)
                if not closes and (self.declared is None or self.declared <= DRAIN_BYTES):
                    await self._drain(limit=DRAIN_BYTES, seconds=DRAIN_SECONDS)
                if not self.ended.is_set():
                    message = _with_connection_close(message)
                    assert self.nursery is not None
                    self.nursery.start_soon(self._drain_rest)
            # Held until the first body message: a head never goes out without it.
            self._start = message
            return
        # Every write is shielded: hypercorn ends the exchange inside the last one
        # (recycles or closes the connection, tells the app it is over), and the app's
        # cancellation on that news (quart-trio's) must not cut a write, or that end,
        # half-way. (Hypercorn shields its socket writes anyway.)
        start, self._start = self._start, None
        with trio.CancelScope(shield=True):
            if start is not None:
                await self._send(start)
            await self._send(message)
        if kind == "http.response.body" and not message.get("more_body", False):
            self.final_sent = True


def _closes(message: Message) -> bool:
    return any(
        bytes(name).lower() == b"connection" and b"close" in bytes(value).lower()
        for name, value in message.get("headers", [])
    )


def _with_connection_close(message: Message) -> Message:
    if _closes(message):
        return message
    return {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}


def _declared_length(scope: dict[str, Any]) -> int | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class EarlyAnswerGuard:
    """ASGI wrapper: an early answer leaves an HTTP/1.1 connection usable, or closes it
    with ``Connection: close``; never half-way (see the module docstring)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope.get("type") != "http" or not str(scope.get("http_version", "")).startswith("1"):
            await self.app(scope, receive, send)
            return
        exchange = _Exchange(receive, send, _declared_length(scope))
        async with trio.open_nursery() as nursery:
            exchange.nursery = nursery
            await self.app(scope, exchange.receive, exchange.send)
            if not exchange.final_sent:
                # No end of response from the app (it was cancelled or failed): hypercorn
                # ends the exchange after we return; a drain must not hold that up.
                nursery.cancel_scope.cancel()


# -- hypercorn's HTTP/1.1 protocol: head deadline, writes after close, one-write answers -


class PocketH11Protocol(H11Protocol):
    """Hypercorn's :class:`H11Protocol` with a head deadline, no writes once closing,
    and (when :attr:`coalesce` is on) a response head written with its first body piece."""

    coalesce = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._closing = False
        self._head_timer: trio.CancelScope | None = None
        self._head_count = -1
        self._pending_head: bytes | None = None
        self._transport_send = self.send
        self.send = self._send_unless_closing  # type: ignore[method-assign]

    async def _send_unless_closing(self, event: Any) -> None:
        if isinstance(event, Closed):
            self._closing = True
        elif isinstance(event, RawData) and self._closing:
            return  # the connection is being closed; the bytes could not arrive anyway
        try:
            await self._transport_send(event)
        except trio.BusyResourceError:
            # Another task is shutting the socket down (hypercorn does that without
            # its send lock): this write is moot.
            if not self._closing:
                raise

    async def handle(self, event: Any) -> None:
        if isinstance(event, Closed):
            # The reader saw the end (or hypercorn is about to close): no head is coming.
            # Writes stay allowed: a client that only shut its side still reads.
            self._cancel_head_timer()
        await super().handle(event)
        if self._head_timer is not None and self._head_count != self.keep_alive_requests:
            self._cancel_head_timer()  # the head arrived
        if (
            self._head_timer is None
            and isinstance(event, RawData)
            and self._waiting_for_head()
            and self.connection.trailing_data[0]
        ):
            self._start_head_timer()  # part of a head is here: the rest has a deadline

    def _waiting_for_head(self) -> bool:
        return isinstance(self.connection, h11.Connection) and self.connection.their_state is h11.IDLE

    def _start_head_timer(self) -> None:
        self._cancel_head_timer()
        scope = trio.CancelScope()
        self._head_timer = scope
        self._head_count = self.keep_alive_requests
        self.task_group.spawn(self._head_deadline, scope, self.keep_alive_requests)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    async def _head_deadline(self, scope: trio.CancelScope, count: int) -> None:
        with scope:
            await trio.sleep(HEAD_TIMEOUT_S)
            if self.keep_alive_requests == count and self._waiting_for_head() and not self._closing:
                await self.send(Closed())

    async def _send_h11_event(self, event: Any) -> None:
        if not self.coalesce:
            await super()._send_h11_event(event)
            return
        # A small answer (almost every Matrix call) in one write: one system call and
        # one wake-up of the client instead of two. A large body piece is written after
        # the head, not copied onto it.
        head, self._pending_head = self._pending_head, None
        if head is None and type(event) is not h11.Response:
            await super()._send_h11_event(event)
            return
        data = self._h11_bytes(event)
        if head is None:
            self._pending_head = data or b""
        elif len(data) > _COALESCE_MAX:
            await self.send(RawData(data=head))
            await self.send(RawData(data=data))
        else:
            await self.send(RawData(data=head + data))

    def _h11_bytes(self, event: Any) -> bytes:
        """h11's bytes for ``event``; nothing for an event h11 refuses once the peer has
        erred (hypercorn's own rule)."""
        try:
            return self.connection.send(event) or b""
        except h11.LocalProtocolError:
            if self.connection.their_state != h11.ERROR:
                raise
            return b""


# -- h11 receive buffer: fewer copies of a request body ------------------------------
#
# h11 (0.14 to 0.16) copies every byte of a body four times before hypercorn hands it
# to the application: into its bytearray buffer, twice more slicing it out (once only
# to test for emptiness), and hypercorn's ``bytes()`` of the result. During an upload a
# socket read is usually all body, so these three methods keep the ``bytes`` a read
# returned as the buffer until something must cut it, and hand the whole buffer out as
# the body piece. Every result and every state afterwards is h11's own (tests compare
# them operation by operation); anything that cuts a partial buffer runs h11's code.

_H11_ORIGINALS: dict[str, Any] = {}


def _buffer_iadd(self: Any, byteslike: Any) -> Any:
    if not self._data and type(byteslike) is bytes:
        self._data = byteslike  # held as is until something must cut it
        return self
    if type(self._data) is not bytearray:
        self._data = bytearray(self._data)
    self._data += byteslike
    return self


def _buffer_extract(self: Any, count: int) -> Any:
    if type(self._data) is not bytearray:
        self._data = bytearray(self._data)
    return _H11_ORIGINALS["_extract"](self, count)


def _buffer_extract_at_most(self: Any, count: int) -> Any:
    data = self._data
    if data and count >= len(data):
        self._data = bytearray()
        self._next_line_search = 0
        self._multiple_lines_search = 0
        return data
    return _H11_ORIGINALS["maybe_extract_at_most"](self, count)


_H11_PATCHES = {
    "__iadd__": _buffer_iadd,
    "_extract": _buffer_extract,
    "maybe_extract_at_most": _buffer_extract_at_most,
}


def patch_h11_body_reads() -> bool:
    """Install the three methods above, if h11's buffer is the one they were written for."""
    from h11 import _receivebuffer

    cls = _receivebuffer.ReceiveBuffer
    if _H11_ORIGINALS:
        return True
    probe = cls()
    fields = ("_data", "_next_line_search", "_multiple_lines_search")
    if not all(hasattr(probe, f) for f in fields) or not all(hasattr(cls, m) for m in _H11_PATCHES):
        return False
    for name, fn in _H11_PATCHES.items():
        _H11_ORIGINALS[name] = getattr(cls, name)
        setattr(cls, name, fn)
    return True


def unpatch_h11_body_reads() -> None:
    """For tests: h11's own methods back."""
    from h11 import _receivebuffer

    for name, fn in _H11_ORIGINALS.items():
        setattr(_receivebuffer.ReceiveBuffer, name, fn)
    _H11_ORIGINALS.clear()


# -- installing it --------------------------------------------------------------------

# Tests turn this off to run the same shapes against hypercorn's and h11's own code.
SPEED_PATCHES = True


def install() -> None:
    """Serve HTTP/1.1 with :class:`PocketH11Protocol`; with :data:`SPEED_PATCHES` (and
    only on the pinned versions), also the larger reads, h11's buffer and one-write
    answers. Called before each listener starts; idempotent."""
    import hypercorn.protocol
    import hypercorn.trio.tcp_server

    # Hypercorn's ProtocolWrapper looks H11Protocol up in this module for each connection.
    hypercorn.protocol.H11Protocol = PocketH11Protocol  # type: ignore[misc]
    speed = SPEED_PATCHES and versions_match()
    PocketH11Protocol.coalesce = speed
    # A module constant in hypercorn, read at each receive (there is no setting for it).
    hypercorn.trio.tcp_server.MAX_RECV = READ_SIZE if speed else HYPERCORN_READ_SIZE
    if speed:
        patch_h11_body_reads()
    else:
        unpatch_h11_body_reads()
