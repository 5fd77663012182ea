"""Power levels: parsing ``m.room.power_levels`` content and answering "what level?".

Owns the per-room-version rules for reading power levels:

- the defaults when a key (or the whole event) is missing — spec:
  shared/spec/data/event-schemas/schema/m.room.power_levels.yaml and
  server-server-api.md "Definitions" (invite 0; kick, ban, redact 50; events_default 0;
  state_default 50; users_default 0; notifications.room 50; with no event at all the
  creator has 100 and everybody else 0);
- value formats: integers everywhere; before v10 also strings holding an integer
  (rooms/fragments/v1-stringy-power-levels.md); in v1-v5, whose canonical JSON is not
  enforced, also floats truncated towards zero (v1-floaty-power-levels.md);
- who the room creators are: ``content.creator`` of the create event (v1-v10), its
  ``sender`` (v11+), plus ``content.additional_creators`` (v12); in v12 creators have
  an infinitely high power level (rooms/v12.md) and may not be listed in ``users``.

Lookups are lazy: a room with 10,000 entries under ``users`` costs one dictionary
lookup per question, never a parse of the whole object. State resolution relies on
that.

Pure: no I/O. Knows nothing of storage or of how the events were obtained.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from pocketserver.protocol.events import Event
from pocketserver.protocol.room_versions import RoomVersion

#: The level of a room creator in room version 12: "infinitely high". Every valid
#: power level lies within +-(2**53 - 1) (canonical JSON, enforced since v6), so
#: 2**53 is above all of them. (Synapse uses the same value, which keeps the
#: reverse topological power ordering identical across implementations.)
CREATOR_POWER_LEVEL = 2**53

#: Keys of power-levels content holding a single level, with their defaults.
LEVEL_DEFAULTS: Mapping[str, int] = {
    "users_default": 0,
    "events_default": 0,
    "state_default": 50,
    "ban": 50,
    "kick": 50,
    "redact": 50,
    "invite": 0,
}

#: Keys holding an object of levels.
LEVEL_MAPS = ("events", "notifications", "users")

#: Default of ``notifications.room``.
NOTIFICATIONS_ROOM_DEFAULT = 50

# v1-v9 "stringy" levels: optional surrounding whitespace, one optional sign, ASCII
# digits (leading zeroes allowed). Python's int() alone would also accept "1_000" and
# non-ASCII digits, which the spec does not.
_STRINGY_INT = re.compile(r"\s*[+-]?[0-9]+\s*")


class InvalidPowerLevel(ValueError):
    """A power level value does not have a form the room version accepts."""


def parse_level(value: Any, rv: RoomVersion) -> int:
    """One power level value as an integer, per the room version's accepted forms.

    Raises :class:`InvalidPowerLevel` for anything else (booleans, objects, floats in
    v6+, strings in v10+, non-finite floats).
    """
    if type(value) is int:
        return value
    if rv.enforce_int_power_levels:
        raise InvalidPowerLevel(f"power level must be an integer, not {value!r}")
    if isinstance(value, str):
        # v1-v9: strings representing an integer (v1-stringy-power-levels.md).
        if _STRINGY_INT.fullmatch(value):
            return int(value.strip())
        raise InvalidPowerLevel(f"power level string is not an integer: {value!r}")
    if type(value) is float and not rv.strict_canonicaljson:
        # v1-v5: floats are truncated at the decimal point; infinities and NaN are
        # rejected (v1-floaty-power-levels.md).
        if not math.isfinite(value):
            raise InvalidPowerLevel(f"power level is not finite: {value!r}")
        return math.trunc(value)
    raise InvalidPowerLevel(f"not a power level: {value!r}")


def is_level(value: Any, rv: RoomVersion) -> bool:
    try:
        parse_level(value, rv)
    except InvalidPowerLevel:
        return False
    return True


def room_creators(create_event: Event | None, rv: RoomVersion) -> frozenset[str]:
    """The room creators named by the create event.

    v1-v10: ``content.creator``; v11: the ``sender``; v12: the ``sender`` plus every
    string of ``content.additional_creators``.
    """
    if create_event is None:
        return frozenset()
    if not rv.implicit_room_creator:
        creator = create_event.content.get("creator")
        return frozenset((creator,)) if isinstance(creator, str) else frozenset()
    creators = {create_event.sender}
    if rv.privileged_creators:
        extra = create_event.content.get("additional_creators")
        if isinstance(extra, list):
            creators.update(u for u in extra if isinstance(u, str))
    return frozenset(creators)


class PowerLevels:
    """The power levels in force: a lazy view over one ``m.room.power_levels``
    content (or its absence) together with the room's creators.

    Values that the room version does not accept are read as the key's default; the
    auth rules reject such power-levels events before they can enter the state (v10+),
    and earlier room versions never validated them, so a default is the kindest reading.
    """

    __slots__ = ("content", "rv", "creators", "privileged_creators", "has_event")

    content: Mapping[str, Any]
    rv: RoomVersion
    creators: frozenset[str]
    privileged_creators: frozenset[str]
    has_event: bool

    def __init__(
        self,
        content: Mapping[str, Any] | None,
        rv: RoomVersion,
        creators: frozenset[str] = frozenset(),
    ) -> None:
        self.has_event = content is not None
        self.content = content if content is not None else {}
        self.rv = rv
        self.creators = creators
        # v12: creators have infinite power whatever the power-levels event says.
        self.privileged_creators = creators if rv.privileged_creators else frozenset()

    @classmethod
    def from_events(
        cls, create_event: Event | None, power_levels_event: Event | None, rv: RoomVersion
    ) -> PowerLevels:
        return cls(
            power_levels_event.content if power_levels_event is not None else None,
            rv,
            room_creators(create_event, rv),
        )

    # -- single levels -----------------------------------------------------------

    def _level(self, key: str, default: int) -> int:
        value = self.content.get(key)
        if value is None:
            return default
        try:
            return parse_level(value, self.rv)
        except InvalidPowerLevel:
            return default

    def _map_level(self, map_key: str, key: str) -> int | None:
        m = self.content.get(map_key)
        if not isinstance(m, Mapping):
            return None
        value = m.get(key)
        if value is None:
            return None
        try:
            return parse_level(value, self.rv)
        except InvalidPowerLevel:
            return None

    @property
    def users_default(self) -> int:
        return self._level("users_default", 0)

    @property
    def events_default(self) -> int:
        return self._level("events_default", 0)

    @property
    def state_default(self) -> int:
        return self._level("state_default", 50)

    @property
    def ban(self) -> int:
        return self._level("ban", 50)

    @property
    def kick(self) -> int:
        return self._level("kick", 50)

    @property
    def redact(self) -> int:
        return self._level("redact", 50)

    @property
    def invite(self) -> int:
        return self._level("invite", 0)

    def named_level(self, name: str) -> int:
        """One of ``users_default``, ``events_default``, ``state_default``, ``ban``,
        ``kick``, ``redact``, ``invite``."""
        return self._level(name, LEVEL_DEFAULTS[name])

    # -- users -------------------------------------------------------------------

    def user_level(self, user_id: str) -> int:
        """The power level of ``user_id``.

        v12 creators: :data:`CREATOR_POWER_LEVEL`. Otherwise ``users[user_id]``, else
        ``users_default``; with no power-levels event at all, 100 for the creator and 0
        for everybody else.
        """
        if user_id in self.privileged_creators:
            return CREATOR_POWER_LEVEL
        if not self.has_event:
            return 100 if user_id in self.creators else 0
        level = self._map_level("users", user_id)
        if level is not None:
            return level
        return self.users_default

    # -- events ------------------------------------------------------------------

    def send_level(self, event_type: str, is_state: bool) -> int:
        """The *required power level* to send an event of this type: ``events[type]``,
        else ``state_default`` / ``events_default``."""
        level = self._map_level("events", event_type)
        if level is not None:
            return level
        return self.state_default if is_state else self.events_default

    def notification_level(self, key: str) -> int:
        """The level for a notification key (``room`` defaults to 50)."""
        level = self._map_level("notifications", key)
        if level is not None:
            return level
        return NOTIFICATIONS_ROOM_DEFAULT if key == "room" else 50

    def __repr__(self) -> str:
        return f"<PowerLevels has_event={self.has_event} creators={sorted(self.creators)}>"
