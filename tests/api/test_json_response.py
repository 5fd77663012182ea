"""Every JSON answer goes through one writer: compact UTF-8, whatever the body holds."""

from __future__ import annotations

import json

from pocketserver.api.common import json_response


async def test_answers_are_compact_utf8_json() -> None:
    resp = json_response({"chunk": [{"body": "héllo ☃ 𝄞", "n": 1, "f": 0.5, "t": True, "z": None}]})
    body = await resp.get_data()
    assert body == '{"chunk":[{"body":"héllo ☃ 𝄞","n":1,"f":0.5,"t":true,"z":null}]}'.encode()
    assert resp.content_type == "application/json"


async def test_bodies_the_fast_writer_refuses_are_still_written() -> None:
    # An integer past 64 bits (an old room's event from another server) and a
    # non-string key: the fast encoder refuses both, the answer is still JSON.
    resp = json_response({"n": 2**70, "m": {1: "one"}})
    assert json.loads(await resp.get_data()) == {"n": 2**70, "m": {"1": "one"}}
