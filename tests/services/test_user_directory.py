"""services/user_directory.py: whom a search finds, with remote members recorded as
the PDU intake records them."""

from __future__ import annotations

from pathlib import Path

from tests.federation.fakes import FakeRemotes, local_user, remote_join, running_services

BOB = "@bob:a.remote"


async def test_remote_members_of_a_room_this_server_left_are_not_listed(tmp_path: Path) -> None:
    # Once no local user is in a public room, its remote members' memberships are no
    # longer kept current: the directory stops listing them.
    async with running_services(tmp_path, FakeRemotes()) as svc:
        alice = await local_user(svc, "alice")
        carol = await local_user(svc, "carol")
        room_id, _ = await svc.rooms.create_room(alice, {"preset": "public_chat"})
        await remote_join(svc, room_id, BOB)
        found = await svc.user_directory.search(carol, "bob", None)
        assert [r["user_id"] for r in found["results"]] == [BOB]

        await svc.rooms.leave(alice, room_id)
        found = await svc.user_directory.search(carol, "bob", None)
        assert found["results"] == []
