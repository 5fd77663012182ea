"""The user directory over HTTP: who can find whom as rooms open and close."""

from __future__ import annotations

import httpx

from tests.api.helpers import V3, auth_headers, create_room, register


async def found(http: httpx.AsyncClient, token: str, term: str) -> set[str]:
    r = await http.post(f"{V3}/user_directory/search", json={"search_term": term},
                        headers=auth_headers(token))
    assert r.status_code == 200, r.text
    return {u["user_id"] for u in r.json()["results"]}


async def test_directory_follows_join_rules_and_history_visibility(http: httpx.AsyncClient) -> None:
    _alice, atok, _ = await register(http, "diralice")
    bob, btok, _ = await register(http, "dirbob")
    _carol, ctok, _ = await register(http, "dircarol")
    await http.put(f"{V3}/profile/{bob}/displayname", json={"displayname": "Zebulon"},
                   headers=auth_headers(btok))
    room = await create_room(http, atok, preset="private_chat", invite=[bob])
    r = await http.post(f"{V3}/join/{room}", json={}, headers=auth_headers(btok))
    assert r.status_code == 200
    # A private room: its members find each other; nobody else, and not oneself.
    assert bob in await found(http, atok, "Zebulon")
    assert bob not in await found(http, ctok, "Zebulon")
    assert bob not in await found(http, btok, "Zebulon")
    for etype, opened, closed in (
        ("m.room.join_rules", {"join_rule": "public"}, {"join_rule": "invite"}),
        ("m.room.history_visibility", {"history_visibility": "world_readable"},
         {"history_visibility": "shared"}),
    ):
        r = await http.put(f"{V3}/rooms/{room}/state/{etype}", json=opened, headers=auth_headers(atok))
        assert r.status_code == 200
        assert bob in await found(http, ctok, "Zebulon")
        assert bob in await found(http, btok, "Zebulon")
        await http.put(f"{V3}/rooms/{room}/state/{etype}", json=closed, headers=auth_headers(atok))
        assert bob not in await found(http, ctok, "Zebulon")
        assert bob not in await found(http, btok, "Zebulon")
