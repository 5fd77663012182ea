"""federation/sender.py: the outbound queue against fake destinations: transactions
within the spec's limits, back-off and catch-up in order, nothing lost across a restart,
no task for a destination without work."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
import trio.testing

from pocketserver.federation.sender import FederationSender
from pocketserver.services.clock import Clock
from pocketserver.storage import outbox
from pocketserver.storage.database import Conn, Database
from tests.federation.fakes import FakeRemotes, poll


@asynccontextmanager
async def sender_over(
    db: Database, remotes: FakeRemotes, **kwargs: Any
) -> AsyncIterator[FederationSender]:
    sender = FederationSender(db, Clock(), remotes, "test.local", **kwargs)
    async with trio.open_nursery() as nursery:
        await nursery.start(sender.run)
        yield sender
        nursery.cancel_scope.cancel()


async def queue(db: Database, sender: FederationSender, dest: str, kind: str, items: list[Any]) -> None:
    def txn(conn: Conn) -> None:
        for item in items:
            sender.queue_in_txn(conn, [dest], kind, item)

    await db.write(txn)


def pdu(n: int) -> dict[str, Any]:
    return {"type": "m.room.message", "content": {"body": str(n)}, "depth": n}


def edu(n: int) -> dict[str, Any]:
    return {"edu_type": "m.presence", "content": {"push": [{"n": n}]}}


async def queued(db: Database, dest: str) -> int:
    return await db.read(outbox.count_queued, dest)


def bodies(remotes: FakeRemotes, dest: str) -> list[int]:
    return [int(p["content"]["body"]) for p in remotes.pdus(dest)]


async def test_a_backlog_goes_in_order_in_transactions_within_the_limits(tmp_path: Path) -> None:
    db = Database(tmp_path / "s.db")
    remotes = FakeRemotes()
    async with sender_over(db, remotes) as sender:
        remotes.hold = trio.Event()  # let everything queue up first
        await queue(db, sender, "a.remote", outbox.PDU, [pdu(i) for i in range(120)])
        await queue(db, sender, "a.remote", outbox.EDU, [edu(i) for i in range(150)])
        remotes.hold.set()
        await poll(lambda: _empty(db, "a.remote"))
    txns = remotes.transactions("a.remote")
    assert all(len(t.body["pdus"]) <= 50 and len(t.body["edus"]) <= 100 for t in txns)
    assert bodies(remotes, "a.remote") == list(range(120))
    assert [e["content"]["push"][0]["n"] for e in remotes.edus("a.remote")] == list(range(150))
    assert len({t.path for t in txns}) == len(txns)  # a fresh txnId each
    assert all(t.body["origin"] == "test.local" for t in txns)
    assert sender.statistics()["active_destinations"] == 0  # done: no task left
    db.close()


async def _empty(db: Database, dest: str) -> bool:
    return await queued(db, dest) == 0


async def test_a_down_destination_backs_off_then_catches_up_in_order(tmp_path: Path) -> None:
    db = Database(tmp_path / "s.db")
    remotes = FakeRemotes(down={"b.remote"})
    async with sender_over(db, remotes, first_retry_ms=60_000) as sender:
        await queue(db, sender, "b.remote", outbox.PDU, [pdu(0)])
        await remotes.wait_until(lambda: len(remotes.transactions("b.remote")) >= 1)
        backoffs: Callable[[], Any] = lambda: db.read(outbox.backoffs)  # noqa: E731
        await poll(lambda: _has(backoffs(), "b.remote"))
        interval = (await backoffs())["b.remote"][1]
        assert 48_000 <= interval <= 72_000  # the first interval, with its jitter
        # Other destinations are not held up by it.
        await queue(db, sender, "c.remote", outbox.PDU, [pdu(100)])
        await remotes.wait_until(lambda: bodies(remotes, "c.remote") == [100])
        # More is queued while it is down: nothing is sent before the back-off ends.
        tries = len(remotes.transactions("b.remote"))
        await queue(db, sender, "b.remote", outbox.PDU, [pdu(1), pdu(2)])
        await _settle(db)
        assert len(remotes.transactions("b.remote")) == tries
        # It comes back and contacts us: everything goes, in order.
        remotes.down.clear()
        sender.mark_alive("b.remote")
        await poll(lambda: _empty(db, "b.remote"))
        delivered = [
            int(p["content"]["body"]) for t in remotes.transactions("b.remote")[tries:]
            for p in t.body["pdus"]
        ]
        assert delivered == [0, 1, 2]
        await poll(lambda: _lacks(backoffs(), "b.remote"))
    db.close()


async def _has(mapping: Any, key: str) -> bool:
    return key in await mapping


async def _lacks(mapping: Any, key: str) -> bool:
    return key not in await mapping


async def _settle(db: Database) -> None:
    """Let the sender's tasks run what they would run now (a few writer round trips)."""
    for _ in range(5):
        await db.write(lambda conn: None)
        await trio.testing.wait_all_tasks_blocked()


async def test_the_back_off_ends_by_itself_and_grows(tmp_path: Path) -> None:
    db = Database(tmp_path / "s.db")
    remotes = FakeRemotes(down={"d.remote"})
    async with sender_over(db, remotes, first_retry_ms=20, max_retry_ms=80) as sender:
        await queue(db, sender, "d.remote", outbox.PDU, [pdu(0)])
        await remotes.wait_until(lambda: len(remotes.transactions("d.remote")) >= 4)
        intervals = (await db.read(outbox.backoffs))["d.remote"][1]
        assert intervals <= 80 * 1.2  # capped
        remotes.down.clear()
        await poll(lambda: _empty(db, "d.remote"))
        assert bodies(remotes, "d.remote")[-1] == 0
        # The same transaction was retried under the same txnId.
        assert len({t.path for t in remotes.transactions("d.remote")}) == 1
    db.close()


async def test_a_refused_transaction_is_dropped_after_a_few_tries(tmp_path: Path) -> None:
    db = Database(tmp_path / "s.db")
    remotes = FakeRemotes(refuse={"e.remote": 400})
    async with sender_over(db, remotes, first_retry_ms=10, max_retry_ms=20) as sender:
        await queue(db, sender, "e.remote", outbox.PDU, [pdu(0)])
        await poll(lambda: _empty(db, "e.remote"))
        assert len(remotes.transactions("e.remote")) == 3
        # The next item is sent normally once the remote takes it.
        del remotes.refuse["e.remote"]
        await queue(db, sender, "e.remote", outbox.PDU, [pdu(1)])
        await poll(lambda: _empty(db, "e.remote"))
        assert bodies(remotes, "e.remote")[-1] == 1
    db.close()


async def test_nothing_queued_is_lost_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    db = Database(path)
    remotes = FakeRemotes()
    remotes.hold = trio.Event()  # the destination never answers: we stop mid-transaction
    async with sender_over(db, remotes) as sender:
        await queue(db, sender, "f.remote", outbox.PDU, [pdu(i) for i in range(70)])
        await remotes.wait_until(lambda: len(remotes.transactions("f.remote")) == 1)
    db.close()

    db = Database(path)
    assert await queued(db, "f.remote") == 70
    remotes = FakeRemotes()
    async with sender_over(db, remotes):  # started again: it resumes on its own
        await poll(lambda: _empty(db, "f.remote"))
    assert bodies(remotes, "f.remote") == list(range(70))
    db.close()


async def test_a_failing_destination_keeps_only_the_newest_pdus(tmp_path: Path) -> None:
    db = Database(tmp_path / "s.db")
    remotes = FakeRemotes(down={"g.remote"})
    async with sender_over(db, remotes, backlog_cap=5, first_retry_ms=60_000) as sender:
        remotes.hold = trio.Event()
        await queue(db, sender, "g.remote", outbox.PDU, [pdu(i) for i in range(12)])
        await queue(db, sender, "g.remote", outbox.EDU, [edu(0)])
        remotes.hold.set()
        await poll(lambda: _has(db.read(outbox.backoffs), "g.remote"))
        assert await db.read(outbox.count_queued, "g.remote", outbox.PDU) == 5
        assert await db.read(outbox.count_queued, "g.remote", outbox.EDU) == 1
        remotes.down.clear()
        sender.mark_alive("g.remote")
        await poll(lambda: _empty(db, "g.remote"))
        assert bodies(remotes, "g.remote")[-5:] == [7, 8, 9, 10, 11]
    db.close()


async def test_no_work_no_task(tmp_path: Path) -> None:
    db = Database(tmp_path / "s.db")
    remotes = FakeRemotes()
    async with sender_over(db, remotes) as sender:
        await _settle(db)
        assert sender.statistics()["active_destinations"] == 0
        sender.mark_alive("h.remote")  # a server we owe nothing
        await _settle(db)
        assert remotes.requests == []
        assert sender.statistics()["active_destinations"] == 0
    db.close()
