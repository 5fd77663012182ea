"""matrix-nio against the real pocketserver process: accounts, devices, profile, account data."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.interop.conftest import ServerProcess

pytestmark = pytest.mark.interop


async def _scenario(base_url: str) -> None:
    import nio

    cfg = nio.AsyncClientConfig(encryption_enabled=False)
    alice = nio.AsyncClient(base_url, "alice", config=cfg)
    bob = nio.AsyncClient(base_url, "bob", config=cfg)
    second = nio.AsyncClient(base_url, "@alice:localhost", config=cfg)
    try:
        r = await alice.register("alice", "alice-password", device_name="nio one")
        assert isinstance(r, nio.RegisterResponse), r
        assert alice.user_id == "@alice:localhost"
        r = await bob.register("bob", "bob-password")
        assert isinstance(r, nio.RegisterResponse), r
        r2 = await bob.register("bob", "again")
        assert isinstance(r2, nio.responses.RegisterErrorResponse) and r2.status_code == "M_USER_IN_USE"

        # A second device for alice.
        r = await second.login("alice-password", device_name="nio two")
        assert isinstance(r, nio.LoginResponse), r
        assert second.device_id != alice.device_id
        who = await second.whoami()
        assert isinstance(who, nio.WhoamiResponse), who
        assert who.user_id == "@alice:localhost" and who.device_id == second.device_id

        devices = await alice.devices()
        assert isinstance(devices, nio.DevicesResponse), devices
        names = {d.id: d.display_name for d in devices.devices}
        assert names == {alice.device_id: "nio one", second.device_id: "nio two"}

        # Profile, seen by another user.
        assert isinstance(await alice.set_displayname("Alice A."), nio.ProfileSetDisplayNameResponse)
        r = await alice.set_avatar("mxc://localhost/avatar")
        assert isinstance(r, nio.ProfileSetAvatarResponse), r
        prof = await bob.get_profile("@alice:localhost")
        assert isinstance(prof, nio.ProfileGetResponse), prof
        assert prof.displayname == "Alice A." and prof.avatar_url == "mxc://localhost/avatar"

        # Global account data written by one device, read by the other.
        path = "/_matrix/client/v3/user/%40alice%3Alocalhost/account_data/org.example.settings"
        resp = await alice.send(
            "PUT", path, json.dumps({"theme": "dark"}),
            headers={"Authorization": f"Bearer {alice.access_token}",
                     "Content-Type": "application/json"},
        )
        assert resp.status == 200
        resp = await second.send(
            "GET", path, headers={"Authorization": f"Bearer {second.access_token}"}
        )
        assert resp.status == 200 and await resp.json() == {"theme": "dark"}

        r = await alice.upload_filter(room={"timeline": {"limit": 5}})
        assert isinstance(r, nio.UploadFilterResponse), r

        # Logging out the second device ends its session only.
        r = await second.logout()
        assert isinstance(r, nio.LogoutResponse), r
        who = await second.whoami()
        assert isinstance(who, nio.WhoamiError)
        who = await alice.whoami()
        assert isinstance(who, nio.WhoamiResponse)
    finally:
        for c in (alice, bob, second):
            await c.close()


def test_nio_accounts(pocketserver_process: ServerProcess) -> None:
    asyncio.run(_scenario(pocketserver_process.base_url))
