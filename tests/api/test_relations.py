"""Relations over HTTP: /relations pagination and filters, edits and threads in
bundled aggregations, the thread list, duplicate annotations, ignored users."""

from __future__ import annotations

from typing import Any

import httpx

from tests.api.helpers import auth_headers, register
from tests.api.test_rooms import V3, create_room, send

V1 = "/_matrix/client/v1"


def text(body: str, **extra: Any) -> dict[str, Any]:
    return {"msgtype": "m.text", "body": body, **extra}


def thread_reply(root: str, body: str) -> dict[str, Any]:
    return text(body, **{"m.relates_to": {"rel_type": "m.thread", "event_id": root}})


def edit(target: str, body: str) -> dict[str, Any]:
    return text(
        "* " + body,
        **{"m.new_content": text(body), "m.relates_to": {"rel_type": "m.replace", "event_id": target}},
    )


async def get(http: httpx.AsyncClient, token: str, path: str, **params: Any) -> dict[str, Any]:
    r = await http.get(path, params=params, headers=auth_headers(token))
    assert r.status_code == 200, r.text
    return dict(r.json())


async def test_relations_paginate_backwards_and_forwards(http: httpx.AsyncClient) -> None:
    _, tok, _ = await register(http)
    room = await create_room(http, tok)
    root = await send(http, tok, room, text("root"))
    replies = [await send(http, tok, room, thread_reply(root, f"r{i}")) for i in range(7)]
    await send(http, tok, room, text("unrelated"))
    seen: list[str] = []
    params: dict[str, Any] = {"limit": 3}
    for _ in range(5):
        page = await get(http, tok, f"{V1}/rooms/{room}/relations/{root}", **params)
        seen += [e["event_id"] for e in page["chunk"]]
        if "next_batch" not in page:
            break
        params["from"] = page["next_batch"]
    assert seen == list(reversed(replies))
    fwd = await get(http, tok, f"{V1}/rooms/{room}/relations/{root}/m.thread/m.room.message", dir="f", limit=50)
    assert [e["event_id"] for e in fwd["chunk"]] == replies
    assert "next_batch" not in fwd
    none = await get(http, tok, f"{V1}/rooms/{room}/relations/{root}/m.annotation")
    assert none["chunk"] == []


async def test_relations_recurse_and_unknown_event(http: httpx.AsyncClient) -> None:
    _, tok, _ = await register(http)
    room = await create_room(http, tok)
    root = await send(http, tok, room, text("root"))
    reply = await send(http, tok, room, thread_reply(root, "in thread"))
    reaction = await send(
        http, tok, room, {"m.relates_to": {"rel_type": "m.annotation", "event_id": reply, "key": "👍"}},
        etype="m.reaction",
    )
    direct = await get(http, tok, f"{V1}/rooms/{room}/relations/{root}")
    assert [e["event_id"] for e in direct["chunk"]] == [reply]
    assert "recursion_depth" not in direct
    deep = await get(http, tok, f"{V1}/rooms/{room}/relations/{root}", recurse="true")
    assert [e["event_id"] for e in deep["chunk"]] == [reaction, reply]
    assert deep["recursion_depth"] >= 3
    r = await http.get(f"{V1}/rooms/{room}/relations/$nope", headers=auth_headers(tok))
    assert r.status_code == 404 and r.json()["errcode"] == "M_NOT_FOUND"
    r = await http.get(f"{V1}/rooms/{room}/relations/{root}", params={"dir": "x"}, headers=auth_headers(tok))
    assert r.status_code == 400


async def test_relations_respect_history_visibility(http: httpx.AsyncClient) -> None:
    _, atok, _ = await register(http)
    _, btok, _ = await register(http)
    room = await create_room(http, atok, preset="public_chat")
    await http.put(
        f"{V3}/rooms/{room}/state/m.room.history_visibility", json={"history_visibility": "joined"},
        headers=auth_headers(atok),
    )
    root = await send(http, atok, room, text("before bob"))
    await send(http, atok, room, thread_reply(root, "also before bob"))
    r = await http.post(f"{V3}/join/{room}", json={}, headers=auth_headers(btok))
    assert r.status_code == 200
    r = await http.get(f"{V1}/rooms/{room}/relations/{root}", headers=auth_headers(btok))
    assert r.status_code == 404
    later = await send(http, atok, room, text("after bob"))
    reply = await send(http, atok, room, thread_reply(later, "visible"))
    page = await get(http, btok, f"{V1}/rooms/{room}/relations/{later}")
    assert [e["event_id"] for e in page["chunk"]] == [reply]


async def test_edits_are_bundled_with_the_latest_valid_one(http: httpx.AsyncClient) -> None:
    _, atok, _ = await register(http)
    _, btok, _ = await register(http)
    room = await create_room(http, atok, preset="public_chat")
    await http.post(f"{V3}/join/{room}", json={}, headers=auth_headers(btok))
    original = await send(http, atok, room, text("I like cake"))
    await send(http, atok, room, edit(original, "I like pie"))
    latest = await send(http, atok, room, edit(original, "I like chocolate cake"))
    # Invalid edits: another sender, another type, no m.new_content, an edit of an edit.
    await send(http, btok, room, edit(original, "bob says"))
    await send(
        http, atok, room,
        {"body": "x", "m.new_content": {"body": "y"}, "m.relates_to": {"rel_type": "m.replace", "event_id": original}},
        etype="m.sticker",
    )
    await send(http, atok, room, text("* no new content", **{"m.relates_to": {"rel_type": "m.replace", "event_id": original}}))
    await send(http, atok, room, edit(latest, "edit of an edit"))
    ev = await get(http, btok, f"{V3}/rooms/{room}/event/{original}")
    # The original content is left intact; the newest valid edit is bundled.
    assert ev["content"]["body"] == "I like cake"
    bundled = ev["unsigned"]["m.relations"]["m.replace"]
    assert bundled["event_id"] == latest
    assert bundled["content"]["m.new_content"]["body"] == "I like chocolate cake"
    edit_ev = await get(http, btok, f"{V3}/rooms/{room}/event/{latest}")
    assert "m.relations" not in edit_ev["unsigned"]


async def test_threads_list_and_bundled_summary(http: httpx.AsyncClient) -> None:
    alice, atok, _ = await register(http)
    _, btok, _ = await register(http)
    room = await create_room(http, atok, preset="public_chat")
    await http.post(f"{V3}/join/{room}", json={}, headers=auth_headers(btok))
    first = await send(http, atok, room, text("thread one"))
    second = await send(http, btok, room, text("thread two"))
    await send(http, btok, room, thread_reply(first, "1a"))
    await send(http, btok, room, thread_reply(second, "2a"))
    last = await send(http, atok, room, thread_reply(first, "1b"))
    threads = await get(http, btok, f"{V1}/rooms/{room}/threads")
    assert [e["event_id"] for e in threads["chunk"]] == [first, second]
    summary = threads["chunk"][0]["unsigned"]["m.relations"]["m.thread"]
    assert summary["count"] == 2
    assert summary["latest_event"]["event_id"] == last
    assert summary["current_user_participated"] is True
    page1 = await get(http, btok, f"{V1}/rooms/{room}/threads", limit=1)
    assert [e["event_id"] for e in page1["chunk"]] == [first]
    page2 = await get(http, btok, f"{V1}/rooms/{room}/threads", limit=1, **{"from": page1["next_batch"]})
    assert [e["event_id"] for e in page2["chunk"]] == [second]
    assert "next_batch" not in page2
    # Alice sent the first root and a reply there; she never took part in the second.
    mine = await get(http, atok, f"{V1}/rooms/{room}/threads", include="participated")
    assert [e["event_id"] for e in mine["chunk"]] == [first]
    assert alice
    r = await http.get(f"{V1}/rooms/{room}/threads", params={"include": "mine"}, headers=auth_headers(atok))
    assert r.status_code == 400


async def test_duplicate_annotation_and_thread_on_relation_refused(http: httpx.AsyncClient) -> None:
    _, tok, _ = await register(http)
    room = await create_room(http, tok)
    target = await send(http, tok, room, text("react to me"))
    reaction = {"m.relates_to": {"rel_type": "m.annotation", "event_id": target, "key": "👍"}}
    first = await send(http, tok, room, reaction, etype="m.reaction")
    r = await http.put(f"{V3}/rooms/{room}/send/m.reaction/dup1", json=reaction, headers=auth_headers(tok))
    assert r.status_code == 400 and r.json()["errcode"] == "M_DUPLICATE_ANNOTATION"
    # Once the first is redacted, the same reaction may be sent again.
    r = await http.put(f"{V3}/rooms/{room}/redact/{first}/red1", json={}, headers=auth_headers(tok))
    assert r.status_code == 200
    await send(http, tok, room, reaction, etype="m.reaction")
    # Retrying a transaction returns its event rather than a refusal.
    again = {"m.relates_to": {"rel_type": "m.annotation", "event_id": target, "key": "🎉"}}
    r1 = await http.put(f"{V3}/rooms/{room}/send/m.reaction/same", json=again, headers=auth_headers(tok))
    r2 = await http.put(f"{V3}/rooms/{room}/send/m.reaction/same", json=again, headers=auth_headers(tok))
    assert r1.status_code == r2.status_code == 200 and r1.json() == r2.json()
    reply = await send(http, tok, room, thread_reply(target, "threaded"))
    r = await http.put(
        f"{V3}/rooms/{room}/send/m.room.message/th1", json=thread_reply(reply, "nested"), headers=auth_headers(tok)
    )
    assert r.status_code == 400 and r.json()["errcode"] == "M_UNKNOWN"
