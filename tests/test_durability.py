"""Nothing the server acknowledged is lost when its process is killed (SIGKILL).

Eight clients write at once (messages, state, account data, profile, to-device, an
upload); the moment the last acknowledgement arrives the real ``pocketserver`` process
is killed with no chance to flush anything. After a restart on the same data folder,
every acknowledged write is there.
"""

from __future__ import annotations

import concurrent.futures
import os
from pathlib import Path
from typing import Any

import httpx

from tests.interop.conftest import start_pocketserver

V3 = "/_matrix/client/v3"


def _h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_acknowledged_writes_survive_sigkill(tmp_path: Path) -> None:
    blob = os.urandom(300_000)
    with start_pocketserver(tmp_path, server_name="test.local") as sp:
        with httpx.Client(base_url=sp.base_url, timeout=30) as http:
            users = []
            for i in range(4):
                r = http.post(f"{V3}/register", json={"username": f"d{i}", "password": f"pw-d{i}-x", "auth": {"type": "m.login.dummy"}})
                assert r.status_code == 200, r.text
                users.append(r.json())
            owner = users[0]["access_token"]
            room = http.post(f"{V3}/createRoom", json={"preset": "public_chat", "power_level_content_override": {"state_default": 0}}, headers=_h(owner)).json()["room_id"]
            for u in users[1:]:
                assert http.post(f"{V3}/join/{room}", json={}, headers=_h(u["access_token"])).status_code == 200

            def work(n: int) -> tuple[str, Any]:
                u = users[n % len(users)]
                tok = u["access_token"]
                kind = n % 6
                if kind == 0:
                    r = http.post("/_matrix/media/v3/upload", content=blob, headers={**_h(tok), "Content-Type": "application/octet-stream"})
                    assert r.status_code == 200, r.text
                    return "media", r.json()["content_uri"]
                if kind == 1:
                    r = http.put(f"{V3}/user/{u['user_id']}/account_data/org.example.n{n}", json={"n": n}, headers=_h(tok))
                    assert r.status_code == 200, r.text
                    return "account_data", (tok, u["user_id"], n)
                if kind == 2:
                    r = http.put(f"{V3}/rooms/{room}/state/org.example.s/{u['user_id']}", json={"n": n}, headers=_h(tok))
                    assert r.status_code == 200, r.text
                    return "event", r.json()["event_id"]
                if kind == 3:
                    other = users[(n + 1) % len(users)]
                    msgs = {other["user_id"]: {other["device_id"]: {"n": n}}}
                    r = http.put(f"{V3}/sendToDevice/org.example.td/t{n}", json={"messages": msgs}, headers=_h(tok))
                    assert r.status_code == 200, r.text
                    return "to_device", (other["access_token"], n)
                r = http.put(f"{V3}/rooms/{room}/send/m.room.message/k{n}", json={"msgtype": "m.text", "body": f"n{n}"}, headers=_h(tok))
                assert r.status_code == 200, r.text
                return "event", r.json()["event_id"]

            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                acked = list(pool.map(work, range(120)))
        sp.proc.kill()  # SIGKILL right after the last acknowledgement
        sp.proc.wait(timeout=20)

    with start_pocketserver(tmp_path, server_name="test.local") as sp2, httpx.Client(base_url=sp2.base_url, timeout=30) as http:
        owner = users[0]["access_token"]
        for kind, what in acked:
            if kind == "event":
                r = http.get(f"{V3}/rooms/{room}/event/{what}", headers=_h(owner))
                assert r.status_code == 200, (what, r.text)
            elif kind == "media":
                server, media_id = what[len("mxc://"):].split("/")
                r = http.get(f"/_matrix/client/v1/media/download/{server}/{media_id}", headers=_h(owner))
                assert r.status_code == 200 and r.content == blob, what
            elif kind == "account_data":
                tok, user_id, n = what
                r = http.get(f"{V3}/user/{user_id}/account_data/org.example.n{n}", headers=_h(tok))
                assert r.status_code == 200 and r.json() == {"n": n}, r.text
        # Every to-device message is still waiting for its device.
        expected: dict[str, set[int]] = {}
        for kind, what in acked:
            if kind == "to_device":
                expected.setdefault(what[0], set()).add(what[1])
        for tok, numbers in expected.items():
            got: set[int] = set()
            since = None
            for _ in range(10):
                params = {"timeout": "0", **({"since": since} if since else {})}
                body = http.get(f"{V3}/sync", params=params, headers=_h(tok)).json()
                since = body["next_batch"]
                got |= {e["content"]["n"] for e in body["to_device"]["events"] if e["type"] == "org.example.td"}
                if numbers <= got:
                    break
            assert numbers <= got, (numbers - got)
