"""The notifier never loses a wake-up that lands between a sync's read and its wait."""

from __future__ import annotations

import trio

from pocketserver.services.notifier import Notifier


async def test_a_notify_between_read_and_wait_is_not_lost(autojump_clock: trio.abc.Clock) -> None:
    n = Notifier()
    before_read = n.change_event()
    n.notify(5)  # a write commits while the waiter is still building its response
    t0 = trio.current_time()
    assert await n.wait_for_change(30.0, before_read) is True
    assert trio.current_time() - t0 < 1.0  # returned at once, not after the long-poll
    assert n.position == 5


async def test_wait_times_out_without_news(autojump_clock: trio.abc.Clock) -> None:
    n = Notifier()
    assert await n.wait_for_change(30.0, n.change_event()) is False
    assert n.statistics()["waiters"] == 0


async def test_a_notify_from_a_worker_thread_wakes_the_waiter() -> None:
    """Code inside a database transaction runs in a worker thread (typing expiry during
    /sync's read did): its notify must wake a waiting /sync, not raise."""
    n = Notifier()
    woken: list[bool] = []

    async def waiter(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        event = n.change_event()
        task_status.started()
        woken.append(await n.wait_for_change(30.0, event))

    async with trio.open_nursery() as nursery:
        await nursery.start(waiter)
        await trio.to_thread.run_sync(n.notify, 7)
    assert woken == [True]
    assert n.position == 7
