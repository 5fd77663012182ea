"""The redaction algorithm of every room version.

Spec: shared/spec/content/rooms/fragments/v1-redactions.md (rooms v1-v5),
v6-redactions.md (v6-v7), rooms/v8.md "Redactions" (v8), v9-redactions.md (v9-v10),
v11-redactions.md (v11-v12); client-server-api/_index.md "Redactions" for
``redacted_because``.  The room version's :class:`RedactionRules` picks the table.

Steps, as the spec states them:

1. Strip every top-level key not in the version's list of protected keys
   (v1-v10 also keep ``origin``, ``membership`` and ``prev_state``; v11 drops them).
2. Strip every ``content`` key unless the event type protects it:

   ==========================  ===============================================
   m.room.member               membership; + join_authorised_via_users_server
                               (v9+); + third_party_invite.signed (v11+)
   m.room.create               creator (v1-v10); every key (v11+)
   m.room.join_rules           join_rule; + allow (v8+)
   m.room.power_levels         ban, events, events_default, kick, redact,
                               state_default, users, users_default; + invite (v11+)
   m.room.aliases              aliases (v1-v5 only)
   m.room.history_visibility   history_visibility
   m.room.redaction            redacts (v11+)
   ==========================  ===============================================

Redaction is used to compute reference hashes and signatures, so its output must match
other servers' byte for byte: nothing beyond these rules is added or removed.

Pure: takes and returns plain dicts; never mutates its input.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pocketserver.protocol.room_versions import RedactionRules, RoomVersion

JsonDict = dict[str, Any]

_TOP_LEVEL_V11 = frozenset(
    {
        "event_id",
        "type",
        "room_id",
        "sender",
        "state_key",
        "content",
        "hashes",
        "signatures",
        "depth",
        "prev_events",
        "auth_events",
        "origin_server_ts",
    }
)
_TOP_LEVEL_V1 = _TOP_LEVEL_V11 | {"prev_state", "origin", "membership"}

_POWER_LEVELS_V1 = (
    "ban",
    "events",
    "events_default",
    "kick",
    "redact",
    "state_default",
    "users",
    "users_default",
)

_V1_CONTENT: dict[str, tuple[str, ...]] = {
    "m.room.member": ("membership",),
    "m.room.create": ("creator",),
    "m.room.join_rules": ("join_rule",),
    "m.room.power_levels": _POWER_LEVELS_V1,
    "m.room.aliases": ("aliases",),
    "m.room.history_visibility": ("history_visibility",),
}
# v6: m.room.aliases loses its special case.
_V6_CONTENT = {k: v for k, v in _V1_CONTENT.items() if k != "m.room.aliases"}
# v8: join rules keep "allow" (restricted rooms).
_V8_CONTENT = {**_V6_CONTENT, "m.room.join_rules": ("join_rule", "allow")}
# v9: member events keep "join_authorised_via_users_server".
_V9_CONTENT = {
    **_V8_CONTENT,
    "m.room.member": ("membership", "join_authorised_via_users_server"),
}
# v11: create keeps everything (handled in code); member's third_party_invite.signed
# (handled in code); power levels keep "invite"; redaction keeps "redacts".
_V11_CONTENT = {
    **{k: v for k, v in _V9_CONTENT.items() if k != "m.room.create"},
    "m.room.power_levels": (*_POWER_LEVELS_V1, "invite"),
    "m.room.redaction": ("redacts",),
}

_CONTENT_RULES: dict[RedactionRules, dict[str, tuple[str, ...]]] = {
    RedactionRules.V1: _V1_CONTENT,
    RedactionRules.V6: _V6_CONTENT,
    RedactionRules.V8: _V8_CONTENT,
    RedactionRules.V9: _V9_CONTENT,
    RedactionRules.V11: _V11_CONTENT,
}


def protected_top_level_keys(rv: RoomVersion) -> frozenset[str]:
    """Top-level keys of a PDU that survive redaction in room version ``rv``."""
    return _TOP_LEVEL_V11 if rv.redaction is RedactionRules.V11 else _TOP_LEVEL_V1


def redact_content(event_type: Any, content: Any, rv: RoomVersion) -> JsonDict:
    """The ``content`` of an event of ``event_type`` after redaction (step 2).

    A ``content`` that is not an object redacts to ``{}``.  The result is a new dict;
    the values it keeps are shared with the input, not copied.
    """
    if not isinstance(content, Mapping):
        return {}
    v11 = rv.redaction is RedactionRules.V11
    if v11 and event_type == "m.room.create":
        return dict(content)
    keep = _CONTENT_RULES[rv.redaction].get(event_type, ()) if isinstance(event_type, str) else ()
    new = {k: content[k] for k in keep if k in content}
    if v11 and event_type == "m.room.member":
        tpi = content.get("third_party_invite")
        # "allows the signed key of the third_party_invite key": an object keeps only
        # "signed" (and stays, possibly empty, as other servers do); a non-object goes.
        if isinstance(tpi, Mapping):
            new["third_party_invite"] = {"signed": tpi["signed"]} if "signed" in tpi else {}
    return new


def redact(pdu: Mapping[str, Any], rv: RoomVersion) -> JsonDict:
    """Apply the redaction algorithm of room version ``rv`` to a PDU; return a new dict.

    Works for any dict in federation form; ``unsigned`` is always removed.  The result
    always has a ``content`` object (``{}`` if the PDU had none), as Synapse's does, so
    that hashes of malformed events still agree.
    """
    top = protected_top_level_keys(rv)
    out: JsonDict = {k: v for k, v in pdu.items() if k in top}
    out["content"] = redact_content(pdu.get("type"), pdu.get("content"), rv)
    return out


#: Keys of a client-format event (client-server-api "ClientEvent") kept on redaction.
_CLIENT_TOP_LEVEL = frozenset(
    {"event_id", "room_id", "sender", "type", "state_key", "origin_server_ts", "content"}
)


def redact_client_event(
    event: Mapping[str, Any],
    rv: RoomVersion,
    redacted_because: Mapping[str, Any] | None = None,
) -> JsonDict:
    """Redact an event in the client-server format (``ClientEvent``).

    Keeps ``event_id``, ``room_id``, ``sender``, ``type``, ``state_key`` and
    ``origin_server_ts``; redacts ``content`` by the room version's rules; replaces
    ``unsigned`` with ``{"redacted_because": <the redaction event>}`` when given
    (client-server-api "Redactions": servers should include it when serving the
    redacted event to clients), otherwise with ``{}``.
    """
    out: JsonDict = {k: v for k, v in event.items() if k in _CLIENT_TOP_LEVEL}
    out["content"] = redact_content(event.get("type"), event.get("content"), rv)
    unsigned: JsonDict = {}
    if redacted_because is not None:
        unsigned["redacted_because"] = dict(redacted_because)
    out["unsigned"] = unsigned
    return out
