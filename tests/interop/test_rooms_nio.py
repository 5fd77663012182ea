"""matrix-nio chats through the real pocketserver process, as a client user would see it.

Two users register, create rooms, invite, join by alias, exchange plain, formatted and
emote messages, edit, react, reply, redact, paginate history, see typing and receipts,
change their profile, and receive all of it through /sync.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.interop.conftest import ServerProcess

pytestmark = pytest.mark.interop

DEADLINE_S = 20.0


async def _sync_until(client: Any, predicate: Any, since: str | None = None) -> Any:
    """Sync (long-polling) until ``predicate(response)`` holds; bounded by a deadline."""
    import nio

    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        resp = await client.sync(timeout=2000, since=since or client.next_batch)
        assert isinstance(resp, nio.SyncResponse), resp
        if predicate(resp):
            return resp
    raise AssertionError("the expected update did not arrive through /sync")


def _timeline(resp: Any, room_id: str) -> list[Any]:
    room = resp.rooms.join.get(room_id)
    return list(room.timeline.events) if room else []


async def _scenario(base_url: str) -> None:
    import nio

    cfg = nio.AsyncClientConfig(encryption_enabled=False)
    alice = nio.AsyncClient(base_url, "alice", config=cfg)
    bob = nio.AsyncClient(base_url, "bob", config=cfg)
    try:
        assert isinstance(await alice.register("alice", "alice-pw"), nio.RegisterResponse)
        assert isinstance(await bob.register("bob", "bob-pw"), nio.RegisterResponse)
        await alice.sync(timeout=0)
        await bob.sync(timeout=0)

        # A private room with an invite, and a public room joined by alias.
        dm = await alice.room_create(name="Secret plans", invite=[bob.user_id], is_direct=True)
        assert isinstance(dm, nio.RoomCreateResponse), dm
        await _sync_until(bob, lambda r: dm.room_id in r.rooms.invite)
        assert isinstance(await bob.join(dm.room_id), nio.JoinResponse)
        lobby = await alice.room_create(
            alias="lobby", name="Lobby", topic="Say hi", visibility=nio.RoomVisibility.public,
            preset=nio.RoomPreset.public_chat,
        )
        assert isinstance(lobby, nio.RoomCreateResponse), lobby
        joined = await bob.join("#lobby:localhost")
        assert isinstance(joined, nio.JoinResponse) and joined.room_id == lobby.room_id
        await _sync_until(bob, lambda r: lobby.room_id in r.rooms.join)
        room = bob.rooms[lobby.room_id]
        assert room.display_name == "Lobby" and room.topic == "Say hi"

        # Plain, formatted (HTML) and emote messages, a reply.
        rid = lobby.room_id
        plain = await alice.room_send(rid, "m.room.message", {"msgtype": "m.text", "body": "hello"})
        html = await alice.room_send(
            rid, "m.room.message",
            {"msgtype": "m.text", "body": "**bold**", "format": "org.matrix.custom.html",
             "formatted_body": "<strong>bold</strong>"},
        )
        emote = await alice.room_send(rid, "m.room.message", {"msgtype": "m.emote", "body": "waves"})
        assert all(isinstance(x, nio.RoomSendResponse) for x in (plain, html, emote))
        reply = await bob.room_send(
            rid, "m.room.message",
            {"msgtype": "m.text", "body": "> hello\n\nhi!",
             "m.relates_to": {"m.in_reply_to": {"event_id": plain.event_id}}},
        )
        assert isinstance(reply, nio.RoomSendResponse)
        seen: list[Any] = []

        def got_all(r: Any) -> bool:
            seen.extend(_timeline(r, rid))
            return any(getattr(e, "event_id", None) == reply.event_id for e in seen)

        await _sync_until(bob, got_all)
        by_id = {e.event_id: e for e in seen}
        assert isinstance(by_id[plain.event_id], nio.RoomMessageText) and by_id[plain.event_id].body == "hello"
        assert by_id[html.event_id].formatted_body == "<strong>bold</strong>"
        assert isinstance(by_id[emote.event_id], nio.RoomMessageEmote)
        assert by_id[reply.event_id].source["content"]["m.relates_to"]["m.in_reply_to"]["event_id"] == plain.event_id

        # Edit, react, redact: all arrive, and the server shows the edit on the original.
        edit = await alice.room_send(
            rid, "m.room.message",
            {"msgtype": "m.text", "body": "* hello everyone",
             "m.new_content": {"msgtype": "m.text", "body": "hello everyone"},
             "m.relates_to": {"rel_type": "m.replace", "event_id": plain.event_id}},
        )
        react = await bob.room_send(
            rid, "m.reaction",
            {"m.relates_to": {"rel_type": "m.annotation", "event_id": plain.event_id, "key": "👍"}},
        )
        redact = await alice.room_redact(rid, emote.event_id, reason="never mind")
        assert isinstance(redact, nio.RoomRedactResponse), redact
        seen.clear()

        def got_changes(r: Any) -> bool:
            seen.extend(_timeline(r, rid))
            return any(getattr(e, "event_id", None) == redact.event_id for e in seen)

        await _sync_until(bob, got_changes)
        kinds = {type(e).__name__ for e in seen}
        assert {"RoomMessageText", "ReactionEvent", "RedactionEvent"} <= kinds
        reaction = next(e for e in seen if isinstance(e, nio.ReactionEvent))
        assert reaction.key == "👍" and reaction.reacts_to == plain.event_id
        assert reaction.event_id == react.event_id
        assert edit.event_id in {e.event_id for e in seen}

        # History: paginate back from the latest and see the redacted emote empty.
        msgs = await bob.room_messages(rid, start=bob.next_batch, limit=50)
        assert isinstance(msgs, nio.RoomMessagesResponse), msgs
        ids = [e.event_id for e in msgs.chunk]
        assert ids.index(reply.event_id) < ids.index(plain.event_id)  # newest first
        redacted = next(e for e in msgs.chunk if e.event_id == emote.event_id)
        assert isinstance(redacted, nio.RedactedEvent)
        original = next(e for e in msgs.chunk if e.event_id == plain.event_id)
        assert original.source["unsigned"]["m.relations"]["m.replace"]["event_id"] == edit.event_id

        # Typing and read receipts.
        assert isinstance(await alice.room_typing(rid, True, timeout=10000), nio.RoomTypingResponse)
        await _sync_until(bob, lambda r: alice.user_id in bob.rooms[rid].typing_users)
        r = await alice.room_read_markers(rid, fully_read_event=reply.event_id, read_event=reply.event_id)
        assert isinstance(r, nio.RoomReadMarkersResponse), r

        def receipt_seen(r: Any) -> bool:
            room = r.rooms.join.get(rid)
            if not room:
                return False
            for ev in room.ephemeral:
                if isinstance(ev, nio.ReceiptEvent):
                    for rec in ev.receipts:
                        if rec.user_id == alice.user_id and rec.event_id == reply.event_id:
                            return True
            return False

        await _sync_until(bob, receipt_seen)

        # Leaving: bob leaves the DM; alice sees it.
        assert isinstance(await bob.room_leave(dm.room_id), nio.RoomLeaveResponse)
        await _sync_until(alice, lambda r: bob.user_id not in alice.rooms[dm.room_id].users)

        # A profile change reaches the other member through the room.
        assert isinstance(await bob.set_displayname("Bobby"), nio.ProfileSetDisplayNameResponse)
        await _sync_until(alice, lambda r: alice.rooms[rid].user_name(bob.user_id) == "Bobby")
    finally:
        await alice.close()
        await bob.close()


def test_nio_two_users_chat(pocketserver_process: ServerProcess) -> None:
    asyncio.run(_scenario(pocketserver_process.base_url))
