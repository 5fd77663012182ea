"""Room versions 1-12 as data.

Each room version is one frozen :class:`RoomVersion` whose feature flags drive the
event format, redaction, authorisation and state-resolution code.  Nothing else in
pocketserver should compare room-version strings; it reads these flags instead.

Spec: shared/spec/content/rooms/v1.md ... v12.md and rooms/fragments/.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace


class EventIdFormat(enum.Enum):
    V1 = "v1"  # server-assigned "$opaque:server" (room versions 1 and 2)
    V3 = "v3"  # "$" + standard unpadded base64 of the reference hash (room version 3)
    V4 = "v4"  # "$" + URL-safe unpadded base64 of the reference hash (room versions 4+)


class StateResAlgorithm(enum.Enum):
    V1 = "v1"
    V2 = "v2"
    V2_1 = "v2.1"  # room version 12: v2 with an empty initial state and creators first


class RedactionRules(enum.Enum):
    V1 = "v1"  # rooms v1-v5: m.room.aliases keeps "aliases"
    V6 = "v6"  # rooms v6-v7: m.room.aliases content no longer kept
    V8 = "v8"  # rooms v8: m.room.join_rules keeps "allow"
    V9 = "v9"  # rooms v9-v10: m.room.member keeps "join_authorised_via_users_server"
    V11 = "v11"  # rooms v11-v12: see rooms/fragments/v11-redactions.md


@dataclass(frozen=True, slots=True)
class RoomVersion:
    identifier: str
    stable: bool
    event_id_format: EventIdFormat
    state_res: StateResAlgorithm
    redaction: RedactionRules
    # v5+: signing keys must be valid at origin_server_ts of the event.
    enforce_key_validity: bool
    # v1-v5: m.room.aliases events have their own auth rule (rule 4 of v1 auth).
    special_case_aliases_auth: bool
    # v6+: canonical JSON strictly enforced (no floats, ints within +-(2**53-1)).
    strict_canonicaljson: bool
    # v6+: the "notifications" key of power levels is checked in rule 10.
    limit_notifications_power_levels: bool
    # v7+: "knock" membership and join rule.
    knock_join_rule: bool
    # v8+: "restricted" join rule with join_authorised_via_users_server.
    restricted_join_rule: bool
    # v10+: "knock_restricted" join rule.
    knock_restricted_join_rule: bool
    # v10+: power level values must be integers (not strings).
    enforce_int_power_levels: bool
    # v11+: "creator" dropped from m.room.create content; sender is the creator.
    implicit_room_creator: bool
    # v11+: "redacts" is a content property of m.room.redaction, not top-level.
    updated_redaction_rules: bool
    # v12: room ID is the create event's reference hash ("!" + hash, no server).
    room_id_is_create_event_hash: bool
    # v12: sender and content.additional_creators of the create event have
    # infinite power and may not appear in m.room.power_levels users.
    privileged_creators: bool

    @property
    def uses_event_id_in_pdu(self) -> bool:
        """True when the PDU carries its own ``event_id`` (room versions 1 and 2)."""
        return self.event_id_format is EventIdFormat.V1


_V1 = RoomVersion(
    identifier="1",
    stable=True,
    event_id_format=EventIdFormat.V1,
    state_res=StateResAlgorithm.V1,
    redaction=RedactionRules.V1,
    enforce_key_validity=False,
    special_case_aliases_auth=True,
    strict_canonicaljson=False,
    limit_notifications_power_levels=False,
    knock_join_rule=False,
    restricted_join_rule=False,
    knock_restricted_join_rule=False,
    enforce_int_power_levels=False,
    implicit_room_creator=False,
    updated_redaction_rules=False,
    room_id_is_create_event_hash=False,
    privileged_creators=False,
)
_V2 = replace(_V1, identifier="2", state_res=StateResAlgorithm.V2)
_V3 = replace(_V2, identifier="3", event_id_format=EventIdFormat.V3)
_V4 = replace(_V3, identifier="4", event_id_format=EventIdFormat.V4)
_V5 = replace(_V4, identifier="5", enforce_key_validity=True)
_V6 = replace(
    _V5,
    identifier="6",
    redaction=RedactionRules.V6,
    special_case_aliases_auth=False,
    strict_canonicaljson=True,
    limit_notifications_power_levels=True,
)
_V7 = replace(_V6, identifier="7", knock_join_rule=True)
_V8 = replace(_V7, identifier="8", redaction=RedactionRules.V8, restricted_join_rule=True)
_V9 = replace(_V8, identifier="9", redaction=RedactionRules.V9)
_V10 = replace(
    _V9, identifier="10", knock_restricted_join_rule=True, enforce_int_power_levels=True
)
_V11 = replace(
    _V10,
    identifier="11",
    redaction=RedactionRules.V11,
    implicit_room_creator=True,
    updated_redaction_rules=True,
)
_V12 = replace(
    _V11,
    identifier="12",
    state_res=StateResAlgorithm.V2_1,
    room_id_is_create_event_hash=True,
    privileged_creators=True,
)

KNOWN_ROOM_VERSIONS: dict[str, RoomVersion] = {
    rv.identifier: rv for rv in (_V1, _V2, _V3, _V4, _V5, _V6, _V7, _V8, _V9, _V10, _V11, _V12)
}

DEFAULT_ROOM_VERSION = "12"


def get_room_version(identifier: str) -> RoomVersion | None:
    """The room version called ``identifier``, or None if this server does not know it."""
    return KNOWN_ROOM_VERSIONS.get(identifier)
