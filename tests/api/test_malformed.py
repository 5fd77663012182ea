"""Every route of the real app, sent malformed input: never a 5xx, never a traceback.

The sweep enumerates the app's url_map, so a new route is swept without being listed
here. Each (route, method) gets:

- its path parameters one at a time replaced by junk (empty, very long, broken UTF-8
  percent-encodings, wrong sigils, unknown IDs), the others valid (a room, user, event,
  alias, media, filter, backup version the test made);
- no access token, an unknown one, a malformed Authorization header;
- every query parameter and header its view reads (found in the source of the view
  and of the module's helpers it calls) set to junk: not numbers, huge and negative
  numbers, floats, digits int() or isdigit() would take, bad ``dir`` and ``filter``
  values, broken ``Range`` headers;
- for routes that read a JSON body: bodies that are not JSON or not objects, and for a
  valid example body, each field (nested ones too) replaced by a value of each wrong
  type (null, booleans, huge and negative integers, floats, long strings, lists,
  objects, deep nesting) or left out.

Every answer must be below 500, every 4xx must be a JSON object with a string
``errcode``, and nothing may be logged at ERROR (the app logs a traceback there for
anything unexpected).
"""

from __future__ import annotations

import inspect
import itertools
import json
import logging
import re
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import trio

from pocketserver.config import Config
from tests.api.helpers import V3, auth_headers, create_room, register, send
from tests.conftest import make_config

Json = Any
BodyFn = Callable[["World"], bytes | None]

WORKERS = 4  # requests in flight at once
DEEP = 2000  # nesting depth of the "deep" values: beyond Python's recursion limit
LONG = "x" * 70_000


def _deep_list(n: int) -> str:
    return "[" * n + "]" * n


def _deep_object(n: int) -> str:
    return '{"a":' * n + "1" + "}" * n


# Junk for one path segment, already percent-encoded as it goes on the wire.
PATH_JUNK = [
    "",
    "x" * 3000,
    "%FF%FE",
    "%ED%A0%80",  # an encoded lone surrogate
    "%00",
    "%C2%B2",  # a superscript two: str.isdigit() says yes, int() says no
    "%2F..%2F..",
    "nosigil",
    "!nosuch:test.local",
    "@nobody:test.local",
    "$nosuch",
    "#nosuch:test.local",
]

# Junk for one query parameter, already percent-encoded.
QUERY_JUNK = [
    "",
    "abc",
    "-1",
    "99999999999999999999999",
    "-9223372036854775809",
    "1.5",
    "%20%2B5",
    "%D9%A1",  # an Arabic-Indic digit, which int() would accept
    "%C2%B2",  # a superscript two, which isdigit() would accept
    "%FF",
    "x" * 3000,
    "%7B",  # "{"
    quote('{"room":{"rooms":"x","timeline":{"limit":99999999999999999999}}}', safe=""),
    quote("[]", safe=""),
    "t99999999999999999999999_1",
]

# Junk for a request header a view reads (Range, Content-Type, User-Agent, ...).
HEADER_JUNK: list[bytes] = [
    b"",
    b"bytes=99999999999999999999999-",
    b"bytes=-99999999999999999999999",
    b"bytes=5-1",
    b"bytes=-0",
    b"bytes=0-" + b"9" * 5000,
    b"\xff\xfe",
    b"x" * 3000,
]

# Raw bodies that are not a JSON object.
RAW_BODIES: list[bytes] = [
    b"",
    b"not json",
    b"\xff\xfe\x00",
    b"{",
    b"[]",
    b"42",
    b"null",
    b'{"a": NaN}',
    b'{"a": "\\ud800"}',
    _deep_list(DEEP).encode(),
    _deep_object(DEEP).encode(),
    b'{"a":' + b"9" * 5000 + b"}",
]

# Values of every wrong type for one field of an otherwise valid body.
WRONG_VALUES: list[Json] = [
    None,
    True,
    -1,
    2**53 - 1,
    1.5,
    "",
    "x" * 5000,
    [1, None],
    {"a": 1},
]
# Only for top-level fields: nested fields inherit them from their parents' cases.
WRONG_TOP: list[Json] = [json.loads(_deep_object(400)), LONG]

# Raw JSON fragments no Python value serialises to (inserted textually).
WRONG_RAW = ["-99999999999999999999999"]

# Routes whose request would end the session or the account it is made with: each of
# their requests is made by a fresh user.
CONSUMES_USER = re.compile(r"/(logout(/all)?|account/(deactivate|password)|delete_devices|devices/<device_id>)$")
# Routes that change the requester's membership or the room itself: each gets a room of
# its own, so the rest of the sweep keeps its room.
OWN_ROOM = re.compile(r"/rooms/<room_id>/(leave|forget|kick|ban|unban|upgrade|invite)$")

PREFIXES = ("/_matrix/client/v3", "/_matrix/client/v1", "/_matrix/client/unstable")
HEADER = re.compile(r"""headers\.get\(\s*["']([^"']+)["']""")
QUERY_PARAM = re.compile(r"""(?:query_int|query_bool|args\.get)\(\s*["']([^"']+)["']""")


@dataclass
class World:
    """The valid IDs a request is made with."""

    http: httpx.AsyncClient
    user: str
    token: str
    device: str
    bob: str
    room: str
    event: str
    alias: str
    media_id: str
    filter_id: str
    backup_version: str
    key_id: str
    password: str = ""
    rooms_of_route: dict[str, str] = field(default_factory=dict)
    # A token of the identity service (its routes take that, not a client token).
    is_token: str = ""

    def path_value(self, name: str) -> str:
        values = {
            "room_id": self.room,
            "room_id_or_alias": self.room,
            "event_id": self.event,
            "user_id": self.user,
            "event_type": "m.room.message",
            "txn_id": "t1",
            "state_key": "",
            "room_alias": self.alias,
            "device_id": self.device,
            "data_type": "m.sweep",
            "tag": "u.sweep",
            "filter_id": self.filter_id,
            "key": "displayname",
            "server_name": "test.local",
            "media_id": self.media_id,
            "filename": "a.txt",
            "kind": "override",
            "rule_id": "sweep",
            "rest": "global/override/sweep",
            "rel_type": "m.annotation",
            "receipt_type": "m.read",
            "version": self.backup_version,
            "session_id": "sess",
            "key_id": self.key_id,
            "_v": "v3",
        }
        return quote(values.get(name, "x"), safe="")


def _auth(w: World) -> dict[str, Any]:
    return {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": w.user},
        "password": w.password,
    }


def example_body(path: str, method: str, w: World) -> Json | None:
    """A valid request body for the route, or None if it takes none we know of."""
    room, user, bob, ev, dev = w.room, w.user, w.bob, w.event, w.device
    session = {"first_message_index": 0, "forwarded_count": 0, "is_verified": False, "session_data": {"a": "b"}}
    auth_data = {"public_key": "abc", "signatures": {}}
    cross_key = {"user_id": user, "usage": ["master"], "keys": {"ed25519:abc": "abc"}}
    table: dict[tuple[str, str], Json] = {
        ("POST", "/createRoom"): {
            "preset": "private_chat",
            "visibility": "private",
            "name": "n",
            "topic": "t",
            "invite": [bob],
            "room_version": "11",
            "creation_content": {"m.federate": True},
            "initial_state": [{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}],
            "power_level_content_override": {"users_default": 0, "events": {"m.room.name": 50}},
            "is_direct": False,
        },
        ("POST", "/rooms/<room_id>/join"): {"reason": "r"},
        ("POST", "/join/<room_id_or_alias>"): {"reason": "r"},
        ("POST", "/knock/<room_id_or_alias>"): {"reason": "r"},
        ("POST", "/rooms/<room_id>/leave"): {"reason": "r"},
        ("POST", "/rooms/<room_id>/forget"): {},
        ("POST", "/rooms/<room_id>/invite"): {"user_id": bob, "reason": "r"},
        ("POST", "/rooms/<room_id>/kick"): {"user_id": bob, "reason": "r"},
        ("POST", "/rooms/<room_id>/ban"): {"user_id": bob, "reason": "r"},
        ("POST", "/rooms/<room_id>/unban"): {"user_id": bob, "reason": "r"},
        ("POST", "/rooms/<room_id>/send/<event_type>"): {"msgtype": "m.text", "body": "hi"},
        ("PUT", "/rooms/<room_id>/send/<event_type>/<txn_id>"): {
            "msgtype": "m.text",
            "body": "hi",
            "m.relates_to": {"rel_type": "m.thread", "event_id": ev},
        },
        ("PUT", "/rooms/<room_id>/redact/<event_id>/<txn_id>"): {"reason": "r"},
        ("POST", "/rooms/<room_id>/redact/<event_id>"): {"reason": "r"},
        ("PUT", "/rooms/<room_id>/state/<event_type>/<path:state_key>"): {"topic": "t"},
        ("PUT", "/rooms/<room_id>/state/<event_type>"): {"topic": "t"},
        ("PUT", "/rooms/<room_id>/typing/<user_id>"): {"typing": True, "timeout": 1000},
        ("POST", "/rooms/<room_id>/receipt/<receipt_type>/<event_id>"): {"thread_id": "main"},
        ("POST", "/rooms/<room_id>/read_markers"): {"m.fully_read": ev, "m.read": ev, "m.read.private": ev},
        ("PUT", "/directory/room/<room_alias>"): {"room_id": room},
        ("PUT", "/directory/list/room/<room_id>"): {"visibility": "public"},
        ("PUT", "/directory/list/appservice/<network_id>/<room_id>"): {"visibility": "public"},
        ("POST", "/appservice/<appservice_id>/ping"): {"transaction_id": "t1"},
        ("POST", "/publicRooms"): {
            "limit": 10,
            "since": "x",
            "filter": {"generic_search_term": "a", "room_types": [None, "m.space"]},
            "include_all_networks": False,
            "third_party_instance_id": "x",
        },
        ("POST", "/rooms/<room_id>/report/<event_id>"): {"reason": "r", "score": -100},
        ("POST", "/rooms/<room_id>/report"): {"reason": "r"},
        ("POST", "/users/<user_id>/report"): {"reason": "r"},
        ("PUT", "/admin/lock/<user_id>"): {"locked": False},
        ("PUT", "/admin/suspend/<user_id>"): {"suspended": False},
        ("POST", "/keys/upload"): {
            "device_keys": {
                "user_id": user,
                "device_id": dev,
                "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
                "keys": {f"ed25519:{dev}": "abc", f"curve25519:{dev}": "abc"},
                "signatures": {user: {f"ed25519:{dev}": "abc"}},
            },
            "one_time_keys": {"signed_curve25519:AAAA": {"key": "abc", "signatures": {user: {f"ed25519:{dev}": "abc"}}}},
            "fallback_keys": {"signed_curve25519:AAAB": {"key": "abc", "fallback": True, "signatures": {}}},
        },
        ("POST", "/keys/query"): {"device_keys": {user: [], bob: [dev]}, "timeout": 10000},
        ("POST", "/keys/claim"): {"one_time_keys": {user: {dev: "signed_curve25519"}}, "timeout": 10000},
        ("POST", "/org.matrix.simplified_msc3575/sync"): {
            "conn_id": "main",
            "lists": {
                "all": {
                    "ranges": [[0, 19]],
                    "range": [0, 5],
                    "timeline_limit": 5,
                    "required_state": [["m.room.member", "$LAZY"], ["*", "*"]],
                    "filters": {"is_dm": False, "is_invite": False, "is_encrypted": False, "room_types": [None],
                                "not_room_types": ["m.space"], "spaces": [room], "tags": ["m.favourite"],
                                "not_tags": ["m.lowpriority"]},
                },
                "new": {"timeline_limit": 1, "required_state": {"include": [{}], "exclude": [{"type": "m.room.create"}],
                                                                 "lazy_members": True}},
            },
            "room_subscriptions": {room: {"timeline_limit": 10, "required_state": [["*", "*"]]}},
            "extensions": {
                "to_device": {"enabled": True, "since": "0", "limit": 10},
                "e2ee": {"enabled": True},
                "account_data": {"enabled": True, "lists": ["*"], "rooms": ["*"]},
                "receipts": {"enabled": True},
                "typing": {"enabled": True},
            },
        },
        ("POST", "/keys/device_signing/upload"): {
            "master_key": cross_key,
            "self_signing_key": {**cross_key, "usage": ["self_signing"]},
            "user_signing_key": {**cross_key, "usage": ["user_signing"]},
            "auth": _auth(w),
        },
        ("POST", "/keys/signatures/upload"): {user: {dev: {"user_id": user, "device_id": dev, "signatures": {}}}},
        ("PUT", "/sendToDevice/<event_type>/<txn_id>"): {"messages": {user: {dev: {"a": 1}, "*": {"b": 2}}}},
        ("POST", "/room_keys/version"): {"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": auth_data},
        ("PUT", "/room_keys/version/<version>"): {
            "algorithm": "m.megolm_backup.v1.curve25519-aes-sha2",
            "auth_data": auth_data,
            "version": w.backup_version,
        },
        ("PUT", "/room_keys/keys"): {"rooms": {room: {"sessions": {"sess": session}}}},
        ("PUT", "/room_keys/keys/<room_id>"): {"sessions": {"sess": session}},
        ("PUT", "/room_keys/keys/<room_id>/<session_id>"): session,
        ("POST", "/register"): {
            "username": "sweepuser",
            "password": "pw",
            "auth": {"type": "m.login.dummy"},
            "device_id": "D",
            "initial_device_display_name": "n",
            "inhibit_login": False,
            "refresh_token": True,
        },
        ("POST", "/login"): {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user},
            "password": w.password,
            "device_id": "D2",
            "initial_device_display_name": "n",
            "refresh_token": True,
        },
        ("POST", "/refresh"): {"refresh_token": "x"},
        ("POST", "/account/password"): {"new_password": "pw2", "logout_devices": False, "auth": _auth(w)},
        ("POST", "/account/deactivate"): {"auth": _auth(w), "erase": False, "id_server": "x"},
        ("PUT", "/devices/<device_id>"): {"display_name": "n"},
        ("DELETE", "/devices/<device_id>"): {"auth": _auth(w)},
        ("POST", "/delete_devices"): {"devices": [dev], "auth": _auth(w)},
        ("PUT", "/user/<user_id>/account_data/<data_type>"): {"a": 1},
        ("PUT", "/user/<user_id>/rooms/<room_id>/account_data/<data_type>"): {"a": 1},
        ("PUT", "/user/<user_id>/rooms/<room_id>/tags/<tag>"): {"order": 0.5},
        ("POST", "/user/<user_id>/filter"): {
            "room": {
                "rooms": [room],
                "timeline": {"limit": 10, "types": ["m.room.message"], "not_senders": [bob]},
                "state": {"lazy_load_members": True},
                "include_leave": False,
            },
            "event_fields": ["content.body"],
            "event_format": "client",
            "presence": {"not_types": ["*"]},
        },
        ("PUT", "/presence/<user_id>/status"): {"presence": "online", "status_msg": "hi"},
        ("PUT", "/profile/<user_id>/<key>"): {"displayname": "A"},
        ("POST", "/_matrix/media/v1/create"): {"a": 1},
        # The notary; loopback is not an allowed address here, so nothing is fetched.
        ("POST", "/_matrix/key/v2/query"): {
            "server_keys": {"localhost:1": {"ed25519:a": {"minimum_valid_until_ts": 1}}}
        },
        # One route serves every push-rule path; ``rest`` is a rule's (global/override/sweep).
        ("PUT", "/pushrules/<path:rest>"): {
            "actions": ["notify", {"set_tweak": "highlight", "value": False}],
            "conditions": [{"kind": "event_match", "key": "content.body", "pattern": "x"}],
            "pattern": "x",
        },
        ("DELETE", "/pushrules/<path:rest>"): {},
        ("POST", "/user/<user_id>/openid/request_token"): {},
        ("POST", "/pushers/set"): {
            "pushkey": "k",
            "kind": "http",
            "app_id": "a",
            "app_display_name": "a",
            "device_display_name": "d",
            "lang": "en",
            "data": {"url": "http://127.0.0.1:9/_matrix/push/v1/notify", "format": "event_id_only"},
            "append": False,
            "profile_tag": "t",
        },
        ("POST", "/search"): {
            "search_categories": {
                "room_events": {
                    "search_term": "hi",
                    "keys": ["content.body"],
                    "filter": {"limit": 5, "rooms": [room]},
                    "order_by": "rank",
                    "event_context": {"before_limit": 1, "after_limit": 1, "include_profile": True},
                    "include_state": True,
                    "groupings": {"group_by": [{"key": "room_id"}]},
                }
            }
        },
        ("POST", "/rooms/<room_id>/upgrade"): {"new_version": "11"},
        ("POST", "/user_directory/search"): {"search_term": "a", "limit": 10},
        ("POST", "/logout"): {},
        ("POST", "/logout/all"): {},
        # Third-party identifiers (the sweep's server has no SMTP, nor an identity server).
        ("POST", "/account/3pid"): {"three_pid_creds": {"sid": "s", "client_secret": "c", "id_server": "x", "id_access_token": "t"}},
        ("POST", "/account/3pid/add"): {"sid": "s", "client_secret": "c", "auth": _auth(w)},
        ("POST", "/account/3pid/delete"): {"medium": "email", "address": "a@example.org", "id_server": "x"},
        ("POST", "/account/3pid/bind"): {"sid": "s", "client_secret": "c", "id_server": "x", "id_access_token": "t"},
        ("POST", "/account/3pid/unbind"): {"medium": "email", "address": "a@example.org", "id_server": "x"},
        ("POST", "/register/email/requestToken"): {"client_secret": "c", "email": "a@example.org", "send_attempt": 1, "next_link": "https://x"},
        ("POST", "/account/3pid/email/requestToken"): {"client_secret": "c", "email": "a@example.org", "send_attempt": 1},
        ("POST", "/account/password/email/requestToken"): {"client_secret": "c", "email": "a@example.org", "send_attempt": 1},
        ("POST", "/register/msisdn/requestToken"): {"client_secret": "c", "country_code": "GB", "phone_number": "1", "send_attempt": 1},
        ("POST", "/account/3pid/msisdn/requestToken"): {"client_secret": "c", "country_code": "GB", "phone_number": "1", "send_attempt": 1},
        ("POST", "/account/password/msisdn/requestToken"): {"client_secret": "c", "country_code": "GB", "phone_number": "1", "send_attempt": 1},
        ("POST", "/_pocketserver/client/email/submit_token"): {"sid": "s", "client_secret": "c", "token": "t"},
        # The identity service (on in the sweep's configuration, with no mail server).
        ("POST", "/_matrix/identity/v2/account/register"): {"access_token": "x", "token_type": "Bearer", "matrix_server_name": "test.local", "expires_in": 3600},
        ("POST", "/_matrix/identity/v2/terms"): {"user_accepts": ["https://example.org/terms.html"]},
        ("POST", "/_matrix/identity/v2/lookup"): {"algorithm": "sha256", "pepper": "p", "addresses": ["abc"]},
        ("POST", "/_matrix/identity/v2/validate/email/requestToken"): {"client_secret": "s", "email": "a@example.org", "send_attempt": 1, "next_link": "https://example.org/"},
        ("POST", "/_matrix/identity/v2/validate/email/submitToken"): {"sid": "s", "client_secret": "s", "token": "t"},
        ("POST", "/_matrix/identity/v2/3pid/bind"): {"sid": "s", "client_secret": "s", "mxid": user},
        ("POST", "/_matrix/identity/v2/3pid/unbind"): {"sid": "s", "client_secret": "s", "mxid": user, "threepid": {"medium": "email", "address": "a@example.org"}},
        ("POST", "/_matrix/identity/v2/store-invite"): {"medium": "email", "address": "a@example.org", "room_id": room, "sender": user, "room_name": "r", "sender_display_name": "d"},
        ("POST", "/_matrix/identity/v2/sign-ed25519"): {"mxid": user, "token": "t", "private_key": "x" * 43},
        ("PUT", "/_matrix/federation/v1/3pid/onbind"): {"medium": "email", "address": "a@example.org", "mxid": bob, "invites": [{"medium": "email", "address": "a@example.org", "mxid": bob, "room_id": room, "sender": user, "signed": {"mxid": bob, "token": "t", "signatures": {"x.test": {"ed25519:0": "abc"}}}}]},
        ("POST", "/_matrix/federation/v1/3pid/onbind"): {"medium": "email", "address": "a@example.org", "mxid": bob, "invites": [{"medium": "email", "address": "a@example.org", "mxid": bob, "room_id": room, "sender": user, "signed": {"mxid": bob, "token": "t", "signatures": {"x.test": {"ed25519:0": "abc"}}}}]},
        ("PUT", "/_matrix/federation/v1/exchange_third_party_invite/<room_id>"): {"type": "m.room.member", "room_id": room, "sender": user, "state_key": bob, "content": {"membership": "invite", "third_party_invite": {"display_name": "d", "signed": {"mxid": bob, "token": "t", "signatures": {}}}}},
        # Federation routes (signed requests only: the sweep's tokens get 401 first; the
        # signed sweep is tests/api/federation/test_rooms.py).
        ("PUT", "/_matrix/federation/v1/send/<txn_id>"): {"origin": "x.test", "origin_server_ts": 0, "pdus": [], "edus": []},
        ("PUT", "/_matrix/federation/v1/send_join/<room_id>/<event_id>"): {"type": "m.room.member", "room_id": room, "sender": user, "state_key": user, "content": {"membership": "join"}, "depth": 1, "prev_events": [], "auth_events": [], "origin_server_ts": 0},
        ("PUT", "/_matrix/federation/v2/send_join/<room_id>/<event_id>"): {"type": "m.room.member", "room_id": room, "sender": user, "state_key": user, "content": {"membership": "join"}, "depth": 1, "prev_events": [], "auth_events": [], "origin_server_ts": 0},
        ("PUT", "/_matrix/federation/v1/send_leave/<room_id>/<event_id>"): {"type": "m.room.member", "room_id": room, "sender": user, "state_key": user, "content": {"membership": "join"}, "depth": 1, "prev_events": [], "auth_events": [], "origin_server_ts": 0},
        ("PUT", "/_matrix/federation/v2/send_leave/<room_id>/<event_id>"): {"type": "m.room.member", "room_id": room, "sender": user, "state_key": user, "content": {"membership": "join"}, "depth": 1, "prev_events": [], "auth_events": [], "origin_server_ts": 0},
        ("PUT", "/_matrix/federation/v1/send_knock/<room_id>/<event_id>"): {"type": "m.room.member", "room_id": room, "sender": user, "state_key": user, "content": {"membership": "join"}, "depth": 1, "prev_events": [], "auth_events": [], "origin_server_ts": 0},
        ("PUT", "/_matrix/federation/v2/invite/<room_id>/<event_id>"): {"room_version": "10", "event": {"type": "m.room.member", "room_id": room, "sender": user, "state_key": user, "content": {"membership": "join"}, "depth": 1, "prev_events": [], "auth_events": [], "origin_server_ts": 0}, "invite_room_state": []},
        ("PUT", "/_matrix/federation/v1/invite/<room_id>/<event_id>"): {"type": "m.room.member", "room_id": room, "sender": user, "state_key": user, "content": {"membership": "invite"}, "depth": 1, "prev_events": [], "auth_events": [], "origin_server_ts": 0, "unsigned": {"invite_room_state": []}},
        ("POST", "/_matrix/federation/v1/get_missing_events/<room_id>"): {"earliest_events": [], "latest_events": [ev], "limit": 10, "min_depth": 0},
        ("POST", "/_matrix/federation/v1/user/keys/query"): {"device_keys": {user: []}},
        ("POST", "/_matrix/federation/v1/user/keys/claim"): {"one_time_keys": {user: {dev: "signed_curve25519"}}},
        ("POST", "/_matrix/federation/v1/publicRooms"): {"limit": 10, "since": "x", "filter": {"generic_search_term": "a"}, "include_all_networks": False},
    }
    for (m, suffix), body in table.items():
        if m == method and _route_is(path, suffix):
            return body
    return None


def _route_is(path: str, suffix: str) -> bool:
    """``path`` is ``suffix`` under one of the API prefixes (or is it, spelled whole)."""
    if path == suffix:
        return True
    return any(path == prefix + suffix for prefix in PREFIXES)


def base_query(path: str, w: World) -> dict[str, str]:
    """Query parameters a route needs before it reads the others."""
    table = {
        "/rooms/<room_id>/messages": {"dir": "b"},
        "/rooms/<room_id>/timestamp_to_event": {"ts": "0", "dir": "f"},
        "/_matrix/client/v1/media/preview_url": {"url": "http://127.0.0.1:9/"},
        "/_matrix/media/<any(v3, r0):_v>/preview_url": {"url": "http://127.0.0.1:9/"},
        "/_matrix/client/v1/media/thumbnail/<server_name>/<media_id>": {"width": "32", "height": "32"},
        "/_matrix/media/<any(v3, r0):_v>/thumbnail/<server_name>/<media_id>": {"width": "32", "height": "32"},
        "/mutual_rooms": {"user_id": w.bob},
        "/register/available": {"username": "freename"},
        "/register/m.login.registration_token/validity": {"token": "x"},
        "/room_keys/keys": {"version": w.backup_version},
        "/room_keys/keys/<room_id>": {"version": w.backup_version},
        "/room_keys/keys/<room_id>/<session_id>": {"version": w.backup_version},
    }
    for suffix, q in table.items():
        if _route_is(path, suffix):
            return {k: quote(v, safe="") for k, v in q.items()}
    return {}


@dataclass
class Probe:
    rule: Any
    method: str
    path_junk: tuple[str, str] | None = None  # (param, raw junk)
    query: dict[str, str] | None = None
    body: BodyFn | None = None
    auth: str = "user"  # user | none | unknown | malformed
    header: tuple[str, bytes] | None = None
    what: str = ""


def _json_bytes(value: Json) -> bytes:
    return json.dumps(value).encode()


def _leaf_paths(value: Json, prefix: tuple[Any, ...] = (), depth: int = 0) -> Iterator[tuple[Any, ...]]:
    """Every field of an example body (object keys, first list items), depth first."""
    if depth >= 4:
        return
    if isinstance(value, dict):
        for k, v in value.items():
            yield (*prefix, k)
            yield from _leaf_paths(v, (*prefix, k), depth + 1)
    elif isinstance(value, list) and value:
        yield (*prefix, 0)
        yield from _leaf_paths(value[0], (*prefix, 0), depth + 1)


_MISSING = object()
_RAW_MARK = "\ue123RAW\ue123"


def _with(value: Json, path: tuple[Any, ...], new: Any) -> Json:
    """A copy of ``value`` with the field at ``path`` replaced (or removed by _MISSING)."""
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        out = dict(value)
        if not rest and new is _MISSING:
            out.pop(head, None)
        else:
            out[head] = _with(value[head], rest, new)
        return out
    out_list = list(value)
    if not rest and new is _MISSING:
        out_list.pop(head)
    else:
        out_list[head] = _with(value[head], rest, new)
    return out_list


def _mutated_body(example: Callable[[World], Json], path: tuple[Any, ...], new: Any) -> BodyFn:
    def make(w: World) -> bytes:
        if isinstance(new, str) and new.startswith(_RAW_MARK):
            raw = new[len(_RAW_MARK) :]
            text = json.dumps(_with(example(w), path, _RAW_MARK))
            return text.replace(json.dumps(_RAW_MARK), raw).encode()
        return _json_bytes(_with(example(w), path, new))

    return make


def _source_with_helpers(view: Any) -> str:
    """The view's source and that of the module's functions it calls (``_download``,
    ``_upload_params``, ...), which read query parameters and bodies for it."""
    module = sys.modules[view.__module__]
    seen: set[str] = set()
    todo = [view]
    parts = []
    while todo and len(seen) < 20:
        fn = todo.pop()
        if fn.__name__ in seen:
            continue
        seen.add(fn.__name__)
        text = inspect.getsource(fn)
        parts.append(text)
        for name in re.findall(r"\b(_\w+)\(", text):
            helper = getattr(module, name, None)
            if inspect.isfunction(helper) and helper.__module__ == module.__name__:
                todo.append(helper)
    return "\n".join(parts)


def probes_for(rule: Any, method: str, view: Any, w: World, *, alias: bool = False) -> Iterator[Probe]:
    """The requests for one route and method; for an ``alias`` (the same view under
    another prefix, as /unstable/room_keys) only those that show it is routed."""
    path = rule.rule
    for auth in ("none", "unknown", "malformed"):
        yield Probe(rule, method, body=lambda w: b"{}", auth=auth, what=f"auth {auth}")
    if alias:
        return
    for arg in sorted(rule.arguments):
        for junk in PATH_JUNK:
            yield Probe(rule, method, path_junk=(arg, junk), body=lambda w: b"{}", what=f"path {arg}")
    source = _source_with_helpers(view)
    params = sorted(set(QUERY_PARAM.findall(source)))
    base = base_query(path, w)
    for name in params:
        for junk in QUERY_JUNK:
            yield Probe(rule, method, query={**base, name: junk}, what=f"query {name}")
    for header in sorted(set(HEADER.findall(source))):
        for junk in HEADER_JUNK:
            yield Probe(rule, method, query=base, header=(header, junk), what=f"header {header}")
    if method in ("GET", "DELETE") and "json_body" not in source:
        return
    if "json_body" not in source:
        # A raw body (media uploads): only its shape varies.
        for raw in RAW_BODIES[:4]:
            yield Probe(rule, method, query=base, body=lambda w, raw=raw: raw, what="raw body")
        return
    for raw in RAW_BODIES:
        yield Probe(rule, method, query=base, body=lambda w, raw=raw: raw, what="body")
    example_now = example_body(path, method, w)
    if example_now is None:
        return
    example = lambda w: example_body(path, method, w)  # noqa: E731 - rebuilt per world
    for fpath in _leaf_paths(example_now):
        news: list[Any] = [_MISSING, *WRONG_VALUES, *(_RAW_MARK + r for r in WRONG_RAW)]
        if len(fpath) == 1:
            news += WRONG_TOP
        for new in news:
            yield Probe(rule, method, query=base, body=_mutated_body(example, fpath, new), what=f"field {fpath}")
    yield Probe(rule, method, query=base, body=lambda w: _json_bytes(example(w)), what="valid example")


def _url(p: Probe, w: World) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1).split(":")[-1]
        if p.path_junk is not None and p.path_junk[0] == name:
            return p.path_junk[1]
        if name == "room_id" and p.rule.rule in w.rooms_of_route:
            return quote(w.rooms_of_route[p.rule.rule], safe="")
        return w.path_value(name)

    url = re.sub(r"<([^>]+)>", value, p.rule.rule)
    if p.query:
        url += "?" + "&".join(f"{k}={v}" for k, v in p.query.items())
    return url


def _headers(p: Probe, w: World) -> dict[str, Any]:
    if p.auth == "user" and p.rule.rule.startswith("/_matrix/identity/"):
        return auth_headers(w.is_token)
    if p.auth == "user":
        return auth_headers(w.token)
    if p.auth == "unknown":
        return auth_headers("syt_nosuchtoken")
    if p.auth == "malformed":
        return {"Authorization": b"Basic \xc3\xa9\xff=="}
    return {}


@pytest.fixture
def config(tmp_path: Path) -> Config:
    """The tests' configuration with the identity service on (no mail server: what
    would send a mail answers M_EMAIL_SEND_ERROR), and single sign-on and an optional
    CAPTCHA whose servers are not there (what would ask them answers 502)."""
    return make_config(tmp_path, {
        "identity": {"enabled": True},
        "cas": {"enabled": True, "server_url": "http://127.0.0.1:9/cas"},
        "registration": {
            "recaptcha_public_key": "public", "recaptcha_private_key": "private",
            "recaptcha_siteverify_api": "http://127.0.0.1:9/siteverify", "require_recaptcha": False,
        },
    })


@pytest.fixture
def cheap_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fastest argon2id parameters, so the sweep can make a user per request."""
    import nacl.pwhash

    from pocketserver.services import passwords

    monkeypatch.setattr(passwords, "OPSLIMIT", nacl.pwhash.argon2id.OPSLIMIT_MIN)
    monkeypatch.setattr(passwords, "MEMLIMIT", nacl.pwhash.argon2id.MEMLIMIT_MIN)


class _Collect(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.ERROR)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(self.format(record))


@pytest.fixture
def logged_errors() -> Iterator[list[str]]:
    """Everything logged at ERROR or above while the test runs, tracebacks included."""
    into: list[str] = []
    handler = _Collect(into)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield into
    finally:
        root.removeHandler(handler)


@pytest.fixture
async def app_client(server: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The running server's app, called in process (ASGI): half the cost per request of
    a loopback connection through hypercorn, which the other API tests go through."""
    transport = httpx.ASGITransport(app=server.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test.local", timeout=30) as c:
        yield c


_users = itertools.count()


async def _new_world(http: httpx.AsyncClient) -> World:
    name = f"sweep{next(_users)}"
    user, token, device = await register(http, name)
    bob, btok, _ = await register(http)
    room = await create_room(http, token, preset="public_chat")
    h = auth_headers(token)
    r = await http.post(f"{V3}/join/{room}", json={}, headers=auth_headers(btok))
    assert r.status_code == 200, r.text
    event = await send(http, token, room, {"msgtype": "m.text", "body": "hello"})
    alias = f"#{name}:test.local"
    r = await http.put(f"{V3}/directory/room/{quote(alias)}", json={"room_id": room}, headers=h)
    assert r.status_code == 200, r.text
    r = await http.post("/_matrix/media/v3/upload", content=b"hello", headers={**h, "Content-Type": "text/plain"})
    assert r.status_code == 200, r.text
    media_id = r.json()["content_uri"].rsplit("/", 1)[1]
    r = await http.post(f"{V3}/user/{user}/filter", json={"room": {"timeline": {"limit": 5}}}, headers=h)
    assert r.status_code == 200, r.text
    filter_id = r.json()["filter_id"]
    r = await http.post(
        f"{V3}/room_keys/version",
        json={"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": {"public_key": "abc"}},
        headers=h,
    )
    assert r.status_code == 200, r.text
    version = r.json()["version"]
    r = await http.get("/_matrix/key/v2/server")
    key_id = next(iter(r.json()["verify_keys"]))
    return World(http, user, token, device, bob, room, event, alias, media_id, filter_id, version, key_id, f"pw-{name}",
                 is_token=await _is_token(http, user, token))


async def _is_token(http: httpx.AsyncClient, user: str, token: str) -> str:
    """A token of the identity service (on in the sweep's configuration)."""
    r = await http.post(f"{V3}/user/{user}/openid/request_token", json={}, headers=auth_headers(token))
    assert r.status_code == 200, r.text
    r = await http.post("/_matrix/identity/v2/account/register", json=r.json())
    assert r.status_code == 200, r.text
    return str(r.json()["token"])


def _problem(resp: httpx.Response) -> str | None:
    if resp.status_code == 502 and _errcode(resp) is not None:
        # A name that is a valid server name but no server (``nosigil``, ``abc``):
        # asking it fails upstream, and 502 with an errcode is the answer (as Synapse).
        return None
    if resp.status_code >= 500:
        return f"HTTP {resp.status_code}"
    if resp.status_code == 416 and resp.headers.get("Content-Range", "").startswith("bytes */"):
        return None  # HTTP's answer to a range beyond the file (RFC 9110), not an API error
    if resp.status_code >= 400:
        try:
            body = resp.json()
        except ValueError:
            return f"HTTP {resp.status_code} with a body that is not JSON"
        if resp.status_code == 401 and isinstance(body, dict) and isinstance(body.get("flows"), list):
            return None  # user-interactive auth's first answer has no errcode (spec)
        if not isinstance(body, dict) or not isinstance(body.get("errcode"), str):
            return f"HTTP {resp.status_code} without a string errcode"
    return None


def _errcode(resp: httpx.Response) -> str | None:
    try:
        body = resp.json()
    except ValueError:
        return None
    return body.get("errcode") if isinstance(body, dict) and isinstance(body.get("errcode"), str) else None


async def test_no_route_answers_malformed_input_with_a_5xx_or_a_traceback(
    server: Any, app_client: httpx.AsyncClient, cheap_passwords: None, logged_errors: list[str]
) -> None:
    app = server.app
    http = app_client
    world = await _new_world(http)
    for rule in app.url_map.iter_rules():
        if OWN_ROOM.search(rule.rule):
            world.rooms_of_route[rule.rule] = await create_room(http, world.token, preset="public_chat", invite=[world.bob])

    probes: list[Probe] = []
    without_example = []
    swept: set[tuple[Any, str, frozenset[str]]] = set()
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        view = app.view_functions[rule.endpoint]
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            key = (view, method, frozenset(rule.arguments))
            probes.extend(probes_for(rule, method, view, world, alias=key in swept))
            swept.add(key)
            reads_json = "json_body" in _source_with_helpers(view)
            if reads_json and method != "GET" and example_body(rule.rule, method, world) is None:
                without_example.append(f"{method} {rule.rule}")
    # A new route that reads a JSON body needs a valid example in example_body(), so
    # that each of its fields is sent with every wrong type.
    assert without_example == []

    problems: list[str] = []
    sent = 0

    async def one(p: Probe) -> None:
        nonlocal sent
        w = await _new_world_light(http, world) if CONSUMES_USER.search(p.rule.rule) else world
        url = _url(p, w)
        content = p.body(w) if p.body is not None else None
        headers = _headers(p, w)
        if p.header is not None:
            headers[p.header[0]] = p.header[1]
        if content is not None:
            headers["Content-Type"] = "application/json"
        resp = await http.request(p.method, url, content=content, headers=headers)
        sent += 1
        problem = _problem(resp)
        if problem is not None:
            shown = (content or b"")[:200]
            problems.append(f"{p.method} {url[:200]} ({p.what}) body={shown!r}: {problem}: {resp.text[:300]}")

    queue = iter(probes)

    async def worker() -> None:
        for p in queue:  # the workers share one iterator: each probe is sent once
            await one(p)

    async with trio.open_nursery() as nursery:
        for _ in range(WORKERS):
            nursery.start_soon(worker)

    assert sent == len(probes) and sent > 3000
    assert not problems, f"{len(problems)} of {sent} requests:\n" + "\n".join(problems[:40])
    assert not logged_errors, "\n".join(logged_errors[:10])


async def _new_world_light(http: httpx.AsyncClient, world: World) -> World:
    """A fresh user (its own token and device) for a request that may end its session."""
    name = f"sweep{next(_users)}"
    user, token, device = await register(http, name)
    return World(
        http, user, token, device, world.bob, world.room, world.event, world.alias, world.media_id,
        world.filter_id, world.backup_version, world.key_id, f"pw-{name}", world.rooms_of_route,
        is_token=await _is_token(http, user, token),
    )
