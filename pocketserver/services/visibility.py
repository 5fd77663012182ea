"""History visibility: which events of a room a user may see.

Client-server API, "Room History Visibility". For each event the rules read the room's
``m.room.history_visibility`` and the user's membership *at that event*; both are taken
from the room's history ordered by stream position (backfilled history sorts before the
rest), so one check over a page of events costs a few small queries. Backfilled events
carry no state here: before the first timeline event with state (this server's join),
the history visibility in the state before that event applies, unless backfill brought
an earlier change (server-server-api "Backfilling": the joined server applies the rules itself).

* ``world_readable``: everyone;
* ``shared``: members at the event, and anyone joined now;
* ``invited``: members or invitees at the event;
* ``joined``: members at the event.
A user always sees their own membership events, whatever the membership after them:
a kicked or banned user learns the kick's reason, and who did it, from that event.

Because both inputs change only at known stream positions, what a user may see of a room
is also a short list of stream-position ranges (:meth:`VisibilityChecker.visible_ranges`),
which lets a query count visible events without reading them (``/search``'s ``count``).
The ranges leave out the user's own membership events and the history_visibility
changes outside them (visible when the visibility before *or* after them allows),
which ``/search`` (message bodies only) never matches.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from pocketserver.storage import state as state_store
from pocketserver.storage.database import Conn
from pocketserver.storage.events import EventRecord

HV_KEY = ("m.room.history_visibility", "")
# Before every stream position (backfilled history counts down from -1).
_ORIGIN = -(2**62)


class VisibilityChecker:
    """Precomputed histories of one (room, user) pair."""

    def __init__(self, conn: Conn, room_id: str, user_id: str | None) -> None:
        self.user_id = user_id
        hv = state_store.state_history(conn, room_id, "m.room.history_visibility", "")
        if user_id is not None:
            mem = state_store.user_membership_history(conn, room_id, user_id)
        else:
            mem = []
        # History backfilled from another server sorts before this server's join, with
        # no state of its own, and the history_visibility event in force then is usually
        # not part of it (nor of the timeline: it came with the join's state): what
        # applied before the first timeline event with state applies to it too, unless
        # backfill brought a change. Looked up only where it can matter.
        if not hv or state_store.has_backfilled_history(conn, room_id):
            anchor = state_store.earliest_state_before(conn, room_id, *HV_KEY)
            if anchor is not None and anchor[1] is not None and (not hv or hv[0][0] > anchor[0]):
                hv.insert(0, (_ORIGIN, anchor[1]))
        self._hv_pos = [p for p, _ in hv]
        self._hv_val = [
            c.get("history_visibility") if isinstance(c.get("history_visibility"), str) else "shared"
            for _, c in hv
        ]
        self._mem_pos = [p for p, _ in mem]
        self._mem_val = [m for _, m in mem]
        self.current_membership = self._mem_val[-1] if self._mem_val else None

    def visibility_at(self, pos: int) -> str:
        # The visibility in force for an event is the state before it.
        i = bisect.bisect_left(self._hv_pos, pos)
        return str(self._hv_val[i - 1]) if i > 0 else "shared"

    def membership_at(self, pos: int) -> str | None:
        i = bisect.bisect_right(self._mem_pos, pos)
        return self._mem_val[i - 1] if i > 0 else None

    def can_see(self, rec: EventRecord) -> bool:
        pos = rec.stream_pos
        if pos is None or rec.rejected_reason is not None:
            return False
        if (
            self.user_id is not None
            and rec.event.type == "m.room.member"
            and rec.event.state_key == self.user_id
        ):
            return True
        if self._visible_at(pos):
            return True
        if rec.event.type == "m.room.history_visibility" and rec.event.state_key == "":
            # Seen if the visibility before *or* after it would allow it.
            after = rec.event.content.get("history_visibility")
            return self._allowed(after if isinstance(after, str) else "shared", pos)
        return False

    def _visible_at(self, pos: int) -> bool:
        return self._allowed(self.visibility_at(pos), pos)

    def _allowed(self, vis: str, pos: int) -> bool:
        if vis not in ("world_readable", "shared", "invited", "joined"):
            vis = "shared"  # unset or not understood
        if vis == "world_readable":
            return True
        if self.user_id is None:
            return False
        membership = self.membership_at(pos)
        if membership == "join":
            return True
        if vis == "shared" and self.current_membership == "join":
            return True
        if vis == "invited" and membership == "invite":
            return True
        return False

    def could_see_before(self, rec: EventRecord, cutoff: int) -> bool:
        """Whether the user could see ``rec`` before stream position ``cutoff`` (an
        erasure, account_deactivation.yaml: users who join after it are served redacted
        copies, those who had visibility before keep the event): the rules above, with
        the membership the user had at ``cutoff`` standing for "joined now", and a
        ``world_readable`` room counting only its members (anyone could have peeked)."""
        pos = rec.stream_pos
        if pos is None or self.user_id is None:
            return False
        vis = self.visibility_at(pos)
        if vis not in ("world_readable", "shared", "invited", "joined"):
            vis = "shared"  # unset or not understood
        membership = self.membership_at(pos)
        if membership == "join":
            return True
        if vis == "invited" and membership == "invite":
            return True
        return vis in ("shared", "world_readable") and self.membership_at(cutoff) == "join"

    def visible_ranges(self) -> list[tuple[int | None, int | None]]:
        """The half-open ranges ``[lo, hi)`` of stream positions whose (accepted) events
        this user may see, oldest first; ``None`` is unbounded. Equivalent to
        :meth:`can_see` for every event with a stream position."""
        # The visibility changes just after a history_visibility event (it applies to the
        # events after it), a membership exactly at its event.
        starts = sorted({p + 1 for p in self._hv_pos} | set(self._mem_pos))
        segments: list[tuple[int | None, int | None]] = []
        lo: int | None = None
        for start in starts:
            segments.append((lo, start))
            lo = start
        segments.append((lo, None))
        out: list[tuple[int | None, int | None]] = []
        for seg_lo, seg_hi in segments:
            probe = seg_lo if seg_lo is not None else (seg_hi - 1 if seg_hi is not None else 0)
            if not self._visible_at(probe):
                continue
            if out and out[-1][1] == seg_lo:
                out[-1] = (out[-1][0], seg_hi)
            else:
                out.append((seg_lo, seg_hi))
        return out

    def filter(self, records: Sequence[EventRecord]) -> list[EventRecord]:
        return [r for r in records if self.can_see(r)]

    @property
    def world_readable_now(self) -> bool:
        return bool(self._hv_val) and self._hv_val[-1] == "world_readable"


def filter_visible(
    conn: Conn, room_id: str, user_id: str | None, records: Sequence[EventRecord]
) -> list[EventRecord]:
    return VisibilityChecker(conn, room_id, user_id).filter(records)
