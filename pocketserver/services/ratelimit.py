"""Token-bucket rate limiting keyed by (action, requester).

Each action (``login``, ``registration``, ``messages``, ``to_device``, ``media_upload``)
has a bucket per key (a user ID, or the client's IP address for unauthenticated
requests), configured in ``[rate_limits]`` as ``per_second`` refill and ``burst`` size.
:meth:`RateLimiter.check` takes one token or raises :class:`LimitExceeded` with the time
until the next token.

Memory is bounded: at most ``max_buckets`` buckets are kept, least recently used first
out. A bucket evicted is one that has refilled (idle) or the oldest one; forgetting a
bucket only ever errs towards letting a request through.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable

from pocketserver.config import RateLimit, RateLimitsConfig
from pocketserver.errors import LimitExceeded
from pocketserver.services.clock import Clock

ACTIONS = ("login", "registration", "messages", "to_device", "media_upload")


class RateLimiter:
    def __init__(
        self, config: RateLimitsConfig, clock: Clock | None = None, *, max_buckets: int = 10_000
    ) -> None:
        self.enabled = config.enabled
        self.limits: dict[str, RateLimit] = {a: getattr(config, a) for a in ACTIONS}
        self.clock = clock or Clock()
        self.max_buckets = max_buckets
        # (action, key) -> (tokens, last refill time in monotonic seconds)
        self._buckets: OrderedDict[tuple[str, str], tuple[float, float]] = OrderedDict()
        self.rejected = 0
        # Users no limit applies to (application services' users, see
        # AppserviceRegistry.exempt_from_rate_limits); keys of per-user actions start
        # with the user ID ("@u:hs" or "@u:hs/DEVICE").
        self.exempt: Callable[[str], bool] | None = None

    def check(self, action: str, key: str, cost: float = 1.0) -> None:
        """Take ``cost`` tokens from the (action, key) bucket or raise LimitExceeded."""
        if not self.enabled:
            return
        if self.exempt is not None and key.startswith("@") and self.exempt(key.split("/", 1)[0]):
            return
        limit = self.limits[action]
        now = self.clock.monotonic()
        bk = (action, key)
        tokens, last = self._buckets.pop(bk, (float(limit.burst), now))
        tokens = min(float(limit.burst), tokens + (now - last) * limit.per_second)
        if tokens < cost:
            self._buckets[bk] = (tokens, now)
            self.rejected += 1
            wait_s = (cost - tokens) / limit.per_second if limit.per_second > 0 else 3600.0
            raise LimitExceeded(max(1, math.ceil(wait_s * 1000)))
        self._buckets[bk] = (tokens - cost, now)
        self._evict(now)

    def _evict(self, now: float) -> None:
        while len(self._buckets) > self.max_buckets:
            self._buckets.popitem(last=False)
        # Drop a few idle (full again) buckets from the old end on every call, so a
        # quiet server holds almost nothing.
        for _ in range(2):
            if not self._buckets:
                return
            (action, key), (tokens, last) = next(iter(self._buckets.items()))
            limit = self.limits[action]
            if tokens + (now - last) * limit.per_second >= limit.burst:
                del self._buckets[(action, key)]
            else:
                return

    def statistics(self) -> dict[str, int]:
        return {"buckets": len(self._buckets), "rejected": self.rejected}
