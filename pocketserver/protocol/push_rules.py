"""Push rules: the server-default ruleset, validation of user rules, evaluation.

Spec: shared/spec/content/client-server-api/modules/push.md ("Push Rules", "Conditions",
"Predefined Rules"), appendices.md ("Glob-style matching", "Dot-separated property
paths"); the shapes of rules and conditions in data/api/client-server/definitions/
push_rule.yaml and push_condition.yaml.

Evaluation order (push.md "Push Rules"):

1. ``.m.rule.master`` (always above everything, even user rules);
2. override rules: the user's, then the server defaults;
3. content rules (``pattern`` against ``content.body`` at word boundaries);
4. room rules (``rule_id`` is the room ID);
5. sender rules (``rule_id`` is the sender's user ID);
6. underride rules: the user's, then the server defaults.

The first enabled rule whose conditions all hold decides the actions; no match means no
notification. A user's own events never notify. Unknown condition kinds never match, and
the historical actions ``dont_notify`` and ``coalesce`` are stripped.

Encrypted events (``m.room.encrypted``) are evaluated as they are: their body is not
readable, so only rules on the type, sender, room and member count can match them.

Pure: takes plain event dicts and a :class:`PushContext` of the few room facts the
conditions read (member count, the owner's display name, power levels); no I/O.

Memory: a compiled rule depends only on the rule, so rules with the same content share
one compiled form and one :class:`PushRule` (:func:`_shared`, a bounded memo). Every
user's ruleset repeats the twenty-odd server defaults: built separately, one ruleset
took about 24 KB, and the services keep a thousand of them cached for big rooms'
pushes; sharing leaves each user only their own rules and the few defaults that name
them.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

JsonDict = dict[str, Any]

KINDS = ("override", "content", "room", "sender", "underride")
HISTORICAL_ACTIONS = frozenset({"dont_notify", "coalesce"})
MASTER_RULE = ".m.rule.master"
# Canonical JSON integers (appendices "Canonical JSON").
_MAX_INT = 2**53 - 1
# Limits that keep one user's ruleset bounded in memory and evaluation time.
MAX_CONDITIONS = 64
MAX_PATTERN_LENGTH = 1024
MAX_ACTIONS = 32


class PushRuleError(ValueError):
    """A rule a client sent is not acceptable; ``errcode`` says which Matrix error."""

    def __init__(self, errcode: str, message: str) -> None:
        super().__init__(message)
        self.errcode = errcode


# -- the rule value --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PushRule:
    kind: str
    rule_id: str
    actions: tuple[Any, ...]
    default: bool = False
    enabled: bool = True
    # override/underride only; None for the other kinds.
    conditions: tuple[Mapping[str, Any], ...] | None = None
    # content only.
    pattern: str | None = None

    def to_json(self) -> JsonDict:
        out: JsonDict = {
            "rule_id": self.rule_id,
            "default": self.default,
            "enabled": self.enabled,
            "actions": [dict(a) if isinstance(a, Mapping) else a for a in self.actions],
        }
        if self.kind in ("override", "underride"):
            out["conditions"] = [dict(c) for c in (self.conditions or ())]
        if self.kind == "content" and self.pattern is not None:
            out["pattern"] = self.pattern
        return out

    def with_overrides(self, enabled: bool | None, actions: Sequence[Any] | None) -> PushRule:
        return PushRule(
            self.kind,
            self.rule_id,
            tuple(actions) if actions is not None else self.actions,
            self.default,
            self.enabled if enabled is None else enabled,
            self.conditions,
            self.pattern,
        )


# -- the server-default rules (push.md "Predefined Rules", v1.17+) ----------------------------

_SOUND_DEFAULT = {"set_tweak": "sound", "value": "default"}
_HIGHLIGHT = {"set_tweak": "highlight"}


def _match(key: str, pattern: str) -> JsonDict:
    return {"kind": "event_match", "key": key, "pattern": pattern}


def _default(kind: str, rule_id: str, conditions: list[JsonDict], actions: list[Any], enabled: bool = True) -> PushRule:
    return PushRule(kind, rule_id, tuple(actions), True, enabled, tuple(conditions), None)


def default_override_rules(user_id: str) -> list[PushRule]:
    """The default override rules in the spec's order (``.m.rule.master`` first)."""
    o = "override"
    return [
        _default(o, MASTER_RULE, [], [], enabled=False),
        _default(o, ".m.rule.suppress_notices", [_match("content.msgtype", "m.notice")], []),
        _default(
            o,
            ".m.rule.invite_for_me",
            [
                _match("type", "m.room.member"),
                _match("content.membership", "invite"),
                _match("state_key", user_id),
            ],
            ["notify", _SOUND_DEFAULT],
        ),
        _default(o, ".m.rule.member_event", [_match("type", "m.room.member")], []),
        _default(
            o,
            ".m.rule.is_user_mention",
            [{"kind": "event_property_contains", "key": "content.m\\.mentions.user_ids", "value": user_id}],
            ["notify", _SOUND_DEFAULT, _HIGHLIGHT],
        ),
        _default(
            o,
            ".m.rule.is_room_mention",
            [
                {"kind": "event_property_is", "key": "content.m\\.mentions.room", "value": True},
                {"kind": "sender_notification_permission", "key": "room"},
            ],
            ["notify", _HIGHLIGHT],
        ),
        _default(
            o,
            ".m.rule.tombstone",
            [_match("type", "m.room.tombstone"), _match("state_key", "")],
            ["notify", _HIGHLIGHT],
        ),
        _default(o, ".m.rule.reaction", [_match("type", "m.reaction")], []),
        _default(
            o,
            ".m.rule.room.server_acl",
            [_match("type", "m.room.server_acl"), _match("state_key", "")],
            [],
        ),
        _default(
            o,
            ".m.rule.suppress_edits",
            [{"kind": "event_property_is", "key": "content.m\\.relates_to.rel_type", "value": "m.replace"}],
            [],
        ),
    ]


def default_underride_rules() -> list[PushRule]:
    u = "underride"
    one_to_one = {"kind": "room_member_count", "is": "2"}
    return [
        _default(u, ".m.rule.call", [_match("type", "m.call.invite")], ["notify", {"set_tweak": "sound", "value": "ring"}]),
        _default(
            u,
            ".m.rule.encrypted_room_one_to_one",
            [one_to_one, _match("type", "m.room.encrypted")],
            ["notify", _SOUND_DEFAULT],
        ),
        _default(
            u,
            ".m.rule.room_one_to_one",
            [one_to_one, _match("type", "m.room.message")],
            ["notify", _SOUND_DEFAULT],
        ),
        _default(u, ".m.rule.message", [_match("type", "m.room.message")], ["notify"]),
        _default(u, ".m.rule.encrypted", [_match("type", "m.room.encrypted")], ["notify"]),
    ]


def default_rules(user_id: str) -> list[PushRule]:
    return default_override_rules(user_id) + default_underride_rules()


def is_default_rule_id(rule_id: str) -> bool:
    return rule_id.startswith(".")


# -- dotted paths and globs (appendices) ------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def split_key(key: str) -> tuple[str, ...]:
    """``content.m\\.relates_to.rel_type`` -> ("content", "m.relates_to", "rel_type").

    ``\\.`` is a literal dot and ``\\\\`` a literal backslash; any other escape is kept
    as it is (a backslash followed by the character).
    """
    parts: list[str] = []
    cur: list[str] = []
    i = 0
    n = len(key)
    while i < n:
        c = key[i]
        if c == "\\" and i + 1 < n and key[i + 1] in ".\\":
            cur.append(key[i + 1])
            i += 2
            continue
        if c == ".":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return tuple(parts)


_ABSENT = object()


def lookup(event: Mapping[str, Any], key: str) -> Any:
    """The value at a dotted path, or ``_ABSENT``."""
    value: Any = event
    for part in split_key(key):
        if not isinstance(value, Mapping) or part not in value:
            return _ABSENT
        value = value[part]
    return value


_WORD = "A-Za-z0-9_"


@functools.lru_cache(maxsize=1024)
def glob_regex(pattern: str, word_boundary: bool) -> re.Pattern[str]:
    """A compiled, case-insensitive regex for a Matrix glob (``*`` and ``?``).

    ``word_boundary``: match any substring that starts and ends at a word boundary
    (the ``content.body`` rule); otherwise the whole value.
    """
    body = "".join(".*?" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    if word_boundary:
        body = f"(?<![{_WORD}]){body}(?![{_WORD}])"
    else:
        body = f"(?:{body})\\Z"
    return re.compile(body, re.IGNORECASE | re.DOTALL)


def glob_matches(pattern: str, value: str, *, word_boundary: bool = False) -> bool:
    rx = glob_regex(pattern, word_boundary)
    if word_boundary:
        return rx.search(value) is not None
    return rx.match(value) is not None


def _same_scalar(a: Any, b: Any) -> bool:
    """Exact equality of non-compound canonical JSON values (``True`` is not ``1``)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, int) and not isinstance(a, bool) and abs(a) > _MAX_INT:
        return False
    return bool(a == b)


def _is_scalar(v: Any) -> bool:
    if v is None or isinstance(v, (str, bool)):
        return True
    return isinstance(v, int) and abs(v) <= _MAX_INT


# -- evaluation -------------------------------------------------------------------------------


def _default_notification_level(key: str) -> int:
    return 50


@dataclass(frozen=True, slots=True)
class PushContext:
    """What the conditions read besides the event itself, for one user in one room."""

    user_id: str
    member_count: int
    display_name: str | None = None
    sender_power_level: int = 0
    # The level needed for a notification key (``notifications`` in the power levels).
    notification_level: Callable[[str], int] = _default_notification_level


@dataclass(frozen=True, slots=True)
class PushResult:
    """The actions of the rule that matched an event."""

    rule_id: str
    kind: str
    actions: tuple[Any, ...]
    notify: bool
    highlight: bool
    tweaks: Mapping[str, Any] = field(default_factory=dict)


Condition = Callable[[Mapping[str, Any], PushContext], bool]

_MEMBER_COUNT = re.compile(r"^(==|<=|>=|<|>)?([0-9]+)$")


def _never(event: Mapping[str, Any], ctx: PushContext) -> bool:
    return False


def compile_condition(cond: Mapping[str, Any]) -> Condition:
    """A condition as a function; anything unrecognised or malformed never matches."""
    kind = cond.get("kind")
    key = cond.get("key")
    if kind == "event_match":
        pattern = cond.get("pattern")
        if not isinstance(key, str) or not isinstance(pattern, str):
            return _never
        wb = key == "content.body"
        rx = glob_regex(pattern, wb)

        def event_match(event: Mapping[str, Any], ctx: PushContext) -> bool:
            v = lookup(event, key)
            if not isinstance(v, str):
                return False
            return (rx.search(v) if wb else rx.match(v)) is not None

        return event_match
    if kind == "event_property_is":
        if not isinstance(key, str) or "value" not in cond or not _is_scalar(cond["value"]):
            return _never
        want = cond["value"]

        def event_property_is(event: Mapping[str, Any], ctx: PushContext) -> bool:
            return _same_scalar(lookup(event, key), want)

        return event_property_is
    if kind == "event_property_contains":
        if not isinstance(key, str) or "value" not in cond or not _is_scalar(cond["value"]):
            return _never
        want = cond["value"]

        def event_property_contains(event: Mapping[str, Any], ctx: PushContext) -> bool:
            v = lookup(event, key)
            if not isinstance(v, list):
                return False
            return any(_same_scalar(item, want) for item in v)

        return event_property_contains
    if kind == "contains_display_name":

        def contains_display_name(event: Mapping[str, Any], ctx: PushContext) -> bool:
            name = ctx.display_name
            body = lookup(event, "content.body")
            if not name or not isinstance(body, str):
                return False
            rx = _literal_word_regex(name)
            return rx.search(body) is not None

        return contains_display_name
    if kind == "room_member_count":
        is_ = cond.get("is")
        m = _MEMBER_COUNT.match(is_) if isinstance(is_, str) else None
        if m is None:
            return _never
        op = m.group(1) or "=="
        n = int(m.group(2))
        compare: dict[str, Callable[[int], bool]] = {
            "==": lambda c: c == n,
            "<": lambda c: c < n,
            ">": lambda c: c > n,
            "<=": lambda c: c <= n,
            ">=": lambda c: c >= n,
        }
        test = compare[op]

        def room_member_count(event: Mapping[str, Any], ctx: PushContext) -> bool:
            return test(ctx.member_count)

        return room_member_count
    if kind == "sender_notification_permission":
        if not isinstance(key, str):
            return _never

        def sender_notification_permission(event: Mapping[str, Any], ctx: PushContext) -> bool:
            return ctx.sender_power_level >= ctx.notification_level(key)

        return sender_notification_permission
    return _never


@functools.lru_cache(maxsize=256)
def _literal_word_regex(text: str) -> re.Pattern[str]:
    return re.compile(f"(?<![{_WORD}]){re.escape(text)}(?![{_WORD}])", re.IGNORECASE)


def strip_historical(actions: Iterable[Any]) -> tuple[Any, ...]:
    return tuple(a for a in actions if not (isinstance(a, str) and a in HISTORICAL_ACTIONS))


def interpret_actions(actions: Sequence[Any]) -> tuple[bool, bool, dict[str, Any]]:
    """(notify, highlight, tweaks) of an actions list.

    A ``highlight`` tweak with no value means true; no highlight tweak means false.
    """
    notify = False
    tweaks: dict[str, Any] = {}
    for a in actions:
        if a == "notify":
            notify = True
        elif isinstance(a, Mapping) and isinstance(a.get("set_tweak"), str):
            name = a["set_tweak"]
            tweaks[name] = a.get("value", True) if name == "highlight" else a.get("value")
    highlight = tweaks.get("highlight") is True
    return notify, highlight, tweaks


@dataclass(frozen=True, slots=True)
class _Compiled:
    rule: PushRule
    test: Callable[[Mapping[str, Any], PushContext], bool]
    result: PushResult


def _compile_rule(rule: PushRule) -> _Compiled:
    test: Callable[[Mapping[str, Any], PushContext], bool]
    if rule.kind in ("override", "underride"):
        conds = [compile_condition(c) for c in (rule.conditions or ())]

        def test(event: Mapping[str, Any], ctx: PushContext) -> bool:
            return all(c(event, ctx) for c in conds)

    elif rule.kind == "content":
        pattern = rule.pattern
        if pattern is None:
            test = _never
        else:
            rx = glob_regex(pattern, True)

            def test(event: Mapping[str, Any], ctx: PushContext) -> bool:
                body = lookup(event, "content.body")
                return isinstance(body, str) and rx.search(body) is not None

    elif rule.kind == "room":
        rid = rule.rule_id

        def test(event: Mapping[str, Any], ctx: PushContext) -> bool:
            return event.get("room_id") == rid

    elif rule.kind == "sender":
        sid = rule.rule_id

        def test(event: Mapping[str, Any], ctx: PushContext) -> bool:
            return event.get("sender") == sid

    else:
        test = _never
    actions = strip_historical(rule.actions)
    notify, highlight, tweaks = interpret_actions(actions)
    return _Compiled(rule, test, PushResult(rule.rule_id, rule.kind, actions, notify, highlight, tweaks))


# Compiled rules by content, least recently used first. The defaults every ruleset
# shares stay hot; rules naming one user (their mention and invite rules) come and go.
# Rulesets are built on database threads: each step below is one operation on the
# OrderedDict, atomic in CPython, and a race at worst compiles a rule twice.
_SHARED_MAX = 512
_shared_rules: OrderedDict[str, _Compiled] = OrderedDict()


def _shared(rule: PushRule) -> _Compiled:
    """The compiled form of ``rule``, shared with every rule of the same content."""
    key = rule.kind + "\n" + json.dumps(rule.to_json(), sort_keys=True, separators=(",", ":"))
    hit = _shared_rules.get(key)
    if hit is not None:
        with contextlib.suppress(KeyError):  # (evicted meanwhile by another thread)
            _shared_rules.move_to_end(key)
        return hit
    compiled = _compile_rule(rule)
    _shared_rules[key] = compiled
    while len(_shared_rules) > _SHARED_MAX:
        try:
            _shared_rules.popitem(last=False)
        except KeyError:
            break
    return compiled


class Ruleset:
    """One user's rules in evaluation order, compiled once, with their JSON form."""

    __slots__ = ("user_id", "by_kind", "_ordered", "uses_display_name")

    def __init__(self, user_id: str, by_kind: Mapping[str, Sequence[PushRule]]) -> None:
        self.user_id = user_id
        self.by_kind: dict[str, list[PushRule]] = {}
        ordered: list[_Compiled] = []
        for kind in KINDS:
            rules = self.by_kind[kind] = []
            for rule in by_kind.get(kind, ()):
                compiled = _shared(rule)
                rules.append(compiled.rule)
                if rule.enabled:
                    ordered.append(compiled)
        self._ordered = tuple(ordered)
        self.uses_display_name = any(
            c.get("kind") == "contains_display_name"
            for c_rule in ordered
            for c in (c_rule.rule.conditions or ())
        )

    @classmethod
    def build(
        cls,
        user_id: str,
        user_rules: Iterable[PushRule],
        default_overrides: Mapping[str, tuple[bool | None, Sequence[Any] | None]] | None = None,
    ) -> Ruleset:
        """The user's rules (each kind in priority order) merged with the server defaults.

        ``default_overrides``: {rule_id: (enabled or None, actions or None)} the user set
        on server-default rules.
        """
        overrides = default_overrides or {}

        def apply(rule: PushRule) -> PushRule:
            o = overrides.get(rule.rule_id)
            return rule.with_overrides(*o) if o is not None else rule

        mine: dict[str, list[PushRule]] = {k: [] for k in KINDS}
        for rule in user_rules:
            mine[rule.kind].append(rule)
        defaults = [apply(r) for r in default_override_rules(user_id)]
        master = [r for r in defaults if r.rule_id == MASTER_RULE]
        by_kind = {
            "override": master + mine["override"] + [r for r in defaults if r.rule_id != MASTER_RULE],
            "content": mine["content"],
            "room": mine["room"],
            "sender": mine["sender"],
            "underride": mine["underride"] + [apply(r) for r in default_underride_rules()],
        }
        return cls(user_id, by_kind)

    def find(self, kind: str, rule_id: str) -> PushRule | None:
        for rule in self.by_kind.get(kind, ()):
            if rule.rule_id == rule_id:
                return rule
        return None

    def to_json(self) -> JsonDict:
        return {k: [r.to_json() for r in self.by_kind[k]] for k in KINDS}

    def evaluate(self, event: Mapping[str, Any], ctx: PushContext) -> PushResult | None:
        """The result of the first matching enabled rule, or None (no notification)."""
        if event.get("sender") == self.user_id:
            return None
        for compiled in self._ordered:
            if compiled.test(event, ctx):
                return compiled.result
        return None


# -- validation of what clients send (PUT /pushrules/global/{kind}/{ruleId}) ----------------


def validate_actions(actions: Any) -> tuple[Any, ...]:
    if not isinstance(actions, list):
        raise PushRuleError("M_BAD_JSON", "'actions' must be a list")
    if len(actions) > MAX_ACTIONS:
        raise PushRuleError("M_INVALID_PARAM", "Too many actions")
    out: list[Any] = []
    for a in actions:
        if isinstance(a, str):
            if a not in ("notify",) and a not in HISTORICAL_ACTIONS:
                raise PushRuleError("M_INVALID_PARAM", f"Unrecognised action {a!r}")
            out.append(a)
        elif isinstance(a, dict):
            if "set_tweak" in a:
                if not isinstance(a["set_tweak"], str):
                    raise PushRuleError("M_INVALID_PARAM", "'set_tweak' must be a string")
                out.append(dict(a))
            else:
                raise PushRuleError("M_INVALID_PARAM", f"Unrecognised action {a!r}")
        else:
            raise PushRuleError("M_INVALID_PARAM", "Actions must be strings or objects")
    return tuple(out)


def validate_rule_id(kind: str, rule_id: str) -> None:
    if kind not in KINDS:
        raise PushRuleError("M_INVALID_PARAM", f"Unknown push rule kind {kind!r}")
    if not rule_id:
        raise PushRuleError("M_INVALID_PARAM", "Empty rule ID")
    if rule_id.startswith("."):
        raise PushRuleError("M_INVALID_PARAM", "Rule IDs starting with '.' are reserved for server-default rules")
    if "/" in rule_id or "\\" in rule_id:
        raise PushRuleError("M_INVALID_PARAM", "Rule IDs may not contain slashes or backslashes")


def parse_user_rule(kind: str, rule_id: str, body: Mapping[str, Any]) -> PushRule:
    """The rule a client PUT, validated; raises :class:`PushRuleError`."""
    validate_rule_id(kind, rule_id)
    if "actions" not in body:
        raise PushRuleError("M_MISSING_PARAM", "Missing 'actions'")
    actions = validate_actions(body["actions"])
    conditions: tuple[Mapping[str, Any], ...] | None = None
    pattern: str | None = None
    if kind in ("override", "underride"):
        raw = body.get("conditions", [])
        if raw is None:
            raw = []
        if not isinstance(raw, list):
            raise PushRuleError("M_BAD_JSON", "'conditions' must be a list")
        if len(raw) > MAX_CONDITIONS:
            raise PushRuleError("M_INVALID_PARAM", "Too many conditions")
        conds: list[JsonDict] = []
        for c in raw:
            if not isinstance(c, dict) or not isinstance(c.get("kind"), str):
                raise PushRuleError("M_BAD_JSON", "Each condition must be an object with a 'kind'")
            for name in ("key", "pattern", "is"):
                if name in c and not isinstance(c[name], str):
                    raise PushRuleError("M_BAD_JSON", f"Condition {name!r} must be a string")
            if len(c.get("pattern", "")) > MAX_PATTERN_LENGTH:
                raise PushRuleError("M_INVALID_PARAM", "Pattern too long")
            conds.append(dict(c))
        conditions = tuple(conds)
    elif kind == "content":
        p = body.get("pattern")
        if p is None:
            raise PushRuleError("M_MISSING_PARAM", "Content rules need a 'pattern'")
        if not isinstance(p, str):
            raise PushRuleError("M_BAD_JSON", "'pattern' must be a string")
        if len(p) > MAX_PATTERN_LENGTH:
            raise PushRuleError("M_INVALID_PARAM", "Pattern too long")
        pattern = p
    return PushRule(kind, rule_id, actions, False, True, conditions, pattern)


def rule_from_stored(kind: str, rule_id: str, data: Mapping[str, Any], enabled: bool) -> PushRule:
    """A user rule as stored (its JSON form) back into a :class:`PushRule`."""
    conds = data.get("conditions")
    return PushRule(
        kind,
        rule_id,
        tuple(data.get("actions", ())),
        False,
        enabled,
        tuple(conds) if kind in ("override", "underride") and isinstance(conds, list) else (
            () if kind in ("override", "underride") else None
        ),
        data.get("pattern") if kind == "content" else None,
    )


def event_for_push(
    event_id: str,
    room_id: str,
    sender: str,
    etype: str,
    content: Mapping[str, Any],
    state_key: str | None,
    origin_server_ts: int,
) -> JsonDict:
    """The flat event dict rules are matched against (the client format's fields)."""
    out: JsonDict = {
        "event_id": event_id,
        "room_id": room_id,
        "sender": sender,
        "type": etype,
        "content": content,
        "origin_server_ts": origin_server_ts,
    }
    if state_key is not None:
        out["state_key"] = state_key
    return out
