"""A small fake application service on loopback, for tests of the AS API.

It records every request (method, path, query, headers, JSON body, raw body) and
answers with what ``handler`` returns: ``(status, json)`` (or ``(status, bytes)``, sent
as they are: other loopback fakes, a CAS server or a CAPTCHA verifier, reuse it), or it
never answers (a handler that sleeps), to see the server retry. Waiting for something to arrive is an event, not a
sleep: :meth:`FakeAppservice.wait_for` wakes at each request, with a deadline.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import h11
import trio


@dataclass
class AsRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    raw: bytes = b""


Handler = Callable[[AsRequest], Awaitable[tuple[int, Any]]]


async def answer_ok(req: AsRequest) -> tuple[int, Any]:
    return 200, {}


@dataclass
class FakeAppservice:
    handler: Handler = answer_ok
    requests: list[AsRequest] = field(default_factory=list)
    port: int = 0
    _changed: trio.Event = field(default_factory=trio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, nursery: trio.Nursery) -> None:
        listeners = await nursery.start(trio.serve_tcp, self._serve, 0)
        self.port = listeners[0].socket.getsockname()[1]

    async def _serve(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        request: h11.Request | None = None
        body = bytearray()
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    conn.receive_data(data)
                    continue
                if isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:
                    return
            assert request is not None
            parts = urlsplit(request.target.decode())
            try:
                parsed = json.loads(body) if body else None
            except ValueError:
                parsed = None  # not JSON (a form): see ``raw``
            req = AsRequest(
                request.method.decode(),
                unquote(parts.path),
                dict(parse_qsl(parts.query)),
                {k.decode().lower(): v.decode() for k, v in request.headers},
                parsed,
                bytes(body),
            )
            self.requests.append(req)
            self._changed.set()
            self._changed = trio.Event()
            status, answer = await self.handler(req)
            raw = isinstance(answer, bytes)
            payload = answer if raw else json.dumps(answer).encode()
            ctype = "text/plain; charset=utf-8" if raw else "application/json"
            await stream.send_all(conn.send(h11.Response(
                status_code=status,
                headers=[("Content-Type", ctype), ("Content-Length", str(len(payload)))],
            )) or b"")
            await stream.send_all(conn.send(h11.Data(data=payload)) or b"")
            await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            return
        finally:
            await trio.aclose_forcefully(stream)

    def transactions(self) -> list[AsRequest]:
        return [r for r in self.requests if r.path.startswith("/_matrix/app/v1/transactions/")]

    def events(self) -> list[dict[str, Any]]:
        """Every event of every transaction, in arrival order (a retried transaction
        counted once)."""
        seen: set[str] = set()
        out: list[dict[str, Any]] = []
        for r in self.transactions():
            if r.path in seen:
                continue
            seen.add(r.path)
            out.extend(r.body.get("events", []))
        return out

    async def wait_for(self, check: Callable[[], Any], timeout: float = 20.0) -> Any:
        """Wait until ``check()`` is truthy (re-checked at each request); its value."""
        with trio.fail_after(timeout):
            while True:
                changed = self._changed
                value = check()
                if value:
                    return value
                await changed.wait()


def write_registration(
    folder: Path,
    url: str | None,
    *,
    as_id: str = "fakebridge",
    as_token: str = "as-token-fake",
    hs_token: str = "hs-token-fake",
    sender: str = "_fake_bot",
    users: str = "@_fake_.*",
    aliases: str = "#_fake_.*",
    extra: str = "",
) -> Path:
    """A registration file as bridges write them; its path."""
    path = folder / f"{as_id}.yaml"
    url_line = "url: null" if url is None else f'url: "{url}"'
    path.write_text(
        f"""id: "{as_id}"
{url_line}
as_token: "{as_token}"
hs_token: "{hs_token}"
sender_localpart: "{sender}"
rate_limited: false
protocols: ["fakenet"]
namespaces:
  users:
    - exclusive: true
      regex: "{users}"
  aliases:
    - exclusive: true
      regex: "{aliases}"
  rooms: []
{extra}""",
        encoding="utf-8",
    )
    return path
