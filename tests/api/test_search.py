"""Server-side search over HTTP: matching, ordering, pagination, groups, context,
history visibility, encrypted rooms, ignored users."""

from __future__ import annotations

from typing import Any

import httpx

from tests.api.helpers import auth_headers, register
from tests.api.test_rooms import V3, create_room, send


async def search(http: httpx.AsyncClient, token: str, criteria: dict[str, Any], next_batch: str | None = None) -> dict[str, Any]:
    params = {"next_batch": next_batch} if next_batch else {}
    r = await http.post(
        f"{V3}/search", params=params, json={"search_categories": {"room_events": criteria}},
        headers=auth_headers(token),
    )
    assert r.status_code == 200, r.text
    return dict(r.json()["search_categories"]["room_events"])


def msg(body: str) -> dict[str, Any]:
    return {"msgtype": "m.text", "body": body}


def bodies(res: dict[str, Any]) -> list[str]:
    return [r["result"]["content"].get("body") for r in res["results"]]


async def test_search_finds_messages_names_and_topics(http: httpx.AsyncClient) -> None:
    _, tok, _ = await register(http)
    room = await create_room(http, tok, name="Martian council", topic="Plans for the red planet")
    await send(http, tok, room, msg("the martians and men met"))
    await send(http, tok, room, msg("nothing to see"))
    await send(http, tok, room, msg("Martian food is spicy"))
    res = await search(http, tok, {"search_term": "martian", "order_by": "recent"})
    assert bodies(res) == ["Martian food is spicy", "the martians and men met"] + [None]
    assert res["results"][2]["result"]["type"] == "m.room.name"
    assert res["count"] == 3
    assert "martian" in res["highlights"]
    only_body = await search(http, tok, {"search_term": "martian", "keys": ["content.body"]})
    assert len(only_body["results"]) == 2
    topic = await search(http, tok, {"search_term": "planet", "keys": ["content.topic"]})
    assert [r["result"]["type"] for r in topic["results"]] == ["m.room.topic"]
    both = await search(http, tok, {"search_term": "martians men", "keys": ["content.body"]})
    assert bodies(both) == ["the martians and men met"]
    excluded = await search(http, tok, {"search_term": "martian -spicy", "keys": ["content.body"]})
    assert bodies(excluded) == ["the martians and men met"]
    either = await search(http, tok, {"search_term": "spicy or nothing", "order_by": "recent"})
    assert bodies(either) == ["Martian food is spicy", "nothing to see"]
    # FTS5 syntax typed by a user is text, never an error.
    odd = await search(http, tok, {"search_term": 'NEAR( "unclosed * ^'})
    assert odd["results"] == []


async def test_rank_and_recent_pagination(http: httpx.AsyncClient) -> None:
    _, tok, _ = await register(http)
    room = await create_room(http, tok)
    for i in range(12):
        await send(http, tok, room, msg(f"apple number {i}"))
    for order in ("recent", "rank"):
        seen: list[str] = []
        token = None
        for _ in range(10):
            res = await search(http, tok, {"search_term": "apple", "order_by": order, "filter": {"limit": 5}}, token)
            seen += [r["result"]["event_id"] for r in res["results"]]
            token = res.get("next_batch")
            if token is None:
                break
        assert len(seen) == 12 and len(set(seen)) == 12, order
    res = await search(http, tok, {"search_term": "apple", "order_by": "recent", "filter": {"limit": 3}})
    assert bodies(res) == ["apple number 11", "apple number 10", "apple number 9"]
    r = await http.post(f"{V3}/search", params={"next_batch": "garbage!"}, json={"search_categories": {"room_events": {"search_term": "a"}}}, headers=auth_headers(tok))
    assert r.status_code == 400


async def test_groups_filter_context_and_state(http: httpx.AsyncClient) -> None:
    alice, atok, _ = await register(http)
    bob, btok, _ = await register(http)
    r1 = await create_room(http, atok, preset="public_chat")
    r2 = await create_room(http, atok, preset="public_chat")
    for room in (r1, r2):
        await http.post(f"{V3}/join/{room}", json={}, headers=auth_headers(btok))
    await send(http, atok, r1, msg("before"))
    hit = await send(http, btok, r1, msg("banana split"))
    await send(http, atok, r1, msg("after"))
    await send(http, atok, r2, msg("banana bread"))
    res = await search(
        http, atok,
        {
            "search_term": "banana",
            "order_by": "recent",
            "groupings": {"group_by": [{"key": "room_id"}, {"key": "sender"}]},
            "event_context": {"before_limit": 1, "after_limit": 1, "include_profile": True},
            "include_state": True,
        },
    )
    groups = res["groups"]
    assert set(groups["room_id"]) == {r1, r2}
    assert set(groups["sender"]) == {alice, bob}
    first = next(r for r in res["results"] if r["result"]["event_id"] == hit)
    ctx = first["context"]
    assert [e["content"]["body"] for e in ctx["events_before"]] == ["before"]
    assert [e["content"]["body"] for e in ctx["events_after"]] == ["after"]
    assert bob in ctx["profile_info"]
    assert set(res["state"]) == {r1, r2}
    assert any(e["type"] == "m.room.create" for e in res["state"][r1])
    filtered = await search(http, atok, {"search_term": "banana", "filter": {"rooms": [r2]}})
    assert bodies(filtered) == ["banana bread"]
    by_sender = await search(http, atok, {"search_term": "banana", "filter": {"senders": [bob]}})
    assert bodies(by_sender) == ["banana split"]


async def test_search_respects_visibility_encryption_and_ignores(http: httpx.AsyncClient) -> None:
    _, atok, _ = await register(http)
    bob, btok, _ = await register(http)
    room = await create_room(http, atok, preset="public_chat")
    await http.put(
        f"{V3}/rooms/{room}/state/m.room.history_visibility", json={"history_visibility": "joined"},
        headers=auth_headers(atok),
    )
    await send(http, atok, room, msg("secret cherry from before"))
    await http.post(f"{V3}/join/{room}", json={}, headers=auth_headers(btok))
    await send(http, atok, room, msg("cherry while bob is here"))
    await http.post(f"{V3}/rooms/{room}/leave", json={}, headers=auth_headers(btok))
    await send(http, atok, room, msg("cherry after bob left"))
    res = await search(http, btok, {"search_term": "cherry"})
    assert bodies(res) == ["cherry while bob is here"]

    enc = await create_room(http, btok)
    await send(http, btok, enc, msg("durian in the clear"))
    r = await http.put(
        f"{V3}/rooms/{enc}/state/m.room.encryption", json={"algorithm": "m.megolm.v1.aes-sha2"},
        headers=auth_headers(btok),
    )
    assert r.status_code == 200
    assert (await search(http, btok, {"search_term": "durian"}))["results"] == []

    shared = await create_room(http, atok, preset="public_chat")
    await http.post(f"{V3}/join/{shared}", json={}, headers=auth_headers(btok))
    await send(http, atok, shared, msg("elderberry from alice"))
    assert len((await search(http, btok, {"search_term": "elderberry"}))["results"]) == 1
    alice_id = (await http.get(f"{V3}/account/whoami", headers=auth_headers(atok))).json()["user_id"]
    r = await http.put(
        f"{V3}/user/{bob}/account_data/m.ignored_user_list", json={"ignored_users": {alice_id: {}}},
        headers=auth_headers(btok),
    )
    assert r.status_code == 200
    assert (await search(http, btok, {"search_term": "elderberry"}))["results"] == []


async def test_search_bad_requests(http: httpx.AsyncClient) -> None:
    _, tok, _ = await register(http)
    cases: list[tuple[Any, str]] = [
        ({}, "M_MISSING_PARAM"),
        ({"search_categories": {"room_events": {}}}, "M_MISSING_PARAM"),
        ({"search_categories": {"room_events": {"search_term": 5}}}, "M_BAD_JSON"),
        ({"search_categories": {"room_events": {"search_term": "x", "keys": ["content.nope"]}}}, "M_BAD_JSON"),
        ({"search_categories": {"room_events": {"search_term": "x", "order_by": "best"}}}, "M_BAD_JSON"),
        ({"search_categories": {"room_events": {"search_term": "x", "filter": {"rooms": "!a:b"}}}}, "M_BAD_JSON"),
    ]
    for body, errcode in cases:
        r = await http.post(f"{V3}/search", json=body, headers=auth_headers(tok))
        assert r.status_code == 400 and r.json()["errcode"] == errcode, (body, r.text)
    r = await http.post(f"{V3}/search", json={"search_categories": {}}, headers=auth_headers(tok))
    assert r.status_code == 200 and r.json() == {"search_categories": {}}


async def _room_with_visibility(http: httpx.AsyncClient, atok: str, btok: str, visibility: str) -> str:
    """Alice's public room with ``visibility``: three "fig" messages, then Bob joins and
    one more; Bob is invited before the first message (for ``invited``)."""
    bob = (await http.get(f"{V3}/account/whoami", headers=auth_headers(btok))).json()["user_id"]
    room = await create_room(http, atok, preset="public_chat")
    r = await http.put(
        f"{V3}/rooms/{room}/state/m.room.history_visibility", json={"history_visibility": visibility},
        headers=auth_headers(atok),
    )
    assert r.status_code == 200
    r = await http.post(f"{V3}/rooms/{room}/invite", json={"user_id": bob}, headers=auth_headers(atok))
    assert r.status_code == 200
    for i in range(3):
        await send(http, atok, room, msg(f"fig number {i}"))
    r = await http.post(f"{V3}/join/{room}", json={}, headers=auth_headers(btok))
    assert r.status_code == 200
    await send(http, atok, room, msg("fig after bob joined"))
    return room


async def test_search_count_counts_only_what_the_user_may_see(http: httpx.AsyncClient) -> None:
    _, atok, _ = await register(http)
    _, btok, _ = await register(http)
    # joined: Bob sees only the message after his join, and the count says so.
    room = await _room_with_visibility(http, atok, btok, "joined")
    for order in ("rank", "recent"):
        res = await search(http, btok, {"search_term": "fig", "order_by": order})
        assert bodies(res) == ["fig after bob joined"], order
        assert res["count"] == 1, order
    # A page smaller than the results: the count is still all Bob may see.
    res = await search(http, btok, {"search_term": "fig", "filter": {"limit": 0}})
    assert res["results"] == [] and res["count"] == 1
    assert (await search(http, atok, {"search_term": "fig"}))["count"] == 4
    # Once Bob leaves, what he could see stays counted, what follows does not.
    await http.post(f"{V3}/rooms/{room}/leave", json={}, headers=auth_headers(btok))
    await send(http, atok, room, msg("fig after bob left"))
    res = await search(http, btok, {"search_term": "fig"})
    assert bodies(res) == ["fig after bob joined"] and res["count"] == 1

    # invited and shared, for contrast: the invitation (invited) or the join (shared)
    # opens the history before it, and the count follows.
    _, ctok, _ = await register(http)
    await _room_with_visibility(http, atok, ctok, "invited")
    res = await search(http, ctok, {"search_term": "fig"})
    assert len(res["results"]) == 4 and res["count"] == 4
    _, dtok, _ = await register(http)
    await _room_with_visibility(http, atok, dtok, "shared")
    res = await search(http, dtok, {"search_term": "fig", "filter": {"limit": 2}})
    assert len(res["results"]) == 2 and res["count"] == 4
    assert "next_batch" in res


async def test_search_count_follows_filters_and_ignores(http: httpx.AsyncClient) -> None:
    alice, atok, _ = await register(http)
    bob, btok, _ = await register(http)
    _, ctok, _ = await register(http)
    room = await create_room(http, atok, preset="public_chat")
    for tok in (btok, ctok):
        await http.post(f"{V3}/join/{room}", json={}, headers=auth_headers(tok))
    await send(http, atok, room, msg("grape from alice"))
    await send(http, btok, room, msg("grape from bob"))
    await send(http, btok, room, {"msgtype": "m.image", "body": "grape.png", "url": "mxc://test.local/grape"})
    res = await search(http, ctok, {"search_term": "grape", "filter": {"not_senders": [bob]}})
    assert bodies(res) == ["grape from alice"] and res["count"] == 1
    res = await search(http, ctok, {"search_term": "grape", "filter": {"contains_url": True}})
    assert bodies(res) == ["grape.png"] and res["count"] == 1
    res = await search(http, ctok, {"search_term": "grape", "filter": {"contains_url": False}})
    assert res["count"] == 2
    res = await search(http, ctok, {"search_term": "grape", "filter": {"not_types": ["m.room.message"]}})
    assert res["results"] == [] and res["count"] == 0
    r = await http.put(
        f"{V3}/user/{(await http.get(f'{V3}/account/whoami', headers=auth_headers(ctok))).json()['user_id']}"
        "/account_data/m.ignored_user_list",
        json={"ignored_users": {bob: {}}}, headers=auth_headers(ctok),
    )
    assert r.status_code == 200
    res = await search(http, ctok, {"search_term": "grape"})
    assert bodies(res) == ["grape from alice"] and res["count"] == 1
    assert alice
