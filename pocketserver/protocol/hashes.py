"""Content hashes, reference hashes and the event IDs derived from them.

Spec: shared/spec/content/server-server-api.md, "Calculating the content hash for an
event" and "Calculating the reference hash for an event"; event ID formats in
rooms/fragments/v1-event-ids.md (v1-v2), rooms/v3.md (v3) and v4-event-ids.md (v4+);
the v12 room ID in rooms/v12.md and appendices.md "Room IDs".

Content hash (covers the *unredacted* event):

1. remove ``unsigned``, ``signatures`` and ``hashes``;
2. encode as canonical JSON;
3. SHA-256; stored as ``{"sha256": <unpadded base64>}`` under ``hashes``.

Reference hash (covers the *redacted* event, including its content hash):

1. apply the room version's redaction algorithm;
2. remove ``signatures`` and ``unsigned`` (and the legacy top-level ``age_ts``);
3. encode as canonical JSON;
4. SHA-256.

Event ID: ``$`` + unpadded base64 of the reference hash — standard alphabet in room
version 3, URL-safe from version 4.  Versions 1 and 2 have server-assigned IDs that
cannot be computed.

Canonical JSON strictness follows ``rv.strict_canonicaljson`` (versions 1-5 may carry
out-of-range integers); a PDU that cannot be encoded raises
:class:`~pocketserver.protocol.canonical_json.CanonicalJsonError`.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

from unpaddedbase64 import decode_base64, encode_base64

from pocketserver.protocol.canonical_json import encode_canonical_json
from pocketserver.protocol.redaction import redact
from pocketserver.protocol.room_versions import EventIdFormat, RoomVersion


class EventIdError(ValueError):
    """An event ID cannot be derived (room versions 1-2) or used to derive a room ID."""


def _strict(rv: RoomVersion | None) -> bool:
    return True if rv is None else rv.strict_canonicaljson


def content_hash_bytes(pdu: Mapping[str, Any], rv: RoomVersion | None = None) -> bytes:
    """The raw SHA-256 content hash of ``pdu``.

    ``rv`` only selects canonical-JSON strictness; without it the strict rules apply.
    """
    stripped = {k: v for k, v in pdu.items() if k not in ("unsigned", "signatures", "hashes")}
    return hashlib.sha256(encode_canonical_json(stripped, strict=_strict(rv))).digest()


def compute_content_hash(pdu: Mapping[str, Any], rv: RoomVersion | None = None) -> dict[str, str]:
    """The value for the PDU's ``hashes`` key: ``{"sha256": <unpadded base64>}``."""
    return {"sha256": encode_base64(content_hash_bytes(pdu, rv))}


def check_content_hash(pdu: Mapping[str, Any], rv: RoomVersion | None = None) -> bool:
    """True if ``pdu["hashes"]["sha256"]`` matches the PDU's content hash.

    False when the hash is missing, malformed or different — which, per the spec,
    means the receiver should use the redacted copy of the event.
    """
    hashes = pdu.get("hashes")
    if not isinstance(hashes, Mapping):
        return False
    claimed_b64 = hashes.get("sha256")
    if not isinstance(claimed_b64, str):
        return False
    try:
        claimed = decode_base64(claimed_b64)
    except ValueError:
        return False
    return hmac.compare_digest(claimed, content_hash_bytes(pdu, rv))


def compute_reference_hash(pdu: Mapping[str, Any], rv: RoomVersion) -> bytes:
    """The raw SHA-256 reference hash of ``pdu`` in room version ``rv``."""
    redacted = redact(pdu, rv)
    for key in ("signatures", "unsigned", "age_ts"):
        redacted.pop(key, None)
    return hashlib.sha256(encode_canonical_json(redacted, strict=rv.strict_canonicaljson)).digest()


def compute_event_id(pdu: Mapping[str, Any], rv: RoomVersion) -> str:
    """The event ID of a v3+ PDU: ``$`` + unpadded base64 of its reference hash.

    Raises :class:`EventIdError` for room versions 1 and 2, whose event IDs are chosen
    by the originating server and travel inside the PDU.
    """
    if rv.event_id_format is EventIdFormat.V1:
        raise EventIdError(
            f"room version {rv.identifier} event IDs are server-assigned, not computed"
        )
    urlsafe = rv.event_id_format is EventIdFormat.V4
    return "$" + encode_base64(compute_reference_hash(pdu, rv), urlsafe=urlsafe)


def make_room_id_from_create_event_id(event_id: str) -> str:
    """Room version 12: the room ID is the create event's ID with ``!`` for ``$``."""
    if not event_id.startswith("$") or len(event_id) < 2 or ":" in event_id:
        raise EventIdError(f"not a hash event ID: {event_id!r}")
    return "!" + event_id[1:]
