"""The server process: open the database, the root nursery, listeners, background work.

Start-up order (STYLE.md): data folder and key material, the database (migrated), the
services, then one hypercorn listener per configured listener and each background
service, all in one root nursery. SIGINT/SIGTERM stop the listeners gracefully (in-flight
requests finish, each write is one committed transaction), then the background tasks
are cancelled and the database is checkpointed and closed.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

import trio

from pocketserver.config import Config, ListenerConfig

log = logging.getLogger("pocketserver")

FEDERATION_PREFIXES = ("/_matrix/federation/", "/_matrix/key/")


@dataclass
class RunningServer:
    """What a started server tells its starter (tests, the CLI)."""

    services: Any
    urls: list[str] = field(default_factory=list)
    app: Any = None
    stop: trio.Event = field(default_factory=trio.Event)


class _ResourceFilter:
    """Serve only the resources a listener is configured for."""

    def __init__(self, app: Any, resources: tuple[str, ...]) -> None:
        self.app = app
        self.client = "client" in resources
        self.federation = "federation" in resources

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            is_fed = scope["path"].startswith(FEDERATION_PREFIXES)
            if (is_fed and not self.federation) or (not is_fed and not self.client):
                body = b'{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}'
                await send(
                    {
                        "type": "http.response.start",
                        "status": 404,
                        "headers": [(b"content-type", b"application/json")],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


# Bytes hypercorn asks the socket for per read. Its default (64 KiB) makes a 50 MB upload
# 800 trips through h11 and the event loop; 256 KiB quarters that, and a read only
# allocates what actually arrived.
READ_SIZE = 256 * 1024


# -- h11 receive buffer: fewer copies of a request body ------------------------------
#
# h11 (0.14 to 0.16) copies every byte of a body four times before hypercorn hands it
# to the application: into its bytearray buffer, twice more slicing it out (once only
# to test for emptiness), and hypercorn's ``bytes()`` of the result. During an upload a
# socket read is usually all body, so these three methods keep the ``bytes`` a read
# returned as the buffer until something must cut it, and hand the whole buffer out as
# the body piece. Every result and every state afterwards is h11's own (tests compare
# them operation by operation); anything that cuts a partial buffer runs h11's code.

_H11_ORIGINALS: dict[str, Any] = {}


def _buffer_iadd(self: Any, byteslike: Any) -> Any:
    if not self._data and type(byteslike) is bytes:
        self._data = byteslike  # held as is until something must cut it
        return self
    if type(self._data) is not bytearray:
        self._data = bytearray(self._data)
    self._data += byteslike
    return self


def _buffer_extract(self: Any, count: int) -> Any:
    if type(self._data) is not bytearray:
        self._data = bytearray(self._data)
    return _H11_ORIGINALS["_extract"](self, count)


def _buffer_extract_at_most(self: Any, count: int) -> Any:
    data = self._data
    if data and count >= len(data):
        self._data = bytearray()
        self._next_line_search = 0
        self._multiple_lines_search = 0
        return data
    return _H11_ORIGINALS["maybe_extract_at_most"](self, count)


_H11_PATCHES = {
    "__iadd__": _buffer_iadd,
    "_extract": _buffer_extract,
    "maybe_extract_at_most": _buffer_extract_at_most,
}


def patch_h11_body_reads() -> bool:
    """Install the three methods above, if h11's buffer is the one they were written for."""
    from h11 import _receivebuffer

    cls = _receivebuffer.ReceiveBuffer
    if _H11_ORIGINALS:
        return True
    probe = cls()
    fields = ("_data", "_next_line_search", "_multiple_lines_search")
    if not all(hasattr(probe, f) for f in fields) or not all(hasattr(cls, m) for m in _H11_PATCHES):
        return False
    for name, fn in _H11_PATCHES.items():
        _H11_ORIGINALS[name] = getattr(cls, name)
        setattr(cls, name, fn)
    return True


def unpatch_h11_body_reads() -> None:
    """For tests: h11's own methods back."""
    from h11 import _receivebuffer

    for name, fn in _H11_ORIGINALS.items():
        setattr(_receivebuffer.ReceiveBuffer, name, fn)
    _H11_ORIGINALS.clear()


# -- hypercorn: a response's head and its body in one write ----------------------------
#
# hypercorn writes an HTTP/1.1 response head as soon as the application starts the
# response, and its body in a second write. On a small answer (almost every Matrix
# call) that is one system call, and one loopback segment with its wake-up of the
# client, too many: the head is held until the first piece of the body (or the end of
# the response) and goes out with it. A large body piece is written after the head, not
# copied onto it.

_COALESCE_MAX = 64 * 1024
# Set by patch_hypercorn_response_writes: hypercorn's method, h11, hypercorn's RawData.
_hypercorn_send_event: Any = None
_h11: Any = None
_RawData: Any = None


def _h11_bytes(self: Any, event: Any) -> bytes | None:
    """hypercorn's handling of an event h11 refuses once the peer has erred."""
    try:
        data: bytes = self.connection.send(event)
        return data
    except _h11.LocalProtocolError:
        if self.connection.their_state != _h11.ERROR:
            raise
        return None


async def _send_h11_event_coalesced(self: Any, event: Any) -> None:
    head = self.__dict__.pop("_pocket_head", None)
    if head is None:
        if type(event) is _h11.Response:
            self._pocket_head = _h11_bytes(self, event)
        else:
            await _hypercorn_send_event(self, event)
        return
    data = _h11_bytes(self, event) or b""
    if len(data) > _COALESCE_MAX:
        await self.send(_RawData(data=head))
        await self.send(_RawData(data=data))
    else:
        await self.send(_RawData(data=head + data))


def patch_hypercorn_response_writes() -> bool:
    """Install :func:`_send_h11_event_coalesced` if hypercorn's H11Protocol has the method
    it replaces."""
    global _hypercorn_send_event, _h11, _RawData
    import h11
    from hypercorn.events import RawData
    from hypercorn.protocol.h11 import H11Protocol

    if _hypercorn_send_event is not None:
        return True
    original = getattr(H11Protocol, "_send_h11_event", None)
    if original is None or not hasattr(H11Protocol, "stream_send"):
        return False
    _hypercorn_send_event, _h11, _RawData = original, h11, RawData
    H11Protocol._send_h11_event = _send_h11_event_coalesced  # type: ignore[method-assign]
    return True


# How long a thread may hold the GIL while another waits (CPython's default: 5 ms). The
# event loop and the database threads hand work back and forth many times a request,
# each time waiting for the GIL; 1 ms cuts those waits (+10% upload throughput in
# benchmarks/bench_media.py-style runs) for a little more switching.
GIL_SWITCH_INTERVAL_S = 0.001


def tune_interpreter() -> None:
    """Process-wide interpreter settings for serving (called once, before the loop)."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)


def _hypercorn_config(cfg: Config, lst: ListenerConfig) -> Any:
    import hypercorn.trio.tcp_server
    from hypercorn.config import Config as HConfig

    # A module constant in hypercorn, read at each receive (there is no setting for it).
    hypercorn.trio.tcp_server.MAX_RECV = READ_SIZE
    patch_h11_body_reads()
    patch_hypercorn_response_writes()

    hc = HConfig()
    host = lst.address
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    hc.bind = [f"{host}:{lst.port}"]
    if lst.tls:
        hc.certfile = lst.tls_cert or str(cfg.path("tls_cert"))
        hc.keyfile = lst.tls_key or str(cfg.path("tls_key"))
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    hc.graceful_timeout = 10.0
    hc.keep_alive_timeout = 75.0
    hc.include_server_header = False
    hc.h11_max_incomplete_size = 64 * 1024
    return hc


def needs_self_signed_certificate(cfg: Config) -> bool:
    if not any(lst.tls and not lst.tls_cert for lst in cfg.listeners):
        return False
    return not (cfg.path("tls_cert").exists() and cfg.path("tls_key").exists())


async def make_self_signed_certificate(cfg: Config) -> None:
    """Write the self-signed certificate in a child process, without blocking."""
    from pocketserver.services.tls import certificate_command

    cmd = certificate_command(cfg.path("tls_cert"), cfg.path("tls_key"), cfg.server_name)
    with trio.fail_after(120):
        await trio.run_process(cmd, capture_stdout=True, capture_stderr=True)


def prepare(cfg: Config, *, make_certificate: bool = True) -> tuple[Any, Any, list[str]]:
    """Create the data folder, key, certificate and database; return (db, key, notes).

    With ``make_certificate=False`` the caller makes the certificate itself (the server
    does, concurrently with serving the client API).
    """
    from pocketserver.services.server_keys import load_or_create_signing_key
    from pocketserver.services.tls import ensure_self_signed_certificate
    from pocketserver.storage.database import Database

    notes: list[str] = []
    data_dir = cfg.data_dir_path
    if not data_dir.exists():
        data_dir.mkdir(parents=True, mode=0o700)
        notes.append(f"created data folder {data_dir}")
    key, created = load_or_create_signing_key(cfg.path("signing_key"))
    if created:
        notes.append(f"created signing key {key.key_id} in {cfg.path('signing_key')}")
    if make_certificate and needs_self_signed_certificate(cfg):
        if ensure_self_signed_certificate(cfg.path("tls_cert"), cfg.path("tls_key"), cfg.server_name):
            notes.append(f"created self-signed TLS certificate {cfg.path('tls_cert')}")
    db_path = cfg.path("database")
    if not db_path.exists():
        notes.append(f"created database {db_path}")
    db = Database(db_path, cache_kib=cfg.caches.database_cache_kib)
    return db, key, notes


async def run_server(
    cfg: Config,
    *,
    out: TextIO | None = sys.stdout,
    handle_signals: bool = True,
    task_status: trio.TaskStatus[RunningServer] = trio.TASK_STATUS_IGNORED,
    services_hook: Callable[[Any], None] | None = None,
) -> None:
    """Run until SIGINT/SIGTERM (or ``RunningServer.stop`` is set)."""
    import hypercorn.trio

    from pocketserver.app import create_app
    from pocketserver.services import build_services

    started = trio.current_time()
    db, key, notes = prepare(cfg, make_certificate=False)
    cert_needed = needs_self_signed_certificate(cfg)
    services = build_services(cfg, db, key)
    if services_hook is not None:
        services_hook(services)
    app = create_app(services)
    running = RunningServer(services=services, app=app)
    try:
        async with trio.open_nursery() as root:
            if handle_signals:
                # From the very start: a SIGTERM while the first start still makes its
                # certificate must stop the server gracefully, not kill it.
                root.start_soon(_wait_for_signal, running.stop)
            # Background services first, so listeners never serve a half-started server.
            for _name, fn in services.background:
                await root.start(fn)
            await root.start(_memory_housekeeping, db)
            shutdown = trio.Event()
            async with trio.open_nursery() as listeners:
                # Plain listeners first: the client API answers while the first start
                # still makes the self-signed certificate the TLS listeners need.
                ordered = sorted(cfg.listeners, key=lambda lst: lst.tls)
                for lst in ordered:
                    if lst.tls and not lst.tls_cert and cert_needed:
                        await make_self_signed_certificate(cfg)
                        notes.append(f"created self-signed TLS certificate {cfg.path('tls_cert')}")
                        cert_needed = False
                    hc = _hypercorn_config(cfg, lst)
                    binds = await listeners.start(
                        lambda task_status, hc=hc, lst=lst: hypercorn.trio.serve(
                            _ResourceFilter(app, lst.resources),  # type: ignore[arg-type]
                            hc,
                            shutdown_trigger=shutdown.wait,
                            task_status=task_status,
                        )
                    )
                    running.urls.append(binds[0])
                if out is not None:
                    _print_banner(cfg, ordered, running.urls, notes, trio.current_time() - started, out)
                release_free_memory()
                task_status.started(running)
                await running.stop.wait()
                log.info("stopping: finishing in-flight requests")
                shutdown.set()
            root.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            db.close()
        log.info("stopped")


def release_free_memory(*, collect: bool = True) -> None:
    """Give the heap that start-up freed back to the OS.

    Importing and wiring everything leaves a megabyte or so of freed, fragmented heap
    that glibc keeps; on a Pi that is resident memory for nothing. ``malloc_trim`` is
    glibc's; elsewhere this only collects garbage.
    """
    import ctypes
    import gc

    if collect:
        gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)  # the process's own symbols include libc's
    except (OSError, AttributeError):
        pass


QUIET_CHECK_S = 2.0


async def _memory_housekeeping(
    db: Any, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Once the server goes quiet after work, give freed heap back to the OS.

    A burst (hundreds of devices syncing at once, a big initial sync) raises the heap's
    high-water mark; Python frees the objects afterwards, but glibc keeps the pages
    until trimmed. "Quiet" is a whole check interval without a database call, so a
    busy server is never interrupted and an idle one is trimmed once, not repeatedly.
    """
    task_status.started()
    last = db.reads + db.writes
    busy = False
    while True:
        await trio.sleep(QUIET_CHECK_S)
        now = db.reads + db.writes
        if now != last:
            busy = True
        elif busy:
            # No full collection here: it would stall the event loop for tens of ms.
            release_free_memory(collect=False)
            busy = False
        last = now


async def _wait_for_signal(stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _sig in signals:
            stop.set()
            return


def _print_banner(
    cfg: Config,
    listeners: list[ListenerConfig],
    urls: list[str],
    notes: list[str],
    secs: float,
    out: TextIO,
) -> None:
    from pocketserver import __version__

    lines = [f"pocketserver {__version__} is serving '{cfg.server_name}' (ready in {secs:.2f} s)"]
    for note in notes:
        lines.append(f"  - {note}")
    for lst, url in zip(listeners, urls, strict=False):
        what = " + ".join(lst.resources)
        lines.append(f"  {what:<20} {url}")
    lines.append(f"  data folder          {cfg.data_dir_path}")
    lines.append(f"  registration         {cfg.registration_mode}")
    client = next((u for lst, u in zip(listeners, urls, strict=False) if "client" in lst.resources), None)
    if client:
        lines.append(f"Connect a Matrix client (Element, nio, ...) to {client}")
    lines.append("Create a user: pocketserver register-user NAME [--admin]   Stop: Ctrl-C")
    print("\n".join(lines), file=out, flush=True)
