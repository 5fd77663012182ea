"""Push over real HTTP: rules CRUD, unread counts in /sync, /notifications, pushers, and
HTTP pushers delivering to a real push gateway on loopback."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from functools import partial
from typing import Any
from urllib.parse import quote

import h11
import httpx
import pytest
import trio

from pocketserver.config import Config
from pocketserver.server import RunningServer
from tests.api.helpers import V3, auth_headers, create_room, join, register, send, sync
from tests.conftest import make_config
from tests.federation.servers import start_federating_server


@pytest.fixture
def config(tmp_path: Any) -> Config:
    # The test gateways listen on 127.0.0.1, which an operator must allow: push gateways
    # are named by users, so loopback and private addresses are refused by default.
    return make_config(tmp_path, {"federation": {"allowed_ip_ranges": ["127.0.0.1/32"]}})


def unread(resp: dict[str, Any], room: str) -> dict[str, int]:
    return dict(resp["rooms"]["join"][room]["unread_notifications"])


def text(body: str, mentions: list[str] | None = None) -> dict[str, Any]:
    content: dict[str, Any] = {"msgtype": "m.text", "body": body}
    if mentions is not None:
        content["m.mentions"] = {"user_ids": mentions}
    return content


async def three_people(http: httpx.AsyncClient) -> tuple[tuple[str, str], tuple[str, str], str]:
    """Alice and Bob (and Carol, so it is no 1:1) in one public room: ((alice, atok), (bob, btok), room)."""
    alice, atok, _ = await register(http)
    bob, btok, _ = await register(http)
    _, ctok, _ = await register(http)
    room = await create_room(http, atok, preset="public_chat")
    await join(http, btok, room)
    await join(http, ctok, room)
    return (alice, atok), (bob, btok), room


# -- push rules ----------------------------------------------------------------------------


async def test_default_rules_are_served(http: httpx.AsyncClient) -> None:
    alice, atok, _ = await register(http)
    r = await http.get(f"{V3}/pushrules/", headers=auth_headers(atok))
    assert r.status_code == 200
    glob = r.json()["global"]
    assert set(glob) == {"override", "content", "room", "sender", "underride"}
    assert glob["override"][0]["rule_id"] == ".m.rule.master"
    mention = next(x for x in glob["override"] if x["rule_id"] == ".m.rule.is_user_mention")
    assert mention["conditions"][0]["value"] == alice
    r2 = await http.get(f"{V3}/pushrules/global/", headers=auth_headers(atok))
    assert r2.json() == glob
    r3 = await http.get(f"{V3}/pushrules/global/underride/.m.rule.message", headers=auth_headers(atok))
    assert r3.status_code == 200
    assert r3.json()["actions"] == ["notify"] and r3.json()["default"] is True
    unauth = await http.get(f"{V3}/pushrules/")
    assert unauth.status_code == 401 and unauth.json()["errcode"] == "M_MISSING_TOKEN"


async def test_rule_crud_ordering_enabled_actions(http: httpx.AsyncClient) -> None:
    _, tok, _ = await register(http)
    h = auth_headers(tok)
    base = f"{V3}/pushrules/global/content"
    r = await http.put(f"{base}/cake", json={"pattern": "cake", "actions": ["notify"]}, headers=h)
    assert r.status_code == 200 and r.json() == {}
    r = await http.put(f"{base}/lie", params={"before": "cake"}, json={"pattern": "cake*lie", "actions": ["notify"]}, headers=h)
    assert r.status_code == 200
    r = await http.put(f"{base}/tea", params={"after": "cake"}, json={"pattern": "tea", "actions": []}, headers=h)
    assert r.status_code == 200
    order = [x["rule_id"] for x in (await http.get(f"{V3}/pushrules/global/", headers=h)).json()["content"]]
    assert order == ["lie", "cake", "tea"]
    # A new rule with no before/after is the most important of its kind.
    await http.put(f"{base}/first", json={"pattern": "x", "actions": []}, headers=h)
    # Updating keeps the place and the enabled state.
    await http.put(f"{base}/cake/enabled", json={"enabled": False}, headers=h)
    await http.put(f"{base}/cake", json={"pattern": "cakes", "actions": ["notify"]}, headers=h)
    rules = (await http.get(f"{V3}/pushrules/global/", headers=h)).json()["content"]
    assert [x["rule_id"] for x in rules] == ["first", "lie", "cake", "tea"]
    cake = (await http.get(f"{base}/cake", headers=h)).json()
    assert cake == {"rule_id": "cake", "default": False, "enabled": False, "actions": ["notify"], "pattern": "cakes"}
    assert (await http.get(f"{base}/cake/enabled", headers=h)).json() == {"enabled": False}
    r = await http.put(f"{base}/cake/actions", json={"actions": ["notify", {"set_tweak": "sound", "value": "bing"}]}, headers=h)
    assert r.status_code == 200
    assert (await http.get(f"{base}/cake/actions", headers=h)).json() == {"actions": ["notify", {"set_tweak": "sound", "value": "bing"}]}
    # Server-default rules: enabled and actions can change, the rule cannot be deleted.
    master = f"{V3}/pushrules/global/override/.m.rule.master"
    assert (await http.put(f"{master}/enabled", json={"enabled": True}, headers=h)).status_code == 200
    assert (await http.get(f"{master}/enabled", headers=h)).json() == {"enabled": True}
    msg = f"{V3}/pushrules/global/underride/.m.rule.message"
    assert (await http.put(f"{msg}/actions", json={"actions": []}, headers=h)).status_code == 200
    assert (await http.get(msg, headers=h)).json()["actions"] == []
    r = await http.delete(master, headers=h)
    assert r.status_code == 400
    # Delete.
    assert (await http.delete(f"{base}/tea", headers=h)).status_code == 200
    r = await http.get(f"{base}/tea", headers=h)
    assert r.status_code == 404 and r.json()["errcode"] == "M_NOT_FOUND"


@pytest.mark.parametrize(
    ("method", "path", "body", "params", "status", "errcode"),
    [
        ("GET", "override/nope", None, {}, 404, "M_NOT_FOUND"),
        ("DELETE", "override/nope", None, {}, 404, "M_NOT_FOUND"),
        ("GET", "override/nope/enabled", None, {}, 404, "M_NOT_FOUND"),
        ("PUT", "override/nope/enabled", {"enabled": True}, {}, 404, "M_NOT_FOUND"),
        ("PUT", "override/nope/actions", {"actions": []}, {}, 404, "M_NOT_FOUND"),
        ("GET", "underride/.m.rule.master", None, {}, 404, "M_NOT_FOUND"),  # wrong kind
        ("PUT", "override/.mine", {"actions": []}, {}, 400, "M_INVALID_PARAM"),
        ("PUT", "override/x", {"actions": []}, {"before": "missing"}, 400, "M_UNKNOWN"),
        ("PUT", "override/x", {"actions": []}, {"after": ".m.rule.master"}, 400, "M_UNKNOWN"),
        ("PUT", "override/x", {}, {}, 400, "M_MISSING_PARAM"),
        ("PUT", "override/x", {"actions": "notify"}, {}, 400, "M_BAD_JSON"),
        ("PUT", "content/x", {"actions": []}, {}, 400, "M_MISSING_PARAM"),
        ("PUT", "override/x/enabled", {"enabled": "yes"}, {}, 400, "M_BAD_JSON"),
        ("PUT", "override/x/enabled", {}, {}, 400, "M_MISSING_PARAM"),
        ("GET", "bogus/x", None, {}, 400, "M_INVALID_PARAM"),
    ],
)
async def test_rule_errors(
    http: httpx.AsyncClient, method: str, path: str, body: Any, params: dict[str, str], status: int, errcode: str
) -> None:
    _, tok, _ = await register(http)
    r = await http.request(method, f"{V3}/pushrules/global/{path}", json=body, params=params, headers=auth_headers(tok))
    assert r.status_code == status, r.text
    assert r.json()["errcode"] == errcode


@pytest.mark.parametrize(
    ("method", "path", "status", "errcode"),
    [
        ("GET", "", 404, "M_UNRECOGNIZED"),  # the spec's path is /pushrules/
        ("PUT", "/", 400, "M_MISSING_PARAM"),
        ("GET", "/global", 400, "M_MISSING_PARAM"),
        ("PUT", "/global", 400, "M_MISSING_PARAM"),
        ("GET", "/global/room", 400, "M_MISSING_PARAM"),
        ("PUT", "/global/room", 400, "M_MISSING_PARAM"),
        ("PUT", "/global/room/", 400, "M_MISSING_PARAM"),
        ("GET", "/not_a_scope/", 400, "M_INVALID_PARAM"),
        ("PUT", "/not_a_scope/room/%23spam:example.com", 400, "M_INVALID_PARAM"),
        ("GET", "/global/not_a_kind/", 400, "M_INVALID_PARAM"),
        ("GET", "/global/override/.m.rule.master/not_an_attr", 400, "M_INVALID_PARAM"),
        ("PUT", "/global/override/.m.rule.master/not_an_attr", 400, "M_INVALID_PARAM"),
        ("PUT", "/global/room/a/b/c", 400, "M_INVALID_PARAM"),
        ("DELETE", "/global/override/.m.rule.master/enabled", 405, "M_UNRECOGNIZED"),
    ],
)
async def test_rule_paths_with_a_part_missing_or_unknown(http: httpx.AsyncClient, method: str, path: str, status: int, errcode: str) -> None:
    _, tok, _ = await register(http)
    r = await http.request(method, f"{V3}/pushrules{path}", json={"actions": ["notify"], "enabled": True}, headers=auth_headers(tok))
    assert r.status_code == status, r.text
    assert r.json()["errcode"] == errcode


async def test_rules_of_one_kind_are_listed_with_a_trailing_slash(http: httpx.AsyncClient) -> None:
    _, tok, _ = await register(http)
    h = auth_headers(tok)
    for room in ("!a:example.com", "!b:example.com"):
        r = await http.put(f"{V3}/pushrules/global/room/{quote(room)}", json={"actions": ["notify"]}, headers=h)
        assert r.status_code == 200, r.text
    listed = (await http.get(f"{V3}/pushrules/global/room/", headers=h)).json()
    assert [x["rule_id"] for x in listed] == ["!b:example.com", "!a:example.com"]  # newest first
    assert listed[0] == {"rule_id": "!b:example.com", "default": False, "enabled": True, "actions": ["notify"]}
    underride = (await http.get(f"{V3}/pushrules/global/underride/", headers=h)).json()
    assert underride[-1]["rule_id"] == ".m.rule.encrypted"
    r = await http.put(f"{V3}/pushrules/global/room/{quote('!a:example.com')}/enabled", json={"enabled": False}, headers=h)
    assert r.status_code == 200
    listed = (await http.get(f"{V3}/pushrules/global/room/", headers=h)).json()
    assert [x["enabled"] for x in listed] == [True, False]


async def test_push_rules_account_data_in_sync(http: httpx.AsyncClient) -> None:
    _, tok, _ = await register(http)
    first = await sync(http, tok)
    rules = [e for e in first["account_data"]["events"] if e["type"] == "m.push_rules"]
    assert len(rules) == 1 and rules[0]["content"]["global"]["override"][0]["rule_id"] == ".m.rule.master"
    await http.put(
        f"{V3}/pushrules/global/room/{quote('!r:test.local')}", json={"actions": []}, headers=auth_headers(tok)
    )
    nxt = await sync(http, tok, since=first["next_batch"], timeout=5000)
    changed = [e for e in nxt["account_data"]["events"] if e["type"] == "m.push_rules"]
    assert changed and changed[0]["content"]["global"]["room"][0]["rule_id"] == "!r:test.local"


# -- unread counts -----------------------------------------------------------------------------


async def test_counts_follow_messages_mentions_and_read_receipts(http: httpx.AsyncClient) -> None:
    (alice, atok), (_, btok), room = await three_people(http)
    await send(http, btok, room, text("one"))
    await send(http, btok, room, text("hey alice", mentions=[alice]))
    await send(http, btok, room, {"msgtype": "m.notice", "body": "a bot"})  # suppressed
    await send(http, atok, room, text("my own"))  # never counts
    last = await send(http, btok, room, text("three"))
    s1 = await sync(http, atok)
    assert unread(s1, room) == {"notification_count": 3, "highlight_count": 1}
    # The count arrives in the same sync as the event.
    await send(http, btok, room, text("four"))
    s2 = await sync(http, atok, since=s1["next_batch"], timeout=5000)
    assert unread(s2, room) == {"notification_count": 4, "highlight_count": 1}
    # A read receipt on the last event clears them.
    r = await http.post(f"{V3}/rooms/{room}/receipt/m.read/{last}", json={}, headers=auth_headers(atok))
    assert r.status_code == 200
    s3 = await sync(http, atok, since=s2["next_batch"], timeout=5000)
    assert unread(s3, room) == {"notification_count": 1, "highlight_count": 0}
    # A private receipt further ahead wins over the public one behind it.
    newest = await send(http, btok, room, text("five"))
    await http.post(f"{V3}/rooms/{room}/receipt/m.read.private/{newest}", json={}, headers=auth_headers(atok))
    s4 = await sync(http, atok, since=s3["next_batch"], timeout=5000)
    assert unread(s4, room) == {"notification_count": 0, "highlight_count": 0}


async def test_room_rule_and_master_rule_change_counts(http: httpx.AsyncClient) -> None:
    (_, atok), (_, btok), room = await three_people(http)
    await send(http, btok, room, text("hi"))
    assert unread(await sync(http, atok), room)["notification_count"] == 1
    r = await http.put(f"{V3}/pushrules/global/room/{quote(room)}", json={"actions": []}, headers=auth_headers(atok))
    assert r.status_code == 200
    assert unread(await sync(http, atok), room)["notification_count"] == 0
    await http.delete(f"{V3}/pushrules/global/room/{quote(room)}", headers=auth_headers(atok))
    assert unread(await sync(http, atok), room)["notification_count"] == 1
    await http.put(f"{V3}/pushrules/global/override/.m.rule.master/enabled", json={"enabled": True}, headers=auth_headers(atok))
    assert unread(await sync(http, atok), room)["notification_count"] == 0


async def test_muted_room_notifies_only_intentional_mentions(http: httpx.AsyncClient) -> None:
    """A room muted with a ``dont_notify`` room rule stays quiet, also for a body that
    merely contains the user's ID (the spec dropped the body-mention default rules in
    v1.17, so SyTest's "Don't get pushed for rooms you've muted" cannot pass); an
    ``m.mentions`` mention is an override rule and still notifies."""
    (alice, atok), (_, btok), room = await three_people(http)
    r = await http.put(f"{V3}/pushrules/global/room/{quote(room)}", json={"actions": ["dont_notify"]},
                       headers=auth_headers(atok))
    assert r.status_code == 200, r.text
    await send(http, btok, room, text("plain"))
    await send(http, btok, room, text(f"Second message - {alice}"))
    assert unread(await sync(http, atok), room) == {"notification_count": 0, "highlight_count": 0}
    await send(http, btok, room, text("hey you", mentions=[alice]))
    assert unread(await sync(http, atok), room) == {"notification_count": 1, "highlight_count": 1}


async def test_keyword_rule_highlights_and_one_to_one(http: httpx.AsyncClient) -> None:
    _, atok, _ = await register(http)
    _, btok, _ = await register(http)
    room = await create_room(http, atok, preset="public_chat")
    await join(http, btok, room)
    await http.put(
        f"{V3}/pushrules/global/content/lunch",
        json={"pattern": "lunch", "actions": ["notify", {"set_tweak": "highlight"}]},
        headers=auth_headers(atok),
    )
    await send(http, btok, room, text("Lunch?"))
    await send(http, btok, room, text("launch"))
    await send(http, btok, room, {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "x"}, "m.room.encrypted")
    assert unread(await sync(http, atok), room) == {"notification_count": 3, "highlight_count": 1}


async def test_room_mention_needs_power(http: httpx.AsyncClient) -> None:
    (_, atok), (_, btok), room = await three_people(http)
    _, dtok, _ = await register(http)
    # Alice created the room (power 100); Bob has the default 0.
    await send(http, btok, room, {"msgtype": "m.text", "body": "@room", "m.mentions": {"room": True}})
    s = await sync(http, atok)
    assert unread(s, room) == {"notification_count": 1, "highlight_count": 0}
    await join(http, dtok, room)
    await send(http, atok, room, {"msgtype": "m.text", "body": "@room", "m.mentions": {"room": True}})
    s = await sync(http, dtok)
    assert unread(s, room) == {"notification_count": 1, "highlight_count": 1}


async def test_threaded_receipts_clear_their_thread(http: httpx.AsyncClient) -> None:
    (_, atok), (_, btok), room = await three_people(http)
    root = await send(http, btok, room, text("root"))
    reply = await send(
        http, btok, room, {**text("in thread"), "m.relates_to": {"rel_type": "m.thread", "event_id": root}}
    )
    assert unread(await sync(http, atok), room)["notification_count"] == 2
    r = await http.post(
        f"{V3}/rooms/{room}/receipt/m.read/{reply}", json={"thread_id": root}, headers=auth_headers(atok)
    )
    assert r.status_code == 200, r.text
    # The thread is read; the root (main timeline) is not.
    assert unread(await sync(http, atok), room)["notification_count"] == 1
    r = await http.post(
        f"{V3}/rooms/{room}/receipt/m.read/{root}", json={"thread_id": "main"}, headers=auth_headers(atok)
    )
    assert r.status_code == 200, r.text
    assert unread(await sync(http, atok), room)["notification_count"] == 0


# -- /notifications -----------------------------------------------------------------------------


async def test_notifications_list_pages_and_highlights(http: httpx.AsyncClient) -> None:
    (alice, atok), (_, btok), room = await three_people(http)
    e1 = await send(http, btok, room, text("one"))
    e2 = await send(http, btok, room, text("two", mentions=[alice]))
    await send(http, btok, room, {"msgtype": "m.notice", "body": "bot"})
    e3 = await send(http, btok, room, text("three"))
    await http.post(f"{V3}/rooms/{room}/receipt/m.read/{e1}", json={}, headers=auth_headers(atok))
    h = auth_headers(atok)
    r = await http.get(f"{V3}/notifications", headers=h)
    assert r.status_code == 200, r.text
    notes = r.json()["notifications"]
    assert [n["event"]["event_id"] for n in notes] == [e3, e2, e1]
    assert [n["read"] for n in notes] == [False, False, True]
    assert notes[0]["room_id"] == room and notes[0]["actions"] == ["notify"]
    assert isinstance(notes[0]["ts"], int)
    # The rules are global, without a profile tag; the key is there all the same.
    assert all(n["profile_tag"] == "" for n in notes)
    # Paging.
    page1 = (await http.get(f"{V3}/notifications", params={"limit": 2}, headers=h)).json()
    assert [n["event"]["event_id"] for n in page1["notifications"]] == [e3, e2]
    page2 = (await http.get(f"{V3}/notifications", params={"limit": 2, "from": page1["next_token"]}, headers=h)).json()
    assert [n["event"]["event_id"] for n in page2["notifications"]] == [e1]
    # Highlights only.
    hl = (await http.get(f"{V3}/notifications", params={"only": "highlight"}, headers=h)).json()
    assert [n["event"]["event_id"] for n in hl["notifications"]] == [e2]
    bad = await http.get(f"{V3}/notifications", params={"limit": "many"}, headers=h)
    assert bad.status_code == 400


# -- pushers ------------------------------------------------------------------------------------


def pusher_body(url: str, pushkey: str = "key1", **extra: Any) -> dict[str, Any]:
    return {
        "kind": "http",
        "app_id": "org.example.app",
        "pushkey": pushkey,
        "app_display_name": "Example",
        "device_display_name": "Phone",
        "lang": "en",
        "data": {"url": url, "custom": 1},
        **extra,
    }


async def test_pushers_crud(http: httpx.AsyncClient) -> None:
    _, atok, _ = await register(http)
    _, btok, _ = await register(http)
    url = "https://push.example.org/_matrix/push/v1/notify"
    r = await http.post(f"{V3}/pushers/set", json=pusher_body(url, profile_tag="tag"), headers=auth_headers(atok))
    assert r.status_code == 200, r.text
    got = (await http.get(f"{V3}/pushers", headers=auth_headers(atok))).json()["pushers"]
    assert got == [{
        "pushkey": "key1", "kind": "http", "app_id": "org.example.app", "app_display_name": "Example",
        "device_display_name": "Phone", "lang": "en", "data": {"url": url, "custom": 1}, "profile_tag": "tag",
    }]  # fmt: skip
    # Same app_id and pushkey for another user: without append, the first user's goes.
    await http.post(f"{V3}/pushers/set", json=pusher_body(url), headers=auth_headers(btok))
    assert (await http.get(f"{V3}/pushers", headers=auth_headers(atok))).json()["pushers"] == []
    await http.post(f"{V3}/pushers/set", json=pusher_body(url, append=True), headers=auth_headers(atok))
    assert len((await http.get(f"{V3}/pushers", headers=auth_headers(atok))).json()["pushers"]) == 1
    assert len((await http.get(f"{V3}/pushers", headers=auth_headers(btok))).json()["pushers"]) == 1
    # kind null deletes.
    r = await http.post(f"{V3}/pushers/set", json={"kind": None, "app_id": "org.example.app", "pushkey": "key1"}, headers=auth_headers(btok))
    assert r.status_code == 200
    assert (await http.get(f"{V3}/pushers", headers=auth_headers(btok))).json()["pushers"] == []


@pytest.mark.parametrize(
    ("change", "errcode"),
    [
        ({"kind": ...}, "M_MISSING_PARAM"),
        ({"lang": ...}, "M_MISSING_PARAM"),
        ({"data": {}}, "M_MISSING_PARAM"),
        ({"data": {"url": "ftp://x/_matrix/push/v1/notify"}}, "M_INVALID_PARAM"),
        ({"data": {"url": "https://x/other"}}, "M_INVALID_PARAM"),
        ({"kind": "carrier-pigeon"}, "M_INVALID_PARAM"),
        ({"kind": "email"}, "M_UNRECOGNIZED"),
        ({"pushkey": "k" * 513}, "M_INVALID_PARAM"),
        ({"app_id": "a" * 65}, "M_INVALID_PARAM"),
        ({"data": "url"}, "M_BAD_JSON"),
        ({"append": "yes"}, "M_BAD_JSON"),
    ],
)
async def test_pusher_errors(http: httpx.AsyncClient, change: dict[str, Any], errcode: str) -> None:
    _, tok, _ = await register(http)
    body = pusher_body("https://push.example.org/_matrix/push/v1/notify")
    for k, v in change.items():
        if v is ...:
            del body[k]
        else:
            body[k] = v
    r = await http.post(f"{V3}/pushers/set", json=body, headers=auth_headers(tok))
    assert r.status_code == 400, r.text
    assert r.json()["errcode"] == errcode


# -- a real push gateway on loopback -----------------------------------------------------------


class Gateway:
    """A tiny push gateway: records each /notify body; answers with ``statuses`` in turn."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.statuses: list[int] = []
        self.rejected: list[str] = []
        self.changed = trio.Event()
        self.url = ""

    async def wait_for(self, n: int) -> list[dict[str, Any]]:
        with trio.fail_after(20):
            while len(self.received) < n:
                await self.changed.wait()
        return self.received

    async def handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        body = bytearray()
        target = b""
        async with stream:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    conn.receive_data(data)
                    continue
                if isinstance(event, h11.Request):
                    target = event.target
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
            status = self.statuses.pop(0) if self.statuses else 200
            if status == 200 and target == b"/_matrix/push/v1/notify":
                self.received.append(json.loads(body))
                self.changed.set()
                self.changed = trio.Event()
            payload = json.dumps({"rejected": self.rejected}).encode()
            await stream.send_all(conn.send(h11.Response(status_code=status, headers=[("Content-Type", "application/json"), ("Content-Length", str(len(payload)))])) or b"")
            await stream.send_all(conn.send(h11.Data(data=payload)) or b"")
            await stream.send_all(conn.send(h11.EndOfMessage()) or b"")


async def start_gateway(nursery: trio.Nursery, host: str = "127.0.0.1") -> Gateway:
    gw = Gateway()
    listeners = await nursery.start(partial(trio.serve_tcp, gw.handle, 0, host=host))
    port = listeners[0].socket.getsockname()[1]
    gw.url = f"http://{host}:{port}/_matrix/push/v1/notify"
    return gw


@pytest.fixture
async def gateway(nursery: trio.Nursery) -> AsyncIterator[Gateway]:
    yield await start_gateway(nursery)


async def test_a_gateway_at_an_address_not_allowed_gets_nothing(
    http: httpx.AsyncClient, server: RunningServer, gateway: Gateway, nursery: trio.Nursery
) -> None:
    # 127.0.0.2 is loopback too, outside the allowed 127.0.0.1/32: a user cannot make
    # the server post into its own network.
    internal = await start_gateway(nursery, "127.0.0.2")
    (alice, atok), (bob, btok), room = await three_people(http)
    body = pusher_body(internal.url)
    body["pushkey"] = "internal"
    r = await http.post(f"{V3}/pushers/set", json=body, headers=auth_headers(atok))
    assert r.status_code == 200, r.text
    r = await http.post(f"{V3}/pushers/set", json=pusher_body(gateway.url), headers=auth_headers(atok))
    assert r.status_code == 200, r.text
    push = server.services.push
    await send(http, btok, room, text("hello alice", mentions=[alice]))
    await gateway.wait_for(1)
    with trio.fail_after(20):
        while push.failures < 1:
            await trio.sleep(0.05)
    assert internal.received == []
    # The pusher stays: the operator may allow the range later.
    r = await http.get(f"{V3}/pushers", headers=auth_headers(atok))
    assert {p["pushkey"] for p in r.json()["pushers"]} == {"internal", "key1"}


async def test_http_pusher_delivers_to_the_gateway(http: httpx.AsyncClient, gateway: Gateway) -> None:
    (alice, atok), (bob, btok), room = await three_people(http)
    r = await http.put(f"{V3}/rooms/{room}/state/m.room.name", json={"name": "Tea room"}, headers=auth_headers(atok))
    assert r.status_code == 200, r.text
    r = await http.post(f"{V3}/pushers/set", json=pusher_body(gateway.url), headers=auth_headers(atok))
    assert r.status_code == 200, r.text
    await send(http, btok, room, {"msgtype": "m.notice", "body": "silent"})  # no push
    e1 = await send(http, btok, room, text("hello alice", mentions=[alice]))
    got = await gateway.wait_for(1)
    note = got[0]["notification"]
    assert note["event_id"] == e1
    assert note["room_id"] == room
    assert note["type"] == "m.room.message"
    assert note["sender"] == bob
    assert note["content"]["body"] == "hello alice"
    assert note["room_name"] == "Tea room"
    assert note["prio"] == "high"
    assert note["counts"] == {"unread": 1}
    [device] = note["devices"]
    assert device["app_id"] == "org.example.app" and device["pushkey"] == "key1"
    assert device["data"] == {"custom": 1}  # everything but the url
    assert device["tweaks"] == {"sound": "default", "highlight": True}
    assert isinstance(device["pushkey_ts"], int)
    e2 = await send(http, btok, room, text("second"))
    got = await gateway.wait_for(2)
    assert got[1]["notification"]["event_id"] == e2
    assert got[1]["notification"]["counts"] == {"unread": 2}
    assert got[1]["notification"]["devices"][0]["tweaks"] == {}
    # Own messages never push.
    await send(http, atok, room, text("me"))
    e3 = await send(http, btok, room, text("third"))
    got = await gateway.wait_for(3)
    assert got[2]["notification"]["event_id"] == e3


async def test_event_id_only_retry_and_rejection(http: httpx.AsyncClient, gateway: Gateway) -> None:
    (_, atok), (_, btok), room = await three_people(http)
    body = pusher_body(gateway.url)
    body["data"] = {"url": gateway.url, "format": "event_id_only"}
    await http.post(f"{V3}/pushers/set", json=body, headers=auth_headers(atok))
    gateway.statuses = [500]  # the first attempt fails; the retry delivers
    e1 = await send(http, btok, room, text("secret"))
    got = await gateway.wait_for(1)
    note = got[0]["notification"]
    assert note["event_id"] == e1 and note["room_id"] == room
    assert "content" not in note and "sender" not in note
    assert note["devices"][0]["data"] == {"format": "event_id_only"}
    # The gateway rejects the pushkey: the pusher is removed.
    gateway.rejected = ["key1"]
    await send(http, btok, room, text("again"))
    await gateway.wait_for(2)
    with trio.fail_after(10):
        while (await http.get(f"{V3}/pushers", headers=auth_headers(atok))).json()["pushers"]:
            await trio.sleep(0.05)


async def test_a_rejected_pushkey_removes_only_its_pusher(http: httpx.AsyncClient, gateway: Gateway) -> None:
    """Two phones of Alice's on one gateway; the gateway says one pushkey is no longer
    valid: that pusher goes (push gateway API, ``rejected``), the other keeps getting
    notifications."""
    (_, atok), (_, btok), room = await three_people(http)
    for key in ("key_1", "key_2"):
        r = await http.post(f"{V3}/pushers/set", json=pusher_body(gateway.url, key), headers=auth_headers(atok))
        assert r.status_code == 200, r.text
    gateway.rejected = ["key_1"]
    await send(http, btok, room, text("one"))
    await gateway.wait_for(2)
    with trio.fail_after(10):
        while len((await http.get(f"{V3}/pushers", headers=auth_headers(atok))).json()["pushers"]) != 1:
            await trio.sleep(0.05)
    [left] = (await http.get(f"{V3}/pushers", headers=auth_headers(atok))).json()["pushers"]
    assert left["pushkey"] == "key_2"
    await send(http, btok, room, text("two"))
    got = await gateway.wait_for(3)
    assert got[2]["notification"]["content"]["body"] == "two"
    assert got[2]["notification"]["devices"][0]["pushkey"] == "key_2"


async def test_a_read_receipt_sends_the_new_badge_count(http: httpx.AsyncClient, gateway: Gateway) -> None:
    (_, atok), (bob, btok), room = await three_people(http)
    await http.post(f"{V3}/pushers/set", json=pusher_body(gateway.url), headers=auth_headers(atok))
    await send(http, btok, room, text("one"))
    e2 = await send(http, btok, room, text("two"))
    got = await gateway.wait_for(2)
    note = got[1]["notification"]
    # The event's ID under both names (``id`` is what gateways written for Synapse read).
    assert note["event_id"] == note["id"] == e2
    assert note["counts"] == {"unread": 2}
    # Alice reads on another device: the gateway hears the badge is now 0.
    r = await http.post(f"{V3}/rooms/{room}/receipt/m.read/{e2}", json={}, headers=auth_headers(atok))
    assert r.status_code == 200, r.text
    got = await gateway.wait_for(3)
    badge = got[2]["notification"]
    assert badge["counts"] == {"unread": 0}
    assert "event_id" not in badge and "type" not in badge
    [device] = badge["devices"]
    assert device["pushkey"] == "key1" and device["data"] == {"custom": 1}
    # A receipt that does not change the count sends nothing; the next message pushes.
    await http.post(f"{V3}/rooms/{room}/receipt/m.read.private/{e2}", json={}, headers=auth_headers(atok))
    e3 = await send(http, btok, room, text("three"))
    with trio.fail_after(10):
        while not any(g["notification"].get("event_id") == e3 for g in gateway.received):
            await trio.sleep(0.02)
    later = [g["notification"] for g in gateway.received[3:]]
    # The pusher may read the count after e3 already landed and send that badge (1)
    # first; never a stale count, and the message itself is pushed with its count.
    assert all(n["counts"] == {"unread": 1} for n in later), later
    assert [n["event_id"] for n in later if "event_id" in n] == [e3]


async def test_unknown_format_gets_every_field_and_invites_say_membership(
    http: httpx.AsyncClient, gateway: Gateway
) -> None:
    alice, atok, _ = await register(http)
    _, btok, _ = await register(http)
    body = pusher_body(gateway.url)
    body["data"] = {"url": gateway.url, "format": "some_future_format"}
    r = await http.post(f"{V3}/pushers/set", json=body, headers=auth_headers(atok))
    assert r.status_code == 200, r.text
    [pusher] = (await http.get(f"{V3}/pushers", headers=auth_headers(atok))).json()["pushers"]
    assert pusher["data"]["format"] == "some_future_format"
    room = await create_room(http, btok)
    await http.post(f"{V3}/rooms/{room}/invite", json={"user_id": alice}, headers=auth_headers(btok))
    note = (await gateway.wait_for(1))[0]["notification"]
    assert note["type"] == "m.room.member" and note["membership"] == "invite"
    assert note["user_is_target"] is True and note["content"]["membership"] == "invite"
    assert note["devices"][0]["data"] == {"format": "some_future_format"}
    body["data"] = {"url": gateway.url, "format": 1}
    r = await http.post(f"{V3}/pushers/set", json=body, headers=auth_headers(atok))
    assert r.status_code == 400 and r.json()["errcode"] == "M_BAD_JSON"


async def test_a_room_without_a_name_is_named_by_its_alias(http: httpx.AsyncClient, gateway: Gateway) -> None:
    alice, atok, _ = await register(http)
    _, btok, _ = await register(http)
    room = await create_room(http, btok, preset="public_chat", room_alias_name="teatime")
    await join(http, atok, room)
    await http.post(f"{V3}/pushers/set", json=pusher_body(gateway.url), headers=auth_headers(atok))
    await send(http, btok, room, text("hello"))
    note = (await gateway.wait_for(1))[0]["notification"]
    assert note["room_alias"] == note["room_name"] == "#teatime:test.local"


async def test_invite_pushes_to_the_invitee(http: httpx.AsyncClient, gateway: Gateway) -> None:
    alice, atok, _ = await register(http)
    _, btok, _ = await register(http)
    room = await create_room(http, btok)
    await http.post(f"{V3}/pushers/set", json=pusher_body(gateway.url), headers=auth_headers(atok))
    r = await http.post(f"{V3}/rooms/{room}/invite", json={"user_id": alice}, headers=auth_headers(btok))
    assert r.status_code == 200, r.text
    got = await gateway.wait_for(1)
    note = got[0]["notification"]
    assert note["type"] == "m.room.member" and note["user_is_target"] is True


# -- what arrives over federation -------------------------------------------------------------


async def _messages_pushed(gw: Gateway, last_body: str) -> list[str]:
    """The bodies of the messages pushed, in order, once ``last_body`` has been (a
    pusher delivers in stream order, so what was not pushed before it never will be)."""
    with trio.fail_after(30):
        while not any((g["notification"].get("content") or {}).get("body") == last_body for g in gw.received):
            await gw.changed.wait()
    return [
        g["notification"]["content"]["body"]
        for g in gw.received
        if g["notification"].get("type") == "m.room.message"
    ]


async def test_an_invite_from_another_server_is_pushed_with_the_rooms_name(
    nursery: trio.Nursery, tmp_path: Any
) -> None:
    """Carol on another server invites Alice into a room Alice's server is not in: the
    invite arrives alone (federation /invite, no room timeline here), and Alice's phone
    is still told who invited her to which room."""
    here = await start_federating_server(nursery, tmp_path / "here")
    there = await start_federating_server(nursery, tmp_path / "there")
    gw = await start_gateway(nursery)
    async with httpx.AsyncClient(base_url=here.urls[0], timeout=30) as h, httpx.AsyncClient(
        base_url=there.urls[0], timeout=30
    ) as t:
        alice, atok, _ = await register(h, "alice")
        carol, ctok, _ = await register(t, "carol")
        r = await t.put(f"{V3}/profile/{carol}/displayname", json={"displayname": "Carol C"}, headers=auth_headers(ctok))
        assert r.status_code == 200, r.text
        r = await h.post(f"{V3}/pushers/set", json=pusher_body(gw.url), headers=auth_headers(atok))
        assert r.status_code == 200, r.text
        room = await create_room(t, ctok, preset="private_chat", name="Tea room", invite=[alice])
        note = (await gw.wait_for(1))[0]["notification"]
        assert note["type"] == "m.room.member" and note["room_id"] == room
        assert note["sender"] == carol and note["sender_display_name"] == "Carol C"
        assert note["membership"] == "invite" and note["user_is_target"] is True
        assert note["room_name"] == "Tea room"
        assert note["devices"][0]["tweaks"] == {"sound": "default"}
        # An invite this server never saw in a room timeline is not pushed twice when
        # it is accepted, and the room's messages push as any room's do.
        r = await h.post(f"{V3}/join/{quote(room)}", json={}, headers=auth_headers(atok))
        assert r.status_code == 200, r.text
        await send(t, ctok, room, text("welcome"))
        assert await _messages_pushed(gw, "welcome") == ["welcome"]
        assert [g["notification"].get("type") for g in gw.received].count("m.room.member") == 1


async def test_a_muted_room_stays_quiet_for_events_from_another_server(
    nursery: trio.Nursery, tmp_path: Any
) -> None:
    """The two ways Element mutes a room, for messages that come over federation:
    "Mentions & keywords" (a room rule without actions) lets only mentions through,
    "Mute" (an override rule on the room ID) silences even those; an invite elsewhere
    still gets through."""
    here = await start_federating_server(nursery, tmp_path / "here")
    there = await start_federating_server(nursery, tmp_path / "there")
    gw = await start_gateway(nursery)
    async with httpx.AsyncClient(base_url=here.urls[0], timeout=30) as h, httpx.AsyncClient(
        base_url=there.urls[0], timeout=30
    ) as t:
        alice, atok, _ = await register(h, "alice")
        carol, ctok, _ = await register(t, "carol")
        room = await create_room(t, ctok, preset="private_chat", invite=[alice])
        with trio.fail_after(30):
            while room not in (await sync(h, atok, timeout=0))["rooms"]["invite"]:
                await trio.sleep(0.05)
        r = await h.post(f"{V3}/join/{quote(room)}", json={}, headers=auth_headers(atok))
        assert r.status_code == 200, r.text
        r = await h.post(f"{V3}/pushers/set", json=pusher_body(gw.url), headers=auth_headers(atok))
        assert r.status_code == 200, r.text
        rules = f"{V3}/pushrules/global"
        r = await h.put(f"{rules}/room/{quote(room)}", json={"actions": ["dont_notify"]}, headers=auth_headers(atok))
        assert r.status_code == 200, r.text
        await send(t, ctok, room, text("chatter"))
        await send(t, ctok, room, text(f"chatter naming {alice}"))  # no intentional mention
        await send(t, ctok, room, text("alice, look", mentions=[alice]))
        assert await _messages_pushed(gw, "alice, look") == ["alice, look"]
        mute = {"actions": [], "conditions": [{"kind": "event_match", "key": "room_id", "pattern": room}]}
        r = await h.put(f"{rules}/override/{quote(room)}", json=mute, headers=auth_headers(atok))
        assert r.status_code == 200, r.text
        await send(t, ctok, room, text("muted mention", mentions=[alice]))
        await send(t, ctok, room, {"msgtype": "m.text", "body": "muted @room", "m.mentions": {"room": True}})
        # Carol then invites Alice elsewhere: a pusher delivers in stream order, so once
        # that invite is pushed, whatever came before it and was not pushed never will be.
        other = await create_room(t, ctok, preset="private_chat", invite=[alice])
        with trio.fail_after(30):
            while not any(g["notification"].get("room_id") == other for g in gw.received):
                await gw.changed.wait()
        assert [g["notification"]["content"]["body"] for g in gw.received
                if g["notification"].get("type") == "m.room.message"] == ["alice, look"]


# -- a push gateway over TLS: [federation]'s TLS settings apply -------------------------------


@pytest.mark.parametrize("trusted", [False, True], ids=["self_signed_refused", "extra_ca_file"])
async def test_https_gateway_uses_the_federation_tls_settings(
    tmp_path: Any, nursery: trio.Nursery, trusted: bool
) -> None:
    import ssl

    from pocketserver.server import run_server
    from tests.conftest import shared_certificate

    cert, key = shared_certificate()  # self-signed, SAN 127.0.0.1
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    gw = Gateway()

    async def handle(stream: trio.abc.Stream) -> None:
        try:
            await gw.handle(stream)  # type: ignore[arg-type]
        except trio.BrokenResourceError:
            pass  # the pusher refused our certificate

    listeners = await nursery.start(
        partial(trio.serve_ssl_over_tcp, handle, 0, server_tls, host="127.0.0.1")
    )
    port = listeners[0].transport_listener.socket.getsockname()[1]
    url = f"https://127.0.0.1:{port}/_matrix/push/v1/notify"
    federation: dict[str, Any] = {"allowed_ip_ranges": ["127.0.0.1/32"]}
    if trusted:
        federation["extra_ca_file"] = cert
    cfg = make_config(tmp_path, {"federation": federation})
    running = await nursery.start(partial(run_server, cfg, out=None, handle_signals=False))
    try:
        async with httpx.AsyncClient(base_url=running.urls[0], timeout=30) as http:
            (alice, atok), (_, btok), room = await three_people(http)
            r = await http.post(f"{V3}/pushers/set", json=pusher_body(url), headers=auth_headers(atok))
            assert r.status_code == 200, r.text
            await send(http, btok, room, text("hello alice", mentions=[alice]))
            if trusted:
                got = await gw.wait_for(1)
                assert got[0]["notification"]["content"]["body"] == "hello alice"
            else:
                # A delivery failure, retried in the background; the client's requests
                # go on answering.
                push = running.services.push
                with trio.fail_after(20):
                    while push.failures < 2:
                        await trio.sleep(0.05)
                assert gw.received == []
                await send(http, btok, room, text("still fine"))
    finally:
        running.stop.set()
