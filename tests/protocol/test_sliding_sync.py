"""The pure rules of simplified sliding sync (MSC4186), table-driven: request parsing in
both dialects, required_state matching, combining room configs, filters, ordering and
ranges, extension scopes, the pos token."""

from __future__ import annotations

from typing import Any

import pytest

from pocketserver.protocol.sliding_sync import (
    ExtensionConfig,
    Pos,
    RequiredState,
    RoomConfig,
    RoomFacts,
    RoomFilters,
    SlidingSyncRequestError,
    combine,
    filter_matches,
    parse_request,
    select_ranges,
    sort_rooms,
)

ME = "@me:x"

# (required_state as sent, (type, state_key), matches?)
REQUIRED_STATE_CASES: list[tuple[Any, tuple[str, str], bool]] = [
    ([["m.room.create", ""]], ("m.room.create", ""), True),
    ([["m.room.create", ""]], ("m.room.name", ""), False),
    ([["m.room.member", "$ME"]], ("m.room.member", ME), True),
    ([["m.room.member", "$ME"]], ("m.room.member", "@other:x"), False),
    ([["m.room.member", "*"]], ("m.room.member", "@other:x"), True),
    ([["*", "*"]], ("m.room.topic", ""), True),
    ([["*", ""]], ("m.room.topic", ""), True),
    ([["*", ""]], ("m.room.member", ME), False),
    ([["m.room.member", "$LAZY"]], ("m.room.member", ME), False),  # lazy: only senders, added later
    ({"include": [{}]}, ("anything", "at all"), True),
    ({"include": [{}], "exclude": [{"type": "m.room.create", "state_key": ""}]}, ("m.room.create", ""), False),
    ({"include": [{}], "exclude": [{"type": "m.room.create", "state_key": ""}]}, ("m.room.name", ""), True),
    ({"include": [{"state_key": ""}]}, ("m.room.name", ""), True),
    ({"include": [{"state_key": ""}]}, ("m.room.member", ME), False),
    ({"include": [{"type": "m.room.member"}]}, ("m.room.member", "@a:x"), True),
    ({"include": []}, ("m.room.name", ""), False),
]


@pytest.mark.parametrize(("required", "key", "expected"), REQUIRED_STATE_CASES)
def test_required_state_matching(required: Any, key: tuple[str, str], expected: bool) -> None:
    req = parse_request({"lists": {"a": {"timeline_limit": 1, "required_state": required}}})
    assert req.lists["a"].config.wants_state(*key, ME) is expected


def test_lazy_members_in_both_dialects_and_combined() -> None:
    old = parse_request({"lists": {"a": {"timeline_limit": 1, "required_state": [["m.room.member", "$LAZY"]]}}})
    new = parse_request({"lists": {"a": {"timeline_limit": 1, "required_state": {"lazy_members": True}}}})
    assert old.lists["a"].config.lazy_members and new.lists["a"].config.lazy_members
    everyone = RoomConfig(1, (RequiredState(frozenset({("m.room.member", "*")})),))
    # "lazy only if no config returns every membership" (Combining room configs).
    assert not combine([old.lists["a"].config, everyone]).lazy_members
    assert combine([old.lists["a"].config, RoomConfig(5)]).lazy_members


def test_combine_takes_the_superset() -> None:
    a = RoomConfig(1, (RequiredState(frozenset({("m.room.name", "")})),))
    b = RoomConfig(10, (RequiredState(frozenset({("m.room.topic", "")})),))
    c = combine([a, b])
    assert c.timeline_limit == 10
    assert c.wants_state("m.room.name", "", ME) and c.wants_state("m.room.topic", "", ME)
    assert combine([a, b]) == combine([b, a])  # order does not matter (connections intern it)
    assert c.expands(a, ME, "m.room.topic", "") and not c.expands(a, ME, "m.room.name", "")


# (filters, facts, space children, passes?)
FILTER_CASES: list[tuple[RoomFilters, RoomFacts, frozenset[str] | None, bool]] = [
    (RoomFilters(), RoomFacts("!a", "join"), None, True),
    (RoomFilters(is_dm=True), RoomFacts("!a", "join", is_dm=True), None, True),
    (RoomFilters(is_dm=True), RoomFacts("!a", "join"), None, False),
    (RoomFilters(is_dm=False), RoomFacts("!a", "join", is_dm=True), None, False),
    (RoomFilters(is_encrypted=True), RoomFacts("!a", "join", is_encrypted=True), None, True),
    (RoomFilters(is_encrypted=False), RoomFacts("!a", "join", is_encrypted=True), None, False),
    (RoomFilters(is_invite=True), RoomFacts("!a", "invite"), None, True),
    (RoomFilters(is_invite=True), RoomFacts("!a", "join"), None, False),
    (RoomFilters(is_invite=False), RoomFacts("!a", "invite"), None, False),
    (RoomFilters(room_types=(None,)), RoomFacts("!a", "join"), None, True),
    (RoomFilters(room_types=(None,)), RoomFacts("!a", "join", room_type="m.space"), None, False),
    (RoomFilters(room_types=("m.space",)), RoomFacts("!a", "join", room_type="m.space"), None, True),
    (RoomFilters(not_room_types=("m.space",)), RoomFacts("!a", "join", room_type="m.space"), None, False),
    (RoomFilters(not_room_types=("m.space",)), RoomFacts("!a", "join"), None, True),
    # not_room_types wins over room_types.
    (RoomFilters(room_types=("m.space",), not_room_types=("m.space",)), RoomFacts("!a", "join", room_type="m.space"), None, False),
    (RoomFilters(spaces=("!s",)), RoomFacts("!a", "join"), frozenset({"!a"}), True),
    (RoomFilters(spaces=("!s",)), RoomFacts("!b", "join"), frozenset({"!a"}), False),
    (RoomFilters(tags=("m.favourite",)), RoomFacts("!a", "join", tags=frozenset({"m.favourite"})), None, True),
    (RoomFilters(tags=("m.favourite",)), RoomFacts("!a", "join"), None, False),
    (RoomFilters(not_tags=("m.lowpriority",)), RoomFacts("!a", "join", tags=frozenset({"m.lowpriority"})), None, False),
    # not_tags wins over tags.
    (RoomFilters(tags=("a",), not_tags=("b",)), RoomFacts("!a", "join", tags=frozenset({"a", "b"})), None, False),
]


@pytest.mark.parametrize(("filters", "facts", "children", "expected"), FILTER_CASES)
def test_filters(filters: RoomFilters, facts: RoomFacts, children: frozenset[str] | None, expected: bool) -> None:
    assert filter_matches(filters, facts, children) is expected


def test_sort_newest_first_with_stable_ties() -> None:
    assert sort_rooms({"!a": 5, "!b": 9, "!c": 5, "!d": 1}) == ["!b", "!a", "!c", "!d"]


# (ranges, expected slice of a..f)
RANGE_CASES: list[tuple[tuple[tuple[int, int], ...] | None, list[str]]] = [
    (((0, 2),), ["a", "b", "c"]),
    (((0, 0),), ["a"]),
    (((4, 99),), ["e", "f"]),
    (((10, 20),), []),
    (((0, 1), (4, 4)), ["a", "b", "e"]),
    (((0, 2), (1, 3)), ["a", "b", "c", "d"]),  # overlapping ranges give each room once
    (None, ["a", "b", "c", "d", "e", "f"]),
]


@pytest.mark.parametrize(("ranges", "expected"), RANGE_CASES)
def test_select_ranges(ranges: tuple[tuple[int, int], ...] | None, expected: list[str]) -> None:
    assert select_ranges(list("abcdef"), ranges) == expected


def test_both_dialects_parse_to_the_same_list() -> None:
    old = parse_request(
        {"lists": {"l": {"ranges": [[0, 9]], "timeline_limit": 3, "required_state": [["m.room.name", ""]],
                         "filters": {"is_invite": True}}}}
    )
    new = parse_request(
        {"lists": {"l": {"range": [0, 9], "timeline_limit": 3,
                         "required_state": {"include": [{"type": "m.room.name", "state_key": ""}]},
                         "filters": {"is_invited": True}}}}
    )
    assert old.lists == new.lists


def test_query_string_pos_and_timeout_win_over_the_body() -> None:
    req = parse_request({"pos": "a", "timeout": 5}, pos="b", timeout_ms=7)
    assert (req.pos, req.timeout_ms) == ("b", 7)
    assert parse_request({"pos": "a", "timeout": 5}).pos == "a"
    assert parse_request({}).pos is None


# (body, M_BAD_JSON? else M_INVALID_PARAM)
BAD_REQUESTS: list[tuple[Any, bool]] = [
    ([], True),
    ({"lists": []}, True),
    ({"lists": {"a": []}}, True),
    ({"lists": {"a": {"ranges": [[0]]}}}, True),
    ({"lists": {"a": {"ranges": [[0, "9"]]}}}, True),
    ({"lists": {"a": {"ranges": [[5, 1]]}}}, False),
    ({"lists": {"a": {"ranges": [[-1, 1]]}}}, False),
    ({"lists": {"a": {"timeline_limit": -1}}}, False),
    ({"lists": {"a": {"timeline_limit": True}}}, True),
    ({"lists": {"a": {"required_state": [["only-type"]]}}}, True),
    ({"lists": {"a": {"required_state": "all"}}}, True),
    ({"lists": {"a": {"filters": {"is_dm": "yes"}}}}, True),
    ({"lists": {"a": {"filters": {"room_types": [1]}}}}, True),
    ({"lists": {"bad key!": {}}}, False),
    ({"lists": {f"l{i}": {} for i in range(101)}}, False),
    ({"room_subscriptions": {f"!r{i}:x": {} for i in range(101)}}, False),
    ({"room_subscriptions": {"not-a-room": {}}}, False),
    ({"extensions": {"to_device": {"since": 5}}}, True),
    ({"set_presence": "away"}, False),
    ({"conn_id": 5}, True),
]


@pytest.mark.parametrize(("body", "bad_json"), BAD_REQUESTS)
def test_bad_requests(body: Any, bad_json: bool) -> None:
    with pytest.raises(SlidingSyncRequestError) as e:
        parse_request(body)
    assert e.value.bad_json is bad_json


def test_unknown_extensions_are_left_out() -> None:
    req = parse_request({"extensions": {"x.unknown": {"enabled": True}, "typing": {"enabled": True}}})
    assert set(req.extensions) == {"typing"}


# (lists, rooms, room's lists, subscribed?, in scope?)
SCOPE_CASES: list[tuple[tuple[str, ...] | None, tuple[str, ...] | None, tuple[str, ...], bool, bool]] = [
    (None, None, ("all",), False, True),
    (None, None, (), True, True),
    (None, None, (), False, False),
    (("dms",), None, ("all",), False, False),
    (("dms",), None, ("dms",), False, True),
    (("*",), None, ("all",), False, True),
    ((), (), ("all",), True, False),
    ((), ("!r",), (), False, True),
    ((), ("*",), (), True, True),
]


@pytest.mark.parametrize(("lists", "rooms", "room_lists", "subscribed", "expected"), SCOPE_CASES)
def test_extension_scope(
    lists: tuple[str, ...] | None, rooms: tuple[str, ...] | None, room_lists: tuple[str, ...], subscribed: bool, expected: bool
) -> None:
    assert ExtensionConfig(True, lists, rooms).in_scope("!r", room_lists, subscribed) is expected


def test_pos_round_trip() -> None:
    pos = Pos(1234, 0xABCDEF, 7)
    assert Pos.parse(str(pos)) == pos
    for junk in ("", "s1_2_3", "ss1_zz_3", "ss1_2", "ssx_1_1", "ss1_1_1_1"):
        assert Pos.parse(junk) is None


# (required_state as sent, plan: (exact keys, types with any state key) or None)
KEY_PLANS: list[tuple[Any, tuple[list[tuple[str, str]], list[str]] | None]] = [
    ([["m.room.name", ""], ["m.room.member", "$ME"]], ([("m.room.member", ME), ("m.room.name", "")], [])),
    ([["m.space.parent", "*"], ["m.room.name", ""]], ([("m.room.name", "")], ["m.space.parent"])),
    ([["m.room.member", "*"], ["m.room.member", "$ME"]], ([], ["m.room.member"])),
    ([["*", "*"]], None),
    ([["*", ""]], None),
    ([["m.room.member", "$LAZY"]], ([], [])),
]


@pytest.mark.parametrize(("required", "plan"), KEY_PLANS)
def test_key_plan_reads_only_what_can_match(required: Any, plan: Any) -> None:
    req = parse_request({"lists": {"a": {"timeline_limit": 1, "required_state": required}}})
    assert req.lists["a"].config.key_plan(ME) == plan
