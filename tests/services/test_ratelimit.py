"""Token buckets: burst, refill, retry_after_ms, bounded memory."""

from __future__ import annotations

import pytest

from pocketserver.config import RateLimit, RateLimitsConfig
from pocketserver.errors import LimitExceeded
from pocketserver.services.clock import Clock
from pocketserver.services.ratelimit import RateLimiter


class FakeClock(Clock):
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def test_burst_then_refill() -> None:
    clock = FakeClock()
    rl = RateLimiter(RateLimitsConfig(login=RateLimit(2.0, 3)), clock)
    for _ in range(3):
        rl.check("login", "1.2.3.4")
    with pytest.raises(LimitExceeded) as exc:
        rl.check("login", "1.2.3.4")
    assert exc.value.retry_after_ms == 500
    rl.check("login", "5.6.7.8")  # other keys have their own bucket
    clock.now += 0.5
    rl.check("login", "1.2.3.4")


def test_disabled() -> None:
    rl = RateLimiter(RateLimitsConfig(enabled=False, login=RateLimit(0.0, 0)))
    for _ in range(100):
        rl.check("login", "k")


def test_memory_is_bounded() -> None:
    clock = FakeClock()
    rl = RateLimiter(RateLimitsConfig(messages=RateLimit(1.0, 5)), clock, max_buckets=50)
    for i in range(1000):
        rl.check("messages", f"@u{i}:x")
    assert rl.statistics()["buckets"] <= 50
    # Idle buckets (refilled) drain away as traffic continues.
    clock.now += 100
    for i in range(20):
        rl.check("messages", f"@new{i}:x")
    assert rl.statistics()["buckets"] <= 30
