"""Event filters: parsing, validation and matching."""

from __future__ import annotations

import pytest

from pocketserver.services.filtering import (
    Filter,
    InvalidFilter,
    RoomEventFilter,
    apply_event_fields,
)


def ev(t: str = "m.room.message", sender: str = "@a:x", room: str = "!r:x", **content: object) -> dict[str, object]:
    return {"type": t, "sender": sender, "room_id": room, "content": content}


def test_types_with_wildcards_and_exclusions() -> None:
    f = RoomEventFilter.parse({"types": ["m.room.*", "org.x"], "not_types": ["m.room.member"]})
    assert f.matches(ev("m.room.message"))
    assert f.matches(ev("org.x"))
    assert not f.matches(ev("org.xy"))
    assert not f.matches(ev("m.room.member"))
    assert not f.matches(ev("m.reaction"))
    assert not RoomEventFilter.parse({"types": []}).matches(ev())
    assert RoomEventFilter.parse({}).matches(ev())


def test_senders_rooms_and_urls() -> None:
    f = RoomEventFilter.parse({"senders": ["@a:x"], "not_rooms": ["!bad:x"], "contains_url": True})
    assert f.matches(ev(url="mxc://x/y"))
    assert not f.matches(ev(sender="@b:x", url="mxc://x/y"))
    assert not f.matches(ev(room="!bad:x", url="mxc://x/y"))
    assert not f.matches(ev())
    assert RoomEventFilter.parse({"contains_url": False}).matches(ev())
    assert not RoomEventFilter.parse({"not_senders": ["@a:x"]}).matches(ev())


def test_whole_filter() -> None:
    f = Filter.parse({
        "room": {"rooms": ["!r:x"], "timeline": {"limit": 2, "not_types": ["m.reaction"]},
                 "state": {"lazy_load_members": True, "include_redundant_members": True}},
        "event_fields": ["type", "content.body"],
    })
    assert f.lazy_load_members and f.room.state.include_redundant_members
    assert f.matches_event(ev())
    assert not f.matches_event(ev(room="!other:x"))
    assert not f.matches_event(ev("m.reaction"))
    assert f.room.timeline.filter([ev(), ev(), ev()]) == [ev(), ev()]
    assert f.project(ev(body="hi", other=1)) == {"type": "m.room.message", "content": {"body": "hi"}}


@pytest.mark.parametrize(
    "bad",
    [
        [],
        {"event_format": "xml"},
        {"room": {"timeline": {"limit": "10"}}},
        {"room": {"timeline": {"limit": -1}}},
        {"room": {"rooms": ["not-a-room"]}},
        {"room": {"state": {"lazy_load_members": "yes"}}},
        {"presence": {"types": "m.presence"}},
        {"room": {"timeline": []}},
        {"event_fields": [""]},
        {"room": {"timeline": {"senders": ["not_a_sender_id"]}}},
        {"presence": {"not_senders": ["alice"]}},
    ],
)
def test_invalid(bad: object) -> None:
    with pytest.raises(InvalidFilter):
        Filter.parse(bad)


def test_event_fields_escaped_dot() -> None:
    e = {"content": {"m.relates_to": {"rel_type": "x"}, "body": "b"}}
    assert apply_event_fields(e, ("content.m\\.relates_to",)) == {"content": {"m.relates_to": {"rel_type": "x"}}}
    assert apply_event_fields(e, None) is e
