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


async def test_versions_up_to_v1_19(http: httpx.AsyncClient) -> None:
    """Clients (Element) turn features on by these: every version up to v1.19 is served."""
    r = await http.get("/_matrix/client/versions")
    versions = r.json()["versions"]
    assert [f"v1.{i}" for i in range(1, 20)] == [v for v in versions if v.startswith("v1.")]
    assert "v1.20" not in versions


async def test_auth_metadata_without_the_oauth_api(http: httpx.AsyncClient) -> None:
    """No OAuth 2.0 API here: /auth_metadata answers 404 M_UNRECOGNIZED, which tells a
    v1.15 client to use the legacy login API."""
    r = await http.get("/_matrix/client/v1/auth_metadata")
    assert r.status_code == 404
    assert r.json()["errcode"] == "M_UNRECOGNIZED"
