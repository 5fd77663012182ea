"""services/visibility.py: the stream-position ranges a user may see agree with the
event-by-event check, for random histories of visibility and membership."""

from __future__ import annotations

import random
from typing import Any

from pocketserver.services.visibility import VisibilityChecker

VISIBILITIES = ("world_readable", "shared", "invited", "joined")
MEMBERSHIPS = ("join", "leave", "invite", "ban", "knock")


def _checker(rng: random.Random, user: str | None) -> VisibilityChecker:
    """A checker over made-up histories (no database: the fields the constructor fills)."""
    c = object.__new__(VisibilityChecker)
    positions = sorted(rng.sample(range(1, 60), rng.randint(0, 12)))
    hv = [p for p in positions if rng.random() < 0.4]
    mem = [p for p in positions if p not in hv]
    c.user_id = user
    c._hv_pos = hv
    c._hv_val = [rng.choice(VISIBILITIES) for _ in hv]
    c._mem_pos = mem if user is not None else []
    c._mem_val = [rng.choice(MEMBERSHIPS) for _ in c._mem_pos]
    c.current_membership = c._mem_val[-1] if c._mem_val else None
    return c


def _in_ranges(pos: int, ranges: list[tuple[int | None, int | None]]) -> bool:
    return any((lo is None or pos >= lo) and (hi is None or pos < hi) for lo, hi in ranges)


def test_visible_ranges_match_visible_at() -> None:
    rng = random.Random(7)
    for _ in range(500):
        checker = _checker(rng, rng.choice(["@u:test", None]))
        ranges = checker.visible_ranges()
        for pos in range(-5, 70):
            assert _in_ranges(pos, ranges) == checker._visible_at(pos), (pos, ranges)
        # Ranges are ordered, disjoint and not adjacent (merged).
        for (_, hi), (lo, _) in zip(ranges, ranges[1:], strict=False):
            assert hi is not None and lo is not None and hi < lo


def _fixed(hv: list[tuple[int, str]], mem: list[tuple[int, str]]) -> VisibilityChecker:
    c = object.__new__(VisibilityChecker)
    c.user_id = "@u:test"
    c._hv_pos, c._hv_val = [p for p, _ in hv], [v for _, v in hv]
    c._mem_pos, c._mem_val = [p for p, _ in mem], [m for _, m in mem]
    c.current_membership = c._mem_val[-1] if c._mem_val else None
    return c


class _Rec:
    def __init__(self, pos: int) -> None:
        self.stream_pos = pos


def test_could_see_before_an_erasure() -> None:
    """Who keeps an erased sender's message at 10 (erasure at 20): members at the
    message, and in a "shared" room members at the erasure; not later joiners."""
    msg: Any = _Rec(10)
    shared = [(1, "shared")]
    assert _fixed(shared, [(5, "join")]).could_see_before(msg, 20)
    assert _fixed(shared, [(15, "join")]).could_see_before(msg, 20)
    assert not _fixed(shared, [(25, "join")]).could_see_before(msg, 20)
    assert not _fixed(shared, [(15, "join"), (18, "leave"), (25, "join")]).could_see_before(msg, 20)
    joined = [(1, "joined")]
    assert _fixed(joined, [(5, "join")]).could_see_before(msg, 20)
    assert not _fixed(joined, [(15, "join")]).could_see_before(msg, 20)
    assert _fixed([(1, "invited")], [(5, "invite"), (15, "join")]).could_see_before(msg, 20)
    # World-readable: anyone could have peeked, so only membership counts.
    assert not _fixed([(1, "world_readable")], [(25, "join")]).could_see_before(msg, 20)
