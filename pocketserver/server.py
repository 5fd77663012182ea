"""The server process: open the database, the root nursery, listeners, background work.

Start-up order (STYLE.md): data folder and key material, the database (migrated), the
services, then one hypercorn listener per configured listener and each background
service, all in one root nursery. SIGINT/SIGTERM stop the listeners gracefully (in-flight
requests finish, each write is one committed transaction), then the background tasks
are cancelled and the database is checkpointed and closed.
"""

from __future__ import annotations

import errno
import logging
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

import trio

from pocketserver.config import Config, ListenerConfig

log = logging.getLogger("pocketserver")

FEDERATION_PREFIXES = ("/_matrix/federation/", "/_matrix/key/")
# The OpenID userinfo exchange is for third parties (integration managers, widgets), which
# may reach the server where its clients do: every listener serves it. So does every
# listener serve identity servers' onbind notifications (third-party invites).
EVERY_LISTENER_PATHS = ("/_matrix/federation/v1/openid/userinfo", "/_matrix/federation/v1/3pid/onbind")


@dataclass
class RunningServer:
    """What a started server tells its starter (tests, the CLI)."""

    services: Any
    app: Any = None  # the QuartTrio app (its url_map lists every route)
    urls: list[str] = field(default_factory=list)
    stop: trio.Event = field(default_factory=trio.Event)


class _ResourceFilter:
    """Serve only the resources a listener is configured for."""

    def __init__(self, app: Any, resources: tuple[str, ...]) -> None:
        self.app = app
        self.client = "client" in resources
        self.federation = "federation" in resources

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] not in EVERY_LISTENER_PATHS:
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


# How long a thread may hold the GIL while another waits (CPython's default: 5 ms). The
# event loop and the database threads hand work back and forth many times a request,
# each time waiting for the GIL; 1 ms cuts those waits (+10% upload throughput in
# benchmarks/bench_media.py-style runs) for a little more switching.
GIL_SWITCH_INTERVAL_S = 0.001


def tune_interpreter() -> None:
    """Process-wide interpreter settings for serving (called once, before the loop)."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)


def _hypercorn_config(cfg: Config, lst: ListenerConfig) -> Any:
    from hypercorn.config import Config as HConfig

    from pocketserver import http_layer

    http_layer.install()

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
    hc.keep_alive_timeout = http_layer.KEEP_ALIVE_S
    hc.include_server_header = False
    hc.h11_max_incomplete_size = 64 * 1024
    return hc


class ListenError(Exception):
    """A listener cannot serve (its address cannot be taken, its TLS certificate cannot be
    loaded); the message is one line for the operator."""

    def __init__(self, lst: ListenerConfig, error: OSError, reason: str | None = None) -> None:
        host = f"[{lst.address}]" if ":" in lst.address else lst.address
        what = " + ".join(lst.resources)
        reason = reason or _bind_reason(lst, error)
        super().__init__(f"cannot listen on {host}:{lst.port} ({what}): {reason}")
        self.listener = lst
        self.errno = error.errno


def _bind_reason(lst: ListenerConfig, error: OSError) -> str:
    if isinstance(error, socket.gaierror):
        return f"unknown address {lst.address!r}"
    if error.errno == errno.EADDRINUSE:
        return "address already in use"
    if error.errno == errno.EACCES:
        if 0 < lst.port < 1024:
            return "permission denied (ports below 1024 need privileges)"
        return "permission denied"
    if error.errno == errno.EADDRNOTAVAIL:
        return "address not available (not an address of this machine)"
    reason = error.strerror or str(error)
    return reason[:1].lower() + reason[1:]


def bind_listener(hc: Any, lst: ListenerConfig) -> Any:
    """Bind and listen on one listener's socket (hypercorn's ``Sockets``), or raise
    :class:`ListenError`. Done before anything is served, so a port in use is one line
    and a non-zero exit, not a traceback from inside hypercorn's nurseries."""
    try:
        sockets = hc.create_sockets()
    except OSError as e:
        raise ListenError(lst, e) from None
    try:
        for sock in (*sockets.secure_sockets, *sockets.insecure_sockets):
            sock.listen(hc.backlog)
    except OSError as e:
        _close_sockets([sockets])
        raise ListenError(lst, e) from None
    return sockets


def check_tls_files(hc: Any, lst: ListenerConfig) -> None:
    """Load a TLS listener's certificate and key as hypercorn will, or raise
    :class:`ListenError` naming the files (a missing or unreadable file, a key that does
    not match)."""
    import ssl

    try:
        hc.create_ssl_context()
    except OSError as e:  # ssl.SSLError is an OSError
        if isinstance(e, ssl.SSLError):
            why = "not a PEM certificate and its private key"
        else:
            why = e.strerror or str(e)
            why = why[:1].lower() + why[1:]
        raise ListenError(
            lst, e, f"TLS certificate {hc.certfile} with key {hc.keyfile}: {why}"
        ) from None


def _close_sockets(bound: list[Any]) -> None:
    for sockets in bound:
        for sock in (*sockets.secure_sockets, *sockets.insecure_sockets, *sockets.quic_sockets):
            sock.close()


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
    """Run until SIGINT/SIGTERM (or ``RunningServer.stop`` is set).

    Every listener's address is taken first: one that cannot be (a port in use) raises
    :class:`ListenError` before the data folder or the database is touched.
    """
    # What hypercorn.trio.serve calls (same in 0.17 and 0.18), given sockets bound
    # beforehand: serve() binds inside its own nurseries, where a port in use becomes
    # nested exception groups.
    from hypercorn.trio.run import worker_serve
    from hypercorn.utils import wrap_app

    from pocketserver.app import create_app
    from pocketserver.http_layer import EarlyAnswerGuard
    from pocketserver.services import build_services

    started = trio.current_time()
    # Plain listeners first: the client API answers while the first start still makes
    # the self-signed certificate the TLS listeners need.
    ordered = sorted(cfg.listeners, key=lambda lst: lst.tls)
    configs = [_hypercorn_config(cfg, lst) for lst in ordered]
    cert_needed = needs_self_signed_certificate(cfg)
    bound: list[Any] = []
    try:
        for hc, lst in zip(configs, ordered, strict=True):
            bound.append(bind_listener(hc, lst))
            # An operator's certificate, or the self-signed one an earlier start made.
            if lst.tls and (lst.tls_cert or not cert_needed):
                check_tls_files(hc, lst)
        db, key, notes = prepare(cfg, make_certificate=False)
    except BaseException:
        _close_sockets(bound)
        raise
    try:
        services = build_services(cfg, db, key)
        if services_hook is not None:
            services_hook(services)
        app = create_app(services)
        running = RunningServer(services=services, app=app)
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
                for hc, lst, sockets in zip(configs, ordered, bound, strict=True):
                    if lst.tls and not lst.tls_cert and cert_needed:
                        await make_self_signed_certificate(cfg)
                        notes.append(f"created self-signed TLS certificate {cfg.path('tls_cert')}")
                        cert_needed = False
                    wrapped = wrap_app(
                        EarlyAnswerGuard(_ResourceFilter(app, lst.resources)),  # type: ignore[arg-type]
                        hc.wsgi_max_body_size,
                        "asgi",
                    )
                    binds = await listeners.start(
                        lambda task_status, hc=hc, sockets=sockets, wrapped=wrapped: worker_serve(
                            wrapped,
                            hc,
                            sockets=sockets,
                            shutdown_trigger=shutdown.wait,
                            task_status=task_status,
                        )
                    )
                    running.urls.append(binds[0])
                    if "client" in lst.resources and lst.port == 0 and not cfg.public_baseurl:
                        # An ephemeral port (tests): links in mails name the real one.
                        running.services.threepids.learn_base_url(binds[0])
                if out is not None:
                    _print_banner(cfg, ordered, running.urls, notes, trio.current_time() - started, out)
                await db.shrink_memory()
                release_free_memory()
                task_status.started(running)
                await running.stop.wait()
                log.info("stopping: finishing in-flight requests")
                shutdown.set()
            root.cancel_scope.cancel()
    finally:
        _close_sockets(bound)
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
            await db.shrink_memory()
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
