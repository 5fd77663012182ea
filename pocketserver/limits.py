"""Every cap on what one user may store or send, in one place.

A user writes these stores without anyone else's consent, so each has a size cap and,
where a user could otherwise add entries without end, a count cap. They are set so far
above what a real client writes that only abuse reaches them. Beyond a cap the request
answers 413 ``M_TOO_LARGE`` (the spec's own code where it names one: a profile over its
size is ``M_PROFILE_TOO_LARGE``) and nothing of it is stored. Writes that do not make a
store bigger (overwriting an entry with a smaller one, deleting) are always accepted,
so a user at a cap can always get back under it.

Sizes of JSON are counted in bytes of compact UTF-8 JSON, as stored. The protocol's own
caps (an event's 65,536 bytes, ``max_event_size`` in the configuration; media uploads,
``media.max_upload_size``) are configured, not here.

The caps are read at call time (``limits.NAME``), so tests may lower them.
"""

from __future__ import annotations

import json

KIB = 1024
MIB = 1024 * KIB

# -- request bodies (checked before a body is read whole: see api/common.py) ---------------

# Any client API JSON request body.
MAX_JSON_BODY = 8 * MIB
# PUT /sendToDevice: room keys for a few hundred devices (each message at most
# MAX_TO_DEVICE_CONTENT).
MAX_TO_DEVICE_BODY = 16 * MIB
# PUT /room_keys/keys[/{roomId}]: a whole key backup in one request.
MAX_KEY_BACKUP_BODY = 64 * MIB
# The most any request body may be buffered, whatever its route (the largest above).
MAX_REQUEST_BODY = max(MAX_JSON_BODY, MAX_TO_DEVICE_BODY, MAX_KEY_BACKUP_BODY)

# -- account data (global and per room, m.tag included) -------------------------------------

# One entry's content. Larger than an event's 64 KiB on purpose: clients keep whole
# emoji packs and m.direct for hundreds of rooms in one entry.
MAX_ACCOUNT_DATA_BYTES = 1 * MIB
# All of one user's entries together (content + type + room ID of each).
MAX_ACCOUNT_DATA_TOTAL = 32 * MIB
# An account data type, a tag name.
MAX_ACCOUNT_DATA_TYPE_BYTES = 255
# Tags on one room.
MAX_TAGS_PER_ROOM = 100

# -- filters ---------------------------------------------------------------------------------

# One filter.
MAX_FILTER_BYTES = 64 * KIB
# Distinct filters per user (uploading a filter the user already has returns its ID).
MAX_FILTERS = 1000

# -- profile and devices ----------------------------------------------------------------------

# The whole profile (the spec's 64 KiB, M_PROFILE_TOO_LARGE).
MAX_PROFILE_BYTES = 64 * KIB
MAX_DISPLAYNAME_CHARS = 256
MAX_AVATAR_URL_CHARS = 1000
MAX_DEVICE_NAME_CHARS = 256
# The reason of a user report (event and room reports keep theirs inside the 8 MiB body).
MAX_REPORT_REASON_CHARS = 10_000

# -- push -------------------------------------------------------------------------------------

# User-defined push rules per user (all kinds together; server-default rules not counted).
MAX_PUSH_RULES = 1000
# One push rule's actions, conditions and pattern.
MAX_PUSH_RULE_BYTES = 8 * KIB
# Pushers per user.
MAX_PUSHERS = 100
# One pusher's data (as GET /pushers shows it).
MAX_PUSHER_BYTES = 8 * KIB

# -- end-to-end encryption --------------------------------------------------------------------

# One to-device message's content.
MAX_TO_DEVICE_CONTENT = 64 * KIB
# A device's keys (device_keys of /keys/upload), a cross-signing key.
MAX_DEVICE_KEYS_BYTES = 64 * KIB
# One one-time or fallback key (its "<algorithm>:<key_id>" name and its value).
MAX_ONE_TIME_KEY_BYTES = 4 * KIB
# One-time keys stored per device, all algorithms together.
MAX_ONE_TIME_KEYS = 10_000
# Fallback keys per device (one per algorithm; clients use one).
MAX_FALLBACK_KEYS = 16
# Live key backup versions per user (delete old ones to make a new one).
MAX_BACKUP_VERSIONS = 100
# A backup version's auth_data.
MAX_BACKUP_AUTH_DATA_BYTES = 64 * KIB
# One backed-up session (its KeyBackupData).
MAX_BACKUP_SESSION_BYTES = 16 * KIB
# Sessions in one backup version.
MAX_BACKUP_SESSIONS = 1_000_000


def json_size(value: object) -> int:
    """Bytes of ``value`` as compact UTF-8 JSON (how the stores keep it)."""
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
