"""Authorisation rules, table-driven from tests/protocol/fixtures/auth_rules/*.json.

Each case names the room versions it applies to and, per version range, whether the
event is allowed or which rule (by its stable name) rejects it; ``rule_number`` pins
the spec's numbering of that rule in particular versions. Presets in ``_presets.json``
give the starting room state; ``state`` entries replace preset entries with the same
(type, state_key).

Event ids: ``"x"`` becomes ``$x:example.com`` in v1/v2 and ``$x`` from v3 (where room
version 12's room ID is then ``!create``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from pocketserver.protocol.auth_rules import (
    AuthError,
    auth_types_for_event,
    check_against_auth_events,
    check_auth,
    rule_number,
)
from pocketserver.protocol.events import Event, StateKey
from pocketserver.protocol.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion

FIXTURES = Path(__file__).parent / "fixtures" / "auth_rules"
PRESETS: dict[str, list[dict[str, Any]]] = json.loads((FIXTURES / "_presets.json").read_text())[
    "presets"
]
CREATORLESS_VERSIONS = {"11", "12"}


def parse_versions(spec: str) -> list[str]:
    out: list[str] = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out += [str(v) for v in range(int(lo), int(hi or lo) + 1)]
    return out


def expectation_for(case: dict[str, Any], version: str) -> str | None:
    """``"allow"``, a rule name, or None when the case does not apply to ``version``."""
    if version not in parse_versions(case.get("versions", "1-12")):
        return None
    expect = case["expect"]
    if isinstance(expect, str):
        return expect
    for spec, value in expect.items():
        if version in parse_versions(spec):
            return str(value)
    raise AssertionError(f"{case['name']}: no expectation for v{version}")


class Builder:
    """Turns the fixtures' short events into Events of one room version."""

    def __init__(self, rv: RoomVersion) -> None:
        self.rv = rv

    def event_id(self, short: str) -> str:
        if short.startswith("$"):
            return short
        if self.rv.uses_event_id_in_pdu:
            return f"${short}:example.com"
        return f"${short}"

    def room_id(self, short: str = "room") -> str:
        if self.rv.room_id_is_create_event_hash:
            return "!" + self.event_id("create" if short == "room" else short)[1:]
        return f"!{short}:example.com"

    def build(self, spec: Mapping[str, Any]) -> Event:
        rv = self.rv
        eid = self.event_id(spec["id"])
        is_create = spec["type"] == "m.room.create"
        content = dict(spec.get("content", {}))
        if (
            is_create
            and not rv.implicit_room_creator
            and "creator" not in content
            and not spec.get("no_auto_creator")
        ):
            content["creator"] = spec["sender"]
        if rv.privileged_creators and spec["type"] == "m.room.power_levels" and self.strip:
            # v12: creators may not appear in users; the cases are written for v1-v11
            # unless they set "v12_keep_creators".
            users = content.get("users")
            if isinstance(users, dict):
                content["users"] = {u: v for u, v in users.items() if u not in self.creators}
        prev = [self.event_id(p) for p in spec.get("prev", [] if is_create else ["prev"])]
        auth = [self.event_id(a) for a in spec.get("auth_events", [])]
        pdu: dict[str, Any] = {
            "type": spec["type"],
            "sender": spec["sender"],
            "content": content,
            "prev_events": [[p, {}] for p in prev] if rv.uses_event_id_in_pdu else prev,
            "auth_events": [[a, {}] for a in auth] if rv.uses_event_id_in_pdu else auth,
            "depth": 5,
            "origin_server_ts": spec.get("ts", 1000),
        }
        if "state_key" in spec:
            pdu["state_key"] = spec["state_key"]
        if "redacts" in spec:
            if rv.updated_redaction_rules:
                content["redacts"] = spec["redacts"]
            else:
                pdu["redacts"] = spec["redacts"]
        if not (is_create and rv.room_id_is_create_event_hash) or "room" in spec:
            pdu["room_id"] = self.room_id(spec.get("room", "room"))
        if rv.uses_event_id_in_pdu:
            pdu["event_id"] = eid
        ev = Event.from_pdu(pdu, rv, event_id=eid)
        if spec.get("rejected"):
            ev.rejected_reason = "rejected in fixture"
        return ev

    creators: frozenset[str] = frozenset()
    strip = True


def build_state(case: dict[str, Any], b: Builder) -> dict[StateKey, Event]:
    preset = case.get("preset", "room")
    specs: dict[StateKey, dict[str, Any]] = {}
    for spec in [] if preset == "none" else PRESETS[preset]:
        specs[(spec["type"], spec["state_key"])] = spec
    for spec in case.get("state", []):
        specs[(spec["type"], spec["state_key"])] = spec
    for t, sk in case.get("remove", []):
        specs.pop((t, sk), None)
    create = specs.get(("m.room.create", ""))
    if create is not None:
        c = create.get("content", {})
        creators = {create["sender"]}
        extra = c.get("additional_creators")
        if isinstance(extra, list):
            creators |= {u for u in extra if isinstance(u, str)}
        b.creators = frozenset(creators)
    return {k: b.build(s) for k, s in specs.items()}


def run_case(case: dict[str, Any], version: str) -> None:
    rv = KNOWN_ROOM_VERSIONS[version]
    b = Builder(rv)
    state = build_state(case, b)
    b.strip = not case.get("v12_keep_creators", False)
    event = b.build(case["event"])
    signed_by = case.get("signed_by")

    def is_signed_by(ev: Event, server: str) -> bool:
        return signed_by is not None and server in signed_by

    verify = is_signed_by if signed_by is not None else None
    if "auth_events" in case:
        by_id = {e.event_id: e for e in state.values()}
        for spec in case.get("extra_events", []):
            extra = b.build(spec)
            by_id[extra.event_id] = extra
        cited = case["auth_events"]
        if rv.room_id_is_create_event_hash and not case.get("v12_cite_create"):
            cited = [a for a in cited if a != "create"]
        listed = [by_id[b.event_id(a)] for a in cited]
        create = state.get(("m.room.create", ""))
        if create is not None and case.get("create_rejected"):
            create.rejected_reason = "rejected in fixture"
        check_against_auth_events(event, listed, create, verify_signature_of_server=verify)
    else:
        check_auth(event, state, verify_signature_of_server=verify)


def load_cases() -> list[Any]:
    params = []
    for path in sorted(FIXTURES.glob("*.json")):
        if path.name.startswith("_"):
            continue
        for case in json.loads(path.read_text())["cases"]:
            for version in KNOWN_ROOM_VERSIONS:
                expected = expectation_for(case, version)
                if expected is None:
                    continue
                params.append(
                    pytest.param(
                        case, version, expected, id=f"{path.stem}:{case['name']}:v{version}"
                    )
                )
    return params


@pytest.mark.parametrize("case,version,expected", load_cases())
def test_auth_rule(case: dict[str, Any], version: str, expected: str) -> None:
    if expected == "allow":
        run_case(case, version)
        return
    with pytest.raises(AuthError) as info:
        run_case(case, version)
    assert info.value.name == expected, str(info.value)
    numbers = case.get("rule_number", {})
    if version in numbers:
        assert info.value.rule == numbers[version]


def test_every_rule_is_covered() -> None:
    """Every rule name the module can raise appears in some fixture as an expectation."""
    import re

    source = (Path(__file__).parents[2] / "pocketserver/protocol/auth_rules.py").read_text()
    raised = set(re.findall(r'_fail\(\s*rv,\s*"([a-z_.]+)"', source))
    expected: set[str] = set()
    for path in FIXTURES.glob("[!_]*.json"):
        for case in json.loads(path.read_text())["cases"]:
            e = case["expect"]
            expected |= {e} if isinstance(e, str) else set(e.values())
    assert raised - expected == set()


def test_rule_numbers_follow_the_versions() -> None:
    v = KNOWN_ROOM_VERSIONS
    assert rule_number("member.join.banned", v["1"]) == "5.2.3"
    assert rule_number("member.join.banned", v["6"]) == "4.2.3"
    assert rule_number("member.join.banned", v["8"]) == "4.3.3"
    assert rule_number("member.join.banned", v["12"]) == "5.3.3"
    assert rule_number("power_levels.users_new", v["9"]) == "9.7"
    assert rule_number("power_levels.users_new", v["10"]) == "9.9"
    assert rule_number("power_levels.users_new", v["12"]) == "10.10"
    assert rule_number("redaction.power", v["2"]) == "11.3"
    assert rule_number("state_key", v["5"]) == "9"
    assert rule_number("state_key", v["6"]) == "8"


# -- auth events selection ----------------------------------------------------------------


def _fields(**kw: Any) -> dict[str, Any]:
    return {"type": "m.room.member", "sender": "@a:x", "state_key": "@b:x", **kw}


@pytest.mark.parametrize("version", list(KNOWN_ROOM_VERSIONS))
def test_auth_types_for_event(version: str) -> None:
    rv = KNOWN_ROOM_VERSIONS[version]
    create = set() if rv.room_id_is_create_event_hash else {("m.room.create", "")}
    base = create | {("m.room.power_levels", ""), ("m.room.member", "@a:x")}
    assert (
        auth_types_for_event({"type": "m.room.create", "sender": "@a:x", "state_key": ""}, rv)
        == set()
    )
    assert auth_types_for_event({"type": "m.room.message", "sender": "@a:x"}, rv) == base
    target = base | {("m.room.member", "@b:x")}
    jr = {("m.room.join_rules", "")}
    for membership in ("join", "invite", "knock"):
        got = auth_types_for_event(_fields(content={"membership": membership}), rv)
        assert got == target | jr
    for membership in ("leave", "ban"):
        assert auth_types_for_event(_fields(content={"membership": membership}), rv) == target
    tpi = {"membership": "invite", "third_party_invite": {"signed": {"token": "T"}}}
    assert auth_types_for_event(_fields(content=tpi), rv) == target | jr | {
        ("m.room.third_party_invite", "T")
    }
    via = {"membership": "join", "join_authorised_via_users_server": "@c:x"}
    extra = {("m.room.member", "@c:x")} if rv.restricted_join_rule else set()
    assert auth_types_for_event(_fields(content=via), rv) == target | jr | extra
