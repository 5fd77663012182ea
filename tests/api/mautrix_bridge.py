"""A tiny bridge built on mautrix-python's appservice module, run as a child process by
tests/api/test_appservice_mautrix.py (mautrix runs on asyncio, the tests on trio).

Usage: mautrix_bridge.py HS_URL DOMAIN PORT ROOM_ID. It pings the homeserver, registers a
ghost, joins ROOM_ID, says "hello from mautrix", then prints one JSON line per
``m.room.message`` it receives in a transaction, and stops at "bye".
"""

from __future__ import annotations

import asyncio
import json
import sys

from mautrix.appservice import AppService
from mautrix.types import Event, EventType


async def main(hs_url: str, domain: str, port: int, room_id: str) -> None:
    az = AppService(
        server=hs_url, domain=domain, as_token="as-token-fake", hs_token="hs-token-fake",
        bot_localpart="_fake_bot", id="fakebridge",
    )
    done = asyncio.Event()

    @az.matrix_event_handler
    async def on_event(evt: Event) -> None:
        if evt.type == EventType.ROOM_MESSAGE:
            body = evt.content.serialize().get("body")
            print(json.dumps({"sender": evt.sender, "body": body, "room_id": evt.room_id}), flush=True)
            if body == "bye":
                done.set()

    await az.start(host="127.0.0.1", port=port)
    try:
        print(json.dumps({"ping_ms": await az.ping_self("mautrix-ping")}), flush=True)
        await az.intent.ensure_registered()
        ghost = az.intent.user(f"@_fake_mx:{domain}")
        await ghost.ensure_registered()
        await ghost.ensure_joined(room_id)
        await ghost.send_text(room_id, "hello from mautrix")
        print(json.dumps({"ready": True}), flush=True)
        await asyncio.wait_for(done.wait(), 60)
    finally:
        await az.stop()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]))
