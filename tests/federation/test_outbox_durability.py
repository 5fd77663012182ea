"""Events for other servers survive a SIGKILL: each acknowledged message to a room with a
remote member is in the federation outbox after the real ``pocketserver`` process is
killed right after the last acknowledgement (it is queued in the event's own
transaction). No transport is wired on this branch, so nothing leaves the outbox."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import apsw
import httpx
import orjson

from pocketserver.storage import state as state_store
from pocketserver.storage.streams import next_stream_pos
from tests.interop.conftest import start_pocketserver

V3 = "/_matrix/client/v3"


def _add_remote_member(db_path: Path, room_id: str, user_id: str) -> None:
    """As the PDU intake would after a remote join (the row points at the latest event)."""
    conn = apsw.Connection(str(db_path))
    try:
        with conn:
            (event_id,) = conn.execute(
                "SELECT e.event_id FROM events e JOIN rooms r ON r.room_nid = e.room_nid"
                " WHERE r.room_id = ? ORDER BY e.event_nid DESC LIMIT 1",
                (room_id,),
            ).fetchone()
            state_store.set_membership(
                conn, room_id, user_id, "join", event_id, next_stream_pos(conn), False
            )
    finally:
        conn.close()


def test_queued_pdus_survive_sigkill(tmp_path: Path) -> None:
    with start_pocketserver(tmp_path, server_name="test.local") as sp:
        with httpx.Client(base_url=sp.base_url, timeout=30) as http:
            r = http.post(f"{V3}/register", json={"username": "k", "password": "pw-k-123", "auth": {"type": "m.login.dummy"}})
            assert r.status_code == 200, r.text
            token = r.json()["access_token"]
            headers = {"Authorization": f"Bearer {token}"}
            room = http.post(f"{V3}/createRoom", json={"preset": "public_chat"}, headers=headers).json()["room_id"]
    db_path = sp.data_dir / "homeserver.db"
    _add_remote_member(db_path, room, "@bob:a.remote")

    with start_pocketserver(tmp_path, server_name="test.local") as sp2:
        with httpx.Client(base_url=sp2.base_url, timeout=30) as http:

            def send(n: int) -> str:
                r = http.put(f"{V3}/rooms/{room}/send/m.room.message/t{n}", json={"msgtype": "m.text", "body": f"n{n}"}, headers=headers)
                assert r.status_code == 200, r.text
                return str(r.json()["event_id"])

            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                acked = list(pool.map(send, range(40)))
        sp2.proc.kill()  # SIGKILL right after the last acknowledgement
        sp2.proc.wait(timeout=20)

    conn = apsw.Connection(str(db_path))
    try:
        rows = conn.execute(
            "SELECT payload FROM federation_outbox WHERE destination = 'a.remote' AND kind = 'pdu'"
        ).fetchall()
        bodies = sorted(orjson.loads(r[0])["content"]["body"] for r in rows)
        stored = sum(
            1 for e in acked if conn.execute("SELECT 1 FROM events WHERE event_id = ?", (e,)).fetchone()
        )
    finally:
        conn.close()
    assert stored == len(acked)
    assert bodies == sorted(f"n{n}" for n in range(40))  # each acknowledged message, once
