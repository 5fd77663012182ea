"""Password hashing: argon2id hashes that verify, on a thread limiter of their own."""

from __future__ import annotations

import threading

import pytest
import trio

from pocketserver.config import ConfigError, config_from_dict
from pocketserver.services import passwords
from pocketserver.services.passwords import PasswordHasher


class CountingCheck:
    """Stands in for the argon2 check: counts how many run at once, and holds each one
    until ``release`` is set (bounded), so the test sees the limiter's queue."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active = 0
        self.peak = 0
        self.calls = 0
        self.release = threading.Event()

    def __call__(self, password: str, stored: str | None) -> bool:
        with self.lock:
            self.active += 1
            self.calls += 1
            self.peak = max(self.peak, self.active)
        try:
            self.release.wait(30)
        finally:
            with self.lock:
                self.active -= 1
        return password == "right"


async def wait_until(predicate: object, deadline_s: float = 10.0) -> None:
    with trio.fail_after(deadline_s):
        while not predicate():  # type: ignore[operator]
            await trio.sleep(0.002)


async def test_hashes_never_run_more_than_the_limit_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = CountingCheck()
    monkeypatch.setattr(passwords, "check_password_sync", fake)
    hasher = PasswordHasher(threads=2)
    answers: list[bool] = []

    async def attempt(i: int) -> None:
        answers.append(await hasher.check("right" if i == 0 else f"wrong{i}", "stored-hash"))

    async with trio.open_nursery() as nursery:
        for i in range(12):
            nursery.start_soon(attempt, i)
        await wait_until(lambda: fake.active == 2 and hasher.statistics()["waiting"] == 10)
        assert hasher.statistics() == {"threads": 2, "hashing": 2, "waiting": 10}
        fake.release.set()
    assert fake.peak == 2
    assert fake.calls == 12
    assert sorted(answers) == [False] * 11 + [True]
    assert hasher.statistics() == {"threads": 2, "hashing": 0, "waiting": 0}


async def test_a_missing_hash_is_refused_without_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = CountingCheck()
    monkeypatch.setattr(passwords, "check_password_sync", fake)
    hasher = PasswordHasher()
    assert await hasher.check("right", None) is False
    assert await hasher.check("right", "") is False
    assert fake.calls == 0


async def test_real_argon2_hashes_verify() -> None:
    hasher = PasswordHasher(threads=1)
    stored = await hasher.hash("correct horse")
    assert stored.startswith("$argon2id$")
    assert await hasher.check("correct horse", stored) is True
    assert await hasher.check("wrong horse", stored) is False
    assert await hasher.check("correct horse", "not a hash") is False


def test_the_limit_is_configured_and_checked() -> None:
    assert config_from_dict({}).accounts.password_hash_threads == 1
    cfg = config_from_dict({"accounts": {"password_hash_threads": 2}})
    assert cfg.accounts.password_hash_threads == 2
    for bad in (0, 65):
        with pytest.raises(ConfigError, match="accounts.password_hash_threads"):
            config_from_dict({"accounts": {"password_hash_threads": bad}})
