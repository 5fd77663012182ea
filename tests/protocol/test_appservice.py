"""Application service registrations: parsing, namespaces, interest in events."""

from __future__ import annotations

from typing import Any

import pytest

from pocketserver.protocol.appservice import (
    AppserviceRegistry,
    EventFacts,
    RegistrationError,
    is_interested,
    parse_registration,
)

HS = "example.org"


def _reg(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "irc",
        "url": "http://127.0.0.1:9999",
        "as_token": "as-secret",
        "hs_token": "hs-secret",
        "sender_localpart": "_irc_bot",
        "namespaces": {
            "users": [{"regex": "@_irc_.*", "exclusive": True}],
            "aliases": [{"regex": "#_irc_.*", "exclusive": False}],
            "rooms": [{"regex": "!bridged.*", "exclusive": False}],
        },
    }
    base.update(over)
    return base


BAD = [
    ({k: v for k, v in _reg().items() if k != "id"}, "id"),
    (_reg(id=5), "id"),
    ({k: v for k, v in _reg().items() if k != "url"}, "url"),
    (_reg(url="ftp://x"), "url"),
    (_reg(url="http://host:99999"), "url"),
    (_reg(as_token=""), "as_token"),
    ({k: v for k, v in _reg().items() if k != "hs_token"}, "hs_token"),
    (_reg(sender_localpart="Not Valid"), "sender_localpart"),
    ({k: v for k, v in _reg().items() if k != "namespaces"}, "namespaces"),
    (_reg(namespaces=[]), "namespaces"),
    (_reg(namespaces={"users": {"regex": "x"}}), "namespaces.users"),
    (_reg(namespaces={"users": [{"regex": "@a(", "exclusive": True}]}), "namespaces.users[0].regex"),
    (_reg(namespaces={"aliases": [{"exclusive": True}]}), "namespaces.aliases[0].regex"),
    (_reg(namespaces={"rooms": [{"regex": "!x", "exclusive": "yes"}]}), "namespaces.rooms[0].exclusive"),
    (_reg(rate_limited="no"), "rate_limited"),
    (_reg(protocols="irc"), "protocols"),
    (_reg(receive_ephemeral=1), "receive_ephemeral"),
    ("just a string", "(file)"),
]


@pytest.mark.parametrize(("data", "field"), BAD, ids=[f for _, f in BAD])
def test_bad_registrations_name_the_field(data: Any, field: str) -> None:
    with pytest.raises(RegistrationError) as info:
        parse_registration(data, HS)
    assert info.value.field == field


def test_good_registration() -> None:
    reg = parse_registration(
        _reg(url=None, rate_limited=False, protocols=["irc"], **{"de.sorunome.msc2409.push_ephemeral": True}), HS
    )
    assert reg.url is None
    assert reg.sender == "@_irc_bot:example.org"
    assert not reg.rate_limited
    assert reg.protocols == ("irc",)
    assert reg.receive_ephemeral  # the MSC2409 spelling counts too
    # The url's trailing slash is dropped: paths are appended to it.
    assert parse_registration(_reg(url="http://h:1/base/"), HS).url == "http://h:1/base"


USERS = [
    ("@_irc_bot:example.org", True, True),  # the AS's own user
    ("@_irc_alice:example.org", True, True),
    ("@_irc_alice:elsewhere.org", False, True),  # interest only in local users
    ("@alice:example.org", False, False),
]


@pytest.mark.parametrize(("user_id", "interested", "exclusive"), USERS)
def test_user_namespaces(user_id: str, interested: bool, exclusive: bool) -> None:
    reg = parse_registration(_reg(), HS)
    assert reg.is_interested_in_user(user_id) is interested
    assert reg.is_exclusive_user(user_id) is exclusive


EVENTS = [
    # (event, room aliases, joined members, interested?)
    (EventFacts("!r:hs", "@_irc_x:example.org", "m.room.message"), [], [], True),  # 1. sender
    (EventFacts("!r:hs", "@bob:example.org", "m.room.member", "@_irc_x:example.org"), [], [], True),  # 1. target
    (EventFacts("!r:hs", "@bob:example.org", "m.room.topic", "@_irc_x:example.org"), [], [], False),  # not a member event
    (EventFacts("!bridged1:hs", "@bob:example.org", "m.room.message"), [], [], True),  # 2. room ID
    (EventFacts("!r:hs", "@bob:example.org", "m.room.message"), ["#_irc_#chan:example.org"], [], True),  # 3. alias
    (EventFacts("!r:hs", "@bob:example.org", "m.room.message"), ["#other:example.org"], [], False),
    (EventFacts("!r:hs", "@bob:example.org", "m.room.message"), [], ["@bob:example.org", "@_irc_y:example.org"], True),  # 4.
    (EventFacts("!r:hs", "@bob:example.org", "m.room.message"), [], ["@bob:example.org"], False),
    (EventFacts("!r:hs", "@_irc_x:remote.org", "m.room.message"), [], [], False),  # remote namesake
]


@pytest.mark.parametrize(("event", "aliases", "members", "expected"), EVENTS)
def test_interest_in_events(event: EventFacts, aliases: list[str], members: list[str], expected: bool) -> None:
    reg = parse_registration(_reg(), HS)
    assert is_interested(reg, event, aliases, members) is expected


def test_regex_matches_from_the_start_like_synapse() -> None:
    reg = parse_registration(_reg(namespaces={"users": [{"regex": "@astest-.*", "exclusive": True}]}), HS)
    assert reg.is_interested_in_user("@astest-1:example.org")
    assert not reg.is_interested_in_user("@x-astest-1:example.org")


def test_registry_lookups_and_uniqueness() -> None:
    a = parse_registration(_reg(protocols=["irc"], rate_limited=False), HS)
    b = parse_registration(
        _reg(id="tg", as_token="tg-token", sender_localpart="tgbot", protocols=["irc", "tg"],
             namespaces={"users": [{"regex": "@tg_.*", "exclusive": False}]}),
        HS,
    )
    reg = AppserviceRegistry([a, b])
    assert reg.by_as_token("tg-token") is b and reg.by_as_token("nope") is None
    assert reg.by_id("irc") is a
    assert reg.exclusive_owner_of_user("@_irc_z:example.org") is a
    assert reg.exclusive_owner_of_user("@tg_z:example.org") is None  # not exclusive
    assert reg.protocols() == ["irc", "tg"]
    assert reg.for_protocol("irc") == [a, b]
    assert reg.exempt_from_rate_limits("@_irc_z:example.org")  # rate_limited: false
    assert reg.exempt_from_rate_limits("@tgbot:example.org")  # an AS's own user, always
    assert not reg.exempt_from_rate_limits("@tg_z:example.org")
    with pytest.raises(RegistrationError) as info:
        AppserviceRegistry([a, parse_registration(_reg(as_token="other"), HS)])
    assert info.value.field == "id"
    with pytest.raises(RegistrationError) as info:
        AppserviceRegistry([a, parse_registration(_reg(id="other"), HS)])
    assert info.value.field == "as_token"
