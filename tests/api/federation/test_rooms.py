"""The federation room, device and directory routes over HTTP, with requests signed by a
second real pocketserver: a join by make_join/send_join and a message by /send reach
the host's users; every malformed request gets the spec's error, never a 5xx."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import trio

from pocketserver.protocol.auth_rules import auth_types_for_event
from pocketserver.protocol.events import Event
from pocketserver.protocol.request_auth import format_header, signing_object
from pocketserver.protocol.room_versions import KNOWN_ROOM_VERSIONS
from pocketserver.protocol.signing import sign_event, sign_json
from pocketserver.server import RunningServer
from tests.api.helpers import auth_headers, create_room, register, send, sync
from tests.federation.servers import start_federating_server

FED = "/_matrix/federation"
JsonPdu = dict[str, Any]


@dataclass
class Signed:
    origin: RunningServer
    target: RunningServer
    room_id: str
    alice: str
    alice_token: str
    alias: str

    @property
    def origin_name(self) -> str:
        return str(self.origin.services.config.server_name)

    @property
    def target_name(self) -> str:
        return str(self.target.services.config.server_name)

    async def request(self, method: str, uri: str, body: Any = None, *, raw: bytes | None = None) -> httpx.Response:
        """``uri`` as sent (path already percent-encoded, query included), signed by the origin."""
        key = self.origin.services.signing_key
        content = body if raw is None else None
        if raw is not None:
            try:
                content = json.loads(raw)
            except ValueError:
                content = None
        obj = signing_object(method, uri, self.origin_name, self.target_name, content)
        sig = sign_json(obj, self.origin_name, key)["signatures"][self.origin_name][key.key_id]
        headers = {"Authorization": format_header(self.origin_name, self.target_name, key.key_id, sig)}
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if data is not None:
            headers["Content-Type"] = "application/json"
        async with httpx.AsyncClient(base_url=self.target.urls[0]) as http:
            return await http.request(method, uri, content=data, headers=headers, timeout=30)


@pytest.fixture
async def signed(nursery: trio.Nursery, tmp_path: Path) -> Signed:
    origin = await start_federating_server(nursery, tmp_path / "origin")
    target = await start_federating_server(nursery, tmp_path / "target")
    async with httpx.AsyncClient(base_url=target.urls[0]) as http:
        alice, token, _ = await register(http, "alice")
        room_id = await create_room(http, token, preset="public_chat", room_alias_name="hall", visibility="public")
    alias = f"#hall:{target.services.config.server_name}"
    return Signed(origin, target, room_id, alice, token, alias)


def _q(s: str) -> str:
    return quote(s, safe="")


async def test_a_remote_user_joins_by_make_join_and_send_join_then_talks(signed: Signed) -> None:
    s = signed
    bob = f"@bob:{s.origin_name}"
    r = await s.request("GET", f"{FED}/v1/query/directory?room_alias={_q(s.alias)}")
    assert r.status_code == 200, r.text
    assert r.json() == {"room_id": s.room_id, "servers": [s.target_name]}
    r = await s.request("GET", f"{FED}/v1/make_join/{_q(s.room_id)}/{_q(bob)}?ver=10&ver=11&ver=12")
    assert r.status_code == 200, r.text
    template = r.json()
    rv = KNOWN_ROOM_VERSIONS[template["room_version"]]
    pdu = dict(template["event"], origin_server_ts=template["event"]["origin_server_ts"])
    join = sign_event(pdu, s.origin_name, s.origin.services.signing_key, rv)
    join_id = Event.from_pdu(join, rv).event_id
    r = await s.request("PUT", f"{FED}/v2/send_join/{_q(s.room_id)}/{_q(join_id)}?omit_members=false", join)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert any(e["type"] == "m.room.create" for e in answer["state"]) and answer["members_omitted"] is False
    # Now in the room: the directory lists the origin too, and bob's message is taken.
    r = await s.request("GET", f"{FED}/v1/query/directory?room_alias={_q(s.alias)}")
    assert r.json()["servers"] == [s.target_name, s.origin_name]
    fields = {"type": "m.room.message", "sender": bob, "content": {"msgtype": "m.text", "body": "hi alice"}}
    state = {(e["type"], e["state_key"]): Event.from_pdu(e, rv).event_id for e in answer["state"]}
    state[("m.room.member", bob)] = join_id
    msg = sign_event({
        **fields, "room_id": s.room_id, "origin_server_ts": join["origin_server_ts"] + 1,
        "depth": join["depth"] + 1, "prev_events": [join_id],
        "auth_events": sorted(state[k] for k in auth_types_for_event(fields, rv) if k in state),
    }, s.origin_name, s.origin.services.signing_key, rv)
    msg_id = Event.from_pdu(msg, rv).event_id
    txn = {"origin": s.origin_name, "origin_server_ts": msg["origin_server_ts"], "pdus": [msg], "edus": []}
    r = await s.request("PUT", f"{FED}/v1/send/txn1", txn)
    assert r.status_code == 200, r.text
    assert r.json() == {"pdus": {msg_id: {}}}
    async with httpx.AsyncClient(base_url=s.target.urls[0]) as http:
        resp = await sync(http, s.alice_token, timeout=0)
    timeline = resp["rooms"]["join"][s.room_id]["timeline"]["events"]
    assert any(e["event_id"] == msg_id and e["content"]["body"] == "hi alice" for e in timeline)
    # The origin reads it back, and a retried transaction changes nothing.
    r = await s.request("GET", f"{FED}/v1/event/{_q(msg_id)}")
    assert r.status_code == 200 and r.json()["pdus"][0]["content"]["body"] == "hi alice"
    assert (await s.request("PUT", f"{FED}/v1/send/txn1", txn)).json() == {"pdus": {msg_id: {}}}
    r = await s.request("GET", f"{FED}/v1/state_ids/{_q(s.room_id)}?event_id={_q(msg_id)}")
    assert r.status_code == 200 and join_id in r.json()["pdu_ids"]
    r = await s.request("GET", f"{FED}/v1/backfill/{_q(s.room_id)}?v={_q(msg_id)}&limit=5")
    assert r.status_code == 200 and len(r.json()["pdus"]) == 5


async def test_invite_to_a_blocking_user_is_403_m_invite_blocked(signed: Signed) -> None:
    s = signed
    async with httpx.AsyncClient(base_url=s.target.urls[0]) as http:
        carol, token, _ = await register(http, "carol")
        r = await http.put(f"/_matrix/client/v3/user/{_q(carol)}/account_data/m.invite_permission_config",
                           json={"default_action": "block"}, headers=auth_headers(token))
        assert r.status_code == 200
    rv = KNOWN_ROOM_VERSIONS["10"]
    inviter = f"@dan:{s.origin_name}"
    room_id = f"!elsewhere:{s.origin_name}"
    invite = sign_event({
        "type": "m.room.member", "sender": inviter, "state_key": carol, "room_id": room_id,
        "content": {"membership": "invite"}, "origin_server_ts": 1, "depth": 3,
        "prev_events": [], "auth_events": [], "origin": s.origin_name,
    }, s.origin_name, s.origin.services.signing_key, rv)
    eid = Event.from_pdu(invite, rv).event_id
    r = await s.request("PUT", f"{FED}/v2/invite/{_q(room_id)}/{_q(eid)}",
                        {"room_version": "10", "event": invite, "invite_room_state": []})
    assert r.status_code == 403, r.text
    assert r.json()["errcode"] == "M_INVITE_BLOCKED"


async def test_a_v1_invite_is_countersigned_and_shown_to_the_invitee(signed: Signed) -> None:
    """The deprecated ``PUT /v1/invite``: the body is the event, the answer
    ``[200, {"event"}]`` with our signature added; the invitee's /sync shows it. An
    invite its server did not sign, or signed with a bad signature, is refused with 403
    M_FORBIDDEN, as send_join, send_leave and send_knock refuse such events (and as
    Synapse answers; invites-v1 mandates no code)."""
    s = signed
    async with httpx.AsyncClient(base_url=s.target.urls[0]) as http:
        carol, token, _ = await register(http, "carol")
    rv = KNOWN_ROOM_VERSIONS["1"]
    inviter = f"@dan:{s.origin_name}"
    room_id = f"!old:{s.origin_name}"
    create = sign_event({
        "type": "m.room.create", "sender": inviter, "state_key": "", "room_id": room_id,
        "content": {"creator": inviter}, "origin_server_ts": 1, "depth": 1, "event_id": f"$c:{s.origin_name}",
        "prev_events": [], "auth_events": [], "origin": s.origin_name,
    }, s.origin_name, s.origin.services.signing_key, rv)
    eid = f"$inv:{s.origin_name}"
    invite = sign_event({
        "type": "m.room.member", "sender": inviter, "state_key": carol, "room_id": room_id,
        "content": {"membership": "invite"}, "origin_server_ts": 2, "depth": 3, "event_id": eid,
        "prev_events": [], "auth_events": [], "origin": s.origin_name,
    }, s.origin_name, s.origin.services.signing_key, rv)
    unsigned_invite = dict(invite, signatures={})
    key_id = s.origin.services.signing_key.key_id
    badly_signed = dict(invite, signatures={s.origin_name: {key_id: invite["signatures"][s.origin_name][key_id][::-1]}})
    for refused in (unsigned_invite, badly_signed):
        r = await s.request("PUT", f"{FED}/v1/invite/{_q(room_id)}/{_q(eid)}", refused)
        assert r.status_code == 403 and r.json()["errcode"] == "M_FORBIDDEN", r.text
        r = await s.request("PUT", f"{FED}/v2/invite/{_q(room_id)}/{_q(eid)}",
                            {"room_version": "1", "event": refused, "invite_room_state": [create]})
        assert r.status_code == 403 and r.json()["errcode"] == "M_FORBIDDEN", r.text
    body = dict(invite, unsigned={"invite_room_state": [create]})
    r = await s.request("PUT", f"{FED}/v1/invite/{_q(room_id)}/{_q(eid)}", body)
    assert r.status_code == 200, r.text
    code, answer = r.json()
    assert code == 200 and set(answer["event"]["signatures"]) == {s.origin_name, s.target_name}
    async with httpx.AsyncClient(base_url=s.target.urls[0]) as http:
        resp = await sync(http, token, timeout=0)
    assert room_id in resp["rooms"]["invite"]


async def test_malformed_signed_requests_get_the_spec_errors(signed: Signed) -> None:
    s = signed
    room, alice, ev = _q(s.room_id), _q(s.alice), _q("$nosuchevent")
    bob = _q(f"@bob:{s.origin_name}")
    cases: list[tuple[str, str, Any, int, str]] = [
        ("PUT", f"{FED}/v1/send/t1", {"pdus": "no"}, 400, "M_BAD_JSON"),
        ("PUT", f"{FED}/v1/send/t2", [1], 400, "M_BAD_JSON"),
        ("PUT", f"{FED}/v1/send/t3", {"pdus": [{"room_id": "!x:y"}] * 51}, 400, "M_BAD_JSON"),
        ("GET", f"{FED}/v1/make_join/{room}/{_q('notauser')}?ver=10", None, 400, "M_INVALID_PARAM"),
        ("GET", f"{FED}/v1/make_join/{room}/{alice}?ver=10&ver=11&ver=12", None, 403, "M_FORBIDDEN"),
        ("GET", f"{FED}/v1/make_join/{room}/{bob}?ver=1", None, 400, "M_INCOMPATIBLE_ROOM_VERSION"),
        ("GET", f"{FED}/v1/make_join/{_q('!nosuch:x')}/{bob}?ver=12", None, 404, "M_NOT_FOUND"),
        ("PUT", f"{FED}/v2/send_join/{room}/{ev}", {"type": 5}, 400, "M_INVALID_PARAM"),
        ("PUT", f"{FED}/v2/send_join/{room}/{ev}?omit_members=maybe", {}, 400, "M_INVALID_PARAM"),
        ("PUT", f"{FED}/v2/send_leave/{room}/{ev}", {}, 400, "M_INVALID_PARAM"),
        ("PUT", f"{FED}/v1/send_knock/{room}/{ev}", {}, 400, "M_INVALID_PARAM"),
        ("PUT", f"{FED}/v2/invite/{room}/{ev}", {"event": {}}, 400, "M_MISSING_PARAM"),
        ("GET", f"{FED}/v1/event/{ev}", None, 404, "M_NOT_FOUND"),
        ("GET", f"{FED}/v1/state/{room}", None, 400, "M_MISSING_PARAM"),
        ("GET", f"{FED}/v1/state_ids/{room}?event_id={ev}", None, 403, "M_FORBIDDEN"),
        ("GET", f"{FED}/v1/backfill/{room}?limit=5", None, 400, "M_MISSING_PARAM"),
        ("GET", f"{FED}/v1/backfill/{room}?v={ev}", None, 400, "M_MISSING_PARAM"),
        ("GET", f"{FED}/v1/backfill/{room}?v={ev}&limit=-1", None, 400, "M_INVALID_PARAM"),
        ("POST", f"{FED}/v1/get_missing_events/{room}", {"latest_events": 3}, 400, "M_BAD_JSON"),
        ("GET", f"{FED}/v1/timestamp_to_event/{room}?ts=x&dir=f", None, 400, "M_INVALID_PARAM"),
        ("GET", f"{FED}/v1/timestamp_to_event/{room}?ts=1&dir=up", None, 400, "M_INVALID_PARAM"),
        ("GET", f"{FED}/v1/timestamp_to_event/{room}?dir=f", None, 400, "M_MISSING_PARAM"),
        ("GET", f"{FED}/v1/user/devices/{_q('nobody')}", None, 400, "M_INVALID_PARAM"),
        ("GET", f"{FED}/v1/user/devices/{_q('@nobody:' + s.target_name)}", None, 404, "M_NOT_FOUND"),
        ("POST", f"{FED}/v1/user/keys/query", {"device_keys": []}, 400, "M_BAD_JSON"),
        ("POST", f"{FED}/v1/user/keys/claim", {}, 400, "M_BAD_JSON"),
        ("GET", f"{FED}/v1/query/directory", None, 400, "M_MISSING_PARAM"),
        ("GET", f"{FED}/v1/query/directory?room_alias=nope", None, 400, "M_INVALID_PARAM"),
        ("GET", f"{FED}/v1/query/directory?room_alias={_q('#x:' + s.target_name)}", None, 404, "M_NOT_FOUND"),
        ("POST", f"{FED}/v1/publicRooms", {"limit": "ten"}, 400, "M_BAD_JSON"),
        ("GET", f"{FED}/v1/publicRooms?limit=x", None, 400, "M_INVALID_PARAM"),
        ("GET", f"{FED}/v1/hierarchy/{_q('!nosuch:x')}", None, 404, "M_NOT_FOUND"),
        ("GET", f"{FED}/v1/hierarchy/{room}?suggested_only=perhaps", None, 400, "M_INVALID_PARAM"),
    ]
    problems = []
    for method, uri, body, status, errcode in cases:
        r = await s.request(method, uri, body)
        got = (r.status_code, r.json().get("errcode") if r.headers.get("content-type", "").startswith("application/json") else r.text)
        if got != (status, errcode):
            problems.append(f"{method} {uri}: {got} != {(status, errcode)}: {r.text[:200]}")
    for method, uri in (("PUT", f"{FED}/v1/send/t9"), ("PUT", f"{FED}/v2/send_join/{room}/{ev}"),
                        ("POST", f"{FED}/v1/user/keys/query"), ("POST", f"{FED}/v1/publicRooms")):
        r = await s.request(method, uri, raw=b"{not json")
        if (r.status_code, r.json().get("errcode")) != (400, "M_NOT_JSON"):
            problems.append(f"{method} {uri} with bad JSON: {r.status_code} {r.text[:200]}")
    assert not problems, "\n".join(problems)
    # Answered: the published directory.
    r = await s.request("GET", f"{FED}/v1/publicRooms?limit=5")
    assert r.status_code == 200 and [c["room_id"] for c in r.json()["chunk"]] == [s.room_id]
    r = await s.request("POST", f"{FED}/v1/publicRooms", {"filter": {"generic_search_term": "zzz"}})
    assert r.status_code == 200 and r.json()["chunk"] == []


def _invite(s: Signed, sender: str, invitee: str, state: dict[tuple[str, str], JsonPdu], prev: JsonPdu) -> tuple[JsonPdu, str]:
    """An invite of ``invitee`` by ``sender`` (a user of the origin) into ``s.room_id``,
    on top of ``prev``, signed by the origin."""
    rv = KNOWN_ROOM_VERSIONS[state[("m.room.create", "")]["content"].get("room_version", "1")]
    fields = {"type": "m.room.member", "sender": sender, "state_key": invitee, "content": {"membership": "invite"}}
    auth = [Event.from_pdu(state[k], rv).event_id for k in auth_types_for_event(fields, rv) if k in state]
    pdu = sign_event({
        **fields, "room_id": s.room_id, "origin_server_ts": prev["origin_server_ts"] + 1, "depth": prev["depth"] + 1,
        "prev_events": [Event.from_pdu(prev, rv).event_id], "auth_events": sorted(auth),
    }, s.origin_name, s.origin.services.signing_key, rv)
    return pdu, Event.from_pdu(pdu, rv).event_id


async def test_a_server_the_acl_denies_gets_403_on_every_room_route_whatever_it_sends(signed: Signed) -> None:
    """Before the room's ``m.room.server_acl`` names it, the origin's requests are
    answered (an invite for a user with no account yet is countersigned; an empty
    get_missing_events asks for nothing); after, every room-scoped route answers 403
    M_FORBIDDEN first, whatever else is wrong with the request (an empty body, missing
    parameters, unknown users and events)."""
    s = signed
    async with httpx.AsyncClient(base_url=s.origin.urls[0]) as ho, httpx.AsyncClient(base_url=s.target.urls[0]) as ht:
        bob, bob_token, _ = await register(ho, "bob")
        r = await ho.post(f"/_matrix/client/v3/join/{_q(s.room_id)}", params={"via": s.target_name},
                          json={}, headers=auth_headers(bob_token))
        assert r.status_code == 200, r.text
        msg = await send(ht, s.alice_token, s.room_id, {"msgtype": "m.text", "body": "before the ban"})
    room, ev = _q(s.room_id), _q(msg)
    r = await s.request("GET", f"{FED}/v1/state/{room}?event_id={ev}")
    assert r.status_code == 200, r.text
    state = {(p["type"], p["state_key"]): p for p in r.json()["pdus"]}
    r = await s.request("GET", f"{FED}/v1/event/{ev}")
    assert r.status_code == 200, r.text
    prev = r.json()["pdus"][0]
    ghost = f"@ghost:{s.target_name}"  # no account on the target
    invite, invite_id = _invite(s, bob, ghost, state, prev)
    invite_body = {"room_version": state[("m.room.create", "")]["content"]["room_version"], "event": invite,
                   "invite_room_state": [state[("m.room.create", "")]]}
    r = await s.request("PUT", f"{FED}/v2/invite/{room}/{_q(invite_id)}", invite_body)
    assert r.status_code == 200, r.text
    assert set(r.json()["event"]["signatures"]) == {s.origin_name, s.target_name}
    r = await s.request("POST", f"{FED}/v1/get_missing_events/{room}", {})
    assert (r.status_code, r.json()) == (200, {"events": []}), r.text

    async with httpx.AsyncClient(base_url=s.target.urls[0]) as ht:
        host = s.origin_name.rsplit(":", 1)[0]
        r = await ht.put(f"/_matrix/client/v3/rooms/{room}/state/m.room.server_acl/",
                         json={"deny": [host], "allow": ["*"]}, headers=auth_headers(s.alice_token))
        assert r.status_code == 200, r.text
    invite2, invite2_id = _invite(s, bob, f"@ghost2:{s.target_name}", state, prev)
    nobody, no_event = _q(f"@nobody:{s.origin_name}"), _q("$nosuchevent")
    cases: list[tuple[str, str, Any]] = [
        ("GET", f"{FED}/v1/make_join/{room}/{nobody}", None),
        ("PUT", f"{FED}/v1/send_join/{room}/{no_event}", {}),
        ("PUT", f"{FED}/v2/send_join/{room}/{no_event}", {}),
        ("GET", f"{FED}/v1/make_leave/{room}/{nobody}", None),
        ("PUT", f"{FED}/v1/send_leave/{room}/{no_event}", {}),
        ("PUT", f"{FED}/v2/send_leave/{room}/{no_event}", {}),
        ("GET", f"{FED}/v1/make_knock/{room}/{nobody}", None),
        ("PUT", f"{FED}/v1/send_knock/{room}/{no_event}", {}),
        ("PUT", f"{FED}/v2/invite/{room}/{_q(invite2_id)}", dict(invite_body, event=invite2)),
        ("PUT", f"{FED}/v2/invite/{room}/{no_event}", {}),
        ("PUT", f"{FED}/v1/invite/{room}/{no_event}", {}),
        ("GET", f"{FED}/v1/state/{room}", None),
        ("GET", f"{FED}/v1/state_ids/{room}?event_id={ev}", None),
        ("GET", f"{FED}/v1/event_auth/{room}/{no_event}", None),
        ("GET", f"{FED}/v1/backfill/{room}", None),
        ("POST", f"{FED}/v1/get_missing_events/{room}", {}),
        ("GET", f"{FED}/v1/timestamp_to_event/{room}", None),
        ("GET", f"{FED}/v1/hierarchy/{room}?suggested_only=perhaps", None),
        ("PUT", f"{FED}/v1/exchange_third_party_invite/{room}", {}),
        ("GET", f"{FED}/v1/event/{ev}", None),
    ]
    problems = []
    for method, uri, body in cases:
        r = await s.request(method, uri, body)
        if r.status_code != 403 or r.json().get("errcode") != "M_FORBIDDEN":
            problems.append(f"{method} {uri}: {r.status_code} {r.text[:200]}")
    assert not problems, "\n".join(problems)


async def test_hierarchy_lists_the_space_children_a_server_may_join(signed: Signed) -> None:
    s = signed
    async with httpx.AsyncClient(base_url=s.target.urls[0]) as http:
        space = await create_room(http, s.alice_token, preset="public_chat", creation_content={"type": "m.space"})
        private = await create_room(http, s.alice_token, preset="private_chat")
        for child in (s.room_id, private):
            r = await http.put(
                f"/_matrix/client/v3/rooms/{_q(space)}/state/m.space.child/{_q(child)}",
                json={"via": [s.target_name], "suggested": child == s.room_id}, headers=auth_headers(s.alice_token),
            )
            assert r.status_code == 200, r.text
    r = await s.request("GET", f"{FED}/v1/hierarchy/{_q(space)}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["room"]["room_id"] == space and body["room"]["room_type"] == "m.space"
    assert {c["state_key"] for c in body["room"]["children_state"]} == {s.room_id, private}
    assert all("origin_server_ts" in c for c in body["room"]["children_state"])
    assert [c["room_id"] for c in body["children"]] == [s.room_id]
    assert body["inaccessible_children"] == [private]
    r = await s.request("GET", f"{FED}/v1/hierarchy/{_q(space)}?suggested_only=true")
    assert [c["state_key"] for c in r.json()["room"]["children_state"]] == [s.room_id]
    assert (await s.request("GET", f"{FED}/v1/hierarchy/{_q(private)}")).status_code == 404


async def test_a_signed_request_ends_the_senders_back_off_for_its_origin(signed: Signed) -> None:
    s = signed
    sender = s.target.services.federation_sender
    assert sender is not None
    # As after failed sends to the origin: its next try an hour away.
    sender._retry[s.origin_name] = (s.target.services.clock.time_ms() + 3_600_000, 3_600_000)
    assert sender.statistics()["backing_off"] == 1
    r = await s.request("GET", f"{FED}/v1/publicRooms")
    assert r.status_code == 200, r.text
    assert sender.statistics()["backing_off"] == 0
    # A request that fails its signature check does not count.
    sender._retry[s.origin_name] = (s.target.services.clock.time_ms() + 3_600_000, 3_600_000)
    async with httpx.AsyncClient(base_url=s.target.urls[0]) as http:
        bad = f'X-Matrix origin="{s.origin_name}",destination="{s.target_name}",key="ed25519:x",sig="AAAA"'
        r = await http.get(f"{FED}/v1/publicRooms", headers={"Authorization": bad})
    assert r.status_code == 401
    assert sender.statistics()["backing_off"] == 1


# -- two pocketservers, each with an admin, changing power levels at once -------------

WAIT_S = 30.0


async def _poll(what: str, check: Any) -> Any:
    """``await check()`` until it returns something truthy; bounded in time and rounds."""
    deadline = trio.current_time() + WAIT_S
    for _ in range(600):
        got = await check()
        if got:
            return got
        if trio.current_time() > deadline:
            break
        await trio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def _state_ids(http: httpx.AsyncClient, token: str, room_id: str) -> dict[tuple[str, str], str]:
    r = await http.get(f"/_matrix/client/v3/rooms/{_q(room_id)}/state", headers=auth_headers(token))
    assert r.status_code == 200, r.text
    return {(e["type"], e["state_key"]): e["event_id"] for e in r.json()}


async def _has_event(http: httpx.AsyncClient, token: str, room_id: str, event_id: str) -> bool:
    r = await http.get(f"/_matrix/client/v3/rooms/{_q(room_id)}/event/{_q(event_id)}", headers=auth_headers(token))
    return r.status_code == 200


async def test_concurrent_power_level_changes_on_two_servers_resolve_the_same(
    signed: Signed, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = signed
    a, b = s.target, s.origin  # alice's server hosts the room; bob joins from the other
    async with httpx.AsyncClient(base_url=a.urls[0]) as ha, httpx.AsyncClient(base_url=b.urls[0]) as hb:
        bob, bob_token, _ = await register(hb, "bob")
        r = await hb.post(f"/_matrix/client/v3/join/{_q(s.room_id)}", params={"via": s.target_name},
                          json={}, headers=auth_headers(bob_token))
        assert r.status_code == 200, r.text
        r = await ha.get(f"/_matrix/client/v3/rooms/{_q(s.room_id)}/state/m.room.power_levels/",
                         headers=auth_headers(s.alice_token))
        levels = r.json()
        levels["users"][bob] = 100
        r = await ha.put(f"/_matrix/client/v3/rooms/{_q(s.room_id)}/state/m.room.power_levels/",
                         json=levels, headers=auth_headers(s.alice_token))
        assert r.status_code == 200, r.text
        promoted = r.json()["event_id"]
        await _poll("bob's promotion on his server", lambda: _has_event(hb, bob_token, s.room_id, promoted))

        # Hold both servers' outbound queues (the events wait in the outbox) so that
        # neither change sees the other: two forks from the same state.
        held: list[tuple[Any, list[str]]] = []
        for server in (a, b):
            sender = server.services.federation_sender
            assert sender is not None
            monkeypatch.setattr(sender, "wake", lambda dests, sender=sender: held.append((sender, list(dests))))
        ids: dict[str, str] = {}

        async def change(http: httpx.AsyncClient, token: str, who: str, ban: int) -> None:
            r = await http.put(f"/_matrix/client/v3/rooms/{_q(s.room_id)}/state/m.room.power_levels/",
                               json={**levels, "ban": ban}, headers=auth_headers(token))
            assert r.status_code == 200, r.text
            ids[who] = r.json()["event_id"]

        async with trio.open_nursery() as n:
            n.start_soon(change, ha, s.alice_token, "alice", 60)
            n.start_soon(change, hb, bob_token, "bob", 70)
        assert held, "the changes were not queued for the other server"
        for server in (a, b):
            monkeypatch.delattr(server.services.federation_sender, "wake")
        for sender, dests in held:
            sender.wake(dests)

        for http, token in ((ha, s.alice_token), (hb, bob_token)):
            for eid in ids.values():
                await _poll(f"{eid} on both servers", lambda http=http, token=token, eid=eid: _has_event(http, token, s.room_id, eid))

        async def same() -> dict[tuple[str, str], str] | None:
            on_a, on_b = await _state_ids(ha, s.alice_token, s.room_id), await _state_ids(hb, bob_token, s.room_id)
            return on_a if on_a == on_b and on_a[("m.room.power_levels", "")] in ids.values() else None

        # Two forks indeed: neither change had the other among its prev_events.
        pdus = [(await s.request("GET", f"{FED}/v1/event/{_q(eid)}")).json()["pdus"][0] for eid in ids.values()]
        assert not set(ids.values()) & {p for pdu in pdus for p in pdu["prev_events"]}
        state = await _poll("the same resolved state on both servers", same)
        winner = state[("m.room.power_levels", "")]
        for http, token in ((ha, s.alice_token), (hb, bob_token)):
            r = await http.get(f"/_matrix/client/v3/rooms/{_q(s.room_id)}/state/m.room.power_levels/",
                               headers=auth_headers(token))
            assert r.json()["ban"] == (60 if winner == ids["alice"] else 70)
        # The forks merge: a message from either side reaches the other, the state stays put.
        msg = await send(hb, bob_token, s.room_id, {"msgtype": "m.text", "body": "after the race"})
        await _poll("bob's message on alice's server", lambda: _has_event(ha, s.alice_token, s.room_id, msg))
        assert await _state_ids(ha, s.alice_token, s.room_id) == await _state_ids(hb, bob_token, s.room_id) == state
