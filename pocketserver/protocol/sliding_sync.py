"""Simplified sliding sync (MSC4186): the request's shapes and the pure rules over them.

shared/spec/proposals/4186-simplified-sliding-sync.md. This module owns what needs no
storage: parsing and validating a request body, combining the room configs of the rules
a room matches ("Combining room configs"), matching state keys against a
``required_state`` (with ``$LAZY``, ``$ME`` and ``*``), evaluating a list's
``SlidingRoomFilter`` against facts the caller looked up, ordering rooms and slicing a
list's ranges, and the ``pos`` token. It never knows how those facts are stored.

Both request dialects are accepted, since clients speak both:

* the proposal's text: ``range: [a, b]``, ``required_state: {include, exclude,
  lazy_members}``, ``is_invited``, ``pos``/``timeout`` in the body;
* Synapse's experimental one that matrix-js-sdk and Element X send: ``ranges: [[a, b],
  ...]``, ``required_state: [[type, state_key], ...]`` where ``state_key`` may be
  ``$LAZY`` (members of the timeline's senders), ``$ME`` (the user) or ``*``, ``type``
  may be ``*``, and ``is_invite``; ``pos``/``timeout`` in the query string.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

WILDCARD = "*"
LAZY = "$LAZY"
ME = "$ME"
MEMBER = "m.room.member"

MAX_LISTS = 100
MAX_SUBSCRIPTIONS = 100
MAX_RANGES = 100
MAX_REQUIRED_STATE = 1000
MAX_INT = 2**53 - 1
# "Opaque identifiers" (appendices): list keys.
_OPAQUE = re.compile(r"[0-9A-Za-z._~-]{1,255}")

# Event types that move a room's ``bump_stamp`` (the proposal's list, plus what Synapse
# counts: polls and beacons under their unstable names too).
BUMP_EVENT_TYPES = (
    "m.room.create",
    "m.room.message",
    "m.room.encrypted",
    "m.sticker",
    "m.call.invite",
    "m.poll.start",
    "org.matrix.msc3381.poll.start",
    "m.beacon_info",
    "org.matrix.msc3672.beacon_info",
)


class SlidingSyncRequestError(ValueError):
    """The request body does not have the proposal's shape. ``bad_json``: a field has the
    wrong JSON type (M_BAD_JSON); otherwise a value is out of bounds (M_INVALID_PARAM)."""

    def __init__(self, message: str, *, bad_json: bool = False) -> None:
        super().__init__(message)
        self.bad_json = bad_json


# -- required_state -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequiredState:
    """One rule's ``required_state``: (type, state_key) pairs where either may be ``*``,
    pairs to leave out, and whether members are lazy-loaded. ``$ME`` is kept as written
    and resolved per user in :meth:`matches`."""

    include: frozenset[tuple[str, str]] = frozenset()
    exclude: frozenset[tuple[str, str]] = frozenset()
    lazy_members: bool = False

    def matches(self, etype: str, state_key: str, user_id: str) -> bool:
        return _matches_any(self.include, etype, state_key, user_id) and not _matches_any(
            self.exclude, etype, state_key, user_id
        )


def _matches_any(pairs: frozenset[tuple[str, str]], etype: str, state_key: str, user_id: str) -> bool:
    if not pairs:
        return False
    if (etype, state_key) in pairs or (WILDCARD, WILDCARD) in pairs:
        return True
    if (etype, WILDCARD) in pairs or (WILDCARD, state_key) in pairs:
        return True
    return state_key == user_id and ((etype, ME) in pairs or (WILDCARD, ME) in pairs)


@dataclass(frozen=True, slots=True)
class RoomConfig:
    """What to send for a room: the newest ``timeline_limit`` events and the state any of
    ``required_state`` matches (a union: "Combining room configs")."""

    timeline_limit: int
    required_state: tuple[RequiredState, ...] = ()

    def wants_state(self, etype: str, state_key: str, user_id: str) -> bool:
        return any(rs.matches(etype, state_key, user_id) for rs in self.required_state)

    @property
    def lazy_members(self) -> bool:
        """Lazy members apply unless another part already returns every member."""
        return any(rs.lazy_members for rs in self.required_state) and not any(
            _matches_any(rs.include, MEMBER, WILDCARD, "") and not rs.exclude for rs in self.required_state
        )

    def key_plan(self, user_id: str) -> tuple[list[tuple[str, str]], list[str]] | None:
        """How to read the state this config can return without reading all of it:
        (exact keys, types wanted with any state key), or None when some part asks for
        every type (only reading all the room's state will do)."""
        exact: set[tuple[str, str]] = set()
        types: set[str] = set()
        for rs in self.required_state:
            for t, s in rs.include:
                if t == WILDCARD:
                    return None
                if s == WILDCARD:
                    types.add(t)
                else:
                    exact.add((t, user_id if s == ME else s))
        return sorted(k for k in exact if k[0] not in types), sorted(types)

    def expands(self, old: RoomConfig, user_id: str, etype: str, state_key: str) -> bool:
        """Whether this config returns a key the ``old`` one did not."""
        return self.wants_state(etype, state_key, user_id) and not old.wants_state(etype, state_key, user_id)


def combine(configs: Iterable[RoomConfig]) -> RoomConfig:
    """The superset of several room configs: the largest timeline, every state part."""
    configs = list(configs)
    limit = max((c.timeline_limit for c in configs), default=0)
    parts: dict[RequiredState, None] = {}
    for c in configs:
        for rs in c.required_state:
            parts.setdefault(rs, None)
    ordered = tuple(sorted(parts, key=lambda rs: (sorted(rs.include), sorted(rs.exclude), rs.lazy_members)))
    return RoomConfig(limit, ordered)


# -- filters ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RoomFilters:
    """``SlidingRoomFilter``: each field None when absent (no filtering on it)."""

    is_dm: bool | None = None
    is_encrypted: bool | None = None
    is_invite: bool | None = None
    room_types: tuple[str | None, ...] | None = None
    not_room_types: tuple[str | None, ...] | None = None
    spaces: tuple[str, ...] | None = None
    tags: tuple[str, ...] | None = None
    not_tags: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class RoomFacts:
    """What the filters ask about one room, looked up by the caller."""

    room_id: str
    membership: str
    is_dm: bool = False
    is_encrypted: bool = False
    room_type: str | None = None
    tags: frozenset[str] = frozenset()


def filter_matches(f: RoomFilters, facts: RoomFacts, space_children: frozenset[str] | None = None) -> bool:
    """Whether a room passes a list's filters. ``space_children``: the rooms the
    filter's joined spaces name in their ``m.space.child`` state (needed only when
    ``spaces`` is set; subspaces are not followed)."""
    if f.is_dm is not None and facts.is_dm != f.is_dm:
        return False
    if f.is_encrypted is not None and facts.is_encrypted != f.is_encrypted:
        return False
    if f.is_invite is not None and (facts.membership == "invite") != f.is_invite:
        return False
    if f.not_room_types is not None and facts.room_type in f.not_room_types:
        return False
    if f.room_types is not None and facts.room_type not in f.room_types:
        return False
    if f.spaces is not None and facts.room_id not in (space_children or frozenset()):
        return False
    if f.not_tags is not None and facts.tags.intersection(f.not_tags):
        return False
    return not (f.tags is not None and not facts.tags.intersection(f.tags))


# -- lists --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListConfig:
    ranges: tuple[tuple[int, int], ...] | None  # None: the whole list
    config: RoomConfig
    filters: RoomFilters = RoomFilters()


def sort_rooms(stamps: Mapping[str, int]) -> list[str]:
    """Room IDs by recent activity, newest first; ties broken by room ID so that the
    order is stable from one request to the next."""
    return sorted(stamps, key=lambda r: (-stamps[r], r))


def select_ranges(ordered: Sequence[str], ranges: tuple[tuple[int, int], ...] | None) -> list[str]:
    """The rooms of an ordered list that fall in any of the inclusive ranges."""
    if ranges is None:
        return list(ordered)
    picked: dict[str, None] = {}
    for start, end in ranges:
        for room_id in ordered[start : end + 1]:
            picked.setdefault(room_id, None)
    return list(picked)


# -- extensions ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExtensionConfig:
    """One extension's request: ``enabled``; ``lists``/``rooms`` scope the per-room ones
    (None: every list, every subscription); ``since``/``limit`` for to-device."""

    enabled: bool = False
    lists: tuple[str, ...] | None = None
    rooms: tuple[str, ...] | None = None
    since: str | None = None
    limit: int | None = None

    def in_scope(self, room_id: str, room_lists: Iterable[str], subscribed: bool) -> bool:
        """Whether a room (with the lists it is in, and whether it is subscribed to) is
        one this extension reports on (MSC3959/3960/3961 ``lists``/``rooms``)."""
        lists_ok = (
            any(k in self.lists or WILDCARD in self.lists for k in room_lists)
            if self.lists is not None
            else any(True for _ in room_lists)
        )
        if self.rooms is not None:
            rooms_ok = room_id in self.rooms or (WILDCARD in self.rooms and subscribed)
        else:
            rooms_ok = subscribed
        return lists_ok or rooms_ok


EXTENSIONS = ("to_device", "e2ee", "account_data", "receipts", "typing")


@dataclass(frozen=True, slots=True)
class Request:
    conn_id: str = ""
    pos: str | None = None
    timeout_ms: int = 0
    set_presence: str | None = None
    lists: dict[str, ListConfig] = field(default_factory=dict)
    subscriptions: dict[str, RoomConfig] = field(default_factory=dict)
    extensions: dict[str, ExtensionConfig] = field(default_factory=dict)


def parse_request(body: Any, *, pos: str | None = None, timeout_ms: int | None = None) -> Request:
    """The request body (and the query string's ``pos``/``timeout``, which win), checked."""
    if not isinstance(body, dict):
        raise SlidingSyncRequestError("The body must be a JSON object", bad_json=True)
    conn_id = _opt_str(body, "conn_id", "") or ""
    if len(conn_id) > 255:
        raise SlidingSyncRequestError("conn_id is too long")
    body_pos = _opt_str(body, "pos", "")
    body_timeout = _opt_int(body, "timeout", "")
    set_presence = _opt_str(body, "set_presence", "")
    if set_presence not in (None, "online", "offline", "unavailable"):
        raise SlidingSyncRequestError("set_presence must be online, offline or unavailable")
    lists_raw = _opt_obj(body, "lists", "")
    if len(lists_raw) > MAX_LISTS:
        raise SlidingSyncRequestError(f"At most {MAX_LISTS} lists")
    lists: dict[str, ListConfig] = {}
    for key, raw in lists_raw.items():
        if not _OPAQUE.fullmatch(key):
            raise SlidingSyncRequestError(f"Invalid list key {key[:40]!r}")
        lists[key] = _parse_list(raw, f"lists.{key}.")
    subs_raw = _opt_obj(body, "room_subscriptions", "")
    if len(subs_raw) > MAX_SUBSCRIPTIONS:
        raise SlidingSyncRequestError(f"At most {MAX_SUBSCRIPTIONS} room subscriptions")
    subs: dict[str, RoomConfig] = {}
    for room_id, raw in subs_raw.items():
        if not room_id.startswith("!"):
            raise SlidingSyncRequestError(f"Invalid room ID {room_id[:40]!r} in room_subscriptions")
        if not isinstance(raw, dict):
            raise SlidingSyncRequestError(f"room_subscriptions.{room_id} must be an object", bad_json=True)
        subs[room_id] = _parse_room_config(raw, f"room_subscriptions.{room_id}.")
    ext_raw = _opt_obj(body, "extensions", "")
    extensions: dict[str, ExtensionConfig] = {}
    for name, raw in ext_raw.items():
        if name not in EXTENSIONS:
            continue  # extensions this server does not have are left out of the answer
        if not isinstance(raw, dict):
            raise SlidingSyncRequestError(f"extensions.{name} must be an object", bad_json=True)
        extensions[name] = _parse_extension(raw, f"extensions.{name}.")
    final_pos = pos if pos is not None else body_pos
    if final_pos == "":
        final_pos = None
    final_timeout = timeout_ms if timeout_ms is not None else body_timeout
    return Request(
        conn_id=conn_id,
        pos=final_pos,
        timeout_ms=final_timeout or 0,
        set_presence=set_presence,
        lists=lists,
        subscriptions=subs,
        extensions=extensions,
    )


def _parse_list(raw: Any, where: str) -> ListConfig:
    if not isinstance(raw, dict):
        raise SlidingSyncRequestError(f"{where[:-1]} must be an object", bad_json=True)
    ranges: list[tuple[int, int]] | None = None
    if raw.get("ranges") is not None:
        rr = raw["ranges"]
        if not isinstance(rr, list):
            raise SlidingSyncRequestError(f"{where}ranges must be a list of [start, end]", bad_json=True)
        if len(rr) > MAX_RANGES:
            raise SlidingSyncRequestError(f"{where}ranges: at most {MAX_RANGES}")
        ranges = [_parse_range(r, f"{where}ranges") for r in rr]
    if raw.get("range") is not None:
        ranges = (ranges or []) + [_parse_range(raw["range"], f"{where}range")]
    filters = _parse_filters(_opt_obj(raw, "filters", where), f"{where}filters.")
    return ListConfig(
        ranges=tuple(ranges) if ranges is not None else None,
        config=_parse_room_config(raw, where),
        filters=filters,
    )


def _parse_range(raw: Any, where: str) -> tuple[int, int]:
    if (
        not isinstance(raw, list)
        or len(raw) != 2
        or not all(isinstance(x, int) and not isinstance(x, bool) for x in raw)
    ):
        raise SlidingSyncRequestError(f"{where} must hold [start, end] integer pairs", bad_json=True)
    start, end = raw
    if start < 0 or end < start or end > MAX_INT:
        raise SlidingSyncRequestError(f"{where}: [{start}, {end}] is not a range")
    return start, end


def _parse_room_config(raw: dict[str, Any], where: str) -> RoomConfig:
    limit = _opt_int(raw, "timeline_limit", where)
    rs = raw.get("required_state")
    return RoomConfig(limit or 0, (_parse_required_state(rs, f"{where}required_state"),) if rs is not None else ())


def _parse_required_state(raw: Any, where: str) -> RequiredState:
    if isinstance(raw, list):
        # Synapse's dialect: [[type, state_key], ...].
        if len(raw) > MAX_REQUIRED_STATE:
            raise SlidingSyncRequestError(f"{where}: at most {MAX_REQUIRED_STATE} entries")
        include: set[tuple[str, str]] = set()
        lazy = False
        for pair in raw:
            if not isinstance(pair, list) or len(pair) != 2 or not all(isinstance(x, str) for x in pair):
                raise SlidingSyncRequestError(f"{where} must hold [type, state_key] pairs", bad_json=True)
            t, s = pair
            if t == MEMBER and s == LAZY:
                lazy = True
                continue
            include.add((t, s))
        return RequiredState(frozenset(include), frozenset(), lazy)
    if isinstance(raw, dict):
        incl = _elements(raw.get("include"), f"{where}.include")
        excl = _elements(raw.get("exclude"), f"{where}.exclude")
        lazy_raw = raw.get("lazy_members", False)
        if not isinstance(lazy_raw, bool):
            raise SlidingSyncRequestError(f"{where}.lazy_members must be a boolean", bad_json=True)
        return RequiredState(incl, excl, lazy_raw)
    raise SlidingSyncRequestError(f"{where} must be a list or an object", bad_json=True)


def _elements(raw: Any, where: str) -> frozenset[tuple[str, str]]:
    if raw is None:
        return frozenset()
    if not isinstance(raw, list):
        raise SlidingSyncRequestError(f"{where} must be a list", bad_json=True)
    if len(raw) > MAX_REQUIRED_STATE:
        raise SlidingSyncRequestError(f"{where}: at most {MAX_REQUIRED_STATE} entries")
    out: set[tuple[str, str]] = set()
    for el in raw:
        if not isinstance(el, dict):
            raise SlidingSyncRequestError(f"{where} must hold objects", bad_json=True)
        t = _opt_str(el, "type", where)
        s = _opt_str(el, "state_key", where)
        out.add((WILDCARD if t is None else t, WILDCARD if s is None else s))
    return frozenset(out)


def _parse_filters(raw: dict[str, Any], where: str) -> RoomFilters:
    return RoomFilters(
        is_dm=_opt_bool(raw, "is_dm", where),
        is_encrypted=_opt_bool(raw, "is_encrypted", where),
        is_invite=_opt_bool(raw, "is_invited", where)
        if raw.get("is_invited") is not None
        else _opt_bool(raw, "is_invite", where),
        room_types=_type_list(raw, "room_types", where),
        not_room_types=_type_list(raw, "not_room_types", where),
        spaces=_str_tuple(raw, "spaces", where),
        tags=_str_tuple(raw, "tags", where),
        not_tags=_str_tuple(raw, "not_tags", where),
    )


def _parse_extension(raw: dict[str, Any], where: str) -> ExtensionConfig:
    enabled = _opt_bool(raw, "enabled", where)
    limit = _opt_int(raw, "limit", where)
    return ExtensionConfig(
        enabled=bool(enabled),
        lists=_str_tuple(raw, "lists", where),
        rooms=_str_tuple(raw, "rooms", where),
        since=_opt_str(raw, "since", where),
        limit=limit,
    )


def _opt_obj(obj: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    v = obj.get(key)
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise SlidingSyncRequestError(f"{where}{key} must be an object", bad_json=True)
    return v


def _opt_str(obj: dict[str, Any], key: str, where: str) -> str | None:
    v = obj.get(key)
    if v is None:
        return None
    if not isinstance(v, str):
        raise SlidingSyncRequestError(f"{where}{key} must be a string", bad_json=True)
    return v


def _opt_bool(obj: dict[str, Any], key: str, where: str) -> bool | None:
    v = obj.get(key)
    if v is None:
        return None
    if not isinstance(v, bool):
        raise SlidingSyncRequestError(f"{where}{key} must be a boolean", bad_json=True)
    return v


def _opt_int(obj: dict[str, Any], key: str, where: str) -> int | None:
    v = obj.get(key)
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool):
        raise SlidingSyncRequestError(f"{where}{key} must be an integer", bad_json=True)
    if v < 0 or v > MAX_INT:
        raise SlidingSyncRequestError(f"{where}{key} is out of range")
    return v


def _str_tuple(obj: dict[str, Any], key: str, where: str) -> tuple[str, ...] | None:
    v = obj.get(key)
    if v is None:
        return None
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise SlidingSyncRequestError(f"{where}{key} must be a list of strings", bad_json=True)
    return tuple(v)


def _type_list(obj: dict[str, Any], key: str, where: str) -> tuple[str | None, ...] | None:
    v = obj.get(key)
    if v is None:
        return None
    if not isinstance(v, list) or not all(x is None or isinstance(x, str) for x in v):
        raise SlidingSyncRequestError(f"{where}{key} must be a list of strings or nulls", bad_json=True)
    return tuple(v)


# -- pos ----------------------------------------------------------------------------------

_POS = re.compile(r"ss(-?[0-9]{1,18})_([0-9a-f]{1,16})_([0-9]{1,18})")


@dataclass(frozen=True, slots=True)
class Pos:
    """``ss{stream}_{connection}_{seq}``: the stream position the answer reached (so a
    ``pos`` works as a ``from`` token of /messages), the connection it belongs to, and
    the answer's number on that connection."""

    stream: int
    connection: int
    seq: int

    def __str__(self) -> str:
        return f"ss{self.stream}_{self.connection:x}_{self.seq}"

    @classmethod
    def parse(cls, raw: str) -> Pos | None:
        m = _POS.fullmatch(raw)
        if m is None:
            return None
        return cls(int(m.group(1)), int(m.group(2), 16), int(m.group(3)))
