"""A synthetic federation peer hosting one big signed room, for benchmarks/bench_fed_join.py.

Run as its own process (``python3 benchmarks/fed_peer.py --port P ...``): it builds a
room of ``--members`` members and ``--state-events`` state events in all (each signed
with its key, tests/federation/remote.py's room building), then serves real federation
over HTTPS on ``127.0.0.1:P`` as server ``localhost:P``:

- ``GET /_matrix/key/v2/server``: its signed key;
- ``GET /_matrix/federation/v1/make_join/{roomId}/{userId}``: a join template;
- ``PUT /_matrix/federation/v2/send_join/{roomId}/{eventId}``: the room's full state
  and auth chain (serialised once at start-up, sent in pieces with a Content-Length),
  with the join added to its room;
- ``PUT /_matrix/federation/v1/send/{txnId}``: accepted (``{"pdus": {}}``);
- anything else: 404 ``M_UNRECOGNIZED``.

Every request must carry a valid ``X-Matrix`` signature of its origin, whose key it
fetches from the origin's ``/_matrix/key/v2/server`` (TLS not verified: loopback and
self-signed); otherwise 401. It writes ``ready <room_id> <bytes of the answer>`` to
stdout once it listens. Stopped by SIGTERM/SIGINT from the benchmark.
"""

from __future__ import annotations

import argparse
import ssl
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

import h11
import httpx
import orjson
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pocketserver.protocol.request_auth import AuthHeaderError, parse_header, signing_object  # noqa: E402
from pocketserver.protocol.signing import (  # noqa: E402
    SignatureError,
    decode_verify_key_base64,
    encode_verify_key_base64,
    sign_json,
    verify_json,
)
from pocketserver.services.tls import write_self_signed_certificate  # noqa: E402
from tests.federation.remote import RemoteRoom, room_version  # noqa: E402

PIECE = 256 * 1024
MAX_REQUEST_BODY = 1024 * 1024


def build_room(server: str, members: int, extra_state: int, version: str) -> RemoteRoom:
    """The room: create, the creator, power levels, join rules, then ``members - 1``
    joins (a chain, each on the previous one) and ``extra_state`` other state events of
    the creator with distinct state keys. Each event keeps only a small auth state."""
    creator = f"@creator:{server}"
    room = RemoteRoom.create(server, creator, room_version(version))
    base = {
        k: room.state[k]
        for k in (("m.room.create", ""), ("m.room.power_levels", ""), ("m.room.join_rules", ""),
                  ("m.room.member", creator))
    }
    for i in range(members - 1):
        user = f"@u{i}:{server}"
        pdu = room.build(user, "m.room.member", {"membership": "join", "displayname": f"User {i}"},
                         state_key=user, auth_state=base, advance=False)
        eid = room.event_id(pdu)
        room.state[("m.room.member", user)] = eid
        room.extremities = [eid]
        room.state_before.pop(eid, None)
    for i in range(extra_state):
        key = f"setting-{i}"
        pdu = room.build(creator, "org.example.bench.setting", {"value": i, "label": f"Setting number {i}"},
                         state_key=key, auth_state=base, advance=False)
        eid = room.event_id(pdu)
        room.state[("org.example.bench.setting", key)] = eid
        room.extremities = [eid]
        room.state_before.pop(eid, None)
    return room


class Peer:
    def __init__(self, name: str, room: RemoteRoom) -> None:
        self.name = name
        self.room = room
        self.origin_keys: dict[tuple[str, str], Any] = {}
        state_ids = list(room.state.values())
        chain_ids = room.auth_chain(state_ids)
        # The answer without its "event": the state and auth chain, serialised once.
        self.state_json = b"[" + b",".join(orjson.dumps(room.events[e].pdu) for e in state_ids) + b"]"
        self.chain_json = b"[" + b",".join(orjson.dumps(room.events[e].pdu) for e in chain_ids) + b"]"
        self.state_count, self.chain_count = len(state_ids), len(chain_ids)
        self.requests: list[str] = []

    def key_response(self) -> dict[str, Any]:
        key = self.room.key
        body = {
            "server_name": self.name,
            "valid_until_ts": int(time.time() * 1000) + 86_400_000,
            "verify_keys": {key.key_id: {"key": encode_verify_key_base64(key.verify_key)}},
            "old_verify_keys": {},
        }
        return sign_json(body, self.name, key)

    async def origin_key(self, origin: str, key_id: str) -> Any:
        if (origin, key_id) not in self.origin_keys:
            host, _, port = origin.rpartition(":")
            url = f"https://127.0.0.1:{port}/_matrix/key/v2/server"

            def fetch() -> Any:
                return httpx.get(url, verify=False, timeout=30).json()

            answer = await trio.to_thread.run_sync(fetch)
            for kid, v in answer.get("verify_keys", {}).items():
                self.origin_keys[(origin, kid)] = decode_verify_key_base64(v["key"])
        return self.origin_keys.get((origin, key_id))

    async def authorised(self, method: str, target: str, headers: dict[bytes, bytes], body: Any) -> bool:
        value = headers.get(b"authorization", b"").decode("latin-1")
        try:
            auth = parse_header(value)
        except AuthHeaderError:
            return False
        if auth.destination not in (None, self.name):
            return False
        vk = await self.origin_key(auth.origin, auth.key)
        if vk is None:
            return False
        obj = signing_object(method, target, auth.origin, self.name, body)
        obj["signatures"] = {auth.origin: {auth.key: auth.sig}}
        try:
            verify_json(obj, auth.origin, auth.key, vk)
        except SignatureError:
            return False
        return True

    async def answer(self, method: str, target: str, headers: dict[bytes, bytes], raw: bytes) -> tuple[int, list[bytes]]:
        """(status, body pieces)."""
        path, _, _query = target.partition("?")
        parts = [urllib.parse.unquote(p) for p in path.split("/")]
        self.requests.append(f"{method} {path}")
        if path.startswith("/_matrix/key/v2/server"):
            return 200, [orjson.dumps(self.key_response())]
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            return 400, [b'{"errcode":"M_NOT_JSON","error":"not JSON"}']
        if not await self.authorised(method, target, headers, body):
            return 401, [b'{"errcode":"M_UNAUTHORIZED","error":"bad signature"}']
        room = self.room
        if method == "GET" and len(parts) >= 7 and parts[4] == "make_join" and parts[5] == room.room_id:
            return 200, [orjson.dumps({"event": room.template(parts[6], "join"), "room_version": room.rv.identifier})]
        if method == "PUT" and len(parts) >= 7 and parts[4] == "send_join" and parts[5] == room.room_id:
            head = orjson.dumps({"origin": self.name, "members_omitted": False, "servers_in_room": [self.name],
                                 "event": body})
            pieces = [head[:-1] + b',"state":']
            pieces += [self.state_json[i : i + PIECE] for i in range(0, len(self.state_json), PIECE)]
            pieces.append(b',"auth_chain":')
            pieces += [self.chain_json[i : i + PIECE] for i in range(0, len(self.chain_json), PIECE)]
            pieces.append(b"}")
            return 200, pieces
        if method == "PUT" and len(parts) >= 6 and parts[4] == "send":
            return 200, [b'{"pdus":{}}']
        return 404, [b'{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}']

    async def handle(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        conn = h11.Connection(h11.SERVER)
        request: h11.Request | None = None
        body = bytearray()
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    conn.receive_data(data)
                    if not data:
                        return
                    continue
                if isinstance(event, h11.Request):
                    request, body = event, bytearray()
                elif isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > MAX_REQUEST_BODY:
                        return
                elif isinstance(event, h11.EndOfMessage) and request is not None:
                    status, pieces = await self.answer(
                        request.method.decode(), request.target.decode(), dict(request.headers), bytes(body)
                    )
                    size = sum(len(p) for p in pieces)
                    await stream.send_all(conn.send(h11.Response(status_code=status, headers=[
                        ("Content-Type", "application/json"), ("Content-Length", str(size)),
                    ])) or b"")
                    for p in pieces:
                        await stream.send_all(conn.send(h11.Data(data=p)) or b"")
                    await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
                    conn.start_next_cycle()
                    request = None
                elif isinstance(event, h11.ConnectionClosed):
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError, ssl.SSLError):
            return
        finally:
            await trio.aclose_forcefully(stream)


async def serve(args: argparse.Namespace) -> None:
    name = f"localhost:{args.port}"
    t0 = time.perf_counter()
    extra = max(0, args.state_events - args.members - 3)
    room = build_room(name, args.members, extra, args.room_version)
    peer = Peer(name, room)
    built_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="fed-peer-") as tmp:
        cert, key = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
        write_self_signed_certificate(cert, key, "localhost")
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        listeners = await trio.open_ssl_over_tcp_listeners(args.port, ctx, host="127.0.0.1")
        answer_bytes = len(peer.state_json) + len(peer.chain_json)
        print(
            f"ready {room.room_id} {answer_bytes} state={peer.state_count} auth_chain={peer.chain_count}"
            f" built_s={built_s:.1f}",
            flush=True,
        )
        await trio.serve_listeners(peer.handle, listeners)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--members", type=int, default=20000)
    ap.add_argument("--state-events", type=int, default=50000,
                    help="state events in all: the members, 3 more, and other state")
    ap.add_argument("--room-version", default="10")
    args = ap.parse_args()
    try:
        trio.run(serve, args)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
