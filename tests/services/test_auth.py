"""Access-token lookups are cached, and every committed change to tokens or users' flags
is seen by the very next request."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from pocketserver.errors import MatrixError, UnknownToken
from pocketserver.services.auth import AuthService, hash_token
from pocketserver.services.clock import Clock
from pocketserver.storage import accounts
from pocketserver.storage.database import Database


def _setup(tmp_path: Path) -> tuple[Database, AuthService]:
    db = Database(tmp_path / "auth.db")
    db.write_sync(accounts.insert_user, "@a:test", None, 0)
    db.write_sync(accounts.insert_user, "@b:test", None, 0)
    db.write_sync(accounts.insert_access_token, hash_token("tok-a"), "@a:test", "DEVA", 0)
    db.write_sync(accounts.insert_access_token, hash_token("tok-b"), "@b:test", "DEVB", 0)
    return db, AuthService(db, Clock())


async def test_a_known_token_is_looked_up_once(tmp_path: Path) -> None:
    db, auth = _setup(tmp_path)
    try:
        reads = db.reads
        for _ in range(5):
            r = await auth.authenticate("tok-a")
            assert (r.user_id, r.device_id) == ("@a:test", "DEVA")
        assert db.reads == reads + 1
        # Unknown tokens are not remembered: one minted later works at once.
        with pytest.raises(UnknownToken):
            await auth.authenticate("tok-new")
        await db.write(accounts.insert_access_token, hash_token("tok-new"), "@a:test", "DEVC", 0)
        assert (await auth.authenticate("tok-new")).device_id == "DEVC"
    finally:
        db.close()


async def test_deleted_tokens_and_changed_users_are_seen_at_once(tmp_path: Path) -> None:
    db, auth = _setup(tmp_path)
    try:
        await auth.authenticate("tok-a")
        await auth.authenticate("tok-b")
        await db.write(lambda c: c.execute("DELETE FROM access_tokens WHERE device_id = 'DEVA'"))
        with pytest.raises(UnknownToken):
            await auth.authenticate("tok-a")
        assert (await auth.authenticate("tok-b")).user_id == "@b:test"
        await db.write(lambda c: c.execute("UPDATE users SET locked = 1 WHERE user_id = '@b:test'"))
        with pytest.raises(MatrixError) as e:
            await auth.authenticate("tok-b")
        assert e.value.errcode == "M_USER_LOCKED"
        await db.write(lambda c: c.execute("UPDATE users SET is_admin = 1, locked = 0"))
        assert (await auth.authenticate("tok-b")).is_admin
    finally:
        db.close()


async def test_unrelated_writes_keep_the_cache(tmp_path: Path) -> None:
    db, auth = _setup(tmp_path)
    try:
        gen = db.generation("auth")
        await auth.authenticate("tok-a")
        await db.write(accounts.set_displayname, "@a:test", "Alice")
        await db.write(accounts.insert_access_token, hash_token("tok-x"), "@a:test", "DEVX", 0)
        assert db.generation("auth") == gen
        reads = db.reads
        await auth.authenticate("tok-a")
        assert db.reads == reads
    finally:
        db.close()


async def test_a_lookup_that_races_a_logout_is_not_kept(tmp_path: Path) -> None:
    # The read sees the token, but a logout commits before the answer comes back: the
    # answer may serve the request in flight, never the next one.
    db, auth = _setup(tmp_path)
    try:
        real_read = db.read

        async def read_then_logout(fn, *args):  # type: ignore[no-untyped-def]
            result = await real_read(fn, *args)
            await db.write(lambda c: c.execute("DELETE FROM access_tokens WHERE device_id = 'DEVA'"))
            return result

        db.read = read_then_logout  # type: ignore[method-assign]
        assert (await auth.authenticate("tok-a")).user_id == "@a:test"
        db.read = real_read  # type: ignore[method-assign]
        with pytest.raises(UnknownToken):
            await auth.authenticate("tok-a")
    finally:
        db.close()


async def test_an_expired_cached_token_is_refused(tmp_path: Path) -> None:
    db, auth = _setup(tmp_path)
    try:
        now = Clock().time_ms()
        await db.write(accounts.insert_access_token, hash_token("tok-s"), "@a:test", "DEVS", 0, now + 300)
        assert (await auth.authenticate("tok-s")).device_id == "DEVS"
        await trio.sleep(0.4)
        with pytest.raises(UnknownToken) as e:
            await auth.authenticate("tok-s")
        assert e.value.extra["soft_logout"] is True
    finally:
        db.close()
