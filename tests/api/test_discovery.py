"""The first endpoints and the JSON error contract, over real HTTP."""

from __future__ import annotations

import httpx


async def test_versions_lists_current_spec(http: httpx.AsyncClient) -> None:
    r = await http.get("/_matrix/client/versions")
    assert r.status_code == 200
    body = r.json()
    assert "v1.1" in body["versions"]
    assert r.headers["access-control-allow-origin"] == "*"


async def test_unknown_endpoint_is_unrecognized(http: httpx.AsyncClient) -> None:
    r = await http.get("/_matrix/client/v3/no_such_thing")
    assert r.status_code == 404
    assert r.json()["errcode"] == "M_UNRECOGNIZED"


async def test_wrong_method_is_405_unrecognized(http: httpx.AsyncClient) -> None:
    r = await http.post("/_matrix/client/versions", content=b"{}")
    assert r.status_code == 405
    assert r.json()["errcode"] == "M_UNRECOGNIZED"


async def test_cors_preflight(http: httpx.AsyncClient) -> None:
    r = await http.options(
        "/_matrix/client/versions",
        headers={"Origin": "https://app.element.io", "Access-Control-Request-Method": "GET"},
    )
    assert r.status_code in (200, 204)
    assert "GET" in r.headers["access-control-allow-methods"]
    assert "Authorization" in r.headers["access-control-allow-headers"]


async def test_well_known_client_points_at_base_url(http: httpx.AsyncClient) -> None:
    r = await http.get("/.well-known/matrix/client")
    assert r.status_code == 200
    assert r.json()["m.homeserver"]["base_url"].startswith("http://127.0.0.1:")


async def test_well_known_server_absent_without_delegation(http: httpx.AsyncClient) -> None:
    r = await http.get("/.well-known/matrix/server")
    assert r.status_code == 404
    assert r.json()["errcode"] == "M_NOT_FOUND"


async def test_cors_preflight_on_every_path(http: httpx.AsyncClient) -> None:
    """A browser client (Element) preflights every cross-origin call, also to endpoints
    the server may not have: the preflight must pass so that the client sees the real
    answer (here M_UNRECOGNIZED) instead of a network error."""
    for path in (
        "/_matrix/client/v3/no_such_thing/at/all",
        "/_matrix/client/unstable/org.example/whatever",
        "/_matrix/client/v3/rooms/!r:localhost/send/m.room.message/t1",
        "/anything",
    ):
        r = await http.options(
            path,
            headers={
                "Origin": "http://127.0.0.1:9999",
                "Access-Control-Request-Method": "PUT",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert r.status_code == 200, (path, r.status_code)
        assert r.headers["access-control-allow-origin"] == "*"
        assert "PUT" in r.headers["access-control-allow-methods"]
        assert "Authorization" in r.headers["access-control-allow-headers"]
    r = await http.get("/_matrix/client/v3/no_such_thing/at/all")
    assert r.status_code == 404 and r.json()["errcode"] == "M_UNRECOGNIZED"
    assert r.headers["access-control-allow-origin"] == "*"
