"""Push-rule evaluation: each server-default rule, each condition kind, paths, globs."""

from __future__ import annotations

from typing import Any

import pytest

from pocketserver.protocol.push_rules import (
    KINDS,
    PushContext,
    PushRule,
    PushRuleError,
    Ruleset,
    glob_matches,
    lookup,
    parse_user_rule,
    split_key,
)

ALICE = "@alice:example.org"
BOB = "@bob:example.org"
ROOM = "!room:example.org"


def ev(etype: str = "m.room.message", content: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": etype,
        "sender": BOB,
        "room_id": ROOM,
        "event_id": "$e",
        "content": content if content is not None else {"msgtype": "m.text", "body": "hello"},
    }
    out.update(extra)
    return out


def ctx(members: int = 5, **kw: Any) -> PushContext:
    return PushContext(user_id=ALICE, member_count=members, **kw)


DEFAULTS = Ruleset.build(ALICE, [])


# (case name, event, context, expected rule_id or None, notify, highlight)
DEFAULT_CASES: list[tuple[str, dict[str, Any], PushContext, str | None, bool, bool]] = [
    ("plain message in a group", ev(), ctx(5), ".m.rule.message", True, False),
    ("message in a 1:1", ev(), ctx(2), ".m.rule.room_one_to_one", True, False),
    ("notice suppressed", ev(content={"msgtype": "m.notice", "body": "bot"}), ctx(5), ".m.rule.suppress_notices", False, False),
    ("invite for me", ev("m.room.member", {"membership": "invite"}, state_key=ALICE), ctx(5), ".m.rule.invite_for_me", True, False),
    ("invite for someone else", ev("m.room.member", {"membership": "invite"}, state_key="@carol:x"), ctx(5), ".m.rule.member_event", False, False),
    ("join is a member event", ev("m.room.member", {"membership": "join"}, state_key=BOB), ctx(5), ".m.rule.member_event", False, False),
    (
        "user mention highlights",
        ev(content={"body": "hi", "m.mentions": {"user_ids": [ALICE]}}),
        ctx(5),
        ".m.rule.is_user_mention",
        True,
        True,
    ),
    (
        "mention of someone else",
        ev(content={"body": "hi", "m.mentions": {"user_ids": ["@carol:x"]}}),
        ctx(5),
        ".m.rule.message",
        True,
        False,
    ),
    (
        "room mention with power",
        ev(content={"body": "@room", "m.mentions": {"room": True}}),
        ctx(5, sender_power_level=50),
        ".m.rule.is_room_mention",
        True,
        True,
    ),
    (
        "room mention without power",
        ev(content={"body": "@room", "m.mentions": {"room": True}}),
        ctx(5, sender_power_level=0),
        ".m.rule.message",
        True,
        False,
    ),
    (
        "room mention as the string 'true' is not a mention",
        ev(content={"body": "x", "m.mentions": {"room": "true"}}),
        ctx(5, sender_power_level=100),
        ".m.rule.message",
        True,
        False,
    ),
    ("tombstone", ev("m.room.tombstone", {"body": "moved", "replacement_room": "!n:x"}, state_key=""), ctx(5), ".m.rule.tombstone", True, True),
    ("tombstone needs the empty state key", ev("m.room.tombstone", {}), ctx(5), None, False, False),
    ("reaction", ev("m.reaction", {"m.relates_to": {"rel_type": "m.annotation", "event_id": "$x", "key": "👍"}}), ctx(2), ".m.rule.reaction", False, False),
    ("server acl", ev("m.room.server_acl", {"allow": ["*"]}, state_key=""), ctx(5), ".m.rule.room.server_acl", False, False),
    (
        "edits suppressed",
        ev(content={"body": "* fixed", "m.new_content": {"body": "fixed"}, "m.relates_to": {"rel_type": "m.replace", "event_id": "$x"}}),
        ctx(5),
        ".m.rule.suppress_edits",
        False,
        False,
    ),
    ("call invite rings", ev("m.call.invite", {"call_id": "1"}), ctx(5), ".m.rule.call", True, False),
    ("encrypted in a 1:1", ev("m.room.encrypted", {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "x"}), ctx(2), ".m.rule.encrypted_room_one_to_one", True, False),
    ("encrypted in a group", ev("m.room.encrypted", {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "x"}), ctx(9), ".m.rule.encrypted", True, False),
    ("topic change notifies nobody", ev("m.room.topic", {"topic": "t"}, state_key=""), ctx(5), None, False, False),
    ("own message never notifies", ev(content={"body": "hi", "m.mentions": {"user_ids": [ALICE]}}, sender=ALICE), ctx(5), None, False, False),
]


@pytest.mark.parametrize(("name", "event", "context", "rule_id", "notify", "highlight"), DEFAULT_CASES, ids=[c[0] for c in DEFAULT_CASES])
def test_default_rules(name: str, event: dict[str, Any], context: PushContext, rule_id: str | None, notify: bool, highlight: bool) -> None:
    result = DEFAULTS.evaluate(event, context)
    if rule_id is None:
        assert result is None
        return
    assert result is not None
    assert result.rule_id == rule_id
    assert result.notify is notify
    assert result.highlight is highlight


def test_default_ruleset_shape_follows_the_spec() -> None:
    js = DEFAULTS.to_json()
    assert set(js) == set(KINDS)
    assert [r["rule_id"] for r in js["override"]] == [
        ".m.rule.master",
        ".m.rule.suppress_notices",
        ".m.rule.invite_for_me",
        ".m.rule.member_event",
        ".m.rule.is_user_mention",
        ".m.rule.is_room_mention",
        ".m.rule.tombstone",
        ".m.rule.reaction",
        ".m.rule.room.server_acl",
        ".m.rule.suppress_edits",
    ]
    assert [r["rule_id"] for r in js["underride"]] == [
        ".m.rule.call",
        ".m.rule.encrypted_room_one_to_one",
        ".m.rule.room_one_to_one",
        ".m.rule.message",
        ".m.rule.encrypted",
    ]
    assert js["content"] == js["room"] == js["sender"] == []
    master = js["override"][0]
    assert master == {"rule_id": ".m.rule.master", "default": True, "enabled": False, "actions": [], "conditions": []}
    invite = js["override"][2]
    assert {"kind": "event_match", "key": "state_key", "pattern": ALICE} in invite["conditions"]
    mention = js["override"][4]
    assert mention["conditions"] == [{"kind": "event_property_contains", "key": "content.m\\.mentions.user_ids", "value": ALICE}]
    assert all(r["default"] is True for k in KINDS for r in js[k])


def test_master_rule_silences_everything_even_user_rules() -> None:
    keyword = PushRule("content", "cake", ("notify", {"set_tweak": "highlight"}), pattern="cake")
    rs = Ruleset.build(ALICE, [keyword], {".m.rule.master": (True, None)})
    assert rs.to_json()["override"][0]["enabled"] is True
    result = rs.evaluate(ev(content={"body": "cake!"}), ctx())
    assert result is not None and result.rule_id == ".m.rule.master" and not result.notify


def test_disabled_default_falls_through_and_actions_override() -> None:
    rs = Ruleset.build(
        ALICE,
        [],
        {".m.rule.suppress_notices": (False, None), ".m.rule.message": (None, ["notify", {"set_tweak": "sound", "value": "bing"}])},
    )
    result = rs.evaluate(ev(content={"msgtype": "m.notice", "body": "bot"}), ctx())
    assert result is not None and result.rule_id == ".m.rule.message"
    assert result.tweaks == {"sound": "bing"}


def test_user_rules_order_and_kinds() -> None:
    rules = [
        PushRule("override", "beer", ("notify", {"set_tweak": "sound", "value": "beer.wav"}),
                 conditions=({"kind": "event_match", "key": "content.body", "pattern": "beer"},
                             {"kind": "room_member_count", "is": "<=10"})),
        PushRule("content", "cake", ("notify", {"set_tweak": "highlight"}), pattern="cake*lie"),
        PushRule("room", ROOM, ()),
        PushRule("sender", "@spam:x", ()),
    ]  # fmt: skip
    rs = Ruleset.build(ALICE, rules)
    # Override beats content beats room.
    r = rs.evaluate(ev(content={"body": "the beer cake is a lie"}), ctx(5))
    assert r is not None and r.rule_id == "beer" and r.tweaks == {"sound": "beer.wav"}
    r = rs.evaluate(ev(content={"body": "beer"}), ctx(11))  # member count too high
    assert r is not None and r.rule_id == ROOM and not r.notify
    r = rs.evaluate(ev(content={"body": "The cake is a LIE."}), ctx(5))
    assert r is not None and r.rule_id == "cake" and r.highlight
    r = rs.evaluate(ev(content={"body": "hello"}, room_id="!other:x", sender="@spam:x"), ctx(5))
    assert r is not None and r.rule_id == "@spam:x" and not r.notify
    r = rs.evaluate(ev(content={"body": "hello"}, room_id="!other:x"), ctx(5))
    assert r is not None and r.rule_id == ".m.rule.message"
    # The user's override rules come after the master rule but before the defaults.
    assert [x["rule_id"] for x in rs.to_json()["override"]][:3] == [".m.rule.master", "beer", ".m.rule.suppress_notices"]


@pytest.mark.parametrize(
    ("pattern", "value", "word_boundary", "expected"),
    [
        ("lunc?*", "Lunch plans", False, True),
        ("lunc?*", "LUNCH", False, True),
        ("lunc?*", " lunch", False, False),
        ("lunc?*", "lunc", False, False),
        ("m.notice", "m.notice", False, True),
        ("m.notice", "mxnotice", False, False),  # the dot is literal
        ("", "", False, True),
        ("", "x", False, False),
        ("ex*ple", "An example event.", True, True),
        ("ex*ple", "exple", True, True),
        ("ex*ple", "An exciting triple-whammy", True, True),
        ("ex*ple", "examples", True, False),
        ("cake", "pancake", True, False),
        ("cake", "cake!", True, True),
        ("cake", "Cake_", True, False),  # underscore is a word character
        ("a*c", "a\nb\nc", False, True),
        ("[ab]", "[ab]", False, True),  # brackets are literal
    ],
)
def test_glob(pattern: str, value: str, word_boundary: bool, expected: bool) -> None:
    assert glob_matches(pattern, value, word_boundary=word_boundary) is expected


@pytest.mark.parametrize(
    ("key", "parts"),
    [
        ("content.body", ("content", "body")),
        ("content.m\\.relates_to.rel_type", ("content", "m.relates_to", "rel_type")),
        ("content.m\\\\foo", ("content", "m\\foo")),
        ("content.m\\xfoo", ("content", "m\\xfoo")),
        ("type", ("type",)),
    ],
)
def test_dotted_paths(key: str, parts: tuple[str, ...]) -> None:
    assert split_key(key) == parts


def test_lookup_through_escaped_keys() -> None:
    event = {"content": {"m.relates_to": {"rel_type": "m.thread"}, "m\\foo": 1}}
    assert lookup(event, "content.m\\.relates_to.rel_type") == "m.thread"
    assert lookup(event, "content.m\\\\foo") == 1


def _one(cond: dict[str, Any]) -> Ruleset:
    return Ruleset(ALICE, {"override": [PushRule("override", "r", ("notify",), conditions=(cond,))]})


@pytest.mark.parametrize(
    ("cond", "content", "expected"),
    [
        ({"kind": "event_match", "key": "content.topic", "pattern": "*"}, {"topic": None}, False),
        ({"kind": "event_match", "key": "content.topic", "pattern": "*"}, {}, False),
        ({"kind": "event_match", "key": "content.n", "pattern": "1"}, {"n": 1}, False),  # not a string
        ({"kind": "event_property_is", "key": "content.m\\.federate", "value": True}, {"m.federate": True}, True),
        ({"kind": "event_property_is", "key": "content.m\\.federate", "value": True}, {"m.federate": "true"}, False),
        ({"kind": "event_property_is", "key": "content.m\\.federate", "value": True}, {"m.federate": 1}, False),
        ({"kind": "event_property_is", "key": "content.n", "value": 1}, {"n": True}, False),
        ({"kind": "event_property_is", "key": "content.n", "value": None}, {"n": None}, True),
        ({"kind": "event_property_is", "key": "content.n", "value": None}, {}, False),
        ({"kind": "event_property_is", "key": "content.n", "value": 3}, {"n": 3}, True),
        ({"kind": "event_property_is", "key": "content.o", "value": {}}, {"o": {}}, False),  # compound
        ({"kind": "event_property_contains", "key": "content.alt_aliases", "value": "#r:x"}, {"alt_aliases": ["#s:y", "#r:x"]}, True),
        ({"kind": "event_property_contains", "key": "content.alt_aliases", "value": ":x"}, {"alt_aliases": ["#r:x"]}, False),
        ({"kind": "event_property_contains", "key": "content.alt_aliases", "value": "#r:x"}, {"alt_aliases": "#r:x"}, False),
        ({"kind": "event_property_contains", "key": "content.l", "value": 1}, {"l": [True, [1], 1]}, True),
        ({"kind": "event_property_contains", "key": "content.l", "value": 1}, {"l": [True, [1]]}, False),
        ({"kind": "im.vendor.unknown"}, {"body": "x"}, False),
        ({"kind": "event_match", "key": "content.body"}, {"body": "x"}, False),  # no pattern
    ],
)
def test_property_conditions(cond: dict[str, Any], content: dict[str, Any], expected: bool) -> None:
    result = _one(cond).evaluate(ev(content=content), ctx())
    assert (result is not None) is expected


@pytest.mark.parametrize(
    ("is_", "count", "expected"),
    [
        ("2", 2, True),
        ("2", 3, False),
        ("==2", 2, True),
        ("<10", 9, True),
        ("<10", 10, False),
        ("<=10", 10, True),
        (">2", 3, True),
        (">2", 2, False),
        (">=2", 2, True),
        ("two", 2, False),
        ("=2", 2, False),
    ],
)
def test_room_member_count(is_: str, count: int, expected: bool) -> None:
    result = _one({"kind": "room_member_count", "is": is_}).evaluate(ev(), ctx(count))
    assert (result is not None) is expected


@pytest.mark.parametrize(
    ("name", "body", "expected"),
    [
        ("Alice", "hey alice, lunch?", True),
        ("Alice", "hey ALICE", True),
        ("Alice", "malice aforethought", False),
        ("Al (home)", "ask Al (home) now", True),
        (None, "alice", False),
        ("", "alice", False),
    ],
)
def test_contains_display_name(name: str | None, body: str, expected: bool) -> None:
    rs = _one({"kind": "contains_display_name"})
    assert rs.uses_display_name
    result = rs.evaluate(ev(content={"body": body}), ctx(display_name=name))
    assert (result is not None) is expected


def test_sender_notification_permission_reads_the_level() -> None:
    rs = _one({"kind": "sender_notification_permission", "key": "room"})
    levels = {"room": 20}
    assert rs.evaluate(ev(), ctx(sender_power_level=20, notification_level=lambda k: levels.get(k, 50))) is not None
    assert rs.evaluate(ev(), ctx(sender_power_level=19, notification_level=lambda k: levels.get(k, 50))) is None


def test_historical_actions_are_stripped() -> None:
    rs = Ruleset(ALICE, {"underride": [PushRule("underride", "old", ("dont_notify",), conditions=())]})
    result = rs.evaluate(ev(), ctx())
    assert result is not None and result.actions == () and not result.notify


def test_highlight_false_is_not_a_highlight() -> None:
    rs = Ruleset(ALICE, {"underride": [PushRule("underride", "x", ("notify", {"set_tweak": "highlight", "value": False}), conditions=())]})
    result = rs.evaluate(ev(), ctx())
    assert result is not None and result.notify and not result.highlight


@pytest.mark.parametrize(
    ("kind", "rule_id", "body", "errcode"),
    [
        ("override", ".m.rule.mine", {"actions": []}, "M_INVALID_PARAM"),
        ("override", "a/b", {"actions": []}, "M_INVALID_PARAM"),
        ("override", "a\\b", {"actions": []}, "M_INVALID_PARAM"),
        ("override", "x", {}, "M_MISSING_PARAM"),
        ("override", "x", {"actions": "notify"}, "M_BAD_JSON"),
        ("override", "x", {"actions": ["explode"]}, "M_INVALID_PARAM"),
        ("override", "x", {"actions": [], "conditions": "no"}, "M_BAD_JSON"),
        ("override", "x", {"actions": [], "conditions": [{"key": "type"}]}, "M_BAD_JSON"),
        ("content", "x", {"actions": []}, "M_MISSING_PARAM"),
        ("content", "x", {"actions": [], "pattern": 3}, "M_BAD_JSON"),
        ("bogus", "x", {"actions": []}, "M_INVALID_PARAM"),
    ],
)
def test_invalid_user_rules(kind: str, rule_id: str, body: dict[str, Any], errcode: str) -> None:
    with pytest.raises(PushRuleError) as info:
        parse_user_rule(kind, rule_id, body)
    assert info.value.errcode == errcode


def test_parse_user_rule_keeps_what_the_kind_uses() -> None:
    r = parse_user_rule("content", "cake", {"actions": ["notify"], "pattern": "cake", "conditions": [{"kind": "x"}]})
    assert r.to_json() == {"rule_id": "cake", "default": False, "enabled": True, "actions": ["notify"], "pattern": "cake"}
    r = parse_user_rule("override", "o", {"actions": ["notify", {"set_tweak": "sound", "value": "x"}]})
    assert r.to_json()["conditions"] == []
    r = parse_user_rule("room", ROOM, {"actions": []})
    assert r.to_json() == {"rule_id": ROOM, "default": False, "enabled": True, "actions": []}


def test_module_is_pure() -> None:
    from tests.protocol.test_purity import FORBIDDEN, PROTOCOL_DIR, _imports

    for name in _imports(PROTOCOL_DIR / "push_rules.py"):
        assert name.split(".")[0] not in FORBIDDEN
        assert not name.startswith("pocketserver.") or name.startswith("pocketserver.protocol")


def test_rulesets_share_the_defaults_and_keep_their_own_rules() -> None:
    """Every user's ruleset holds the same server-default rules (shared, not copied: a
    thousand cached rulesets stay small), while the rules naming a user stay theirs."""
    a = Ruleset.build("@anna:example.org", [])
    b = Ruleset.build("@bert:example.org", [])
    assert a.find("override", ".m.rule.suppress_notices") is b.find("override", ".m.rule.suppress_notices")
    assert a.find("underride", ".m.rule.message") is b.find("underride", ".m.rule.message")
    assert a.find("override", ".m.rule.is_user_mention") != b.find("override", ".m.rule.is_user_mention")
    mention = {
        "type": "m.room.message",
        "sender": "@carl:example.org",
        "content": {"msgtype": "m.text", "body": "hi", "m.mentions": {"user_ids": ["@anna:example.org"]}},
    }
    for ruleset, user, highlighted in ((a, "@anna:example.org", True), (b, "@bert:example.org", False)):
        result = ruleset.evaluate(mention, PushContext(user_id=user, member_count=3))
        assert result is not None and result.notify
        assert result.highlight is highlighted
