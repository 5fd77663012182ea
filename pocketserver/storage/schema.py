"""The database schema and its migrations.

Migrations are an append-only list; ``PRAGMA user_version`` records how many have run.
All of them run in one transaction at start-up; a database newer than this code is
refused. Until the first release, migration 1 is the whole schema, drawn for the entire
homeserver (federation included) so that no table is torn up later.

Compactness (the Raspberry Pi is the target):

* Room IDs, event IDs and (type, state_key) pairs are interned to integers
  (``rooms.room_nid``, ``events.event_nid``, ``state_keys.sk_nid``); those integers never
  leave ``storage/``.
* An event's JSON is stored once, zstd-compressed with a shared dictionary-less level.
* Room state is stored as snapshots plus deltas (``state_groups`` / ``state_group_entries``):
  a state group lists only what changed against its parent; every so often a group is a
  full snapshot, so no chain is longer than ``MAX_DELTA_CHAIN``. A message costs no state
  rows at all (it shares its parent's group); a state event costs one group row and one
  entry row, whatever the number of members.
* One global stream counter (``stream_positions``) orders everything a client syncs:
  events, account data, receipts, to-device messages, device-list changes, presence.
  A sync token is then one integer (plus the in-memory typing serial).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import apsw

APPLICATION_ID = 0x706B7376  # "pksv"

SCHEMA_V1 = """
-- ---------------------------------------------------------------- server
CREATE TABLE server_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

-- One global stream counter; stream_positions.pos is the last allocated position.
CREATE TABLE stream_positions (
    name TEXT PRIMARY KEY,
    pos INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO stream_positions VALUES ('main', 0), ('backfill', 0);

-- ---------------------------------------------------------------- accounts
CREATE TABLE users (
    user_id TEXT PRIMARY KEY,
    password_hash TEXT,             -- argon2id (PyNaCl pwhash), NULL for no password
    created_ts INTEGER NOT NULL,
    is_admin INTEGER NOT NULL DEFAULT 0,
    is_guest INTEGER NOT NULL DEFAULT 0,
    deactivated INTEGER NOT NULL DEFAULT 0,
    displayname TEXT,
    avatar_url TEXT,
    user_type TEXT,
    locked INTEGER NOT NULL DEFAULT 0,
    suspended INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

CREATE TABLE devices (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    display_name TEXT,
    created_ts INTEGER NOT NULL,
    last_seen_ts INTEGER,
    last_seen_ip TEXT,
    last_seen_user_agent TEXT,
    hidden INTEGER NOT NULL DEFAULT 0,     -- e.g. cross-signing pseudo-devices
    dehydrated INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, device_id)
) WITHOUT ROWID;

-- Access tokens are kept only as SHA-256 hashes.
CREATE TABLE access_tokens (
    token_hash BLOB PRIMARY KEY,
    user_id TEXT NOT NULL,
    device_id TEXT,
    created_ts INTEGER NOT NULL,
    valid_until_ms INTEGER,              -- NULL: no expiry
    refresh_token_hash BLOB,             -- the refresh token that made it, if any
    used INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX access_tokens_by_device ON access_tokens (user_id, device_id);

CREATE TABLE refresh_tokens (
    token_hash BLOB PRIMARY KEY,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    created_ts INTEGER NOT NULL,
    next_token_hash BLOB                 -- set once it has been exchanged
) WITHOUT ROWID;
CREATE INDEX refresh_tokens_by_device ON refresh_tokens (user_id, device_id);

CREATE TABLE registration_tokens (
    token TEXT PRIMARY KEY,
    uses_allowed INTEGER,                -- NULL: unlimited
    pending INTEGER NOT NULL DEFAULT 0,
    completed INTEGER NOT NULL DEFAULT 0,
    expiry_time INTEGER                  -- ms, NULL: never
) WITHOUT ROWID;

-- User-interactive auth sessions.
CREATE TABLE ui_auth_sessions (
    session_id TEXT PRIMARY KEY,
    created_ts INTEGER NOT NULL,
    request_hash TEXT NOT NULL,          -- what the session was started for
    completed_json TEXT NOT NULL DEFAULT '[]',
    params_json TEXT NOT NULL DEFAULT '{}',
    user_id TEXT
) WITHOUT ROWID;

-- Custom profile fields (m.tz, com.example.*); displayname and avatar_url live in users.
CREATE TABLE profile_fields (
    user_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value_json TEXT NOT NULL,
    PRIMARY KEY (user_id, key)
) WITHOUT ROWID;

CREATE TABLE user_threepids (
    user_id TEXT NOT NULL,
    medium TEXT NOT NULL,
    address TEXT NOT NULL,
    validated_at INTEGER NOT NULL,
    added_at INTEGER NOT NULL,
    PRIMARY KEY (medium, address)
) WITHOUT ROWID;

CREATE TABLE account_data (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,               -- '' for global account data
    type TEXT NOT NULL,
    content TEXT NOT NULL,
    stream_pos INTEGER NOT NULL,
    PRIMARY KEY (user_id, room_id, type)
) WITHOUT ROWID;
CREATE INDEX account_data_stream ON account_data (user_id, stream_pos);

CREATE TABLE filters (
    user_id TEXT NOT NULL,
    filter_id INTEGER NOT NULL,
    filter_json TEXT NOT NULL,
    PRIMARY KEY (user_id, filter_id)
) WITHOUT ROWID;

CREATE TABLE presence (
    user_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    status_msg TEXT,
    last_active_ts INTEGER NOT NULL,
    last_user_sync_ts INTEGER NOT NULL DEFAULT 0,
    currently_active INTEGER NOT NULL DEFAULT 0,
    stream_pos INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX presence_stream ON presence (stream_pos);

-- ---------------------------------------------------------------- rooms and events
CREATE TABLE rooms (
    room_nid INTEGER PRIMARY KEY,
    room_id TEXT NOT NULL UNIQUE,
    room_version TEXT NOT NULL,
    creator TEXT,
    is_public INTEGER NOT NULL DEFAULT 0,    -- published in the room directory
    created_ts INTEGER NOT NULL,
    -- The state group of the room's current state (NULL until the create event).
    current_state_group INTEGER,
    -- Set when this server has no joined users left and holds the room as outlier data.
    partial_state INTEGER NOT NULL DEFAULT 0
);

-- (type, state_key) pairs, interned.
CREATE TABLE state_keys (
    sk_nid INTEGER PRIMARY KEY,
    type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    UNIQUE (type, state_key)
);

-- Every event this server knows, local or remote, in the timeline or not.
--   stream_pos > 0: in the timeline, ordered by arrival ('main' stream);
--   stream_pos < 0: backfilled history, ordered before the room's earlier events;
--   outlier = 1: known (e.g. auth events, invites over federation) but not in the
--               timeline and with no state computed at it.
CREATE TABLE events (
    event_nid INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    room_nid INTEGER NOT NULL,
    type TEXT NOT NULL,
    sk_nid INTEGER,                      -- state events only
    sender TEXT NOT NULL,
    depth INTEGER NOT NULL,
    origin_server_ts INTEGER NOT NULL,
    received_ts INTEGER NOT NULL,
    stream_pos INTEGER,                  -- NULL for outliers
    outlier INTEGER NOT NULL DEFAULT 0,
    rejected_reason TEXT,
    -- State group of the state *after* this event (NULL for outliers/rejected).
    state_group INTEGER,
    -- For a state event: the event it replaced in the state before it (NULL: none).
    replaces_nid INTEGER,
    redacted_by TEXT,                    -- event ID of an applied redaction
    txn_key TEXT,                        -- local sends: user/device/txn for idempotency
    json BLOB NOT NULL                   -- zstd-compressed canonical PDU (with event_id)
);
CREATE INDEX events_room_stream ON events (room_nid, stream_pos);
CREATE INDEX events_stream ON events (stream_pos) WHERE stream_pos IS NOT NULL;
CREATE INDEX events_room_depth ON events (room_nid, depth);
CREATE INDEX events_room_ts ON events (room_nid, origin_server_ts);
CREATE UNIQUE INDEX events_txn ON events (txn_key) WHERE txn_key IS NOT NULL;

-- The event graph: prev_events and auth_events edges. Targets by ID because a
-- remote event may name events this server has not fetched yet.
CREATE TABLE event_edges (
    event_nid INTEGER NOT NULL,
    prev_event_id TEXT NOT NULL,
    PRIMARY KEY (event_nid, prev_event_id)
) WITHOUT ROWID;
CREATE INDEX event_edges_prev ON event_edges (prev_event_id);

CREATE TABLE event_auth_edges (
    event_nid INTEGER NOT NULL,
    auth_event_id TEXT NOT NULL,
    PRIMARY KEY (event_nid, auth_event_id)
) WITHOUT ROWID;

-- Events with no known children in the timeline: the prev_events of the next event.
CREATE TABLE forward_extremities (
    room_nid INTEGER NOT NULL,
    event_nid INTEGER NOT NULL,
    PRIMARY KEY (room_nid, event_nid)
) WITHOUT ROWID;

-- prev_events we do not have: where backfill continues.
CREATE TABLE backward_extremities (
    room_nid INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (room_nid, event_id)
) WITHOUT ROWID;

-- State snapshots and deltas. A group with parent NULL is a full snapshot; otherwise
-- its entries override the parent's (event_nid NULL removes the key).
CREATE TABLE state_groups (
    group_nid INTEGER PRIMARY KEY,
    room_nid INTEGER NOT NULL,
    parent_nid INTEGER,
    chain_len INTEGER NOT NULL DEFAULT 0,
    size INTEGER NOT NULL DEFAULT 0      -- number of keys in the resolved state
);
CREATE TABLE state_group_entries (
    group_nid INTEGER NOT NULL,
    sk_nid INTEGER NOT NULL,
    event_nid INTEGER,
    PRIMARY KEY (group_nid, sk_nid)
) WITHOUT ROWID;

-- The current state of each room, denormalised for fast reads.
CREATE TABLE current_state (
    room_nid INTEGER NOT NULL,
    sk_nid INTEGER NOT NULL,
    event_nid INTEGER NOT NULL,
    PRIMARY KEY (room_nid, sk_nid)
) WITHOUT ROWID;

-- Membership of every user in every room, as of the current state, plus the stream
-- position of the change (for sync's joined/invite/leave sections).
CREATE TABLE room_memberships (
    room_nid INTEGER NOT NULL,
    user_id TEXT NOT NULL,
    membership TEXT NOT NULL,
    event_nid INTEGER NOT NULL,
    stream_pos INTEGER NOT NULL,
    is_local INTEGER NOT NULL,
    forgotten INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (room_nid, user_id)
) WITHOUT ROWID;
CREATE INDEX room_memberships_user ON room_memberships (user_id, membership);
CREATE INDEX room_memberships_stream ON room_memberships (user_id, stream_pos);

CREATE TABLE room_aliases (
    alias TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    creator TEXT NOT NULL,
    servers_json TEXT NOT NULL DEFAULT '[]'
) WITHOUT ROWID;
CREATE INDEX room_aliases_room ON room_aliases (room_id);

-- Relations (m.relates_to) of events, for edits, reactions, threads, references.
CREATE TABLE event_relations (
    event_nid INTEGER PRIMARY KEY,
    relates_to_id TEXT NOT NULL,
    rel_type TEXT NOT NULL,
    aggregation_key TEXT
);
CREATE INDEX event_relations_parent ON event_relations (relates_to_id, rel_type);

-- Full-text search over message bodies (contentless, rowid = event_nid).
CREATE VIRTUAL TABLE event_search USING fts5 (
    body, content='', contentless_delete=1, tokenize='unicode61'
);

CREATE TABLE event_reports (
    report_id INTEGER PRIMARY KEY,
    room_id TEXT NOT NULL,
    event_id TEXT,
    user_id TEXT NOT NULL,
    reason TEXT,
    score INTEGER,
    received_ts INTEGER NOT NULL
);

CREATE TABLE receipts (
    room_nid INTEGER NOT NULL,
    receipt_type TEXT NOT NULL,
    user_id TEXT NOT NULL,
    thread_id TEXT NOT NULL DEFAULT '',  -- '' = unthreaded
    event_id TEXT NOT NULL,
    data_json TEXT NOT NULL,
    stream_pos INTEGER NOT NULL,
    PRIMARY KEY (room_nid, receipt_type, user_id, thread_id)
) WITHOUT ROWID;
CREATE INDEX receipts_stream ON receipts (stream_pos);

-- Notification and highlight counts are never stored per member per message: they are
-- computed lazily per (user, room) at /sync from the events after the user's read
-- receipt (services/push.py keeps a bounded in-memory cache of the result). The same
-- goes for GET /notifications, evaluated on read.

-- User-defined push rules; priority orders rules of one kind (higher = more important).
CREATE TABLE push_rules (
    user_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    rule_id TEXT NOT NULL,
    priority INTEGER NOT NULL,
    rule_json TEXT NOT NULL,             -- {"actions", "conditions"|"pattern"}
    enabled INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (user_id, kind, rule_id)
) WITHOUT ROWID;

-- Enabled/actions overrides of the server-default rules.
CREATE TABLE push_rule_overrides (
    user_id TEXT NOT NULL,
    rule_id TEXT NOT NULL,
    enabled INTEGER,
    actions_json TEXT,
    PRIMARY KEY (user_id, rule_id)
) WITHOUT ROWID;

CREATE TABLE pushers (
    user_id TEXT NOT NULL,
    app_id TEXT NOT NULL,
    pushkey TEXT NOT NULL,
    kind TEXT NOT NULL,
    pusher_json TEXT NOT NULL,           -- as GET /pushers shows it
    device_id TEXT,                      -- the device that set it; removed with it
    pushkey_ts INTEGER NOT NULL,         -- ms, when last set
    last_stream_pos INTEGER NOT NULL,    -- events up to here were handled
    failing_since INTEGER,
    PRIMARY KEY (app_id, pushkey, user_id)
) WITHOUT ROWID;
CREATE INDEX pushers_user ON pushers (user_id);

-- ---------------------------------------------------------------- end-to-end encryption
CREATE TABLE device_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    keys_json TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id)
) WITHOUT ROWID;

-- A rowid table on purpose: the rowid is the upload order, and /keys/claim hands out
-- the oldest key first.
CREATE TABLE one_time_keys (
    id INTEGER PRIMARY KEY,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id TEXT NOT NULL,
    key_json TEXT NOT NULL,
    UNIQUE (user_id, device_id, algorithm, key_id)
);

CREATE TABLE fallback_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id TEXT NOT NULL,
    key_json TEXT NOT NULL,
    used INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, device_id, algorithm)
) WITHOUT ROWID;

CREATE TABLE cross_signing_keys (
    user_id TEXT NOT NULL,
    key_type TEXT NOT NULL,              -- master, self_signing, user_signing
    keys_json TEXT NOT NULL,
    stream_pos INTEGER NOT NULL,
    PRIMARY KEY (user_id, key_type)
) WITHOUT ROWID;

-- Signatures uploaded by users over other keys (/keys/signatures/upload).
CREATE TABLE key_signatures (
    signer_user_id TEXT NOT NULL,
    signer_key_id TEXT NOT NULL,
    target_user_id TEXT NOT NULL,
    target_key_id TEXT NOT NULL,         -- device ID or cross-signing public key
    signature TEXT NOT NULL,
    PRIMARY KEY (signer_user_id, signer_key_id, target_user_id, target_key_id)
) WITHOUT ROWID;
CREATE INDEX key_signatures_target ON key_signatures (target_user_id, target_key_id);

-- Users whose devices or cross-signing keys changed at a stream position, for
-- device_lists.changed and /keys/changes. only_for NULL: everyone sharing a room with
-- user_id must re-query; otherwise only that user (a signature only they can see).
CREATE TABLE device_list_changes (
    id INTEGER PRIMARY KEY,
    stream_pos INTEGER NOT NULL,
    user_id TEXT NOT NULL,
    only_for TEXT
);
CREATE INDEX device_list_changes_stream ON device_list_changes (stream_pos);
CREATE INDEX device_list_changes_user ON device_list_changes (user_id, stream_pos);

-- Pending to-device messages, kept until the target device acknowledges them with a
-- later sync token. One sendToDevice request takes one stream position. A rowid table
-- on purpose: contents are often kilobytes (olm ciphertext), too big for WITHOUT ROWID.
CREATE TABLE to_device_messages (
    id INTEGER PRIMARY KEY,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    stream_pos INTEGER NOT NULL,
    sender TEXT NOT NULL,
    type TEXT NOT NULL,
    content TEXT NOT NULL,
    message_id TEXT
);
CREATE UNIQUE INDEX to_device_target ON to_device_messages (user_id, device_id, stream_pos);

CREATE TABLE room_key_backup_versions (
    user_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    algorithm TEXT NOT NULL,
    auth_data TEXT NOT NULL,
    etag INTEGER NOT NULL DEFAULT 0,
    deleted INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, version)
) WITHOUT ROWID;

CREATE TABLE room_key_backup_keys (
    user_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    room_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    first_message_index INTEGER NOT NULL,
    forwarded_count INTEGER NOT NULL,
    is_verified INTEGER NOT NULL,
    session_data TEXT NOT NULL,
    PRIMARY KEY (user_id, version, room_id, session_id)
) WITHOUT ROWID;

-- Idempotency of transaction IDs on non-event endpoints (sendToDevice, ...).
CREATE TABLE client_txns (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    response_json TEXT NOT NULL,
    created_ts INTEGER NOT NULL,
    PRIMARY KEY (user_id, device_id, endpoint, txn_id)
) WITHOUT ROWID;

-- ---------------------------------------------------------------- media
-- A media item (an mxc:// URI) points at content; identical bytes are stored once
-- (media_content.sha256 is unique) and shared through refcount. Content is split into
-- fixed-size chunks, each zstd-compressed only when that makes it smaller.
CREATE TABLE media (
    server_name TEXT NOT NULL,
    media_id TEXT NOT NULL,
    user_id TEXT,                        -- uploader (local media)
    content_type TEXT,
    filename TEXT,
    size INTEGER,
    content_id INTEGER,                  -- NULL until uploaded (async upload)
    created_ts INTEGER NOT NULL,
    unused_expires_ts INTEGER,           -- for /create: upload deadline
    last_access_ts INTEGER,
    quarantined INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (server_name, media_id)
) WITHOUT ROWID;
CREATE INDEX media_by_user ON media (user_id, created_ts);
CREATE INDEX media_by_content ON media (content_id);
CREATE INDEX media_by_created ON media (created_ts);

-- sha256 is NULL while an upload is in progress: such rows (and their chunks) are
-- swept at start-up, so a killed upload leaves nothing visible and no leaked space.
CREATE TABLE media_content (
    content_id INTEGER PRIMARY KEY,
    sha256 BLOB UNIQUE,
    size INTEGER NOT NULL DEFAULT 0,
    stored_size INTEGER NOT NULL DEFAULT 0,
    chunk_size INTEGER NOT NULL,
    refcount INTEGER NOT NULL DEFAULT 0,
    created_ts INTEGER NOT NULL
);

-- A rowid table on purpose: chunks are large blobs (overflow pages).
CREATE TABLE media_chunks (
    content_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    compressed INTEGER NOT NULL,         -- 1: zstd frame, 0: raw
    raw_size INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (content_id, seq)
);

CREATE TABLE media_thumbnails (
    server_name TEXT NOT NULL,
    media_id TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    method TEXT NOT NULL,
    animated INTEGER NOT NULL DEFAULT 0,
    content_type TEXT NOT NULL,
    content_id INTEGER NOT NULL,         -- a media_content row (refcounted)
    PRIMARY KEY (server_name, media_id, width, height, method, animated)
) WITHOUT ROWID;
CREATE INDEX media_thumbnails_by_content ON media_thumbnails (content_id);

CREATE TABLE url_previews (
    url TEXT NOT NULL,
    fetched_ts INTEGER NOT NULL,
    og_json TEXT NOT NULL,
    expires_ts INTEGER NOT NULL,
    PRIMARY KEY (url)
) WITHOUT ROWID;

-- ---------------------------------------------------------------- federation
CREATE TABLE server_keys (
    server_name TEXT NOT NULL,
    key_id TEXT NOT NULL,
    verify_key BLOB NOT NULL,
    valid_until_ts INTEGER NOT NULL,
    expired_ts INTEGER,                  -- old_verify_keys
    fetched_ts INTEGER NOT NULL,
    PRIMARY KEY (server_name, key_id)
) WITHOUT ROWID;

CREATE TABLE destinations (
    destination TEXT PRIMARY KEY,
    failure_ts INTEGER,
    retry_last_ts INTEGER,
    retry_interval INTEGER NOT NULL DEFAULT 0,
    last_successful_stream_pos INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

-- Outgoing PDUs and EDUs, kept until the destination acknowledged them.
CREATE TABLE federation_outbox (
    id INTEGER PRIMARY KEY,
    destination TEXT NOT NULL,
    kind TEXT NOT NULL,                  -- 'pdu' or 'edu'
    payload BLOB NOT NULL,
    created_ts INTEGER NOT NULL
);
CREATE INDEX federation_outbox_dest ON federation_outbox (destination, id);

CREATE TABLE received_transactions (
    origin TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    response_json TEXT NOT NULL,
    received_ts INTEGER NOT NULL,
    PRIMARY KEY (origin, txn_id)
) WITHOUT ROWID;

-- Remote users' devices and keys we track because we share a room with them.
CREATE TABLE remote_device_lists (
    user_id TEXT PRIMARY KEY,
    stream_id INTEGER,
    stale INTEGER NOT NULL DEFAULT 1
) WITHOUT ROWID;
"""


def _migration_1(conn: apsw.Connection) -> None:
    conn.execute(SCHEMA_V1)


# OpenID tokens (client-server "OpenID", server-server "OpenID"): single-purpose tokens a
# user hands to a third party, which exchanges them at /_matrix/federation/v1/openid/
# userinfo for the user's ID. Stored as SHA-256 hashes, like access tokens; never valid
# for anything else.
SCHEMA_V2 = """
CREATE TABLE openid_tokens (
    token_hash BLOB PRIMARY KEY,
    user_id TEXT NOT NULL,
    expires_ts INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX openid_tokens_expiry ON openid_tokens (expires_ts);
"""


def _migration_2(conn: apsw.Connection) -> None:
    conn.execute(SCHEMA_V2)


# The federation sender (federation/sender.py, edus.py, e2e.py):
# * servers with joined members in a room, read for every local event and EDU: a partial
#   index over remote joined members only, so a room without remote members costs one
#   empty index probe, whatever its size;
# * remote users' devices and cross-signing keys, cached from /user/devices and
#   /user/keys/query while we share a room with them (remote_device_lists says whether
#   the cache is current);
# * each outbox row's kind says how it is capped ('pdu' rows beyond the backlog cap are
#   dropped oldest first).
SCHEMA_V3 = """
CREATE INDEX room_memberships_remote_joined ON room_memberships (room_nid)
    WHERE is_local = 0 AND membership = 'join';
CREATE TABLE remote_devices (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    keys_json TEXT,                      -- the device's signed keys (NULL: none published)
    display_name TEXT,
    PRIMARY KEY (user_id, device_id)
) WITHOUT ROWID;
ALTER TABLE remote_device_lists ADD COLUMN master_key_json TEXT;
ALTER TABLE remote_device_lists ADD COLUMN self_signing_key_json TEXT;
ALTER TABLE remote_device_lists ADD COLUMN fetched_ts INTEGER NOT NULL DEFAULT 0;
"""


# Reports about users (POST /users/{userId}/report, v1.14), kept beside event_reports
# (which names a room, so it cannot hold them) for the server's admins to read.
SCHEMA_V4 = """
CREATE TABLE user_reports (
    report_id INTEGER PRIMARY KEY,
    target_user_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    received_ts INTEGER NOT NULL
);
"""


def _migration_3(conn: apsw.Connection) -> None:
    conn.execute(SCHEMA_V3)


def _migration_4(conn: apsw.Connection) -> None:
    conn.execute(SCHEMA_V4)


# Erased users (POST /account/deactivate with ``erase: true``): the stream position of
# the erasure request. Users who join a room after it are served redacted copies of the
# user's events there; those who could see them before keep seeing them.
SCHEMA_ERASED_USERS = """
CREATE TABLE erased_users (
    user_id TEXT PRIMARY KEY,
    stream_pos INTEGER NOT NULL
) WITHOUT ROWID;
"""


def _migration_erased_users(conn: apsw.Connection) -> None:
    conn.execute(SCHEMA_ERASED_USERS)


SCHEMA_APPSERVICES = """
CREATE TABLE appservice_state (
    as_id TEXT PRIMARY KEY,
    stream_pos INTEGER NOT NULL,        -- events up to here are in a transaction (or skipped)
    next_txn_id INTEGER NOT NULL,
    last_success_ts INTEGER,
    failing_since_ts INTEGER
) WITHOUT ROWID;
CREATE TABLE appservice_txns (
    as_id TEXT NOT NULL,
    txn_id INTEGER NOT NULL,
    body BLOB NOT NULL,                 -- the JSON sent, unchanged on every retry
    n_events INTEGER NOT NULL,
    created_ts INTEGER NOT NULL,
    PRIMARY KEY (as_id, txn_id)
) WITHOUT ROWID;
CREATE TABLE appservice_queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    as_id TEXT NOT NULL,
    kind TEXT NOT NULL,                 -- 'ephemeral' or 'to_device'
    payload BLOB NOT NULL
);
CREATE INDEX appservice_queue_as ON appservice_queue (as_id, id);
CREATE TABLE appservice_rooms (
    as_id TEXT NOT NULL,
    network_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    PRIMARY KEY (as_id, network_id, room_id)
) WITHOUT ROWID;
"""


def _migration_appservices(conn: apsw.Connection) -> None:
    conn.execute(SCHEMA_APPSERVICES)


# E-mail validation (client-server-api "Adding Account Administrative Contact
# Information"): one row per requestToken session. The mailed token is kept only as
# its SHA-256; a session is single-use (consumed_ts) and expires (expires_ts). The
# same (client_secret, address, send_attempt) again is the same session and sends no
# second mail.
SCHEMA_THREEPIDS = """
CREATE TABLE threepid_validation_sessions (
    session_id TEXT PRIMARY KEY,
    client_secret TEXT NOT NULL,
    medium TEXT NOT NULL,
    address TEXT NOT NULL,
    purpose TEXT NOT NULL,               -- 'register', 'add', 'password'
    token_hash BLOB NOT NULL,
    send_attempt INTEGER NOT NULL,
    created_ts INTEGER NOT NULL,
    expires_ts INTEGER NOT NULL,
    validated_ts INTEGER,
    consumed_ts INTEGER,
    next_link TEXT                       -- offered on the page the mail's link opens
) WITHOUT ROWID;
CREATE INDEX threepid_validation_by_secret
    ON threepid_validation_sessions (client_secret, medium, address);
CREATE INDEX threepid_validation_expiry ON threepid_validation_sessions (expires_ts);
CREATE INDEX user_threepids_by_user ON user_threepids (user_id);

-- Bindings this server made at identity servers for its users, so that they can be
-- undone later (/account/3pid/delete, /unbind, deactivation) without the client
-- naming the identity server again.
CREATE TABLE user_threepid_id_servers (
    user_id TEXT NOT NULL,
    medium TEXT NOT NULL,
    address TEXT NOT NULL,
    id_server TEXT NOT NULL,
    PRIMARY KEY (user_id, medium, address, id_server)
) WITHOUT ROWID;
"""


def _migration_threepids(conn: apsw.Connection) -> None:
    conn.execute(SCHEMA_THREEPIDS)


# The built-in identity service (storage/identity.py): its access tokens, accepted
# terms, e-mail validation sessions, bindings and pending invitations.
SCHEMA_IDENTITY = """
CREATE TABLE identity_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE identity_tokens (
    token_hash BLOB PRIMARY KEY,
    user_id TEXT NOT NULL,
    created_ts INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX identity_tokens_user ON identity_tokens (user_id);
CREATE TABLE identity_accepted_terms (
    user_id TEXT NOT NULL,
    url TEXT NOT NULL,
    PRIMARY KEY (user_id, url)
) WITHOUT ROWID;
CREATE TABLE identity_sessions (
    sid TEXT PRIMARY KEY,
    client_secret TEXT NOT NULL,
    medium TEXT NOT NULL,
    address TEXT NOT NULL,
    token TEXT,
    send_attempt INTEGER NOT NULL,
    next_link TEXT,
    created_ts INTEGER NOT NULL,
    modified_ts INTEGER NOT NULL,
    validated_ts INTEGER,
    failed_attempts INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX identity_sessions_secret ON identity_sessions (client_secret, medium, address);
CREATE TABLE identity_bindings (
    medium TEXT NOT NULL,
    address TEXT NOT NULL,
    mxid TEXT NOT NULL,
    ts INTEGER NOT NULL,
    not_before INTEGER NOT NULL,
    not_after INTEGER NOT NULL,
    PRIMARY KEY (medium, address)
) WITHOUT ROWID;
CREATE TABLE identity_invites (
    token TEXT PRIMARY KEY,
    medium TEXT NOT NULL,
    address TEXT NOT NULL,
    room_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    ephemeral_public_key TEXT NOT NULL,
    ephemeral_private_key TEXT NOT NULL,
    created_ts INTEGER NOT NULL,
    delivered_ts INTEGER
) WITHOUT ROWID;
CREATE INDEX identity_invites_address ON identity_invites (medium, address);
"""


def _migration_identity(conn: apsw.Connection) -> None:
    conn.execute(SCHEMA_IDENTITY)


SCHEMA_SSO = """
CREATE TABLE user_external_ids (
    auth_provider TEXT NOT NULL,
    external_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    created_ts INTEGER NOT NULL,
    PRIMARY KEY (auth_provider, external_id)
) WITHOUT ROWID;
CREATE INDEX user_external_ids_user ON user_external_ids (user_id);
CREATE TABLE login_tokens (
    token_hash BLOB PRIMARY KEY,
    user_id TEXT NOT NULL,
    auth_provider TEXT NOT NULL,
    created_ts INTEGER NOT NULL,
    expires_ts INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX login_tokens_expiry ON login_tokens (expires_ts);
"""


def _migration_sso(conn: apsw.Connection) -> None:
    conn.execute(SCHEMA_SSO)


# MSC2228 self-destructing messages (``[experimental] msc2228_self_destruct``): the
# events whose content is to be destroyed, and when; ``expired_ts`` marks an event
# whose content was (it is part of the decoded-event cache key: the JSON changed).
SCHEMA_EVENT_EXPIRY = """
ALTER TABLE events ADD COLUMN expired_ts INTEGER;
CREATE TABLE event_expiry (
    event_nid INTEGER PRIMARY KEY,
    expiry_ts INTEGER NOT NULL
);
CREATE INDEX event_expiry_ts ON event_expiry (expiry_ts);
"""


def _migration_event_expiry(conn: apsw.Connection) -> None:
    conn.execute(SCHEMA_EVENT_EXPIRY)


# Append-only: each merge that brings migrations puts them after the ones already here.
MIGRATIONS: list[Callable[[apsw.Connection], None]] = [
    _migration_1, _migration_2, _migration_3, _migration_4, _migration_erased_users,
    _migration_appservices,
    _migration_threepids,
    _migration_identity,
    _migration_sso,
    _migration_event_expiry,
]


class DatabaseTooNewError(RuntimeError):
    pass


def migrate(conn: Any) -> int:
    """Bring ``conn`` to the newest schema in one transaction; return the version."""
    with conn:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        (app_id,) = conn.execute("PRAGMA application_id").fetchone()
        if version == 0 and app_id == 0:
            conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
        elif app_id != APPLICATION_ID:
            raise DatabaseTooNewError("this database file is not a pocketserver database")
        if version > len(MIGRATIONS):
            raise DatabaseTooNewError(
                f"the database has schema version {version} but this pocketserver knows "
                f"only up to {len(MIGRATIONS)}: upgrade pocketserver"
            )
        for step in MIGRATIONS[version:]:
            step(conn)
        conn.execute(f"PRAGMA user_version={len(MIGRATIONS)}")
    return len(MIGRATIONS)
