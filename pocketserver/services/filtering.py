"""Event filters (filter.yaml, definitions/sync_filter.yaml, room_event_filter.yaml,
event_filter.yaml): parse and validate a filter's JSON, then match events against it.

Pure: no storage, no I/O. /sync, /messages, /context and /search parse a filter once
(:meth:`Filter.parse` or :meth:`RoomEventFilter.parse`) and call ``matches`` per event.

Matching rules (client-server-api "Filtering"):

* ``types`` / ``not_types`` compare the event type, where ``*`` matches any sequence of
  characters; ``senders``/``not_senders`` and ``rooms``/``not_rooms`` compare exactly.
* An absent inclusion list includes everything; an empty one includes nothing; an
  exclusion wins over an inclusion.
* ``contains_url``: ``true`` keeps only events whose content has a ``url`` key,
  ``false`` keeps only events without one; absent does not filter.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pocketserver.services.params import MAX_INT


class InvalidFilter(ValueError):
    """The filter JSON does not have the spec's shape; the message says where."""


def _str_list(obj: Mapping[str, Any], key: str, where: str) -> tuple[str, ...] | None:
    v = obj.get(key)
    if v is None:
        return None
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise InvalidFilter(f"{where}{key} must be a list of strings")
    return tuple(v)


def _room_list(obj: Mapping[str, Any], key: str, where: str) -> tuple[str, ...] | None:
    v = _str_list(obj, key, where)
    if v is not None and not all(r.startswith("!") for r in v):
        raise InvalidFilter(f"{where}{key} must be a list of room IDs")
    return v


def _user_list(obj: Mapping[str, Any], key: str, where: str) -> tuple[str, ...] | None:
    # event_filter.yaml: senders are user IDs (pattern "^@").
    v = _str_list(obj, key, where)
    if v is not None and not all(u.startswith("@") for u in v):
        raise InvalidFilter(f"{where}{key} must be a list of user IDs")
    return v


def _opt_bool(obj: Mapping[str, Any], key: str, where: str) -> bool | None:
    v = obj.get(key)
    if v is None:
        return None
    if not isinstance(v, bool):
        raise InvalidFilter(f"{where}{key} must be a boolean")
    return v


def _object(obj: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    v = obj.get(key)
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise InvalidFilter(f"{where}{key} must be an object")
    return v


def _type_matcher(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    """One regex for a list of type patterns, ``*`` being the only wildcard."""
    if not patterns:
        return None
    parts = ["(?:" + ".*".join(re.escape(p) for p in pat.split("*")) + ")" for pat in patterns]
    return re.compile("|".join(parts), re.DOTALL)


@dataclass(frozen=True)
class EventFilter:
    """event_filter.yaml: for presence and global account data."""

    limit: int | None = None
    types: tuple[str, ...] | None = None
    not_types: tuple[str, ...] | None = None
    senders: tuple[str, ...] | None = None
    not_senders: tuple[str, ...] | None = None

    @classmethod
    def _fields(cls, obj: Mapping[str, Any], where: str) -> dict[str, Any]:
        limit = obj.get("limit")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
            raise InvalidFilter(f"{where}limit must be an integer")
        if limit is not None and not 0 <= limit <= MAX_INT:
            raise InvalidFilter(f"{where}limit must be between 0 and {MAX_INT}")
        return {
            "limit": limit,
            "types": _str_list(obj, "types", where),
            "not_types": _str_list(obj, "not_types", where),
            "senders": _user_list(obj, "senders", where),
            "not_senders": _user_list(obj, "not_senders", where),
        }

    @classmethod
    def parse(cls, obj: Any, where: str = "") -> EventFilter:
        if not isinstance(obj, dict):
            raise InvalidFilter(f"{where or 'filter'} must be an object")
        return cls(**cls._fields(obj, where))

    def __post_init__(self) -> None:
        object.__setattr__(self, "_types_re", _type_matcher(self.types or ()))
        object.__setattr__(self, "_not_types_re", _type_matcher(self.not_types or ()))

    def matches_type(self, event_type: str) -> bool:
        if self.not_types and self._not_types_re.fullmatch(event_type):  # type: ignore[attr-defined]
            return False
        return self.types is None or bool(
            self.types and self._types_re.fullmatch(event_type)  # type: ignore[attr-defined]
        )

    def _matches_type_sender(self, event_type: str, sender: str | None) -> bool:
        if not self.matches_type(event_type):
            return False
        if sender is not None:
            if self.not_senders and sender in self.not_senders:
                return False
            if self.senders is not None and sender not in self.senders:
                return False
        elif self.senders is not None:
            return False
        return True

    def matches(self, event: Mapping[str, Any]) -> bool:
        event_type = event.get("type")
        if not isinstance(event_type, str):
            return False
        sender = event.get("sender")
        return self._matches_type_sender(event_type, sender if isinstance(sender, str) else None)

    def filter(self, events: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        """The matching events, at most ``limit`` of them (the first ones)."""
        out = [e for e in events if self.matches(e)]
        return out if self.limit is None else out[: self.limit]


@dataclass(frozen=True)
class RoomEventFilter(EventFilter):
    """room_event_filter.yaml: timeline, state, ephemeral, room account data, /messages."""

    rooms: tuple[str, ...] | None = None
    not_rooms: tuple[str, ...] | None = None
    contains_url: bool | None = None
    lazy_load_members: bool = False
    include_redundant_members: bool = False
    unread_thread_notifications: bool = False

    @classmethod
    def parse(cls, obj: Any, where: str = "") -> RoomEventFilter:
        if not isinstance(obj, dict):
            raise InvalidFilter(f"{where or 'filter'} must be an object")
        return cls(
            **cls._fields(obj, where),
            rooms=_room_list(obj, "rooms", where),
            not_rooms=_room_list(obj, "not_rooms", where),
            contains_url=_opt_bool(obj, "contains_url", where),
            lazy_load_members=bool(_opt_bool(obj, "lazy_load_members", where)),
            include_redundant_members=bool(_opt_bool(obj, "include_redundant_members", where)),
            unread_thread_notifications=bool(
                _opt_bool(obj, "unread_thread_notifications", where)
            ),
        )

    def matches_room(self, room_id: str) -> bool:
        if self.not_rooms and room_id in self.not_rooms:
            return False
        return self.rooms is None or room_id in self.rooms

    def matches(self, event: Mapping[str, Any]) -> bool:
        if not super().matches(event):
            return False
        room_id = event.get("room_id")
        if isinstance(room_id, str) and not self.matches_room(room_id):
            return False
        if self.contains_url is not None:
            content = event.get("content")
            has_url = isinstance(content, dict) and "url" in content
            if has_url != self.contains_url:
                return False
        return True


@dataclass(frozen=True)
class RoomFilter:
    rooms: tuple[str, ...] | None = None
    not_rooms: tuple[str, ...] | None = None
    include_leave: bool = False
    timeline: RoomEventFilter = RoomEventFilter()
    state: RoomEventFilter = RoomEventFilter()
    ephemeral: RoomEventFilter = RoomEventFilter()
    account_data: RoomEventFilter = RoomEventFilter()

    @classmethod
    def parse(cls, obj: Mapping[str, Any], where: str = "room.") -> RoomFilter:
        return cls(
            rooms=_room_list(obj, "rooms", where),
            not_rooms=_room_list(obj, "not_rooms", where),
            include_leave=bool(_opt_bool(obj, "include_leave", where)),
            timeline=RoomEventFilter.parse(_object(obj, "timeline", where), where + "timeline."),
            state=RoomEventFilter.parse(_object(obj, "state", where), where + "state."),
            ephemeral=RoomEventFilter.parse(_object(obj, "ephemeral", where), where + "ephemeral."),
            account_data=RoomEventFilter.parse(
                _object(obj, "account_data", where), where + "account_data."
            ),
        )

    def matches_room(self, room_id: str) -> bool:
        """Applied before the timeline/state/ephemeral/account_data filters."""
        if self.not_rooms and room_id in self.not_rooms:
            return False
        return self.rooms is None or room_id in self.rooms


@dataclass(frozen=True)
class Filter:
    """sync_filter.yaml: the whole filter a client uploads or passes to /sync."""

    event_fields: tuple[str, ...] | None = None
    event_format: str = "client"
    presence: EventFilter = EventFilter()
    account_data: EventFilter = EventFilter()
    room: RoomFilter = RoomFilter()

    @classmethod
    def parse(cls, obj: Any) -> Filter:
        if not isinstance(obj, dict):
            raise InvalidFilter("the filter must be a JSON object")
        event_format = obj.get("event_format", "client")
        if event_format not in ("client", "federation"):
            raise InvalidFilter("event_format must be 'client' or 'federation'")
        fields = _str_list(obj, "event_fields", "")
        if fields is not None and any(not f for f in fields):
            raise InvalidFilter("event_fields entries must not be empty")
        return cls(
            event_fields=fields,
            event_format=event_format,
            presence=EventFilter.parse(_object(obj, "presence", ""), "presence."),
            account_data=EventFilter.parse(_object(obj, "account_data", ""), "account_data."),
            room=RoomFilter.parse(_object(obj, "room", "")),
        )

    @property
    def lazy_load_members(self) -> bool:
        return self.room.state.lazy_load_members

    def matches_event(self, event: Mapping[str, Any]) -> bool:
        """Whether a room timeline event passes the room and timeline filters."""
        room_id = event.get("room_id")
        if isinstance(room_id, str) and not self.room.matches_room(room_id):
            return False
        return self.room.timeline.matches(event)

    def project(self, event: dict[str, Any]) -> dict[str, Any]:
        """Apply ``event_fields`` to a client event (all fields when absent)."""
        return apply_event_fields(event, self.event_fields)


def _split_path(path: str) -> list[str]:
    """A dot-separated property path (appendices), where ``\\.`` is a literal dot."""
    parts: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(path):
        c = path[i]
        if c == "\\" and i + 1 < len(path) and path[i + 1] in ".\\":
            cur.append(path[i + 1])
            i += 2
            continue
        if c == ".":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


def apply_event_fields(event: dict[str, Any], fields: tuple[str, ...] | None) -> dict[str, Any]:
    """Keep only the listed dot-separated paths of ``event`` (a new dict)."""
    if fields is None:
        return event
    out: dict[str, Any] = {}
    for f in fields:
        parts = _split_path(f)
        src: Any = event
        for p in parts:
            if not isinstance(src, dict) or p not in src:
                break
            src = src[p]
        else:
            dst = out
            for p in parts[:-1]:
                dst = dst.setdefault(p, {})
                if not isinstance(dst, dict):  # pragma: no cover - same source shape
                    break
            else:
                dst[parts[-1]] = src
    return out
