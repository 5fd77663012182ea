"""The checks performed on receipt of a PDU, as pure functions the intake calls in order.

Spec: shared/spec/content/server-server-api.md, "Checks performed on receipt of a PDU",
"Validating hashes and signatures on received events", "Rejection", "Soft failure";
the event formats of rooms/fragments/v1-event-ids.md, v4-event-format.md,
v12-event-format.md (data/api/server-server/definitions/pdu_v*.yaml); the size limits
of client-server-api "Size limits".

1. :func:`check_format`: a valid event for its room version, else dropped
   (:class:`PduFormatError`); returns the :class:`Event` (for v3+ the event ID is
   computed here, the reference hash).
2. :func:`required_signers` and :func:`verify_signatures`: signed by every server that
   must sign it, else dropped (:class:`SignatureError`).
3. :func:`check_hashes`: content hash matches, else the redacted event is used.
4. :func:`check_auth_events`: authorised by its own auth events, else rejected.
5. :func:`check_state_before`: authorised by the state before it, else rejected.
6. :func:`check_current_state`: authorised by the room's current state, else soft
   failed (:func:`passes`).

Pure: no I/O. Keys, events and states are given by the caller.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pocketserver.protocol.auth_rules import (
    CREATE,
    AuthError,
    check_against_auth_events,
    check_auth,
    state_for_auth,
)
from pocketserver.protocol.canonical_json import CanonicalJsonError, encode_canonical_json
from pocketserver.protocol.events import Event, EventFormatError, StateKey
from pocketserver.protocol.hashes import check_content_hash
from pocketserver.protocol.identifiers import (
    MAX_IDENTIFIER_BYTES,
    is_valid_event_id,
    is_valid_room_id,
    is_valid_user_id,
)
from pocketserver.protocol.redaction import redact
from pocketserver.protocol.room_versions import RoomVersion
from pocketserver.protocol.signing import SignatureError, VerifyKey, verify_event_signature

__all__ = [
    "MAX_PDU_BYTES",
    "MAX_DEPTH",
    "PduFormatError",
    "SignatureError",
    "AuthError",
    "check_format",
    "required_signers",
    "verify_signatures",
    "check_hashes",
    "check_auth_events",
    "check_state_before",
    "check_current_state",
    "passes",
]

#: client-server-api "Size limits": the whole event as canonical JSON.
MAX_PDU_BYTES = 65536
#: pdu_v1..v4 "depth": at most the largest signed 64-bit integer (v6+ canonical JSON
#: narrows numbers to 2^53 - 1, which the strict encoding enforces).
MAX_DEPTH = 2**63 - 1
#: state_key and type: at most 255 bytes.
MAX_FIELD_BYTES = 255


class PduFormatError(ValueError):
    """Step 1: not a valid event of its room version; the PDU is dropped."""


class NonCanonicalJsonError(PduFormatError):
    """The PDU is not canonical JSON for its room version (a float, an integer out
    of range; strictly enforced from v6: rooms/v6 "Canonical JSON", 400 M_BAD_JSON)."""


def _nbytes(s: str) -> int:
    return len(s.encode("utf-8", "surrogatepass"))


def _check_id_list(pdu: Mapping[str, Any], name: str, rv: RoomVersion) -> None:
    value = pdu.get(name)
    if not isinstance(value, list):
        raise PduFormatError(f"{name} must be a list")
    for item in value:
        if rv.uses_event_id_in_pdu:
            # v1/v2: [event_id, {"sha256": hash}]
            if not (
                isinstance(item, list)
                and len(item) == 2
                and isinstance(item[0], str)
                and isinstance(item[1], dict)
            ):
                raise PduFormatError(f"{name} entries must be [event_id, hashes]")
            eid = item[0]
        else:
            if not isinstance(item, str):
                raise PduFormatError(f"{name} entries must be event IDs")
            eid = item
        if not is_valid_event_id(eid, rv):
            raise PduFormatError(f"{name} entry {eid!r} is not an event ID of this room version")


def check_format(pdu: Any, rv: RoomVersion) -> Event:
    """Step 1: the PDU's fields, types and sizes for room version ``rv``.

    Required everywhere: ``type``, ``sender``, ``content``, ``origin_server_ts``,
    ``depth``, ``hashes``, ``signatures``, ``prev_events``, ``auth_events``;
    ``room_id`` except on a v12 create event (which must not have one); ``event_id``
    in v1/v2 only (v3+ IDs are reference hashes and must not travel in the PDU).
    """
    if not isinstance(pdu, dict):
        raise PduFormatError("a PDU is a JSON object")
    for key in ("type", "sender", "content", "origin_server_ts", "depth", "hashes", "signatures"):
        if key not in pdu:
            raise PduFormatError(f"missing {key}")
    for key in ("prev_events", "auth_events"):
        if key not in pdu:
            raise PduFormatError(f"missing {key}")
    etype, sender, content = pdu["type"], pdu["sender"], pdu["content"]
    if not isinstance(etype, str) or _nbytes(etype) > MAX_FIELD_BYTES:
        raise PduFormatError("type must be a string of at most 255 bytes")
    if not isinstance(sender, str) or _nbytes(sender) > MAX_IDENTIFIER_BYTES:
        raise PduFormatError("sender must be a user ID of at most 255 bytes")
    if not is_valid_user_id(sender):
        raise PduFormatError("sender is not a user ID")
    if not isinstance(content, dict):
        raise PduFormatError("content must be an object")
    state_key = pdu.get("state_key")
    if "state_key" in pdu and (not isinstance(state_key, str) or _nbytes(state_key) > MAX_FIELD_BYTES):
        raise PduFormatError("state_key must be a string of at most 255 bytes")
    for key in ("depth", "origin_server_ts"):
        if type(pdu[key]) is not int:
            raise PduFormatError(f"{key} must be an integer")
    if not 0 <= pdu["depth"] <= MAX_DEPTH:
        raise PduFormatError("depth out of range")
    hashes = pdu["hashes"]
    if not isinstance(hashes, dict) or not isinstance(hashes.get("sha256"), str):
        raise PduFormatError("hashes must hold a sha256 string")
    sigs = pdu["signatures"]
    if not isinstance(sigs, dict) or not all(
        isinstance(s, dict) and all(isinstance(v, str) for v in s.values()) for s in sigs.values()
    ):
        raise PduFormatError("signatures must map servers to key IDs to strings")
    if "unsigned" in pdu and not isinstance(pdu["unsigned"], dict):
        raise PduFormatError("unsigned must be an object")
    is_v12_create = rv.room_id_is_create_event_hash and etype == "m.room.create" and state_key == ""
    if is_v12_create:
        if "room_id" in pdu:
            raise PduFormatError("a room version 12 create event has no room_id")
    else:
        room_id = pdu.get("room_id")
        if not isinstance(room_id, str) or not is_valid_room_id(room_id, rv):
            raise PduFormatError("room_id is missing or not a room ID of this room version")
    if rv.uses_event_id_in_pdu:
        eid = pdu.get("event_id")
        if not isinstance(eid, str) or not is_valid_event_id(eid, rv):
            raise PduFormatError("event_id is missing or malformed")
    elif "event_id" in pdu:
        raise PduFormatError("event_id must not be in a PDU of this room version")
    _check_id_list(pdu, "prev_events", rv)
    _check_id_list(pdu, "auth_events", rv)
    if rv.updated_redaction_rules and etype == "m.room.redaction":
        redacts = content.get("redacts")
        if redacts is not None and not isinstance(redacts, str):
            raise PduFormatError("content.redacts must be an event ID")
    try:
        size = len(encode_canonical_json(pdu, strict=rv.strict_canonicaljson))
    except CanonicalJsonError as e:
        raise NonCanonicalJsonError(f"not canonical JSON: {e}") from None
    if size > MAX_PDU_BYTES:
        raise PduFormatError(f"the event is {size} bytes; the limit is {MAX_PDU_BYTES}")
    try:
        event = Event.from_pdu(pdu, rv)
    except (EventFormatError, CanonicalJsonError, ValueError) as e:
        raise PduFormatError(str(e)) from None
    if _nbytes(event.event_id) > MAX_IDENTIFIER_BYTES:
        raise PduFormatError("event_id too long")
    return event


def _domain(identifier: str) -> str:
    return identifier.split(":", 1)[1] if ":" in identifier else ""


def _is_third_party_invite(event: Event) -> bool:
    return (
        event.type == "m.room.member"
        and event.content.get("membership") == "invite"
        and "third_party_invite" in event.content
    )


def required_signers(event: Event) -> set[str]:
    """Step 2: the servers whose signatures the event must carry.

    "Validating hashes and signatures on received events": the sender's server (not
    for a third-party invite, which another server may send on the sender's behalf);
    v1/v2 also the server of the event ID; auth rule 5.2 (v8+) the server of
    ``join_authorised_via_users_server`` on a join.
    """
    rv = event.room_version
    servers: set[str] = set()
    if not _is_third_party_invite(event):
        servers.add(_domain(event.sender))
    if rv.uses_event_id_in_pdu:
        servers.add(_domain(event.event_id))
    if (
        rv.restricted_join_rule
        and event.type == "m.room.member"
        and event.content.get("membership") == "join"
    ):
        via = event.content.get("join_authorised_via_users_server")
        if isinstance(via, str) and ":" in via:
            servers.add(_domain(via))
    servers.discard("")
    return servers


def verify_signatures(
    event: Event,
    keys: Mapping[str, Mapping[str, VerifyKey]],
    servers: set[str] | None = None,
) -> None:
    """Step 2: each of ``servers`` (default :func:`required_signers`) has signed the
    redacted event with at least one of its known keys, and every signature of it by a
    known key verifies. ``keys`` maps a server to its verify keys valid at the event's
    ``origin_server_ts`` (unknown and expired keys are left out by the caller and so
    skipped here). Raises :class:`SignatureError`."""
    rv = event.room_version
    sigs = event.pdu.get("signatures")
    redacted = redact(event.pdu, rv)
    for server in sorted(required_signers(event) if servers is None else servers):
        mine = sigs.get(server) if isinstance(sigs, Mapping) else None
        if not isinstance(mine, Mapping) or not mine:
            raise SignatureError(f"not signed by {server}")
        known = keys.get(server, {})
        checked = 0
        for key_id in mine:
            vk = known.get(key_id)
            if vk is None:
                continue  # unknown or expired key: skipped
            verify_event_signature(redacted, server, key_id, vk, rv)
            checked += 1
        if not checked:
            raise SignatureError(f"no known key of {server} signed the event")


def check_hashes(event: Event) -> tuple[Event, bool]:
    """Step 3: (the event to use, whether the hash matched). On a mismatch the redacted
    copy is used (same event ID: the reference hash covers only what redaction keeps)."""
    rv = event.room_version
    if check_content_hash(event.pdu, rv):
        return event, True
    redacted = redact(event.pdu, rv)
    if rv.uses_event_id_in_pdu:
        redacted["event_id"] = event.event_id
    return Event.from_pdu(redacted, rv, event_id=event.event_id), False


def check_auth_events(
    event: Event, auth_events: Sequence[Event], create_event: Event | None = None
) -> None:
    """Step 4: the auth rules against the event's own ``auth_events`` (resolved by the
    caller, rejected ones with their ``rejected_reason``); ``create_event`` is the
    room's create event in v12. Raises :class:`AuthError` (reject)."""
    check_against_auth_events(event, auth_events, create_event)


def check_state_before(
    event: Event, state: Mapping[StateKey, Event], create_event: Event | None = None
) -> None:
    """Step 5: the auth rules against the state before the event (the keys the rules
    read; :func:`~pocketserver.protocol.auth_rules.state_for_auth`). Raises
    :class:`AuthError` (reject)."""
    check_auth(event, state_for_auth(event, state, create_event))


def check_current_state(
    event: Event, current: Mapping[StateKey, Event], create_event: Event | None = None
) -> None:
    """Step 6: the auth rules against the room's current state. Raises
    :class:`AuthError`: the event is soft failed, not rejected."""
    if event.type == "m.room.create":
        return
    state = state_for_auth(event, current, create_event)
    if CREATE not in state:
        return  # the room's state is not known here: nothing to soft fail against
    check_auth(event, state)


def passes(check: Any, *args: Any) -> str | None:
    """Run one auth check; the failure's text or None. For the intake's bookkeeping."""
    try:
        check(*args)
    except AuthError as e:
        return str(e)
    return None
