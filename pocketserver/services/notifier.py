"""Wakes long-polling /sync requests when a stream advances.

One global stream position orders everything a client syncs (see storage/schema.py).
Writers call :meth:`Notifier.notify` after their transaction commits. A waiter takes
:meth:`Notifier.change_event` *before* it reads, then passes it to :meth:`wait_for_change`:
a notify that lands between its read and its wait has already set that event, so the
wait returns at once instead of sleeping through the change (a lost wake-up). A
spurious wake-up costs one cheap query and never a lost event.

:meth:`notify` may be called from any thread. Code that runs inside a database
transaction runs in a worker thread (``db.read``/``db.write``), and a ``trio.Event`` can
only be set from the event loop's thread: from anywhere else the wake-up is handed to
the loop (``TrioToken.run_sync_soon``), which runs it at its next turn.
"""

from __future__ import annotations

import trio


class Notifier:
    def __init__(self) -> None:
        self._event = trio.Event()
        self.position = 0
        # In-memory streams (typing) advance this serial, not the stored position.
        self.ephemeral_serial = 0
        self.waiters = 0
        # The event loop's token, learnt from the first call made on the loop (the
        # notifier is built before the loop runs). A worker thread can only have been
        # started from the loop, so by then it is known.
        self._token: trio.lowlevel.TrioToken | None = None

    def notify(self, position: int | None = None) -> None:
        """Wake every waiter; callable from any thread (see the module docstring)."""
        if self._on_loop():
            self._wake(position)
            return
        token = self._token
        if token is None:
            return  # no loop has run yet, so nobody can be waiting
        try:
            token.run_sync_soon(self._wake, position)
        except trio.RunFinishedError:
            pass  # the server has stopped; nobody is waiting any more

    def _on_loop(self) -> bool:
        try:
            token = trio.lowlevel.current_trio_token()
        except RuntimeError:
            return False
        self._token = token
        return True

    def _wake(self, position: int | None) -> None:
        if position is not None and position > self.position:
            self.position = position
        self._event.set()
        self._event = trio.Event()

    def notify_ephemeral(self) -> None:
        self.ephemeral_serial += 1
        self.notify()

    def change_event(self) -> trio.Event:
        """The event the next notify() sets; take it before reading what it guards."""
        self._on_loop()
        return self._event

    async def wait_for_change_or(self, changed: trio.Event, wake: trio.Event, timeout_s: float) -> None:
        """For a background worker: until ``changed`` (taken with :meth:`change_event`
        before the worker last read the stream) or ``wake`` is set, or the timeout."""
        with trio.move_on_after(timeout_s):
            async with trio.open_nursery() as waiters:

                async def on_change() -> None:
                    await self.wait_for_change(timeout_s, changed)
                    waiters.cancel_scope.cancel()

                async def on_wake() -> None:
                    await wake.wait()
                    waiters.cancel_scope.cancel()

                waiters.start_soon(on_change)
                waiters.start_soon(on_wake)

    async def wait_for_change(self, timeout_s: float, event: trio.Event | None = None) -> bool:
        """Wait until ``event`` (default: the next notify()) is set or the timeout; True
        if woken."""
        if event is None:
            event = self._event
        self.waiters += 1
        try:
            with trio.move_on_after(timeout_s):
                await event.wait()
                return True
            return False
        finally:
            self.waiters -= 1

    def statistics(self) -> dict[str, int]:
        return {"position": self.position, "waiters": self.waiters}
