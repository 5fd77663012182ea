"""Authorisation rules for events, every room version.

Spec: shared/spec/content/rooms/fragments/v1-auth-rules.md (v1, v2),
v3-auth-rules.md (v3-v5), rooms/v6.md, v7.md, v8-auth-rules.md (v8, v9), rooms/v10.md,
v11.md, v12.md; server-server-api.md "Auth events selection" and "Definitions".

The room version's flags (:class:`~pocketserver.protocol.room_versions.RoomVersion`)
select the differences; the rule numbering moves between versions, so every check
names itself with a stable symbolic name and :func:`rule_number` renders the number
the spec uses for that room version. Comments cite the v12 numbering and the versions
a rule applies to.

The rules, in order (v12 numbering; v1-v5 have the aliases rule as 4 and no rule 2;
v6-v11 have neither):

1. ``m.room.create``: no prev_events; room_id (v1-v11: same domain as the sender;
   v12: absent); known ``room_version``; ``creator`` present (v1-v10);
   ``additional_creators`` well-formed (v12).
2. (v12) the room ID is the ID of an accepted create event.
3. the event's ``auth_events`` (:func:`check_auth_events_list`): no duplicates, only
   the types selected by :func:`auth_types_for_event`, none rejected, a create event
   among them (v1-v11), all in the same room.
4. ``m.federate``.
(v1-v5: ``m.room.aliases``.)
5. ``m.room.member``: join / invite (with third-party invites) / leave / ban / knock (v7+),
   restricted joins (v8+, ``knock_restricted`` v10+).
6. the sender must be joined.
7. ``m.room.third_party_invite`` needs the invite level.
8. the event type's required power level.
9. ``@``-prefixed state keys belong to their user.
10. ``m.room.power_levels``: value formats (v10+: integers only), creators not in
    ``users`` (v12), and no raising or lowering beyond the sender's own level.
(v1-v2: ``m.room.redaction`` needs the redact level or the same event-ID domain.)
11. Otherwise, allow.

What this module must never know: where events come from. It takes the events it
needs, plus callables for the two checks that need signatures of servers
(``join_authorised_via_users_server``) or keys (third-party invites) it cannot see.
Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from pocketserver.protocol.events import Event, StateKey
from pocketserver.protocol.identifiers import is_valid_user_id
from pocketserver.protocol.power_levels import (
    LEVEL_DEFAULTS,
    InvalidPowerLevel,
    PowerLevels,
    parse_level,
    room_creators,
)
from pocketserver.protocol.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion

CREATE: StateKey = ("m.room.create", "")
POWER_LEVELS: StateKey = ("m.room.power_levels", "")
JOIN_RULES: StateKey = ("m.room.join_rules", "")

#: ``is_signed_by(event, server_name)``: whether ``event`` carries a valid signature of
#: ``server_name`` (rule 5.2, restricted joins).
IsSignedBy = Callable[[Event, str], bool]

#: ``verify(signed, public_keys)``: whether any signature in a third-party invite's
#: ``signed`` object verifies with one of the invite event's base64 public keys
#: (rule 5.4.1.7). The default uses ed25519 directly (:func:`verify_third_party_signed`).
VerifyThirdPartySigned = Callable[[Mapping[str, Any], Sequence[str]], bool]


class AuthError(Exception):
    """The event is not allowed.

    ``name`` is a stable symbolic name of the failing rule (used by tests and logs);
    ``rule`` is its number in the spec of the event's room version (e.g. ``"5.3.3"``).
    """

    def __init__(self, name: str, rule: str, reason: str) -> None:
        super().__init__(f"rule {rule} ({name}): {reason}")
        self.name = name
        self.rule = rule
        self.reason = reason


# -- rule numbering -------------------------------------------------------------------


def _top_sections(rv: RoomVersion) -> list[str]:
    sections = ["create"]
    if rv.room_id_is_create_event_hash:
        sections.append("room_id")  # v12 rule 2
    sections += ["auth_events", "federate"]
    if rv.special_case_aliases_auth:
        sections.append("aliases")  # v1-v5 rule 4
    sections += [
        "member",
        "sender_not_joined",
        "third_party_invite",
        "event_power",
        "state_key",
        "power_levels",
    ]
    if rv.uses_event_id_in_pdu:
        sections.append("redaction")  # v1-v2 rule 11
    return sections


def _member_sections(rv: RoomVersion) -> list[str]:
    s = ["invalid"]
    if rv.restricted_join_rule:
        s.append("join_authorised_signature")  # v8+ rule 5.2 (4.2 in v8-v11)
    s += ["join", "invite", "leave", "ban"]
    if rv.knock_join_rule:
        s.append("knock")  # v7+
    s.append("unknown")
    return s


def _power_level_sections(rv: RoomVersion) -> list[str]:
    s = []
    if rv.enforce_int_power_levels:
        s += ["named_int", "maps_int"]  # v10+ 10.1, 10.2
    s.append("users")
    if rv.privileged_creators:
        s.append("creators")  # v12 10.4
    s += ["no_previous", "named", "maps_old", "maps_new", "users_old", "users_new"]
    return s


_FIXED_SUBRULES = {
    "create": {
        "prev_events": "1",
        "room_id": "2",
        "room_version": "3",
        "creator": "4",
        "additional_creators": "4",
    },
    "auth_events": {
        "duplicate": "1",
        "unexpected": "2",
        "rejected": "3",
        "no_create": "4",
        "wrong_room": "5",
    },
    "aliases": {"no_state_key": "1", "domain": "2"},
    "third_party_invite": {"power": "1"},
    "redaction": {"power": "3"},
}


def rule_number(name: str, rv: RoomVersion) -> str:
    """The spec's number, in room version ``rv``, of the rule called ``name``
    (e.g. ``rule_number("member.join.banned", v1) == "5.2.3"``)."""
    parts = name.split(".")
    top = parts[0]
    number = [str(_top_sections(rv).index(top) + 1)]
    rest = parts[1:]
    if not rest:
        return number[0]
    if top == "member":
        sub = rest[0]
        number.append(str(_member_sections(rv).index(sub) + 1))
        if len(rest) > 1:
            leaf = rest[1]
            if sub == "join":
                last = "7" if rv.restricted_join_rule else "6"
                number.append(
                    {
                        "creator": "1",
                        "sender_not_target": "2",
                        "banned": "3",
                        "not_invited": "4",
                        "restricted_unauthorised": "5.2",
                        "forbidden": last,
                    }[leaf]
                )
            elif sub == "invite":
                if leaf == "tpi":
                    number.append("1")
                    number.append(
                        {
                            "banned": "1",
                            "no_signed": "2",
                            "signed_fields": "3",
                            "mxid": "4",
                            "no_invite_event": "5",
                            "sender": "6",
                            "signature": "8",
                        }[rest[2]]
                    )
                else:
                    number.append({"not_joined": "2", "target": "3", "power": "5"}[leaf])
            elif sub == "leave":
                number.append(
                    {"self": "1", "not_joined": "2", "unban_power": "3", "power": "5"}[leaf]
                )
            elif sub == "ban":
                number.append({"not_joined": "1", "power": "3"}[leaf])
            elif sub == "knock":
                number.append({"join_rule": "1", "sender": "2", "membership": "4"}[leaf])
        return ".".join(number)
    if top == "power_levels":
        number.append(str(_power_level_sections(rv).index(rest[0]) + 1))
        return ".".join(number)
    number.append(_FIXED_SUBRULES[top][rest[0]])
    return ".".join(number)


def _fail(rv: RoomVersion, name: str, reason: str) -> AuthError:
    return AuthError(name, rule_number(name, rv), reason)


# -- helpers --------------------------------------------------------------------------


def _domain(identifier: str) -> str:
    return identifier.partition(":")[2]


def _membership_of(state: Mapping[StateKey, Event], user_id: str) -> str | None:
    ev = state.get(("m.room.member", user_id))
    if ev is None:
        return None
    m = ev.content.get("membership")
    return m if isinstance(m, str) else None


def _join_rule(state: Mapping[StateKey, Event]) -> str:
    ev = state.get(JOIN_RULES)
    if ev is None:
        # No join rules event: treated as "invite", as Synapse, ruma and Conduit do, so
        # that invited users can join; any other reading only rejects more.
        return "invite"
    jr = ev.content.get("join_rule")
    return jr if isinstance(jr, str) else ""


def _fields(event_or_fields: Event | Mapping[str, Any]) -> tuple[str, str, str | None, Any]:
    if isinstance(event_or_fields, Event):
        e = event_or_fields
        return e.type, e.sender, e.state_key, e.content
    f = event_or_fields
    return f["type"], f["sender"], f.get("state_key"), f.get("content", {})


# -- auth events selection -----------------------------------------------------------


def auth_types_for_event(
    event_or_fields: Event | Mapping[str, Any], rv: RoomVersion
) -> set[StateKey]:
    """The (type, state_key) pairs of the state an event's ``auth_events`` may cite.

    server-server-api.md "Auth events selection": the create event (not in v12, where
    the room ID stands for it), the power levels, the sender's membership and, for
    ``m.room.member``: the target's membership; the join rules for join/invite/knock;
    the third-party invite named by ``signed.token``; for restricted joins (v8+) the
    membership of ``join_authorised_via_users_server``.

    Accepts an :class:`Event` or a dict with ``type``, ``sender``, ``state_key``,
    ``content`` (e.g. an event being built).
    """
    etype, sender, state_key, content = _fields(event_or_fields)
    if etype == "m.room.create":
        return set()
    types: set[StateKey] = {POWER_LEVELS, ("m.room.member", sender)}
    if not rv.room_id_is_create_event_hash:
        types.add(CREATE)
    if etype == "m.room.member" and isinstance(content, Mapping):
        if isinstance(state_key, str):
            types.add(("m.room.member", state_key))
        membership = content.get("membership")
        if membership in ("join", "invite", "knock"):
            types.add(JOIN_RULES)
        if membership == "invite":
            tpi = content.get("third_party_invite")
            signed = tpi.get("signed") if isinstance(tpi, Mapping) else None
            token = signed.get("token") if isinstance(signed, Mapping) else None
            if isinstance(token, str):
                types.add(("m.room.third_party_invite", token))
        if membership == "join" and rv.restricted_join_rule:
            via = content.get("join_authorised_via_users_server")
            if isinstance(via, str):
                types.add(("m.room.member", via))
    return types


# -- rule 1: m.room.create -------------------------------------------------------------


def check_create_event(event: Event) -> None:
    """Rule 1 (all versions): the create event, which depends on no state."""
    rv = event.room_version
    # 1.1 If it has any prev_events, reject.
    if event.prev_event_ids:
        raise _fail(rv, "create.prev_events", "create event has prev_events")
    if rv.room_id_is_create_event_hash:
        # 1.2 (v12) If the event has a room_id, reject.
        if "room_id" in event.pdu:
            raise _fail(rv, "create.room_id", "create event must not have a room_id")
    else:
        # 1.2 (v1-v11) If the domain of the room_id does not match the domain of the
        # sender, reject.
        if _domain(event.room_id) != _domain(event.sender):
            raise _fail(rv, "create.room_id", "room_id domain does not match sender's")
    # 1.3 If content.room_version is present and is not a recognised version, reject.
    if "room_version" in event.content:
        version = event.content["room_version"]
        if not isinstance(version, str) or version not in KNOWN_ROOM_VERSIONS:
            raise _fail(rv, "create.room_version", f"unknown room version {version!r}")
    # 1.4 (v1-v10) If content has no creator property, reject.
    if not rv.implicit_room_creator and "creator" not in event.content:
        raise _fail(rv, "create.creator", "create event has no creator")
    # 1.4 (v12) additional_creators must be an array of valid user IDs.
    if rv.privileged_creators and "additional_creators" in event.content:
        extra = event.content["additional_creators"]
        if not isinstance(extra, list) or not all(
            isinstance(u, str) and _is_valid_user_id(u) for u in extra
        ):
            raise _fail(rv, "create.additional_creators", "additional_creators must list user IDs")
    # 1.5 Otherwise, allow.


def _is_valid_user_id(user_id: str) -> bool:
    # The same validation as for `sender`: the grammar accepted for IDs seen in events,
    # at most 255 bytes.
    return len(user_id.encode("utf-8")) <= 255 and is_valid_user_id(user_id)


# -- rules 2-3: the event's own auth_events ----------------------------------------------


def check_auth_events_list(
    event: Event, auth_events: Sequence[Event], create_event: Event | None = None
) -> dict[StateKey, Event]:
    """Rules 2 (v12) and 3 (v1-v11: rule 2): checks on the events an event cites as
    its ``auth_events``, resolved by the caller, in the order listed.

    ``create_event`` is the room's create event in v12 (derived from the room ID, never
    listed); ignored before v12. Returns the auth events keyed by (type, state_key),
    including the create event, ready for :func:`check_auth`.
    """
    rv = event.room_version
    if event.type == "m.room.create":
        return {}
    if rv.room_id_is_create_event_hash:
        # 2 (v12) If the room_id is not an event ID for an accepted (not rejected)
        # m.room.create event, with the sigil ! instead of $, reject.
        if (
            create_event is None
            or create_event.type != "m.room.create"
            or create_event.state_key != ""
            or create_event.rejected_reason is not None
            or event.room_id != "!" + create_event.event_id[1:]
        ):
            raise _fail(rv, "room_id", "room ID is not the ID of an accepted create event")
    expected = auth_types_for_event(event, rv)
    by_key: dict[StateKey, Event] = {}
    for ae in auth_events:
        if ae.state_key is None:
            raise _fail(rv, "auth_events.unexpected", f"{ae.event_id} is not a state event")
        key = (ae.type, ae.state_key)
        # 3.1 If there are duplicate entries for a given type and state_key pair, reject.
        if key in by_key:
            raise _fail(rv, "auth_events.duplicate", f"duplicate auth event for {key}")
        # 3.2 If there are entries whose type and state_key don't match those specified
        # by the auth events selection algorithm, reject. (v12: m.room.create must not
        # be selected.)
        if key not in expected:
            raise _fail(rv, "auth_events.unexpected", f"unexpected auth event for {key}")
        # 3.3 If there are entries which were themselves rejected, reject.
        if ae.rejected_reason is not None:
            raise _fail(rv, "auth_events.rejected", f"auth event {ae.event_id} was rejected")
        by_key[key] = ae
    # 3.4 (v1-v11) If there is no m.room.create event among the entries, reject.
    if not rv.room_id_is_create_event_hash and CREATE not in by_key:
        raise _fail(rv, "auth_events.no_create", "no create event among auth events")
    # 3.5 If any event in auth_events has a room_id which does not match that of the
    # event being authorised, reject.
    for ae in by_key.values():
        if ae.room_id != event.room_id:
            raise _fail(
                rv, "auth_events.wrong_room", f"auth event {ae.event_id} is in another room"
            )
    if rv.room_id_is_create_event_hash and create_event is not None:
        by_key[CREATE] = create_event
    return by_key


def check_against_auth_events(
    event: Event,
    auth_events: Sequence[Event],
    create_event: Event | None = None,
    *,
    verify_signature_of_server: IsSignedBy | None = None,
    verify_third_party_signed: VerifyThirdPartySigned | None = None,
) -> None:
    """All the rules, with the event's own ``auth_events`` as the state ("Checks
    performed on receipt of a PDU", step 4)."""
    if event.type == "m.room.create":
        check_create_event(event)
        return
    state = check_auth_events_list(event, auth_events, create_event)
    check_auth(
        event,
        state,
        verify_signature_of_server=verify_signature_of_server,
        verify_third_party_signed=verify_third_party_signed,
    )


# -- rules 1, 4-11: against a state -----------------------------------------------------


def check_auth(
    event: Event,
    auth_events: Mapping[StateKey, Event],
    *,
    verify_signature_of_server: IsSignedBy | None = None,
    verify_third_party_signed: VerifyThirdPartySigned | None = None,
) -> None:
    """Check ``event`` against the state ``auth_events`` (any mapping that holds at
    least the keys of :func:`auth_types_for_event` present in the state, *and* the
    create event under ``("m.room.create", "")`` in every room version).

    Raises :class:`AuthError`. The checks on the event's own ``auth_events`` list are
    :func:`check_auth_events_list`; this function is what state resolution reuses.

    ``verify_signature_of_server(event, server_name)`` answers rule 5.2 (v8+) for a
    ``join_authorised_via_users_server``; when None, the caller asserts that signatures
    were verified on receipt (as they must be, "Checks performed on receipt of a PDU"
    step 2) and the rule is skipped.
    """
    rv = event.room_version
    # 1. If type is m.room.create: its rules depend on no state.
    if event.type == "m.room.create":
        check_create_event(event)
        return

    create = auth_events.get(CREATE)
    if create is None:
        if rv.room_id_is_create_event_hash:
            raise _fail(rv, "room_id", "the room's create event is unknown")
        raise _fail(rv, "auth_events.no_create", "no create event in the state")
    if rv.room_id_is_create_event_hash and event.room_id != "!" + create.event_id[1:]:
        # 2 (v12) The room ID must be the create event's ID.
        raise _fail(rv, "room_id", "room ID does not match the create event")

    # 4 (v1-v11: 3) If the content of the m.room.create event has m.federate set to
    # false, and the sender domain of the event does not match the sender domain of
    # the create event, reject.
    if create.content.get("m.federate", True) is False and _domain(event.sender) != _domain(
        create.sender
    ):
        raise _fail(rv, "federate", "room is not federated")

    # v1-v5 rule 4: m.room.aliases (removed in v6).
    if rv.special_case_aliases_auth and event.type == "m.room.aliases":
        # 4.1 If event has no state_key, reject.
        if event.state_key is None:
            raise _fail(rv, "aliases.no_state_key", "aliases event has no state_key")
        # 4.2 If sender's domain doesn't match state_key, reject.
        if event.state_key != _domain(event.sender):
            raise _fail(rv, "aliases.domain", "state_key is not the sender's domain")
        # 4.3 Otherwise, allow.
        return

    pl = PowerLevels.from_events(create, auth_events.get(POWER_LEVELS), rv)

    # 5 (v6-v11: 4) If type is m.room.member.
    if event.type == "m.room.member":
        _check_member(
            event,
            auth_events,
            create,
            pl,
            verify_signature_of_server,
            verify_third_party_signed,
        )
        return

    # 6 (v6-v11: 5) If the sender's current membership state is not join, reject.
    if _membership_of(auth_events, event.sender) != "join":
        raise _fail(rv, "sender_not_joined", f"{event.sender} is not joined")

    sender_level = pl.user_level(event.sender)

    # 7 (v6-v11: 6) If type is m.room.third_party_invite: allow if and only if the
    # sender's current power level is greater than or equal to the invite level.
    if event.type == "m.room.third_party_invite":
        if sender_level >= pl.invite:
            return
        raise _fail(rv, "third_party_invite.power", "sender may not invite")

    # 8 (v6-v11: 7) If the event type's required power level is greater than the
    # sender's power level, reject.
    required = pl.send_level(event.type, event.state_key is not None)
    if required > sender_level:
        raise _fail(
            rv, "event_power", f"{event.type} needs level {required}, sender has {sender_level}"
        )

    # 9 (v6-v11: 8) If the event has a state_key that starts with an @ and does not
    # match the sender, reject.
    if event.state_key is not None and event.state_key.startswith("@"):
        if event.state_key != event.sender:
            raise _fail(rv, "state_key", "state_key names another user")

    # 10 (v6-v11: 9) If type is m.room.power_levels.
    if event.type == "m.room.power_levels":
        _check_power_levels(event, auth_events, create, pl, sender_level)
        return

    # v1-v2 rule 11: m.room.redaction (from v3 the redact level is not an auth rule;
    # see "Handling redactions"). Only these versions have event IDs with domains.
    if rv.uses_event_id_in_pdu and event.type == "m.room.redaction":
        # 11.1 If the sender's power level is >= the redact level, allow.
        if sender_level >= pl.redact:
            return
        # 11.2 If the domain of the event_id of the event being redacted is the same as
        # the domain of the event_id of the m.room.redaction, allow.
        redacts = event.redacts
        if redacts is not None and _domain(redacts) == _domain(event.event_id):
            return
        # 11.3 Otherwise, reject.
        raise _fail(rv, "redaction.power", "sender may not redact this event")

    # 11 (v1-v2: 12; v3-v5: 11; v6-v11: 10) Otherwise, allow.


# -- rule 5: m.room.member ------------------------------------------------------------------


def _check_member(
    event: Event,
    state: Mapping[StateKey, Event],
    create: Event,
    pl: PowerLevels,
    verify_signature_of_server: IsSignedBy | None,
    verify_third_party_signed: VerifyThirdPartySigned | None,
) -> None:
    rv = event.room_version
    content = event.content
    # 5.1 If there is no state_key property, or no membership property in content,
    # reject.
    if event.state_key is None or "membership" not in content:
        raise _fail(rv, "member.invalid", "membership event without state_key or membership")
    membership = content["membership"]
    target = event.state_key
    sender = event.sender

    # 5.2 (v8+) If content has a join_authorised_via_users_server key: if the event is
    # not validly signed by the homeserver of the user ID denoted by the key, reject.
    if rv.restricted_join_rule and "join_authorised_via_users_server" in content:
        via = content["join_authorised_via_users_server"]
        if not isinstance(via, str):
            raise _fail(
                rv,
                "member.join_authorised_signature",
                "join_authorised_via_users_server is not a user ID",
            )
        if verify_signature_of_server is not None and not verify_signature_of_server(
            event, _domain(via)
        ):
            raise _fail(
                rv,
                "member.join_authorised_signature",
                f"not signed by the server of {via}",
            )

    sender_membership = _membership_of(state, sender)
    target_membership = _membership_of(state, target)

    if membership == "join":
        # 5.3.1 If the only previous event is an m.room.create and the state_key is the
        # creator (v11+: the sender of the m.room.create), allow.
        if len(event.prev_event_ids) == 1 and event.prev_event_ids[0] == create.event_id:
            if rv.implicit_room_creator:
                creator: Any = create.sender
            else:
                creator = create.content.get("creator")
            if target == creator:
                return
        # 5.3.2 If the sender does not match state_key, reject.
        if sender != target:
            raise _fail(rv, "member.join.sender_not_target", "cannot join another user")
        # 5.3.3 If the sender is banned, reject.
        if sender_membership == "ban":
            raise _fail(rv, "member.join.banned", f"{sender} is banned")
        join_rule = _join_rule(state)
        # 5.3.4 If the join_rule is invite (or knock, v7+) then allow if membership
        # state is invite or join.
        if join_rule == "invite" or (rv.knock_join_rule and join_rule == "knock"):
            if sender_membership in ("invite", "join"):
                return
            raise _fail(rv, "member.join.not_invited", f"{sender} is not invited")
        # 5.3.5 (v8+) If the join_rule is restricted (or knock_restricted, v10+):
        if (rv.restricted_join_rule and join_rule == "restricted") or (
            rv.knock_restricted_join_rule and join_rule == "knock_restricted"
        ):
            # 5.3.5.1 If membership state is join or invite, allow.
            if sender_membership in ("join", "invite"):
                return
            # 5.3.5.2 If join_authorised_via_users_server is not a user with sufficient
            # permission to invite other users or is not a joined member, reject.
            via = content.get("join_authorised_via_users_server")
            if (
                not isinstance(via, str)
                or _membership_of(state, via) != "join"
                or pl.user_level(via) < pl.invite
            ):
                raise _fail(
                    rv,
                    "member.join.restricted_unauthorised",
                    "join is not authorised by a joined user able to invite",
                )
            # 5.3.5.3 Otherwise, allow.
            return
        # 5.3.6 If the join_rule is public, allow.
        if join_rule == "public":
            return
        # 5.3.7 Otherwise, reject.
        raise _fail(rv, "member.join.forbidden", f"join rule {join_rule!r} forbids joining")

    if membership == "invite":
        # 5.4.1 If content has a third_party_invite property:
        if "third_party_invite" in content:
            _check_third_party_invite(event, state, target_membership, verify_third_party_signed)
            return
        # 5.4.2 If the sender's current membership state is not join, reject.
        if sender_membership != "join":
            raise _fail(rv, "member.invite.not_joined", f"{sender} is not joined")
        # 5.4.3 If target user's current membership state is join or ban, reject.
        if target_membership in ("join", "ban"):
            raise _fail(rv, "member.invite.target", f"{target} is {target_membership}")
        # 5.4.4 If the sender's power level is >= the invite level, allow.
        if pl.user_level(sender) >= pl.invite:
            return
        # 5.4.5 Otherwise, reject.
        raise _fail(rv, "member.invite.power", "sender may not invite")

    if membership == "leave":
        # 5.5.1 If the sender matches state_key, allow if and only if that user's current
        # membership state is invite or join (or knock, v7+).
        if sender == target:
            allowed = ("invite", "join", "knock") if rv.knock_join_rule else ("invite", "join")
            if sender_membership in allowed:
                return
            raise _fail(rv, "member.leave.self", f"{sender} is {sender_membership}")
        # 5.5.2 If the sender's current membership state is not join, reject.
        if sender_membership != "join":
            raise _fail(rv, "member.leave.not_joined", f"{sender} is not joined")
        sender_level = pl.user_level(sender)
        # 5.5.3 If the target user's current membership state is ban, and the sender's
        # power level is less than the ban level, reject.
        if target_membership == "ban" and sender_level < pl.ban:
            raise _fail(rv, "member.leave.unban_power", "sender may not unban")
        # 5.5.4 If the sender's power level is >= the kick level, and the target user's
        # power level is less than the sender's power level, allow.
        if sender_level >= pl.kick and pl.user_level(target) < sender_level:
            return
        # 5.5.5 Otherwise, reject.
        raise _fail(rv, "member.leave.power", "sender may not kick this user")

    if membership == "ban":
        # 5.6.1 If the sender's current membership state is not join, reject.
        if sender_membership != "join":
            raise _fail(rv, "member.ban.not_joined", f"{sender} is not joined")
        # 5.6.2 If the sender's power level is >= the ban level, and the target user's
        # power level is less than the sender's power level, allow.
        sender_level = pl.user_level(sender)
        if sender_level >= pl.ban and pl.user_level(target) < sender_level:
            return
        # 5.6.3 Otherwise, reject.
        raise _fail(rv, "member.ban.power", "sender may not ban this user")

    if membership == "knock" and rv.knock_join_rule:
        # 5.7 (v7+) If membership is knock:
        join_rule = _join_rule(state)
        # 5.7.1 If the join_rule is anything other than knock (or knock_restricted,
        # v10+), reject.
        if not (
            join_rule == "knock"
            or (rv.knock_restricted_join_rule and join_rule == "knock_restricted")
        ):
            raise _fail(rv, "member.knock.join_rule", f"join rule {join_rule!r} forbids knocking")
        # 5.7.2 If sender does not match state_key, reject.
        if sender != target:
            raise _fail(rv, "member.knock.sender", "cannot knock for another user")
        # 5.7.3 If the sender's current membership is not ban, invite, or join, allow.
        if sender_membership not in ("ban", "invite", "join"):
            return
        # 5.7.4 Otherwise, reject.
        raise _fail(rv, "member.knock.membership", f"{sender} is {sender_membership}")

    # 5.8 Otherwise, the membership is unknown. Reject.
    raise _fail(rv, "member.unknown", f"unknown membership {membership!r}")


def _check_third_party_invite(
    event: Event,
    state: Mapping[StateKey, Event],
    target_membership: str | None,
    verify: VerifyThirdPartySigned | None,
) -> None:
    rv = event.room_version
    # 5.4.1.1 If target user is banned, reject.
    if target_membership == "ban":
        raise _fail(rv, "member.invite.tpi.banned", f"{event.state_key} is banned")
    tpi = event.content["third_party_invite"]
    # 5.4.1.2 If content.third_party_invite does not have a signed property, reject.
    signed = tpi.get("signed") if isinstance(tpi, Mapping) else None
    if not isinstance(signed, Mapping):
        raise _fail(rv, "member.invite.tpi.no_signed", "third_party_invite has no signed")
    # 5.4.1.3 If signed does not have mxid and token properties, reject.
    mxid = signed.get("mxid")
    token = signed.get("token")
    if not isinstance(mxid, str) or not isinstance(token, str):
        raise _fail(rv, "member.invite.tpi.signed_fields", "signed lacks mxid or token")
    # 5.4.1.4 If mxid does not match state_key, reject.
    if mxid != event.state_key:
        raise _fail(rv, "member.invite.tpi.mxid", "mxid does not match state_key")
    # 5.4.1.5 If there is no m.room.third_party_invite event in the current room state
    # with state_key matching token, reject.
    invite_event = state.get(("m.room.third_party_invite", token))
    if invite_event is None:
        raise _fail(rv, "member.invite.tpi.no_invite_event", "no third-party invite for token")
    # 5.4.1.6 If sender does not match sender of the m.room.third_party_invite, reject.
    if invite_event.sender != event.sender:
        raise _fail(rv, "member.invite.tpi.sender", "sender did not issue the invite")
    # 5.4.1.7 If any signature in signed matches any public key in the
    # m.room.third_party_invite event, allow: public_key, then public_keys[].public_key.
    keys = third_party_public_keys(invite_event)
    if (verify or verify_third_party_signed)(signed, keys):
        return
    # 5.4.1.8 Otherwise, reject.
    raise _fail(rv, "member.invite.tpi.signature", "no valid signature on signed")


def third_party_public_keys(invite_event: Event) -> list[str]:
    """The base64 public keys of an ``m.room.third_party_invite`` event."""
    keys: list[str] = []
    pk = invite_event.content.get("public_key")
    if isinstance(pk, str):
        keys.append(pk)
    more = invite_event.content.get("public_keys")
    if isinstance(more, list):
        for item in more:
            if isinstance(item, Mapping) and isinstance(item.get("public_key"), str):
                keys.append(item["public_key"])
    return keys


def verify_third_party_signed(signed: Mapping[str, Any], public_keys: Sequence[str]) -> bool:
    """Whether any ed25519 signature in ``signed`` verifies with any of the
    ``public_keys`` (standard or URL-safe unpadded base64)."""
    from signedjson.key import decode_verify_key_bytes
    from signedjson.sign import SignatureVerifyException, verify_signed_json
    from unpaddedbase64 import decode_base64

    signatures = signed.get("signatures")
    if not isinstance(signatures, Mapping):
        return False
    for public_key in public_keys:
        try:
            raw = decode_base64(public_key.replace("-", "+").replace("_", "/"))
        except Exception:
            continue
        for server, block in signatures.items():
            if not isinstance(block, Mapping):
                continue
            for key_id in block:
                if not isinstance(key_id, str) or not key_id.startswith("ed25519:"):
                    continue
                try:
                    verify_key = decode_verify_key_bytes(key_id, raw)
                    verify_signed_json(dict(signed), server, verify_key)
                except (SignatureVerifyException, ValueError, TypeError, KeyError):
                    continue
                except Exception:
                    continue
                return True
    return False


# -- rule 10: m.room.power_levels ------------------------------------------------------------


def _check_power_levels(
    event: Event,
    state: Mapping[StateKey, Event],
    create: Event,
    current: PowerLevels,
    sender_level: int,
) -> None:
    rv = event.room_version
    content = event.content

    if rv.enforce_int_power_levels:
        # 10.1 (v10+) If any of users_default, events_default, state_default, ban,
        # redact, kick, or invite are present and not an integer, reject.
        for key in LEVEL_DEFAULTS:
            if key in content and type(content[key]) is not int:
                raise _fail(rv, "power_levels.named_int", f"{key} is not an integer")
        # 10.2 (v10+) If either events or notifications are present and not an object
        # with values that are integers, reject.
        for key in ("events", "notifications"):
            if key in content:
                m = content[key]
                if not isinstance(m, Mapping) or any(type(v) is not int for v in m.values()):
                    raise _fail(rv, "power_levels.maps_int", f"{key} must map to integers")
    else:
        # Before v10 only `users` is validated by the spec; values of the other keys
        # that are not even stringy/floaty integers would make every later comparison
        # meaningless, so they are refused too (a strictness the spec leaves open).
        for key in LEVEL_DEFAULTS:
            if key in content:
                _parse_or_fail(rv, content[key], "power_levels.users", key)
        for key in ("events", "notifications"):
            if key in content:
                m = content[key]
                if not isinstance(m, Mapping):
                    raise _fail(rv, "power_levels.users", f"{key} is not an object")
                for k, v in m.items():
                    _parse_or_fail(rv, v, "power_levels.users", f"{key}.{k}")

    # 10.3 If the users property in content is not an object with keys that are valid
    # user IDs with values that are integers (v1-v9: or strings that are integers;
    # v1-v5: or floats), reject.
    users = content.get("users", {})
    if not isinstance(users, Mapping):
        raise _fail(rv, "power_levels.users", "users is not an object")
    for user_id, level in users.items():
        if not isinstance(user_id, str) or not is_valid_user_id(user_id):
            raise _fail(rv, "power_levels.users", f"{user_id!r} is not a user ID")
        _parse_or_fail(rv, level, "power_levels.users", user_id)

    # 10.4 (v12) If users contains the sender of the m.room.create event or any of its
    # additional_creators, reject.
    if rv.privileged_creators:
        creators = room_creators(create, rv)
        if any(u in creators for u in users):
            raise _fail(rv, "power_levels.creators", "room creators may not be listed in users")

    # 10.5 If there is no previous m.room.power_levels event in the room, allow.
    previous = state.get(POWER_LEVELS)
    if previous is None:
        return
    old = previous.content

    # 10.6 For users_default, events_default, state_default, ban, redact, kick, invite:
    # for each one added, changed or removed, reject if the current value or the new
    # value is higher than the sender's current power level.
    for key in LEVEL_DEFAULTS:
        old_v = _lenient(old.get(key), rv)
        new_v = _lenient(content.get(key), rv)
        if old_v == new_v:
            continue
        if old_v is not None and old_v > sender_level:
            raise _fail(rv, "power_levels.named", f"cannot change {key} from {old_v}")
        if new_v is not None and new_v > sender_level:
            raise _fail(rv, "power_levels.named", f"cannot set {key} to {new_v}")

    # 10.7 / 10.8 For each entry changed in, removed from (current value) or added to,
    # changed in (new value) events or notifications (notifications from v6), reject
    # if the value is greater than the sender's power level.
    map_keys = ("events", "notifications") if rv.limit_notifications_power_levels else ("events",)
    for map_key in map_keys:
        old_m = _lenient_map(old.get(map_key), rv)
        new_m = _lenient_map(content.get(map_key), rv)
        for k in old_m.keys() | new_m.keys():
            old_v = old_m.get(k)
            new_v = new_m.get(k)
            if old_v == new_v:
                continue
            if old_v is not None and old_v > sender_level:
                raise _fail(rv, "power_levels.maps_old", f"cannot change {map_key}.{k}")
            if new_v is not None and new_v > sender_level:
                raise _fail(rv, "power_levels.maps_new", f"cannot set {map_key}.{k} to {new_v}")

    # 10.9 For each entry changed in or removed from users, other than the sender's own:
    # reject if the current value is greater than or equal to the sender's level.
    # 10.10 For each entry added to or changed in users: reject if the new value is
    # greater than the sender's level.
    old_users = _lenient_map(old.get("users"), rv)
    new_users = _lenient_map(users, rv)
    for user_id in old_users.keys() | new_users.keys():
        old_v = old_users.get(user_id)
        new_v = new_users.get(user_id)
        if old_v == new_v:
            continue
        if old_v is not None and user_id != event.sender and old_v >= sender_level:
            raise _fail(rv, "power_levels.users_old", f"cannot change the level of {user_id}")
        if new_v is not None and new_v > sender_level:
            raise _fail(rv, "power_levels.users_new", f"cannot raise {user_id} to {new_v}")
    # Otherwise, allow.


def _parse_or_fail(rv: RoomVersion, value: Any, name: str, what: str) -> int:
    try:
        return parse_level(value, rv)
    except InvalidPowerLevel:
        raise _fail(rv, name, f"{what}: {value!r} is not a power level") from None


def _lenient(value: Any, rv: RoomVersion) -> int | None:
    if value is None:
        return None
    try:
        return parse_level(value, rv)
    except InvalidPowerLevel:
        return None


def _lenient_map(value: Any, rv: RoomVersion) -> dict[str, int]:
    if not isinstance(value, Mapping):
        return {}
    out: dict[str, int] = {}
    for k, v in value.items():
        parsed = _lenient(v, rv)
        if parsed is not None:
            out[k] = parsed
    return out


def state_for_auth(
    event: Event, state: Mapping[StateKey, Event], create_event: Event | None = None
) -> dict[StateKey, Event]:
    """The subset of ``state`` that :func:`check_auth` reads for ``event``, with the
    create event always included."""
    keys: Iterable[StateKey] = auth_types_for_event(event, event.room_version)
    out = {k: state[k] for k in keys if k in state}
    create = create_event if create_event is not None else state.get(CREATE)
    if create is not None:
        out[CREATE] = create
    return out
